// tests/support/late_copy_sink.hpp: a host sink whose copies run late, as a device sink's do.
//
// The device sinks only queue each copy (cudaMemcpyAsync out of pinned staging or a window
// buffer) and say later, through copy tickets, when it ran (concepts.hpp: CopiesAsynchronously).
// The loader must then neither reuse a staging slot or window buffer nor yield a tensor before the
// copies out of it or into it ran. LateCopySink keeps that contract on the CPU, adversarially: a
// copy runs only once the loader has asked about it `latency` times, or waits for it, and it reads
// its source only then, so a slot reused too early or a tensor yielded too early shows up as wrong
// bytes. Its destructor runs what is still queued, as a device sink synchronizes its stream: under
// AddressSanitizer that catches a loader that frees staging before its sink. With a delay, a copy
// also runs no sooner than that after it was queued, as a slow copy engine's would.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <span>
#include <thread>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/loader.hpp"
#include "instanttensor/sink/host.hpp"

namespace instanttensor_test {

class LateCopySink {
public:
    static constexpr instanttensor::MemoryKind memory = instanttensor::MemoryKind::host;
    static constexpr bool one_buffer = true;  // its destinations are sink::host's ring

    /// What the sink saw, to show that copies really ran late.
    struct Stats {
        std::uint64_t copies = 0;       ///< copies queued
        std::uint64_t most_queued = 0;  ///< the most copies queued at once
        std::uint64_t refused = 0;      ///< copies_done() answers "not yet"
        std::uint64_t waits = 0;        ///< wait_copies() calls
        std::size_t slots = 0;          ///< prepare_copies() argument
    };

    /// `latency`: how many times copies_done() answers "not yet" before the queued copies run (a
    /// loader that only polls, as the group pipeline does, needs it finite; the single pipeline
    /// waits when it has nothing else to do).
    /// `delay`: how long after its extent was stored a copy runs at the soonest.
    explicit LateCopySink(unsigned latency, std::uint64_t ring_bytes = 0, std::chrono::microseconds delay = {})
        : ring_(ring_bytes), latency_(latency), delay_(delay) {}
    LateCopySink(LateCopySink&&) = default;
    LateCopySink& operator=(LateCopySink&&) = delete;
    ~LateCopySink() { run_through(next_ticket_); }

    void prepare(const instanttensor::Plan& plan) { ring_.prepare(plan); }
    std::span<std::byte> reserve(const instanttensor::format::TensorRef& tensor, std::uint64_t bytes) {
        return ring_.reserve(tensor, bytes);
    }
    void store(std::byte* destination, const std::byte* staged, std::uint64_t bytes) {
        queued_.push_back({destination, staged, bytes, next_ticket_});
        ++stats_.copies;
        stats_.most_queued = std::max<std::uint64_t>(stats_.most_queued, queued_.size());
    }
    void release(const instanttensor::format::TensorRef& tensor) { ring_.release(tensor); }

    void prepare_copies(std::size_t slots) { stats_.slots = slots; }
    std::uint64_t extent_stored() {
        due_.push_back(Clock::now() + delay_);
        return next_ticket_++;
    }
    bool copies_done(std::uint64_t ticket) {
        if (ticket < done_) return true;
        if (Clock::now() < due_[ticket] || asks_++ < latency_) {
            ++stats_.refused;
            return false;
        }
        run_through(ticket);
        return true;
    }
    void wait_copies(std::uint64_t ticket) {
        ++stats_.waits;
        if (ticket >= done_) std::this_thread::sleep_until(due_[ticket]);
        run_through(ticket);
    }

    [[nodiscard]] const Stats& stats() const noexcept { return stats_; }

private:
    using Clock = std::chrono::steady_clock;

    struct Copy {
        std::byte* destination;
        const std::byte* source;
        std::uint64_t bytes;
        std::uint64_t ticket;
    };

    /// Runs the queued copies of tickets up to `ticket`, in order, as a stream would.
    void run_through(std::uint64_t ticket) {
        while (!queued_.empty() && queued_.front().ticket <= ticket) {
            const Copy& c = queued_.front();
            std::memcpy(c.destination, c.source, c.bytes);
            queued_.pop_front();
        }
        done_ = std::max(done_, ticket + 1);
        asks_ = 0;
    }

    instanttensor::sink::host ring_;
    unsigned latency_;
    std::chrono::microseconds delay_;
    std::deque<Copy> queued_;
    std::vector<Clock::time_point> due_;  // per ticket: when its copies may run
    std::uint64_t next_ticket_ = 0;  // the ticket of the copies being stored
    std::uint64_t done_ = 0;         // tickets below this ran
    unsigned asks_ = 0;              // "not yet" answers since copies last ran
    Stats stats_;
};

static_assert(instanttensor::Sink<LateCopySink> && instanttensor::CopiesAsynchronously<LateCopySink>);

/// A single load of storage `S` into a LateCopySink.
template <class S>
using LateLoaderOf = instanttensor::Loader<S, instanttensor::transport::single, LateCopySink>;

}  // namespace instanttensor_test
