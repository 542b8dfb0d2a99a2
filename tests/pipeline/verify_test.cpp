// LoadOptions::verify (pipeline/verifier.hpp): a verified load yields exactly the bytes a plain one
// does, through every backend, page-cache policy and host sink, with pieces landing in any order;
// a tensor whose bytes differ from its digest is never yielded, and the integrity_error names the
// tensor, the file and both digests; digests that leave a tensor out, a load of blocks and a
// storage that reads device memory are refused before any read; slots are reused only once their
// pieces are digested and their (late) copies ran.
// LoadOptions::verify_files: a load that hashes whole files yields the same bytes, every file's
// SHA-256 checked; a changed byte in a tensor or a header fails the load before the file's last
// tensor is yielded, naming the file and both digests, a changed file without tensors at the load's
// end; loads that read part of a file, or from a manifest without it, are refused before any read.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "instanttensor/detail/xxh3.hpp"
#include "instanttensor/loader.hpp"
#include "late_copy_sink.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;

/// Tensors of one piece and of many (with 16 KiB slots), empty ones and scalars.
std::vector<fmt::TensorSpec> verify_specs() {
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(150, 7)) specs.push_back(s);
    for (auto& s : edge_specs()) specs.push_back(s);
    specs.push_back({"layer.big", fmt::Dtype::BF16, {150001}});
    return specs;
}

/// The digests of the bytes the tests write (fill_bytes), computed without the loader.
fmt::TensorDigests digests_of(const fmt::Checkpoint& checkpoint) {
    fmt::TensorDigests digests("the test's digests");
    for (const auto& t : checkpoint.tensors()) digests.add(t.name(), it::detail::xxh3(expected_bytes(t.name(), t.nbytes())));
    return digests;
}

it::LoadOptions verifying(const fmt::Checkpoint& checkpoint, unsigned threads, it::LoadOptions options = small_slots) {
    options.verify = digests_of(checkpoint);
    options.verify_threads = threads;
    return options;
}

/// Writes `specs` with byte `at` of tensor `name` flipped, as a disk or a copy could corrupt it.
fs::path write_corrupted(const fs::path& path, const std::vector<fmt::TensorSpec>& specs, const std::string& name, std::uint64_t at) {
    fmt::write_safetensors(path, specs, [&](const fmt::TensorSpec& spec, std::span<std::byte> out) {
        fill_bytes(spec.name, out);
        if (spec.name == name) out[at] ^= std::byte{0x10};
    });
    return path;
}

/// A manifest of each file's SHA-256, computed without the loader.
fmt::FileDigests file_digests_of([[maybe_unused]] const fmt::Checkpoint& checkpoint) {
    fmt::FileDigests digests("the test's manifest");
#if INSTANTTENSOR_HAS_CRYPTO
    for (const auto& file : checkpoint.files()) {
        std::ifstream in(file.path, std::ios::binary);
        const std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
        REQUIRE(bytes.size() == file.header.file_size());
        digests.add(file.path.filename().string(), it::detail::sha256({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()}));
    }
#endif
    return digests;
}

}  // namespace

TEST_CASE("verify: every backend, page-cache policy and host sink yields the written bytes, each verified") {
    TempDir dir;
    const auto index = fmt::write_sharded_checkpoint(dir / "model", verify_specs(), 3, fill_tensor);
    const auto checkpoint = fmt::Checkpoint::open(index);
    for (unsigned threads : {1u, 3u}) {
        for (const it::LoadOptions& staging : {small_slots, minimal_ring, it::LoadOptions{}}) {
            INFO("threads ", threads, " slot ", staging.slot_bytes);
            load_every_way(checkpoint, verifying(checkpoint, threads, staging), [&](const Outcome& out, Via, it::DirectIo) {
                check_outcome(checkpoint, out);
                CHECK(out.stats.verified == checkpoint.tensors().size());
            });
        }
    }
    SUBCASE("a plain load verifies nothing") {
        CHECK(load(checkpoint, Via::pread, it::DirectIo::off, SinkKind::host, small_slots).stats.verified == 0);
    }
}

TEST_CASE("verify: a tensor whose bytes differ is never yielded; the error names it, its file and both digests") {
    TempDir dir;
    const auto specs = verify_specs();
    struct Corruption {
        std::string tensor;
        std::uint64_t byte;
    };
    // One piece; the last byte of one of many pieces; a byte in the middle of a tensor of many pieces.
    for (const Corruption& c : {Corruption{"tiny.17", 0}, Corruption{"layer.big", 300001}, Corruption{"odd.10", 20000}}) {
        const auto path = write_corrupted(dir / ("bad-" + c.tensor + ".safetensors"), specs, c.tensor, c.byte);
        const auto checkpoint = fmt::Checkpoint::open(path);
        const fmt::TensorRef* bad = checkpoint.find(c.tensor);
        REQUIRE(bad != nullptr);
        auto corrupted = expected_bytes(c.tensor, bad->nbytes());
        corrupted[c.byte] ^= std::byte{0x10};
        const std::string expected = fmt::digest_text(it::detail::xxh3(expected_bytes(c.tensor, bad->nbytes())));
        const std::string actual = fmt::digest_text(it::detail::xxh3(corrupted));
        for (Via via : all_vias) {
            if (unavailable(via)) continue;
            for (SinkKind sink : all_sinks) {
                INFO(c.tensor, " ", to_string(via), " ", to_string(sink));
                std::vector<std::string> yielded;
                std::string message;
                try {
                    with_storage(via, it::DirectIo::off, [&](auto storage) {
                        Placements placements(checkpoint);
                        auto run = [&](auto& loader) {
                            for (const it::TensorView& t : loader) yielded.emplace_back(t.name);
                        };
                        if (sink == SinkKind::host) {
                            HostLoaderOf<decltype(storage)> loader(checkpoint, std::move(storage), {}, it::sink::host(test_ring),
                                                                   verifying(checkpoint, 2));
                            run(loader);
                        } else {
                            it::Loader<decltype(storage), it::transport::single, it::sink::placement> loader(
                                checkpoint, std::move(storage), {}, placements.sink(), verifying(checkpoint, 2));
                            run(loader);
                        }
                    });
                    FAIL("the corrupted tensor was yielded");
                } catch (const it::integrity_error& e) {
                    message = e.what();
                }
                CHECK(message.find("'" + c.tensor + "'") != std::string::npos);
                CHECK(message.find(path.string()) != std::string::npos);
                CHECK(message.find(actual) != std::string::npos);
                CHECK(message.find(expected) != std::string::npos);
                CHECK(std::find(yielded.begin(), yielded.end(), c.tensor) == yielded.end());
                // Every tensor before it in file order was yielded.
                std::size_t before = 0;
                for (const auto& t : checkpoint.tensors()) before += t.file_offset < bad->file_offset;
                CHECK(yielded.size() == before);
            }
        }
    }
}

TEST_CASE("verify: what cannot be verified is refused before any read") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "model.safetensors", verify_specs()));
    SUBCASE("digests that leave a tensor out name it and where they came from") {
        fmt::TensorDigests partial("partial.xxh3");
        for (const auto& t : checkpoint.tensors())
            if (t.name() != "odd.3") partial.add(t.name(), 0);
        it::LoadOptions options = small_slots;
        options.verify = partial;
        const std::string message = "partial.xxh3: has no digest for tensor 'odd.3' of " + checkpoint.files()[0].path.string() +
                                    ": it cannot be verified";
        CHECK_THROWS_WITH_AS(it::load_to_host(checkpoint, options), message.c_str(), it::integrity_error);
    }
    SUBCASE("a load of blocks") {
        it::LoadOptions options = verifying(checkpoint, 1);
        options.share = it::split_rows([](const fmt::TensorRef&) { return true; });
        CHECK_THROWS_AS(it::load_to_host(checkpoint, options), it::usage_error);
    }
}

TEST_CASE("verify, late copies: a slot is reused only once its pieces are digested and its copies ran") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "late.safetensors", verify_specs()));
    for (Via via : {Via::pread, Via::memory, Via::auto_uring}) {
        if (unavailable(via)) continue;
        for (unsigned latency : {0u, 3u, 1u << 30}) {
            INFO(to_string(via), " latency ", latency);
            with_storage(via, it::DirectIo::off, [&](auto storage) {
                LateLoaderOf<decltype(storage)> loader(checkpoint, std::move(storage), {}, LateCopySink(latency, test_ring),
                                                       verifying(checkpoint, 2, ring_of(3 * (16 << 10), 16 << 10)));
                Outcome out;
                drain(loader, out);
                check_outcome(checkpoint, out);
                CHECK(out.stats.verified == checkpoint.tensors().size());
            });
        }
    }
}

TEST_CASE("Verifier: pieces handed over in any order give the digest of the bytes in order") {
    const std::vector<fmt::TensorSpec> specs = {{"a", fmt::Dtype::U8, {70001}}, {"b", fmt::Dtype::U8, {5}}, {"c", fmt::Dtype::F32, {9000}},
                                                {"d", fmt::Dtype::U8, {0}}};
    std::vector<std::vector<std::byte>> bytes;
    std::vector<fmt::TensorData> data;
    for (const auto& s : specs) bytes.push_back(expected_bytes(s.name, spec_bytes(s)));
    for (std::size_t i = 0; i < specs.size(); ++i) data.push_back({specs[i], bytes[i]});
    const std::vector<std::byte> file = fmt::serialize_safetensors(data);
    const std::pair<std::string, std::span<const std::byte>> named[] = {{"file", file}};
    const auto checkpoint = fmt::Checkpoint::from_memory(named);
    const std::uint64_t alignment[] = {1};
    const it::Plan plan = it::make_plan(checkpoint, {}, alignment, 16 << 10);
    REQUIRE(plan.extents.size() > 5);
    const auto slots = static_cast<std::uint32_t>(plan.extents.size());

    for (std::uint32_t seed = 0; seed < 20; ++seed) {
        for (bool wrong : {false, true}) {
            CAPTURE(seed);
            fmt::TensorDigests digests = digests_of(checkpoint);
            if (wrong) {  // "c" is expected to digest otherwise
                fmt::TensorDigests changed("changed");
                for (const auto& t : checkpoint.tensors()) changed.add(t.name(), *digests.find(t.name()) + (t.name() == "c"));
                digests = changed;
            }
            it::pipeline::Verifier verifier(plan, &digests, nullptr, slots, 1 + seed % 3);
            std::vector<std::uint32_t> order(plan.extents.size());
            for (std::uint32_t e = 0; e < order.size(); ++e) order[e] = e;
            std::shuffle(order.begin(), order.end(), std::mt19937(seed));
            for (std::uint32_t e : order) verifier.digest(e, file.data() + plan.extents[e].offset, e);
            while (verifier.busy()) verifier.wait_past(verifier.progress());
            for (std::uint32_t s = 0; s < slots; ++s) CHECK(verifier.idle(s));
            for (std::uint32_t t = 0; t < plan.tensors.size(); ++t) {
                if (wrong && plan.tensors[t].ref->name() == "c") CHECK_THROWS_AS((void)verifier.verified(t), it::integrity_error);
                else CHECK(verifier.verified(t));
            }
        }
    }
}

#if INSTANTTENSOR_HAS_CRYPTO

TEST_CASE("verify_files: every backend, page-cache policy and host sink yields the written bytes of files hashed whole") {
    TempDir dir;
    const auto index = fmt::write_sharded_checkpoint(dir / "model", verify_specs(), 3, fill_tensor, {{"note", "sharded"}});
    const auto checkpoint = fmt::Checkpoint::open(index);
    for (const bool tensors_too : {false, true}) {
        for (const it::LoadOptions& staging : {small_slots, minimal_ring}) {
            it::LoadOptions options = tensors_too ? verifying(checkpoint, 3, staging) : staging;
            options.verify_files = file_digests_of(checkpoint);
            INFO("tensors too ", tensors_too, " slot ", staging.slot_bytes);
            load_every_way(checkpoint, options, [&](const Outcome& out, Via, it::DirectIo) {
                check_outcome(checkpoint, out);
                CHECK(out.stats.verified == (tensors_too ? checkpoint.tensors().size() : 0));
                CHECK(out.stats.read_bytes >= std::filesystem::file_size(checkpoint.files()[1].path));
            });
        }
    }
}

TEST_CASE("verify_files: a changed byte fails the load before its file's last tensor, naming the file and both digests") {
    TempDir dir;
    const auto specs = verify_specs();
    const auto clean = write_file(dir / "clean.safetensors", specs);
    const fmt::FileDigests manifest = [&] {
        const auto checkpoint = fmt::Checkpoint::open(clean);
        return file_digests_of(checkpoint);
    }();
    const std::string expected = fmt::digest_text(*manifest.find(clean));
    struct Change {
        std::string what;
        std::function<void(const fs::path&)> write;
    };
    const std::vector<Change> changes = {
        {"a tensor's byte", [&](const fs::path& path) { write_corrupted(path, specs, "layer.big", 300001); }},
        {"a header's byte", [&](const fs::path& path) {  // the same layout, one byte of metadata changed
             fmt::write_safetensors(path, specs, fill_tensor, {{"note", "b"}});
         }}};
    for (const Change& change : changes) {
        // The manifest names the file as the clean one: the changed copy is written in its own directory.
        const auto path = dir / change.what / "clean.safetensors";
        fs::create_directories(path.parent_path());
        change.write(path);
        fmt::FileDigests digests = manifest;
        if (change.what == "a header's byte") {  // the clean file with the note "a"
            const auto original = dir / "noted" / "clean.safetensors";
            fs::create_directories(original.parent_path());
            fmt::write_safetensors(original, specs, fill_tensor, {{"note", "a"}});
            const auto noted = fmt::Checkpoint::open(original);
            digests = file_digests_of(noted);
        }
        const auto checkpoint = fmt::Checkpoint::open(path);
        const std::string actual = fmt::digest_text(*file_digests_of(checkpoint).find(path));
        for (Via via : {Via::pread, Via::memory, Via::auto_uring}) {
            if (unavailable(via)) continue;
            INFO(change.what, " ", to_string(via));
            it::LoadOptions options = small_slots;
            options.verify_files = digests;
            std::vector<std::string> yielded;
            std::string message;
            try {
                with_storage(via, it::DirectIo::off, [&](auto storage) {
                    HostLoaderOf<decltype(storage)> loader(checkpoint, std::move(storage), {}, it::sink::host(test_ring), options);
                    for (const it::TensorView& t : loader) yielded.emplace_back(t.name);
                });
                FAIL("the changed file was loaded");
            } catch (const it::integrity_error& e) {
                message = e.what();
            }
            CHECK(message.starts_with(path.string() + ": its bytes hash to " + actual + ", the test's manifest expects "));
            CHECK(message.find(fmt::digest_text(*digests.find(path))) != std::string::npos);
            CHECK(message.find("(SHA-256)") != std::string::npos);
            CHECK(yielded.size() == checkpoint.tensors().size() - 1);  // all but the file's last
        }
    }
    CHECK(expected.size() == 64);
}

TEST_CASE("verify_files: a changed file without tensors fails the load at its end") {
    TempDir dir;
    const auto weights = write_file(dir / "weights.safetensors", tiny_specs(20));
    const auto empty = dir / "empty.safetensors";
    fmt::write_safetensors(empty, {}, fill_tensor, {{"note", "a"}});
    const fs::path paths[] = {weights, empty};
    fmt::FileDigests digests = file_digests_of(fmt::Checkpoint::open(paths));
    it::LoadOptions options = small_slots;
    options.verify_files = digests;
    const auto checkpoint = fmt::Checkpoint::open(paths);
    check_outcome(checkpoint, load(checkpoint, Via::pread, it::DirectIo::off, SinkKind::host, options));

    fs::remove(empty);
    fmt::write_safetensors(empty, {}, fill_tensor, {{"note", "b"}});
    const auto changed = fmt::Checkpoint::open(paths);
    std::size_t yielded = 0;
    auto loader = it::load_to_host(changed, options);
    const std::string named = empty.string() + ": its bytes hash to ";
    CHECK_THROWS_WITH_AS(
        [&] {
            for (const it::TensorView& t : loader) yielded += !t.name.empty();
        }(),
        doctest::Contains(named.c_str()), it::integrity_error);
    CHECK(yielded == changed.tensors().size());
}

TEST_CASE("verify_files: what cannot be hashed whole is refused before any read") {
    TempDir dir;
    const auto path = write_file(dir / "model.safetensors", verify_specs());
    const auto checkpoint = fmt::Checkpoint::open(path);
    it::LoadOptions options = small_slots;
    options.verify_files = file_digests_of(checkpoint);
    SUBCASE("a manifest without the file names it") {
        options.verify_files = fmt::FileDigests("other.sha256");
        const std::string message = "other.sha256: has no SHA-256 for file " + path.string() + ": it cannot be verified";
        CHECK_THROWS_WITH_AS(it::load_to_host(checkpoint, options), message.c_str(), it::integrity_error);
    }
    SUBCASE("a load of some tensors") {
        options.filter = [](const fmt::TensorRef& t) { return t.name() != "odd.3"; };
        const std::string message = path.string() + ": is not read whole";
        CHECK_THROWS_WITH_AS(it::load_to_host(checkpoint, options), doctest::Contains(message.c_str()), it::usage_error);
    }
    SUBCASE("a load of blocks") {
        options.share = it::split_rows([](const fmt::TensorRef&) { return true; });
        CHECK_THROWS_WITH_AS(it::load_to_host(checkpoint, options), doctest::Contains("verify_files hashes whole files"), it::usage_error);
    }
}

TEST_CASE("Verifier: a file's reads handed over in any order give the SHA-256 of the file") {
    const std::vector<fmt::TensorSpec> specs = {{"a", fmt::Dtype::U8, {70001}}, {"b", fmt::Dtype::U8, {5}}, {"c", fmt::Dtype::F32, {9000}}};
    std::vector<fmt::TensorSpec> many = tiny_specs(300);  // a header larger than an extent
    many.insert(many.end(), specs.begin(), specs.end());
    std::vector<std::vector<std::byte>> bytes;
    std::vector<fmt::TensorData> data;
    for (const auto& s : many) bytes.push_back(expected_bytes(s.name, spec_bytes(s)));
    for (std::size_t i = 0; i < many.size(); ++i) data.push_back({many[i], bytes[i]});
    const std::vector<std::byte> file = fmt::serialize_safetensors(data);
    const std::pair<std::string, std::span<const std::byte>> named[] = {{"dir/file", file}};
    const auto checkpoint = fmt::Checkpoint::from_memory(named);
    const std::uint64_t alignment[] = {1};
    const it::Plan plan = it::make_plan(checkpoint, {}, alignment, 16 << 10, {}, {}, it::Coverage::whole_files);
    REQUIRE(plan.extents.front().piece_count == 0);
    const auto slots = static_cast<std::uint32_t>(plan.extents.size());
    const auto sha = it::detail::sha256({reinterpret_cast<const std::uint8_t*>(file.data()), file.size()});
    const std::string sha_text = fmt::digest_text(sha);

    for (std::uint32_t seed = 0; seed < 20; ++seed) {
        for (bool wrong : {false, true}) {
            CAPTURE(seed);
            fmt::FileDigests digests("manifest");
            fmt::Sha256Digest expected = sha;
            expected[seed % 32] ^= wrong;
            digests.add("elsewhere/file", expected);
            it::pipeline::Verifier verifier(plan, nullptr, &digests, slots, 1 + seed % 3);
            std::vector<std::uint32_t> order(plan.extents.size());
            for (std::uint32_t e = 0; e < order.size(); ++e) order[e] = e;
            std::shuffle(order.begin(), order.end(), std::mt19937(seed));
            for (std::uint32_t e : order) verifier.digest(e, file.data() + plan.extents[e].offset, e);
            while (verifier.busy()) verifier.wait_past(verifier.progress());
            for (std::uint32_t s = 0; s < slots; ++s) CHECK(verifier.idle(s));
            for (std::uint32_t t = 0; t + 1 < plan.tensors.size(); ++t) CHECK(verifier.verified(t));
            if (wrong) {
                CHECK_THROWS_AS((void)verifier.verified(static_cast<std::uint32_t>(plan.tensors.size() - 1)), it::integrity_error);
                CHECK_THROWS_WITH_AS((void)verifier.files_verified(), doctest::Contains(sha_text.c_str()), it::integrity_error);
            } else {
                CHECK(verifier.verified(static_cast<std::uint32_t>(plan.tensors.size() - 1)));
                CHECK(verifier.files_verified());
            }
        }
    }
}

TEST_CASE("FileDigests: sha256sum's layout, text and binary lines, escaped names, matched by file name") {
    const std::string a(64, 'a'), b = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const auto digests = fmt::FileDigests::parse(a + "  model/model-00001-of-00002.safetensors\n" + b + " *other.safetensors\n\n\\" + a +
                                                     "  dir/new\\nline.safetensors\n",
                                                 "sums");
    CHECK(digests.size() == 3);
    CHECK(fmt::digest_text(*digests.find("/elsewhere/model-00001-of-00002.safetensors")) == a);
    CHECK(fmt::digest_text(*digests.find("https://127.0.0.1:8080/dir/other.safetensors")) == b);
    CHECK(digests.find("new\nline.safetensors").has_value());
    CHECK_FALSE(digests.find("model.safetensors").has_value());
    CHECK_THROWS_WITH_AS(fmt::FileDigests::parse(a + "  x/m.safetensors\n" + b + "  y/m.safetensors\n", "sums"),
                         doctest::Contains("sums: gives a file named 'm.safetensors' twice"), it::format_error);
    CHECK_THROWS_WITH_AS(fmt::FileDigests::parse(a.substr(1) + "  m.safetensors\n", "sums"), doctest::Contains("sums: line 1: "),
                         it::format_error);
    CHECK_THROWS_WITH_AS(fmt::FileDigests::parse("SHA256 (m.safetensors) = " + a + "\n", "sums"),
                         doctest::Contains("as `sha256sum` prints them"), it::format_error);
    CHECK_THROWS_WITH_AS(fmt::FileDigests::parse(std::string(64, 'A') + "  m.safetensors\n", "sums"),
                         doctest::Contains("not 64 lowercase hex digits"), it::format_error);
}

#endif  // INSTANTTENSOR_HAS_CRYPTO
