// instanttensor/storage/memory.hpp: checkpoints that are already in memory.
//
// Two uses: bytes the caller holds (a checkpoint received over the network, embedded in a binary,
// or mapped by the caller), given as one span per checkpoint file, in the checkpoint's file order
// (see format::Checkpoint::from_memory); or files on tmpfs / in the page cache, which the backend
// maps itself when constructed without spans, with MAP_POPULATE: the page tables are filled in one
// go at open, not by a fault per page during the copy (6x faster on the test VM). Mapping a file
// that is not in memory therefore reads it whole at open. A read is a memcpy done at submit time.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "instanttensor/detail/fd.hpp"
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
            const std::string source = paths[i].string();
            auto fd = checkpoint.open_file(i);
            const std::uint64_t size = detail::regular_file_size(fd.get(), source);
            void* map = size == 0 ? nullptr : ::mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
            if (map == MAP_FAILED) throw io_error(source, "cannot map", errno);
            if (map != nullptr) ::madvise(map, size, MADV_SEQUENTIAL);
            mappings_.push_back({map, size});
            files_.emplace_back(static_cast<const std::byte*>(map), size);
        }
    }

    [[nodiscard]] std::uint64_t alignment(std::uint32_t) const noexcept { return 1; }
    [[nodiscard]] std::size_t queue_depth() const noexcept { return 64; }
    [[nodiscard]] std::string_view name() const noexcept { return "memory"; }

    /// Copies at once; bytes past the end of the span read as end of file (a short read), as they
    /// would from a file. A mapped file truncated underneath raises SIGBUS: map only files that
    /// nobody truncates, or use storage::pread.
    void submit(const ReadRequest& r) {
        const auto& file = files_[r.file];
        const std::uint64_t available = r.offset >= file.size() ? 0 : std::min<std::uint64_t>(r.length, file.size() - r.offset);
        if (available > 0) std::memcpy(r.destination, file.data() + r.offset, available);
        done_.push_back({r.tag, static_cast<std::int64_t>(available)});
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
