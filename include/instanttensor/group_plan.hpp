// instanttensor/group_plan.hpp: how a group of ranks splits a plan's reads and exchanges the bytes.
//
// The plan's extents are grouped, in order, into windows of at most `window_bytes`. A window is
// laid out the same way in every rank's window buffer (each extent at a page-aligned offset), and
// rank r of n reads the r-th of n equal page-aligned shares of that layout: every rank reads about
// 1/n of every window, and each read stays aligned for O_DIRECT. Then one exchange per window
// gives each rank the bytes it keeps (see share.hpp), by whichever moves fewer bytes:
//
//   all_gather   every share to every rank (shares padded to equal size: n·(n-1)·S bytes)
//   broadcasts   each share from its reader to every rank ((n-1)·L bytes, L = the window's length)
//   sends        point-to-point, exactly the bytes each rank keeps and did not read itself
//
// (ties go to the collective, which NCCL pipelines better). With every rank keeping everything,
// full windows use all_gather and others broadcasts; with a selection or split tensors, sends.
// Every rank computes the same GroupPlan from the same plan, group size and share function.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <vector>

#include "instanttensor/plan.hpp"
#include "instanttensor/share.hpp"

namespace instanttensor {

enum class ExchangeMode : std::uint8_t { none, all_gather, broadcasts, sends };

/// Bytes [offset, offset + length) of the window buffer go from rank `from` to rank `to` (every
/// other rank when `to` is everyone: a broadcast).
struct Transfer {
    static constexpr int everyone = -1;
    int from = 0;
    int to = everyone;
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
};

/// What one window's exchange does; the same on every rank.
struct WindowExchange {
    ExchangeMode mode = ExchangeMode::none;
    std::uint64_t share = 0;               ///< S: rank r read [r·S, (r+1)·S) of the window buffer
    std::uint64_t bytes = 0;               ///< L: the window's length
    std::span<const Transfer> transfers;   ///< broadcasts or sends, in the order both sides post them
};

struct Window {
    std::uint32_t first_extent = 0;
    std::uint32_t extent_count = 0;
    std::uint64_t bytes = 0;  ///< L: the end of the last extent in the window buffer
    std::uint64_t share = 0;  ///< S
    ExchangeMode mode = ExchangeMode::none;
    std::uint32_t first_transfer = 0;
    std::uint32_t transfer_count = 0;
};

/// One read of a rank's share: `length` bytes of extent `extent` from `extent_offset` on, into the
/// window buffer at `window_offset`; the first `needed` of them must be read (the rest is
/// alignment padding that may lie past the end of the file).
struct ShareRead {
    std::uint32_t extent = 0;
    std::uint64_t extent_offset = 0;
    std::uint64_t window_offset = 0;
    std::uint64_t length = 0;
    std::uint64_t needed = 0;
};

struct GroupPlan {
    int ranks = 1;
    std::vector<Window> windows;
    std::vector<std::uint64_t> extent_window_offset;  ///< per extent: where it lies in its window buffer
    std::vector<Transfer> transfers;
    /// What each rank keeps of each tensor, through keeps(): per tensor × rank, or, when every rank
    /// keeps everything (no share function), once per tensor.
    std::vector<KeptBytes> kept;
    std::size_t kept_per_tensor = 1;
    std::vector<std::uint64_t> read_bytes;             ///< per rank: bytes it reads from storage
    std::vector<std::uint64_t> received_bytes;         ///< per rank: bytes it receives from the others
    std::uint64_t buffer_bytes = 0;                    ///< one window buffer: the largest n·S

    /// A digest of everything the ranks must agree on (reads, windows, exchanges, what each rank
    /// keeps): equal on every rank that planned the same load from the same checkpoint and options.
    [[nodiscard]] std::uint64_t digest(const Plan& plan) const {
        std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the numbers
        auto mix = [&h](std::uint64_t v) {
            for (int i = 0; i < 8; ++i, v >>= 8) h = (h ^ (v & 0xff)) * 0x100000001b3ull;
        };
        mix(static_cast<std::uint64_t>(ranks));
        for (const Extent& e : plan.extents) mix(e.file), mix(e.offset), mix(e.length), mix(e.needed), mix(e.piece_count);
        for (const Window& w : windows) mix(w.extent_count), mix(w.bytes), mix(w.share), mix(static_cast<std::uint64_t>(w.mode));
        for (const Transfer& t : transfers)
            mix(static_cast<std::uint64_t>(t.from)), mix(static_cast<std::uint64_t>(t.to)), mix(t.offset), mix(t.length);
        for (std::uint32_t t = 0; t < plan.tensors.size(); ++t)  // however `kept` is stored
            for (int r = 0; r < ranks; ++r) {
                const KeptBytes& k = keeps(t, r);
                mix(k.kept), mix(k.begin), mix(k.end);
            }
        return h;
    }

    [[nodiscard]] const KeptBytes& keeps(std::uint32_t tensor, int rank) const {
        return kept[std::size_t{tensor} * kept_per_tensor + (kept_per_tensor == 1 ? 0 : static_cast<std::size_t>(rank))];
    }
    [[nodiscard]] WindowExchange exchange(std::size_t window) const {
        const Window& w = windows[window];
        return {w.mode, w.share, w.bytes, std::span(transfers).subspan(w.first_transfer, w.transfer_count)};
    }

    /// Calls read(ShareRead) for each read of `rank`'s share of window `window`, in order.
    template <class F>
    void for_each_read(const Plan& plan, std::size_t window, int rank, F&& read) const {
        const Window& w = windows[window];
        const std::uint64_t begin = w.share * static_cast<std::uint64_t>(rank);
        const std::uint64_t end = std::min(w.bytes, begin + w.share);
        for (std::uint32_t x = w.first_extent; x < w.first_extent + w.extent_count; ++x) {
            const Extent& e = plan.extents[x];
            const std::uint64_t at = extent_window_offset[x];
            const std::uint64_t from = std::max(begin, at), to = std::min(end, at + e.length);
            if (from >= to || from - at >= e.needed) continue;  // not ours, or padding only
            read(ShareRead{x, from - at, from, to - from, std::min(to - at, e.needed) - (from - at)});
        }
    }
};

/// Splits `plan` for a group of `ranks`, where rank r keeps share(tensor, r, ranks) of each tensor
/// (empty: everything), in windows of at most `window_bytes` (at least the plan's largest extent).
GroupPlan make_group_plan(const Plan& plan, int ranks, const ShareFunction& share, std::uint64_t window_bytes);

inline GroupPlan make_group_plan(const Plan& plan, int ranks, const ShareFunction& share, std::uint64_t window_bytes) {
    if (ranks < 1) throw std::invalid_argument("make_group_plan: ranks must be at least 1");
    constexpr std::uint64_t page = 4096;
    auto align_up = [](std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; };
    const auto n = static_cast<std::uint64_t>(ranks);

    GroupPlan g;
    g.ranks = ranks;
    g.read_bytes.assign(n, 0);
    g.received_bytes.assign(n, 0);
    g.kept_per_tensor = share ? static_cast<std::size_t>(n) : 1;
    g.kept.resize(plan.tensors.size() * g.kept_per_tensor);
    for (std::uint32_t t = 0; t < plan.tensors.size(); ++t)
        for (std::size_t r = 0; r < g.kept_per_tensor; ++r)
            g.kept[t * g.kept_per_tensor + r] =
                kept_bytes(*plan.tensors[t].ref, share ? share(*plan.tensors[t].ref, static_cast<int>(r), ranks) : Share::whole());

    // Windows: consecutive extents, each at a page-aligned offset, at most window_bytes in all.
    g.extent_window_offset.resize(plan.extents.size());
    for (std::uint32_t x = 0; x < plan.extents.size(); ++x) {
        const std::uint64_t length = plan.extents[x].length;
        if (length > window_bytes)
            throw std::invalid_argument("make_group_plan: window_bytes is smaller than a read (" + std::to_string(length) + " bytes)");
        Window* w = g.windows.empty() ? nullptr : &g.windows.back();
        const std::uint64_t at = w ? align_up(w->bytes, page) : 0;
        if (w == nullptr || at + length > window_bytes) {
            g.windows.push_back({x, 0, 0, 0, ExchangeMode::none, 0, 0});
            w = &g.windows.back();
        }
        const std::uint64_t offset = w->extent_count == 0 ? 0 : at;
        g.extent_window_offset[x] = offset;
        w->bytes = offset + length;
        ++w->extent_count;
    }

    std::vector<Transfer> sends;
    for (std::size_t wi = 0; wi < g.windows.size(); ++wi) {
        Window& w = g.windows[wi];
        w.share = align_up((w.bytes + n - 1) / n, page);
        g.buffer_bytes = std::max(g.buffer_bytes, n * w.share);
        for (int r = 0; r < ranks; ++r)
            g.for_each_read(plan, wi, r, [&](const ShareRead& s) { g.read_bytes[static_cast<std::size_t>(r)] += s.length; });
        if (ranks == 1) continue;

        // The point-to-point alternative: each rank's kept bytes of each piece, from whoever read them.
        sends.clear();
        std::uint64_t send_bytes = 0;
        for (int r = 0; r < ranks; ++r) {
            for (std::uint32_t x = w.first_extent; x < w.first_extent + w.extent_count; ++x) {
                const Extent& e = plan.extents[x];
                for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) {
                    const Piece& piece = plan.pieces[p];
                    const KeptBytes& k = g.keeps(piece.tensor, r);
                    const std::uint64_t from = std::max(k.begin, piece.tensor_offset);
                    const std::uint64_t to = std::min(k.end, piece.tensor_offset + piece.length);
                    if (!k.kept || from >= to) continue;
                    std::uint64_t at = g.extent_window_offset[x] + piece.extent_offset + (from - piece.tensor_offset);
                    const std::uint64_t stop = at + (to - from);
                    while (at < stop) {  // split where the readers' shares meet
                        const auto reader = static_cast<int>(at / w.share);
                        const std::uint64_t until = std::min(stop, (at / w.share + 1) * w.share);
                        if (reader != r) {
                            if (!sends.empty() && sends.back().from == reader && sends.back().to == r &&
                                sends.back().offset + sends.back().length == at)
                                sends.back().length += until - at;
                            else
                                sends.push_back({reader, r, at, until - at});
                            send_bytes += until - at;
                        }
                        at = until;
                    }
                }
            }
        }
        if (send_bytes == 0) continue;

        const std::uint64_t gather_bytes = n * (n - 1) * w.share;
        const std::uint64_t broadcast_bytes = (n - 1) * w.bytes;
        w.first_transfer = static_cast<std::uint32_t>(g.transfers.size());
        if (gather_bytes <= broadcast_bytes && gather_bytes <= send_bytes) {
            w.mode = ExchangeMode::all_gather;
            for (auto& received : g.received_bytes) received += (n - 1) * w.share;
        } else if (broadcast_bytes <= send_bytes) {
            w.mode = ExchangeMode::broadcasts;
            for (int r = 0; r < ranks; ++r) {
                const std::uint64_t begin = w.share * static_cast<std::uint64_t>(r);
                if (begin >= w.bytes) break;
                const std::uint64_t length = std::min(w.share, w.bytes - begin);
                g.transfers.push_back({r, Transfer::everyone, begin, length});
                for (int q = 0; q < ranks; ++q)
                    if (q != r) g.received_bytes[static_cast<std::size_t>(q)] += length;
            }
        } else {
            w.mode = ExchangeMode::sends;
            for (const Transfer& s : sends) g.received_bytes[static_cast<std::size_t>(s.to)] += s.length;
            g.transfers.insert(g.transfers.end(), sends.begin(), sends.end());
        }
        w.transfer_count = static_cast<std::uint32_t>(g.transfers.size() - w.first_transfer);
    }
    return g;
}

}  // namespace instanttensor
