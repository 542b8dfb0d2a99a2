// instanttensor/detail/guarded_copy.hpp: a copy out of memory that may fault without the fault
// ending the process.
//
// Reading a mapped file's page that lies past the file's end (the file was truncated after it was
// mapped), or whose bytes the filesystem cannot deliver (an I/O error), raises SIGBUS, whose default
// action kills the process without a message. guarded_copy installs, once per process, a SIGBUS
// handler that jumps back out of a copy this thread is doing when the faulting address lies in the
// copy's source, and passes every other SIGBUS on to the handler installed before it (or to the
// default action). A handler the application installs later replaces it: guarded copies then
// fault as unguarded ones would.
#pragma once

#include <setjmp.h>
#include <signal.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <mutex>

namespace instanttensor::detail {

struct SigbusGuard {
    sigjmp_buf jump;
    const std::byte* begin;
    const std::byte* end;
};

/// The copy this thread is doing under guard, if any.
inline thread_local SigbusGuard* active_sigbus_guard = nullptr;
/// What SIGBUS did before the guard's handler was installed.
inline struct sigaction sigbus_before_guard {};

inline void on_sigbus(int signal, siginfo_t* info, void* context) {
    SigbusGuard* guard = active_sigbus_guard;
    const auto* address = static_cast<const std::byte*>(info->si_addr);
    if (guard != nullptr && address >= guard->begin && address < guard->end) siglongjmp(guard->jump, 1);
    // Not a guarded copy's fault: do what the previous disposition would have done.
    const struct sigaction& before = sigbus_before_guard;
    if ((before.sa_flags & SA_SIGINFO) != 0) {
        before.sa_sigaction(signal, info, context);
    } else if (before.sa_handler == SIG_IGN && info->si_code <= 0) {
        // Sent by kill() or sigqueue(): ignored, as before. (A fault cannot be ignored.)
    } else if (before.sa_handler == SIG_DFL || before.sa_handler == SIG_IGN) {
        // Restore the default action and raise again: the signal is blocked inside this handler,
        // so it is delivered, and ends the process, as soon as the handler returns.
        struct sigaction default_action {};
        default_action.sa_handler = SIG_DFL;
        ::sigaction(SIGBUS, &default_action, nullptr);
        ::raise(SIGBUS);
    } else {
        before.sa_handler(signal);
    }
}

inline void install_sigbus_guard() {
    static std::once_flag installed;
    std::call_once(installed, [] {
        struct sigaction action {};
        action.sa_sigaction = on_sigbus;
        action.sa_flags = SA_SIGINFO | SA_ONSTACK;
        ::sigemptyset(&action.sa_mask);
        ::sigaction(SIGBUS, &action, &sigbus_before_guard);
    });
}

/// Copies `size` bytes from `source` to `destination`. Returns false, with `destination` holding
/// an unknown part of the bytes, when reading `source` raised SIGBUS.
inline bool guarded_copy(std::byte* destination, const std::byte* source, std::size_t size) {
    install_sigbus_guard();
    SigbusGuard guard{{}, source, source + size};
    // Saves the signal mask, so that jumping out of the handler unblocks SIGBUS again.
    if (sigsetjmp(guard.jump, 1) != 0) {
        active_sigbus_guard = nullptr;
        return false;
    }
    active_sigbus_guard = &guard;
    std::atomic_signal_fence(std::memory_order_seq_cst);  // the guard is visible to the handler before the copy
    std::memcpy(destination, source, size);
    std::atomic_signal_fence(std::memory_order_seq_cst);
    active_sigbus_guard = nullptr;
    return true;
}

}  // namespace instanttensor::detail
