// instanttensor/detail/launch_queue.hpp: the operations a transport issues on a communicator whose
// calls may still be launching when they return, in order (transport::nccl's queue).
//
// NCCL's non-blocking communicators (config.blocking = 0) answer ncclInProgress while a call or a
// group is still being launched in the background; until the communicator reports it launched, no
// other NCCL call may be issued on it, and an event recorded on the stream would precede the work.
// So a part still launching holds the next back, whatever follows a part on the stream (`then`: a
// copy of a gather's words back) is queued only once it launched, and an operation counts as
// launched (its completion event may be recorded) only once its last part did. Blocking
// communicators launch every part at once, and the queue stays empty between calls.
#pragma once

#include <deque>
#include <functional>
#include <utility>
#include <vector>

namespace instanttensor::detail {

/// What a part's calls, or the communicator asked again, say of its launch.
enum class Launch : unsigned char { done, in_progress };

class LaunchQueue {
public:
    /// Part of an operation: its calls (one call, or one group of them), and what follows them on
    /// the stream once they are launched.
    struct Part {
        std::function<Launch()> calls;
        std::function<void()> then;
    };

    /// Queues the parts of one operation, in order.
    void push(std::vector<Part> parts) {
        for (std::size_t p = 0; p < parts.size(); ++p) queue_.push_back({std::move(parts[p]), p + 1 == parts.size()});
    }

    /// Launches the parts queued, in order, as far as the communicator lets: `state()` says
    /// whether the part that answered in_progress is launched now; `launched()` is called once for
    /// each operation whose last part is launched, in order. Exceptions of the calls, of `state`
    /// and of `then` propagate (the caller then aborts the communicator: what is queued is dropped).
    template <class State, class Launched>
    void advance(State state, Launched launched) {
        for (;;) {
            if (launching_) {
                if (state() == Launch::in_progress) return;
                launching_ = false;
                finish(launched);
            }
            if (queue_.empty()) return;
            if (queue_.front().part.calls() == Launch::in_progress) {
                launching_ = true;
                continue;
            }
            finish(launched);
        }
    }

    /// Whether a part is queued or still launching.
    [[nodiscard]] bool busy() const noexcept { return !queue_.empty(); }
    void clear() noexcept {
        queue_.clear();
        launching_ = false;
    }

private:
    template <class Launched>
    void finish(Launched& launched) {
        Queued done = std::move(queue_.front());
        queue_.pop_front();
        if (done.part.then) done.part.then();
        if (done.last) launched();
    }

    struct Queued {
        Part part;
        bool last = true;  // the operation's last part
    };
    std::deque<Queued> queue_;  // the front one is launching when launching_
    bool launching_ = false;
};

}  // namespace instanttensor::detail
