// storage::uring on its own: a read longer than one request may ask is cut to what it may, and
// comes back as a short read for the pipeline to continue; staging memory is registered only where
// a file is read with O_DIRECT.
#include <doctest/doctest.h>

#include <sys/mman.h>
#include <sys/resource.h>

#include <array>
#include <cstdint>
#include <fstream>
#include <string>

#include "instanttensor/loader.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;

/// Whether this process may pin memory without limit: CAP_IPC_LOCK, or RLIMIT_MEMLOCK unlimited.
bool may_lock_any_memory() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_MEMLOCK, &limit) == 0 && limit.rlim_cur == RLIM_INFINITY) return true;
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("CapEff:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> 14 & 1) != 0;  // CAP_IPC_LOCK
    return false;
}

}  // namespace

#if INSTANTTENSOR_HAS_URING

TEST_CASE("storage::uring: a read of 4 GiB or more is cut to what one read may ask, not to its low 32 bits") {
    if (unavailable(Via::uring)) return;
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "f.safetensors", {{"x", fmt::Dtype::U8, {100000}}}));
    it::storage::uring storage(it::storage::uring::Options{4, it::DirectIo::off});
    storage.open(checkpoint);
    // Address space for the whole request; only the file's bytes are ever written.
    const std::uint64_t length = (std::uint64_t{1} << 32) + 4096;
    void* memory = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    REQUIRE(memory != MAP_FAILED);
    storage.submit({0, 0, length, static_cast<std::byte*>(memory), 7});
    std::array<it::ReadResult, 1> results{};
    REQUIRE(storage.reap(results, true) == 1);
    CHECK(results[0].tag == 7);
    const auto file_size = static_cast<std::int64_t>(fs::file_size(checkpoint.files()[0].path));
    CHECK(results[0].result == file_size);  // a short read, at the end of the file
    ::munmap(memory, length);
}

TEST_CASE("storage::uring: registers staging memory only where a file is read with O_DIRECT") {
    if (unavailable(Via::uring)) return;
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "f.safetensors", {{"x", fmt::Dtype::U8, {100000}}}));
    it::detail::AlignedBuffer staging(1 << 20);
    for (it::DirectIo direct : {it::DirectIo::off, it::DirectIo::on}) {
        INFO("direct=", to_string(direct));
        it::storage::uring storage(it::storage::uring::Options{4, direct});
        storage.open(checkpoint);
        const bool read_direct = storage.files().is_direct(0);
        if (direct == it::DirectIo::off) CHECK_FALSE(read_direct);
        storage.register_memory(staging.span());
        if (!read_direct) CHECK_FALSE(storage.buffers_registered());
        else if (may_lock_any_memory()) CHECK(storage.buffers_registered());  // else RLIMIT_MEMLOCK may refuse
    }
}
#endif
