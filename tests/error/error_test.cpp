// The error hierarchy: every error is one std::exception and an instanttensor::error, a usage_error
// is also a std::invalid_argument, and throw_again repeats an error with its type and code.
#include <doctest/doctest.h>

#include <cerrno>
#include <stdexcept>
#include <string>

#include "instanttensor/error.hpp"

namespace {

namespace it = instanttensor;

/// What a catch site of each kind sees of `thrown`.
template <class E>
void check_catchable(const E& thrown, const std::string& what) {
    CAPTURE(what);
    try {
        throw thrown;
    } catch (const std::exception& e) {  // exactly one std::exception base: never ambiguous
        CHECK(std::string(e.what()) == what);
    }
    try {
        throw thrown;
    } catch (const it::error& e) {
        CHECK(std::string(e.what()) == what);
    }
}

}  // namespace

TEST_CASE("error: every error is a std::exception and an instanttensor::error, what() is source: message") {
    check_catchable(it::format_error("model.safetensors", "bad header"), "model.safetensors: bad header");
    check_catchable(it::io_error("model.safetensors", "read failed at byte 8", EIO),
                    "model.safetensors: read failed at byte 8: Input/output error");
    check_catchable(it::integrity_error("model.safetensors", "tensor 'w': its bytes digest to 1, m.xxh3 expects 2"),
                    "model.safetensors: tensor 'w': its bytes digest to 1, m.xxh3 expects 2");
    check_catchable(it::cuda_error("cuda", "cudaMalloc failed"), "cuda: cudaMalloc failed");
    check_catchable(it::nccl_error("nccl", "ncclSend failed"), "nccl: ncclSend failed");
    check_catchable(it::unavailable_error("io_uring", "refused"), "io_uring: refused");
    check_catchable(it::usage_error("sink::host", "a ring of 1 bytes is too small"), "sink::host: a ring of 1 bytes is too small");
    check_catchable(it::format_error("", "no checkpoint path given"), "no checkpoint path given");

    const it::io_error e("f", "cannot open", ENOENT);
    CHECK(e.source() == "f");
    CHECK(e.message() == "cannot open: No such file or directory");
    CHECK(e.code() == ENOENT);
    CHECK(it::io_error("f", "unexpected end of file", 0).message() == "unexpected end of file");
}

TEST_CASE("error: a usage_error is also a std::invalid_argument and a std::logic_error") {
    CHECK_THROWS_AS(throw it::usage_error("loader", "slot_bytes must be a multiple of 4096"), std::invalid_argument);
    CHECK_THROWS_AS(throw it::usage_error("loader", "a Loader is iterated only once"), std::logic_error);
    CHECK_THROWS_AS(throw it::usage_error("loader", "x"), it::error);
    CHECK_THROWS_AS(throw it::format_error("f", "x"), std::runtime_error);
}

TEST_CASE("error: throw_again keeps the type, source, message and code, and prefixes what()") {
    const it::io_error first("model.safetensors", "read failed at byte 4096", EIO);
    try {
        first.throw_again("loader: stopped after an earlier error: ");
    } catch (const it::io_error& again) {
        CHECK(std::string(again.what()) == "loader: stopped after an earlier error: model.safetensors: read failed at byte 4096: "
                                           "Input/output error");
        CHECK(again.code() == EIO);
        CHECK(again.source() == first.source());
        CHECK(again.message() == first.message());
    }
    const it::usage_error usage("sink::placement", "destination for tensor 'w' has 3 bytes");
    CHECK_THROWS_WITH_AS(usage.throw_again("again: "), "again: sink::placement: destination for tensor 'w' has 3 bytes",
                         std::invalid_argument);
    const it::error& as_base = usage;
    CHECK_THROWS_AS(as_base.throw_again(""), it::usage_error);
}
