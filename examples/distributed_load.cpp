// Load a checkpoint across the GPUs of a tensor-parallel group: each rank reads about 1/N of the
// files, NCCL exchanges the rest, and each rank keeps its block of each projection weight (rows of
// the column-parallel q, k, v, gate and up projections, columns of the row-parallel o and down
// projections) and every other tensor whole. One process per GPU; the NCCL unique id goes through
// a file.
//
//   distributed_load PATH RANK WORLD ID_FILE
//
// On a host with 4 GPUs (each process takes GPU RANK % visible GPUs):
//   rm -f /tmp/nccl.id
//   for r in 0 1 2 3; do ./distributed_load /models/llama-8b $r 4 /tmp/nccl.id & done; wait
// Across nodes, give each node's processes their global RANK and put ID_FILE on a shared
// filesystem (or pass the 128-byte id through your launcher instead of a file).
#include <instanttensor/loader.hpp>

#include <nccl.h>

#include <cstdio>
#include <string>

namespace {

bool is_row_parallel(const instanttensor::format::TensorRef& t) {
    return t.name().ends_with("o_proj.weight") || t.name().ends_with("down_proj.weight");
}
bool is_column_parallel(const instanttensor::format::TensorRef& t) {
    return t.name().ends_with("proj.weight") && !is_row_parallel(t);
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc != 5) return std::fprintf(stderr, "usage: distributed_load PATH RANK WORLD ID_FILE\n"), 2;
    namespace it = instanttensor;
    const int rank = std::stoi(argv[2]), world = std::stoi(argv[3]);
    int gpus = 0;
    INSTANTTENSOR_CUDA_CHECK(cudaGetDeviceCount(&gpus));
    INSTANTTENSOR_CUDA_CHECK(cudaSetDevice(rank % gpus));

    const ncclUniqueId id = it::transport::unique_id_through_file(rank, argv[4]);
    ncclComm_t comm = nullptr;
    INSTANTTENSOR_NCCL_CHECK(nullptr, ncclCommInitRank(&comm, world, id, rank));
    cudaStream_t stream = nullptr;
    INSTANTTENSOR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

    auto checkpoint = it::format::Checkpoint::open(argv[1]);
    it::LoadOptions options;
    // Rank r of N keeps indices [r·D/N, (r+1)·D/N) of dimension 0 (column parallel) or 1 (row parallel).
    options.share = it::tensor_parallel(is_column_parallel, is_row_parallel);
    std::uint64_t kept = 0;
    {
        auto loader = it::load_distributed(checkpoint, it::transport::nccl(comm, stream), options);
        for (const it::TensorView& t : loader) {  // t.data: device memory, valid until the next iteration;
                                                  // t.shape: the block's, from index t.block_first of t.block_dim
            // A runtime copies t.data into its weight buffer here (cudaMemcpyAsync on its stream).
            kept += t.data.size();
        }
        const auto& s = loader.stats();
        std::printf("rank %d/%d: kept %.2f GB, read %.2f GB, received %.2f GB, %.2f s\n", rank, world, double(kept) / 1e9,
                    double(s.read_bytes) / 1e9, double(s.received_bytes) / 1e9, s.seconds);
    }
    ncclCommDestroy(comm);
    cudaStreamDestroy(stream);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "distributed_load: %s\n", e.what());
    return 1;  // the loader told the peers (they fail too), or aborted the communicator if they were silent
}
