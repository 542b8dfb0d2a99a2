// instanttensor/pipeline/decryptor.hpp: decrypts the reads of an encrypted checkpoint
// (format/encryption.hpp, LoadOptions::key) before the pipeline stores their bytes.
//
// The pipeline hands over each read once its bytes are there (in the staging slot, or, read in
// place, in the destination); a pool of threads authenticates and decrypts its chunks in place,
// each chunk on its own (the plan cuts pieces at chunk boundaries: make_plan's `chunk`), and hands
// the read back once all of them are done. Only then does the pipeline store the bytes to their
// tensors, so the sinks, and the copy engine reading a slot, see plaintext only. A chunk that fails
// authentication is wiped where it lies and the read comes back as an integrity_error naming the
// tensor, the file and the chunk: no byte of it is ever yielded.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "instanttensor/config.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/pipeline/plan.hpp"

#if INSTANTTENSOR_HAS_CRYPTO
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>

#include "instanttensor/detail/aead.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/encryption.hpp"
#endif

namespace instanttensor::pipeline {

#if INSTANTTENSOR_HAS_CRYPTO

/// Decrypting threads when LoadOptions::decrypt_threads is 0: every core but one (left to the
/// reads and the loader's thread), at least one, at most 16.
inline unsigned default_decrypt_threads() {
    return std::clamp(std::thread::hardware_concurrency(), 2u, 17u) - 1;
}

class Decryptor {
public:
    /// Decrypts the files of `checkpoint` with `key` on `threads` threads (0: default_decrypt_threads()).
    /// Each file must be encrypted (usage_error naming one that is not) and with this key
    /// (integrity_error): both are checked here, before any read.
    Decryptor(const format::Checkpoint& checkpoint, const format::Key& key, unsigned threads) : checkpoint_(&checkpoint) {
        encryptions_.reserve(checkpoint.files().size());
        ciphers_.reserve(checkpoint.files().size());
        for (const format::CheckpointFile& file : checkpoint.files()) {
            auto encryption = format::Encryption::of(file.header, file.path.native());
            if (!encryption)
                throw usage_error(file.path.string(), "is not encrypted, but a key was given to decrypt it (LoadOptions::key)");
            encryptions_.push_back(std::move(*encryption));
        }
        for (std::size_t f = 0; f < encryptions_.size(); ++f)
            ciphers_.emplace_back(checkpoint.files()[f].header, encryptions_[f], key, checkpoint.files()[f].path.native());
        for (unsigned i = 0; i < (threads ? threads : default_decrypt_threads()); ++i) workers_.emplace_back([this] { work(); });
    }

    Decryptor(const Decryptor&) = delete;
    Decryptor& operator=(const Decryptor&) = delete;
    /// Waits for the chunks being decrypted (they lie in staging and the sink's memory); drops the rest.
    ~Decryptor() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        work_ready_.notify_all();
        for (auto& w : workers_) w.join();
    }

    /// Each file's chunk size, for make_plan.
    [[nodiscard]] std::vector<std::uint64_t> chunk_sizes() const {
        std::vector<std::uint64_t> sizes;
        for (const auto& e : encryptions_) sizes.push_back(e.chunk_bytes);
        return sizes;
    }

    /// Read `id` of extent `e` of `plan` is there: the extent's bytes [begin, end) (all of them by
    /// default), byte `begin` at `bytes`. Its pieces' chunks in that range are decrypted; the range
    /// must not cut one (a group's segment reads are widened to whole chunks: whole_chunks()).
    void decrypt(const Plan& plan, const Extent& e, std::byte* bytes, std::uint32_t id, std::uint64_t begin = 0,
                 std::uint64_t end = UINT64_MAX) {
        std::vector<Work> chunks;
        for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) {
            const Piece& piece = plan.pieces[p];
            const std::uint64_t from = std::max(begin, piece.extent_offset), to = std::min(end, piece.extent_offset + piece.length);
            if (from >= to) continue;
            const format::TensorRef& ref = *plan.tensors[piece.tensor].ref;
            const std::size_t tensor = static_cast<std::size_t>(ref.info - checkpoint_->files()[ref.file].header.tensors.data());
            const std::uint64_t size = encryptions_[ref.file].chunk_bytes;
            const std::uint64_t first = piece.tensor_offset + (from - piece.extent_offset), last = first + (to - from);
            if (first % size != 0 || (last % size != 0 && last != ref.nbytes()))
                throw usage_error("Decryptor", "a read of tensor " + detail::quote_name(ref.name()) +
                                                   " cuts one of its chunks: plan with chunk_sizes()");
            for (std::uint64_t at = first; at < last; at += size) {
                const std::uint64_t length = std::min(size, ref.nbytes() - at);
                chunks.push_back({id, ref.file, tensor, at / size, {bytes + (from - begin) + (at - first), length}});
            }
        }
        {
            std::lock_guard lock(mutex_);
            reads_[id].chunks = chunks.size();
            work_.insert(work_.end(), chunks.begin(), chunks.end());
            if (chunks.empty()) finished_.push_back(id);
        }
        ++handed_over_;
        work_ready_.notify_all();
    }

    /// Calls `done(id)` for each read whose chunks are all decrypted; integrity_error for one whose
    /// chunk failed authentication.
    template <class Done>
    void finish(Done&& done) {
        std::vector<std::uint32_t> ids;
        Pending failed;
        {
            std::lock_guard lock(mutex_);
            ids.swap(finished_);
            for (std::uint32_t id : ids) {
                if (failed.failure.empty()) failed = std::move(reads_[id]);
                reads_.erase(id);
            }
        }
        handed_over_ -= ids.size();
        if (!failed.failure.empty()) throw integrity_error(failed.file, failed.failure);
        for (std::uint32_t id : ids) done(id);
    }

    /// Whether some read handed over has not come back through finish().
    [[nodiscard]] bool busy() const noexcept { return handed_over_ > 0; }
    /// Chunks decrypted so far: what wait_past waits to grow.
    [[nodiscard]] std::uint64_t progress() const { return decrypted_.load(std::memory_order_acquire); }
    /// Blocks until more than `seen` chunks were decrypted, or for at most `timeout`.
    void wait_past(std::uint64_t seen, std::chrono::microseconds timeout) {
        std::unique_lock lock(mutex_);
        progressed_.wait_for(lock, timeout, [&] { return progress() > seen || !finished_.empty(); });
    }

private:
    /// A chunk to decrypt: the read it belongs to, its file, its tensor's index in that file's
    /// header, its index within the tensor, and its bytes.
    struct Work {
        std::uint32_t id;
        std::uint32_t file;
        std::size_t tensor;
        std::uint64_t chunk;
        std::span<std::byte> bytes;
    };
    struct Pending {
        std::size_t chunks = 0;  // not yet decrypted
        std::string file;        // of the first chunk that failed authentication, where it is
        std::string failure;     // and what failed
    };

    void work() {
        std::optional<detail::Aead> gcm, chacha;  // this thread's, made on first use
        std::unique_lock lock(mutex_);
        for (;;) {
            work_ready_.wait(lock, [&] { return stopping_ || !work_.empty(); });
            if (stopping_) return;
            const Work w = work_.front();
            work_.pop_front();
            ++outstanding_;
            lock.unlock();
            const format::Encryption& encryption = encryptions_[w.file];
            auto& aead = encryption.cipher == format::Cipher::aes_256_gcm ? gcm : chacha;
            std::string fault;  // what failed, if the library did (never the bytes: they are wiped)
            bool authentic = false;
            try {
                if (!aead) aead.emplace(encryption.cipher);
                authentic = ciphers_[w.file].open(*aead, w.tensor, w.chunk, w.bytes);
            } catch (const std::exception& e) {
                std::fill(w.bytes.begin(), w.bytes.end(), std::byte{0});
                fault = e.what();
            }
            lock.lock();
            --outstanding_;
            Pending& read = reads_[w.id];
            if (!authentic && read.failure.empty()) {
                read.file = checkpoint_->files()[w.file].path.string();
                read.failure = fault.empty() ? failure(w) : "cannot decrypt: " + fault;
            }
            if (--read.chunks == 0) finished_.push_back(w.id);
            decrypted_.fetch_add(1, std::memory_order_release);
            progressed_.notify_all();
        }
    }

    std::string failure(const Work& w) const {
        const format::TensorInfo& t = checkpoint_->files()[w.file].header.tensors[w.tensor];
        const std::uint64_t size = encryptions_[w.file].chunk_bytes;
        return "tensor " + detail::quote_name(t.name) + ": chunk " + std::to_string(w.chunk) + " of " +
               std::to_string(encryptions_[w.file].chunks_of(t.nbytes())) + " (bytes " + std::to_string(w.chunk * size) + " to " +
               std::to_string(w.chunk * size + w.bytes.size()) + ") fails authentication (" +
               std::string(format::cipher_name(encryptions_[w.file].cipher)) +
               "): its bytes, its tag or the header were changed, or chunks were moved";
    }

    const format::Checkpoint* checkpoint_;
    std::vector<format::Encryption> encryptions_;  // per file
    std::vector<format::FileCipher> ciphers_;      // per file, pointing into encryptions_
    std::size_t handed_over_ = 0;                  // the pipeline's thread only
    std::atomic<std::uint64_t> decrypted_ = 0;

    std::mutex mutex_;
    std::condition_variable work_ready_;
    std::condition_variable progressed_;
    std::deque<Work> work_;
    std::size_t outstanding_ = 0;  // chunks a thread is decrypting
    std::unordered_map<std::uint32_t, Pending> reads_;
    std::vector<std::uint32_t> finished_;
    bool stopping_ = false;
    std::vector<std::thread> workers_;  // last: started once everything above is
};
#endif  // INSTANTTENSOR_HAS_CRYPTO

/// A pipeline's decryption, in builds with and without libsodium and OpenSSL: once started
/// (LoadOptions::key), a Decryptor and the pipeline's reads of type `Read` it holds until their
/// chunks are decrypted; else nothing, never busy.
template <class Read>
class Decryption {
public:
    /// Whether it was started: the load decrypts.
    explicit operator bool() const noexcept {
#if INSTANTTENSOR_HAS_CRYPTO
        return decryptor_ != nullptr;
#else
        return false;
#endif
    }

#if INSTANTTENSOR_HAS_CRYPTO
    /// Checks `key` against every file of `checkpoint` (Decryptor) and starts `threads` threads
    /// (0: the default); returns each file's chunk size, for make_plan.
    std::vector<std::uint64_t> start(const format::Checkpoint& checkpoint, const format::Key& key, unsigned threads) {
        decryptor_ = std::make_unique<Decryptor>(checkpoint, key, threads);
        return decryptor_->chunk_sizes();
    }
    /// Holds `read` until finish() hands it back, once the chunks of extent `e`'s bytes [begin,
    /// end) at `bytes` are decrypted (Decryptor::decrypt).
    void decrypt(const Read& read, const Plan& plan, const Extent& e, std::byte* bytes, std::uint64_t begin = 0,
                 std::uint64_t end = UINT64_MAX) {
        const std::uint32_t id = next_id_++;
        held_.emplace(id, read);
        decryptor_->decrypt(plan, e, bytes, id, begin, end);
    }
#endif

    /// Whether some read handed over has not come back through finish().
    [[nodiscard]] bool busy() const {
#if INSTANTTENSOR_HAS_CRYPTO
        return decryptor_ && decryptor_->busy();
#else
        return false;
#endif
    }
    /// Chunks decrypted so far (Decryptor::progress).
    [[nodiscard]] std::uint64_t progress() const {
#if INSTANTTENSOR_HAS_CRYPTO
        if (decryptor_) return decryptor_->progress();
#endif
        return 0;
    }
    /// Waits until more than `seen` chunks were decrypted, or for at most `timeout`.
    void wait_past([[maybe_unused]] std::uint64_t seen, [[maybe_unused]] std::chrono::microseconds timeout) {
#if INSTANTTENSOR_HAS_CRYPTO
        decryptor_->wait_past(seen, timeout);
#endif
    }
    /// Calls `done(read)` for each read whose chunks are all decrypted; integrity_error for one
    /// whose chunk failed authentication. Whether any came back.
    template <class Done>
    bool finish([[maybe_unused]] Done&& done) {
        bool any = false;
#if INSTANTTENSOR_HAS_CRYPTO
        if (busy())
            decryptor_->finish([&](std::uint32_t id) {
                auto held = held_.extract(id);
                done(held.mapped());
                any = true;
            });
#endif
        return any;
    }

private:
#if INSTANTTENSOR_HAS_CRYPTO
    std::unordered_map<std::uint32_t, Read> held_;
    std::uint32_t next_id_ = 0;
    std::unique_ptr<Decryptor> decryptor_;  // last: destroyed first, as its threads write the reads' memory
#endif
};

}  // namespace instanttensor::pipeline
