// instanttensor/sink/host.hpp: tensors land in a bounded ring of host memory.
//
// Tensor destinations are allocated from the ring in load order and freed once the consumer moved
// past them, so reads run ahead of the consumer as far as the ring allows.
// A yielded view stays valid until the loader is advanced (operator++) or destroyed; copy what
// must outlive that, or use sink::placement to load into memory of your own.
#pragma once

#include <algorithm>
#include <cstring>
#include <string>

#include "instanttensor/detail/aligned.hpp"
#include "instanttensor/detail/ring_allocator.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"
#include "instanttensor/pipeline/plan.hpp"

namespace instanttensor::sink {

class host {
public:
    static constexpr MemoryKind memory = MemoryKind::host;
    static constexpr bool one_buffer = true;  ///< every destination is in the ring (OneBuffer)
    /// Tensor data starts at multiples of this (any dtype, and SIMD loads, are aligned).
    static constexpr std::uint64_t tensor_alignment = 256;
    /// The default ring is what the plan needs (Plan::ring_needed: at least twice the largest
    /// tensor), and at least this much, so that reads run well ahead of the consumer, but no more
    /// than every planned tensor at once takes (a small checkpoint gets a small ring).
    static constexpr std::uint64_t default_min_ring = 256ull << 20;
    [[deprecated("renamed default_min_ring")]] static constexpr std::uint64_t default_min_window = default_min_ring;

    /// `ring_bytes` = 0 picks the default; a ring smaller than the plan needs is a usage_error.
    explicit host(std::uint64_t ring_bytes = 0) : requested_(ring_bytes) {}

    void prepare(const Plan& plan) {
        const std::uint64_t needed = plan.ring_needed(tensor_alignment);
        if (requested_ != 0 && requested_ < needed)
            throw usage_error("sink::host", "a ring of " + std::to_string(requested_) + " bytes is too small for this load (largest tensor " +
                                                std::to_string(plan.largest_tensor) + " bytes); give at least " + std::to_string(needed));
        std::uint64_t everything = 0;  // every planned tensor at once, as the ring lays them out
        for (const PlannedTensor& t : plan.tensors) everything += (t.ref->nbytes() + tensor_alignment - 1) / tensor_alignment * tensor_alignment;
        const std::uint64_t size = requested_ != 0 ? requested_ : std::max(needed, std::min(default_min_ring, everything));
        memory_ = detail::AlignedBuffer(size);
        ring_ = detail::RingAllocator(size, tensor_alignment);
    }

    std::span<std::byte> reserve(const format::TensorRef&, std::uint64_t bytes) {
        const auto at = ring_.allocate(bytes);
        if (!at) return {};
        return {memory_.data() + *at, bytes};
    }

    void store(std::byte* destination, const std::byte* staged, std::uint64_t bytes) {
        std::memcpy(destination, staged, bytes);
    }

    void release(const format::TensorRef&) noexcept { ring_.release_oldest(); }

    /// Bytes of host memory the ring holds.
    [[nodiscard]] std::uint64_t ring_bytes() const noexcept { return memory_.size(); }
    [[deprecated("renamed ring_bytes()")]] [[nodiscard]] std::uint64_t window_bytes() const noexcept { return ring_bytes(); }

private:
    std::uint64_t requested_;
    detail::AlignedBuffer memory_;
    detail::RingAllocator ring_;
};

}  // namespace instanttensor::sink
