// The writer: byte-identical to the reference implementation on the same tensors, readable by the
// reader, sharded checkpoints that Checkpoint::open accepts, and refusals of bad specs.
#include <sys/resource.h>

#include <algorithm>
#include <csignal>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/format/writer.hpp"
#include "support.hpp"

using namespace format_test;
using fmt::Dtype;
using fmt::TensorData;
using fmt::TensorSpec;

namespace {

/// A file's tensors with their bytes, as the reader sees them.
struct LoadedFile {
    std::vector<std::byte> bytes;
    fmt::Header header;

    [[nodiscard]] std::span<const std::byte> data_of(const fmt::TensorInfo& t) const {
        return std::span(bytes).subspan(static_cast<std::size_t>(header.data_offset() + t.begin),
                                        static_cast<std::size_t>(t.nbytes()));
    }
    /// The tensors in an order unlike the file's (reverse name order), so the writer must sort.
    [[nodiscard]] std::vector<TensorData> tensors_shuffled() const {
        std::vector<TensorData> out;
        for (const auto& t : header.tensors) out.push_back({{t.name, t.dtype, t.shape}, data_of(t)});
        std::sort(out.begin(), out.end(), [](const TensorData& a, const TensorData& b) { return a.spec.name > b.spec.name; });
        return out;
    }
};

LoadedFile load(const fs::path& path) {
    LoadedFile f{read_bytes(path), {}};
    f.header = fmt::parse_file_bytes(f.bytes, path.string());
    return f;
}

/// Deterministic bytes for a tensor, derived from its name.
void fill_from_name(const TensorSpec& t, std::span<std::byte> out) {
    std::uint64_t x = XXH3_64bits(t.name.data(), t.name.size()) | 1;
    for (auto& b : out) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b = static_cast<std::byte>(x & 0xff);
    }
}

std::vector<std::byte> bytes_from_name(const TensorSpec& t) {
    std::vector<std::byte> out(static_cast<std::size_t>(*fmt::byte_size(t.dtype, t.shape)));
    fill_from_name(t, out);
    return out;
}

}  // namespace

TEST_CASE("writer: the same tensors as a reference-written file give the same bytes") {
    std::size_t compared = 0;
    for (const auto& want : manifest().files) {
        // Layout-exact comparison needs a file laid out as the reference does. (The reference
        // writes several metadata keys in a random order; make_fixtures.py kept the run that wrote
        // them sorted, as this writer does.)
        if (want.origin == "script-edge") continue;
        CAPTURE(want.path);
        const fs::path path = fixtures_dir() / want.path;
        const LoadedFile file = load(path);
        const auto tensors = file.tensors_shuffled();

        const auto serialized = fmt::serialize_safetensors(tensors, file.header.metadata);
        CHECK(serialized == file.bytes);

        TempDir tmp;
        fmt::write_safetensors(tmp / "spans.safetensors", tensors, file.header.metadata);
        CHECK(read_bytes(tmp / "spans.safetensors") == file.bytes);

        std::vector<TensorSpec> specs;
        std::map<std::string, std::span<const std::byte>, std::less<>> by_name;
        for (const auto& t : tensors) {
            specs.push_back(t.spec);
            by_name[t.spec.name] = t.bytes;
        }
        std::vector<std::string> fill_order;
        fmt::write_safetensors(
            tmp / "filled.safetensors", specs,
            [&](const TensorSpec& t, std::span<std::byte> out) {
                fill_order.push_back(t.name);
                REQUIRE(out.size() == by_name.at(t.name).size());
                std::copy(by_name.at(t.name).begin(), by_name.at(t.name).end(), out.begin());
            },
            file.header.metadata);
        CHECK(read_bytes(tmp / "filled.safetensors") == file.bytes);
        CHECK(fill_order.size() == specs.size());

        // make_header_json: the file's JSON, and the specs reordered into the file's order, which
        // is also the order the filler was called in.
        std::vector<TensorSpec> reordered = specs;
        const std::string json = fmt::make_header_json(reordered, file.header.metadata);
        CHECK(json == std::string_view(reinterpret_cast<const char*>(file.bytes.data()) + 8,
                                       static_cast<std::size_t>(file.header.json_size)));
        CHECK(json.size() % 8 == 0);
        std::uint64_t offset = 0;
        for (std::size_t i = 0; i < reordered.size(); ++i) {
            CAPTURE(reordered[i].name);
            CHECK(fill_order[i] == reordered[i].name);
            const auto& t = *std::find_if(file.header.tensors.begin(), file.header.tensors.end(),
                                          [&](const fmt::TensorInfo& u) { return u.name == reordered[i].name; });
            CHECK(t.begin == offset);
            offset = t.end;
        }
        ++compared;
    }
    CHECK(compared >= 11);
}

TEST_CASE("writer: files of an unusual layout are written in the reference's layout, same tensors") {
    std::size_t compared = 0;
    for (const auto& want : manifest().files) {
        if (want.origin != "script-edge") continue;
        CAPTURE(want.path);
        const LoadedFile file = load(fixtures_dir() / want.path);
        const auto written = fmt::serialize_safetensors(file.tensors_shuffled(), file.header.metadata);
        const fmt::Header h = fmt::parse_file_bytes(written, "written");
        CHECK(h.metadata == file.header.metadata);
        CHECK(h.json_size % 8 == 0);
        REQUIRE(h.tensors.size() == file.header.tensors.size());
        for (const auto& t : h.tensors) {
            CAPTURE(t.name);
            const ExpectedTensor* e = want.find(t.name);
            REQUIRE(e != nullptr);
            CHECK(t.dtype == e->dtype);
            CHECK(t.shape == e->shape);
            CHECK(xxh3(std::span(written).subspan(static_cast<std::size_t>(h.data_offset() + t.begin),
                                                  static_cast<std::size_t>(t.nbytes()))) == e->xxh3);
        }
        ++compared;
    }
    CHECK(compared >= 8);
}

TEST_CASE("writer: header layout: metadata first, dtype descending then name, spaces to 8") {
    std::vector<TensorSpec> specs{
        {"b", Dtype::F32, {2}},
        {"a", Dtype::BOOL, {3}},
        {"c", Dtype::F32, {}},
        {"tab\there \"q\" \\ \x01\x7f é", Dtype::U64, {1, 0}},
        {"f4", Dtype::F4, {2, 2}},
        {"f6", Dtype::F6_E2M3, {4}},
    };
    const std::string json =
        fmt::make_header_json(specs, fmt::Metadata{{"z", "last"}, {"a", "first\n"}});
    const std::string body =
        R"({"__metadata__":{"a":"first\n","z":"last"},)"
        R"("tab\there \"q\" \\ \u0001)" "\x7f" R"( é":{"dtype":"U64","shape":[1,0],"data_offsets":[0,0]},)"
        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
        R"("c":{"dtype":"F32","shape":[],"data_offsets":[8,12]},)"
        R"("f6":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[12,15]},)"
        R"("f4":{"dtype":"F4","shape":[2,2],"data_offsets":[15,17]},)"
        R"("a":{"dtype":"BOOL","shape":[3],"data_offsets":[17,20]}})";
    CHECK(json.substr(0, body.size()) == body);
    CHECK(json.size() % 8 == 0);
    CHECK(json.size() - body.size() < 8);
    CHECK(json.find_first_not_of(' ', body.size()) == std::string::npos);
    REQUIRE(specs.size() == 6);
    CHECK(specs[0].dtype == Dtype::U64);
    CHECK(specs[5].name == "a");

    std::vector<TensorSpec> none;
    CHECK(fmt::make_header_json(none) == "{}      ");
}

TEST_CASE("writer: what it writes reads back, every dtype") {
    std::vector<TensorSpec> specs;
    for (Dtype d : fmt::all_dtypes) {
        const std::string base = "t." + std::string(fmt::to_string(d));
        specs.push_back({base + ".matrix", d, {4, 6}});
        specs.push_back({base + ".empty", d, {0, 3}});
        if (fmt::bit_size(d) % 8 == 0) specs.push_back({base + ".scalar", d, {}});
    }
    const fmt::Metadata meta{{"format", "pt"}, {"quote\"", "back\\slash\ttab"}, {"日本", "🦀"}};
    TempDir tmp;
    fmt::write_safetensors(tmp / "all.safetensors", specs, fill_from_name, meta);
    const auto c = fmt::Checkpoint::open(tmp / "all.safetensors");
    CHECK(c.metadata() == meta);
    REQUIRE(c.tensors().size() == specs.size());
    for (const auto& s : specs) {
        CAPTURE(s.name);
        const auto* ref = c.find(s.name);
        REQUIRE(ref != nullptr);
        CHECK(ref->info->dtype == s.dtype);
        CHECK(ref->info->shape == s.shape);
        CHECK(pread_bytes(tmp / "all.safetensors", ref->file_offset, ref->nbytes()) == bytes_from_name(s));
    }
    // The filler variant and the span variant agree.
    std::vector<std::vector<std::byte>> storage;
    std::vector<TensorData> data;
    for (const auto& s : specs) storage.push_back(bytes_from_name(s));
    for (std::size_t i = 0; i < specs.size(); ++i) data.push_back({specs[i], storage[i]});
    CHECK(fmt::serialize_safetensors(data, meta) == read_bytes(tmp / "all.safetensors"));
}

TEST_CASE("writer: an empty filler leaves the tensors' bytes a hole that reads as zeros") {
    const std::vector<TensorSpec> specs{{"b", Dtype::BF16, {512, 1024}}, {"a", Dtype::F32, {3}}, {"e", Dtype::F16, {0}}};
    TempDir tmp;
    fmt::write_safetensors(tmp / "filled.safetensors", specs, fill_from_name);
    fmt::write_safetensors(tmp / "hole.safetensors", specs, fmt::TensorFiller{});
    const auto filled = read_bytes(tmp / "filled.safetensors");
    const auto hole = read_bytes(tmp / "hole.safetensors");
    REQUIRE(hole.size() == filled.size());
    const auto c = fmt::Checkpoint::open(tmp / "hole.safetensors");  // the same valid layout
    const auto data_offset = static_cast<std::ptrdiff_t>(c.files()[0].header.data_offset());
    CHECK(std::equal(hole.begin(), hole.begin() + data_offset, filled.begin()));
    CHECK(std::all_of(hole.begin() + data_offset, hole.end(), [](std::byte b) { return b == std::byte{0}; }));

    // Sharded too; and a hole the file size limit refuses is an io_error naming the file.
    const auto index = fmt::write_sharded_checkpoint(tmp / "ckpt", specs, 2, fmt::TensorFiller{});
    CHECK(fmt::Checkpoint::open(index).total_bytes() == 512 * 1024 * 2 + 12);
    rlimit before{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &before) == 0);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);  // EFBIG rather than the signal
    rlimit small = before;
    small.rlim_cur = 4096;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    const Thrown t = thrown_by([&] { fmt::write_safetensors(tmp / "big.safetensors", specs, fmt::TensorFiller{}); });
    ::setrlimit(RLIMIT_FSIZE, &before);
    std::signal(SIGXFSZ, old_handler);
    CHECK(t.kind == "io_error");
    CHECK(t.source == (tmp / "big.safetensors").string());
    CHECK(contains(t.what, "cannot extend to " + std::to_string(filled.size()) + " bytes"));
}

TEST_CASE("writer: sharded checkpoint round trip through Checkpoint::open") {
    std::vector<TensorSpec> specs;
    for (int layer = 0; layer < 6; ++layer) {
        const std::string p = "model.layers." + std::to_string(layer) + ".";
        specs.push_back({p + "weight", Dtype::BF16, {8, 4}});
        specs.push_back({p + "bias", Dtype::F32, {8}});
    }
    const fmt::Metadata meta{{"format", "pt"}};
    for (std::size_t shards : {std::size_t{1}, std::size_t{2}, std::size_t{3}, std::size_t{5}, specs.size()}) {
        CAPTURE(shards);
        TempDir tmp;
        const fs::path dir = tmp / "ckpt";
        const fs::path index = fmt::write_sharded_checkpoint(dir, specs, shards, fill_from_name, meta);
        CHECK(index == dir / "model.safetensors.index.json");

        for (const fs::path& p : {index, dir}) {
            const fmt::Checkpoint c = fmt::Checkpoint::open(p);
            REQUIRE(c.files().size() == shards);
            CHECK(c.tensors().size() == specs.size());
            CHECK(c.metadata() == meta);
            std::uint64_t total = 0;
            for (const auto& s : specs) {
                CAPTURE(s.name);
                const auto* ref = c.find(s.name);
                REQUIRE(ref != nullptr);
                CHECK(ref->info->dtype == s.dtype);
                CHECK(ref->info->shape == s.shape);
                CHECK(pread_bytes(c.files()[ref->file].path, ref->file_offset, ref->nbytes()) == bytes_from_name(s));
                total += ref->nbytes();
            }
            CHECK(c.total_bytes() == total);
        }

        // Shards take the given order in contiguous runs, none empty, named k-of-N.
        const fmt::Checkpoint c = fmt::Checkpoint::open(index);
        std::size_t previous_file = 0;
        for (std::size_t i = 0; i < specs.size(); ++i) {
            const auto file = c.find(specs[i].name)->file;
            CHECK(file >= previous_file);
            CHECK(file <= previous_file + 1);
            previous_file = file;
        }
        CHECK(previous_file == shards - 1);
        char name[64];
        std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", shards, shards);
        CHECK(c.files().back().path.filename() == name);

        const auto text = read_bytes(index);
        const std::string json(reinterpret_cast<const char*>(text.data()), text.size());
        CHECK(contains(json, "\"total_size\":" + std::to_string(c.total_bytes())));
        CHECK(fmt::parse_index(json, index.string()).weight_map.size() == specs.size());
    }

    // About equal bytes: twelve tensors of 96 bytes in three shards are cut four by four.
    std::vector<TensorSpec> equal;
    for (int i = 0; i < 12; ++i) equal.push_back({"t" + std::to_string(10 + i), Dtype::F32, {24}});
    TempDir tmp;
    const fmt::Checkpoint c = fmt::Checkpoint::open(fmt::write_sharded_checkpoint(tmp.path(), equal, 3, fill_from_name));
    for (const auto& f : c.files()) CHECK(f.header.tensors.size() == 4);
}

TEST_CASE("writer: refuses bad specs before writing anything") {
    const std::vector<std::byte> four(4), three(3);
    TempDir tmp;
    const fs::path out = tmp / "out.safetensors";

    struct Case {
        const char* what;
        std::vector<TensorData> tensors;
        const char* message;
        bool bytes_only = false;  ///< a mismatch of the given bytes, which the filler variant cannot have
    };
    const std::vector<Case> cases{
        {"duplicate name", {{{"a", Dtype::F32, {1}}, four}, {{"a", Dtype::F32, {1}}, four}}, "duplicate tensor name 'a'"},
        {"duplicate name, other dtype", {{{"a", Dtype::F32, {1}}, four}, {{"a", Dtype::U8, {3}}, three}},
         "duplicate tensor name 'a'"},
        {"wrong byte count", {{{"a", Dtype::F32, {1}}, three}}, "tensor 'a': 3 bytes given, shape × dtype needs 4", true},
        {"too many bytes", {{{"a", Dtype::U8, {3}}, four}}, "tensor 'a': 4 bytes given, shape × dtype needs 3", true},
        {"empty name", {{{"", Dtype::F32, {1}}, four}}, "tensor name '' is not allowed"},
        {"metadata name", {{{"__metadata__", Dtype::F32, {1}}, four}}, "tensor name '__metadata__' is not allowed"},
        {"F4 of 3 elements", {{{"f4", Dtype::F4, {3}}, {}}}, "tensor 'f4': shape × dtype is not a whole number of bytes"},
        {"overflowing shape", {{{"big", Dtype::F32, {1ull << 62}}, {}}}, "tensor 'big': shape × dtype"},
        {"name not UTF-8", {{{"bad\xff", Dtype::U8, {3}}, three}}, "is not valid UTF-8"},
        {"name with an overlong form", {{{"\xc0\xaf", Dtype::U8, {3}}, three}}, "is not valid UTF-8"},
        {"name with a surrogate", {{{"\xed\xa0\x80", Dtype::U8, {3}}, three}}, "is not valid UTF-8"},
        {"name past U+10FFFF", {{{"\xf4\x90\x80\x80", Dtype::U8, {3}}, three}}, "is not valid UTF-8"},
        {"name with a cut sequence", {{{"x\xe5\xb1", Dtype::U8, {3}}, three}}, "is not valid UTF-8"},
    };
    for (const auto& c : cases) {
        CAPTURE(c.what);
        const Thrown s = thrown_by([&] { (void)fmt::serialize_safetensors(c.tensors); });
        CHECK(s.kind == "format_error");
        CHECK(contains(s.what, c.message));
        const Thrown w = thrown_by([&] { fmt::write_safetensors(out, c.tensors); });
        CHECK(w.kind == "format_error");
        CHECK(contains(w.what, c.message));
        CHECK_FALSE(fs::exists(out));

        std::vector<TensorSpec> specs;
        for (const auto& t : c.tensors) specs.push_back(t.spec);
        if (!c.bytes_only) {
            const Thrown f = thrown_by([&] { fmt::write_safetensors(out, specs, fill_from_name); });
            CHECK(f.kind == "format_error");
            CHECK(contains(f.what, c.message));
            CHECK_FALSE(fs::exists(out));
        }
    }

    // Metadata keys and values must be UTF-8 too, or the file could not be read back.
    const Thrown m = thrown_by([&] {
        (void)fmt::serialize_safetensors(std::vector<TensorData>{{{"a", Dtype::U8, {3}}, three}},
                                         fmt::Metadata{{"k", "\xc3"}});
    });
    CHECK(m.kind == "format_error");
    CHECK(contains(m.what, "is not valid UTF-8"));
}

TEST_CASE("writer: sharded checkpoint refusals") {
    TempDir tmp;
    const std::vector<TensorSpec> two{{"a", Dtype::U8, {4}}, {"b", Dtype::U8, {4}}};

    Thrown t = thrown_by([&] { (void)fmt::write_sharded_checkpoint(tmp / "zero", two, 0, fill_from_name); });
    CHECK(t.kind == "format_error");
    CHECK(contains(t.what, "cannot cut 2 tensors into 0 shards"));
    CHECK(t.source == (tmp / "zero").string());

    t = thrown_by([&] { (void)fmt::write_sharded_checkpoint(tmp / "three", two, 3, fill_from_name); });
    CHECK(t.kind == "format_error");
    CHECK(contains(t.what, "cannot cut 2 tensors into 3 shards"));

    // The same name twice, cut into different shards, would make an index that contradicts them.
    const std::vector<TensorSpec> dup{{"a", Dtype::U8, {4}}, {"b", Dtype::U8, {4}}, {"a", Dtype::U8, {4}}};
    t = thrown_by([&] { (void)fmt::write_sharded_checkpoint(tmp / "dup", dup, 3, fill_from_name); });
    CHECK(t.kind == "format_error");
    CHECK(contains(t.what, "duplicate tensor name 'a'"));
    CHECK_FALSE(fs::exists(tmp / "dup" / "model.safetensors.index.json"));

    const std::vector<TensorSpec> odd{{"a", Dtype::U8, {4}}, {"f4", Dtype::F4, {3}}};
    t = thrown_by([&] { (void)fmt::write_sharded_checkpoint(tmp / "odd", odd, 2, fill_from_name); });
    CHECK(t.kind == "format_error");
    CHECK(contains(t.what, "tensor 'f4'"));
}

TEST_CASE("writer: io errors name the path") {
    TempDir tmp;
    const fs::path missing = tmp / "no" / "such" / "dir" / "x.safetensors";
    const std::vector<std::byte> four(4);
    const std::vector<TensorData> one{{{"a", Dtype::F32, {1}}, four}};
    Thrown t = thrown_by([&] { fmt::write_safetensors(missing, one); });
    CHECK(t.kind == "io_error");
    CHECK(t.source == missing.string());
    CHECK(contains(t.what, "cannot create"));

    t = thrown_by([&] { fmt::write_safetensors(missing, {TensorSpec{"a", Dtype::F32, {1}}}, fill_from_name); });
    CHECK(t.kind == "io_error");
    CHECK(contains(t.what, missing.string()));

    // A symbolic link where a file is to be written is not followed: what it points to is untouched.
    write_text(tmp / "elsewhere", "keep");
    fs::create_directory(tmp / "shared");
    fs::create_symlink(tmp / "elsewhere", tmp / "shared" / "model-00001-of-00001.safetensors");
    t = thrown_by([&] { (void)fmt::write_sharded_checkpoint(tmp / "shared", {{"a", Dtype::U8, {1}}}, 1, fill_from_name); });
    CHECK(t.kind == "io_error");
    CHECK(t.source == (tmp / "shared" / "model-00001-of-00001.safetensors").string());
    CHECK(contains(t.what, "is a symbolic link: not followed, not overwritten"));
    CHECK(read_bytes(tmp / "elsewhere").size() == 4);

    // A directory where the checkpoint directory should be created: a file is in the way.
    write_text(tmp / "file", "x");
    t = thrown_by([&] { (void)fmt::write_sharded_checkpoint(tmp / "file" / "ckpt", {{"a", Dtype::U8, {1}}}, 1, fill_from_name); });
    CHECK(t.kind == "io_error");
    CHECK(contains(t.what, (tmp / "file" / "ckpt").string()));
}

TEST_CASE("writer: rewrite_metadata replaces the metadata, tensors and their bytes unchanged, and refuses a changed file") {
    TempDir tmp;
    const fs::path path = tmp / "model.safetensors";
    std::vector<std::byte> a(7), b(12);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<std::byte>(i + 1);
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::byte>(0x80 + i);
    const std::vector<TensorData> tensors{{{"a", Dtype::U8, {7}}, a}, {{"b", Dtype::F32, {3}}, b}};
    fmt::write_safetensors(path, tensors, {{"format", "pt"}});
    const fmt::Header before = fmt::read_header(path);
    fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);

    fmt::rewrite_metadata(path, before, {{"format", "pt"}, {"note", std::string(300, 'x')}});
    const fmt::Header after = fmt::read_header(path);
    CHECK(after.metadata == fmt::Metadata{{"format", "pt"}, {"note", std::string(300, 'x')}});
    CHECK(after.json_size > before.json_size);
    REQUIRE(after.tensors.size() == before.tensors.size());
    for (std::size_t i = 0; i < after.tensors.size(); ++i) {
        const auto& t = after.tensors[i];
        CHECK(t.begin == before.tensors[i].begin);
        const auto want = t.name == "a" ? a : b;
        CHECK(pread_bytes(path, after.data_offset() + t.begin, t.nbytes()) == want);
    }
    CHECK(fs::status(path).permissions() == (fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read));
    for (const auto& entry : fs::directory_iterator(tmp.path())) CHECK(entry.path() == path);  // no temporary left

    // A header that no longer describes the file: refused, and the file left as it is.
    fmt::Header stale = after;
    stale.tensors[0].end += 1;
    const auto kept = read_bytes(path);
    const Thrown t = thrown_by([&] { fmt::rewrite_metadata(path, stale, {}); });
    CHECK(t.kind == "format_error");
    CHECK(t.source == path.string());
    CHECK(contains(t.what, "its tensors changed since its header was read"));
    CHECK(read_bytes(path) == kept);
}
