// Loader: every tensor it yields holds exactly the bytes that were written, in plan order, through
// every storage backend (chosen at run time by storage::automatic, or used directly), every
// page-cache policy and both host sinks, on checkpoints that stress the plan: many tiny tensors, a
// tensor larger than the whole staging ring, unaligned data sections and odd offsets, sharded
// checkpoints, empty tensors and scalars, and filters.
#include <doctest/doctest.h>

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "instanttensor/loader.hpp"
#include "support.hpp"

namespace {

using namespace loader_test;

const it::LoadOptions small_slots = ring_of(64 << 10, 16 << 10);
const it::LoadOptions minimal_ring = ring_of(0, 12 << 10);  // two slots of 12 KiB

/// A group of two ranks that needs no device memory.
struct TwoRanks {
    static constexpr instanttensor::MemoryKind memory = instanttensor::MemoryKind::host;
    int rank() const { return 0; }
    int size() const { return 2; }
};

/// Loads `checkpoint` through every backend × page-cache policy × sink and checks each outcome.
void check_every_configuration(const fmt::Checkpoint& checkpoint, const it::LoadOptions& options,
                               std::size_t on_disk_files, const it::TensorFilter& filter = {}) {
    it::LoadOptions with_filter = options;
    if (filter) with_filter.filter = filter;
    const bool o_direct = accepts_o_direct(checkpoint.files().front().path);
    for (Via via : all_vias) {
        if (unavailable(via)) continue;
        for (it::DirectIo direct : all_direct) {
            for (SinkKind sink : all_sinks) {
                INFO(to_string(via), " ", to_string(direct), " ", to_string(sink));
                const Outcome out = load(checkpoint, via, direct, sink, with_filter);
                check_outcome(checkpoint, out, filter);
                const bool memory = via == Via::memory || via == Via::auto_memory;
                // Where the filesystem accepts O_DIRECT, DirectIo::on reads every file with it.
                if (memory || direct == it::DirectIo::off) CHECK(out.direct_files == 0);
                else if (direct == it::DirectIo::on) CHECK(out.direct_files == (o_direct ? on_disk_files : 0));
            }
        }
    }
}

}  // namespace

TEST_CASE("loader: hundreds of tiny tensors") {
    TempDir dir;
    const auto path = write_file(dir / "tiny.safetensors", tiny_specs(400));
    const auto checkpoint = fmt::Checkpoint::open(path);
    REQUIRE(checkpoint.tensors().size() == 400);
    SUBCASE("default options") { check_every_configuration(checkpoint, {}, 1); }
    SUBCASE("16 KiB slots") { check_every_configuration(checkpoint, small_slots, 1); }
    SUBCASE("two 12 KiB slots") { check_every_configuration(checkpoint, minimal_ring, 1); }
}

TEST_CASE("loader: a tensor larger than the whole staging ring") {
    TempDir dir;
    const auto path = write_file(dir / "big.safetensors", {{"before", fmt::Dtype::U8, {4097}},
                                                          {"huge", fmt::Dtype::F32, {262144 + 3}},  // ~1 MiB
                                                          {"after", fmt::Dtype::U8, {33}},
                                                          {"also.huge", fmt::Dtype::U8, {(1u << 20) + 1}}});
    const auto checkpoint = fmt::Checkpoint::open(path);
    check_every_configuration(checkpoint, small_slots, 1);
    // The ring held 4 slots of 16 KiB: far less than one tensor.
    const Outcome out = load(checkpoint, Via::pread, it::DirectIo::on, SinkKind::host, small_slots);
    CHECK(out.stats.staging_bytes == 64u << 10);
    CHECK(out.plan_extents > 64);
}

TEST_CASE("loader: unaligned data sections and tensors at odd offsets") {
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

TEST_CASE("loader: a sharded checkpoint with an index") {
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

TEST_CASE("loader: empty tensors and scalars") {
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

TEST_CASE("loader: filters load only the selected tensors") {
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

TEST_CASE("loader: DirectIo::automatic reads cold files with O_DIRECT and resident ones buffered") {
    TempDir dir;
    const auto path = write_file(dir / "cold.safetensors", odd_specs());
    const auto checkpoint = fmt::Checkpoint::open(path);
    if (!accepts_o_direct(path) || on_tmpfs(path)) {
        MESSAGE("skipped: the temporary directory has no O_DIRECT or no evictable page cache");
        return;
    }
    for (Via via : {Via::uring, Via::pread, Via::auto_uring, Via::auto_pread}) {
        if (unavailable(via)) continue;
        INFO(to_string(via));
        evict_from_page_cache(path);
        const Outcome cold = load(checkpoint, via, it::DirectIo::automatic, SinkKind::host, small_slots);
        check_outcome(checkpoint, cold);
        CHECK(cold.direct_files == 1);
        // Map and touch every page so the file is resident.
        const Outcome warm_up = load(checkpoint, Via::memory, it::DirectIo::off, SinkKind::host);
        check_outcome(checkpoint, warm_up);
        const Outcome warm = load(checkpoint, via, it::DirectIo::automatic, SinkKind::host, small_slots);
        check_outcome(checkpoint, warm);
        CHECK(warm.direct_files == 0);
    }
}

TEST_CASE("loader: DirectIo::automatic decides per file") {
    TempDir dir;
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(30, 21)) specs.push_back(s);
    const auto index = fmt::write_sharded_checkpoint(dir / "mixed", specs, 3, fill_tensor);
    const auto checkpoint = fmt::Checkpoint::open(index);
    const auto& cold = checkpoint.files()[1].path;
    if (!accepts_o_direct(cold) || on_tmpfs(cold)) {
        MESSAGE("skipped: the temporary directory has no O_DIRECT or no evictable page cache");
        return;
    }
    for (Via via : {Via::uring, Via::pread, Via::auto_uring, Via::auto_pread}) {
        if (unavailable(via)) continue;
        INFO(to_string(via));
        check_outcome(checkpoint, load(checkpoint, Via::memory, it::DirectIo::off, SinkKind::host));  // all resident
        evict_from_page_cache(cold);
        const Outcome out = load(checkpoint, via, it::DirectIo::automatic, SinkKind::placement, small_slots);
        check_outcome(checkpoint, out);
        CHECK(out.direct_files == 1);
    }
}

TEST_CASE("loader: storage::memory over caller-owned bytes") {
    std::vector<std::vector<std::byte>> files;
    std::vector<fmt::TensorSpec> parts[] = {odd_specs(), tiny_specs(50, 2), edge_specs()};
    std::vector<std::vector<std::byte>> tensor_bytes;
    for (auto& part : parts) {
        std::vector<fmt::TensorData> data;
        tensor_bytes.reserve(tensor_bytes.size() + part.size());
        for (auto& spec : part) {
            tensor_bytes.push_back(expected_bytes(spec.name, spec_bytes(spec)));
            data.push_back({spec, tensor_bytes.back()});
        }
        files.push_back(fmt::serialize_safetensors(data));
    }
    std::vector<std::pair<std::string, std::span<const std::byte>>> named;
    std::vector<std::span<const std::byte>> spans;
    for (std::size_t i = 0; i < files.size(); ++i) {
        named.emplace_back("memory-" + std::to_string(i), files[i]);
        spans.emplace_back(files[i]);
    }
    const auto checkpoint = fmt::Checkpoint::from_memory(named);
    REQUIRE(checkpoint.files().size() == 3);

    for (const auto& options : {it::LoadOptions{}, small_slots, minimal_ring}) {
        {
            Outcome out;
            it::Loader<it::storage::memory, it::transport::single, it::sink::host> loader(
                checkpoint, it::storage::memory(spans), {}, it::sink::host(), options);
            drain(loader, out);
            check_outcome(checkpoint, out);
        }
        {
            Placements places(checkpoint);
            Outcome out;
            it::Loader<it::storage::memory, it::transport::single, it::sink::placement> loader(
                checkpoint, it::storage::memory(spans), {}, places.sink(), options);
            drain(loader, out);
            check_outcome(checkpoint, out);
            for (const auto& t : checkpoint.tensors())
                CHECK(places.buffer(t.name()) == expected_bytes(t.name(), t.nbytes()));
        }
    }

    // The spans must match the checkpoint's files.
    using MemoryLoader = it::Loader<it::storage::memory, it::transport::single, it::sink::host>;
    std::vector<std::span<const std::byte>> too_few(spans.begin(), spans.begin() + 2);
    CHECK_THROWS_AS(MemoryLoader(checkpoint, it::storage::memory(too_few), {}, it::sink::host()),
                    std::invalid_argument);
    std::vector<std::span<const std::byte>> shortened = spans;
    shortened[1] = shortened[1].first(shortened[1].size() - 1);
    try {
        MemoryLoader loader(checkpoint, it::storage::memory(shortened), {}, it::sink::host());
        FAIL("a span shorter than its file was accepted");
    } catch (const it::format_error& e) {
        CHECK(std::string(e.what()).find("memory-1") != std::string::npos);
    }

    // A backend that opens files is refused such a checkpoint, saying how to read it instead.
    CHECK(checkpoint.in_memory());
    for (Via via : all_vias) {
        if (unavailable(via)) continue;
        INFO(to_string(via));
        with_storage(via, it::DirectIo::automatic, [&](auto storage) {
            using S = decltype(storage);
            try {
                HostLoaderOf<S> loader(checkpoint, std::move(storage), {}, it::sink::host());
                FAIL("a checkpoint without files was opened");
            } catch (const std::invalid_argument& e) {
                CHECK(std::string(e.what()).find("storage::memory constructed over the same bytes") != std::string::npos);
            }
        });
    }
}

TEST_CASE("loader: sink::host views stay valid until the next increment, through a small window") {
    TempDir dir;
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(100, 4)) specs.push_back(s);
    specs.push_back({"zz.after.tiny", fmt::Dtype::U8, {30001}});
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "window.safetensors", specs));
    using HostLoader = it::Loader<it::storage::pread, it::transport::single, it::sink::host>;
    auto pread_buffered = [] { return it::storage::pread(it::storage::pread::Options{2, it::DirectIo::off}); };
    for (const auto& options : {small_slots, minimal_ring, it::LoadOptions{}}) {
        // The smallest window the sink accepts for this plan (buffered reads: alignment 1), and
        // larger ones: the window wraps many times, so a view that outlived its increment, or a
        // destination handed out twice, would show other bytes.
        const std::vector<std::uint64_t> alignment{1};
        const auto plan = it::make_plan(checkpoint, {}, alignment, options.slot_bytes);
        const std::uint64_t needed = plan.ring_needed(it::sink::host::tensor_alignment);
        CHECK(needed >= 2 * plan.largest_tensor);
        for (std::uint64_t window : {needed, needed + 256, needed + 4096 + 17, 2 * needed, std::uint64_t{1} << 22}) {
            CAPTURE(options.slot_bytes);
            CAPTURE(window);
            HostLoader loader(checkpoint, pread_buffered(), {}, it::sink::host(window), options);
            CHECK(loader.sink().ring_bytes() == window);
            Outcome out;
            drain(loader, out);
            check_outcome(checkpoint, out);
        }
        // A smaller window is refused when the loader is built, saying how much is needed.
        CAPTURE(needed);
        try {
            HostLoader loader(checkpoint, pread_buffered(), {}, it::sink::host(needed - 1), options);
            FAIL("a window smaller than the plan needs was accepted");
        } catch (const it::error& e) {
            CHECK(std::string(e.what()).find(std::to_string(needed)) != std::string::npos);
        }
    }
    // The default window holds what the plan needs, and default_min_ring, unless every tensor
    // at once takes less: then that (this checkpoint is far smaller than the default).
    HostLoader loader(checkpoint, pread_buffered(), {}, it::sink::host(), small_slots);
    std::uint64_t everything = 0;
    for (const auto& t : checkpoint.tensors()) everything += (t.nbytes() + 255) / 256 * 256;
    REQUIRE(everything < it::sink::host::default_min_ring);
    CHECK(loader.sink().ring_bytes() ==
          std::max(loader.plan().ring_needed(it::sink::host::tensor_alignment), everything));
    Outcome out;
    drain(loader, out);
    check_outcome(checkpoint, out);
}

#if INSTANTTENSOR_HAS_URING
TEST_CASE("storage::uring: a read of 4 GiB or more is cut to what one read may ask, not to its low 32 bits") {
    if (unavailable(Via::uring)) return;
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "f.safetensors", {{"x", fmt::Dtype::U8, {100000}}}));
    it::storage::uring storage(it::storage::uring::Options{4, it::DirectIo::off});
    storage.open(checkpoint);
    // Address space for the whole request; only the file's bytes are ever written.
    const std::uint64_t length = (std::uint64_t{1} << 32) + 4096;
    void* memory = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    REQUIRE(memory != MAP_FAILED);
    storage.submit({0, 0, length, static_cast<std::byte*>(memory), 7});
    std::array<it::ReadResult, 1> results{};
    REQUIRE(storage.reap(results, true) == 1);
    CHECK(results[0].tag == 7);
    const auto file_size = static_cast<std::int64_t>(fs::file_size(checkpoint.files()[0].path));
    CHECK(results[0].result == file_size);  // a short read, at the end of the file
    ::munmap(memory, length);
}
#endif

TEST_CASE("loader: one read in flight at a time") {
    TempDir dir;
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(60, 8)) specs.push_back(s);
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "depth.safetensors", specs));
    namespace st = it::storage;
    for (it::DirectIo direct : all_direct) {
        INFO(to_string(direct));
#if INSTANTTENSOR_HAS_URING
        if (uring_available()) {
            it::Loader<st::uring, it::transport::single, it::sink::host> loader(
                checkpoint, st::uring(st::uring::Options{1, direct, false, false}), {}, it::sink::host(test_window),
                small_slots);
            CHECK(loader.storage().queue_depth() == 1);
            CHECK_FALSE(loader.storage().files_registered());
            CHECK_FALSE(loader.storage().buffers_registered());
            Outcome out;
            drain(loader, out);
            check_outcome(checkpoint, out);
        }
#endif
        {
            Placements places(checkpoint);
            it::Loader<st::pread, it::transport::single, it::sink::placement> loader(
                checkpoint, st::pread(st::pread::Options{1, direct}), {}, places.sink(), minimal_ring);
            CHECK(loader.storage().queue_depth() == 1);
            Outcome out;
            drain(loader, out);
            check_outcome(checkpoint, out);
            for (const auto& t : checkpoint.tensors())
                CHECK(places.buffer(t.name()) == expected_bytes(t.name(), t.nbytes()));
        }
        {
            auto loader =
                it::load_to_host(checkpoint, minimal_ring, {st::Backend::automatic, direct, 1, 1}, test_window);
            Outcome out;
            drain(loader, out);
            check_outcome(checkpoint, out);
        }
    }
}

TEST_CASE("loader: the load_to_host and load_into helpers") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "helpers.safetensors", odd_specs()));
    for (auto backend : {it::storage::Backend::automatic, it::storage::Backend::uring, it::storage::Backend::pread,
                         it::storage::Backend::memory}) {
        INFO(it::storage::to_string(backend));
        if (backend == it::storage::Backend::uring && unavailable(Via::uring)) continue;
        {
            auto loader = it::load_to_host(checkpoint, small_slots, {backend, it::DirectIo::automatic, 8, 2});
            Outcome out;
            drain(loader, out);
            check_outcome(checkpoint, out);
            if (backend != it::storage::Backend::automatic) CHECK(loader.storage().chosen() == backend);
            else if (uring_available()) CHECK(loader.storage().chosen() == it::storage::Backend::uring);
            else CHECK(loader.storage().chosen() == it::storage::Backend::pread);
            const bool fell_back = backend == it::storage::Backend::automatic && !uring_available();
            CHECK(loader.storage().fallback_reason().empty() == !fell_back);
            CHECK(loader.storage().name() == it::storage::to_string(loader.storage().chosen()));
            CHECK(out.stats.seconds >= 0);
            CHECK(out.stats.staging_bytes > 0);
        }
        {
            Placements places(checkpoint);
            auto loader = it::load_into(checkpoint, places.destination(), {}, {backend, it::DirectIo::on, 8, 2});
            Outcome out;
            drain(loader, out);
            check_outcome(checkpoint, out);
        }
    }
}

TEST_CASE("loader: misuse") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "misuse.safetensors", tiny_specs(10)));
    using HostLoader = it::Loader<it::storage::memory, it::transport::single, it::sink::host>;
    SUBCASE("a loader is iterated once") {
        HostLoader loader(checkpoint, it::storage::memory(), {}, it::sink::host());
        std::size_t n = 0;
        for (const auto& t : loader) n += t.data.size() > 0 ? 1 : 0;
        CHECK(n == 10);
        CHECK_THROWS_AS(loader.begin(), std::logic_error);
    }
    SUBCASE("slot sizes must be multiples of 4096, at least 12 KiB") {
        CHECK_THROWS_AS(HostLoader(checkpoint, it::storage::memory(), {}, it::sink::host(), ring_of(1 << 20, 8192)),
                        std::invalid_argument);
        CHECK_THROWS_AS(HostLoader(checkpoint, it::storage::memory(), {}, it::sink::host(), ring_of(1 << 20, 20000)),
                        std::invalid_argument);
    }
    SUBCASE("a transport of several ranks must exchange bytes") {
        using GroupLoader = it::Loader<it::storage::memory, TwoRanks, it::sink::host>;
        CHECK_THROWS_AS(GroupLoader(checkpoint, it::storage::memory(), {}, it::sink::host()), std::invalid_argument);
    }
    SUBCASE("sink::placement needs a function") {
        using PlacementLoader = it::Loader<it::storage::memory, it::transport::single, it::sink::placement>;
        CHECK_THROWS_AS(PlacementLoader(checkpoint, it::storage::memory(), {}, it::sink::placement(nullptr)),
                        it::error);
    }
}
