// instanttensor/pipeline/group_link.hpp: one rank's link to its group (pipeline::Group's): the
// operations it started on a GroupTransport, which of them completed, the deadline on waiting for
// them, and the abort.
//
// Every operation goes through here, so that a transport that throws is aborted at once (it is in
// an unknown state, and its operations may still run over buffers about to be freed), and no wait
// lasts LoadOptions::group_timeout without an operation completing. What the operations are, and
// in which order every rank starts them, is pipeline/group.hpp's protocol; the words of its status
// rounds are StatusWord.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/pipeline/group_plan.hpp"

namespace instanttensor::detail {

/// What a rank says in a status round of a group load: ok, or that it stops.
enum class RankState : std::uint64_t { ok = 0, failed = 1, left = 2 };

/// A status round's word: the state in the top two bits, a value (the plan's digest, or the
/// window) in the other 62.
struct StatusWord {
    static constexpr std::uint64_t value_mask = (std::uint64_t{1} << 62) - 1;
    static constexpr std::uint64_t make(RankState state, std::uint64_t value) noexcept {
        return (static_cast<std::uint64_t>(state) << 62) | (value & value_mask);
    }
    static constexpr RankState state(std::uint64_t word) noexcept { return static_cast<RankState>(word >> 62); }
    static constexpr std::uint64_t value(std::uint64_t word) noexcept { return word & value_mask; }
};

}  // namespace instanttensor::detail

namespace instanttensor::pipeline {

template <GroupTransport Tr>
class GroupLink {
    using Clock = std::chrono::steady_clock;

public:
    GroupLink(Tr transport, std::chrono::milliseconds timeout) : transport_(std::move(transport)), timeout_(timeout) {}

    [[nodiscard]] const Tr& transport() const noexcept { return transport_; }
    [[nodiscard]] int rank() const { return transport_.rank(); }

    /// Starts a window's exchange; returns its ticket.
    std::uint64_t exchange(std::byte* window, const WindowExchange& x) {
        return start([&] { return transport_.exchange(window, x); });
    }
    /// Starts a status round (a gather of one word per rank); returns its ticket.
    std::uint64_t gather(std::uint64_t word) {
        return start([&] { return transport_.gather(word); });
    }

    /// Whether operation `ticket` completed.
    bool completed(std::uint64_t ticket) {
        if (ticket < completed_) return true;
        if (!guarded([&] { return transport_.done(ticket); })) return false;
        completed_ = ticket + 1;
        waiting_since_ = Clock::now();
        return true;
    }
    /// Every rank's word of status round `ticket`, once it completed.
    std::vector<std::uint64_t> gathered(std::uint64_t ticket) {
        return guarded([&] { return transport_.gathered(ticket); });
    }

    /// Whether an operation started has not completed yet.
    [[nodiscard]] bool pending() const noexcept { return completed_ < started_; }
    /// The ticket of the last operation started (when one was).
    [[nodiscard]] std::uint64_t last() const noexcept { return started_ - 1; }

    /// Starts the deadline's clock again: time this rank spent away (its consumer's) is not
    /// time it waited for the group.
    void restart_clock() noexcept { waiting_since_ = Clock::now(); }

    /// Waits for operation `ticket` within the deadline (see check_deadline).
    template <class Where>
    void wait_for(std::uint64_t ticket, const char* what, Where where) {
        while (!completed(ticket)) {
            check_deadline(what, where);
            std::this_thread::yield();
        }
    }

    /// No operation completed for LoadOptions::group_timeout: a peer died, hangs, or stopped without
    /// telling, and nothing that is waited for will come. Aborts the transport, so that the buffers
    /// its operations use can be freed, and throws nccl_error saying what this rank waited for
    /// (`what`) and where the load stood (`where()`).
    template <class Where>
    void check_deadline(const char* what, Where where) {
        if (Clock::now() - waiting_since_ < timeout_) return;
        abort();
        const auto ms = timeout_.count();
        throw nccl_error("group", "rank " + std::to_string(transport_.rank()) + " waited " + std::to_string(ms / 1000) + "." +
                                      std::to_string(ms % 1000 / 100) + " s for " + what + std::string(where()) +
                                      " and nothing completed: a peer died, hangs, or stopped without telling "
                                      "(LoadOptions::group_timeout); the transport was aborted");
    }

    /// Ends every operation in flight (GroupTransport::abort); nothing is started after.
    void abort() noexcept {
        if (aborted_) return;
        aborted_ = true;
        transport_.abort();
    }
    [[nodiscard]] bool aborted() const noexcept { return aborted_; }

private:
    template <class Call>
    std::uint64_t start(Call call) {
        if (aborted_) throw nccl_error("group", "the transport was aborted");
        if (!pending()) waiting_since_ = Clock::now();
        const std::uint64_t ticket = guarded(call);
        started_ = ticket + 1;
        return ticket;
    }

    /// Calls the transport; one that throws is aborted before the exception goes on.
    template <class Call>
    auto guarded(Call call) {
        try {
            return call();
        } catch (...) {
            abort();
            throw;
        }
    }

    Tr transport_;
    std::chrono::milliseconds timeout_;
    std::uint64_t started_ = 0;    // operations started: tickets [0, started_)
    std::uint64_t completed_ = 0;  // tickets below this one completed
    Clock::time_point waiting_since_ = Clock::now();  // since the last operation completed (or the first started)
    bool aborted_ = false;
};

}  // namespace instanttensor::pipeline
