// instanttensor/format/detail/encryption.inl: the code behind format/encryption.hpp, which includes
// this file; not to be included alone.
#pragma once

#include <unistd.h>
#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

#include <cerrno>
#include <charconv>
#include <cstdlib>

#include "instanttensor/detail/fd.hpp"
#include "instanttensor/detail/hex.hpp"
#include "instanttensor/format/header.hpp"
#include "instanttensor/error.hpp"

namespace instanttensor::detail {

/// Appends `value` as 8 little-endian bytes.
inline void append_u64(std::vector<std::uint8_t>& out, std::uint64_t value) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

/// Appends the length of `text`, then its bytes.
inline void append_field(std::vector<std::uint8_t>& out, std::string_view text) {
    append_u64(out, text.size());
    out.insert(out.end(), text.begin(), text.end());
}

#if INSTANTTENSOR_HAS_CRYPTO

/// A keyed digest of the salt under `key`, for `purpose`.
inline void derive(const Secret& key, std::string_view purpose, std::span<const std::uint8_t, 32> salt,
                   std::span<std::uint8_t, 32> out) {
    std::vector<std::uint8_t> message(purpose.begin(), purpose.end());
    message.insert(message.end(), salt.begin(), salt.end());
    keyed_digest(key, message, out);
}

inline std::array<std::uint8_t, 8> key_id(const Secret& key, std::span<const std::uint8_t, 32> salt) {
    std::array<std::uint8_t, 32> digest{};
    derive(key, "instanttensor.v1 key id", salt, digest);
    std::array<std::uint8_t, 8> id{};
    std::copy_n(digest.begin(), id.size(), id.begin());
    return id;
}

#endif

}  // namespace instanttensor::detail

namespace instanttensor::format {

inline std::string_view cipher_name(Cipher cipher) {
    return cipher == Cipher::aes_256_gcm ? "aes-256-gcm" : "xchacha20-poly1305";
}

inline Cipher parse_cipher(std::string_view name, std::string_view source) {
    for (Cipher c : {Cipher::aes_256_gcm, Cipher::xchacha20_poly1305})
        if (name == cipher_name(c)) return c;
    throw format_error(std::string(source), "unknown cipher " + detail::quote_name(name) + " (aes-256-gcm or xchacha20-poly1305)");
}

inline bool is_encrypted(const Header& header) {
    for (std::string_view key : encryption_keys)
        if (header.metadata.contains(key)) return true;
    return false;
}

inline std::uint64_t Encryption::number_chunks(const Header& header) {
    first_chunk.clear();
    first_chunk.reserve(header.tensors.size());
    std::uint64_t chunks = 0;
    for (const TensorInfo& t : header.tensors) {
        first_chunk.push_back(chunks);
        chunks += chunks_of(t.nbytes());  // no overflow: the data section is at most a file's size
    }
    return chunks;
}

inline std::optional<Encryption> Encryption::of(const Header& header, std::string_view source) {
    if (!is_encrypted(header)) return std::nullopt;
    const std::string file(source);
    auto entry = [&](std::string_view key) -> const std::string& {
        const auto it = header.metadata.find(key);
        if (it == header.metadata.end())
            throw format_error(file, "is encrypted but its __metadata__ lacks \"" + std::string(key) + "\"");
        return it->second;
    };
    auto malformed = [&](std::string_view key, std::string_view what) {
        return format_error(file, "__metadata__ \"" + std::string(key) + "\" is not " + std::string(what));
    };

    Encryption e;
    e.cipher = parse_cipher(entry(cipher_key), file);
    const std::string& chunk = entry(chunk_bytes_key);
    const auto [end, ec] = std::from_chars(chunk.data(), chunk.data() + chunk.size(), e.chunk_bytes);
    if (ec != std::errc{} || end != chunk.data() + chunk.size() || chunk.empty() || chunk[0] == '0' || !valid_chunk_bytes(e.chunk_bytes))
        throw malformed(chunk_bytes_key, "a power of two from 4096 to 67108864 (decimal)");
    if (!detail::parse_hex(entry(salt_key), e.salt)) throw malformed(salt_key, "64 lowercase hex digits");
    if (!detail::parse_hex(entry(key_id_key), e.key_id)) throw malformed(key_id_key, "16 lowercase hex digits");

    const std::uint64_t chunks = e.number_chunks(header);
    const std::string& tags = entry(tags_key);
    if (tags.size() != 2 * detail::tag_bytes * chunks)
        throw format_error(file, "__metadata__ \"" + std::string(tags_key) + "\" holds " + std::to_string(tags.size()) +
                                     " hex digits; its " + std::to_string(chunks) + " chunks of " + std::to_string(e.chunk_bytes) +
                                     " bytes need " + std::to_string(2 * detail::tag_bytes * chunks));
    e.tags.resize(detail::tag_bytes * chunks);
    if (!detail::parse_hex(tags, e.tags)) throw malformed(tags_key, "lowercase hex digits");
    return e;
}

inline Metadata Encryption::metadata(const Metadata& plain) const {
    Metadata m = plain;
    m.insert_or_assign(std::string(cipher_key), std::string(cipher_name(cipher)));
    m.insert_or_assign(std::string(chunk_bytes_key), std::to_string(chunk_bytes));
    m.insert_or_assign(std::string(salt_key), detail::hex_of(salt));
    m.insert_or_assign(std::string(key_id_key), detail::hex_of(key_id));
    m.insert_or_assign(std::string(tags_key), detail::hex_of(tags));
    return m;
}

inline Metadata plain_metadata(const Metadata& metadata) {
    Metadata plain = metadata;
    for (std::string_view key : encryption_keys) {
        const auto it = plain.find(key);
        if (it != plain.end()) plain.erase(it);
    }
    return plain;
}

inline std::vector<std::uint8_t> header_digest_input(const Header& header) {
    std::vector<std::uint8_t> out;
    detail::append_field(out, "instanttensor.v1 header");
    detail::append_u64(out, header.tensors.size());
    for (const TensorInfo& t : header.tensors) {
        detail::append_field(out, t.name);
        detail::append_field(out, to_string(t.dtype));
        detail::append_u64(out, t.shape.size());
        for (std::uint64_t d : t.shape) detail::append_u64(out, d);
        detail::append_u64(out, t.begin);
        detail::append_u64(out, t.end);
    }
    detail::append_u64(out, header.metadata.size() - (header.metadata.contains(tags_key) ? 1 : 0));
    for (const auto& [key, value] : header.metadata) {
        if (key == tags_key) continue;
        detail::append_field(out, key);
        detail::append_field(out, value);
    }
    return out;
}

#if INSTANTTENSOR_HAS_CRYPTO

inline Key Key::generate() {
    Key key;
    detail::random_bytes(key.secret_.bytes());
    return key;
}

inline Key Key::parse(std::string_view text, std::string_view source) {
    if (text.ends_with('\n')) text.remove_suffix(1);
    Key key;
    if (!detail::parse_hex(text, key.secret_.bytes()))
        throw format_error(std::string(source), "does not hold a key: 64 lowercase hex digits (instanttensor keygen writes one)");
    return key;
}

inline Key Key::read(const std::filesystem::path& path) {
    const std::string source = path.string();
    const auto fd = detail::open_read_only(path);
    // Read to its end rather than by its size, so that a pipe serves too (--key-file <(vault read ...)).
    std::array<char, 2 * detail::key_bytes + 2> text{};  // one byte more than a key file holds
    std::size_t size = 0;
    while (size < text.size()) {
        const ssize_t n = ::read(fd.get(), text.data() + size, text.size() - size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw io_error(source, "cannot read", errno);
        if (n == 0) break;
        size += static_cast<std::size_t>(n);
    }
    struct Wipe {
        std::array<char, 2 * detail::key_bytes + 2>& text;
        ~Wipe() { sodium_memzero(text.data(), text.size()); }
    } wipe{text};
    return parse({text.data(), size}, source);
}

inline Key Key::from_environment(const std::string& name) {
    const char* value = std::getenv(name.c_str());
    if (!value) throw usage_error("environment variable " + name, "is not set: it should hold the key");
    return parse(value, "environment variable " + name);
}

inline std::string Key::text() const { return detail::hex_of(secret_.bytes()) + "\n"; }

inline FileCipher::FileCipher(const Header& header, const Encryption& encryption, const Key& key, std::string_view source)
    : FileCipher(header, encryption) {
    if (detail::key_id(key.secret(), encryption.salt) != encryption.key_id)
        throw integrity_error(std::string(source), "was encrypted with another key than the one given (or its salt or key id were changed)");
    derive(key, header);
}

inline void FileCipher::derive(const Key& key, const Header& digested) {
    detail::derive(key.secret(), "instanttensor.v1 file key", encryption_->salt, file_key_.bytes());
    header_digest_ = detail::sha256(header_digest_input(digested));
}

inline FileCipher FileCipher::create(const Header& plain, Encryption& encryption, const Key& key) {
    detail::random_bytes(encryption.salt);
    encryption.key_id = detail::key_id(key.secret(), encryption.salt);
    encryption.tags.assign(detail::tag_bytes * encryption.number_chunks(plain), 0);
    // The digest covers the encrypted file's header: the plain one with the keys (but the tags).
    Header encrypted = plain;
    encrypted.metadata = encryption.metadata(plain.metadata);
    FileCipher cipher(plain, encryption);
    cipher.derive(key, encrypted);
    return cipher;
}

inline std::vector<std::uint8_t> FileCipher::associated(std::size_t tensor, std::uint64_t chunk) const {
    std::vector<std::uint8_t> ad(header_digest_.begin(), header_digest_.end());
    detail::append_u64(ad, chunk);
    detail::append_field(ad, header_->tensors[tensor].name);
    return ad;
}

inline void FileCipher::seal(detail::Aead& aead, std::size_t tensor, std::uint64_t chunk, std::span<std::byte> bytes,
                             std::span<std::uint8_t, detail::tag_bytes> tag) const {
    aead.seal(file_key_, encryption_->first_chunk[tensor] + chunk, associated(tensor, chunk), bytes, tag);
}

inline bool FileCipher::open(detail::Aead& aead, std::size_t tensor, std::uint64_t chunk, std::span<std::byte> bytes) const {
    const std::uint64_t index = encryption_->first_chunk[tensor] + chunk;
    return aead.open(file_key_, index, associated(tensor, chunk), bytes, encryption_->tag(index));
}

inline Cipher preferred_cipher() {
    detail::ensure_sodium();
#if defined(__aarch64__)
    if (::getauxval(AT_HWCAP) & HWCAP_AES) return Cipher::aes_256_gcm;
#endif
    return sodium_runtime_has_aesni() ? Cipher::aes_256_gcm : Cipher::xchacha20_poly1305;
}

inline void encrypt_file(const std::filesystem::path& in, const std::filesystem::path& out, const Key& key,
                         const EncryptOptions& options) {
    const std::string source = in.string(), target = out.string();
    const auto input = detail::open_read_only(in);
    const Header header = detail::read_header(input.get(), detail::regular_file_size(input.get(), source), source);
    if (is_encrypted(header)) throw usage_error(source, "is encrypted already");
    if (!valid_chunk_bytes(options.chunk_bytes))
        throw usage_error("encrypt", "the chunk size must be a power of two from 4096 to 67108864 bytes");

    Encryption encryption;
    encryption.cipher = options.cipher;
    encryption.chunk_bytes = options.chunk_bytes;
    const FileCipher cipher = FileCipher::create(header, encryption, key);
    // The tags are known once every chunk is encrypted; their hex takes as many bytes either way,
    // so the header is written first with zero tags, and again at the end.
    write_new_file(out, header_json(header, encryption.metadata(header.metadata)), header.data_size, [&](int fd, std::uint64_t data_offset) {
        detail::Aead aead(options.cipher);
        std::vector<std::byte> chunk(options.chunk_bytes);
        struct Wipe {
            std::vector<std::byte>& plaintext;
            ~Wipe() { sodium_memzero(plaintext.data(), plaintext.size()); }
        } wipe{chunk};
        std::uint64_t done = 0;
        for (std::size_t t = 0; t < header.tensors.size(); ++t) {
            const TensorInfo& info = header.tensors[t];
            for (std::uint64_t k = 0, at = 0; at < info.nbytes(); ++k, at += options.chunk_bytes) {
                const std::span<std::byte> bytes(chunk.data(), std::min(options.chunk_bytes, info.nbytes() - at));
                detail::read_exact(input.get(), bytes, header.data_offset() + info.begin + at, source);
                const std::uint64_t index = encryption.first_chunk[t] + k;
                cipher.seal(aead, t, k, bytes, std::span<std::uint8_t, detail::tag_bytes>(
                                                    encryption.tags.data() + index * detail::tag_bytes, detail::tag_bytes));
                write_at(fd, bytes, data_offset + info.begin + at, target);
                done += bytes.size();
                if (options.progress) options.progress(done);
            }
        }
        const std::string json = header_json(header, encryption.metadata(header.metadata));
        write_at(fd, std::as_bytes(std::span(json)), header_length_size, target);
    });
}

#endif  // INSTANTTENSOR_HAS_CRYPTO

}  // namespace instanttensor::format
