// tests/loader/in_process_group.hpp: a GroupTransport of N threads sharing host memory, so that the
// split-and-exchange logic of group loads runs on a machine without GPUs.
//
// Each rank posts its window buffer and the exchange it was asked for; once every rank posted the
// same round, each rank copies what it receives straight out of the readers' buffers (as NCCL's
// kernels would), and a round is done once every rank copied. It is strict where NCCL would hang
// or corrupt silently: ranks that disagree on a round's exchange (which the loader's plan digest
// should have caught first), a rank that gives up, and bytes a rank receives are all checked or
// counted.
#pragma once

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
#include "instanttensor/group_plan.hpp"

namespace loader_test {

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

    struct Round {
        std::vector<std::byte*> buffers;
        std::vector<instanttensor::Transfer> transfers;  // as the first rank posted them
        instanttensor::WindowExchange exchange;
        int posted = 0;
        int copied = 0;
    };

    Round& round(std::uint64_t ticket) {
        while (rounds_.size() <= ticket) rounds_.push_back({std::vector<std::byte*>(static_cast<std::size_t>(ranks_)), {}, {}, 0, 0});
        return rounds_[ticket];
    }

    const int ranks_;
    std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<Round> rounds_;  // a deque: a round's address holds while others are added
    std::deque<std::vector<std::pair<int, std::uint64_t>>> gathered_;  // gather() rounds: (rank, value)
    std::vector<std::uint64_t> received_;
    int copying_ = 0;       // ranks copying out of others' buffers right now
    std::string failure_;   // set once a rank gave up or the ranks disagreed
};

/// One rank's handle on an InProcessGroup.
class InProcessTransport {
public:
    static constexpr bool needs_device_memory = false;
    static constexpr instanttensor::MemoryKind memory = instanttensor::MemoryKind::host;

    InProcessTransport(InProcessGroup& group, int rank) : group_(&group), rank_(rank) {}

    [[nodiscard]] int rank() const noexcept { return rank_; }
    [[nodiscard]] int size() const noexcept { return group_->ranks(); }

    std::uint64_t exchange(std::byte* window, const instanttensor::WindowExchange& x) {
        std::lock_guard lock(group_->mutex_);
        fail_if_failed();
        auto& round = group_->round(next_);
        round.buffers[static_cast<std::size_t>(rank_)] = window;
        if (round.posted == 0) {
            round.exchange = x;
            round.transfers.assign(x.transfers.begin(), x.transfers.end());
            round.exchange.transfers = round.transfers;
        } else if (!same(round.exchange, x)) {
            group_->failure_ = "the ranks disagree on exchange " + std::to_string(next_) + " (rank " + std::to_string(rank_) +
                               " differs): do they load the same checkpoint with the same options?";
            group_->changed_.notify_all();
            fail_if_failed();
        }
        ++round.posted;
        group_->changed_.notify_all();
        return next_++;
    }

    /// Copies this rank's receives once every rank posted the round; done once every rank copied.
    bool exchange_done(std::uint64_t ticket) {
        std::unique_lock lock(group_->mutex_);
        fail_if_failed();
        for (; copied_ <= ticket; ++copied_) {
            auto& round = group_->round(copied_);
            if (round.posted < size()) return false;
            fail_if_failed();  // a peer that gave up may have freed its buffers
            ++group_->copying_;
            lock.unlock();
            const std::uint64_t bytes = receive(round);  // peers keep their buffers until every rank copied
            lock.lock();
            --group_->copying_;
            ++round.copied;
            group_->received_[static_cast<std::size_t>(rank_)] += bytes;
            group_->changed_.notify_all();
        }
        return group_->rounds_[ticket].copied == size();
    }

    /// Every rank's value, once every rank gave one (or a rank gave up).
    std::vector<std::uint64_t> gather(std::uint64_t value) {
        std::unique_lock lock(group_->mutex_);
        auto& g = *group_;
        const std::size_t round = gathers_++;
        if (g.gathered_.size() <= round) g.gathered_.emplace_back();
        g.gathered_[round].emplace_back(rank_, value);
        g.changed_.notify_all();
        const auto complete = [&] { return g.gathered_[round].size() == static_cast<std::size_t>(size()); };
        g.changed_.wait(lock, [&] { return complete() || !g.failure_.empty(); });
        if (!complete()) fail_if_failed();  // a complete round stands, whatever a rank did after it
        std::vector<std::uint64_t> all(static_cast<std::size_t>(size()));
        for (const auto& [rank, v] : g.gathered_[round]) all[static_cast<std::size_t>(rank)] = v;
        return all;
    }

    /// The peers fail from now on; returns once none copies out of this rank's buffers.
    void abandon() noexcept {
        std::unique_lock lock(group_->mutex_);
        if (group_->failure_.empty()) group_->failure_ = "rank " + std::to_string(rank_) + " stopped loading";
        group_->changed_.notify_all();
        group_->changed_.wait(lock, [&] { return group_->copying_ == 0; });
    }

private:
    static bool same(const instanttensor::WindowExchange& a, const instanttensor::WindowExchange& b) {
        if (a.mode != b.mode || a.share != b.share || a.bytes != b.bytes || a.transfers.size() != b.transfers.size()) return false;
        for (std::size_t i = 0; i < a.transfers.size(); ++i) {
            const auto &p = a.transfers[i], &q = b.transfers[i];
            if (p.from != q.from || p.to != q.to || p.offset != q.offset || p.length != q.length) return false;
        }
        return true;
    }

    void fail_if_failed() const {
        if (!group_->failure_.empty()) throw instanttensor::error("in-process group", group_->failure_);
    }

    /// Copies what this rank receives in `round` into its own buffer; returns the bytes.
    std::uint64_t receive(const InProcessGroup::Round& round) const {
        using instanttensor::ExchangeMode;
        std::byte* mine = round.buffers[static_cast<std::size_t>(rank_)];
        auto copy_from = [&](int peer, std::uint64_t offset, std::uint64_t length) {
            std::memcpy(mine + offset, round.buffers[static_cast<std::size_t>(peer)] + offset, length);
            return length;
        };
        std::uint64_t bytes = 0;
        const auto& x = round.exchange;
        switch (x.mode) {
        case ExchangeMode::none: break;
        case ExchangeMode::all_gather:
            for (int peer = 0; peer < size(); ++peer)
                if (peer != rank_) bytes += copy_from(peer, x.share * static_cast<std::uint64_t>(peer), x.share);
            break;
        case ExchangeMode::broadcasts:
            for (const auto& t : x.transfers)
                if (t.from != rank_) bytes += copy_from(t.from, t.offset, t.length);
            break;
        case ExchangeMode::sends:
            for (const auto& t : x.transfers)
                if (t.to == rank_) bytes += copy_from(t.from, t.offset, t.length);
            break;
        }
        return bytes;
    }

    InProcessGroup* group_;
    int rank_;
    std::uint64_t next_ = 0;    // the next exchange this rank starts
    std::uint64_t copied_ = 0;  // exchanges below this one this rank copied
    std::size_t gathers_ = 0;   // gather() rounds this rank took part in
};

static_assert(instanttensor::GroupTransport<InProcessTransport>);

}  // namespace loader_test
