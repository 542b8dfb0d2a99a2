// instanttensor/pipeline/share.hpp: what each rank of a group keeps of each tensor (its share).
//
// A group load (a transport of several ranks, such as transport::nccl) yields to each rank only
// the tensors it keeps, and of a tensor split along its first dimension only its rows; only those
// bytes are sent to it. Every rank evaluates the share function for every rank, so it must give
// the same answer on every rank: make it a function of the tensor, the rank and the group size.
//
//   options.share = instanttensor::split_rows([](const auto& t) { return t.name().ends_with("q_proj.weight"); });
//   options.share = instanttensor::keep_if([&](const auto& t, int rank) { return stage_of(t) == rank; });
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/pipeline/plan.hpp"

namespace instanttensor {

/// What one rank keeps of one tensor: nothing, or `rows` rows of its first dimension starting at
/// `first_row` (the whole tensor by default; `all_rows` = to the last row). A scalar has no rows:
/// it is kept whole or not at all.
struct Share {
    static constexpr std::uint64_t all_rows = UINT64_MAX;

    bool kept = true;
    std::uint64_t first_row = 0;
    std::uint64_t rows = all_rows;

    static constexpr Share whole() noexcept { return {}; }
    static constexpr Share none() noexcept { return {false, 0, 0}; }
    static constexpr Share row_range(std::uint64_t first, std::uint64_t count) noexcept { return {true, first, count}; }
};

/// Called as share(tensor, rank, ranks) for every planned tensor and every rank of the group, once
/// when a loader is made: keep it cheap (a name match per call on 100k tensors × 64 ranks adds up).
using ShareFunction = std::function<Share(const format::TensorRef&, int rank, int ranks)>;

/// A kept share in bytes: [begin, end) of the tensor's bytes, and the rows they are.
struct KeptBytes {
    bool kept = false;
    std::uint64_t begin = 0;
    std::uint64_t end = 0;
    std::uint64_t first_row = 0;
    std::uint64_t rows = 0;  ///< rows kept (the first dimension of the yielded shape)

    [[nodiscard]] std::uint64_t size() const noexcept { return end - begin; }
};

/// The bytes `share` keeps of `tensor`. Throws usage_error when the rows run past the
/// tensor, or when a part of it is asked of a scalar or of a tensor whose rows are not whole bytes
/// (4- and 6-bit dtypes with an odd row length): keep those whole. The error's source is `file`,
/// the tensor's file, where given.
inline KeptBytes kept_bytes(const format::TensorRef& tensor, Share share, std::string_view file = "share") {
    if (!share.kept) return {};
    const auto& shape = tensor.info->shape;
    const std::uint64_t total_rows = shape.empty() ? 1 : shape[0];
    if (share.rows == Share::all_rows && share.first_row == 0) return {true, 0, tensor.nbytes(), 0, total_rows};
    const auto refuse = [&](const std::string& why) {
        throw usage_error(std::string(file), "a share of tensor " + detail::quote_name(tensor.name()) + ": " + why);
    };
    if (shape.empty()) refuse("a scalar has no rows to split; keep it whole");
    if (share.first_row > total_rows)
        refuse("row " + std::to_string(share.first_row) + " is past its " + std::to_string(total_rows) + " rows");
    if (share.rows == Share::all_rows) share.rows = total_rows - share.first_row;
    if (share.rows > total_rows - share.first_row)
        refuse("rows [" + std::to_string(share.first_row) + ", +" + std::to_string(share.rows) + ") run past its " +
               std::to_string(total_rows) + " rows");
    // Whole-byte tensors (the format's rule) have whole-byte rows exactly when the rows divide the bytes.
    if (total_rows != 0 && tensor.nbytes() % total_rows != 0)
        refuse("its " + std::to_string(total_rows) + " rows are not whole bytes (" + std::to_string(tensor.nbytes()) +
               " bytes in all); keep it whole");
    const std::uint64_t row_bytes = total_rows == 0 ? 0 : tensor.nbytes() / total_rows;
    return {true, share.first_row * row_bytes, (share.first_row + share.rows) * row_bytes, share.first_row, share.rows};
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

/// The tensors `which` selects are split along their first dimension: rank r of n keeps rows
/// [r·R/n, (r+1)·R/n) of R (uneven R gives some ranks one row more; R < n leaves some none).
/// Scalars and the other tensors are kept whole by every rank; a selected tensor whose rows are
/// not whole bytes makes the load fail (kept_bytes).
inline ShareFunction split_rows(TensorFilter which) {
    return [which = std::move(which)](const format::TensorRef& t, int rank, int ranks) {
        if (t.info->shape.empty() || (which && !which(t))) return Share::whole();
        const std::uint64_t rows = t.info->shape[0];
        const auto n = static_cast<std::uint64_t>(ranks), r = static_cast<std::uint64_t>(rank);
        // ⌊rows·r/n⌋ without forming rows·r, which may not fit 64 bits: (rows % n)·r < n² does.
        const std::uint64_t whole = rows / n, rest = rows % n;
        const std::uint64_t first = whole * r + rest * r / n, last = whole * (r + 1) + rest * (r + 1) / n;
        return Share::row_range(first, last - first);
    };
}

}  // namespace instanttensor
