// libFuzzer target for the safetensors header parser, the index parser, the index check, the
// command's --split-rows matcher, and the parsers of digest manifests and seals.
//
// The first byte picks what is driven; the rest is the input:
//   0  a safetensors file: a header accepted must survive a round trip through the writer (written
//      again and re-parsed, it yields the same tensors with the same bytes);
//   1  an index: one accepted lists tensors and shards;
//   2  an index, a NUL, then a safetensors file standing for its first shard (the others empty):
//      the check that the index lists exactly its shards' tensors; if it passes, every listed
//      tensor is where it is listed;
//   3  a --split-rows expression, a NUL, then a safetensors file: the matcher runs in linear time
//      (RE2) whatever the expression, and on three ranks each tensor's kept rows are the whole
//      tensor, either on every rank or split between them;
//   4  a manifest of digests (the `hash` layout): one accepted prints as text that parses back to
//      the same digests and prints the same again;
//   5  a safetensors file whose __metadata__ may hold a seal: one accepted gives every tensor a digest;
//   6  a safetensors file whose __metadata__ may describe its encryption: one accepted has a tag per
//      chunk of every tensor, and written back to metadata gives the same parameters again;
//   7  a manifest of files' SHA-256 (sha256sum's layout): one accepted finds each of its files by
//      name, wherever the path puts it.
// Inputs may be refused only with format_error, and an expression or a share only with usage_error.
#include <instanttensor/format/checkpoint.hpp>
#include <instanttensor/format/digests.hpp>
#include <instanttensor/format/encryption.hpp>
#include <instanttensor/format/writer.hpp>

#include "splits.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <utility>
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

/// The input before its first NUL, and the bytes after it (all of it and nothing when it has none).
std::pair<std::string_view, std::span<const std::byte>> split_at_nul(std::span<const std::byte> input) {
    const std::string_view text(reinterpret_cast<const char*>(input.data()), input.size());
    const std::size_t nul = text.find('\0');
    if (nul == std::string_view::npos) return {text, {}};
    return {text.substr(0, nul), input.subspan(nul + 1)};
}

void index_check(std::span<const std::byte> input) {
    const auto [json, shard] = split_at_nul(input);
    const auto index = it::parse_index(json, "fuzz index");
    const auto shards = index.shard_names();
    std::vector<it::CheckpointFile> files(shards.size());
    files.front().header = it::parse_file_bytes(shard, "fuzz shard");
    instanttensor::detail::check_index_lists(index, shards, files, "fuzz index");
    std::size_t held = 0;
    for (const auto& f : files) held += f.header.tensors.size();
    check(held == index.weight_map.size());
    for (const auto& t : files.front().header.tensors) check(index.weight_map.at(t.name) == shards.front());
}

void split(std::span<const std::byte> input) {
    const auto [expression, file] = split_at_nul(input);
    const std::pair<std::string, std::span<const std::byte>> named[] = {{"fuzz", file}};
    const auto checkpoint = it::Checkpoint::from_memory(named);
    const auto pattern = instanttensor::cli::parse_split(std::string(expression));
    const auto share = instanttensor::cli::splits_matching(checkpoint, {pattern});
    constexpr int ranks = 3;
    for (const auto& t : checkpoint.tensors()) {
        std::uint64_t kept = 0;
        bool split = false;
        for (int r = 0; r < ranks; ++r) {
            const auto bytes = instanttensor::kept_bytes(t, share(t, r, ranks));
            split |= bytes.size() != t.nbytes();
            check(bytes.end() <= t.nbytes());
            check(bytes.within(0, t.nbytes()).length == bytes.size());
            kept += bytes.size();
        }
        // The ranks' blocks partition a split tensor; a tensor kept whole is kept by all.
        check(kept == (split ? t.nbytes() : ranks * t.nbytes()));
    }
}

void digests(std::span<const std::byte> input) {
    const auto parsed = it::TensorDigests::parse({reinterpret_cast<const char*>(input.data()), input.size()}, "fuzz");
    const std::string text = parsed.text();
    const auto again = it::TensorDigests::parse(text, "fuzz again");
    check(again.size() == parsed.size() && again.text() == text);
}

void seal(std::span<const std::byte> file) {
    const std::pair<std::string, std::span<const std::byte>> named[] = {{"fuzz", file}};
    const auto checkpoint = it::Checkpoint::from_memory(named);
    const auto sealed = it::TensorDigests::sealed(checkpoint);
    check(sealed.size() == checkpoint.tensors().size());
    for (const auto& t : checkpoint.tensors()) check(sealed.find(t.name()).has_value());
}

void encryption(std::span<const std::byte> file) {
    const it::Header header = it::parse_file_bytes(file, "fuzz");
    const auto parsed = it::Encryption::of(header, "fuzz");
    check(parsed.has_value() == it::is_encrypted(header));
    if (!parsed) return;
    std::uint64_t chunks = 0;
    for (std::size_t t = 0; t < header.tensors.size(); ++t) {
        check(parsed->first_chunk[t] == chunks);
        chunks += parsed->chunks_of(header.tensors[t].nbytes());
    }
    check(parsed->tags.size() == chunks * instanttensor::detail::tag_bytes);
    it::Header again = header;
    again.metadata = parsed->metadata(it::plain_metadata(header.metadata));
    check(again.metadata == header.metadata);
    const auto reparsed = it::Encryption::of(again, "fuzz again");
    check(reparsed && reparsed->tags == parsed->tags && reparsed->salt == parsed->salt && reparsed->key_id == parsed->key_id &&
          reparsed->chunk_bytes == parsed->chunk_bytes && reparsed->cipher == parsed->cipher);
}

void file_digests(std::span<const std::byte> input) {
    const std::string_view text{reinterpret_cast<const char*>(input.data()), input.size()};
    const auto parsed = it::FileDigests::parse(text, "fuzz");
    for (std::size_t line = 0; line < text.size();) {  // a plain (not escaped) line names its file as written
        const std::size_t end = std::min(text.find('\n', line), text.size());
        const std::string_view l = text.substr(line, end - line);
        if (!l.empty() && l.front() != '\\') check(parsed.find("/elsewhere/" + std::string(l.substr(66))).has_value());
        line = end + 1;
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const auto input = std::as_bytes(std::span(data + 1, size - 1));
    try {
        switch (data[0] % 8) {
        case 0: round_trip(input, it::parse_file_bytes(input, "fuzz")); break;
        case 1: {
            const auto index = it::parse_index({reinterpret_cast<const char*>(input.data()), input.size()}, "fuzz");
            check(!index.weight_map.empty() && !index.shard_names().empty());
            break;
        }
        case 2: index_check(input); break;
        case 3: split(input); break;
        case 4: digests(input); break;
        case 5: seal(input); break;
        case 6: encryption(input); break;
        case 7: file_digests(input); break;
        }
    } catch (const instanttensor::format_error&) {
        // refusing a malformed input is the expected outcome
    } catch (const instanttensor::usage_error&) {
        // a --split RE2 or the dimension refuses, or a block of a tensor that is not whole bytes
    }
    return 0;
}
