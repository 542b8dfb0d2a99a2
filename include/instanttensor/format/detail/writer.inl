// instanttensor/format/detail/writer.inl: the code behind format/writer.hpp, which includes this
// file at its end (not to be included on its own).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <set>
#include <vector>

#include "instanttensor/detail/fd.hpp"
#include "instanttensor/detail/utf8.hpp"
#include "instanttensor/error.hpp"

namespace instanttensor::detail {

using format::byte_size;
using format::TensorSpec;


/// Appends `s` as a JSON string: quotes, backslashes and control characters escaped, other bytes
/// (UTF-8) as they are, as serde_json writes them.
inline void append_json_string(std::string& out, std::string_view s) {
    out.push_back('"');
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        switch (c) {
        case '"': out.append("\\\""); break;
        case '\\': out.append("\\\\"); break;
        case '\n': out.append("\\n"); break;
        case '\r': out.append("\\r"); break;
        case '\t': out.append("\\t"); break;
        case '\b': out.append("\\b"); break;
        case '\f': out.append("\\f"); break;
        default:
            if (c < 0x20) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", c);
                out.append(buf);
            } else {
                out.push_back(ch);
            }
        }
    }
    out.push_back('"');
}

inline void write_all(int fd, std::span<const std::byte> bytes, const std::string& source) {
    while (!bytes.empty()) {
        ssize_t n = ::write(fd, bytes.data(), bytes.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            throw io_error(source, "write failed", errno);
        }
        bytes = bytes.subspan(static_cast<std::size_t>(n));
    }
}

/// Creates or truncates `path`, never through a symbolic link there: overwriting a checkpoint in a
/// directory someone else can write must not write wherever their link points.
inline detail::FileDescriptor create_file(const std::filesystem::path& path) {
    int fd;
    do {
        fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0 && errno == ELOOP) throw io_error(path.string(), "is a symbolic link: not followed, not overwritten", ELOOP);
    if (fd < 0) throw io_error(path.string(), "cannot create", errno);
    return detail::FileDescriptor(fd);
}

/// Appends `"__metadata__":{...},` for a metadata that is not empty (keys in order).
inline void append_metadata(std::string& json, const format::Metadata& metadata) {
    for (const auto& [k, v] : metadata)
        if (!is_utf8(k) || !is_utf8(v)) throw format_error("", "metadata " + quote_name(k) + " is not valid UTF-8");
    if (metadata.empty()) return;
    json.append("\"__metadata__\":{");
    bool first = true;
    for (const auto& [k, v] : metadata) {
        if (!first) json.push_back(',');
        first = false;
        append_json_string(json, k);
        json.push_back(':');
        append_json_string(json, v);
    }
    json.append("},");
}

/// Appends one tensor's entry, `"name":{"dtype":...,"shape":[...],"data_offsets":[begin,end]},`.
inline void append_tensor_entry(std::string& json, std::string_view name, format::Dtype dtype,
                                std::span<const std::uint64_t> shape, std::uint64_t begin, std::uint64_t end) {
    append_json_string(json, name);
    json.append(":{\"dtype\":\"").append(format::to_string(dtype)).append("\",\"shape\":[");
    for (std::size_t d = 0; d < shape.size(); ++d) json.append(d ? "," : "").append(std::to_string(shape[d]));
    json.append("],\"data_offsets\":[").append(std::to_string(begin)).append(",").append(std::to_string(end)).append("]},");
}

/// Closes a header begun with "{" and entries that each end with a comma, and pads it with
/// spaces to a multiple of 8 bytes.
inline std::string& close_header(std::string& json) {
    if (json.back() == ',') json.pop_back();
    json.push_back('}');
    json.append((8 - json.size() % 8) % 8, ' ');
    if (json.size() > format::max_header_size)
        throw format_error("", "header would exceed " + std::to_string(format::max_header_size) + " bytes");
    return json;
}

/// The 8-byte little-endian length prefix of a header of `json_size` bytes.
inline std::array<std::byte, format::header_length_size> length_prefix(std::uint64_t json_size) {
    std::array<std::byte, format::header_length_size> prefix;
    for (unsigned i = 0; i < prefix.size(); ++i) prefix[i] = static_cast<std::byte>((json_size >> (8 * i)) & 0xff);
    return prefix;
}

/// Whether two headers describe the same tensors (names, dtypes, shapes, offsets) and data section.
inline bool same_tensors(const format::Header& a, const format::Header& b) {
    auto same = [](const format::TensorInfo& x, const format::TensorInfo& y) {
        return x.name == y.name && x.dtype == y.dtype && x.shape == y.shape && x.begin == y.begin && x.end == y.end;
    };
    return a.data_size == b.data_size && std::equal(a.tensors.begin(), a.tensors.end(), b.tensors.begin(), b.tensors.end(), same);
}

/// Copies `length` bytes of `from` at `offset` to the end of `to`, in the kernel (copy_file_range),
/// or through a buffer where the kernel cannot (another filesystem, an old kernel).
inline void copy_file_bytes(int from, std::uint64_t offset, int to, std::uint64_t length, const std::string& source) {
    auto in = static_cast<loff_t>(offset);
    while (length > 0) {
        const ssize_t n = ::copy_file_range(from, &in, to, nullptr, length, 0);
        if (n > 0) {
            length -= static_cast<std::uint64_t>(n);
            continue;
        }
        if (n == 0) throw io_error(source, "ended " + std::to_string(length) + " bytes early while copying", 0);
        if (errno == EINTR) continue;
        if (errno != EXDEV && errno != ENOSYS && errno != EINVAL && errno != EOPNOTSUPP)
            throw io_error(source, "copy_file_range failed", errno);
        std::vector<std::byte> buffer(std::min<std::uint64_t>(length, 8u << 20));
        while (length > 0) {
            const auto chunk = std::span(buffer).first(static_cast<std::size_t>(std::min<std::uint64_t>(length, buffer.size())));
            read_exact(from, chunk, static_cast<std::uint64_t>(in), source);
            write_all(to, chunk, source);
            in += static_cast<loff_t>(chunk.size());
            length -= chunk.size();
        }
    }
}

inline std::uint64_t checked_size(const TensorSpec& t) {
    auto bytes = byte_size(t.dtype, t.shape);
    if (!bytes) throw format_error("", "tensor " + quote_name(t.name) + ": shape × dtype is not a whole number of bytes or overflows");
    return *bytes;
}

}  // namespace instanttensor::detail

namespace instanttensor::format {

inline std::string make_header_json(std::vector<TensorSpec>& tensors, const Metadata& metadata) {
    std::stable_sort(tensors.begin(), tensors.end(), [](const TensorSpec& a, const TensorSpec& b) {
        return a.dtype != b.dtype ? a.dtype > b.dtype : a.name < b.name;
    });
    for (const auto& t : tensors) {
        if (t.name.empty() || t.name == "__metadata__")
            throw format_error("", "tensor name " + detail::quote_name(t.name) + " is not allowed");
        if (!detail::is_utf8(t.name))
            throw format_error("", "tensor name " + detail::quote_name(t.name) + " is not valid UTF-8");
    }
    {
        std::set<std::string_view> names;
        for (const auto& t : tensors)
            if (!names.insert(t.name).second) throw format_error("", "duplicate tensor name " + detail::quote_name(t.name));
    }
    std::string json = "{";
    detail::append_metadata(json, metadata);
    std::uint64_t offset = 0;
    for (const auto& t : tensors) {
        const std::uint64_t size = detail::checked_size(t);
        detail::append_tensor_entry(json, t.name, t.dtype, t.shape, offset, offset + size);
        offset += size;
    }
    detail::close_header(json);
    return json;
}

inline std::vector<std::byte> serialize_safetensors(std::span<const TensorData> tensors, const Metadata& metadata) {
    std::vector<TensorSpec> specs;
    std::map<std::string_view, std::span<const std::byte>> bytes;
    for (const auto& t : tensors) {
        if (detail::checked_size(t.spec) != t.bytes.size())
            throw format_error("", "tensor " + detail::quote_name(t.spec.name) + ": " + std::to_string(t.bytes.size()) +
                                       " bytes given, shape × dtype needs " + std::to_string(detail::checked_size(t.spec)));
        specs.push_back(t.spec);
        bytes[t.spec.name] = t.bytes;
    }
    const std::string json = make_header_json(specs, metadata);
    std::uint64_t size = header_length_size + json.size();
    for (const auto& t : tensors) size += t.bytes.size();
    std::vector<std::byte> out(size);
    const auto prefix = detail::length_prefix(json.size());
    auto at = std::copy(prefix.begin(), prefix.end(), out.begin());
    at = std::copy_n(reinterpret_cast<const std::byte*>(json.data()), json.size(), at);
    for (const auto& s : specs) at = std::copy(bytes[s.name].begin(), bytes[s.name].end(), at);
    return out;
}

inline void write_safetensors(const std::filesystem::path& path, std::vector<TensorSpec> tensors,
                              const TensorFiller& fill, const Metadata& metadata) {
    const std::string source = path.string();
    const std::string json = make_header_json(tensors, metadata);
    auto fd = detail::create_file(path);
    detail::write_all(fd.get(), detail::length_prefix(json.size()), source);
    detail::write_all(fd.get(), std::as_bytes(std::span(json)), source);
    if (!fill) {  // a hole of the data section's size: it reads as zeros
        std::uint64_t end = header_length_size + json.size();
        for (const auto& t : tensors) end += detail::checked_size(t);
        int rc;
        do {
            rc = ::ftruncate(fd.get(), static_cast<off_t>(end));
        } while (rc < 0 && errno == EINTR);
        if (rc < 0) throw io_error(source, "cannot extend to " + std::to_string(end) + " bytes", errno);
        return;
    }
    std::vector<std::byte> buffer;
    for (const auto& t : tensors) {
        buffer.assign(detail::checked_size(t), std::byte{0});
        fill(t, buffer);
        detail::write_all(fd.get(), buffer, source);
    }
}

inline void write_safetensors(const std::filesystem::path& path, std::span<const TensorData> tensors,
                              const Metadata& metadata) {
    const auto bytes = serialize_safetensors(tensors, metadata);
    auto fd = detail::create_file(path);
    detail::write_all(fd.get(), bytes, path.string());
}

inline std::string header_json(const Header& header, const Metadata& metadata) {
    std::string json = "{";
    detail::append_metadata(json, metadata);
    for (const TensorInfo& t : header.tensors) detail::append_tensor_entry(json, t.name, t.dtype, t.shape, t.begin, t.end);
    return detail::close_header(json);
}

inline detail::FileDescriptor create_new_file(const std::filesystem::path& path, mode_t mode) {
    int fd;
    do {
        fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0 && errno == EEXIST) throw io_error(path.string(), "exists: not overwritten", EEXIST);
    if (fd < 0) throw io_error(path.string(), "cannot create", errno);
    return detail::FileDescriptor(fd);
}

inline void write_at(int fd, std::span<const std::byte> bytes, std::uint64_t offset, const std::string& source) {
    while (!bytes.empty()) {
        const ssize_t n = ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) throw io_error(source, "write failed at byte " + std::to_string(offset), errno);
        bytes = bytes.subspan(static_cast<std::size_t>(n));
        offset += static_cast<std::uint64_t>(n);
    }
}

inline void write_new_file(const std::filesystem::path& path, std::string_view json, std::uint64_t data_size,
                           const std::function<void(int fd, std::uint64_t data_offset)>& write_data) {
    const std::string target = path.string();
    const std::uint64_t data_offset = header_length_size + json.size();
    const auto out = create_new_file(path);
    try {
        write_at(out.get(), detail::length_prefix(json.size()), 0, target);
        write_at(out.get(), std::as_bytes(std::span(json)), header_length_size, target);
        if (::ftruncate(out.get(), static_cast<off_t>(data_offset + data_size)) != 0) throw io_error(target, "cannot size it", errno);
        write_data(out.get(), data_offset);
        if (::fsync(out.get()) != 0) throw io_error(target, "cannot flush", errno);
    } catch (...) {
        std::error_code ignored;
        std::filesystem::remove(path, ignored);
        throw;
    }
}

inline void rewrite_metadata(const std::filesystem::path& path, const Header& expected, const Metadata& metadata) {
    const std::string source = path.string();
    const auto in = detail::open_read_only(path);
    struct stat st {};
    if (::fstat(in.get(), &st) != 0) throw io_error(source, "cannot stat", errno);
    // Read from the descriptor the data section is copied from, so that both are of one file.
    const Header header = detail::read_header(in.get(), detail::regular_file_size(in.get(), source), source);
    if (!detail::same_tensors(header, expected))
        throw format_error(source, "its tensors changed since its header was read: not rewritten");

    std::string json;
    try {
        json = header_json(header, metadata);
    } catch (const format_error& e) {
        throw format_error(source, e.message());
    }

    // A name of its own beside the file (O_EXCL: never one that exists, nor a link planted there).
    std::filesystem::path temporary;
    int fd = -1;
    for (unsigned attempt = 0; fd < 0; ++attempt) {
        temporary = path.parent_path() / ("." + path.filename().string() + ".rewrite-" + std::to_string(attempt));
        fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0 && errno != EEXIST && errno != EINTR) throw io_error(temporary.string(), "cannot create", errno);
        if (attempt > 1000) throw io_error(temporary.string(), "cannot create a temporary beside it", EEXIST);
    }
    const detail::FileDescriptor out(fd);
    try {
        detail::write_all(out.get(), detail::length_prefix(json.size()), temporary.string());
        detail::write_all(out.get(), std::as_bytes(std::span(json)), temporary.string());
        detail::copy_file_bytes(in.get(), header.data_offset(), out.get(), header.data_size, source);
        if (::fchmod(out.get(), st.st_mode & 07777) != 0) throw io_error(temporary.string(), "cannot set its mode", errno);
        if (::fsync(out.get()) != 0) throw io_error(temporary.string(), "cannot flush", errno);
        std::error_code ec;
        std::filesystem::rename(temporary, path, ec);
        if (ec) throw io_error(source, "cannot replace it with " + temporary.string(), ec.value());
    } catch (...) {
        std::error_code ignored;
        std::filesystem::remove(temporary, ignored);
        throw;
    }
}

inline std::filesystem::path write_sharded_checkpoint(const std::filesystem::path& directory,
                                                      const std::vector<TensorSpec>& tensors, std::size_t shard_count,
                                                      const TensorFiller& fill, const Metadata& metadata) {
    if (shard_count == 0 || shard_count > tensors.size())
        throw format_error(directory.string(), "cannot cut " + std::to_string(tensors.size()) + " tensors into " +
                                                   std::to_string(shard_count) + " shards");
    std::error_code ec;
    std::filesystem::create_directories(directory, ec);
    if (ec) throw io_error(directory.string(), "cannot create directory", ec.value());

    std::uint64_t total = 0;
    std::set<std::string_view> names;  // unique across shards too, or the index would contradict them
    for (const auto& t : tensors) {
        total += detail::checked_size(t);
        if (!names.insert(t.name).second)
            throw format_error(directory.string(), "duplicate tensor name " + detail::quote_name(t.name));
    }
    std::map<std::string, std::string> weight_map;
    std::size_t next = 0;
    std::uint64_t written = 0;
    for (std::size_t s = 0; s < shard_count; ++s) {
        char name[64];
        std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, shard_count);
        // Shard s ends once the running total reaches its share, leaving a tensor for each later shard.
        const std::uint64_t target = total / shard_count * (s + 1);
        std::vector<TensorSpec> shard;
        while (next < tensors.size() && (shard.empty() || s + 1 == shard_count ||
                                         (written < target && tensors.size() - next > shard_count - s - 1))) {
            written += detail::checked_size(tensors[next]);
            weight_map[tensors[next].name] = name;
            shard.push_back(tensors[next++]);
        }
        write_safetensors(directory / name, std::move(shard), fill, metadata);
    }

    std::string json = "{\"metadata\":{\"total_size\":" + std::to_string(total) + "},\"weight_map\":{";
    bool first = true;
    for (const auto& [tensor, file] : weight_map) {
        json.append(first ? "" : ",");
        first = false;
        detail::append_json_string(json, tensor);
        json.push_back(':');
        detail::append_json_string(json, file);
    }
    json.append("}}\n");
    const auto index_path = directory / "model.safetensors.index.json";
    auto fd = detail::create_file(index_path);
    detail::write_all(fd.get(), std::as_bytes(std::span(json)), index_path.string());
    return index_path;
}

}  // namespace instanttensor::format
