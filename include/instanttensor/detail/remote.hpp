// instanttensor/detail/remote.hpp: where a remote file lives: the URL its bytes are requested
// from, how messages show it, and what pins the version whose header was read.
//
// No libcurl here: a checkpoint holds these whether or not the build can read them (detail/curl.hpp
// does). A path is remote when it starts with http://, https:// or hf://. An hf:// path,
// `hf://org/name[@revision][/file]`, stands for the Hugging Face Hub's
// `{HF_ENDPOINT}/{org}/{name}/resolve/{revision}/{file}` (endpoint https://huggingface.co and revision
// main by default; a revision holding '/' is written with %2F), requested with the token of
// HF_TOKEN, else of the Hub's token file.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>

#include "instanttensor/error.hpp"

namespace instanttensor::detail {

/// Whether `path` names a remote file or directory rather than a local path.
inline bool is_remote(std::string_view path) noexcept {
    return path.starts_with("http://") || path.starts_with("https://") || path.starts_with("hf://");
}

/// `url` as messages show it: without a user:password@ and without a query (the query of a signed
/// URL is a credential).
inline std::string shown_url(std::string_view url) {
    url = url.substr(0, url.find_first_of("?#"));
    const auto scheme_end = url.find("://");
    if (scheme_end == std::string_view::npos) return std::string(url);
    const auto authority = scheme_end + 3;
    const auto path = url.find('/', authority);
    const auto at = url.substr(0, path).rfind('@');
    if (at == std::string_view::npos || at < authority) return std::string(url);
    return std::string(url.substr(0, authority)).append(url.substr(at + 1));
}

/// `text` percent-encoded for a URL path: bytes other than unreserved ones and '/' become %XX.
inline std::string encode_url_path(std::string_view text) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if ((u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || c == '-' || c == '.' ||
            c == '_' || c == '~' || c == '/')
            out.push_back(c);
        else
            out.append({'%', hex[u >> 4], hex[u & 15]});
    }
    return out;
}

/// A remote file or directory: the URL requests go to (redirects are followed), how messages name
/// it, and the credential requests carry (never shown).
struct RemoteLocation {
    std::string url;
    std::string shown;
    std::string bearer_token;  ///< sent as "Authorization: Bearer", to the URL's host only

    /// Whether it names a directory (ends with '/'): its index, else model.safetensors.
    [[nodiscard]] bool is_directory() const noexcept { return url.ends_with('/'); }
    /// The file `name` (relative, already checked not to leave the directory) beside this one.
    [[nodiscard]] RemoteLocation sibling(std::string_view name) const {
        RemoteLocation s = *this;
        s.url.erase(s.url.rfind('/') + 1).append(encode_url_path(name));
        s.shown.erase(s.shown.rfind('/') + 1).append(name);
        return s;
    }
};

/// A remote file of a checkpoint, as its header was read: `size` and the validators (`etag`,
/// `last_modified`) pin that version, so that bytes of another are never mixed in.
struct RemoteFile {
    RemoteLocation location;
    std::uint64_t size = 0;
    std::string etag;           ///< empty where the server sent none
    std::string last_modified;  ///< likewise
};

/// The Hub token: HF_TOKEN, else the file `huggingface-cli login` writes (HF_TOKEN_PATH, else
/// $HF_HOME/token, else ~/.cache/huggingface/token); empty if none.
inline std::string hub_token() {
    auto env = [](const char* name) -> std::string {
        const char* v = std::getenv(name);
        return v != nullptr ? v : "";
    };
    if (auto token = env("HF_TOKEN"); !token.empty()) return token;
    std::string path = env("HF_TOKEN_PATH");
    if (path.empty() && !env("HF_HOME").empty()) path = env("HF_HOME") + "/token";
    if (path.empty() && !env("HOME").empty()) path = env("HOME") + "/.cache/huggingface/token";
    std::string token;
    if (std::ifstream in(path); in) std::getline(in, token);
    while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
    return token;
}

/// Resolves a remote path (is_remote) to its location. Throws usage_error for an hf:// path
/// without org/name.
inline RemoteLocation locate_remote(std::string_view path) {
    if (!path.starts_with("hf://")) return {std::string(path), shown_url(path), {}};
    std::string_view rest = path.substr(5);
    const auto org_end = rest.find('/');
    const auto repo_end = org_end == std::string_view::npos ? org_end : rest.find('/', org_end + 1);
    const std::string_view repo = rest.substr(0, repo_end);
    const std::string_view file = repo_end == std::string_view::npos ? "" : rest.substr(repo_end + 1);
    if (org_end == std::string_view::npos || org_end == 0 || org_end + 1 == repo.size())
        throw usage_error(std::string(path), "an hf:// path is hf://org/name[@revision][/file]");
    std::string name(repo.substr(0, repo.find('@')));
    const std::string revision = repo.find('@') == std::string_view::npos ? "main" : std::string(repo.substr(repo.find('@') + 1));
    if (revision.empty()) throw usage_error(std::string(path), "an empty revision after '@'");
    const char* endpoint_env = std::getenv("HF_ENDPOINT");
    std::string endpoint = endpoint_env != nullptr && *endpoint_env != '\0' ? endpoint_env : "https://huggingface.co";
    while (endpoint.ends_with('/')) endpoint.pop_back();
    RemoteLocation location;
    // The revision is one segment of the URL, taken as written (refs/pr/1 is written refs%2Fpr%2F1).
    location.url = endpoint + "/" + encode_url_path(name) + "/resolve/" + revision + "/" + encode_url_path(file);
    location.shown = "hf://" + name + "@" + revision + "/" + std::string(file);
    location.bearer_token = hub_token();
    return location;
}

}  // namespace instanttensor::detail
