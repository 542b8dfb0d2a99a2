// tools/hash.cpp: `instanttensor hash PATH...`: an XXH3-64 digest of every tensor's bytes.
//
// One line per tensor, `<16 lowercase hex digits>  <name>`, laid out like sha256sum and sorted by
// the raw UTF-8 bytes of the name (as `LC_ALL=C sort`), so two checkpoints holding the same
// tensors give the same text however they are sharded or laid out, and `diff` shows what changed.
// A name holding a backslash, newline or carriage return is escaped as sha256sum escapes file
// names: the line starts with a backslash and those characters read \\, \n and \r.
//
// The bytes are read here with plain pread, 16 MiB at a time, one descriptor per file opened once,
// files and tensors in checkpoint order. A later stage routes them through the loader instead, so
// that `hash --device cuda --backend uring` checks what actually lands in GPU memory; --device and
// --backend are accepted now, with the only values that exist yet, so scripts can pass them already.
#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli.hpp"
#include "instanttensor/detail/fd.hpp"
#include "instanttensor/format/checkpoint.hpp"

namespace instanttensor::cli {
namespace {

using format::Checkpoint;

/// Bytes read per pread: large enough that the syscall count does not matter, small enough that
/// a multi-GB tensor is never held whole.
constexpr std::uint64_t chunk_size = std::uint64_t{16} << 20;

struct HashOptions {
    std::vector<std::string> paths;
    std::string device = "cpu";
    std::string backend = "auto";
};

struct FreeXxh3State {
    void operator()(XXH3_state_t* state) const noexcept { XXH3_freeState(state); }
};
using Xxh3State = std::unique_ptr<XXH3_state_t, FreeXxh3State>;

struct Digest {
    std::string_view name;  // points into the checkpoint's headers
    XXH64_hash_t hash;
};

/// Hashes every tensor, reading the files in checkpoint order.
std::vector<Digest> hash_tensors(const Checkpoint& checkpoint) {
    std::uint64_t largest = 0;
    for (const auto& t : checkpoint.tensors()) largest = std::max(largest, t.nbytes());
    const auto buffer_size = static_cast<std::size_t>(std::min(largest, chunk_size));
    const auto buffer = std::make_unique_for_overwrite<std::byte[]>(std::max<std::size_t>(buffer_size, 1));

    Xxh3State state(XXH3_createState());
    if (!state) throw std::bad_alloc();

    std::vector<Digest> digests;
    digests.reserve(checkpoint.tensors().size());
    instanttensor::detail::FileDescriptor fd;
    std::uint32_t open_file = UINT32_MAX;
    std::string source;
    // Tensors come file by file, so each file is opened once, when its first tensor is reached.
    for (const auto& t : checkpoint.tensors()) {
        if (t.file != open_file) {
            const auto& file = checkpoint.files()[t.file];
            source = file.path.string();
            fd = instanttensor::detail::open_read_only(file.path);
            const auto size = instanttensor::detail::regular_file_size(fd.get(), source);
            if (size != file.header.file_size())
                throw format_error(source, "file is now " + std::to_string(size) + " bytes, its header says " +
                                               std::to_string(file.header.file_size()) + " (was it changed?)");
            open_file = t.file;
        }
        if (XXH3_64bits_reset(state.get()) != XXH_OK) throw error(source, "cannot reset the XXH3 state");
        for (std::uint64_t done = 0; done < t.nbytes();) {
            const auto length = static_cast<std::size_t>(std::min(chunk_size, t.nbytes() - done));
            const std::span<std::byte> chunk(buffer.get(), length);
            instanttensor::detail::read_exact(fd.get(), chunk, t.file_offset + done, source);
            if (XXH3_64bits_update(state.get(), chunk.data(), chunk.size()) != XXH_OK)
                throw error(source, "cannot hash tensor " + t.name());
            done += length;
        }
        digests.push_back({t.name(), XXH3_64bits_digest(state.get())});
    }
    return digests;
}

/// The name as sha256sum would write it, and whether the line needs the leading backslash.
std::pair<std::string, bool> escape_name(std::string_view name) {
    if (name.find_first_of("\\\n\r") == std::string_view::npos) return {std::string(name), false};
    std::string out;
    out.reserve(name.size() + 8);
    for (char ch : name) {
        if (ch == '\\') out.append("\\\\");
        else if (ch == '\n') out.append("\\n");
        else if (ch == '\r') out.append("\\r");
        else out.push_back(ch);
    }
    return {std::move(out), true};
}

int run_hash(const HashOptions& options) {
    const auto checkpoint = Checkpoint::open(to_paths(options.paths));
    auto digests = hash_tensors(checkpoint);
    // string_view's operator< compares as unsigned char: raw UTF-8 byte order, like LC_ALL=C sort.
    std::sort(digests.begin(), digests.end(), [](const Digest& a, const Digest& b) { return a.name < b.name; });
    std::string out;
    for (const auto& d : digests) {
        const auto [name, escaped] = escape_name(d.name);
        out.append(escaped ? "\\" : "").append(fmt::format("{:016x}  ", d.hash)).append(name).push_back('\n');
    }
    fmt::print("{}", out);
    return exit_ok;
}

/// A validator accepting only `allowed`, saying why anything else is refused.
CLI::Validator only(std::vector<std::string> allowed, std::string why) {
    return CLI::Validator(
        [allowed, why](std::string& value) -> std::string {
            if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return {};
            return "'" + value + "' is not available: " + why;
        },
        "", "only");
}

}  // namespace

void add_hash(CLI::App& app, Action& action) {
    auto options = std::make_shared<HashOptions>();
    auto* sub = app.add_subcommand("hash", "Print an XXH3-64 digest of each tensor's bytes, sorted by name");
    sub->footer(
        "Each line is '<16 lowercase hex digits>  <name>'; lines are sorted by the bytes of the name, so\n"
        "the same tensors give the same text however the checkpoint is sharded. Compare two with diff.\n"
        "--device and --backend take only the values built so far; GPU devices and the io_uring and GDS\n"
        "backends come with the loader.\n");
    sub->add_option("PATH", options->paths,
                    "Checkpoint file, index .json or directory; several make one checkpoint")
        ->type_name("")
        ->required();
    sub->add_option("--device", options->device, "Where the bytes are loaded before hashing (only 'cpu' for now)")
        ->type_name("DEVICE")
        ->capture_default_str()
        ->check(only({"cpu"}, "GPU loading is not built yet; use --device cpu"));
    sub->add_option("--backend", options->backend, "How files are read: 'auto' or 'pread' (the same for now)")
        ->type_name("BACKEND")
        ->capture_default_str()
        ->check(only({"auto", "pread"}, "only the pread backend is built yet; use --backend auto or pread"));
    sub->callback([options, &action] { action = [options] { return run_hash(*options); }; });
}

}  // namespace instanttensor::cli
