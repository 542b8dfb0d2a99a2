// instanttensor/detail/aead.hpp: the cryptography of encrypted checkpoints (format/encryption.hpp):
// authenticated encryption of one chunk, keyed digests, SHA-256 (of headers, and of whole files for
// LoadOptions::verify_files), random bytes, and memory for secrets.
//
// The bulk ciphers are OpenSSL's (AES-256-GCM runs on AES-NI or ARMv8's AES instructions, and in
// software elsewhere; ChaCha20-Poly1305 on SIMD): several GB/s per core, four times libsodium's.
// XChaCha20-Poly1305 is built as its specification says (draft-irtf-cfrg-xchacha): HChaCha20
// (libsodium's) turns the key and the first 16 bytes of the 24-byte nonce into a subkey, and
// ChaCha20-Poly1305 runs under it with the last 8 bytes; tests check it against libsodium's own.
// Secrets live in Secret, locked out of swap where the system allows and wiped when freed.
// Without libsodium and OpenSSL (INSTANTTENSOR_HAS_CRYPTO=0) only the names below are declared.
#pragma once

#include <cstddef>
#include <cstdint>

#include "instanttensor/config.hpp"
#include "instanttensor/error.hpp"

namespace instanttensor::detail {

inline constexpr std::size_t key_bytes = 32;
inline constexpr std::size_t tag_bytes = 16;

enum class Cipher : std::uint8_t { aes_256_gcm, xchacha20_poly1305 };

}  // namespace instanttensor::detail

#if INSTANTTENSOR_HAS_CRYPTO

#include <array>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include <openssl/evp.h>
#include <sodium.h>

namespace instanttensor::detail {

/// Calls sodium_init() once (thread-safe; libsodium's randomness needs it).
inline void ensure_sodium() {
    static const bool ready = sodium_init() >= 0;
    if (!ready) throw unavailable_error("libsodium", "cannot be initialised (sodium_init failed)");
}

/// 32 secret bytes: locked out of swap where the system allows it, wiped when destroyed.
class Secret {
public:
    Secret() noexcept { sodium_mlock(bytes_.data(), bytes_.size()); }
    Secret(const Secret& other) noexcept : Secret() { bytes_ = other.bytes_; }
    Secret& operator=(const Secret& other) noexcept {
        bytes_ = other.bytes_;
        return *this;
    }
    ~Secret() { sodium_munlock(bytes_.data(), bytes_.size()); }  // wipes, then unlocks

    [[nodiscard]] std::span<std::uint8_t, key_bytes> bytes() noexcept { return bytes_; }
    [[nodiscard]] std::span<const std::uint8_t, key_bytes> bytes() const noexcept { return bytes_; }

private:
    std::array<std::uint8_t, key_bytes> bytes_{};
};

/// Fills `out` with bytes from the system's random source.
inline void random_bytes(std::span<std::uint8_t> out) {
    ensure_sodium();
    randombytes_buf(out.data(), out.size());
}

/// BLAKE2b-256 of `message` keyed with `key`: a pseudo-random function of the key.
inline void keyed_digest(const Secret& key, std::span<const std::uint8_t> message, std::span<std::uint8_t, 32> out) {
    crypto_generichash(out.data(), out.size(), message.data(), message.size(), key.bytes().data(), key.bytes().size());
}

/// SHA-256 over bytes given piece by piece. Not thread-safe: one thread updates it at a time.
class Sha256 {
public:
    Sha256() : context_(EVP_MD_CTX_new()) {
        if (!context_ || EVP_DigestInit_ex(context_, EVP_sha256(), nullptr) != 1) {
            EVP_MD_CTX_free(context_);
            throw unavailable_error("OpenSSL", "cannot start a SHA-256 (EVP_DigestInit_ex failed)");
        }
    }
    Sha256(Sha256&& other) noexcept : context_(std::exchange(other.context_, nullptr)) {}
    Sha256& operator=(Sha256&&) = delete;
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;
    ~Sha256() { EVP_MD_CTX_free(context_); }

    void update(std::span<const std::byte> bytes) {
        if (EVP_DigestUpdate(context_, bytes.data(), bytes.size()) != 1) throw unavailable_error("OpenSSL", "its SHA-256 failed");
    }
    /// The digest of everything given; the state is spent.
    std::array<std::uint8_t, 32> digest() {
        std::array<std::uint8_t, 32> out{};
        unsigned size = 0;
        if (EVP_DigestFinal_ex(context_, out.data(), &size) != 1) throw unavailable_error("OpenSSL", "its SHA-256 failed");
        return out;
    }

private:
    EVP_MD_CTX* context_ = nullptr;
};

/// SHA-256 of `message`.
inline std::array<std::uint8_t, 32> sha256(std::span<const std::uint8_t> message) {
    Sha256 state;
    state.update(std::as_bytes(message));
    return state.digest();
}

/// Encrypts and decrypts chunks under one cipher. Not thread-safe: one per thread.
class Aead {
public:
    explicit Aead(Cipher cipher) : cipher_(cipher), context_(EVP_CIPHER_CTX_new()) {
        if (!context_) throw unavailable_error("OpenSSL", "cannot make a cipher context (EVP_CIPHER_CTX_new failed)");
        // Fetched once: EVP_aes_256_gcm() and friends would look the cipher up on every init.
        static const auto fetch = [](const char* name) {
            EVP_CIPHER* c = EVP_CIPHER_fetch(nullptr, name, nullptr);
            if (!c) throw unavailable_error("OpenSSL", std::string("provides no ") + name);
            return c;
        };
        static EVP_CIPHER* const gcm = fetch("AES-256-GCM");
        static EVP_CIPHER* const chacha = fetch("ChaCha20-Poly1305");
        algorithm_ = cipher == Cipher::aes_256_gcm ? gcm : chacha;
        ensure_sodium();
    }
    Aead(const Aead&) = delete;
    Aead& operator=(const Aead&) = delete;
    ~Aead() { EVP_CIPHER_CTX_free(context_); }

    [[nodiscard]] Cipher cipher() const noexcept { return cipher_; }

    /// Encrypts `bytes` in place under `key` and the chunk's `counter` (its nonce: never twice under
    /// one key), authenticating them and `associated`; writes the tag.
    void seal(const Secret& key, std::uint64_t counter, std::span<const std::uint8_t> associated, std::span<std::byte> bytes,
              std::span<std::uint8_t, tag_bytes> tag) {
        run(true, key, counter, associated, bytes, tag);
    }

    /// Decrypts `bytes` in place if `tag` authenticates them and `associated`; if not, wipes them
    /// (no byte of a forged chunk is left as plaintext) and returns false.
    [[nodiscard]] bool open(const Secret& key, std::uint64_t counter, std::span<const std::uint8_t> associated,
                            std::span<std::byte> bytes, std::span<const std::uint8_t, tag_bytes> tag) {
        std::array<std::uint8_t, tag_bytes> copy{};
        std::memcpy(copy.data(), tag.data(), tag_bytes);
        if (run(false, key, counter, associated, bytes, copy)) return true;
        sodium_memzero(bytes.data(), bytes.size());
        return false;
    }

private:
    /// One AEAD operation; false when decryption found the tag wrong.
    bool run(bool encrypt, const Secret& key, std::uint64_t counter, std::span<const std::uint8_t> associated,
             std::span<std::byte> bytes, std::span<std::uint8_t, tag_bytes> tag) {
        // The 96-bit nonce: the counter, little-endian, then zeros. For XChaCha20-Poly1305 the
        // 192-bit nonce is the counter then 16 zero bytes: HChaCha20 derives the subkey from its
        // first 16 bytes and ChaCha20-Poly1305 takes four zero bytes and its last 8.
        std::array<std::uint8_t, 12> nonce{};
        for (int i = 0; i < 8; ++i) nonce[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(counter >> (8 * i));
        const std::uint8_t* run_key = key.bytes().data();
        if (cipher_ == Cipher::xchacha20_poly1305) {
            std::array<std::uint8_t, 16> head{};
            std::memcpy(head.data(), nonce.data(), 8);
            crypto_core_hchacha20(subkey_.bytes().data(), head.data(), key.bytes().data(), nullptr);
            run_key = subkey_.bytes().data();
            nonce.fill(0);  // the nonce's last 8 bytes, zero, after four zero bytes
        }
        auto check = [](int ok) {
            if (ok != 1) throw unavailable_error("OpenSSL", "its AEAD failed");
        };
        check(EVP_CipherInit_ex2(context_, algorithm_, run_key, nonce.data(), encrypt ? 1 : 0, nullptr));
        int written = 0;
        if (!associated.empty())
            check(EVP_CipherUpdate(context_, nullptr, &written, associated.data(), static_cast<int>(associated.size())));
        auto* data = reinterpret_cast<unsigned char*>(bytes.data());
        // At most 2^31 − 1 bytes per call: chunks are far smaller (format::max_chunk_bytes).
        if (!bytes.empty()) check(EVP_CipherUpdate(context_, data, &written, data, static_cast<int>(bytes.size())));
        if (encrypt) {
            check(EVP_CipherFinal_ex(context_, data + bytes.size(), &written));
            check(EVP_CIPHER_CTX_ctrl(context_, EVP_CTRL_AEAD_GET_TAG, tag_bytes, tag.data()));
            return true;
        }
        check(EVP_CIPHER_CTX_ctrl(context_, EVP_CTRL_AEAD_SET_TAG, tag_bytes, tag.data()));
        return EVP_CipherFinal_ex(context_, data + bytes.size(), &written) == 1;
    }

    Cipher cipher_;
    EVP_CIPHER_CTX* context_;
    const EVP_CIPHER* algorithm_ = nullptr;
    Secret subkey_;  // XChaCha20-Poly1305: the chunk's HChaCha20 subkey
};

}  // namespace instanttensor::detail

#endif  // INSTANTTENSOR_HAS_CRYPTO
