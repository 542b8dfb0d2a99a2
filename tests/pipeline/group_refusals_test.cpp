// pipeline::Group when something goes wrong: a failing rank, one whose loader cannot be made and one
// that stops iterating early make every peer fail instead of hang, each naming the rank (the
// protocol's status rounds); ranks that planned different loads all fail at once, naming the odd
// rank; options that cannot work (verify and verify_files among them) are refused. tests/pipeline/process_group_test.cpp runs ranks as
// processes over a transport that behaves like NCCL.
#include <doctest/doctest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "faulty.hpp"
#include "instanttensor/format/encryption.hpp"
#include "groups.hpp"
#include "late_copy_sink.hpp"

namespace {

using namespace instanttensor_test;

}  // namespace

TEST_CASE("group: a failing rank makes every rank fail instead of hang") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    using FaultyLoader = it::Loader<Faulty<it::storage::automatic>, InProcessTransport, it::sink::host>;
    for (int ranks : {2, 4, 8}) {
        for (std::uint64_t first : {1ull, 5ull}) {
            CAPTURE(ranks);
            CAPTURE(first);
            const int failing = ranks - 1;
            const auto results = run_group(ranks, [&](InProcessTransport transport, int r) {
                const Fault fault{r == failing ? Fault::eio : Fault::none, first, 1, 0};
                return FaultyLoader(checkpoint, Faulty(it::storage::automatic({it::storage::Backend::pread}), fault),
                                    std::move(transport), it::sink::host(), group_options({}));
            });
            for (int r = 0; r < ranks; ++r) {
                CAPTURE(r);
                const auto& error = results[static_cast<std::size_t>(r)].error;
                if (r == failing) CHECK(error.find("Input/output error") != std::string::npos);
                else CHECK(error.find("rank " + std::to_string(failing) + " failed at window ") != std::string::npos);
            }
        }
    }
}

TEST_CASE("group: a rank whose loader cannot be made releases its peers") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    const auto results = run_group(4, [&](InProcessTransport transport, int r) {
        auto options = group_options({});
        if (r == 2) options.windows = 1;  // refused by rank 2's loader only
        return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::pread}), std::move(transport),
                           it::sink::host(), options);
    });
    for (int r = 0; r < 4; ++r) {
        CAPTURE(r);
        const auto& error = results[static_cast<std::size_t>(r)].error;
        CHECK(error.find(r == 2 ? "windows must be 2 to 16" : "rank 2 could not start the load") != std::string::npos);
    }
}

TEST_CASE("group: a rank that stops iterating early releases its peers") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    InProcessGroup group(3);
    std::vector<std::string> errors(3);
    std::vector<std::thread> threads;
    for (int r = 0; r < 3; ++r)
        threads.emplace_back([&, r] {
            try {
                GroupLoader loader(checkpoint, it::storage::automatic({it::storage::Backend::pread}), InProcessTransport(group, r),
                                   it::sink::host(), group_options({}));
                for (const auto& t : loader)
                    if (r == 0 && !t.name.empty()) break;  // the consumer gives up after the first tensor
            } catch (const std::exception& e) {
                errors[static_cast<std::size_t>(r)] = e.what();
            }
        });
    for (auto& t : threads) t.join();
    CHECK(errors[0].empty());
    CHECK(errors[1].find("rank 0 stopped loading") != std::string::npos);
    CHECK(errors[2].find("rank 0 stopped loading") != std::string::npos);
}

TEST_CASE("group: ranks that planned different loads all fail at once, naming the odd rank") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", group_specs()));
    for (int odd : {0, 2}) {
        CAPTURE(odd);
        const auto results = run_group(3, [&](InProcessTransport transport, int r) {
            auto options = group_options(r == odd ? it::split_rows(is_weight) : it::ShareFunction{});
            return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::memory}), std::move(transport),
                               it::sink::host(), options);
        });
        const std::string expected = "rank " + std::to_string(odd == 0 ? 1 : odd) + " planned a different load than rank 0";
        for (const auto& out : results) CHECK(out.error.find(expected) != std::string::npos);
    }
    // No share function and keep_everything() plan the same load.
    const auto same = run_group(3, [&](InProcessTransport transport, int r) {
        return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::memory}), std::move(transport),
                           it::sink::host(), group_options(r == 1 ? it::keep_everything() : it::ShareFunction{}));
    });
    for (int r = 0; r < 3; ++r) check_rank(checkpoint, {}, r, 3, same[static_cast<std::size_t>(r)]);
    // A different window size is a different plan.
    const auto results = run_group(2, [&](InProcessTransport transport, int r) {
        auto options = group_options({});
        if (r == 1) options.window_bytes *= 2;
        return GroupLoader(checkpoint, it::storage::automatic({it::storage::Backend::memory}), std::move(transport),
                           it::sink::host(), options);
    });
    for (const auto& out : results) CHECK(out.error.find("rank 1 planned a different load") != std::string::npos);
}

TEST_CASE("group: options that cannot work are refused") {
    TempDir dir;
    const auto checkpoint = fmt::Checkpoint::open(write_file(dir / "one.safetensors", tiny_specs(10)));
    // A rank that cannot make its loader tells its peers and waits for them to hear it; here they
    // never come, so the wait is cut short by the deadline.
    auto group_options = [](it::ShareFunction share) {
        auto options = instanttensor_test::group_options(std::move(share));
        options.group_timeout = std::chrono::milliseconds(100);
        return options;
    };
    InProcessGroup group(2);
    auto options = group_options({});
    options.windows = 1;
    CHECK_THROWS_AS(GroupLoader(checkpoint, it::storage::automatic(), InProcessTransport(group, 0), it::sink::host(), options),
                    std::invalid_argument);
    CHECK_THROWS_AS(GroupLoader(checkpoint, it::storage::automatic(), InProcessTransport(group, 2), it::sink::host(),
                                group_options({})),
                    std::invalid_argument);
    // Verifying digests: no rank reads every byte of a tensor, so every rank refuses, before the protocol.
    auto verified = group_options({});
    verified.verify = fmt::TensorDigests("digests");
    CHECK_THROWS_WITH_AS(GroupLoader(checkpoint, it::storage::automatic(), InProcessTransport(group, 0), it::sink::host(), verified),
                         doctest::Contains("verify"), it::usage_error);
    // Hashing whole files: no rank reads every byte of a file.
    auto hashed = group_options({});
    hashed.verify_files = fmt::FileDigests("sums");
    CHECK_THROWS_WITH_AS(GroupLoader(checkpoint, it::storage::automatic(), InProcessTransport(group, 0), it::sink::host(), hashed),
                         doctest::Contains("verify_files hashes whole files as one process reads them"), it::usage_error);
#if INSTANTTENSOR_HAS_CRYPTO
    // Decrypting: a key for a plain file, and an encrypted file without a key.
    const auto key = std::make_shared<const fmt::Key>(fmt::Key::generate());
    auto keyed = group_options({});
    keyed.key = key;
    CHECK_THROWS_WITH_AS(GroupLoader(checkpoint, it::storage::automatic(), InProcessTransport(group, 0), it::sink::host(), keyed),
                         doctest::Contains("is not encrypted"), it::usage_error);
    fmt::encrypt_file(dir / "one.safetensors", dir / "encrypted.safetensors", *key);
    const auto encrypted = fmt::Checkpoint::open(dir / "encrypted.safetensors");
    CHECK_THROWS_WITH_AS(GroupLoader(encrypted, it::storage::automatic(), InProcessTransport(group, 0), it::sink::host(), group_options({})),
                         doctest::Contains("is encrypted"), it::usage_error);
#endif
    // A share of rows a tensor does not have: the message names the tensor's file and the tensor.
    const auto too_many = [](const fmt::TensorRef& t, int, int) { return Share::row_range(0, t.info->shape.empty() ? 1 : t.info->shape[0] + 1); };
    std::string message;
    try {
        GroupLoader(checkpoint, it::storage::automatic(), InProcessTransport(group, 0), it::sink::host(), group_options(too_many));
    } catch (const std::invalid_argument& e) {
        message = e.what();
    }
    CHECK(message.starts_with((dir / "one.safetensors").string() + ": a share of tensor '"));
    CHECK(message.find("runs past its") != std::string::npos);
    // A dimension a tensor does not have.
    message.clear();
    try {
        GroupLoader(checkpoint, it::storage::automatic(), InProcessTransport(group, 0), it::sink::host(),
                    group_options([](const fmt::TensorRef&, int, int) { return Share::block(9, 0, 1); }));
    } catch (const std::invalid_argument& e) {
        message = e.what();
    }
    CHECK(message.find("dimension 9 does not exist") != std::string::npos);
}

// ---- share functions and the group plan ---------------------------------------------------------
