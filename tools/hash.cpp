// tools/hash.cpp: `instanttensor hash PATH...`: an XXH3-64 digest of every tensor's bytes.
//
// One line per tensor, `<16 lowercase hex digits>  <name>`, laid out like sha256sum and sorted by
// the raw UTF-8 bytes of the name (as `LC_ALL=C sort`), so two checkpoints holding the same
// tensors give the same text however they are sharded or laid out, and `diff` shows what changed.
// A name holding a backslash or a control character is escaped as sha256sum escapes file names:
// the line starts with a backslash, and the name reads as `inspect` prints it (escape_control:
// \\, \n, \r, \t, \xNN).
//
// The bytes are those the loader delivers, with the same --device, --backend, --direct and
// --staging-mib options as `load`: `hash --device 0 --backend uring` digests what actually landed
// in GPU memory (copied back), so comparing it with `hash --device cpu --backend pread` checks
// every path against every other.
#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "loading.hpp"

namespace instanttensor::cli {
namespace {

using format::Checkpoint;

struct HashOptions {
    std::vector<std::string> paths;
    LoadSettings settings;
};

struct Digest {
    std::string_view name;  // points into the checkpoint's headers
    XXH64_hash_t hash;
};

/// Hashes every tensor as the loader delivers it.
std::vector<Digest> hash_tensors(const Checkpoint& checkpoint, const LoadSettings& settings) {
    std::vector<Digest> digests;
    digests.reserve(checkpoint.tensors().size());
    load_checkpoint(checkpoint, settings, true, [&](const TensorView& t, std::span<const std::byte> bytes) {
        digests.push_back({t.name, XXH3_64bits(bytes.data(), bytes.size())});
    });
    return digests;
}

/// The name as `inspect` prints it, and whether the line needs sha256sum's leading backslash.
std::pair<std::string, bool> escape_name(std::string_view name) {
    std::string out = escape_control(name);
    const bool escaped = out != name;
    return {std::move(out), escaped};
}

int run_hash(const HashOptions& options) {
    const auto checkpoint = Checkpoint::open(to_paths(options.paths));
    auto digests = hash_tensors(checkpoint, options.settings);
    // string_view's operator< compares as unsigned char: raw UTF-8 byte order, like LC_ALL=C sort.
    std::sort(digests.begin(), digests.end(), [](const Digest& a, const Digest& b) { return a.name < b.name; });
    std::string out;
    for (const auto& d : digests) {
        const auto [name, escaped] = escape_name(d.name);
        out.append(escaped ? "\\" : "").append(fmt::format("{:016x}  ", d.hash)).append(name).push_back('\n');
    }
    print("{}", out);
    return exit_ok;
}

}  // namespace

void add_hash(CLI::App& app, Action& action) {
    auto options = std::make_shared<HashOptions>();
    auto* sub = app.add_subcommand("hash", "Print an XXH3-64 digest of each tensor's bytes, sorted by name");
    sub->footer(
        "Each line is '<16 lowercase hex digits>  <name>'; lines are sorted by the bytes of the name, so\n"
        "the same tensors give the same text however the checkpoint is sharded. Compare two with diff.\n"
        "The bytes come through the loader: --device and --backend choose the path they take.\n");
    add_checkpoint_paths(*sub, options->paths);
    add_load_options(*sub, options->settings, "cpu");
    sub->callback([options, &action] { action = [options] { return run_hash(*options); }; });
}

}  // namespace instanttensor::cli
