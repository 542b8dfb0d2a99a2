// instanttensor/pipeline/timeline.hpp: where a single load's time goes (LoadStats::times). Each
// time the pipeline's loop is about to wait, the loader's thread reads the clock and counts the
// time since its last look to what held then: no read in flight, no copy queued, every staging
// slot taken, the storage's queue full, the sink without room. The loop waits in short steps (a
// poll, one read, one copy), so the counts are as fine as its steps; it reads no clock for a
// tensor that had landed when the consumer asked for it. (Landing and the consumer's time cost
// two clock reads per read and per tensor: about 20 ns each with the TSC.)
#pragma once

#include <chrono>

#include "instanttensor/pipeline/options.hpp"

namespace instanttensor::pipeline {

/// What held at one look: the conditions LoadTimes counts.
struct Holding {
    bool storage_idle = false;
    bool copies_idle = false;
    bool staging_full = false;
    bool queue_full = false;
    bool sink_full = false;
};

class Timeline {
public:
    using Clock = std::chrono::steady_clock;

    /// The loop is about to wait while `holding` holds: counts the time since the last look.
    void look(LoadTimes& times, Holding holding) noexcept {
        const Clock::time_point now = Clock::now();
        count(times, now);
        last_ = now;
        held_ = holding;
        looking_ = true;
    }

    /// The loop returns to the consumer: counts the time since the last look, if it waited. Time
    /// until the loop next waits belongs to no condition.
    void leave(LoadTimes& times) noexcept {
        if (looking_) count(times, Clock::now());
        looking_ = false;
    }

private:
    void count(LoadTimes& times, Clock::time_point now) const noexcept {
        if (!looking_) return;
        const double s = std::chrono::duration<double>(now - last_).count();
        if (held_.storage_idle) times.storage_idle += s;
        if (held_.copies_idle) times.copies_idle += s;
        if (held_.staging_full) times.staging_full += s;
        if (held_.queue_full) times.queue_full += s;
        if (held_.sink_full) times.sink_full += s;
    }

    Clock::time_point last_{};
    Holding held_;
    bool looking_ = false;
};

/// Adds the time from its making to its end to `into` (LoadTimes::landing).
class Stopwatch {
public:
    explicit Stopwatch(double& into) noexcept : into_(into), start_(Timeline::Clock::now()) {}
    Stopwatch(const Stopwatch&) = delete;
    Stopwatch& operator=(const Stopwatch&) = delete;
    ~Stopwatch() { into_ += std::chrono::duration<double>(Timeline::Clock::now() - start_).count(); }

private:
    double& into_;
    Timeline::Clock::time_point start_;
};

}  // namespace instanttensor::pipeline
