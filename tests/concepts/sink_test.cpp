// Sink, CopiesAsynchronously and OneBuffer: the library's sinks model them; each near-miss breaks
// one required expression.
#include <doctest/doctest.h>

#include "instanttensor/loader.hpp"
#include "late_copy_sink.hpp"
#include "models.hpp"

namespace {

using namespace concepts_test;

struct SinkWhoseReserveReturnsAPointer {
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(const it::Plan&) {}
    std::byte* reserve(const it::format::TensorRef&, std::uint64_t) { return nullptr; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
    void release(const it::format::TensorRef&) {}
};

struct SinkWhoseReserveReturnsConstBytes {  // reserve must give writable bytes, exactly std::span<std::byte>
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(const it::Plan&) {}
    std::span<const std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
    void release(const it::format::TensorRef&) {}
};

struct SinkWithoutRelease {
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(const it::Plan&) {}
    std::span<std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
};

struct SinkWithoutMemory {
    void prepare(const it::Plan&) {}
    std::span<std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
    void release(const it::format::TensorRef&) {}
};

struct SinkPreparedWithASize {  // prepare takes the plan, not just the largest tensor's size
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(std::uint64_t) {}
    std::span<std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void store(std::byte*, const std::byte*, std::uint64_t) {}
    void release(const it::format::TensorRef&) {}
};

struct SinkWithoutStore {
    static constexpr MemoryKind memory = MemoryKind::host;
    void prepare(const it::Plan&) {}
    std::span<std::byte> reserve(const it::format::TensorRef&, std::uint64_t) { return {}; }
    void release(const it::format::TensorRef&) {}
};

struct CopierWithoutWait : GoodSink {  // the loader must be able to wait for the oldest copies
    void prepare_copies(std::size_t) {}
    std::uint64_t extent_stored() { return 0; }
    bool copies_done(std::uint64_t) { return true; }
};

}  // namespace

TEST_CASE("Sink: the models") {
    CHECK(it::Sink<it::sink::host>);
    CHECK(it::Sink<it::sink::placement>);
    CHECK(it::Sink<GoodSink>);
    CHECK(it::Sink<FakeDeviceSink>);
    CHECK(it::sink::host::memory == MemoryKind::host);
    CHECK(it::sink::placement::memory == MemoryKind::host);
#if INSTANTTENSOR_HAS_CUDA
    CHECK(it::Sink<it::sink::device_ring>);
    CHECK(it::Sink<it::sink::device_placement>);
    CHECK(it::sink::device_ring::memory == MemoryKind::device);
#endif
}

TEST_CASE("Sink: each near-miss is refused") {
    CHECK_FALSE(it::Sink<SinkWhoseReserveReturnsAPointer>);
    CHECK_FALSE(it::Sink<SinkWhoseReserveReturnsConstBytes>);
    CHECK_FALSE(it::Sink<SinkWithoutRelease>);
    CHECK_FALSE(it::Sink<SinkWithoutMemory>);
    CHECK_FALSE(it::Sink<SinkPreparedWithASize>);
    CHECK_FALSE(it::Sink<SinkWithoutStore>);
    CHECK_FALSE(it::Sink<it::storage::pread>);  // the policies are not interchangeable
}

TEST_CASE("CopiesAsynchronously: the sinks whose copies are only queued") {
    CHECK_FALSE(it::CopiesAsynchronously<it::sink::host>);
    CHECK_FALSE(it::CopiesAsynchronously<it::sink::placement>);
    CHECK(it::CopiesAsynchronously<instanttensor_test::LateCopySink>);
    CHECK_FALSE(it::CopiesAsynchronously<CopierWithoutWait>);
#if INSTANTTENSOR_HAS_CUDA
    CHECK(it::CopiesAsynchronously<it::sink::device_ring>);
    CHECK(it::CopiesAsynchronously<it::sink::device_placement>);
#endif
}

TEST_CASE("OneBuffer: the ring sinks, whose adjacent stores may merge; not the sinks of the caller's memory") {
    CHECK(it::OneBuffer<it::sink::host>);
    CHECK_FALSE(it::OneBuffer<it::sink::placement>);
    CHECK(it::OneBuffer<instanttensor_test::LateCopySink>);
    CHECK_FALSE(it::OneBuffer<SinkWithoutRelease>);  // says nothing: not one buffer
#if INSTANTTENSOR_HAS_CUDA
    CHECK(it::OneBuffer<it::sink::device_ring>);
    CHECK_FALSE(it::OneBuffer<it::sink::device_placement>);
#endif
}
