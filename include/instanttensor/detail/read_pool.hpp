// instanttensor/detail/read_pool.hpp: a small pool of threads that each perform blocking reads,
// for the backends whose reads block (pread, cuFile). Requests queue in; raw results (bytes or
// -errno) queue out, in completion order, for the loader to reap.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "instanttensor/io.hpp"

namespace instanttensor::detail {

class ReadPool {
public:
    /// Performs one read and returns its raw result; called on a pool thread.
    using Read = std::function<std::int64_t(const ReadRequest&)>;
    /// Prepares a pool thread before its first read (for example, makes a GPU current).
    using ThreadSetup = std::function<void()>;

    ReadPool() = default;
    ReadPool(const ReadPool&) = delete;
    ReadPool& operator=(const ReadPool&) = delete;
    ~ReadPool() { stop(); }

    void start(unsigned threads, Read read, ThreadSetup setup = {}) {
        stop();
        read_ = std::move(read);
        stopping_ = false;
        for (unsigned i = 0; i < threads; ++i)
            workers_.emplace_back([this, setup] {
                if (setup) setup();
                work();
            });
    }

    void submit(const ReadRequest& request) {
        {
            std::lock_guard lock(mutex_);
            requests_.push_back(request);
        }
        request_ready_.notify_one();
    }

    std::size_t reap(std::span<ReadResult> out, bool wait) {
        std::unique_lock lock(mutex_);
        if (wait) result_ready_.wait(lock, [&] { return !results_.empty() || (busy_ == 0 && requests_.empty()); });
        const std::size_t n = std::min(out.size(), results_.size());
        std::copy_n(results_.begin(), n, out.begin());
        results_.erase(results_.begin(), results_.begin() + static_cast<std::ptrdiff_t>(n));
        return n;
    }

    /// Stops the threads once the reads they are doing finished; queued requests are dropped.
    void stop() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        request_ready_.notify_all();
        for (auto& w : workers_) w.join();
        workers_.clear();
        requests_.clear();
        results_.clear();
    }

private:
    void work() {
        std::unique_lock lock(mutex_);
        for (;;) {
            request_ready_.wait(lock, [&] { return stopping_ || !requests_.empty(); });
            if (stopping_) return;
            const ReadRequest r = requests_.front();
            requests_.pop_front();
            ++busy_;
            lock.unlock();
            const std::int64_t result = read_(r);
            lock.lock();
            --busy_;
            results_.push_back({r.tag, result});
            result_ready_.notify_one();
        }
    }

    Read read_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable request_ready_;
    std::condition_variable result_ready_;
    std::deque<ReadRequest> requests_;
    std::deque<ReadResult> results_;
    unsigned busy_ = 0;
    bool stopping_ = false;
};

}  // namespace instanttensor::detail
