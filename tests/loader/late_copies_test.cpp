// Loads into a sink whose copies run late (LateCopySink), as the device sinks' copies do: the
// loader's handling of copy tickets, which decides when a staging slot may be reused and when a
// tensor may be yielded, runs here on the CPU through every storage backend. A slot reused or a
// tensor yielded before its copies ran shows up as wrong bytes. (Group loads into the same sink:
// group_test.cpp.)
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "instanttensor/loader.hpp"
#include "late_copy_sink.hpp"
#include "support.hpp"

namespace {

using namespace loader_test;

/// How late copies run: at the first ask, after a few asks, or only when the loader waits.
constexpr unsigned latencies[] = {0, 3, 1u << 30};

std::vector<fmt::TensorSpec> late_specs() {
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(80, 5)) specs.push_back(s);
    for (auto& s : edge_specs()) specs.push_back(s);
    return specs;
}

template <class S>
using LateLoaderOf = it::Loader<S, it::transport::single, LateCopySink>;

}  // namespace

TEST_CASE("late copies: a slot is reused, and a tensor yielded, only once its copies ran") {
    TempDir dir;
    const auto index = fmt::write_sharded_checkpoint(dir / "late", late_specs(), 2, fill_tensor);
    const auto checkpoint = fmt::Checkpoint::open(index);
    for (Via via : all_vias) {
        if (unavailable(via)) continue;
        for (it::DirectIo direct : {it::DirectIo::off, it::DirectIo::on}) {
            for (unsigned latency : latencies) {
                INFO(to_string(via), " ", to_string(direct), " latency ", latency);
                with_storage(via, direct, [&](auto storage) {
                    using S = decltype(storage);
                    // Three slots of 16 KiB: slots are reused many times over.
                    LateLoaderOf<S> loader(checkpoint, std::move(storage), {}, LateCopySink(latency, test_window),
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

TEST_CASE("late copies: a loader dropped with copies pending frees staging only after them") {
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
                LateLoaderOf<S> loader(checkpoint, std::move(storage), {}, LateCopySink(latencies[2], test_window),
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
