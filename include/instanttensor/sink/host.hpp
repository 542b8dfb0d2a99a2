// instanttensor/sink/host.hpp: tensors land in a bounded window of host memory.
//
// The window is a ring: tensor destinations are allocated in load order and freed once the
// consumer moved past them, so reads run ahead of the consumer as far as the window allows.
// A yielded view stays valid until the loader is advanced (operator++) or destroyed; copy what
// must outlive that, or use sink::placement to load into memory of your own.
#pragma once

#include <algorithm>
#include <cstring>
#include <string>

#include "instanttensor/concepts.hpp"
#include "instanttensor/detail/aligned.hpp"
#include "instanttensor/detail/ring_allocator.hpp"
#include "instanttensor/error.hpp"

namespace instanttensor::sink {

class host {
public:
    static constexpr MemoryKind memory = MemoryKind::host;
    /// Tensor data starts at multiples of this (any dtype, and SIMD loads, are aligned).
    static constexpr std::uint64_t tensor_alignment = 256;
    /// The default window is what the plan needs (Plan::window_needed: at least twice the largest
    /// tensor), and at least this much, so that reads run well ahead of the consumer, but no more
    /// than every planned tensor at once takes (a small checkpoint gets a small window).
    static constexpr std::uint64_t default_min_window = 256ull << 20;

    /// `window_bytes` = 0 picks the default; a window smaller than the plan needs is an error.
    explicit host(std::uint64_t window_bytes = 0) : requested_(window_bytes) {}

    void prepare(const Plan& plan) {
        const std::uint64_t needed = plan.window_needed(tensor_alignment);
        if (requested_ != 0 && requested_ < needed)
            throw error("sink::host", "a window of " + std::to_string(requested_) + " bytes is too small for this load (largest tensor " +
                                std::to_string(plan.largest_tensor) + " bytes); give at least " + std::to_string(needed));
        std::uint64_t everything = 0;  // every planned tensor at once, as the ring lays them out
        for (const PlannedTensor& t : plan.tensors) everything += (t.ref->nbytes() + tensor_alignment - 1) / tensor_alignment * tensor_alignment;
        const std::uint64_t size = requested_ != 0 ? requested_ : std::max(needed, std::min(default_min_window, everything));
        window_ = detail::AlignedBuffer(size);
        ring_ = detail::RingAllocator(size, tensor_alignment);
    }

    std::span<std::byte> reserve(const format::TensorRef&, std::uint64_t bytes) {
        const auto at = ring_.allocate(bytes);
        if (!at) return {};
        return {window_.data() + *at, bytes};
    }

    void store(std::byte* destination, const std::byte* staged, std::uint64_t bytes) {
        std::memcpy(destination, staged, bytes);
    }

    void release(const format::TensorRef&) noexcept { ring_.release_oldest(); }

    /// Bytes of host memory the window holds.
    [[nodiscard]] std::uint64_t window_bytes() const noexcept { return window_.size(); }

private:
    std::uint64_t requested_;
    detail::AlignedBuffer window_;
    detail::RingAllocator ring_;
};

}  // namespace instanttensor::sink
