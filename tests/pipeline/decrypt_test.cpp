// LoadOptions::key (pipeline/decryptor.hpp): an encrypted checkpoint loads to exactly the bytes that
// were encrypted, through every backend, page-cache policy and host sink, with either cipher, with
// chunks smaller and larger than a read, in blocks (LoadOptions::share), and in group loads of 1 to 5
// ranks for every share, with chunks that two ranks' segments share; every way of tampering with it (a byte, the header, the
// tags, chunks or tensors swapped, a chunk from another file) fails as an integrity_error naming the
// file and the tensor, and the tensor is never yielded; a wrong key, a missing key and a key for a
// plain file are refused before any read.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "groups.hpp"
#include "instanttensor/format/encryption.hpp"
#include "instanttensor/loader.hpp"
#include "loads.hpp"

#if INSTANTTENSOR_HAS_CRYPTO

namespace {

using namespace instanttensor_test;

/// Tensors of one chunk and of many (4 KiB chunks, 16 KiB slots), empty ones and scalars.
std::vector<fmt::TensorSpec> encrypt_specs() {
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(60, 5)) specs.push_back(s);
    for (auto& s : edge_specs()) specs.push_back(s);
    specs.push_back({"layer.big", fmt::Dtype::BF16, {150001}});
    specs.push_back({"layer.twin", fmt::Dtype::BF16, {150001}});
    return specs;
}

std::shared_ptr<const fmt::Key> new_key() { return std::make_shared<const fmt::Key>(fmt::Key::generate()); }

/// Encrypts the sharded checkpoint at `plain` (its index beside its shards) into directory `out`.
fs::path encrypt_checkpoint(const fs::path& plain_index, const fs::path& out, const fmt::Key& key, fmt::EncryptOptions options) {
    fs::create_directories(out);
    for (const auto& entry : fs::directory_iterator(plain_index.parent_path())) {
        const fs::path target = out / entry.path().filename();
        if (entry.path().extension() == ".safetensors") fmt::encrypt_file(entry.path(), target, key, options);
        else fs::copy_file(entry.path(), target);
    }
    return out / plain_index.filename();
}

it::LoadOptions with_key(std::shared_ptr<const fmt::Key> key, it::LoadOptions options, unsigned threads = 2) {
    options.key = std::move(key);
    options.decrypt_threads = threads;
    return options;
}

/// Loads with a host sink through pread; the names yielded before the load failed, and its message.
struct Failure {
    std::vector<std::string> yielded;
    std::string message;
};
template <class Error>
Failure load_failing(const fmt::Checkpoint& checkpoint, const it::LoadOptions& options) {
    Failure f;
    try {
        HostLoaderOf<it::storage::pread> loader(checkpoint, it::storage::pread(), {}, it::sink::host(test_ring), options);
        for (const it::TensorView& t : loader) f.yielded.emplace_back(t.name);
        FAIL("the load succeeded");
    } catch (const Error& e) {
        f.message = e.what();
    }
    return f;
}

std::vector<std::byte> read_bytes(const fs::path& path, std::uint64_t offset, std::uint64_t length) {
    std::vector<std::byte> bytes(length);
    std::ifstream in(path, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(length));
    return bytes;
}

void write_bytes(const fs::path& path, std::uint64_t offset, std::span<const std::byte> bytes) {
    std::fstream out(path, std::ios::binary | std::ios::in | std::ios::out);
    out.seekp(static_cast<std::streamoff>(offset));
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

TEST_CASE("decrypt: every backend, page-cache policy and host sink yields the bytes that were encrypted") {
    TempDir dir;
    const auto plain = fmt::write_sharded_checkpoint(dir / "plain", encrypt_specs(), 3, fill_tensor);
    const auto key = new_key();
    struct Setup {
        fmt::Cipher cipher;
        std::uint64_t chunk;
        it::LoadOptions staging;
    };
    // Chunks of 4 KiB in reads of 12 and 16 KiB; chunks of 1 MiB in reads of 4 MiB (layer.big has one chunk).
    for (const Setup& s : {Setup{fmt::Cipher::aes_256_gcm, 4096, small_slots}, Setup{fmt::Cipher::xchacha20_poly1305, 4096, minimal_ring},
                           Setup{fmt::Cipher::aes_256_gcm, 1 << 20, it::LoadOptions{}}}) {
        const auto index = encrypt_checkpoint(plain, dir / ("enc-" + std::string(fmt::cipher_name(s.cipher)) + std::to_string(s.staging.slot_bytes)),
                                              *key, {.cipher = s.cipher, .chunk_bytes = s.chunk, .progress = {}});
        const auto checkpoint = fmt::Checkpoint::open(index);
        for (unsigned threads : {1u, 3u}) {
            INFO(fmt::cipher_name(s.cipher), " chunk ", s.chunk, " threads ", threads, " slot ", s.staging.slot_bytes);
            load_every_way(checkpoint, with_key(key, s.staging, threads),
                           [&](const Outcome& out, Via, it::DirectIo) { check_outcome(checkpoint, out); });
        }
    }
}

TEST_CASE("decrypt and verify: the digests are those of the plaintext") {
    TempDir dir;
    const auto plain = fmt::write_sharded_checkpoint(dir / "plain", encrypt_specs(), 2, fill_tensor);
    const auto key = new_key();
    const auto index = encrypt_checkpoint(plain, dir / "enc", *key, {.cipher = fmt::preferred_cipher(), .chunk_bytes = 4096, .progress = {}});
    const auto checkpoint = fmt::Checkpoint::open(index);
    it::LoadOptions options = with_key(key, small_slots);
    fmt::TensorDigests digests("the test's digests");
    for (const auto& t : checkpoint.tensors()) digests.add(t.name(), it::detail::xxh3(expected_bytes(t.name(), t.nbytes())));
    options.verify = digests;
    const Outcome out = load(checkpoint, Via::pread, it::DirectIo::off, SinkKind::host, options);
    check_outcome(checkpoint, out);
    CHECK(out.stats.verified == checkpoint.tensors().size());
}

TEST_CASE("decrypt: tampering is refused, naming the file and the tensor, which is never yielded") {
    TempDir dir;
    const auto specs = encrypt_specs();
    const auto key = new_key();
    const fs::path plain = write_file(dir / "plain.safetensors", specs);
    const fmt::EncryptOptions options{.cipher = fmt::Cipher::aes_256_gcm, .chunk_bytes = 4096, .progress = {}};
    int copies = 0;
    auto encrypted = [&] {
        const fs::path path = dir / ("enc-" + std::to_string(copies++) + ".safetensors");
        fmt::encrypt_file(plain, path, *key, options);
        return path;
    };
    const fs::path reference = encrypted();
    const fmt::Header header = fmt::read_header(reference);
    auto info = [&](std::string_view name) {
        return *std::find_if(header.tensors.begin(), header.tensors.end(), [&](const fmt::TensorInfo& t) { return t.name == name; });
    };
    const std::uint64_t data = header.data_offset();
    // `tensor`: the one whose chunk was changed; "" when all of them fail.
    auto expect_refused = [&](const fs::path& path, const std::string& tensor) {
        const auto checkpoint = fmt::Checkpoint::open(path);
        const Failure f = load_failing<it::integrity_error>(checkpoint, with_key(key, small_slots));
        CHECK(f.message.find(path.string()) != std::string::npos);
        CHECK(f.message.find("fails authentication") != std::string::npos);
        if (tensor.empty()) {  // every chunk fails: the first to be decrypted is named
            CHECK(f.message.find("tensor '") != std::string::npos);
            return;
        }
        CHECK(f.message.find("'" + tensor + "'") != std::string::npos);
        CHECK(std::find(f.yielded.begin(), f.yielded.end(), tensor) == f.yielded.end());
    };

    SUBCASE("a flipped byte, in a tensor of one chunk and in the last chunk of a large one") {
        for (const auto& [tensor, at] : {std::pair<std::string, std::uint64_t>{"tiny.3", 0}, {"layer.big", 300001}}) {
            const fs::path path = encrypted();
            const fmt::TensorInfo t = info(tensor);
            auto byte = read_bytes(path, data + t.begin + at, 1);
            byte[0] ^= std::byte{1};
            write_bytes(path, data + t.begin + at, byte);
            expect_refused(path, tensor);
        }
    }
    SUBCASE("two chunks of a tensor swapped") {
        const fs::path path = encrypted();
        const fmt::TensorInfo t = info("layer.big");
        const auto first = read_bytes(path, data + t.begin, 4096), second = read_bytes(path, data + t.begin + 4096, 4096);
        write_bytes(path, data + t.begin, second);
        write_bytes(path, data + t.begin + 4096, first);
        expect_refused(path, "layer.big");
    }
    SUBCASE("two tensors of the same size swapped") {
        const fs::path path = encrypted();
        const fmt::TensorInfo a = info("layer.big"), b = info("layer.twin");
        const auto bytes_a = read_bytes(path, data + a.begin, a.nbytes()), bytes_b = read_bytes(path, data + b.begin, b.nbytes());
        write_bytes(path, data + a.begin, bytes_b);
        write_bytes(path, data + b.begin, bytes_a);
        expect_refused(path, a.begin < b.begin ? "layer.big" : "layer.twin");
    }
    SUBCASE("a chunk and its tag replayed from another file encrypted with the same key") {
        const fs::path path = encrypted(), other = encrypted();
        const fmt::TensorInfo t = info("layer.big");
        write_bytes(path, data + t.begin, read_bytes(other, data + t.begin, 4096));
        expect_refused(path, info("layer.big").name);
    }
    SUBCASE("the header changed: a metadata entry added, the tags swapped") {
        const fs::path path = encrypted();
        fmt::Header h = fmt::read_header(path);
        fmt::Metadata metadata = h.metadata;
        metadata["note"] = "changed";
        fmt::rewrite_metadata(path, h, metadata);
        expect_refused(path, "");

        const fs::path swapped = encrypted();
        h = fmt::read_header(swapped);
        metadata = h.metadata;
        std::string& tags = metadata[std::string(fmt::tags_key)];
        const auto big = std::find_if(header.tensors.begin(), header.tensors.end(), [](const fmt::TensorInfo& t) { return t.name == "layer.big"; });
        const std::size_t at = 2 * it::detail::tag_bytes * fmt::Encryption::of(h, "test")->first_chunk[static_cast<std::size_t>(big - header.tensors.begin())];
        const auto first_tag = tags.begin() + static_cast<std::ptrdiff_t>(at);
        std::swap_ranges(first_tag, first_tag + 32, first_tag + 32);  // the tags of its first two chunks
        fmt::rewrite_metadata(swapped, h, metadata);
        expect_refused(swapped, "layer.big");
    }
    SUBCASE("tags cut short are a format_error naming the file") {
        const fs::path path = encrypted();
        const fmt::Header h = fmt::read_header(path);
        fmt::Metadata metadata = h.metadata;
        metadata[std::string(fmt::tags_key)].resize(metadata[std::string(fmt::tags_key)].size() - 32);
        fmt::rewrite_metadata(path, h, metadata);
        CHECK_THROWS_WITH_AS(fmt::Encryption::of(fmt::read_header(path), path.string()),
                             doctest::Contains("instanttensor.tags"), it::format_error);
        const auto checkpoint = fmt::Checkpoint::open(path);
        CHECK(load_failing<it::format_error>(checkpoint, with_key(key, small_slots)).message.find(path.string()) != std::string::npos);
    }
}

TEST_CASE("decrypt: keys that cannot decrypt are refused before any read") {
    TempDir dir;
    const fs::path plain = write_file(dir / "plain.safetensors", odd_specs());
    const fs::path encrypted = dir / "enc.safetensors";
    const auto key = new_key();
    fmt::encrypt_file(plain, encrypted, *key);
    const auto checkpoint = fmt::Checkpoint::open(encrypted);

    const Failure wrong = load_failing<it::integrity_error>(checkpoint, with_key(new_key(), small_slots));
    CHECK(wrong.message.find("another key") != std::string::npos);
    CHECK(wrong.message.find(encrypted.string()) != std::string::npos);
    CHECK(wrong.yielded.empty());

    const Failure missing = load_failing<it::usage_error>(checkpoint, small_slots);
    CHECK(missing.message.find("is encrypted") != std::string::npos);
    CHECK(missing.message.find(encrypted.string()) != std::string::npos);

    const auto plain_checkpoint = fmt::Checkpoint::open(plain);
    CHECK(load_failing<it::usage_error>(plain_checkpoint, with_key(key, small_slots)).message.find("is not encrypted") != std::string::npos);

    CHECK_THROWS_WITH_AS(fmt::encrypt_file(encrypted, dir / "twice.safetensors", *key), doctest::Contains("encrypted already"),
                         it::usage_error);
    CHECK_THROWS_WITH_AS(fmt::encrypt_file(plain, encrypted, *key), doctest::Contains("exists"), it::io_error);
    CHECK_THROWS_AS(fmt::encrypt_file(plain, dir / "odd.safetensors", *key, {.cipher = fmt::Cipher::aes_256_gcm, .chunk_bytes = 5000, .progress = {}}),
                    it::usage_error);
    CHECK_FALSE(fs::exists(dir / "odd.safetensors"));

    SUBCASE("a read too small for one chunk") {
        const fs::path big_chunks = dir / "big-chunks.safetensors";
        fmt::encrypt_file(plain, big_chunks, *key, {.cipher = fmt::Cipher::aes_256_gcm, .chunk_bytes = 1 << 20, .progress = {}});
        const auto c = fmt::Checkpoint::open(big_chunks);
        CHECK(load_failing<it::usage_error>(c, with_key(key, small_slots)).message.find("cannot hold a chunk") != std::string::npos);
    }
}

TEST_CASE("decrypt: blocks of tensors (LoadOptions::share) land as the plain file's blocks, reading whole chunks") {
    TempDir dir;
    const fs::path plain = write_file(dir / "plain.safetensors", group_specs());
    const fs::path encrypted = dir / "enc.safetensors";
    const auto key = new_key();
    fmt::encrypt_file(plain, encrypted, *key, {.cipher = fmt::preferred_cipher(), .chunk_bytes = 4096, .progress = {}});
    const auto checkpoint = fmt::Checkpoint::open(encrypted);
    for (const auto& selection : selections()) {
        if (!selection.share) continue;
        for (int rank : {0, 1, 2}) {  // the block rank `rank` of 3 keeps, loaded alone
            CAPTURE(selection.name);
            CAPTURE(rank);
            it::LoadOptions options = with_key(key, small_slots);
            options.share = [share = selection.share, rank](const fmt::TensorRef& t, int, int) { return share(t, rank, 3); };
            RankResult out;
            HostLoaderOf<it::storage::pread> loader(checkpoint, it::storage::pread(), {}, it::sink::host(test_ring), options);
            for (const it::TensorView& t : loader) {
                out.names.emplace_back(t.name);
                out.shapes.emplace_back(t.shape.begin(), t.shape.end());
                out.blocks.emplace_back(t.block_dim, t.block_first);
                const auto block = block_bytes(*t.ref->info, expected_bytes(t.name, t.ref->nbytes()), t.block_dim, t.block_first,
                                               t.shape.empty() ? 1 : t.shape[t.block_dim]);
                out.bytes_match.push_back(std::equal(t.data.begin(), t.data.end(), block.begin(), block.end()));
            }
            out.stats = loader.stats();
            check_rank(checkpoint, selection.share, rank, 3, out);
        }
    }
}

TEST_CASE("decrypt in a group: every share, 1 to 5 ranks, chunks two segments share; each rank ends with the bytes it keeps") {
    TempDir dir;
    const auto plain = fmt::write_sharded_checkpoint(dir / "plain", group_specs(), 3, fill_tensor);
    const auto key = new_key();
    // Chunks of a page in windows of 64 KiB, and of two pages (as large as a read allows) in windows
    // of 32 KiB: there a segment of 4 or 5 ranks is a page, smaller than a chunk, so that several
    // ranks read and decrypt the same chunk.
    for (const std::uint64_t chunk : {std::uint64_t{4096}, std::uint64_t{8192}}) {
        const auto index = encrypt_checkpoint(plain, dir / ("enc-" + std::to_string(chunk)), *key,
                                              {.cipher = fmt::preferred_cipher(), .chunk_bytes = chunk, .progress = {}});
        const auto checkpoint = fmt::Checkpoint::open(index);
        for (const auto& selection : selections()) {
            for (int ranks = 1; ranks <= 5; ++ranks) {
                CAPTURE(chunk);
                CAPTURE(selection.name);
                CAPTURE(ranks);
                auto options = with_key(key, group_options(selection.share), 1);
                options.window_bytes = chunk == 4096 ? test_window_bytes : test_window_bytes / 2;
                const auto results = run_group(ranks, [&](InProcessTransport transport, int) {
                    return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::memory}), std::move(transport),
                                       it::sink::host(), options);
                });
                for (int r = 0; r < ranks; ++r) check_rank(checkpoint, selection.share, r, ranks, results[static_cast<std::size_t>(r)]);
            }
        }
    }
    // Every file backend and page-cache policy, reads widened to whole chunks staying aligned for O_DIRECT.
    const auto checkpoint = fmt::Checkpoint::open(dir / "enc-8192" / plain.filename());
    const auto share = it::split_along(1, is_weight);
    namespace st = it::storage;
    for (const st::automatic::Options storage : {st::automatic::Options{st::Backend::pread, it::DirectIo::on},
                                                 st::automatic::Options{st::Backend::uring, it::DirectIo::on},
                                                 st::automatic::Options{st::Backend::uring, it::DirectIo::off}}) {
        if (storage.backend == st::Backend::uring && unavailable(Via::uring)) continue;
        CAPTURE(st::to_string(storage.backend));
        CAPTURE(to_string(storage.direct));
        const auto results = run_group(3, [&](InProcessTransport transport, int) {
            return GroupLoader(checkpoint, st::automatic(storage), std::move(transport), it::sink::host(), with_key(key, group_options(share)));
        });
        for (int r = 0; r < 3; ++r) check_rank(checkpoint, share, r, 3, results[static_cast<std::size_t>(r)]);
    }
}

TEST_CASE("decrypt in a group: a changed chunk fails the ranks that read it and stops the others; a wrong key stops every rank") {
    TempDir dir;
    const fs::path plain = write_file(dir / "plain.safetensors", group_specs());
    const fs::path path = dir / "enc.safetensors";
    const auto key = new_key();
    fmt::encrypt_file(plain, path, *key, {.cipher = fmt::preferred_cipher(), .chunk_bytes = 4096, .progress = {}});
    const fmt::Header header = fmt::read_header(path);
    const fmt::TensorInfo& big = *std::find_if(header.tensors.begin(), header.tensors.end(), [](const fmt::TensorInfo& t) { return t.name == "w.big"; });
    auto byte = read_bytes(path, header.data_offset() + big.begin + 200000, 1);
    byte[0] ^= std::byte{1};
    write_bytes(path, header.data_offset() + big.begin + 200000, byte);
    const auto checkpoint = fmt::Checkpoint::open(path);

    const auto results = run_group(3, [&](InProcessTransport transport, int) {
        return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::memory}), std::move(transport), it::sink::host(),
                           with_key(key, group_options({})));
    });
    int refused = 0;
    for (const RankResult& out : results) {
        CAPTURE(out.error);
        CHECK(std::find(out.names.begin(), out.names.end(), "w.big") == out.names.end());
        if (out.error.find("fails authentication") != std::string::npos) {
            ++refused;
            CHECK(out.error.find(path.string()) != std::string::npos);
            CHECK(out.error.find("'w.big': chunk 48 of") != std::string::npos);
        } else {
            CHECK(out.error.find("failed at window") != std::string::npos);
        }
    }
    CHECK(refused >= 1);

    const auto wrong = run_group(3, [&](InProcessTransport transport, int) {
        return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::memory}), std::move(transport), it::sink::host(),
                           with_key(new_key(), group_options({})));
    });
    for (const RankResult& out : wrong) {
        CHECK(out.error.find("another key") != std::string::npos);
        CHECK(out.names.empty());
    }
}

#endif  // INSTANTTENSOR_HAS_CRYPTO
