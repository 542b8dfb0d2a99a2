// instanttensor/detail/xxh3.hpp: XXH3-64, the digest of a tensor's bytes (format/digests.hpp),
// compiled into the includer from xxhash.h (Debian: libxxhash-dev), so nothing more is linked.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#if !defined(XXH_INLINE_ALL)
#  define XXH_INLINE_ALL
#endif
#include <xxhash.h>

namespace instanttensor::detail {

/// The XXH3-64 digest of `bytes` (seed 0), as `xxhsum -H3` computes it.
inline std::uint64_t xxh3(std::span<const std::byte> bytes) noexcept { return XXH3_64bits(bytes.data(), bytes.size()); }

/// XXH3-64 over bytes given in order, in several parts: the same digest as xxh3() of them all.
class Xxh3 {
public:
    Xxh3() noexcept { XXH3_64bits_reset(&state_); }
    void update(std::span<const std::byte> bytes) noexcept { XXH3_64bits_update(&state_, bytes.data(), bytes.size()); }
    [[nodiscard]] std::uint64_t digest() const noexcept { return XXH3_64bits_digest(&state_); }

private:
    XXH3_state_t state_;  // 576 bytes, aligned to 64
};

}  // namespace instanttensor::detail
