// tools/inspect.cpp: `instanttensor inspect [--json] PATH...`: the tensor table of a checkpoint.
//
// Plain output is for people: one row per tensor in checkpoint order (file, then offset: the
// order a loader reads them), the metadata as key=value lines, then a summary. --json is for
// scripts: one object {"tensors": [...], "metadata": {...}} built with Boost.JSON, so names with
// quotes, backslashes or non-ASCII characters come out correctly escaped.
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <fmt/core.h>

#include "cli.hpp"
#include "instanttensor/format/checkpoint.hpp"

namespace instanttensor::cli {
namespace {

using format::Checkpoint;

struct InspectOptions {
    std::vector<std::string> paths;
    bool json = false;
};

/// One table row, every cell already printable (control characters escaped).
using Row = std::array<std::string, 6>;

/// Columns holding numbers are right-aligned so that digits line up.
constexpr std::array<bool, 6> right_aligned{false, false, false, false, true, true};

void print_row(const Row& row, const std::array<std::size_t, 6>& widths) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
        const std::size_t pad = widths[c] - display_width(row[c]);
        const bool last = c + 1 == row.size();
        if (c) line.append("  ");
        if (right_aligned[c]) line.append(pad, ' ');
        line.append(row[c]);
        if (!right_aligned[c] && !last) line.append(pad, ' ');
    }
    line.push_back('\n');
    print("{}", line);
}

void print_table(const Checkpoint& checkpoint) {
    std::vector<Row> rows;
    rows.reserve(checkpoint.tensors().size() + 1);
    rows.push_back({"NAME", "DTYPE", "SHAPE", "FILE", "OFFSET", "BYTES"});
    for (const auto& t : checkpoint.tensors()) {
        rows.push_back({escape_control(t.name()), std::string(format::to_string(t.info->dtype)),
                        format_shape(t.info->shape), escape_control(checkpoint.files()[t.file].path.string()),
                        std::to_string(t.file_offset), std::to_string(t.nbytes())});
    }
    std::array<std::size_t, 6> widths{};
    for (const auto& row : rows)
        for (std::size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], display_width(row[c]));
    for (const auto& row : rows) print_row(row, widths);

    const auto metadata = checkpoint.metadata();
    if (!metadata.empty()) {
        print("\n");
        for (const auto& [key, value] : metadata) print("{}={}\n", escape_control(key), escape_control(value));
    }
    const auto total = checkpoint.total_bytes();
    print("\n{}, {}, {} ({} bytes)\n", count_of(checkpoint.tensors().size(), "tensor"),
               count_of(checkpoint.files().size(), "file"), human_bytes(total), total);
}

void print_json(const Checkpoint& checkpoint) {
    boost::json::array tensors;
    tensors.reserve(checkpoint.tensors().size());
    for (const auto& t : checkpoint.tensors()) {
        boost::json::array shape;
        shape.reserve(t.info->shape.size());
        for (std::uint64_t dim : t.info->shape) shape.emplace_back(dim);
        boost::json::object tensor;
        tensor["name"] = t.name();
        tensor["dtype"] = format::to_string(t.info->dtype);
        tensor["shape"] = std::move(shape);
        tensor["file"] = checkpoint.files()[t.file].path.string();
        tensor["offset"] = t.file_offset;
        tensor["nbytes"] = t.nbytes();
        tensors.emplace_back(std::move(tensor));
    }
    boost::json::object metadata;
    for (const auto& [key, value] : checkpoint.metadata()) metadata[key] = value;

    boost::json::object document;
    document["tensors"] = std::move(tensors);
    document["metadata"] = std::move(metadata);
    print("{}\n", boost::json::serialize(document));
}

int run_inspect(const InspectOptions& options) {
    const auto checkpoint = Checkpoint::open(to_paths(options.paths));
    if (options.json) print_json(checkpoint);
    else print_table(checkpoint);
    return exit_ok;
}

}  // namespace

void add_inspect(CLI::App& app, Action& action) {
    auto options = std::make_shared<InspectOptions>();
    auto* sub = app.add_subcommand("inspect", "Print the tensor table and metadata of a checkpoint");
    sub->footer(
        "Plain output: one row per tensor in file then offset order; OFFSET is the absolute offset of the\n"
        "tensor's first byte in FILE. Then the metadata as key=value lines and a summary line.\n"
        "--json: one object {\"tensors\": [{\"name\", \"dtype\", \"shape\", \"file\", \"offset\", \"nbytes\"}...],\n"
        "\"metadata\": {key: value}}, tensors in the same order.\n"
        "Every header is validated first; an invalid checkpoint prints nothing on stdout and exits 1.\n");
    sub->add_flag("--json", options->json, "Print one JSON object instead of a table");
    add_checkpoint_paths(*sub, options->paths);
    sub->callback([options, &action] { action = [options] { return run_inspect(*options); }; });
}

}  // namespace instanttensor::cli
