// sink::placement: a destination of the wrong size is refused with a usage_error naming the tensor,
// before any byte of it is read, and the loader stays stopped. sink::TensorMemory: placed where
// O_DIRECT reads can land in it, and loaded into.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
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

TEST_CASE("sink::TensorMemory: placed for O_DIRECT reads where a tensor fills one, and loaded into") {
    TempDir dir;
    const auto path = write_file(dir / "memory.safetensors", {{"small", fmt::Dtype::U8, {4097}},
                                                              {"large", fmt::Dtype::F32, {3 * 16384 + 5}},
                                                              {"empty", fmt::Dtype::F32, {0}}});
    const auto checkpoint = fmt::Checkpoint::open(path);
    const fmt::TensorRef& small = *checkpoint.find("small");
    const fmt::TensorRef& large = *checkpoint.find("large");
    const fmt::TensorRef& empty = *checkpoint.find("empty");
    constexpr std::uint64_t read = 16 << 10;
    auto address = [](const it::sink::TensorMemory& m) { return reinterpret_cast<std::uintptr_t>(m.span().data()); };

    const it::sink::TensorMemory whole(large, large.nbytes(), read);
    CHECK(whole.span().size() == large.nbytes());
    CHECK(address(whole) % 4096 == it::sink::placement::in_place_offset(large));
    // Smaller than a read, or a block of the tensor: no read of its own to place for.
    CHECK(address(it::sink::TensorMemory(small, small.nbytes(), read)) % 64 == 0);
    const it::sink::TensorMemory block(large, large.nbytes() / 2, read);
    CHECK(block.span().size() == large.nbytes() / 2);
    CHECK(address(block) % 64 == 0);
    it::sink::TensorMemory none(empty, 0, read);
    CHECK(none.span().empty());
    CHECK(none.span().data() != nullptr);
    void* released = none.release();
    CHECK(released != nullptr);
    CHECK(none.span().data() == nullptr);
    std::free(released);

    // Loaded into, through each page-cache policy: the bytes written, and with O_DIRECT the reads
    // of "large" alone straight in it.
    for (it::DirectIo direct : all_direct) {
        INFO("direct=", to_string(direct));
        std::map<std::string, it::sink::TensorMemory> memory;
        it::LoadOptions options = small_slots;
        auto loader = it::load_into(
            checkpoint,
            [&](const fmt::TensorRef& t) { return memory.try_emplace(t.name(), t, t.nbytes(), options.slot_bytes).first->second.span(); },
            options, {it::storage::Backend::pread, direct});
        for (const it::TensorView& t : loader)
            CHECK(std::ranges::equal(t.data, expected_bytes(t.name, t.data.size())));
        CHECK(memory.size() == 2);
        if (loader.storage().direct_files() == 1) CHECK(loader.stats().in_place_bytes >= large.nbytes() - 2 * read);
        else CHECK(loader.stats().in_place_bytes >= large.nbytes());
    }
}
