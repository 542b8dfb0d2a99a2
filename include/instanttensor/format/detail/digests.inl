// instanttensor/format/detail/digests.inl: the code behind format/digests.hpp, which includes this
// file at its end (not to be included on its own).
#pragma once

#include <cstdio>
#include <string>
#include <unordered_set>

#include "instanttensor/detail/fd.hpp"
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

}  // namespace instanttensor::detail

namespace instanttensor::format {

inline std::string digest_text(std::uint64_t digest) {
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(digest));
    return text;
}

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
    std::size_t number = 0;
    while (!text.empty()) {
        const std::size_t end = text.find('\n');
        std::string_view line = text.substr(0, end);
        text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
        ++number;
        if (line.empty()) continue;
        auto refused = [&](std::string_view why) {
            return format_error(digests.source_, "line " + std::to_string(number) + ": " + std::string(why) +
                                                    " (lines read '<16 hex digits>  <tensor name>', as `instanttensor hash` prints them)");
        };
        const bool escaped = line.front() == '\\';
        if (escaped) line.remove_prefix(1);
        if (line.size() < 19 || line.substr(16, 2) != "  ") throw refused("not a digest and a name");
        std::uint64_t digest = 0;
        for (char c : line.substr(0, 16)) {
            const int v = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
            if (v < 0) throw refused("the digest is not 16 lowercase hex digits");
            digest = digest << 4 | static_cast<std::uint64_t>(v);
        }
        std::string_view shown = line.substr(18);
        std::optional<std::string> name = escaped ? detail::unescape_digest_name(shown) : std::string(shown);
        if (!name) throw refused("the name holds a bad escape");
        if (name->empty()) throw refused("the name is empty");
        digests.add(std::move(*name), digest);
    }
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

}  // namespace instanttensor::format
