// instanttensor/storage/pread.hpp: reads with pread(2) on a small pool of threads.
//
// The backend for kernels or containers where io_uring is missing or forbidden (ENOSYS, seccomp,
// kernel.io_uring_disabled), and selectable explicitly. Each thread performs one pread per request
// and reports its raw result; the loader continues short reads and retries EINTR/EAGAIN. The page
// cache policy (O_DIRECT or buffered per file) is the same as storage::uring's.
#pragma once

#include <unistd.h>

#include <algorithm>

#include "instanttensor/detail/file_set.hpp"
#include "instanttensor/detail/read_pool.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"

namespace instanttensor::storage {

class pread {
public:
    static constexpr MemoryKind destination = MemoryKind::host;

    struct Options {
        unsigned threads = 8;  ///< reads in flight (one per thread)
        DirectIo direct = DirectIo::automatic;
    };

    pread() : pread(Options{}) {}
    explicit pread(Options options) : options_(options) { options_.threads = std::clamp(options_.threads, 1u, 256u); }
    /// Moves an unopened backend (the loader takes it by value, then opens it); pool threads hold
    /// `this`, so an opened one is not moved.
    pread(pread&& other) noexcept : options_(other.options_) {}
    pread& operator=(pread&&) = delete;
    pread(const pread&) = delete;
    pread& operator=(const pread&) = delete;
    ~pread() { pool_.stop(); }  // before files_ closes the descriptors the threads read

    void open(const format::Checkpoint& checkpoint) {
        pool_.stop();
        files_.open(checkpoint, options_.direct);
        pool_.start(options_.threads, [this](const ReadRequest& r) { return read_once(r); });
    }

    [[nodiscard]] std::uint64_t alignment(std::uint32_t file) const { return files_.alignment(file); }
    [[nodiscard]] std::size_t queue_depth() const noexcept { return options_.threads; }
    [[nodiscard]] std::string_view name() const noexcept { return "pread"; }
    [[nodiscard]] const detail::FileSet& files() const noexcept { return files_; }

    void submit(const ReadRequest& request) { pool_.submit(request); }
    std::size_t reap(std::span<ReadResult> out, bool wait) { return pool_.reap(out, wait); }

private:
    std::int64_t read_once(const ReadRequest& r) {
        for (;;) {
            const bool direct = files_.is_direct(r.file);
            const ssize_t n = ::pread(files_.descriptor(r.file), r.destination, r.length, static_cast<off_t>(r.offset));
            if (n >= 0) return n;
            const int error = errno;
            // The filesystem refused O_DIRECT after all: read buffered, unless DirectIo::on forbids it.
            if (error == EINVAL && direct && files_.fall_back_to_buffered(r.file)) continue;
            return -error;
        }
    }

    Options options_;
    detail::FileSet files_;
    detail::ReadPool pool_;
};

}  // namespace instanttensor::storage
