// instanttensor/storage/automatic.hpp: the host backend chosen at run time, once per open.
//
// A closed std::variant of the host backends: the choice is made when the checkpoint is opened
// and each read then dispatches on the variant's index (a switch, no virtual call). Under
// Backend::automatic it is storage::http for a remote checkpoint, else io_uring where the kernel
// allows it, else pread; `chosen()` and `fallback_reason()` report what happened. storage::gds is
// not among the alternatives, since it writes device memory and so changes the loader's type: a
// load to the GPU that may use it goes through FallbackLoader (loader.hpp; load_to_device), which
// tries GDS first and falls back to this.
#pragma once

#include <optional>
#include <string>
#include <variant>

#include "instanttensor/config.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"
#include "instanttensor/storage/http.hpp"
#include "instanttensor/storage/memory.hpp"
#include "instanttensor/storage/pread.hpp"
#include "instanttensor/storage/uring.hpp"

namespace instanttensor::storage {

/// Which backend to use. `gds` reads into device memory: only a load to the GPU takes it
/// (load_to_device); under `automatic` such a load tries it first where it can work. `http` reads
/// remote checkpoints, and is the one `automatic` takes for them.
enum class Backend { automatic, uring, pread, memory, gds, http };

/// The backend's name as the command line spells it ("auto", "uring", "pread", "memory", "gds", "http").
constexpr std::string_view to_string(Backend b) noexcept {
    switch (b) {
    case Backend::automatic: return "auto";
    case Backend::uring: return "uring";
    case Backend::pread: return "pread";
    case Backend::memory: return "memory";
    case Backend::gds: return "gds";
    case Backend::http: return "http";
    }
    return "?";
}

/// The Backend a name stands for, or nullopt.
constexpr std::optional<Backend> parse_backend(std::string_view name) noexcept {
    for (auto b : {Backend::automatic, Backend::uring, Backend::pread, Backend::memory, Backend::gds, Backend::http})
        if (to_string(b) == name) return b;
    return std::nullopt;
}

class automatic {
public:
    static constexpr MemoryKind destination = MemoryKind::host;

    struct Options {
        Backend backend = Backend::automatic;
        DirectIo direct = DirectIo::automatic;
        unsigned queue_depth = 64;   ///< io_uring reads in flight
        unsigned threads = 8;        ///< pread threads
        RemoteOptions remote{};      ///< storage::http, for a remote checkpoint
    };

    automatic() : automatic(Options{}) {}
    explicit automatic(Options options) : options_(options) {}
    automatic(automatic&& other) noexcept : options_(other.options_) {}  // unopened only, as the backends
    automatic& operator=(automatic&&) = delete;

    void open(const format::Checkpoint& checkpoint) {
        if (checkpoint.remote() && options_.backend == Backend::automatic) {
            open_http(checkpoint);
            return;
        }
        switch (options_.backend) {
        case Backend::uring: open_uring(checkpoint); break;
        case Backend::pread: open_pread(checkpoint); break;
        case Backend::memory: backend_.emplace<memory>().open(checkpoint); break;
        case Backend::http: open_http(checkpoint); break;
        case Backend::gds:
            throw usage_error("storage::automatic", "reads into host memory: GPUDirect Storage (Backend::gds) is for loads "
                                                    "to the GPU (load_to_device)");
        case Backend::automatic:
            try {
                open_uring(checkpoint);
            } catch (const unavailable_error& e) {
                fallback_reason_ = e.what();
                open_pread(checkpoint);
            }
            break;
        }
    }

    /// The backend in use after open.
    [[nodiscard]] Backend chosen() const noexcept {
        return std::visit([](const auto& b) {
            using B = std::decay_t<decltype(b)>;
            if constexpr (std::is_same_v<B, memory>) return Backend::memory;
#if INSTANTTENSOR_HAS_CURL
            else if constexpr (std::is_same_v<B, http>) return Backend::http;
#endif
            else if constexpr (std::is_same_v<B, pread>) return Backend::pread;
            else return Backend::uring;
        }, backend_);
    }
    /// Why the automatic choice did not take io_uring; empty when it did or was not asked to choose.
    [[nodiscard]] const std::string& fallback_reason() const noexcept { return fallback_reason_; }
    /// Files read with O_DIRECT (0 for the memory and http backends).
    [[nodiscard]] std::size_t direct_files() const noexcept {
        return std::visit([](const auto& b) -> std::size_t {
            if constexpr (requires { b.files(); }) return b.files().direct_count();
            else return 0;
        }, backend_);
    }

    /// Requests the backend sent again after a transient failure (a remote one's; 0 for the others).
    [[nodiscard]] std::uint64_t retries() const noexcept {
        return std::visit([](const auto& b) -> std::uint64_t {
            if constexpr (requires { b.retries(); }) return b.retries();
            else return 0;
        }, backend_);
    }

    void register_memory(std::span<std::byte> memory_region) {
        std::visit([&](auto& b) {
            if constexpr (requires { b.register_memory(memory_region); }) b.register_memory(memory_region);
        }, backend_);
    }

    [[nodiscard]] std::uint64_t alignment(std::uint32_t file) const {
        return std::visit([&](const auto& b) -> std::uint64_t { return b.alignment(file); }, backend_);
    }
    [[nodiscard]] std::size_t queue_depth() const {
        return std::visit([](const auto& b) -> std::size_t { return b.queue_depth(); }, backend_);
    }
    [[nodiscard]] std::string_view name() const noexcept { return to_string(chosen()); }
    void submit(const ReadRequest& r) {
        std::visit([&](auto& b) { b.submit(r); }, backend_);
    }
    std::size_t reap(std::span<ReadResult> out, bool wait) {
        return std::visit([&](auto& b) -> std::size_t { return b.reap(out, wait); }, backend_);
    }

private:
    void open_uring([[maybe_unused]] const format::Checkpoint& checkpoint) {
#if INSTANTTENSOR_HAS_URING
        backend_.emplace<uring>(uring::Options{options_.queue_depth, options_.direct}).open(checkpoint);
#else
        throw unavailable_error("io_uring", "this build has no liburing (configure with liburing-dev installed)");
#endif
    }
    void open_http([[maybe_unused]] const format::Checkpoint& checkpoint) {
#if INSTANTTENSOR_HAS_CURL
        backend_.emplace<http>(options_.remote).open(checkpoint);
#else
        throw unavailable_error("http", "this build has no libcurl (configure with libcurl4-openssl-dev installed)");
#endif
    }
    void open_pread(const format::Checkpoint& checkpoint) {
        backend_.emplace<pread>(pread::Options{options_.threads, options_.direct}).open(checkpoint);
    }

    Options options_;
    std::string fallback_reason_;
    using Alternatives = std::variant<pread, memory
#if INSTANTTENSOR_HAS_URING
                                      , uring
#endif
#if INSTANTTENSOR_HAS_CURL
                                      , http
#endif
                                      >;
    Alternatives backend_;  // an unopened pread until open() makes the choice
};

}  // namespace instanttensor::storage
