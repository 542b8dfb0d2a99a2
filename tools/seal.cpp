// tools/seal.cpp: `instanttensor seal PATH...`: stores the XXH3-64 digest of every tensor in the
// header of its file, so that `load --verify` (LoadOptions::verify = TensorDigests::sealed) checks
// each tensor against it.
//
// Each file's "__metadata__" gains the key "instanttensor.xxh3" (format/digests.hpp): the digests
// of that file's tensors as `hash` prints them. Other metadata is kept; a seal already there is
// replaced. The digests are those of the bytes the loader delivers now; then each file is written
// anew with its new header, its tensor bytes and offsets unchanged, and renamed over itself
// (format::rewrite_metadata): every safetensors reader sees the same names, dtypes, shapes and
// bytes. An index .json is left as it is. A file that changes while it is sealed is refused where
// its header changed; seal files nobody writes.
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/format/digests.hpp"
#include "instanttensor/format/encryption.hpp"
#include "instanttensor/format/writer.hpp"
#include "loading.hpp"

namespace instanttensor::cli {
namespace {

struct SealOptions {
    std::vector<std::string> paths;
    LoadSettings settings;
};

int run_seal(const SealOptions& options) {
    const auto checkpoint = format::Checkpoint::open(to_paths(options.paths));
    if (checkpoint.remote()) throw usage_error("seal", "rewrites the files it seals: seal a local copy, then upload it");
    for (const format::CheckpointFile& file : checkpoint.files())
        if (format::is_encrypted(file.header))
            throw usage_error(file.path.string(), "is encrypted, and its tags authenticate its header as it is: seal before encrypting");
    const format::TensorDigests digests = digest_checkpoint(checkpoint, options.settings);
    for (const format::CheckpointFile& file : checkpoint.files()) {
        const std::string shown = escape_control(file.path.string());
        format::TensorDigests own;
        for (const format::TensorInfo& t : file.header.tensors) own.add(t.name, *digests.find(t.name));
        format::Metadata metadata = file.header.metadata;
        metadata.insert_or_assign(std::string(format::seal_key), own.text());
        format::rewrite_metadata(file.path, file.header, metadata);
        print("sealed {} ({})\n", shown, count_of(own.size(), "tensor"));
    }
    return exit_ok;
}

}  // namespace

void add_seal(CLI::App& app, Action& action) {
    auto options = std::make_shared<SealOptions>();
    auto* sub = app.add_subcommand("seal", "Store each tensor's XXH3-64 digest in its file's header, for load --verify");
    sub->footer(
        "Each file's __metadata__ gains \"instanttensor.xxh3\": its tensors' digests as `hash` prints them.\n"
        "The file is written anew beside itself, tensor bytes unchanged, and renamed over the original;\n"
        "other safetensors readers see the same tensors. Digests detect corruption, not tampering\n"
        "(docs/integrity.md).\n");
    add_checkpoint_paths(*sub, options->paths);
    add_load_options(*sub, options->settings, "cpu");
    sub->callback([options, &action] { action = [options] { return run_seal(*options); }; });
}

}  // namespace instanttensor::cli
