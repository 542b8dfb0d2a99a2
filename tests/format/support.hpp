// tests/format/support.hpp: what the format tests share: the fixture manifest (expected.txt, written
// by tests/fixtures/make_fixtures.py), file and hashing helpers, a temporary directory, and a way to
// catch the library's exceptions and look at their class and message.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "instanttensor/error.hpp"
#include "instanttensor/format/dtype.hpp"
#include "instanttensor/format/header.hpp"
#include "temp_dir.hpp"

namespace format_test {

namespace fs = std::filesystem;
namespace fmt = instanttensor::format;

inline fs::path fixtures_dir() { return fs::path(INSTANTTENSOR_FIXTURES_DIR); }

/// Splits a line at tabs; empty fields are kept.
inline std::vector<std::string> split_tabs(std::string_view line) {
    std::vector<std::string> fields;
    std::size_t start = 0;
    while (true) {
        std::size_t tab = line.find('\t', start);
        fields.emplace_back(line.substr(start, tab == std::string_view::npos ? std::string_view::npos : tab - start));
        if (tab == std::string_view::npos) return fields;
        start = tab + 1;
    }
}

/// Undoes make_fixtures.py's escaping: %XX is the byte 0xXX.
inline std::string unpercent(std::string_view s) {
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '%' && i + 2 < s.size()) {
            out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
            i += 2;
        } else {
            out.push_back(s[i]);
        }
    }
    return out;
}

inline std::uint64_t to_u64(const std::string& s) { return std::stoull(s); }

inline std::vector<std::uint64_t> parse_shape(const std::string& s) {
    std::vector<std::uint64_t> shape;
    std::size_t start = 0;
    while (start < s.size()) {
        std::size_t comma = std::min(s.find(',', start), s.size());
        shape.push_back(to_u64(s.substr(start, comma - start)));
        start = comma + 1;
    }
    return shape;
}

struct ExpectedTensor {
    std::string name;
    fmt::Dtype dtype{};
    std::vector<std::uint64_t> shape;
    std::uint64_t file_offset = 0;
    std::uint64_t nbytes = 0;
    std::uint64_t xxh3 = 0;
};

struct ExpectedFile {
    std::string path;    ///< relative to the fixtures directory
    std::string origin;  ///< reference, script-canonical or script-edge
    std::uint64_t json_size = 0;
    std::uint64_t file_size = 0;
    fmt::Metadata metadata;
    std::vector<ExpectedTensor> tensors;  ///< in file order (ties between empty tensors by name)

    [[nodiscard]] const ExpectedTensor* find(std::string_view name) const {
        for (const auto& t : tensors)
            if (t.name == name) return &t;
        return nullptr;
    }
};

struct ExpectedCheckpoint {
    std::string index;  ///< relative to the fixtures directory
    std::uint64_t total_size = 0;
};

struct Manifest {
    std::vector<ExpectedFile> files;
    std::vector<ExpectedCheckpoint> checkpoints;

    [[nodiscard]] const ExpectedFile& file(std::string_view path) const {
        for (const auto& f : files)
            if (f.path == path) return f;
        throw std::runtime_error("no fixture " + std::string(path) + " in expected.txt");
    }
};

/// Reads tests/fixtures/expected.txt.
inline Manifest load_manifest() {
    const fs::path path = fixtures_dir() / "expected.txt";
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path.string());
    Manifest m;
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line.front() == '#') continue;
        const auto f = split_tabs(line);
        const auto need = [&](std::size_t n) {
            if (f.size() != n) throw std::runtime_error("malformed line in expected.txt: " + line);
        };
        if (f[0] == "file") {
            need(5);
            m.files.push_back({f[1], f[2], to_u64(f[3]), to_u64(f[4]), {}, {}});
        } else if (f[0] == "meta") {
            need(4);
            if (m.files.empty() || m.files.back().path != f[1]) throw std::runtime_error("meta before its file: " + line);
            m.files.back().metadata.emplace(unpercent(f[2]), unpercent(f[3]));
        } else if (f[0] == "tensor") {
            need(8);
            if (m.files.empty() || m.files.back().path != f[1]) throw std::runtime_error("tensor before its file: " + line);
            auto dtype = fmt::parse_dtype(f[3]);
            if (!dtype) throw std::runtime_error("unknown dtype in expected.txt: " + line);
            m.files.back().tensors.push_back(
                {unpercent(f[2]), *dtype, parse_shape(f[4]), to_u64(f[5]), to_u64(f[6]), std::stoull(f[7], nullptr, 16)});
        } else if (f[0] == "checkpoint") {
            need(3);
            m.checkpoints.push_back({f[1], to_u64(f[2])});
        } else {
            throw std::runtime_error("unknown record in expected.txt: " + line);
        }
    }
    return m;
}

/// The manifest, read once.
inline const Manifest& manifest() {
    static const Manifest m = load_manifest();
    return m;
}

/// The whole file.
inline std::vector<std::byte> read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read " + path.string());
    std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::byte> out(chars.size());
    for (std::size_t i = 0; i < chars.size(); ++i) out[i] = static_cast<std::byte>(chars[i]);
    return out;
}

/// `n` bytes of the file at `offset`, read with pread(2).
inline std::vector<std::byte> pread_bytes(const fs::path& path, std::uint64_t offset, std::uint64_t n) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open " + path.string());
    std::vector<std::byte> out(static_cast<std::size_t>(n));
    std::size_t done = 0;
    while (done < out.size()) {
        const ssize_t got = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
        if (got <= 0) {
            ::close(fd);
            throw std::runtime_error("short read of " + path.string());
        }
        done += static_cast<std::size_t>(got);
    }
    ::close(fd);
    return out;
}

inline std::uint64_t xxh3(std::span<const std::byte> bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

inline void write_bytes(const fs::path& path, std::span<const std::byte> bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + path.string());
}

inline void write_text(const fs::path& path, std::string_view text) {
    write_bytes(path, std::as_bytes(std::span(text.data(), text.size())));
}

inline std::span<const std::byte> as_bytes(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

using instanttensor_test::TempDir;

/// What a call threw: the exception's class among the library's, and its what().
struct Thrown {
    std::string kind;  ///< "format_error", "io_error", another class name, or "nothing"
    std::string what;
    std::string source;
    std::string message;
};

template <class F>
Thrown thrown_by(F&& f) {
    try {
        std::forward<F>(f)();
    } catch (const instanttensor::format_error& e) {
        return {"format_error", e.what(), e.source(), e.message()};
    } catch (const instanttensor::io_error& e) {
        return {"io_error", e.what(), e.source(), e.message()};
    } catch (const instanttensor::error& e) {
        return {"other instanttensor::error", e.what(), e.source(), e.message()};
    } catch (const std::exception& e) {
        return {"std::exception", e.what(), "", ""};
    }
    return {"nothing", "", "", ""};
}

inline bool contains(std::string_view haystack, std::string_view needle) {
    return haystack.find(needle) != std::string_view::npos;
}

}  // namespace format_test
