// instanttensor/pipeline/single.hpp: a load by one process alone (transport::single).
//
// Each extent of the plan is read into a free staging slot (or, when that costs no copy, straight
// into its tensor's destination); then its pieces are stored to their tensors' destinations and
// the slot is freed: at once for a synchronous sink, once the sink says its copies out of the slot
// ran for one that copies asynchronously (a device sink). Reads run ahead of the consumer as far
// as staging and the sink's ring allow. Everything runs in the caller's thread, in load(), but the
// decryption of an encrypted checkpoint (LoadOptions::key), which a Decryptor's threads run on each
// read before its bytes are stored, and the digests of a verified load (LoadOptions::verify,
// verify_files), which a Verifier's threads compute.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/pipeline/decryptor.hpp"
#include "instanttensor/pipeline/destinations.hpp"
#include "instanttensor/pipeline/open.hpp"
#include "instanttensor/pipeline/options.hpp"
#include "instanttensor/pipeline/plan.hpp"
#include "instanttensor/pipeline/read_queue.hpp"
#include "instanttensor/pipeline/share.hpp"
#include "instanttensor/pipeline/staging.hpp"
#include "instanttensor/pipeline/timeline.hpp"
#include "instanttensor/pipeline/verifier.hpp"

namespace instanttensor::pipeline {

template <StorageBackend Storage, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk>
class Single {
    static constexpr bool asynchronous = CopiesAsynchronously<Sk>;
    // Reads land in device staging for a storage that writes there (GDS); a device sink's copy
    // engine reads pinned host memory.
    using Memory = Buffer<Storage::destination, Storage::destination == MemoryKind::host && Sk::memory == MemoryKind::device>;

    /// What becomes of a read once complete: the extent it brings, and the slot it uses.
    struct Job {
        std::uint32_t extent = 0;
        std::uint32_t slot = 0;
    };
    using Read = typename ReadQueue<Storage, Job>::Read;

public:
    /// Opens the files, plans the selected tensors and allocates staging and the sink's memory.
    /// `transport` must be a group of one: a transport of several ranks needs a GroupTransport.
    /// LoadOptions::share is asked for rank 0 of 1: of a tensor it keeps a block of, the bytes the
    /// block spans are read and the block lands.
    template <Transport Tr>
    Single(const format::Checkpoint& checkpoint, Storage storage, const Tr& transport, Sk sink, LoadOptions options)
        : checkpoint_(checkpoint), options_(std::move(options)), sink_(std::move(sink)), storage_(std::move(storage)) {
        if (transport.size() != 1)
            throw usage_error("loader", "a transport of " + std::to_string(transport.size()) +
                                            " ranks must exchange bytes (model GroupTransport, as transport::nccl does)");
        if (options_.verify && options_.share)
            throw usage_error("loader", "verify digests whole tensors: a load that keeps blocks of them (LoadOptions::share) cannot verify");
        if (options_.verify_files && options_.share)
            throw usage_error("loader", "verify_files hashes whole files: a load that keeps blocks of tensors (LoadOptions::share) cannot");
        if (options_.verify_files && options_.key)
            throw usage_error("loader", "verify_files hashes the bytes as stored, which decryption overwrites: an encrypted checkpoint's "
                                        "chunks are authenticated by its key already");
        if ((options_.verify || options_.verify_files) && Storage::destination != MemoryKind::host)
            throw usage_error(std::string(storage_.name()), "reads into device memory, where verify cannot digest the bytes: load through a host backend");
        std::vector<std::uint64_t> chunk;  // each file's chunk size, when decrypting
#if INSTANTTENSOR_HAS_CRYPTO
        if (options_.key && Storage::destination == MemoryKind::host)
            chunk = decryption_.start(checkpoint_, *options_.key, options_.decrypt_threads);
#endif
        TensorRange range;
        if (options_.share) {  // a block of a tensor: read the bytes it spans (whole chunks when decrypting), land the block
            range = [this, &chunk](const format::TensorRef& t) {
                const KeptBytes& k = kept_.emplace_back(kept_bytes(t, options_.share(t, 0, 1), checkpoint_.files()[t.file].path.native()));
                std::uint64_t begin = k.begin, end = k.end();
                if (!chunk.empty() && begin < end) {
                    const std::uint64_t size = chunk[t.file];
                    begin = begin / size * size;
                    end = std::min((end + size - 1) / size * size, t.nbytes());
                }
                return std::pair{begin, end};
            };
        }
        plan_ = open_and_plan(checkpoint_, storage_, options_, PlanAlignment::storage, range, chunk);
        const std::uint64_t slots = staging_slots(plan_, options_);
        int device = 0;
        if constexpr (Storage::destination == MemoryKind::device) device = storage_.device();
        staging_ = Staging<Memory>(allocate<Memory>(slots * options_.slot_bytes, device, "the staging size (staging_bytes, --staging-mib)"),
                                   options_.slot_bytes);
        if constexpr (requires { storage_.register_memory(staging_.memory()); }) storage_.register_memory(staging_.memory());
        stats_.staging_bytes = staging_.memory().size();
        sink_.prepare(plan_);
        if constexpr (asynchronous) sink_.prepare_copies(slots);
        destinations_ = Destinations<Sk>(sink_, plan_, kept_);
        reads_ = ReadQueue<Storage, Job>(storage_, checkpoint_, stats_, slots);
        if (options_.verify || options_.verify_files)
            verifier_ = std::make_unique<Verifier>(plan_, options_.verify ? &*options_.verify : nullptr,
                                                   options_.verify_files ? &*options_.verify_files : nullptr, static_cast<std::uint32_t>(slots),
                                                   options_.verify_threads ? options_.verify_threads : default_verify_threads());
    }

    Single(const Single&) = delete;
    Single& operator=(const Single&) = delete;

    [[nodiscard]] const Plan& plan() const noexcept { return plan_; }
    [[nodiscard]] const Storage& storage() const noexcept { return storage_; }
    [[nodiscard]] const Sk& sink() const noexcept { return sink_; }
    [[nodiscard]] const LoadStats& stats() const noexcept { return stats_; }
    [[nodiscard]] LoadStats& stats() noexcept { return stats_; }
    [[nodiscard]] const Destinations<Sk>& destinations() const noexcept { return destinations_; }

    /// Runs until every byte of tensor `t` is in its destination. While a device sink's copies
    /// run, the loop polls (reaping reads without blocking, so that slots keep cycling and reads
    /// stay in flight) instead of sleeping in the kernel or on an event, which would let the read
    /// queue or the copy engine run dry; with nothing but copies left it blocks on the oldest.
    /// A load that decrypts waits for the Decryptor between looks at the reads; a verified load
    /// waits for the digests: blocking on the Verifier when nothing else is left.
    void load(std::uint32_t t) {
        run_until([&] { return destinations_.complete(t) && verified(t); },
                  [&] {
                      return "the sink has no room for tensor '" + plan_.tensors[t].ref->name() +
                             "' although the consumer holds none: its reserve() refuses a ring of plan().ring_needed() bytes";
                  });
    }

    /// Every tensor was yielded: a load that verifies files runs until each file's SHA-256 is known
    /// to match (the reads of headers of files without tensors are left); any other has nothing to do.
    void finish() {
        if (!options_.verify_files) return;
        run_until([&] { return verifier_->files_verified(); }, [] { return std::string("the files' reads stopped short of their ends"); });
        stats_.verified_files = checkpoint_.files().size();
    }

    /// The consumer moved past tensor `t`.
    void release(std::uint32_t t) { destinations_.release(t); }

private:
    /// Drives the load until done() holds; throws usage_error(stuck()) when nothing is left to wait for.
    template <class Done, class Stuck>
    void run_until(Done done, Stuck stuck) {
        for (;;) {
            // Taken before anything is checked: a decryption or a digest finishing after the checks
            // below must not read as a load with nothing left to wait for. The reads decrypted land
            // first: landing hands their pieces to the Verifier.
            const std::uint64_t decrypted = decryption_.progress();
            decryption_.finish([this](const Read& r) { land(r); });
            const bool digesting = verifier_ && verifier_->busy();
            const std::uint64_t digested = verifier_ ? verifier_->progress() : 0;
            reclaim_slots();
            submit_reads();
            if (done()) {
                timeline_.leave(stats_.times);
                return;
            }
            timeline_.look(stats_.times, holding());
            const bool watching_copies = asynchronous && staging_.copying();
            if (reads_.in_flight() > 0) {
                if (reads_.reap(!watching_copies && !decryption_.busy(), [this](const Read& r) { arrived(r); }) == 0) {
                    if (decryption_.busy()) decryption_.wait_past(decrypted, std::chrono::microseconds(100));  // then look at the reads again
                    else std::this_thread::yield();
                }
            } else if (decryption_.busy()) {
                decryption_.wait_past(decrypted, std::chrono::milliseconds(100));
            } else if (digesting) {
                verifier_->wait_past(digested);
            } else if (watching_copies) {
                wait_oldest_copies();
            } else {
                throw usage_error("loader", stuck());
            }
        }
    }

    /// Starts reads while staging slots, the queue and the sink's room allow.
    void submit_reads() {
        sink_full_ = false;
        while (next_extent_ < plan_.extents.size() && staging_.has_free() && !reads_.full()) {
            const Extent& e = plan_.extents[next_extent_];
            // The sink is full until the consumer moves on. (An extent of a header has no piece.)
            if (e.piece_count > 0 && !destinations_.reserve_through(plan_.pieces[e.first_piece + e.piece_count - 1].tensor)) {
                sink_full_ = true;
                return;
            }
            const std::uint32_t slot = staging_.take();
            reads_.submit({e.file, e.offset, e.length, e.needed, read_buffer(e, slot), {next_extent_, slot}});
            ++next_extent_;
        }
    }

    /// Where extent `e` is read. Straight into its tensor's destination when the storage writes the
    /// sink's kind of memory, the extent is exactly one piece (no alignment head or tail, no other
    /// tensor) of a tensor kept whole, and that spot of the destination is aligned as the file's
    /// reads must be: always for a file read buffered, for one read with O_DIRECT where the
    /// destination's address is congruent to the tensor's file offset (sink::placement::
    /// in_place_offset). A tensor larger than a slot then costs no second copy. Else into the slot.
    std::byte* read_buffer(const Extent& e, std::uint32_t slot) {
        const Piece& first = plan_.pieces[e.first_piece];
        if (Storage::destination == Sk::memory && e.piece_count == 1 && first.extent_offset == 0 && e.length == first.length &&
            kept_whole(first.tensor)) {
            std::byte* at = destinations_.at(first.tensor).data() + first.tensor_offset;
            if (reinterpret_cast<std::uintptr_t>(at) % storage_.alignment(e.file) == 0) return at;
        }
        return staging_.slot(slot);
    }

    /// What holds while the loop waits (LoadStats::times).
    Holding holding() const {
        const bool left = next_extent_ < plan_.extents.size();
        return {.storage_idle = left && reads_.in_flight() == 0,
                .copies_idle = asynchronous && !staging_.copying(),
                .staging_full = left && !staging_.has_free(),
                .queue_full = left && staging_.has_free() && reads_.full(),
                .sink_full = left && sink_full_};
    }

    /// A read is complete: it lands, once decrypted if the checkpoint is encrypted.
    void arrived(const Read& read) {
#if INSTANTTENSOR_HAS_CRYPTO
        if (decryption_) {
            decryption_.decrypt(read, plan_, plan_.extents[read.job.extent], read.buffer);
            return;
        }
#endif
        land(read);
    }

    /// Stores the pieces of a complete read to their tensors (unless it was read in place), a run
    /// of adjacent ones in one store where the sink has one buffer, and frees its slot, once the
    /// copies ran for an asynchronous sink.
    void land(const Read& read) {
        const Stopwatch landing(stats_.times.landing);
        const Extent& e = plan_.extents[read.job.extent];
        const std::byte* staged = staging_.slot(read.job.slot);
        const bool in_place = read.buffer != staged;
        for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) {
            const Piece& piece = plan_.pieces[p];
            if (!destinations_.lands_here(piece)) continue;  // between the runs of a block
            if (in_place) stats_.in_place_bytes += piece.length;
            else destinations_.store_merging(piece.tensor, piece.tensor_offset, piece.tensor_offset + piece.length, staged + piece.extent_offset);
            destinations_.piece_stored(piece.tensor);
        }
        destinations_.flush();
        if (verifier_) verifier_->digest(read.job.extent, read.buffer, read.job.slot);
        if constexpr (asynchronous) {
            const std::uint64_t ticket = sink_.extent_stored();
            for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p)
                destinations_.copies_issued(plan_.pieces[p].tensor, ticket);
            staging_.free_after(read.job.slot, ticket);
        } else if (verifier_) {
            staging_.free_after(read.job.slot, 0);  // once digested
        } else {
            staging_.free(read.job.slot);
        }
    }

    /// Whether tensor `t` may be yielded as far as its digest and its file's go (integrity_error if one differs).
    bool verified(std::uint32_t t) {
        if (!verifier_) return true;
        if (!verifier_->verified(t)) return false;
        if (options_.verify) ++stats_.verified;
        return true;
    }

    bool kept_whole(std::uint32_t t) const { return kept_.empty() || kept_[t].size() == plan_.tensors[t].ref->nbytes(); }

    /// Frees the slots whose copies ran (in order: copies complete in the order they were issued)
    /// and whose pieces were digested.
    void reclaim_slots() {
        if (!asynchronous && !verifier_) return;
        staging_.reclaim([this](std::uint64_t ticket, std::uint32_t slot) {
            if (verifier_ && !verifier_->idle(slot)) return false;
            if constexpr (asynchronous) return sink_.copies_done(ticket);
            else return true;
        });
    }

    void wait_oldest_copies() {
        if constexpr (asynchronous) {
            sink_.wait_copies(staging_.oldest_ticket());
            reclaim_slots();
        }
    }

    const format::Checkpoint& checkpoint_;
    LoadOptions options_;
    LoadStats stats_;
    // Declared in this order so that they are destroyed storage first (its destructor waits for
    // the reads in flight, which write into staging or, read in place, the sink's memory), then
    // the sink (whose destructor waits for its copies out of staging), then staging.
    Staging<Memory> staging_;
    Sk sink_;
    Storage storage_;
    Plan plan_;
    std::vector<KeptBytes> kept_;  // per planned tensor, with LoadOptions::share: what it keeps
    Destinations<Sk> destinations_;
    ReadQueue<Storage, Job> reads_;
    std::uint32_t next_extent_ = 0;
    bool sink_full_ = false;  // submit_reads stopped at a tensor the sink had no room for
    Timeline timeline_;
    std::unique_ptr<Verifier> verifier_;  // with LoadOptions::verify; destroyed first: its threads read staging and the sink
    Decryption<Read> decryption_;  // with LoadOptions::key; destroyed first: its threads write staging and the sink
};

}  // namespace instanttensor::pipeline
