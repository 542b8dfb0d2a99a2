// tests/support/child.hpp: running part of a test in a forked child, for what must not touch the
// test process itself: a seccomp filter, a lowered resource limit, a signal that ends a process.
#pragma once

#include <doctest/doctest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

namespace instanttensor_test {

/// Runs `body` in a forked child and returns its exit status (0 = every check passed); an
/// exception leaving `body` is 99, and a child killed by a signal reports 128 + the signal.
template <class F>
int in_child(F&& body) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const rlimit no_core{0, 0};  // a child killed on purpose leaves no core file
        ::setrlimit(RLIMIT_CORE, &no_core);
        int code;
        try {
            code = body();
        } catch (...) {
            code = 99;
        }
        ::_exit(code);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0) REQUIRE(errno == EINTR);
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}

}  // namespace instanttensor_test
