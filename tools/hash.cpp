// tools/hash.cpp: `instanttensor hash PATH...`: an XXH3-64 digest of every tensor's bytes.
//
// One line per tensor, `<16 lowercase hex digits>  <name>`, laid out like sha256sum and sorted by
// the raw UTF-8 bytes of the name (as `LC_ALL=C sort`), so two checkpoints holding the same
// tensors give the same text however they are sharded or laid out, and `diff` shows what changed.
// A name holding a backslash or a control character is escaped as sha256sum escapes file names:
// the line starts with a backslash, and the name reads as `inspect` prints it (escape_control:
// \\, \n, \r, \t, \xNN). The layout is format/digests.hpp's: `load --verify-with` checks a
// checkpoint against this text, and `seal` stores it in each file's header.
//
// The bytes are those the loader delivers, with the same --device, --backend, --direct and
// --staging-mib options as `load`: `hash --device 0 --backend uring` digests what actually landed
// in GPU memory (copied back), so comparing it with `hash --device cpu --backend pread` checks
// every path against every other.
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "loading.hpp"

namespace instanttensor::cli {
namespace {

struct HashOptions {
    std::vector<std::string> paths;
    LoadSettings settings;
};

int run_hash(const HashOptions& options) {
    const auto checkpoint = format::Checkpoint::open(to_paths(options.paths));
    print("{}", digest_checkpoint(checkpoint, options.settings).text());
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
