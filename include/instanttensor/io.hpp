// instanttensor/io.hpp: what every storage backend speaks: where memory lives, one read and what
// became of it, and how the page cache is treated. It depends on nothing else of the library, so a
// storage backend depends on no planner.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

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
/// or a negative errno. Retrying and continuing is the pipeline's job, not the backend's.
struct ReadResult {
    std::uint64_t tag = 0;
    std::int64_t result = 0;
};

/// How remote files are read (storage::http): requests in flight, and what happens when the network
/// or the server falters.
struct RemoteOptions {
    unsigned connections = 16;         ///< ranged GETs in flight (one staging slot each)
    unsigned tries = 5;                ///< attempts of a request failing transiently (reset, timeout, 5xx, 429)
    unsigned first_backoff_ms = 100;   ///< pause before the second attempt; it doubles after each, up to 10 s
    unsigned connect_timeout_s = 10;   ///< to establish a connection, TLS included
    unsigned stall_timeout_s = 30;     ///< a response moving under 1 KiB/s this long fails (and is tried again)
};

/// The staging (LoadOptions::staging_bytes) a remote load of reads up to `slot_bytes` wants: each
/// GET in flight holds a staging slot, even one received straight into its tensor, so staging
/// under connections × slot_bytes leaves connections idle; twice that lets as many bodies land
/// as are in flight. At the defaults, 2 × 16 × 4 MiB: LoadOptions' default of 128 MiB.
[[nodiscard]] constexpr std::uint64_t remote_staging_bytes(const RemoteOptions& remote, std::uint64_t slot_bytes) noexcept {
    return 2ull * remote.connections * slot_bytes;
}

/// How a backend is asked to treat the page cache.
enum class DirectIo {
    automatic,  ///< O_DIRECT for files mostly not in the page cache, buffered for resident ones
    on,         ///< O_DIRECT wherever the filesystem accepts it
    off,        ///< always buffered
};

/// The policy's name as the command line and the Python package spell it ("auto", "on", "off").
constexpr std::string_view to_string(DirectIo d) noexcept {
    switch (d) {
    case DirectIo::automatic: return "auto";
    case DirectIo::on: return "on";
    case DirectIo::off: return "off";
    }
    return "?";
}

/// The DirectIo a name stands for, or nullopt.
constexpr std::optional<DirectIo> parse_direct_io(std::string_view name) noexcept {
    for (auto d : {DirectIo::automatic, DirectIo::on, DirectIo::off})
        if (to_string(d) == name) return d;
    return std::nullopt;
}

}  // namespace instanttensor
