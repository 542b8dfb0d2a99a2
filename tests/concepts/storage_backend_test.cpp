// StorageBackend: the library's backends model it; each near-miss below breaks one required
// expression and is refused. Every check is a CHECK of its own, so one that fails names itself
// and the others still run.
#include <doctest/doctest.h>

#include "instanttensor/loader.hpp"
#include "models.hpp"

namespace {

using namespace concepts_test;

struct StorageWithoutReap {
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    std::string_view name() const { return "no reap"; }
};

struct StorageWithoutDestination {
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    std::size_t reap(std::span<ReadResult>, bool) { return 0; }
    std::string_view name() const { return "no destination"; }
};

struct StorageWithNonConstAlignment {  // alignment() must be callable on a const backend
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    std::size_t reap(std::span<ReadResult>, bool) { return 0; }
    std::string_view name() const { return "mutable alignment"; }
};

struct StorageWhoseReapReturnsNothing {
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    void reap(std::span<ReadResult>, bool) {}
    std::string_view name() const { return "void reap"; }
};

struct StorageWithoutSubmit {
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    std::size_t reap(std::span<ReadResult>, bool) { return 0; }
    std::string_view name() const { return "no submit"; }
};

struct StorageWithNumericName {
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    std::size_t reap(std::span<ReadResult>, bool) { return 0; }
    int name() const { return 0; }
};

}  // namespace

TEST_CASE("StorageBackend: the library's backends model it") {
    CHECK(it::StorageBackend<it::storage::pread>);
    CHECK(it::StorageBackend<it::storage::memory>);
    CHECK(it::StorageBackend<it::storage::automatic>);
#if INSTANTTENSOR_HAS_URING
    CHECK(it::StorageBackend<it::storage::uring>);
#endif
#if INSTANTTENSOR_HAS_CURL
    CHECK(it::StorageBackend<it::storage::http>);
    CHECK(it::storage::http::destination == MemoryKind::host);
#endif
#if INSTANTTENSOR_HAS_CUDA
    CHECK(it::StorageBackend<it::storage::gds>);
    CHECK(it::storage::gds::destination == MemoryKind::device);
#endif
    CHECK(it::StorageBackend<GoodStorage>);
    CHECK(it::StorageBackend<FakeDeviceStorage>);
    CHECK(it::storage::pread::destination == MemoryKind::host);
    CHECK(it::storage::memory::destination == MemoryKind::host);
    CHECK(it::storage::automatic::destination == MemoryKind::host);
}

TEST_CASE("StorageBackend: each near-miss is refused") {
    CHECK_FALSE(it::StorageBackend<StorageWithoutReap>);
    CHECK_FALSE(it::StorageBackend<StorageWithoutDestination>);
    CHECK_FALSE(it::StorageBackend<StorageWithNonConstAlignment>);
    CHECK_FALSE(it::StorageBackend<StorageWhoseReapReturnsNothing>);
    CHECK_FALSE(it::StorageBackend<StorageWithoutSubmit>);
    CHECK_FALSE(it::StorageBackend<StorageWithNumericName>);
    CHECK_FALSE(it::StorageBackend<int>);
    CHECK_FALSE(it::StorageBackend<it::sink::host>);  // the policies are not interchangeable
}

TEST_CASE("StorageBackend: backend names") {
    namespace st = it::storage;
    CHECK(st::to_string(st::Backend::automatic) == "auto");
    CHECK(st::to_string(st::Backend::uring) == "uring");
    CHECK(st::to_string(st::Backend::pread) == "pread");
    CHECK(st::to_string(st::Backend::memory) == "memory");
    CHECK(st::to_string(st::Backend::gds) == "gds");
    for (auto b : {st::Backend::automatic, st::Backend::uring, st::Backend::pread, st::Backend::memory, st::Backend::gds})
        CHECK(st::parse_backend(st::to_string(b)) == b);
    CHECK_FALSE(st::parse_backend("gds?").has_value());
    CHECK(st::pread{}.name() == "pread");
    CHECK(st::memory{}.name() == "memory");
}
