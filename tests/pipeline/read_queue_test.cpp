// pipeline::ReadQueue, driven through loaders over a storage wrapper that injects faults (or a file
// truncated for real): short reads are continued, EINTR and EAGAIN retried, EIO and an early end of
// file reported as io_error naming the file and byte offset, wrong bytes never yielded; and a load
// runs with one read in flight at a time.
#include <doctest/doctest.h>

#include <unistd.h>

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

}  // namespace

TEST_CASE("read queue: short reads are continued") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "short.safetensors", fault_specs()));
    for (it::DirectIo direct : {it::DirectIo::off, it::DirectIo::on}) {
        INFO("direct=", to_string(direct));
        for_each_inner(direct, [&](auto make) {
            const bool aligned = direct == it::DirectIo::on;
            for (Fault fault : {Fault{Fault::short_read, 1, 1, 0}, Fault{Fault::short_read, 3, 1, 0},
                                Fault{Fault::short_read, 2, 40, aligned ? 4096u : 1000u},
                                Fault{Fault::short_read, 1, 1000000, aligned ? 8192u : 777u}}) {
                CAPTURE(fault.first);
                CAPTURE(fault.count);
                const auto run = run_faulty(checkpoint, make(), fault);
                CHECK_FALSE(run.error);
                if (run.error) MESSAGE(message_of(run.error));
                CHECK(run.yielded == run.expected);
                CHECK(run.faults > 0);
                CHECK(run.stats.retries > 0);
            }
        });
    }
}

TEST_CASE("read queue: EAGAIN and EINTR are retried") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "again.safetensors", fault_specs()));
    for (auto kind : {Fault::eagain, Fault::eintr}) {
        CAPTURE(static_cast<int>(kind));
        for_each_inner(it::DirectIo::automatic, [&](auto make) {
            for (Fault fault : {Fault{kind, 1, 1, 0}, Fault{kind, 4, 3, 0}, Fault{kind, 2, 50, 0}}) {
                const auto run = run_faulty(checkpoint, make(), fault);
                CHECK_FALSE(run.error);
                if (run.error) MESSAGE(message_of(run.error));
                CHECK(run.yielded == run.expected);
                CHECK(run.faults == fault.count);
                CHECK(run.stats.retries >= fault.count);
            }
        });
    }
}

TEST_CASE("read queue: reads that keep failing with EAGAIN end in io_error") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "forever.safetensors", fault_specs()));
    const auto run = run_faulty(checkpoint, it::storage::memory(), Fault{Fault::eagain, 2, 100000000, 0});
    REQUIRE(run.error);
    CHECK_THROWS_AS(std::rethrow_exception(run.error), it::io_error);
    CHECK(message_of(run.error).find("forever.safetensors") != std::string::npos);
    CHECK(run.after_error.find("earlier error") != std::string::npos);
}

TEST_CASE("read queue: EIO surfaces as io_error naming the file and byte offset") {
    TempDir dir;
    const auto path = write_file(dir / "eio.safetensors", fault_specs());
    const auto checkpoint = fmt::Checkpoint::open(path);
    for (it::DirectIo direct : {it::DirectIo::off, it::DirectIo::on}) {
        INFO("direct=", to_string(direct));
        for_each_inner(direct, [&](auto make) {
            for (std::uint64_t at : {1u, 2u, 5u, 9u}) {
                CAPTURE(at);
                const auto run = run_faulty(checkpoint, make(), Fault{Fault::eio, at, 1, 0});
                REQUIRE(run.error);
                REQUIRE(run.first_fault);
                try {
                    std::rethrow_exception(run.error);
                } catch (const it::io_error& e) {
                    const std::string what = e.what();
                    CHECK(e.code() == EIO);
                    CHECK(what.find(path.string()) != std::string::npos);
                    CHECK(what.find("byte " + std::to_string(run.first_fault->offset)) != std::string::npos);
                    CHECK(e.source() == path.string());
                } catch (const std::exception& e) {
                    FAIL("expected io_error, got: " << e.what());
                }
                CHECK(run.yielded < run.expected);
                CHECK(run.after_error.find("earlier error") != std::string::npos);
                CHECK(run.after_error.find("byte " + std::to_string(run.first_fault->offset)) != std::string::npos);
            }
        });
    }
}

TEST_CASE("read queue: a file truncated after it was opened") {
    TempDir dir;
    for (it::DirectIo direct : {it::DirectIo::off, it::DirectIo::on}) {
        for (Via via : {Via::uring, Via::pread, Via::auto_uring, Via::auto_pread}) {
            if (unavailable(via)) continue;
            for (double keep : {0.0, 0.3, 0.97}) {
                INFO(to_string(via), " direct=", to_string(direct), " keep ", keep);
                const auto path = write_file(dir / "truncated.safetensors", fault_specs());
                const auto checkpoint = fmt::Checkpoint::open(path);
                const auto& file = checkpoint.files()[0];
                const auto kept = static_cast<std::uint64_t>(keep * static_cast<double>(file.header.data_size));
                const auto new_size = static_cast<off_t>(file.header.data_offset() + kept);
                with_storage(via, direct, [&](auto storage) {
                    using S = decltype(storage);
                    HostLoaderOf<S> loader(checkpoint, std::move(storage), {}, it::sink::host(test_ring),
                                           small_slots);
                    REQUIRE(::truncate(path.c_str(), new_size) == 0);
                    std::exception_ptr error;
                    const std::size_t yielded = load_until_error(loader, checkpoint, error);
                    REQUIRE(error);
                    try {
                        std::rethrow_exception(error);
                    } catch (const it::io_error& e) {
                        CHECK(std::string(e.what()).find("end of file") != std::string::npos);
                        CHECK(std::string(e.what()).find(path.string()) != std::string::npos);
                    } catch (const std::exception& e) {
                        FAIL("expected io_error, got: " << e.what());
                    }
                    // Only tensors wholly before the new end may have been yielded.
                    for (std::size_t i = 0; i < yielded; ++i) {
                        const auto& t = checkpoint.tensors()[i];
                        CHECK(t.file_offset + t.nbytes() <= static_cast<std::uint64_t>(new_size));
                    }
                });
            }
        }
    }
}

TEST_CASE("read queue: one read in flight at a time") {
    TempDir dir;
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(60, 8)) specs.push_back(s);
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "depth.safetensors", specs));
    namespace st = it::storage;
    for (it::DirectIo direct : all_direct) {
        INFO("direct=", to_string(direct));
#if INSTANTTENSOR_HAS_URING
        if (uring_available()) {
            it::Loader<st::uring, it::transport::single, it::sink::host> loader(
                checkpoint, st::uring(st::uring::Options{1, direct, false, false}), {}, it::sink::host(test_ring),
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
                CHECK(places.bytes(t.name()) == expected_bytes(t.name(), t.nbytes()));
        }
        {
            auto loader =
                it::load_to_host(checkpoint, minimal_ring, {st::Backend::automatic, direct, 1, 1}, test_ring);
            Outcome out;
            drain(loader, out);
            check_outcome(checkpoint, out);
        }
    }
}
