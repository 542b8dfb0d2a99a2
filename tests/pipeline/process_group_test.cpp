// Group loads whose ranks are separate processes over a transport that behaves like NCCL
// (tests/support/process_group.hpp): each rank opens the files itself, so its page cache and its
// failures are its own, and a rank learns of a peer only through the loader's protocol (status
// rounds) or its deadline. Ranks with different page-cache states load together with default
// options; a rank that fails, stops early, cannot start, dies or whose transport fails never leaves
// its peers waiting: they fail promptly, naming it, or within LoadOptions::group_timeout.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "faulty.hpp"
#include "groups.hpp"
#include "instanttensor/format/encryption.hpp"
#include "process_group.hpp"

namespace {

using namespace instanttensor_test;
using std::chrono::milliseconds;
using ProcessLoader = it::Loader<it::storage::automatic, ProcessTransport, it::sink::host>;

/// What rank `rank` yields against what `share` gives it: empty when every tensor is there, in
/// order, with its bytes; else the first difference. (The children cannot use doctest's checks.)
template <class Loader>
std::string verify(Loader& loader, const fmt::Checkpoint& checkpoint, const it::ShareFunction& share, int rank, int ranks) {
    std::vector<const fmt::TensorRef*> kept;
    for (const auto& t : checkpoint.tensors())
        if (!share || share(t, rank, ranks).kept) kept.push_back(&t);
    std::size_t i = 0;
    for (const auto& t : loader) {
        if (i == kept.size()) return "yielded more tensors than it keeps: " + std::string(t.name);
        const fmt::TensorRef& want = *kept[i++];
        if (t.name != want.name()) return "yielded " + std::string(t.name) + " where " + want.name() + " was due";
        const it::KeptBytes k = it::kept_bytes(want, share ? share(want, rank, ranks) : Share::whole());
        const auto block = block_bytes(*want.info, expected_bytes(want.name(), want.nbytes()), k.dim, k.first, k.count);
        if (!std::equal(t.data.begin(), t.data.end(), block.begin(), block.end())) return "wrong bytes in " + want.name();
    }
    if (i != kept.size()) return "yielded " + std::to_string(i) + " of the " + std::to_string(kept.size()) + " tensors it keeps";
    return {};
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

/// A checkpoint file the children open themselves.
struct GroupFile {
    TempDir dir;
    fs::path path = write_file(dir / "one.safetensors", group_specs());
};

}  // namespace

TEST_CASE("processes: 2 and 3 ranks end with exactly the bytes they keep, for every share") {
    const GroupFile file;
    for (const auto& selection : selections()) {
        for (int ranks : {2, 3}) {
            CAPTURE(selection.name);
            CAPTURE(ranks);
            ProcessGroup group(ranks);
            std::vector<std::uint64_t> expected_received(static_cast<std::size_t>(ranks));
            const auto outcomes = group.run(
                [&](int r) {
                    const auto checkpoint = fmt::Checkpoint::open(file.path);
                    ProcessLoader loader(checkpoint, it::storage::automatic(), ProcessTransport(group, r), it::sink::host(),
                                         group_options(selection.share));
                    std::string verdict = verify(loader, checkpoint, selection.share, r, ranks);
                    if (verdict.empty() && group.received(r) != loader.stats().received_bytes)
                        verdict = "received " + std::to_string(group.received(r)) + " bytes, planned " +
                                  std::to_string(loader.stats().received_bytes);
                    return verdict;
                },
                std::chrono::seconds(60));
            for (const auto& o : outcomes) CHECK(o.report == "");
        }
    }
}

#if INSTANTTENSOR_HAS_CRYPTO
TEST_CASE("processes: an encrypted checkpoint, each rank decrypting what it reads before the exchange, for every share") {
    const GroupFile file;
    const fs::path encrypted = file.dir / "encrypted.safetensors";
    const auto key = std::make_shared<const fmt::Key>(fmt::Key::generate());
    fmt::encrypt_file(file.path, encrypted, *key, {.cipher = fmt::preferred_cipher(), .chunk_bytes = 4096, .progress = {}});
    for (const auto& selection : selections()) {
        for (int ranks : {2, 3}) {
            CAPTURE(selection.name);
            CAPTURE(ranks);
            ProcessGroup group(ranks);
            const auto outcomes = group.run(
                [&](int r) {
                    const auto checkpoint = fmt::Checkpoint::open(encrypted);
                    auto options = group_options(selection.share);
                    options.key = key;
                    ProcessLoader loader(checkpoint, it::storage::automatic(), ProcessTransport(group, r), it::sink::host(), options);
                    return verify(loader, checkpoint, selection.share, r, ranks);
                },
                std::chrono::seconds(60));
            for (const auto& o : outcomes) CHECK(o.report == "");
        }
    }
}
#endif

TEST_CASE("processes: a window of thousands of sends goes in several NCCL groups, alike on both sides") {
    TempDir dir;
    const auto path = write_file(dir / "tiny.safetensors", tiny_specs(3000, 4));
    const auto share = it::split_rows({});
    ProcessGroup group(4);
    const auto outcomes = group.run(
        [&](int r) {
            const auto checkpoint = fmt::Checkpoint::open(path);
            it::LoadOptions options;
            options.share = share;
            ProcessLoader loader(checkpoint, it::storage::automatic(), ProcessTransport(group, r), it::sink::host(), options);
            std::string verdict = verify(loader, checkpoint, share, r, 4);
            const auto x = loader.group_plan().exchange(0);
            if (verdict.empty() && (x.mode != it::ExchangeMode::sends || x.groups.empty() || x.groups.back() == 0))
                verdict = "the window's sends fit one group: the case is not tested";
            return verdict;
        },
        std::chrono::seconds(60));
    for (const auto& o : outcomes) CHECK(o.report == "");
}

TEST_CASE("processes: a cold rank (O_DIRECT) and a warm one (buffered) load together with default options") {
    const GroupFile file;
    if (!can_read_cold_with_o_direct(file.path)) return;
    ProcessGroup group(2);
    const auto outcomes = group.run(
        [&](int r) -> std::string {
            if (r == 0) {
                evict_from_page_cache(file.path);  // cold here: DirectIo::automatic reads it with O_DIRECT
            } else {
                // Warm here, once rank 0 opened the file (its agreement round is posted after that).
                while (group.posted(0) == 0) std::this_thread::sleep_for(milliseconds(1));
                std::ifstream warm(file.path, std::ios::binary);
                std::vector<char> all((std::istreambuf_iterator<char>(warm)), std::istreambuf_iterator<char>());
            }
            const auto checkpoint = fmt::Checkpoint::open(file.path);
            ProcessLoader loader(checkpoint, it::storage::automatic(), ProcessTransport(group, r), it::sink::host());
            const std::size_t direct = loader.storage().direct_files();
            if (direct != (r == 0 ? 1u : 0u)) return "reads " + std::to_string(direct) + " files with O_DIRECT";
            return verify(loader, checkpoint, {}, r, 2);
        },
        std::chrono::seconds(60));
    for (const auto& o : outcomes) CHECK(o.report == "");
}

TEST_CASE("processes: a rank whose read fails makes every peer fail at once, naming it") {
    const GroupFile file;
    using FaultyLoader = it::Loader<Faulty<it::storage::automatic>, ProcessTransport, it::sink::host>;
    for (std::uint64_t first : {1ull, 7ull}) {
        CAPTURE(first);
        ProcessGroup group(3);
        const auto outcomes = group.run(
            [&](int r) {
                const auto checkpoint = fmt::Checkpoint::open(file.path);
                auto options = group_options({});
                options.group_timeout = std::chrono::minutes(5);  // the protocol tells the peers, not the deadline
                const Fault fault{r == 1 ? Fault::eio : Fault::none, first, 1, 0};
                FaultyLoader loader(checkpoint, Faulty(it::storage::automatic(), fault), ProcessTransport(group, r), it::sink::host(),
                                    options);
                return verify(loader, checkpoint, {}, r, 3);
            },
            std::chrono::seconds(60));
        CHECK(contains(outcomes[1].report, "Input/output error"));
        for (int r : {0, 2}) {
            CAPTURE(r);
            CHECK(contains(outcomes[static_cast<std::size_t>(r)].report, "group: rank 1 failed at window "));
            CHECK(outcomes[static_cast<std::size_t>(r)].seconds < 30);
        }
    }
}

TEST_CASE("processes: a rank whose consumer stops early releases its peers") {
    const GroupFile file;
    ProcessGroup group(3);
    const auto outcomes = group.run(
        [&](int r) -> std::string {
            const auto checkpoint = fmt::Checkpoint::open(file.path);
            ProcessLoader loader(checkpoint, it::storage::automatic(), ProcessTransport(group, r), it::sink::host(),
                                 group_options({}));
            if (r != 2) return verify(loader, checkpoint, {}, r, 3);
            for (const auto& t : loader)
                if (!t.name.empty()) break;  // the consumer gives up after its first tensor
            return "stopped";
        },
        std::chrono::seconds(60));
    CHECK(outcomes[2].report == "stopped");
    for (int r : {0, 1}) CHECK(contains(outcomes[static_cast<std::size_t>(r)].report, "group: rank 2 stopped loading at window "));
}

TEST_CASE("processes: a rank that cannot make its loader releases its peers") {
    const GroupFile file;
    ProcessGroup group(3);
    const auto outcomes = group.run(
        [&](int r) {
            const auto checkpoint = fmt::Checkpoint::open(file.path);
            auto options = group_options({});
            if (r == 0) options.windows = 1;  // refused by rank 0's loader only
            ProcessLoader loader(checkpoint, it::storage::automatic(), ProcessTransport(group, r), it::sink::host(), options);
            return verify(loader, checkpoint, {}, r, 3);
        },
        std::chrono::seconds(60));
    CHECK(contains(outcomes[0].report, "windows must be 2 to 16"));
    for (int r : {1, 2}) CHECK(contains(outcomes[static_cast<std::size_t>(r)].report, "group: rank 0 could not start the load"));
}

TEST_CASE("processes: a rank that dies mid-load fails its peers within the deadline") {
    const GroupFile file;
    ProcessGroup group(3);
    const auto timeout = milliseconds(1500);
    const auto outcomes = group.run(
        [&](int r) -> std::string {
            const auto checkpoint = fmt::Checkpoint::open(file.path);
            auto options = group_options({});
            options.group_timeout = timeout;
            ProcessLoader loader(checkpoint, it::storage::automatic(), ProcessTransport(group, r), it::sink::host(), options);
            if (r != 1) return verify(loader, checkpoint, {}, r, 3);
            for (const auto& t : loader)
                if (!t.name.empty()) ::_exit(3);  // gone without a word, its operations half done
            return "not reached";
        },
        std::chrono::seconds(60));
    CHECK(outcomes[1].report == "exited with 3");
    for (int r : {0, 2}) {
        CAPTURE(r);
        const auto& o = outcomes[static_cast<std::size_t>(r)];
        CHECK(contains(o.report, "waited 1.5 s for "));
        CHECK(contains(o.report, "a peer died, hangs, or stopped without telling"));
        CHECK(o.exited);  // the loader's destruction did not hang either
        CHECK(o.seconds < 30);
    }
}

TEST_CASE("processes: a transport operation that fails to start aborts that rank; its peers fail within the deadline") {
    const GroupFile file;
    ProcessGroup group(2);
    const auto outcomes = group.run(
        [&](int r) {
            const auto checkpoint = fmt::Checkpoint::open(file.path);
            auto options = group_options({});
            options.group_timeout = milliseconds(1000);
            ProcessTransport::Options failing;
            if (r == 1) failing.fail_to_start = 4;  // the agreement, two windows' status and exchange, then this
            ProcessLoader loader(checkpoint, it::storage::automatic(), ProcessTransport(group, r, failing), it::sink::host(),
                                 options);
            return verify(loader, checkpoint, {}, r, 2);
        },
        std::chrono::seconds(60));
    CHECK(contains(outcomes[1].report, "operation 4 failed to start (injected)"));
    CHECK(contains(outcomes[0].report, "waited 1.0 s for "));
    for (const auto& o : outcomes) CHECK(o.exited);
}
