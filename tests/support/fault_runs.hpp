// tests/support/fault_runs.hpp: loads through Faulty (faulty.hpp), and what a test learns from one:
// how many tensors came (each checked byte for byte), the error, and what further use said.
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "faulty.hpp"
#include "instanttensor/loader.hpp"
#include "loads.hpp"

namespace instanttensor_test {

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
inline std::vector<fmt::TensorSpec> fault_specs() {
    auto specs = odd_specs();
    specs.push_back({"large", fmt::Dtype::F32, {50000}});
    return specs;
}

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
    FaultyLoader<Inner> loader(checkpoint, Faulty<Inner>(std::move(inner), fault), {}, it::sink::host(test_ring),
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
inline std::size_t open_descriptors() {
    std::size_t n = 0;
    for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/self/fd")) ++n;
    return n;
}

inline std::string message_of(const std::exception_ptr& error) {
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        return e.what();
    }
    return {};
}

}  // namespace instanttensor_test
