// Load a sharded checkpoint to GPU 0: through the device ring (each tensor valid until the next
// iteration: copy it where it belongs), or straight into device buffers the runtime owns.
//   load_to_gpu PATH      PATH: a model.safetensors.index.json or a directory holding one
#include <instanttensor/loader.hpp>

#include <cstdio>
#include <vector>

int main(int argc, char** argv) try {
    if (argc != 2) return std::fprintf(stderr, "usage: load_to_gpu PATH\n"), 2;
    namespace it = instanttensor;
    auto checkpoint = it::format::Checkpoint::open(argv[1]);

    // The runtime's own weight buffers: here one cudaMalloc per tensor.
    std::vector<it::detail::DeviceBuffer> weights;
    auto loader = it::load_into_device(checkpoint, [&](const it::format::TensorRef& t) {
        weights.emplace_back(t.nbytes(), "the model size");
        return std::span(weights.back().data(), t.nbytes());
    });
    for (const it::TensorView& t : loader)  // t.data is device memory, its bytes all there
        std::printf("%.*s -> %p\n", int(t.name.size()), t.name.data(), static_cast<void*>(t.data.data()));
    std::printf("%.2f GB/s\n", double(loader.stats().tensor_bytes) / loader.stats().seconds / 1e9);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "load_to_gpu: %s\n", e.what());
    return 1;
}
