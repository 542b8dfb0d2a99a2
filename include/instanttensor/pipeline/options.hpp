// instanttensor/pipeline/options.hpp: what a load is asked to do (LoadOptions) and what it did
// (LoadStats). Both pipelines read the one and fill the other; the Loader hands them to the caller.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>

#include "instanttensor/format/digests.hpp"
#include "instanttensor/pipeline/plan.hpp"
#include "instanttensor/pipeline/share.hpp"

namespace instanttensor::format {
class Key;  // format/encryption.hpp, in a build with libsodium and OpenSSL
}

namespace instanttensor {

/// Knobs of a load. The defaults were measured best for loading to an H100 from the page cache
/// (docs/benchmarks.md): 32 slots of 4 MiB. Larger staging was slower there, not faster: a slot
/// that the kernel just filled is still in the CPU caches when the copy engine reads it.
struct LoadOptions {
    TensorFilter filter;                        ///< tensors to load; empty = all
    std::uint64_t staging_bytes = 128ull << 20; ///< total staging memory: whole slots, two at least
    std::uint64_t slot_bytes = 4ull << 20;      ///< one slot = the largest single read
    /// Expected digests (format/digests.hpp: a manifest, or TensorDigests::sealed): each tensor is
    /// yielded only once its bytes match; integrity_error names the first that does not. Single
    /// loads of whole tensors, from a storage that reads host memory (not GDS).
    std::optional<format::TensorDigests> verify;
    /// Expected SHA-256 of whole files (format/digests.hpp: a manifest as `sha256sum` writes it, or
    /// the Hub's LFS object ids): each file is read whole, header included, and hashed as it lands;
    /// a tensor is yielded once hashed, a file's last one only once the file's SHA-256 matches, and
    /// the load ends only once every file's does (integrity_error names the file and both digests).
    /// Single loads of every tensor, from a storage that reads host memory; not with a key (an
    /// encrypted checkpoint's chunks are authenticated already). Needs libsodium and OpenSSL.
    std::optional<format::FileDigests> verify_files;
    unsigned verify_threads = 0;                ///< threads digesting for verify and verify_files; 0 = default_verify_threads()
    /// The key of an encrypted checkpoint (format/encryption.hpp): every chunk is authenticated and
    /// decrypted before its bytes are stored; a chunk that fails is an integrity_error. Needed for an
    /// encrypted checkpoint, refused for a plain one. From a storage that reads host memory (not
    /// GDS); in a group load each rank decrypts what it reads, before the exchange.
    std::shared_ptr<const format::Key> key;
    unsigned decrypt_threads = 0;               ///< threads decrypting; 0 = default_decrypt_threads()

    // Group loads only (a GroupTransport); every rank must pass the same values.
    ShareFunction share;                        ///< what each rank keeps (pipeline/share.hpp); empty = everything
    std::uint64_t window_bytes = 128ull << 20;  ///< bytes the group reads, then exchanges, at a time
    unsigned windows = 3;                       ///< window buffers: reading, exchanging, landing overlap
    /// How long a rank waits for the group without any of its operations completing before it
    /// gives up on its peers (one died, hangs, or stopped without telling): it then aborts its
    /// transport and fails with nccl_error. Waiting on a peer's consumer counts: give slow consumers room.
    std::chrono::milliseconds group_timeout = std::chrono::minutes(10);
};

/// Where a load's time went, in seconds, to find what bounds it. `consumer` is the caller's own
/// time between tensors; the others count the rest (LoadStats::seconds less `consumer`), single
/// loads alone (a group load leaves them 0), and overlap: storage, copies and the loader's thread
/// work at once, and each says how long one part of the pipeline was idle or full
/// (pipeline/timeline.hpp).
struct LoadTimes {
    double consumer = 0;      ///< the caller held the loader's thread between tensors
    double landing = 0;       ///< the loader's thread stored landed reads: a host sink's copies, a device sink's queuing of them
    double storage_idle = 0;  ///< bytes were left to read, none in flight: the storage had nothing to do
    double copies_idle = 0;   ///< asynchronous sinks (a GPU's): no copy queued or running, as far as the loader's thread saw
                              ///< (a verified load's slots count as copying until digested too)
    double staging_full = 0;  ///< bytes were left to read, every staging slot held a read or its copies
    double queue_full = 0;    ///< bytes were left to read, a slot free, and the storage had all the reads in flight it takes
    double sink_full = 0;     ///< bytes were left to read, a slot free, and the sink had no room for them (the consumer holds it)
};

/// What a load did, for reports.
struct LoadStats {
    std::uint64_t tensors = 0;        ///< tensors yielded so far
    std::uint64_t tensor_bytes = 0;   ///< their bytes
    std::uint64_t read_bytes = 0;     ///< bytes read from storage (alignment included)
    std::uint64_t in_place_bytes = 0; ///< single loads: bytes read straight into their tensors' destinations, not copied from staging
    std::uint64_t reads = 0;          ///< read requests submitted (continuations included)
    std::uint64_t retries = 0;        ///< EINTR/EAGAIN retries, short-read continuations, and requests a remote
                                      ///< storage sent again after a transient failure (a reset, 5xx, 429)
    std::uint64_t staging_bytes = 0;  ///< staging memory allocated
    std::uint64_t verified = 0;       ///< tensors whose digest matched (LoadOptions::verify)
    std::uint64_t verified_files = 0; ///< files whose SHA-256 matched (LoadOptions::verify_files), once the load ended
    std::uint64_t received_bytes = 0; ///< group loads: bytes this rank receives from the others (whole load)
    std::uint64_t window_memory = 0;  ///< group loads: bytes of the window buffers (transport's memory)
    double seconds = 0;               ///< from begin() to the last tensor
    LoadTimes times;                  ///< where those seconds went
};

}  // namespace instanttensor
