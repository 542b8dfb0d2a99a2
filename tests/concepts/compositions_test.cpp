// Which Loader<Storage, Transport, Sink> compositions exist: a storage that reads device memory
// needs a device sink, and so does a transport that moves bytes between GPUs; types that are not
// policies make no loader. Also what the helpers return, and that a loader borrows its checkpoint.
#include <doctest/doctest.h>

#include <type_traits>
#include <utility>

#include "instanttensor/loader.hpp"
#include "models.hpp"

namespace {

using namespace concepts_test;

template <class S, class T, class K>
constexpr bool composes = requires { typename instanttensor::Loader<S, T, K>; };

struct NotAStorage {};
struct NotATransport {
    int rank() const { return 0; }
};
struct NotASink {};

template <class C>
constexpr bool load_to_host_takes = requires(C&& c) { it::load_to_host(std::forward<C>(c)); };
template <class C>
constexpr bool load_into_takes = requires(C&& c, it::sink::placement::Destination d) { it::load_into(std::forward<C>(c), d); };
#if INSTANTTENSOR_HAS_CUDA
template <class C>
constexpr bool load_to_device_takes = requires(C&& c) { it::load_to_device(std::forward<C>(c), {.device = 0}); };
#endif

using HostLoader = it::Loader<it::storage::automatic, it::transport::single, it::sink::host>;

}  // namespace

TEST_CASE("compositions: host storages, transports and sinks compose") {
    CHECK(composes<it::storage::pread, it::transport::single, it::sink::host>);
    CHECK(composes<it::storage::pread, it::transport::single, it::sink::placement>);
    CHECK(composes<it::storage::memory, it::transport::single, it::sink::host>);
    CHECK(composes<it::storage::automatic, it::transport::single, it::sink::placement>);
#if INSTANTTENSOR_HAS_URING
    CHECK(composes<it::storage::uring, it::transport::single, it::sink::host>);
#endif
    CHECK(composes<it::storage::pread, HostGroup, it::sink::host>);
}

TEST_CASE("compositions: device memory needs a device sink") {
    CHECK_FALSE(composes<FakeDeviceStorage, it::transport::single, it::sink::host>);
    CHECK_FALSE(composes<FakeDeviceStorage, it::transport::single, it::sink::placement>);
    CHECK_FALSE(composes<it::storage::pread, FakeNcclTransport, it::sink::host>);
    CHECK_FALSE(composes<it::storage::automatic, FakeNcclTransport, it::sink::placement>);
    CHECK_FALSE(composes<FakeDeviceStorage, FakeNcclTransport, it::sink::host>);
    CHECK_FALSE(composes<it::storage::pread, DeviceGroup, it::sink::host>);
    CHECK(composes<FakeDeviceStorage, it::transport::single, FakeDeviceSink>);
    CHECK(composes<it::storage::pread, FakeNcclTransport, FakeDeviceSink>);
    CHECK(composes<FakeDeviceStorage, FakeNcclTransport, FakeDeviceSink>);
    CHECK(composes<it::storage::pread, DeviceGroup, FakeDeviceSink>);
    CHECK(it::ReadsIntoSinkMemory<FakeDeviceStorage, FakeDeviceSink>);
    CHECK_FALSE(it::ReadsIntoSinkMemory<FakeDeviceStorage, GoodSink>);
    CHECK(it::TransportFitsSink<it::transport::single, GoodSink>);
    CHECK_FALSE(it::TransportFitsSink<DeviceGroup, GoodSink>);
#if INSTANTTENSOR_HAS_NCCL
    CHECK_FALSE(composes<it::storage::pread, it::transport::nccl, it::sink::host>);
    CHECK(composes<it::storage::automatic, it::transport::nccl, it::sink::device_ring>);
#endif
}

TEST_CASE("compositions: types that are not policies make no loader") {
    CHECK_FALSE(composes<NotAStorage, it::transport::single, it::sink::host>);
    CHECK_FALSE(composes<it::storage::pread, NotATransport, it::sink::host>);
    CHECK_FALSE(composes<it::storage::pread, it::transport::single, NotASink>);
    CHECK_FALSE(composes<it::sink::host, it::transport::single, it::storage::pread>);
}

TEST_CASE("compositions: what the helpers return, and a borrowed checkpoint") {
    CHECK(std::is_same_v<decltype(it::load_to_host(std::declval<const it::format::Checkpoint&>())), HostLoader>);
    CHECK(std::is_same_v<HostLoader::Pipeline, it::pipeline::Single<it::storage::automatic, it::sink::host>>);
    CHECK(std::is_same_v<it::Loader<it::storage::pread, HostGroup, it::sink::host>::Pipeline,
                         it::pipeline::Group<it::storage::pread, HostGroup, it::sink::host>>);
#if INSTANTTENSOR_HAS_CUDA
    CHECK(std::is_same_v<decltype(it::load_to_device(std::declval<const it::format::Checkpoint&>())),
                         it::FallbackLoader<it::storage::gds, it::storage::automatic, it::sink::device_ring>>);
#endif
    // A loader borrows its checkpoint: a temporary one, which would die before the load, is refused.
    CHECK(std::is_constructible_v<HostLoader, const it::format::Checkpoint&, it::storage::automatic, it::transport::single,
                                  it::sink::host>);
    CHECK_FALSE(std::is_constructible_v<HostLoader, it::format::Checkpoint, it::storage::automatic, it::transport::single,
                                        it::sink::host>);
    CHECK((load_to_host_takes<const it::format::Checkpoint&> && !load_to_host_takes<it::format::Checkpoint>));
    CHECK((load_into_takes<const it::format::Checkpoint&> && !load_into_takes<it::format::Checkpoint>));
#if INSTANTTENSOR_HAS_CUDA
    CHECK((load_to_device_takes<const it::format::Checkpoint&> && !load_to_device_takes<it::format::Checkpoint>));
#endif
}
