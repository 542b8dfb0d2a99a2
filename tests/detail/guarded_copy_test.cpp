// detail::guarded_copy: a copy out of a mapping that faults returns false instead of ending the
// process, and every SIGBUS that is not a guarded copy's still does what it did before the guard's
// handler was installed: the default action (the process ends) or the application's handler.
// What touches signal dispositions runs in a forked child.
#include "instanttensor/detail/guarded_copy.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <filesystem>
#include <vector>

#include "child.hpp"
#include "temp_dir.hpp"

namespace {

using namespace instanttensor_test;
namespace detail = instanttensor::detail;

/// A file of three pages mapped whole, then truncated to one: its second and third pages fault.
class TruncatedMapping {
public:
    explicit TruncatedMapping(const std::filesystem::path& path) : page_(static_cast<std::size_t>(::sysconf(_SC_PAGESIZE))) {
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        REQUIRE(fd >= 0);
        std::vector<std::byte> bytes(3 * page_, std::byte{7});
        REQUIRE(::write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
        void* map = ::mmap(nullptr, 3 * page_, PROT_READ, MAP_SHARED, fd, 0);
        REQUIRE(map != MAP_FAILED);
        REQUIRE(::ftruncate(fd, static_cast<off_t>(page_)) == 0);
        ::close(fd);
        bytes_ = static_cast<const std::byte*>(map);
    }
    ~TruncatedMapping() { ::munmap(const_cast<std::byte*>(bytes_), 3 * page_); }
    TruncatedMapping(const TruncatedMapping&) = delete;
    TruncatedMapping& operator=(const TruncatedMapping&) = delete;

    [[nodiscard]] const std::byte* bytes() const noexcept { return bytes_; }
    [[nodiscard]] std::size_t page() const noexcept { return page_; }

private:
    std::size_t page_;
    const std::byte* bytes_ = nullptr;
};

/// Reads a byte without a guard.
std::byte touch(const std::byte* address) { return *static_cast<const volatile std::byte*>(address); }

/// Gives SIGBUS its default action (a sanitizer may have installed a handler of its own).
bool default_sigbus() {
    struct sigaction action {};
    action.sa_handler = SIG_DFL;
    return ::sigaction(SIGBUS, &action, nullptr) == 0;
}

}  // namespace

// The guard's handler is installed once per process, on the first guarded copy: each case runs in a
// child of its own, so that it installs it there, over the disposition the case sets up.

TEST_CASE("guarded_copy: a fault ends the copy, not the process") {
    TempDir dir;
    const int status = in_child([&] {
        TruncatedMapping mapping(dir / "truncated");
        std::vector<std::byte> out(3 * mapping.page());
        if (!detail::guarded_copy(out.data(), mapping.bytes(), mapping.page())) return 10;
        if (out[mapping.page() - 1] != std::byte{7}) return 11;
        if (detail::guarded_copy(out.data(), mapping.bytes(), 3 * mapping.page())) return 12;
        if (detail::guarded_copy(out.data(), mapping.bytes() + 2 * mapping.page(), 1)) return 13;
        // The guard is gone after a fault as after a copy: the next copy is guarded anew.
        if (!detail::guarded_copy(out.data(), mapping.bytes(), 16)) return 14;
        if (detail::guarded_copy(out.data(), mapping.bytes() + mapping.page(), 16)) return 15;
        return 0;
    });
    CHECK(status == 0);
}

TEST_CASE("guarded_copy: a fault outside a guarded copy still ends the process") {
    TempDir dir;
    const int status = in_child([&] {
        if (!default_sigbus()) return 10;
        TruncatedMapping mapping(dir / "truncated");
        std::byte out[16];
        if (detail::guarded_copy(out, mapping.bytes() + mapping.page(), sizeof out)) return 11;
        (void)touch(mapping.bytes() + mapping.page());
        return 12;  // not reached: the fault kills
    });
    CHECK(status == 128 + SIGBUS);
}

TEST_CASE("guarded_copy: a SIGBUS handler installed before the guard's still gets the other faults") {
    TempDir dir;
    const int status = in_child([&] {
        struct sigaction application {};
        application.sa_flags = SA_SIGINFO;
        application.sa_sigaction = [](int, siginfo_t*, void*) { ::_exit(42); };
        ::sigemptyset(&application.sa_mask);
        if (::sigaction(SIGBUS, &application, nullptr) != 0) return 10;
        TruncatedMapping mapping(dir / "truncated");
        std::byte out[16];
        if (detail::guarded_copy(out, mapping.bytes() + mapping.page(), sizeof out)) return 11;
        (void)touch(mapping.bytes() + 2 * mapping.page());
        return 12;  // not reached: the application's handler exits 42
    });
    CHECK(status == 42);
}

TEST_CASE("guarded_copy: a SIGBUS sent by kill ends the process as before") {
    const int status = in_child([] {
        if (!default_sigbus()) return 10;
        std::byte in[16]{}, out[16];
        if (!detail::guarded_copy(out, in, sizeof in)) return 11;
        ::raise(SIGBUS);
        return 12;
    });
    CHECK(status == 128 + SIGBUS);
}
