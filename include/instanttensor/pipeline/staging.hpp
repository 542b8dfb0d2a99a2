// instanttensor/pipeline/staging.hpp: staging memory cut into slots, each holding one read until
// the copies out of it ran.
//
// A slot is taken for a read and freed once nothing reads it any more: at once after a synchronous
// copy, or, after a copy that is only queued (a device sink's cudaMemcpyAsync, a group load's
// upload into its window buffer), once the ticket of that copy says it ran. Copies run in the
// order they were queued, so slots waiting on tickets are freed oldest first.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "instanttensor/config.hpp"
#include "instanttensor/detail/aligned.hpp"
#include "instanttensor/io.hpp"
#if INSTANTTENSOR_HAS_CUDA
#include "instanttensor/detail/cuda.hpp"
#endif

namespace instanttensor::detail {

/// The owner of memory of one kind (pipeline::Buffer).
template <MemoryKind where, bool copied_to_device>
struct buffer_of {
    static_assert(where == MemoryKind::host, "device memory needs a build with CUDA (INSTANTTENSOR_HAS_CUDA)");
    using type = AlignedBuffer;
};
#if INSTANTTENSOR_HAS_CUDA
template <bool copied_to_device>
struct buffer_of<MemoryKind::device, copied_to_device> {
    using type = DeviceBuffer;
};
template <>
struct buffer_of<MemoryKind::host, true> {
    using type = PinnedBuffer;
};
#endif

}  // namespace instanttensor::detail

namespace instanttensor::pipeline {

/// An owned buffer of `where` memory: page-aligned host memory, pinned when the copy engine reads
/// it (`copied_to_device`), or device memory.
template <MemoryKind where, bool copied_to_device = false>
using Buffer = typename detail::buffer_of<where, copied_to_device>::type;

/// A Buffer of `bytes`, allocated on GPU `device` when it is device memory, and pinned in GPU
/// `device`'s context when it is pinned (without the guard, cudaHostAlloc would make a context on
/// the thread's current device, GPU 0 in a process that never chose one). `lower_with` names the
/// option that lowers the need, for the message when it does not fit.
template <class Memory>
Memory allocate([[maybe_unused]] std::uint64_t bytes, [[maybe_unused]] int device, [[maybe_unused]] const char* lower_with) {
#if INSTANTTENSOR_HAS_CUDA
    if constexpr (std::is_same_v<Memory, detail::DeviceBuffer>) {
        detail::DeviceGuard guard(device);
        return Memory(bytes, lower_with);
    } else if constexpr (std::is_same_v<Memory, detail::PinnedBuffer>) {
        detail::DeviceGuard guard(device);
        return Memory(bytes);
    } else
#endif
    {
        return Memory(bytes);
    }
}

template <class Memory>
class Staging {
public:
    Staging() = default;
    /// Cuts `memory` into slots of `slot_bytes`.
    Staging(Memory memory, std::uint64_t slot_bytes) : memory_(std::move(memory)), slot_bytes_(slot_bytes) {
        const std::uint64_t slots = slot_bytes == 0 ? 0 : memory_.size() / slot_bytes;
        for (std::uint64_t s = slots; s-- > 0;) free_.push_back(static_cast<std::uint32_t>(s));
    }

    [[nodiscard]] std::span<std::byte> memory() const noexcept { return memory_.span(); }
    [[nodiscard]] bool has_free() const noexcept { return !free_.empty(); }
    [[nodiscard]] bool copying() const noexcept { return !copying_.empty(); }
    [[nodiscard]] std::uint64_t oldest_ticket() const { return copying_.front().ticket; }
    [[nodiscard]] std::byte* slot(std::uint32_t s) const noexcept { return memory_.data() + std::uint64_t{s} * slot_bytes_; }

    std::uint32_t take() {
        const std::uint32_t s = free_.back();
        free_.pop_back();
        return s;
    }
    /// Nothing reads slot `s` any more.
    void free(std::uint32_t s) { free_.push_back(s); }
    /// Slot `s` is free once the copies of `ticket` ran.
    void free_after(std::uint32_t s, std::uint64_t ticket) { copying_.push_back({s, ticket}); }

    /// Frees the slots that nothing reads any more (`done(ticket, slot)` says: their copies ran),
    /// oldest first; whether any was freed.
    template <class Done>
    bool reclaim(Done&& done) {
        bool freed = false;
        while (!copying_.empty() && done(copying_.front().ticket, copying_.front().slot)) {
            free_.push_back(copying_.front().slot);
            copying_.pop_front();
            freed = true;
        }
        return freed;
    }

private:
    struct Copying {
        std::uint32_t slot;
        std::uint64_t ticket;
    };

    Memory memory_;
    std::uint64_t slot_bytes_ = 0;
    std::vector<std::uint32_t> free_;
    std::deque<Copying> copying_;  // slots whose copies may still run, oldest first
};

}  // namespace instanttensor::pipeline
