// instanttensor/format/detail/checkpoint.inl: index parsing and checkpoint assembly behind
// format/checkpoint.hpp, which includes this file at its end (not to be included on its own).
#pragma once

#include <algorithm>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_set>
#include <utility>

#include "instanttensor/config.hpp"
#include "instanttensor/detail/fd.hpp"
#include "instanttensor/detail/json_sax.hpp"
#include "instanttensor/detail/remote.hpp"
#include "instanttensor/error.hpp"
#if INSTANTTENSOR_HAS_CURL
#include "instanttensor/detail/curl.hpp"
#endif

namespace instanttensor::detail {

using format::Header;
using format::Index;


/// A shard name from an index must name a file below the index's directory, lexically: not empty,
/// relative, without "." or ".." components or NUL. Symlinks are checked once the file is opened.
inline std::string shard_name_problem(std::string_view name) {
    if (name.empty()) return "empty shard file name";
    if (name.find('\0') != std::string_view::npos) return "shard file name contains NUL";
    if (name.front() == '/') return "shard file name " + quote_name(name) + " is an absolute path";
    std::size_t start = 0;
    while (start <= name.size()) {
        std::size_t slash = std::min(name.find('/', start), name.size());
        std::string_view part = name.substr(start, slash - start);
        if (part == ".." || part == "." || part.empty())
            return "shard file name " + quote_name(name) + " must stay inside the index's directory";
        start = slash + 1;
    }
    return {};
}

/// Reads {"metadata": any, "weight_map": {tensor: shard}}; "metadata" is skipped whatever it holds.
class IndexHandler : public detail::StrictJsonHandler {
public:
    Index result() && { return std::move(index_); }

    bool on_object_begin(error_code& ec) {
        if (skip_depth_ > 0 || state_ == State::skip_value) return enter_skipped();
        if (state_ == State::document) { state_ = State::top_key; return true; }
        if (state_ == State::weight_map_value) { state_ = State::weight_key; return true; }
        return refuse(ec, "an object");
    }
    bool on_object_end(std::size_t, error_code&) {
        if (skip_depth_ > 0) return leave_skipped();
        state_ = state_ == State::weight_key ? State::top_key : State::finished;
        return true;
    }
    bool on_array_begin(error_code& ec) {
        if (skip_depth_ > 0 || state_ == State::skip_value) return enter_skipped();
        return refuse(ec, "an array");
    }
    bool on_array_end(std::size_t, error_code&) { return leave_skipped(); }

    bool on_key_part(string_view part, std::size_t, error_code&) {
        text_.append(part);
        return true;
    }
    bool on_key(string_view last, std::size_t, error_code& ec) {
        std::string_view key = text_.finish(last);
        if (skip_depth_ > 0) return true;
        if (state_ == State::top_key) {
            if (key == "metadata") return once(seen_metadata_, key, ec) && (state_ = State::skip_value, true);
            if (key == "weight_map") return once(seen_weight_map_, key, ec) && (state_ = State::weight_map_value, true);
            return fail(ec, "unknown key " + quote_name(key) + " (an index holds \"metadata\" and \"weight_map\")");
        }
        // state_ == State::weight_key
        tensor_ = key;
        state_ = State::shard_name;
        return true;
    }

    bool on_string_part(string_view part, std::size_t, error_code&) {
        text_.append(part);
        return true;
    }
    bool on_string(string_view last, std::size_t, error_code& ec) {
        std::string_view value = text_.finish(last);
        if (skip_depth_ > 0 || state_ == State::skip_value) return scalar_skipped();
        if (state_ != State::shard_name) return refuse(ec, "a string");
        if (auto why = shard_name_problem(value); !why.empty())
            return fail(ec, "tensor " + quote_name(tensor_) + ": " + why);
        if (!index_.weight_map.emplace(tensor_, value).second)
            return fail(ec, "tensor " + quote_name(tensor_) + " is listed twice in weight_map");
        state_ = State::weight_key;
        return true;
    }

    bool on_int64(std::int64_t, string_view, error_code& ec) { return scalar(ec, "a number"); }
    bool on_uint64(std::uint64_t, string_view, error_code& ec) { return scalar(ec, "a number"); }
    bool on_double(double, string_view, error_code& ec) { return scalar(ec, "a number"); }
    bool on_bool(bool, error_code& ec) { return scalar(ec, "a boolean"); }
    bool on_null(error_code& ec) { return scalar(ec, "null"); }

    bool on_document_end(error_code& ec) {
        if (!seen_weight_map_) return fail(ec, "index has no \"weight_map\"");
        if (index_.weight_map.empty()) return fail(ec, "index \"weight_map\" lists no tensor");
        return true;
    }

private:
    enum class State { document, top_key, skip_value, weight_map_value, weight_key, shard_name, finished };

    bool enter_skipped() {
        ++skip_depth_;
        return true;
    }
    bool leave_skipped() {
        if (--skip_depth_ == 0) state_ = State::top_key;
        return true;
    }
    bool scalar_skipped() {
        if (skip_depth_ == 0) state_ = State::top_key;
        return true;
    }
    bool scalar(error_code& ec, std::string_view found) {
        if (skip_depth_ > 0 || state_ == State::skip_value) return scalar_skipped();
        return refuse(ec, found);
    }
    bool once(bool& seen, std::string_view key, error_code& ec) {
        if (seen) return fail(ec, "duplicate key " + quote_name(key));
        seen = true;
        return true;
    }
    bool refuse(error_code& ec, std::string_view found) {
        std::string what = state_ == State::document         ? "index is not a JSON object"
                           : state_ == State::weight_map_value ? "\"weight_map\" must be an object"
                           : state_ == State::shard_name       ? "weight_map value of " + quote_name(tensor_) + " must be a file name"
                                                               : "unexpected JSON structure";
        return fail(ec, what + " (found " + std::string(found) + ")");
    }

    Index index_;
    State state_ = State::document;
    unsigned skip_depth_ = 0;
    bool seen_metadata_ = false;
    bool seen_weight_map_ = false;
    std::string tensor_;
    detail::PartialText text_;
};

inline bool ends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

/// Canonical form of an existing path, or an io_error naming it.
inline std::filesystem::path canonical_or_throw(const std::filesystem::path& p, std::string_view what) {
    std::error_code ec;
    auto c = std::filesystem::canonical(p, ec);
    if (ec) throw io_error(p.string(), std::string(what), ec.value());
    return c;
}

/// The checkpoint a directory (or an S3 prefix) holds: its one index, else its safetensors files
/// in name order.
struct DirectoryListing {
    std::string index;
    std::vector<std::string> files;
};

/// Chooses the checkpoint among the file names a directory (`kind`: "directory", "prefix") holds.
inline DirectoryListing choose_checkpoint(const std::vector<std::string>& names, const std::string& source, std::string_view kind) {
    DirectoryListing listing;
    std::vector<std::string> indexes;
    for (const std::string& name : names) {
        if (ends_with(name, ".safetensors.index.json")) indexes.push_back(name);
        else if (ends_with(name, ".safetensors")) listing.files.push_back(name);
    }
    if (indexes.size() > 1)
        throw format_error(source, std::string(kind) + " holds several *.safetensors.index.json files; name the one to load");
    if (indexes.size() == 1) listing.index = std::move(indexes.front());
    else if (listing.files.empty()) throw format_error(source, std::string(kind) + " holds no *.safetensors file and no index");
    std::sort(listing.files.begin(), listing.files.end());
    return listing;
}

inline DirectoryListing list_directory(const std::filesystem::path& dir) {
    std::error_code ec;
    std::filesystem::directory_iterator it(dir, ec), end;
    if (ec) throw io_error(dir.string(), "cannot list directory", ec.value());
    std::vector<std::string> names;
    for (; it != end; it.increment(ec)) names.push_back(it->path().filename().string());
    if (ec) throw io_error(dir.string(), "cannot list directory", ec.value());
    return choose_checkpoint(names, dir.string(), "directory");
}

#if INSTANTTENSOR_HAS_CURL
/// Bytes [offset, offset + length) of a remote file, fewer at its end. A first read (file.size 0)
/// pins the file's size and validators in `file`. Nullopt where the server has no such file (404)
/// and `may_be_missing`; an io_error for any other failure.
inline std::optional<std::string> fetch_remote(RemoteFile& file, std::uint64_t offset, std::uint64_t length,
                                               bool may_be_missing = false) {
    RangeGet get;
    std::string bytes(length, '\0');
    try {
        bytes.resize(get.run_blocking(file, offset, std::as_writable_bytes(std::span(bytes)), {}));
    } catch (const io_error&) {
        if (may_be_missing && get.head().status == 404) return std::nullopt;
        throw;
    }
    if (file.size == 0) {
        const auto& head = get.head();
        if (!head.total_known && !(head.status == 200 && head.empty_body))  // (an empty file: size 0)
            throw io_error(file.location.shown, "the server does not say the file's size (no total in Content-Range)", 0);
        file.size = head.total;
        file.etag = head.etag;
        file.last_modified = head.last_modified;
        file.http1 = get.from_http1_origin();
    }
    return bytes;
}
#endif

inline void check_index_lists(const format::Index& index, std::span<const std::string> shards,
                              std::span<const format::CheckpointFile> files, std::string_view source) {
    // Every tensor of a shard is listed for that shard; since names are unique per file, the
    // counts then match exactly when every listed tensor was found.
    std::size_t found = 0;
    for (std::size_t k = 0; k < shards.size(); ++k)
        for (const auto& t : files[k].header.tensors) {
            auto it = index.weight_map.find(t.name);
            if (it == index.weight_map.end())
                throw format_error(std::string(source), "tensor " + quote_name(t.name) + " of shard " +
                                                            quote_name(shards[k]) + " is not listed in weight_map");
            if (it->second != shards[k])
                throw format_error(std::string(source), "tensor " + quote_name(t.name) + " is listed in shard " +
                                                            quote_name(it->second) + " but found in " + quote_name(shards[k]));
            ++found;
        }
    if (found == index.weight_map.size()) return;
    // Some listed tensor is in no shard (every one found was found where it is listed): name it.
    std::unordered_set<std::string_view> present;
    present.reserve(found);
    for (std::size_t k = 0; k < shards.size(); ++k)
        for (const auto& t : files[k].header.tensors) present.insert(t.name);
    for (const auto& [tensor, shard] : index.weight_map)
        if (!present.contains(tensor))
            throw format_error(std::string(source), "tensor " + quote_name(tensor) +
                                                        " listed in weight_map is missing from shard " + quote_name(shard));
}

}  // namespace instanttensor::detail

namespace instanttensor::format {

inline std::vector<std::string> Index::shard_names() const {
    std::set<std::string_view> unique;
    for (const auto& [tensor, shard] : weight_map) unique.insert(shard);
    return {unique.begin(), unique.end()};
}

inline Index parse_index(std::string_view json, std::string_view source) {
    return detail::parse_json<detail::IndexHandler>(json, source, 0);
}

inline Checkpoint Checkpoint::open(const std::filesystem::path& path) { return open({path}); }

inline Checkpoint Checkpoint::open(std::span<const std::filesystem::path> paths) {
    if (paths.empty()) throw format_error("", "no checkpoint path given");
    Checkpoint c;
    for (const auto& p : paths) {
        if (p.empty()) throw usage_error("Checkpoint::open", "an empty path ('') names no file");
        if (detail::is_remote(p.native())) {
            c.add_remote(p.native());
            continue;
        }
        std::error_code ec;
        const bool is_dir = std::filesystem::is_directory(p, ec);
        if (is_dir) {
            const auto listing = detail::list_directory(p);
            if (!listing.index.empty()) c.add_index(p / listing.index);
            else for (const auto& f : listing.files) c.add_file(p / f);
        } else if (detail::ends_with(p.string(), ".json")) {
            c.add_index(p);
        } else {
            c.add_file(p);
        }
    }
    c.finish();
    return c;
}

inline Checkpoint Checkpoint::from_memory(std::span<const std::pair<std::string, std::span<const std::byte>>> files) {
    if (files.empty()) throw format_error("", "no checkpoint file given");
    Checkpoint c;
    for (const auto& [name, bytes] : files) c.files_.push_back({name, parse_file_bytes(bytes, name), {}, {}});
    c.finish(false);
    c.in_memory_ = true;
    return c;
}

inline void Checkpoint::add_index(const std::filesystem::path& index_path) {
    const std::string source = index_path.string();
    const Index index = parse_index(detail::read_small_file(index_path, max_header_size), source);
    const auto dir = detail::canonical_or_throw(index_path, "cannot resolve index path").parent_path();
    const auto shards = index.shard_names();
    const std::size_t first_file = files_.size();
    for (const auto& shard : shards) {
        const auto path = index_path.parent_path() / shard;
        const auto resolved = detail::canonical_or_throw(path, "cannot find shard listed by the index " + source);
        if (std::mismatch(dir.begin(), dir.end(), resolved.begin(), resolved.end()).first != dir.end())
            throw format_error(source, "shard " + detail::quote_name(shard) + " resolves to " + resolved.string() +
                                           ", outside the index's directory (symlink?)");
        add_file(path);
    }
    detail::check_index_lists(index, shards, std::span(files_).subspan(first_file), source);
}

inline void Checkpoint::add_file(std::filesystem::path path) {
    auto fd = detail::open_read_only(path);
    const std::string source = path.string();
    const auto identity = detail::identity_of(fd.get(), source);
    files_.push_back({std::move(path), detail::read_header(fd.get(), identity.size, source), identity, {}});
}

/// A remote file's header is read with one GET of this many bytes where it fits, else two.
inline constexpr std::uint64_t remote_header_guess = 512 << 10;

inline void Checkpoint::add_remote([[maybe_unused]] std::string_view path) {
#if INSTANTTENSOR_HAS_CURL
    const auto location = detail::locate_remote(path);
    if (!location.is_directory()) {
        if (detail::ends_with(location.url, ".json")) add_remote_index(location);
        else add_remote_file(location);
        return;
    }
    if (location.s3) {  // a prefix is listed (ListObjectsV2) and chosen from as a directory is
        const auto listing = detail::choose_checkpoint(detail::S3Listing().names(location, {}), location.shown, "prefix");
        if (!listing.index.empty()) add_remote_index(location.sibling(listing.index));
        else for (const auto& f : listing.files) add_remote_file(location.sibling(f));
        return;
    }
    // A directory has no listing over HTTP: the names save_pretrained writes. Only the candidate
    // itself may be missing; a shard its index lists may not.
    if (add_remote_index(location.sibling("model.safetensors.index.json"), true) ||
        add_remote_file(location.sibling("model.safetensors"), true))
        return;
    throw io_error(location.shown, "holds neither model.safetensors.index.json nor model.safetensors (HTTP 404 for both)", 0);
#else
    throw unavailable_error(std::string(path), "this build has no libcurl, so no remote files (configure with libcurl4-openssl-dev installed)");
#endif
}

#if INSTANTTENSOR_HAS_CURL

inline bool Checkpoint::add_remote_index(const detail::RemoteLocation& location, bool may_be_missing) {
    detail::RemoteFile file{location, 0, {}, {}, false};
    auto first = detail::fetch_remote(file, 0, remote_header_guess, may_be_missing);
    if (!first) return false;
    std::string json = std::move(*first);
    if (file.size > max_header_size)
        throw format_error(location.shown, "index of " + std::to_string(file.size) + " bytes exceeds the limit of " +
                                               std::to_string(max_header_size) + " bytes");
    if (json.size() < file.size) json += *detail::fetch_remote(file, json.size(), file.size - json.size());
    const Index index = parse_index(json, location.shown);
    const auto shards = index.shard_names();
    const std::size_t first_file = files_.size();
    for (const auto& shard : shards) add_remote_file(location.sibling(shard));  // parse_index kept them inside
    detail::check_index_lists(index, shards, std::span(files_).subspan(first_file), location.shown);
    return true;
}

inline bool Checkpoint::add_remote_file(detail::RemoteLocation location, bool may_be_missing) {
    detail::RemoteFile file{std::move(location), 0, {}, {}, false};
    const std::string source = file.location.shown;
    auto first = detail::fetch_remote(file, 0, remote_header_guess, may_be_missing);
    if (!first) return false;
    std::string head = std::move(*first);
    const std::uint64_t n = decode_header_length(std::as_bytes(std::span(head)), file.size, source);
    const std::uint64_t end = header_length_size + n;
    if (head.size() < end) head += *detail::fetch_remote(file, head.size(), end - head.size());
    if (head.size() < end) throw io_error(source, "the file ended inside its header while it was read", 0);
    Header header = parse_header(std::string_view(head).substr(header_length_size, n), file.size, source);
    files_.push_back({source, std::move(header), {}, std::move(file)});
    return true;
}
#endif

inline void Checkpoint::finish(bool on_disk) {
    if (files_.size() > UINT32_MAX) throw format_error("", "too many files");
    if (on_disk) {
        const auto remote_file = std::find_if(files_.begin(), files_.end(), [](const CheckpointFile& f) { return f.is_remote(); });
        const auto local_file = std::find_if(files_.begin(), files_.end(), [](const CheckpointFile& f) { return !f.is_remote(); });
        if (remote_file != files_.end() && local_file != files_.end())
            throw usage_error("Checkpoint::open", "the files of a checkpoint are all local or all remote: " +
                                                      remote_file->path.string() + " is remote, " + local_file->path.string() + " is not");
        std::set<std::filesystem::path> seen;
        for (const auto& f : files_)
            if (!seen.insert(f.is_remote() ? std::filesystem::path(f.remote.location.url) : detail::canonical_or_throw(f.path, "cannot resolve path")).second)
                throw format_error(f.path.string(), "file is part of the checkpoint twice");
    }
    for (std::uint32_t i = 0; i < files_.size(); ++i)
        for (const auto& t : files_[i].header.tensors) {
            tensors_.push_back({&t, i, files_[i].header.data_offset() + t.begin});
            total_bytes_ += t.nbytes();
        }
    if (tensors_.size() > UINT32_MAX) throw format_error("", "too many tensors");
    by_name_.resize(tensors_.size());
    for (std::uint32_t i = 0; i < by_name_.size(); ++i) by_name_[i] = i;
    std::sort(by_name_.begin(), by_name_.end(),
              [&](std::uint32_t a, std::uint32_t b) { return tensors_[a].name() < tensors_[b].name(); });
    auto same_name = [&](std::uint32_t a, std::uint32_t b) { return tensors_[a].name() == tensors_[b].name(); };
    if (auto dup = std::adjacent_find(by_name_.begin(), by_name_.end(), same_name); dup != by_name_.end()) {
        const auto& a = tensors_[*dup];
        const auto& b = tensors_[*(dup + 1)];
        throw format_error(files_[b.file].path.string(), "tensor " + detail::quote_name(b.name()) + " is also in " +
                                                            files_[a.file].path.string());
    }
}

inline const TensorRef* Checkpoint::find(std::string_view name) const noexcept {
    auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                               [&](std::uint32_t i, std::string_view n) { return tensors_[i].name() < n; });
    if (it == by_name_.end() || tensors_[*it].name() != name) return nullptr;
    return &tensors_[*it];
}

inline Metadata Checkpoint::metadata() const {
    Metadata merged;
    for_each_metadata([&](const std::string& key, const std::string& value) { merged.emplace_hint(merged.end(), key, value); });
    return merged;
}

template <class Visit>
void Checkpoint::for_each_metadata(Visit&& visit) const {
    // A merge of the files' sorted maps: each step takes the least key any file has left, from the
    // first file holding it, and skips it in the others.
    std::vector<Metadata::const_iterator> next;
    next.reserve(files_.size());
    for (const auto& f : files_) next.push_back(f.header.metadata.begin());
    for (;;) {
        const std::string* least = nullptr;
        std::size_t from = 0;
        for (std::size_t i = 0; i < files_.size(); ++i)
            if (next[i] != files_[i].header.metadata.end() && (least == nullptr || next[i]->first < *least)) {
                least = &next[i]->first;
                from = i;
            }
        if (least == nullptr) return;
        visit(next[from]->first, next[from]->second);
        for (std::size_t i = from + 1; i < files_.size(); ++i)
            if (next[i] != files_[i].header.metadata.end() && next[i]->first == *least) ++next[i];
        ++next[from];
    }
}

inline void Checkpoint::require_files() const {
    if (remote())
        throw unavailable_error(files_.front().path.string(),
                                "is a remote file: storage::http reads it (Backend::http, or Backend::automatic), no other backend");
    if (in_memory_)
        throw usage_error(files_.empty() ? std::string() : files_.front().path.string(),
                          "this checkpoint was parsed from memory (Checkpoint::from_memory): it has no files to open; "
                          "read it with storage::memory constructed over the same bytes");
}

inline detail::FileDescriptor Checkpoint::open_file(std::uint32_t i, int extra_flags) const {
    require_files();
    const auto& file = files_.at(i);
    const std::string source = file.path.string();
    auto fd = detail::open_read_only(file.path, extra_flags);
    if (detail::identity_of(fd.get(), source) != file.identity)
        throw io_error(source, "is not the file whose header was read: it was replaced or changed since the checkpoint "
                               "was opened (open the checkpoint again)", 0);
    return fd;
}

inline std::vector<std::filesystem::path> Checkpoint::paths_to_open() const {
    require_files();
    std::vector<std::filesystem::path> paths;
    paths.reserve(files_.size());
    for (const auto& f : files_) paths.push_back(f.path);
    return paths;
}

}  // namespace instanttensor::format
