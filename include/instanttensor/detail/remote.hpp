// instanttensor/detail/remote.hpp: where a remote file lives: the URL its bytes are requested
// from, how messages show it, and what pins the version whose header was read.
//
// No libcurl here: a checkpoint holds these whether or not the build can read them (detail/curl.hpp
// does). A path is remote when it starts with http://, https://, s3:// or hf://. An s3:// path,
// `s3://bucket/key` (a prefix where it ends with '/', listed by detail/curl.hpp's S3Listing), is
// requested path-style from AWS_ENDPOINT_URL_S3 (else AWS_ENDPOINT_URL) where one is set, else
// from https://{bucket}.s3.{region}.amazonaws.com, signed (SigV4) with the credentials of
// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, else of the profile AWS_PROFILE
// (else default) of ~/.aws/credentials (AWS_SHARED_CREDENTIALS_FILE), in the region of AWS_REGION,
// AWS_DEFAULT_REGION or that profile in ~/.aws/config (AWS_CONFIG_FILE), else us-east-1;
// without credentials, unsigned. An hf:// path,
// `hf://org/name[@revision][/file]`, stands for the Hugging Face Hub's
// `{HF_ENDPOINT}/{org}/{name}/resolve/{revision}/{file}` (endpoint https://huggingface.co and revision
// main by default; a revision holding '/' is written with %2F), requested with the token of
// HF_TOKEN, else of the Hub's token file.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "instanttensor/error.hpp"

namespace instanttensor::detail {

/// Whether `path` names a remote file or directory rather than a local path.
inline bool is_remote(std::string_view path) noexcept {
    return path.starts_with("http://") || path.starts_with("https://") || path.starts_with("s3://") ||
           path.starts_with("hf://");
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
/// For a query value, '/' too (`slash` false), as SigV4's canonical query wants.
inline std::string encode_url_path(std::string_view text, bool slash = true) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if ((u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || c == '-' || c == '.' ||
            c == '_' || c == '~' || (c == '/' && slash))
            out.push_back(c);
        else
            out.append({'%', hex[u >> 4], hex[u & 15]});
    }
    return out;
}

/// SHA-256 of an empty body, which a signed GET names as its payload's (X-Amz-Content-Sha256).
inline constexpr std::string_view empty_payload_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// How requests to S3 are signed (AWS SigV4); an empty access key: not signed.
struct S3Credentials {
    std::string region;
    std::string access_key;
    std::string secret_key;
    std::string session_token;
};

/// A remote file or directory: the URL requests go to (redirects are followed), how messages name
/// it, and the credential requests carry (never shown).
struct RemoteLocation {
    std::string url;
    std::string shown;
    std::string bearer_token;  ///< sent as "Authorization: Bearer", to the URL's host only
    bool s3 = false;           ///< an S3 object or prefix: requests are signed with `credentials`
    S3Credentials credentials;
    std::string bucket_url;    ///< S3: the URL of the bucket, which lists its keys
    std::string key;           ///< S3: the object's key, or the prefix's

    /// Whether it names a directory (ends with '/'): over HTTP its index, else model.safetensors; an
    /// S3 prefix is listed.
    [[nodiscard]] bool is_directory() const noexcept { return url.ends_with('/'); }
    /// The file `name` (relative, already checked not to leave the directory) beside this one.
    [[nodiscard]] RemoteLocation sibling(std::string_view name) const {
        RemoteLocation s = *this;
        s.url.erase(s.url.rfind('/') + 1).append(encode_url_path(name));
        s.shown.erase(s.shown.rfind('/') + 1).append(name);
        if (s.s3) s.key.erase(s.key.rfind('/') + 1).append(name);
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
    bool http1 = false;         ///< its header came over HTTP/1.x from `location.url` itself, not a redirect
};

/// The value of environment variable `name`, or empty.
inline std::string environment(const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr ? v : "";
}

/// The Hub token: HF_TOKEN, else the file `huggingface-cli login` writes (HF_TOKEN_PATH, else
/// $HF_HOME/token, else ~/.cache/huggingface/token); empty if none.
inline std::string hub_token() {
    if (auto token = environment("HF_TOKEN"); !token.empty()) return token;
    std::string path = environment("HF_TOKEN_PATH");
    if (path.empty() && !environment("HF_HOME").empty()) path = environment("HF_HOME") + "/token";
    if (path.empty() && !environment("HOME").empty()) path = environment("HOME") + "/.cache/huggingface/token";
    std::string token;
    if (std::ifstream in(path); in) std::getline(in, token);
    while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
    return token;
}

/// The keys of section `section` of an INI file (the AWS credentials and config files); empty if
/// the file or the section is missing.
inline std::map<std::string, std::string> ini_section(const std::string& path, std::string_view section) {
    std::map<std::string, std::string> keys;
    std::ifstream in(path);
    auto trim = [](std::string_view t) {
        while (!t.empty() && (t.front() == ' ' || t.front() == '\t')) t.remove_prefix(1);
        while (!t.empty() && (t.back() == ' ' || t.back() == '\t' || t.back() == '\r')) t.remove_suffix(1);
        return t;
    };
    bool inside = false;
    for (std::string line; std::getline(in, line);) {
        const std::string_view t = trim(line);
        if (t.starts_with('[') && t.ends_with(']')) inside = trim(t.substr(1, t.size() - 2)) == section;
        else if (const auto eq = t.find('='); inside && eq != std::string_view::npos)
            keys[std::string(trim(t.substr(0, eq)))] = trim(t.substr(eq + 1));
    }
    return keys;
}

/// The credentials and region S3 requests are signed with (see the top of this header).
inline S3Credentials s3_credentials() {
    const std::string home = environment("HOME");
    std::string profile = environment("AWS_PROFILE");
    if (profile.empty()) profile = "default";
    S3Credentials c;
    c.access_key = environment("AWS_ACCESS_KEY_ID");
    c.secret_key = environment("AWS_SECRET_ACCESS_KEY");
    c.session_token = environment("AWS_SESSION_TOKEN");
    if (c.access_key.empty()) {
        std::string file = environment("AWS_SHARED_CREDENTIALS_FILE");
        if (file.empty()) file = home + "/.aws/credentials";
        auto keys = ini_section(file, profile);
        c.access_key = keys["aws_access_key_id"];
        c.secret_key = keys["aws_secret_access_key"];
        c.session_token = keys["aws_session_token"];
    }
    c.region = environment("AWS_REGION");
    if (c.region.empty()) c.region = environment("AWS_DEFAULT_REGION");
    if (c.region.empty()) {
        std::string file = environment("AWS_CONFIG_FILE");
        if (file.empty()) file = home + "/.aws/config";
        c.region = ini_section(file, profile == "default" ? profile : "profile " + profile)["region"];
    }
    if (c.region.empty()) c.region = "us-east-1";
    return c;
}

/// The location of s3://bucket/key.
inline RemoteLocation locate_s3(std::string_view path) {
    const std::string_view rest = path.substr(5);
    const auto slash = rest.find('/');
    const std::string bucket(rest.substr(0, slash));
    const std::string key(slash == std::string_view::npos ? "" : rest.substr(slash + 1));
    if (bucket.empty()) throw usage_error(std::string(path), "an s3:// path is s3://bucket/key (or s3://bucket/prefix/)");
    RemoteLocation location;
    location.s3 = true;
    location.credentials = s3_credentials();
    std::string endpoint = environment("AWS_ENDPOINT_URL_S3");
    if (endpoint.empty()) endpoint = environment("AWS_ENDPOINT_URL");
    while (endpoint.ends_with('/')) endpoint.pop_back();
    // A custom endpoint is addressed path-style; AWS itself by virtual host.
    location.bucket_url = endpoint.empty() ? "https://" + bucket + ".s3." + location.credentials.region + ".amazonaws.com/"
                                           : endpoint + "/" + encode_url_path(bucket) + "/";
    location.url = location.bucket_url + encode_url_path(key);
    location.key = key;
    location.shown = "s3://" + bucket + "/" + key;
    return location;
}

/// The URL of one page of the listing (S3 ListObjectsV2) of the keys right under S3 prefix
/// `directory`, from the page `continuation` names (empty: the first). The parameters are sorted
/// and encoded as SigV4's canonical query has them, which libcurl 7.88 signs as they are written.
inline std::string s3_listing_url(const RemoteLocation& directory, std::string_view continuation) {
    std::string url = directory.bucket_url + "?";
    if (!continuation.empty()) url += "continuation-token=" + encode_url_path(continuation, false) + "&";
    return url + "delimiter=%2F&list-type=2&prefix=" + encode_url_path(directory.key, false);
}

/// `text` with XML's five entities and numeric character references decoded.
inline std::string xml_text(std::string_view text, const std::string& source) {
    std::string out;
    while (!text.empty()) {
        const auto amp = text.find('&');
        out.append(text.substr(0, amp));
        if (amp == std::string_view::npos) break;
        const auto semicolon = text.find(';', amp);
        if (semicolon == std::string_view::npos) throw format_error(source, "a listing holds an unterminated XML entity");
        const std::string_view entity = text.substr(amp + 1, semicolon - amp - 1);
        if (entity == "amp") out += '&';
        else if (entity == "lt") out += '<';
        else if (entity == "gt") out += '>';
        else if (entity == "quot") out += '"';
        else if (entity == "apos") out += '\'';
        else if (entity.starts_with('#')) {
            const bool hex = entity.size() > 1 && (entity[1] == 'x' || entity[1] == 'X');
            unsigned long code = 0;
            const std::string digits(entity.substr(hex ? 2 : 1));
            char* end = nullptr;
            code = std::strtoul(digits.c_str(), &end, hex ? 16 : 10);
            if (digits.empty() || *end != '\0' || code == 0 || code > 0x10ffff)
                throw format_error(source, "a listing holds a bad character reference &" + std::string(entity) + ";");
            if (code < 0x80) out += static_cast<char>(code);  // UTF-8
            else if (code < 0x800) out += {static_cast<char>(0xc0 | (code >> 6)), static_cast<char>(0x80 | (code & 0x3f))};
            else if (code < 0x10000)
                out += {static_cast<char>(0xe0 | (code >> 12)), static_cast<char>(0x80 | ((code >> 6) & 0x3f)),
                        static_cast<char>(0x80 | (code & 0x3f))};
            else
                out += {static_cast<char>(0xf0 | (code >> 18)), static_cast<char>(0x80 | ((code >> 12) & 0x3f)),
                        static_cast<char>(0x80 | ((code >> 6) & 0x3f)), static_cast<char>(0x80 | (code & 0x3f))};
        } else {
            throw format_error(source, "a listing holds an unknown XML entity &" + std::string(entity) + ";");
        }
        text.remove_prefix(semicolon + 1);
    }
    return out;
}

/// One page of an S3 ListObjectsV2 answer (`xml`) for prefix `prefix`: the names of its objects
/// below the prefix appended to `names`; returns the continuation token of the next page, empty
/// after the last. Only the elements the answer's schema defines are read: <Contents><Key>,
/// <IsTruncated>, <NextContinuationToken>.
inline std::string parse_s3_listing(std::string_view xml, std::string_view prefix, std::vector<std::string>& names,
                                    const std::string& source) {
    // The content of the first element `tag` of `within` from `at` on (not decoded), moving `at` past it.
    auto element = [&](std::string_view within, std::string_view tag, std::size_t& at) -> std::optional<std::string_view> {
        const std::string open = "<" + std::string(tag) + ">", close = "</" + std::string(tag) + ">";
        const auto begin = within.find(open, at);
        if (begin == std::string_view::npos) return std::nullopt;
        const auto end = within.find(close, begin + open.size());
        if (end == std::string_view::npos) throw format_error(source, "a listing holds <" + std::string(tag) + "> without its end");
        at = end + close.size();
        return within.substr(begin + open.size(), end - begin - open.size());
    };
    if (xml.find("<ListBucketResult") == std::string_view::npos)
        throw format_error(source, "the answer to a listing (ListObjectsV2) is not a ListBucketResult");
    for (std::size_t at = 0;;) {
        const auto contents = element(xml, "Contents", at);
        if (!contents) break;
        std::size_t key_at = 0;
        const auto key = element(*contents, "Key", key_at);
        const std::string name = key ? xml_text(*key, source) : "";
        if (!key || !name.starts_with(prefix)) throw format_error(source, "a listing holds an object outside the prefix");
        names.push_back(name.substr(prefix.size()));
    }
    std::size_t at = 0;
    if (element(xml, "IsTruncated", at).value_or("false") != "true") return {};
    at = 0;
    const auto next = element(xml, "NextContinuationToken", at);
    if (!next || next->empty()) throw format_error(source, "a listing says it is truncated and names no next page");
    return xml_text(*next, source);
}

/// Resolves a remote path (is_remote) to its location. Throws usage_error for an hf:// path
/// without org/name or an s3:// path without a bucket.
inline RemoteLocation locate_remote(std::string_view path) {
    if (path.starts_with("s3://")) return locate_s3(path);
    if (!path.starts_with("hf://")) {
        RemoteLocation location;
        location.url = path;
        location.shown = shown_url(path);
        return location;
    }
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
    std::string endpoint = environment("HF_ENDPOINT");
    if (endpoint.empty()) endpoint = "https://huggingface.co";
    while (endpoint.ends_with('/')) endpoint.pop_back();
    RemoteLocation location;
    // The revision is one segment of the URL, taken as written (refs/pr/1 is written refs%2Fpr%2F1).
    location.url = endpoint + "/" + encode_url_path(name) + "/resolve/" + revision + "/" + encode_url_path(file);
    location.shown = "hf://" + name + "@" + revision + "/" + std::string(file);
    location.bearer_token = hub_token();
    return location;
}

}  // namespace instanttensor::detail
