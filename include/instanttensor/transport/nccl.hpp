// instanttensor/transport/nccl.hpp: a group of GPUs that load one checkpoint together over NCCL.
//
// The caller brings a communicator it already has (the world, or any subgroup: one per tensor
// parallel group, one per node, ...) and the stream the exchanges run on. Each window's exchange
// is one NCCL call or one NCCL group (pipeline/group_plan.hpp):
//
//   all_gather   ncclAllGather, in place (rank r's segment already sits at r·S)
//   broadcasts   one in-place ncclBroadcast per reader, in one ncclGroupStart/End
//   sends        ncclSend / ncclRecv of exactly the kept bytes, in one group, in the same order
//                on both sides of every pair
//
// Every rank of the communicator must load the same checkpoint with the same LoadOptions (filter,
// slot_bytes, window_bytes, share function): the exchanges are derived from them. The loader
// checks it first, through gather() of a digest of each rank's plan. If a rank fails mid-load, its
// loader abandons the group: with Options::abort_on_failure it calls ncclCommAbort (the
// communicator is then gone, and every peer's pending exchange ends with an error instead of
// waiting); without it, it waits for its own exchanges in flight, which end only when the peers
// take part.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_NCCL

#include <nccl.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "instanttensor/detail/cuda.hpp"
#include "instanttensor/detail/nccl.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/io.hpp"
#include "instanttensor/pipeline/group_plan.hpp"

namespace instanttensor::transport {

class nccl {
public:
    static constexpr MemoryKind memory = MemoryKind::device;

    struct Options {
        /// When the load stops early on this rank, abort the communicator (ncclCommAbort), so that
        /// no rank waits forever; the caller must then neither use nor destroy it.
        bool abort_on_failure = false;
    };

    /// `comm` stays the caller's: it must outlive the transport and is never destroyed here.
    /// Exchanges run on `stream` (the caller's, or null for the default stream).
    nccl(ncclComm_t comm, cudaStream_t stream) : nccl(comm, stream, Options{}) {}
    nccl(ncclComm_t comm, cudaStream_t stream, Options options) : comm_(comm), stream_(stream), options_(options) {
        if (comm_ == nullptr) throw usage_error("transport::nccl", "needs a communicator");
        INSTANTTENSOR_NCCL_CHECK(comm_, ncclCommUserRank(comm_, &rank_));
        INSTANTTENSOR_NCCL_CHECK(comm_, ncclCommCount(comm_, &size_));
        INSTANTTENSOR_NCCL_CHECK(comm_, ncclCommCuDevice(comm_, &device_));
        detail::DeviceGuard guard(device_);
        events_ = std::vector<detail::Event>(max_in_flight);
    }
    nccl(nccl&&) = default;
    nccl& operator=(nccl&&) = delete;

    [[nodiscard]] int rank() const noexcept { return rank_; }
    [[nodiscard]] int size() const noexcept { return size_; }
    [[nodiscard]] int device() const noexcept { return device_; }
    [[nodiscard]] ncclComm_t communicator() const noexcept { return comm_; }

    /// Queues the exchange of one window on the stream; the ticket's event follows it. At most
    /// `max_in_flight` exchanges may be unfinished at once (the loader keeps at most 16 windows).
    std::uint64_t exchange(std::byte* window, const WindowExchange& x) {
        detail::DeviceGuard guard(device_);
        switch (x.mode) {
        case ExchangeMode::none: break;
        case ExchangeMode::all_gather:
            INSTANTTENSOR_NCCL_CHECK(comm_, ncclAllGather(window + x.segment * static_cast<std::uint64_t>(rank_), window,
                                                          x.segment, ncclUint8, comm_, stream_));
            break;
        case ExchangeMode::broadcasts:
            INSTANTTENSOR_NCCL_CHECK(comm_, ncclGroupStart());
            for (const Transfer& t : x.transfers)
                INSTANTTENSOR_NCCL_CHECK(comm_, ncclBroadcast(window + t.offset, window + t.offset, t.length, ncclUint8,
                                                              t.from, comm_, stream_));
            INSTANTTENSOR_NCCL_CHECK(comm_, ncclGroupEnd());
            break;
        case ExchangeMode::sends:
            INSTANTTENSOR_NCCL_CHECK(comm_, ncclGroupStart());
            for (const Transfer& t : x.transfers) {
                if (t.from == rank_) INSTANTTENSOR_NCCL_CHECK(comm_, ncclSend(window + t.offset, t.length, ncclUint8, t.to, comm_, stream_));
                if (t.to == rank_) INSTANTTENSOR_NCCL_CHECK(comm_, ncclRecv(window + t.offset, t.length, ncclUint8, t.from, comm_, stream_));
            }
            INSTANTTENSOR_NCCL_CHECK(comm_, ncclGroupEnd());
            break;
        }
        events_[next_ % max_in_flight].record(stream_);
        return next_++;
    }

    /// Every rank's `value`, by rank: a small all-gather, waited for (polling the communicator's
    /// asynchronous error, like exchange_done).
    std::vector<std::uint64_t> gather(std::uint64_t value) {
        detail::DeviceGuard guard(device_);
        const auto n = static_cast<std::size_t>(size_);
        detail::DeviceBuffer values(n * sizeof value, "nothing: 8 bytes per rank");
        std::byte* mine = values.data() + static_cast<std::size_t>(rank_) * sizeof value;
        INSTANTTENSOR_CUDA_CHECK(cudaMemcpyAsync(mine, &value, sizeof value, cudaMemcpyHostToDevice, stream_));
        const std::uint64_t ticket = exchange(values.data(), {ExchangeMode::all_gather, sizeof value, n * sizeof value, {}});
        while (!exchange_done(ticket)) std::this_thread::yield();
        std::vector<std::uint64_t> all(n);
        INSTANTTENSOR_CUDA_CHECK(cudaMemcpy(all.data(), values.data(), n * sizeof value, cudaMemcpyDeviceToHost));
        return all;
    }

    /// Whether the exchange `ticket` (and, the stream being in order, every earlier one) finished.
    /// Throws nccl_error when the communicator reports an asynchronous error (a peer aborted, a
    /// network failure), so that a rank does not poll a dead group forever.
    bool exchange_done(std::uint64_t ticket) {
        if (events_[ticket % max_in_flight].done()) return true;
        ncclResult_t state = ncclSuccess;
        INSTANTTENSOR_NCCL_CHECK(comm_, ncclCommGetAsyncError(comm_, &state));
        if (state != ncclSuccess && state != ncclInProgress) detail::throw_nccl_error(state, comm_, "an exchange");
        return false;
    }

    void abandon() noexcept {
        if (options_.abort_on_failure) {
            ncclCommAbort(comm_);
            return;
        }
        int previous = 0;  // no DeviceGuard: it throws, and this must not
        cudaGetDevice(&previous);
        cudaSetDevice(device_);
        cudaStreamSynchronize(stream_);
        cudaSetDevice(previous);
    }

    static constexpr std::size_t max_in_flight = 16;

private:
    ncclComm_t comm_;
    cudaStream_t stream_;
    Options options_;
    int rank_ = 0;
    int size_ = 0;
    int device_ = 0;
    std::vector<detail::Event> events_;
    std::uint64_t next_ = 0;
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
