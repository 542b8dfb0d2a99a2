// Paths taken when something is unavailable: io_uring refused by a seccomp filter (the automatic
// backend falls back to pread and says why; asking for io_uring explicitly is an
// unavailable_error), and O_DIRECT refused, when a file is opened or at read time (under
// DirectIo::automatic the file is read buffered; under DirectIo::on the load fails). Seccomp
// filters are installed in a forked child, which reports through its exit status.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/magic.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "instanttensor/loader.hpp"
#include "child.hpp"
#include "faulty.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;

#if defined(__x86_64__)
constexpr std::uint32_t audit_arch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr std::uint32_t audit_arch = AUDIT_ARCH_AARCH64;
#else
constexpr std::uint32_t audit_arch = 0;  // seccomp tests are skipped
#endif

/// Installs `filter` for this process (and its threads) for good; false where it may not.
template <std::size_t N>
bool install_seccomp_filter(sock_filter (&filter)[N]) {
    sock_fprog program{static_cast<unsigned short>(N), filter};
    return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
           ::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program, 0, 0) == 0;
}

/// Installs a seccomp filter (in this process: call it in a forked child) that fails
/// io_uring_setup with EPERM, as container runtimes and kernel.io_uring_disabled do.
bool refuse_io_uring() {
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    return install_seccomp_filter(filter);
}

/// Installs a seccomp filter that fails every open with O_DIRECT, and every fcntl(F_SETFL) that
/// sets it, with EINVAL, as filesystems without O_DIRECT do (older tmpfs, some FUSE filesystems).
bool refuse_o_direct() {
    constexpr auto argument = [](unsigned i) {  // little-endian: an argument's low word comes first
        return static_cast<std::uint32_t>(offsetof(seccomp_data, args) + i * sizeof(std::uint64_t));
    };
    constexpr std::uint32_t direct = O_DIRECT;
    sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, audit_arch, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 2),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, argument(2)),  // openat's flags
        BPF_STMT(BPF_JMP | BPF_JA, 4),                     // to the O_DIRECT test
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_fcntl, 0, 5),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, argument(1)),  // fcntl's command
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, F_SETFL, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, argument(2)),  // the flags it sets
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, direct, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EINVAL & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    return install_seccomp_filter(filter);
}

/// Whether a load with `loader` yields every tensor of `checkpoint` with the written bytes.
template <class L>
bool loads_exactly(L& loader, const fmt::Checkpoint& checkpoint) {
    std::size_t i = 0;
    const auto tensors = checkpoint.tensors();
    for (const it::TensorView& t : loader) {
        if (i >= tensors.size() || t.ref != &tensors[i]) return false;
        const auto expected = expected_bytes(tensors[i].name(), tensors[i].nbytes());
        if (!std::equal(t.data.begin(), t.data.end(), expected.begin(), expected.end())) return false;
        ++i;
    }
    return i == tensors.size();
}

std::vector<fmt::TensorSpec> fallback_specs() {
    auto specs = odd_specs();
    for (auto& s : tiny_specs(40, 13)) specs.push_back(s);
    return specs;
}

/// Judges the exit status of a test's child: 0 passed, 10 could not install its seccomp filter
/// (the case is skipped), anything else names the check that failed.
void check_child_status(int status) {
    if (status == 10) {
        MESSAGE("skipped: this process may not install a seccomp filter");
        return;
    }
    INFO("child exit status: ", status);
    CHECK(status == 0);
}

}  // namespace

TEST_CASE("fallback: io_uring refused by seccomp") {
    if (audit_arch == 0) {
        MESSAGE("skipped: no seccomp architecture constant for this target");
        return;
    }
    if (!uring_available()) {
        MESSAGE("skipped: io_uring is already unavailable here");
        return;
    }
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "seccomp.safetensors", fallback_specs()));
    using AutoLoader = it::Loader<it::storage::automatic, it::transport::single, it::sink::host>;
    namespace st = it::storage;

    // Without the filter, the automatic choice is io_uring (this machine has it).
    {
        AutoLoader loader(checkpoint, st::automatic(), {}, it::sink::host(test_ring), small_slots);
        CHECK(loader.storage().chosen() == st::Backend::uring);
        CHECK(loader.storage().fallback_reason().empty());
    }

    const int status = in_child([&]() -> int {
        if (!refuse_io_uring()) return 10;
        // The filter works: io_uring_setup fails with EPERM.
        if (::syscall(__NR_io_uring_setup, 4, nullptr) != -1 || errno != EPERM) return 11;
        for (it::DirectIo direct : all_direct) {
            AutoLoader loader(checkpoint, st::automatic({st::Backend::automatic, direct, 16, 3}), {},
                              it::sink::host(test_ring), small_slots);
            if (loader.storage().chosen() != st::Backend::pread) return 20;
            const std::string& reason = loader.storage().fallback_reason();
            if (reason.empty() || reason.find("io_uring") == std::string::npos) return 21;
            if (loader.storage().name() != "pread") return 22;
            if (!loads_exactly(loader, checkpoint)) return 23;
        }
        // Asking for io_uring explicitly is an unavailable_error, through automatic or directly.
        try {
            AutoLoader loader(checkpoint, st::automatic({st::Backend::uring, it::DirectIo::off, 16, 3}), {},
                              it::sink::host(test_ring));
            return 30;
        } catch (const it::unavailable_error& e) {
            if (std::string(e.what()).find("io_uring") == std::string::npos) return 31;
        }
        try {
#if INSTANTTENSOR_HAS_URING
            it::Loader<st::uring, it::transport::single, it::sink::host> loader(checkpoint, st::uring(), {},
                                                                                it::sink::host(test_ring));
            return 32;
#endif
        } catch (const it::unavailable_error&) {
        }
        // pread and memory do not need io_uring.
        {
            HostLoaderOf<st::pread> loader(checkpoint, st::pread(), {}, it::sink::host(test_ring), small_slots);
            if (!loads_exactly(loader, checkpoint)) return 40;
        }
        {
            auto loader = it::load_to_host(checkpoint, small_slots);
            if (loader.storage().chosen() != st::Backend::pread || !loads_exactly(loader, checkpoint)) return 41;
        }
        return 0;
    });
    check_child_status(status);
}

/// The message of the io_error a load of `checkpoint` with `storage` throws; empty when it loads
/// every tensor exactly, "wrong bytes" when it loads others.
template <class S>
std::string load_failure(const fmt::Checkpoint& checkpoint, S storage) {
    try {
        HostLoaderOf<S> loader(checkpoint, std::move(storage), {}, it::sink::host(test_ring), small_slots);
        return loads_exactly(loader, checkpoint) ? "" : "wrong bytes";
    } catch (const it::io_error& e) {
        return e.what();
    }
}

TEST_CASE("fallback: O_DIRECT refused when the file is opened") {
    if (audit_arch == 0) {
        MESSAGE("skipped: no seccomp architecture constant for this target");
        return;
    }
    TempDir dir;
    const auto path = write_file(dir / "nodirect.safetensors", fallback_specs());
    const auto checkpoint = fmt::Checkpoint::open(path);
    const int status = in_child([&]() -> int {
        if (!refuse_o_direct()) return 10;
        const int plain = ::open(path.c_str(), O_RDONLY);
        if (plain < 0) return 11;
        const bool refused = ::fcntl(plain, F_SETFL, O_DIRECT) == -1 && errno == EINVAL;
        ::close(plain);
        if (!refused) return 12;
        int code = 20;
        for (Via via : {Via::uring, Via::pread, Via::auto_uring, Via::auto_pread}) {
            if ((via == Via::uring || via == Via::auto_uring) && !uring_available()) continue;
            // DirectIo::automatic reads the file buffered (it would choose O_DIRECT for a cold file).
            evict_from_page_cache(path);
            ++code;
            const bool buffered = with_storage(via, it::DirectIo::automatic, [&](auto storage) {
                using S = decltype(storage);
                HostLoaderOf<S> loader(checkpoint, std::move(storage), {}, it::sink::host(test_ring), small_slots);
                return direct_files_of(loader.storage()) == 0 && loader.storage().alignment(0) == 1 &&
                       loads_exactly(loader, checkpoint);
            });
            if (!buffered) return code;
            // DirectIo::on means O_DIRECT or an error naming the file, never a buffered read.
            ++code;
            const std::string failure = with_storage(via, it::DirectIo::on, [&](auto storage) {
                return load_failure(checkpoint, std::move(storage));
            });
            if (!failure.starts_with(path.string() + ": cannot read with O_DIRECT, which DirectIo::on (--direct on) asks "
                                                     "for: the filesystem refuses it"))
                return code;
        }
        return 0;
    });
    check_child_status(status);
}

TEST_CASE("fallback: O_DIRECT refused at read time (EINVAL)") {
    // A filesystem may accept O_DIRECT at open and refuse the reads (EINVAL). Provoke that with a
    // read the device rejects: a short read of an unaligned length (Faulty passes 1000 bytes of
    // the request on), which the kernel refuses for an O_DIRECT descriptor. Three reads in a row
    // are refused, so that O_DIRECT reads are still in flight when the first refusal switches the
    // file. Under DirectIo::automatic the backends then read the file buffered (every refused read
    // again, also those that were queued with O_DIRECT before the switch), and the loader
    // continues with the right bytes; under DirectIo::on the refusal is the load's error.
    TempDir dir;
    const auto path = write_file(dir / "readtime.safetensors", fallback_specs());
    const auto checkpoint = fmt::Checkpoint::open(path);
    if (!can_read_cold_with_o_direct(path)) return;
    {
        // Check that this filesystem refuses unaligned O_DIRECT reads at all.
        const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
        REQUIRE(fd >= 0);
        std::vector<std::byte> buffer(8192);
        const auto address = reinterpret_cast<std::uintptr_t>(buffer.data());
        auto* aligned = reinterpret_cast<std::byte*>((address + 4095) & ~std::uintptr_t{4095});
        const ssize_t n = ::pread(fd, aligned, 1000, 0);
        const int read_errno = errno;
        ::close(fd);
        if (n >= 0) {
            MESSAGE("skipped: this filesystem accepts unaligned O_DIRECT reads");
            return;
        }
        REQUIRE(read_errno == EINVAL);
    }
    namespace st = it::storage;
    const Fault unaligned_continuation{Fault::short_read, 2, 3, 1000};
    auto check = [&](auto make) {
        using Inner = decltype(make(it::DirectIo::on));
        {
            evict_from_page_cache(path);  // DirectIo::automatic chooses O_DIRECT for a cold file
            it::Loader<Faulty<Inner>, it::transport::single, it::sink::host> loader(
                checkpoint, Faulty<Inner>(make(it::DirectIo::automatic), unaligned_continuation), {},
                it::sink::host(test_ring), small_slots);
            REQUIRE(loader.storage().inner().files().direct_count() == 1);
            CHECK(loader.storage().inner().alignment(0) > 1);
            CHECK(loads_exactly(loader, checkpoint));
            CHECK(loader.storage().faults() == 3);
            CHECK(loader.storage().inner().files().direct_count() == 0);  // read buffered from then on
            CHECK(loader.storage().inner().alignment(0) == 1);
        }
        const std::string failure = load_failure(checkpoint, Faulty<Inner>(make(it::DirectIo::on), unaligned_continuation));
        CHECK(failure.starts_with(path.string() + ": read failed at byte "));
        CHECK(failure.ends_with(" (an O_DIRECT read): " + std::string(std::strerror(EINVAL))));
    };
#if INSTANTTENSOR_HAS_URING
    SUBCASE("uring") {
        if (uring_available()) check([](it::DirectIo direct) { return st::uring(st::uring::Options{8, direct}); });
    }
#endif
    SUBCASE("pread") {
        check([](it::DirectIo direct) { return st::pread(st::pread::Options{2, direct}); });
    }
}

TEST_CASE("fallback: a checkpoint on tmpfs loaded with DirectIo::on") {
    struct statfs fs_info {};
    if (::statfs("/dev/shm", &fs_info) != 0 || fs_info.f_type != TMPFS_MAGIC) {
        MESSAGE("skipped: /dev/shm is not tmpfs here");
        return;
    }
    TempDir dir("/dev/shm");
    const auto path = write_file(dir / "shm.safetensors", fallback_specs());
    const auto checkpoint = fmt::Checkpoint::open(path);
    // Older kernels refuse O_DIRECT on tmpfs; since Linux 6.6 tmpfs accepts it (and serves it from
    // memory). Where it is accepted, every file backend reads with it; where it is refused,
    // DirectIo::on is an error. The memory backend ignores the policy.
    const bool refused = !accepts_o_direct(path);
    if (!refused) MESSAGE("this kernel's tmpfs accepts O_DIRECT");
    for (Via via : {Via::uring, Via::pread, Via::auto_uring, Via::auto_pread, Via::memory}) {
        if (unavailable(via)) continue;
        for (SinkKind sink : all_sinks) {
            INFO(to_string(via), " ", to_string(sink));
            if (refused && via != Via::memory) {
                CHECK_THROWS_WITH_AS(load(checkpoint, via, it::DirectIo::on, sink, small_slots),
                                     doctest::Contains("cannot read with O_DIRECT"), it::io_error);
                continue;
            }
            const Outcome out = load(checkpoint, via, it::DirectIo::on, sink, small_slots);
            check_outcome(checkpoint, out);
            CHECK(out.direct_files == (via == Via::memory ? 0 : 1));
        }
    }
}
