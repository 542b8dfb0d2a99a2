// instanttensor/detail/group_pipeline.hpp: the Loader's group loads (a GroupTransport).
//
// Windows of the plan move through four stages, each window in its own buffer: this rank reads its
// share (through pinned staging and an upload when the transport exchanges device memory), the
// transport exchanges the window (the same exchanges in the same order on every rank), the bytes
// this rank keeps land in its sink, and the buffer is reused once the sink's copies out of it ran.
// pump_group() polls every stage in turn, so the stages of successive windows overlap. Included by
// loader.hpp after the class.
#pragma once

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

#include "instanttensor/loader.hpp"

namespace instanttensor {

template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
void Loader<Storage, Tr, Sk>::prepare_group() {
    const int rank = transport_.rank(), ranks = transport_.size();
    if (ranks < 1 || rank < 0 || rank >= ranks)
        throw std::invalid_argument("transport: rank " + std::to_string(rank) + " of " + std::to_string(ranks));
    if (options_.windows < 2 || options_.windows > 16) throw std::invalid_argument("LoadOptions::windows must be 2 to 16");
    group_ = make_group_plan(plan_, ranks, rank, options_.share, std::max(options_.window_bytes, options_.slot_bytes));
    // Ranks that planned different loads would wait on each other's exchanges forever.
    const std::vector<std::uint64_t> digests = transport_.gather(group_.digest);
    for (int r = 0; r < ranks; ++r)
        if (digests[static_cast<std::size_t>(r)] != digests[0])
            throw error("group", "rank " + std::to_string(r) + " planned a different load than rank 0: every rank must load "
                                 "the same checkpoint with the same filter, slot_bytes, window_bytes and share function");
    stats_.received_bytes = group_.received_bytes[static_cast<std::size_t>(rank)];
    const std::uint64_t buffers = std::min<std::uint64_t>(options_.windows, std::max<std::size_t>(group_.windows.size(), 1));
#if INSTANTTENSOR_HAS_CUDA
    if constexpr (window_memory == MemoryKind::device) {
        detail::DeviceGuard guard(transport_.device());
        window_buffers_ = WindowMemory(buffers * group_.buffer_bytes, "the group's window buffers (LoadOptions::window_bytes, windows)");
    } else
#endif
    {
        window_buffers_ = WindowMemory(buffers * group_.buffer_bytes);
    }
    if constexpr (window_memory == Storage::destination)
        if constexpr (requires { storage_.register_memory(window_buffers_.span()); })
            storage_.register_memory(window_buffers_.span());
#if INSTANTTENSOR_HAS_CUDA
    if constexpr (uploads) {
        uploader_.emplace(transport_.device(), nullptr, 2);
        uploader_->prepare_copies(std::clamp<std::uint64_t>(options_.staging_bytes / options_.slot_bytes, 2,
                                                            std::max<std::uint64_t>(2, plan_.extents.size())));
    }
#endif
    for (std::uint64_t b = buffers; b-- > 0;) free_buffers_.push_back(window_buffers_.data() + b * group_.buffer_bytes);
    stats_.window_memory = window_buffers_.size();
}

/// Drives the group pipeline until `done()`. It polls: reads, uploads, exchanges and copies
/// each complete on their own, and the loop keeps every stage fed; it sleeps in the kernel only
/// when reads are all that is in flight.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
template <class Done>
void Loader<Storage, Tr, Sk>::pump_group(Done done) {
    for (;;) {
        bool moved = reclaim_windows();
        moved |= start_windows();
        moved |= submit_share_reads();
        moved |= start_exchanges();
        moved |= land_windows();
        if (done()) return;
        // Besides reads: uploads, or windows past their reads (waiting on their exchange, the sink's
        // room or its copies), which complete without the kernel telling us.
        const bool others_pending = !uploading_.empty() || std::any_of(active_.begin(), active_.end(), [](const ActiveWindow& w) {
            return w.exchange_started;
        });
        if (in_flight_ > 0) {
            const std::size_t n = storage_.reap(results_, !moved && !others_pending);
            process(n);
            moved |= n > 0;
        }
        if (!moved) {
            if (in_flight_ == 0 && !others_pending) throw std::logic_error("loader: a group load stalled");
            std::this_thread::yield();
        }
    }
}

/// Starts windows while window buffers are free.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
bool Loader<Storage, Tr, Sk>::start_windows() {
    bool moved = false;
    while (next_window_ < group_.windows.size() && !free_buffers_.empty()) {
        ActiveWindow w;
        w.index = static_cast<std::uint32_t>(next_window_++);
        w.buffer = free_buffers_.back();
        free_buffers_.pop_back();
        group_.for_each_read(plan_, w.index, transport_.rank(), [&](const ShareRead& r) { w.reads.push_back(r); });
        w.reads_left = w.reads.size();
        w.next_extent = group_.windows[w.index].first_extent;
        w.next_piece = plan_.extents[w.next_extent].first_piece;
        active_.push_back(std::move(w));
        moved = true;
    }
    return moved;
}

/// Submits this rank's reads of the started windows, oldest window first.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
bool Loader<Storage, Tr, Sk>::submit_share_reads() {
    bool moved = false;
    for (ActiveWindow& w : active_) {
        while (w.next_read < w.reads.size() && in_flight_ < depth_ && !free_reads_.empty()) {
            if (uploads && free_slots_.empty()) return moved;
            const ShareRead& s = w.reads[w.next_read++];
            const Extent& e = plan_.extents[s.extent];
            const std::uint64_t tag = free_reads_.back();
            free_reads_.pop_back();
            Read& r = reads_[tag];
            r = {e.file, e.offset + s.extent_offset, s.length, s.needed, 0, w.buffer + s.window_offset, w.index, nullptr, 0};
            if constexpr (uploads) {
                r.slot = free_slots_.back();
                free_slots_.pop_back();
                r.upload_to = r.buffer;
                r.buffer = slot_memory(r.slot);
            }
            submit(tag);
            moved = true;
        }
    }
    return moved;
}

/// A share read is complete: upload it (through staging) and free its tag.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
void Loader<Storage, Tr, Sk>::share_read_done(std::uint64_t tag) {
    Read& r = reads_[tag];
    ActiveWindow& w = active(r.extent);
#if INSTANTTENSOR_HAS_CUDA
    if constexpr (uploads) {
        uploader_->store(r.upload_to, r.buffer, r.length);
        w.last_upload = uploader_->extent_stored();
        uploading_.push_back({r.slot, w.last_upload});
    }
#endif
    --w.reads_left;
    free_reads_.push_back(tag);
}

/// Frees the staging slots whose uploads ran, and the window buffers whose bytes all landed.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
bool Loader<Storage, Tr, Sk>::reclaim_windows() {
    bool moved = false;
#if INSTANTTENSOR_HAS_CUDA
    if constexpr (uploads)
        while (!uploading_.empty() && uploader_->copies_done(uploading_.front().ticket)) {
            free_slots_.push_back(uploading_.front().slot);
            uploading_.pop_front();
            moved = true;
        }
#endif
    while (!active_.empty() && active_.front().landed) {
        ActiveWindow& w = active_.front();
        if constexpr (asynchronous)
            if (w.copy_ticket != no_ticket && !sink_.copies_done(w.copy_ticket)) break;
        free_buffers_.push_back(w.buffer);
        active_.pop_front();
        moved = true;
    }
    return moved;
}

template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
bool Loader<Storage, Tr, Sk>::uploaded(const ActiveWindow& w) {
#if INSTANTTENSOR_HAS_CUDA
    if constexpr (uploads) return w.last_upload == no_ticket || uploader_->copies_done(w.last_upload);
#endif
    (void)w;
    return true;
}

/// Starts the exchanges of windows whose share is read, in window order on every rank.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
bool Loader<Storage, Tr, Sk>::start_exchanges() {
    bool moved = false;
    for (ActiveWindow& w : active_) {
        if (w.exchange_started) continue;
        if (w.reads_left > 0 || !uploaded(w)) break;
        w.exchange_ticket = transport_.exchange(w.buffer, group_.exchange(w.index));
        w.exchange_started = moved = true;
    }
    return moved;
}

/// Lands the kept bytes of exchanged windows into the sink, oldest first, as far as it has room.
template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
bool Loader<Storage, Tr, Sk>::land_windows() {
    bool moved = false;
    for (ActiveWindow& w : active_) {
        if (w.landed) continue;
        if (!w.exchange_started) break;
        if (!w.exchange_done) {
            if (!transport_.exchange_done(w.exchange_ticket)) break;
            w.exchange_done = moved = true;
        }
        const Window& window = group_.windows[w.index];
        const Extent& last = plan_.extents[window.first_extent + window.extent_count - 1];
        const std::uint32_t end_piece = last.first_piece + last.piece_count;
        bool stored = false;
        std::uint32_t from_piece = w.next_piece;
        for (; w.next_piece < end_piece; ++w.next_piece) {
            const Piece& piece = plan_.pieces[w.next_piece];
            while (w.next_piece >= plan_.extents[w.next_extent].first_piece + plan_.extents[w.next_extent].piece_count)
                ++w.next_extent;
            const KeptBytes& k = group_.keeps(piece.tensor);
            const std::uint64_t begin = std::max(k.begin, piece.tensor_offset);
            const std::uint64_t end = std::min(k.end, piece.tensor_offset + piece.length);
            if (!k.kept || begin >= end) continue;
            if (!reserve_through(piece.tensor)) break;
            const std::byte* source =
                w.buffer + group_.extent_window_offset[w.next_extent] + piece.extent_offset + (begin - piece.tensor_offset);
            sink_.store(destinations_[piece.tensor].data() + (begin - k.begin), source, end - begin);
            --remaining_[piece.tensor];
            stored = moved = true;
        }
        if constexpr (asynchronous) {
            if (stored) {
                const std::uint64_t ticket = sink_.extent_stored();
                for (std::uint32_t p = from_piece; p < w.next_piece; ++p) tickets_[plan_.pieces[p].tensor] = ticket;
                w.copy_ticket = ticket;
            }
        }
        if (w.next_piece < end_piece) break;  // the sink is full until the consumer moves on
        w.landed = moved = true;
    }
    return moved;
}

}  // namespace instanttensor
