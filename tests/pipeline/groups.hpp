// tests/pipeline/groups.hpp: what the group tests share: a checkpoint with every kind of tensor a
// group load must handle, the share functions they load with, and a run of N ranks as threads over
// InProcessGroup, each checking what it yields against the file.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "in_process_group.hpp"
#include "instanttensor/loader.hpp"
#include "instanttensor/pipeline/group_plan.hpp"
#include "instanttensor/pipeline/share.hpp"
#include "loads.hpp"

namespace instanttensor_test {

using it::ExchangeMode;
using it::Share;

constexpr std::uint64_t test_slot = 16384;
constexpr std::uint64_t test_window_bytes = 65536;

/// Tensors of every kind the group tests need: odd sizes and offsets, tiny ones, scalars and
/// empties, matrices whose dimensions do not divide evenly (some with fewer indices than ranks),
/// 3-D and 4-D tensors, and tensors several windows long.
inline std::vector<fmt::TensorSpec> group_specs() {
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(60, 9)) specs.push_back(s);
    for (auto& s : edge_specs()) specs.push_back(s);
    specs.push_back({"w.q", fmt::Dtype::F16, {257, 500}});
    specs.push_back({"w.o", fmt::Dtype::BF16, {3, 20000}});
    specs.push_back({"w.big", fmt::Dtype::U8, {300001}});
    specs.push_back({"w.e", fmt::Dtype::F32, {1000, 7}});
    specs.push_back({"w.c3", fmt::Dtype::F32, {5, 6, 701}});
    specs.push_back({"w.c4", fmt::Dtype::BF16, {3, 4, 5, 333}});
    specs.push_back({"w.wide", fmt::Dtype::F16, {2, 50001}});
    return specs;
}

inline bool is_weight(const fmt::TensorRef& t) { return t.name().starts_with("w.") || t.name() == "e.matrix"; }

/// The column-parallel weights of a tensor-parallel layout in group_specs(); the other weights are
/// row-parallel.
inline bool is_column(const fmt::TensorRef& t) { return t.name() == "w.q" || t.name() == "w.big" || t.name() == "w.c3"; }

/// The share functions the tests load with, by name.
struct Selection {
    std::string name;
    it::ShareFunction share;
};

inline std::vector<Selection> selections() {
    return {
        {"everything", {}},
        {"keep_if", it::keep_if([](const fmt::TensorRef& t, int rank) {
             return is_weight(t) || std::hash<std::string>{}(t.name()) % 3 == static_cast<std::size_t>(rank) % 3;
         })},
        {"split_rows", it::split_rows(is_weight)},
        {"split_dim1", it::split_along(1, is_weight)},
        {"split_last", [](const fmt::TensorRef& t, int rank, int ranks) {  // along each tensor's last dimension
             if (!is_weight(t) || t.info->shape.empty()) return Share::whole();
             const auto last = static_cast<std::uint32_t>(t.info->shape.size() - 1);
             return it::block_of(last, t.info->shape[last], rank, ranks);
         }},
        {"tensor_parallel", it::tensor_parallel(is_column, [](const fmt::TensorRef& t) { return is_weight(t) && !is_column(t); })},
        // Some ranks keep nothing of a tensor, others a custom row range, a scalar whole.
        {"mixed", [](const fmt::TensorRef& t, int rank, int ranks) {
             if (t.info->shape.empty() || t.info->shape[0] < 2) return rank % 2 == 0 ? Share::whole() : Share::none();
             if (rank == ranks - 1 && ranks > 1) return Share::none();
             return Share::row_range(1, t.info->shape[0] - 1);
         }},
        // Ranks cut the same tensor along different dimensions, in overlapping blocks.
        {"mixed_dims", [](const fmt::TensorRef& t, int rank, int) {
             const auto& shape = t.info->shape;
             if (shape.empty()) return Share::whole();
             const auto dim = static_cast<std::uint32_t>(static_cast<std::size_t>(rank) % shape.size());
             if (shape[dim] < 2) return rank % 3 == 0 ? Share::none() : Share::whole();
             return Share::block(dim, 1, shape[dim] / 2);
         }},
    };
}

/// What one rank yielded.
struct RankResult {
    std::vector<std::string> names;
    std::vector<std::vector<std::uint64_t>> shapes;
    std::vector<std::pair<std::uint32_t, std::uint64_t>> blocks;  // (dimension, first index)
    std::vector<bool> bytes_match;
    it::LoadStats stats;
    it::Plan reads;  // the load's plan (its extents and pieces)
    it::GroupPlan plan;
    std::uint64_t received = 0;  // bytes the transport brought this rank
    std::string error;
};

using GroupLoader = it::Loader<it::storage::automatic, InProcessTransport, it::sink::host>;

/// Loads `checkpoint` on `ranks` threads; each checks every yielded tensor's bytes against the file.
template <class MakeLoader>
std::vector<RankResult> run_group(int ranks, MakeLoader make_loader) {
    InProcessGroup group(ranks);
    std::vector<RankResult> results(static_cast<std::size_t>(ranks));
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r)
        threads.emplace_back([&, r] {
            RankResult& out = results[static_cast<std::size_t>(r)];
            try {
                auto loader = make_loader(InProcessTransport(group, r), r);
                for (const auto& t : loader) {
                    out.names.emplace_back(t.name);
                    out.shapes.emplace_back(t.shape.begin(), t.shape.end());
                    out.blocks.emplace_back(t.block_dim, t.block_first);
                    const auto all = expected_bytes(t.name, t.ref->nbytes());
                    const auto block = block_bytes(*t.ref->info, all, t.block_dim, t.block_first,
                                                   t.shape.empty() ? 1 : t.shape[t.block_dim]);
                    out.bytes_match.push_back(std::equal(t.data.begin(), t.data.end(), block.begin(), block.end()));
                }
                out.stats = loader.stats();
                out.reads = loader.plan();
                out.plan = loader.group_plan();
                out.received = group.received(r);
                CHECK(out.received == out.stats.received_bytes);
            } catch (const std::exception& e) {
                out.error = e.what();
            }
        });
    for (auto& t : threads) t.join();
    return results;
}

/// Checks rank `rank` yielded exactly what `share` gives it, in checkpoint order, with the right bytes.
inline void check_rank(const fmt::Checkpoint& checkpoint, const it::ShareFunction& share, int rank, int ranks, const RankResult& out) {
    CAPTURE(rank);
    CAPTURE(out.error);
    REQUIRE(out.error.empty());
    std::size_t i = 0;
    std::uint64_t kept_total = 0;
    for (const auto& t : checkpoint.tensors()) {
        const Share s = share ? share(t, rank, ranks) : Share::whole();
        if (!s.kept) continue;
        CAPTURE(t.name());
        REQUIRE(i < out.names.size());
        CHECK(out.names[i] == t.name());
        std::vector<std::uint64_t> shape = t.info->shape;
        std::pair<std::uint32_t, std::uint64_t> block{s.dim, s.first};
        if (!shape.empty() && s.dim < shape.size()) shape[s.dim] = s.count == Share::all ? shape[s.dim] - s.first : s.count;
        if (shape.empty()) block = {0, 0};
        CHECK(out.shapes[i] == shape);
        CHECK(out.blocks[i] == block);
        CHECK(out.bytes_match[i]);
        kept_total += it::kept_bytes(t, s).size();
        ++i;
    }
    CHECK(i == out.names.size());
    CHECK(out.stats.tensor_bytes == kept_total);
}

inline it::LoadOptions group_options(it::ShareFunction share) {
    it::LoadOptions options;
    options.slot_bytes = test_slot;
    options.staging_bytes = 8 * test_slot;
    options.window_bytes = test_window_bytes;
    options.share = std::move(share);
    return options;
}

/// A random layout of 1-3 files of U8 matrices and 3-D tensors, some empty, for the group plan's
/// properties.
inline fmt::Checkpoint random_checkpoint(std::mt19937_64& rng) {
    std::vector<std::vector<fmt::TensorSpec>> files(1 + rng() % 3);
    std::size_t n = 0;
    for (auto& f : files)
        for (std::size_t i = 0, count = 1 + rng() % 25; i < count; ++i, ++n) {
            const std::uint64_t rows = rng() % 4 == 0 ? rng() % 5 : 1 + rng() % 400;
            if (rng() % 3 == 0) f.push_back({"t" + std::to_string(n), fmt::Dtype::U8, {rows, 1 + rng() % 20, 1 + rng() % 40}});
            else f.push_back({"t" + std::to_string(n), fmt::Dtype::U8, {rows, 1 + rng() % 300}});
        }
    return checkpoint_of(files);
}

}  // namespace instanttensor_test
