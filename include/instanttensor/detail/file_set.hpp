// instanttensor/detail/file_set.hpp: the open files of a checkpoint, each read buffered or with
// O_DIRECT, as the storage backends that use file descriptors share them.
//
// Per file: a buffered descriptor always; an O_DIRECT one too when the policy asks for it and the
// filesystem accepts it (tmpfs and some FUSE filesystems refuse O_DIRECT: buffered then). Under
// DirectIo::automatic a file whose pages are mostly resident in the page cache is read buffered
// (copying from the cache beats going to the device), a cold one with O_DIRECT (it neither waits
// on nor fills the cache).
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
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

/// Fraction (0..1) of sampled pages of the file that are in the page cache; 0 when unknown.
/// Samples up to `samples` evenly spaced pages through a mapping of the whole file.
inline double resident_fraction(int fd, std::uint64_t size, std::size_t samples = 256) {
    if (size == 0) return 1.0;
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) return 0.0;
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    const std::uint64_t pages = (size + page - 1) / page;
    const std::uint64_t step = std::max<std::uint64_t>(1, pages / samples);
    std::size_t resident = 0, seen = 0;
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
        FileDescriptor buffered;
        FileDescriptor direct;        // open when the file is read with O_DIRECT
        std::uint64_t alignment = 1;  // O_DIRECT alignment of offsets, lengths and addresses
    };

    /// Opens the files of `checkpoint` (a format::Checkpoint: paths_to_open, and open_file, which
    /// checks each descriptor is the file validated) for reading under `policy`.
    template <class Checkpoint>
    void open(const Checkpoint& checkpoint, DirectIo policy) {
        const auto paths = checkpoint.paths_to_open();
        files_.clear();
        files_.reserve(paths.size());
        for (std::uint32_t i = 0; i < paths.size(); ++i) {
            File file;
            file.path = paths[i].string();
            file.buffered = checkpoint.open_file(i);
            file.size = regular_file_size(file.buffered.get(), file.path);
            // Residency is sampled only where it decides something.
            if (policy == DirectIo::on ||
                (policy == DirectIo::automatic && resident_fraction(file.buffered.get(), file.size) < resident_threshold))
                open_direct(file, [&] { return checkpoint.open_file(i, O_DIRECT); });
            files_.push_back(std::move(file));
        }
        use_direct_ = std::make_unique<std::atomic<bool>[]>(files_.size());
        for (std::size_t i = 0; i < files_.size(); ++i) use_direct_[i] = static_cast<bool>(files_[i].direct);
    }

    [[nodiscard]] std::size_t size() const noexcept { return files_.size(); }
    [[nodiscard]] const File& operator[](std::uint32_t i) const noexcept { return files_[i]; }
    /// The descriptor to read file `i` with. Safe to call from several threads.
    [[nodiscard]] int descriptor(std::uint32_t i) const noexcept {
        return is_direct(i) ? files_[i].direct.get() : files_[i].buffered.get();
    }
    [[nodiscard]] bool is_direct(std::uint32_t i) const noexcept { return use_direct_[i].load(std::memory_order_relaxed); }
    /// Required alignment of reads of file `i`: its O_DIRECT alignment, or 1 when read buffered.
    [[nodiscard]] std::uint64_t alignment(std::uint32_t i) const noexcept { return is_direct(i) ? files_[i].alignment : 1; }

    /// The filesystem refused an O_DIRECT read (EINVAL): read this file buffered from now on. The
    /// O_DIRECT descriptor stays open, as other reads may still be using it.
    void fall_back_to_buffered(std::uint32_t i) noexcept { use_direct_[i].store(false, std::memory_order_relaxed); }

    [[nodiscard]] std::size_t direct_count() const noexcept {
        std::size_t n = 0;
        for (std::uint32_t i = 0; i < files_.size(); ++i) n += is_direct(i);
        return n;
    }

private:
    /// Opens `file` again with O_DIRECT through `open`. The filesystem refusing O_DIRECT (EINVAL:
    /// tmpfs) leaves it buffered; any other failure (EMFILE...) is an error, not a silent fallback.
    template <class Open>
    static void open_direct(File& file, const Open& open) {
        FileDescriptor direct;
        try {
            direct = open();
        } catch (const io_error& e) {
            if (e.code() == EINVAL) return;
            throw;
        }
        const std::uint64_t a = direct_io_alignment(direct.get());
        if (a == 0 || a > page_alignment) return;  // staging memory is page aligned, no more
        file.direct = std::move(direct);
        file.alignment = a;
    }

    std::vector<File> files_;
    std::unique_ptr<std::atomic<bool>[]> use_direct_;
};

}  // namespace instanttensor::detail
