// instanttensor/pipeline/verifier.hpp: checks each tensor's bytes against its expected digest
// (LoadOptions::verify, format/digests.hpp) while the load runs.
//
// The pipeline hands over each read once it landed it: its pieces lie in the staging slot (or, for
// a read in place, in the destination), and a small pool of threads digests them there while the
// copy engine reads the same slot. A tensor of one piece is digested at once; the pieces of a larger
// one in tensor order (XXH3 runs over the bytes in order), so a piece that lands before the one
// ahead of it waits, keeping its slot, until that one is digested: its read was submitted earlier,
// so it lands. A slot is free again once its copies ran and its pieces are digested (idle), and a
// tensor is yielded only once its digest is known to match (verified): a mismatch is an
// integrity_error naming the tensor, the file and both digests, thrown in the loader's thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "instanttensor/detail/xxh3.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/digests.hpp"
#include "instanttensor/pipeline/plan.hpp"

namespace instanttensor::pipeline {

/// Digesting threads when LoadOptions::verify_threads is 0: a quarter of the cores, 1 to 4, so that
/// on a small machine digests leave cores to the reads (docs/benchmarks.md#verify).
inline unsigned default_verify_threads() {
    return std::clamp(std::thread::hardware_concurrency() / 4, 1u, 4u);
}

class Verifier {
public:
    /// Verifies every tensor of `plan` against `digests` (each must have one: integrity_error
    /// names the first without), with `threads` threads, for a load of `slots` staging slots.
    Verifier(const Plan& plan, const format::TensorDigests& digests, std::uint32_t slots, unsigned threads)
        : plan_(&plan), source_(digests.source()), expected_(plan.tensors.size()), actual_(plan.tensors.size()),
          status_(std::make_unique<std::atomic<Status>[]>(plan.tensors.size())),
          pending_(std::make_unique<std::atomic<std::uint32_t>[]>(slots)) {
        for (std::size_t t = 0; t < plan.tensors.size(); ++t) {
            const format::TensorRef& ref = *plan.tensors[t].ref;
            const auto expected = digests.find(ref.name());
            if (!expected)
                throw integrity_error(source_, "has no digest for tensor " + detail::quote_name(ref.name()) + " of " + file_of(ref) +
                                                   ": it cannot be verified");
            expected_[t] = *expected;
            if (plan.tensors[t].piece_count == 0) finish(static_cast<std::uint32_t>(t), detail::xxh3({}));
        }
        for (unsigned i = 0; i < std::max(threads, 1u); ++i) workers_.emplace_back([this] { work(); });
    }

    Verifier(const Verifier&) = delete;
    Verifier& operator=(const Verifier&) = delete;
    Verifier(Verifier&&) = delete;
    Verifier& operator=(Verifier&&) = delete;
    /// Waits for the pieces being digested (they read staging and the sink's memory); drops the rest.
    ~Verifier() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        work_ready_.notify_all();
        for (auto& w : workers_) w.join();
    }

    /// Extent `e` of the plan landed in `slot`: its pieces lie at `bytes` + their extent offsets, and
    /// stay there until idle(slot).
    void digest(const Extent& e, const std::byte* bytes, std::uint32_t slot) {
        pending_[slot].fetch_add(e.piece_count, std::memory_order_relaxed);
        outstanding_.fetch_add(e.piece_count, std::memory_order_relaxed);
        {
            std::lock_guard lock(mutex_);
            for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p)
                work_.push_back({p, slot, bytes + plan_->pieces[p].extent_offset});
        }
        work_ready_.notify_one();
    }

    /// Whether no piece in `slot` waits to be digested.
    [[nodiscard]] bool idle(std::uint32_t slot) const {
        return pending_[slot].load(std::memory_order_acquire) == 0;
    }
    /// Whether some piece waits to be digested.
    [[nodiscard]] bool busy() const { return outstanding_.load(std::memory_order_acquire) > 0; }
    /// Pieces digested so far: what wait_past waits to grow.
    [[nodiscard]] std::uint64_t progress() const { return digested_.load(std::memory_order_acquire); }
    /// Blocks until more than `seen` pieces were digested, or none waits.
    void wait_past(std::uint64_t seen) {
        std::unique_lock lock(mutex_);
        progressed_.wait(lock, [&] { return progress() > seen || !busy(); });
    }

    /// Whether tensor `t`'s bytes were digested and match; integrity_error when they do not.
    [[nodiscard]] bool verified(std::uint32_t t) const {
        switch (status_[t].load(std::memory_order_acquire)) {
        case Status::pending: return false;
        case Status::matches: return true;
        case Status::differs: break;
        }
        const format::TensorRef& ref = *plan_->tensors[t].ref;
        throw integrity_error(file_of(ref), "tensor " + detail::quote_name(ref.name()) + ": its bytes digest to " +
                                                format::digest_text(actual_[t]) + ", " + source_ + " expects " +
                                                format::digest_text(expected_[t]) + " (XXH3-64)");
    }

private:
    enum class Status : std::uint8_t { pending, matches, differs };

    /// A piece to digest: where its bytes are, and the slot they hold.
    struct Work {
        std::uint32_t piece;
        std::uint32_t slot;
        const std::byte* bytes;
    };
    /// A tensor of several pieces, digested in order.
    struct Chain {
        detail::Xxh3 state;
        std::uint64_t digested = 0;  // bytes of the tensor so far: the next piece starts here
        bool running = false;        // a thread is digesting one of its pieces
        std::vector<Work> waiting;   // pieces that landed before the one ahead of them
    };

    std::string file_of(const format::TensorRef& ref) const { return plan_->checkpoint->files()[ref.file].path.string(); }

    void work() {
        std::unique_lock lock(mutex_);
        for (;;) {
            work_ready_.wait(lock, [&] { return stopping_ || !work_.empty(); });
            if (stopping_) return;
            Work w = work_.front();
            work_.pop_front();
            const Piece& piece = plan_->pieces[w.piece];
            if (plan_->tensors[piece.tensor].piece_count == 1) {
                lock.unlock();
                finish(piece.tensor, detail::xxh3({w.bytes, piece.length}));
                lock.lock();
                done(w);
                continue;
            }
            Chain& chain = chains_[piece.tensor];
            if (chain.running || piece.tensor_offset != chain.digested) {
                chain.waiting.push_back(w);
                continue;
            }
            run_chain(chain, w, lock);
        }
    }

    /// Digests `w`, then each waiting piece that follows it, with the lock released while digesting.
    /// A tensor's result is set before its last piece counts as done, so that once nothing is
    /// outstanding every landed tensor has its result.
    void run_chain(Chain& chain, Work w, std::unique_lock<std::mutex>& lock) {
        const std::uint32_t t = plan_->pieces[w.piece].tensor;
        chain.running = true;
        for (;;) {
            const Piece& piece = plan_->pieces[w.piece];
            lock.unlock();
            chain.state.update({w.bytes, piece.length});  // only the running thread touches the state
            lock.lock();
            chain.digested += piece.length;
            if (chain.digested == plan_->tensors[t].ref->nbytes()) {  // its last piece: none waits
                finish(t, chain.state.digest());
                chains_.erase(t);
                done(w);
                return;
            }
            done(w);
            const auto next = std::find_if(chain.waiting.begin(), chain.waiting.end(),
                                           [&](const Work& v) { return plan_->pieces[v.piece].tensor_offset == chain.digested; });
            if (next == chain.waiting.end()) break;
            w = *next;
            chain.waiting.erase(next);
        }
        chain.running = false;
    }

    /// Piece `w` was digested (the lock held).
    void done(const Work& w) {
        pending_[w.slot].fetch_sub(1, std::memory_order_release);
        outstanding_.fetch_sub(1, std::memory_order_release);
        digested_.fetch_add(1, std::memory_order_release);
        progressed_.notify_all();
    }

    void finish(std::uint32_t t, std::uint64_t digest) {
        actual_[t] = digest;
        status_[t].store(digest == expected_[t] ? Status::matches : Status::differs, std::memory_order_release);
    }

    const Plan* plan_ = nullptr;
    std::string source_;
    std::vector<std::uint64_t> expected_;
    std::vector<std::uint64_t> actual_;  // written before status_ says matches or differs
    std::unique_ptr<std::atomic<Status>[]> status_;
    std::unique_ptr<std::atomic<std::uint32_t>[]> pending_;  // per slot: pieces not yet digested
    std::atomic<std::uint64_t> outstanding_ = 0;
    std::atomic<std::uint64_t> digested_ = 0;

    std::mutex mutex_;
    std::condition_variable work_ready_;
    std::condition_variable progressed_;
    std::deque<Work> work_;
    std::unordered_map<std::uint32_t, Chain> chains_;
    bool stopping_ = false;
    std::vector<std::thread> workers_;  // last: started once everything above is
};

}  // namespace instanttensor::pipeline
