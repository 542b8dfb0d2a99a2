// RingAllocator: first-in first-out regions in a fixed capacity, checked against a simple model.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <optional>
#include <random>
#include <vector>

#include "instanttensor/detail/ring_allocator.hpp"

using instanttensor::detail::RingAllocator;

TEST_CASE("ring allocator: first in, first out, with wrap-around") {
    RingAllocator ring(1000, 1);
    CHECK(ring.empty());
    CHECK(ring.allocate(400) == 0u);
    CHECK(ring.allocate(400) == 400u);
    CHECK_FALSE(ring.allocate(300).has_value());  // 200 free at the end, the start is taken
    CHECK(ring.allocate(200) == 800u);
    CHECK_FALSE(ring.allocate(1).has_value());  // full
    ring.release_oldest();                       // frees [0, 400)
    CHECK_FALSE(ring.allocate(401).has_value());
    CHECK(ring.allocate(300) == 0u);  // wraps
    CHECK(ring.allocate(100) == 300u);
    CHECK_FALSE(ring.allocate(1).has_value());  // the gap before the oldest is used up
    ring.release_oldest();                       // frees [400, 800)
    CHECK(ring.allocate(400) == 400u);           // the gap between newest and oldest
    ring.release_oldest();                       // frees [800, 1000)
    ring.release_oldest();                       // frees [0, 300)
    ring.release_oldest();                       // frees [300, 400)
    CHECK_FALSE(ring.empty());
    CHECK_FALSE(ring.allocate(600).has_value());  // only [400, 800) is live: 200 free at the end, 400 at the start
    CHECK(ring.allocate(400) == 0u);
    ring.release_oldest();
    ring.release_oldest();
    CHECK(ring.empty());
    ring.release_oldest();  // releasing an empty ring is harmless
    CHECK(ring.allocate(1000) == 0u);  // an empty ring starts over at 0
    CHECK_FALSE(ring.allocate(1).has_value());
}

TEST_CASE("ring allocator: a 0-byte request never makes wrapped regions look unwrapped") {
    RingAllocator ring(1000, 1);
    CHECK(ring.allocate(500) == 0u);
    CHECK(ring.allocate(500) == 500u);
    ring.release_oldest();                       // live: [500, 1000)
    CHECK(ring.allocate(500) == 0u);             // wraps: live [500, 1000), [0, 500): full
    CHECK_FALSE(ring.allocate(0).has_value());   // even 0 bytes take a granule; none is free
    CHECK_FALSE(ring.allocate(100).has_value()); // and nothing may land on [500, 1000)
    ring.release_oldest();                       // live: [0, 500)
    CHECK(ring.allocate(0) == 500u);
    CHECK(ring.allocate(100) == 501u);
}

TEST_CASE("ring allocator: granularity and sizes past the capacity") {
    RingAllocator ring(4096, 256);
    CHECK(ring.capacity() == 4096);
    CHECK(ring.granularity() == 256);
    CHECK(ring.allocate(1) == 0u);
    CHECK(ring.allocate(257) == 256u);
    CHECK(ring.allocate(256) == 768u);
    CHECK_FALSE(ring.allocate(4096).has_value());
    RingAllocator fresh(4096, 256);
    CHECK_FALSE(fresh.allocate(4097).has_value());
    CHECK(fresh.allocate(4096) == 0u);
}

TEST_CASE("ring allocator: randomized against a model, never overlapping live regions") {
    struct Region {
        std::uint64_t begin, end;
    };
    std::mt19937_64 rng(77);
    for (int trial = 0; trial < 40; ++trial) {
        const std::uint64_t capacity = 64 + rng() % 5000;
        const std::uint64_t granularity = std::uint64_t{1} << (rng() % 6);
        RingAllocator ring(capacity, granularity);
        std::deque<Region> live;  // the model: FIFO regions
        CAPTURE(trial);
        CAPTURE(capacity);
        CAPTURE(granularity);
        for (int step = 0; step < 3000; ++step) {
            if (!live.empty() && rng() % 3 == 0) {
                ring.release_oldest();
                live.pop_front();
                CHECK(ring.empty() == live.empty());
                continue;
            }
            const std::uint64_t size = rng() % 8 == 0 ? 0 : rng() % (capacity / 2 + 1);
            // A request of 0 bytes takes one granule: every live region is non-empty.
            const std::uint64_t rounded =
                (std::max<std::uint64_t>(size, 1) + granularity - 1) / granularity * granularity;
            // Where a ring puts the region: after the newest one if it fits before the oldest (or
            // the window's end), else at the window's start if it fits before the oldest.
            std::optional<std::uint64_t> expected;
            if (live.empty()) {
                if (rounded <= capacity) expected = 0;
            } else {
                std::uint64_t used = 0;  // the model knows whether the live regions wrap: they do
                for (std::size_t i = 1; i < live.size(); ++i)  // when one starts before its predecessor
                    used += live[i].begin < live[i - 1].begin ? 1 : 0;
                const bool wraps = used > 0;
                const std::uint64_t after = live.back().end;
                if (!wraps) {
                    if (capacity - after >= rounded) expected = after;
                    else if (live.front().begin >= rounded) expected = 0;
                } else if (live.front().begin - after >= rounded) {
                    expected = after;
                }
            }
            const auto got = ring.allocate(size);
            CAPTURE(step);
            CAPTURE(size);
            REQUIRE(got == expected);
            if (!got) continue;
            CHECK(*got % granularity == 0);
            REQUIRE(*got + rounded <= capacity);
            bool overlaps = false;
            for (const auto& r : live) overlaps = overlaps || !(*got + rounded <= r.begin || *got >= r.end);
            REQUIRE_FALSE(overlaps);
            live.push_back({*got, *got + rounded});
        }
    }
}
