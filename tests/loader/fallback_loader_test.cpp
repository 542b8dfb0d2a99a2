// FallbackLoader: the preferred storage where it opens, else the fallback, with the reason; the
// choice load_to_device makes between GPUDirect Storage and the host backends, checked here with
// host storages so that it runs without a GPU.
#include <doctest/doctest.h>

#include <cerrno>
#include <optional>
#include <string>

#include "instanttensor/loader.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;

/// A storage whose open() fails the way it is told to (as storage::gds does without its driver);
/// it never gets to read.
class RefusingStorage {
public:
    static constexpr it::MemoryKind destination = it::MemoryKind::host;
    enum class Refusal { unavailable, io };

    explicit RefusingStorage(Refusal refusal) : refusal_(refusal) {}
    void open(const fmt::Checkpoint&) {
        if (refusal_ == Refusal::unavailable) throw it::unavailable_error("its driver", "not loaded here");
        throw it::io_error("refusing", "cannot open", EACCES);
    }
    [[nodiscard]] std::uint64_t alignment(std::uint32_t) const { return 1; }
    [[nodiscard]] std::size_t queue_depth() const { return 1; }
    void submit(const it::ReadRequest&) { FAIL("a storage that did not open was asked to read"); }
    std::size_t reap(std::span<it::ReadResult>, bool) { return 0; }
    [[nodiscard]] std::string_view name() const { return "refusing"; }

private:
    Refusal refusal_;
};

template <class Preferred, class Fallback>
using HostFallbackLoader = it::FallbackLoader<Preferred, Fallback, it::sink::host>;

it::sink::host make_sink() { return it::sink::host(test_ring); }

/// Runs `loader` to the end and checks every tensor's bytes.
template <class L>
void check_loads(const fmt::Checkpoint& checkpoint, L& loader) {
    Outcome out;
    for (const it::TensorView& t : loader)
        out.tensors.push_back({std::string(t.name), t.dtype, {t.shape.begin(), t.shape.end()}, {t.data.begin(), t.data.end()}, t.ref});
    out.stats = loader.stats();
    out.plan_read_bytes = loader.plan().read_bytes;
    out.plan_extents = loader.plan().extents.size();
    check_outcome(checkpoint, out);
}

}  // namespace

TEST_CASE("fallback loader: a preferred storage that is unavailable is passed over, saying why") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "f.safetensors", odd_specs()));
    HostFallbackLoader<RefusingStorage, it::storage::pread> loader(
        checkpoint, RefusingStorage(RefusingStorage::Refusal::unavailable), it::storage::pread(), make_sink, ring_of(64 << 10, 16 << 10));
    CHECK(loader.backend() == "pread");
    CHECK(loader.fallback_reason() == "refusing: its driver: not loaded here");
    check_loads(checkpoint, loader);
}

TEST_CASE("fallback loader: a preferred storage that opens is used, and the fallback is not") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "f.safetensors", odd_specs()));
    HostFallbackLoader<it::storage::memory, RefusingStorage> loader(
        checkpoint, it::storage::memory(), RefusingStorage(RefusingStorage::Refusal::io), make_sink, ring_of(64 << 10, 16 << 10));
    CHECK(loader.backend() == "memory");
    CHECK(loader.fallback_reason().empty());
    check_loads(checkpoint, loader);
    loader.visit([](const auto& chosen) { CHECK(chosen.storage().name() == "memory"); });
}

TEST_CASE("fallback loader: without a preferred storage the fallback alone loads, with its own reasons") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "f.safetensors", odd_specs()));
    namespace st = it::storage;
    HostFallbackLoader<RefusingStorage, st::automatic> loader(checkpoint, std::nullopt, st::automatic({st::Backend::pread}),
                                                              make_sink, ring_of(64 << 10, 16 << 10));
    CHECK(loader.backend() == "pread");
    CHECK(loader.fallback_reason().empty());  // pread was asked for: nothing was passed over
    check_loads(checkpoint, loader);
}

TEST_CASE("fallback loader: what cannot fall back fails") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "f.safetensors", odd_specs()));
    using L = HostFallbackLoader<RefusingStorage, it::storage::pread>;
    // The preferred storage alone (as with Backend::gds): its refusal is the error.
    CHECK_THROWS_WITH_AS(L(checkpoint, RefusingStorage(RefusingStorage::Refusal::unavailable), std::nullopt, make_sink),
                         "its driver: not loaded here", it::unavailable_error);
    // Only unavailability falls back: an I/O error on a storage that runs here is the caller's to see.
    CHECK_THROWS_AS(L(checkpoint, RefusingStorage(RefusingStorage::Refusal::io), it::storage::pread(), make_sink), it::io_error);
    CHECK_THROWS_AS(L(checkpoint, std::nullopt, std::nullopt, make_sink), it::usage_error);
}
