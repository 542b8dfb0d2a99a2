// format/encryption.hpp and detail/aead.hpp: XChaCha20-Poly1305 as built here is libsodium's; a
// chunk that fails authentication is wiped; the parameters in a header are parsed strictly, each
// malformed one named; the header digest changes with every field of the header but the tags;
// keys are read from files and the environment, and their text never appears in a message; an
// encrypted file keeps its plain header's tensors.
#include <doctest/doctest.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "instanttensor/format/encryption.hpp"
#include "instanttensor/format/writer.hpp"
#include "support.hpp"

#if INSTANTTENSOR_HAS_CRYPTO

namespace {

namespace fmt = instanttensor::format;
namespace fs = std::filesystem;
using instanttensor::detail::Aead;
using instanttensor::detail::Cipher;
using instanttensor::detail::Secret;
using instanttensor_test::TempDir;

std::vector<std::byte> pattern(std::size_t n) {
    std::vector<std::byte> bytes(n);
    for (std::size_t i = 0; i < n; ++i) bytes[i] = static_cast<std::byte>(i * 7 + 3);
    return bytes;
}

fmt::Header header_of(fmt::Metadata metadata) {
    fmt::Header h;
    h.tensors.push_back({"a", fmt::Dtype::F32, {2, 3}, 0, 24});
    h.tensors.push_back({"b", fmt::Dtype::U8, {5000}, 24, 5024});
    h.data_size = 5024;
    h.metadata = std::move(metadata);
    return h;
}

/// The metadata of a valid encryption of header_of({}) with 4 KiB chunks (3 chunks).
fmt::Metadata valid_metadata() {
    fmt::Encryption e;
    e.cipher = Cipher::aes_256_gcm;
    e.chunk_bytes = 4096;
    e.tags.assign(3 * instanttensor::detail::tag_bytes, 0xab);
    return e.metadata({});
}

}  // namespace

TEST_CASE("Aead: XChaCha20-Poly1305 gives libsodium's ciphertext and tag; both ciphers round-trip and wipe forgeries") {
    Secret key;
    instanttensor::detail::random_bytes(key.bytes());
    const std::vector<std::uint8_t> associated = {1, 2, 3, 4, 5};
    for (std::size_t size : {std::size_t{0}, std::size_t{1}, std::size_t{4096}, std::size_t{100003}}) {
        const std::uint64_t counter = 0x0102030405060708ull + size;
        std::vector<std::byte> bytes = pattern(size);
        std::array<std::uint8_t, 16> tag{};
        Aead chacha(Cipher::xchacha20_poly1305);
        chacha.seal(key, counter, associated, bytes, tag);

        // libsodium's XChaCha20-Poly1305 with the nonce the counter stands for.
        std::array<std::uint8_t, 24> nonce{};
        for (int i = 0; i < 8; ++i) nonce[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(counter >> (8 * i));
        std::vector<std::byte> theirs = pattern(size);
        std::array<std::uint8_t, 16> their_tag{};
        auto* data = reinterpret_cast<unsigned char*>(theirs.data());
        crypto_aead_xchacha20poly1305_ietf_encrypt_detached(data, their_tag.data(), nullptr, data, size, associated.data(),
                                                            associated.size(), nullptr, nonce.data(), key.bytes().data());
        CHECK(bytes == theirs);
        CHECK(tag == their_tag);

        for (Cipher cipher : {Cipher::aes_256_gcm, Cipher::xchacha20_poly1305}) {
            INFO(fmt::cipher_name(cipher), " ", size);
            Aead aead(cipher);
            std::vector<std::byte> chunk = pattern(size);
            aead.seal(key, counter, associated, chunk, tag);
            if (size > 0) CHECK(chunk != pattern(size));
            std::vector<std::byte> copy = chunk;
            CHECK(aead.open(key, counter, associated, copy, tag));
            CHECK(copy == pattern(size));
            // Another counter, other associated data, a flipped byte: refused, bytes wiped.
            for (int forgery = 0; forgery < 3; ++forgery) {
                copy = chunk;
                std::vector<std::uint8_t> ad = associated;
                std::uint64_t c = counter;
                if (forgery == 0) ++c;
                if (forgery == 1) ad[0] ^= 1;
                if (forgery == 2 && size > 0) copy[size / 2] ^= std::byte{1};
                if (forgery == 2 && size == 0) ad.push_back(0);
                CHECK_FALSE(aead.open(key, c, ad, copy, tag));
                CHECK(copy == std::vector<std::byte>(size));
            }
        }
    }
}

TEST_CASE("Encryption::of: parameters parsed strictly, every malformed one named") {
    CHECK_FALSE(fmt::Encryption::of(header_of({{"other", "x"}}), "f").has_value());
    const auto parsed = fmt::Encryption::of(header_of(valid_metadata()), "f");
    REQUIRE(parsed.has_value());
    CHECK(parsed->first_chunk == std::vector<std::uint64_t>{0, 1});
    CHECK(parsed->chunks_of(5000) == 2);
    CHECK(parsed->tags.size() == 48);

    struct Case {
        std::string key, value, says;
    };
    const std::vector<Case> cases = {
        {"instanttensor.cipher", "aes-128-gcm", "unknown cipher"},
        {"instanttensor.chunk_bytes", "4097", "power of two"},
        {"instanttensor.chunk_bytes", "2048", "power of two"},
        {"instanttensor.chunk_bytes", "04096", "power of two"},
        {"instanttensor.chunk_bytes", "134217728", "power of two"},
        {"instanttensor.salt", std::string(64, 'A'), "64 lowercase hex"},
        {"instanttensor.key_id", "00", "16 lowercase hex"},
        {"instanttensor.tags", std::string(64, '0'), "need 96"},
        {"instanttensor.tags", std::string(95, '0') + "g", "lowercase hex"},
    };
    for (const Case& c : cases) {
        INFO(c.key, " = ", c.value);
        fmt::Metadata m = valid_metadata();
        m[c.key] = c.value;
        CHECK_THROWS_WITH_AS(fmt::Encryption::of(header_of(m), "model.safetensors"), doctest::Contains(c.says.c_str()), instanttensor::format_error);
    }
    fmt::Metadata partial = valid_metadata();
    partial.erase("instanttensor.salt");
    CHECK_THROWS_WITH_AS(fmt::Encryption::of(header_of(partial), "model.safetensors"), doctest::Contains("lacks \"instanttensor.salt\""),
                         instanttensor::format_error);
    CHECK(fmt::plain_metadata(valid_metadata()).empty());
}

TEST_CASE("header digest: every field but the tags counts") {
    const fmt::Header base = header_of(valid_metadata());
    const auto digest = fmt::header_digest_input(base);
    fmt::Header h = base;
    h.metadata["instanttensor.tags"] = std::string(96, '1');
    CHECK(fmt::header_digest_input(h) == digest);
    std::vector<fmt::Header> changed(6, base);
    changed[0].tensors[0].name = "c";
    changed[1].tensors[0].dtype = fmt::Dtype::I32;
    changed[2].tensors[0].shape = {3, 2};
    changed[3].tensors[1].begin = 25;
    changed[4].metadata["note"] = "";
    changed[5].metadata["instanttensor.chunk_bytes"] = "8192";
    for (const auto& c : changed) CHECK(fmt::header_digest_input(c) != digest);
}

TEST_CASE("Key: read from a file or the environment; its text never in a message") {
    TempDir dir;
    const fmt::Key key = fmt::Key::generate();
    const std::string text = key.text();
    CHECK(text.size() == 65);
    {
        std::ofstream(dir / "key") << text;
        std::ofstream(dir / "key-no-newline") << text.substr(0, 64);
    }
    CHECK(fmt::Key::read(dir / "key").text() == text);
    CHECK(fmt::Key::read(dir / "key-no-newline").text() == text);
    ::setenv("INSTANTTENSOR_TEST_KEY", text.c_str(), 1);
    CHECK(fmt::Key::from_environment("INSTANTTENSOR_TEST_KEY").text() == text);

    const std::string almost = text.substr(0, 63) + "G";
    {
        std::ofstream(dir / "bad") << almost;
        std::ofstream(dir / "long") << text << "more";
    }
    ::setenv("INSTANTTENSOR_TEST_KEY", almost.c_str(), 1);
    for (auto attempt : {+[](const fs::path& d) { (void)fmt::Key::read(d / "bad"); }, +[](const fs::path& d) { (void)fmt::Key::read(d / "long"); },
                         +[](const fs::path&) { (void)fmt::Key::from_environment("INSTANTTENSOR_TEST_KEY"); }}) {
        std::string message;
        try {
            attempt(dir.path());
        } catch (const instanttensor::format_error& e) {
            message = e.what();
        }
        CHECK(message.find("does not hold a key") != std::string::npos);
        CHECK(message.find(text.substr(0, 16)) == std::string::npos);
    }
    ::unsetenv("INSTANTTENSOR_TEST_KEY");
    CHECK_THROWS_WITH_AS(fmt::Key::from_environment("INSTANTTENSOR_TEST_KEY"), doctest::Contains("is not set"), instanttensor::usage_error);
    CHECK_THROWS_AS(fmt::Key::read(dir / "missing"), instanttensor::io_error);
}

TEST_CASE("encrypt_file: the same tensors at the same offsets, the plain metadata kept, the rest ciphertext") {
    TempDir dir;
    const std::vector<std::byte> a = pattern(24), b = pattern(5000);
    const std::vector<fmt::TensorData> tensors = {{{"a", fmt::Dtype::F32, {2, 3}}, a}, {{"b", fmt::Dtype::U8, {5000}}, b}};
    fmt::write_safetensors(dir / "plain.safetensors", tensors, {{"format", "pt"}});
    const fmt::Key key = fmt::Key::generate();
    std::uint64_t reported = 0;
    fmt::encrypt_file(dir / "plain.safetensors", dir / "enc.safetensors", key,
                      {.cipher = Cipher::xchacha20_poly1305, .chunk_bytes = 4096, .progress = [&](std::uint64_t n) { reported = n; }});
    CHECK(reported == 5024);
    const fmt::Header plain = fmt::read_header(dir / "plain.safetensors");
    const fmt::Header encrypted = fmt::read_header(dir / "enc.safetensors");
    REQUIRE(encrypted.tensors.size() == plain.tensors.size());
    for (std::size_t i = 0; i < plain.tensors.size(); ++i) {
        CHECK(encrypted.tensors[i].name == plain.tensors[i].name);
        CHECK(encrypted.tensors[i].shape == plain.tensors[i].shape);
        CHECK(encrypted.tensors[i].begin == plain.tensors[i].begin);
    }
    CHECK(fmt::plain_metadata(encrypted.metadata) == plain.metadata);
    const auto e = fmt::Encryption::of(encrypted, "enc");
    REQUIRE(e.has_value());
    CHECK(e->cipher == Cipher::xchacha20_poly1305);
    CHECK(fs::file_size(dir / "enc.safetensors") == encrypted.file_size());

    // Every chunk opens under the key, in place, to the plain bytes.
    std::ifstream in(dir / "enc.safetensors", std::ios::binary);
    std::vector<std::byte> data(encrypted.data_size);
    in.seekg(static_cast<std::streamoff>(encrypted.data_offset()));
    in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
    CHECK(std::vector<std::byte>(data.begin() + 24, data.end()) != b);
    const fmt::FileCipher cipher(encrypted, *e, key, "enc");
    Aead aead(Cipher::xchacha20_poly1305);
    CHECK(cipher.open(aead, 0, 0, std::span(data).subspan(0, 24)));
    CHECK(cipher.open(aead, 1, 0, std::span(data).subspan(24, 4096)));
    CHECK(cipher.open(aead, 1, 1, std::span(data).subspan(24 + 4096)));
    CHECK(std::vector<std::byte>(data.begin(), data.begin() + 24) == a);
    CHECK(std::vector<std::byte>(data.begin() + 24, data.end()) == b);
    CHECK_THROWS_WITH_AS(fmt::FileCipher(encrypted, *e, fmt::Key::generate(), "enc"), doctest::Contains("another key"),
                         instanttensor::integrity_error);
}

#endif  // INSTANTTENSOR_HAS_CRYPTO
