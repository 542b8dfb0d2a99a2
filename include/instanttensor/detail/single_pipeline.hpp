// instanttensor/detail/single_pipeline.hpp: the Loader's single loads (one rank, transport::single).
//
// Each extent of the plan is read into a free staging slot (or, when that costs no copy, straight
// into its tensor's destination), then its pieces are stored to their tensors' destinations and the
// slot is freed: at once for a synchronous sink, once the sink says its copies out of the slot ran
// for one that copies asynchronously (a device sink). Included by loader.hpp after the class.
#pragma once

#include <thread>

#include "instanttensor/loader.hpp"

namespace instanttensor {

/// Runs the pipeline until every byte of tensor `t` is in its destination. While a device sink's
/// copies run, the loop polls (reaping reads without blocking, so that slots keep cycling and
/// reads stay in flight) instead of sleeping in the kernel or on an event, which would let the
/// read queue or the copy engine run dry; with nothing but copies left it blocks on the oldest.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
void Loader<Storage, Tr, Sk>::wait_until_landed(std::size_t t) {
    for (;;) {
        reclaim_slots();
        submit_reads();
        if (landed(t)) return;
        const bool watching_copies = asynchronous && !copying_.empty();
        if (in_flight_ > 0) {
            const std::size_t n = storage_.reap(results_, !watching_copies);
            process(n);
            if (n == 0) std::this_thread::yield();
        } else if (watching_copies) {
            wait_oldest_copies();
        } else {
            throw std::logic_error("loader: nothing in flight for an incomplete tensor");
        }
    }
}

/// Frees the slots whose copies ran (in order: copies complete in the order they were issued).
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
void Loader<Storage, Tr, Sk>::reclaim_slots() {
    if constexpr (asynchronous) {
        while (!copying_.empty() && sink_.copies_done(copying_.front().ticket)) {
            free_slots_.push_back(copying_.front().slot);
            copying_.pop_front();
        }
    }
}

template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
void Loader<Storage, Tr, Sk>::wait_oldest_copies() {
    if constexpr (asynchronous) {
        sink_.wait_copies(copying_.front().ticket);
        reclaim_slots();
    }
}

/// Starts reads while staging slots, queue depth and sink space allow.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
void Loader<Storage, Tr, Sk>::submit_reads() {
    while (next_extent_ < plan_.extents.size() && !free_slots_.empty() && in_flight_ < depth_) {
        const Extent& e = plan_.extents[next_extent_];
        const std::uint32_t last_tensor = plan_.pieces[e.first_piece + e.piece_count - 1].tensor;
        if (!reserve_through(last_tensor)) return;  // the sink is full until the consumer moves on
        const std::uint32_t slot = free_slots_.back();
        free_slots_.pop_back();
        slots_[slot] = {e.file, e.offset, e.length, e.needed, 0, read_buffer(e, slot), static_cast<std::uint32_t>(next_extent_)};
        ++next_extent_;
        submit(slot);
    }
}

/// Where extent `e` is read. Straight into its tensor's destination when the storage writes the
/// sink's kind of memory, the file is read buffered (O_DIRECT would need the destination
/// aligned) and the extent is exactly one piece (no alignment head or tail, no other tensor):
/// a tensor larger than a slot then costs no second copy. Else into the slot.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
std::byte* Loader<Storage, Tr, Sk>::read_buffer(const Extent& e, std::uint32_t slot) {
    const Piece& first = plan_.pieces[e.first_piece];
    if (Storage::destination == Sk::memory && storage_.alignment(e.file) == 1 && e.piece_count == 1 &&
        first.extent_offset == 0 && e.length == first.length)
        return destinations_[first.tensor].data() + first.tensor_offset;
    return slot_memory(slot);
}

/// Copies the pieces of a fully read extent to their tensors (unless it was read in place) and
/// frees the slot.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
void Loader<Storage, Tr, Sk>::land(std::uint32_t slot) {
    const Extent& e = plan_.extents[slots_[slot].extent];
    const std::byte* staged = slot_memory(slot);
    const bool in_place = slots_[slot].buffer != staged;
    for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) {
        const Piece& piece = plan_.pieces[p];
        if (!in_place)
            sink_.store(destinations_[piece.tensor].data() + piece.tensor_offset, staged + piece.extent_offset, piece.length);
        --remaining_[piece.tensor];
    }
    if constexpr (asynchronous) {
        const std::uint64_t ticket = sink_.extent_stored();
        for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) tickets_[plan_.pieces[p].tensor] = ticket;
        copying_.push_back({slot, ticket});
    } else {
        free_slots_.push_back(slot);
    }
}

}  // namespace instanttensor
