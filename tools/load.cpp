// tools/load.cpp: `instanttensor load PATH...`: loads every tensor and reports how fast.
//
// Loads to the GPU (--device N, or auto when one is present) or to host memory (--device cpu),
// then prints bytes, seconds, GB/s, the storage backend chosen, the memory the load held:
// staging, the host or device ring, the peak of device memory in use, the peak resident
// set, and where the time went (LoadStats::times, as shares of the seconds). --json prints the
// same as one object, for scripts such as scripts/gpu-check.sh, with
// "seconds" (the load's own, from its first read to its last tensor, as GB/s counts) and
// "total_seconds" (from the opening of the checkpoint to the last tensor, headers and plan included, as a
// caller of the library waits and as the Python package's figures are timed). --verify
// and --verify-with check every tensor against its expected digest before it counts as loaded;
// --verify-files each file's SHA-256 against a manifest as sha256sum writes it. --keep lands every
// tensor in memory of its own (sink::TensorMemory), kept to the end, instead of the host ring.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <fmt/core.h>

#include "cli.hpp"
#include "loading.hpp"

namespace instanttensor::cli {
namespace {

struct LoadCommand {
    std::vector<std::string> paths;
    LoadSettings settings;
    bool json = false;
};

/// Where the load's time went, as shares of it (LoadTimes): what bounded it.
std::string time_breakdown(const LoadStats& stats, bool to_device) {
    const LoadTimes& t = stats.times;
    const auto share = [&](double s) { return stats.seconds > 0 ? 100 * s / stats.seconds : 0.0; };
    std::string line = fmt::format("time: landing {:.0f}%, storage idle {:.0f}%", share(t.landing), share(t.storage_idle));
    if (to_device) line += fmt::format(", copies idle {:.0f}%", share(t.copies_idle));
    line += fmt::format(", staging full {:.0f}%, queue full {:.0f}%, sink full {:.0f}%, consumer {:.0f}%", share(t.staging_full),
                        share(t.queue_full), share(t.sink_full), share(t.consumer));
    return line;
}

int run_load(const LoadCommand& command) {
    const auto opened = std::chrono::steady_clock::now();
    const auto checkpoint = format::Checkpoint::open(to_paths(command.paths));
    const auto report = load_checkpoint(checkpoint, command.settings, false, [](const TensorView&, std::span<const std::byte>) {});
    const double total_seconds = std::chrono::duration<double>(report.finished - opened).count();
    const double seconds = report.stats.seconds;
    const double gbps = seconds > 0 ? static_cast<double>(report.stats.tensor_bytes) / seconds / 1e9 : 0.0;
    if (command.json) {
        boost::json::object o;
        o["device"] = report.device;
        o["backend"] = report.backend;
        o["fallback_reason"] = report.fallback;
        o["direct_files"] = report.direct_files;
        o["files"] = checkpoint.files().size();
        o["tensors"] = report.stats.tensors;
        o["bytes"] = report.stats.tensor_bytes;
        o["read_bytes"] = report.stats.read_bytes;
        o["in_place_bytes"] = report.stats.in_place_bytes;
        o["reads"] = report.stats.reads;
        o["retries"] = report.stats.retries;
        o["seconds"] = seconds;
        o["total_seconds"] = total_seconds;
        o["gbps"] = gbps;
        o["staging_bytes"] = report.stats.staging_bytes;
        o["ring_bytes"] = report.ring_bytes;
        o["kept_bytes"] = report.kept_bytes;
        o["peak_device_bytes"] = report.peak_device_bytes;
        o["peak_rss_bytes"] = report.peak_rss_bytes;
        o["ranks"] = report.ranks;
        o["received_bytes"] = report.stats.received_bytes;
        o["verified"] = report.stats.verified;
        o["verified_files"] = report.stats.verified_files;
        const LoadTimes& times = report.stats.times;
        o["times"] = {{"consumer", times.consumer},         {"landing", times.landing},
                      {"storage_idle", times.storage_idle}, {"copies_idle", times.copies_idle},
                      {"staging_full", times.staging_full}, {"queue_full", times.queue_full},
                      {"sink_full", times.sink_full}};
        print("{}\n", boost::json::serialize(o));
        return exit_ok;
    }
    print("loaded {} ({}) from {} to {} in {:.3f} s: {:.2f} GB/s\n", count_of(report.stats.tensors, "tensor"),
               human_bytes(report.stats.tensor_bytes), count_of(checkpoint.files().size(), "file"), report.device,
               seconds, gbps);
    print("backend {}, {} of {} with O_DIRECT{}\n", report.backend, report.direct_files,
               count_of(checkpoint.files().size(), "file"),
               report.fallback.empty() ? "" : " (passed over: " + escape_control(report.fallback) + ")");
    print("memory: staging {}{}, {} {}, peak device use {}, peak resident {}\n", human_bytes(report.stats.staging_bytes),
               report.device == "cpu" ? "" : " pinned",
               command.settings.keep ? "tensors kept" : report.device == "cpu" ? "host ring" : "device ring",
               human_bytes(command.settings.keep ? report.kept_bytes : report.ring_bytes), human_bytes(report.peak_device_bytes),
               human_bytes(report.peak_rss_bytes));
    if (report.ranks == 0) print("{}\n", time_breakdown(report.stats, report.device != "cpu"));
    if (report.stats.verified > 0 || command.settings.verify || !command.settings.verify_with.empty())
        print("verified {} against {}\n", count_of(report.stats.verified, "tensor"),
              command.settings.verify_with.empty() ? std::string("the checkpoint's seals") : escape_control(command.settings.verify_with));
    if (!command.settings.verify_files.empty())
        print("verified {} against {} (SHA-256)\n", count_of(report.stats.verified_files, "file"), escape_control(command.settings.verify_files));
    if (report.ranks > 0)
        print("group of {}: read {}, received {}, window buffers {}\n", report.ranks, human_bytes(report.stats.read_bytes),
                   human_bytes(report.stats.received_bytes), human_bytes(report.stats.window_memory));
    return exit_ok;
}

}  // namespace

void add_load(CLI::App& app, Action& action) {
    auto command = std::make_shared<LoadCommand>();
    auto* sub = app.add_subcommand("load", "Load every tensor to a GPU or host memory and report the speed");
    sub->footer("Prints tensors, bytes, seconds and GB/s, the storage backend chosen (and why the ones tried\n"
                "before it were passed over), the memory the load held, and where its time went: shares of it\n"
                "spent landing reads, with the storage or the copies idle, with staging, the storage's queue or\n"
                "the sink full, and in the consumer (README: How a load runs). A progress bar shows on a terminal.");
    add_checkpoint_paths(*sub, command->paths);
    add_load_options(*sub, command->settings, "auto");
    sub->add_flag("--keep", command->settings.keep,
                  "Keep every tensor in host memory of its own to the end, as a runtime keeps its weights (and the Python "
                  "package's load_file does), instead of a ring reused as the load goes; --device cpu");
    sub->add_flag("--json", command->json, "Print one JSON object instead of text");
    auto* verify = sub->add_flag("--verify", command->settings.verify,
                                 "Check every tensor against the XXH3-64 digests `instanttensor seal` stored in the checkpoint");
    sub->add_option("--verify-with", command->settings.verify_with,
                    "Check every tensor against this manifest (what `instanttensor hash` printed) instead")
        ->type_name("MANIFEST")
        ->excludes(verify);
    sub->add_option("--verify-files", command->settings.verify_files,
                    "Check each file's SHA-256 against this manifest (what `sha256sum` printed; the Hub's LFS object ids), "
                    "reading every file whole")
        ->type_name("MANIFEST");
    sub->callback([command, &action] { action = [command] { return run_load(*command); }; });
}

}  // namespace instanttensor::cli
