// instanttensor/detail/device_copier.hpp: host-to-device copies from staging slots, ordered on one
// stream, with a ticket per landed extent so the loader knows when a slot may be reused and when a
// tensor's bytes are all on the device. Shared by the device sinks.
//
// One stream keeps completion in issue order: ticket t done implies every earlier ticket done.
// The copy engine stays saturated as long as reads keep slots full; a second stream would not add
// bandwidth in the host-to-device direction.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_CUDA

#include <cstdint>
#include <optional>
#include <vector>

#include "instanttensor/detail/cuda.hpp"

namespace instanttensor::detail {

class DeviceCopier {
public:
    /// `consumer` (may be null) is the stream the runtime uses the tensors on: copies into memory
    /// it released wait for its work before overwriting.
    DeviceCopier(int device, cudaStream_t consumer) : device_(device), consumer_(consumer) {}

    /// Creates the stream and `events` events; called once before loading.
    void prepare(std::size_t events) {
        DeviceGuard guard(device_);
        stream_.emplace();
        events_ = std::vector<Event>(events);
        released_.emplace();
    }

    [[nodiscard]] int device() const noexcept { return device_; }
    [[nodiscard]] cudaStream_t stream() const noexcept { return stream_->get(); }

    void copy(std::byte* device_destination, const std::byte* staged, std::uint64_t bytes) {
        INSTANTTENSOR_CUDA_CHECK(cudaMemcpyAsync(device_destination, staged, bytes, cudaMemcpyHostToDevice, stream()));
    }

    /// Marks the end of one extent's copies; returns its ticket.
    std::uint64_t finish() {
        events_[next_ % events_.size()].record(stream());
        return next_++;
    }

    /// Whether the copies up to `ticket` completed.
    [[nodiscard]] bool done(std::uint64_t ticket) {
        if (ticket < completed_) return true;
        if (!events_[ticket % events_.size()].done()) return false;
        completed_ = ticket + 1;
        return true;
    }

    /// Blocks until the copies up to `ticket` completed. A later ticket may have reused the event:
    /// waiting for it waits for more than needed, never less.
    void wait(std::uint64_t ticket) {
        if (ticket < completed_) return;
        events_[ticket % events_.size()].wait();
        completed_ = ticket + 1;
    }

    /// The consumer moved past memory that later copies may overwrite: order those copies after
    /// the consumer's work issued so far.
    void after_consumer() {
        if (consumer_ == nullptr) return;
        released_->record(consumer_);
        INSTANTTENSOR_CUDA_CHECK(cudaStreamWaitEvent(stream(), released_->get(), 0));
    }

    /// Waits for every copy issued (before freeing staging or destination memory).
    void synchronize() noexcept {
        if (stream_) cudaStreamSynchronize(stream());
    }

private:
    int device_;
    cudaStream_t consumer_;
    std::optional<Stream> stream_;
    std::vector<Event> events_;       // ring of per-ticket events
    std::optional<Event> released_;   // recorded on the consumer's stream
    std::uint64_t next_ = 0;
    std::uint64_t completed_ = 0;
};

}  // namespace instanttensor::detail

#endif  // INSTANTTENSOR_HAS_CUDA
