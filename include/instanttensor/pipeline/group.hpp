// instanttensor/pipeline/group.hpp: a load by one rank of a group (a GroupTransport such as
// transport::nccl).
//
// Windows of the plan (pipeline/group_plan.hpp) move through four stages, each window in a buffer
// of its own: this rank reads its segment (through pinned staging and an upload when the transport
// exchanges device memory while the storage reads host memory; of an encrypted checkpoint, widened
// to whole chunks and decrypted on the Decryptor's threads before the upload) and packs what it
// sends of strided blocks, the transport exchanges the window (the same exchanges in the same
// order on every rank), the bytes this rank keeps land in its sink, and the buffer takes the next window once the sink's
// copies out of it ran. pump() polls every stage in turn, so the stages of successive windows
// overlap. A rank that keeps nothing more still takes part in every exchange: finish() does that.
//
// The protocol that keeps the ranks in step, also when one fails (docs/distributed.md#failures):
//
//   agree        gather(digest of the plan, or "failed" from a rank that could not plan or open)
//   window w     gather(status: ok | failed | left, and w)       once this rank's segment of w is in
//                exchange(w)                                      only if every rank said ok
//
// so every rank starts the same operations in the same order: a window's exchange only after a
// status round in which every rank said ok, and the next status round only after that exchange was
// started. A rank that fails or whose loader is dropped says so in its next status round (and still
// starts the exchange of a window whose round was all ok: its peers started theirs); the peers then
// stop too, with nccl_error naming it and the window, and nothing is left waiting. A peer that dies
// or hangs without saying so is caught by LoadOptions::group_timeout: no operation completing for
// that long aborts the transport (ncclCommAbort) and fails the load.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <variant>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/config.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/pipeline/decryptor.hpp"
#include "instanttensor/pipeline/destinations.hpp"
#include "instanttensor/pipeline/group_link.hpp"
#include "instanttensor/pipeline/group_plan.hpp"
#include "instanttensor/pipeline/open.hpp"
#include "instanttensor/pipeline/options.hpp"
#include "instanttensor/pipeline/plan.hpp"
#include "instanttensor/pipeline/read_queue.hpp"
#include "instanttensor/pipeline/staging.hpp"
#if INSTANTTENSOR_HAS_CUDA
#include "instanttensor/detail/cuda.hpp"
#include "instanttensor/detail/device_copier.hpp"
#endif

namespace instanttensor::detail {

/// What uploads reads from pinned staging into device window buffers (pipeline::Group).
template <bool uploads>
struct uploader_of {
    using type = std::monostate;
};
#if INSTANTTENSOR_HAS_CUDA
template <>
struct uploader_of<true> {
    using type = std::optional<DeviceCopier>;
};
#endif

/// Copies within host memory: how a transport that exchanges host memory packs its sends.
struct HostCopier {
    void store(std::byte* to, const std::byte* from, std::uint64_t bytes) const { std::memcpy(to, from, bytes); }
};

/// What packs sends within the window buffers (pipeline::Group).
template <MemoryKind memory>
struct packer_of {
    using type = HostCopier;
};
#if INSTANTTENSOR_HAS_CUDA
template <>
struct packer_of<MemoryKind::device> {
    using type = std::optional<DeviceCopier>;
};
#endif

}  // namespace instanttensor::detail

namespace instanttensor::pipeline {

template <StorageBackend Storage, GroupTransport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
class Group {
    static constexpr bool asynchronous = CopiesAsynchronously<Sk>;
    static_assert(Storage::destination == MemoryKind::host || Tr::memory == MemoryKind::device,
                  "a storage that reads device memory needs a transport that exchanges device memory");
    // A storage that reads host memory for a transport that exchanges device memory reads into
    // pinned staging slots and uploads each read into the window buffer.
    static constexpr bool uploads = Storage::destination != Tr::memory;
    using WindowMemory = Buffer<Tr::memory>;
    using StagingMemory = Buffer<MemoryKind::host, uploads>;
    using Uploader = typename detail::uploader_of<uploads>::type;
    using Packer = typename detail::packer_of<Tr::memory>::type;

    /// What becomes of a read once complete: the window it belongs to, with a key the bytes of the
    /// plan's extent whose chunks it decrypts (`segment`: its segment read widened to whole chunks)
    /// and where the read starts in that extent, and with uploads the slot it was read into and
    /// where in the window buffer it goes.
    struct Job {
        std::uint32_t window = 0;
        SegmentRead segment;
        std::uint64_t extent_offset = 0;
        std::uint32_t slot = 0;
        std::byte* upload_to = nullptr;
    };
    using Read = typename ReadQueue<Storage, Job>::Read;

    /// Reads in flight when they land in the window buffers themselves.
    static constexpr std::size_t max_window_reads = 64;
    static constexpr std::uint64_t no_ticket = UINT64_MAX;

public:
    /// Opens the files, plans the load and checks that every rank planned the same, then allocates
    /// the window buffers, staging and the sink's memory. A rank that cannot make its loader tells
    /// its peers, which then fail too instead of waiting for it.
    Group(const format::Checkpoint& checkpoint, Storage storage, Tr transport, Sk sink, LoadOptions options)
        : checkpoint_(checkpoint), options_(std::move(options)), sink_(std::move(sink)), storage_(std::move(storage)),
          link_(std::move(transport), options_.group_timeout) {
        const int rank = link_.rank(), ranks = link_.transport().size();
        if (ranks < 1 || rank < 0 || rank >= ranks)  // before the protocol: it needs a valid rank
            throw usage_error("transport", "rank " + std::to_string(rank) + " of " + std::to_string(ranks));
        if (options_.verify)  // every rank passes the same options, so every rank refuses
            throw usage_error("group", "verify digests whole tensors as one process reads them; a group load spreads each "
                                       "tensor's reads over the ranks: verify with a single load");
        if (options_.verify_files)
            throw usage_error("group", "verify_files hashes whole files as one process reads them; a group load spreads each "
                                       "file's reads over the ranks: verify with a single load");
        try {
            prepare();
        } catch (...) {
            leave(detail::RankState::failed);
            throw;
        }
    }

    Group(const Group&) = delete;
    Group& operator=(const Group&) = delete;

    /// A load dropped before the end tells the peers it left, so that they fail instead of waiting
    /// for it, and waits for its operations in flight (they use the window buffers).
    ~Group() {
        if (!finished()) leave(detail::RankState::left);
    }

    [[nodiscard]] const Plan& plan() const noexcept { return plan_; }
    [[nodiscard]] const GroupPlan& group_plan() const noexcept { return group_; }
    [[nodiscard]] const Storage& storage() const noexcept { return storage_; }
    [[nodiscard]] const Sk& sink() const noexcept { return sink_; }
    [[nodiscard]] const LoadStats& stats() const noexcept { return stats_; }
    [[nodiscard]] LoadStats& stats() noexcept { return stats_; }
    [[nodiscard]] const Destinations<Sk>& destinations() const noexcept { return destinations_; }

    /// Runs until every byte of tensor `t` this rank keeps is in its destination.
    void load(std::uint32_t t) {
        pump([this, t] { return destinations_.complete(t); });
    }
    /// Takes part in every exchange left, then returns (the last tensor was yielded).
    void finish() {
        pump([this] { return finished(); });
    }
    /// The consumer moved past tensor `t`.
    void release(std::uint32_t t) { destinations_.release(t); }

private:
    /// A window between the start of its reads and the end of the copies out of its buffer.
    struct ActiveWindow {
        std::uint32_t index = 0;
        std::byte* buffer = nullptr;
        std::vector<SegmentRead> reads;  // this rank's segment
        std::size_t next_read = 0;       // reads[next_read..] are not submitted yet
        std::size_t reads_left = 0;      // reads not complete yet
        std::uint64_t last_upload = no_ticket;
        bool pack_started = false;
        std::uint64_t pack_ticket = no_ticket;
        bool exchange_started = false;
        bool exchange_done = false;
        std::uint64_t exchange_ticket = 0;
        std::uint32_t next_extent = 0;  // landing cursor: the extent holding next_piece
        std::uint32_t next_piece = 0;   // landing cursor into Plan::pieces
        bool landed = false;
        std::uint64_t copy_ticket = no_ticket;
    };

    /// A status round started and not read yet: its window, and its ticket.
    struct StatusRound {
        std::uint32_t window = 0;
        std::uint64_t ticket = 0;
    };

    /// Where this rank stands with its group (once the transport is aborted, link_.aborted()
    /// says so instead: nothing is in flight any more).
    enum class Standing : std::uint8_t {
        running,  // every round so far said ok
        ended,    // a round said a rank stops: nobody starts another operation; those started complete
        left,     // this rank said it stops (or the group ended) and its operations completed
    };

    void prepare() {
        const int rank = link_.rank(), ranks = link_.transport().size();
        if (options_.windows < 2 || options_.windows > 16) throw usage_error("loader", "LoadOptions::windows must be 2 to 16");
        if (options_.group_timeout.count() <= 0) throw usage_error("loader", "LoadOptions::group_timeout must be positive");
#if INSTANTTENSOR_HAS_CRYPTO
        if (options_.key && Storage::destination == MemoryKind::host)  // every rank checks the key before any read
            chunk_ = decryption_.start(checkpoint_, *options_.key, options_.decrypt_threads);
#endif
        plan_ = open_and_plan(checkpoint_, storage_, options_, PlanAlignment::page, {}, chunk_);
        group_ = make_group_plan(plan_, ranks, rank, options_.share, std::max(options_.window_bytes, options_.slot_bytes));
        agree();
        stats_.received_bytes = group_.received_bytes[static_cast<std::size_t>(rank)];

        const std::uint64_t buffers = std::min<std::uint64_t>(options_.windows, std::max<std::size_t>(group_.windows.size(), 1));
        const std::uint64_t buffer = group_.buffer_bytes + group_.pack_bytes;
        window_buffers_ = allocate<WindowMemory>(buffers * buffer, device(), "the group's window buffers (LoadOptions::window_bytes, windows)");
        for (std::uint64_t b = buffers; b-- > 0;) free_buffers_.push_back(window_buffers_.data() + b * buffer);
        stats_.window_memory = window_buffers_.size();
        std::uint64_t slots = 0;
        if constexpr (uploads) {
            slots = staging_slots(plan_, options_);
            staging_ = Staging<StagingMemory>(allocate<StagingMemory>(slots * options_.slot_bytes, device(), ""), options_.slot_bytes);
            stats_.staging_bytes = staging_.memory().size();
            uploader_.emplace(device(), std::nullopt, 2);
            uploader_->prepare_copies(slots);
        }
        if constexpr (Tr::memory == MemoryKind::device) {
            if (!group_.packs.empty()) {
                packer_.emplace(device(), std::nullopt, 1);
                packer_->prepare_copies(buffers);
            }
        }
        if constexpr (requires { storage_.register_memory(staging_.memory()); })
            storage_.register_memory(uploads ? staging_.memory() : window_buffers_.span());

        sink_.prepare(plan_);
        if constexpr (asynchronous) sink_.prepare_copies(std::max<std::uint64_t>(slots, 2 * options_.windows));
        destinations_ = Destinations<Sk>(sink_, plan_, group_.kept);
        reads_ = ReadQueue<Storage, Job>(storage_, checkpoint_, stats_, uploads ? slots : max_window_reads);
    }

    /// Ranks that planned different loads would wait on each other's exchanges forever: every rank
    /// gathers every rank's plan digest (the first status round) and refuses to go on when one
    /// differs or a rank could not plan.
    void agree() {
        agreed_ = true;
        const std::uint64_t ticket = link_.gather(detail::StatusWord::make(detail::RankState::ok, group_.digest));
        link_.wait_for(ticket, "the plans' agreement", [] { return ""; });
        const std::vector<std::uint64_t> words = link_.gathered(ticket);
        for (std::size_t r = 0; r < words.size(); ++r)
            if (detail::StatusWord::state(words[r]) != detail::RankState::ok) {
                standing_ = Standing::ended;
                throw nccl_error("group", "rank " + std::to_string(r) + " could not start the load (its own error says why); rank " +
                                              std::to_string(link_.rank()) + " stops too");
            }
        for (std::size_t r = 0; r < words.size(); ++r)
            if (words[r] != words[0]) {
                standing_ = Standing::ended;
                throw usage_error("group", "rank " + std::to_string(r) + " planned a different load than rank 0: every rank must load "
                                           "the same checkpoint with the same filter, slot_bytes, window_bytes and share function");
            }
    }

    /// The GPU of the window buffers and uploads (0 for a transport that exchanges host memory).
    int device() const {
        if constexpr (Tr::memory == MemoryKind::device) return link_.transport().device();
        else return 0;
    }

    /// Drives the group pipeline until `done()`. It polls: reads, uploads, exchanges and copies
    /// each complete on their own, and the loop keeps every stage fed; it sleeps in the kernel only
    /// when reads are all that is in flight. Any failure tells the peers before it propagates.
    template <class Done>
    void pump(Done done) {
        link_.restart_clock();  // the deadline counts time spent waiting here, not the consumer's
        try {
            for (;;) {
                // Taken before anything is checked: a decryption finishing after the checks below
                // must not read as a load with nothing left to wait for.
                const std::uint64_t decrypted = decryption_.progress();
                bool moved = decryption_.finish([this](const Read& r) { arrived(r); });
                moved |= reclaim();
                moved |= start_windows();
                moved |= submit_reads();
                moved |= start_exchanges();
                moved |= land_windows();
                if (done()) return;
                // Besides reads: uploads, or operations of the transport (a status round, the
                // exchanges of windows past their reads), which complete without the kernel telling us.
                const bool others_pending = staging_.copying() || link_.pending() || decryption_.busy() ||
                                            std::any_of(active_.begin(), active_.end(), [](const ActiveWindow& w) {
                                                return w.exchange_started || w.pack_ticket != no_ticket;
                                            });
                if (reads_.in_flight() > 0) {
                    const std::size_t n = reads_.reap(!moved && !others_pending, [this](const Read& r) { read_done(r); });
                    moved |= n > 0;
                }
                if (!moved) {
                    if (reads_.in_flight() == 0 && !others_pending)
                        throw usage_error("loader", "a group load stalled: the sink has no room although the consumer holds "
                                                    "no tensor (its reserve() refuses a ring of plan().ring_needed() bytes)");
                    if (link_.pending()) link_.check_deadline("the exchanges", [this] { return where(); });
                    if (decryption_.busy()) decryption_.wait_past(decrypted, std::chrono::microseconds(100));
                    else std::this_thread::yield();
                }
            }
        } catch (...) {
            leave(detail::RankState::failed);
            throw;
        }
    }

    bool finished() const { return next_window_ == group_.windows.size() && active_.empty(); }

    /// Starts windows while window buffers are free.
    bool start_windows() {
        bool moved = false;
        while (next_window_ < group_.windows.size() && !free_buffers_.empty()) {
            ActiveWindow w;
            w.index = next_window_++;
            w.buffer = free_buffers_.back();
            free_buffers_.pop_back();
            group_.for_each_read(plan_, w.index, link_.rank(), [&](const SegmentRead& r) {
                w.reads.push_back(chunk_.empty() ? r : whole_chunks(plan_, group_, r, chunk_));
            });
            w.reads_left = w.reads.size();
            w.next_extent = group_.windows[w.index].first_extent;
            w.next_piece = plan_.extents[w.next_extent].first_piece;
            active_.push_back(std::move(w));
            moved = true;
        }
        return moved;
    }

    ActiveWindow& active_window(std::uint32_t index) { return active_[index - active_.front().index]; }

    /// Submits this rank's reads of the started windows, oldest window first.
    bool submit_reads() {
        bool moved = false;
        for (ActiveWindow& w : active_) {
            while (w.next_read < w.reads.size() && !reads_.full()) {
                if (uploads && !staging_.has_free()) return moved;
                const SegmentRead& s = w.reads[w.next_read++];
                const Extent& e = plan_.extents[s.extent];
                // Segments are page-aligned; widened to whole chunks, they are aligned again.
                const std::uint64_t from = s.extent_offset / detail::page_alignment * detail::page_alignment;
                const std::uint64_t to =
                    std::min((s.extent_offset + s.length + detail::page_alignment - 1) / detail::page_alignment * detail::page_alignment, e.length);
                Read r{e.file, e.offset + from, to - from, std::min(to, e.needed) - from, w.buffer + (s.window_offset - (s.extent_offset - from)),
                       {w.index, s, from, 0, nullptr}};
                if constexpr (uploads) {
                    r.job.slot = staging_.take();
                    r.job.upload_to = r.buffer;
                    r.buffer = staging_.slot(r.job.slot);
                }
                reads_.submit(r);
                moved = true;
            }
        }
        return moved;
    }

    /// A segment read is complete: it arrived, once decrypted if the checkpoint is encrypted.
    void read_done(const Read& r) {
#if INSTANTTENSOR_HAS_CRYPTO
        if (decryption_) {
            const SegmentRead& s = r.job.segment;
            decryption_.decrypt(r, plan_, plan_.extents[s.extent], r.buffer + (s.extent_offset - r.job.extent_offset), s.extent_offset,
                                s.extent_offset + s.length);
            return;
        }
#endif
        arrived(r);
    }

    /// A segment read is in its window buffer, or in its staging slot: upload it from there.
    void arrived(const Read& r) {
        ActiveWindow& w = active_window(r.job.window);
        if constexpr (uploads) {
            uploader_->store(r.job.upload_to, r.buffer, r.length);
            w.last_upload = uploader_->extent_stored();
            staging_.free_after(r.job.slot, w.last_upload);
        }
        --w.reads_left;
    }

    /// Frees the staging slots whose uploads ran, and the window buffers whose bytes all landed.
    bool reclaim() {
        bool moved = false;
        if constexpr (uploads) moved = staging_.reclaim([this](std::uint64_t ticket, std::uint32_t) { return uploader_->copies_done(ticket); });
        while (!active_.empty() && active_.front().landed) {
            ActiveWindow& w = active_.front();
            if constexpr (asynchronous)
                if (w.copy_ticket != no_ticket && !sink_.copies_done(w.copy_ticket)) break;
            free_buffers_.push_back(w.buffer);
            active_.pop_front();
            moved = true;
        }
        return moved;
    }

    bool uploaded(const ActiveWindow& w) {
        if constexpr (uploads) return w.last_upload == no_ticket || uploader_->copies_done(w.last_upload);
        else return true;
    }

    /// Packs this rank's strided sends of a window whose segment is in (GroupPlan::packs).
    void pack(ActiveWindow& w) {
        w.pack_started = true;
        const auto packs = group_.packs_of(w.index);
        if (packs.empty()) return;
        auto& packer = [this]() -> auto& {
            if constexpr (Tr::memory == MemoryKind::device) return *packer_;
            else return packer_;
        }();
        for (const Pack& p : packs) store_strided(packer, w.buffer + p.to, w.buffer + p.from.at, p.from);
        if constexpr (Tr::memory == MemoryKind::device) w.pack_ticket = packer_->extent_stored();
    }

    /// Whether the window's packs ran (on the host they ran in pack()).
    bool packed(ActiveWindow& w) {
        if constexpr (Tr::memory == MemoryKind::device) {
            if (w.pack_ticket == no_ticket) return true;
            if (!packer_->copies_done(w.pack_ticket)) return false;
            w.pack_ticket = no_ticket;
        }
        return true;
    }

    /// Starts the status round of the next window once this rank's segment of it is in (and
    /// packed), and the window's exchange once every rank said ok in it: in window order, the same
    /// on every rank.
    bool start_exchanges() {
        bool moved = false;
        for (;;) {
            if (status_) {
                if (!link_.completed(status_->ticket)) return moved;
                const StatusRound round = *status_;
                status_.reset();
                check_statuses(round.window, link_.gathered(round.ticket));
                start_exchange(active_window(round.window));
                moved = true;
                continue;
            }
            if (next_status_ >= group_.windows.size() || active_.empty() || active_.back().index < next_status_) return moved;
            ActiveWindow& w = active_window(next_status_);
            if (w.reads_left > 0 || !uploaded(w)) return moved;
            if (!w.pack_started) {
                pack(w);
                moved = true;
            }
            if (!packed(w)) return moved;
            start_status(detail::RankState::ok);
            moved = true;
        }
    }

    void start_status(detail::RankState state) {
        const std::uint32_t window = next_status_++;
        status_ = StatusRound{window, link_.gather(detail::StatusWord::make(state, window))};
    }

    void start_exchange(ActiveWindow& w) {
        w.exchange_ticket = link_.exchange(w.buffer, group_.exchange(w.index));
        w.exchange_started = true;
    }

    /// The words of window `window`'s status round: every rank ok, or the first that stops is
    /// named (and nobody starts another operation: every rank read the same words).
    void check_statuses(std::uint32_t window, const std::vector<std::uint64_t>& words) {
        const std::string at = "window " + std::to_string(window) + " of " + std::to_string(group_.windows.size());
        for (std::size_t r = 0; r < words.size(); ++r) {
            const detail::RankState state = detail::StatusWord::state(words[r]);
            if (state == detail::RankState::ok && detail::StatusWord::value(words[r]) == window) continue;
            standing_ = Standing::ended;
            const std::string peer = "rank " + std::to_string(r);
            const std::string me = "; rank " + std::to_string(link_.rank()) + " stops too";
            if (state == detail::RankState::failed) throw nccl_error("group", peer + " failed at " + at + " (its own error says why)" + me);
            if (state == detail::RankState::left)
                throw nccl_error("group", peer + " stopped loading at " + at + " (its loader was dropped before the end)" + me);
            if (state == detail::RankState::ok) {
                link_.abort();  // out of step: the exchanges may not match
                throw nccl_error("group", peer + " reported window " + std::to_string(detail::StatusWord::value(words[r])) + " at " +
                                              at + ": the ranks are out of step; the transport was aborted");
            }
            throw nccl_error("group", peer + " sent a status this version does not know at " + at + me);
        }
    }

    /// Lands the kept bytes of exchanged windows into the sink, oldest first, as far as it has room.
    bool land_windows() {
        bool moved = false;
        for (ActiveWindow& w : active_) {
            if (w.landed) continue;
            if (!w.exchange_started) break;
            if (!w.exchange_done) {
                if (!link_.completed(w.exchange_ticket)) break;
                w.exchange_done = moved = true;
            }
            const Window& window = group_.windows[w.index];
            const Extent& last = plan_.extents[window.first_extent + window.extent_count - 1];
            const std::uint32_t end_piece = last.first_piece + last.piece_count;
            const std::uint32_t from_piece = w.next_piece;
            bool stored = false;
            for (; w.next_piece < end_piece; ++w.next_piece) {
                const Piece& piece = plan_.pieces[w.next_piece];
                while (w.next_piece >= plan_.extents[w.next_extent].first_piece + plan_.extents[w.next_extent].piece_count)
                    ++w.next_extent;
                if (!destinations_.lands_here(piece)) continue;
                if (!destinations_.reserve_through(piece.tensor)) break;
                land(w, window, piece, group_.extent_window_offset[w.next_extent] + piece.extent_offset);
                destinations_.piece_stored(piece.tensor);
                stored = moved = true;
            }
            if constexpr (asynchronous) {
                if (stored) {
                    const std::uint64_t ticket = sink_.extent_stored();
                    for (std::uint32_t p = from_piece; p < w.next_piece; ++p) destinations_.copies_issued(plan_.pieces[p].tensor, ticket);
                    w.copy_ticket = ticket;
                }
            }
            if (w.next_piece < end_piece) break;  // the sink is full until the consumer moves on
            w.landed = moved = true;
        }
        return moved;
    }

    /// Stores the bytes of `piece` (at window offset `at`) this rank keeps into its destination:
    /// from their window offsets, or, for the strided bytes of a block that a sends exchange brought
    /// from another reader, packed at the window offset of their first byte.
    void land(const ActiveWindow& w, const Window& window, const Piece& piece, std::uint64_t at) {
        const std::uint32_t t = piece.tensor;
        const std::uint64_t origin = at - piece.tensor_offset;  // tensor byte b lies at window offset origin + b (modulo 2^64)
        const KeptBytes& k = group_.keeps(t);
        if (window.mode != ExchangeMode::sends || k.contiguous())
            return destinations_.store(t, piece.tensor_offset, piece.tensor_offset + piece.length, w.buffer + at);
        group_.for_each_reader(w.index, at, at + piece.length, [&](int reader, std::uint64_t from, std::uint64_t until) {
            if (reader == link_.rank()) return destinations_.store(t, from - origin, until - origin, w.buffer + from);
            const Strided bytes = k.within(from - origin, until - origin);
            if (bytes.length > 0) destinations_.store_packed(t, bytes.at, bytes.length, w.buffer + origin + bytes.at);
        });
    }

    /// Where the load stands, for a message: " (at window w of n)" once a status round started.
    std::string where() const {
        if (next_status_ == 0) return "";
        return " (at window " + std::to_string(next_status_ - 1) + " of " + std::to_string(group_.windows.size()) + ")";
    }

    /// This rank stops before the end of the load (it failed, or its loader is dropped). Its peers
    /// must learn it from the protocol, not wait for it: the status round in flight is read (and if
    /// every rank said ok there, that window's exchange is started as the peers start theirs),
    /// then the next round says `state`, unless the group ended already. Then every operation
    /// started is waited for, within the deadline, since they use the window buffers; a wait that
    /// fails or times out aborts the transport instead. Never throws.
    void leave(detail::RankState state) noexcept {
        if (standing_ == Standing::left || link_.aborted()) return;
        link_.restart_clock();
        const auto here = [this] { return where(); };
        try {  // say it, unless the group ended already
            if (!agreed_) {  // the peers wait in the agreement round: say this rank cannot start
                agreed_ = true;
                link_.gather(detail::StatusWord::make(state, 0));
                standing_ = Standing::ended;
            }
            if (standing_ == Standing::running && status_) {
                link_.wait_for(status_->ticket, "a status round", here);
                const StatusRound round = *status_;
                status_.reset();
                check_statuses(round.window, link_.gathered(round.ticket));
                start_exchange(active_window(round.window));
            }
            if (standing_ == Standing::running && next_status_ < group_.windows.size()) start_status(state);
        } catch (...) {
            // A peer stopped too (check_statuses ended the group: what is in flight completes), or
            // the transport failed or timed out (aborted: nothing is in flight).
            if (standing_ != Standing::ended || link_.aborted()) {
                link_.abort();
                return;
            }
        }
        standing_ = Standing::ended;
        try {  // the operations in flight use the window buffers
            if (link_.pending()) link_.wait_for(link_.last(), "the operations in flight", here);
            standing_ = Standing::left;
        } catch (...) {
            link_.abort();
        }
    }

    const format::Checkpoint& checkpoint_;
    LoadOptions options_;
    LoadStats stats_;
    // Declared in this order so that they are destroyed transport (link_) first, then the packer
    // and the uploader (copies within and into the window buffers), the storage (its destructor
    // waits for the reads still in flight, which write into staging or the window buffers), then
    // the sink, whose destructor waits for its copies out of the window buffers. The transport stops touching the window
    // buffers in ~Group(), before any of them: leave() returns once its operations completed, or
    // once it aborted them.
    Staging<StagingMemory> staging_;
    WindowMemory window_buffers_;
    Sk sink_;
    Storage storage_;
    Uploader uploader_;
    Packer packer_;  // packs within the window buffers
    GroupLink<Tr> link_;
    Plan plan_;
    GroupPlan group_;
    Destinations<Sk> destinations_;
    ReadQueue<Storage, Job> reads_;
    std::deque<ActiveWindow> active_;  // in window order
    std::vector<std::byte*> free_buffers_;
    std::uint32_t next_window_ = 0;
    // The protocol (see the top of this file).
    Standing standing_ = Standing::running;
    bool agreed_ = false;                // the agreement round was started
    std::optional<StatusRound> status_;  // the status round started and not read yet
    std::uint32_t next_status_ = 0;      // the window whose status round starts next
    std::vector<std::uint64_t> chunk_;   // each file's chunk size, when decrypting
    Decryption<Read> decryption_;        // with LoadOptions::key; destroyed first: its threads write staging and the window buffers
};

}  // namespace instanttensor::pipeline
