// tests/concepts/models.hpp: minimal models of each policy, which the concept tests take apart one
// expression at a time (the near-misses) and the composition tests put together.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "instanttensor/concepts.hpp"

namespace concepts_test {

namespace it = instanttensor;
using it::MemoryKind;
using it::ReadRequest;
using it::ReadResult;

/// Everything a storage backend needs.
struct GoodStorage {
    static constexpr MemoryKind destination = MemoryKind::host;
    void open(const it::format::Checkpoint&) {}
    std::uint64_t alignment(std::uint32_t) const { return 1; }
    std::size_t queue_depth() const { return 1; }
    void submit(const ReadRequest&) {}
    std::size_t reap(std::span<ReadResult>, bool) { return 0; }
    std::string_view name() const { return "good"; }
};

/// A GDS-like backend: reads land in device memory.
struct FakeDeviceStorage : GoodStorage {
    static constexpr MemoryKind destination = MemoryKind::device;
};

/// Everything a sink needs.
struct GoodSink {
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(const it::Plan&) {}
    std::span<std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
    void release(const it::format::TensorRef&) {}
};

/// A device sink, for the compositions that are allowed.
struct FakeDeviceSink : GoodSink {
    static constexpr MemoryKind memory = MemoryKind::device;
};

/// A transport of two ranks that exchanges nothing itself: not a GroupTransport.
struct FakeNcclTransport {
    static constexpr MemoryKind memory = MemoryKind::device;
    int rank() const { return 0; }
    int size() const { return 2; }
};

/// A group that exchanges host memory, but cannot abort what it has in flight.
struct GroupWithoutAbort {
    static constexpr MemoryKind memory = MemoryKind::host;
    int rank() const { return 0; }
    int size() const { return 2; }
    std::uint64_t exchange(std::byte*, const it::WindowExchange&) { return 0; }
    std::uint64_t gather(std::uint64_t) { return 0; }
    bool done(std::uint64_t) { return true; }
    std::vector<std::uint64_t> gathered(std::uint64_t) { return {0, 0}; }
};

/// A group whose gather blocks and returns the values (the interface before tickets).
struct GroupWithBlockingGather {
    static constexpr MemoryKind memory = MemoryKind::host;
    int rank() const { return 0; }
    int size() const { return 2; }
    std::uint64_t exchange(std::byte*, const it::WindowExchange&) { return 0; }
    std::vector<std::uint64_t> gather(std::uint64_t v) { return {v, v}; }
    bool done(std::uint64_t) { return true; }
    void abort() noexcept {}
};

/// Everything a group transport over host memory needs.
struct HostGroup : GroupWithoutAbort {
    void abort() noexcept {}
};

/// A group over device memory that does not say which device.
struct DeviceGroupWithoutDevice : HostGroup {
    static constexpr MemoryKind memory = MemoryKind::device;
};

/// Everything a group transport over device memory needs.
struct DeviceGroup : DeviceGroupWithoutDevice {
    int device() const { return 0; }
};

}  // namespace concepts_test
