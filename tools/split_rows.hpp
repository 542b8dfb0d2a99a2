// tools/split_rows.hpp: the share function of `--split-rows REGEX`, header-only so that the fuzz
// target drives the same matcher the command runs.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include <re2/re2.h>

#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/pipeline/share.hpp"

namespace instanttensor::cli {

/// split_rows() of the tensors whose name matches `regex` (RE2's syntax, anywhere in the name), the
/// expression evaluated once per tensor (the share function runs for every tensor and rank), in
/// time linear in the name. `checkpoint` must outlive the function. An expression RE2 refuses is a
/// usage_error.
inline ShareFunction split_rows_matching(const format::Checkpoint& checkpoint, const std::string& regex) {
    const RE2 pattern(regex, RE2::Quiet);
    if (!pattern.ok()) throw usage_error("--split-rows", "not a regular expression: " + pattern.error());
    auto tensors = checkpoint.tensors();
    auto matches = std::make_shared<std::vector<bool>>(tensors.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) (*matches)[i] = RE2::PartialMatch(tensors[i].name(), pattern);
    return split_rows([tensors, matches](const format::TensorRef& t) {
        return (*matches)[static_cast<std::size_t>(&t - tensors.data())];
    });
}

}  // namespace instanttensor::cli
