// sink::host: a yielded view stays valid until the next increment, through rings from the smallest
// the plan accepts up; the default ring is what the plan needs, no more than every tensor at once.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "instanttensor/loader.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;

}  // namespace

TEST_CASE("sink::host: views stay valid until the next increment, through a small ring") {
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
