// sink::placement: a destination of the wrong size is refused with a usage_error naming the tensor,
// before any byte of it is read, and the loader stays stopped.
#include <doctest/doctest.h>

#include <map>
#include <span>
#include <string>
#include <vector>

#include "fault_runs.hpp"
#include "instanttensor/loader.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;

}  // namespace

TEST_CASE("sink::placement: a destination of the wrong size") {
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
