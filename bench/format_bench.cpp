// Header parsing and checkpoint opening at the scale of the largest public checkpoints.
//
// DeepSeek-V3/R1 has ~91,000 tensors in 163 files; Llama-3.1-405B ~1,100 tensors in 191 files.
// The synthetic checkpoint here is 100,000 tensors over 160 files, named and shaped like an MoE
// model's (experts × layers × projections), with tiny shapes so the files stay small: what is
// measured is the metadata path, not storage.
//
//   parse_header/<tensors>      one header of that many tensors: MB/s of JSON, tensors/s
//   open_checkpoint/<tensors>   Checkpoint::open of an index over 160 files: tensors/s, files/s
//   refuse_missing/<tensors>    the same index listing one tensor more than its shards hold, in one
//                               file: refused in O(n log n) (it was a search per listed tensor)
#include <instanttensor/format/checkpoint.hpp>
#include <instanttensor/format/writer.hpp>

#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace it = instanttensor::format;

namespace {

constexpr std::size_t files_at_scale = 160;

/// Tensor names and shapes like an MoE decoder's; tiny dims, realistic names and counts.
std::vector<it::TensorSpec> moe_like_tensors(std::size_t count) {
    static const char* const projections[] = {"gate_proj", "up_proj", "down_proj"};
    std::vector<it::TensorSpec> tensors;
    tensors.reserve(count);
    for (std::size_t i = 0; tensors.size() < count; ++i) {
        const std::size_t layer = i / (256 * 3), expert = i / 3 % 256;
        std::string name = "model.layers." + std::to_string(layer) + ".mlp.experts." + std::to_string(expert) + "." +
                           projections[i % 3] + (i % 2 ? ".weight" : ".weight_scale_inv");
        tensors.push_back({std::move(name), i % 2 ? it::Dtype::F8_E4M3 : it::Dtype::F32, {2, 2 + i % 5}});
    }
    return tensors;
}

void fill_zero(const it::TensorSpec&, std::span<std::byte> out) { std::fill(out.begin(), out.end(), std::byte{0}); }

void parse_header(benchmark::State& state) {
    auto tensors = moe_like_tensors(static_cast<std::size_t>(state.range(0)));
    const std::string json = it::make_header_json(tensors);
    std::uint64_t data_size = 0;
    for (const auto& t : tensors) data_size += *it::byte_size(t.dtype, t.shape);
    const std::uint64_t file_size = it::header_length_size + json.size() + data_size;
    for (auto _ : state) {
        auto header = it::parse_header(json, file_size, "bench");
        benchmark::DoNotOptimize(header.tensors.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * json.size()));
    state.counters["tensors/s"] = benchmark::Counter(static_cast<double>(state.iterations() * tensors.size()),
                                                     benchmark::Counter::kIsRate);
    state.counters["header_MB"] = static_cast<double>(json.size()) / 1e6;
}

/// A sharded checkpoint on disk, written once per size and removed at exit.
class CheckpointOnDisk {
public:
    explicit CheckpointOnDisk(std::size_t tensors)
        : dir_(std::filesystem::temp_directory_path() /
               ("instanttensor-bench-" + std::to_string(::getpid()) + "-" + std::to_string(tensors))) {
        index_ = it::write_sharded_checkpoint(dir_, moe_like_tensors(tensors), files_at_scale, fill_zero);
    }
    ~CheckpointOnDisk() {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
    }
    const std::filesystem::path& index() const { return index_; }

private:
    std::filesystem::path dir_;
    std::filesystem::path index_;
};

void open_checkpoint(benchmark::State& state) {
    const auto count = static_cast<std::size_t>(state.range(0));
    const CheckpointOnDisk disk(count);
    for (auto _ : state) {
        auto checkpoint = it::Checkpoint::open(disk.index());
        benchmark::DoNotOptimize(checkpoint.tensors().data());
    }
    state.counters["tensors/s"] = benchmark::Counter(static_cast<double>(state.iterations() * count),
                                                     benchmark::Counter::kIsRate);
    state.counters["files/s"] = benchmark::Counter(static_cast<double>(state.iterations() * files_at_scale),
                                                   benchmark::Counter::kIsRate);
}

void refuse_missing(benchmark::State& state) {
    const auto count = static_cast<std::size_t>(state.range(0));
    const auto dir = std::filesystem::temp_directory_path() / ("instanttensor-bench-missing-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    it::write_safetensors(dir / "model.safetensors", moe_like_tensors(count), fill_zero);
    std::string index = R"({"weight_map":{"model.missing.weight":"model.safetensors")";
    for (const auto& t : moe_like_tensors(count)) index += ",\"" + t.name + R"(":"model.safetensors")";
    std::ofstream(dir / "model.safetensors.index.json") << index << "}}";
    for (auto _ : state) {
        try {
            (void)it::Checkpoint::open(dir / "model.safetensors.index.json");
            state.SkipWithError("the index was accepted");
        } catch (const instanttensor::format_error&) {
        }
    }
    state.counters["tensors/s"] = benchmark::Counter(static_cast<double>(state.iterations() * count),
                                                     benchmark::Counter::kIsRate);
    std::filesystem::remove_all(dir);
}

}  // namespace

BENCHMARK(parse_header)->Arg(1000)->Arg(100000)->Unit(benchmark::kMillisecond);
BENCHMARK(open_checkpoint)->Arg(1000)->Arg(100000)->Unit(benchmark::kMillisecond);
BENCHMARK(refuse_missing)->Arg(1000)->Arg(100000)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
