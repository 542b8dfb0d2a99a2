// tests/support/process_group.hpp: a GroupTransport whose ranks are separate processes (fork) that
// exchange through shared memory, behaving as NCCL does where the group pipeline depends on it:
//
//   - operations are asynchronous: exchange() and gather() queue them on a progress thread (NCCL's
//     stream and kernels), which runs them in order; done() says whether one completed, which it
//     does only once its bytes moved, both ways;
//   - the bytes move through the same pointer arithmetic as transport::nccl: an in-place all-gather
//     sends window + rank·S and receives peer p's segment at window + p·S; a broadcast sends and
//     receives at window + offset; sends and receives match in order between each pair, each in
//     the same NCCL group on both sides, no group holding more calls than NCCL aggregates;
//   - a rank knows nothing of its peers but what they sent: no shared "abandoned" flag. A rank
//     that aborts (NCCL: ncclCommAbort) stops its own operations; its peers' operations then never
//     complete, and they learn of it only through the loader's protocol or its deadline;
//   - ranks whose operations do not match fail that operation (NCCL would hang or corrupt).
//
// Each rank is a process of its own, opening the files itself, so its page cache residency, its
// O_DIRECT alignment and its failures (an exception, an exit) are real. A rank's data goes through
// its mailbox in shared memory: it writes an operation's outgoing bytes there once every peer took
// its previous operation's, and each peer copies what it receives out of it.
#pragma once

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/pipeline/group_plan.hpp"

namespace instanttensor_test {

/// The shared memory of one group, mapped before its ranks are forked.
class ProcessGroup {
public:
    static constexpr int max_ranks = 8;

    /// What a rank's process reported: the string its body returned (empty: all went well), or
    /// how it ended otherwise.
    struct Outcome {
        std::string report;
        bool exited = false;     ///< it returned from its body (else it died, or was killed)
        bool timed_out = false;  ///< killed after the limit
        double seconds = 0;      ///< from the fork to its end
    };

    ProcessGroup(int ranks, std::size_t mailbox_bytes = 16u << 20) : ranks_(ranks), mailbox_bytes_(mailbox_bytes) {
        if (ranks < 1 || ranks > max_ranks) throw std::invalid_argument("ProcessGroup: 1 to 8 ranks");
        bytes_ = sizeof(Shared) + static_cast<std::size_t>(ranks) * mailbox_bytes_;
        void* map = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (map == MAP_FAILED) throw std::runtime_error("ProcessGroup: mmap failed");
        shared_ = new (map) Shared{};
    }
    ProcessGroup(const ProcessGroup&) = delete;
    ProcessGroup& operator=(const ProcessGroup&) = delete;
    ~ProcessGroup() { ::munmap(shared_, bytes_); }

    [[nodiscard]] int ranks() const noexcept { return ranks_; }
    /// Operations rank `rank` posted so far (another rank may wait on it to order a test).
    [[nodiscard]] std::uint64_t posted(int rank) const noexcept {
        return shared_->control[rank].posted.load(std::memory_order_acquire);
    }
    /// Bytes rank `rank` received from the others.
    [[nodiscard]] std::uint64_t received(int rank) const noexcept {
        return shared_->control[rank].received.load(std::memory_order_acquire);
    }

    /// Runs body(rank) in a child process per rank and waits for them, at most `limit`: a child
    /// still running then is killed. The child's report is what body returned, or the exception
    /// it let out.
    std::vector<Outcome> run(const std::function<std::string(int rank)>& body, std::chrono::seconds limit) {
        const auto start = std::chrono::steady_clock::now();
        std::vector<pid_t> children;
        for (int r = 0; r < ranks_; ++r) {
            const pid_t pid = ::fork();
            if (pid < 0) throw std::runtime_error("ProcessGroup: fork failed");
            if (pid == 0) {
                std::string report;
                try {
                    report = body(r);
                } catch (const std::exception& e) {
                    report = std::string("threw: ") + e.what();
                }
                Report& out = shared_->reports[r];
                std::strncpy(out.text, report.c_str(), sizeof out.text - 1);
                out.done.store(1, std::memory_order_release);
                ::_exit(0);  // no doctest teardown, no atexit handlers of the parent's
            }
            children.push_back(pid);
        }
        std::vector<Outcome> outcomes(static_cast<std::size_t>(ranks_));
        std::vector<bool> ended(children.size(), false);
        for (std::size_t left = children.size(); left > 0;) {
            for (std::size_t r = 0; r < children.size(); ++r) {
                if (ended[r]) continue;
                int status = 0;
                if (::waitpid(children[r], &status, WNOHANG) != children[r]) continue;
                ended[r] = true;
                --left;
                Outcome& o = outcomes[r];
                o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
                o.exited = shared_->reports[r].done.load(std::memory_order_acquire) == 1;
                o.report = o.exited ? shared_->reports[r].text
                                    : WIFEXITED(status) ? "exited with " + std::to_string(WEXITSTATUS(status)) : "killed by a signal";
            }
            if (left > 0 && std::chrono::steady_clock::now() - start > limit) {
                for (std::size_t r = 0; r < children.size(); ++r) {
                    if (ended[r]) continue;
                    ::kill(children[r], SIGKILL);
                    ::waitpid(children[r], nullptr, 0);
                    outcomes[r].timed_out = true;
                    outcomes[r].report = "still running after the limit: killed";
                }
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        return outcomes;
    }

private:
    friend class ProcessTransport;

    /// One rank's progress, as its peers see it.
    struct alignas(64) Control {
        std::atomic<std::uint64_t> posted{0};             ///< its operations [0, posted) are in its mailbox, in turn
        std::atomic<std::uint64_t> taken[max_ranks] = {};  ///< taken[p]: operations of rank p it copied out: [0, taken[p])
        std::atomic<std::uint64_t> received{0};           ///< bytes it received
    };
    struct Report {
        std::atomic<int> done{0};
        char text[2048] = {};
    };
    struct Shared {
        Control control[max_ranks];
        Report reports[max_ranks];
    };

    /// The header of the operation a rank's mailbox holds; the transfers and the payload follow it.
    struct Posted {
        std::uint64_t gather = 0;  ///< 1: a gather of `value`; 0: a window exchange
        std::uint64_t mode = 0;
        std::uint64_t segment = 0;
        std::uint64_t bytes = 0;
        std::uint64_t value = 0;
        std::uint64_t transfers = 0;
    };

    [[nodiscard]] std::byte* mailbox(int rank) const noexcept {
        return reinterpret_cast<std::byte*>(shared_ + 1) + static_cast<std::size_t>(rank) * mailbox_bytes_;
    }

    int ranks_;
    std::size_t mailbox_bytes_;
    std::size_t bytes_ = 0;
    Shared* shared_ = nullptr;
};

/// One rank's handle on a ProcessGroup, made in the rank's own process (it starts a thread).
class ProcessTransport {
public:
    static constexpr instanttensor::MemoryKind memory = instanttensor::MemoryKind::host;

    struct Options {
        /// The operation with this ticket fails to start (exchange() or gather() throws), as an
        /// NCCL call that fails inside a group would.
        std::uint64_t fail_to_start = UINT64_MAX;
    };

    ProcessTransport(ProcessGroup& group, int rank) : ProcessTransport(group, rank, Options{}) {}
    ProcessTransport(ProcessGroup& group, int rank, Options options) : state_(std::make_unique<State>(group, rank, options)) {
        state_->thread = std::thread([s = state_.get()] { s->progress(); });
    }
    ProcessTransport(ProcessTransport&&) noexcept = default;
    ProcessTransport& operator=(ProcessTransport&&) = delete;
    ~ProcessTransport() {
        if (state_) state_->stop();
    }

    [[nodiscard]] int rank() const noexcept { return state_->rank; }
    [[nodiscard]] int size() const noexcept { return state_->group.ranks(); }

    std::uint64_t exchange(std::byte* window, const instanttensor::WindowExchange& x) {
        Operation op;
        op.window = window;
        op.posted = {0, static_cast<std::uint64_t>(x.mode), x.segment, x.bytes, 0, x.transfers.size()};
        op.transfers.assign(x.transfers.begin(), x.transfers.end());
        if (x.mode == instanttensor::ExchangeMode::sends) check_groups(x);
        op.groups.assign(x.groups.begin(), x.groups.end());
        op.groups.resize(op.transfers.size());  // 0 where the mode has no groups
        return state_->start(std::move(op));
    }

    std::uint64_t gather(std::uint64_t value) {
        Operation op;
        op.posted = {1, 0, 0, 0, value, 0};
        return state_->start(std::move(op));
    }

    /// Whether operation `ticket` completed; throws nccl_error when an operation failed here.
    bool done(std::uint64_t ticket) {
        std::lock_guard lock(state_->mutex);
        if (!state_->failure.empty()) throw instanttensor::nccl_error("process group", state_->failure);
        return state_->completed > ticket;
    }

    std::vector<std::uint64_t> gathered(std::uint64_t ticket) {
        std::lock_guard lock(state_->mutex);
        return state_->values.at(ticket);
    }

    /// Stops this rank's operations where they are (as ncclCommAbort): nothing touches the window
    /// buffers after it returns. The peers are not told.
    void abort() noexcept { state_->stop(); }

private:
    struct Operation {
        ProcessGroup::Posted posted;
        std::byte* window = nullptr;
        std::vector<instanttensor::Transfer> transfers;
        std::vector<std::uint32_t> groups;  // per transfer: its NCCL group (sends)
    };

    /// The sends' groups as NCCL needs them: one per transfer, non-decreasing, none holding more
    /// than max_group_transfers of this rank's calls.
    static void check_groups(const instanttensor::WindowExchange& x) {
        if (x.groups.size() != x.transfers.size()) throw instanttensor::nccl_error("process group", "sends without their groups");
        std::size_t run = 0;
        for (std::size_t i = 0; i < x.groups.size(); ++i) {
            if (i > 0 && x.groups[i] < x.groups[i - 1]) throw instanttensor::nccl_error("process group", "sends' groups out of order");
            run = i > 0 && x.groups[i] == x.groups[i - 1] ? run + 1 : 1;
            if (run > instanttensor::max_group_transfers) throw instanttensor::nccl_error("process group", "an NCCL group of too many calls");
        }
    }

    struct State {
        State(ProcessGroup& g, int r, Options o) : group(g), rank(r), options(o) {}

        ProcessGroup& group;
        const int rank;
        const Options options;
        std::thread thread;
        std::mutex mutex;
        std::condition_variable queued_cv;
        std::deque<Operation> queue;                     // started, not run yet, in ticket order
        std::uint64_t next = 0;                          // the next ticket
        std::uint64_t completed = 0;                     // tickets below it completed
        std::vector<std::vector<std::uint64_t>> values;  // by ticket: a gather's values (else empty)
        std::string failure;                             // an operation failed: the transport is done
        std::atomic<bool> stopping{false};

        std::uint64_t start(Operation op) {
            std::lock_guard lock(mutex);
            if (stopping.load()) throw instanttensor::nccl_error("process group", "the transport was aborted");
            if (next == options.fail_to_start)
                throw instanttensor::nccl_error("process group", "operation " + std::to_string(next) + " failed to start (injected)");
            queue.push_back(std::move(op));
            values.emplace_back();
            queued_cv.notify_all();
            return next++;
        }

        void stop() noexcept {
            {
                std::lock_guard lock(mutex);
                stopping.store(true);
                queued_cv.notify_all();
            }
            if (thread.joinable()) thread.join();
        }

        /// Waits until `ready()`, or returns false once the transport stops.
        template <class Ready>
        bool wait_until(Ready ready) const {
            while (!ready()) {
                if (stopping.load(std::memory_order_relaxed)) return false;
                std::this_thread::sleep_for(std::chrono::microseconds(50));
            }
            return true;
        }

        /// The progress thread: runs the operations in order, as a stream runs NCCL's kernels.
        void progress() {
            for (std::uint64_t ticket = 0;; ++ticket) {
                Operation op;
                {
                    std::unique_lock lock(mutex);
                    queued_cv.wait(lock, [&] { return !queue.empty() || stopping.load(); });
                    if (stopping.load()) return;
                    op = std::move(queue.front());
                    queue.pop_front();
                }
                std::vector<std::uint64_t> gathered;
                std::string problem;
                try {
                    if (!run(op, ticket, gathered)) return;  // stopped midway
                } catch (const std::exception& e) {
                    problem = e.what();
                }
                std::lock_guard lock(mutex);
                if (!problem.empty()) {
                    failure = "operation " + std::to_string(ticket) + ": " + problem;
                    return;
                }
                values[ticket] = std::move(gathered);
                completed = ticket + 1;
            }
        }

        /// Posts this rank's side of operation `ticket`, then receives every peer's.
        bool run(const Operation& op, std::uint64_t ticket, std::vector<std::uint64_t>& gathered) {
            auto& control = group.shared_->control;
            const int n = group.ranks();
            // The mailbox is free once every peer took the previous operation out of it.
            for (int p = 0; p < n; ++p)
                if (p != rank && !wait_until([&] { return control[p].taken[rank].load(std::memory_order_acquire) >= ticket; }))
                    return false;
            post(op);
            control[rank].posted.store(ticket + 1, std::memory_order_release);

            gathered.assign(op.posted.gather ? static_cast<std::size_t>(n) : 0, 0);
            if (op.posted.gather) gathered[static_cast<std::size_t>(rank)] = op.posted.value;
            std::uint64_t received = 0;
            for (int p = 0; p < n; ++p) {
                if (p == rank) continue;
                if (!wait_until([&] { return control[p].posted.load(std::memory_order_acquire) >= ticket + 1; })) return false;
                received += receive(op, p, gathered);
                control[rank].taken[p].store(ticket + 1, std::memory_order_release);
            }
            control[rank].received.fetch_add(received, std::memory_order_acq_rel);
            return true;
        }

        /// Writes the header, the transfers and this rank's outgoing bytes into its mailbox.
        void post(const Operation& op) const {
            std::byte* at = group.mailbox(rank);
            const std::byte* end = at + group.mailbox_bytes_;
            auto put = [&](const void* from, std::size_t length) {
                if (at + length > end) throw std::runtime_error("the test transport's mailbox is too small for this window");
                std::memcpy(at, from, length);
                at += length;
            };
            put(&op.posted, sizeof op.posted);
            if (!op.transfers.empty()) {
                put(op.transfers.data(), op.transfers.size() * sizeof(instanttensor::Transfer));
                put(op.groups.data(), op.groups.size() * sizeof(std::uint32_t));
            }
            if (op.posted.gather) return;
            using instanttensor::ExchangeMode;
            switch (static_cast<ExchangeMode>(op.posted.mode)) {
            case ExchangeMode::none: break;
            case ExchangeMode::all_gather:  // in place: this rank's segment is the send buffer
                put(op.window + op.posted.segment * static_cast<std::uint64_t>(rank), op.posted.segment);
                break;
            case ExchangeMode::broadcasts:
            case ExchangeMode::sends:
                for (const auto& t : op.transfers)
                    if (t.from == rank) put(op.window + t.source, t.length);
                break;
            }
        }

        /// Copies what operation `op` receives from peer `p` out of p's mailbox; returns the bytes.
        std::uint64_t receive(const Operation& op, int p, std::vector<std::uint64_t>& gathered) const {
            using instanttensor::ExchangeMode;
            using instanttensor::Transfer;
            const std::byte* at = group.mailbox(p);
            ProcessGroup::Posted theirs;
            std::memcpy(&theirs, at, sizeof theirs);
            at += sizeof theirs;
            std::vector<Transfer> transfers(theirs.transfers);
            std::vector<std::uint32_t> groups(theirs.transfers);
            if (!transfers.empty()) {
                std::memcpy(transfers.data(), at, transfers.size() * sizeof(Transfer));
                at += transfers.size() * sizeof(Transfer);
                std::memcpy(groups.data(), at, groups.size() * sizeof(std::uint32_t));
                at += groups.size() * sizeof(std::uint32_t);
            }
            const std::string who = "rank " + std::to_string(p) + " and rank " + std::to_string(rank);
            if (theirs.gather != op.posted.gather) throw std::runtime_error(who + " posted a gather against an exchange");
            if (op.posted.gather) {
                gathered[static_cast<std::size_t>(p)] = theirs.value;
                return 0;
            }
            if (theirs.mode != op.posted.mode || theirs.segment != op.posted.segment || theirs.bytes != op.posted.bytes)
                throw std::runtime_error(who + " posted different collectives");
            auto same = [](const Transfer& a, const Transfer& b) {
                return a.from == b.from && a.to == b.to && a.offset == b.offset && a.length == b.length && a.source == b.source;
            };
            std::uint64_t bytes = 0;
            switch (static_cast<ExchangeMode>(op.posted.mode)) {
            case ExchangeMode::none: break;
            case ExchangeMode::all_gather:
                std::memcpy(op.window + op.posted.segment * static_cast<std::uint64_t>(p), at, op.posted.segment);
                bytes = op.posted.segment;
                break;
            case ExchangeMode::broadcasts:
                if (!std::equal(transfers.begin(), transfers.end(), op.transfers.begin(), op.transfers.end(), same))
                    throw std::runtime_error(who + " posted different broadcasts");
                for (const auto& t : transfers) {
                    if (t.from != p) continue;
                    std::memcpy(op.window + t.offset, at, t.length);
                    at += t.length;
                    bytes += t.length;
                }
                break;
            case ExchangeMode::sends: {
                // p to this rank, with their NCCL groups: as p posted them, as this rank did. A send
                // and its receive in different groups would wait for each other forever.
                std::vector<std::pair<Transfer, std::uint32_t>> sent, expected;
                for (std::size_t i = 0; i < transfers.size(); ++i)
                    if (transfers[i].from == p && transfers[i].to == rank) sent.emplace_back(transfers[i], groups[i]);
                for (std::size_t i = 0; i < op.transfers.size(); ++i)
                    if (op.transfers[i].from == p && op.transfers[i].to == rank) expected.emplace_back(op.transfers[i], op.groups[i]);
                if (!std::equal(sent.begin(), sent.end(), expected.begin(), expected.end(),
                                [&](const auto& a, const auto& b) { return same(a.first, b.first) && a.second == b.second; }))
                    throw std::runtime_error("rank " + std::to_string(p) + " sends what rank " + std::to_string(rank) +
                                             " does not receive in the same NCCL group");
                for (const auto& t : transfers) {
                    if (t.from != p) continue;
                    if (t.to == rank) {
                        std::memcpy(op.window + t.offset, at, t.length);
                        bytes += t.length;
                    }
                    at += t.length;
                }
                break;
            }
            }
            return bytes;
        }
    };

    std::unique_ptr<State> state_;
};

static_assert(instanttensor::GroupTransport<ProcessTransport>);

}  // namespace instanttensor_test
