// What verifying costs a load: the same load with and without LoadOptions::verify, side by side.
//
//   instanttensor_bench_verify [--runs N] [--device cpu|N] [--threads T]... [--cold-only|--warm-only] PATH...
//
// For warm (page cache) and cold (pages dropped first) in turn, runs in rounds: a plain load, then
// a verified one for each --threads (digesting threads; default: the library's default), each to
// host memory (load_to_host, touching a byte per page) or, with --device N, to GPU N
// (load_to_device). Digests are taken once beforehand, by a plain load. Prints, per load, the
// median GB/s of the rounds and their range, and the median of each round's verified/plain time.
#include <instanttensor/detail/xxh3.hpp>
#include <instanttensor/loader.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "raw_read.hpp"

namespace it = instanttensor;
using clock_type = std::chrono::steady_clock;

namespace {

struct Settings {
    int runs = 5;
    int device = -1;  // -1: host memory
    std::vector<unsigned> threads;
    bool warm = true, cold = true;
};

/// Seconds to load every tensor (verified when `options.verify` is set).
double timed_load(const it::format::Checkpoint& checkpoint, const Settings& settings, const it::LoadOptions& options) {
    const auto start = clock_type::now();
    std::uint64_t touched = 0;
    if (settings.device < 0) {
        for (const auto& t : it::load_to_host(checkpoint, options))
            for (std::size_t i = 0; i < t.data.size(); i += 4096) touched += static_cast<std::uint8_t>(t.data[i]);
    } else {
#if INSTANTTENSOR_HAS_CUDA
        it::sink::device_ring::Options ring;
        ring.device = settings.device;
        for (const auto& t : it::load_to_device(checkpoint, ring, options)) touched += t.data.size();
#else
        throw it::unavailable_error("--device", "this build has no CUDA");
#endif
    }
    if (touched == 0xdeadbeef) std::puts("");
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
    Settings settings;
    std::vector<std::filesystem::path> paths;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--runs" && i + 1 < argc) settings.runs = std::max(1, std::atoi(argv[++i]));
        else if (a == "--device" && i + 1 < argc) {
            const std::string d = argv[++i];
            settings.device = d == "cpu" ? -1 : std::atoi(d.c_str());
        } else if (a == "--threads" && i + 1 < argc) settings.threads.push_back(static_cast<unsigned>(std::atoi(argv[++i])));
        else if (a == "--cold-only") settings.warm = false;
        else if (a == "--warm-only") settings.cold = false;
        else paths.emplace_back(a);
    }
    if (paths.empty()) {
        std::fprintf(stderr, "usage: instanttensor_bench_verify [--runs N] [--device cpu|N] [--threads T]... [--cold-only|--warm-only] PATH...\n");
        return 2;
    }
    if (settings.threads.empty()) settings.threads.push_back(it::pipeline::default_verify_threads());
    try {
        const auto checkpoint = it::format::Checkpoint::open(paths);
        it::LoadOptions plain;
        it::format::TensorDigests digests("the first load");
        for (const auto& t : it::load_to_host(checkpoint, plain)) digests.add(std::string(t.name), it::detail::xxh3(t.data));
        const double gb = static_cast<double>(checkpoint.total_bytes()) / 1e9;
        std::printf("checkpoint: %zu files, %zu tensors, %.2f GB; to %s; median [range] of %d rounds\n", checkpoint.files().size(),
                    checkpoint.tensors().size(), gb, settings.device < 0 ? "host memory" : ("cuda:" + std::to_string(settings.device)).c_str(),
                    settings.runs);
        std::printf("%-5s %-18s %22s %26s\n", "cache", "load", "GB/s", "time / plain");
        for (const bool cold : {false, true}) {
            if ((cold && !settings.cold) || (!cold && !settings.warm)) continue;
            std::vector<it::LoadOptions> loads{plain};
            for (unsigned t : settings.threads) {
                it::LoadOptions verified;
                verified.verify = digests;
                verified.verify_threads = t;
                loads.push_back(verified);
            }
            std::vector<std::vector<double>> seconds(loads.size());
            for (int r = 0; r < settings.runs; ++r)
                for (std::size_t l = 0; l < loads.size(); ++l) {
                    if (cold) bench::drop_cache(checkpoint);
                    seconds[l].push_back(timed_load(checkpoint, settings, loads[l]));
                }
            for (std::size_t l = 0; l < loads.size(); ++l) {
                std::vector<double> ratios;
                for (int r = 0; r < settings.runs; ++r) ratios.push_back(seconds[l][r] / seconds[0][r]);
                const auto [fastest, slowest] = std::minmax_element(seconds[l].begin(), seconds[l].end());
                const std::string name = l == 0 ? "plain" : "verify, " + std::to_string(settings.threads[l - 1]) + " thread(s)";
                std::printf("%-5s %-18s %8.2f [%5.2f-%5.2f] %12.3f [%.3f-%.3f]\n", cold ? "cold" : "warm", name.c_str(),
                            gb / median(seconds[l]), gb / *slowest, gb / *fastest, median(ratios),
                            *std::min_element(ratios.begin(), ratios.end()), *std::max_element(ratios.begin(), ratios.end()));
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "instanttensor_bench_verify: %s\n", e.what());
        return 1;
    }
}
