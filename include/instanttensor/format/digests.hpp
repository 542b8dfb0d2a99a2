// instanttensor/format/digests.hpp: the expected digests of tensors' bytes, against which a load
// verifies each tensor (LoadOptions::verify), and of whole files (LoadOptions::verify_files).
//
// A digest is XXH3-64 of a tensor's bytes as they lie in the file. Digests are written as the
// `instanttensor hash` command prints them, one line per tensor sorted by the bytes of its name:
//
//   <16 lowercase hex digits>  <name>
//
// A name holding a backslash or a control character is escaped (\\, \n, \r, \t, \xNN) and its line
// starts with a backslash, as sha256sum escapes file names. They come from a manifest file in that
// layout (`instanttensor hash model/ > model.xxh3`), or from a checkpoint's seal: the same text
// under the key "instanttensor.xxh3" of each file's "__metadata__", naming exactly that file's
// tensors (`instanttensor seal`, format/writer.hpp seal_file).
//
// XXH3 detects corruption (a flipped bit, a truncated copy, a file replaced by another), not an
// adversary: whoever can change the bytes can change a seal beside them, and forge XXH3. See
// docs/integrity.md.
//
// A file's digest is SHA-256 of all its bytes, as `sha256sum` prints it and as the Hugging Face Hub
// names a file it stores with Git LFS (its object id, the X-Linked-Etag of its download):
//
//   <64 lowercase hex digits>  <file>        (or " *<file>", sha256sum's binary mode)
//
// escaped as above. A file is matched by its name without directories, so that a manifest made
// where the files were written (`sha256sum model/*.safetensors > model.sha256`) checks a copy
// anywhere, local or remote.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "instanttensor/format/checkpoint.hpp"

namespace instanttensor::format {

/// The key of "__metadata__" that holds a file's seal.
inline constexpr std::string_view seal_key = "instanttensor.xxh3";

/// A digest as the layout writes it: 16 lowercase hex digits.
std::string digest_text(std::uint64_t digest);

/// A file's SHA-256.
using Sha256Digest = std::array<std::uint8_t, 32>;
/// As the layout writes it: 64 lowercase hex digits.
std::string digest_text(const Sha256Digest& digest);

/// Expected digests by tensor name, and where they came from (for messages).
class TensorDigests {
public:
    TensorDigests() = default;
    /// No digest yet; `source` says where they come from ("model.xxh3", "the seal of model.safetensors").
    explicit TensorDigests(std::string source) : source_(std::move(source)) {}

    /// Parses text in the layout above. A line that breaks it, a bad escape or a name given twice
    /// is a format_error naming `source` and the line.
    static TensorDigests parse(std::string_view text, std::string source);
    /// Reads and parses a manifest file (io_error, format_error).
    static TensorDigests read(const std::filesystem::path& manifest);
    /// The seals of every file of `checkpoint`. A file without one, or whose seal names a tensor it
    /// does not hold or leaves one out, is a format_error naming the file.
    static TensorDigests sealed(const Checkpoint& checkpoint);

    /// Adds the digest of tensor `name`; a name given twice is a format_error.
    void add(std::string name, std::uint64_t digest);
    [[nodiscard]] std::optional<std::uint64_t> find(std::string_view name) const;
    [[nodiscard]] std::size_t size() const noexcept { return digests_.size(); }
    [[nodiscard]] bool empty() const noexcept { return digests_.empty(); }
    [[nodiscard]] const std::string& source() const noexcept { return source_; }
    /// All of them, in the layout above.
    [[nodiscard]] std::string text() const;

private:
    std::map<std::string, std::uint64_t, std::less<>> digests_;  // std::string orders by unsigned bytes
    std::string source_;
};

/// Expected SHA-256 digests of whole files by file name (no directories), and where they came from.
class FileDigests {
public:
    FileDigests() = default;
    explicit FileDigests(std::string source) : source_(std::move(source)) {}

    /// Parses text in sha256sum's layout. A line that breaks it, a bad escape, or two lines naming
    /// files of one name is a format_error naming `source` and the line.
    static FileDigests parse(std::string_view text, std::string source);
    /// Reads and parses a manifest file (io_error, format_error).
    static FileDigests read(const std::filesystem::path& manifest);

    /// Adds the digest of the file called `name` (its directories dropped); a name given twice is a
    /// format_error.
    void add(std::string_view name, const Sha256Digest& digest);
    /// The digest of the file at `path` (a local path or a URL), by its name.
    [[nodiscard]] std::optional<Sha256Digest> find(const std::filesystem::path& path) const;
    [[nodiscard]] std::size_t size() const noexcept { return digests_.size(); }
    [[nodiscard]] const std::string& source() const noexcept { return source_; }

private:
    std::map<std::string, Sha256Digest, std::less<>> digests_;
    std::string source_;
};

}  // namespace instanttensor::format

#include "instanttensor/format/detail/digests.inl"
