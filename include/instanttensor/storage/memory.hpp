// instanttensor/storage/memory.hpp: checkpoints that are already in memory.
//
// Two uses: bytes the caller holds (a checkpoint received over the network, embedded in a binary,
// or mapped by the caller), given as one span per checkpoint file, in the checkpoint's file order
// (see format::Checkpoint::from_memory); or files on tmpfs / in the page cache, which the backend
// maps itself when constructed without spans, with MAP_POPULATE: the page tables are filled in one
// go at open, not by a fault per page during the copy (6x faster on the test VM). Mapping a file
// that is not in memory therefore reads it whole at open. A read is a memcpy done at submit time.
//
// A mapping can fault: a page past the end of a file truncated after it was mapped, or one the
// filesystem cannot read, raises SIGBUS. Every copy runs under detail::guarded_copy, so a fault
// ends the read (EIO), not the process; and since a truncation inside the last page reads as zeros
// rather than faulting, the size of a mapped file is checked again after each copy: bytes the file
// no longer holds are reported as an end of file, as a file read would report them.
#pragma once

#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>

#include <algorithm>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "instanttensor/detail/fd.hpp"
#include "instanttensor/detail/guarded_copy.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"

namespace instanttensor::storage {

class memory {
public:
    static constexpr MemoryKind destination = MemoryKind::host;

    /// Maps the checkpoint's files when opened.
    memory() = default;
    /// Reads from caller-owned bytes, one span per checkpoint file; they must outlive the backend.
    explicit memory(std::vector<std::span<const std::byte>> files) : files_(std::move(files)), caller_owned_(true) {}

    memory(memory&& other) noexcept
        : files_(std::move(other.files_)), mappings_(std::move(other.mappings_)), caller_owned_(other.caller_owned_) {
        other.mappings_.clear();
    }
    memory& operator=(memory&&) = delete;
    memory(const memory&) = delete;
    memory& operator=(const memory&) = delete;
    ~memory() { unmap(); }

    void open(const format::Checkpoint& checkpoint) {
        const auto& files = checkpoint.files();
        if (caller_owned_) {
            if (files_.size() != files.size())
                throw usage_error("storage::memory", std::to_string(files_.size()) + " spans given for a checkpoint of " +
                                                         std::to_string(files.size()) + " files");
            for (std::size_t i = 0; i < files.size(); ++i)
                if (files_[i].size() != files[i].header.file_size())
                    throw format_error(files[i].path.string(), "span of " + std::to_string(files_[i].size()) +
                                                                   " bytes given for a file of " + std::to_string(files[i].header.file_size()));
            return;
        }
        const auto paths = checkpoint.paths_to_open();
        unmap();
        files_.clear();
        for (std::uint32_t i = 0; i < paths.size(); ++i) {
            auto fd = checkpoint.open_file(i);
            const std::uint64_t size = files[i].identity.size;  // open_file checked it is still so
            void* map = size == 0 ? nullptr : ::mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
            if (map == MAP_FAILED) throw io_error(paths[i].string(), "cannot map", errno);
            if (map != nullptr) ::madvise(map, size, MADV_SEQUENTIAL);
            mappings_.push_back({map, size, std::move(fd)});
            files_.emplace_back(static_cast<const std::byte*>(map), size);
        }
    }

    [[nodiscard]] std::uint64_t alignment(std::uint32_t) const noexcept { return 1; }
    [[nodiscard]] std::size_t queue_depth() const noexcept { return 64; }
    [[nodiscard]] std::string_view name() const noexcept { return "memory"; }

    /// Copies at once; bytes past the end of the span read as end of file (a short read), as they
    /// would from a file, and so do bytes past the end of a mapped file truncated underneath. A
    /// fault reading the span is -EIO.
    void submit(const ReadRequest& r) {
        const auto& file = files_[r.file];
        std::uint64_t length = r.offset >= file.size() ? 0 : std::min<std::uint64_t>(r.length, file.size() - r.offset);
        std::int64_t result;
        for (;;) {
            const bool copied = length == 0 || detail::guarded_copy(r.destination, file.data() + r.offset, length);
            result = copied ? static_cast<std::int64_t>(length) : -EIO;
            if (caller_owned_ || length == 0) break;
            // A mapped file may have shrunk during the copy: past its end now, the copy read zeros
            // (in the last page) or faulted. Keep only what the file still holds; after a fault,
            // copy that again, since where the copy stopped is unknown.
            struct stat st {};
            if (::fstat(mappings_[r.file].file.get(), &st) != 0) {
                result = -errno;
                break;
            }
            const auto size = static_cast<std::uint64_t>(st.st_size);
            if (size >= r.offset + length) break;
            length = size > r.offset ? size - r.offset : 0;
            if (copied) {
                result = static_cast<std::int64_t>(length);
                break;
            }
        }
        done_.push_back({r.tag, result});
    }

    std::size_t reap(std::span<ReadResult> out, bool) {
        const std::size_t n = std::min(out.size(), done_.size());
        std::copy_n(done_.begin(), n, out.begin());
        done_.erase(done_.begin(), done_.begin() + static_cast<std::ptrdiff_t>(n));
        return n;
    }

private:
    struct Mapping {
        void* address;
        std::size_t size;
        detail::FileDescriptor file;  // to see whether the file shrank under a copy
    };

    void unmap() noexcept {
        for (const auto& m : mappings_)
            if (m.address != nullptr) ::munmap(m.address, m.size);
        mappings_.clear();
    }

    std::vector<std::span<const std::byte>> files_;
    std::vector<Mapping> mappings_;
    bool caller_owned_ = false;
    std::deque<ReadResult> done_;
};

}  // namespace instanttensor::storage
