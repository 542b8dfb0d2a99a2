// pipeline/share.hpp: what a Share keeps of a tensor in bytes and rows, split_rows partitions every
// tensor's rows for any group size (first dimensions near 2^64 included), and rows of packed dtypes
// that are not whole bytes are refused; blocks along every dimension of 1-D to 4-D tensors, walked
// through any byte range, are the bytes a slice of the tensor holds.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

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
    CHECK(k.end() == 84);
    CHECK(k.count == 5);
    CHECK(k.contiguous());
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
            CHECK(s.first == next);
            next += s.count;
            CHECK(split(scalar, r, n).count == Share::all);
        }
        CHECK(next == 10);
    }
    const auto only_s = it::split_rows([](const fmt::TensorRef& t) { return t.name() == "s"; });
    CHECK(only_s(m, 1, 4).count == Share::all);  // not selected: whole

    // all from a first row: to the last one.
    const auto tail = it::kept_bytes(m, Share::row_range(7, Share::all));
    CHECK(tail.count == 3);
    CHECK(tail.begin == 84);
    CHECK(tail.end() == 120);
    CHECK_THROWS_AS(it::kept_bytes(m, Share::row_range(11, Share::all)), std::invalid_argument);
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
    CHECK(even.end() == 4);
    const auto six = it::kept_bytes(*c.find("six"), Share::row_range(1, 2));  // 4 × 6 bits = 3 bytes a row
    CHECK(six.begin == 3);
    CHECK(six.end() == 9);

    // split_rows of 2^62 rows: the ranks' rows partition them, without overflowing rows · rank.
    const auto& huge = *c.find("huge");
    for (int n : {3, 8, 4096}) {
        std::uint64_t next = 0;
        for (int r = 0; r < n; ++r) {
            const Share s = it::split_rows({})(huge, r, n);
            CHECK(s.first == next);
            next += s.count;
            CHECK(it::kept_bytes(huge, s).size() == 0);
        }
        CHECK(next == std::uint64_t{1} << 62);
    }
}

TEST_CASE("share: a block along any dimension is the slice's bytes, through any byte range") {
    TempDir dir;
    const std::vector<fmt::TensorSpec> specs = {{"v", fmt::Dtype::U8, {37}},
                                                {"m", fmt::Dtype::F16, {7, 9}},
                                                {"c", fmt::Dtype::F32, {3, 5, 4}},
                                                {"h", fmt::Dtype::BF16, {2, 3, 4, 5}}};
    const auto c = fmt::Checkpoint::open(write_file(dir / "b.safetensors", specs));
    std::mt19937_64 rng(7);
    for (const auto& spec : specs) {
        const auto& t = *c.find(spec.name);
        const auto all = expected_bytes(spec.name, t.nbytes());
        for (std::uint32_t dim = 0; dim < spec.shape.size(); ++dim) {
            for (int n = 1; n <= 8; ++n) {
                std::uint64_t next = 0;
                for (int r = 0; r < n; ++r) {
                    CAPTURE(spec.name);
                    CAPTURE(dim);
                    CAPTURE(n);
                    CAPTURE(r);
                    const Share s = it::split_along(dim, {})(t, r, n);
                    CHECK(s.dim == dim);
                    CHECK(s.first == next);  // the ranks' blocks partition the dimension
                    next += s.count;
                    const auto k = it::kept_bytes(t, s);
                    const auto want = block_bytes(*t.info, all, dim, s.first, s.count);
                    CHECK(k.size() == want.size());
                    CHECK(k.dim == dim);
                    CHECK(k.first == s.first);
                    CHECK(k.count == s.count);
                    // Cut the tensor's bytes at random points: the kept bytes of the parts, walked
                    // and placed by block offset, make the slice.
                    std::vector<std::uint64_t> cuts{0, t.nbytes()};
                    for (int i = 0; i < 4; ++i) cuts.push_back(rng() % (t.nbytes() + 1));
                    std::sort(cuts.begin(), cuts.end());
                    std::vector<std::byte> got(want.size(), std::byte{0xEE});
                    std::uint64_t landed = 0;
                    for (std::size_t i = 1; i < cuts.size(); ++i) {
                        const it::Strided part = k.within(cuts[i - 1], cuts[i]);
                        landed += part.length;
                        if (part.length == 0) continue;
                        const std::uint64_t to = k.block_offset(part.at);
                        part.for_each_block([&](std::uint64_t from, std::uint64_t at, std::uint64_t run, std::uint64_t runs) {
                            for (std::uint64_t j = 0; j < runs; ++j)
                                std::copy_n(all.begin() + static_cast<std::ptrdiff_t>(part.at + from + j * part.stride), run,
                                            got.begin() + static_cast<std::ptrdiff_t>(to + at + j * run));
                        });
                    }
                    CHECK(landed == want.size());
                    CHECK(got == want);
                }
                CHECK(next == spec.shape[dim]);
            }
        }
    }
    const auto& m = *c.find("m");
    CHECK(it::kept_bytes(m, Share::block(1, 2, 3)).runs == 7);  // one run per row
    CHECK(it::kept_bytes(m, Share::block(1, 0, 9)).contiguous());  // the whole dimension: the tensor
    CHECK(it::kept_bytes(*c.find("c"), Share::block(2, 0, 4)).size() == 240);
    CHECK_THROWS_AS(it::kept_bytes(m, Share::block(2, 0, 1)), std::invalid_argument);  // no dimension 2
    CHECK_THROWS_AS(it::kept_bytes(m, Share::block(1, 5, 5)), std::invalid_argument);  // past its 9
    // split and tensor_parallel keep a tensor whole where the dimension is missing (a bias, a scalar).
    CHECK(it::split_along(1, {})(*c.find("v"), 1, 4).count == Share::all);
    const auto tp = it::tensor_parallel([](const fmt::TensorRef& x) { return x.name() == "m"; },
                                        [](const fmt::TensorRef& x) { return x.name() != "m"; });
    CHECK(tp(m, 1, 2).dim == 0);
    CHECK(tp(*c.find("c"), 1, 2).dim == 1);
    CHECK(tp(*c.find("v"), 1, 2).count == Share::all);
}

TEST_CASE("share: blocks of packed dtypes along inner dimensions must be whole bytes") {
    TempDir dir;
    const auto c = fmt::Checkpoint::open(write_file(dir / "q.safetensors", {{"f4", fmt::Dtype::F4, {4, 6}},
                                                                             {"f6", fmt::Dtype::F6_E3M2, {2, 8}}}));
    const auto& f4 = *c.find("f4");
    CHECK(it::kept_bytes(f4, Share::block(1, 2, 4)).size() == 8);  // 4 × 4 bits = 2 bytes a row, from byte 1
    CHECK(it::kept_bytes(f4, Share::block(1, 2, 4)).begin == 1);
    CHECK_THROWS_AS(it::kept_bytes(f4, Share::block(1, 1, 2)), std::invalid_argument);  // starts mid-byte
    CHECK_THROWS_AS(it::kept_bytes(f4, Share::block(1, 0, 3)), std::invalid_argument);  // 1.5 bytes a row
    const auto& f6 = *c.find("f6");
    CHECK(it::kept_bytes(f6, Share::block(1, 4, 4)).size() == 6);  // 4 × 6 bits = 3 bytes a row
    CHECK_THROWS_AS(it::kept_bytes(f6, Share::block(1, 1, 4)), std::invalid_argument);
}
