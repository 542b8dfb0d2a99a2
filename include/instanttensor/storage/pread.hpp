// instanttensor/storage/pread.hpp: reads with pread(2) on a small pool of threads.
//
// The backend for kernels or containers where io_uring is missing or forbidden (ENOSYS, seccomp,
// kernel.io_uring_disabled), and selectable explicitly. Each worker performs one pread per request
// and reports its raw result; the loader continues short reads and retries EINTR/EAGAIN. The page
// cache policy (O_DIRECT or buffered per file) is the same as storage::uring's.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/detail/file_set.hpp"

namespace instanttensor::storage {

class pread {
public:
    static constexpr MemoryKind destination = MemoryKind::host;

    struct Options {
        unsigned threads = 8;         ///< reads in flight (one per thread)
        DirectIo direct = DirectIo::automatic;
    };

    pread() : pread(Options{}) {}
    explicit pread(Options options) : options_(options) {
        options_.threads = std::clamp(options_.threads, 1u, 256u);
    }
    /// Moves an unopened backend (the loader takes it by value, then opens it); worker threads
    /// hold `this`, so an opened one is not moved.
    pread(pread&& other) noexcept : options_(other.options_) {}
    pread& operator=(pread&&) = delete;
    pread(const pread&) = delete;
    pread& operator=(const pread&) = delete;
    ~pread() { stop(); }

    void open(const format::Checkpoint& checkpoint) {
        stop();
        files_.open(checkpoint, options_.direct);
        stopping_ = false;
        for (unsigned i = 0; i < options_.threads; ++i) workers_.emplace_back([this] { work(); });
    }

    [[nodiscard]] std::uint64_t alignment(std::uint32_t file) const { return files_.alignment(file); }
    [[nodiscard]] std::size_t queue_depth() const noexcept { return options_.threads; }
    [[nodiscard]] std::string_view name() const noexcept { return "pread"; }
    [[nodiscard]] const detail::FileSet& files() const noexcept { return files_; }

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
            const std::int64_t result = read_once(r);
            lock.lock();
            --busy_;
            results_.push_back({r.tag, result});
            result_ready_.notify_one();
        }
    }

    std::int64_t read_once(const ReadRequest& r) {
        for (;;) {
            const bool direct = files_.is_direct(r.file);
            const ssize_t n = ::pread(files_.descriptor(r.file), r.destination, r.length, static_cast<off_t>(r.offset));
            if (n >= 0) return n;
            if (errno == EINVAL && direct) {  // the filesystem refused O_DIRECT after all
                files_.fall_back_to_buffered(r.file);
                continue;
            }
            return -errno;
        }
    }

    /// Stops the workers once the reads they are doing finished; queued requests are dropped.
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

    Options options_;
    detail::FileSet files_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable request_ready_;
    std::condition_variable result_ready_;
    std::deque<ReadRequest> requests_;
    std::deque<ReadResult> results_;
    unsigned busy_ = 0;
    bool stopping_ = false;
};

}  // namespace instanttensor::storage
