// End-to-end host loading next to the raw io_uring ceiling, measured side by side in one run.
//
//   instanttensor_bench_host_load [--runs N] [--cold-only|--warm-only] PATH...
//
// For warm (page cache) and cold (pages dropped first) in turn, it times:
//   raw     a bare io_uring loop reading every file whole, QD 64 × 1 MiB into a ring of buffers
//           (buffered + IOSQE_ASYNC warm, O_DIRECT cold): the ceiling of this machine's storage path
//   loader  instanttensor::load_to_host over the same checkpoint, touching every tensor
// and prints GB/s of each and loader/raw. Cold runs drop the files' pages with
// posix_fadvise(DONTNEED) (no root needed; the whole cache is dropped too when
// /proc/sys/vm/drop_caches is writable). Each figure is the best of --runs runs.
#include <instanttensor/loader.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "raw_read.hpp"

namespace it = instanttensor;
using clock_type = std::chrono::steady_clock;

namespace {

/// Loads every tensor to host memory and touches one byte per page; returns tensor bytes.
std::uint64_t loader_read(const it::format::Checkpoint& checkpoint, std::string& backend) {
    auto loader = it::load_to_host(checkpoint);
    std::uint64_t checksum = 0;
    for (const auto& t : loader)
        for (std::size_t i = 0; i < t.data.size(); i += 4096) checksum += static_cast<std::uint8_t>(t.data[i]);
    backend = std::string(loader.storage().name()) + (loader.storage().direct_files() ? "+direct" : "");
    if (checksum == 0xdeadbeef) std::puts("");  // keep the touches
    return loader.stats().tensor_bytes;
}

template <class F>
double best_gbps(int runs, bool cold, const it::format::Checkpoint& checkpoint, F&& f) {
    double best = 0;
    for (int r = 0; r < runs; ++r) {
        if (cold) bench::drop_cache(checkpoint);
        const auto start = clock_type::now();
        const std::uint64_t bytes = f();
        const double s = std::chrono::duration<double>(clock_type::now() - start).count();
        best = std::max(best, static_cast<double>(bytes) / s / 1e9);
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    int runs = 3;
    bool warm = true, cold = true;
    std::vector<std::filesystem::path> paths;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--runs" && i + 1 < argc) runs = std::max(1, std::atoi(argv[++i]));
        else if (a == "--cold-only") warm = false;
        else if (a == "--warm-only") cold = false;
        else paths.emplace_back(a);
    }
    if (paths.empty()) {
        std::fprintf(stderr, "usage: instanttensor_bench_host_load [--runs N] [--cold-only|--warm-only] PATH...\n");
        return 2;
    }
    try {
        const auto checkpoint = it::format::Checkpoint::open(paths);
        std::printf("checkpoint: %zu files, %zu tensors, %.2f GB; best of %d runs\n", checkpoint.files().size(),
                    checkpoint.tensors().size(), static_cast<double>(checkpoint.total_bytes()) / 1e9, runs);
        std::printf("%-5s %12s %14s %8s  %s\n", "cache", "raw GB/s", "loader GB/s", "ratio", "loader backend");
        for (const bool is_cold : {false, true}) {
            if ((is_cold && !cold) || (!is_cold && !warm)) continue;
            if (!is_cold) bench::raw_uring_read(checkpoint, false);  // warm the cache
            std::string backend;
            const double raw = best_gbps(runs, is_cold, checkpoint, [&] { return bench::raw_uring_read(checkpoint, is_cold); });
            const double loaded = best_gbps(runs, is_cold, checkpoint, [&] { return loader_read(checkpoint, backend); });
            std::printf("%-5s %12.2f %14.2f %8.2f  %s\n", is_cold ? "cold" : "warm", raw, loaded, loaded / raw, backend.c_str());
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "instanttensor_bench_host_load: %s\n", e.what());
        return 1;
    }
}
