// make_group_plan, property by property on random layouts: aligned reads cover every needed byte
// once, segments are balanced, every rank agrees on the windows and exchanges, and point-to-point
// sends carry exactly the bytes their receiver keeps (strided blocks packed), listed alike on both
// sides.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "groups.hpp"

namespace {

using namespace instanttensor_test;

}  // namespace

TEST_CASE("group plan: aligned reads cover every needed byte once, segments are balanced, sends carry only kept bytes") {
    std::mt19937_64 rng(20261123);
    for (int round = 0; round < 120; ++round) {
        CAPTURE(round);
        const auto checkpoint = random_checkpoint(rng);
        const std::uint64_t a = rng() % 2 == 0 ? 1 : 4096;
        const std::uint64_t slot = 4096 * (3 + rng() % 6);
        const std::vector<std::uint64_t> align(checkpoint.files().size(), a);
        const auto plan = it::make_plan(checkpoint, {}, align, slot);
        const int ranks = 1 + static_cast<int>(rng() % 8);
        const std::uint64_t window = slot * (1 + rng() % 6);
        const auto selection = selections()[rng() % selections().size()];
        CAPTURE(ranks);
        CAPTURE(selection.name);
        std::vector<it::GroupPlan> plans;  // one per rank
        for (int r = 0; r < ranks; ++r) plans.push_back(it::make_group_plan(plan, ranks, r, selection.share, window));
        const auto& g = plans[0];

        // What every rank must agree on; what each keeps is its share, and only its own is stored.
        for (int r = 0; r < ranks; ++r) {
            const auto& mine = plans[static_cast<std::size_t>(r)];
            CHECK(mine.digest == g.digest);
            CHECK(mine.read_bytes == g.read_bytes);
            CHECK(mine.kept_bytes == g.kept_bytes);
            CHECK(mine.received_bytes == g.received_bytes);
            REQUIRE(mine.windows.size() == g.windows.size());
            CHECK(mine.kept.size() == plan.tensors.size());
            std::uint64_t kept = 0;
            for (std::uint32_t t = 0; t < plan.tensors.size(); ++t) {
                const auto& ref = *plan.tensors[t].ref;
                const auto expected = it::kept_bytes(ref, selection.share ? selection.share(ref, r, ranks) : Share::whole());
                CHECK(mine.keeps(t).kept == expected.kept);
                CHECK(mine.keeps(t).begin == expected.begin);
                CHECK(mine.keeps(t).run == expected.run);
                CHECK(mine.keeps(t).stride == expected.stride);
                CHECK(mine.keeps(t).runs == expected.runs);
                kept += expected.size();
            }
            CHECK(kept == g.kept_bytes[static_cast<std::size_t>(r)]);
        }

        std::vector<std::uint64_t> read_bytes(static_cast<std::size_t>(ranks)), received(static_cast<std::size_t>(ranks));
        for (std::size_t wi = 0; wi < g.windows.size(); ++wi) {
            const auto& w = g.windows[wi];
            CHECK(w.bytes <= window);
            CHECK(w.segment % 4096 == 0);
            CHECK(w.segment * static_cast<std::uint64_t>(ranks) >= w.bytes);
            CHECK(w.segment * static_cast<std::uint64_t>(ranks) <= g.buffer_bytes);
            // Which bytes of each extent someone reads: all of [0, needed), once.
            std::vector<std::vector<std::pair<std::uint64_t, std::uint64_t>>> covered(w.extent_count);
            for (int r = 0; r < ranks; ++r)
                g.for_each_read(plan, wi, r, [&](const it::SegmentRead& s) {
                    const auto& e = plan.extents[s.extent];
                    CHECK(s.window_offset >= w.segment * static_cast<std::uint64_t>(r));
                    CHECK(s.window_offset + s.length <= w.segment * static_cast<std::uint64_t>(r + 1));
                    CHECK((e.offset + s.extent_offset) % a == 0);
                    CHECK(s.length % a == 0);
                    CHECK(s.window_offset % a == 0);
                    CHECK(s.needed <= s.length);
                    CHECK(s.needed > 0);
                    covered[s.extent - w.first_extent].emplace_back(s.extent_offset, s.extent_offset + s.length);
                    read_bytes[static_cast<std::size_t>(r)] += s.length;
                });
            for (std::uint32_t x = 0; x < w.extent_count; ++x) {
                auto& c = covered[x];
                std::sort(c.begin(), c.end());
                std::uint64_t next = 0;
                for (const auto& [from, to] : c) {
                    CHECK(from == next);
                    next = to;
                }
                CHECK(next >= plan.extents[w.first_extent + x].needed);
            }
            for (int r = 0; r < ranks; ++r) {
                const auto& theirs = plans[static_cast<std::size_t>(r)].windows[wi];
                CHECK(theirs.mode == w.mode);
                CHECK(theirs.segment == w.segment);
                CHECK(theirs.bytes == w.bytes);
            }
            if (w.mode == ExchangeMode::all_gather)
                for (auto& b : received) b += (static_cast<std::uint64_t>(ranks) - 1) * w.segment;
            if (w.mode == ExchangeMode::broadcasts)
                for (int r = 0; r < ranks; ++r) {
                    const auto x = plans[static_cast<std::size_t>(r)].exchange(wi);
                    REQUIRE(x.transfers.size() == g.exchange(wi).transfers.size());
                    for (std::size_t i = 0; i < x.transfers.size(); ++i) {
                        const auto& t = x.transfers[i];
                        CHECK(t.to == it::Transfer::everyone);
                        CHECK(t.offset == g.exchange(wi).transfers[i].offset);
                        CHECK(t.length == g.exchange(wi).transfers[i].length);
                        if (r == 0)  // every rank lists the same broadcasts: count them once
                            for (int q = 0; q < ranks; ++q)
                                if (q != t.from) received[static_cast<std::size_t>(q)] += t.length;
                    }
                }
            if (w.mode != ExchangeMode::sends) continue;
            // Point-to-point: each rank holds only the sends it takes part in; every send is from the
            // rank that read the bytes, of bytes the receiver keeps (contiguous ones at their window
            // offsets, strided ones packed at the offset of their first), and both list it in the
            // same order; the sender packs each packed one into its own pack area.
            for (int r = 0; r < ranks; ++r) {
                const auto& mine = plans[static_cast<std::size_t>(r)];
                // The bytes r keeps among the window buffer's [from, to).
                const auto kept_in = [&](std::uint64_t from, std::uint64_t to) {
                    std::uint64_t kept = 0;
                    for (std::uint32_t x = w.first_extent; x < w.first_extent + w.extent_count; ++x) {
                        const auto& e = plan.extents[x];
                        for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) {
                            const auto& piece = plan.pieces[p];
                            const std::uint64_t at = g.extent_window_offset[x] + piece.extent_offset;
                            const std::uint64_t lo = std::max(from, at), hi = std::min(to, at + piece.length);
                            if (lo < hi) kept += mine.keeps(piece.tensor).within(piece.tensor_offset + (lo - at), piece.tensor_offset + (hi - at)).length;
                        }
                    }
                    return kept;
                };
                std::vector<std::uint64_t> received_from(static_cast<std::size_t>(ranks), 0);
                for (const auto& t : mine.exchange(wi).transfers) {
                    CHECK((t.from == r || t.to == r));
                    CHECK(t.to != t.from);
                    CHECK(t.offset >= w.segment * static_cast<std::uint64_t>(t.from));
                    CHECK(t.offset + t.length <= w.segment * static_cast<std::uint64_t>(t.from + 1));
                    if (t.packed()) {
                        const auto& sender = plans[static_cast<std::size_t>(t.from)];
                        CHECK(t.source >= sender.buffer_bytes);
                        CHECK(t.source + t.length <= sender.buffer_bytes + sender.pack_bytes);
                        const auto packs = sender.packs_of(wi);
                        CHECK(std::any_of(packs.begin(), packs.end(), [&](const it::Pack& p) {
                            return p.to == t.source && p.from.at == t.offset && p.from.length == t.length;
                        }));
                    }
                    if (t.to != r) continue;
                    received[static_cast<std::size_t>(r)] += t.length;
                    received_from[static_cast<std::size_t>(t.from)] += t.length;
                    CHECK(kept_in(t.offset, t.offset + 1) == 1);
                    if (!t.packed()) CHECK(kept_in(t.offset, t.offset + t.length) == t.length);
                }
                for (int q = 0; q < ranks; ++q) {  // every byte r keeps from another reader, once
                    const auto segment = w.segment * static_cast<std::uint64_t>(q);
                    if (q != r) CHECK(received_from[static_cast<std::size_t>(q)] == kept_in(segment, segment + w.segment));
                }
                for (int q = 0; q < ranks; ++q) {  // what q sends r, as each of them lists it
                    auto between = [&](const it::GroupPlan& p) {
                        std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
                        for (const auto& t : p.exchange(wi).transfers)
                            if (t.from == q && t.to == r) out.emplace_back(t.offset, t.length);
                        return out;
                    };
                    CHECK(between(plans[static_cast<std::size_t>(q)]) == between(mine));
                }
            }
            // A sender's packs of the window do not overlap in its pack area.
            for (const auto& p : plans) {
                std::vector<std::pair<std::uint64_t, std::uint64_t>> areas;
                for (const auto& pack : p.packs_of(wi)) areas.emplace_back(pack.to, pack.to + pack.from.length);
                std::sort(areas.begin(), areas.end());
                for (std::size_t i = 1; i < areas.size(); ++i) CHECK(areas[i].first >= areas[i - 1].second);
            }
        }
        CHECK(read_bytes == g.read_bytes);
        CHECK(received == g.received_bytes);
        // Balanced: no rank reads more than a page per window above an even split of the reads.
        std::uint64_t total = 0;
        for (auto b : read_bytes) total += b;
        for (auto b : read_bytes) CHECK(b <= total / static_cast<std::uint64_t>(ranks) + 4096 * g.windows.size() * 2 + 4096);
    }
}

TEST_CASE("group plan: a window's sends go in NCCL groups of at most max_group_transfers, numbered alike on both sides") {
    // Thousands of small matrices split by rows on 8 ranks: a window of point-to-point sends far
    // longer than one NCCL group may hold. Each transfer must sit in the same group on its sender
    // and its receiver (else each waits for the other's group forever), and no group may hold more
    // calls than NCCL aggregates.
    const auto checkpoint = checkpoint_of({tiny_specs(3000, 4)});
    const std::vector<std::uint64_t> align(checkpoint.files().size(), 4096);
    const auto plan = it::make_plan(checkpoint, {}, align, 1 << 20);
    constexpr int ranks = 8;
    const auto share = it::split_rows({});
    std::vector<it::GroupPlan> plans;
    for (int r = 0; r < ranks; ++r) plans.push_back(it::make_group_plan(plan, ranks, r, share, 8 << 20));
    std::uint32_t most_groups = 0;
    for (std::size_t w = 0; w < plans[0].windows.size(); ++w) {
        if (plans[0].windows[w].mode != ExchangeMode::sends) continue;
        for (int r = 0; r < ranks; ++r) {
            const auto x = plans[static_cast<std::size_t>(r)].exchange(w);
            REQUIRE(x.groups.size() == x.transfers.size());
            std::vector<std::uint64_t> calls;  // this rank's calls per group
            for (std::size_t i = 0; i < x.transfers.size(); ++i) {
                if (i > 0) CHECK(x.groups[i] >= x.groups[i - 1]);
                if (calls.size() <= x.groups[i]) calls.resize(x.groups[i] + 1);
                ++calls[x.groups[i]];
                most_groups = std::max(most_groups, x.groups[i] + 1);
                // The other side lists the same transfer in the same group.
                const it::Transfer& t = x.transfers[i];
                const auto other = plans[static_cast<std::size_t>(t.from == r ? t.to : t.from)].exchange(w);
                const auto match = std::find_if(other.transfers.begin(), other.transfers.end(), [&](const it::Transfer& u) {
                    return u.from == t.from && u.to == t.to && u.offset == t.offset && u.length == t.length;
                });
                REQUIRE(match != other.transfers.end());
                CHECK(other.groups[static_cast<std::size_t>(match - other.transfers.begin())] == x.groups[i]);
            }
            for (const auto c : calls) CHECK(c <= it::max_group_transfers);
        }
    }
    CHECK(most_groups > 1);  // the case the groups are for
}
