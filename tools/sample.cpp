// tools/sample.cpp: `instanttensor sample DIR`: writes a checkpoint shaped like a Llama decoder.
//
// The point is realistic I/O, not a usable model: tensor names, shapes, count and sizes follow the
// Hugging Face Llama layout (embed_tokens, per layer q/k/v/o_proj, gate/up/down_proj and two
// norms, the final norm, lm_head), and the bytes are a deterministic pseudo-random stream
// (splitmix64 seeded by the tensor name), so two runs write identical files and `hash` can compare
// them. Tensors are produced one at a time through the writer's callback: a 16 GB sample never
// holds more than its largest tensor in memory. With --sparse the tensors' bytes are holes that
// read as zeros: a checkpoint of any size in a moment and no disk space, for `plan` and `inspect`
// (the documents' quoted plans are checked on one) but not for timing loads.
//
// The shape is picked from a ladder of model widths (below). The widest rung whose own size fits
// the target (with 10% slack) is used; its own layer count is kept when that lands within 10% of
// the target, otherwise the layer count is whatever gets closest. So --size-mib 16384 gives exactly
// the Llama-3.1-8B shapes (hidden 4096, 32 layers, ~15 GiB in BF16) and the default 64 MiB gives a
// 20-layer model of hidden size 256.
//
// --experts E makes each layer's MLP a mixture of E experts, as MoE checkpoints lay them out
// (`mlp.gate.weight`, the router, then `mlp.experts.{e}.{gate,up,down}_proj.weight`), each expert
// 1/E of the dense MLP's width: about the same bytes in many more, smaller tensors (16384 MiB with
// 1024 experts: 98,531 tensors, most of 112 KiB), the layout whose per-tensor costs a loader must keep small.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli.hpp"
#include "instanttensor/format/dtype.hpp"
#include "instanttensor/format/writer.hpp"

namespace instanttensor::cli {
namespace {

using format::TensorSpec;

struct SampleOptions {
    std::string directory;
    std::size_t shards = 4;
    std::uint64_t size_mib = 64;
    std::string dtype = "BF16";
    std::uint64_t experts = 0;  ///< 0: a dense MLP per layer
    bool dry_run = false;
    bool sparse = false;
};

/// The widths of a decoder; head size is hidden / heads.
struct ModelShape {
    const char* like;  // the model these widths come from, for the summary line
    std::uint64_t hidden, intermediate, layers, vocab, heads, kv_heads;
};

// Smallest first; every rung is bigger than the one before it.
constexpr ModelShape ladder[] = {
    {"a micro Llama", 64, 224, 2, 1024, 2, 1},
    {"a tiny Llama", 128, 448, 4, 8192, 4, 1},
    {"a small Llama", 256, 896, 4, 32000, 4, 1},
    {"a medium Llama", 512, 1792, 8, 32000, 8, 2},
    {"TinyLlama-1.1B", 2048, 5632, 22, 32000, 32, 4},
    {"Llama-3.2-1B", 2048, 8192, 16, 128256, 32, 8},
    {"Llama-3.2-3B", 3072, 8192, 28, 128256, 24, 8},
    {"Llama-3.1-8B", 4096, 14336, 32, 128256, 32, 8},
    {"Llama-3.1-70B", 8192, 28672, 80, 128256, 64, 8},
};

std::uint64_t kv_width(const ModelShape& m) { return m.kv_heads * (m.hidden / m.heads); }

/// Elements of one decoder layer: attention, MLP and the two norms.
std::uint64_t layer_elements(const ModelShape& m) {
    return 2 * m.hidden * m.hidden + 2 * kv_width(m) * m.hidden + 3 * m.intermediate * m.hidden + 2 * m.hidden;
}

/// Elements outside the layers: embed_tokens, lm_head and the final norm.
std::uint64_t fixed_elements(const ModelShape& m) { return 2 * m.vocab * m.hidden + m.hidden; }

std::uint64_t total_bytes(const ModelShape& m, std::uint64_t element_bytes) {
    return (fixed_elements(m) + m.layers * layer_elements(m)) * element_bytes;
}

/// The ladder rule of the header comment.
ModelShape choose_shape(std::uint64_t target, std::uint64_t element_bytes) {
    const auto target_f = static_cast<double>(target);
    ModelShape shape = ladder[0];
    for (const auto& rung : ladder)
        if (static_cast<double>(total_bytes(rung, element_bytes)) <= target_f * 1.1) shape = rung;
    if (std::abs(static_cast<double>(total_bytes(shape, element_bytes)) - target_f) <= target_f * 0.1) return shape;
    const double room = target_f - static_cast<double>(fixed_elements(shape) * element_bytes);
    const double per_layer = static_cast<double>(layer_elements(shape) * element_bytes);
    shape.layers = static_cast<std::uint64_t>(std::max(1.0, std::round(room / per_layer)));
    return shape;
}

/// The width of one of `experts` experts of m's MLP (0 experts: the dense MLP's).
std::uint64_t expert_width(const ModelShape& m, std::uint64_t experts) { return experts == 0 ? m.intermediate : m.intermediate / experts; }

/// The tensors in Hugging Face Llama order (the order the writer cuts into shards).
std::vector<TensorSpec> llama_tensors(const ModelShape& m, format::Dtype dtype, std::uint64_t experts) {
    std::vector<TensorSpec> t;
    t.reserve((9 + 3 * experts) * m.layers + 3);
    t.push_back({"model.embed_tokens.weight", dtype, {m.vocab, m.hidden}});
    for (std::uint64_t i = 0; i < m.layers; ++i) {
        const std::string p = "model.layers." + std::to_string(i) + ".";
        t.push_back({p + "self_attn.q_proj.weight", dtype, {m.hidden, m.hidden}});
        t.push_back({p + "self_attn.k_proj.weight", dtype, {kv_width(m), m.hidden}});
        t.push_back({p + "self_attn.v_proj.weight", dtype, {kv_width(m), m.hidden}});
        t.push_back({p + "self_attn.o_proj.weight", dtype, {m.hidden, m.hidden}});
        if (experts == 0) {
            t.push_back({p + "mlp.gate_proj.weight", dtype, {m.intermediate, m.hidden}});
            t.push_back({p + "mlp.up_proj.weight", dtype, {m.intermediate, m.hidden}});
            t.push_back({p + "mlp.down_proj.weight", dtype, {m.hidden, m.intermediate}});
        } else {
            const std::uint64_t width = expert_width(m, experts);
            t.push_back({p + "mlp.gate.weight", dtype, {experts, m.hidden}});
            for (std::uint64_t e = 0; e < experts; ++e) {
                const std::string q = p + "mlp.experts." + std::to_string(e) + ".";
                t.push_back({q + "gate_proj.weight", dtype, {width, m.hidden}});
                t.push_back({q + "up_proj.weight", dtype, {width, m.hidden}});
                t.push_back({q + "down_proj.weight", dtype, {m.hidden, width}});
            }
        }
        t.push_back({p + "input_layernorm.weight", dtype, {m.hidden}});
        t.push_back({p + "post_attention_layernorm.weight", dtype, {m.hidden}});
    }
    t.push_back({"model.norm.weight", dtype, {m.hidden}});
    t.push_back({"lm_head.weight", dtype, {m.vocab, m.hidden}});
    return t;
}

std::uint64_t splitmix64(std::uint64_t& state) {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    return z ^ (z >> 31);
}

/// FNV-1a of the name: a seed that differs per tensor and never changes between runs.
std::uint64_t seed_of(std::string_view name) {
    std::uint64_t h = 0xcbf29ce484222325;
    for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3;
    return h;
}

/// Little-endian splitmix64 words, so the bytes are the same on every host.
void fill_random(const TensorSpec& tensor, std::span<std::byte> out) {
    std::uint64_t state = seed_of(tensor.name);
    std::size_t i = 0;
    for (; i + 8 <= out.size(); i += 8) {
        const std::uint64_t word = splitmix64(state);
        for (unsigned b = 0; b < 8; ++b) out[i + b] = static_cast<std::byte>(word >> (8 * b));
    }
    if (i == out.size()) return;
    const std::uint64_t word = splitmix64(state);
    for (unsigned b = 0; i < out.size(); ++i, ++b) out[i] = static_cast<std::byte>(word >> (8 * b));
}

int run_sample(const SampleOptions& options) {
    const auto dtype = *format::parse_dtype(options.dtype);  // the validator accepted it
    const std::uint64_t element_bytes = format::bit_size(dtype) / 8;
    const auto shape = choose_shape(options.size_mib << 20, element_bytes);
    if (options.experts > shape.intermediate)
        throw usage_error("--experts", "at most the MLP's width, " + std::to_string(shape.intermediate) + " at --size-mib " +
                                           std::to_string(options.size_mib));
    const auto tensors = llama_tensors(shape, dtype, options.experts);
    std::uint64_t total = 0;
    for (const TensorSpec& t : tensors) total += *format::byte_size(t.dtype, t.shape);  // whole-byte dtypes (check_dtype)
    if (options.dry_run) {
        print("{}\n", escape_control((std::filesystem::path(options.directory) / "model.safetensors.index.json").string()));
    } else {
        const auto fill = options.sparse ? format::TensorFiller{} : format::TensorFiller{fill_random};
        const auto index = format::write_sharded_checkpoint(options.directory, tensors, options.shards, fill,
                                                            {{"format", "pt"}});
        print("{}\n", escape_control(index.string()));
    }
    const std::string mlp = options.experts == 0 ? std::to_string(shape.intermediate)
                                                 : fmt::format("{} as {} of {}", shape.intermediate, count_of(options.experts, "expert"),
                                                               expert_width(shape, options.experts));
    print("{} in {}, {} ({} bytes): widths of {}: hidden {}, intermediate {}, {}, vocab {}, {} heads ({} kv) of {}, {}\n",
               count_of(tensors.size(), "tensor"), count_of(options.shards, "file"), human_bytes(total), total,
               shape.like, shape.hidden, mlp, count_of(shape.layers, "layer"), shape.vocab, shape.heads,
               shape.kv_heads, shape.hidden / shape.heads, options.dtype);
    return exit_ok;
}

/// Whole-byte dtypes only: every rung's shapes are then valid, and bytes per element are exact.
std::string check_dtype(std::string& name) {
    const auto dtype = format::parse_dtype(name);
    if (!dtype) return "unknown dtype '" + name + "' (names as in safetensors headers: BF16, F16, F32, F8_E4M3...)";
    if (format::bit_size(*dtype) % 8 != 0) return "sub-byte dtype '" + name + "' is not supported by sample";
    return {};
}

}  // namespace

void add_sample(CLI::App& app, Action& action) {
    auto options = std::make_shared<SampleOptions>();
    auto* sub = app.add_subcommand("sample", "Write a Llama-shaped checkpoint of deterministic random bytes");
    sub->footer(
        "Writes DIR/model-0000i-of-0000N.safetensors and DIR/model.safetensors.index.json (DIR is created\n"
        "if missing; files of those names are overwritten), then prints the index path on the first line\n"
        "and the size and shape on the second. Widths follow a ladder of Llama sizes, the layer count\n"
        "brings the total near --size-mib: 64 gives hidden 256 and 20 layers; 16384 gives the\n"
        "Llama-3.1-8B shapes (hidden 4096, intermediate 14336, 32 layers, vocab 128256, 8 kv heads of\n"
        "128), about 15 GiB. The same options always write the same bytes.\n");
    sub->add_option("DIR", options->directory, "Directory to write the checkpoint into")->type_name("")->required();
    sub->add_option("--shards", options->shards, "Number of files")
        ->type_name("N")
        ->capture_default_str()
        ->check(whole_number(std::size_t{1}, std::size_t{99999}));
    sub->add_option("--size-mib", options->size_mib, "Approximate total size of the tensors, in MiB")
        ->type_name("M")
        ->capture_default_str()
        ->check(whole_number(std::uint64_t{1}, std::uint64_t{1} << 24));
    sub->add_option("--dtype", options->dtype, "Element type of every tensor")
        ->type_name("DTYPE")
        ->capture_default_str()
        ->check(CLI::Validator(check_dtype, "", "dtype"));
    sub->add_option("--experts", options->experts,
                    "Each layer's MLP as this many experts, each 1/N of its width (MoE: many small tensors); 0 = dense")
        ->type_name("N")
        ->capture_default_str()
        ->check(whole_number(std::uint64_t{0}, std::uint64_t{1} << 16));
    sub->add_flag("--sparse", options->sparse,
                  "Leave the tensors' bytes as holes (zeros, no disk space): a layout for plan and inspect");
    sub->add_flag("--dry-run", options->dry_run, "Print what would be written, write nothing");
    sub->callback([options, &action] { action = [options] { return run_sample(*options); }; });
}

}  // namespace instanttensor::cli
