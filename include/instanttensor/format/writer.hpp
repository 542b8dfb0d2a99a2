// instanttensor/format/writer.hpp: writing safetensors files and sharded checkpoints.
//
// Files are laid out as the Hugging Face reference implementation lays them out (tensors sorted by
// dtype, widest first, then by name; "__metadata__" first; the JSON padded with spaces to a
// multiple of 8 bytes), so the reference reads them and tools that compare layouts see no
// difference. Tensor bytes come either from spans or from a callback that fills each tensor in
// turn, so a multi-GB checkpoint is written with one tensor in memory at a time.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "instanttensor/detail/fd.hpp"
#include "instanttensor/format/dtype.hpp"
#include "instanttensor/format/header.hpp"

namespace instanttensor::format {

/// A tensor to write: its description, without bytes.
struct TensorSpec {
    std::string name;
    Dtype dtype{};
    std::vector<std::uint64_t> shape;
};

/// A tensor to write with its bytes (byte_size(dtype, shape) of them).
struct TensorData {
    TensorSpec spec;
    std::span<const std::byte> bytes;
};

/// Fills `out` (exactly the tensor's size) with the bytes of `tensor`. An empty filler writes no
/// tensor bytes: the data section is left as a hole, which reads as zeros and, on filesystems with
/// sparse files, takes no space (a checkpoint of any size, for what needs only its layout).
using TensorFiller = std::function<void(const TensorSpec& tensor, std::span<std::byte> out)>;

/// The header JSON (padded) that write_safetensors would write for `tensors`, with the tensors
/// reordered into file order. Throws format_error for a bad spec: duplicate or empty name, a size
/// that overflows or is not whole bytes, a name or metadata that is not valid UTF-8.
std::string make_header_json(std::vector<TensorSpec>& tensors, const Metadata& metadata = {});

/// The whole file as bytes.
std::vector<std::byte> serialize_safetensors(std::span<const TensorData> tensors, const Metadata& metadata = {});

/// Writes a file, calling `fill` once per tensor in file order. Throws io_error, format_error.
void write_safetensors(const std::filesystem::path& path, std::vector<TensorSpec> tensors,
                       const TensorFiller& fill, const Metadata& metadata = {});

/// Writes a file from tensors held in memory.
void write_safetensors(const std::filesystem::path& path, std::span<const TensorData> tensors,
                       const Metadata& metadata = {});

/// The header JSON (padded) of a file with `header`'s tensors, at their offsets, and `metadata` in
/// place of its "__metadata__". format_error for metadata that is not valid UTF-8.
std::string header_json(const Header& header, const Metadata& metadata);

/// Creates `path` for writing with permission bits `mode`, failing if anything is there (io_error
/// naming it): a file written anew never replaces one by accident, nor writes through a link
/// planted there.
detail::FileDescriptor create_new_file(const std::filesystem::path& path, mode_t mode = 0644);

/// Writes `bytes` at `offset` of `fd`, all of them (io_error naming `source`).
void write_at(int fd, std::span<const std::byte> bytes, std::uint64_t offset, const std::string& source);

/// Writes a new safetensors file at `path` (which must not exist): the header `json` (padded, as
/// header_json makes it), then a data section of `data_size` bytes, zeros until `write_data(fd,
/// data_offset)` writes them (write_at); then flushes it. `path` is removed if anything fails.
void write_new_file(const std::filesystem::path& path, std::string_view json, std::uint64_t data_size,
                    const std::function<void(int fd, std::uint64_t data_offset)>& write_data);

/// Replaces the "__metadata__" of the safetensors file at `path`, whose header was read as
/// `expected`, by `metadata`, every tensor's bytes and offsets as they are: the header is read
/// again and validated (a file whose tensors or data section no longer match `expected` is a
/// format_error, and is left as it is), then the file is written anew beside
/// itself (a hidden temporary in the same directory: the header, then the data section copied by
/// the kernel with copy_file_range, which shares the blocks where the filesystem can reflink them),
/// flushed and renamed over it, so that a crash leaves either the old file or the new one. The
/// file keeps its permission bits. Throws format_error, io_error.
void rewrite_metadata(const std::filesystem::path& path, const Header& expected, const Metadata& metadata);

/// Writes a checkpoint of `shard_count` files (model-0000i-of-0000N.safetensors) and its
/// model.safetensors.index.json into `directory` (created if missing), keeping the given tensor
/// order and cutting it into shards of about equal bytes. Returns the index path. Tensor names must
/// be unique across all shards (format_error).
std::filesystem::path write_sharded_checkpoint(const std::filesystem::path& directory,
                                               const std::vector<TensorSpec>& tensors, std::size_t shard_count,
                                               const TensorFiller& fill, const Metadata& metadata = {});

}  // namespace instanttensor::format

#include "instanttensor/format/detail/writer.inl"
