// tests/support/in_process_group.hpp: a GroupTransport of N threads sharing host memory, so that the
// split-and-exchange logic of group loads runs on a machine without GPUs.
//
// Each rank posts its operations (window exchanges and gathers) in order; once every rank posted
// an operation, each rank copies what it receives straight out of the readers' buffers (as NCCL's
// kernels would), and the operation is done once every rank copied. It is strict where NCCL would
// hang or corrupt silently: ranks that disagree on an operation, or on the sends between two of
// them (a send is matched with the receive its receiver posted, in order, as in an NCCL group),
// which the loader's plan digest should have caught first, fail; bytes a rank receives are
// counted. One liberty it takes that NCCL does not: a rank that aborts fails its peers at once,
// because they copy out of its buffers, which it is about to free (process_group.hpp models NCCL
// without it: separate processes, which learn of a peer's abort only by the loader's protocol).
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/pipeline/group_plan.hpp"

namespace instanttensor_test {

/// What the ranks of one group share.
class InProcessGroup {
public:
    explicit InProcessGroup(int ranks) : ranks_(ranks), received_(static_cast<std::size_t>(ranks), 0) {}
    [[nodiscard]] int ranks() const noexcept { return ranks_; }
    /// Bytes rank r received so far.
    [[nodiscard]] std::uint64_t received(int rank) {
        std::lock_guard lock(mutex_);
        return received_[static_cast<std::size_t>(rank)];
    }

private:
    friend class InProcessTransport;

    /// One operation, as every rank posted it: a window exchange or a gather.
    struct Round {
        bool gather = false;                                          // as the first rank posted it
        std::vector<std::byte*> buffers;                              // by rank
        std::vector<std::vector<instanttensor::Transfer>> transfers;  // by rank, as each posted them
        std::vector<std::uint64_t> values;                            // a gather's, by rank
        instanttensor::WindowExchange exchange;                       // as the first rank posted it
        int posted = 0;
        int copied = 0;
    };

    Round& round(std::uint64_t ticket) {
        const auto n = static_cast<std::size_t>(ranks_);
        while (rounds_.size() <= ticket)
            rounds_.push_back({false, std::vector<std::byte*>(n), std::vector<std::vector<instanttensor::Transfer>>(n),
                               std::vector<std::uint64_t>(n), {}, 0, 0});
        return rounds_[ticket];
    }

    const int ranks_;
    std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<Round> rounds_;  // a deque: a round's address holds while others are added
    std::vector<std::uint64_t> received_;
    int copying_ = 0;       // ranks copying out of others' buffers right now
    std::string failure_;   // set once a rank gave up or the ranks disagreed
};

/// One rank's handle on an InProcessGroup.
class InProcessTransport {
public:
    static constexpr instanttensor::MemoryKind memory = instanttensor::MemoryKind::host;

    InProcessTransport(InProcessGroup& group, int rank) : group_(&group), rank_(rank) {}

    [[nodiscard]] int rank() const noexcept { return rank_; }
    [[nodiscard]] int size() const noexcept { return group_->ranks(); }

    std::uint64_t exchange(std::byte* window, const instanttensor::WindowExchange& x) {
        std::lock_guard lock(group_->mutex_);
        fail_if_failed();
        auto& round = post(false);
        round.buffers[static_cast<std::size_t>(rank_)] = window;
        auto& mine = round.transfers[static_cast<std::size_t>(rank_)];
        mine.assign(x.transfers.begin(), x.transfers.end());
        if (round.posted == 1) {
            round.exchange = x;
            round.exchange.transfers = mine;
        } else if (!same_collective(round.exchange, x)) {
            disagree(next_ - 1, "rank " + std::to_string(rank_) + " differs");
        }
        return next_ - 1;
    }

    std::uint64_t gather(std::uint64_t value) {
        std::lock_guard lock(group_->mutex_);
        fail_if_failed();
        post(true).values[static_cast<std::size_t>(rank_)] = value;
        return next_ - 1;
    }

    /// Copies this rank's receives of every operation up to `ticket` whose ranks all posted it;
    /// true once every rank copied them.
    bool done(std::uint64_t ticket) {
        std::unique_lock lock(group_->mutex_);
        fail_if_failed();
        for (; copied_ <= ticket; ++copied_) {
            auto& round = group_->round(copied_);
            if (round.posted < size()) return false;
            fail_if_failed();  // a peer that gave up may have freed its buffers
            if (!round.gather && round.exchange.mode == instanttensor::ExchangeMode::sends) check_sends_match(round, copied_);
            ++group_->copying_;
            lock.unlock();
            const std::uint64_t bytes = round.gather ? 0 : receive(round);  // peers keep their buffers until every rank copied
            lock.lock();
            --group_->copying_;
            ++round.copied;
            group_->received_[static_cast<std::size_t>(rank_)] += bytes;
            group_->changed_.notify_all();
        }
        return group_->rounds_[ticket].copied == size();
    }

    /// Every rank's value of gather `ticket`, once done(ticket).
    std::vector<std::uint64_t> gathered(std::uint64_t ticket) {
        std::lock_guard lock(group_->mutex_);
        return group_->rounds_[ticket].values;
    }

    /// The peers fail from now on; returns once none copies out of this rank's buffers.
    void abort() noexcept {
        std::unique_lock lock(group_->mutex_);
        if (group_->failure_.empty()) group_->failure_ = "rank " + std::to_string(rank_) + " aborted";
        group_->changed_.notify_all();
        group_->changed_.wait(lock, [&] { return group_->copying_ == 0; });
    }

private:
    static bool same(const instanttensor::Transfer& p, const instanttensor::Transfer& q) {
        return p.from == q.from && p.to == q.to && p.offset == q.offset && p.length == q.length && p.source == q.source;
    }

    /// Whether two ranks posted the same collective. Sends differ by rank (each posts its own);
    /// they are matched pairwise by check_sends_match.
    static bool same_collective(const instanttensor::WindowExchange& a, const instanttensor::WindowExchange& b) {
        if (a.mode != b.mode || a.segment != b.segment || a.bytes != b.bytes) return false;
        if (a.mode == instanttensor::ExchangeMode::sends) return true;
        return std::equal(a.transfers.begin(), a.transfers.end(), b.transfers.begin(), b.transfers.end(),
                          [](const auto& p, const auto& q) { return same(p, q); });
    }

    /// Every send to this rank is matched, in order, by the receive this rank posted for it.
    void check_sends_match(const InProcessGroup::Round& round, std::uint64_t ticket) const {
        const auto& mine = round.transfers[static_cast<std::size_t>(rank_)];
        for (int peer = 0; peer < size(); ++peer) {
            if (peer == rank_) continue;
            auto between = [&](const std::vector<instanttensor::Transfer>& posted) {
                std::vector<instanttensor::Transfer> out;
                for (const auto& t : posted)
                    if (t.from == peer && t.to == rank_) out.push_back(t);
                return out;
            };
            const auto sent = between(round.transfers[static_cast<std::size_t>(peer)]), received = between(mine);
            if (!std::equal(sent.begin(), sent.end(), received.begin(), received.end(), [](const auto& p, const auto& q) { return same(p, q); }))
                disagree(ticket, "rank " + std::to_string(peer) + " sends what rank " + std::to_string(rank_) + " does not receive");
        }
    }

    /// Posts this rank's next operation (a gather or an exchange); the lock is held.
    InProcessGroup::Round& post(bool gather) {
        auto& round = group_->round(next_++);
        if (round.posted == 0) round.gather = gather;
        else if (round.gather != gather) disagree(next_ - 1, "rank " + std::to_string(rank_) + (gather ? " gathers" : " exchanges"));
        ++round.posted;
        group_->changed_.notify_all();
        return round;
    }

    [[noreturn]] void disagree(std::uint64_t ticket, const std::string& how) const {
        group_->failure_ = "the ranks disagree on exchange " + std::to_string(ticket) + " (" + how +
                           "): do they load the same checkpoint with the same options?";
        group_->changed_.notify_all();
        throw instanttensor::nccl_error("in-process group", group_->failure_);
    }

    void fail_if_failed() const {
        if (!group_->failure_.empty()) throw instanttensor::nccl_error("in-process group", group_->failure_);
    }

    /// Copies what this rank receives in `round` into its own buffer; returns the bytes.
    std::uint64_t receive(const InProcessGroup::Round& round) const {
        using instanttensor::ExchangeMode;
        std::byte* mine = round.buffers[static_cast<std::size_t>(rank_)];
        auto copy_from = [&](int peer, std::uint64_t offset, std::uint64_t length, std::uint64_t source) {
            std::memcpy(mine + offset, round.buffers[static_cast<std::size_t>(peer)] + source, length);
            return length;
        };
        std::uint64_t bytes = 0;
        const auto& x = round.exchange;
        switch (x.mode) {
        case ExchangeMode::none: break;
        case ExchangeMode::all_gather:
            for (int peer = 0; peer < size(); ++peer)
                if (peer != rank_) bytes += copy_from(peer, x.segment * static_cast<std::uint64_t>(peer), x.segment, x.segment * static_cast<std::uint64_t>(peer));
            break;
        case ExchangeMode::broadcasts:
            for (const auto& t : x.transfers)
                if (t.from != rank_) bytes += copy_from(t.from, t.offset, t.length, t.offset);
            break;
        case ExchangeMode::sends:
            for (const auto& t : round.transfers[static_cast<std::size_t>(rank_)])
                if (t.to == rank_) bytes += copy_from(t.from, t.offset, t.length, t.source);
            break;
        }
        return bytes;
    }

    InProcessGroup* group_;
    int rank_;
    std::uint64_t next_ = 0;    // the next operation this rank starts
    std::uint64_t copied_ = 0;  // operations below this one this rank copied
};

static_assert(instanttensor::GroupTransport<InProcessTransport>);

}  // namespace instanttensor_test
