// instanttensor/pipeline/plan.hpp: which reads load which tensors.
//
// A plan covers the selected tensors of a checkpoint in file then offset order and cuts their bytes
// into extents: reads of at most `max_extent_bytes` each, at offsets and lengths aligned for the
// file (O_DIRECT needs that; buffered files have alignment 1). Adjacent selected tensors share an
// extent, so many tiny tensors cost few reads; a tensor larger than an extent spans several, and
// each piece says where in the tensor its bytes go, so the tensor still lands contiguous. A block
// of a tensor (pipeline/share.hpp) is planned as the bytes it spans.
// In a buffered file, a tensor of at least one extent has extents of its own (none carries another
// tensor's bytes), so that a sink that reads in place (sink::placement) reads all of it in place
// and copies none of it from staging.
// A plan of whole files (Coverage::whole_files, for LoadOptions::verify_files) reads each file's
// header too: its extents then tile every file from byte 0 to its end, those of the header before
// the first tensor's carrying no piece.
// A group of ranks splits these extents further (pipeline/group_plan.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"

namespace instanttensor {

/// Chooses the tensors to load; an empty function selects all.
using TensorFilter = std::function<bool(const format::TensorRef&)>;

/// Of a selected tensor, the bytes [first, second) to read (a block's span); an empty function
/// reads every byte.
using TensorRange = std::function<std::pair<std::uint64_t, std::uint64_t>(const format::TensorRef&)>;

/// What a plan reads: the selected tensors' bytes, or every byte of every file (headers included).
enum class Coverage : std::uint8_t { tensors, whole_files };

/// Bytes of one extent that belong to one tensor.
struct Piece {
    std::uint32_t tensor = 0;         ///< index into Plan::tensors
    std::uint64_t tensor_offset = 0;  ///< where in the tensor they go
    std::uint64_t extent_offset = 0;  ///< where in the extent's buffer they are
    std::uint64_t length = 0;
};

/// One read.
struct Extent {
    std::uint32_t file = 0;
    std::uint64_t offset = 0;       ///< aligned file offset
    std::uint64_t length = 0;       ///< aligned length (may run past the end of the file)
    std::uint64_t needed = 0;       ///< bytes from `offset` that must be read: up to the last piece's end
    std::uint32_t first_piece = 0;  ///< pieces [first_piece, first_piece + piece_count) of Plan::pieces
    std::uint32_t piece_count = 0;
};

/// A selected tensor and the extents that carry it.
struct PlannedTensor {
    const format::TensorRef* ref = nullptr;
    std::uint32_t piece_count = 0;  ///< pieces that must land before it is complete (0 when empty)
};

struct Plan {
    const format::Checkpoint* checkpoint = nullptr;  ///< what is planned (borrowed)
    std::vector<PlannedTensor> tensors;  ///< selected tensors, in file then offset order
    std::vector<Extent> extents;         ///< in the same order
    std::vector<Piece> pieces;
    std::uint64_t tensor_bytes = 0;      ///< bytes of the selected tensors (of their ranges)
    std::uint64_t read_bytes = 0;        ///< bytes the extents read (alignment and sharing included)
    std::uint64_t largest_tensor = 0;

    /// The smallest sink ring (allocating in FIFO order, each tensor rounded up to `granularity`)
    /// with which a load always progresses: twice the largest sum of the tensors one extent
    /// touches. Reads are submitted only once every tensor of the extent has a destination, and a
    /// ring may lose up to half its space to a region that does not fit before the wrap.
    [[nodiscard]] std::uint64_t ring_needed(std::uint64_t granularity) const {
        auto rounded = [&](std::uint64_t n) { return (std::max<std::uint64_t>(n, 1) + granularity - 1) / granularity * granularity; };
        std::uint64_t most = rounded(largest_tensor);
        for (const auto& e : extents) {
            std::uint64_t sum = 0;
            std::uint32_t last = UINT32_MAX;
            for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p)
                if (pieces[p].tensor != last) {
                    last = pieces[p].tensor;
                    sum += rounded(tensors[last].ref->nbytes());
                }
            most = std::max(most, sum);
        }
        return 2 * most;
    }
    [[deprecated("renamed ring_needed")]] [[nodiscard]] std::uint64_t window_needed(std::uint64_t granularity) const {
        return ring_needed(granularity);
    }
};

/// Plans the selected tensors of `checkpoint`. `alignment` gives each file's required alignment (a
/// power of two; 1 for none), `max_extent_bytes` the largest read (a multiple of every alignment,
/// at least three times the largest). `range` (called once per selected tensor, in plan order) reads
/// only part of a tensor; a tensor with nothing to read is planned without pieces. `chunk`, when
/// given, holds each file's chunk size (an encrypted file's, format/encryption.hpp; 1 for none): a
/// piece then starts at a multiple of it within its tensor and ends at one or at the tensor's end,
/// so that every chunk lands whole in one read. With Coverage::whole_files each file's header is
/// read too, in extents of its own where it fills one, and a file without tensors still has its
/// header's; the plan covers the files whole only where every tensor is selected and read whole.
Plan make_plan(const format::Checkpoint& checkpoint, const TensorFilter& filter,
               std::span<const std::uint64_t> alignment, std::uint64_t max_extent_bytes, const TensorRange& range = {},
               std::span<const std::uint64_t> chunk = {}, Coverage coverage = Coverage::tensors);

inline Plan make_plan(const format::Checkpoint& checkpoint, const TensorFilter& filter,
                      std::span<const std::uint64_t> alignment, std::uint64_t max_extent_bytes, const TensorRange& range,
                      std::span<const std::uint64_t> chunk, Coverage coverage) {
    if (alignment.size() != checkpoint.files().size() || (!chunk.empty() && chunk.size() != alignment.size()))
        throw usage_error("make_plan", "one alignment (and chunk size, if any) per file is needed");
    for (auto a : alignment)
        if (a == 0 || (a & (a - 1)) != 0 || max_extent_bytes % a != 0 || max_extent_bytes < 3 * a)
            throw usage_error("make_plan", "alignments must be powers of two dividing max_extent_bytes");

    Plan plan;
    plan.checkpoint = &checkpoint;
    auto align_down = [](std::uint64_t v, std::uint64_t a) { return v & ~(a - 1); };
    auto align_up = [](std::uint64_t v, std::uint64_t a) { return (v + a - 1) & ~(a - 1); };
    auto close_extent = [&] {
        auto& e = plan.extents.back();
        e.length = align_up(e.needed, alignment[e.file]);
        plan.read_bytes += e.length;
    };

    bool open = false;  // whether plan.extents.back() may still take pieces
    // Whole files: the headers of files [headers_planned, file] as extents, the last one left open
    // for the file's first tensor to join (all its bytes precede the data section).
    std::uint32_t headers_planned = 0;
    auto plan_headers_through = [&](std::uint32_t file) {
        for (; coverage == Coverage::whole_files && headers_planned <= file; ++headers_planned) {
            if (open) close_extent();
            const std::uint64_t data = checkpoint.files()[headers_planned].header.data_offset();
            for (std::uint64_t at = 0; at < data; at += max_extent_bytes) {  // max is a multiple of the alignment
                plan.extents.push_back({headers_planned, at, 0, std::min(data - at, max_extent_bytes),
                                        static_cast<std::uint32_t>(plan.pieces.size()), 0});
                open = plan.extents.back().needed < max_extent_bytes;
                if (!open) close_extent();
            }
        }
    };
    for (const auto& ref : checkpoint.tensors()) {
        plan_headers_through(ref.file);
        if (filter && !filter(ref)) continue;
        if (plan.tensors.size() == UINT32_MAX) throw format_error("plan", "too many tensors selected (at most 2^32 - 1)");
        const auto index = static_cast<std::uint32_t>(plan.tensors.size());
        plan.tensors.push_back({&ref, 0});
        const auto [first, last] = range ? range(ref) : std::pair<std::uint64_t, std::uint64_t>{0, ref.nbytes()};
        if (first > last || last > ref.nbytes())
            throw usage_error("make_plan", "the range of tensor " + detail::quote_name(ref.name()) + " runs past it");
        plan.tensor_bytes += last - first;
        plan.largest_tensor = std::max(plan.largest_tensor, ref.nbytes());

        const std::uint64_t a = alignment[ref.file];
        const std::uint64_t g = chunk.empty() ? 1 : chunk[ref.file];
        if (first % g != 0 || (last % g != 0 && last != ref.nbytes()))
            throw usage_error("make_plan", "the range of tensor " + detail::quote_name(ref.name()) + " cuts one of its chunks");
        const bool own_extents = a == 1 && last - first >= max_extent_bytes;
        std::uint64_t cursor = ref.file_offset + first;
        const std::uint64_t end = ref.file_offset + last;
        while (cursor < end) {
            auto* e = open ? &plan.extents.back() : nullptr;
            const bool joins = !own_extents && e && e->file == ref.file && e->offset + e->needed == cursor &&
                               e->needed < max_extent_bytes;
            if (!joins) {
                if (open) close_extent();
                plan.extents.push_back({ref.file, align_down(cursor, a), 0, cursor - align_down(cursor, a),
                                        static_cast<std::uint32_t>(plan.pieces.size()), 0});
                e = &plan.extents.back();
                open = true;
            }
            // needed ≤ max_extent_bytes keeps the aligned length within it too (max is a multiple of a).
            std::uint64_t n = std::min(end - cursor, max_extent_bytes - e->needed);
            if (n < end - cursor) n -= (cursor - ref.file_offset + n) % g;  // end on a chunk's end
            if (n == 0) {  // not one chunk fits in what is left of the extent
                if (e->piece_count == 0)
                    throw usage_error("make_plan", "a read of " + std::to_string(max_extent_bytes) + " bytes cannot hold a chunk of " +
                                                       std::to_string(g) + " bytes of tensor " + detail::quote_name(ref.name()) +
                                                       ": read more at once (slot_bytes, --slot-mib)");
                close_extent();
                open = false;
                continue;
            }
            plan.pieces.push_back({index, cursor - ref.file_offset, e->needed, n});
            e->needed += n;
            ++e->piece_count;
            ++plan.tensors.back().piece_count;
            cursor += n;
            if (e->needed == max_extent_bytes) {
                close_extent();
                open = false;
            }
        }
        if (own_extents && open) {
            close_extent();
            open = false;
        }
    }
    if (!checkpoint.files().empty()) plan_headers_through(static_cast<std::uint32_t>(checkpoint.files().size() - 1));
    if (open) close_extent();

    return plan;
}

}  // namespace instanttensor
