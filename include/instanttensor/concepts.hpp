// instanttensor/concepts.hpp: the three policies a Loader<Storage, Transport, Sink> is made of.
//
// A loader reads the checkpoint's bytes through a StorageBackend into staging memory, lets the
// Transport decide which rank reads what, and hands the bytes to a Sink that owns their
// destination. Each policy is a concept checked at compile time; models opt in by providing the
// expressions documented below. No virtual calls: the loader is instantiated for the exact types.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/group_plan.hpp"
#include "instanttensor/plan.hpp"

namespace instanttensor {

/// Where a piece of memory lives.
enum class MemoryKind { host, device };

/// One read a storage backend performs: `length` bytes of file `file` at `offset` into `destination`.
/// For a file the backend opened with O_DIRECT, offset, length and destination are multiples of
/// `alignment(file)`.
struct ReadRequest {
    std::uint32_t file = 0;
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    std::byte* destination = nullptr;
    std::uint64_t tag = 0;  ///< returned unchanged in the ReadResult
};

/// What became of a ReadRequest: bytes read (fewer than asked is a short read; 0 is end of file),
/// or a negative errno. Retrying and continuing is the loader's job, not the backend's.
struct ReadResult {
    std::uint64_t tag = 0;
    std::int64_t result = 0;
};

/// How a backend is asked to treat the page cache.
enum class DirectIo {
    automatic,  ///< O_DIRECT for files mostly not in the page cache, buffered for resident ones
    on,         ///< O_DIRECT wherever the filesystem accepts it
    off,        ///< always buffered
};

/// StorageBackend: reads byte ranges of a checkpoint's files into caller memory, asynchronously.
///
///   S::destination          MemoryKind: where `ReadRequest::destination` points (host or device)
///   s.open(checkpoint)      opens every file of the checkpoint; throws io_error / unavailable_error
///   s.alignment(file)       required alignment of offset, length and address for that file (1 if none)
///   s.queue_depth()         reads the backend accepts in flight at once
///   s.submit(request)       starts a read; at most queue_depth() may be in flight
///   s.reap(results, wait)   stores finished reads into `results`, returns how many; with `wait`,
///                           blocks until at least one finished (when any is in flight)
///   s.name()                "uring", "pread", ... for reports
///
/// Destroying a backend waits for reads still in flight, so their destinations may be freed after.
template <class S>
concept StorageBackend =
    requires(S& s, const S& cs, const format::Checkpoint& checkpoint, const ReadRequest& request,
             std::span<ReadResult> results, std::uint32_t file, bool wait) {
        { S::destination } -> std::convertible_to<MemoryKind>;
        s.open(checkpoint);
        { cs.alignment(file) } -> std::convertible_to<std::uint64_t>;
        { cs.queue_depth() } -> std::convertible_to<std::size_t>;
        s.submit(request);
        { s.reap(results, wait) } -> std::convertible_to<std::size_t>;
        { cs.name() } -> std::convertible_to<std::string_view>;
    };

/// Transport: the group of ranks that load one checkpoint together.
///
///   t.rank(), t.size()      this rank and the group size
///   T::needs_device_memory  true when the transport moves bytes between GPUs (NCCL), so a
///                           composition with a host sink is refused at compile time
template <class T>
concept Transport = requires(const T& t) {
    { t.rank() } -> std::convertible_to<int>;
    { t.size() } -> std::convertible_to<int>;
    { T::needs_device_memory } -> std::convertible_to<bool>;
};

/// GroupTransport: a Transport that exchanges the bytes of each window of a group load (see
/// group_plan.hpp); transport::single is not one, it loads alone.
///
///   T::memory                    MemoryKind of the window buffers it exchanges
///   t.device()                   (device memory only) the CUDA device of this rank
///   t.exchange(window, x)        starts window exchange `x` over this rank's window buffer and
///                                returns a ticket; every rank starts the same exchanges in the
///                                same order, each over its own buffer
///   t.exchange_done(ticket)      whether that exchange (and every earlier one) completed here;
///                                throws when the group failed (a peer stopped, an NCCL error)
///   t.abandon()                  this rank stops before the end of the load: peers must not wait
///                                for it forever; returns once nothing more touches its buffers
///   t.gather(value)              every rank's `value`, by rank (a blocking all-gather; the loader
///                                checks with it that every rank planned the same load)
template <class T>
concept GroupTransport =
    Transport<T> && requires(T& t, std::byte* window, const WindowExchange& x, std::uint64_t ticket) {
        { T::memory } -> std::convertible_to<MemoryKind>;
        { t.gather(ticket) } -> std::same_as<std::vector<std::uint64_t>>;
        { t.exchange(window, x) } -> std::same_as<std::uint64_t>;
        { t.exchange_done(ticket) } -> std::same_as<bool>;
        t.abandon();
    } && (T::memory == MemoryKind::host || requires(const T& t) {
        { t.device() } -> std::convertible_to<int>;
    });

/// Sink: owns where tensors land and says how long a yielded view stays valid.
///
///   K::memory                  MemoryKind of the destinations
///   k.prepare(plan)            called once before loading; allocates the destination window, which
///                              must hold plan.window_needed(granularity) (throws when it cannot)
///   k.reserve(tensor, bytes)   a destination of `bytes` bytes for `tensor` (all of its bytes, or in
///                              a group load the rows this rank keeps), or an empty span while the
///                              window is full (the loader then waits for the consumer)
///   k.store(destination, staged, bytes)  copies `bytes` staged bytes to destination (from host
///                              memory, or from device memory when the storage or transport is there)
///   k.release(tensor)          the consumer moved past `tensor`; its window space may be reused
///
/// The loader reserves and releases in tensor order.
///
/// A sink whose store() only queues the copy (device sinks: cudaMemcpyAsync from pinned staging)
/// also models CopiesAsynchronously, so that the loader reuses a staging slot only after the copies
/// from it ran, and yields a tensor only once its copies did:
///   k.prepare_copies(slots)   called once, with the number of staging slots
///   k.extent_stored()         after the pieces of one read were stored: a ticket for their copies
///   k.copies_done(ticket)     whether the copies up to that ticket ran
///   k.wait_copies(ticket)     blocks until they did
template <class K>
concept Sink = requires(K& k, const Plan& plan, const format::TensorRef& tensor, std::uint64_t size,
                        std::byte* destination, const std::byte* staged) {
    { K::memory } -> std::convertible_to<MemoryKind>;
    k.prepare(plan);
    { k.reserve(tensor, size) } -> std::same_as<std::span<std::byte>>;
    k.store(destination, staged, size);
    k.release(tensor);
};

template <class K>
concept CopiesAsynchronously = requires(K& k, std::size_t slots, std::uint64_t ticket) {
    k.prepare_copies(slots);
    { k.extent_stored() } -> std::same_as<std::uint64_t>;
    { k.copies_done(ticket) } -> std::same_as<bool>;
    k.wait_copies(ticket);
};

}  // namespace instanttensor
