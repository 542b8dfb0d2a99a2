// tests/support/faulty.hpp: a storage backend wrapper that injects read faults (short reads,
// EAGAIN, EINTR, EIO) at chosen requests, for the fault and fallback tests.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <string_view>

#include "instanttensor/concepts.hpp"

namespace instanttensor_test {

namespace fmt = instanttensor::format;

/// What to do to which reads.
struct Fault {
    enum Kind { none, short_read, eagain, eintr, eio } kind = none;
    std::uint64_t first = 1;          ///< first request (1-based, continuations and retries counted) to fault
    std::uint64_t count = 1;          ///< how many consecutive requests to fault
    std::uint64_t short_length = 0;   ///< short_read: bytes passed on to the inner backend (0: half, aligned)
};

/// A storage backend that forwards to `Inner` but faults the requests `Fault` names: a short read
/// passes only part of the length on; EAGAIN, EINTR and EIO complete at once without reading.
template <instanttensor::StorageBackend Inner>
class Faulty {
public:
    static constexpr instanttensor::MemoryKind destination = Inner::destination;

    Faulty(Inner inner, Fault fault) : inner_(std::move(inner)), fault_(fault) {}
    Faulty(Faulty&& other) noexcept : inner_(std::move(other.inner_)), fault_(other.fault_) {}

    void open(const fmt::Checkpoint& checkpoint) { inner_.open(checkpoint); }
    [[nodiscard]] std::uint64_t alignment(std::uint32_t file) const { return inner_.alignment(file); }
    [[nodiscard]] std::size_t queue_depth() const { return inner_.queue_depth(); }
    [[nodiscard]] std::string_view name() const { return "faulty"; }
    void register_memory(std::span<std::byte> memory)
        requires requires(Inner& i) { i.register_memory(memory); }
    {
        inner_.register_memory(memory);
    }

    void submit(const instanttensor::ReadRequest& request) {
        ++requests_;
        const bool faulted =
            fault_.kind != Fault::none && requests_ >= fault_.first && requests_ < fault_.first + fault_.count;
        if (!faulted) return inner_.submit(request);
        if (!first_fault_) first_fault_ = request;
        ++faults_;
        switch (fault_.kind) {
        case Fault::short_read: {
            instanttensor::ReadRequest part = request;
            const std::uint64_t a = inner_.alignment(request.file);
            part.length = fault_.short_length != 0 ? std::min(fault_.short_length, request.length)
                                                   : std::max(a, request.length / 2 / a * a);
            inner_.submit(part);
            return;
        }
        case Fault::eagain: injected_.push_back({request.tag, -EAGAIN}); return;
        case Fault::eintr: injected_.push_back({request.tag, -EINTR}); return;
        case Fault::eio: injected_.push_back({request.tag, -EIO}); return;
        case Fault::none: break;
        }
    }

    std::size_t reap(std::span<instanttensor::ReadResult> out, bool wait) {
        if (injected_.empty()) return inner_.reap(out, wait);
        std::size_t n = 0;
        while (n < out.size() && !injected_.empty()) {
            out[n++] = injected_.front();
            injected_.pop_front();
        }
        return n + inner_.reap(out.subspan(n), false);
    }

    [[nodiscard]] const Inner& inner() const noexcept { return inner_; }
    [[nodiscard]] std::uint64_t requests() const noexcept { return requests_; }
    [[nodiscard]] std::uint64_t faults() const noexcept { return faults_; }
    [[nodiscard]] const std::optional<instanttensor::ReadRequest>& first_fault() const noexcept { return first_fault_; }

private:
    Inner inner_;
    Fault fault_;
    std::deque<instanttensor::ReadResult> injected_;
    std::uint64_t requests_ = 0;
    std::uint64_t faults_ = 0;
    std::optional<instanttensor::ReadRequest> first_fault_;
};

}  // namespace instanttensor_test
