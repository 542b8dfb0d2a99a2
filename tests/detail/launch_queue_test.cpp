// LaunchQueue: how transport::nccl issues its operations on a communicator whose calls may answer
// "in progress" (NCCL's non-blocking communicators). A part still launching holds the next back,
// what follows a part runs only once it launched, and an operation counts as launched (its event
// recorded) only once its last part did; a blocking communicator launches everything at once.
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "instanttensor/detail/launch_queue.hpp"

using instanttensor::detail::Launch;
using instanttensor::detail::LaunchQueue;

namespace {

/// A communicator whose calls answer in_progress when `slow`, and are launched once `ready`.
struct FakeCommunicator {
    std::vector<std::string> log;  // calls, then-steps and launched operations, in the order they ran
    bool slow = false;
    bool ready = false;

    LaunchQueue::Part part(const std::string& name, bool with_then = false) {
        LaunchQueue::Part p;
        p.calls = [this, name] {
            log.push_back("call " + name);
            ready = false;
            return slow ? Launch::in_progress : Launch::done;
        };
        if (with_then) p.then = [this, name] { log.push_back("then " + name); };
        return p;
    }
    void advance(LaunchQueue& queue) {
        queue.advance([this] { return ready ? Launch::done : Launch::in_progress; }, [this] { log.push_back("launched"); });
    }
};

}  // namespace

TEST_CASE("launch queue: a blocking communicator launches every part at once, an operation once its last part did") {
    FakeCommunicator comm;
    LaunchQueue queue;
    queue.push({comm.part("gather", true)});
    comm.advance(queue);
    queue.push({comm.part("group 0"), comm.part("group 1"), comm.part("group 2")});
    comm.advance(queue);
    CHECK_FALSE(queue.busy());
    CHECK(comm.log == std::vector<std::string>{"call gather", "then gather", "launched", "call group 0", "call group 1",
                                               "call group 2", "launched"});
}

TEST_CASE("launch queue: a part still launching holds back the next, its then-step and its operation's event") {
    FakeCommunicator comm;
    comm.slow = true;
    LaunchQueue queue;
    queue.push({comm.part("gather", true)});
    queue.push({comm.part("group 0"), comm.part("group 1")});
    comm.advance(queue);
    CHECK(comm.log == std::vector<std::string>{"call gather"});  // nothing else may be issued yet
    comm.advance(queue);                                          // polled again: still launching
    CHECK(comm.log.size() == 1);
    CHECK(queue.busy());

    comm.ready = true;  // the gather is launched: its copy back, its event, then the next part
    comm.advance(queue);
    CHECK(comm.log == std::vector<std::string>{"call gather", "then gather", "launched", "call group 0"});
    comm.ready = true;
    comm.advance(queue);
    CHECK(comm.log.back() == "call group 1");  // group 0 launched, but its operation is not: no event
    comm.ready = true;
    comm.advance(queue);
    CHECK(comm.log.back() == "launched");
    CHECK_FALSE(queue.busy());
}

TEST_CASE("launch queue: a failing call propagates, and clear() drops what is queued") {
    LaunchQueue queue;
    int calls = 0;
    queue.push({{[&] {
                     ++calls;
                     throw std::runtime_error("ncclSend failed");
                     return Launch::done;
                 },
                 {}}});
    int launched = 0;
    CHECK_THROWS_WITH(queue.advance([] { return Launch::done; }, [&] { ++launched; }), "ncclSend failed");
    CHECK(calls == 1);
    CHECK(launched == 0);
    CHECK(queue.busy());
    queue.clear();
    CHECK_FALSE(queue.busy());
}
