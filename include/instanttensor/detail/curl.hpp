// instanttensor/detail/curl.hpp: ranged GETs of remote files with libcurl, set up one way for the
// header reads of Checkpoint::open and the reads of storage::http; and the listing of an S3
// prefix (S3Listing), set up the same way (Request).
//
// A RangeGet is one easy handle, reused for request after request: it asks for bytes [offset,
// offset + length) of a file, lands them in the caller's memory, and says afterwards what the
// response amounts to (Outcome): bytes (all, or fewer when the connection broke: the caller
// continues from there), a failure worth another try after a pause (a reset, a timeout, 5xx, 429),
// or one that is final (403, 404, a server ignoring Range, a file changed since its header was
// read). Every request after the first names the pinned version (If-Match, else
// If-Unmodified-Since) and every response is checked against it as well, so that bytes of two
// versions never mix even behind a server that ignores those conditions.
//
// Credentials never reach a message: the hub token is sent as a bearer token to the URL's host
// only (redirects to other hosts drop it, as curl does for authentication), and messages show
// URLs through shown_url.
#pragma once

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "instanttensor/detail/remote.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/io.hpp"

namespace instanttensor::detail {

/// Initialises libcurl once per process. Throws unavailable_error if it cannot.
inline void init_curl() {
    static const CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (code != CURLE_OK) throw unavailable_error("libcurl", std::string("cannot initialise: ") + curl_easy_strerror(code));
}

struct CurlEasyDeleter {
    void operator()(CURL* c) const noexcept { curl_easy_cleanup(c); }
};
struct CurlListDeleter {
    void operator()(curl_slist* l) const noexcept { curl_slist_free_all(l); }
};
using CurlEasy = std::unique_ptr<CURL, CurlEasyDeleter>;
using CurlList = std::unique_ptr<curl_slist, CurlListDeleter>;

/// `text` with ASCII letters in lower case (header names, tokens and hosts compare so).
inline std::string ascii_lower(std::string_view text) {
    std::string out(text);
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

/// What the headers of a response said (of the last response, where redirects were followed).
struct ResponseHead {
    long status = 0;
    std::string reason;
    std::string etag;
    std::string last_modified;
    bool has_range = false;        ///< a Content-Range "bytes first-last/total" came
    std::uint64_t first = 0;
    std::uint64_t total = 0;
    bool total_known = false;      ///< the total of Content-Range (also "bytes */total" of a 416)
    bool empty_body = false;       ///< Content-Length: 0
    bool length_known = false;     ///< a Content-Length came
    std::uint64_t length = 0;      ///< its value
    bool close = false;            ///< the server closes the connection after this response (HTTP/1.0 unless kept alive, Connection: close)
    unsigned retry_after_s = 0;

    void parse_line(std::string_view line) {
        while (!line.empty() && (line.back() == '\n' || line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
        if (line.starts_with("HTTP/")) {  // a new response (after a redirect or a 100): forget the last
            *this = {};
            close = line.starts_with("HTTP/1.0 ");
            const auto code = line.find(' ');
            if (code == std::string_view::npos) return;
            std::from_chars(line.data() + code + 1, line.data() + line.size(), status);
            if (const auto space = line.find(' ', code + 1); space != std::string_view::npos) reason = line.substr(space + 1);
            return;
        }
        const auto colon = line.find(':');
        if (colon == std::string_view::npos) return;
        const std::string name = ascii_lower(line.substr(0, colon));
        std::string_view value = line.substr(colon + 1);
        while (value.starts_with(' ')) value.remove_prefix(1);
        if (name == "etag") etag = value;
        else if (name == "last-modified") last_modified = value;
        else if (name == "retry-after") std::from_chars(value.data(), value.data() + value.size(), retry_after_s);
        else if (name == "content-range") parse_content_range(value);
        else if (name == "content-length") {
            length_known = std::from_chars(value.data(), value.data() + value.size(), length).ec == std::errc{};
            empty_body = length_known && length == 0;
        } else if (name == "connection") {
            const std::string tokens = ascii_lower(value);
            if (tokens.find("close") != std::string::npos) close = true;
            else if (tokens.find("keep-alive") != std::string::npos) close = false;
        }
    }

private:
    void parse_content_range(std::string_view value) {  // "bytes 0-99/1000" or "bytes */1000"
        if (!value.starts_with("bytes ")) return;
        value.remove_prefix(6);
        const auto slash = value.find('/');
        if (slash == std::string_view::npos) return;
        const std::string_view range = value.substr(0, slash);
        const std::string_view size = value.substr(slash + 1);
        total_known = std::from_chars(size.data(), size.data() + size.size(), total).ec == std::errc{};
        if (range != "*")
            has_range = std::from_chars(range.data(), range.data() + range.size(), first).ec == std::errc{};
    }
};

/// What a finished request amounts to.
struct Outcome {
    enum Kind { bytes, again, failed } kind = failed;
    std::uint64_t received = 0;  ///< bytes: how many landed (fewer than asked when the connection broke)
    std::string message;         ///< again, failed: what went wrong, without the URL
    unsigned pause_ms = 0;       ///< again: the server's Retry-After, if it said
};

/// An easy handle, reused request after request, set up as every request of the library is:
/// redirects followed, timeouts, TLS trusted from the usual variables, the Hub's token, S3's
/// signature. A RangeGet and an S3Listing are one.
class Request {
public:
    Request(const Request&) = delete;
    Request& operator=(const Request&) = delete;

    [[nodiscard]] CURL* handle() const noexcept { return easy_.get(); }
    [[nodiscard]] const ResponseHead& head() const noexcept { return head_; }

    /// The pause before try `tries + 1`: first_backoff_ms, doubling, at most 10 s.
    static unsigned backoff_ms(const RemoteOptions& options, unsigned tries) {
        return std::min<unsigned>(10'000, options.first_backoff_ms << std::min(tries - 1, 16u));
    }

    /// The pause before sending again a request whose try `tries` came back `again` (the backoff,
    /// or the server's Retry-After if longer); once options.tries are spent, an io_error naming
    /// `shown` and what was `asked` ("bytes 0-99, ", or empty).
    static std::chrono::milliseconds pause_before_try(const Outcome& again, unsigned tries, const RemoteOptions& options,
                                                      const std::string& shown, const std::string& asked) {
        if (tries >= options.tries) throw io_error(shown, again.message + " (" + asked + std::to_string(tries) + " tries)", 0);
        return std::chrono::milliseconds(std::max(again.pause_ms, backoff_ms(options, tries)));
    }

protected:
    Request() {
        init_curl();
        easy_.reset(curl_easy_init());
        if (!easy_) throw unavailable_error("libcurl", "cannot create a transfer handle");
        // libcurl reads no CA variables itself (the curl command does): the usual ones, read once.
        for (const char* name : {"CURL_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"})
            if (ca_bundle_.empty()) ca_bundle_ = environment(name);
        ca_directory_ = environment("SSL_CERT_DIR");
    }
    ~Request() = default;

    /// Resets the handle for a GET of `url` on behalf of `location`, sending `headers` besides S3's
    /// own; the response's headers land in head(), its body goes to `on_body` (the caller sets
    /// CURLOPT_WRITEDATA).
    void configure(const RemoteLocation& location, const std::string& url, const std::vector<std::string>& headers,
                   curl_write_callback on_body, const RemoteOptions& options) {
        CURL* c = easy_.get();
        curl_easy_reset(c);
        head_ = {};
        error_[0] = '\0';
        const S3Credentials& s3 = location.credentials;
        const bool signed_s3 = location.s3 && !s3.access_key.empty();
        headers_.reset();
        auto add = [&](const std::string& line) { headers_.reset(append(headers_.release(), line)); };
        for (const std::string& line : headers) add(line);
        if (signed_s3) {
            // libcurl 7.88 signs every header given here, and takes the payload's hash from this
            // one: that of an empty body, as a GET has.
            add("x-amz-content-sha256: " + std::string(empty_payload_sha256));
            if (!s3.session_token.empty()) add("x-amz-security-token: " + s3.session_token);
        }

        curl_easy_setopt(c, CURLOPT_URL, url.c_str());
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers_.get());
        curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 8L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, static_cast<long>(options.connect_timeout_s));
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
        curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, static_cast<long>(options.stall_timeout_s));
        curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
        curl_easy_setopt(c, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
        curl_easy_setopt(c, CURLOPT_PIPEWAIT, 1L);
        curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error_);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, &Request::on_header);
        curl_easy_setopt(c, CURLOPT_HEADERDATA, this);
        if (!ca_bundle_.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, ca_bundle_.c_str());
        if (!ca_directory_.empty()) curl_easy_setopt(c, CURLOPT_CAPATH, ca_directory_.c_str());
        if (!location.bearer_token.empty()) {
            curl_easy_setopt(c, CURLOPT_HTTPAUTH, static_cast<long>(CURLAUTH_BEARER));
            curl_easy_setopt(c, CURLOPT_XOAUTH2_BEARER, location.bearer_token.c_str());
        }
        if (signed_s3) {
            sigv4_ = "aws:amz:" + s3.region + ":s3";
            curl_easy_setopt(c, CURLOPT_AWS_SIGV4, sigv4_.c_str());
            curl_easy_setopt(c, CURLOPT_USERNAME, s3.access_key.c_str());
            curl_easy_setopt(c, CURLOPT_PASSWORD, s3.secret_key.c_str());
        }
    }

    /// What a response amounts to whose status is none of those its request expects: another try
    /// (429, 5xx), or a failure saying the status, with a hint where credentials were refused. No
    /// status at all: curl's error, tried again where transient.
    [[nodiscard]] Outcome unexpected(const RemoteLocation& location, CURLcode code) const {
        const long status = head_.status;
        if (status == 429 || status >= 500) {
            Outcome o = again(status_text());
            o.pause_ms = std::min(head_.retry_after_s, 30u) * 1000;
            return o;
        }
        if (status != 0) {
            std::string text = status_text();
            if ((status == 401 || status == 403) && location.shown.starts_with("hf://"))
                text += location.bearer_token.empty() ? " (no token was sent: set HF_TOKEN)" : " (check the token)";
            if (status == 403 && location.s3)
                text += location.credentials.access_key.empty()
                            ? " (the request was not signed: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"
                            : " (check the AWS credentials and region " + location.credentials.region + ")";
            return fail(text);
        }
        return broken(code);
    }

    /// What a transfer that curl ended with `code` amounts to: tried again where transient.
    [[nodiscard]] Outcome broken(CURLcode code) const {
        if (code == CURLE_OK) return fail("no answer with a status");
        std::string text = error_[0] != '\0' ? error_ : curl_easy_strerror(code);
        return transient(code) ? again(text) : fail(text);
    }

    [[nodiscard]] std::string status_text() const {
        return "HTTP " + std::to_string(head_.status) + (head_.reason.empty() ? "" : " " + head_.reason);
    }
    [[nodiscard]] static Outcome fail(std::string message) { return {Outcome::failed, 0, std::move(message), 0}; }
    [[nodiscard]] static Outcome again(std::string message) { return {Outcome::again, 0, std::move(message), 0}; }

    ResponseHead head_;
    char error_[CURL_ERROR_SIZE]{};

private:
    static curl_slist* append(curl_slist* list, const std::string& line) {
        curl_slist* grown = curl_slist_append(list, line.c_str());
        if (grown == nullptr) throw unavailable_error("libcurl", "out of memory for a request's headers");
        return grown;
    }
    static bool transient(CURLcode code) {
        switch (code) {
        case CURLE_COULDNT_CONNECT: case CURLE_OPERATION_TIMEDOUT: case CURLE_RECV_ERROR: case CURLE_SEND_ERROR:
        case CURLE_PARTIAL_FILE: case CURLE_GOT_NOTHING: case CURLE_HTTP2: case CURLE_HTTP2_STREAM: case CURLE_SSL_CONNECT_ERROR:
            return true;
        default:
            return false;
        }
    }
    static std::size_t on_header(char* data, std::size_t size, std::size_t count, void* self) {
        static_cast<Request*>(self)->head_.parse_line(std::string_view(data, size * count));
        return size * count;
    }

    CurlEasy easy_;
    std::string ca_bundle_;     // CURLOPT_CAINFO, if the environment names one
    std::string ca_directory_;  // CURLOPT_CAPATH, likewise
    CurlList headers_;          // the caller's and S3's own
    std::string sigv4_;
};

/// One ranged GET at a time, over a reused handle.
class RangeGet : public Request {
public:
    RangeGet() = default;

    /// Sets up a GET of bytes [offset, offset + length) of `file` into `destination` (which must
    /// hold `length` bytes). A file whose size is still 0 is being opened: nothing is pinned yet.
    void prepare(const RemoteFile& file, std::uint64_t offset, std::uint64_t length, std::byte* destination,
                 const RemoteOptions& options) {
        set_range(file, offset, length, destination);
        std::vector<std::string> conditions;
        if (std::string c = condition(file); !c.empty()) conditions.push_back(std::move(c));
        configure(file.location, file.location.url, conditions, &RangeGet::on_body, options);
        curl_easy_setopt(handle(), CURLOPT_RANGE, range_.c_str());
        curl_easy_setopt(handle(), CURLOPT_WRITEDATA, this);
    }

    /// What the transfer amounts to, once curl finished it with `code`.
    [[nodiscard]] Outcome outcome(CURLcode code) const {
        const long status = head_.status;
        if (status == 206) {
            if (!head_.has_range || head_.first != offset_)
                return fail("the server answered a range request with other bytes (Content-Range of 206 does not start at " +
                            std::to_string(offset_) + ")");
            if (std::string why = changed(); !why.empty()) return fail(why);
            if (overflow_) return fail("the server sent more bytes than the range asked for");
            // Bytes that arrived count even if the connection then broke: the caller continues.
            if (received_ > 0 || (code == CURLE_OK && head_.total_known && offset_ >= head_.total))
                return {Outcome::bytes, received_, {}, 0};
            return code == CURLE_OK ? again("an empty response") : broken(code);  // broken after the head
        } else if (status == 200) {
            // An empty file has no range to send: some servers answer 200 with nothing (nginx), others 416.
            if (file_->size == 0 && offset_ == 0 && head_.empty_body) return {Outcome::bytes, 0, {}, 0};
            return fail("the server ignores range requests (it answered 200 with the whole file to a request for bytes " +
                        range_ + "); serve the checkpoint with a server that supports Range");
        } else if (status == 412) {
            return fail("changed on the server since its header was read (If-Match failed): open the checkpoint again");
        } else if (status == 416) {
            if (file_->size == 0 && offset_ == 0) return {Outcome::bytes, 0, {}, 0};  // an empty file, being opened
            return fail("the server has fewer bytes than when its header was read (416 for bytes " + range_ +
                        "): the file changed; open the checkpoint again");
        }
        return unexpected(file_->location, code);
    }

    /// Transfers and retries with pauses until done; for the few small reads of opening a file.
    /// Returns the bytes that landed (fewer than asked only at the end of the file).
    std::uint64_t run_blocking(const RemoteFile& file, std::uint64_t offset, std::span<std::byte> out,
                               const RemoteOptions& options) {
        std::uint64_t done = 0;
        unsigned tries = 0;
        while (done < out.size()) {
            prepare(file, offset + done, out.size() - done, out.data() + done, options);
            const Outcome o = outcome(curl_easy_perform(handle()));
            if (o.kind == Outcome::failed) throw io_error(file.location.shown, o.message, 0);
            if (o.kind == Outcome::again) {
                std::this_thread::sleep_for(pause_before_try(o, ++tries, options, file.location.shown, ""));
                continue;
            }
            tries = 0;
            done += o.received;
            if (o.received == 0 || (head_.total_known && offset + done >= head_.total)) break;  // the end of the file
        }
        return done;
    }

    /// Whether the last response came over HTTP/1.x from the URL asked for, not from a redirect:
    /// then storage::http receives the file's bodies itself (detail/http1.hpp).
    [[nodiscard]] bool from_http1_origin() const {
        long version = 0;
        long redirects = 0;
        curl_easy_getinfo(handle(), CURLINFO_HTTP_VERSION, &version);
        curl_easy_getinfo(handle(), CURLINFO_REDIRECT_COUNT, &redirects);
        return (version == CURL_HTTP_VERSION_1_0 || version == CURL_HTTP_VERSION_1_1) && redirects == 0;
    }

protected:
    /// Sets up the range of a request without a transfer of libcurl's (detail/http1.hpp sends it).
    void set_range(const RemoteFile& file, std::uint64_t offset, std::uint64_t length, std::byte* destination) {
        file_ = &file;
        offset_ = offset;
        length_ = length;
        destination_ = destination;
        received_ = 0;
        overflow_ = false;
        range_ = std::to_string(offset) + "-" + std::to_string(offset + length - 1);
    }

    /// The header naming the pinned version, or empty while the file is being opened.
    [[nodiscard]] static std::string condition(const RemoteFile& file) {
        if (!file.etag.empty() && !file.etag.starts_with("W/")) return "If-Match: " + file.etag;
        if (!file.last_modified.empty()) return "If-Unmodified-Since: " + file.last_modified;
        return {};
    }

    /// Why the response is not of the pinned version, or empty.
    [[nodiscard]] std::string changed() const {
        if (file_->size == 0) return {};  // being opened: this response pins the version
        if (head_.total_known && head_.total != file_->size)
            return "changed on the server since its header was read (" + std::to_string(file_->size) + " bytes then, " +
                   std::to_string(head_.total) + " now): open the checkpoint again";
        if (!file_->etag.empty() && !head_.etag.empty() && head_.etag != file_->etag)
            return "changed on the server since its header was read (ETag " + file_->etag + " then, " + head_.etag +
                   " now): open the checkpoint again";
        if (file_->etag.empty() && !file_->last_modified.empty() && !head_.last_modified.empty() &&
            head_.last_modified != file_->last_modified)
            return "changed on the server since its header was read (Last-Modified " + file_->last_modified + " then, " +
                   head_.last_modified + " now): open the checkpoint again";
        return {};
    }

    const RemoteFile* file_ = nullptr;
    std::uint64_t offset_ = 0;
    std::uint64_t length_ = 0;
    std::byte* destination_ = nullptr;
    std::uint64_t received_ = 0;
    bool overflow_ = false;
    std::string range_;

private:
    static std::size_t on_body(char* data, std::size_t size, std::size_t count, void* self_) {
        auto* self = static_cast<RangeGet*>(self_);
        const std::size_t n = size * count;
        if (self->head_.status != 206) return 0;  // not the bytes asked for: stop (outcome says why)
        if (n > self->length_ - self->received_) {
            self->overflow_ = true;
            return 0;
        }
        std::memcpy(self->destination_ + self->received_, data, n);
        self->received_ += n;
        return n;
    }
};

/// The names of the objects right under an S3 prefix (ListObjectsV2, page after page), as a
/// directory's are listed: what Checkpoint::open chooses the checkpoint of s3://bucket/prefix/ from.
class S3Listing : public Request {
public:
    /// Lists `directory` (an S3 location ending in '/'); io_error naming it for a failed request,
    /// format_error for an answer that is not a listing.
    std::vector<std::string> names(const RemoteLocation& directory, const RemoteOptions& options) {
        std::vector<std::string> names;
        std::string continuation;
        unsigned tries = 0;
        do {
            const std::string url = s3_listing_url(directory, continuation);
            body_.clear();
            configure(directory, url, {}, &S3Listing::on_body, options);
            curl_easy_setopt(handle(), CURLOPT_WRITEDATA, this);
            const CURLcode code = curl_easy_perform(handle());
            if (code != CURLE_OK || head_.status != 200) {
                if (head_.status == 200 && code == CURLE_WRITE_ERROR)
                    throw format_error(directory.shown, "a page of its listing exceeds " + std::to_string(max_page_bytes >> 20) + " MiB");
                // A body not a listing's was refused (CURLE_WRITE_ERROR): its status says why.
                const Outcome o = head_.status == 200 ? broken(code) : unexpected(directory, code == CURLE_WRITE_ERROR ? CURLE_OK : code);
                if (o.kind == Outcome::failed) throw io_error(directory.shown, "cannot list the prefix: " + o.message, 0);
                std::this_thread::sleep_for(pause_before_try(o, ++tries, options, directory.shown, "listing, "));
                continue;
            }
            tries = 0;
            continuation = parse_s3_listing(body_, directory.key, names, directory.shown);
        } while (!continuation.empty() || tries > 0);
        return names;
    }

private:
    /// A listing's page holds at most 1000 keys: far below this, which bounds a server's answer.
    static constexpr std::size_t max_page_bytes = 16 << 20;

    static std::size_t on_body(char* data, std::size_t size, std::size_t count, void* self_) {
        auto* self = static_cast<S3Listing*>(self_);
        const std::size_t n = size * count;
        if (self->head_.status != 200 || self->body_.size() + n > max_page_bytes) return 0;  // not a listing: stop
        self->body_.append(data, n);
        return n;
    }

    std::string body_;
};

}  // namespace instanttensor::detail
