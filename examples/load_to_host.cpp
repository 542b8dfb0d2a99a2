// Load a checkpoint into host memory: first every tensor through the bounded ring, then the
// tensors you name straight into buffers of your own.
//   load_to_host PATH [NAME...]     PATH: a .safetensors file, an index .json or a directory
#include <instanttensor/loader.hpp>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

int main(int argc, char** argv) try {
    if (argc < 2) return std::fprintf(stderr, "usage: load_to_host PATH [NAME...]\n"), 2;
    namespace it = instanttensor;
    auto checkpoint = it::format::Checkpoint::open(argv[1]);

    // 1. Every tensor, one after the other; a view is valid until the next iteration.
    std::size_t bytes = 0;
    for (const it::TensorView& t : it::load_to_host(checkpoint)) bytes += t.data.size();
    std::printf("%zu tensors, %zu bytes\n", checkpoint.tensors().size(), bytes);

    // 2. Only the named tensors, each read straight into a buffer the caller owns.
    std::map<std::string, std::vector<std::byte>> weights;
    auto placed = it::load_into(
        checkpoint,
        [&](const it::format::TensorRef& t) { return std::span(weights[t.name()] = std::vector<std::byte>(t.nbytes())); },
        {.filter = it::select_names(checkpoint, {argv + 2, argv + argc})});  // a name it lacks is an error
    for (const it::TensorView& t : placed) std::printf("%.*s: %zu bytes\n", int(t.name.size()), t.name.data(), t.data.size());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "load_to_host: %s\n", e.what());
    return 1;
}
