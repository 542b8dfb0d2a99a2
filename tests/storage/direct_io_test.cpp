// The page-cache policy of the file backends (detail/file_set.hpp): under DirectIo::automatic a
// cold file is read with O_DIRECT and a resident one buffered, file by file; either way a file
// holds one descriptor.
#include <doctest/doctest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <vector>

#include "instanttensor/loader.hpp"
#include "child.hpp"
#include "fault_runs.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;

}  // namespace

TEST_CASE("storage: DirectIo::automatic reads cold files with O_DIRECT and resident ones buffered") {
    TempDir dir;
    const auto path = write_file(dir / "cold.safetensors", odd_specs());
    const auto checkpoint = fmt::Checkpoint::open(path);
    if (!can_read_cold_with_o_direct(path)) return;
    for (Via via : {Via::uring, Via::pread, Via::auto_uring, Via::auto_pread}) {
        if (unavailable(via)) continue;
        INFO(to_string(via));
        evict_from_page_cache(path);
        const Outcome cold = load(checkpoint, via, it::DirectIo::automatic, SinkKind::host, small_slots);
        check_outcome(checkpoint, cold);
        CHECK(cold.direct_files == 1);
        // Map and touch every page so the file is resident.
        const Outcome warm_up = load(checkpoint, Via::memory, it::DirectIo::off, SinkKind::host);
        check_outcome(checkpoint, warm_up);
        const Outcome warm = load(checkpoint, via, it::DirectIo::automatic, SinkKind::host, small_slots);
        check_outcome(checkpoint, warm);
        CHECK(warm.direct_files == 0);
    }
}

TEST_CASE("storage: DirectIo::automatic sees a cold file of a read-only store as cold") {
    // mincore() reports every page of a file the caller may not write as resident (Linux 5.2 on),
    // so a read-only model store once always looked warm and was read buffered. Root makes a file
    // that only it may write, and a child that is not root loads it, cold then warm.
    if (::geteuid() != 0) {
        MESSAGE("skipped: needs root, to make a file the loading process may not write");
        return;
    }
    TempDir dir;
    const auto path = write_file(dir / "store.safetensors", odd_specs());
    const auto checkpoint = fmt::Checkpoint::open(path);
    if (!can_read_cold_with_o_direct(path)) return;
    fs::permissions(dir.path(), fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read |
                                    fs::perms::others_exec);
    fs::permissions(path, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
    for (bool cold : {true, false}) {
        for (Via via : {Via::pread, Via::uring}) {
            if (unavailable(via)) continue;
            if (cold) evict_from_page_cache(path);
            else check_outcome(checkpoint, load(checkpoint, Via::memory, it::DirectIo::off, SinkKind::host));  // resident
            INFO(to_string(via), cold ? " cold" : " warm");
            const int status = in_child([&]() -> int {
                if (::setgid(65534) != 0 || ::setuid(65534) != 0) return 10;  // nobody
                const Outcome out = load(checkpoint, via, it::DirectIo::automatic, SinkKind::host, small_slots);
                if (out.tensors.size() != checkpoint.tensors().size()) return 11;
                return out.direct_files == (cold ? 1u : 0u) ? 0 : 12;
            });
            CHECK(status == 0);
        }
    }
}

TEST_CASE("storage: DirectIo::automatic decides per file") {
    TempDir dir;
    std::vector<fmt::TensorSpec> specs = odd_specs();
    for (auto& s : tiny_specs(30, 21)) specs.push_back(s);
    const auto index = fmt::write_sharded_checkpoint(dir / "mixed", specs, 3, fill_tensor);
    const auto checkpoint = fmt::Checkpoint::open(index);
    const auto& cold = checkpoint.files()[1].path;
    if (!can_read_cold_with_o_direct(cold)) return;
    for (Via via : {Via::uring, Via::pread, Via::auto_uring, Via::auto_pread}) {
        if (unavailable(via)) continue;
        INFO(to_string(via));
        check_outcome(checkpoint, load(checkpoint, Via::memory, it::DirectIo::off, SinkKind::host));  // all resident
        evict_from_page_cache(cold);
        const Outcome out = load(checkpoint, via, it::DirectIo::automatic, SinkKind::placement, small_slots);
        check_outcome(checkpoint, out);
        CHECK(out.direct_files == 1);
    }
}

TEST_CASE("storage: one descriptor per file, O_DIRECT or not, so 150 shards load under ulimit -n 200") {
    TempDir dir;
    const auto index = fmt::write_sharded_checkpoint(dir / "many", tiny_specs(150, 5), 150, fill_tensor);
    const auto checkpoint = fmt::Checkpoint::open(index);
    REQUIRE(checkpoint.files().size() == 150);
    const bool direct = accepts_o_direct(checkpoint.files()[0].path);
    if (!direct) MESSAGE("the temporary directory has no O_DIRECT: buffered only");
    for (Via via : {Via::uring, Via::pread}) {
        if (unavailable(via)) continue;
        for (it::DirectIo policy : {it::DirectIo::off, it::DirectIo::on}) {
            if (policy == it::DirectIo::on && !direct) continue;
            INFO(to_string(via), " direct=", to_string(policy));
            const int status = in_child([&]() -> int {
                const rlimit limit{200, 200};
                if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) return 10;
                if (open_descriptors() > 40) return 11;  // leaves 160 for the load
                const Outcome out = load(checkpoint, via, policy, SinkKind::host, small_slots);
                if (out.tensors.size() != checkpoint.tensors().size()) return 12;
                return out.direct_files == (policy == it::DirectIo::on ? 150u : 0u) ? 0 : 13;
            });
            CHECK(status == 0);
        }
    }
}
