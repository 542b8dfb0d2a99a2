// instanttensor/format/dtype.hpp: the element types of safetensors files.
//
// Every dtype of the Hugging Face reference implementation (safetensors 0.8), spelled as in the
// file. Sub-byte types (F4 = 4 bits, F6_* = 6 bits) are packed; as in the reference, a tensor's
// byte size is elements × bits / 8, and a tensor whose bit count is not a whole number of bytes is
// invalid.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace instanttensor::format {

/// Element type of a tensor. Enumerators are the names used in safetensors headers.
enum class Dtype : std::uint8_t {
    BOOL,
    F4,
    F6_E2M3,
    F6_E3M2,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    F8_E4M3FNUZ,
    F8_E5M2FNUZ,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
};

}  // namespace instanttensor::format

namespace instanttensor::detail {

using format::Dtype;

struct DtypeTraits {
    Dtype dtype;
    std::string_view name;
    std::uint8_t bits;
};

inline constexpr std::array<DtypeTraits, 22> dtype_table{{
    {Dtype::BOOL, "BOOL", 8},
    {Dtype::F4, "F4", 4},
    {Dtype::F6_E2M3, "F6_E2M3", 6},
    {Dtype::F6_E3M2, "F6_E3M2", 6},
    {Dtype::U8, "U8", 8},
    {Dtype::I8, "I8", 8},
    {Dtype::F8_E5M2, "F8_E5M2", 8},
    {Dtype::F8_E4M3, "F8_E4M3", 8},
    {Dtype::F8_E8M0, "F8_E8M0", 8},
    {Dtype::F8_E4M3FNUZ, "F8_E4M3FNUZ", 8},
    {Dtype::F8_E5M2FNUZ, "F8_E5M2FNUZ", 8},
    {Dtype::I16, "I16", 16},
    {Dtype::U16, "U16", 16},
    {Dtype::F16, "F16", 16},
    {Dtype::BF16, "BF16", 16},
    {Dtype::I32, "I32", 32},
    {Dtype::U32, "U32", 32},
    {Dtype::F32, "F32", 32},
    {Dtype::C64, "C64", 64},
    {Dtype::F64, "F64", 64},
    {Dtype::I64, "I64", 64},
    {Dtype::U64, "U64", 64},
}};

constexpr bool table_is_in_enum_order() {
    for (std::size_t i = 0; i < dtype_table.size(); ++i)
        if (static_cast<std::size_t>(dtype_table[i].dtype) != i) return false;
    return true;
}
static_assert(table_is_in_enum_order(), "dtype_table must list Dtype enumerators in order");

}  // namespace instanttensor::detail

namespace instanttensor::format {

/// Every dtype, in enumeration order.
inline constexpr auto all_dtypes = [] {
    std::array<Dtype, detail::dtype_table.size()> all{};
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = detail::dtype_table[i].dtype;
    return all;
}();

/// The name used in safetensors headers ("BF16", "F8_E4M3", ...).
constexpr std::string_view to_string(Dtype d) noexcept {
    return detail::dtype_table[static_cast<std::size_t>(d)].name;
}

/// Bits per element: 4 for F4, 6 for F6_*, 8 to 64 for the others.
constexpr unsigned bit_size(Dtype d) noexcept {
    return detail::dtype_table[static_cast<std::size_t>(d)].bits;
}

/// The dtype a header names, or nullopt for an unknown name (names are case-sensitive).
constexpr std::optional<Dtype> parse_dtype(std::string_view name) noexcept {
    for (const auto& t : detail::dtype_table)
        if (t.name == name) return t.dtype;
    return std::nullopt;
}

/// Number of elements of a shape (1 for a scalar), or nullopt if it overflows 64 bits.
constexpr std::optional<std::uint64_t> element_count(std::span<const std::uint64_t> shape) noexcept {
    std::uint64_t n = 1;
    for (std::uint64_t dim : shape)
        if (__builtin_mul_overflow(n, dim, &n)) return std::nullopt;
    return n;
}

/// Bytes a tensor of this dtype and shape occupies, or nullopt when the size overflows 64 bits or
/// is not a whole number of bytes (possible only for sub-byte dtypes).
constexpr std::optional<std::uint64_t> byte_size(Dtype d, std::span<const std::uint64_t> shape) noexcept {
    auto n = element_count(shape);
    std::uint64_t bits = 0;
    if (!n || __builtin_mul_overflow(*n, std::uint64_t{bit_size(d)}, &bits)) return std::nullopt;
    if (bits % 8 != 0) return std::nullopt;
    return bits / 8;
}

}  // namespace instanttensor::format
