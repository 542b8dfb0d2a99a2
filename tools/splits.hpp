// tools/splits.hpp: the share function of `--split REGEX=DIM` (and `--split-rows REGEX`, which is
// `--split REGEX=0`), header-only so that the fuzz target drives the same parser and matcher the
// command runs.
#pragma once

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <re2/re2.h>

#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/pipeline/share.hpp"

namespace instanttensor::cli {

/// The tensors whose name matches `regex` (RE2's syntax, anywhere in the name) are split along
/// dimension `dim`.
struct SplitPattern {
    std::string regex;
    std::uint32_t dim = 0;
};

/// Dimensions a --split may name: more than any tensor has in practice.
inline constexpr std::uint32_t max_split_dim = 63;

/// Parses `REGEX=DIM` (the last '=' separates them, so the expression may hold '='). Throws
/// usage_error naming `option` when there is no '=', the dimension is not a whole number up to
/// max_split_dim or the expression is not one RE2 takes.
inline SplitPattern parse_split(const std::string& text, const std::string& option = "--split") {
    const std::size_t eq = text.rfind('=');
    if (eq == std::string::npos) throw usage_error(option, "'" + text + "' is not REGEX=DIM (for example 'o_proj|down_proj=1')");
    SplitPattern split{text.substr(0, eq), 0};
    const std::string dim = text.substr(eq + 1);
    const auto [end, error] = std::from_chars(dim.data(), dim.data() + dim.size(), split.dim);
    if (dim.empty() || error != std::errc() || end != dim.data() + dim.size() || split.dim > max_split_dim)
        throw usage_error(option, "'" + dim + "' after '=' is not a dimension (0 to " + std::to_string(max_split_dim) + ")");
    const RE2 pattern(split.regex, RE2::Quiet);
    if (!pattern.ok()) throw usage_error(option, "not a regular expression: " + pattern.error());
    return split;
}

/// The patterns of `--split` options (each REGEX=DIM, in order), then `--split-rows` (REGEX=0).
inline std::vector<SplitPattern> split_patterns(const std::vector<std::string>& split, const std::string& split_rows) {
    std::vector<SplitPattern> patterns;
    for (const std::string& text : split) patterns.push_back(parse_split(text));
    if (!split_rows.empty()) patterns.push_back(parse_split(split_rows + "=0", "--split-rows"));
    return patterns;
}

/// A CLI11 check of a --split option's text (parse_split's message, or nothing when it is fine).
inline std::string check_split(std::string& text) {
    try {
        parse_split(text);
        return {};
    } catch (const usage_error& e) {
        return e.message();  // CLI11 names the option
    }
}

/// split() of the tensors each pattern matches, the first matching pattern deciding a tensor's
/// dimension; every expression evaluated once per tensor (the share function runs for every tensor
/// and rank), in time linear in the name. `checkpoint` must outlive the function.
inline ShareFunction splits_matching(const format::Checkpoint& checkpoint, const std::vector<SplitPattern>& splits) {
    constexpr std::uint32_t unsplit = UINT32_MAX;
    auto tensors = checkpoint.tensors();
    auto dims = std::make_shared<std::vector<std::uint32_t>>(tensors.size(), unsplit);
    for (const SplitPattern& s : splits) {
        const RE2 pattern(s.regex, RE2::Quiet);
        if (!pattern.ok()) throw usage_error("--split", "not a regular expression: " + pattern.error());
        for (std::size_t i = 0; i < tensors.size(); ++i)
            if ((*dims)[i] == unsplit && RE2::PartialMatch(tensors[i].name(), pattern)) (*dims)[i] = s.dim;
    }
    return [tensors, dims](const format::TensorRef& t, int rank, int ranks) {
        const std::uint32_t dim = (*dims)[static_cast<std::size_t>(&t - tensors.data())];
        return dim == unsplit ? Share::whole() : block_along(t, dim, rank, ranks);
    };
}

}  // namespace instanttensor::cli
