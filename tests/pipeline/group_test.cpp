// pipeline::Group on the CPU: N = 1…8 ranks as threads of one process, exchanging through
// InProcessGroup (shared host memory). Every rank must end with exactly the bytes it keeps (whole
// tensors, a per-rank selection, blocks of split tensors along any dimension, received packed and
// nothing more), through every storage backend, both host sinks and a sink whose copies run late,
// with windows from one read to the whole checkpoint; a rank that keeps nothing, or a load that
// selects nothing, still runs every exchange.
#include <doctest/doctest.h>

#include <string>
#include <thread>
#include <vector>

#include "faulty.hpp"
#include "groups.hpp"
#include "late_copy_sink.hpp"

namespace {

using namespace instanttensor_test;

}  // namespace

TEST_CASE("group: N = 1…8 ranks each end with exactly the bytes they keep") {
    TempDir dir;
    const auto index = fmt::write_sharded_checkpoint(dir / "group", group_specs(), 3, fill_tensor);
    const auto checkpoint = fmt::Checkpoint::open(index);
    std::vector<int> everything_modes(4, 0);  // over every N > 1, keeping everything
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
            if (selection.name == "everything" && ranks > 1)
                for (std::size_t m = 0; m < modes.size(); ++m) everything_modes[m] += modes[m];
            if (selection.name == "split_rows" && ranks > 1) CHECK(modes[static_cast<std::size_t>(ExchangeMode::sends)] > 0);
        }
    }
    // Keeping everything ran both collectives: windows whose segments divide them evenly go by
    // all-gather, others by broadcasts.
    CHECK(everything_modes[static_cast<std::size_t>(ExchangeMode::all_gather)] > 0);
    CHECK(everything_modes[static_cast<std::size_t>(ExchangeMode::broadcasts)] > 0);
}

TEST_CASE("group: blocks along every dimension; each rank receives exactly the bytes it keeps and did not read") {
    // Every tensor is split (none is kept whole by every rank), so every window goes point to
    // point, and the transport's count of each rank's bytes must be its kept bytes less those it
    // read itself: nobody is sent a byte it does not keep, strided blocks included (packed).
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "blocks.safetensors", {{"a", fmt::Dtype::BF16, {3, 5, 7, 333}},
                                                                                         {"b", fmt::Dtype::F32, {9, 2, 40, 61}},
                                                                                         {"c", fmt::Dtype::U8, {1, 1, 1, 70001}},
                                                                                         {"d", fmt::Dtype::F16, {13, 17, 19, 5}},
                                                                                         {"e", fmt::Dtype::U8, {2, 3, 1000, 11}}}));
    for (std::uint32_t dim = 0; dim < 4; ++dim) {
        const auto share = it::split_along(dim, {});
        for (int ranks = 1; ranks <= 8; ++ranks) {
            CAPTURE(dim);
            CAPTURE(ranks);
            const auto results = run_group(ranks, [&](InProcessTransport transport, int) {
                return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::pread}), std::move(transport),
                                   it::sink::host(), group_options(share));
            });
            std::size_t packs = 0;
            for (int r = 0; r < ranks; ++r) {
                const RankResult& out = results[static_cast<std::size_t>(r)];
                check_rank(checkpoint, share, r, ranks, out);
                // The bytes r keeps in its own segments, from the plans.
                std::uint64_t own = 0;
                const it::Plan& plan = out.reads;
                for (std::size_t wi = 0; wi < out.plan.windows.size(); ++wi) {
                    const auto& w = out.plan.windows[wi];
                    CHECK((w.mode == ExchangeMode::sends || w.mode == ExchangeMode::none));
                    packs += out.plan.packs_of(wi).size();
                    for (std::uint32_t x = w.first_extent; x < w.first_extent + w.extent_count; ++x)
                        for (std::uint32_t p = plan.extents[x].first_piece; p < plan.extents[x].first_piece + plan.extents[x].piece_count; ++p) {
                            const it::Piece& piece = plan.pieces[p];
                            const std::uint64_t at = out.plan.extent_window_offset[x] + piece.extent_offset;
                            out.plan.for_each_reader(wi, at, at + piece.length, [&](int reader, std::uint64_t from, std::uint64_t until) {
                                if (reader == r)
                                    own += out.plan.keeps(piece.tensor).within(piece.tensor_offset + (from - at), piece.tensor_offset + (until - at)).length;
                            });
                        }
                }
                CHECK(out.received == out.stats.tensor_bytes - own);
            }
            if (dim > 0 && ranks > 1) CHECK(packs > 0);  // strided blocks went packed
        }
    }
}

TEST_CASE("group: every storage backend and both host sinks, split tensors landing in the caller's memory") {
    TempDir dir;
    const auto index = fmt::write_sharded_checkpoint(dir / "group", group_specs(), 2, fill_tensor);
    const auto checkpoint = fmt::Checkpoint::open(index);
    const auto share = it::tensor_parallel(is_column, [](const fmt::TensorRef& t) { return is_weight(t) && !is_column(t); });
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

            // The caller's memory: each rank gives a buffer of exactly its block.
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

TEST_CASE("group: ranks that read the same file buffered and with O_DIRECT plan the same load") {
    // Each rank chooses buffered or O_DIRECT reads from its own page cache and filesystem: the plan
    // of a group load must not depend on it (it once did, and every rank failed with "planned a
    // different load"). Here rank 0 reads with O_DIRECT (alignment 512 or 4096) and the others
    // buffered (alignment 1), for every share, under pread and io_uring.
    TempDir dir;
    const auto path = write_file(dir / "one.safetensors", group_specs());
    if (!can_read_cold_with_o_direct(path)) return;
    const auto checkpoint = fmt::Checkpoint::open(path);
    namespace st = it::storage;
    for (const auto backend : {st::Backend::pread, st::Backend::uring}) {
        if (backend == st::Backend::uring && unavailable(Via::uring)) continue;
        for (const auto& selection : selections()) {
            for (int ranks : {2, 3}) {
                CAPTURE(st::to_string(backend));
                CAPTURE(selection.name);
                CAPTURE(ranks);
                const auto results = run_group(ranks, [&](InProcessTransport transport, int r) {
                    const st::automatic::Options storage{backend, r == 0 ? it::DirectIo::on : it::DirectIo::off};
                    return GroupLoader(checkpoint, st::automatic(storage), std::move(transport), it::sink::host(),
                                       group_options(selection.share));
                });
                for (int r = 0; r < ranks; ++r) check_rank(checkpoint, selection.share, r, ranks, results[static_cast<std::size_t>(r)]);
            }
        }
    }
}

TEST_CASE("group: window sizes from one read to the whole checkpoint, and small staging") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    const auto share = it::tensor_parallel(is_column, [](const fmt::TensorRef& t) { return is_weight(t) && !is_column(t); });
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
                                      LateCopySink(latency, test_ring), options);
                });
                for (int r = 0; r < ranks; ++r) check_rank(checkpoint, selection.share, r, ranks, results[static_cast<std::size_t>(r)]);
            }
        }
    }
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
