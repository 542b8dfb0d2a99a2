// instanttensor/detail/http1.hpp: ranged GETs over HTTP/1.1 connections of storage::http's own,
// their bodies received straight into the caller's memory.
//
// libcurl hands a body over from its own buffer, so each byte a transfer of libcurl's receives is
// copied once more; where the network outruns the client's CPU (loopback, a fast link to a few
// cores) that copy bounds a load (docs/benchmarks.md#remote-side-by-side). Here libcurl only
// connects (CURLOPT_CONNECT_ONLY: DNS, proxies, TLS, its timeouts and trust settings); the
// request is written with curl_easy_send and the response read with curl_easy_recv, its head into
// a small buffer and its body into the destination. A connection carries request after request
// (keep-alive), as libcurl's would.
//
// Only for files whose header came over HTTP/1.x from their own URL (RemoteFile::http1); S3's
// requests are signed here (detail/sigv4.hpp) where the build has OpenSSL, else they stay with
// libcurl's transfers (RangeGet), as HTTP/2 and redirected files do. The response is judged as
// RangeGet judges one (pinned version, range, status), with the same outcomes; a response this
// reader cannot take (a 206 without Content-Length) says so, and its file goes to libcurl.
#pragma once

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <optional>
#include <string>
#include <string_view>

#include "instanttensor/config.hpp"
#include "instanttensor/detail/curl.hpp"
#include "instanttensor/detail/sigv4.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/io.hpp"

namespace instanttensor::detail {

/// Where a request goes on a connection: the origin a connection is made to and reused for, and
/// the request's target and Host header.
struct HttpTarget {
    std::string origin;  ///< scheme://host:port
    std::string host;    ///< the Host header's value
    std::string path;    ///< as the URL has it (already encoded)
    std::string query;   ///< likewise; empty if none

    /// `url` split so; usage_error naming `shown` for a URL libcurl cannot parse.
    static HttpTarget of(const std::string& url, const std::string& shown) {
        struct Url {
            CURLU* u = curl_url();
            ~Url() { curl_url_cleanup(u); }
            std::string part(CURLUPart which, unsigned flags = 0) const {
                char* text = nullptr;
                if (curl_url_get(u, which, &text, flags) != CURLUE_OK) return {};
                std::string s(text);
                curl_free(text);
                return s;
            }
        } url_parts;
        if (url_parts.u == nullptr || curl_url_set(url_parts.u, CURLUPART_URL, url.c_str(), 0) != CURLUE_OK)
            throw usage_error(shown, "is not a URL libcurl can parse");
        const std::string scheme = url_parts.part(CURLUPART_SCHEME);
        const std::string host = url_parts.part(CURLUPART_HOST);
        const std::string port = url_parts.part(CURLUPART_PORT);                     // as written, else empty
        const std::string any_port = url_parts.part(CURLUPART_PORT, CURLU_DEFAULT_PORT);  // the scheme's where none is
        const std::string path = url_parts.part(CURLUPART_PATH);
        return {ascii_lower(scheme + "://" + host + ":" + any_port),  // one key however the URL writes it
                port.empty() ? host : host + ":" + port, path.empty() ? "/" : path, url_parts.part(CURLUPART_QUERY)};
    }

    /// The request line's target: the path and the query.
    [[nodiscard]] std::string target() const { return query.empty() ? path : path + "?" + query; }
};

/// One ranged GET at a time over a connection kept from one request to the next.
class Http1RangeGet : public RangeGet {
public:
    using Clock = std::chrono::steady_clock;

    /// Whether `file`'s bodies can be received so.
    [[nodiscard]] static bool suits(const RemoteFile& file) noexcept {
        if (!signed_s3(file.location)) return file.http1;
        return INSTANTTENSOR_HAS_CRYPTO && file.http1 && file.location.url.find('?') == std::string::npos;  // an object's URL has no query
    }

    Http1RangeGet() = default;
    ~Http1RangeGet() { disconnect(); }

    /// Starts a GET of bytes [offset, offset + length) of `file` (at `target`, its URL split)
    /// into `destination`, over the connection of the last request if it is to the same origin and
    /// still open, else over a new one, which `multi` connects (it reports the handle() done: then
    /// call connected()).
    void start(CURLM* multi, const RemoteFile& file, const HttpTarget& target, std::uint64_t offset, std::uint64_t length,
               std::byte* destination, const RemoteOptions& options) {
        set_range(file, offset, length, destination);
        options_ = options;
        request_ = "GET " + target.target() + " HTTP/1.1\r\nHost: " + target.host + "\r\nRange: bytes=" + range_ +
                   "\r\nAccept: */*\r\nUser-Agent: instanttensor\r\n";
        if (std::string c = condition(file); !c.empty()) request_ += c + "\r\n";
        if (!file.location.bearer_token.empty()) request_ += "Authorization: Bearer " + file.location.bearer_token + "\r\n";
#if INSTANTTENSOR_HAS_CRYPTO
        if (signed_s3(file.location))
            request_ += sigv4_get_headers(file.location.credentials, target.host, target.path, range_, sigv4::amz_date(std::time(nullptr)));
#endif
        request_ += "\r\n";
        step_ = Step::sending;
        if (connection_ == Connection::open && multi == multi_ && origin_ == target.origin) {
            reused_ = true;
            begin();
        } else {
            connect(multi, target.origin);
        }
    }

    /// Whether `handle` is this request's connection (its setup is reported done by the multi handle).
    [[nodiscard]] bool owns(CURL* handle) const noexcept { return connection_ != Connection::none && handle == this->handle(); }

    /// The connection's setup ended with `code`: the request goes on, or ends with that error.
    void connected(CURLcode code) {
        if (connection_ != Connection::connecting) return;
        if (code != CURLE_OK) return finish(code, false);
        connection_ = Connection::open;
        window_start_ = Clock::now();
    }

    /// Sends and receives what can be without waiting; `ready`: the socket was reported ready since
    /// the last call (else only the stall timer runs while a response is awaited). True once the
    /// request is finished: outcome() says what it amounts to.
    bool advance(bool ready) {
        if (step_ == Step::finished) return true;
        if (connection_ != Connection::open) return false;
        if (!ready && step_ != Step::sending) return stalled();
        const std::uint64_t received_before = received_;
        for (;;) {
            switch (step_) {
            case Step::sending:
                if (!send()) return stalled();
                break;
            case Step::head:
                if (!receive_head()) return step_ == Step::finished || stalled();
                break;
            case Step::body:
                if (!receive_body()) return step_ == Step::finished || stalled();
                // A body that keeps coming would hold the loader here until its end, while a finished
                // one waits to be reported and followed by the next request: the others' turn.
                if (received_ - received_before >= max_bytes_per_advance) return false;
                break;
            case Step::finished:
                return true;
            }
        }
    }

    /// What to wait for before advance() can go on: none while libcurl connects or once finished.
    [[nodiscard]] std::optional<curl_waitfd> wait_for() const {
        if (connection_ != Connection::open || step_ == Step::finished) return std::nullopt;
        curl_socket_t socket = CURL_SOCKET_BAD;
        if (curl_easy_getinfo(handle(), CURLINFO_ACTIVESOCKET, &socket) != CURLE_OK || socket == CURL_SOCKET_BAD) return std::nullopt;
        return curl_waitfd{socket, static_cast<short>(step_ == Step::sending ? CURL_WAIT_POLLOUT : CURL_WAIT_POLLIN), 0};
    }

    /// What the finished request amounts to, as RangeGet::outcome.
    [[nodiscard]] Outcome outcome() const { return RangeGet::outcome(code_); }

    /// The response was one this reader does not take (a 206 without Content-Length): send the
    /// request through libcurl instead.
    [[nodiscard]] bool unsupported() const noexcept { return unsupported_; }

    /// Closes the connection (and takes it out of its multi handle).
    void disconnect() noexcept {
        if (connection_ != Connection::none && multi_ != nullptr) curl_multi_remove_handle(multi_, handle());
        connection_ = Connection::none;
    }

private:
    enum class Step { sending, head, body, finished };
    enum class Connection { none, connecting, open };

    /// Heads larger than this are refused: S3's and nginx's are under 2 KiB.
    static constexpr std::size_t max_head_bytes = 64 << 10;
    /// What one advance() receives at most before it returns.
    static constexpr std::uint64_t max_bytes_per_advance = 1 << 20;

    [[nodiscard]] static bool signed_s3(const RemoteLocation& location) noexcept {
        return location.s3 && !location.credentials.access_key.empty();
    }

    void connect(CURLM* multi, const std::string& origin) {
        disconnect();
        multi_ = multi;
        origin_ = origin;
        reused_ = false;
        // Set up as every request is (trust, timeouts), then only connected, over HTTP/1.1 (ALPN),
        // through a tunnel where a proxy is set (the request is written for the origin itself).
        void* owner = nullptr;  // CURLOPT_PRIVATE, which configure() resets
        curl_easy_getinfo(handle(), CURLINFO_PRIVATE, &owner);
        configure(file_->location, file_->location.url, {}, &Http1RangeGet::no_body, options_);
        curl_easy_setopt(handle(), CURLOPT_PRIVATE, owner);
        curl_easy_setopt(handle(), CURLOPT_CONNECT_ONLY, 1L);
        curl_easy_setopt(handle(), CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1));
        curl_easy_setopt(handle(), CURLOPT_HTTPPROXYTUNNEL, 1L);
        if (const CURLMcode code = curl_multi_add_handle(multi_, handle()); code != CURLM_OK)
            throw io_error("storage::http", std::string("libcurl: ") + curl_multi_strerror(code), 0);
        connection_ = Connection::connecting;
        begin();
    }

    /// Resets what a response leaves behind, for the request about to be sent.
    void begin() {
        head_ = {};
        error_[0] = '\0';
        code_ = CURLE_OK;
        unsupported_ = false;
        sent_ = 0;
        head_bytes_.clear();
        expected_ = 0;
        window_start_ = Clock::now();
        window_bytes_ = 0;
    }

    bool send() {
        std::size_t n = 0;
        const CURLcode code = curl_easy_send(handle(), request_.data() + sent_, request_.size() - sent_, &n);
        if (code == CURLE_AGAIN) return false;
        if (code != CURLE_OK) return broke(code, "cannot send the request");
        sent_ += n;
        if (sent_ == request_.size()) step_ = Step::head;
        return true;
    }

    bool receive_head() {
        const std::size_t before = head_bytes_.size();
        head_bytes_.resize(before + 16384);
        std::size_t n = 0;
        const CURLcode code = curl_easy_recv(handle(), head_bytes_.data() + before, head_bytes_.size() - before, &n);
        head_bytes_.resize(before + (code == CURLE_OK ? n : 0));
        if (code == CURLE_AGAIN) return false;
        if (code != CURLE_OK) return broke(code, "cannot receive the response");
        if (n == 0) return broke(CURLE_GOT_NOTHING, "the server closed the connection before its response ended");
        window_bytes_ += n;
        std::size_t end = 0;
        while ((end = head_bytes_.find("\r\n\r\n")) != std::string::npos) {
            std::string_view head(head_bytes_.data(), end + 2);
            for (std::size_t line = 0; line < head.size();) {
                const std::size_t eol = head.find("\r\n", line);
                head_.parse_line(head.substr(line, eol + 2 - line));
                line = eol + 2;
            }
            head_bytes_.erase(0, end + 4);
            if (head_.status >= 200 || head_.status < 100) return respond();
            // An interim response (1xx): the final one follows.
        }
        if (head_bytes_.size() > max_head_bytes) {
            std::snprintf(error_, sizeof error_, "a response head exceeds %zu KiB", max_head_bytes >> 10);
            finish(CURLE_WEIRD_SERVER_REPLY, false);
            return false;
        }
        return true;
    }

    /// The head is in: the body, if it is the bytes asked for, is received next; any other answer
    /// ends the request (the connection is dropped rather than its body read).
    bool respond() {
        unsupported_ = head_.status == 206 && !head_.length_known;
        overflow_ = head_.status == 206 && head_.length > length_;
        if (head_.status != 206 || unsupported_ || overflow_) {
            finish(CURLE_OK, false);
            return false;
        }
        expected_ = head_.length;
        // Bytes of the body that came with the head; any past it would be a response never asked for.
        const std::size_t early = std::min<std::size_t>(head_bytes_.size(), expected_);
        std::memcpy(destination_, head_bytes_.data(), early);
        received_ = early;
        const bool extra = head_bytes_.size() > early;
        head_bytes_.clear();
        if (received_ < expected_) {
            step_ = Step::body;
            return true;
        }
        finish(CURLE_OK, !head_.close && !extra);
        return false;
    }

    bool receive_body() {
        std::size_t n = 0;
        const CURLcode code = curl_easy_recv(handle(), destination_ + received_, expected_ - received_, &n);
        if (code == CURLE_AGAIN) return false;
        if (code != CURLE_OK) return broke(code, "cannot receive the body");
        if (n == 0) return broke(CURLE_PARTIAL_FILE, "the server closed the connection inside the body");
        received_ += n;
        window_bytes_ += n;
        if (received_ < expected_) return true;
        finish(CURLE_OK, !head_.close);
        return false;
    }

    /// The connection broke: a reused one that broke before any byte of the response was likely
    /// closed by the server while idle, so the request is sent again at once on a new one, as
    /// libcurl does; else the request ends with `code` (the bytes received count).
    bool broke(CURLcode code, const char* what) {
        if (reused_ && head_.status == 0 && head_bytes_.empty()) {
            step_ = Step::sending;
            connect(multi_, origin_);
            return false;
        }
        std::snprintf(error_, sizeof error_, "%s (%s, %llu of the range's bytes received)", what, curl_easy_strerror(code),
                      static_cast<unsigned long long>(received_));
        finish(code, false);
        return false;
    }

    /// Like libcurl's CURLOPT_LOW_SPEED_*: under 1 KiB/s for stall_timeout_s ends the request.
    bool stalled() {
        const auto now = Clock::now();
        const auto window = std::chrono::seconds(std::max(1u, options_.stall_timeout_s));
        if (now - window_start_ < window) return false;
        if (window_bytes_ < 1024ull * static_cast<unsigned long long>(window.count())) {
            std::snprintf(error_, sizeof error_, "under 1 KiB/s for %u s (%llu of the range's bytes received)",
                          static_cast<unsigned>(window.count()), static_cast<unsigned long long>(received_));
            finish(CURLE_OPERATION_TIMEDOUT, false);
            return true;
        }
        window_start_ = now;
        window_bytes_ = 0;
        return false;
    }

    void finish(CURLcode code, bool keep_connection) {
        code_ = code;
        step_ = Step::finished;
        if (!keep_connection) disconnect();
    }

    static std::size_t no_body(char*, std::size_t, std::size_t, void*) { return 0; }

    RemoteOptions options_;
    CURLM* multi_ = nullptr;
    Connection connection_ = Connection::none;
    std::string origin_;      // of the connection
    bool reused_ = false;     // the connection served a response before this request
    Step step_ = Step::finished;
    std::string request_;
    std::size_t sent_ = 0;
    std::string head_bytes_;  // received and not yet parsed, then the body's first bytes
    std::uint64_t expected_ = 0;  // the body's length (Content-Length of the 206)
    CURLcode code_ = CURLE_OK;
    bool unsupported_ = false;
    Clock::time_point window_start_;  // of the stall timer's window
    std::uint64_t window_bytes_ = 0;  // received in it
};

}  // namespace instanttensor::detail
