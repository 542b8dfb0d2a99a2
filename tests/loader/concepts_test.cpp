// The three policy concepts: the library's models satisfy them, near-misses do not, and a Loader of
// a mismatched composition (device-memory storage or a GPU transport with a host sink) is refused
// at compile time.
#include <doctest/doctest.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/loader.hpp"

namespace {

namespace it = instanttensor;
using it::MemoryKind;
using it::ReadRequest;
using it::ReadResult;

// ---- storage: the models and near-misses -----------------------------------------------------

static_assert(it::StorageBackend<it::storage::pread>);
static_assert(it::StorageBackend<it::storage::memory>);
static_assert(it::StorageBackend<it::storage::automatic>);
#if INSTANTTENSOR_HAS_URING
static_assert(it::StorageBackend<it::storage::uring>);
#endif

/// Everything a backend needs; the near-misses below each break one expression of it.
struct GoodStorage {
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    std::size_t reap(std::span<ReadResult>, bool) { return 0; }
    std::string_view name() const { return "good"; }
};
static_assert(it::StorageBackend<GoodStorage>);

struct StorageWithoutReap {
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    std::string_view name() const { return "no reap"; }
};
static_assert(!it::StorageBackend<StorageWithoutReap>);

struct StorageWithoutDestination {
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    std::size_t reap(std::span<ReadResult>, bool) { return 0; }
    std::string_view name() const { return "no destination"; }
};
static_assert(!it::StorageBackend<StorageWithoutDestination>);

struct StorageWithNonConstAlignment {  // alignment() must be callable on a const backend
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    std::size_t reap(std::span<ReadResult>, bool) { return 0; }
    std::string_view name() const { return "mutable alignment"; }
};
static_assert(!it::StorageBackend<StorageWithNonConstAlignment>);

struct StorageWhoseReapReturnsNothing {
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    void reap(std::span<ReadResult>, bool) {}
    std::string_view name() const { return "void reap"; }
};
static_assert(!it::StorageBackend<StorageWhoseReapReturnsNothing>);

struct StorageWithoutSubmit {
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    std::size_t reap(std::span<ReadResult>, bool) { return 0; }
    std::string_view name() const { return "no submit"; }
};
static_assert(!it::StorageBackend<StorageWithoutSubmit>);

struct StorageWithNumericName {
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    std::size_t reap(std::span<ReadResult>, bool) { return 0; }
    int name() const { return 0; }
};
static_assert(!it::StorageBackend<StorageWithNumericName>);

static_assert(!it::StorageBackend<int>);

// ---- transport ------------------------------------------------------------------------------

static_assert(it::Transport<it::transport::single>);

struct TransportWithoutMemory {  // where its memory lives decides which sinks it takes
    int rank() const { return 0; }
    int size() const { return 1; }
};
static_assert(!it::Transport<TransportWithoutMemory>);

struct TransportWithoutSize {
    static constexpr MemoryKind memory = MemoryKind::host;
    int rank() const { return 0; }
};
static_assert(!it::Transport<TransportWithoutSize>);

struct TransportWithMutableRank {  // rank() must be callable on a const transport
    static constexpr MemoryKind memory = MemoryKind::host;
    int rank() { return 0; }
    int size() const { return 1; }
};
static_assert(!it::Transport<TransportWithMutableRank>);

// A group transport also exchanges windows; a single rank does not.
static_assert(!it::GroupTransport<it::transport::single>);

struct GroupWithoutAbandon {  // a rank that stops must be able to release its peers
    static constexpr MemoryKind memory = MemoryKind::host;
    int rank() const { return 0; }
    int size() const { return 2; }
    std::uint64_t exchange(std::byte*, const it::WindowExchange&) { return 0; }
    bool exchange_done(std::uint64_t) { return true; }
    std::vector<std::uint64_t> gather(std::uint64_t v) { return {v, v}; }
};
static_assert(!it::GroupTransport<GroupWithoutAbandon>);

struct HostGroup : GroupWithoutAbandon {
    void abandon() noexcept {}
};
static_assert(it::GroupTransport<HostGroup>);

struct DeviceGroupWithoutDevice : HostGroup {  // device memory: which device must be known
    static constexpr MemoryKind memory = MemoryKind::device;
};
static_assert(!it::GroupTransport<DeviceGroupWithoutDevice>);

struct DeviceGroup : DeviceGroupWithoutDevice {
    int device() const { return 0; }
};
static_assert(it::GroupTransport<DeviceGroup>);
#if INSTANTTENSOR_HAS_NCCL
static_assert(it::GroupTransport<it::transport::nccl>);
#endif

// ---- sink -----------------------------------------------------------------------------------

static_assert(it::Sink<it::sink::host>);
static_assert(it::Sink<it::sink::placement>);

struct GoodSink {
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(const it::Plan&) {}
    std::span<std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
    void release(const it::format::TensorRef&) {}
};
static_assert(it::Sink<GoodSink>);

struct SinkWhoseReserveReturnsAPointer {
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(const it::Plan&) {}
    std::byte* reserve(const it::format::TensorRef&, std::uint64_t) { return nullptr; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
    void release(const it::format::TensorRef&) {}
};
static_assert(!it::Sink<SinkWhoseReserveReturnsAPointer>);

struct SinkWhoseReserveReturnsConstBytes {  // reserve must give writable bytes, exactly std::span<std::byte>
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(const it::Plan&) {}
    std::span<const std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
    void release(const it::format::TensorRef&) {}
};
static_assert(!it::Sink<SinkWhoseReserveReturnsConstBytes>);

struct SinkWithoutRelease {
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(const it::Plan&) {}
    std::span<std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
};
static_assert(!it::Sink<SinkWithoutRelease>);

struct SinkWithoutMemory {
    void prepare(const it::Plan&) {}
    std::span<std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
    void release(const it::format::TensorRef&) {}
};
static_assert(!it::Sink<SinkWithoutMemory>);

struct SinkPreparedWithASize {  // prepare takes the plan, not just the largest tensor's size
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(std::uint64_t) {}
    std::span<std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
    void release(const it::format::TensorRef&) {}
};
static_assert(!it::Sink<SinkPreparedWithASize>);

struct SinkWithoutStore {
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(const it::Plan&) {}
    std::span<std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void release(const it::format::TensorRef&) {}
};
static_assert(!it::Sink<SinkWithoutStore>);

// The policies are not interchangeable.
static_assert(!it::Sink<it::storage::pread>);
static_assert(!it::StorageBackend<it::sink::host>);
static_assert(!it::Transport<it::sink::host>);

// ---- compositions ---------------------------------------------------------------------------

/// A GDS-like backend: reads land in device memory.
struct FakeDeviceStorage : GoodStorage {
    static constexpr MemoryKind destination = MemoryKind::device;
};
static_assert(it::StorageBackend<FakeDeviceStorage>);

/// An NCCL-like transport: moves bytes between GPUs.
struct FakeNcclTransport {
    static constexpr MemoryKind memory = MemoryKind::device;
    int rank() const { return 0; }
    int size() const { return 2; }
};
static_assert(it::Transport<FakeNcclTransport>);

/// A device sink, for the compositions that are allowed.
struct FakeDeviceSink : GoodSink {
    static constexpr MemoryKind memory = MemoryKind::device;
};
static_assert(it::Sink<FakeDeviceSink>);

template <class S, class T, class K>
concept composes = requires { typename instanttensor::Loader<S, T, K>; };

static_assert(composes<it::storage::pread, it::transport::single, it::sink::host>);
static_assert(composes<it::storage::pread, it::transport::single, it::sink::placement>);
static_assert(composes<it::storage::memory, it::transport::single, it::sink::host>);
static_assert(composes<it::storage::automatic, it::transport::single, it::sink::placement>);
#if INSTANTTENSOR_HAS_URING
static_assert(composes<it::storage::uring, it::transport::single, it::sink::host>);
#endif

// Device-memory reads need a device sink; a GPU transport needs one too.
static_assert(!composes<FakeDeviceStorage, it::transport::single, it::sink::host>);
static_assert(!composes<FakeDeviceStorage, it::transport::single, it::sink::placement>);
static_assert(!composes<it::storage::pread, FakeNcclTransport, it::sink::host>);
static_assert(!composes<it::storage::automatic, FakeNcclTransport, it::sink::placement>);
static_assert(!composes<FakeDeviceStorage, FakeNcclTransport, it::sink::host>);
static_assert(composes<FakeDeviceStorage, it::transport::single, FakeDeviceSink>);
static_assert(composes<it::storage::pread, FakeNcclTransport, FakeDeviceSink>);
static_assert(composes<FakeDeviceStorage, FakeNcclTransport, FakeDeviceSink>);

// A host group composes with host sinks; a device group needs a device sink.
static_assert(composes<it::storage::pread, HostGroup, it::sink::host>);
static_assert(!composes<it::storage::pread, DeviceGroup, it::sink::host>);
static_assert(composes<it::storage::pread, DeviceGroup, FakeDeviceSink>);
#if INSTANTTENSOR_HAS_NCCL
static_assert(!composes<it::storage::pread, it::transport::nccl, it::sink::host>);
#endif

// Types that are not policies at all.
static_assert(!composes<StorageWithoutReap, it::transport::single, it::sink::host>);
static_assert(!composes<it::storage::pread, TransportWithoutMemory, it::sink::host>);
static_assert(!composes<it::storage::pread, it::transport::single, SinkWhoseReserveReturnsAPointer>);

// The named compositions the helpers return.
static_assert(std::is_same_v<decltype(it::load_to_host(std::declval<const it::format::Checkpoint&>())),
                             it::Loader<it::storage::automatic, it::transport::single, it::sink::host>>);

// A loader borrows its checkpoint: a temporary one, which would die before the load, is refused.
using HostLoader = it::Loader<it::storage::automatic, it::transport::single, it::sink::host>;
static_assert(std::is_constructible_v<HostLoader, const it::format::Checkpoint&, it::storage::automatic,
                                      it::transport::single, it::sink::host>);
static_assert(!std::is_constructible_v<HostLoader, it::format::Checkpoint, it::storage::automatic,
                                       it::transport::single, it::sink::host>);
template <class C>
constexpr bool load_to_host_takes = requires(C&& c) { it::load_to_host(std::forward<C>(c)); };
template <class C>
constexpr bool load_into_takes = requires(C&& c, it::sink::placement::Destination d) { it::load_into(std::forward<C>(c), d); };
static_assert(load_to_host_takes<const it::format::Checkpoint&> && !load_to_host_takes<it::format::Checkpoint>);
static_assert(load_into_takes<const it::format::Checkpoint&> && !load_into_takes<it::format::Checkpoint>);
#if INSTANTTENSOR_HAS_CUDA
template <class C>
constexpr bool load_to_device_takes = requires(C&& c) { it::load_to_device(std::forward<C>(c), {.device = 0}); };
static_assert(load_to_device_takes<const it::format::Checkpoint&> && !load_to_device_takes<it::format::Checkpoint>);
#endif

}  // namespace

TEST_CASE("concepts: the models satisfy their policies and near-misses do not") {
    // Everything is checked by the static_asserts above; this case records that the file built.
    CHECK(it::transport::single{}.size() == 1);
    CHECK(it::transport::single{}.rank() == 0);
    CHECK(it::transport::single::memory == MemoryKind::host);
    CHECK(it::sink::host::memory == MemoryKind::host);
    CHECK(it::sink::placement::memory == MemoryKind::host);
    CHECK(it::storage::pread::destination == MemoryKind::host);
    CHECK(it::storage::memory::destination == MemoryKind::host);
    CHECK(it::storage::automatic::destination == MemoryKind::host);
}

TEST_CASE("concepts: backend names") {
    namespace st = it::storage;
    CHECK(st::to_string(st::Backend::automatic) == "auto");
    CHECK(st::to_string(st::Backend::uring) == "uring");
    CHECK(st::to_string(st::Backend::pread) == "pread");
    CHECK(st::to_string(st::Backend::memory) == "memory");
    for (auto b : {st::Backend::automatic, st::Backend::uring, st::Backend::pread, st::Backend::memory})
        CHECK(st::parse_backend(st::to_string(b)) == b);
    CHECK_FALSE(st::parse_backend("gds?").has_value());
    CHECK(st::pread{}.name() == "pread");
    CHECK(st::memory{}.name() == "memory");
}
