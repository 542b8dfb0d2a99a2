// instanttensor/detail/ring_allocator.hpp: first-in first-out allocation of contiguous regions
// in a fixed window, as the sinks hand out tensor destinations: allocated in tensor order,
// released in the same order once the consumer moved past.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <optional>

namespace instanttensor::detail {

class RingAllocator {
public:
    RingAllocator() = default;
    RingAllocator(std::uint64_t capacity, std::uint64_t granularity) : capacity_(capacity), granularity_(granularity) {}

    [[nodiscard]] std::uint64_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] std::uint64_t granularity() const noexcept { return granularity_; }
    [[nodiscard]] bool empty() const noexcept { return live_.empty(); }

    /// Offset of a free contiguous region of `size` bytes, or nullopt while the window is too full.
    /// Sizes are rounded up to the granularity; a request of 0 bytes takes one granule, so that
    /// every live region is non-empty (an empty region would make wrapped live regions look
    /// unwrapped, and the next region would overlap the oldest).
    std::optional<std::uint64_t> allocate(std::uint64_t size) {
        size = (std::max<std::uint64_t>(size, 1) + granularity_ - 1) / granularity_ * granularity_;
        std::optional<std::uint64_t> at;
        if (live_.empty()) {
            if (size <= capacity_) at = 0;
        } else {
            const Region& oldest = live_.front();
            const Region& newest = live_.back();
            if (newest.begin >= oldest.begin) {  // live regions do not wrap: free at the end, then the start
                if (capacity_ - newest.end >= size) at = newest.end;
                else if (oldest.begin >= size) at = 0;
            } else if (oldest.begin - newest.end >= size) {  // they wrap: free between newest and oldest
                at = newest.end;
            }
        }
        if (at) live_.push_back({*at, *at + size});
        return at;
    }

    /// Frees the oldest live region.
    void release_oldest() noexcept {
        if (!live_.empty()) live_.pop_front();
    }

private:
    struct Region {
        std::uint64_t begin, end;
    };
    std::uint64_t capacity_ = 0;
    std::uint64_t granularity_ = 1;
    std::deque<Region> live_;
};

}  // namespace instanttensor::detail
