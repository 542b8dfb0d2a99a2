// instanttensor/pipeline/destinations.hpp: where each planned tensor lands, and when it is complete.
//
// Per tensor of the plan: the destination its sink reserved (in tensor order, as sinks require,
// and only once the pipeline is about to read into it), the pieces still to land there, and, with
// a sink that copies asynchronously, the copy ticket of its last piece. A tensor is complete once
// no piece is left and that ticket's copies ran. A group load lands only the bytes this rank keeps
// (its KeptBytes), a single load what its share keeps (every tensor whole by default); a block cut
// along a dimension other than the first lands packed from strided bytes (store_strided). Into a
// sink with one buffer, the pieces of a read that follow on both in staging and in the buffer land
// in one store (store_merging).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/pipeline/plan.hpp"
#include "instanttensor/pipeline/share.hpp"

namespace instanttensor::pipeline {

/// Copies the bytes `from` lays out in runs, `source` pointing at its byte `from.at`, packed to
/// `destination`, through `copier` (a sink, or a device copier): a store per run, or one 2-D copy
/// of the whole runs where the copier has store_strided (cudaMemcpy2DAsync on the GPU).
template <class Copier>
void store_strided(Copier& copier, std::byte* destination, const std::byte* source, const Strided& from) {
    from.for_each_block([&](std::uint64_t at, std::uint64_t to, std::uint64_t run, std::uint64_t runs) {
        if (runs == 1) {
            copier.store(destination + to, source + at, run);
        } else if constexpr (requires { copier.store_strided(destination, source, run, run, runs); }) {
            copier.store_strided(destination + to, source + at, run, from.stride, runs);
        } else {
            for (std::uint64_t i = 0; i < runs; ++i) copier.store(destination + to + i * run, source + at + i * from.stride, run);
        }
    });
}

template <Sink Sk>
class Destinations {
public:
    static constexpr bool asynchronous = CopiesAsynchronously<Sk>;
    static constexpr std::uint64_t no_ticket = UINT64_MAX;

    Destinations() = default;
    /// `kept`: per planned tensor, what this rank keeps of it (empty: every tensor whole).
    Destinations(Sk& sink, const Plan& plan, std::span<const KeptBytes> kept = {})
        : sink_(&sink), plan_(&plan), kept_(kept), spans_(plan.tensors.size()), remaining_(plan.tensors.size(), 0),
          reserved_(plan.tensors.size(), false) {
        for (const Piece& p : plan.pieces)
            if (lands_here(p)) ++remaining_[p.tensor];
        if constexpr (asynchronous) tickets_.assign(plan.tensors.size(), no_ticket);
    }

    /// Whether tensor `t` (an index into Plan::tensors) is yielded here.
    [[nodiscard]] bool yields(std::uint32_t t) const { return kept_.empty() || kept_[t].kept; }
    /// The bytes of tensor `t` that land here, and the block they are.
    [[nodiscard]] KeptBytes kept(std::uint32_t t) const {
        return kept_.empty() ? kept_bytes(*plan_->tensors[t].ref, Share::whole()) : kept_[t];
    }
    /// Whether any bytes of `piece` land here.
    [[nodiscard]] bool lands_here(const Piece& piece) const {
        if (kept_.empty()) return true;
        return kept_[piece.tensor].within(piece.tensor_offset, piece.tensor_offset + piece.length).length > 0;
    }
    /// Where tensor `t`'s kept bytes go (empty until reserved, and for a tensor without bytes here).
    [[nodiscard]] std::span<std::byte> at(std::uint32_t t) const { return spans_[t]; }

    /// Stores the bytes tensor `t` keeps among its bytes [from, to) into its destination, `source`
    /// holding byte `from` and those after it as in the tensor (a block's runs land packed).
    void store(std::uint32_t t, std::uint64_t from, std::uint64_t to, const std::byte* source) {
        if (kept_.empty()) return sink_->store(spans_[t].data() + from, source, to - from);  // every tensor whole
        const KeptBytes& k = kept_[t];
        const Strided bytes = k.within(from, to);
        if (bytes.length == 0) return;
        store_strided(*sink_, spans_[t].data() + k.block_offset(bytes.at), source + (bytes.at - from), bytes);
    }
    /// As store(), but a sink with one buffer (OneBuffer) may get it later, merged with the next
    /// stores while their destinations and sources follow on; flush() stores what is held. A
    /// single load's pieces of one read, in order, merge into a store per run of adjacent tensors.
    void store_merging(std::uint32_t t, std::uint64_t from, std::uint64_t to, const std::byte* source) {
        if constexpr (OneBuffer<Sk>) {
            if (kept_.empty()) {  // every tensor whole, so each piece lands as it is
                std::byte* destination = spans_[t].data() + from;
                if (held_.bytes == 0 || held_.destination + held_.bytes != destination || held_.source + held_.bytes != source) {
                    flush();
                    held_ = {destination, source, 0};
                }
                held_.bytes += to - from;
                return;
            }
        }
        store(t, from, to, source);
    }
    /// Stores what store_merging() holds.
    void flush() {
        if constexpr (OneBuffer<Sk>) {
            if (held_.bytes != 0) sink_->store(held_.destination, held_.source, held_.bytes);
            held_ = {};
        }
    }

    /// Stores the `length` bytes tensor `t` keeps from its byte `from` on, packed at `source` (a
    /// block's runs that a group exchange brought packed).
    void store_packed(std::uint32_t t, std::uint64_t from, std::uint64_t length, const std::byte* source) {
        sink_->store(spans_[t].data() + kept(t).block_offset(from), source, length);
    }

    /// Reserves destinations for every tensor up to `last`, in order; false while the sink is full
    /// (the consumer must move on first).
    bool reserve_through(std::uint32_t last) {
        for (; next_ <= last; ++next_) {
            if (!yields(next_)) continue;
            const std::uint64_t bytes = kept(next_).size();
            if (bytes == 0) continue;
            const std::span<std::byte> destination = sink_->reserve(*plan_->tensors[next_].ref, bytes);
            if (destination.empty()) return false;
            spans_[next_] = destination;
            reserved_[next_] = true;
        }
        return true;
    }

    /// One piece of tensor `t` was stored (its copy perhaps only queued: see copies_issued).
    void piece_stored(std::uint32_t t) { --remaining_[t]; }
    /// The copies of tensor `t`'s pieces stored so far run under `ticket` (asynchronous sinks).
    void copies_issued(std::uint32_t t, std::uint64_t ticket) {
        if constexpr (asynchronous) tickets_[t] = ticket;
    }

    /// Whether every byte of tensor `t` is in its destination.
    [[nodiscard]] bool complete(std::uint32_t t) {
        if (remaining_[t] != 0) return false;
        if constexpr (asynchronous) return tickets_[t] == no_ticket || sink_->copies_done(tickets_[t]);
        else return true;
    }

    /// The consumer moved past tensor `t`: the sink may reuse its destination.
    void release(std::uint32_t t) {
        if (reserved_[t]) sink_->release(*plan_->tensors[t].ref);
    }

private:
    struct Held {  // a store held back by store_merging
        std::byte* destination = nullptr;
        const std::byte* source = nullptr;
        std::uint64_t bytes = 0;
    };

    Sk* sink_ = nullptr;
    const Plan* plan_ = nullptr;
    std::span<const KeptBytes> kept_;
    std::vector<std::span<std::byte>> spans_;
    std::vector<std::uint32_t> remaining_;  // pieces still to be stored
    std::vector<bool> reserved_;            // whether the sink holds a destination
    std::vector<std::uint64_t> tickets_;    // copy ticket of each tensor's last piece (asynchronous sinks)
    std::uint32_t next_ = 0;                // tensors below it were reserved (or need nothing)
    Held held_;
};

}  // namespace instanttensor::pipeline
