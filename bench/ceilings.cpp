// The hardware ceilings a GPU load is judged against, measured in the same run as the loads:
//
//   instanttensor_bench_ceilings [--h2d-only] PATH...
//
//   pinned_h2d_gbps    cudaMemcpyAsync of 2 GiB from pinned host memory to the device (best of 5):
//                      the limit of a warm load
//   odirect_read_gbps  the checkpoint's files read with O_DIRECT through a bare io_uring loop after
//                      dropping the page cache, the better of QD 64 × 1 MiB and QD 32 × 8 MiB:
//                      the limit of a cold load
// One `name=value` line each, for scripts/gpu-check.sh to read.
#include <instanttensor/detail/cuda.hpp>

#include <chrono>
#include <cstdio>
#include <utility>
#include <string>
#include <vector>

#include "raw_read.hpp"

namespace it = instanttensor;
using clock_type = std::chrono::steady_clock;

namespace {

double pinned_h2d_gbps() {
    constexpr std::size_t bytes = 2ull << 30;
    it::detail::PinnedBuffer host(bytes);
    std::memset(host.data(), 1, bytes);
    it::detail::DeviceBuffer device(bytes, "nothing (a 2 GiB benchmark buffer)");
    it::detail::Stream stream;
    double best = 0;
    for (int run = 0; run < 5; ++run) {
        const auto start = clock_type::now();
        INSTANTTENSOR_CUDA_CHECK(cudaMemcpyAsync(device.data(), host.data(), bytes, cudaMemcpyHostToDevice, stream.get()));
        INSTANTTENSOR_CUDA_CHECK(cudaStreamSynchronize(stream.get()));
        best = std::max(best, static_cast<double>(bytes) / std::chrono::duration<double>(clock_type::now() - start).count() / 1e9);
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    bool h2d_only = false;
    std::vector<std::filesystem::path> paths;
    for (int i = 1; i < argc; ++i) {
        if (std::string(argv[i]) == "--h2d-only") h2d_only = true;
        else paths.emplace_back(argv[i]);
    }
    try {
        if (it::detail::device_count() == 0) {
            std::fprintf(stderr, "instanttensor_bench_ceilings: no GPU\n");
            return 77;
        }
        std::printf("pinned_h2d_gbps=%.2f\n", pinned_h2d_gbps());
        if (h2d_only || paths.empty()) return 0;
        const auto checkpoint = it::format::Checkpoint::open(paths);
        double best = 0;
        for (const auto& [depth, chunk] : {std::pair{64u, std::size_t{1} << 20}, std::pair{32u, std::size_t{8} << 20}}) {
            bench::drop_cache(checkpoint);
            const auto start = clock_type::now();
            const std::uint64_t bytes = bench::raw_uring_read(checkpoint, true, depth, chunk);
            const double gbps = static_cast<double>(bytes) / std::chrono::duration<double>(clock_type::now() - start).count() / 1e9;
            std::printf("odirect_read_gbps_qd%u_%zumib=%.2f\n", depth, chunk >> 20, gbps);
            best = std::max(best, gbps);
        }
        std::printf("odirect_read_gbps=%.2f\n", best);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "instanttensor_bench_ceilings: %s\n", e.what());
        return 1;
    }
}
