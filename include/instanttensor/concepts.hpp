// instanttensor/concepts.hpp: the three policies a Loader<Storage, Transport, Sink> is made of.
//
// A loader reads the checkpoint's bytes through a StorageBackend into staging memory, lets the
// Transport decide which rank reads what (and a GroupTransport exchange the rest), and hands the
// bytes to a Sink that owns their destination. Each policy is a concept checked at compile time;
// models opt in by providing the expressions documented below. No virtual calls: the loader is
// instantiated for the exact types. The last two concepts say which compositions make sense.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"
#include "instanttensor/pipeline/group_plan.hpp"
#include "instanttensor/pipeline/plan.hpp"

namespace instanttensor {

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
/// Optional: s.register_memory(span), called once after open with the memory reads land in (a
/// backend may pin or register it). Destroying a backend waits for reads still in flight, so their
/// destinations may be freed after.
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
///   t.rank(), t.size()   this rank and the group size
///   T::memory            MemoryKind of the memory the transport moves bytes in: device for one
///                        that exchanges between GPUs (NCCL), so that a composition with a host
///                        sink is refused at compile time; host for one that exchanges nothing
template <class T>
concept Transport = requires(const T& t) {
    { t.rank() } -> std::convertible_to<int>;
    { t.size() } -> std::convertible_to<int>;
    { T::memory } -> std::convertible_to<MemoryKind>;
};

/// GroupTransport: a Transport that exchanges the bytes of each window of a group load (see
/// pipeline/group_plan.hpp); transport::single is not one, it loads alone. Its operations are
/// asynchronous, as NCCL's are: each is started, gets a ticket (0, 1, 2, ... in the order they were
/// started), and completes later. Every rank starts the same operations in the same order; the
/// group pipeline's protocol (pipeline/group.hpp) guarantees it, also when a rank fails.
///
///   t.device()                   (device memory only) the CUDA device of this rank
///   t.exchange(window, x)        starts window exchange `x` over this rank's window buffer, which
///                                must stay valid until the exchange completed; returns its ticket
///   t.gather(value)              starts an all-gather of one 64-bit value per rank; returns its ticket
///   t.done(ticket)               whether operation `ticket` (and every earlier one) completed here;
///                                throws nccl_error when the transport failed (an NCCL error, a peer
///                                that aborted its communicator, ranks that posted different operations)
///   t.gathered(ticket)           once done(ticket) for a gather: every rank's value, by rank
///   t.abort()                    ends every operation in flight here at once, complete or not, so
///                                that their buffers may be freed; the transport is unusable after,
///                                and the peers are not told (they find out by their deadline)
template <class T>
concept GroupTransport =
    Transport<T> && requires(T& t, std::byte* window, const WindowExchange& x, std::uint64_t ticket) {
        { t.exchange(window, x) } -> std::same_as<std::uint64_t>;
        { t.gather(ticket) } -> std::same_as<std::uint64_t>;
        { t.done(ticket) } -> std::same_as<bool>;
        { t.gathered(ticket) } -> std::same_as<std::vector<std::uint64_t>>;
        t.abort();
    } && (T::memory == MemoryKind::host || requires(const T& t) {
        { t.device() } -> std::convertible_to<int>;
    });

/// Sink: owns where tensors land and says how long a yielded view stays valid.
///
///   K::memory                  MemoryKind of the destinations
///   k.prepare(plan)            called once before loading; allocates the sink's ring (if it has
///                              one), which must hold plan.ring_needed(granularity) (throws
///                              usage_error when it cannot)
///   k.reserve(tensor, bytes)   a destination of `bytes` bytes for `tensor` (all of its bytes, or in
///                              a group load the rows this rank keeps), or an empty span while the
///                              ring is full (the loader then waits for the consumer)
///   k.store(destination, staged, bytes)  copies `bytes` staged bytes to destination (from host
///                              memory, or from device memory when the storage or transport is there)
///   k.release(tensor)          the consumer moved past `tensor`; its space may be reused
///
/// The loader reserves and releases in tensor order, and never reserves 0 bytes.
template <class K>
concept Sink = requires(K& k, const Plan& plan, const format::TensorRef& tensor, std::uint64_t size,
                        std::byte* destination, const std::byte* staged) {
    { K::memory } -> std::convertible_to<MemoryKind>;
    k.prepare(plan);
    { k.reserve(tensor, size) } -> std::same_as<std::span<std::byte>>;
    k.store(destination, staged, size);
    k.release(tensor);
};

/// A Sink whose store() only queues the copy (the device sinks: cudaMemcpyAsync from pinned
/// staging) also models CopiesAsynchronously, so that the loader reuses a staging slot or window
/// buffer only after the copies out of it ran, and yields a tensor only once its copies did:
///
///   k.prepare_copies(tickets)  called once before loading, with how many copy tickets the loader
///                              may hold unfinished at once (one per staging slot, and in a group
///                              load two per window buffer): a sizing hint
///   k.extent_stored()          after the pieces of one read (or window) were stored: a ticket for
///                              their copies; tickets are issued in order
///   k.copies_done(ticket)      whether the copies up to that ticket ran
///   k.wait_copies(ticket)      blocks until they did
template <class K>
concept CopiesAsynchronously = requires(K& k, std::size_t tickets, std::uint64_t ticket) {
    k.prepare_copies(tickets);
    { k.extent_stored() } -> std::same_as<std::uint64_t>;
    { k.copies_done(ticket) } -> std::same_as<bool>;
    k.wait_copies(ticket);
};

/// A Sink whose destinations all lie in one buffer of its own (a ring) says so with
/// `static constexpr bool one_buffer = true`: the loader may then merge the stores of adjacent
/// pieces into one where both their staged bytes and their destinations are adjacent, as runs of
/// small tensors whose sizes are multiples of the ring's alignment are (one cudaMemcpyAsync instead
/// of hundreds). A sink of memory it does not own must not: two of the caller's allocations may
/// happen to be adjacent, and CUDA does not promise one copy across two allocations.
template <class K>
concept OneBuffer = requires {
    requires K::one_buffer;
};

/// The storage reads into memory the sink can take: a backend that writes device memory (GDS)
/// needs a device sink.
template <class S, class K>
concept ReadsIntoSinkMemory = S::destination == MemoryKind::host || K::memory == MemoryKind::device;

/// A transport that moves bytes between GPUs (NCCL) needs a device sink.
template <class T, class K>
concept TransportFitsSink = T::memory == MemoryKind::host || K::memory == MemoryKind::device;

}  // namespace instanttensor
