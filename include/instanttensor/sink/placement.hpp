// instanttensor/sink/placement.hpp: tensors land in memory the caller chose for each of them.
//
// The caller's function returns, for each selected tensor that has bytes, a span of exactly its
// size (for example a slice of the runtime's own preallocated weight buffer; in a group load whose
// share function splits the tensor, the size of this rank's rows); bytes go there and nowhere
// else, so a view stays valid as long as the caller's memory does. The function is called in load
// order, before any byte of that tensor is read. A tensor of 0 bytes (a dimension of 0, or a
// rank's empty share of rows) needs no memory: the function is not called for it, and its view's
// data is an empty span.
// Reads of a tensor's bytes land straight in its destination, copying nothing out of staging,
// wherever no other tensor shares them (a tensor of at least one read, LoadOptions::slot_bytes) and
// the destination is aligned as the file's reads are: always for a file read buffered; for a cold
// file read with O_DIRECT, where the destination's address is in_place_offset(tensor) past a page
// boundary, as memory the caller allocates for the load can be placed (TensorMemory is).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "instanttensor/config.hpp"
#include "instanttensor/detail/aligned.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"
#include "instanttensor/pipeline/plan.hpp"

#if INSTANTTENSOR_HAS_CUDA
#include "instanttensor/detail/device_copier.hpp"
#endif

namespace instanttensor::sink {

class placement {
public:
    static constexpr MemoryKind memory = MemoryKind::host;
    using Destination = std::function<std::span<std::byte>(const format::TensorRef&)>;

    explicit placement(Destination destination) : destination_(std::move(destination)) {}

    /// Where in a page a destination of `tensor` starts for O_DIRECT reads to land in it: its
    /// offset in its file, modulo the page (the most alignment O_DIRECT is read with).
    [[nodiscard]] static std::uint64_t in_place_offset(const format::TensorRef& tensor) noexcept {
        return tensor.file_offset % detail::page_alignment;
    }

    void prepare(const Plan&) {
        if (!destination_) throw usage_error("sink::placement", "needs a destination function");
    }

    std::span<std::byte> reserve(const format::TensorRef& tensor, std::uint64_t bytes) {
        const auto span = destination_(tensor);
        if (span.size() != bytes || span.data() == nullptr)
            throw usage_error("sink::placement", "destination for tensor '" + tensor.name() + "' has " + std::to_string(span.size()) +
                                                     " bytes; " + (bytes == tensor.nbytes() ? "the tensor needs " : "the block of it loaded needs ") +
                                                     std::to_string(bytes));
        return span;
    }

    void store(std::byte* destination, const std::byte* staged, std::uint64_t bytes) {
        std::memcpy(destination, staged, bytes);
    }

    void release(const format::TensorRef&) noexcept {}

private:
    Destination destination_;
};

/// Host memory of a tensor's own, for destinations a load allocates as it goes (the Python
/// package's host tensors, `instanttensor load --keep`), freed with this object unless released.
/// Fresh from the heap, in the allocator's 4 KiB pages: huge pages fault in at half the speed
/// where a hypervisor takes freed memory back (docs/benchmarks.md#fresh-memory). A tensor kept
/// whole that fills a read (LoadOptions::slot_bytes) starts in_place_offset past a page, so that
/// O_DIRECT reads land straight in it; any other is 64-byte aligned, as torch's CPU tensors are.
class TensorMemory {
public:
    TensorMemory() = default;
    /// Memory for `bytes` of `tensor` (all of it, or the block of it a load keeps), in a load that
    /// reads `read_bytes` at most at once.
    TensorMemory(const format::TensorRef& tensor, std::uint64_t bytes, std::uint64_t read_bytes) : size_(bytes) {
        const bool own_reads = bytes > 0 && bytes == tensor.nbytes() && bytes >= read_bytes;
        const std::uint64_t offset = own_reads ? placement::in_place_offset(tensor) : 0;
        void* memory = nullptr;
        if (::posix_memalign(&memory, own_reads ? detail::page_alignment : 64, std::max<std::uint64_t>(offset + bytes, 1)) != 0)
            throw io_error("host memory", "cannot allocate " + std::to_string(bytes) + " bytes for tensor " + detail::quote_name(tensor.name()),
                           ENOMEM);
        memory_.reset(static_cast<std::byte*>(memory));
        data_ = memory_.get() + offset;
    }

    [[nodiscard]] std::span<std::byte> span() const noexcept { return {data_, size_}; }
    /// Hands the memory over: the pointer to pass to std::free once span() is no longer used.
    [[nodiscard]] void* release() noexcept {
        data_ = nullptr;
        size_ = 0;
        return memory_.release();
    }

private:
    struct Free {
        void operator()(std::byte* p) const noexcept { std::free(p); }
    };
    std::unique_ptr<std::byte, Free> memory_;
    std::byte* data_ = nullptr;
    std::uint64_t size_ = 0;
};

#if INSTANTTENSOR_HAS_CUDA
/// sink::placement on the GPU: the caller's function returns device memory of each tensor's size
/// (for example slices of its preallocated weight buffers); bytes are copied there straight from
/// pinned staging, with no ring and no second copy. Once the loader yields a tensor its bytes are
/// on the device; the memory stays the caller's.
class device_placement : public detail::DeviceCopier {
public:
    static constexpr MemoryKind memory = MemoryKind::device;
    using Destination = placement::Destination;

    struct Options {
        int device = 0;
        /// Stream the runtime uses the tensors on, if any (nullptr: the legacy default stream).
        std::optional<cudaStream_t> consumer_stream;
        unsigned copy_streams = 2;               ///< streams taking turns at the copies
    };

    explicit device_placement(Destination destination) : device_placement(std::move(destination), Options{}) {}
    device_placement(Destination destination, Options options)
        : DeviceCopier(options.device, options.consumer_stream, options.copy_streams), destinations_(std::move(destination)) {}

    void prepare(const Plan& plan) { destinations_.prepare(plan); }
    std::span<std::byte> reserve(const format::TensorRef& tensor, std::uint64_t bytes) {
        return destinations_.reserve(tensor, bytes);
    }
    // store(), prepare_copies(), extent_stored(), copies_done(), wait_copies(): DeviceCopier's.
    void release(const format::TensorRef&) noexcept {}

private:
    placement destinations_;  // asks the caller and checks each destination's size
};
#endif  // INSTANTTENSOR_HAS_CUDA

}  // namespace instanttensor::sink
