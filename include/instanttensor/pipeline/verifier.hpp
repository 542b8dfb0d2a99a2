// instanttensor/pipeline/verifier.hpp: checks each tensor's bytes against its expected digest
// (LoadOptions::verify) and each file's against its SHA-256 (LoadOptions::verify_files,
// format/digests.hpp) while the load runs.
//
// The pipeline hands over each read once it landed it: its pieces lie in the staging slot (or, for
// a read in place, in the destination), and a small pool of threads digests them there while the
// copy engine reads the same slot. A tensor of one piece is digested at once; the pieces of a larger
// one in tensor order (XXH3 runs over the bytes in order), so a piece that lands before the one
// ahead of it waits, keeping its slot, until that one is digested: its read was submitted earlier,
// so it lands. A file's SHA-256 runs the same way over its reads in file order (a plan of whole
// files: its reads tile the file from its first byte). A slot is free again once its copies ran and
// its bytes are digested (idle). A tensor is yielded only once its digest is known to match and its
// file's SHA-256 has run past it (the consumer may then change its bytes); the last tensor of a
// file only once the file's SHA-256 matches, and the load ends only once every file's does
// (files()). A mismatch is an integrity_error naming the tensor or file and both digests, thrown in
// the loader's thread.
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

#include "instanttensor/config.hpp"
#include "instanttensor/detail/aead.hpp"
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
    /// Verifies the tensors of `plan` against `tensors` (each must have a digest: integrity_error
    /// names the first without) and its files against `files` (likewise; each must be read whole:
    /// usage_error otherwise), either of which may be null, with `threads` threads, for a load of
    /// `slots` staging slots.
    Verifier(const Plan& plan, const format::TensorDigests* tensors, const format::FileDigests* files, std::uint32_t slots,
             unsigned threads)
        : plan_(&plan), tensors_(plan.tensors.size()), pending_(std::make_unique<std::atomic<std::uint32_t>[]>(slots)) {
        if (tensors) expect_tensors(*tensors);
        if (files) expect_files(*files);
        for (unsigned i = 0; i < std::max(threads, 1u); ++i) workers_.emplace_back([this] { work(); });
    }

    Verifier(const Verifier&) = delete;
    Verifier& operator=(const Verifier&) = delete;
    Verifier(Verifier&&) = delete;
    Verifier& operator=(Verifier&&) = delete;
    /// Waits for the bytes being digested (they lie in staging and the sink's memory); drops the rest.
    ~Verifier() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        work_ready_.notify_all();
        for (auto& w : workers_) w.join();
    }

    /// Extent `extent` of the plan landed in `slot`: its bytes lie at `bytes` (its pieces at their
    /// extent offsets), and stay there until idle(slot).
    void digest(std::uint32_t extent, const std::byte* bytes, std::uint32_t slot) {
        const Extent& e = plan_->extents[extent];
        const std::uint32_t count = (digesting_tensors_ ? e.piece_count : 0) + (files_.empty() ? 0 : 1);
        if (count == 0) return;
        pending_[slot].fetch_add(count, std::memory_order_relaxed);
        outstanding_.fetch_add(count, std::memory_order_relaxed);
        {
            std::lock_guard lock(mutex_);
            if (digesting_tensors_)
                for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p)
                    work_.push_back({Work::piece, p, slot, bytes + plan_->pieces[p].extent_offset});
            if (!files_.empty()) work_.push_back({Work::extent, extent, slot, bytes});
        }
        if (count == 1) work_ready_.notify_one();
        else work_ready_.notify_all();
    }

    /// Whether no bytes in `slot` wait to be digested.
    [[nodiscard]] bool idle(std::uint32_t slot) const {
        return pending_[slot].load(std::memory_order_acquire) == 0;
    }
    /// Whether some bytes wait to be digested.
    [[nodiscard]] bool busy() const { return outstanding_.load(std::memory_order_acquire) > 0; }
    /// Pieces and extents digested so far: what wait_past waits to grow.
    [[nodiscard]] std::uint64_t progress() const { return digested_.load(std::memory_order_acquire); }
    /// Blocks until more than `seen` were digested, or none waits.
    void wait_past(std::uint64_t seen) {
        std::unique_lock lock(mutex_);
        progressed_.wait(lock, [&] { return progress() > seen || !busy(); });
    }

    /// Whether tensor `t` may be yielded: its bytes digested and matching, its file's SHA-256 past
    /// it (and matching, for the file's last tensor). integrity_error when a digest differs.
    [[nodiscard]] bool verified(std::uint32_t t) const {
        const format::TensorRef& ref = *plan_->tensors[t].ref;
        if (!files_.empty()) {
            const std::uint64_t end = ref.file_offset + ref.nbytes();
            if (files_[ref.file].hashed.load(std::memory_order_acquire) < end) return false;
            if (end == plan_->checkpoint->files()[ref.file].header.file_size() && !file_verified(ref.file)) return false;
        }
        const Tensor& tensor = tensors_[t];
        switch (tensor.status.load(std::memory_order_acquire)) {
        case Status::pending: return false;
        case Status::matches: return true;
        case Status::differs: break;
        }
        throw integrity_error(file_of(ref.file), "tensor " + detail::quote_name(ref.name()) + ": its bytes digest to " +
                                                    format::digest_text(tensor.actual) + ", " + tensor_source_ + " expects " +
                                                    format::digest_text(tensor.expected) + " (XXH3-64)");
    }

    /// Whether every file's SHA-256 was computed and matches (integrity_error when one differs):
    /// what the load's end waits for.
    [[nodiscard]] bool files_verified() const {
        for (std::uint32_t f = 0; f < files_.size(); ++f)
            if (!file_verified(f)) return false;
        return true;
    }

private:
    enum class Status : std::uint8_t { pending, matches, differs };

    /// Bytes to digest: a piece (for its tensor's XXH3) or an extent (for its file's SHA-256), and
    /// the slot they hold.
    struct Work {
        enum Kind : std::uint8_t { piece, extent } kind;
        std::uint32_t index;
        std::uint32_t slot;
        const std::byte* bytes;
    };
    /// Bytes digested in order: a tensor of several pieces, or a file.
    template <class State>
    struct Chain {
        State state;
        std::uint64_t digested = 0;  // bytes so far: the next work starts here
        bool running = false;        // a thread is digesting one of its works
        std::vector<Work> waiting;   // works that landed before the one ahead of them
    };
    struct Tensor {
        std::uint64_t expected = 0;
        std::uint64_t actual = 0;  // written before status says matches or differs
        std::atomic<Status> status = Status::matches;
    };
    struct File {
        format::Sha256Digest expected{};
        format::Sha256Digest actual{};  // written before status says matches or differs
        std::atomic<Status> status = Status::pending;
        std::atomic<std::uint64_t> hashed = 0;  // bytes from the start, digested
    };

    std::string file_of(std::uint32_t f) const { return plan_->checkpoint->files()[f].path.string(); }

    void expect_tensors(const format::TensorDigests& digests) {
        digesting_tensors_ = true;
        tensor_source_ = digests.source();
        for (std::size_t t = 0; t < plan_->tensors.size(); ++t) {
            const format::TensorRef& ref = *plan_->tensors[t].ref;
            const auto expected = digests.find(ref.name());
            if (!expected)
                throw integrity_error(digests.source(), "has no digest for tensor " + detail::quote_name(ref.name()) + " of " +
                                                            file_of(ref.file) + ": it cannot be verified");
            tensors_[t].expected = *expected;
            tensors_[t].status = Status::pending;
            if (plan_->tensors[t].piece_count == 0) finish_tensor(static_cast<std::uint32_t>(t), detail::xxh3({}));
        }
    }

    /// Each file's expected SHA-256, once its reads are known to tile it.
    void expect_files(const format::FileDigests& digests) {
#if INSTANTTENSOR_HAS_CRYPTO
        const auto& files = plan_->checkpoint->files();
        file_source_ = digests.source();
        files_ = std::vector<File>(files.size());
        std::vector<std::uint64_t> covered(files.size());
        for (const Extent& e : plan_->extents) {
            if (e.offset != covered[e.file]) break;
            covered[e.file] += e.needed;
        }
        for (std::uint32_t f = 0; f < files.size(); ++f) {
            if (covered[f] != files[f].header.file_size())
                throw usage_error(file_of(f), "is not read whole (the load selects only some of its tensors, or blocks of them): "
                                              "its SHA-256 cannot be checked");
            const auto expected = digests.find(files[f].path);
            if (!expected)
                throw integrity_error(digests.source(), "has no SHA-256 for file " + file_of(f) + ": it cannot be verified");
            files_[f].expected = *expected;
            file_chains_.emplace(f, Chain<detail::Sha256>{});
        }
#else
        throw unavailable_error(digests.source(), "this build has no SHA-256 to check files with (it has no libsodium and OpenSSL)");
#endif
    }

    bool file_verified(std::uint32_t f) const {
        const File& file = files_[f];
        switch (file.status.load(std::memory_order_acquire)) {
        case Status::pending: return false;
        case Status::matches: return true;
        case Status::differs: break;
        }
        throw integrity_error(file_of(f), "its bytes hash to " + format::digest_text(file.actual) + ", " + file_source_ +
                                              " expects " + format::digest_text(file.expected) + " (SHA-256)");
    }

    void work() {
        std::unique_lock lock(mutex_);
        for (;;) {
            work_ready_.wait(lock, [&] { return stopping_ || !work_.empty(); });
            if (stopping_) return;
            Work w = work_.front();
            work_.pop_front();
            if (w.kind == Work::extent) {
#if INSTANTTENSOR_HAS_CRYPTO
                const Extent& e = plan_->extents[w.index];
                run_chain(file_chains_.at(e.file), w, lock, [&](const Work& v) {
                    const Extent& x = plan_->extents[v.index];
                    return std::pair{x.offset, x.needed};
                }, [&](Chain<detail::Sha256>& chain) { return file_hashed(e.file, chain); });
#endif
                continue;
            }
            const Piece& piece = plan_->pieces[w.index];
            if (plan_->tensors[piece.tensor].piece_count == 1) {
                lock.unlock();
                finish_tensor(piece.tensor, detail::xxh3({w.bytes, piece.length}));
                lock.lock();
                done(w);
                continue;
            }
            run_chain(tensor_chains_[piece.tensor], w, lock, [&](const Work& v) {
                const Piece& p = plan_->pieces[v.index];
                return std::pair{p.tensor_offset, p.length};
            }, [&, t = piece.tensor](Chain<detail::Xxh3>& c) {
                if (c.digested < plan_->tensors[t].ref->nbytes()) return false;
                finish_tensor(t, c.state.digest());
                tensor_chains_.erase(t);
                return true;
            });
        }
    }

    /// Digests `w` if it is next in `chain` (else leaves it waiting), then each waiting work that
    /// follows it, with the lock released while digesting. `span(work)` is where in the chain a
    /// work's bytes go and how many; `ended(chain)`, called after each, finishes the chain (and
    /// says so) once it holds every byte: its result is set before its last work counts as done, so
    /// that once nothing is outstanding every result is known.
    template <class State, class Span, class Ended>
    void run_chain(Chain<State>& chain, Work w, std::unique_lock<std::mutex>& lock, Span span, Ended ended) {
        if (chain.running || span(w).first != chain.digested) {
            chain.waiting.push_back(w);
            return;
        }
        chain.running = true;
        for (;;) {
            const std::uint64_t length = span(w).second;
            lock.unlock();
            chain.state.update({w.bytes, length});  // only the running thread touches the state
            lock.lock();
            chain.digested += length;
            if (ended(chain)) {  // `chain` is gone: nothing of it waits
                done(w);
                return;
            }
            done(w);
            const auto next = std::find_if(chain.waiting.begin(), chain.waiting.end(),
                                           [&](const Work& v) { return span(v).first == chain.digested; });
            if (next == chain.waiting.end()) break;
            w = *next;
            chain.waiting.erase(next);
        }
        chain.running = false;
    }

#if INSTANTTENSOR_HAS_CRYPTO
    /// File `f`'s chain grew (the lock held): publishes how far, and its result once whole.
    bool file_hashed(std::uint32_t f, Chain<detail::Sha256>& chain) {
        File& file = files_[f];
        if (chain.digested == plan_->checkpoint->files()[f].header.file_size()) {
            file.actual = chain.state.digest();
            file.status.store(file.actual == file.expected ? Status::matches : Status::differs, std::memory_order_release);
            file.hashed.store(chain.digested, std::memory_order_release);
            file_chains_.erase(f);
            return true;
        }
        file.hashed.store(chain.digested, std::memory_order_release);
        return false;
    }
#endif

    /// Work `w` was digested (the lock held).
    void done(const Work& w) {
        pending_[w.slot].fetch_sub(1, std::memory_order_release);
        outstanding_.fetch_sub(1, std::memory_order_release);
        digested_.fetch_add(1, std::memory_order_release);
        progressed_.notify_all();
    }

    void finish_tensor(std::uint32_t t, std::uint64_t digest) {
        Tensor& tensor = tensors_[t];
        tensor.actual = digest;
        tensor.status.store(digest == tensor.expected ? Status::matches : Status::differs, std::memory_order_release);
    }

    const Plan* plan_ = nullptr;
    bool digesting_tensors_ = false;
    std::string tensor_source_;
    std::string file_source_;
    std::vector<Tensor> tensors_;          // per planned tensor; all match when tensors are not verified
    std::vector<File> files_;              // per file, when files are verified
    std::unique_ptr<std::atomic<std::uint32_t>[]> pending_;  // per slot: works not yet digested
    std::atomic<std::uint64_t> outstanding_ = 0;
    std::atomic<std::uint64_t> digested_ = 0;

    std::mutex mutex_;
    std::condition_variable work_ready_;
    std::condition_variable progressed_;
    std::deque<Work> work_;
    std::unordered_map<std::uint32_t, Chain<detail::Xxh3>> tensor_chains_;
#if INSTANTTENSOR_HAS_CRYPTO
    std::unordered_map<std::uint32_t, Chain<detail::Sha256>> file_chains_;
#endif
    bool stopping_ = false;
    std::vector<std::thread> workers_;  // last: started once everything above is
};

}  // namespace instanttensor::pipeline
