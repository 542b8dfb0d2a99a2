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
// Group loads (a GroupTransport such as transport::nccl): each rank reads about 1/N of every
// window of the plan into a window buffer, the transport exchanges the windows (group_plan.hpp),
// and each rank lands the bytes it keeps (share.hpp) from its window buffer into its sink. Reads of
// later windows, the exchange of one and the landing of an earlier one overlap. A rank that keeps
// nothing more still takes part in every exchange: reaching the end of the iteration does that.
//
// Errors: any failure (io_error naming the file and byte offset, a refused destination, ...)
// propagates from operator++ (or begin()), after which the loader is stopped: further use throws
// an error that repeats the first. Destroying a loader waits for reads still in flight, then frees
// staging memory, the sink's window and the file descriptors, whether or not it finished.
//
// Here: the public types, the Loader's consumer side (reservations, yielded views) and reads with
// their retries, which both kinds of load share, and the helpers. The two pipelines are in
// detail/single_pipeline.hpp and detail/group_pipeline.hpp.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <variant>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/config.hpp"
#include "instanttensor/detail/aligned.hpp"
#if INSTANTTENSOR_HAS_CUDA
#include "instanttensor/detail/cuda.hpp"
#include "instanttensor/detail/device_copier.hpp"
#include "instanttensor/sink/device_ring.hpp"
#include "instanttensor/storage/gds.hpp"
#endif
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/group_plan.hpp"
#include "instanttensor/plan.hpp"
#include "instanttensor/share.hpp"
#include "instanttensor/sink/host.hpp"
#include "instanttensor/sink/placement.hpp"
#include "instanttensor/storage/automatic.hpp"
#include "instanttensor/transport/single.hpp"
#if INSTANTTENSOR_HAS_NCCL
#include "instanttensor/transport/nccl.hpp"
#endif

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
    std::uint64_t first_row = 0;  ///< group loads that split the tensor: its first row here (shape[0] rows)
};

/// Knobs of a load. The defaults were measured best for loading to an H100 from the page cache
/// (docs/benchmarks.md): 32 slots of 4 MiB. Larger staging was slower there, not faster: a slot
/// that the kernel just filled is still in the CPU caches when the copy engine reads it.
struct LoadOptions {
    TensorFilter filter;                        ///< tensors to load; empty = all
    std::uint64_t staging_bytes = 128ull << 20; ///< total staging memory: whole slots, two at least
    std::uint64_t slot_bytes = 4ull << 20;      ///< one slot = the largest single read

    // Group loads only (a GroupTransport); every rank must pass the same values.
    ShareFunction share;                        ///< what each rank keeps (share.hpp); empty = everything
    std::uint64_t window_bytes = 128ull << 20;  ///< bytes the group reads, then exchanges, at a time
    unsigned windows = 3;                       ///< window buffers: reading, exchanging, landing overlap
};

/// Selects tensors by exact name; a name no tensor has selects nothing.
inline TensorFilter select_names(std::vector<std::string> names) {
    std::sort(names.begin(), names.end());
    return [names = std::move(names)](const format::TensorRef& t) {
        return std::binary_search(names.begin(), names.end(), t.name());
    };
}

/// Selects tensors by exact name, each of which `checkpoint` must hold: std::invalid_argument
/// names the first it does not (a misspelt weight fails here, not as a tensor missing later).
inline TensorFilter select_names(const format::Checkpoint& checkpoint, std::vector<std::string> names) {
    for (const std::string& name : names)
        if (checkpoint.find(name) == nullptr)
            throw std::invalid_argument("select_names: the checkpoint has no tensor named '" + name + "'");
    return select_names(std::move(names));
}

/// What a load did, for reports.
struct LoadStats {
    std::uint64_t tensors = 0;        ///< tensors yielded so far
    std::uint64_t tensor_bytes = 0;   ///< their bytes
    std::uint64_t read_bytes = 0;     ///< bytes read from storage (alignment included)
    std::uint64_t reads = 0;          ///< read requests submitted (continuations included)
    std::uint64_t retries = 0;        ///< EINTR/EAGAIN retries and short-read continuations
    std::uint64_t staging_bytes = 0;  ///< staging memory allocated
    std::uint64_t received_bytes = 0; ///< group loads: bytes this rank receives from the others (whole load)
    std::uint64_t window_memory = 0;  ///< group loads: bytes of the window buffers (transport's memory)
    double seconds = 0;               ///< from begin() to the last tensor
};

/// The checkpoint a loader reads, borrowed: it must outlive the loader. Made from an lvalue only, so
/// that passing a temporary (`load_to_host(Checkpoint::open(path))`) is a compile error rather
/// than a loader reading freed memory.
class BorrowedCheckpoint {
public:
    BorrowedCheckpoint(const format::Checkpoint& checkpoint) noexcept : checkpoint_(&checkpoint) {}  // implicit on purpose
    BorrowedCheckpoint(const format::Checkpoint&&) = delete;  // a temporary: keep the checkpoint in a variable
    [[nodiscard]] const format::Checkpoint& get() const noexcept { return *checkpoint_; }

private:
    const format::Checkpoint* checkpoint_;
};

/// The storage backend reads into memory the sink can take: a backend that writes device memory
/// (GDS) needs a device sink.
template <class S, class K>
concept ReadsIntoSinkMemory = S::destination == MemoryKind::host || K::memory == MemoryKind::device;

/// A transport that moves bytes between GPUs (NCCL) needs a device sink.
template <class T, class K>
concept TransportFitsSink = !T::needs_device_memory || K::memory == MemoryKind::device;

namespace detail {
/// Where a transport's window buffers live (host for a transport that does not exchange).
template <class T>
constexpr MemoryKind window_memory() {
    if constexpr (GroupTransport<T>) return T::memory;
    else return MemoryKind::host;
}
}  // namespace detail

template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
class Loader {
    static constexpr bool asynchronous = CopiesAsynchronously<Sk>;
    static constexpr bool grouped = GroupTransport<Tr>;
    static constexpr MemoryKind window_memory = detail::window_memory<Tr>();
    // A group load whose storage reads host memory while the transport exchanges device memory
    // reads into pinned staging slots and uploads each read into the window buffer.
    static constexpr bool uploads = grouped && Storage::destination != window_memory;
    static_assert(!grouped || Storage::destination == MemoryKind::host || window_memory == MemoryKind::device,
                  "a storage that reads device memory needs a transport that exchanges device memory");
#if INSTANTTENSOR_HAS_CUDA
    // A storage that reads into device memory (GDS) stages there; device sinks copy from host
    // staging with the DMA engine, which needs page-locked memory.
    using StagingMemory = std::conditional_t<
        Storage::destination == MemoryKind::device, detail::DeviceBuffer,
        std::conditional_t<Sk::memory == MemoryKind::device, detail::PinnedBuffer, detail::AlignedBuffer>>;
    using WindowMemory = std::conditional_t<window_memory == MemoryKind::device, detail::DeviceBuffer, detail::AlignedBuffer>;
    using Uploader = std::conditional_t<uploads, std::optional<detail::DeviceCopier>, std::monostate>;
#else
    using StagingMemory = detail::AlignedBuffer;
    using WindowMemory = detail::AlignedBuffer;
    using Uploader = std::monostate;
#endif

public:
    /// Opens the checkpoint's files with `storage`, plans the selected tensors and allocates staging
    /// memory and the sink's window (and for a group load its window buffers). `checkpoint` must
    /// outlive the loader. A group loader that cannot be made abandons the group, as it would
    /// mid-load, so that its peers fail instead of waiting for it.
    Loader(BorrowedCheckpoint checkpoint, Storage storage, Tr transport, Sk sink, LoadOptions options = {})
        : checkpoint_(checkpoint.get()), sink_(std::move(sink)), storage_(std::move(storage)),
          transport_(std::move(transport)), options_(std::move(options)) {
        try {
            prepare();
        } catch (...) {
            if constexpr (grouped) transport_.abandon();  // the peers must not wait for this rank
            throw;
        }
    }

    Loader(const Loader&) = delete;
    Loader& operator=(const Loader&) = delete;

    /// A group load stopped early (an error, or the loader dropped before the end) lets its peers
    /// know, so that they fail instead of waiting for it.
    ~Loader() {
        if constexpr (grouped)
            if (!group_finished()) transport_.abandon();
    }

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
        if (!failure_.empty()) throw error("loader", "stopped after an earlier error: " + failure_);
        if (started_) throw std::logic_error("a Loader is iterated only once");
        started_ = true;
        start_ = std::chrono::steady_clock::now();
        current_ = static_cast<std::size_t>(-1);
        advance();
        return iterator(this);
    }
    std::default_sentinel_t end() const noexcept { return {}; }

    [[nodiscard]] const Plan& plan() const noexcept { return plan_; }
    /// Group loads: how the group splits the reads and exchanges the windows.
    [[nodiscard]] const GroupPlan& group_plan() const noexcept { return group_; }
    [[nodiscard]] const LoadStats& stats() const noexcept { return stats_; }
    [[nodiscard]] const Storage& storage() const noexcept { return storage_; }
    [[nodiscard]] const Sk& sink() const noexcept { return sink_; }

private:
    /// A read in flight: `length` bytes of `file` at `offset` into `buffer`, of which `done` arrived.
    struct Read {
        std::uint32_t file = 0;
        std::uint64_t offset = 0;
        std::uint64_t length = 0;
        std::uint64_t needed = 0;   // bytes that must arrive (the rest may lie past the end of the file)
        std::uint64_t done = 0;
        std::byte* buffer = nullptr;
        std::uint32_t extent = 0;   // single loads: the extent; group loads: the window
        std::byte* upload_to = nullptr;  // group loads through staging: where in the window buffer it goes
        std::uint32_t slot = 0;     // the staging slot it uses, if any
    };

    /// The constructor's work: open, plan, allocate.
    void prepare() {
        if constexpr (!grouped) {
            if (transport_.size() != 1)
                throw std::invalid_argument("a transport of " + std::to_string(transport_.size()) +
                                            " ranks must exchange bytes (model GroupTransport, as transport::nccl does)");
            if (options_.share)
                throw std::invalid_argument("LoadOptions::share splits tensors across a group: it needs a GroupTransport "
                                            "(for one rank, select tensors with LoadOptions::filter)");
        }
        if (options_.slot_bytes < 3 * detail::page_alignment || options_.slot_bytes % detail::page_alignment != 0)
            throw std::invalid_argument("slot_bytes must be a multiple of 4096 and at least 12288");
        storage_.open(checkpoint_);
        std::vector<std::uint64_t> alignment(checkpoint_.files().size());
        for (std::uint32_t f = 0; f < alignment.size(); ++f) alignment[f] = storage_.alignment(f);
        plan_ = make_plan(checkpoint_, options_.filter, alignment, options_.slot_bytes);

        std::uint64_t slots = std::clamp<std::uint64_t>(options_.staging_bytes / options_.slot_bytes, 2,
                                                        std::max<std::uint64_t>(2, plan_.extents.size()));
        if constexpr (grouped) {
            prepare_group();
            if constexpr (!uploads) slots = 0;  // reads land in the window buffers themselves
        }
        if (slots > 0) {
            staging_ = allocate_staging(slots * options_.slot_bytes);
            if constexpr (requires { storage_.register_memory(staging_.span()); }) storage_.register_memory(staging_.span());
        }
        slots_.resize(slots);
        for (std::uint64_t s = slots; s-- > 0;) free_slots_.push_back(static_cast<std::uint32_t>(s));
        depth_ = std::min<std::size_t>(grouped && slots == 0 ? max_group_reads : slots, storage_.queue_depth());
        stats_.staging_bytes = staging_.size();

        sink_.prepare(plan_);
        destinations_.resize(plan_.tensors.size());
        reserved_.resize(plan_.tensors.size(), false);
        count_remaining_pieces();
        if constexpr (asynchronous) {
            sink_.prepare_copies(std::max<std::uint64_t>(slots, 2 * options_.windows));
            tickets_.assign(plan_.tensors.size(), no_ticket);
        }
        results_.resize(depth_);
        if constexpr (grouped) {
            reads_.resize(depth_);
            for (std::uint64_t tag = depth_; tag-- > 0;) free_reads_.push_back(tag);
        }
    }

    StagingMemory allocate_staging(std::uint64_t bytes) {
#if INSTANTTENSOR_HAS_CUDA
        if constexpr (Storage::destination == MemoryKind::device) {
            detail::DeviceGuard guard(storage_.device());
            return StagingMemory(bytes);
        }
#endif
        return StagingMemory(bytes);
    }

    // ---- the consumer's side: reservations, yielded views --------------------------------------

    /// Whether this rank yields tensor t, and how many of its bytes land here.
    bool yields(std::size_t t) const {
        if constexpr (grouped) return group_.keeps(static_cast<std::uint32_t>(t)).kept;
        else return true;
    }
    std::uint64_t destination_bytes(std::size_t t) const {
        if constexpr (grouped) return group_.keeps(static_cast<std::uint32_t>(t)).size();
        else return plan_.tensors[t].ref->nbytes();
    }

    /// Pieces that must land before each tensor is complete: all of them, or in a group load those
    /// holding bytes this rank keeps.
    void count_remaining_pieces() {
        remaining_.assign(plan_.tensors.size(), 0);
        for (const Piece& p : plan_.pieces) {
            if constexpr (grouped) {
                const KeptBytes& k = group_.keeps(p.tensor);
                if (!k.kept || k.size() == 0 || p.tensor_offset >= k.end || p.tensor_offset + p.length <= k.begin) continue;
            }
            ++remaining_[p.tensor];
        }
    }

    /// Releases the current tensor, then loads the next one this rank yields.
    void advance() {
        if (!failure_.empty()) throw error("loader", "stopped after an earlier error: " + failure_);
        try {
            if (current_ < plan_.tensors.size() && reserved_[current_]) sink_.release(*plan_.tensors[current_].ref);
            do ++current_;
            while (current_ < plan_.tensors.size() && !yields(current_));
            if (current_ >= plan_.tensors.size()) {
                if constexpr (grouped) pump_group([this] { return group_finished(); });
                stats_.seconds = seconds_since_start();
                return;
            }
            if constexpr (grouped) pump_group([this] { return landed(current_); });
            else wait_until_landed(current_);
            set_view(current_);
        } catch (const std::exception& e) {
            failure_ = e.what();
            throw;
        }
    }

    void set_view(std::size_t t) {
        const auto& ref = *plan_.tensors[t].ref;
        view_ = {ref.name(), ref.info->dtype, ref.info->shape, destinations_[t], Sk::memory, &ref, 0};
        if constexpr (grouped) {
            const KeptBytes& k = group_.keeps(static_cast<std::uint32_t>(t));
            if (!ref.info->shape.empty() && k.rows != ref.info->shape[0]) {
                view_shape_.assign(ref.info->shape.begin(), ref.info->shape.end());
                view_shape_[0] = k.rows;
                view_.shape = view_shape_;
                view_.first_row = k.first_row;
            }
        }
        ++stats_.tensors;
        stats_.tensor_bytes += view_.data.size();
    }

    bool landed(std::size_t t) { return remaining_[t] == 0 && copies_done(t); }

    bool copies_done(std::size_t t) {
        if constexpr (asynchronous) return tickets_[t] == no_ticket || sink_.copies_done(tickets_[t]);
        else return true;
    }

    /// Reserves destinations for every tensor up to `last` (in order); false while the sink is full.
    bool reserve_through(std::uint32_t last) {
        for (; reserved_upto_ <= last; ++reserved_upto_) {
            if (!yields(reserved_upto_)) continue;
            const std::uint64_t bytes = destination_bytes(reserved_upto_);
            if (bytes == 0) continue;
            auto destination = sink_.reserve(*plan_.tensors[reserved_upto_].ref, bytes);
            if (destination.empty()) return false;
            destinations_[reserved_upto_] = destination;
            reserved_[reserved_upto_] = true;
        }
        return true;
    }

    // ---- reads, for both kinds of load ------------------------------------------------------------

    Read& read_of(std::uint64_t tag) { return grouped ? reads_[tag] : slots_[tag]; }

    /// Submits the unread rest of read `tag`.
    void submit(std::uint64_t tag) {
        const Read& r = read_of(tag);
        storage_.submit({r.file, r.offset + r.done, r.length - r.done, r.buffer + r.done, tag});
        ++in_flight_;
        ++stats_.reads;
    }

    /// Handles `count` reaped results: retries, continues short reads, and hands complete reads on.
    void process(std::size_t count) {
        for (std::size_t i = 0; i < count; ++i) {
            const std::uint64_t tag = results_[i].tag;
            const std::int64_t result = results_[i].result;
            --in_flight_;
            Read& r = read_of(tag);
            if (result == -EINTR || result == -EAGAIN) {
                retry(tag);
                continue;
            }
            const std::string& path = checkpoint_.files()[r.file].path.native();
            if (result < 0)
                throw io_error(path, "read failed at byte " + std::to_string(r.offset + r.done), static_cast<int>(-result));
            r.done += static_cast<std::uint64_t>(result);
            if (r.done < r.needed) {
                if (result == 0)
                    throw io_error(path, "unexpected end of file at byte " + std::to_string(r.offset + r.done) +
                                             " (was the file truncated after it was opened?)", 0);
                retry(tag);  // a short read: continue where it stopped
                continue;
            }
            retries_in_a_row_ = 0;
            stats_.read_bytes += r.length;
            if constexpr (grouped) share_read_done(tag);
            else land(static_cast<std::uint32_t>(tag));
        }
    }

    void retry(std::uint64_t tag) {
        if (++retries_in_a_row_ > max_retries_in_a_row)
            throw io_error(checkpoint_.files()[read_of(tag).file].path.native(),
                           "reads keep failing with EINTR/EAGAIN or returning short", EAGAIN);
        ++stats_.retries;
        submit(tag);
    }

    // ---- single loads: extents through staging slots (detail/single_pipeline.hpp) ----------------

    void wait_until_landed(std::size_t t);
    void reclaim_slots();
    void wait_oldest_copies();
    void submit_reads();
    std::byte* read_buffer(const Extent& e, std::uint32_t slot);
    void land(std::uint32_t slot);
    std::byte* slot_memory(std::uint32_t slot) { return staging_.data() + std::uint64_t{slot} * options_.slot_bytes; }

    // ---- group loads: windows read in shares, exchanged, landed (detail/group_pipeline.hpp) -----

    /// A window between the start of its reads and the end of the copies out of its buffer.
    struct ActiveWindow {
        std::uint32_t index = 0;
        std::byte* buffer = nullptr;
        std::vector<ShareRead> reads;  // this rank's share
        std::size_t next_read = 0;     // reads[next_read..] are not submitted yet
        std::size_t reads_left = 0;    // reads not complete yet
        std::uint64_t last_upload = no_ticket;
        bool exchange_started = false;
        bool exchange_done = false;
        std::uint64_t exchange_ticket = 0;
        std::uint32_t next_extent = 0;  // landing cursor: the extent holding next_piece
        std::uint32_t next_piece = 0;   // landing cursor into Plan::pieces
        bool landed = false;
        std::uint64_t copy_ticket = no_ticket;
    };

    void prepare_group();
    template <class Done>
    void pump_group(Done done);
    bool start_windows();
    bool submit_share_reads();
    void share_read_done(std::uint64_t tag);
    bool reclaim_windows();
    bool uploaded(const ActiveWindow& w);
    bool start_exchanges();
    bool land_windows();
    bool group_finished() const { return next_window_ == group_.windows.size() && active_.empty(); }
    ActiveWindow& active(std::uint32_t window) { return active_[window - active_.front().index]; }

    double seconds_since_start() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }

    static constexpr unsigned max_retries_in_a_row = 1000;
    static constexpr std::uint64_t no_ticket = UINT64_MAX;
    static constexpr std::size_t max_group_reads = 64;  // reads in flight when they land in window buffers

    struct Copying {
        std::uint32_t slot;
        std::uint64_t ticket;
    };

    const format::Checkpoint& checkpoint_;
    // Declared in this order so that they are destroyed transport first (it stops touching the
    // window buffers), then the uploader (copies from staging into the window buffers), the storage
    // (its destructor waits for the reads still in flight, which write into staging, the window
    // buffers or, read in place, the sink's memory), then the sink, whose destructor waits for its
    // copies out of staging or the window buffers.
    StagingMemory staging_;
    WindowMemory window_buffers_;
    Sk sink_;
    Storage storage_;
    Uploader uploader_;
    Tr transport_;
    LoadOptions options_;
    Plan plan_;
    GroupPlan group_;

    std::vector<Read> slots_;                        // single loads: the read in each staging slot
    std::vector<std::uint32_t> free_slots_;
    std::deque<Copying> copying_;                    // slots whose copies may still run, oldest first
    std::vector<ReadResult> results_;
    std::size_t depth_ = 0;
    std::size_t in_flight_ = 0;
    std::size_t next_extent_ = 0;
    unsigned retries_in_a_row_ = 0;

    std::vector<Read> reads_;                        // group loads: reads in flight, by tag
    std::vector<std::uint64_t> free_reads_;
    std::deque<ActiveWindow> active_;                // in window order
    std::vector<std::byte*> free_buffers_;
    std::deque<Copying> uploading_;                  // staging slots whose uploads may still run
    std::size_t next_window_ = 0;

    std::vector<std::span<std::byte>> destinations_;  // per planned tensor
    std::vector<std::uint32_t> remaining_;            // pieces still to land, per planned tensor
    std::vector<bool> reserved_;                      // whether the sink holds a destination
    std::vector<std::uint64_t> tickets_;              // copy ticket of each tensor's last piece
    std::uint32_t reserved_upto_ = 0;

    std::size_t current_ = 0;
    bool started_ = false;
    TensorView view_;
    std::vector<std::uint64_t> view_shape_;           // a split tensor's shape on this rank
    LoadStats stats_;
    std::string failure_;
    std::chrono::steady_clock::time_point start_;
};

}  // namespace instanttensor

#include "instanttensor/detail/group_pipeline.hpp"
#include "instanttensor/detail/single_pipeline.hpp"

namespace instanttensor {

/// A loader that reads with the automatic backend choice into a bounded host window.
inline Loader<storage::automatic, transport::single, sink::host> load_to_host(
    BorrowedCheckpoint checkpoint, LoadOptions options = {}, storage::automatic::Options storage = {},
    std::uint64_t window_bytes = 0) {
    return {checkpoint, storage::automatic(storage), transport::single{}, sink::host(window_bytes), std::move(options)};
}

/// A loader that reads each tensor into the host memory `destination` returns for it.
inline Loader<storage::automatic, transport::single, sink::placement> load_into(
    BorrowedCheckpoint checkpoint, sink::placement::Destination destination, LoadOptions options = {},
    storage::automatic::Options storage = {}) {
    return {checkpoint, storage::automatic(storage), transport::single{}, sink::placement(std::move(destination)),
            std::move(options)};
}

#if INSTANTTENSOR_HAS_CUDA
/// A loader that reads with the automatic backend choice through pinned staging into a ring of
/// device memory on `ring.device`.
inline Loader<storage::automatic, transport::single, sink::device_ring> load_to_device(
    BorrowedCheckpoint checkpoint, sink::device_ring::Options ring = {}, LoadOptions options = {},
    storage::automatic::Options storage = {}) {
    return {checkpoint, storage::automatic(storage), transport::single{}, sink::device_ring(ring), std::move(options)};
}

/// A loader that copies each tensor into the device memory `destination` returns for it.
inline Loader<storage::automatic, transport::single, sink::device_placement> load_into_device(
    BorrowedCheckpoint checkpoint, sink::placement::Destination destination,
    sink::device_placement::Options placement = {}, LoadOptions options = {}, storage::automatic::Options storage = {}) {
    return {checkpoint, storage::automatic(storage), transport::single{},
            sink::device_placement(std::move(destination), placement), std::move(options)};
}
#endif

#if INSTANTTENSOR_HAS_NCCL
/// A loader for one rank of an NCCL group: it reads about 1/N of the checkpoint, the group
/// exchanges the rest, and the tensors this rank keeps (options.share) land in a device ring on
/// the communicator's GPU.
inline Loader<storage::automatic, transport::nccl, sink::device_ring> load_distributed(
    BorrowedCheckpoint checkpoint, transport::nccl group, LoadOptions options = {},
    sink::device_ring::Options ring = {}, storage::automatic::Options storage = {}) {
    ring.device = group.device();
    return {checkpoint, storage::automatic(storage), std::move(group), sink::device_ring(ring), std::move(options)};
}

/// A loader for one rank of an NCCL group that copies the bytes this rank keeps into the device
/// memory `destination` returns for each tensor it keeps (of the size of its rows, for a split one).
inline Loader<storage::automatic, transport::nccl, sink::device_placement> load_distributed_into(
    BorrowedCheckpoint checkpoint, transport::nccl group, sink::placement::Destination destination,
    LoadOptions options = {}, sink::device_placement::Options placement = {}, storage::automatic::Options storage = {}) {
    placement.device = group.device();
    return {checkpoint, storage::automatic(storage), std::move(group),
            sink::device_placement(std::move(destination), placement), std::move(options)};
}
#endif

}  // namespace instanttensor
