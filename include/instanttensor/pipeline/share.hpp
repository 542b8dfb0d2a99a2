// instanttensor/pipeline/share.hpp: what each rank of a group keeps of each tensor (its share).
//
// A share is the whole tensor, nothing, or a block: a range of indices along one dimension, all of
// the others whole. A group load yields to each rank only the tensors it keeps, and of a split
// tensor only its block; only those bytes are sent to it. Every rank evaluates the share function
// for every rank, so it must give the same answer on every rank: make it a function of the tensor,
// the rank and the group size. A single load (one rank) takes a share too: it reads the bytes the
// block spans and lands only the block.
//
// A block along dimension 0 is one range of the tensor's bytes; along dimension d ≥ 1 it is a run
// of bytes in each index of the dimensions before d, `stride` bytes apart: for the [out, in] weight
// of a row-parallel layer split along `in`, one run per row. KeptBytes says which bytes those are;
// Strided walks them.
//
//   options.share = instanttensor::split_rows([](const auto& t) { return t.name().ends_with("q_proj.weight"); });
//   options.share = instanttensor::tensor_parallel(is_column_parallel, is_row_parallel);
//   options.share = instanttensor::keep_if([&](const auto& t, int rank) { return stage_of(t) == rank; });
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/pipeline/plan.hpp"

namespace instanttensor {

/// What one rank keeps of one tensor: nothing, the whole tensor, or the block of indices
/// [first, first + count) of dimension `dim` (`all` = to the end of the dimension). A scalar has
/// no dimension: it is kept whole or not at all.
struct Share {
    static constexpr std::uint64_t all = UINT64_MAX;

    bool kept = true;
    std::uint32_t dim = 0;
    std::uint64_t first = 0;
    std::uint64_t count = all;

    static constexpr Share whole() noexcept { return {}; }
    static constexpr Share none() noexcept { return {false, 0, 0, 0}; }
    static constexpr Share block(std::uint32_t dim, std::uint64_t first, std::uint64_t count) noexcept { return {true, dim, first, count}; }
    static constexpr Share row_range(std::uint64_t first, std::uint64_t count) noexcept { return block(0, first, count); }
};

/// Called as share(tensor, rank, ranks) for every planned tensor and every rank of the group, once
/// when a loader is made: keep it cheap (a name match per call on 100k tensors × 64 ranks adds up).
using ShareFunction = std::function<Share(const format::TensorRef&, int rank, int ranks)>;

/// `length` bytes from offset `at` on, taken in runs of `run` bytes every `stride` bytes, `at` lying
/// `skip` bytes into its run: the layout of a block's bytes within a tensor (or a window buffer).
struct Strided {
    std::uint64_t at = 0;
    std::uint64_t skip = 0;
    std::uint64_t run = 0;
    std::uint64_t stride = 0;
    std::uint64_t length = 0;

    /// Whether the bytes are one range [at, at + length).
    [[nodiscard]] bool contiguous() const noexcept { return run == stride || skip + length <= run; }

    /// Calls copy(from, to, run, runs) for the bytes in order, packed: `runs` runs of `run` bytes,
    /// the first `from` bytes after `at` and each next one `stride` bytes further, go to offset `to`
    /// of a contiguous destination. At most three calls: a run entered part way, the whole runs,
    /// a run left part way.
    template <class Copy>
    void for_each_block(Copy&& copy) const {
        if (length == 0) return;
        if (contiguous()) {
            copy(std::uint64_t{0}, std::uint64_t{0}, length, std::uint64_t{1});
            return;
        }
        std::uint64_t from = 0, done = 0;
        if (skip > 0) {
            done = run - skip;
            copy(from, std::uint64_t{0}, done, std::uint64_t{1});
            from = stride - skip;
        }
        if (const std::uint64_t runs = (length - done) / run; runs > 0) {
            copy(from, done, run, runs);
            done += runs * run;
            from += runs * stride;
        }
        if (done < length) copy(from, done, length - done, std::uint64_t{1});
    }
};

/// The bytes `share` keeps of a tensor: `runs` runs of `run` bytes, `stride` apart, from `begin` on
/// (one run when they are contiguous), and the block they are (the yielded shape has `count` at
/// `dim`).
struct KeptBytes {
    bool kept = false;
    std::uint64_t begin = 0;
    std::uint64_t run = 0;
    std::uint64_t stride = 0;
    std::uint64_t runs = 0;
    std::uint32_t dim = 0;
    std::uint64_t first = 0;
    std::uint64_t count = 0;

    [[nodiscard]] std::uint64_t size() const noexcept { return run * runs; }
    /// One past the last kept byte (begin when none is).
    [[nodiscard]] std::uint64_t end() const noexcept { return runs == 0 || run == 0 ? begin : begin + (runs - 1) * stride + run; }
    [[nodiscard]] bool contiguous() const noexcept { return runs <= 1; }

    /// The kept bytes among the tensor's bytes [from, to) (none: length 0).
    [[nodiscard]] Strided within(std::uint64_t from, std::uint64_t to) const noexcept {
        from = std::max(from, begin), to = std::min(to, end());
        if (from >= to) return {};
        const std::uint64_t step = runs <= 1 ? run : stride;
        std::uint64_t i = (from - begin) / step, skip = (from - begin) % step;
        if (skip >= run) ++i, skip = 0;  // from lies between two runs
        const std::uint64_t j = (to - begin) / step, left = std::min((to - begin) % step, run);
        const std::uint64_t a = i * run + skip, b = j * run + left;  // offsets in the block
        if (a >= b) return {};
        return {begin + i * step + skip, skip, run, step, b - a};
    }
    /// Where kept byte `tensor_offset` of the tensor lies in the block (its destination).
    [[nodiscard]] std::uint64_t block_offset(std::uint64_t tensor_offset) const noexcept {
        if (runs <= 1) return tensor_offset - begin;
        return (tensor_offset - begin) / stride * run + (tensor_offset - begin) % stride;
    }
};

/// The bytes `share` keeps of `tensor`. Throws usage_error when the block runs past the tensor or
/// its dimension does not exist, or when its bytes are not whole (4- and 6-bit dtypes: a block must
/// start and end on whole bytes in every run): keep those whole. The error's source is `file`, the
/// tensor's file, where given.
inline KeptBytes kept_bytes(const format::TensorRef& tensor, Share share, std::string_view file = "share") {
    if (!share.kept) return {};
    const auto& shape = tensor.info->shape;
    const std::uint64_t bytes = tensor.nbytes();
    const auto whole = [&](std::uint32_t dim) {
        return KeptBytes{true, 0, bytes, bytes, 1, dim, 0, shape.empty() ? 1 : shape[dim]};
    };
    if (share.first == 0 && share.count == Share::all && (shape.empty() || share.dim < shape.size())) return whole(share.dim);
    const auto refuse = [&](const std::string& why) {
        throw usage_error(std::string(file), "a share of tensor " + detail::quote_name(tensor.name()) + ": " + why);
    };
    if (shape.empty()) refuse("a scalar has no dimension to split; keep it whole");
    const std::uint32_t d = share.dim;
    if (d >= shape.size())
        refuse("dimension " + std::to_string(d) + " does not exist (it has " + std::to_string(shape.size()) + ")");
    const auto along = [d] { return " along dimension " + std::to_string(d); };
    if (share.first > shape[d])
        refuse("index " + std::to_string(share.first) + " is past its " + std::to_string(shape[d]) + along());
    if (share.count == Share::all) share.count = shape[d] - share.first;
    if (share.count > shape[d] - share.first)
        refuse("[" + std::to_string(share.first) + ", +" + std::to_string(share.count) + ") runs past its " + std::to_string(shape[d]) + along());
    if (share.first == 0 && share.count == shape[d]) return whole(d);
    if (bytes == 0) return {true, 0, 0, 0, 1, d, share.first, share.count};

    // With bytes, no dimension is 0: each product below is at most the element count.
    std::uint64_t outer = 1, inner = 1;  // the indices of the dimensions before d (runs), and after it
    for (std::size_t i = 0; i < shape.size(); ++i)
        if (i < d) outer *= shape[i];
        else if (i > d) inner *= shape[i];
    KeptBytes k{true, 0, 0, 0, outer, d, share.first, share.count};
    if (const unsigned bits = format::bit_size(tensor.info->dtype); bits % 8 == 0) {
        const std::uint64_t unit = inner * (bits / 8);  // the bytes of one index of dimension d
        k.begin = unit * share.first, k.run = unit * share.count, k.stride = unit * shape[d];
    } else {  // in bits (which need not fit 64): a packed dtype's block must start and end on a byte in every run
        __extension__ typedef unsigned __int128 Bits;
        const Bits unit = Bits{inner} * bits, begin = unit * share.first, run = unit * share.count, stride = unit * shape[d];
        if (begin % 8 != 0 || run % 8 != 0 || (outer > 1 && stride % 8 != 0))
            refuse("its block [" + std::to_string(share.first) + ", +" + std::to_string(share.count) + ")" + along() +
                   " is not whole bytes (" + std::string(format::to_string(tensor.info->dtype)) + "); keep it whole");
        k.begin = static_cast<std::uint64_t>(begin / 8), k.run = static_cast<std::uint64_t>(run / 8);
        k.stride = static_cast<std::uint64_t>(stride / 8);
    }
    if (k.run == 0) k.stride = 0, k.runs = 1;  // an empty block
    else if (k.runs == 1 || k.run == k.stride) k.run *= k.runs, k.stride = k.run, k.runs = 1;
    return k;
}

/// Every rank keeps every tensor whole (the default).
inline ShareFunction keep_everything() {
    return [](const format::TensorRef&, int, int) { return Share::whole(); };
}

/// Rank r keeps the tensors for which keep(tensor, r) is true, whole.
inline ShareFunction keep_if(std::function<bool(const format::TensorRef&, int rank)> keep) {
    return [keep = std::move(keep)](const format::TensorRef& t, int rank, int) {
        return keep(t, rank) ? Share::whole() : Share::none();
    };
}

/// Rank r of n's block of a dimension of `size` indices: [⌊size·r/n⌋, ⌊size·(r+1)/n⌋) (uneven sizes
/// give some ranks one index more; size < n leaves some none).
inline Share block_of(std::uint32_t dim, std::uint64_t size, int rank, int ranks) noexcept {
    const auto n = static_cast<std::uint64_t>(ranks), r = static_cast<std::uint64_t>(rank);
    // ⌊size·r/n⌋ without forming size·r, which may not fit 64 bits: (size % n)·r < n² does.
    const std::uint64_t whole = size / n, rest = size % n;
    const std::uint64_t first = whole * r + rest * r / n, last = whole * (r + 1) + rest * (r + 1) / n;
    return Share::block(dim, first, last - first);
}

/// Rank r of n's share of `tensor` split along dimension `dim`: its block_of that dimension, or the
/// whole tensor where it has no dimension `dim` (a scalar; a 1-D bias of a layer split along 1).
inline Share block_along(const format::TensorRef& tensor, std::uint32_t dim, int rank, int ranks) noexcept {
    if (dim >= tensor.info->shape.size()) return Share::whole();
    return block_of(dim, tensor.info->shape[dim], rank, ranks);
}

/// Tensors split along one dimension: those `which` selects (empty: every tensor) along `dim`.
struct Split {
    TensorFilter which;
    std::uint32_t dim = 0;
};

/// Each tensor is split along the dimension of the first Split that selects it (block_along); the
/// tensors none selects are kept whole by every rank; a selected tensor whose blocks are not whole
/// bytes makes the load fail (kept_bytes).
inline ShareFunction split(std::vector<Split> splits) {
    return [splits = std::move(splits)](const format::TensorRef& t, int rank, int ranks) {
        for (const Split& s : splits)
            if (!s.which || s.which(t)) return block_along(t, s.dim, rank, ranks);
        return Share::whole();
    };
}

/// The tensors `which` selects are split along dimension `dim` (see split above).
inline ShareFunction split_along(std::uint32_t dim, TensorFilter which) {
    return split({{std::move(which), dim}});
}

/// The tensors `which` selects are split along their first dimension: rank r of n keeps rows
/// [r·R/n, (r+1)·R/n) of R.
inline ShareFunction split_rows(TensorFilter which) {
    return split_along(0, std::move(which));
}

/// Megatron-style tensor parallelism over [out, in] weights: the column-parallel layers (q, k, v,
/// gate, up projections: `columns`) split along dimension 0, their outputs; the row-parallel ones
/// (o and down projections: `rows`) along dimension 1, their inputs, where each is 2-D or more (a
/// row-parallel bias stays whole, as it is added after the reduction). Everything else stays whole.
inline ShareFunction tensor_parallel(TensorFilter columns, TensorFilter rows) {
    return split({{std::move(columns), 0}, {std::move(rows), 1}});
}

}  // namespace instanttensor
