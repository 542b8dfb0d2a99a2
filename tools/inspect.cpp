// tools/inspect.cpp: `instanttensor inspect [--json] PATH...`: the tensor table of a checkpoint.
//
// Plain output is for people: one row per tensor in checkpoint order (file, then offset: the
// order a loader reads them), the metadata as key=value lines, then a summary. --json is for
// scripts: one object {"tensors": [...], "metadata": {...}}, names escaped as the safetensors writer
// escapes them (quotes, backslashes and control characters; UTF-8 as it is). Both are written as
// they are produced, so that memory stays that of the checkpoint's table whatever its size.
#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/format/writer.hpp"  // detail::append_json_string

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

Row row_of(const Checkpoint& checkpoint, const format::TensorRef& t) {
    return {escape_control(t.name()), std::string(format::to_string(t.info->dtype)), format_shape(t.info->shape),
            escape_control(checkpoint.files()[t.file].path.string()), std::to_string(t.file_offset), std::to_string(t.nbytes())};
}

/// Two passes over the tensors, the first for the column widths: no row is kept, so memory does not
/// grow with the number of tensors.
void print_table(const Checkpoint& checkpoint) {
    const Row heading{"NAME", "DTYPE", "SHAPE", "FILE", "OFFSET", "BYTES"};
    std::array<std::size_t, 6> widths{};
    auto widen = [&](const Row& row) {
        for (std::size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], display_width(row[c]));
    };
    widen(heading);
    for (const auto& t : checkpoint.tensors()) widen(row_of(checkpoint, t));
    print_row(heading, widths);
    for (const auto& t : checkpoint.tensors()) print_row(row_of(checkpoint, t), widths);

    bool first = true;
    checkpoint.for_each_metadata([&](const std::string& key, const std::string& value) {
        print("{}{}={}\n", first ? "\n" : "", escape_control(key), escape_control(value));
        first = false;
    });
    const auto total = checkpoint.total_bytes();
    print("\n{}, {}, {} ({} bytes)\n", count_of(checkpoint.tensors().size(), "tensor"),
          count_of(checkpoint.files().size(), "file"), human_bytes(total), total);
}

/// Writes the JSON as it goes, a tensor at a time: no document is built.
void print_json(const Checkpoint& checkpoint) {
    std::string out;
    auto flush = [&](std::size_t above) {
        if (out.size() < above) return;
        print("{}", out);
        out.clear();
    };
    out.append("{\"tensors\":[");
    bool first = true;
    for (const auto& t : checkpoint.tensors()) {
        out.append(first ? "{\"name\":" : ",{\"name\":");
        first = false;
        detail::append_json_string(out, t.name());
        out.append(",\"dtype\":\"").append(format::to_string(t.info->dtype)).append("\",\"shape\":[");
        for (std::size_t d = 0; d < t.info->shape.size(); ++d) {
            if (d) out.push_back(',');
            out.append(std::to_string(t.info->shape[d]));
            flush(1 << 20);
        }
        out.append("],\"file\":");
        detail::append_json_string(out, checkpoint.files()[t.file].path.string());
        out.append(",\"offset\":").append(std::to_string(t.file_offset));
        out.append(",\"nbytes\":").append(std::to_string(t.nbytes())).push_back('}');
        flush(1 << 20);
    }
    out.append("],\"metadata\":{");
    first = true;
    checkpoint.for_each_metadata([&](const std::string& key, const std::string& value) {
        if (!first) out.push_back(',');
        first = false;
        detail::append_json_string(out, key);
        out.push_back(':');
        detail::append_json_string(out, value);
        flush(1 << 20);
    });
    out.append("}}\n");
    flush(0);
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
