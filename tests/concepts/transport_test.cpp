// Transport: the group a load runs in, and where its memory lives. transport::single models it;
// each near-miss breaks one required expression.
#include <doctest/doctest.h>

#include "instanttensor/loader.hpp"
#include "models.hpp"

namespace {

using namespace concepts_test;

struct TransportWithoutMemory {  // where its memory lives decides which sinks it takes
    int rank() const { return 0; }
    int size() const { return 1; }
};

struct TransportWithoutSize {
    static constexpr MemoryKind memory = MemoryKind::host;
    int rank() const { return 0; }
};

struct TransportWithMutableRank {  // rank() must be callable on a const transport
    static constexpr MemoryKind memory = MemoryKind::host;
    int rank() { return 0; }
    int size() const { return 1; }
};

}  // namespace

TEST_CASE("Transport: the models") {
    CHECK(it::Transport<it::transport::single>);
    CHECK(it::transport::single{}.size() == 1);
    CHECK(it::transport::single{}.rank() == 0);
    CHECK(it::transport::single::memory == MemoryKind::host);
    CHECK(it::Transport<FakeNcclTransport>);
    CHECK(it::Transport<HostGroup>);
#if INSTANTTENSOR_HAS_NCCL
    CHECK(it::Transport<it::transport::nccl>);
    CHECK(it::transport::nccl::memory == MemoryKind::device);
#endif
}

TEST_CASE("Transport: each near-miss is refused") {
    CHECK_FALSE(it::Transport<TransportWithoutMemory>);
    CHECK_FALSE(it::Transport<TransportWithoutSize>);
    CHECK_FALSE(it::Transport<TransportWithMutableRank>);
    CHECK_FALSE(it::Transport<it::sink::host>);
}
