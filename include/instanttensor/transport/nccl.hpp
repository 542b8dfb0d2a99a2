// instanttensor/transport/nccl.hpp: a group of GPUs that load one checkpoint together over NCCL.
//
// The caller brings a communicator and the stream the operations run on. Each window's exchange is
// one NCCL call or one NCCL group (pipeline/group_plan.hpp), and the loader's status rounds are
// small all-gathers:
//
//   all_gather   ncclAllGather, in place (rank r's segment already sits at r·S)
//   broadcasts   one in-place ncclBroadcast per reader, in one ncclGroupStart/End
//   sends        ncclSend / ncclRecv of exactly the kept bytes, in the same order on both sides of
//                every pair, in NCCL groups of at most max_group_transfers (numbered alike on all ranks)
//   gather       ncclAllGather of one 64-bit word per rank, into the transport's own buffers
//
// What the caller must guarantee (docs/distributed.md#the-communicator):
//   - Every rank loads the same checkpoint with the same LoadOptions (filter, slot_bytes,
//     window_bytes, share): the operations are derived from them (the loader checks it first).
//   - Nothing else uses the communicator from a loader's construction to its destruction: the
//     loader issues operations inside operator++, at moments that depend on each rank's reads, so
//     another collective on it would land at different positions on different ranks. Give the
//     load a communicator of its own (ncclCommSplit of the application's).
//   - If the transport aborts (a deadline passed, or NCCL reported an error), the communicator is
//     gone (ncclCommAbort): neither use nor destroy it after; aborted() says so.
//
// Blocking and non-blocking communicators (config.blocking = 0, NCCL_COMM_BLOCKING=0) both work: a
// call that answers ncclInProgress is still launching in the background, so the transport records
// the operation's completion event only once the communicator reports the launch finished, and
// issues the next operation only then (NCCL asks that of non-blocking communicators). An NCCL call
// that fails inside ncclGroupStart/End still gets its ncclGroupEnd, which cancels the group, so
// that no later NCCL call of this thread (the application's included) is held in an open group.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_NCCL

#include <nccl.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "instanttensor/detail/cuda.hpp"
#include "instanttensor/detail/launch_queue.hpp"
#include "instanttensor/detail/nccl.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/io.hpp"
#include "instanttensor/pipeline/group_plan.hpp"

namespace instanttensor::transport {

class nccl {
public:
    static constexpr MemoryKind memory = MemoryKind::device;

    /// `comm` stays the caller's: it must outlive the transport and is never destroyed here.
    /// Operations run on `stream` (the caller's, or null for the legacy default stream).
    nccl(ncclComm_t comm, cudaStream_t stream) : comm_(comm), stream_(stream) {
        if (comm_ == nullptr) throw usage_error("transport::nccl", "needs a communicator");
        INSTANTTENSOR_NCCL_CHECK(comm_, ncclCommUserRank(comm_, &rank_));
        INSTANTTENSOR_NCCL_CHECK(comm_, ncclCommCount(comm_, &size_));
        INSTANTTENSOR_NCCL_CHECK(comm_, ncclCommCuDevice(comm_, &device_));
        detail::DeviceGuard guard(device_);
        events_ = std::vector<detail::Event>(max_in_flight);
        const std::size_t words = max_in_flight * static_cast<std::size_t>(size_);
        gathered_device_ = detail::DeviceBuffer(words * sizeof(std::uint64_t), "nothing: 8 bytes per rank and operation");
        gathered_host_ = detail::PinnedBuffer((words + max_in_flight) * sizeof(std::uint64_t));
    }
    nccl(nccl&&) = default;
    nccl& operator=(nccl&&) = delete;

    [[nodiscard]] int rank() const noexcept { return rank_; }
    [[nodiscard]] int size() const noexcept { return size_; }
    [[nodiscard]] int device() const noexcept { return device_; }
    [[nodiscard]] ncclComm_t communicator() const noexcept { return comm_; }
    /// Whether abort() ran: the communicator is gone.
    [[nodiscard]] bool aborted() const noexcept { return aborted_; }

    /// Starts the exchange of one window; `window` stays valid until done(ticket). Sends go in one
    /// NCCL group per run of WindowExchange::groups (NCCL aggregates a bounded number of calls).
    std::uint64_t exchange(std::byte* window, const WindowExchange& x) {
        switch (x.mode) {
        case ExchangeMode::none: return start({part([] { return ncclSuccess; })});
        case ExchangeMode::all_gather:
            return start({part([this, window, segment = x.segment] {
                return ncclAllGather(window + segment * static_cast<std::uint64_t>(rank_), window, segment, ncclUint8, comm_, stream_);
            })});
        case ExchangeMode::broadcasts:
            return start({part([this, window, transfers = std::vector<Transfer>(x.transfers.begin(), x.transfers.end())] {
                return grouped([&] {
                    for (const Transfer& t : transfers)
                        if (const ncclResult_t r = ncclBroadcast(window + t.offset, window + t.offset, t.length, ncclUint8, t.from, comm_, stream_);
                            r != ncclSuccess)
                            return r;
                    return ncclSuccess;
                });
            })});
        case ExchangeMode::sends: {
            std::vector<detail::LaunchQueue::Part> groups;
            for (std::size_t first = 0; first < x.transfers.size();) {
                std::size_t end = first + 1;
                while (end < x.transfers.size() && x.groups[end] == x.groups[first]) ++end;
                groups.push_back(part([this, window, transfers = std::vector<Transfer>(x.transfers.begin() + static_cast<std::ptrdiff_t>(first),
                                                                                   x.transfers.begin() + static_cast<std::ptrdiff_t>(end))] {
                    return grouped([&] {
                        for (const Transfer& t : transfers) {
                            ncclResult_t r = ncclSuccess;
                            if (t.from == rank_) r = ncclSend(window + t.source, t.length, ncclUint8, t.to, comm_, stream_);
                            if (r == ncclSuccess && t.to == rank_) r = ncclRecv(window + t.offset, t.length, ncclUint8, t.from, comm_, stream_);
                            if (r != ncclSuccess) return r;
                        }
                        return ncclSuccess;
                    });
                }));
                first = end;
            }
            if (groups.empty()) groups.push_back(part([] { return ncclSuccess; }));
            return start(std::move(groups));
        }
        }
        throw usage_error("transport::nccl", "an exchange mode this version does not know");
    }

    /// Starts an all-gather of one word per rank, into the transport's own buffers.
    std::uint64_t gather(std::uint64_t value) {
        const std::uint64_t ticket = next_;
        std::uint64_t* device = words_on_device(ticket);
        std::uint64_t* host = words_on_host(ticket);
        host[size_] = value;  // this rank's word, pinned until the copy below ran
        return start({part(
            [this, device, host] {
                const cudaError_t copied = cudaMemcpyAsync(device + rank_, host + size_, sizeof(std::uint64_t), cudaMemcpyHostToDevice, stream_);
                if (copied != cudaSuccess) detail::throw_cuda_error(copied, "cudaMemcpyAsync", __FILE__, __LINE__, "a gather's word");
                return ncclAllGather(device + rank_, device, 1, ncclUint64, comm_, stream_);
            },
            [this, device, host] {
                INSTANTTENSOR_CUDA_CHECK(
                    cudaMemcpyAsync(host, device, static_cast<std::size_t>(size_) * sizeof(std::uint64_t), cudaMemcpyDeviceToHost, stream_));
            })});
    }

    /// Whether operation `ticket` (and, the stream being in order, every earlier one) completed.
    /// Throws nccl_error when the communicator reports an asynchronous error (a peer aborted, a
    /// network failure) or was aborted.
    bool done(std::uint64_t ticket) {
        if (aborted_) throw nccl_error("transport::nccl", "the communicator was aborted");
        launch();
        if (ticket >= recorded_) return false;
        if (ticket < completed_) return true;
        if (events_[ticket % max_in_flight].done()) {
            completed_ = ticket + 1;
            return true;
        }
        ncclResult_t state = ncclSuccess;
        INSTANTTENSOR_NCCL_CHECK(comm_, ncclCommGetAsyncError(comm_, &state));
        if (state != ncclSuccess && state != ncclInProgress) detail::throw_nccl_error(state, comm_, "an operation");
        return false;
    }

    /// Every rank's word of gather `ticket`, once done(ticket).
    std::vector<std::uint64_t> gathered(std::uint64_t ticket) {
        const std::uint64_t* host = words_on_host(ticket);
        return {host, host + size_};
    }

    /// Aborts the communicator (ncclCommAbort), which ends every operation in flight; it is gone
    /// after, for the caller too.
    void abort() noexcept {
        if (aborted_) return;
        aborted_ = true;
        ncclCommAbort(comm_);
        queue_.clear();
    }

    /// Operations unfinished at once, at most: the loader holds at most 16 windows' exchanges and
    /// one status round.
    static constexpr std::size_t max_in_flight = 32;

private:
    /// A part of an operation whose NCCL calls (one call, or one group) return `calls()`'s result:
    /// launched, still launching (ncclInProgress), or an error.
    template <class Calls>
    detail::LaunchQueue::Part part(Calls calls, std::function<void()> then = {}) {
        return {[this, calls = std::move(calls)]() mutable { return launch_of(calls(), "an operation"); }, std::move(then)};
    }

    detail::Launch launch_of(ncclResult_t result, const char* what) const {
        if (result == ncclSuccess) return detail::Launch::done;
        if (result == ncclInProgress) return detail::Launch::in_progress;
        detail::throw_nccl_error(result, comm_, what);
    }

    std::uint64_t* words_on_device(std::uint64_t ticket) const {
        return reinterpret_cast<std::uint64_t*>(gathered_device_.data()) + ticket % max_in_flight * static_cast<std::uint64_t>(size_);
    }
    /// size_ words gathered, then this rank's own word.
    std::uint64_t* words_on_host(std::uint64_t ticket) const {
        return reinterpret_cast<std::uint64_t*>(gathered_host_.data()) + ticket % max_in_flight * (static_cast<std::uint64_t>(size_) + 1);
    }

    std::uint64_t start(std::vector<detail::LaunchQueue::Part> parts) {
        if (aborted_) throw nccl_error("transport::nccl", "the communicator was aborted");
        if (next_ >= completed_ + max_in_flight)  // its slot would still be the one of an unfinished operation
            throw usage_error("transport::nccl", "more than " + std::to_string(max_in_flight) + " operations unfinished");
        queue_.push(std::move(parts));
        const std::uint64_t ticket = next_++;
        launch();
        return ticket;
    }

    /// Launches the parts started, as far as the communicator lets (detail::LaunchQueue), and
    /// records the event of each operation launched.
    void launch() {
        if (!queue_.busy()) return;
        detail::DeviceGuard guard(device_);
        queue_.advance(
            [this] {
                ncclResult_t state = ncclSuccess;
                INSTANTTENSOR_NCCL_CHECK(comm_, ncclCommGetAsyncError(comm_, &state));
                return launch_of(state, "launching an operation");
            },
            [this] {
                events_[recorded_ % max_in_flight].record(stream_);
                ++recorded_;
            });
    }

    /// Runs `calls` between ncclGroupStart and ncclGroupEnd. The group is ended whatever happens
    /// (a failed call inside it makes ncclGroupEnd cancel it), so that it never stays open.
    template <class Calls>
    ncclResult_t grouped(Calls calls) {
        if (const ncclResult_t started = ncclGroupStart(); started != ncclSuccess) return started;
        ncclResult_t result = ncclSuccess;
        try {
            result = calls();
        } catch (...) {
            ncclGroupEnd();
            throw;
        }
        const ncclResult_t ended = ncclGroupEnd();
        return result != ncclSuccess ? result : ended;
    }

    ncclComm_t comm_;
    cudaStream_t stream_;
    int rank_ = 0;
    int size_ = 0;
    int device_ = 0;
    std::vector<detail::Event> events_;     // per ticket % max_in_flight
    detail::DeviceBuffer gathered_device_;  // per ticket % max_in_flight: a word per rank
    detail::PinnedBuffer gathered_host_;    // per ticket % max_in_flight: a word per rank, and this rank's
    detail::LaunchQueue queue_;             // parts started and not launched yet
    std::uint64_t next_ = 0;                // the next ticket
    std::uint64_t recorded_ = 0;            // tickets below it are launched and have their event
    std::uint64_t completed_ = 0;           // tickets below it completed (done() said so)
    bool aborted_ = false;
};

/// The NCCL unique id of a new communicator, through a file every rank can see (a shared
/// filesystem across nodes, /tmp on one host), for launchers without a better channel: rank 0
/// makes the id and publishes it (written aside, then renamed, so no rank reads half of it); the
/// others wait up to `timeout` for it. Remove the file before each job: a stale one would hand the
/// other ranks an old id.
inline ncclUniqueId unique_id_through_file(int rank, const std::filesystem::path& file,
                                           std::chrono::milliseconds timeout = std::chrono::minutes(2)) {
    ncclUniqueId id{};
    if (rank == 0) {
        INSTANTTENSOR_NCCL_CHECK(nullptr, ncclGetUniqueId(&id));
        const std::filesystem::path partial = file.string() + ".partial";
        std::ofstream(partial, std::ios::binary).write(id.internal, sizeof id.internal);
        std::error_code failed;
        std::filesystem::rename(partial, file, failed);
        if (failed) throw io_error(file.string(), "cannot publish the NCCL unique id: " + failed.message(), failed.value());
        return id;
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!std::filesystem::exists(file)) {
        if (std::chrono::steady_clock::now() > deadline)
            throw io_error(file.string(), "no NCCL unique id from rank 0 after " + std::to_string(timeout.count() / 1000) + " s", ETIMEDOUT);
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    std::ifstream in(file, std::ios::binary);
    if (!in.read(id.internal, sizeof id.internal))
        throw io_error(file.string(), "the NCCL unique id file is shorter than an id", EIO);
    return id;
}

}  // namespace instanttensor::transport

#endif  // INSTANTTENSOR_HAS_NCCL
