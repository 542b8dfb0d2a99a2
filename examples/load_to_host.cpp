// Load a checkpoint into host memory: first every tensor through the bounded ring, then the
// tensors you name into memory of their own.
//   load_to_host PATH [NAME...]     PATH: a .safetensors file, an index .json or a directory
#include <instanttensor/loader.hpp>

#include <cstdio>
#include <map>
#include <string>

int main(int argc, char** argv) try {
    if (argc < 2) return std::fprintf(stderr, "usage: load_to_host PATH [NAME...]\n"), 2;
    namespace it = instanttensor;
    auto checkpoint = it::format::Checkpoint::open(argv[1]);

    // 1. Every tensor, one after the other; a view is valid until the next iteration.
    std::size_t bytes = 0;
    for (const it::TensorView& t : it::load_to_host(checkpoint)) bytes += t.data.size();
    std::printf("%zu tensors, %zu bytes\n", checkpoint.tensors().size(), bytes);

    // 2. Only the named tensors, each into memory of its own that the caller keeps, placed so that
    //    reads holding its bytes alone land straight in it (O_DIRECT ones too).
    std::map<std::string, it::sink::TensorMemory> weights;
    it::LoadOptions options;
    options.filter = it::select_names(checkpoint, {argv + 2, argv + argc});  // a name it lacks is an error
    auto placed = it::load_into(
        checkpoint,
        [&](const it::format::TensorRef& t) { return weights.try_emplace(t.name(), t, t.nbytes(), options.slot_bytes).first->second.span(); },
        options);
    for (const it::TensorView& t : placed) std::printf("%.*s: %zu bytes\n", int(t.name.size()), t.name.data(), t.data.size());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "load_to_host: %s\n", e.what());
    return 1;
}
