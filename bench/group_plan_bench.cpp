// Planning a group load of a DeepSeek-R1-sized checkpoint: what one rank computes and keeps.
//
// The checkpoint is laid out like DeepSeek-R1's routed experts (58 MoE layers × 256 experts × 3
// projections, each an FP8 [2048, 7168] weight and its F32 [16, 56] block scales: 89,088 tensors,
// 654 GB) in 160 sparse files: headers are real, the data is holes, and nothing is read.
//
//   group_plan/<ranks>/0   every rank keeps everything (all-gathers)
//   group_plan/<ranks>/1   every 2-D tensor split by rows across the ranks (point-to-point sends)
//   group_plan/<ranks>/2   every 2-D tensor split along dimension 1 (strided blocks: packed sends)
//
// Counters: share_calls/s (each tensor × rank once), plan_MB (what this rank's GroupPlan holds:
// windows, extent offsets, its transfers, their groups, its packs and kept bytes), transfers (this
// rank's), packs (this rank's).
#include <instanttensor/format/checkpoint.hpp>
#include <instanttensor/format/writer.hpp>
#include <instanttensor/loader.hpp>
#include <instanttensor/pipeline/group_plan.hpp>
#include <instanttensor/pipeline/plan.hpp>

#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace it = instanttensor;

namespace {

constexpr std::size_t moe_layers = 58, experts = 256, files = 160;

/// The checkpoint, written once (sparse) and removed at exit.
class SparseCheckpoint {
public:
    SparseCheckpoint()
        : dir_(std::filesystem::temp_directory_path() / ("instanttensor-bench-plan-" + std::to_string(::getpid()))),
          checkpoint_(it::format::Checkpoint::open(write(dir_))) {}
    ~SparseCheckpoint() {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    const it::format::Checkpoint& checkpoint() const { return checkpoint_; }

private:
    /// Writes the shards into `dir`; returns their paths.
    static std::vector<std::filesystem::path> write(const std::filesystem::path& dir) {
        static const char* const projections[] = {"gate_proj", "up_proj", "down_proj"};
        std::vector<std::vector<it::format::TensorSpec>> shards(files);
        std::size_t i = 0;
        for (std::size_t layer = 0; layer < moe_layers; ++layer)
            for (std::size_t expert = 0; expert < experts; ++expert)
                for (const char* projection : projections) {
                    const std::string prefix = "model.layers." + std::to_string(layer + 3) + ".mlp.experts." +
                                               std::to_string(expert) + "." + projection;
                    auto& shard = shards[i++ * files / (moe_layers * experts * 3)];
                    shard.push_back({prefix + ".weight", it::format::Dtype::F8_E4M3, {2048, 7168}});
                    shard.push_back({prefix + ".weight_scale_inv", it::format::Dtype::F32, {16, 56}});
                }
        std::filesystem::create_directories(dir);
        std::vector<std::filesystem::path> paths;
        for (std::size_t f = 0; f < files; ++f) paths.push_back(write_sparse(dir / ("shard-" + std::to_string(f) + ".safetensors"), shards[f]));
        return paths;
    }

    /// The header, then a hole as long as the tensors' bytes.
    static std::filesystem::path write_sparse(const std::filesystem::path& path, std::vector<it::format::TensorSpec> tensors) {
        const std::string json = it::format::make_header_json(tensors);
        std::uint64_t bytes = 0;
        for (const auto& t : tensors) bytes += *it::format::byte_size(t.dtype, t.shape);
        const std::uint64_t length = json.size();
        std::ofstream out(path, std::ios::binary);
        for (int b = 0; b < 8; ++b) out.put(static_cast<char>((length >> (8 * b)) & 0xff));
        out << json;
        out.close();
        std::filesystem::resize_file(path, 8 + json.size() + bytes);
        return path;
    }

    std::filesystem::path dir_;
    it::format::Checkpoint checkpoint_;
};

const SparseCheckpoint& checkpoint() {
    static const SparseCheckpoint c;
    return c;
}

void group_plan(benchmark::State& state) {
    const auto& c = checkpoint().checkpoint();
    const std::vector<std::uint64_t> alignment(c.files().size(), 4096);
    const it::LoadOptions defaults;
    const auto plan = it::make_plan(c, {}, alignment, defaults.slot_bytes);
    const int ranks = static_cast<int>(state.range(0));
    const auto matrices = [](const it::format::TensorRef& t) { return t.info->shape.size() == 2; };
    const it::ShareFunction share = state.range(1) == 0 ? it::ShareFunction{}
                                    : it::split_along(static_cast<std::uint32_t>(state.range(1) - 1), matrices);
    std::uint64_t plan_bytes = 0, transfers = 0, packs = 0;
    for (auto _ : state) {
        const auto g = it::make_group_plan(plan, ranks, ranks / 2, share, defaults.window_bytes);
        plan_bytes = g.windows.size() * sizeof(it::Window) + g.extent_window_offset.size() * sizeof(std::uint64_t) +
                     g.transfers.size() * sizeof(it::Transfer) + g.transfer_groups.size() * sizeof(std::uint32_t) +
                     g.packs.size() * sizeof(it::Pack) + g.kept.size() * sizeof(it::KeptBytes);
        transfers = g.transfers.size();
        packs = g.packs.size();
        benchmark::DoNotOptimize(g.digest);
    }
    state.counters["share_calls/s"] = benchmark::Counter(static_cast<double>(state.iterations() * plan.tensors.size() * ranks),
                                                         benchmark::Counter::kIsRate);
    state.counters["plan_MB"] = static_cast<double>(plan_bytes) / 1e6;
    state.counters["transfers"] = static_cast<double>(transfers);
    state.counters["packs"] = static_cast<double>(packs);
    state.counters["tensors"] = static_cast<double>(plan.tensors.size());
}

}  // namespace

BENCHMARK(group_plan)->ArgsProduct({{8, 64}, {0, 1, 2}})->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
