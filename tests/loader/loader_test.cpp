// Loader, the consumer's side: the load_to_host and load_into helpers, misuse refused, a loader
// stopped by an error repeating it (with its type and code), and loaders destroyed cleanly at any
// point: mid-load with reads in flight, after an error, or failing in their constructor.
#include <doctest/doctest.h>

#include <cerrno>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "fault_runs.hpp"
#include "instanttensor/loader.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;

/// A group of two ranks that exchanges nothing: a Transport, not a GroupTransport.
struct TwoRanks {
    static constexpr instanttensor::MemoryKind memory = instanttensor::MemoryKind::host;
    int rank() const { return 0; }
    int size() const { return 2; }
};

}  // namespace

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

TEST_CASE("loader: operator++ after an error throws the earlier one again, with its type and code") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "again.safetensors", fault_specs()));
    using L = FaultyLoader<it::storage::pread>;
    // The error comes from a later tensor: the iterator exists and can be advanced again.
    L loader(checkpoint, Faulty<it::storage::pread>(it::storage::pread(), Fault{Fault::eio, 6, 1, 0}), {},
             it::sink::host(test_ring), ring_of(16 << 10, 12 << 10));
    auto it_ = loader.begin();
    std::string first;
    try {
        for (; it_ != loader.end(); ++it_) {}
        FAIL("no error");
    } catch (const it::io_error& e) {
        first = e.what();
    }
    for (int again = 0; again < 3; ++again) {
        try {
            ++it_;
            FAIL("operator++ worked after an error");
        } catch (const it::io_error& e) {  // the caller still learns what failed, and its errno
            const std::string what = e.what();
            CHECK(what.find("earlier error") != std::string::npos);
            CHECK(what.find(first) != std::string::npos);
            CHECK(e.code() == EIO);
        } catch (const std::exception& e) {
            FAIL("the repeated error lost its type: " << e.what());
        }
    }
}

TEST_CASE("loader: loaders are destroyed cleanly mid-load and after errors") {
    TempDir dir;
    std::vector<fmt::TensorSpec> specs;
    for (int i = 0; i < 40; ++i) specs.push_back({"block." + std::to_string(i), fmt::Dtype::F32, {12289}});
    const auto path = write_file(dir / "mid.safetensors", specs);
    const auto checkpoint = fmt::Checkpoint::open(path);
    const std::size_t descriptors_before = open_descriptors();
    for (Via via : all_vias) {
        if (unavailable(via)) continue;
        for (it::DirectIo direct : {it::DirectIo::off, it::DirectIo::on}) {
            for (std::size_t stop_after : {0u, 1u, 3u}) {
                INFO(to_string(via), " ", to_string(direct), " after ", stop_after);
                with_storage(via, direct, [&](auto storage) {
                    using S = decltype(storage);
                    HostLoaderOf<S> loader(checkpoint, std::move(storage), {}, it::sink::host(test_ring),
                                           ring_of(1 << 20, 64 << 10));
                    REQUIRE(loader.plan().extents.size() > 20);
                    if (stop_after == 0) return;  // built, never started
                    auto it_ = loader.begin();
                    for (std::size_t i = 1; i < stop_after; ++i) ++it_;
                    CHECK(it_->name == checkpoint.tensors()[stop_after - 1].name());
                    // Reads are in flight; the loader goes out of scope here.
                });
            }
        }
    }
    // Built but failing in the constructor (after the files were opened and threads started).
    for (Via via : all_vias) {
        if (unavailable(via)) continue;
        INFO(to_string(via));
        with_storage(via, it::DirectIo::on, [&](auto storage) {
            using S = decltype(storage);
            using L = it::Loader<S, it::transport::single, it::sink::host>;
            CHECK_THROWS_AS(L(checkpoint, std::move(storage), {}, it::sink::host(4096), ring_of(1 << 20, 64 << 10)),
                            it::error);
        });
    }
    // Threw mid-load, then destroyed.
    for (Fault fault : {Fault{Fault::eio, 5, 1, 0}, Fault{Fault::eio, 1, 1, 0}}) {
#if INSTANTTENSOR_HAS_URING
        if (uring_available()) {
            const auto run = run_faulty(checkpoint, it::storage::uring(), fault, ring_of(1 << 20, 64 << 10));
            CHECK(run.error);
        }
#endif
        const auto run2 = run_faulty(checkpoint, it::storage::pread(), fault, ring_of(1 << 20, 64 << 10));
        CHECK(run2.error);
    }
    // Every file descriptor (files, rings) was closed.
    CHECK(open_descriptors() == descriptors_before);
}
