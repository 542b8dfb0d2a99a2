// storage::memory over bytes the caller holds (Checkpoint::from_memory): byte-exact through both host
// sinks, spans that do not match the files refused, and file backends refusing such a checkpoint.
#include <doctest/doctest.h>

#include <span>
#include <string>
#include <utility>
#include <vector>

#include "instanttensor/loader.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;

}  // namespace

TEST_CASE("storage::memory over caller-owned bytes") {
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
