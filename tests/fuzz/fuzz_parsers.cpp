// libFuzzer target for the safetensors header parser and the index parser.
//
// The first byte picks the parser; the rest is the input. A parser may refuse an input only with
// instanttensor::format_error. A header it accepts must survive a round trip through the writer:
// written again and re-parsed, it yields the same tensors with the same bytes.
#include <instanttensor/format/checkpoint.hpp>
#include <instanttensor/format/writer.hpp>

#include <cstdint>
#include <cstdlib>
#include <span>
#include <string_view>
#include <vector>

namespace it = instanttensor::format;

namespace {

void check(bool ok) {
    if (!ok) __builtin_trap();  // a broken invariant is a finding
}

void round_trip(std::span<const std::byte> file, const it::Header& header) {
    std::vector<it::TensorData> tensors;
    for (const auto& t : header.tensors)
        tensors.push_back({{t.name, t.dtype, t.shape}, file.subspan(header.data_offset() + t.begin, t.nbytes())});
    const auto rewritten = it::serialize_safetensors(tensors, header.metadata);
    const auto again = it::parse_file_bytes(rewritten, "round trip");
    check(again.tensors.size() == header.tensors.size() && again.metadata == header.metadata);
    for (const auto& t : again.tensors) {
        const auto* original = &header.tensors.front();
        for (const auto& o : header.tensors)
            if (o.name == t.name) original = &o;
        check(original->name == t.name && original->dtype == t.dtype && original->shape == t.shape);
        const auto a = file.subspan(header.data_offset() + original->begin, original->nbytes());
        const auto b = std::span(rewritten).subspan(again.data_offset() + t.begin, t.nbytes());
        check(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const auto input = std::as_bytes(std::span(data + 1, size - 1));
    try {
        if (data[0] % 2 == 0) {
            const auto header = it::parse_file_bytes(input, "fuzz");
            round_trip(input, header);
        } else {
            const auto index = it::parse_index({reinterpret_cast<const char*>(input.data()), input.size()}, "fuzz");
            check(!index.weight_map.empty() && !index.shard_names().empty());
        }
    } catch (const instanttensor::format_error&) {
        // refusing a malformed input is the expected outcome
    }
    return 0;
}
