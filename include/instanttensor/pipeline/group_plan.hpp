// instanttensor/pipeline/group_plan.hpp: how a group of ranks splits a plan's reads and exchanges
// the bytes.
//
// The plan's extents are grouped, in order, into windows of at most `window_bytes`. A window is
// laid out the same way in every rank's window buffer (each extent at a page-aligned offset), and
// rank r of n reads the r-th of n equal page-aligned segments of that layout: every rank reads
// about 1/n of every window, and each read stays aligned for O_DIRECT. Then one exchange per
// window gives each rank the bytes it keeps (its share, pipeline/share.hpp), by whichever moves
// fewer bytes:
//
//   all_gather   every segment to every rank (segments padded to equal size: n·(n-1)·S bytes)
//   broadcasts   each segment from its reader to every rank ((n-1)·L bytes, L = the window's length)
//   sends        point-to-point, exactly the bytes each rank keeps and did not read itself
//
// (ties go to the collective, which NCCL pipelines better). With every rank keeping everything, a
// window of tensor bytes alone goes by all_gather (or broadcasts, when the segments do not divide
// it evenly); one whose reads also carry bytes nobody keeps (alignment padding, a file's header)
// goes point-to-point when that moves fewer bytes; with a selection or split tensors, most windows
// go point-to-point. Every rank computes its GroupPlan from the same plan, group size and share
// function: the same windows and exchanges, with only its own sends and kept bytes stored.
//
// A block cut along a dimension other than the first is strided in the window: before a sends
// exchange, its reader packs each receiver's runs into a pack area after the window in its buffer
// (a Pack), sends them as one transfer, and the receiver gets them packed at the window offset of
// their first byte (the bytes they span there are the reader's segment, which it does not read), so
// that it lands them with one copy; nobody receives a byte it does not keep.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "instanttensor/error.hpp"
#include "instanttensor/pipeline/plan.hpp"
#include "instanttensor/pipeline/share.hpp"

namespace instanttensor {

enum class ExchangeMode : std::uint8_t { none, all_gather, broadcasts, sends };

/// `length` bytes go from rank `from`'s window buffer at `source` to rank `to`'s at `offset` (every
/// other rank's when `to` is everyone: a broadcast). `source` is `offset`, or, for bytes the sender
/// packed, in its pack area after the window.
struct Transfer {
    static constexpr int everyone = -1;
    int from = 0;
    int to = everyone;
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    std::uint64_t source = 0;

    [[nodiscard]] bool packed() const noexcept { return source != offset; }
};

/// Before a window's exchange, this rank copies the bytes `from` lays out in its window buffer
/// (offsets into it) packed to offset `to`, in its pack area: the source of a packed Transfer.
struct Pack {
    Strided from;
    std::uint64_t to = 0;
};

/// The most point-to-point transfers one NCCL group of a window's sends holds, counted over every
/// rank's: NCCL aggregates a bounded number of calls in a group (2048 in its documentation).
inline constexpr std::uint64_t max_group_transfers = 1024;

/// What one window's exchange does; the same on every rank.
struct WindowExchange {
    ExchangeMode mode = ExchangeMode::none;
    std::uint64_t segment = 0;             ///< S: rank r read [r·S, (r+1)·S) of the window buffer
    std::uint64_t bytes = 0;               ///< L: the window's length
    std::span<const Transfer> transfers;   ///< broadcasts or sends, in the order both sides post them
    /// Sends only, per transfer: the group it is posted in (non-decreasing). Groups cut the list of
    /// every rank's sends of the window into runs of max_group_transfers, so both sides of a
    /// transfer put it in the same group, and each group completes on its own.
    std::span<const std::uint32_t> groups;
};

struct Window {
    std::uint32_t first_extent = 0;
    std::uint32_t extent_count = 0;
    std::uint64_t bytes = 0;  ///< L: the end of the last extent in the window buffer
    std::uint64_t segment = 0;  ///< S: the bytes of the window buffer each rank reads
    ExchangeMode mode = ExchangeMode::none;
    std::uint32_t first_transfer = 0;
    std::uint32_t transfer_count = 0;
    std::uint32_t first_pack = 0;  ///< this rank's packs of the window, in GroupPlan::packs
    std::uint32_t pack_count = 0;
};

/// One read of a rank's segment: `length` bytes of extent `extent` from `extent_offset` on, into the
/// window buffer at `window_offset`; the first `needed` of them must be read (the rest is
/// alignment padding that may lie past the end of the file).
struct SegmentRead {
    std::uint32_t extent = 0;
    std::uint64_t extent_offset = 0;
    std::uint64_t window_offset = 0;
    std::uint64_t length = 0;
    std::uint64_t needed = 0;
};
using ShareRead [[deprecated("renamed SegmentRead")]] = SegmentRead;

/// The group plan of one rank. Every rank computes it from the same plan, group size and share
/// function; the parts that drive the exchanges (windows, their modes, broadcasts) are the same on
/// every rank, while the point-to-point transfers and the kept bytes are only this rank's, so that
/// its memory grows with the tensors and this rank's traffic, not with tensors × ranks.
struct GroupPlan {
    int ranks = 1;
    int rank = 0;  ///< the rank this plan is for
    std::vector<Window> windows;
    std::vector<std::uint64_t> extent_window_offset;  ///< per extent: where it lies in its window buffer
    /// Per window, in the order every rank posts them: the broadcasts, or the sends this rank takes
    /// part in (as sender or receiver; each pair of ranks lists its sends in the same order).
    std::vector<Transfer> transfers;
    std::vector<std::uint32_t> transfer_groups;  ///< per transfer of a sends window: its group (WindowExchange::groups)
    std::vector<Pack> packs;                     ///< per window, what this rank packs before its exchange
    std::vector<KeptBytes> kept;                       ///< per planned tensor: what this rank keeps
    std::vector<std::uint64_t> read_bytes;             ///< per rank: bytes it reads from storage
    std::vector<std::uint64_t> kept_bytes;             ///< per rank: bytes it keeps
    std::vector<std::uint64_t> received_bytes;         ///< per rank: bytes it receives from the others
    std::uint64_t buffer_bytes = 0;                    ///< one window: the largest n·S; packed sends start here
    std::uint64_t pack_bytes = 0;                      ///< this rank's pack area, after the window in each buffer (whole pages)
    /// A digest of everything the ranks must agree on (reads, windows, every rank's transfers and
    /// kept bytes): equal on every rank that planned the same load from the same checkpoint and
    /// options, whatever its rank.
    std::uint64_t digest = 0;

    [[nodiscard]] const KeptBytes& keeps(std::uint32_t tensor) const { return kept[tensor]; }
    [[nodiscard]] WindowExchange exchange(std::size_t window) const {
        const Window& w = windows[window];
        const auto groups = w.mode == ExchangeMode::sends ? std::span(transfer_groups).subspan(w.first_transfer, w.transfer_count)
                                                          : std::span<const std::uint32_t>();
        return {w.mode, w.segment, w.bytes, std::span(transfers).subspan(w.first_transfer, w.transfer_count), groups};
    }
    [[nodiscard]] std::span<const Pack> packs_of(std::size_t window) const {
        return std::span(packs).subspan(windows[window].first_pack, windows[window].pack_count);
    }

    /// Calls part(reader, from, until) for the bytes [at, end) of window `window`'s buffer, cut where
    /// the readers' segments meet, in order.
    template <class F>
    void for_each_reader(std::size_t window, std::uint64_t at, std::uint64_t end, F&& part) const {
        const std::uint64_t segment = windows[window].segment;
        while (at < end) {
            const std::uint64_t until = std::min(end, (at / segment + 1) * segment);
            part(static_cast<int>(at / segment), at, until);
            at = until;
        }
    }

    /// Calls read(SegmentRead) for each read of `reader`'s segment of window `window`, in order.
    template <class F>
    void for_each_read(const Plan& plan, std::size_t window, int reader, F&& read) const {
        const Window& w = windows[window];
        const std::uint64_t begin = w.segment * static_cast<std::uint64_t>(reader);
        const std::uint64_t end = std::min(w.bytes, begin + w.segment);
        for (std::uint32_t x = w.first_extent; x < w.first_extent + w.extent_count; ++x) {
            const Extent& e = plan.extents[x];
            const std::uint64_t at = extent_window_offset[x];
            const std::uint64_t from = std::max(begin, at), to = std::min(end, at + e.length);
            if (from >= to || from - at >= e.needed) continue;  // not ours, or padding only
            read(SegmentRead{x, from - at, from, to - from, std::min(to - at, e.needed) - (from - at)});
        }
    }
};

/// `read`, widened to the whole chunks of the tensors whose chunks it cuts (`chunk`: each file's
/// chunk size, pipeline/decryptor.hpp): the bytes a rank of a group load that decrypts must read
/// and decrypt to hold every byte of its segment in plaintext before the exchange (it reads them
/// widened further to whole pages). Two neighbouring ranks both read, and decrypt, the chunk their
/// segments share; the exchange then overwrites each one's copy of the other's bytes with the same
/// plaintext.
inline SegmentRead whole_chunks(const Plan& plan, const GroupPlan& group, const SegmentRead& read, std::span<const std::uint64_t> chunk) {
    const Extent& e = plan.extents[read.extent];
    const std::uint64_t size = chunk[e.file];
    std::uint64_t from = read.extent_offset, to = from + read.length;
    for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) {
        const Piece& piece = plan.pieces[p];
        const std::uint64_t begin = piece.extent_offset, end = begin + piece.length;  // pieces start on a chunk
        if (begin <= from && from < end) from = begin + (from - begin) / size * size;
        if (begin < to && to < end) {
            const std::uint64_t tensor_end = piece.tensor_offset + piece.length;  // a chunk's end, or the tensor's
            to = begin + std::min((piece.tensor_offset + (to - begin) + size - 1) / size * size, tensor_end) - piece.tensor_offset;
        }
    }
    return {read.extent, from, group.extent_window_offset[read.extent] + from, to - from, std::min(to, e.needed) - from};
}

/// Splits `plan` for rank `rank` of a group of `ranks`, where rank r keeps share(tensor, r, ranks)
/// of each tensor (empty: everything), in windows of at most `window_bytes` (at least the plan's
/// largest extent). The share function is called once per tensor and rank.
GroupPlan make_group_plan(const Plan& plan, int ranks, int rank, const ShareFunction& share, std::uint64_t window_bytes);

namespace detail {

/// A hash of a sequence of 64-bit numbers, for GroupPlan::digest: a multiply and a shift per
/// number (not per byte: the plan of a big group mixes tens of millions of them).
class PlanDigest {
public:
    void mix(std::uint64_t v) noexcept {
        h_ = (h_ ^ v) * 0x9e3779b97f4a7c15ull;
        h_ ^= h_ >> 29;
    }
    void mix(const Transfer& t) noexcept {
        mix(static_cast<std::uint64_t>(t.from)), mix(static_cast<std::uint64_t>(t.to)), mix(t.offset), mix(t.length), mix(t.source);
    }
    [[nodiscard]] std::uint64_t value() const noexcept { return h_; }

private:
    std::uint64_t h_ = 0xcbf29ce484222325ull;
};

/// The bytes of a tensor one rank keeps, or none: a KeptBytes without its block, so that a window
/// of a million tensors on 8 ranks holds 256 MB of them, not 512.
struct KeptRange {
    static constexpr std::uint64_t none = UINT64_MAX;
    std::uint64_t begin = none;
    std::uint64_t run = 0;
    std::uint64_t stride = 0;
    std::uint64_t runs = 0;

    KeptRange() = default;
    explicit KeptRange(const KeptBytes& k) noexcept
        : begin(k.kept ? k.begin : none), run(k.run), stride(k.stride), runs(k.runs) {}
    [[nodiscard]] KeptBytes bytes() const noexcept { return {begin != none, begin, run, stride, runs, 0, 0, 0}; }
    /// Whether any kept byte lies in the tensor's bytes [from, to).
    [[nodiscard]] bool meets(std::uint64_t from, std::uint64_t to) const noexcept {
        return begin != none && run != 0 && begin < to && bytes().end() > from;
    }
    friend bool operator==(const KeptRange&, const KeptRange&) = default;
};

/// Every rank's KeptRange of the tensors of the window being planned, each tensor evaluated once:
/// a tensor that spans windows keeps its entry from one window to the next. Without a share
/// function every rank keeps every tensor whole, and one KeptRange per tensor stands for all.
class KeptByRank {
public:
    KeptByRank(const Plan& plan, int ranks, int rank, const ShareFunction& share, GroupPlan& g, PlanDigest& digest)
        : plan_(plan), n_(static_cast<std::size_t>(ranks)), width_(share ? n_ : 1), rank_(static_cast<std::size_t>(rank)),
          share_(share), g_(g), digest_(digest) {}

    /// Makes tensors up to `last` (inclusive) available, dropping those before `first`.
    void cover(std::uint32_t first, std::uint32_t last) {
        if (first > first_) {
            const std::size_t drop = std::min<std::size_t>(first - first_, rows_.size() / width_);
            rows_.erase(rows_.begin(), rows_.begin() + static_cast<std::ptrdiff_t>(drop * width_));
            first_ += static_cast<std::uint32_t>(drop);
        }
        while (next_ <= last) evaluate();
    }
    /// Evaluates the tensors no window covered (those without bytes after the last one) and sums
    /// what each rank keeps into the plan.
    void finish() {
        while (next_ < plan_.tensors.size()) evaluate();
        if (width_ == 1) g_.kept_bytes.assign(n_, everyone_keeps_);
    }
    [[nodiscard]] const KeptRange& operator()(std::uint32_t tensor, int rank) const {
        return rows_[(tensor - first_) * width_ + (width_ == 1 ? 0 : static_cast<std::size_t>(rank))];
    }

private:
    void evaluate() {
        if (rows_.empty()) first_ = next_;
        const format::TensorRef& ref = *plan_.tensors[next_].ref;
        for (std::size_t r = 0; r < width_; ++r) {
            const KeptBytes k = kept_bytes(ref, share_ ? share_(ref, static_cast<int>(r), static_cast<int>(n_)) : Share::whole(),
                                           plan_.checkpoint ? plan_.checkpoint->files()[ref.file].path.native() : "share");
            if (width_ == 1) everyone_keeps_ += k.size();
            else g_.kept_bytes[r] += k.size();
            if (width_ == 1 || r == rank_) g_.kept[next_] = k;
            rows_.push_back(KeptRange(k));
        }
        // The digest sees runs of ranks keeping the same bytes, so that no share function and one
        // that keeps everything (the same load) digest alike.
        const KeptRange* row = &rows_[rows_.size() - width_];
        for (std::size_t r = 0; r < width_;) {
            std::size_t run = 1;
            while (r + run < width_ && row[r + run] == row[r]) ++run;
            digest_.mix(row[r].begin), digest_.mix(row[r].run), digest_.mix(row[r].stride), digest_.mix(row[r].runs);
            digest_.mix(width_ == 1 ? n_ : run);
            r += run;
        }
        ++next_;
    }

    const Plan& plan_;
    std::size_t n_, width_, rank_;
    const ShareFunction& share_;
    GroupPlan& g_;
    PlanDigest& digest_;
    std::vector<KeptRange> rows_;  // tensors [first_, next_) × width_
    std::uint32_t first_ = 0;
    std::uint32_t next_ = 0;
    std::uint64_t everyone_keeps_ = 0;  // without a share function: the bytes every rank keeps
};

}  // namespace detail

inline GroupPlan make_group_plan(const Plan& plan, int ranks, int rank, const ShareFunction& share, std::uint64_t window_bytes) {
    if (ranks < 1 || rank < 0 || rank >= ranks)
        throw usage_error("make_group_plan", "rank " + std::to_string(rank) + " of " + std::to_string(ranks));
    constexpr std::uint64_t page = 4096;
    auto align_up = [](std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; };
    const auto n = static_cast<std::uint64_t>(ranks);

    GroupPlan g;
    g.ranks = ranks;
    g.rank = rank;
    g.read_bytes.assign(n, 0);
    g.kept_bytes.assign(n, 0);
    g.received_bytes.assign(n, 0);
    g.kept.resize(plan.tensors.size());
    detail::PlanDigest digest;
    digest.mix(n);
    for (const Extent& e : plan.extents) digest.mix(e.file), digest.mix(e.offset), digest.mix(e.length), digest.mix(e.needed), digest.mix(e.piece_count);

    // Windows: consecutive extents, each at a page-aligned offset, at most window_bytes in all.
    g.extent_window_offset.resize(plan.extents.size());
    for (std::uint32_t x = 0; x < plan.extents.size(); ++x) {
        const std::uint64_t length = plan.extents[x].length;
        if (length > window_bytes)
            throw usage_error("make_group_plan", "window_bytes is smaller than a read (" + std::to_string(length) + " bytes)");
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

    // Segments first: packed sends start after the largest window, in every buffer.
    for (Window& w : g.windows) {
        w.segment = align_up((w.bytes + n - 1) / n, page);
        g.buffer_bytes = std::max(g.buffer_bytes, n * w.segment);
    }

    detail::KeptByRank keeps(plan, ranks, rank, share, g, digest);
    std::vector<std::uint64_t> packed(n);  // per sender: its pack area used so far in this window
    for (std::size_t wi = 0; wi < g.windows.size(); ++wi) {
        Window& w = g.windows[wi];
        for (int r = 0; r < ranks; ++r)
            g.for_each_read(plan, wi, r, [&](const SegmentRead& s) { g.read_bytes[static_cast<std::size_t>(r)] += s.length; });
        const Extent& first = plan.extents[w.first_extent];
        const Extent& last = plan.extents[w.first_extent + w.extent_count - 1];
        keeps.cover(plan.pieces[first.first_piece].tensor, plan.pieces[last.first_piece + last.piece_count - 1].tensor);

        // The point-to-point alternative: each rank's kept bytes of each piece, from whoever read
        // them. sends_to(r, emit) calls emit(Transfer, pack) for receiver r's, in window order:
        // contiguous bytes at their window offsets, adjacent ones from the same reader merged; a
        // strided block's bytes packed (pack: their layout in the window), each reader's in one
        // transfer per piece (r = everyone: no receiver, every run of kept bytes).
        auto sends_to = [&](int r, auto&& emit) {
            Transfer pending{};
            const auto flush = [&] {
                if (pending.length > 0) emit(pending, static_cast<const Strided*>(nullptr));
                pending = {};
            };
            for (std::uint32_t x = w.first_extent; x < w.first_extent + w.extent_count; ++x) {
                const Extent& e = plan.extents[x];
                for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) {
                    const Piece& piece = plan.pieces[p];
                    const detail::KeptRange& kept = keeps(piece.tensor, r);
                    if (!kept.meets(piece.tensor_offset, piece.tensor_offset + piece.length)) continue;
                    const KeptBytes k = kept.bytes();
                    // Tensor byte t of the piece lies at window offset origin + t (unsigned arithmetic:
                    // origin may wrap below 0, each sum lands in the window). Only the piece's bytes from
                    // its first kept one to its last are looked at.
                    const std::uint64_t origin = g.extent_window_offset[x] + piece.extent_offset - piece.tensor_offset;
                    const std::uint64_t lo = std::max(k.begin, piece.tensor_offset), hi = std::min(k.end(), piece.tensor_offset + piece.length);
                    g.for_each_reader(wi, origin + lo, origin + hi, [&](int reader, std::uint64_t from, std::uint64_t until) {
                        if (reader == r) return;
                        // Rows (one run): every byte of [from, until) is kept.
                        Strided bytes = k.contiguous() ? Strided{from - origin, 0, until - from, until - from, until - from}
                                                       : k.within(from - origin, until - origin);
                        if (bytes.length == 0) return;
                        bytes.at += origin;
                        if (!bytes.contiguous()) {
                            flush();
                            const auto sender = static_cast<std::size_t>(reader);
                            emit(Transfer{reader, r, bytes.at, bytes.length, g.buffer_bytes + packed[sender]}, &bytes);
                            packed[sender] += bytes.length;
                        } else if (pending.length > 0 && pending.from == reader && pending.offset + pending.length == bytes.at) {
                            pending.length += bytes.length;
                        } else {
                            flush();
                            pending = {reader, r, bytes.at, bytes.length, bytes.at};
                        }
                    });
                }
            }
            flush();
        };
        // Every send of the window, receivers in rank order. They are generated, not stored: a
        // group of n ranks has up to n·(n-1) of them, of which this rank keeps only its own. When
        // every rank keeps every byte, one list of runs serves every receiver (less its own reads):
        // n times the runs, not n times the pieces.
        auto for_each_send = [&](auto&& emit) {
            std::fill(packed.begin(), packed.end(), 0);
            if (share) {
                for (int r = 0; r < ranks; ++r) sends_to(r, emit);
                return;
            }
            std::vector<Transfer> runs;
            sends_to(Transfer::everyone, [&](const Transfer& t, const Strided*) { runs.push_back(t); });
            for (int r = 0; r < ranks; ++r)
                for (const Transfer& t : runs)
                    if (t.from != r) emit(Transfer{t.from, r, t.offset, t.length, t.source}, static_cast<const Strided*>(nullptr));
        };
        std::uint64_t send_bytes = 0;
        if (share) {
            for_each_send([&](const Transfer& t, const Strided*) { send_bytes += t.length; });
        } else {  // every byte a rank reads goes to the n - 1 others: no need to list the sends yet
            for (std::uint32_t p = first.first_piece; p < last.first_piece + last.piece_count; ++p)
                send_bytes += plan.pieces[p].length;
            send_bytes *= n - 1;
        }
        digest.mix(w.extent_count), digest.mix(w.bytes), digest.mix(w.segment);
        if (send_bytes == 0) {
            digest.mix(static_cast<std::uint64_t>(w.mode));
            continue;
        }

        const std::uint64_t gather_bytes = n * (n - 1) * w.segment;
        const std::uint64_t broadcast_bytes = (n - 1) * w.bytes;
        w.first_transfer = static_cast<std::uint32_t>(g.transfers.size());
        if (gather_bytes <= broadcast_bytes && gather_bytes <= send_bytes) {
            w.mode = ExchangeMode::all_gather;
            for (auto& received : g.received_bytes) received += (n - 1) * w.segment;
        } else if (broadcast_bytes <= send_bytes) {
            w.mode = ExchangeMode::broadcasts;
            for (int r = 0; r < ranks; ++r) {  // each rank receives the window less its own segment
                const std::uint64_t begin = std::min(w.bytes, w.segment * static_cast<std::uint64_t>(r));
                const std::uint64_t length = std::min(w.segment, w.bytes - begin);
                g.received_bytes[static_cast<std::size_t>(r)] += w.bytes - length;
                if (length == 0) continue;
                g.transfers.push_back({r, Transfer::everyone, begin, length, begin});
                g.transfer_groups.push_back(0);
                digest.mix(g.transfers.back());
            }
        } else {
            w.mode = ExchangeMode::sends;
            std::uint64_t index = 0;  // in the list of every rank's sends, the same on every rank
            w.first_pack = static_cast<std::uint32_t>(g.packs.size());
            for_each_send([&](const Transfer& t, const Strided* pack) {
                g.received_bytes[static_cast<std::size_t>(t.to)] += t.length;
                digest.mix(t);
                if (t.from == rank || t.to == rank) {
                    g.transfers.push_back(t);
                    g.transfer_groups.push_back(static_cast<std::uint32_t>(index / max_group_transfers));
                }
                if (t.from == rank && pack) g.packs.push_back({*pack, t.source});
                ++index;
            });
            w.pack_count = static_cast<std::uint32_t>(g.packs.size() - w.first_pack);
            g.pack_bytes = std::max(g.pack_bytes, packed[static_cast<std::size_t>(rank)]);
        }
        digest.mix(static_cast<std::uint64_t>(w.mode));
        w.transfer_count = static_cast<std::uint32_t>(g.transfers.size() - w.first_transfer);
    }
    keeps.finish();
    g.pack_bytes = align_up(g.pack_bytes, page);  // every window buffer stays page-aligned for O_DIRECT
    g.digest = digest.value();
    return g;
}

}  // namespace instanttensor
