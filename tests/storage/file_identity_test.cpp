// Every storage backend opens a checkpoint's files through Checkpoint::open_file, which refuses a
// file that is not the one whose header was validated: replaced by a rename, or truncated, between
// Checkpoint::open and the load. Without the check, bytes are read at the old header's offsets
// from another file, and the load ends without error.
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "instanttensor/loader.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;
namespace st = instanttensor::storage;

/// The message of the error a load through `backend` throws (empty when it throws none).
std::string load_error(const fmt::Checkpoint& checkpoint, st::Backend backend, it::DirectIo direct) {
    try {
        for (const auto& t : it::load_to_host(checkpoint, {}, {backend, direct, 16, 4})) (void)t;
    } catch (const it::io_error& e) {
        return e.what();
    }
    return {};
}

}  // namespace

TEST_CASE("storage: a file replaced or truncated after its header was read is refused by every backend") {
    for (const auto backend : {st::Backend::uring, st::Backend::pread, st::Backend::memory}) {
        for (const auto direct : {it::DirectIo::off, it::DirectIo::on}) {
            CAPTURE(st::to_string(backend));
            CAPTURE(static_cast<int>(direct));
            TempDir dir;
            const auto path = write_file(dir / "model.safetensors", tiny_specs(40));
            const std::string refused = path.string() + ": is not the file whose header was read";
            {
                const auto checkpoint = fmt::Checkpoint::open(path);
                // The same layout with other bytes, renamed over the file: a new inode.
                auto other = tiny_specs(40);
                fmt::write_safetensors(dir / "other.safetensors", other, [](const fmt::TensorSpec& s, std::span<std::byte> out) {
                    fill_bytes(s.name + " (other)", out);
                });
                std::filesystem::rename(dir / "other.safetensors", path);
                CHECK(load_error(checkpoint, backend, direct).starts_with(refused));
            }
            {
                const auto checkpoint = fmt::Checkpoint::open(path);
                std::filesystem::resize_file(path, std::filesystem::file_size(path) - 3);
                CHECK(load_error(checkpoint, backend, direct).starts_with(refused));
            }
        }
    }
}
