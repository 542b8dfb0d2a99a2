// instanttensor/detail/file_set.hpp: the open files of a checkpoint, each read buffered or with
// O_DIRECT, as the storage backends that use file descriptors share them.
//
// One descriptor per file, opened through Checkpoint::open_file; O_DIRECT is switched on it with
// fcntl(F_SETFL), and off again if the filesystem refuses an O_DIRECT read. DirectIo::on reads
// every file with O_DIRECT or fails: a filesystem that refuses it (older tmpfs, some FUSE
// filesystems), or asks for more than page alignment, is an io_error naming the file, as is a read
// it refuses. DirectIo::automatic reads a file whose sampled pages are mostly resident in the page
// cache buffered (copying from the cache beats going to the device) and a cold one with O_DIRECT
// where the filesystem accepts it (it neither waits on nor fills the cache), else buffered.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "instanttensor/detail/aligned.hpp"
#include "instanttensor/detail/fd.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/io.hpp"

namespace instanttensor::detail {

/// Fraction (0..1) of the file's pages in the page cache, asked of the kernel in the first way
/// that tells the truth to this process:
///   1. cachestat(2) (Linux 6.5): exact, over the whole file; refused (EPERM, Linux 6.14 on) for a
///      file the caller could not open for writing;
///   2. reads of `samples` evenly spaced pages with RWF_NOWAIT (Linux 4.14): a read that would wait
///      for the device answers EAGAIN instead, so it tells a cached page from one that is not,
///      whoever owns the file. Such a read still starts reading the page it missed; with
///      POSIX_FADV_RANDOM meanwhile that is the one page, not a readahead window;
///   3. mincore(2) on a mapping, where RWF_NOWAIT is not supported. Since Linux 5.2 it reports every
///      page of a file the caller could not open for writing as resident, so it is the last resort:
///      a read-only model store would always look warm.
/// 0 when none of them answers.
inline double resident_fraction(int fd, std::uint64_t size, std::size_t samples = 256) {
    if (size == 0) return 1.0;
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t pages = (size + page - 1) / page;
#ifdef __NR_cachestat
    constexpr long cachestat_call = __NR_cachestat;
#else
    constexpr long cachestat_call = 451;  // headers older than Linux 6.5; the same number on every architecture
#endif
    struct {
        std::uint64_t offset, length;  // struct cachestat_range: length 0 = to the end
    } range{0, 0};
    struct {
        std::uint64_t cached, dirty, writeback, evicted, recently_evicted;  // struct cachestat
    } stat{};
    if (::syscall(cachestat_call, fd, &range, &stat, 0) == 0)
        return std::min(1.0, static_cast<double>(stat.cached) / static_cast<double>(pages));
    const std::uint64_t step = std::max<std::uint64_t>(1, pages / samples);
    alignas(64) std::byte probe[4096];
    std::size_t resident = 0, seen = 0;
    bool probed = true;
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
    for (std::uint64_t p = 0; p < pages; p += step, ++seen) {
        iovec v{probe, static_cast<std::size_t>(std::min<std::uint64_t>(sizeof probe, page))};
        const ssize_t n = ::preadv2(fd, &v, 1, static_cast<off_t>(p * page), RWF_NOWAIT);
        if (n >= 0) ++resident;
        else if (errno != EAGAIN) {
            probed = false;  // EOPNOTSUPP: this filesystem cannot say; ask mincore
            break;
        }
    }
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_NORMAL);
    if (probed) return seen == 0 ? 0.0 : static_cast<double>(resident) / static_cast<double>(seen);
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) return 0.0;
    resident = seen = 0;
    for (std::uint64_t p = 0; p < pages; p += step, ++seen) {
        unsigned char in_core = 0;
        if (::mincore(static_cast<char*>(map) + p * page, page, &in_core) == 0 && (in_core & 1)) ++resident;
    }
    ::munmap(map, size);
    return seen == 0 ? 0.0 : static_cast<double>(resident) / static_cast<double>(seen);
}

/// O_DIRECT alignment the filesystem requires for this file (offset, length and memory), or 0 when
/// it does not support O_DIRECT. Uses statx(STATX_DIOALIGN) where the kernel reports it.
inline std::uint64_t direct_io_alignment([[maybe_unused]] int fd) {
#if defined(STATX_DIOALIGN)
    struct statx stx {};
    if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 && (stx.stx_mask & STATX_DIOALIGN))
        return stx.stx_dio_offset_align == 0 ? 0 : std::max<std::uint64_t>(stx.stx_dio_offset_align, stx.stx_dio_mem_align);
#endif
    return page_alignment;  // what every Linux filesystem that supports O_DIRECT accepts
}

/// A resident fraction at or above this reads buffered under DirectIo::automatic.
inline constexpr double resident_threshold = 0.5;

class FileSet {
public:
    struct File {
        std::string path;
        std::uint64_t size = 0;
        FileDescriptor descriptor;
        std::uint64_t alignment = 1;  // O_DIRECT alignment of offsets, lengths and addresses
    };

    /// Opens the files of `checkpoint` (a format::Checkpoint: paths_to_open, files, and open_file,
    /// which checks each descriptor is the file validated) for reading under `policy`.
    template <class Checkpoint>
    void open(const Checkpoint& checkpoint, DirectIo policy) {
        const auto paths = checkpoint.paths_to_open();
        files_.clear();
        files_.reserve(paths.size());
        auto use_direct = std::make_unique<std::atomic<bool>[]>(paths.size());
        for (std::uint32_t i = 0; i < paths.size(); ++i) {
            File file;
            file.path = paths[i].string();
            file.descriptor = checkpoint.open_file(i);
            file.size = checkpoint.files()[i].identity.size;  // open_file checked it is still so
            // Residency is sampled only where it decides something.
            if (policy == DirectIo::on ||
                (policy == DirectIo::automatic && resident_fraction(file.descriptor.get(), file.size) < resident_threshold))
                use_direct[i] = switch_to_direct(file, policy);
            files_.push_back(std::move(file));
        }
        policy_ = policy;
        use_direct_ = std::move(use_direct);
    }

    [[nodiscard]] std::size_t size() const noexcept { return files_.size(); }
    [[nodiscard]] const File& operator[](std::uint32_t i) const noexcept { return files_[i]; }
    /// The descriptor to read file `i` with.
    [[nodiscard]] int descriptor(std::uint32_t i) const noexcept { return files_[i].descriptor.get(); }
    /// Whether file `i` is read with O_DIRECT. Safe to call from several threads.
    [[nodiscard]] bool is_direct(std::uint32_t i) const noexcept { return use_direct_[i].load(std::memory_order_relaxed); }
    /// Required alignment of reads of file `i`: its O_DIRECT alignment, or 1 when read buffered.
    [[nodiscard]] std::uint64_t alignment(std::uint32_t i) const noexcept { return is_direct(i) ? files_[i].alignment : 1; }

    /// The filesystem refused an O_DIRECT read of file `i` (EINVAL). Under DirectIo::automatic the
    /// file is read buffered from now on and this returns true: retry the read. Under DirectIo::on
    /// it returns false: the refusal is the read's result. Safe to call from several threads.
    bool fall_back_to_buffered(std::uint32_t i) noexcept {
        if (policy_ == DirectIo::on) return false;
        const int fd = files_[i].descriptor.get();
        const int flags = ::fcntl(fd, F_GETFL);
        if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_DIRECT) != 0) return false;
        use_direct_[i].store(false, std::memory_order_relaxed);
        return true;
    }

    [[nodiscard]] std::size_t direct_count() const noexcept {
        std::size_t n = 0;
        for (std::uint32_t i = 0; i < files_.size(); ++i) n += is_direct(i);
        return n;
    }

private:
    /// Switches `file` to O_DIRECT and returns true; false where the filesystem refuses it
    /// (EINVAL) or needs more than the page alignment staging memory has, except under
    /// DirectIo::on, where that is an io_error. Any other failure is an io_error.
    static bool switch_to_direct(File& file, DirectIo policy) {
        const int fd = file.descriptor.get();
        const int flags = ::fcntl(fd, F_GETFL);
        if (flags < 0) throw io_error(file.path, "cannot read the descriptor's flags", errno);
        std::string refusal;
        if (::fcntl(fd, F_SETFL, flags | O_DIRECT) != 0) {
            if (errno != EINVAL) throw io_error(file.path, "cannot switch to O_DIRECT", errno);
            refusal = "the filesystem refuses it";
        } else if (const std::uint64_t a = direct_io_alignment(fd); a == 0) {
            refusal = "the filesystem refuses it";
        } else if (a > page_alignment) {
            refusal = "the filesystem needs an alignment of " + std::to_string(a) +
                      " bytes, more than the page alignment of staging memory";
        } else {
            file.alignment = a;
            return true;
        }
        if (policy == DirectIo::on)
            throw io_error(file.path, "cannot read with O_DIRECT, which DirectIo::on (--direct on) asks for: " + refusal +
                                          " (DirectIo::automatic reads such a file buffered)", 0);
        if ((::fcntl(fd, F_GETFL) & O_DIRECT) != 0 && ::fcntl(fd, F_SETFL, flags) != 0)
            throw io_error(file.path, "cannot switch O_DIRECT off", errno);
        return false;
    }

    std::vector<File> files_;
    std::unique_ptr<std::atomic<bool>[]> use_direct_;
    DirectIo policy_ = DirectIo::automatic;
};

}  // namespace instanttensor::detail
