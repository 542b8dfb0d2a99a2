// instanttensor/loader.hpp: Loader<Storage, Transport, Sink>, the iterator over a checkpoint's
// tensors as they land in memory.
//
//   auto checkpoint = instanttensor::format::Checkpoint::open("model/");
//   auto loader = instanttensor::load_to_host(checkpoint);
//   for (const instanttensor::TensorView& t : loader)
//       use(t.name, t.dtype, t.shape, t.data);   // t.data valid until the next iteration
//
// The pipeline runs in the caller's thread, inside operator++: it submits reads of the plan's
// extents into a ring of staging slots while slots and sink space are free, reaps completed reads,
// continues short reads and retries EINTR/EAGAIN, copies each piece from its slot to the tensor's
// destination, and returns once the next tensor is complete. Reads therefore run ahead of the
// consumer by up to the staging size (and the sink's window). No thread of the loader's own:
// parallelism comes from the kernel (io_uring) or the backend's pool (pread).
//
// Errors: any failure (io_error naming the file and byte offset, a refused destination, ...)
// propagates from operator++ (or begin()), after which the loader is stopped: further use throws
// an error that repeats the first. Destroying a loader waits for reads still in flight, then frees
// staging memory, the sink's window and the file descriptors, whether or not it finished.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <iterator>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/config.hpp"
#include "instanttensor/detail/aligned.hpp"
#if INSTANTTENSOR_HAS_CUDA
#include "instanttensor/detail/cuda.hpp"
#include "instanttensor/sink/device_ring.hpp"
#include "instanttensor/storage/gds.hpp"
#endif
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/plan.hpp"
#include "instanttensor/sink/host.hpp"
#include "instanttensor/sink/placement.hpp"
#include "instanttensor/storage/automatic.hpp"
#include "instanttensor/transport/single.hpp"

namespace instanttensor {

/// A tensor that has landed. `data` lives in the sink's memory (host or device, see `memory`);
/// how long it stays valid is the sink's rule (sink::host: until the loader advances;
/// sink::placement: as long as the caller's memory).
struct TensorView {
    std::string_view name;
    format::Dtype dtype{};
    std::span<const std::uint64_t> shape;
    std::span<std::byte> data;
    MemoryKind memory = MemoryKind::host;
    const format::TensorRef* ref = nullptr;  ///< file and offsets, from the checkpoint
};

/// Knobs of a load. The defaults were measured best for loading to an H100 from the page cache
/// (docs/benchmarks.md): 32 slots of 4 MiB. Larger staging was slower there, not faster: a slot
/// that the kernel just filled is still in the CPU caches when the copy engine reads it.
struct LoadOptions {
    TensorFilter filter;                        ///< tensors to load; empty = all
    std::uint64_t staging_bytes = 128ull << 20; ///< total staging memory (a ring of slots)
    std::uint64_t slot_bytes = 4ull << 20;      ///< one slot = the largest single read
};

/// Selects tensors by exact name.
inline TensorFilter select_names(std::vector<std::string> names) {
    std::sort(names.begin(), names.end());
    return [names = std::move(names)](const format::TensorRef& t) {
        return std::binary_search(names.begin(), names.end(), t.name());
    };
}

/// What a load did, for reports.
struct LoadStats {
    std::uint64_t tensors = 0;        ///< tensors yielded so far
    std::uint64_t tensor_bytes = 0;   ///< their bytes
    std::uint64_t read_bytes = 0;     ///< bytes read from storage (alignment included)
    std::uint64_t reads = 0;          ///< read requests submitted (continuations included)
    std::uint64_t retries = 0;        ///< EINTR/EAGAIN retries and short-read continuations
    std::uint64_t staging_bytes = 0;  ///< staging memory allocated
    double seconds = 0;               ///< from begin() to the last tensor
};

/// The storage backend reads into memory the sink can take: a backend that writes device memory
/// (GDS) needs a device sink.
template <class S, class K>
concept ReadsIntoSinkMemory = S::destination == MemoryKind::host || K::memory == MemoryKind::device;

/// A transport that moves bytes between GPUs (NCCL) needs a device sink.
template <class T, class K>
concept TransportFitsSink = !T::needs_device_memory || K::memory == MemoryKind::device;

template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
class Loader {
    static constexpr bool asynchronous = CopiesAsynchronously<Sk>;
#if INSTANTTENSOR_HAS_CUDA
    // A storage that reads into device memory (GDS) stages there; device sinks copy from host
    // staging with the DMA engine, which needs page-locked memory.
    using StagingMemory = std::conditional_t<
        Storage::destination == MemoryKind::device, detail::DeviceBuffer,
        std::conditional_t<Sk::memory == MemoryKind::device, detail::PinnedBuffer, detail::AlignedBuffer>>;
#else
    using StagingMemory = detail::AlignedBuffer;
#endif

public:
    /// Opens the checkpoint's files with `storage`, plans the selected tensors and allocates staging
    /// memory and the sink's window. `checkpoint` must outlive the loader.
    Loader(const format::Checkpoint& checkpoint, Storage storage, Tr transport, Sk sink, LoadOptions options = {})
        : checkpoint_(checkpoint), sink_(std::move(sink)), storage_(std::move(storage)),
          transport_(std::move(transport)), options_(std::move(options)) {
        if (transport_.size() != 1)
            throw unavailable_error("transport", "loading as one of " + std::to_string(transport_.size()) + " ranks is not implemented yet: use a transport of size 1 (transport::single)");
        if (options_.slot_bytes < 3 * detail::page_alignment || options_.slot_bytes % detail::page_alignment != 0)
            throw std::invalid_argument("slot_bytes must be a multiple of 4096 and at least 12288");
        storage_.open(checkpoint_);
        std::vector<std::uint64_t> alignment(checkpoint_.files().size());
        for (std::uint32_t f = 0; f < alignment.size(); ++f) alignment[f] = storage_.alignment(f);
        plan_ = make_plan(checkpoint_, options_.filter, alignment, options_.slot_bytes);

        const std::uint64_t slots = std::clamp<std::uint64_t>(options_.staging_bytes / options_.slot_bytes, 2,
                                                              std::max<std::uint64_t>(2, plan_.extents.size()));
        staging_ = allocate_staging(slots * options_.slot_bytes);
        if constexpr (requires { storage_.register_memory(staging_.span()); }) storage_.register_memory(staging_.span());
        slots_.resize(slots);
        for (std::uint64_t s = slots; s-- > 0;) free_slots_.push_back(static_cast<std::uint32_t>(s));
        depth_ = std::min<std::size_t>(slots, storage_.queue_depth());
        stats_.staging_bytes = staging_.size();

        sink_.prepare(plan_);
        if constexpr (asynchronous) {
            sink_.prepare_copies(slots);
            tickets_.resize(plan_.tensors.size());
        }
        destinations_.resize(plan_.tensors.size());
        reserved_.resize(plan_.tensors.size(), false);
        remaining_.resize(plan_.tensors.size());
        for (std::size_t t = 0; t < plan_.tensors.size(); ++t) remaining_[t] = plan_.tensors[t].piece_count;
        results_.resize(depth_);
    }

    Loader(const Loader&) = delete;
    Loader& operator=(const Loader&) = delete;

    class iterator {
    public:
        using value_type = TensorView;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        const TensorView& operator*() const { return loader_->view_; }
        const TensorView* operator->() const { return &loader_->view_; }
        iterator& operator++() {
            loader_->advance();
            return *this;
        }
        void operator++(int) { ++*this; }
        bool operator==(std::default_sentinel_t) const { return loader_->current_ >= loader_->plan_.tensors.size(); }

    private:
        friend class Loader;
        explicit iterator(Loader* loader) : loader_(loader) {}
        Loader* loader_ = nullptr;
    };

    /// Starts the load and returns once the first tensor landed. A loader is iterated once.
    iterator begin() {
        if (!failure_.empty()) throw error("", "loader stopped after an earlier error: " + failure_);
        if (started_) throw std::logic_error("a Loader is iterated only once");
        started_ = true;
        start_ = std::chrono::steady_clock::now();
        current_ = static_cast<std::size_t>(-1);
        advance();
        return iterator(this);
    }
    std::default_sentinel_t end() const noexcept { return {}; }

    [[nodiscard]] const Plan& plan() const noexcept { return plan_; }
    [[nodiscard]] const LoadStats& stats() const noexcept { return stats_; }
    [[nodiscard]] const Storage& storage() const noexcept { return storage_; }
    [[nodiscard]] const Sk& sink() const noexcept { return sink_; }

private:
    struct Slot {
        std::uint32_t extent = 0;
        std::uint64_t done = 0;    // bytes of the extent read so far
        std::byte* buffer = nullptr;  // where the extent is read: the slot, or its tensor's destination
    };

    StagingMemory allocate_staging(std::uint64_t bytes) {
#if INSTANTTENSOR_HAS_CUDA
        if constexpr (Storage::destination == MemoryKind::device) {
            detail::DeviceGuard guard(storage_.device());
            return StagingMemory(bytes);
        }
#endif
        return StagingMemory(bytes);
    }

    /// Releases the current tensor, then loads the next one.
    void advance() {
        if (!failure_.empty()) throw error("", "loader stopped after an earlier error: " + failure_);
        try {
            if (current_ < plan_.tensors.size() && reserved_[current_]) sink_.release(*plan_.tensors[current_].ref);
            ++current_;
            if (current_ >= plan_.tensors.size()) {
                stats_.seconds = seconds_since_start();
                return;
            }
            wait_until_landed(current_);
            const auto& ref = *plan_.tensors[current_].ref;
            view_ = {ref.name(), ref.info->dtype, ref.info->shape, destinations_[current_], Sk::memory, &ref};
            ++stats_.tensors;
            stats_.tensor_bytes += ref.nbytes();
        } catch (const std::exception& e) {
            failure_ = e.what();
            throw;
        }
    }

    /// Runs the pipeline until every byte of tensor `t` is in its destination. While a device sink's
    /// copies run, the loop polls (reaping reads without blocking, so that slots keep cycling and
    /// reads stay in flight) instead of sleeping in the kernel or on an event, which would let the
    /// read queue or the copy engine run dry; with nothing but copies left it blocks on the oldest.
    void wait_until_landed(std::size_t t) {
        for (;;) {
            reclaim_slots();
            submit_reads();
            if (remaining_[t] == 0 && copies_done(t)) return;
            const bool watching_copies = asynchronous && !copying_.empty();
            if (in_flight_ > 0) {
                const std::size_t n = storage_.reap(results_, !watching_copies);
                process(n);
                if (n == 0) std::this_thread::yield();
            } else if (watching_copies) {
                wait_oldest_copies();
            } else {
                throw std::logic_error("loader: nothing in flight for an incomplete tensor");
            }
        }
    }

    bool copies_done(std::size_t t) {
        if constexpr (asynchronous) return plan_.tensors[t].piece_count == 0 || sink_.copies_done(tickets_[t]);
        else return true;
    }

    /// Frees the slots whose copies ran (in order: copies complete in the order they were issued).
    void reclaim_slots() {
        if constexpr (asynchronous) {
            while (!copying_.empty() && sink_.copies_done(copying_.front().ticket)) {
                free_slots_.push_back(copying_.front().slot);
                copying_.pop_front();
            }
        }
    }

    void wait_oldest_copies() {
        if constexpr (asynchronous) {
            sink_.wait_copies(copying_.front().ticket);
            reclaim_slots();
        }
    }

    /// Starts reads while staging slots, queue depth and sink space allow.
    void submit_reads() {
        while (next_extent_ < plan_.extents.size() && !free_slots_.empty() && in_flight_ < depth_) {
            const Extent& e = plan_.extents[next_extent_];
            const std::uint32_t last_tensor = plan_.pieces[e.first_piece + e.piece_count - 1].tensor;
            if (!reserve_through(last_tensor)) return;  // the sink is full until the consumer moves on
            const std::uint32_t slot = free_slots_.back();
            free_slots_.pop_back();
            slots_[slot] = {static_cast<std::uint32_t>(next_extent_), 0, read_buffer(e, slot)};
            ++next_extent_;
            read(slot);
        }
    }

    /// Reserves destinations for every tensor up to `last` (in order); false while the sink is full.
    bool reserve_through(std::uint32_t last) {
        for (; reserved_upto_ <= last; ++reserved_upto_) {
            const auto& ref = *plan_.tensors[reserved_upto_].ref;
            if (ref.nbytes() == 0) continue;
            auto destination = sink_.reserve(ref);
            if (destination.empty()) return false;
            destinations_[reserved_upto_] = destination;
            reserved_[reserved_upto_] = true;
        }
        return true;
    }

    /// Submits the unread rest of the extent in `slot`.
    void read(std::uint32_t slot) {
        const Slot& s = slots_[slot];
        const Extent& e = plan_.extents[s.extent];
        storage_.submit({e.file, e.offset + s.done, e.length - s.done, s.buffer + s.done, slot});
        ++in_flight_;
        ++stats_.reads;
    }

    void process(std::size_t count) {
        for (std::size_t i = 0; i < count; ++i) {
            const auto slot = static_cast<std::uint32_t>(results_[i].tag);
            const std::int64_t result = results_[i].result;
            --in_flight_;
            Slot& s = slots_[slot];
            const Extent& e = plan_.extents[s.extent];
            if (result == -EINTR || result == -EAGAIN) {
                retry(slot);
                continue;
            }
            const std::string& path = checkpoint_.files()[e.file].path.native();
            if (result < 0)
                throw io_error(path, "read failed at byte " + std::to_string(e.offset + s.done), static_cast<int>(-result));
            s.done += static_cast<std::uint64_t>(result);
            if (s.done < e.needed) {
                if (result == 0)
                    throw io_error(path, "unexpected end of file at byte " + std::to_string(e.offset + s.done) +
                                             " (was the file truncated after it was opened?)", 0);
                retry(slot);  // a short read: continue where it stopped
                continue;
            }
            land(slot);
        }
    }

    void retry(std::uint32_t slot) {
        if (++retries_in_a_row_ > max_retries_in_a_row)
            throw io_error(checkpoint_.files()[plan_.extents[slots_[slot].extent].file].path.native(),
                           "reads keep failing with EINTR/EAGAIN or returning short", EAGAIN);
        ++stats_.retries;
        read(slot);
    }

    /// Where extent `e` is read. Straight into its tensor's destination when the storage writes the
    /// sink's kind of memory, the file is read buffered (O_DIRECT would need the destination
    /// aligned) and the extent is exactly one piece (no alignment head or tail, no other tensor):
    /// a tensor larger than a slot then costs no second copy. Else into the slot.
    std::byte* read_buffer(const Extent& e, std::uint32_t slot) {
        const Piece& first = plan_.pieces[e.first_piece];
        if (Storage::destination == Sk::memory && storage_.alignment(e.file) == 1 && e.piece_count == 1 &&
            first.extent_offset == 0 && e.length == first.length)
            return destinations_[first.tensor].data() + first.tensor_offset;
        return staging_.data() + std::uint64_t{slot} * options_.slot_bytes;
    }

    /// Copies the pieces of a fully read extent to their tensors (unless it was read in place) and
    /// frees the slot.
    void land(std::uint32_t slot) {
        retries_in_a_row_ = 0;
        const Extent& e = plan_.extents[slots_[slot].extent];
        const std::byte* staged = staging_.data() + std::uint64_t{slot} * options_.slot_bytes;
        const bool in_place = slots_[slot].buffer != staged;
        for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) {
            const Piece& piece = plan_.pieces[p];
            if (!in_place)
                sink_.store(destinations_[piece.tensor].data() + piece.tensor_offset, staged + piece.extent_offset, piece.length);
            --remaining_[piece.tensor];
        }
        stats_.read_bytes += e.length;
        if constexpr (asynchronous) {
            const std::uint64_t ticket = sink_.extent_stored();
            for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) tickets_[plan_.pieces[p].tensor] = ticket;
            copying_.push_back({slot, ticket});
        } else {
            free_slots_.push_back(slot);
        }
    }

    double seconds_since_start() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }

    static constexpr unsigned max_retries_in_a_row = 1000;

    struct Copying {
        std::uint32_t slot;
        std::uint64_t ticket;
    };

    const format::Checkpoint& checkpoint_;
    // Declared in this order so that they are destroyed storage first: its destructor waits for
    // the reads still in flight, which write into staging or (read in place) into the sink's
    // memory; then the sink, whose destructor waits for its copies out of staging.
    StagingMemory staging_;
    Sk sink_;
    Storage storage_;
    Tr transport_;
    LoadOptions options_;
    Plan plan_;

    std::vector<Slot> slots_;
    std::vector<std::uint32_t> free_slots_;
    std::deque<Copying> copying_;                    // slots whose copies may still run, oldest first
    std::vector<ReadResult> results_;
    std::size_t depth_ = 0;
    std::size_t in_flight_ = 0;
    std::size_t next_extent_ = 0;
    unsigned retries_in_a_row_ = 0;

    std::vector<std::span<std::byte>> destinations_;  // per planned tensor
    std::vector<std::uint32_t> remaining_;            // pieces still to land, per planned tensor
    std::vector<bool> reserved_;                      // whether the sink holds a destination
    std::vector<std::uint64_t> tickets_;              // copy ticket of each tensor's last piece
    std::uint32_t reserved_upto_ = 0;

    std::size_t current_ = 0;
    bool started_ = false;
    TensorView view_;
    LoadStats stats_;
    std::string failure_;
    std::chrono::steady_clock::time_point start_;
};

/// A loader that reads with the automatic backend choice into a bounded host window.
inline Loader<storage::automatic, transport::single, sink::host> load_to_host(
    const format::Checkpoint& checkpoint, LoadOptions options = {}, storage::automatic::Options storage = {},
    std::uint64_t window_bytes = 0) {
    return {checkpoint, storage::automatic(storage), transport::single{}, sink::host(window_bytes), std::move(options)};
}

/// A loader that reads each tensor into the host memory `destination` returns for it.
inline Loader<storage::automatic, transport::single, sink::placement> load_into(
    const format::Checkpoint& checkpoint, sink::placement::Destination destination, LoadOptions options = {},
    storage::automatic::Options storage = {}) {
    return {checkpoint, storage::automatic(storage), transport::single{}, sink::placement(std::move(destination)),
            std::move(options)};
}

#if INSTANTTENSOR_HAS_CUDA
/// A loader that reads with the automatic backend choice through pinned staging into a ring of
/// device memory on `ring.device`.
inline Loader<storage::automatic, transport::single, sink::device_ring> load_to_device(
    const format::Checkpoint& checkpoint, sink::device_ring::Options ring = {}, LoadOptions options = {},
    storage::automatic::Options storage = {}) {
    return {checkpoint, storage::automatic(storage), transport::single{}, sink::device_ring(ring), std::move(options)};
}

/// A loader that copies each tensor into the device memory `destination` returns for it.
inline Loader<storage::automatic, transport::single, sink::device_placement> load_into_device(
    const format::Checkpoint& checkpoint, sink::placement::Destination destination,
    sink::device_placement::Options placement = {}, LoadOptions options = {}, storage::automatic::Options storage = {}) {
    return {checkpoint, storage::automatic(storage), transport::single{},
            sink::device_placement(std::move(destination), placement), std::move(options)};
}
#endif

}  // namespace instanttensor
