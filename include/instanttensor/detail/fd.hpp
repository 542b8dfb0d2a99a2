// instanttensor/detail/fd.hpp: an owned file descriptor and the few blocking calls around it.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>

#include "instanttensor/error.hpp"

namespace instanttensor::detail {

/// Sole owner of a file descriptor; closes it on destruction.
class FileDescriptor {
public:
    FileDescriptor() noexcept = default;
    explicit FileDescriptor(int fd) noexcept : fd_(fd) {}
    FileDescriptor(FileDescriptor&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    FileDescriptor& operator=(FileDescriptor&& other) noexcept {
        if (this != &other) reset(std::exchange(other.fd_, -1));
        return *this;
    }
    FileDescriptor(const FileDescriptor&) = delete;
    FileDescriptor& operator=(const FileDescriptor&) = delete;
    ~FileDescriptor() { reset(); }

    [[nodiscard]] int get() const noexcept { return fd_; }
    [[nodiscard]] explicit operator bool() const noexcept { return fd_ >= 0; }

    void reset(int fd = -1) noexcept {
        if (fd_ >= 0) ::close(fd_);  // close(2) errors on a read-only fd carry no information
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

/// Opens `path` read-only (plus `extra_flags`, such as O_DIRECT). Throws io_error.
/// It opens with O_NONBLOCK so that a FIFO without a writer cannot block open(2) forever (callers
/// then refuse it as not a regular file), and clears the flag again unless `extra_flags` asked for
/// it: reads stay blocking (io_uring would otherwise treat the file as RWF_NOWAIT).
inline FileDescriptor open_read_only(const std::filesystem::path& path, int extra_flags = 0) {
    int fd;
    do {
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | extra_flags);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) throw io_error(path.string(), "cannot open", errno);
    FileDescriptor owned(fd);
    if ((extra_flags & O_NONBLOCK) == 0) {
        const int flags = ::fcntl(fd, F_GETFL);
        if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0)
            throw io_error(path.string(), "cannot clear O_NONBLOCK", errno);
    }
    return owned;
}

/// What tells one state of a file from another: the file (device, inode) and its size and
/// modification time. A file replaced by rename, truncated or rewritten compares unequal.
struct FileIdentity {
    std::uint64_t device = 0;
    std::uint64_t inode = 0;
    std::uint64_t size = 0;
    std::int64_t modified_ns = 0;

    bool operator==(const FileIdentity&) const = default;
};

/// The identity of the regular file behind `fd`; refuses directories, pipes and devices.
inline FileIdentity identity_of(int fd, const std::string& source) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) throw io_error(source, "cannot stat", errno);
    if (!S_ISREG(st.st_mode)) throw io_error(source, "not a regular file", 0);
    return {static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino),
            static_cast<std::uint64_t>(st.st_size),
            static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

/// Size of the regular file behind `fd`; refuses directories, pipes and devices.
inline std::uint64_t regular_file_size(int fd, const std::string& source) { return identity_of(fd, source).size; }

/// Reads exactly `buffer.size()` bytes at `offset`, continuing short reads and retrying EINTR.
/// Reaching the end of the file first is an io_error (the file shrank after it was validated).
inline void read_exact(int fd, std::span<std::byte> buffer, std::uint64_t offset, const std::string& source) {
    std::size_t done = 0;
    while (done < buffer.size()) {
        ssize_t n = ::pread(fd, buffer.data() + done, buffer.size() - done,
                            static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            throw io_error(source, "read failed at byte " + std::to_string(offset + done), errno);
        }
        if (n == 0)
            throw io_error(source, "unexpected end of file at byte " + std::to_string(offset + done) +
                                       " (was the file truncated?)", 0);
        done += static_cast<std::size_t>(n);
    }
}

}  // namespace instanttensor::detail

namespace instanttensor::detail {

/// Reads a whole small file (an index, a config), refusing one larger than `max_size` bytes.
inline std::string read_small_file(const std::filesystem::path& path, std::uint64_t max_size) {
    const std::string source = path.string();
    auto fd = open_read_only(path);
    const std::uint64_t size = regular_file_size(fd.get(), source);
    if (size > max_size)
        throw format_error(source, "file of " + std::to_string(size) + " bytes exceeds the limit of " +
                                       std::to_string(max_size) + " bytes");
    std::string text(size, '\0');
    read_exact(fd.get(), std::as_writable_bytes(std::span(text)), 0, source);
    return text;
}

}  // namespace instanttensor::detail
