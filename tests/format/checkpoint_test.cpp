// Checkpoint-level rules (index files, directories, several files), built in a temporary directory
// for each case: shard names confined to the index's directory, index and shards agreeing, tensor
// names unique across files, no file twice.
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/format/writer.hpp"
#include "support.hpp"

using namespace format_test;
using fmt::Checkpoint;

namespace {

/// A small valid file holding U8[4] tensors of these names.
void write_shard(const fs::path& path, const std::vector<std::string>& names) {
    std::vector<fmt::TensorSpec> specs;
    for (const auto& n : names) specs.push_back({n, fmt::Dtype::U8, {4}});
    fs::create_directories(path.parent_path());
    fmt::write_safetensors(path, specs, [](const fmt::TensorSpec&, std::span<std::byte> out) {
        for (auto& b : out) b = std::byte{0x5a};
    });
}

/// An index as transformers writes it, for this weight map.
std::string index_json(const std::map<std::string, std::string>& weight_map) {
    std::string json = "{\"metadata\": {\"total_size\": 0}, \"weight_map\": {";
    bool first = true;
    for (const auto& [tensor, shard] : weight_map) {
        json += (first ? "\"" : ", \"") + tensor + "\": \"" + shard + "\"";
        first = false;
    }
    return json + "}}\n";
}

struct Layout {
    const TempDir& tmp;
    [[nodiscard]] fs::path ckpt() const { return tmp / "ckpt"; }
    [[nodiscard]] fs::path index() const { return ckpt() / "model.safetensors.index.json"; }
    void shard(const std::string& name, const std::vector<std::string>& tensors) const {
        write_shard(ckpt() / name, tensors);
    }
    void index_text(std::string_view text) const {
        fs::create_directories(ckpt());
        write_text(index(), text);
    }
    void index_map(const std::map<std::string, std::string>& weight_map) const { index_text(index_json(weight_map)); }
};

struct CheckpointCase {
    const char* name;
    /// Builds the case in the temporary directory; returns the paths to open.
    std::function<std::vector<fs::path>(const Layout&)> setup;
    const char* kind;  ///< "format_error" or "io_error"
    /// The path the error must name (relative to the temporary directory; "" for none).
    std::function<fs::path(const Layout&)> source;
    const char* message;
};

std::vector<fs::path> open_index(const Layout& l) { return {l.index()}; }
fs::path at_index(const Layout& l) { return l.index(); }

const std::vector<CheckpointCase>& checkpoint_cases() {
    static const std::vector<CheckpointCase> cases{
        // shard names leaving the index's directory
        {"index: shard name with ..",
         [](const Layout& l) {
             write_shard(l.tmp / "outside.safetensors", {"a"});
             l.index_map({{"a", "../outside.safetensors"}});
             return open_index(l);
         },
         "format_error", at_index,
         "tensor 'a': shard file name '../outside.safetensors' must stay inside the index's directory"},
        {"index: shard name with .. inside",
         [](const Layout& l) {
             l.shard("a.safetensors", {"a"});
             l.index_map({{"a", "sub/../a.safetensors"}});
             return open_index(l);
         },
         "format_error", at_index, "shard file name 'sub/../a.safetensors' must stay inside the index's directory"},
        {"index: shard name with .",
         [](const Layout& l) {
             l.shard("a.safetensors", {"a"});
             l.index_map({{"a", "./a.safetensors"}});
             return open_index(l);
         },
         "format_error", at_index, "shard file name './a.safetensors' must stay inside"},
        {"index: shard name with an empty component",
         [](const Layout& l) {
             l.shard("sub/a.safetensors", {"a"});
             l.index_map({{"a", "sub//a.safetensors"}});
             return open_index(l);
         },
         "format_error", at_index, "shard file name 'sub//a.safetensors' must stay inside"},
        {"index: absolute shard path",
         [](const Layout& l) {
             l.shard("a.safetensors", {"a"});
             l.index_map({{"a", (l.ckpt() / "a.safetensors").string()}});
             return open_index(l);
         },
         "format_error", at_index, "is an absolute path"},
        {"index: empty shard name",
         [](const Layout& l) {
             l.index_map({{"a", ""}});
             return open_index(l);
         },
         "format_error", at_index, "tensor 'a': empty shard file name"},
        {"index: shard name with NUL",
         [](const Layout& l) {
             l.index_text(R"({"weight_map": {"a": "a.safetensors\u0000.txt"}})");
             return open_index(l);
         },
         "format_error", at_index, "tensor 'a': shard file name contains NUL"},
        {"index: symlink escaping the directory",
         [](const Layout& l) {
             write_shard(l.tmp / "outside" / "x.safetensors", {"a"});
             fs::create_directories(l.ckpt());
             fs::create_symlink("../outside/x.safetensors", l.ckpt() / "link.safetensors");
             l.index_map({{"a", "link.safetensors"}});
             return open_index(l);
         },
         "format_error", at_index, "shard 'link.safetensors' resolves to"},
        {"index: symlinked subdirectory escaping the directory",
         [](const Layout& l) {
             write_shard(l.tmp / "outside" / "x.safetensors", {"a"});
             fs::create_directories(l.ckpt());
             fs::create_directory_symlink(l.tmp / "outside", l.ckpt() / "sub");
             l.index_map({{"a", "sub/x.safetensors"}});
             return open_index(l);
         },
         "format_error", at_index, "outside the index's directory (symlink?)"},
        // index and shards disagreeing
        {"index: shard missing",
         [](const Layout& l) {
             l.shard("s1.safetensors", {"a"});
             l.index_map({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
             return open_index(l);
         },
         "io_error", [](const Layout& l) { return l.ckpt() / "s2.safetensors"; },
         "cannot find shard listed by the index"},
        {"index: tensor of weight_map missing from its shard",
         [](const Layout& l) {
             l.shard("s1.safetensors", {"a"});
             l.index_map({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}});
             return open_index(l);
         },
         "format_error", at_index, "tensor 'b' listed in weight_map is missing from shard 's1.safetensors'"},
        {"index: tensor of a shard not listed",
         [](const Layout& l) {
             l.shard("s1.safetensors", {"a", "b"});
             l.index_map({{"a", "s1.safetensors"}});
             return open_index(l);
         },
         "format_error", at_index, "tensor 'b' of shard 's1.safetensors' is not listed in weight_map"},
        {"index: tensor listed for another shard",
         [](const Layout& l) {
             l.shard("s1.safetensors", {"a"});
             l.shard("s2.safetensors", {"b"});
             l.index_map({{"a", "s2.safetensors"}, {"b", "s1.safetensors"}});
             return open_index(l);
         },
         "format_error", at_index, "tensor 'a' is listed in shard 's2.safetensors' but found in 's1.safetensors'"},
        {"index: one tensor in two shards",
         [](const Layout& l) {
             l.shard("s1.safetensors", {"a"});
             l.shard("s2.safetensors", {"a", "b"});
             l.index_map({{"a", "s1.safetensors"}, {"b", "s2.safetensors"}});
             return open_index(l);
         },
         "format_error", at_index, "tensor 'a' is listed in shard 's1.safetensors' but found in 's2.safetensors'"},
        {"index: a malformed shard is named",
         [](const Layout& l) {
             fs::create_directories(l.ckpt());
             fs::copy_file(fixtures_dir() / "bad" / "hole_between_tensors.safetensors", l.ckpt() / "s1.safetensors");
             l.index_map({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}});
             return open_index(l);
         },
         "format_error", [](const Layout& l) { return l.ckpt() / "s1.safetensors"; },
         "hole in the data section: bytes 3 to 4 before tensor 'b'"},
        {"index: a shard that is a directory",
         [](const Layout& l) {
             fs::create_directories(l.ckpt() / "s1.safetensors");
             l.index_map({{"a", "s1.safetensors"}});
             return open_index(l);
         },
         "io_error", [](const Layout& l) { return l.ckpt() / "s1.safetensors"; }, "not a regular file"},
        // the index's JSON
        {"index: weight_map not an object",
         [](const Layout& l) {
             l.index_text(R"({"metadata": {}, "weight_map": ["a", "s1.safetensors"]})");
             return open_index(l);
         },
         "format_error", at_index, "\"weight_map\" must be an object (found an array)"},
        {"index: weight_map value not a string",
         [](const Layout& l) {
             l.index_text(R"({"weight_map": {"a": 1}})");
             return open_index(l);
         },
         "format_error", at_index, "weight_map value of 'a' must be a file name (found a number)"},
        {"index: weight_map value an object",
         [](const Layout& l) {
             l.index_text(R"({"weight_map": {"a": {"file": "s1.safetensors"}}})");
             return open_index(l);
         },
         "format_error", at_index, "weight_map value of 'a' must be a file name (found an object)"},
        {"index: weight_map value null",
         [](const Layout& l) {
             l.index_text(R"({"weight_map": {"a": null}})");
             return open_index(l);
         },
         "format_error", at_index, "weight_map value of 'a' must be a file name (found null)"},
        {"index: empty weight_map",
         [](const Layout& l) {
             l.index_text(R"({"metadata": {"total_size": 0}, "weight_map": {}})");
             return open_index(l);
         },
         "format_error", at_index, "index \"weight_map\" lists no tensor"},
        {"index: no weight_map",
         [](const Layout& l) {
             l.index_text(R"({"metadata": {"total_size": 0}})");
             return open_index(l);
         },
         "format_error", at_index, "index has no \"weight_map\""},
        {"index: unknown top-level key",
         [](const Layout& l) {
             l.index_text(R"({"weight_map": {"a": "s1.safetensors"}, "format": "pt"})");
             return open_index(l);
         },
         "format_error", at_index, "unknown key 'format'"},
        {"index: weight_map twice",
         [](const Layout& l) {
             l.index_text(R"({"weight_map": {"a": "s1.safetensors"}, "weight_map": {"b": "s1.safetensors"}})");
             return open_index(l);
         },
         "format_error", at_index, "duplicate key 'weight_map'"},
        {"index: metadata twice",
         [](const Layout& l) {
             l.index_text(R"({"metadata": {}, "metadata": {}, "weight_map": {"a": "s1.safetensors"}})");
             return open_index(l);
         },
         "format_error", at_index, "duplicate key 'metadata'"},
        {"index: tensor listed twice",
         [](const Layout& l) {
             l.index_text(R"({"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}})");
             return open_index(l);
         },
         "format_error", at_index, "tensor 'a' is listed twice in weight_map"},
        {"index: not an object",
         [](const Layout& l) {
             l.index_text(R"([{"weight_map": {"a": "s1.safetensors"}}])");
             return open_index(l);
         },
         "format_error", at_index, "index is not a JSON object (found an array)"},
        {"index: a bare string",
         [](const Layout& l) {
             l.index_text(R"("model.safetensors")");
             return open_index(l);
         },
         "format_error", at_index, "index is not a JSON object (found a string)"},
        {"index: not JSON",
         [](const Layout& l) {
             l.index_text("weight_map = {}");
             return open_index(l);
         },
         "format_error", at_index, "invalid JSON at byte 0"},
        {"index: trailing characters",
         [](const Layout& l) {
             l.index_text(index_json({{"a", "s1.safetensors"}}) + "}");
             return open_index(l);
         },
         "format_error", at_index, "unexpected data at byte"},
        {"index: depth bomb in metadata",
         [](const Layout& l) {
             l.index_text("{\"metadata\": " + std::string(4000, '[') + std::string(4000, ']') +
                          ", \"weight_map\": {\"a\": \"s1.safetensors\"}}");
             return open_index(l);
         },
         "format_error", at_index, "invalid JSON at byte"},
        {"index: larger than the header limit",
         [](const Layout& l) {
             l.index_map({{"a", "s1.safetensors"}});
             fs::resize_file(l.index(), fmt::max_header_size + 1);  // sparse: costs no disk
             return open_index(l);
         },
         "format_error", at_index, "file of 100000001 bytes exceeds the limit of 100000000 bytes"},
        {"index: missing file",
         [](const Layout& l) { return std::vector<fs::path>{l.ckpt() / "missing.safetensors.index.json"}; },
         "io_error", [](const Layout& l) { return l.ckpt() / "missing.safetensors.index.json"; }, "cannot open"},
        // several files
        {"files: one tensor in two files",
         [](const Layout& l) {
             l.shard("x.safetensors", {"a", "b"});
             l.shard("y.safetensors", {"c", "b"});
             return std::vector<fs::path>{l.ckpt() / "x.safetensors", l.ckpt() / "y.safetensors"};
         },
         "format_error", [](const Layout& l) { return l.ckpt() / "y.safetensors"; }, "tensor 'b' is also in "},
        {"files: one tensor in two files of a directory",
         [](const Layout& l) {
             l.shard("x.safetensors", {"a"});
             l.shard("y.safetensors", {"a"});
             return std::vector<fs::path>{l.ckpt()};
         },
         "format_error", [](const Layout& l) { return l.ckpt() / "y.safetensors"; }, "tensor 'a' is also in "},
        {"files: one tensor in a file and in an index's shard",
         [](const Layout& l) {
             l.shard("s1.safetensors", {"a"});
             l.index_map({{"a", "s1.safetensors"}});
             write_shard(l.tmp / "extra.safetensors", {"a"});
             return std::vector<fs::path>{l.index(), l.tmp / "extra.safetensors"};
         },
         "format_error", [](const Layout& l) { return l.tmp / "extra.safetensors"; }, "tensor 'a' is also in "},
        {"files: the same file twice",
         [](const Layout& l) {
             l.shard("x.safetensors", {"a"});
             return std::vector<fs::path>{l.ckpt() / "x.safetensors", l.ckpt() / "x.safetensors"};
         },
         "format_error", [](const Layout& l) { return l.ckpt() / "x.safetensors"; }, "file is part of the checkpoint twice"},
        {"files: the same file twice under two spellings",
         [](const Layout& l) {
             l.shard("x.safetensors", {"a"});
             return std::vector<fs::path>{l.ckpt() / "x.safetensors", l.ckpt() / "." / ".." / "ckpt" / "x.safetensors"};
         },
         "format_error", [](const Layout& l) { return l.ckpt() / "." / ".." / "ckpt" / "x.safetensors"; },
         "file is part of the checkpoint twice"},
        {"files: the same file twice through a symlink",
         [](const Layout& l) {
             l.shard("x.safetensors", {"a"});
             fs::create_symlink(l.ckpt() / "x.safetensors", l.tmp / "link.safetensors");
             return std::vector<fs::path>{l.ckpt() / "x.safetensors", l.tmp / "link.safetensors"};
         },
         "format_error", [](const Layout& l) { return l.tmp / "link.safetensors"; }, "file is part of the checkpoint twice"},
        {"files: an index and one of its shards",
         [](const Layout& l) {
             l.shard("s1.safetensors", {"a"});
             l.index_map({{"a", "s1.safetensors"}});
             return std::vector<fs::path>{l.index(), l.ckpt() / "s1.safetensors"};
         },
         "format_error", [](const Layout& l) { return l.ckpt() / "s1.safetensors"; }, "file is part of the checkpoint twice"},
        {"files: an index and its directory",
         [](const Layout& l) {
             l.shard("s1.safetensors", {"a"});
             l.index_map({{"a", "s1.safetensors"}});
             return std::vector<fs::path>{l.index(), l.ckpt()};
         },
         "format_error", [](const Layout& l) { return l.ckpt() / "s1.safetensors"; }, "file is part of the checkpoint twice"},
        {"files: missing file",
         [](const Layout& l) { return std::vector<fs::path>{l.tmp / "missing.safetensors"}; },
         "io_error", [](const Layout& l) { return l.tmp / "missing.safetensors"; }, "cannot open: No such file or directory"},
        {"files: not a regular file",
         [](const Layout&) { return std::vector<fs::path>{"/dev/null"}; },
         "io_error", [](const Layout&) { return fs::path("/dev/null"); }, "not a regular file"},
        {"files: no path",
         [](const Layout&) { return std::vector<fs::path>{}; },
         "format_error", [](const Layout&) { return fs::path(); }, "no checkpoint path given"},
        // directories
        {"directory: no safetensors file",
         [](const Layout& l) {
             fs::create_directories(l.ckpt());
             write_text(l.ckpt() / "config.json", "{}");
             write_text(l.ckpt() / "model.bin", "x");
             return std::vector<fs::path>{l.ckpt()};
         },
         "format_error", [](const Layout& l) { return l.ckpt(); }, "directory holds no *.safetensors file and no index"},
        {"directory: empty",
         [](const Layout& l) {
             fs::create_directories(l.ckpt());
             return std::vector<fs::path>{l.ckpt()};
         },
         "format_error", [](const Layout& l) { return l.ckpt(); }, "directory holds no *.safetensors file and no index"},
        {"directory: two index files",
         [](const Layout& l) {
             l.shard("s1.safetensors", {"a"});
             l.index_map({{"a", "s1.safetensors"}});
             write_text(l.ckpt() / "other.safetensors.index.json", index_json({{"a", "s1.safetensors"}}));
             return std::vector<fs::path>{l.ckpt()};
         },
         "format_error", [](const Layout& l) { return l.ckpt(); },
         "directory holds several *.safetensors.index.json files; name the one to load"},
        {"directory: a subdirectory named like a file",
         [](const Layout& l) {
             l.shard("a.safetensors", {"a"});
             fs::create_directories(l.ckpt() / "b.safetensors");
             return std::vector<fs::path>{l.ckpt()};
         },
         "io_error", [](const Layout& l) { return l.ckpt() / "b.safetensors"; }, "not a regular file"},
    };
    return cases;
}

}  // namespace

TEST_CASE("checkpoint: malformed checkpoints are refused with the right error naming the input") {
    CHECK(checkpoint_cases().size() >= 30);
    for (const auto& c : checkpoint_cases()) {
        CAPTURE(c.name);
        TempDir tmp;
        const Layout layout{tmp};
        const std::vector<fs::path> paths = c.setup(layout);
        const Thrown t = thrown_by([&] { (void)Checkpoint::open(std::span<const fs::path>(paths)); });
        CHECK(t.kind == c.kind);
        CHECK(t.source == c.source(layout).string());
        if (!t.source.empty()) CHECK(t.what.rfind(t.source + ": ", 0) == 0);
        CHECK_MESSAGE(contains(t.what, c.message), t.what);
    }
}

TEST_CASE("checkpoint: the duplicate-tensor message names both files") {
    TempDir tmp;
    write_shard(tmp / "x.safetensors", {"a"});
    write_shard(tmp / "y.safetensors", {"a"});
    const Thrown t = thrown_by([&] { (void)Checkpoint::open({tmp / "x.safetensors", tmp / "y.safetensors"}); });
    CHECK(t.what == (tmp / "y.safetensors").string() + ": tensor 'a' is also in " + (tmp / "x.safetensors").string());
}

TEST_CASE("checkpoint: what an index may hold") {
    TempDir tmp;
    const Layout l{tmp};
    l.shard("s1.safetensors", {"a", "b"});
    l.shard("sub/s2.safetensors", {"c"});
    fs::create_symlink("s1.safetensors", l.ckpt() / "link.safetensors");  // a symlink that stays inside
    l.shard("stray.safetensors", {"stray"});                                // not listed: not loaded

    // Any "metadata" value, nested (within the parser's depth limit), shards in a subdirectory and
    // reached through a symlink inside the directory, keys in any order, escapes in names.
    l.index_text(R"({"weight_map": {"a": "link.safetensors", "b": "link.safetensors", "\u0063": "sub/s2.safetensors"},)"
                 R"( "metadata": {"total_size": 12, "nested": [[{"x": [1, 2.5, null, true, "s"]}]], "n": null}})");
    for (const fs::path& p : {l.index(), l.ckpt()}) {
        CAPTURE(p.string());
        const Checkpoint c = Checkpoint::open(p);
        REQUIRE(c.files().size() == 2);
        CHECK(c.files()[0].path == l.ckpt() / "link.safetensors");
        CHECK(c.files()[1].path == l.ckpt() / "sub/s2.safetensors");
        CHECK(c.tensors().size() == 3);
        CHECK(c.find("stray") == nullptr);
        CHECK(c.total_bytes() == 12);
    }

    // No "metadata" at all, metadata a scalar.
    l.index_text(R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})");
    CHECK(Checkpoint::open(l.index()).tensors().size() == 2);
    l.index_text(R"({"metadata": "x", "weight_map": {"a": "s1.safetensors", "b": "s1.safetensors"}})");
    CHECK(Checkpoint::open(l.index()).tensors().size() == 2);

    // An index given by a relative path resolves its shards next to it.
    const fs::path cwd = fs::current_path();
    fs::current_path(l.ckpt());
    const Thrown t = thrown_by([&] {
        const Checkpoint c = Checkpoint::open(fs::path("model.safetensors.index.json"));
        CHECK(c.tensors().size() == 2);
    });
    fs::current_path(cwd);
    CHECK(t.kind == "nothing");
}

TEST_CASE("checkpoint: a directory without an index loads its files in name order") {
    TempDir tmp;
    write_shard(tmp / "b.safetensors", {"x"});
    write_shard(tmp / "a.safetensors", {"y", "z"});
    write_shard(tmp / "c.safetensors", {"w"});
    write_text(tmp / "README.md", "not a checkpoint");
    write_text(tmp / "config.json", "{}");
    const Checkpoint c = Checkpoint::open(tmp.path());
    REQUIRE(c.files().size() == 3);
    CHECK(c.files()[0].path.filename() == "a.safetensors");
    CHECK(c.files()[1].path.filename() == "b.safetensors");
    CHECK(c.files()[2].path.filename() == "c.safetensors");
    REQUIRE(c.tensors().size() == 4);
    CHECK(c.tensors()[0].file == 0);
    CHECK(c.tensors()[2].file == 1);
    CHECK(c.tensors()[2].name() == "x");
    CHECK(c.tensors()[3].file == 2);
    CHECK(c.find("w")->file == 2);
}

TEST_CASE("checkpoint: parse_index on its own") {
    const fmt::Index i = fmt::parse_index(
        R"({"metadata": {"total_size": 8}, "weight_map": {"b": "x.safetensors", "a": "y.safetensors", "c": "x.safetensors"}})",
        "mem");
    CHECK(i.weight_map.size() == 3);
    CHECK(i.shard_names() == std::vector<std::string>{"x.safetensors", "y.safetensors"});
    const Thrown t = thrown_by([] { (void)fmt::parse_index(R"({"weight_map": {"a": "../x"}})", "given-name"); });
    CHECK(t.kind == "format_error");
    CHECK(t.source == "given-name");
    CHECK(contains(t.what, "tensor 'a': shard file name '../x' must stay inside the index's directory"));
}
