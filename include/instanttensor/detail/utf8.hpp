// instanttensor/detail/utf8.hpp: well-formed UTF-8, as safetensors headers must be.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace instanttensor::detail {

/// Offset of the first byte of `s` that does not start a well-formed UTF-8 sequence (an overlong
/// form, a surrogate, a code point past U+10FFFF, a stray or truncated continuation), or npos.
inline std::size_t first_invalid_utf8(std::string_view s) noexcept {
    std::size_t i = 0;
    while (i < s.size()) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c < 0x80) {
            ++i;
            continue;
        }
        const std::size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (len == 0 || s.size() - i < len) return i;
        std::uint32_t cp = c & (0x7fu >> len);
        for (std::size_t k = 1; k < len; ++k) {
            const auto cc = static_cast<unsigned char>(s[i + k]);
            if ((cc & 0xc0) != 0x80) return i;
            cp = (cp << 6) | (cc & 0x3fu);
        }
        if (len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) return i;
        if (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) return i;
        i += len;
    }
    return std::string_view::npos;
}

/// Whether `s` is well-formed UTF-8: a header holding anything else is refused by JSON readers,
/// ours and the reference's alike.
inline bool is_utf8(std::string_view s) noexcept { return first_invalid_utf8(s) == std::string_view::npos; }

}  // namespace instanttensor::detail
