// The dtype table: names, bit sizes, byte sizes of shapes (sub-byte packing, overflow).
#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "support.hpp"

namespace fmt = instanttensor::format;
using fmt::Dtype;

namespace {

struct DtypeRow {
    Dtype dtype;
    const char* name;
    unsigned bits;
};

// Spelled out independently of the library's table: the names and sizes of safetensors 0.8.
constexpr std::array<DtypeRow, 22> expected_dtypes{{
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

std::optional<std::uint64_t> bytes_of(Dtype d, std::vector<std::uint64_t> shape) { return fmt::byte_size(d, shape); }

constexpr std::uint64_t u64_max = std::numeric_limits<std::uint64_t>::max();

}  // namespace

// The library's order is the reference's enum order, which is also the writer's sort key.
static_assert(fmt::all_dtypes.size() == 22);
static_assert(fmt::parse_dtype("F8_E4M3FNUZ") == Dtype::F8_E4M3FNUZ);
static_assert(fmt::to_string(Dtype::BF16) == "BF16");
static_assert(fmt::bit_size(Dtype::F6_E3M2) == 6);
static_assert(!fmt::parse_dtype("bf16").has_value());

TEST_CASE("dtype: every dtype of safetensors 0.8 with its name and bit size") {
    REQUIRE(fmt::all_dtypes.size() == expected_dtypes.size());
    for (std::size_t i = 0; i < expected_dtypes.size(); ++i) {
        const auto& row = expected_dtypes[i];
        CAPTURE(row.name);
        CHECK(fmt::all_dtypes[i] == row.dtype);
        CHECK(static_cast<std::size_t>(row.dtype) == i);
        CHECK(fmt::to_string(row.dtype) == row.name);
        CHECK(fmt::bit_size(row.dtype) == row.bits);
    }
}

TEST_CASE("dtype: parse_dtype and to_string round trip") {
    std::set<std::string_view> names;
    for (Dtype d : fmt::all_dtypes) {
        const auto name = fmt::to_string(d);
        CAPTURE(name);
        CHECK(names.insert(name).second);
        REQUIRE(fmt::parse_dtype(name).has_value());
        CHECK(*fmt::parse_dtype(name) == d);
    }
    CHECK(names.size() == 22);
}

TEST_CASE("dtype: parse_dtype refuses unknown, lowercase and framework names") {
    for (const char* bad : {"", "f32", "Bf16", "bool", "F128", "F8", "F6", "F4_E2M1", "float32", "torch.float16",
                            "F32 ", " F32", "F32\n", "U128", "C128", "F8_E4M3FN", "UINT8"}) {
        CAPTURE(bad);
        CHECK_FALSE(fmt::parse_dtype(bad).has_value());
    }
    CHECK_FALSE(fmt::parse_dtype(std::string_view("F32\0", 4)).has_value());
}

TEST_CASE("dtype: element_count") {
    CHECK(fmt::element_count(std::vector<std::uint64_t>{}) == 1u);  // a scalar
    CHECK(fmt::element_count(std::vector<std::uint64_t>{0}) == 0u);
    CHECK(fmt::element_count(std::vector<std::uint64_t>{2, 3, 4}) == 24u);
    CHECK(fmt::element_count(std::vector<std::uint64_t>{u64_max}) == u64_max);
    CHECK(fmt::element_count(std::vector<std::uint64_t>{1ull << 32, 1ull << 32}) == std::nullopt);
    CHECK(fmt::element_count(std::vector<std::uint64_t>{0, u64_max, u64_max}) == 0u);
    // As in the reference, the product is taken left to right: an overflow before a 0 is an overflow.
    CHECK(fmt::element_count(std::vector<std::uint64_t>{u64_max, 2, 0}) == std::nullopt);
}

TEST_CASE("dtype: byte_size of whole-byte dtypes") {
    for (const auto& row : expected_dtypes) {
        if (row.bits % 8 != 0) continue;
        CAPTURE(row.name);
        const std::uint64_t w = row.bits / 8;
        CHECK(bytes_of(row.dtype, {}) == w);
        CHECK(bytes_of(row.dtype, {0}) == 0u);
        CHECK(bytes_of(row.dtype, {3}) == 3 * w);
        CHECK(bytes_of(row.dtype, {2, 0, 5}) == 0u);
        CHECK(bytes_of(row.dtype, {2, 3, 5}) == 30 * w);
    }
}

TEST_CASE("dtype: byte_size of sub-byte dtypes") {
    CHECK(bytes_of(Dtype::F4, {4}) == 2u);
    CHECK(bytes_of(Dtype::F4, {2}) == 1u);
    CHECK(bytes_of(Dtype::F4, {3}) == std::nullopt);
    CHECK(bytes_of(Dtype::F4, {1}) == std::nullopt);
    CHECK(bytes_of(Dtype::F4, {}) == std::nullopt);  // a scalar F4 is half a byte
    CHECK(bytes_of(Dtype::F4, {3, 2}) == 3u);
    CHECK(bytes_of(Dtype::F4, {0}) == 0u);
    CHECK(bytes_of(Dtype::F4, {0, 3}) == 0u);
    for (Dtype f6 : {Dtype::F6_E2M3, Dtype::F6_E3M2}) {
        CAPTURE(fmt::to_string(f6));
        CHECK(bytes_of(f6, {4}) == 3u);
        CHECK(bytes_of(f6, {8}) == 6u);
        CHECK(bytes_of(f6, {2, 2}) == 3u);
        CHECK(bytes_of(f6, {4, 3}) == 9u);
        CHECK(bytes_of(f6, {2}) == std::nullopt);
        CHECK(bytes_of(f6, {5}) == std::nullopt);
        CHECK(bytes_of(f6, {}) == std::nullopt);
        CHECK(bytes_of(f6, {0}) == 0u);
    }
}

TEST_CASE("dtype: byte_size overflow is nullopt") {
    // As in the reference, the size is computed in bits: a shape whose bit count overflows 64 bits
    // is refused even where its byte count would fit.
    CHECK(bytes_of(Dtype::U8, {u64_max}) == std::nullopt);
    CHECK(bytes_of(Dtype::U8, {1ull << 61}) == std::nullopt);
    CHECK(bytes_of(Dtype::U8, {(1ull << 61) - 1}) == (1ull << 61) - 1);
    CHECK(bytes_of(Dtype::U16, {u64_max}) == std::nullopt);
    CHECK(bytes_of(Dtype::F32, {1ull << 59}) == std::nullopt);
    CHECK(bytes_of(Dtype::F32, {(1ull << 59) - 1}) == ((1ull << 59) - 1) * 4);
    CHECK(bytes_of(Dtype::F32, {1ull << 62}) == std::nullopt);              // elements fit, bits do not
    CHECK(bytes_of(Dtype::U64, {1ull << 32, 1ull << 32}) == std::nullopt);  // elements overflow
    CHECK(bytes_of(Dtype::F4, {u64_max - 1}) == std::nullopt);
    CHECK(bytes_of(Dtype::F4, {1ull << 61}) == 1ull << 60);                 // 2^63 bits fit
    CHECK(bytes_of(Dtype::F6_E2M3, {1ull << 61}) == 3ull << 59);            // 3 × 2^62 bits fit
    CHECK(bytes_of(Dtype::F6_E2M3, {1ull << 62}) == std::nullopt);          // 3 × 2^63 bits do not
    CHECK(bytes_of(Dtype::BOOL, {0, u64_max, u64_max}) == 0u);
}
