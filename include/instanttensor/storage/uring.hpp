// instanttensor/storage/uring.hpp: reads with io_uring (liburing), the default backend.
//
// One ring, driven from the loader's thread: reads are queued, submitted in batches, and reaped
// without a thread of our own (the kernel's io-wq does the buffered copies in parallel).
//   - Per file O_DIRECT or buffered (detail::FileSet): cold files with O_DIRECT, aligned as statx
//     says; resident files buffered with IOSQE_ASYNC, which queues straight to io-wq instead of
//     first trying inline (measured 7.8 → 61 GB/s from the page cache with one submitting thread).
//   - Files are registered with the ring, and the staging memory where a file is read with
//     O_DIRECT, as far as the kernel and RLIMIT_MEMLOCK allow (fewer per-read lookups and page
//     pinning); plain reads where not. An O_DIRECT read into memory not registered goes to io-wq
//     too, so that faulting in the pages it pins runs on every core.
//   - A filesystem that refuses O_DIRECT at read time (EINVAL) gets the file read buffered
//     (DirectIo::automatic), or the refusal reported (DirectIo::on). Each read remembers whether
//     it was queued with O_DIRECT: the file's other O_DIRECT reads already in flight come back
//     EINVAL too, after the switch, and are queued again buffered rather than failing the load.
// io_uring itself refused (ENOSYS on old kernels, EPERM under seccomp or
// kernel.io_uring_disabled) is an unavailable_error, on which storage::automatic falls back to
// storage::pread.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_URING

#include <liburing.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "instanttensor/detail/file_set.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"

namespace instanttensor::storage {

class uring {
public:
    static constexpr MemoryKind destination = MemoryKind::host;

    struct Options {
        unsigned queue_depth = 64;  ///< reads in flight
        DirectIo direct = DirectIo::automatic;
        bool register_files = true;
        bool register_buffers = true;
    };

    /// The most one read asks of the kernel (aligned for O_DIRECT).
    static constexpr std::uint64_t max_read_bytes = 1ull << 30;

    uring() : uring(Options{}) {}
    explicit uring(Options options) : options_(options) {
        options_.queue_depth = std::clamp(options_.queue_depth, 1u, 4096u);
    }
    /// Moves an unopened backend (the loader takes it by value, then opens it).
    uring(uring&& other) noexcept : options_(other.options_) {}
    uring& operator=(uring&&) = delete;
    uring(const uring&) = delete;
    uring& operator=(const uring&) = delete;
    ~uring() { close(); }

    void open(const format::Checkpoint& checkpoint) {
        close();
        files_.open(checkpoint, options_.direct);
        if (const int rc = ::io_uring_queue_init(options_.queue_depth, &ring_, 0); rc < 0)
            throw unavailable_error("io_uring", "cannot create a ring: " + std::string(std::strerror(-rc)) +
                                                    (rc == -EPERM ? " (disabled by kernel.io_uring_disabled or a seccomp filter)" : ""));
        ring_open_ = true;
        entries_.assign(options_.queue_depth, {});
        free_entries_.clear();
        for (unsigned i = 0; i < options_.queue_depth; ++i) free_entries_.push_back(options_.queue_depth - 1 - i);

        // Registered descriptors: file i at i.
        if (options_.register_files) {
            std::vector<int> fds;
            for (std::uint32_t i = 0; i < files_.size(); ++i) fds.push_back(files_.descriptor(i));
            files_registered_ = !fds.empty() && ::io_uring_register_files(&ring_, fds.data(), static_cast<unsigned>(fds.size())) == 0;
        }
    }

    /// Registers the staging memory the loader reads into, so that O_DIRECT reads into it pin no
    /// pages; a refusal (RLIMIT_MEMLOCK) leaves plain reads. Not where every file is read
    /// buffered: a buffered read pins nothing, and registering faults in all of the staging memory
    /// before the first read (docs/benchmarks.md#python-side-by-side). Called by the loader once,
    /// after open.
    void register_memory(std::span<std::byte> memory) {
        if (!options_.register_buffers || !ring_open_ || memory.empty()) return;
        bool any_direct = false;
        for (std::uint32_t i = 0; i < files_.size(); ++i) any_direct = any_direct || files_.is_direct(i);
        if (!any_direct) return;
        iovec v{memory.data(), memory.size()};
        buffers_registered_ = ::io_uring_register_buffers(&ring_, &v, 1) == 0;
        if (buffers_registered_) registered_ = memory;
    }

    [[nodiscard]] std::uint64_t alignment(std::uint32_t file) const { return files_.alignment(file); }
    [[nodiscard]] std::size_t queue_depth() const noexcept { return options_.queue_depth; }
    [[nodiscard]] std::string_view name() const noexcept { return "uring"; }
    [[nodiscard]] const detail::FileSet& files() const noexcept { return files_; }
    [[nodiscard]] bool files_registered() const noexcept { return files_registered_; }
    [[nodiscard]] bool buffers_registered() const noexcept { return buffers_registered_; }

    void submit(const ReadRequest& request) {
        const unsigned entry = free_entries_.back();
        free_entries_.pop_back();
        entries_[entry].request = request;
        queue(entry);
    }

    std::size_t reap(std::span<ReadResult> out, bool wait) {
        std::size_t n = 0;
        while (n == 0) {
            if (unsubmitted_ > 0 || (wait && in_flight_ > 0)) flush(wait && in_flight_ > 0);
            io_uring_cqe* cqe = nullptr;
            unsigned head, seen = 0;
            io_uring_for_each_cqe(&ring_, head, cqe) {
                if (n == out.size()) break;
                ++seen;
                const auto entry = static_cast<unsigned>(cqe->user_data);
                const ReadRequest& r = entries_[entry].request;
                // O_DIRECT refused at read time: read buffered, unless DirectIo::on forbids it. A
                // read queued with O_DIRECT after another one switched the file is queued again.
                if (cqe->res == -EINVAL && entries_[entry].direct &&
                    (!files_.is_direct(r.file) || files_.fall_back_to_buffered(r.file))) {
                    --in_flight_;
                    queue(entry);
                    continue;
                }
                out[n++] = {r.tag, cqe->res};
                --in_flight_;
                free_entries_.push_back(entry);
            }
            ::io_uring_cq_advance(&ring_, seen);
            if (!wait || in_flight_ == 0) break;
        }
        return n;
    }

private:
    void queue(unsigned entry) {
        io_uring_sqe* sqe = ::io_uring_get_sqe(&ring_);
        if (sqe == nullptr) {  // the submission queue is full of unsubmitted entries: submit them
            flush(false);
            sqe = ::io_uring_get_sqe(&ring_);
        }
        const ReadRequest& r = entries_[entry].request;
        const bool direct = entries_[entry].direct = files_.is_direct(r.file);
        const int fd = files_registered_ ? static_cast<int>(r.file) : files_.descriptor(r.file);
        // An SQE's length is 32 bits, and the kernel reads at most 2 GiB - 4 KiB at once anyway: a
        // longer request reads its first GiB, and the loader continues it as a short read.
        const auto length = static_cast<unsigned>(std::min<std::uint64_t>(r.length, max_read_bytes));
        const bool fixed = buffers_registered_ && r.destination >= registered_.data() &&
                           r.destination + r.length <= registered_.data() + registered_.size();
        if (fixed)
            ::io_uring_prep_read_fixed(sqe, fd, r.destination, length, r.offset, 0);
        else
            ::io_uring_prep_read(sqe, fd, r.destination, length, r.offset);
        if (files_registered_) sqe->flags |= IOSQE_FIXED_FILE;
        // Only an O_DIRECT read into registered memory is issued inline: it pins nothing. Pinning
        // other memory may fault its pages in (a tensor's fresh destination), which io-wq's workers
        // then do on every core, not the loader's thread alone.
        if (!direct || !fixed) sqe->flags |= IOSQE_ASYNC;
        ::io_uring_sqe_set_data64(sqe, entry);
        ++in_flight_;
        ++unsubmitted_;
    }

    /// Submits queued reads; with `wait`, also waits for one completion.
    void flush(bool wait) {
        for (;;) {
            const int rc = wait ? ::io_uring_submit_and_wait(&ring_, 1) : ::io_uring_submit(&ring_);
            if (rc >= 0) {
                unsubmitted_ = 0;
                return;
            }
            if (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) {
                if (rc != -EINTR) wait = true;  // the kernel is short of resources: let completions drain
                continue;
            }
            throw io_error("io_uring", "submit failed", -rc);
        }
    }

    /// Waits for every read still in flight (they write into memory the caller will free), then
    /// tears the ring down. Closing a ring does not wait for reads that io-wq workers are running:
    /// they would write into freed staging. On a ring this object set up, waiting can only be
    /// interrupted (EINTR) or told to drain completions first (EAGAIN, EBUSY), and both are tried
    /// again; any other answer means the ring is broken, and the process stops rather than let the
    /// kernel write into memory that is about to be reused.
    void close() noexcept {
        if (!ring_open_) return;
        while (in_flight_ > 0) {
            io_uring_cqe* cqe = nullptr;
            const int rc = unsubmitted_ ? ::io_uring_submit_and_wait(&ring_, 1) : ::io_uring_wait_cqe(&ring_, &cqe);
            if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
                std::fprintf(stderr, "instanttensor: io_uring: cannot wait for %zu reads in flight (%s); stopping the process "
                                     "before their memory is freed\n", in_flight_, std::strerror(-rc));
                std::abort();
            }
            if (rc >= 0) unsubmitted_ = 0;
            unsigned head, seen = 0;
            io_uring_for_each_cqe(&ring_, head, cqe) ++seen;
            ::io_uring_cq_advance(&ring_, seen);
            in_flight_ -= std::min<std::size_t>(in_flight_, seen);
        }
        ::io_uring_queue_exit(&ring_);
        ring_open_ = false;
        files_registered_ = buffers_registered_ = false;
    }

    Options options_;
    detail::FileSet files_;
    io_uring ring_{};
    bool ring_open_ = false;
    bool files_registered_ = false;
    bool buffers_registered_ = false;
    std::span<std::byte> registered_;
    /// A read in flight, and whether it was queued with O_DIRECT.
    struct Entry {
        ReadRequest request;
        bool direct = false;
    };
    std::vector<Entry> entries_;  // reads in flight, by ring user_data
    std::vector<unsigned> free_entries_;
    std::size_t in_flight_ = 0;
    std::size_t unsubmitted_ = 0;
};

}  // namespace instanttensor::storage

#endif  // INSTANTTENSOR_HAS_URING
