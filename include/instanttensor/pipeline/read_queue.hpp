// instanttensor/pipeline/read_queue.hpp: the reads a pipeline has in flight, each until all the
// bytes it must bring are there.
//
// Both pipelines submit their reads through a ReadQueue and reap them through it. The queue hands
// each read to the storage backend and, as results come back, retries EINTR and EAGAIN, continues
// a short read where it stopped, and throws io_error naming the file and byte offset for anything
// else, or for an end of file before the bytes the plan needs. A complete read goes back to the
// pipeline with its Job: what the pipeline will do with the bytes (the extent and staging slot of
// a single load, the window of a group load), opaque to the queue.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <string>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"
#include "instanttensor/pipeline/options.hpp"

namespace instanttensor::pipeline {

template <StorageBackend Storage, class Job>
class ReadQueue {
public:
    /// `length` bytes of `file` at `offset` into `buffer`, of which the first `needed` must arrive
    /// (the rest is alignment padding that may lie past the end of the file).
    struct Read {
        std::uint32_t file = 0;
        std::uint64_t offset = 0;
        std::uint64_t length = 0;
        std::uint64_t needed = 0;
        std::byte* buffer = nullptr;
        Job job{};
    };

    ReadQueue() = default;
    /// Holds up to `capacity` reads in flight, fewer if the storage takes fewer.
    ReadQueue(Storage& storage, const format::Checkpoint& checkpoint, LoadStats& stats, std::size_t capacity)
        : storage_(&storage), checkpoint_(&checkpoint), stats_(&stats) {
        const std::size_t depth = std::max<std::size_t>(1, std::min<std::size_t>(capacity, storage.queue_depth()));
        entries_.resize(depth);
        results_.resize(depth);
        for (std::uint64_t tag = depth; tag-- > 0;) free_.push_back(tag);
    }

    [[nodiscard]] bool full() const noexcept { return free_.empty(); }
    /// Storage requests outstanding (a read being continued counts once).
    [[nodiscard]] std::size_t in_flight() const noexcept { return in_flight_; }

    /// Starts `read`; the queue must not be full.
    void submit(const Read& read) {
        const std::uint64_t tag = free_.back();
        free_.pop_back();
        entries_[tag] = {read, 0};
        send(tag);
    }

    /// Reaps finished requests (with `wait`, blocks until one finished), handles them, and calls
    /// `done(read)` for each read whose bytes are all there. Returns how many requests it reaped.
    template <class Done>
    std::size_t reap(bool wait, Done&& done) {
        const std::size_t n = storage_->reap(results_, wait);
        if constexpr (requires { storage_->retries(); }) {  // requests a remote storage sent again by itself
            stats_->retries += storage_->retries() - storage_retries_;
            storage_retries_ = storage_->retries();
        }
        for (std::size_t i = 0; i < n; ++i) {
            const std::uint64_t tag = results_[i].tag;
            const std::int64_t result = results_[i].result;
            --in_flight_;
            Entry& e = entries_[tag];
            if (result == -EINTR || result == -EAGAIN) {
                retry(tag);
                continue;
            }
            if (result < 0)
                throw io_error(path(e),
                               "read failed at byte " + std::to_string(e.read.offset + e.done) +
                                   (result == -EINVAL && storage_->alignment(e.read.file) > 1 ? " (an O_DIRECT read)" : ""),
                               static_cast<int>(-result));
            e.done += static_cast<std::uint64_t>(result);
            if (e.done < e.read.needed) {
                if (result == 0)
                    throw io_error(path(e), "unexpected end of file at byte " + std::to_string(e.read.offset + e.done) +
                                                " (was the file truncated after it was opened?)", 0);
                retry(tag);  // a short read: continue where it stopped
                continue;
            }
            retries_in_a_row_ = 0;
            stats_->read_bytes += e.read.length;
            const Read complete = e.read;  // the tag may be reused by a submit from done()
            free_.push_back(tag);
            done(complete);
        }
        return n;
    }

private:
    struct Entry {
        Read read;
        std::uint64_t done = 0;  // bytes arrived
    };

    /// Submits the part of read `tag` that has not arrived yet.
    void send(std::uint64_t tag) {
        const Entry& e = entries_[tag];
        storage_->submit({e.read.file, e.read.offset + e.done, e.read.length - e.done, e.read.buffer + e.done, tag});
        ++in_flight_;
        ++stats_->reads;
    }

    void retry(std::uint64_t tag) {
        if (++retries_in_a_row_ > max_retries_in_a_row)
            throw io_error(path(entries_[tag]), "reads keep failing with EINTR/EAGAIN or returning short", EAGAIN);
        ++stats_->retries;
        send(tag);
    }

    const std::string& path(const Entry& e) const { return checkpoint_->files()[e.read.file].path.native(); }

    static constexpr unsigned max_retries_in_a_row = 1000;

    Storage* storage_ = nullptr;
    const format::Checkpoint* checkpoint_ = nullptr;
    LoadStats* stats_ = nullptr;
    std::vector<Entry> entries_;         // by tag
    std::vector<std::uint64_t> free_;    // tags not in use
    std::vector<ReadResult> results_;
    std::size_t in_flight_ = 0;
    unsigned retries_in_a_row_ = 0;
    std::uint64_t storage_retries_ = 0;  // of storage_->retries(), counted so far
};

}  // namespace instanttensor::pipeline
