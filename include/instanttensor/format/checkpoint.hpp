// instanttensor/format/checkpoint.hpp: a checkpoint = the tensors of one or more safetensors files.
//
// Checkpoint::open accepts, for each path given:
//   - a safetensors file;
//   - an index (a file named *.json, such as model.safetensors.index.json): the shards it lists;
//   - a directory: its one *.safetensors.index.json if it has one (two are ambiguous: an error),
//     else every *.safetensors file in it, in name order;
//   - a remote file, index or directory: http://, https://, s3://bucket/key or
//     hf://org/name[@revision]/... (see detail/remote.hpp), in a build with libcurl. A remote
//     directory (a path ending with '/', an s3:// bucket or an hf:// repository without a file) is
//     its model.safetensors.index.json, else its model.safetensors.
//     Each header is read with one ranged GET where it fits in the first 512 KiB, and the file's
//     size and ETag (or Last-Modified) are pinned: storage::http then reads only that version.
// Every header is read and validated (format/header.hpp) before open returns. Across the files,
// tensor names must be unique, no file may appear twice, and the files are all local or all remote.
// For an index, its "weight_map" must name files inside the index's directory (relative, no "..",
// no symlink leading out; a remote index's shards are beside it on the same server), every tensor
// it lists must be in the shard it names, and every tensor of a shard must be listed there.
//
// Tensors are kept in file then offset order, the order in which a loader reads them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "instanttensor/detail/fd.hpp"
#include "instanttensor/detail/remote.hpp"
#include "instanttensor/format/header.hpp"

namespace instanttensor::format {

/// One file of a checkpoint and its validated header.
struct CheckpointFile {
    std::filesystem::path path;     ///< for a remote file, its URL as messages show it (shown_url)
    Header header;
    detail::FileIdentity identity;  ///< the local file whose header was read (none for from_memory)
    detail::RemoteFile remote;      ///< the remote file whose header was read (an empty URL if local)

    [[nodiscard]] bool is_remote() const noexcept { return !remote.location.url.empty(); }
};

/// Where a tensor of a checkpoint lives.
struct TensorRef {
    const TensorInfo* info = nullptr;  ///< name, dtype, shape, offsets within the data section
    std::uint32_t file = 0;            ///< index into Checkpoint::files()
    std::uint64_t file_offset = 0;     ///< absolute offset of the first byte in that file

    [[nodiscard]] const std::string& name() const noexcept { return info->name; }
    [[nodiscard]] std::uint64_t nbytes() const noexcept { return info->nbytes(); }
};

/// The contents of a model.safetensors.index.json.
struct Index {
    std::map<std::string, std::string, std::less<>> weight_map;  ///< tensor name → shard file name

    /// Shard file names, each once, in name order.
    [[nodiscard]] std::vector<std::string> shard_names() const;
};

/// Parses an index file's JSON: an object with "weight_map" (string → string) and optionally
/// "metadata" (any value; not interpreted). Other keys, duplicate tensors, an empty map and shard
/// names that could leave the index's directory are refused. Throws format_error naming `source`.
Index parse_index(std::string_view json, std::string_view source);

/// The validated tensor table of one or more safetensors files. Movable, not copyable (tensor
/// references point into the headers it owns).
class Checkpoint {
public:
    /// Opens a file, an index or a directory (see the top of this header).
    static Checkpoint open(const std::filesystem::path& path);
    /// Opens several of them as one checkpoint.
    static Checkpoint open(std::span<const std::filesystem::path> paths);
    static Checkpoint open(std::initializer_list<std::filesystem::path> paths) {
        return open(std::span<const std::filesystem::path>(paths.begin(), paths.size()));
    }

    /// A checkpoint whose files are already in memory: one (name, bytes) pair per file. The names
    /// stand for paths in messages; the bytes are parsed, not kept (read them with storage::memory).
    static Checkpoint from_memory(std::span<const std::pair<std::string, std::span<const std::byte>>> files);

    Checkpoint(Checkpoint&&) noexcept = default;
    Checkpoint& operator=(Checkpoint&&) noexcept = default;
    Checkpoint(const Checkpoint&) = delete;
    Checkpoint& operator=(const Checkpoint&) = delete;

    [[nodiscard]] const std::vector<CheckpointFile>& files() const noexcept { return files_; }
    /// Every tensor, in file then offset order.
    [[nodiscard]] std::span<const TensorRef> tensors() const noexcept { return tensors_; }
    /// The tensor of this name, or nullptr.
    [[nodiscard]] const TensorRef* find(std::string_view name) const noexcept;
    /// Sum of all tensors' bytes.
    [[nodiscard]] std::uint64_t total_bytes() const noexcept { return total_bytes_; }
    /// Metadata of all files merged; where files disagree on a key, the first file's value is kept.
    [[nodiscard]] Metadata metadata() const;
    /// Calls visit(key, value) for each key of metadata(), in key order, without copying it.
    template <class Visit>
    void for_each_metadata(Visit&& visit) const;
    /// Whether it was parsed from memory (from_memory): there are no files to open, only the bytes
    /// the caller holds.
    [[nodiscard]] bool in_memory() const noexcept { return in_memory_; }
    /// Whether its files are remote (then all are): storage::http reads them, no other backend.
    [[nodiscard]] bool remote() const noexcept { return !files_.empty() && files_.front().is_remote(); }
    /// The paths of its files, for a storage backend that opens them. Throws usage_error for a
    /// checkpoint parsed from memory, which has none, and unavailable_error for a remote one.
    [[nodiscard]] std::vector<std::filesystem::path> paths_to_open() const;
    /// Opens file `i` read-only (with `extra_flags`, such as O_DIRECT) and checks that it is the
    /// file whose header was validated: one replaced (a rename over it), truncated or rewritten
    /// since is an io_error, so bytes are never read at another file's offsets. Every storage
    /// backend opens the files through here. Throws as paths_to_open does.
    [[nodiscard]] detail::FileDescriptor open_file(std::uint32_t i, int extra_flags = 0) const;

private:
    Checkpoint() = default;
    void add_index(const std::filesystem::path& index_path);
    void add_file(std::filesystem::path path);
    void add_remote(std::string_view path);
    // Each returns false only where `may_be_missing` and the server has no such file (404).
    bool add_remote_index(const detail::RemoteLocation& index, bool may_be_missing = false);
    bool add_remote_file(detail::RemoteLocation location, bool may_be_missing = false);
    void finish(bool on_disk = true);
    void require_files() const;  // a checkpoint parsed from memory or remote has no files to open

    std::vector<CheckpointFile> files_;
    std::vector<TensorRef> tensors_;
    std::vector<std::uint32_t> by_name_;  // indices into tensors_, sorted by name
    std::uint64_t total_bytes_ = 0;
    bool in_memory_ = false;
};

}  // namespace instanttensor::format

namespace instanttensor::detail {
/// Checks that `index` lists exactly the tensors of its shards, each for the shard holding it:
/// `files[k]` is the file of `shards[k]` (Index::shard_names). Throws format_error naming `source`.
/// O(n log n) in the tensors.
void check_index_lists(const format::Index& index, std::span<const std::string> shards,
                       std::span<const format::CheckpointFile> files,
                       std::string_view source);
}  // namespace instanttensor::detail

#include "instanttensor/format/detail/checkpoint.inl"
