// tests/loader/support.hpp: what the loader tests share: a temporary directory, deterministic
// tensor bytes, checkpoint writers, and a way to run every storage backend × page-cache policy ×
// sink combination over a checkpoint and compare what it yields with the bytes that were written.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "instanttensor/config.hpp"
#include "instanttensor/format/writer.hpp"
#include "instanttensor/loader.hpp"
#include "temp_dir.hpp"

#if INSTANTTENSOR_HAS_URING
#include <liburing.h>
#endif

namespace loader_test {

namespace fs = std::filesystem;
namespace it = instanttensor;
namespace fmt = instanttensor::format;

using instanttensor_test::TempDir;

/// The bytes tensor `name` is written with: a splitmix64 stream seeded by the name.
inline void fill_bytes(std::string_view name, std::span<std::byte> out) {
    std::uint64_t state = 0xcbf29ce484222325ull;
    for (char c : name) state = (state ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
    std::size_t i = 0;
    while (i < out.size()) {
        state += 0x9e3779b97f4a7c15ull;
        std::uint64_t z = state;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        for (unsigned k = 0; k < 8 && i < out.size(); ++k, ++i) out[i] = static_cast<std::byte>((z >> (8 * k)) & 0xff);
    }
}

inline std::vector<std::byte> expected_bytes(std::string_view name, std::uint64_t size) {
    std::vector<std::byte> bytes(static_cast<std::size_t>(size));
    fill_bytes(name, bytes);
    return bytes;
}

inline void fill_tensor(const fmt::TensorSpec& spec, std::span<std::byte> out) { fill_bytes(spec.name, out); }

/// Bytes of a spec, computed here rather than by the library.
inline std::uint64_t spec_bytes(const fmt::TensorSpec& spec) {
    const auto n = fmt::byte_size(spec.dtype, spec.shape);
    REQUIRE(n.has_value());
    return *n;
}

inline fs::path write_file(const fs::path& path, std::vector<fmt::TensorSpec> specs) {
    fmt::write_safetensors(path, std::move(specs), fill_tensor);
    return path;
}

/// Drops the file's pages from the page cache, so DirectIo::automatic reads it with O_DIRECT.
inline void evict_from_page_cache(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
}

/// Whether the filesystem holding `file` accepts O_DIRECT opens.
inline bool accepts_o_direct(const fs::path& file) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
    if (fd < 0) return false;
    ::close(fd);
    return true;
}

/// Whether `file` is on tmpfs (whose pages cannot be evicted from the page cache).
inline bool on_tmpfs(const fs::path& file) {
    struct statfs info {};
    return ::statfs(file.c_str(), &info) == 0 && info.f_type == TMPFS_MAGIC;
}

/// Whether io_uring works here: built with liburing, and the kernel lets this process make a ring
/// (kernel.io_uring_disabled or a container's seccomp profile may refuse it).
inline bool uring_available() {
#if INSTANTTENSOR_HAS_URING
    static const bool available = [] {
        io_uring ring{};
        if (::io_uring_queue_init(2, &ring, 0) != 0) return false;
        ::io_uring_queue_exit(&ring);
        return true;
    }();
    return available;
#else
    return false;
#endif
}

// ---- checkpoints used by several tests ------------------------------------------------------

/// Hundreds of 1–64-byte tensors of one-byte and wider dtypes.
inline std::vector<fmt::TensorSpec> tiny_specs(std::size_t count = 300, std::uint32_t seed = 1) {
    std::mt19937 rng(seed);
    std::vector<fmt::TensorSpec> specs;
    for (std::size_t i = 0; i < count; ++i) {
        const auto size = std::uniform_int_distribution<std::uint64_t>(1, 64)(rng);
        switch (rng() % 3) {
        case 0: specs.push_back({"tiny." + std::to_string(i), fmt::Dtype::U8, {size}}); break;
        case 1: specs.push_back({"tiny." + std::to_string(i), fmt::Dtype::F16, {(size + 1) / 2}}); break;
        default: specs.push_back({"tiny." + std::to_string(i), fmt::Dtype::F32, {(size + 3) / 4}}); break;
        }
    }
    return specs;
}

/// Tensors at odd offsets: U8 tensors of odd sizes, some spanning several 16 KiB extents.
inline std::vector<fmt::TensorSpec> odd_specs() {
    std::vector<fmt::TensorSpec> specs;
    const std::uint64_t sizes[] = {1, 3, 4095, 4097, 7, 16385, 12345, 5, 40961, 9, 33333, 1, 65537, 2047};
    for (std::size_t i = 0; i < std::size(sizes); ++i)
        specs.push_back({"odd." + std::to_string(i), fmt::Dtype::U8, {sizes[i]}});
    specs.push_back({"wide.a", fmt::Dtype::F32, {1001}});
    specs.push_back({"wide.b", fmt::Dtype::F64, {3, 7}});
    return specs;
}

/// Empty tensors and scalars, among ordinary ones.
inline std::vector<fmt::TensorSpec> edge_specs() {
    return {
        {"a.empty", fmt::Dtype::F32, {0}},
        {"b.scalar", fmt::Dtype::F32, {}},
        {"c.empty2d", fmt::Dtype::F16, {3, 0}},
        {"d.u8scalar", fmt::Dtype::U8, {}},
        {"e.matrix", fmt::Dtype::F32, {17, 33}},
        {"f.empty", fmt::Dtype::U8, {0, 5}},
        {"g.scalar64", fmt::Dtype::F64, {}},
        {"h.bytes", fmt::Dtype::U8, {21001}},
        {"z.empty", fmt::Dtype::I64, {0}},
    };
}

/// Checkpoints parsed from memory: only the layout matters to a plan, so the bytes are zeros.
inline fmt::Checkpoint checkpoint_of(const std::vector<std::vector<fmt::TensorSpec>>& files) {
    std::uint64_t largest = 0;
    for (const auto& f : files)
        for (const auto& s : f) largest = std::max(largest, spec_bytes(s));
    const std::vector<std::byte> zeros(static_cast<std::size_t>(largest));
    std::vector<std::vector<std::byte>> bytes;
    for (const auto& f : files) {
        std::vector<fmt::TensorData> data;
        for (const auto& s : f) data.push_back({s, std::span(zeros).first(static_cast<std::size_t>(spec_bytes(s)))});
        bytes.push_back(fmt::serialize_safetensors(data));
    }
    std::vector<std::pair<std::string, std::span<const std::byte>>> named;
    for (std::size_t i = 0; i < bytes.size(); ++i) named.emplace_back("file" + std::to_string(i), bytes[i]);
    return fmt::Checkpoint::from_memory(named);
}

/// Load options with the given staging ring (all tensors selected).
inline it::LoadOptions ring_of(std::uint64_t staging_bytes, std::uint64_t slot_bytes) {
    it::LoadOptions options;
    options.staging_bytes = staging_bytes;
    options.slot_bytes = slot_bytes;
    return options;
}

// ---- running loaders ------------------------------------------------------------------------

/// How a test asks for its storage backend.
enum class Via { auto_uring, auto_pread, auto_memory, uring, pread, memory };
enum class SinkKind { host, placement };

inline std::string to_string(Via v) {
    switch (v) {
    case Via::auto_uring: return "automatic(uring)";
    case Via::auto_pread: return "automatic(pread)";
    case Via::auto_memory: return "automatic(memory)";
    case Via::uring: return "uring";
    case Via::pread: return "pread";
    case Via::memory: return "memory";
    }
    return "?";
}
inline std::string to_string(it::DirectIo d) {
    switch (d) {
    case it::DirectIo::automatic: return "direct=auto";
    case it::DirectIo::on: return "direct=on";
    case it::DirectIo::off: return "direct=off";
    }
    return "?";
}
inline std::string to_string(SinkKind k) { return k == SinkKind::host ? "sink::host" : "sink::placement"; }

/// Whether `via` cannot run here (io_uring missing or refused); says so, so that a skip is visible.
inline bool unavailable(Via via) {
    if ((via != Via::uring && via != Via::auto_uring) || uring_available()) return false;
    MESSAGE("io_uring is unavailable here: skipping " << to_string(via));
    return true;
}

inline constexpr Via all_vias[] = {Via::auto_uring, Via::auto_pread, Via::auto_memory,
                                   Via::uring,      Via::pread,      Via::memory};
inline constexpr it::DirectIo all_direct[] = {it::DirectIo::off, it::DirectIo::on, it::DirectIo::automatic};
inline constexpr SinkKind all_sinks[] = {SinkKind::host, SinkKind::placement};

/// A loader of storage `S` into a host window, on one rank.
template <class S>
using HostLoaderOf = it::Loader<S, it::transport::single, it::sink::host>;

/// Calls `f` with a fresh, unopened storage backend of the kind asked for.
template <class F>
decltype(auto) with_storage(Via via, it::DirectIo direct, F&& f) {
    namespace st = instanttensor::storage;
    switch (via) {
    case Via::auto_uring: return f(st::automatic({st::Backend::uring, direct, 16, 4}));
    case Via::auto_pread: return f(st::automatic({st::Backend::pread, direct, 16, 4}));
    case Via::auto_memory: return f(st::automatic({st::Backend::memory, direct, 16, 4}));
    case Via::uring:
#if INSTANTTENSOR_HAS_URING
        return f(st::uring(st::uring::Options{16, direct}));
#else
        break;  // callers skip it: unavailable(Via::uring)
#endif
    case Via::pread: return f(st::pread(st::pread::Options{3, direct}));
    case Via::memory: return f(st::memory());
    }
    FAIL("unknown backend");
    return f(st::memory());
}

/// A yielded tensor, copied out of the view.
struct Loaded {
    std::string name;
    fmt::Dtype dtype{};
    std::vector<std::uint64_t> shape;
    std::vector<std::byte> bytes;
    const fmt::TensorRef* ref = nullptr;
};

/// What one load produced.
struct Outcome {
    std::vector<Loaded> tensors;
    it::LoadStats stats;
    std::uint64_t plan_read_bytes = 0;
    std::size_t plan_extents = 0;
    std::size_t direct_files = 0;
};

/// Number of files a backend reads with O_DIRECT (0 where it has no files()).
template <class S>
std::size_t direct_files_of(const S& storage) {
    if constexpr (requires { storage.direct_files(); }) return storage.direct_files();
    else if constexpr (requires { storage.files().direct_count(); }) return storage.files().direct_count();
    else return 0;
}

/// Copies every yielded tensor out of its view before advancing (sink::host's views are valid
/// only until then).
template <class L>
void drain(L& loader, Outcome& out) {
    for (const it::TensorView& t : loader) {
        Loaded l;
        l.name = std::string(t.name);
        l.dtype = t.dtype;
        l.shape.assign(t.shape.begin(), t.shape.end());
        l.bytes.assign(t.data.begin(), t.data.end());
        l.ref = t.ref;
        CHECK(t.memory == it::MemoryKind::host);
        // sink::host starts every tensor at a multiple of its alignment.
        if constexpr (std::is_same_v<std::decay_t<decltype(loader.sink())>, it::sink::host>)
            if (!t.data.empty())
                CHECK(reinterpret_cast<std::uintptr_t>(t.data.data()) % it::sink::host::tensor_alignment == 0);
        out.tensors.push_back(std::move(l));
    }
    out.stats = loader.stats();
    out.plan_read_bytes = loader.plan().read_bytes;
    out.plan_extents = loader.plan().extents.size();
    out.direct_files = direct_files_of(loader.storage());
}

/// Destinations for sink::placement: one buffer per tensor, filled with a poison pattern so a
/// byte the loader failed to write shows up.
class Placements {
public:
    explicit Placements(const fmt::Checkpoint& checkpoint) {
        for (const auto& t : checkpoint.tensors())
            buffers_[t.name()].assign(static_cast<std::size_t>(t.nbytes()), std::byte{0xa5});
    }
    it::sink::placement::Destination destination() {
        return [this](const fmt::TensorRef& t) -> std::span<std::byte> {
            ++calls_;
            auto& b = buffers_.at(t.name());
            return {b.data(), b.size()};
        };
    }
    it::sink::placement sink() { return it::sink::placement(destination()); }
    [[nodiscard]] const std::vector<std::byte>& buffer(const std::string& name) const { return buffers_.at(name); }
    [[nodiscard]] std::size_t calls() const noexcept { return calls_; }

private:
    std::map<std::string, std::vector<std::byte>> buffers_;
    std::size_t calls_ = 0;
};

/// A sink::host window that holds what every test checkpoint needs; smaller than the default
/// (256 MiB), which the sanitizers make slow to allocate and free hundreds of times.
inline constexpr std::uint64_t test_window = 16ull << 20;

/// Loads `checkpoint` with the given backend, page-cache policy and sink.
inline Outcome load(const fmt::Checkpoint& checkpoint, Via via, it::DirectIo direct, SinkKind sink,
                    it::LoadOptions options = {}) {
    Outcome out;
    with_storage(via, direct, [&](auto storage) {
        using S = decltype(storage);
        if (sink == SinkKind::host) {
            it::Loader<S, it::transport::single, it::sink::host> loader(checkpoint, std::move(storage), {},
                                                                        it::sink::host(test_window), options);
            drain(loader, out);
        } else {
            Placements places(checkpoint);
            it::Loader<S, it::transport::single, it::sink::placement> loader(checkpoint, std::move(storage), {},
                                                                             places.sink(), options);
            for (const it::TensorView& t : loader) {
                const auto& b = places.buffer(std::string(t.name));
                if (t.data.size() > 0) CHECK(t.data.data() == b.data());
                CHECK(t.data.size() == b.size());
                Loaded l{std::string(t.name), t.dtype, {t.shape.begin(), t.shape.end()}, b, t.ref};
                out.tensors.push_back(std::move(l));
            }
            out.stats = loader.stats();
            out.plan_read_bytes = loader.plan().read_bytes;
            out.plan_extents = loader.plan().extents.size();
            out.direct_files = direct_files_of(loader.storage());
            // Each non-empty selected tensor asked for its destination exactly once.
            std::size_t non_empty = 0;
            for (const auto& t : out.tensors) non_empty += t.bytes.empty() ? 0 : 1;
            CHECK(places.calls() == non_empty);
        }
    });
    return out;
}

/// The tensors a load with `filter` must yield, in the order it must yield them.
inline std::vector<const fmt::TensorRef*> expected_order(const fmt::Checkpoint& checkpoint,
                                                         const it::TensorFilter& filter = {}) {
    std::vector<const fmt::TensorRef*> refs;
    for (const auto& t : checkpoint.tensors())
        if (!filter || filter(t)) refs.push_back(&t);
    // Plan order is file then offset; check the checkpoint keeps it, independently of the library.
    for (std::size_t i = 1; i < refs.size(); ++i) {
        const bool ordered = refs[i - 1]->file < refs[i]->file ||
                             (refs[i - 1]->file == refs[i]->file && refs[i - 1]->file_offset <= refs[i]->file_offset);
        REQUIRE(ordered);
    }
    return refs;
}

/// Checks that `out` holds exactly the tensors `filter` selects, in plan order, each byte-exact.
inline void check_outcome(const fmt::Checkpoint& checkpoint, const Outcome& out, const it::TensorFilter& filter = {}) {
    const auto refs = expected_order(checkpoint, filter);
    REQUIRE(out.tensors.size() == refs.size());
    std::uint64_t bytes = 0;
    std::size_t mismatched = 0;
    for (std::size_t i = 0; i < refs.size(); ++i) {
        const auto& got = out.tensors[i];
        const auto& want = *refs[i];
        CHECK(got.name == want.name());
        CHECK(got.ref == &want);
        CHECK(got.dtype == want.info->dtype);
        CHECK(got.shape == want.info->shape);
        const auto expected = expected_bytes(want.name(), want.nbytes());
        if (got.bytes != expected) {
            ++mismatched;
            MESSAGE("bytes differ for tensor " << want.name() << " (" << want.nbytes() << " bytes at file offset "
                                               << want.file_offset << ")");
        }
        bytes += want.nbytes();
    }
    CHECK(mismatched == 0);
    CHECK(out.stats.tensors == refs.size());
    CHECK(out.stats.tensor_bytes == bytes);
    CHECK(out.stats.read_bytes == out.plan_read_bytes);
    CHECK(out.stats.reads >= out.plan_extents);
}

}  // namespace loader_test
