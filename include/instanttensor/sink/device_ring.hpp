// instanttensor/sink/device_ring.hpp: tensors land in a ring of device memory.
//
// The ring holds `ring_bytes` (default 3 × the largest selected tensor, more only when many small
// tensors share a read and need room together: see Plan::ring_needed): destinations are
// allocated in load order and a region is reused only once the consumer has moved past its tensor
// and, when a consumer stream is given, once the work the consumer queued on it before moving on
// has run. A tensor is always contiguous. A yielded view stays valid until the loader advances;
// copy it (cudaMemcpyAsync on your stream) into memory of your own, or load with
// sink::device_placement to have the bytes land there directly.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_CUDA

#include <optional>
#include <string>

#include "instanttensor/detail/cuda.hpp"
#include "instanttensor/detail/device_copier.hpp"
#include "instanttensor/detail/ring_allocator.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"
#include "instanttensor/pipeline/plan.hpp"

namespace instanttensor::sink {

class device_ring : public detail::DeviceCopier {
public:
    static constexpr MemoryKind memory = MemoryKind::device;
    static constexpr bool one_buffer = true;  ///< every destination is in the ring (OneBuffer)
    /// Tensor data starts at multiples of this (cudaMalloc's own alignment).
    static constexpr std::uint64_t tensor_alignment = 256;

    struct Options {
        int device = 0;
        std::uint64_t ring_bytes = 0;  ///< 0: three times the largest selected tensor, or what the plan needs
        /// Stream the runtime uses the tensors on, if any: a released tensor's space is reused only
        /// after the work queued there so far (nullptr: the legacy default stream).
        std::optional<cudaStream_t> consumer_stream;
        unsigned copy_streams = 2;     ///< streams taking turns at the copies (keeps the DMA engine busy)
    };

    device_ring() : device_ring(Options{}) {}
    explicit device_ring(Options options)
        : DeviceCopier(options.device, options.consumer_stream, options.copy_streams), options_(options) {}

    void prepare(const Plan& plan) {
        const std::uint64_t needed = plan.ring_needed(tensor_alignment);
        if (options_.ring_bytes != 0 && options_.ring_bytes < needed)
            throw usage_error("sink::device_ring", "a ring of " + std::to_string(options_.ring_bytes) +
                                                       " bytes is too small for this load (largest tensor " +
                                                       std::to_string(plan.largest_tensor) + " bytes); give at least " +
                                                       std::to_string(needed));
        const std::uint64_t size =
            options_.ring_bytes != 0 ? options_.ring_bytes : std::max(3 * (plan.largest_tensor + tensor_alignment), needed);
        detail::DeviceGuard guard(options_.device);
        ring_ = detail::DeviceBuffer(size, "the device ring (device_ring::Options::ring_bytes, --ring-mib)");
        allocator_ = detail::RingAllocator(size, tensor_alignment);
    }

    std::span<std::byte> reserve(const format::TensorRef&, std::uint64_t bytes) {
        const auto at = allocator_.allocate(bytes);
        if (!at) return {};
        return {ring_.data() + *at, bytes};
    }

    // store(), prepare_copies(), extent_stored(), copies_done(), wait_copies(): DeviceCopier's.

    void release(const format::TensorRef&) {
        allocator_.release_oldest();
        after_consumer();
    }

    [[nodiscard]] std::uint64_t ring_bytes() const noexcept { return ring_.size(); }

    ~device_ring() { synchronize(); }  // copies into the ring finish before it is freed
    device_ring(device_ring&&) = default;
    device_ring& operator=(device_ring&&) = delete;

private:
    Options options_;
    detail::DeviceBuffer ring_;
    detail::RingAllocator allocator_;
};

}  // namespace instanttensor::sink

#endif  // INSTANTTENSOR_HAS_CUDA
