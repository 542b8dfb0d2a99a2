// tests/support/checkpoints.hpp: the checkpoints tests load and how they check them: deterministic
// tensor bytes, writers of awkward layouts, and facts about the machine a test must know (whether
// the filesystem takes O_DIRECT, whether io_uring runs here).
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "instanttensor/config.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/format/writer.hpp"
#include "instanttensor/pipeline/options.hpp"
#include "temp_dir.hpp"

#if INSTANTTENSOR_HAS_URING
#include <liburing.h>
#endif

namespace instanttensor_test {


namespace fs = std::filesystem;
namespace it = instanttensor;
namespace fmt = instanttensor::format;

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

/// The bytes of the block [first, first + count) of dimension `dim` of a tensor whose bytes are
/// `all`, gathered element by element in row-major order: what a loaded block is compared with
/// (whole-byte dtypes; a scalar is its one element).
inline std::vector<std::byte> block_bytes(const fmt::TensorInfo& info, std::span<const std::byte> all, std::uint32_t dim,
                                          std::uint64_t first, std::uint64_t count) {
    const auto& shape = info.shape;
    if (shape.empty()) return {all.begin(), all.end()};
    const std::uint64_t element = fmt::bit_size(info.dtype) / 8;
    std::uint64_t elements = 1;
    for (const auto d : shape) elements *= d;
    std::vector<std::byte> out;
    std::vector<std::uint64_t> index(shape.size(), 0);
    for (std::uint64_t e = 0; e < elements; ++e) {
        if (index[dim] >= first && index[dim] < first + count)
            out.insert(out.end(), all.begin() + static_cast<std::ptrdiff_t>(e * element),
                       all.begin() + static_cast<std::ptrdiff_t>((e + 1) * element));
        for (std::size_t k = shape.size(); k-- > 0;) {  // the next index, last dimension fastest
            if (++index[k] < shape[k]) break;
            index[k] = 0;
        }
    }
    return out;
}

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

/// Whether `file` can be made cold and read with O_DIRECT: its filesystem accepts O_DIRECT and
/// can evict its pages (not tmpfs). Says so when not, so that a skip is visible.
inline bool can_read_cold_with_o_direct(const fs::path& file) {
    if (accepts_o_direct(file) && !on_tmpfs(file)) return true;
    MESSAGE("skipped: the temporary directory has no O_DIRECT or no evictable page cache");
    return false;
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

/// Load options with the given staging (all tensors selected).
inline it::LoadOptions ring_of(std::uint64_t staging_bytes, std::uint64_t slot_bytes) {
    it::LoadOptions options;
    options.staging_bytes = staging_bytes;
    options.slot_bytes = slot_bytes;
    return options;
}

/// Staging of four 16 KiB slots: the test checkpoints need many reads.
inline const it::LoadOptions small_slots = ring_of(64 << 10, 16 << 10);
/// The least staging there is: two slots of 12 KiB.
inline const it::LoadOptions minimal_ring = ring_of(0, 12 << 10);

}  // namespace instanttensor_test
