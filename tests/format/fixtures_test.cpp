// Reading files written by the Hugging Face reference implementation (tests/fixtures): the tensor
// table, metadata and bytes must be exactly what make_fixtures.py recorded in expected.txt.
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "instanttensor/format/checkpoint.hpp"
#include "support.hpp"

using namespace format_test;
using fmt::Checkpoint;

namespace {

/// Checks a header against the manifest's record of its file.
void check_header(const fmt::Header& h, const ExpectedFile& want) {
    CHECK(h.json_size == want.json_size);
    CHECK(h.data_offset() == 8 + want.json_size);
    CHECK(h.file_size() == want.file_size);
    CHECK(h.data_size == want.file_size - 8 - want.json_size);
    CHECK(h.metadata == want.metadata);
    REQUIRE(h.tensors.size() == want.tensors.size());
    std::set<std::string> names;
    for (std::size_t i = 0; i < h.tensors.size(); ++i) {
        const auto& t = h.tensors[i];
        CAPTURE(t.name);
        CHECK(names.insert(t.name).second);
        const ExpectedTensor* e = want.find(t.name);
        REQUIRE(e != nullptr);
        CHECK(t.dtype == e->dtype);
        CHECK(t.shape == e->shape);
        CHECK(h.data_offset() + t.begin == e->file_offset);
        CHECK(t.nbytes() == e->nbytes);
        CHECK(t.end - t.begin == e->nbytes);
        CHECK(fmt::byte_size(t.dtype, t.shape) == t.nbytes());
        // Sorted by offset: the manifest lists tensors in file order (empty tensors of one offset
        // may come in any order, so compare offsets, not names).
        CHECK(h.data_offset() + t.begin == want.tensors[i].file_offset);
    }
    // Contiguous from 0 to the end of the data section.
    std::uint64_t covered = 0;
    for (const auto& t : h.tensors) {
        CHECK(t.begin == covered);
        covered = t.end;
    }
    CHECK(covered == h.data_size);
}

}  // namespace

TEST_CASE("fixtures: the manifest covers every dtype and every fixture file") {
    const Manifest& m = manifest();
    CHECK(m.files.size() >= 15);
    std::set<fmt::Dtype> dtypes;
    std::set<fmt::Dtype> dtypes_by_reference;
    for (const auto& f : m.files)
        for (const auto& t : f.tensors) {
            dtypes.insert(t.dtype);
            if (f.origin == "reference") dtypes_by_reference.insert(t.dtype);
        }
    for (fmt::Dtype d : fmt::all_dtypes) {
        CAPTURE(fmt::to_string(d));
        CHECK(dtypes.count(d) == 1);
        // The reference's Python binding writes every dtype but the two F6 ones.
        const bool f6 = d == fmt::Dtype::F6_E2M3 || d == fmt::Dtype::F6_E3M2;
        CHECK(dtypes_by_reference.count(d) == (f6 ? 0u : 1u));
    }
    // Every valid fixture on disk is described (bad/ holds the malformed ones).
    std::set<std::string> listed;
    for (const auto& f : m.files) listed.insert(f.path);
    std::size_t on_disk = 0;
    for (const auto& entry : fs::recursive_directory_iterator(fixtures_dir())) {
        if (entry.path().extension() != ".safetensors") continue;
        const auto rel = entry.path().lexically_relative(fixtures_dir());
        if (*rel.begin() == "bad") continue;
        ++on_disk;
        CAPTURE(rel.string());
        CHECK(listed.count(rel.string()) == 1);
    }
    CHECK(on_disk == m.files.size());
}

TEST_CASE("fixtures: read_header gives the reference's tensor table and metadata") {
    for (const auto& want : manifest().files) {
        CAPTURE(want.path);
        const fmt::Header h = fmt::read_header(fixtures_dir() / want.path);
        check_header(h, want);
    }
}

TEST_CASE("fixtures: parse_file_bytes and parse_header agree with read_header") {
    for (const auto& want : manifest().files) {
        CAPTURE(want.path);
        const auto bytes = read_bytes(fixtures_dir() / want.path);
        REQUIRE(bytes.size() == want.file_size);
        check_header(fmt::parse_file_bytes(bytes, want.path), want);

        const std::uint64_t n = fmt::decode_header_length(bytes, bytes.size(), want.path);
        CHECK(n == want.json_size);
        const std::string_view json(reinterpret_cast<const char*>(bytes.data()) + 8, n);
        check_header(fmt::parse_header(json, bytes.size(), want.path), want);
    }
}

TEST_CASE("fixtures: tensor bytes read at the checkpoint's offsets are bit-exact") {
    std::size_t tensors = 0;
    for (const auto& want : manifest().files) {
        CAPTURE(want.path);
        const fs::path path = fixtures_dir() / want.path;
        const Checkpoint c = Checkpoint::open(path);
        REQUIRE(c.files().size() == 1);
        CHECK(c.files()[0].path == path);
        REQUIRE(c.tensors().size() == want.tensors.size());
        std::uint64_t total = 0;
        for (const auto& ref : c.tensors()) {
            CAPTURE(ref.name());
            const ExpectedTensor* e = want.find(ref.name());
            REQUIRE(e != nullptr);
            CHECK(ref.file == 0);
            CHECK(ref.file_offset == e->file_offset);
            CHECK(ref.nbytes() == e->nbytes);
            CHECK(c.find(ref.name()) == &ref);
            const auto bytes = pread_bytes(path, ref.file_offset, ref.nbytes());
            CHECK(xxh3(bytes) == e->xxh3);
            total += ref.nbytes();
            ++tensors;
        }
        CHECK(c.total_bytes() == total);
        CHECK(c.metadata() == want.metadata);
        CHECK(c.find("no such tensor") == nullptr);
    }
    CHECK(tensors >= 60);
}

TEST_CASE("fixtures: names with non-ASCII characters and JSON escapes") {
    const Checkpoint c = Checkpoint::open(fixtures_dir() / "names.safetensors");
    for (const char* name : {"Gewicht.é", "层.0", "🦀.weight", "quote\"name", "back\\slash", "tab\tand\nnewline",
                             "ctrl\x01\x1f", "del\x7f", "a/b/c", " ", "__metadata__x"}) {
        CAPTURE(name);
        CHECK(c.find(name) != nullptr);
    }
    CHECK(c.tensors().size() == 11);
    CHECK(c.metadata() == fmt::Metadata{{"описание", "имена \"с\" экранированием \\ ✓"}});

    // "\u" escapes, a surrogate pair and "\/" decode to UTF-8.
    const Checkpoint e = Checkpoint::open(fixtures_dir() / "edge/unicode_escapes.safetensors");
    REQUIRE(e.tensors().size() == 1);
    CHECK(e.tensors()[0].name() == "é🦀/A");
    CHECK(e.metadata() == fmt::Metadata{{"k", "ü\n"}});
}

TEST_CASE("fixtures: scalars and empty tensors") {
    const fmt::Header s = fmt::read_header(fixtures_dir() / "scalars.safetensors");
    for (const auto& t : s.tensors) {
        CAPTURE(t.name);
        if (t.name.rfind("scalar.", 0) == 0) {
            CHECK(t.shape.empty());
            CHECK(t.nbytes() == fmt::bit_size(t.dtype) / 8);
        }
    }
    const fmt::Header e = fmt::read_header(fixtures_dir() / "empty_tensors.safetensors");
    std::size_t empty = 0;
    for (const auto& t : e.tensors)
        if (t.nbytes() == 0) {
            ++empty;
            CHECK(std::find(t.shape.begin(), t.shape.end(), 0u) != t.shape.end());
        }
    CHECK(empty == 5);
    const fmt::Header only = fmt::read_header(fixtures_dir() / "only_empty.safetensors");
    CHECK(only.data_size == 0);
    CHECK(only.tensors.size() == 2);
    const fmt::Header none = fmt::read_header(fixtures_dir() / "no_tensors.safetensors");
    CHECK(none.tensors.empty());
    CHECK(none.data_size == 0);
    CHECK(none.metadata.size() == 1);
    const Checkpoint c = Checkpoint::open(fixtures_dir() / "no_tensors.safetensors");
    CHECK(c.tensors().empty());
    CHECK(c.total_bytes() == 0);
}

TEST_CASE("fixtures: a sharded checkpoint opens by its index and by its directory") {
    REQUIRE(manifest().checkpoints.size() == 1);
    const ExpectedCheckpoint& want = manifest().checkpoints[0];
    const fs::path index = fixtures_dir() / want.index;
    const fs::path dir = index.parent_path();

    for (const fs::path& p : {index, dir}) {
        CAPTURE(p.string());
        const Checkpoint c = Checkpoint::open(p);
        REQUIRE(c.files().size() == 3);
        for (std::size_t k = 0; k < 3; ++k)
            CHECK(c.files()[k].path.filename() ==
                  "model-0000" + std::to_string(k + 1) + "-of-00003.safetensors");
        CHECK(c.total_bytes() == want.total_size);
        CHECK(c.metadata() == fmt::Metadata{{"format", "pt"}});

        // File then offset order, each tensor as the manifest has it.
        std::size_t count = 0;
        std::uint32_t last_file = 0;
        std::uint64_t last_offset = 0;
        for (const auto& ref : c.tensors()) {
            CAPTURE(ref.name());
            const auto rel = c.files()[ref.file].path.lexically_relative(fixtures_dir()).string();
            const ExpectedTensor* e = manifest().file(rel).find(ref.name());
            REQUIRE(e != nullptr);
            CHECK(ref.file_offset == e->file_offset);
            CHECK((ref.file > last_file || (ref.file == last_file && ref.file_offset >= last_offset)));
            last_file = ref.file;
            last_offset = ref.file_offset;
            CHECK(xxh3(pread_bytes(c.files()[ref.file].path, ref.file_offset, ref.nbytes())) == e->xxh3);
            ++count;
        }
        CHECK(count == 7);
    }

    // The index itself, as transformers writes it.
    const auto text = read_bytes(index);
    const fmt::Index parsed =
        fmt::parse_index(std::string_view(reinterpret_cast<const char*>(text.data()), text.size()), index.string());
    CHECK(parsed.weight_map.size() == 7);
    CHECK(parsed.shard_names() == std::vector<std::string>{"model-00001-of-00003.safetensors",
                                                            "model-00002-of-00003.safetensors",
                                                            "model-00003-of-00003.safetensors"});
    CHECK(parsed.weight_map.at("lm_head.weight") == "model-00003-of-00003.safetensors");
}

TEST_CASE("fixtures: several files open as one checkpoint in the order given") {
    const std::vector<fs::path> paths{fixtures_dir() / "names.safetensors", fixtures_dir() / "all_dtypes.safetensors",
                                      fixtures_dir() / "f6.safetensors"};
    const Checkpoint c = Checkpoint::open(paths);
    REQUIRE(c.files().size() == 3);
    std::size_t expected_count = 0;
    for (std::size_t k = 0; k < 3; ++k) {
        CHECK(c.files()[k].path == paths[k]);
        expected_count += manifest().file(paths[k].lexically_relative(fixtures_dir()).string()).tensors.size();
    }
    CHECK(c.tensors().size() == expected_count);
    const auto* f6 = c.find("f6.e3m2");
    REQUIRE(f6 != nullptr);
    CHECK(f6->file == 2);
    CHECK(f6->info->dtype == fmt::Dtype::F6_E3M2);
    const auto* g = c.find("Gewicht.é");
    REQUIRE(g != nullptr);
    CHECK(g->file == 0);
    // Metadata merged; on a shared key the first file wins.
    const auto meta = c.metadata();
    CHECK(meta.at("format") == "pt");
    CHECK(meta.size() == 2);

    const Checkpoint reversed = Checkpoint::open({paths[2], paths[1]});
    CHECK(reversed.metadata().at("format") == "mx");
    CHECK(reversed.find("f6.e3m2")->file == 0);
}
