// tests/support/loads.hpp: running loaders in every configuration the CPU offers (storage backend
// x page-cache policy x host sink) over a checkpoint, and comparing what they yield with the bytes
// that were written.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "checkpoints.hpp"
#include "instanttensor/loader.hpp"

namespace instanttensor_test {

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

/// A loader of storage `S` into a host ring, on one rank.
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
    std::uint32_t block_dim = 0;
    std::uint64_t block_first = 0;
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
        l.block_dim = t.block_dim;
        l.block_first = t.block_first;
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
/// Destinations for sink::placement, one per tensor, filled with 0xa5. Every other tensor's (in
/// file order) starts at sink::placement::in_place_offset past a page boundary, so that O_DIRECT
/// reads may land in it; the others 8 bytes past that, so that none may.
class Placements {
public:
    explicit Placements(const fmt::Checkpoint& checkpoint) {
        constexpr std::size_t page = 4096;
        for (std::size_t i = 0; i < checkpoint.tensors().size(); ++i) {
            const fmt::TensorRef& t = checkpoint.tensors()[i];
            const auto size = static_cast<std::size_t>(t.nbytes());
            Buffer& b = buffers_[t.name()];
            b.memory.resize(size + 2 * page);
            const std::size_t phase = (it::sink::placement::in_place_offset(t) + (i % 2 == 0 ? 0 : 8)) % page;
            const auto address = reinterpret_cast<std::uintptr_t>(b.memory.data());
            b.bytes = {b.memory.data() + (phase + page - address % page) % page, size};
            std::ranges::fill(b.bytes, std::byte{0xa5});
        }
    }
    it::sink::placement::Destination destination() {
        return [this](const fmt::TensorRef& t) -> std::span<std::byte> {
            ++calls_;
            return buffers_.at(t.name()).bytes;
        };
    }
    it::sink::placement sink() { return it::sink::placement(destination()); }
    [[nodiscard]] std::span<const std::byte> buffer(const std::string& name) const { return buffers_.at(name).bytes; }
    [[nodiscard]] std::vector<std::byte> bytes(const std::string& name) const {
        const auto b = buffer(name);
        return {b.begin(), b.end()};
    }
    [[nodiscard]] std::size_t calls() const noexcept { return calls_; }

private:
    struct Buffer {
        std::vector<std::byte> memory;
        std::span<std::byte> bytes;  // within memory
    };
    std::map<std::string, Buffer> buffers_;
    std::size_t calls_ = 0;
};

/// A sink::host ring that holds what every test checkpoint needs; smaller than the default
/// (256 MiB), which the sanitizers make slow to allocate and free hundreds of times.
inline constexpr std::uint64_t test_ring = 16ull << 20;

/// Loads `checkpoint` with the given backend, page-cache policy and sink. Defined in loads.cpp, so
/// that its eight loader types are compiled once per test executable, not in every file.
Outcome load(const fmt::Checkpoint& checkpoint, Via via, it::DirectIo direct, SinkKind sink, it::LoadOptions options = {});

/// Loads `checkpoint` with `options` through every backend that runs here × page-cache policy ×
/// sink, and calls check(outcome, via, direct) after each, the three named in doctest's INFO.
template <class Check>
void load_every_way(const fmt::Checkpoint& checkpoint, const it::LoadOptions& options, Check&& check) {
    for (Via via : all_vias) {
        if (unavailable(via)) continue;
        for (it::DirectIo direct : all_direct) {
            for (SinkKind sink : all_sinks) {
                INFO(to_string(via), " direct=", to_string(direct), " ", to_string(sink));
                check(load(checkpoint, via, direct, sink, options), via, direct);
            }
        }
    }
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

}  // namespace instanttensor_test
