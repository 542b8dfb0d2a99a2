// instanttensor/detail/device_copier.hpp: host-to-device copies from staging slots, with a ticket
// per landed extent so the loader knows when a slot may be reused and when a tensor's bytes are
// all on the device. The device sinks derive from it: it is their store() and the asynchronous
// half of the Sink protocol (CopiesAsynchronously in concepts.hpp).
//
// Extents go to K streams in turn (K = 2 by default): while one copy finishes, the next one is
// already queued on the other stream, so the DMA engine does not idle between copies. Ticket t
// goes to stream t mod K, and each stream completes in order; so "tickets t, t-1, ..., t-K+1 are
// done" means every ticket up to t is done. done() and wait() check exactly that, which keeps the
// loader's view simple: tickets complete in the order they were issued.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_CUDA

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "instanttensor/detail/cuda.hpp"

namespace instanttensor::detail {

class DeviceCopier {
public:
    /// `consumer` is the stream the runtime uses the tensors on, if any: copies into memory it
    /// released wait for its work before overwriting. A null stream is CUDA's legacy default stream,
    /// which is a stream like the others here; std::nullopt is none. `streams` copy streams take turns.
    DeviceCopier(int device, std::optional<cudaStream_t> consumer, unsigned streams)
        : device_(device), consumer_(consumer), stream_count_(std::clamp(streams, 1u, 8u)) {}

    DeviceCopier(DeviceCopier&&) = default;
    DeviceCopier& operator=(DeviceCopier&&) = delete;
    ~DeviceCopier() { synchronize(); }

    /// Creates the streams, and events for the tickets of `slots` staging slots (and of the tensors
    /// they complete); called once before loading.
    void prepare_copies(std::size_t slots) {
        const std::size_t tickets_in_flight = 2 * slots;
        DeviceGuard guard(device_);
        streams_ = std::vector<Stream>(stream_count_);
        // A multiple of the stream count, so an event is always re-recorded on the same stream.
        const std::size_t events = (tickets_in_flight + stream_count_) / stream_count_ * stream_count_;
        events_ = std::vector<Event>(events);
        released_.emplace();
    }

    [[nodiscard]] int device() const noexcept { return device_; }

    /// Copies from staging: pinned host memory, or device memory when the storage reads there (GDS).
    void store(std::byte* device_destination, const std::byte* staged, std::uint64_t bytes) {
        INSTANTTENSOR_CUDA_CHECK(cudaMemcpyAsync(device_destination, staged, bytes, cudaMemcpyDefault, current()));
    }

    /// Copies `runs` runs of `run` bytes, `stride` apart in staging, packed to `device_destination`:
    /// one 2-D copy, or a copy per run where a pitch exceeds what the driver takes (2^31 - 1).
    void store_strided(std::byte* device_destination, const std::byte* staged, std::uint64_t run, std::uint64_t stride, std::uint64_t runs) {
        constexpr std::uint64_t max_pitch = 0x7fffffff;
        if (stride <= max_pitch) {
            INSTANTTENSOR_CUDA_CHECK(cudaMemcpy2DAsync(device_destination, run, staged, stride, run, runs, cudaMemcpyDefault, current()));
            return;
        }
        for (std::uint64_t i = 0; i < runs; ++i) store(device_destination + i * run, staged + i * stride, run);
    }

    /// Marks the end of one extent's copies; returns its ticket. The next extent uses the next stream.
    std::uint64_t extent_stored() {
        events_[next_ % events_.size()].record(current());
        return next_++;
    }

    /// Whether every copy up to `ticket` completed.
    [[nodiscard]] bool copies_done(std::uint64_t ticket) {
        for (std::uint64_t t = first_unknown(ticket); t <= ticket; ++t)
            if (!events_[t % events_.size()].done()) return false;
        completed_ = std::max(completed_, ticket + 1);
        return true;
    }

    /// Blocks until every copy up to `ticket` completed. A later ticket may have reused an event:
    /// waiting for it waits for more than needed, never less.
    void wait_copies(std::uint64_t ticket) {
        for (std::uint64_t t = first_unknown(ticket); t <= ticket; ++t) events_[t % events_.size()].wait();
        completed_ = std::max(completed_, ticket + 1);
    }

    /// The consumer moved past memory that later copies may overwrite: order those copies after
    /// the consumer's work issued so far.
    void after_consumer() {
        if (!consumer_) return;
        released_->record(*consumer_);
        for (const auto& s : streams_) INSTANTTENSOR_CUDA_CHECK(cudaStreamWaitEvent(s.get(), released_->get(), 0));
    }

    /// Waits for every copy issued (before freeing staging or destination memory).
    void synchronize() noexcept {
        for (const auto& s : streams_) cudaStreamSynchronize(s.get());
    }

private:
    /// The first ticket whose event must be checked to know `ticket` done: the last ticket of each
    /// stream up to `ticket`, less those already known done.
    std::uint64_t first_unknown(std::uint64_t ticket) const noexcept {
        const std::uint64_t first = ticket + 1 >= stream_count_ ? ticket + 1 - stream_count_ : 0;
        return std::max(first, completed_);
    }

    cudaStream_t current() const noexcept { return streams_[next_ % streams_.size()].get(); }

    int device_;
    std::optional<cudaStream_t> consumer_;
    unsigned stream_count_;
    std::vector<Stream> streams_;
    std::vector<Event> events_;       // ring of per-ticket events
    std::optional<Event> released_;   // recorded on the consumer's stream
    std::uint64_t next_ = 0;          // the next ticket
    std::uint64_t completed_ = 0;     // every ticket below this is done
};

}  // namespace instanttensor::detail

#endif  // INSTANTTENSOR_HAS_CUDA
