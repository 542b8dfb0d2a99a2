// A runtime's first use of instanttensor: write a file, open it as a checkpoint, check the table.
// Built by each package consumer project (find_package, build tree, add_subdirectory).
#include <instanttensor/error.hpp>
#include <instanttensor/format/checkpoint.hpp>
#include <instanttensor/format/writer.hpp>

#include <array>
#include <cstdio>
#include <cstring>

namespace it = instanttensor::format;

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: consumer OUTPUT.safetensors\n");
        return 2;
    }
    std::array<std::byte, 12> bytes{};
    for (std::size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<std::byte>(i);
    const std::array tensors{it::TensorData{{"weight", it::Dtype::F16, {2, 3}}, bytes}};
    it::write_safetensors(argv[1], tensors, {{"producer", "consumer"}});

    const auto checkpoint = it::Checkpoint::open(argv[1]);
    const auto* weight = checkpoint.find("weight");
    if (checkpoint.tensors().size() != 1 || weight == nullptr || weight->nbytes() != 12 ||
        checkpoint.metadata().at("producer") != "consumer") {
        std::fprintf(stderr, "consumer: unexpected tensor table\n");
        return 1;
    }
    std::printf("consumer: instanttensor OK (CUDA=%d NCCL=%d liburing=%d)\n", INSTANTTENSOR_HAS_CUDA,
                INSTANTTENSOR_HAS_NCCL, INSTANTTENSOR_HAS_URING);
    return 0;
}
