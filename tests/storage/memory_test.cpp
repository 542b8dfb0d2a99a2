// storage::memory over bytes the caller holds (Checkpoint::from_memory): byte-exact through both host
// sinks, spans that do not match the files refused, and file backends refusing such a checkpoint;
// over files it maps: a file truncated during the load is an error, not a signal or zeros.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
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
                CHECK(places.bytes(t.name()) == expected_bytes(t.name(), t.nbytes()));
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

namespace {

/// Eight tensors of 64 KiB: a file that ends inside a page.
std::vector<fmt::TensorSpec> block_specs() {
    std::vector<fmt::TensorSpec> specs;
    for (int i = 0; i < 8; ++i) specs.push_back({"block." + std::to_string(i), fmt::Dtype::F32, {16384}});
    return specs;
}

}  // namespace

TEST_CASE("storage::memory: a mapped file truncated during the load is an io_error, never a signal or zeros") {
    // 3 bytes: the end moves inside the last page, whose bytes past it then read as zeros (no
    // fault); 200,000 bytes: whole pages go, and reading them raises SIGBUS.
    for (const std::uint64_t cut : {3u, 200000u}) {
        CAPTURE(cut);
        TempDir dir;
        const auto path = write_file(dir / "mapped.safetensors", block_specs());
        const auto checkpoint = fmt::Checkpoint::open(path);
        const std::uint64_t size = std::filesystem::file_size(path);
        REQUIRE(size % 4096 != 0);
        // A ring of four tensors: the load has read at most half the file when it yields the first.
        HostLoaderOf<it::storage::memory> loader(checkpoint, it::storage::memory(), {}, it::sink::host(256 << 10),
                                                 small_slots);
        std::size_t yielded = 0;
        std::string error;
        try {
            for (const auto& tensor : loader) {
                CHECK(std::ranges::equal(tensor.data, expected_bytes(tensor.name, tensor.data.size())));
                if (yielded++ == 0) std::filesystem::resize_file(path, size - cut);
            }
        } catch (const it::io_error& e) {
            error = e.what();
        }
        CHECK(error == path.string() + ": unexpected end of file at byte " + std::to_string(size - cut) +
                           " (was the file truncated after it was opened?)");
        CHECK(yielded < 8);
    }
}

TEST_CASE("storage::memory: caller-owned bytes that fault are an io_error") {
    // The caller mapped a file, and it was truncated underneath: reading the pages past its new end
    // raises SIGBUS, which the copy turns into EIO.
    TempDir dir;
    const auto path = write_file(dir / "caller.safetensors", block_specs());
    const std::uint64_t size = std::filesystem::file_size(path);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    REQUIRE(map != MAP_FAILED);
    const std::span<const std::byte> bytes(static_cast<const std::byte*>(map), size);
    const std::pair<std::string, std::span<const std::byte>> named[] = {{"mapped-by-caller", bytes}};
    const auto checkpoint = fmt::Checkpoint::from_memory(named);
    std::filesystem::resize_file(path, 4096);
    try {
        HostLoaderOf<it::storage::memory> loader(checkpoint, it::storage::memory(std::vector<std::span<const std::byte>>{bytes}), {}, it::sink::host(256 << 10),
                                                 small_slots);
        for (const auto& tensor : loader) (void)tensor;
        FAIL("a load over pages that fault succeeded");
    } catch (const it::io_error& e) {
        CHECK(std::string(e.what()).starts_with("mapped-by-caller: read failed at byte "));
        CHECK(e.code() == EIO);
    }
    ::munmap(map, size);
}
