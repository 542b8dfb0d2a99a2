// Group loads on the CPU: N = 1…8 ranks as threads of one process, exchanging through
// InProcessGroup (shared host memory). Every rank must end with exactly the bytes it keeps (whole
// tensors, a per-rank selection, row slices of split tensors), receive only bytes it keeps when
// the exchange is point-to-point, and fail rather than hang when a peer fails or disagrees.
// The split itself (GroupPlan) is checked property by property on random layouts.
#include <doctest/doctest.h>

#include <algorithm>
#include <exception>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "faulty.hpp"
#include "in_process_group.hpp"
#include "late_copy_sink.hpp"
#include "instanttensor/pipeline/group_plan.hpp"
#include "instanttensor/pipeline/share.hpp"
#include "support.hpp"

namespace {

using namespace loader_test;
using it::ExchangeMode;
using it::Share;

constexpr std::uint64_t test_slot = 16384;
constexpr std::uint64_t test_window_bytes = 65536;

/// Tensors of every kind the group tests need: odd sizes and offsets, tiny ones, scalars and
/// empties, matrices whose row counts do not divide evenly (one with fewer rows than ranks), and
/// tensors several windows long.
std::vector<fmt::TensorSpec> group_specs() {
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(60, 9)) specs.push_back(s);
    for (auto& s : edge_specs()) specs.push_back(s);
    specs.push_back({"w.q", fmt::Dtype::F16, {257, 500}});
    specs.push_back({"w.o", fmt::Dtype::BF16, {3, 20000}});
    specs.push_back({"w.big", fmt::Dtype::U8, {300001}});
    specs.push_back({"w.e", fmt::Dtype::F32, {1000, 7}});
    return specs;
}

bool is_weight(const fmt::TensorRef& t) { return t.name().starts_with("w.") || t.name() == "e.matrix"; }

/// The share functions the tests load with, by name.
struct Selection {
    std::string name;
    it::ShareFunction share;
};

std::vector<Selection> selections() {
    return {
        {"everything", {}},
        {"keep_if", it::keep_if([](const fmt::TensorRef& t, int rank) {
             return is_weight(t) || std::hash<std::string>{}(t.name()) % 3 == static_cast<std::size_t>(rank) % 3;
         })},
        {"split_rows", it::split_rows(is_weight)},
        // Some ranks keep nothing of a tensor, others a custom row range, a scalar whole.
        {"mixed", [](const fmt::TensorRef& t, int rank, int ranks) {
             if (t.info->shape.empty() || t.info->shape[0] < 2) return rank % 2 == 0 ? Share::whole() : Share::none();
             if (rank == ranks - 1 && ranks > 1) return Share::none();
             return Share::row_range(1, t.info->shape[0] - 1);
         }},
    };
}

/// What one rank yielded.
struct RankResult {
    std::vector<std::string> names;
    std::vector<std::vector<std::uint64_t>> shapes;
    std::vector<std::uint64_t> first_rows;
    std::vector<bool> bytes_match;
    it::LoadStats stats;
    it::GroupPlan plan;
    std::string error;
};

using GroupLoader = it::Loader<it::storage::automatic, InProcessTransport, it::sink::host>;

/// Loads `checkpoint` on `ranks` threads; each checks every yielded tensor's bytes against the file.
template <class MakeLoader>
std::vector<RankResult> run_group(int ranks, MakeLoader make_loader) {
    InProcessGroup group(ranks);
    std::vector<RankResult> results(static_cast<std::size_t>(ranks));
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r)
        threads.emplace_back([&, r] {
            RankResult& out = results[static_cast<std::size_t>(r)];
            try {
                auto loader = make_loader(InProcessTransport(group, r), r);
                for (const auto& t : loader) {
                    out.names.emplace_back(t.name);
                    out.shapes.emplace_back(t.shape.begin(), t.shape.end());
                    out.first_rows.push_back(t.first_row);
                    const auto all = expected_bytes(t.name, t.ref->nbytes());
                    const std::uint64_t row_bytes = t.ref->info->shape.empty() || t.ref->info->shape[0] == 0
                                                        ? 0 : t.ref->nbytes() / t.ref->info->shape[0];
                    const std::uint64_t begin = t.first_row * row_bytes;
                    out.bytes_match.push_back(begin + t.data.size() <= all.size() &&
                                              std::equal(t.data.begin(), t.data.end(), all.begin() + static_cast<std::ptrdiff_t>(begin)));
                }
                out.stats = loader.stats();
                out.plan = loader.group_plan();
                CHECK(group.received(r) == out.stats.received_bytes);
            } catch (const std::exception& e) {
                out.error = e.what();
            }
        });
    for (auto& t : threads) t.join();
    return results;
}

/// Checks rank `rank` yielded exactly what `share` gives it, in checkpoint order, with the right bytes.
void check_rank(const fmt::Checkpoint& checkpoint, const it::ShareFunction& share, int rank, int ranks, const RankResult& out) {
    CAPTURE(rank);
    CAPTURE(out.error);
    REQUIRE(out.error.empty());
    std::size_t i = 0;
    std::uint64_t kept_total = 0;
    for (const auto& t : checkpoint.tensors()) {
        const Share s = share ? share(t, rank, ranks) : Share::whole();
        if (!s.kept) continue;
        CAPTURE(t.name());
        REQUIRE(i < out.names.size());
        CHECK(out.names[i] == t.name());
        std::vector<std::uint64_t> shape = t.info->shape;
        std::uint64_t first_row = 0;
        if (s.rows != Share::all_rows) {
            shape[0] = s.rows;
            first_row = s.first_row;
        }
        CHECK(out.shapes[i] == shape);
        CHECK(out.first_rows[i] == first_row);
        CHECK(out.bytes_match[i]);
        kept_total += it::kept_bytes(t, s).size();
        ++i;
    }
    CHECK(i == out.names.size());
    CHECK(out.stats.tensor_bytes == kept_total);
}

it::LoadOptions group_options(it::ShareFunction share) {
    it::LoadOptions options;
    options.slot_bytes = test_slot;
    options.staging_bytes = 8 * test_slot;
    options.window_bytes = test_window_bytes;
    options.share = std::move(share);
    return options;
}

}  // namespace

TEST_CASE("group: N = 1…8 ranks each end with exactly the bytes they keep") {
    TempDir dir;
    const auto index = fmt::write_sharded_checkpoint(dir / "group", group_specs(), 3, fill_tensor);
    const auto checkpoint = fmt::Checkpoint::open(index);
    for (const auto& selection : selections()) {
        for (int ranks = 1; ranks <= 8; ++ranks) {
            CAPTURE(selection.name);
            CAPTURE(ranks);
            const auto results = run_group(ranks, [&](InProcessTransport transport, int) {
                return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::memory}), std::move(transport),
                                   it::sink::host(), group_options(selection.share));
            });
            std::vector<int> modes(4, 0);
            for (const auto& w : results[0].plan.windows) ++modes[static_cast<std::size_t>(w.mode)];
            for (int r = 0; r < ranks; ++r) {
                if (selection.name == "everything") {
                    // Everything kept: each rank receives every window byte it did not read.
                    CAPTURE(r);
                    REQUIRE(results[static_cast<std::size_t>(r)].error.empty());
                    CHECK(results[static_cast<std::size_t>(r)].stats.received_bytes +
                              results[static_cast<std::size_t>(r)].stats.read_bytes >=
                          results[static_cast<std::size_t>(r)].stats.tensor_bytes);
                }
                check_rank(checkpoint, selection.share, r, ranks, results[static_cast<std::size_t>(r)]);
            }
            if (ranks == 1) CHECK(modes[static_cast<std::size_t>(ExchangeMode::none)] == static_cast<int>(results[0].plan.windows.size()));
            if (selection.name == "everything" && (ranks == 2 || ranks == 4 || ranks == 8)) {
                CHECK(modes[static_cast<std::size_t>(ExchangeMode::all_gather)] > 0);  // full windows divide evenly
                CHECK(modes[static_cast<std::size_t>(ExchangeMode::broadcasts)] > 0);  // the last one does not
            }
            if (selection.name == "split_rows" && ranks > 1) CHECK(modes[static_cast<std::size_t>(ExchangeMode::sends)] > 0);
        }
    }
}

TEST_CASE("group: every storage backend and both host sinks, split tensors landing in the caller's memory") {
    TempDir dir;
    const auto index = fmt::write_sharded_checkpoint(dir / "group", group_specs(), 2, fill_tensor);
    const auto checkpoint = fmt::Checkpoint::open(index);
    const auto share = it::split_rows(is_weight);
    namespace st = it::storage;
    const st::automatic::Options storages[] = {{st::Backend::pread, it::DirectIo::off},
                                               {st::Backend::pread, it::DirectIo::on},
                                               {st::Backend::uring, it::DirectIo::on},
                                               {st::Backend::uring, it::DirectIo::off}};
    for (const auto& storage : storages) {
        if (storage.backend == st::Backend::uring && unavailable(Via::uring)) continue;
        for (int ranks : {2, 3, 8}) {
            CAPTURE(st::to_string(storage.backend));
            CAPTURE(to_string(storage.direct));
            CAPTURE(ranks);
            // Host window.
            auto results = run_group(ranks, [&](InProcessTransport transport, int) {
                return GroupLoader(checkpoint, st::automatic(storage), std::move(transport), it::sink::host(),
                                   group_options(share));
            });
            for (int r = 0; r < ranks; ++r) check_rank(checkpoint, share, r, ranks, results[static_cast<std::size_t>(r)]);

            // The caller's memory: each rank gives a buffer of exactly its rows.
            using PlacementLoader = it::Loader<st::automatic, InProcessTransport, it::sink::placement>;
            std::vector<std::vector<std::vector<std::byte>>> memory(static_cast<std::size_t>(ranks));
            results = run_group(ranks, [&](InProcessTransport transport, int r) {
                auto& mine = memory[static_cast<std::size_t>(r)];
                mine.reserve(checkpoint.tensors().size());
                return PlacementLoader(checkpoint, st::automatic(storage), std::move(transport),
                                       it::sink::placement([&mine, &share, r, ranks](const fmt::TensorRef& t) {
                                           mine.emplace_back(it::kept_bytes(t, share(t, r, ranks)).size());
                                           return std::span<std::byte>(mine.back());
                                       }),
                                       group_options(share));
            });
            for (int r = 0; r < ranks; ++r) check_rank(checkpoint, share, r, ranks, results[static_cast<std::size_t>(r)]);
        }
    }
}

TEST_CASE("group: window sizes from one read to the whole checkpoint, and small staging") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    const auto share = it::split_rows(is_weight);
    for (std::uint64_t window : {test_slot, 3 * test_slot + 4096, std::uint64_t{1} << 20, std::uint64_t{64} << 20}) {
        for (unsigned windows : {2u, 5u}) {
            CAPTURE(window);
            CAPTURE(windows);
            auto options = group_options(share);
            options.window_bytes = window;
            options.windows = windows;
            const auto results = run_group(5, [&](InProcessTransport transport, int) {
                return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::pread}), std::move(transport),
                                   it::sink::host(), options);
            });
            for (int r = 0; r < 5; ++r) check_rank(checkpoint, share, r, 5, results[static_cast<std::size_t>(r)]);
        }
    }
}

TEST_CASE("group: a sink whose copies run late gets window buffers and slots back only after them") {
    // As with the device sinks: the copies out of a window buffer into the sink are only queued,
    // so a buffer must not take the next window before they ran (late_copy_sink.hpp).
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    using LateLoader = it::Loader<it::storage::automatic, InProcessTransport, LateCopySink>;
    for (const auto& selection : selections()) {
        for (unsigned latency : {0u, 3u, 100u}) {  // the group pipeline polls; it never waits on copies
            for (int ranks : {1, 3, 4}) {
                CAPTURE(selection.name);
                CAPTURE(latency);
                CAPTURE(ranks);
                auto options = group_options(selection.share);
                options.windows = 2;  // buffers are reused as often as possible
                const auto results = run_group(ranks, [&](InProcessTransport transport, int) {
                    return LateLoader(checkpoint, it::storage::automatic({it::storage::Backend::pread}), std::move(transport),
                                      LateCopySink(latency, test_window), options);
                });
                for (int r = 0; r < ranks; ++r) check_rank(checkpoint, selection.share, r, ranks, results[static_cast<std::size_t>(r)]);
            }
        }
    }
}

TEST_CASE("group: a failing rank makes every rank fail instead of hang") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    using FaultyLoader = it::Loader<Faulty<it::storage::automatic>, InProcessTransport, it::sink::host>;
    for (int ranks : {2, 4, 8}) {
        for (std::uint64_t first : {1ull, 5ull}) {
            CAPTURE(ranks);
            CAPTURE(first);
            const int failing = ranks - 1;
            const auto results = run_group(ranks, [&](InProcessTransport transport, int r) {
                const Fault fault{r == failing ? Fault::eio : Fault::none, first, 1, 0};
                return FaultyLoader(checkpoint, Faulty(it::storage::automatic({it::storage::Backend::pread}), fault),
                                    std::move(transport), it::sink::host(), group_options({}));
            });
            for (int r = 0; r < ranks; ++r) {
                CAPTURE(r);
                const auto& error = results[static_cast<std::size_t>(r)].error;
                if (r == failing) CHECK(error.find("Input/output error") != std::string::npos);
                else CHECK(error.find("rank " + std::to_string(failing) + " stopped loading") != std::string::npos);
            }
        }
    }
}

TEST_CASE("group: a rank whose loader cannot be made releases its peers") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    const auto results = run_group(4, [&](InProcessTransport transport, int r) {
        auto options = group_options({});
        if (r == 2) options.windows = 1;  // refused by rank 2's loader only
        return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::pread}), std::move(transport),
                           it::sink::host(), options);
    });
    for (int r = 0; r < 4; ++r) {
        CAPTURE(r);
        const auto& error = results[static_cast<std::size_t>(r)].error;
        CHECK(error.find(r == 2 ? "windows must be 2 to 16" : "rank 2 stopped loading") != std::string::npos);
    }
}

TEST_CASE("group: a rank that stops iterating early releases its peers") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    InProcessGroup group(3);
    std::vector<std::string> errors(3);
    std::vector<std::thread> threads;
    for (int r = 0; r < 3; ++r)
        threads.emplace_back([&, r] {
            try {
                GroupLoader loader(checkpoint, it::storage::automatic({it::storage::Backend::pread}), InProcessTransport(group, r),
                                   it::sink::host(), group_options({}));
                for (const auto& t : loader)
                    if (r == 0 && !t.name.empty()) break;  // the consumer gives up after the first tensor
            } catch (const std::exception& e) {
                errors[static_cast<std::size_t>(r)] = e.what();
            }
        });
    for (auto& t : threads) t.join();
    CHECK(errors[0].empty());
    CHECK(errors[1].find("rank 0 stopped loading") != std::string::npos);
    CHECK(errors[2].find("rank 0 stopped loading") != std::string::npos);
}

TEST_CASE("group: ranks that planned different loads all fail at once, naming the odd rank") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    for (int odd : {0, 2}) {
        CAPTURE(odd);
        const auto results = run_group(3, [&](InProcessTransport transport, int r) {
            auto options = group_options(r == odd ? it::split_rows(is_weight) : it::ShareFunction{});
            return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::memory}), std::move(transport),
                               it::sink::host(), options);
        });
        const std::string expected = "rank " + std::to_string(odd == 0 ? 1 : odd) + " planned a different load than rank 0";
        for (const auto& out : results) CHECK(out.error.find(expected) != std::string::npos);
    }
    // No share function and keep_everything() plan the same load.
    const auto same = run_group(3, [&](InProcessTransport transport, int r) {
        return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::memory}), std::move(transport),
                           it::sink::host(), group_options(r == 1 ? it::keep_everything() : it::ShareFunction{}));
    });
    for (int r = 0; r < 3; ++r) check_rank(checkpoint, {}, r, 3, same[static_cast<std::size_t>(r)]);
    // A different window size is a different plan.
    const auto results = run_group(2, [&](InProcessTransport transport, int r) {
        auto options = group_options({});
        if (r == 1) options.window_bytes *= 2;
        return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::memory}), std::move(transport),
                           it::sink::host(), options);
    });
    for (const auto& out : results) CHECK(out.error.find("rank 1 planned a different load") != std::string::npos);
}

TEST_CASE("group: a rank that keeps nothing still reads and sends its share") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    const auto share = it::keep_if([](const fmt::TensorRef&, int rank) { return rank != 2; });
    const auto results = run_group(4, [&](InProcessTransport transport, int) {
        return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::pread}), std::move(transport),
                           it::sink::host(), group_options(share));
    });
    for (int r = 0; r < 4; ++r) check_rank(checkpoint, share, r, 4, results[static_cast<std::size_t>(r)]);
    CHECK(results[2].names.empty());
    CHECK(results[2].stats.read_bytes > 0);
    CHECK(results[2].stats.received_bytes == 0);
}

TEST_CASE("group: nothing selected, and only empty tensors, load on every rank") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    const auto none = run_group(3, [&](InProcessTransport transport, int) {
        auto options = group_options({});
        options.filter = [](const fmt::TensorRef&) { return false; };
        return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::pread}), std::move(transport),
                           it::sink::host(), options);
    });
    for (const auto& out : none) {
        CHECK(out.error.empty());
        CHECK(out.names.empty());
        CHECK(out.plan.windows.empty());
    }
    const auto empties = fmt::Checkpoint::open(write_file(dir / "empties.safetensors",
                                                          {{"a", fmt::Dtype::F32, {0}}, {"b", fmt::Dtype::U8, {4, 0}}}));
    const auto share = it::split_rows({});
    const auto results = run_group(3, [&](InProcessTransport transport, int) {
        return GroupLoader(empties, it::storage::automatic({it::storage::Backend::pread}), std::move(transport), it::sink::host(),
                           group_options(share));
    });
    for (int r = 0; r < 3; ++r) check_rank(empties, share, r, 3, results[static_cast<std::size_t>(r)]);
}

TEST_CASE("group: options that cannot work are refused") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", tiny_specs(10)));
    InProcessGroup group(2);
    auto options = group_options({});
    options.windows = 1;
    CHECK_THROWS_AS(GroupLoader(checkpoint, it::storage::automatic(), InProcessTransport(group, 0), it::sink::host(), options),
                    std::invalid_argument);
    CHECK_THROWS_AS(GroupLoader(checkpoint, it::storage::automatic(), InProcessTransport(group, 2), it::sink::host(),
                                group_options({})),
                    std::invalid_argument);
    // A share of rows a tensor does not have.
    const auto too_many = [](const fmt::TensorRef& t, int, int) { return Share::row_range(0, t.info->shape.empty() ? 1 : t.info->shape[0] + 1); };
    CHECK_THROWS_AS(GroupLoader(checkpoint, it::storage::automatic(), InProcessTransport(group, 0), it::sink::host(),
                                group_options(too_many)),
                    std::invalid_argument);
    // One rank alone cannot split: LoadOptions::share needs a group transport.
    CHECK_THROWS_AS((it::Loader<it::storage::automatic, it::transport::single, it::sink::host>(
                        checkpoint, it::storage::automatic(), {}, it::sink::host(), group_options(it::split_rows({})))),
                    std::invalid_argument);
}

// ---- share functions and the group plan ---------------------------------------------------------

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

namespace {

fmt::Checkpoint random_checkpoint(std::mt19937_64& rng) {
    std::vector<std::vector<fmt::TensorSpec>> files(1 + rng() % 3);
    std::size_t n = 0;
    for (auto& f : files)
        for (std::size_t i = 0, count = 1 + rng() % 25; i < count; ++i, ++n) {
            const std::uint64_t rows = rng() % 4 == 0 ? rng() % 5 : 1 + rng() % 400;
            f.push_back({"t" + std::to_string(n), fmt::Dtype::U8, {rows, 1 + rng() % 300}});
        }
    return checkpoint_of(files);
}

}  // namespace

TEST_CASE("group plan: aligned reads cover every needed byte once, shares are balanced, sends carry only kept bytes") {
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
                CHECK(mine.keeps(t).end == expected.end);
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
            // rank that read the bytes, of bytes the receiver keeps, and both list it in the same order.
            for (int r = 0; r < ranks; ++r) {
                const auto& mine = plans[static_cast<std::size_t>(r)];
                for (const auto& t : mine.exchange(wi).transfers) {
                    CHECK((t.from == r || t.to == r));
                    CHECK(t.to != t.from);
                    CHECK(t.offset >= w.segment * static_cast<std::uint64_t>(t.from));
                    CHECK(t.offset + t.length <= w.segment * static_cast<std::uint64_t>(t.from + 1));
                    if (t.to != r) continue;
                    received[static_cast<std::size_t>(r)] += t.length;
                    std::uint64_t kept = 0;  // bytes of [offset, offset + length) the receiver keeps
                    for (std::uint32_t x = w.first_extent; x < w.first_extent + w.extent_count; ++x) {
                        const auto& e = plan.extents[x];
                        for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) {
                            const auto& piece = plan.pieces[p];
                            const auto& k = mine.keeps(piece.tensor);
                            if (!k.kept) continue;
                            const std::uint64_t kb = std::max(k.begin, piece.tensor_offset);
                            const std::uint64_t ke = std::min(k.end, piece.tensor_offset + piece.length);
                            if (kb >= ke) continue;
                            const std::uint64_t at = g.extent_window_offset[x] + piece.extent_offset + (kb - piece.tensor_offset);
                            const std::uint64_t from = std::max(t.offset, at);
                            const std::uint64_t to = std::min(t.offset + t.length, at + (ke - kb));
                            if (from < to) kept += to - from;
                        }
                    }
                    CHECK(kept == t.length);
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
        }
        CHECK(read_bytes == g.read_bytes);
        CHECK(received == g.received_bytes);
        // Balanced: no rank reads more than a page per window above an even split of the reads.
        std::uint64_t total = 0;
        for (auto b : read_bytes) total += b;
        for (auto b : read_bytes) CHECK(b <= total / static_cast<std::uint64_t>(ranks) + 4096 * g.windows.size() * 2 + 4096);
    }
}
