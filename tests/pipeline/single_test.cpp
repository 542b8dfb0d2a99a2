// pipeline::Single: every tensor a single load yields holds exactly the bytes that were written, in
// plan order, through every storage backend (chosen at run time by storage::automatic, or used
// directly), every page-cache policy and both host sinks, on checkpoints that stress the plan: many
// tiny tensors, a tensor larger than the whole staging ring, unaligned data sections and odd
// offsets, sharded checkpoints, empty tensors and scalars, and filters. Into a sink whose copies
// run late (LateCopySink), as the device sinks' copies do: a staging slot is reused, and a tensor
// yielded, only once the copies out of it ran, which wrong bytes would show.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "instanttensor/loader.hpp"
#include "late_copy_sink.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;

/// Loads `checkpoint` through every backend × page-cache policy × sink and checks each outcome.
void check_every_configuration(const fmt::Checkpoint& checkpoint, const it::LoadOptions& options,
                               std::size_t on_disk_files, const it::TensorFilter& filter = {}) {
    it::LoadOptions with_filter = options;
    if (filter) with_filter.filter = filter;
    const bool o_direct = accepts_o_direct(checkpoint.files().front().path);
    load_every_way(checkpoint, with_filter, [&](const Outcome& out, Via via, it::DirectIo direct) {
        check_outcome(checkpoint, out, filter);
        const bool memory = via == Via::memory || via == Via::auto_memory;
        // Where the filesystem accepts O_DIRECT, DirectIo::on reads every file with it.
        if (memory || direct == it::DirectIo::off) CHECK(out.direct_files == 0);
        else if (direct == it::DirectIo::on) CHECK(out.direct_files == (o_direct ? on_disk_files : 0));
    });
}



/// How late copies run: at the first ask, after a few asks, or only when the loader waits.
constexpr unsigned latencies[] = {0, 3, 1u << 30};

std::vector<fmt::TensorSpec> late_specs() {
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(80, 5)) specs.push_back(s);
    for (auto& s : edge_specs()) specs.push_back(s);
    return specs;
}

}  // namespace

TEST_CASE("single: hundreds of tiny tensors") {
    TempDir dir;
    const auto path = write_file(dir / "tiny.safetensors", tiny_specs(400));
    const auto checkpoint = fmt::Checkpoint::open(path);
    REQUIRE(checkpoint.tensors().size() == 400);
    SUBCASE("default options") { check_every_configuration(checkpoint, {}, 1); }
    SUBCASE("16 KiB slots") { check_every_configuration(checkpoint, small_slots, 1); }
    SUBCASE("two 12 KiB slots") { check_every_configuration(checkpoint, minimal_ring, 1); }
}

TEST_CASE("single: a tensor larger than the whole staging ring") {
    TempDir dir;
    const auto path = write_file(dir / "big.safetensors", {{"before", fmt::Dtype::U8, {4097}},
                                                          {"huge", fmt::Dtype::F32, {262144 + 3}},  // ~1 MiB
                                                          {"after", fmt::Dtype::U8, {33}},
                                                          {"also", fmt::Dtype::U8, {7}},
                                                          {"also.huge", fmt::Dtype::U8, {(1u << 20) + 1}}});
    const auto checkpoint = fmt::Checkpoint::open(path);
    check_every_configuration(checkpoint, small_slots, 1);
    // The ring held 4 slots of 16 KiB: far less than one tensor.
    const Outcome out = load(checkpoint, Via::pread, it::DirectIo::on, SinkKind::host, small_slots);
    CHECK(out.stats.staging_bytes == 64u << 10);
    CHECK(out.plan_extents > 64);
    // Into sink::placement, the reads that carry nothing but one tensor's bytes land straight in
    // it: read buffered, all of both large tensors (and any small one a read holds alone); read
    // with O_DIRECT, only those of the one whose destination sits at in_place_offset past a page
    // (Placements: every other tensor in file order; the other is 8 bytes off), all of its reads
    // but the first and the last, which carry other tensors' bytes too.
    auto placed_at_offset = [&](std::string_view name) {
        const auto tensors = checkpoint.tensors();
        return (std::ranges::find(tensors, name, &fmt::TensorRef::name) - tensors.begin()) % 2 == 0;
    };
    REQUIRE(placed_at_offset("huge") != placed_at_offset("also.huge"));
    const std::uint64_t huge = 4 * (262144 + 3), also_huge = (1u << 20) + 1;
    const std::uint64_t placed = placed_at_offset("huge") ? huge : also_huge;
    for (Via via : {Via::uring, Via::pread}) {
        if (unavailable(via)) continue;
        INFO(to_string(via));
        CHECK(load(checkpoint, via, it::DirectIo::off, SinkKind::placement, small_slots).stats.in_place_bytes >= huge + also_huge);
        if (!accepts_o_direct(path)) continue;
        const Outcome direct = load(checkpoint, via, it::DirectIo::on, SinkKind::placement, small_slots);
        CHECK(direct.direct_files == 1);
        CHECK(direct.stats.in_place_bytes >= placed - 2 * (16u << 10));
        CHECK(direct.stats.in_place_bytes < placed);
    }
}

TEST_CASE("single: unaligned data sections and tensors at odd offsets") {
    TempDir dir;
    const auto path = write_file(dir / "odd.safetensors", odd_specs());
    const auto checkpoint = fmt::Checkpoint::open(path);
    REQUIRE(checkpoint.files()[0].header.data_offset() % 4096 != 0);
    std::size_t odd = 0;
    for (const auto& t : checkpoint.tensors()) odd += t.file_offset % 2;
    REQUIRE(odd >= 4);
    SUBCASE("16 KiB slots") { check_every_configuration(checkpoint, small_slots, 1); }
    SUBCASE("default options") { check_every_configuration(checkpoint, {}, 1); }
}

TEST_CASE("single: a sharded checkpoint with an index") {
    TempDir dir;
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(120, 5)) specs.push_back(s);
    for (auto& s : edge_specs()) specs.push_back(s);
    specs.push_back({"layer.big", fmt::Dtype::BF16, {40000}});
    for (std::size_t shards : {3u, 4u}) {
        CAPTURE(shards);
        const auto index = fmt::write_sharded_checkpoint(dir / ("sharded" + std::to_string(shards)), specs, shards,
                                                         fill_tensor);
        for (const auto& source : {index, index.parent_path()}) {
            const auto checkpoint = fmt::Checkpoint::open(source);
            REQUIRE(checkpoint.files().size() == shards);
            REQUIRE(checkpoint.tensors().size() == specs.size());
            check_every_configuration(checkpoint, small_slots, shards);
        }
    }
}

TEST_CASE("single: empty tensors and scalars") {
    TempDir dir;
    const auto edge = fmt::Checkpoint::open(write_file(dir / "edge.safetensors", edge_specs()));
    SUBCASE("mixed") { check_every_configuration(edge, small_slots, 1); }
    SUBCASE("only empty tensors") {
        const auto only_empty = fmt::Checkpoint::open(write_file(
            dir / "empty.safetensors", {{"a", fmt::Dtype::F32, {0}}, {"b", fmt::Dtype::U8, {0, 3}}}));
        check_every_configuration(only_empty, {}, 1);
        const Outcome out = load(only_empty, Via::pread, it::DirectIo::on, SinkKind::host);
        CHECK(out.plan_extents == 0);
        for (const auto& t : out.tensors) CHECK(t.bytes.empty());
    }
    SUBCASE("no tensors at all") {
        const auto none = fmt::Checkpoint::open(write_file(dir / "none.safetensors", {}));
        REQUIRE(none.tensors().empty());
        check_every_configuration(none, {}, 1);
    }
    SUBCASE("scalars land with an empty shape") {
        const Outcome out = load(edge, Via::pread, it::DirectIo::off, SinkKind::placement);
        for (const auto& t : out.tensors)
            if (t.name.find("scalar") != std::string::npos) {
                CHECK(t.shape.empty());
                CHECK(t.bytes.size() == (t.dtype == fmt::Dtype::U8 ? 1u : t.dtype == fmt::Dtype::F32 ? 4u : 8u));
            }
    }
}

TEST_CASE("single: filters load only the selected tensors") {
    TempDir dir;
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(80, 9)) specs.push_back(s);
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "filter.safetensors", specs));
    SUBCASE("select_names") {
        check_every_configuration(checkpoint, small_slots, 1,
                                  it::select_names({"odd.3", "tiny.40", "wide.a", "odd.12", "tiny.0", "no.such"}));
        // Given the checkpoint, a name it does not hold is an error naming it.
        check_every_configuration(checkpoint, small_slots, 1, it::select_names(checkpoint, {"odd.3", "tiny.40"}));
        try {
            it::select_names(checkpoint, {"odd.3", "no.such"});
            FAIL("a missing name was accepted");
        } catch (const std::invalid_argument& e) {
            CHECK(std::string(e.what()).find("'no.such'") != std::string::npos);
        }
    }
    SUBCASE("a predicate") {
        check_every_configuration(checkpoint, small_slots, 1,
                                  [](const fmt::TensorRef& t) { return t.nbytes() > 4000 || t.name() == "tiny.3"; });
    }
    SUBCASE("nothing selected") {
        check_every_configuration(checkpoint, small_slots, 1, [](const fmt::TensorRef&) { return false; });
    }
    SUBCASE("a sharded checkpoint") {
        const auto index = fmt::write_sharded_checkpoint(dir / "sharded", specs, 3, fill_tensor);
        const auto sharded = fmt::Checkpoint::open(index);
        check_every_configuration(sharded, small_slots, 3, [](const fmt::TensorRef& t) { return t.file != 1; });
    }
}

TEST_CASE("single, late copies: a slot is reused, and a tensor yielded, only once its copies ran") {
    TempDir dir;
    const auto index = fmt::write_sharded_checkpoint(dir / "late", late_specs(), 2, fill_tensor);
    const auto checkpoint = fmt::Checkpoint::open(index);
    for (Via via : all_vias) {
        if (unavailable(via)) continue;
        for (it::DirectIo direct : {it::DirectIo::off, it::DirectIo::on}) {
            for (unsigned latency : latencies) {
                INFO(to_string(via), " direct=", to_string(direct), " latency ", latency);
                with_storage(via, direct, [&](auto storage) {
                    using S = decltype(storage);
                    // Three slots of 16 KiB: slots are reused many times over.
                    LateLoaderOf<S> loader(checkpoint, std::move(storage), {}, LateCopySink(latency, test_ring),
                                           ring_of(3 * (16 << 10), 16 << 10));
                    Outcome out;
                    drain(loader, out);
                    check_outcome(checkpoint, out);
                    const auto& seen = loader.sink().stats();
                    CHECK(seen.slots >= 3);
                    CHECK(seen.copies > 0);
                    if (latency > 0) {
                        CHECK(seen.refused > 0);
                        CHECK(seen.most_queued > 1);  // copies of several reads were pending at once
                    }
                    if (latency == latencies[2]) CHECK(seen.waits > 0);
                });
            }
        }
    }
}

TEST_CASE("single: a run of small tensors adjacent in the read and in the ring lands in one store") {
    // 256 tensors of 256 bytes (the ring's alignment): each 16 KiB read holds 64 of them, laid out
    // in the ring as in the file, so each read is one store. Of 255 bytes they are not adjacent in
    // the ring, and each piece is a store of its own. In a ring of 40 KiB that wraps in the middle
    // of reads, a run is cut where it wraps.
    TempDir dir;
    for (const std::uint64_t size : {256u, 255u}) {
        std::vector<fmt::TensorSpec> specs;
        for (int i = 0; i < 256; ++i) specs.push_back({"run." + std::to_string(1000 + i), fmt::Dtype::U8, {size}});
        const auto checkpoint = fmt::Checkpoint::open(write_file(dir / ("run" + std::to_string(size) + ".safetensors"), specs));
        for (const std::uint64_t ring : {std::uint64_t{0}, std::uint64_t{40 << 10}}) {
            for (const unsigned latency : latencies) {
                INFO(size, "-byte tensors, ring ", ring, ", latency ", latency);
                LateLoaderOf<it::storage::memory> loader(checkpoint, it::storage::memory(), {}, LateCopySink(latency, ring),
                                                        ring_of(4 * (16 << 10), 16 << 10));
                Outcome out;
                drain(loader, out);
                check_outcome(checkpoint, out);
                const std::uint64_t copies = loader.sink().stats().copies;
                if (size == 255) CHECK(copies == loader.plan().pieces.size());
                else if (ring == 0) CHECK(copies == loader.plan().extents.size());
                else CHECK((copies > loader.plan().extents.size() && copies < loader.plan().pieces.size() / 8));
            }
        }
    }
}

TEST_CASE("single, late copies: a loader dropped with copies pending frees staging only after them") {
    TempDir dir;
    std::vector<fmt::TensorSpec> specs;
    for (int i = 0; i < 40; ++i) specs.push_back({"block." + std::to_string(i), fmt::Dtype::F32, {12289}});
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "mid.safetensors", specs));
    for (Via via : all_vias) {
        if (unavailable(via)) continue;
        for (std::size_t stop_after : {1u, 3u}) {
            INFO(to_string(via), " after ", stop_after);
            with_storage(via, it::DirectIo::off, [&](auto storage) {
                using S = decltype(storage);
                LateLoaderOf<S> loader(checkpoint, std::move(storage), {}, LateCopySink(latencies[2], test_ring),
                                       ring_of(1 << 20, 64 << 10));
                auto tensor = loader.begin();
                for (std::size_t i = 1; i < stop_after; ++i) ++tensor;
                CHECK(tensor->name == checkpoint.tensors()[stop_after - 1].name());
                // Copies out of staging are still queued; the sink runs them when the loader drops it,
                // which must happen before the staging memory is freed (ASan would see it).
            });
        }
    }
}

TEST_CASE("single: a share keeps a block of a tensor along any dimension, reading only the bytes it spans") {
    TempDir dir;
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : edge_specs()) specs.push_back(s);
    specs.push_back({"m.rows", fmt::Dtype::F16, {300, 70}});
    specs.push_back({"m.cols", fmt::Dtype::BF16, {40, 3001}});  // several slots long
    specs.push_back({"c.3d", fmt::Dtype::F32, {4, 9, 301}});
    specs.push_back({"c.4d", fmt::Dtype::U8, {3, 5, 7, 11}});
    specs.push_back({"skip", fmt::Dtype::F32, {100, 100}});
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "blocks.safetensors", specs));
    // Each tensor of two dimensions or more: a block along a dimension its name picks, from index
    // 1, half of it; "skip" is not kept; the others are whole.
    const auto share = [](const fmt::TensorRef& t, int rank, int ranks) {
        CHECK(rank == 0);
        CHECK(ranks == 1);
        const auto& shape = t.info->shape;
        if (t.name() == "skip") return it::Share::none();
        if (shape.size() < 2) return it::Share::whole();
        const auto dim = static_cast<std::uint32_t>(std::hash<std::string>{}(t.name()) % shape.size());
        return it::Share::block(dim, std::min<std::uint64_t>(1, shape[dim]), shape[dim] / 2);
    };
    it::LoadOptions options = ring_of(1 << 20, 64 << 10);
    options.share = share;
    std::uint64_t spanned = 0, total = 0;  // the bytes the blocks span (all a load reads of them), and all
    for (const auto& t : checkpoint.tensors()) {
        const auto k = it::kept_bytes(t, share(t, 0, 1));
        spanned += k.kept ? k.end() - k.begin : 0;
        total += t.nbytes();
    }
    CHECK(spanned < total);
    for (Via via : all_vias) {
        if (unavailable(via)) continue;
        for (it::DirectIo direct : all_direct) {
            INFO(to_string(via), " direct=", to_string(direct));
            const Outcome out = load(checkpoint, via, direct, SinkKind::host, options);
            std::size_t i = 0;
            for (const auto& t : checkpoint.tensors()) {
                const it::Share s = share(t, 0, 1);
                if (!s.kept) continue;
                CAPTURE(t.name());
                REQUIRE(i < out.tensors.size());
                const Loaded& got = out.tensors[i++];
                CHECK(got.name == t.name());
                std::vector<std::uint64_t> shape = t.info->shape;
                std::uint64_t first = 0;
                if (s.count != it::Share::all) shape[s.dim] = s.count, first = s.first;
                CHECK(got.shape == shape);
                CHECK(got.block_first == first);
                if (s.count != it::Share::all) CHECK(got.block_dim == s.dim);
                CHECK(got.bytes == block_bytes(*t.info, expected_bytes(t.name(), t.nbytes()), s.dim, first,
                                               shape.empty() ? 1 : shape[s.dim]));
            }
            CHECK(i == out.tensors.size());
            CHECK(out.stats.read_bytes == out.plan_read_bytes);
            if (direct == it::DirectIo::off) CHECK(out.plan_read_bytes == spanned);  // "skip" and the rows outside blocks are not read
        }
    }
}
