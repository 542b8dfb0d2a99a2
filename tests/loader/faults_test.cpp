// Read faults, injected by a storage wrapper or made real by truncating a file: the loader
// continues short reads, retries EINTR and EAGAIN, reports EIO and an early end of file as
// io_error naming the file and byte offset, never yields wrong bytes, refuses further use after an
// error, and is destroyed cleanly at any point.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "faulty.hpp"
#include "instanttensor/loader.hpp"
#include "support.hpp"

namespace {

using namespace loader_test;

static_assert(it::StorageBackend<Faulty<it::storage::pread>>);

/// Iterates, copying and checking each yielded tensor; returns how many came before an exception
/// (rethrown to the caller through `error`).
template <class L>
std::size_t load_until_error(L& loader, const fmt::Checkpoint& checkpoint, std::exception_ptr& error) {
    const auto refs = expected_order(checkpoint, {});
    std::size_t yielded = 0;
    try {
        for (const it::TensorView& t : loader) {
            if (yielded >= refs.size()) {
                FAIL_CHECK("more tensors than were selected");
                break;
            }
            CHECK(t.ref == refs[yielded]);
            const std::vector<std::byte> got(t.data.begin(), t.data.end());
            CHECK(got == expected_bytes(refs[yielded]->name(), refs[yielded]->nbytes()));  // never wrong bytes
            ++yielded;
        }
    } catch (...) {
        error = std::current_exception();
    }
    return yielded;
}

/// A checkpoint of several extents of 16 KiB: odd sizes, a large tensor and small ones.
std::vector<fmt::TensorSpec> fault_specs() {
    auto specs = odd_specs();
    specs.push_back({"large", fmt::Dtype::F32, {50000}});
    return specs;
}

const it::LoadOptions small_slots = ring_of(64 << 10, 16 << 10);

template <class Inner>
using FaultyLoader = it::Loader<Faulty<Inner>, it::transport::single, it::sink::host>;

/// What a load through Faulty yielded and how it ended.
struct FaultRun {
    std::size_t yielded = 0;
    std::size_t expected = 0;
    std::exception_ptr error;
    std::optional<it::ReadRequest> first_fault;
    std::uint64_t faults = 0;
    it::LoadStats stats;
    std::string after_error;  // what operator++ said when called again after the error
};

/// Runs a load through Faulty<Inner>, checking every tensor it yields, and tries to go on after an
/// error.
template <class Inner>
FaultRun run_faulty(const fmt::Checkpoint& checkpoint, Inner inner, Fault fault,
                    const it::LoadOptions& options = small_slots) {
    FaultRun run;
    FaultyLoader<Inner> loader(checkpoint, Faulty<Inner>(std::move(inner), fault), {}, it::sink::host(test_window),
                               options);
    run.expected = loader.plan().tensors.size();
    const auto refs = expected_order(checkpoint, {});
    typename FaultyLoader<Inner>::iterator it_;
    bool started = false;
    try {
        it_ = loader.begin();
        started = true;
        for (; it_ != loader.end(); ++it_) {
            if (run.yielded >= refs.size()) {
                FAIL_CHECK("more tensors than were selected");
                break;
            }
            CHECK(it_->ref == refs[run.yielded]);
            const std::vector<std::byte> got(it_->data.begin(), it_->data.end());
            CHECK(got == expected_bytes(refs[run.yielded]->name(), refs[run.yielded]->nbytes()));  // never wrong bytes
            ++run.yielded;
        }
    } catch (...) {
        run.error = std::current_exception();
        // After an error the loader refuses further use: operator++ when begin() had returned,
        // begin() again when it was begin() that threw.
        try {
            if (started) ++it_;
            else loader.begin();
            run.after_error = "(no exception)";
        } catch (const it::error& e) {
            run.after_error = e.what();
        } catch (const std::exception& e) {
            run.after_error = std::string("not an instanttensor::error: ") + e.what();
        }
    }
    run.first_fault = loader.storage().first_fault();
    run.faults = loader.storage().faults();
    run.stats = loader.stats();
    return run;
}

/// Calls `f` with a factory of each kind of inner backend.
template <class F>
void for_each_inner(it::DirectIo direct, F&& f) {
    namespace st = it::storage;
#if INSTANTTENSOR_HAS_URING
    if (uring_available()) {
        INFO("uring");
        f([direct] { return st::uring(st::uring::Options{8, direct}); });
    }
#endif
    {
        INFO("pread");
        f([direct] { return st::pread(st::pread::Options{3, direct}); });
    }
    {
        INFO("memory");
        f([] { return st::memory(); });
    }
    {
        INFO("automatic");
        f([direct] { return st::automatic({st::Backend::automatic, direct, 8, 2}); });
    }
}

/// Number of file descriptors this process has open.
std::size_t open_descriptors() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/self/fd")) ++n;
    return n;
}

std::string message_of(const std::exception_ptr& error) {
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        return e.what();
    }
    return {};
}

}  // namespace

TEST_CASE("faults: short reads are continued") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "short.safetensors", fault_specs()));
    for (it::DirectIo direct : {it::DirectIo::off, it::DirectIo::on}) {
        INFO(to_string(direct));
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

TEST_CASE("faults: EAGAIN and EINTR are retried") {
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

TEST_CASE("faults: reads that keep failing with EAGAIN end in io_error") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "forever.safetensors", fault_specs()));
    const auto run = run_faulty(checkpoint, it::storage::memory(), Fault{Fault::eagain, 2, 100000000, 0});
    REQUIRE(run.error);
    CHECK_THROWS_AS(std::rethrow_exception(run.error), it::io_error);
    CHECK(message_of(run.error).find("forever.safetensors") != std::string::npos);
    CHECK(run.after_error.find("earlier error") != std::string::npos);
}

TEST_CASE("faults: EIO surfaces as io_error naming the file and byte offset") {
    TempDir dir;
    const auto path = write_file(dir / "eio.safetensors", fault_specs());
    const auto checkpoint = fmt::Checkpoint::open(path);
    for (it::DirectIo direct : {it::DirectIo::off, it::DirectIo::on}) {
        INFO(to_string(direct));
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

TEST_CASE("faults: a file truncated after it was opened") {
    TempDir dir;
    for (it::DirectIo direct : {it::DirectIo::off, it::DirectIo::on}) {
        for (Via via : {Via::uring, Via::pread, Via::auto_uring, Via::auto_pread}) {
            if (unavailable(via)) continue;
            for (double keep : {0.0, 0.3, 0.97}) {
                INFO(to_string(via), " ", to_string(direct), " keep ", keep);
                const auto path = write_file(dir / "truncated.safetensors", fault_specs());
                const auto checkpoint = fmt::Checkpoint::open(path);
                const auto& file = checkpoint.files()[0];
                const auto kept = static_cast<std::uint64_t>(keep * static_cast<double>(file.header.data_size));
                const auto new_size = static_cast<off_t>(file.header.data_offset() + kept);
                with_storage(via, direct, [&](auto storage) {
                    using S = decltype(storage);
                    HostLoaderOf<S> loader(checkpoint, std::move(storage), {}, it::sink::host(test_window),
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

TEST_CASE("faults: a wrong-size destination from sink::placement") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "placement.safetensors", fault_specs()));
    const auto refs = expected_order(checkpoint, {});
    REQUIRE(refs.size() > 8);
    for (std::size_t victim : {std::size_t{0}, std::size_t{6}, refs.size() - 1}) {
        for (long delta : {-1L, 1L}) {
            const std::string victim_name = refs[victim]->name();
            CAPTURE(victim_name);
            std::map<std::string, std::vector<std::byte>> buffers;
            for (const auto& t : checkpoint.tensors())
                buffers[t.name()].resize(static_cast<std::size_t>(t.nbytes()) + 1);
            it::sink::placement sink([&](const fmt::TensorRef& t) -> std::span<std::byte> {
                auto& b = buffers.at(t.name());
                std::size_t size = static_cast<std::size_t>(t.nbytes());
                if (t.name() == victim_name) size = static_cast<std::size_t>(static_cast<long>(size) + delta);
                return {b.data(), size};
            });
            it::Loader<it::storage::pread, it::transport::single, it::sink::placement> loader(
                checkpoint, it::storage::pread(), {}, std::move(sink), small_slots);
            std::exception_ptr error;
            const std::size_t yielded = load_until_error(loader, checkpoint, error);
            REQUIRE(error);
            CHECK(yielded <= victim);
            try {
                std::rethrow_exception(error);
            } catch (const it::io_error& e) {
                FAIL("expected a plain error, got io_error: " << e.what());
            } catch (const it::error& e) {
                CHECK(std::string(e.what()).find("'" + victim_name + "'") != std::string::npos);
            }
            // Further use repeats the error.
            try {
                loader.begin();
                FAIL("begin() worked twice");
            } catch (const it::error& e) {
                CHECK(std::string(e.what()).find("earlier error") != std::string::npos);
                CHECK(std::string(e.what()).find("'" + victim_name + "'") != std::string::npos);
            }
        }
    }
}

TEST_CASE("faults: operator++ after an error throws the earlier one again, with its type and code") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "again.safetensors", fault_specs()));
    using L = FaultyLoader<it::storage::pread>;
    // The error comes from a later tensor: the iterator exists and can be advanced again.
    L loader(checkpoint, Faulty<it::storage::pread>(it::storage::pread(), Fault{Fault::eio, 6, 1, 0}), {},
             it::sink::host(test_window), ring_of(16 << 10, 12 << 10));
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

TEST_CASE("faults: loaders are destroyed cleanly mid-load and after errors") {
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
                    HostLoaderOf<S> loader(checkpoint, std::move(storage), {}, it::sink::host(test_window),
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
    // Every file descriptor (files, O_DIRECT twins, rings) was closed.
    CHECK(open_descriptors() == descriptors_before);
}
