// instanttensor/format/encryption.hpp: encrypted checkpoints: what their headers say, how their
// tensors are cut into chunks, what each chunk's tag authenticates; with libsodium and OpenSSL
// (INSTANTTENSOR_HAS_CRYPTO), keys and the encryption of chunks. docs/integrity.md shows the layout
// and the threat model.
//
// An encrypted file is a valid safetensors file: its header is in clear, with the same tensors
// (names, dtypes, shapes, offsets) as the plain file, and its tensors' bytes are ciphertext of the
// same size. Each tensor is cut into chunks of `chunk_bytes` (the last one shorter), each encrypted
// with an AEAD (AES-256-GCM or XChaCha20-Poly1305). Five keys of "__metadata__" describe it:
//
//   instanttensor.cipher       "aes-256-gcm" or "xchacha20-poly1305"
//   instanttensor.chunk_bytes  decimal, a power of two from 4 KiB to 64 MiB
//   instanttensor.salt         64 hex digits: 32 random bytes drawn for this file
//   instanttensor.key_id       16 hex digits: tells a wrong key apart from changed bytes
//   instanttensor.tags         32 hex digits (16 bytes) per chunk, chunks in file order
//
// Under a key K, the file is encrypted with its own key: BLAKE2b-256 keyed with K over
// "instanttensor.v1 file key" and the salt, so that no two files share one. A chunk's nonce is its
// index among the file's chunks (tensors in file order), and its associated data binds the header
// digest (SHA-256 of everything in the header but the tags: every tensor's name, dtype, shape and
// offsets, and every metadata entry, these keys included), the chunk's index within its tensor and
// the tensor's name. A changed header, and a chunk moved, swapped, replayed from another place or
// another file, or cut short, fails authentication.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "instanttensor/config.hpp"
#include "instanttensor/detail/aead.hpp"
#include "instanttensor/format/header.hpp"
#include "instanttensor/format/writer.hpp"

namespace instanttensor::format {

inline constexpr std::string_view cipher_key = "instanttensor.cipher";
inline constexpr std::string_view chunk_bytes_key = "instanttensor.chunk_bytes";
inline constexpr std::string_view salt_key = "instanttensor.salt";
inline constexpr std::string_view key_id_key = "instanttensor.key_id";
inline constexpr std::string_view tags_key = "instanttensor.tags";
/// All five, as an encrypted file's "__metadata__" holds them.
inline constexpr std::string_view encryption_keys[] = {cipher_key, chunk_bytes_key, salt_key, key_id_key, tags_key};

inline constexpr std::uint64_t default_chunk_bytes = 1ull << 20;
inline constexpr std::uint64_t min_chunk_bytes = 4096;
inline constexpr std::uint64_t max_chunk_bytes = 64ull << 20;

/// Whether `bytes` may be a chunk size: a power of two from min_chunk_bytes to max_chunk_bytes.
constexpr bool valid_chunk_bytes(std::uint64_t bytes) {
    return bytes >= min_chunk_bytes && bytes <= max_chunk_bytes && (bytes & (bytes - 1)) == 0;
}

using detail::Cipher;

/// "aes-256-gcm" or "xchacha20-poly1305".
std::string_view cipher_name(Cipher cipher);
/// The cipher named so; format_error naming `source` otherwise.
Cipher parse_cipher(std::string_view name, std::string_view source);

/// Whether `header` says its file is encrypted (holds any of the keys above).
bool is_encrypted(const Header& header);

/// The encryption of one file, as its header describes it.
struct Encryption {
    Cipher cipher{};
    std::uint64_t chunk_bytes = default_chunk_bytes;
    std::array<std::uint8_t, 32> salt{};
    std::array<std::uint8_t, 8> key_id{};
    std::vector<std::uint8_t> tags;         ///< detail::tag_bytes per chunk, in file order
    std::vector<std::uint64_t> first_chunk; ///< per tensor of the header (offset order): its first chunk's index

    /// What `header` describes; nullopt for a file that is not encrypted. A format_error naming
    /// `source` when only some keys are there, one is malformed, or the tags do not number the
    /// file's chunks.
    static std::optional<Encryption> of(const Header& header, std::string_view source);

    /// Numbers the chunks of `header`'s tensors in file order (first_chunk); returns how many there are.
    std::uint64_t number_chunks(const Header& header);
    /// Chunks of a tensor of `nbytes`.
    [[nodiscard]] std::uint64_t chunks_of(std::uint64_t nbytes) const noexcept { return (nbytes + chunk_bytes - 1) / chunk_bytes; }
    /// The tag of chunk `index` (in file order).
    [[nodiscard]] std::span<const std::uint8_t, detail::tag_bytes> tag(std::uint64_t index) const {
        return std::span<const std::uint8_t, detail::tag_bytes>(tags.data() + index * detail::tag_bytes, detail::tag_bytes);
    }
    /// "__metadata__" of the encrypted file: `plain` and the five keys.
    [[nodiscard]] Metadata metadata(const Metadata& plain) const;
};

/// `metadata` without the keys above: the metadata of the file decrypted.
Metadata plain_metadata(const Metadata& metadata);

/// The bytes the header digest covers: the tensors and metadata of `header` (tags left out), each
/// field length-prefixed so that no two headers give the same bytes.
std::vector<std::uint8_t> header_digest_input(const Header& header);

#if INSTANTTENSOR_HAS_CRYPTO

/// A 256-bit key, wiped from memory when destroyed. Never printed: messages name where it came
/// from, not what it is.
class Key {
public:
    /// A new random key.
    static Key generate();
    /// The key in `text`: 64 hex digits, then at most a newline. format_error naming `source`
    /// otherwise (without the text).
    static Key parse(std::string_view text, std::string_view source);
    /// The key in a file (as `instanttensor keygen` writes it). io_error, format_error.
    static Key read(const std::filesystem::path& path);
    /// The key in environment variable `name`. usage_error when unset, format_error when malformed.
    static Key from_environment(const std::string& name);

    /// 64 hex digits and a newline: a key file's contents (to write one; wipe it after).
    [[nodiscard]] std::string text() const;
    [[nodiscard]] const detail::Secret& secret() const noexcept { return secret_; }

private:
    Key() = default;
    detail::Secret secret_;
};

/// Encrypts and decrypts the chunks of one file under a key.
class FileCipher {
public:
    /// For the file `source` whose header is `header` and encryption `encryption`. An
    /// integrity_error when `key` is not the one it was encrypted with (or its salt was changed).
    FileCipher(const Header& header, const Encryption& encryption, const Key& key, std::string_view source);
    /// For encrypting a new file: draws its salt, sets its key id, and sizes its tags.
    static FileCipher create(const Header& plain, Encryption& encryption, const Key& key);

    /// Encrypts chunk `chunk` of tensor `tensor` (its index in the header) in place; writes its tag.
    void seal(detail::Aead& aead, std::size_t tensor, std::uint64_t chunk, std::span<std::byte> bytes,
              std::span<std::uint8_t, detail::tag_bytes> tag) const;
    /// Decrypts chunk `chunk` of tensor `tensor` in place: false (bytes wiped) when it fails authentication.
    [[nodiscard]] bool open(detail::Aead& aead, std::size_t tensor, std::uint64_t chunk, std::span<std::byte> bytes) const;

    [[nodiscard]] const Encryption& encryption() const noexcept { return *encryption_; }

private:
    FileCipher(const Header& header, const Encryption& encryption) : header_(&header), encryption_(&encryption) {}
    /// Derives the file key from `key` and the salt, and the header digest from `digested` (the
    /// encrypted file's header: `header_` but for the tags, which the digest leaves out).
    void derive(const Key& key, const Header& digested);
    /// The chunk's associated data: header digest, chunk index within its tensor, tensor name.
    std::vector<std::uint8_t> associated(std::size_t tensor, std::uint64_t chunk) const;

    const Header* header_;
    const Encryption* encryption_;
    detail::Secret file_key_;
    std::array<std::uint8_t, 32> header_digest_{};
};

/// The cipher files are encrypted with unless told: AES-256-GCM where the CPU has AES instructions
/// (AES-NI, ARMv8 AES), else XChaCha20-Poly1305, which runs faster without them.
Cipher preferred_cipher();

struct EncryptOptions {
    Cipher cipher = preferred_cipher();
    std::uint64_t chunk_bytes = default_chunk_bytes;   ///< a power of two from min_ to max_chunk_bytes
    std::function<void(std::uint64_t)> progress;       ///< called with the tensor bytes encrypted so far
};

/// Writes to `out` (which must not exist: io_error) the safetensors file `in` with its tensors
/// encrypted under `key`: the same header with the keys above added to its "__metadata__", the same
/// offsets, ciphertext of the same size. A file already encrypted is a usage_error; `out` is
/// removed if anything fails. Throws format_error, io_error, usage_error.
void encrypt_file(const std::filesystem::path& in, const std::filesystem::path& out, const Key& key,
                  const EncryptOptions& options = {});

#endif  // INSTANTTENSOR_HAS_CRYPTO

}  // namespace instanttensor::format

#include "instanttensor/format/detail/encryption.inl"
