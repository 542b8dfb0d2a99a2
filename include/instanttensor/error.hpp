// instanttensor/error.hpp: the exceptions every part of the library throws.
//
//   error                 base; what() is "<source>: <message>", source being a file path or a
//   ├─ format_error       a checkpoint that breaks the safetensors format or our stricter rules
//   ├─ io_error           an operating-system call failed (carries errno)
//   ├─ cuda_error         a CUDA runtime or driver call failed
//   ├─ nccl_error         an NCCL call failed
//   └─ unavailable_error  a backend cannot run here (no io_uring, no GDS driver...) and says why
//
// Messages are short, lowercase, name the tensor or byte offset, and say what to do where known.
#pragma once

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace instanttensor {

/// Base of every exception the library throws. `source()` is the file (or other input) at fault.
class error : public std::runtime_error {
public:
    error(std::string source, std::string_view message)
        : std::runtime_error(compose(source, message)),
          source_(std::move(source)),
          message_(message) {}

    /// The file path (or other input name) the error is about; may be empty.
    [[nodiscard]] const std::string& source() const noexcept { return source_; }
    /// What is wrong, without the source prefix.
    [[nodiscard]] const std::string& message() const noexcept { return message_; }

private:
    static std::string compose(std::string_view source, std::string_view message) {
        if (source.empty()) return std::string(message);
        std::string s;
        s.reserve(source.size() + 2 + message.size());
        s.append(source).append(": ").append(message);
        return s;
    }

    std::string source_;
    std::string message_;
};

/// The input breaks the safetensors format or one of the library's validation rules.
class format_error : public error {
public:
    using error::error;
};

/// An operating-system call failed; `code()` is the errno value.
class io_error : public error {
public:
    io_error(std::string source, std::string_view message, int code)
        : error(std::move(source), with_reason(message, code)), code_(code) {}

    [[nodiscard]] int code() const noexcept { return code_; }

private:
    static std::string with_reason(std::string_view message, int code) {
        std::string s(message);
        if (code != 0) s.append(": ").append(std::strerror(code));
        return s;
    }

    int code_;
};

/// A CUDA runtime call failed.
class cuda_error : public error {
public:
    using error::error;
};

/// An NCCL call failed.
class nccl_error : public error {
public:
    using error::error;
};

/// A backend or feature cannot run on this machine; the message says which part refused and why.
class unavailable_error : public error {
public:
    using error::error;
};

}  // namespace instanttensor
