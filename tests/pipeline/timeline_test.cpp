// LoadStats::times (pipeline/timeline.hpp): a single load counts its time to what held it up. Each
// case slows one part on purpose (the storage's reads, the sink's copies, the consumer, the
// sink's room) and checks that the time shows where it went, and not where it did not.
#include <doctest/doctest.h>

#include <chrono>
#include <deque>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "instanttensor/loader.hpp"
#include "instanttensor/storage/memory.hpp"
#include "late_copy_sink.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

/// A storage whose reads complete `latency` after they were submitted, no sooner, each in its own
/// time (reads in flight together overlap), as a device's would; `depth` reads in flight at most
/// (0: the inner storage's depth).
template <it::StorageBackend Inner>
class Slow {
public:
    static constexpr it::MemoryKind destination = Inner::destination;

    Slow(Inner inner, std::chrono::microseconds latency, std::size_t depth = 0) : inner_(std::move(inner)), latency_(latency), depth_(depth) {}

    void open(const fmt::Checkpoint& checkpoint) { inner_.open(checkpoint); }
    [[nodiscard]] std::uint64_t alignment(std::uint32_t file) const { return inner_.alignment(file); }
    [[nodiscard]] std::size_t queue_depth() const { return depth_ != 0 ? depth_ : inner_.queue_depth(); }
    [[nodiscard]] std::string_view name() const { return "slow"; }

    void submit(const it::ReadRequest& request) {
        due_[request.tag] = Clock::now() + latency_;
        inner_.submit(request);
    }

    std::size_t reap(std::span<it::ReadResult> out, bool wait) {
        it::ReadResult landed[16];
        for (std::size_t n; (n = inner_.reap(landed, completed_.empty() && wait)) > 0;)
            completed_.insert(completed_.end(), landed, landed + n);
        if (completed_.empty()) return 0;
        if (wait) std::this_thread::sleep_until(due_.at(completed_.front().tag));
        std::size_t n = 0;
        while (n < out.size() && !completed_.empty() && Clock::now() >= due_.at(completed_.front().tag)) {
            out[n++] = completed_.front();
            due_.erase(completed_.front().tag);
            completed_.pop_front();
        }
        return n;
    }

private:
    Inner inner_;
    std::chrono::microseconds latency_;
    std::size_t depth_;
    std::map<std::uint64_t, Clock::time_point> due_;  // by tag: when the read may complete
    std::deque<it::ReadResult> completed_;            // by the inner storage, in the order it said so
};

/// What a load's time went to, and the loader's own part of it (its seconds less the consumer's).
struct Timed {
    it::LoadTimes times;
    double own = 0;
};

const auto nothing = [](const it::TensorView&) {};

/// A file of 24 tensors of 16 KiB (with 16 KiB slots, a read each), and its loads.
struct EvenCheckpoint {
    TempDir dir;
    fmt::Checkpoint checkpoint = fmt::Checkpoint::open(write_file(dir / "even.safetensors", [] {
        std::vector<fmt::TensorSpec> specs;
        for (int i = 0; i < 24; ++i) specs.push_back({"t." + std::to_string(100 + i), fmt::Dtype::U8, {16 << 10}});
        return specs;
    }()));

    /// Loads every tensor, calling `consume` on each; checks them and what LoadStats::times add up to.
    template <class L, class Consume = decltype(nothing)>
    Timed load(L& loader, Consume consume = nothing) {
        Outcome out;
        for (const it::TensorView& t : loader) {
            consume(t);
            out.tensors.push_back({std::string(t.name), t.dtype, {t.shape.begin(), t.shape.end()}, {t.data.begin(), t.data.end()}, t.ref});
        }
        out.stats = loader.stats();
        out.plan_read_bytes = loader.plan().read_bytes;
        check_outcome(checkpoint, out);
        const it::LoadStats& s = loader.stats();
        const it::LoadTimes& t = s.times;
        const double own = s.seconds - t.consumer;
        CHECK(t.consumer >= 0);
        CHECK(own > 0);
        for (const double part : {t.landing, t.storage_idle, t.copies_idle, t.staging_full, t.queue_full, t.sink_full}) {
            CHECK(part >= 0);
            CHECK(part <= own * 1.001 + 1e-4);
        }
        MESSAGE("seconds " << s.seconds << ": consumer " << t.consumer << ", landing " << t.landing << ", storage idle "
                           << t.storage_idle << ", copies idle " << t.copies_idle << ", staging full " << t.staging_full
                           << ", queue full " << t.queue_full << ", sink full " << t.sink_full);
        return {t, own};
    }
};

}  // namespace

TEST_CASE_FIXTURE(EvenCheckpoint, "timeline: slow reads keep the storage busy and the slots full, and the copies idle") {
    LateLoaderOf<Slow<it::storage::memory>> loader(checkpoint, Slow(it::storage::memory(), 3ms), {}, LateCopySink(0),
                                                   ring_of(32 << 10, 16 << 10));
    const auto [t, own] = load(loader);
    CHECK(own >= 12 * 0.003);  // 24 reads of 3 ms, two at a time
    CHECK(t.staging_full >= 0.7 * own);
    CHECK(t.copies_idle >= 0.7 * own);
    CHECK(t.storage_idle <= 0.2 * own);
    CHECK(t.queue_full == 0);
    CHECK(t.sink_full == 0);
}

TEST_CASE_FIXTURE(EvenCheckpoint, "timeline: a storage that takes two reads at a time holds the others back while slots are free") {
    LateLoaderOf<Slow<it::storage::memory>> loader(checkpoint, Slow(it::storage::memory(), 3ms, 2), {}, LateCopySink(0),
                                                   ring_of(128 << 10, 16 << 10));
    const auto [t, own] = load(loader);
    CHECK(t.queue_full >= 0.7 * own);
    CHECK(t.staging_full == 0);
    CHECK(t.storage_idle <= 0.2 * own);
}

TEST_CASE_FIXTURE(EvenCheckpoint, "timeline: slow copies leave the storage idle and the slots full") {
    LateLoaderOf<it::storage::memory> loader(checkpoint, it::storage::memory(), {}, LateCopySink(0, 0, 3ms), ring_of(32 << 10, 16 << 10));
    const auto [t, own] = load(loader);
    CHECK(own >= 12 * 0.003);  // 24 copies of 3 ms (after their reads), two slots
    CHECK(t.storage_idle >= 0.7 * own);
    CHECK(t.staging_full >= 0.7 * own);
    CHECK(t.copies_idle <= 0.2 * own);
    CHECK(t.sink_full == 0);
}

TEST_CASE_FIXTURE(EvenCheckpoint, "timeline: a slow consumer's time is the consumer's, and none of the loader's") {
    // Reads of four tensors each, copied out of staging into the ring.
    HostLoaderOf<it::storage::memory> loader(checkpoint, it::storage::memory(), {}, it::sink::host(), ring_of(128 << 10, 64 << 10));
    const auto [t, own] = load(loader, [](const it::TensorView&) { std::this_thread::sleep_for(2ms); });
    CHECK(t.consumer >= 24 * 0.002);
    for (const double part : {t.storage_idle, t.staging_full, t.queue_full, t.sink_full}) CHECK(part <= 0.1 * t.consumer);
    CHECK(loader.stats().in_place_bytes == 0);
    CHECK(t.landing > 0);       // the copies out of staging
    CHECK(t.copies_idle == 0);  // a host sink's copies are the landing itself
}

TEST_CASE_FIXTURE(EvenCheckpoint, "timeline: a ring with room for two tensors holds the reads back while the slots are free") {
    // Eight slots, but each read waits for the ring, which takes a tensor once the consumer let
    // the one before the last go.
    LateLoaderOf<Slow<it::storage::memory>> loader(checkpoint, Slow(it::storage::memory(), 3ms), {}, LateCopySink(0, 32 << 10),
                                                   ring_of(128 << 10, 16 << 10));
    const auto [t, own] = load(loader);
    CHECK(t.sink_full >= 0.5 * own);
    CHECK(t.staging_full == 0);
    CHECK(t.queue_full == 0);
}
