// GroupTransport: a Transport that exchanges windows. A group of one (transport::single) is not
// one; a group must be able to abort what it has in flight, its operations are started and then
// polled, and one over device memory must name its device.
#include <doctest/doctest.h>

#include "instanttensor/loader.hpp"
#include "models.hpp"

TEST_CASE("GroupTransport: the models") {
    using namespace concepts_test;
    CHECK(it::GroupTransport<HostGroup>);
    CHECK(it::GroupTransport<DeviceGroup>);
#if INSTANTTENSOR_HAS_NCCL
    CHECK(it::GroupTransport<it::transport::nccl>);
#endif
}

TEST_CASE("GroupTransport: each near-miss is refused") {
    using namespace concepts_test;
    CHECK_FALSE(it::GroupTransport<it::transport::single>);  // it loads alone
    CHECK_FALSE(it::GroupTransport<FakeNcclTransport>);      // a Transport that exchanges nothing
    CHECK_FALSE(it::GroupTransport<GroupWithoutAbort>);      // a rank that gives up must end what it has in flight
    CHECK_FALSE(it::GroupTransport<GroupWithBlockingGather>);  // every operation is started, then polled
    CHECK_FALSE(it::GroupTransport<DeviceGroupWithoutDevice>);  // device memory: which device must be known
}
