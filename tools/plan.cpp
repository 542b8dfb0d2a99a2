// tools/plan.cpp: `instanttensor plan PATH... --ranks N`: what each rank of a group load reads,
// keeps and receives, computed from the checkpoint's layout alone (GroupPlan, no I/O).
//
// With every tensor kept by every rank, each rank reads about 1/N of the bytes and receives the
// rest; with --split REGEX=DIM (or --split-rows REGEX), the matching tensors are split along DIM
// across the ranks (tensor parallelism) and a rank receives only its block of them (and the others
// whole).
// docs/distributed.md quotes its output for the traffic model.
#include <algorithm>
#include <array>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <fmt/core.h>

#include "cli.hpp"
#include "loading.hpp"
#include "splits.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/loader.hpp"
#include "instanttensor/pipeline/group_plan.hpp"

namespace instanttensor::cli {
namespace {

struct PlanCommand {
    std::vector<std::string> paths;
    int ranks = 8;
    std::vector<std::string> splits;
    std::string split_rows;
    std::uint64_t window_mib = LoadOptions{}.window_bytes >> 20;
    std::uint64_t slot_mib = LoadOptions{}.slot_bytes >> 20;
    bool buffered = false;
    bool json = false;
};

int run_plan(const PlanCommand& command) {
    const auto checkpoint = format::Checkpoint::open(to_paths(command.paths));
    const std::vector<std::uint64_t> alignment(checkpoint.files().size(), command.buffered ? 1 : 4096);
    const auto plan = make_plan(checkpoint, {}, alignment, command.slot_mib << 20);
    const auto patterns = split_patterns(command.splits, command.split_rows);
    const ShareFunction share = patterns.empty() ? ShareFunction{} : splits_matching(checkpoint, patterns);
    const auto group = make_group_plan(plan, command.ranks, 0, share, command.window_mib << 20);

    std::array<std::size_t, 4> modes{};
    for (const auto& w : group.windows) ++modes[static_cast<std::size_t>(w.mode)];
    const auto mode_count = [&](ExchangeMode m) { return modes[static_cast<std::size_t>(m)]; };
    const std::vector<std::uint64_t>& kept = group.kept_bytes;

    if (command.json) {
        boost::json::object o;
        o["tensors"] = plan.tensors.size();
        o["bytes"] = plan.tensor_bytes;
        o["ranks"] = command.ranks;
        o["windows"] = group.windows.size();
        o["all_gather_windows"] = mode_count(ExchangeMode::all_gather);
        o["broadcast_windows"] = mode_count(ExchangeMode::broadcasts);
        o["send_windows"] = mode_count(ExchangeMode::sends);
        o["alone_windows"] = mode_count(ExchangeMode::none);
        boost::json::array per_rank;
        for (std::size_t r = 0; r < kept.size(); ++r)
            per_rank.push_back({{"rank", r}, {"read_bytes", group.read_bytes[r]}, {"kept_bytes", kept[r]},
                                {"received_bytes", group.received_bytes[r]}});
        o["per_rank"] = std::move(per_rank);
        print("{}\n", boost::json::serialize(o));
        return exit_ok;
    }
    print("{} ({}) for {} ranks in {} of at most {}: {} all-gather, {} broadcasts, {} point-to-point, {} alone\n",
               count_of(plan.tensors.size(), "tensor"), human_bytes(plan.tensor_bytes), command.ranks,
               count_of(group.windows.size(), "window"), human_bytes(command.window_mib << 20),
               mode_count(ExchangeMode::all_gather), mode_count(ExchangeMode::broadcasts), mode_count(ExchangeMode::sends),
               mode_count(ExchangeMode::none));
    print("{:>5}  {:>11}  {:>11}  {:>11}\n", "rank", "reads", "keeps", "receives");
    for (std::size_t r = 0; r < kept.size(); ++r)
        print("{:>5}  {:>11}  {:>11}  {:>11}\n", r, human_bytes(group.read_bytes[r]), human_bytes(kept[r]),
                   human_bytes(group.received_bytes[r]));
    return exit_ok;
}

}  // namespace

void add_plan(CLI::App& app, Action& action) {
    auto command = std::make_shared<PlanCommand>();
    auto* sub = app.add_subcommand("plan", "Show what each rank of a group load reads, keeps and receives");
    sub->footer("Computed from the layout alone: no file data is read. Every rank keeps every tensor unless\n"
                "--split names tensors to split along a dimension (tensor parallelism: column-parallel\n"
                "weights along 0, row-parallel ones along 1).");
    add_checkpoint_paths(*sub, command->paths);
    sub->add_option("--ranks", command->ranks, "Ranks in the group")->capture_default_str()->check(whole_number(1, 4096));
    sub->add_option("--split", command->splits, "Split the tensors whose name matches REGEX along dimension DIM (repeatable: the first match decides)")
        ->type_name("REGEX=DIM")
        ->check(CLI::Validator(check_split, "", "split"));
    sub->add_option("--split-rows", command->split_rows, "Split the tensors whose name matches this regular expression by rows (--split REGEX=0)")
        ->type_name("REGEX")
        ->check(CLI::Validator(check_regex, "", "regex"));
    sub->add_option("--window-mib", command->window_mib, "Bytes the group reads, then exchanges, at a time")
        ->capture_default_str()
        ->check(whole_number(std::uint64_t{1}, std::uint64_t{1} << 20));
    sub->add_option("--slot-mib", command->slot_mib, "The largest single read")
        ->capture_default_str()
        ->check(whole_number(std::uint64_t{1}, max_slot_mib));
    sub->add_flag("--json", command->json, "Print one JSON object instead of text");
    sub->add_flag("--buffered", command->buffered, "Plan for buffered reads (no O_DIRECT alignment)");
    sub->callback([command, &action] {
        if (command->window_mib < command->slot_mib) throw CLI::ValidationError("--window-mib", "must be at least --slot-mib");
        action = [command] { return run_plan(*command); };
    });
}

}  // namespace instanttensor::cli
