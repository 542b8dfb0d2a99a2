// instanttensor/format/detail/digests.inl: the code behind format/digests.hpp, which includes this
// file at its end (not to be included on its own).
#pragma once

#include <algorithm>
#include <cstdio>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "instanttensor/detail/fd.hpp"
#include "instanttensor/detail/hex.hpp"
#include "instanttensor/error.hpp"

namespace instanttensor::detail {

/// The name an escaped line writes as `text` (append_escaped undone), or nullopt for a bad escape.
inline std::optional<std::string> unescape_digest_name(std::string_view text) {
    auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    std::string name;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] != '\\') {
            name.push_back(text[i]);
            continue;
        }
        if (++i == text.size()) return std::nullopt;
        switch (text[i]) {
        case '\\': name.push_back('\\'); break;
        case 'n': name.push_back('\n'); break;
        case 'r': name.push_back('\r'); break;
        case 't': name.push_back('\t'); break;
        case 'x': {
            if (i + 2 >= text.size()) return std::nullopt;
            const int high = hex(text[i + 1]), low = hex(text[i + 2]);
            if (high < 0 || low < 0) return std::nullopt;
            name.push_back(static_cast<char>(high * 16 + low));
            i += 2;
            break;
        }
        default: return std::nullopt;
        }
    }
    return name;
}

/// Calls add(digest bytes, name) for each line of `text` in the layout of format/digests.hpp with a
/// digest of `hex_digits` lowercase hex digits; after two spaces, or, as sha256sum writes binary
/// files, a space and a star. A line that breaks it is a format_error naming `source`, the line and
/// `layout`.
template <class Add>
void parse_digest_lines(std::string_view text, std::size_t hex_digits, const std::string& source, std::string_view layout, Add&& add) {
    std::vector<std::uint8_t> digest(hex_digits / 2);
    std::size_t number = 0;
    while (!text.empty()) {
        const std::size_t end = text.find('\n');
        std::string_view line = text.substr(0, end);
        text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
        ++number;
        if (line.empty()) continue;
        auto refused = [&](std::string_view why) {
            return format_error(source, "line " + std::to_string(number) + ": " + std::string(why) + " (lines read " + std::string(layout) + ")");
        };
        const bool escaped = line.front() == '\\';
        if (escaped) line.remove_prefix(1);
        const std::string_view separator = line.substr(std::min(hex_digits, line.size()), 2);
        if (line.size() < hex_digits + 3 || (separator != "  " && separator != " *")) throw refused("not a digest and a name");
        for (std::size_t i = 0; i < hex_digits; ++i) {
            const char c = line[i];
            const int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
            if (v < 0) throw refused("the digest is not " + std::to_string(hex_digits) + " lowercase hex digits");
            digest[i / 2] = static_cast<std::uint8_t>(i % 2 == 0 ? v << 4 : digest[i / 2] | v);
        }
        std::string_view shown = line.substr(hex_digits + 2);
        std::optional<std::string> name = escaped ? unescape_digest_name(shown) : std::string(shown);
        if (!name) throw refused("the name holds a bad escape");
        if (name->empty()) throw refused("the name is empty");
        add(std::span<const std::uint8_t>(digest), std::move(*name));
    }
}

}  // namespace instanttensor::detail

namespace instanttensor::format {

inline std::string digest_text(std::uint64_t digest) {
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(digest));
    return text;
}

inline std::string digest_text(const Sha256Digest& digest) { return detail::hex_of(digest); }

inline void TensorDigests::add(std::string name, std::uint64_t digest) {
    const auto [at, added] = digests_.emplace(std::move(name), digest);
    if (!added) throw format_error(source_, "gives tensor " + detail::quote_name(at->first) + " twice");
}

inline std::optional<std::uint64_t> TensorDigests::find(std::string_view name) const {
    const auto at = digests_.find(name);
    if (at == digests_.end()) return std::nullopt;
    return at->second;
}

inline std::string TensorDigests::text() const {
    std::string out;
    for (const auto& [name, digest] : digests_) {
        std::string shown;
        const bool escaped = detail::append_escaped(shown, name);
        out.append(escaped ? "\\" : "").append(digest_text(digest)).append("  ").append(shown).push_back('\n');
    }
    return out;
}

inline TensorDigests TensorDigests::parse(std::string_view text, std::string source) {
    TensorDigests digests(std::move(source));
    detail::parse_digest_lines(text, 16, digests.source_, "'<16 hex digits>  <tensor name>', as `instanttensor hash` prints them",
                               [&](std::span<const std::uint8_t> digest, std::string name) {
                                   std::uint64_t value = 0;
                                   for (std::uint8_t byte : digest) value = value << 8 | byte;
                                   digests.add(std::move(name), value);
                               });
    return digests;
}

inline TensorDigests TensorDigests::read(const std::filesystem::path& manifest) {
    return parse(detail::read_small_file(manifest, max_header_size), manifest.string());
}

inline TensorDigests TensorDigests::sealed(const Checkpoint& checkpoint) {
    TensorDigests all("its seal");
    for (const CheckpointFile& file : checkpoint.files()) {
        const std::string path = file.path.string();
        const auto seal = file.header.metadata.find(seal_key);
        if (seal == file.header.metadata.end())
            throw format_error(path, "has no seal (\"" + std::string(seal_key) + "\" in its __metadata__): seal it with `instanttensor seal`");
        TensorDigests own = parse(seal->second, "the seal of " + path);
        std::unordered_set<std::string_view> held;
        for (const TensorInfo& t : file.header.tensors) {
            held.insert(t.name);
            if (!own.find(t.name)) throw format_error(path, "its seal leaves out tensor " + detail::quote_name(t.name));
        }
        for (auto& [name, digest] : own.digests_) {
            if (!held.contains(name)) throw format_error(path, "its seal names tensor " + detail::quote_name(name) + ", which the file does not hold");
            all.add(name, digest);
        }
    }
    return all;
}

inline void FileDigests::add(std::string_view name, const Sha256Digest& digest) {
    const std::string file = std::filesystem::path(name).filename().string();
    if (file.empty()) throw format_error(source_, "names no file: " + detail::quote_name(name));
    const auto [at, added] = digests_.emplace(file, digest);
    if (!added) throw format_error(source_, "gives a file named " + detail::quote_name(file) + " twice (files are matched by name, without directories)");
}

inline std::optional<Sha256Digest> FileDigests::find(const std::filesystem::path& path) const {
    const auto at = digests_.find(path.filename().string());
    if (at == digests_.end()) return std::nullopt;
    return at->second;
}

inline FileDigests FileDigests::parse(std::string_view text, std::string source) {
    FileDigests digests(std::move(source));
    detail::parse_digest_lines(text, 64, digests.source_, "'<64 hex digits>  <file>', as `sha256sum` prints them",
                               [&](std::span<const std::uint8_t> digest, const std::string& name) {
                                   Sha256Digest value;
                                   std::copy(digest.begin(), digest.end(), value.begin());
                                   digests.add(name, value);
                               });
    return digests;
}

inline FileDigests FileDigests::read(const std::filesystem::path& manifest) {
    return parse(detail::read_small_file(manifest, max_header_size), manifest.string());
}

}  // namespace instanttensor::format
