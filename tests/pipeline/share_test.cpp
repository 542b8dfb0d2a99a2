// pipeline/share.hpp: what a Share keeps of a tensor in bytes and rows, split_rows partitions every
// tensor's rows for any group size (first dimensions near 2^64 included), and rows of packed dtypes
// that are not whole bytes are refused.
#include <doctest/doctest.h>

#include <cstdint>

#include "instanttensor/pipeline/share.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;
using it::Share;

}  // namespace

TEST_CASE("share: rows and bytes") {
    TempDir dir;
    const auto c = fmt::Checkpoint::open(write_file(dir / "s.safetensors",
                                                    {{"m", fmt::Dtype::F32, {10, 3}}, {"s", fmt::Dtype::F64, {}}, {"e", fmt::Dtype::U8, {0, 4}}}));
    const auto& m = *c.find("m");
    const auto& scalar = *c.find("s");
    const auto& empty = *c.find("e");
    CHECK(it::kept_bytes(m, Share::whole()).size() == 120);
    CHECK_FALSE(it::kept_bytes(m, Share::none()).kept);
    const auto k = it::kept_bytes(m, Share::row_range(2, 5));
    CHECK(k.begin == 24);
    CHECK(k.end == 84);
    CHECK(k.rows == 5);
    CHECK(it::kept_bytes(m, Share::row_range(10, 0)).size() == 0);
    CHECK_THROWS_AS(it::kept_bytes(m, Share::row_range(8, 3)), std::invalid_argument);
    CHECK_THROWS_AS(it::kept_bytes(m, Share::row_range(11, 0)), std::invalid_argument);
    CHECK_THROWS_AS(it::kept_bytes(scalar, Share::row_range(0, 1)), std::invalid_argument);
    CHECK(it::kept_bytes(scalar, Share::whole()).size() == 8);
    CHECK(it::kept_bytes(empty, Share::whole()).size() == 0);

    // split_rows: rows [r·R/n, (r+1)·R/n), a partition of all rows for every n; scalars whole.
    const auto split = it::split_rows({});
    for (int n = 1; n <= 12; ++n) {
        std::uint64_t next = 0;
        for (int r = 0; r < n; ++r) {
            const Share s = split(m, r, n);
            CHECK(s.first_row == next);
            next += s.rows;
            CHECK(split(scalar, r, n).rows == Share::all_rows);
        }
        CHECK(next == 10);
    }
    const auto only_s = it::split_rows([](const fmt::TensorRef& t) { return t.name() == "s"; });
    CHECK(only_s(m, 1, 4).rows == Share::all_rows);  // not selected: whole

    // all_rows from a first row: to the last one.
    const auto tail = it::kept_bytes(m, {true, 7, Share::all_rows});
    CHECK(tail.rows == 3);
    CHECK(tail.begin == 84);
    CHECK(tail.end == 120);
    CHECK_THROWS_AS(it::kept_bytes(m, {true, 11, Share::all_rows}), std::invalid_argument);
}

TEST_CASE("share: rows of packed dtypes, and first dimensions near 2^64") {
    TempDir dir;
    const auto c = fmt::Checkpoint::open(write_file(dir / "p.safetensors", {{"odd", fmt::Dtype::F4, {2, 3}},
                                                                             {"even", fmt::Dtype::F4, {2, 4}},
                                                                             {"six", fmt::Dtype::F6_E2M3, {4, 4}},
                                                                             {"huge", fmt::Dtype::U8, {std::uint64_t{1} << 62, 0}}}));
    // 3 bytes in 2 rows of 1.5 bytes: a row is not a byte range; whole is fine.
    CHECK_THROWS_AS(it::kept_bytes(*c.find("odd"), Share::row_range(0, 1)), std::invalid_argument);
    CHECK_THROWS_AS(it::kept_bytes(*c.find("odd"), it::split_rows({})(*c.find("odd"), 0, 2)), std::invalid_argument);
    CHECK(it::kept_bytes(*c.find("odd"), Share::whole()).size() == 3);
    const auto even = it::kept_bytes(*c.find("even"), Share::row_range(1, 1));
    CHECK(even.begin == 2);
    CHECK(even.end == 4);
    const auto six = it::kept_bytes(*c.find("six"), Share::row_range(1, 2));  // 4 × 6 bits = 3 bytes a row
    CHECK(six.begin == 3);
    CHECK(six.end == 9);

    // split_rows of 2^62 rows: the ranks' rows partition them, without overflowing rows · rank.
    const auto& huge = *c.find("huge");
    for (int n : {3, 8, 4096}) {
        std::uint64_t next = 0;
        for (int r = 0; r < n; ++r) {
            const Share s = it::split_rows({})(huge, r, n);
            CHECK(s.first_row == next);
            next += s.rows;
            CHECK(it::kept_bytes(huge, s).size() == 0);
        }
        CHECK(next == std::uint64_t{1} << 62);
    }
}
