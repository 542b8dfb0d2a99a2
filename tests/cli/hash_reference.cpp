// tests/cli/hash_reference.cpp: writes a small safetensors file with awkward tensor names and
// prints the lines `instanttensor hash` must print for it.
//
//   instanttensor_cli_hash_reference OUT.safetensors
//
// The expected digests come from the one-shot XXH3_64bits over bytes held in memory, not from the
// streaming state and chunked preads the command uses, and the layout (sorting by raw bytes,
// sha256sum escaping) is written out again here, so the test compares two independent paths.
// One tensor is larger than the command's 16 MiB read chunk, so a chunk boundary is crossed.
#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "instanttensor/format/writer.hpp"

namespace {

using instanttensor::format::Dtype;
using instanttensor::format::TensorData;
using instanttensor::format::TensorSpec;

struct Tensor {
    TensorSpec spec;
    std::vector<std::byte> bytes;
};

Tensor make_tensor(std::string name, Dtype dtype, std::vector<std::uint64_t> shape, std::uint32_t seed) {
    const auto size = instanttensor::format::byte_size(dtype, shape).value();
    std::vector<std::byte> bytes(size);
    std::uint32_t x = seed * 2654435761u + 1;  // an LCG: any bytes do, they only need to differ
    for (auto& b : bytes) {
        x = x * 1664525u + 1013904223u;
        b = static_cast<std::byte>(x >> 24);
    }
    return {{std::move(name), dtype, std::move(shape)}, std::move(bytes)};
}

/// The line as sha256sum lays it out: a name holding a backslash or a control character starts
/// the line with a backslash and reads \\, \n, \r, \t or \xNN for them.
std::string expected_line(const std::string& name, XXH64_hash_t hash) {
    std::string escaped;
    bool needs_escape = false;
    for (char c : name) {
        const auto u = static_cast<unsigned char>(c);
        char code[8] = {};
        switch (c) {
        case '\\': escaped += "\\\\"; break;
        case '\n': escaped += "\\n"; break;
        case '\r': escaped += "\\r"; break;
        case '\t': escaped += "\\t"; break;
        default:
            if (u >= 0x20 && u != 0x7f) {
                escaped += c;
                continue;
            }
            std::snprintf(code, sizeof code, "\\x%02x", u);
            escaped += code;
        }
        needs_escape = true;
    }
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
    return (needs_escape ? "\\" : "") + std::string(hex) + "  " + escaped;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s OUT.safetensors\n", argv[0]);
        return 2;
    }
    // The published XXH3-64 of empty input (xxHash's sanity tests): the library itself is checked.
    if (XXH3_64bits("", 0) != 0x2D06800538D394C2ULL) {
        std::fprintf(stderr, "libxxhash gives a wrong XXH3-64 for empty input\n");
        return 1;
    }
    try {
        std::vector<Tensor> tensors;
        tensors.push_back(make_tensor("empty", Dtype::F32, {0, 4}, 1));
        tensors.push_back(make_tensor("scalar", Dtype::I64, {}, 2));
        tensors.push_back(make_tensor("B", Dtype::U8, {3}, 3));  // sorts before "a": raw bytes
        tensors.push_back(make_tensor("a", Dtype::U8, {5}, 4));
        tensors.push_back(make_tensor("z", Dtype::F16, {2, 3}, 5));
        tensors.push_back(make_tensor("\xc3\xa9t\xc3\xa9", Dtype::BF16, {4}, 6));  // "été": after ASCII
        tensors.push_back(make_tensor("with \"quotes\"", Dtype::U8, {1}, 7));
        tensors.push_back(make_tensor("back\\slash", Dtype::U8, {2}, 8));
        tensors.push_back(make_tensor("new\nline", Dtype::U8, {2}, 9));
        tensors.push_back(make_tensor("slash\\nline", Dtype::U8, {2}, 11));  // prints unlike "new\nline"
        tensors.push_back(make_tensor("tab\there", Dtype::U8, {1}, 12));
        tensors.push_back(make_tensor("esc\x1b[31m", Dtype::U8, {1}, 13));
        tensors.push_back(make_tensor(std::string("nul\0byte", 8), Dtype::U8, {1}, 14));
        tensors.push_back(make_tensor("del\x7f", Dtype::U8, {1}, 15));
        tensors.push_back(make_tensor("big", Dtype::U8, {(std::uint64_t{17} << 20) + 3}, 10));

        std::vector<TensorData> data;
        for (const auto& t : tensors) data.push_back({t.spec, t.bytes});
        instanttensor::format::write_safetensors(argv[1], data, {{"purpose", "hash reference"}});

        std::vector<std::pair<std::string, XXH64_hash_t>> digests;
        for (const auto& t : tensors) digests.emplace_back(t.spec.name, XXH3_64bits(t.bytes.data(), t.bytes.size()));
        std::sort(digests.begin(), digests.end());
        for (const auto& [name, hash] : digests) std::printf("%s\n", expected_line(name, hash).c_str());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "hash_reference: %s\n", e.what());
        return 1;
    }
}
