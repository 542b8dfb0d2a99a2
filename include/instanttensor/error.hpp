// instanttensor/error.hpp: the exceptions every part of the library throws.
//
//   error                 base of them all; what() is "<source>: <message>", where the source is
//   │                     the input at fault (a file path, "<stdout>") or the part of the library
//   │                     that refused ("sink::host", "cuda", "group"), and may be empty
//   ├─ format_error       a checkpoint that breaks the safetensors format or our stricter rules
//   ├─ integrity_error    a tensor's bytes are not those its expected digest names
//   ├─ io_error           an operating-system call failed (carries errno)
//   ├─ cuda_error         a CUDA runtime call failed
//   ├─ nccl_error         an NCCL call failed, or a peer of a group load failed
//   ├─ unavailable_error  a backend cannot run here (no io_uring, no GDS driver...) and says why
//   └─ usage_error        an argument that cannot work whatever the files hold (also a
//                         std::invalid_argument, so `catch (const std::invalid_argument&)` holds)
//
// Every exception is also exactly one std::exception (the others are std::runtime_error), so
// `catch (const std::exception&)` catches each of them. Messages are short, lowercase, name the
// tensor or byte offset, and say what to do where that is known.
#pragma once

#include <cerrno>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace instanttensor {

/// Base of every exception the library throws. Catch it to catch them all; it is not itself a
/// std::exception (each concrete error is one, once), and it is never thrown alone.
class error {
public:
    virtual ~error() = default;

    /// "<source>: <message>", or the message alone when there is no source.
    [[nodiscard]] virtual const char* what() const noexcept = 0;
    /// The input (a file path, ...) or the part of the library the error is about; may be empty.
    [[nodiscard]] const std::string& source() const noexcept { return source_; }
    /// What is wrong, without the source prefix.
    [[nodiscard]] const std::string& message() const noexcept { return message_; }

    /// Throws a copy of this error, of the same type with the same source, message and code, whose
    /// what() reads "<prefix><what()>": how a stopped loader repeats its first error.
    [[noreturn]] void throw_again(std::string_view prefix) const {
        throw_copy(prefix);
        std::terminate();  // not reached: every throw_copy throws (compilers do not trust a virtual call to)
    }

protected:
    /// Throws the copy throw_again describes.
    virtual void throw_copy(std::string_view prefix) const = 0;

    error(std::string source, std::string_view message) : source_(std::move(source)), message_(message) {}
    error(const error&) = default;
    error& operator=(const error&) = default;

    static std::string compose(std::string_view source, std::string_view message) {
        if (source.empty()) return std::string(message);
        std::string s;
        s.reserve(source.size() + 2 + message.size());
        s.append(source).append(": ").append(message);
        return s;
    }

private:
    std::string source_;
    std::string message_;
};

namespace detail {

/// A concrete error: `Self` is the class being defined, `Standard` the one std::exception it is.
template <class Self, class Standard>
class error_of : public Standard, public error {
public:
    [[nodiscard]] const char* what() const noexcept override { return Standard::what(); }

    void throw_copy(std::string_view prefix) const override {
        Self again(static_cast<const Self&>(*this));
        static_cast<Standard&>(again) = Standard(std::string(prefix) + Standard::what());
        throw again;
    }

protected:
    error_of(std::string source, std::string_view message) : Standard(compose(source, message)), error(std::move(source), message) {}
};

}  // namespace detail

/// The input breaks the safetensors format or one of the library's validation rules.
class format_error : public detail::error_of<format_error, std::runtime_error> {
public:
    format_error(std::string source, std::string_view message) : error_of(std::move(source), message) {}
};

/// A tensor's bytes are not those its expected digest names (LoadOptions::verify): the file was
/// corrupted or changed after its digests were taken. The message names the tensor, the file and
/// both digests.
class integrity_error : public detail::error_of<integrity_error, std::runtime_error> {
public:
    integrity_error(std::string source, std::string_view message) : error_of(std::move(source), message) {}
};

/// An operating-system call failed; `code()` is the errno value.
class io_error : public detail::error_of<io_error, std::runtime_error> {
public:
    io_error(std::string source, std::string_view message, int code)
        : error_of(std::move(source), with_reason(message, code)), code_(code) {}

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
class cuda_error : public detail::error_of<cuda_error, std::runtime_error> {
public:
    cuda_error(std::string source, std::string_view message) : error_of(std::move(source), message) {}
};

/// An NCCL call failed, or the group a load runs in failed (a peer stopped, an exchange broke).
class nccl_error : public detail::error_of<nccl_error, std::runtime_error> {
public:
    nccl_error(std::string source, std::string_view message) : error_of(std::move(source), message) {}
};

/// A backend or feature cannot run on this machine; the message says which part refused and why.
class unavailable_error : public detail::error_of<unavailable_error, std::runtime_error> {
public:
    unavailable_error(std::string source, std::string_view message) : error_of(std::move(source), message) {}
};

/// An argument that cannot work whatever the files hold: a slot smaller than 12 KiB, a share of
/// rows past a tensor, a destination of the wrong size, a loader iterated twice. Also a
/// std::invalid_argument (and so a std::logic_error).
class usage_error : public detail::error_of<usage_error, std::invalid_argument> {
public:
    usage_error(std::string source, std::string_view message) : error_of(std::move(source), message) {}
};

}  // namespace instanttensor
