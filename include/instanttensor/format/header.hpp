// instanttensor/format/header.hpp: reading and validating one safetensors file's header.
//
// A safetensors file is: 8 bytes (little-endian u64 N), N bytes of UTF-8 JSON, then the data
// section. The JSON object maps tensor names to {"dtype", "shape", "data_offsets": [begin, end]}
// (offsets relative to the data section) and may hold "__metadata__": {string: string}.
//
// Validation is that of the Hugging Face reference implementation, and stricter where it is silent;
// every rule below is checked before any tensor byte is read, and a breach throws format_error
// naming the file and the tensor or byte offset:
//   - N ≤ max_header_size (100 MB, as the reference) and 8 + N ≤ file size;
//   - the header is one JSON object, valid UTF-8, nothing but whitespace after it;
//   - "__metadata__" is an object of string values (or null), keys unique;
//   - each tensor entry has exactly the keys dtype, shape, data_offsets (unknown keys are refused),
//     a known dtype, a shape of at most max_dimensions non-negative integers, and two non-negative
//     integer offsets;
//   - tensor names are unique and not empty;
//   - shape × dtype size == end − begin, computed without overflow, in whole bytes;
//   - the tensors, sorted by offset, are contiguous from 0: no hole, no overlap, and together cover
//     exactly the data section (a truncated or over-long file is an error).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "instanttensor/format/dtype.hpp"

namespace instanttensor::format {

/// The largest JSON header accepted, in bytes (the reference implementation's limit).
inline constexpr std::uint64_t max_header_size = 100'000'000;

/// The most dimensions a tensor's shape may have. The reference sets no limit; frameworks do
/// (NumPy 64, TensorFlow 254), and without one a header of 100 MB could hold a single shape of 49
/// million dimensions, 400 MB once parsed.
inline constexpr std::size_t max_dimensions = 1024;

/// Size of the little-endian length prefix that starts every file.
inline constexpr std::uint64_t header_length_size = 8;

/// One tensor of a file, as its header describes it.
struct TensorInfo {
    std::string name;
    Dtype dtype{};
    std::vector<std::uint64_t> shape;
    std::uint64_t begin = 0;  ///< first byte, relative to the data section
    std::uint64_t end = 0;    ///< one past the last byte, relative to the data section

    [[nodiscard]] std::uint64_t nbytes() const noexcept { return end - begin; }
};

/// String→string metadata of a file ("__metadata__"), sorted by key.
using Metadata = std::map<std::string, std::string, std::less<>>;

/// A validated header.
struct Header {
    std::uint64_t json_size = 0;   ///< N: bytes of JSON after the length prefix
    std::uint64_t data_size = 0;   ///< bytes of the data section (= file size − 8 − N)
    std::vector<TensorInfo> tensors;  ///< sorted by offset
    Metadata metadata;

    /// Offset in the file where the data section starts.
    [[nodiscard]] std::uint64_t data_offset() const noexcept { return header_length_size + json_size; }
    /// Size of the whole file this header describes.
    [[nodiscard]] std::uint64_t file_size() const noexcept { return data_offset() + data_size; }
};

/// Decodes and checks the 8-byte length prefix of a file of `file_size` bytes; returns N.
/// `source` names the input in error messages. Throws format_error.
std::uint64_t decode_header_length(std::span<const std::byte> prefix, std::uint64_t file_size,
                                   std::string_view source);

/// Parses and validates the JSON header `json` of a file of `file_size` bytes.
/// Throws format_error naming `source`.
Header parse_header(std::string_view json, std::uint64_t file_size, std::string_view source);

/// Parses and validates a whole file held in memory (prefix, header and data section).
Header parse_file_bytes(std::span<const std::byte> file, std::string_view source);

/// Reads and validates the header of the file at `path` (reads 8 + N bytes, no tensor data).
/// Throws format_error for a malformed file and io_error when it cannot be read.
Header read_header(const std::filesystem::path& path);

}  // namespace instanttensor::format

#include "instanttensor/format/detail/header.inl"
