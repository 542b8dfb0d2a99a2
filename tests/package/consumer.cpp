// A runtime's first use of instanttensor: write a file, open it as a checkpoint, load it through
// loader.hpp and check every byte. Built by each package consumer project (find_package, build
// tree, add_subdirectory).
#include <instanttensor/loader.hpp>
#include <instanttensor/format/writer.hpp>

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace it = instanttensor;

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: consumer OUTPUT.safetensors\n");
        return 2;
    }
    std::array<std::byte, 12> weight{};
    std::array<std::byte, 3> bias{};
    for (std::size_t i = 0; i < weight.size(); ++i) weight[i] = static_cast<std::byte>(i * 7 + 1);
    for (std::size_t i = 0; i < bias.size(); ++i) bias[i] = static_cast<std::byte>(0xf0 + i);
    const std::array tensors{it::format::TensorData{{"weight", it::format::Dtype::F16, {2, 3}}, weight},
                             it::format::TensorData{{"bias", it::format::Dtype::U8, {3}}, bias}};
    it::format::write_safetensors(argv[1], tensors, {{"producer", "consumer"}});

    const auto checkpoint = it::format::Checkpoint::open(argv[1]);
    if (checkpoint.tensors().size() != 2 || checkpoint.metadata().at("producer") != "consumer") {
        std::fprintf(stderr, "consumer: unexpected tensor table\n");
        return 1;
    }
    const std::map<std::string, std::span<const std::byte>> written{{"weight", weight}, {"bias", bias}};
    std::size_t loaded = 0;
    for (const it::TensorView& t : it::load_to_host(checkpoint)) {
        const auto expected = written.at(std::string(t.name));
        if (!std::equal(t.data.begin(), t.data.end(), expected.begin(), expected.end())) {
            std::fprintf(stderr, "consumer: tensor '%s' loaded with other bytes than were written\n", std::string(t.name).c_str());
            return 1;
        }
        ++loaded;
    }
    if (loaded != 2) {
        std::fprintf(stderr, "consumer: %zu tensors loaded, 2 written\n", loaded);
        return 1;
    }
    std::printf("consumer: instanttensor OK (CUDA=%d NCCL=%d liburing=%d)\n", INSTANTTENSOR_HAS_CUDA,
                INSTANTTENSOR_HAS_NCCL, INSTANTTENSOR_HAS_URING);
    return 0;
}
