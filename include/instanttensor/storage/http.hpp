// instanttensor/storage/http.hpp: reads the files of a remote checkpoint with ranged GETs, many in
// flight, over libcurl's multi interface.
//
// Each ReadRequest is one GET of its bytes (a range the size of a staging slot) landing in the
// staging slot itself, so everything after the read (device sinks, group loads) is as for local
// files. Up to RemoteOptions::connections requests run at once over connections kept alive from one
// request to the next: over HTTP/1.x on parallel connections of the backend's own that receive
// each body straight into its slot (detail/http1.hpp), over HTTP/2 (offered over TLS) as libcurl's
// transfers multiplexed on one connection, as also where a file redirects, or S3 signs in a build
// without OpenSSL (libcurl hands their bodies over from its buffer: one copy more). No thread of
// its own: reap() drives the transfers in the loader's thread, and between two reaps the kernel's
// socket buffers hold what arrives.
//
// Every request names the version whose header Checkpoint::open read (detail/curl.hpp), so a file
// replaced on the server fails the load instead of mixing versions. A request failing transiently
// (a reset or timeout before any byte, 5xx, 429) is sent again after a pause, up to
// RemoteOptions::tries times; bytes that arrived before a connection broke come back as a short
// read, which the pipeline continues from the byte where it stopped. Anything else throws an
// io_error naming the URL (never its credentials), the bytes asked for and what the server said.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_CURL

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "instanttensor/detail/curl.hpp"
#include "instanttensor/detail/http1.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"

namespace instanttensor::storage {

class http {
public:
    static constexpr MemoryKind destination = MemoryKind::host;
    using Options = RemoteOptions;

    http() : http(Options{}) {}
    explicit http(Options options) : options_(options) { options_.connections = std::clamp(options_.connections, 1u, 1024u); }
    /// Moves an unopened backend (the loader takes it by value, then opens it).
    http(http&& other) noexcept : options_(other.options_) {}
    http& operator=(http&&) = delete;
    http(const http&) = delete;
    http& operator=(const http&) = delete;
    ~http() { close(); }

    void open(const format::Checkpoint& checkpoint) {
        close();
        if (!checkpoint.remote())
            throw usage_error(checkpoint.files().empty() ? std::string("storage::http") : checkpoint.files().front().path.string(),
                              "is not remote: storage::http reads http://, https://, s3:// and hf:// checkpoints only");
        detail::init_curl();
        for (const auto& f : checkpoint.files()) {
            files_.push_back(f.remote);
            targets_.push_back(detail::Http1RangeGet::suits(f.remote) ? detail::HttpTarget::of(f.remote.location.url, f.remote.location.shown)
                                                                     : detail::HttpTarget{});
        }
        multi_ = curl_multi_init();
        if (multi_ == nullptr) throw unavailable_error("libcurl", "cannot create a multi handle");
        const long connections = options_.connections;
        curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, connections);
        curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, connections);
        curl_multi_setopt(multi_, CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_MULTIPLEX));
        for (unsigned i = 0; i < options_.connections; ++i) {
            transfers_.push_back(std::make_unique<Transfer>());
            idle_.push_back(transfers_.back().get());
        }
    }

    [[nodiscard]] std::uint64_t alignment(std::uint32_t) const noexcept { return 1; }
    [[nodiscard]] std::size_t queue_depth() const noexcept { return options_.connections; }
    [[nodiscard]] std::string_view name() const noexcept { return "http"; }
    /// Requests sent again after a transient failure, since open (LoadStats::retries counts them).
    [[nodiscard]] std::uint64_t retries() const noexcept { return retries_; }

    void submit(const ReadRequest& request) {
        Transfer* t = idle_.back();
        idle_.pop_back();
        t->request = request;
        t->tries = 0;
        start(*t);
    }

    std::size_t reap(std::span<ReadResult> out, bool wait) {
        std::size_t n = 0;
        for (;;) {
            start_due();
            int running = 0;
            if (const CURLMcode code = curl_multi_perform(multi_, &running); code != CURLM_OK)
                throw io_error("storage::http", std::string("libcurl: ") + curl_multi_strerror(code), 0);
            for (int left = 0; n < out.size();) {
                CURLMsg* message = curl_multi_info_read(multi_, &left);
                if (message == nullptr) break;
                if (message->msg != CURLMSG_DONE) continue;
                Transfer* t = nullptr;
                curl_easy_getinfo(message->easy_handle, CURLINFO_PRIVATE, &t);
                const CURLcode code = message->data.result;
                if (t->direct.owns(message->easy_handle)) {  // a connection of the backend's own is set up
                    t->direct.connected(code);
                    continue;
                }
                curl_multi_remove_handle(multi_, message->easy_handle);
                --active_;
                finished(*t, t->get.outcome(code), out, n);
            }
            advance_direct(out, n);
            if (n > 0 || !wait || (active_ == 0 && waiting_.empty())) return n;
            wait_for_any();
        }
    }

private:
    using Clock = std::chrono::steady_clock;

    struct Transfer {
        detail::RangeGet get;          // a transfer of libcurl's
        detail::Http1RangeGet direct;  // or a request on a connection of the backend's own
        ReadRequest request;
        unsigned tries = 0;
        bool ready = true;      // direct: its socket was reported ready by the last wait
        Clock::time_point due;  // while waiting to be sent again
    };

    void start(Transfer& t) {
        const detail::RemoteFile& file = files_[t.request.file];
        ++active_;
        if (detail::Http1RangeGet::suits(file)) {
            t.direct.start(multi_, file, targets_[t.request.file], t.request.offset, t.request.length, t.request.destination, options_);
            curl_easy_setopt(t.direct.handle(), CURLOPT_PRIVATE, &t);
            t.ready = true;
            receiving_.push_back(&t);
            return;
        }
        t.direct.disconnect();  // counts against the host's connections otherwise
        t.get.prepare(file, t.request.offset, t.request.length, t.request.destination, options_);
        curl_easy_setopt(t.get.handle(), CURLOPT_PRIVATE, &t);
        if (const CURLMcode code = curl_multi_add_handle(multi_, t.get.handle()); code != CURLM_OK)
            throw io_error("storage::http", std::string("libcurl: ") + curl_multi_strerror(code), 0);
    }

    /// Moves on the requests on connections of the backend's own, each by a bounded step, until
    /// one finishes: it is reported at once, so that the loader sends the next request while the
    /// others' bodies wait in the kernel's socket buffers (a response they cannot take is sent
    /// again through libcurl).
    void advance_direct(std::span<ReadResult> out, std::size_t& n) {
        const std::size_t reported = n;
        for (auto it = receiving_.begin(); it != receiving_.end() && n < out.size();) {
            Transfer& t = **it;
            if (!t.direct.advance(t.ready)) {
                ++it;
                continue;
            }
            it = receiving_.erase(it);
            --active_;
            if (t.direct.unsupported()) {
                files_[t.request.file].http1 = false;
                start(t);  // through libcurl: receiving_ stays as it is
                continue;
            }
            finished(t, t.direct.outcome(), out, n);
            if (n > reported) {  // those not advanced this time go first the next
                std::rotate(receiving_.begin(), it, receiving_.end());
                return;
            }
        }
    }

    /// Waits until a transfer of libcurl's or a connection of the backend's own can go on, a
    /// pause ends, or a second passes (the stall timers run).
    void wait_for_any() {
        waits_.clear();
        polled_.clear();
        for (Transfer* t : receiving_) {
            t->ready = false;
            if (auto w = t->direct.wait_for()) {
                waits_.push_back(*w);
                polled_.push_back(t);
            }
        }
        curl_multi_poll(multi_, waits_.data(), static_cast<unsigned>(waits_.size()), poll_timeout_ms(), nullptr);
        for (std::size_t k = 0; k < polled_.size(); ++k) polled_[k]->ready = waits_[k].revents != 0;
    }

    void finished(Transfer& t, const detail::Outcome& outcome, std::span<ReadResult> out, std::size_t& n) {
        const auto& file = files_[t.request.file];
        auto asked = [&] {  // only for messages
            return "bytes " + std::to_string(t.request.offset) + "-" + std::to_string(t.request.offset + t.request.length - 1);
        };
        switch (outcome.kind) {
        case detail::Outcome::bytes:
            out[n++] = {t.request.tag, static_cast<std::int64_t>(outcome.received)};
            idle_.push_back(&t);
            return;
        case detail::Outcome::again:
            t.due = Clock::now() + detail::RangeGet::pause_before_try(outcome, ++t.tries, options_, file.location.shown, asked() + ", ");
            waiting_.push_back(&t);
            ++retries_;
            return;
        case detail::Outcome::failed:
            throw io_error(file.location.shown, outcome.message + " (" + asked() + ")", 0);
        }
    }

    /// Sends again the transfers whose pause is over.
    void start_due() {
        const auto now = Clock::now();
        for (auto it = waiting_.begin(); it != waiting_.end();) {
            if ((*it)->due > now) {
                ++it;
                continue;
            }
            start(**it);
            it = waiting_.erase(it);
        }
    }

    /// How long reap may sleep in curl: until the next pause ends, at most a second.
    [[nodiscard]] int poll_timeout_ms() const {
        auto next = Clock::now() + std::chrono::seconds(1);
        for (const Transfer* t : waiting_) next = std::min(next, t->due);
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count();
        return static_cast<int>(std::clamp<long long>(ms, 0, 1000));
    }

    void close() noexcept {
        if (multi_ == nullptr) return;
        for (const auto& t : transfers_) {  // stops what is in flight
            curl_multi_remove_handle(multi_, t->get.handle());
            t->direct.disconnect();
        }
        transfers_.clear();
        curl_multi_cleanup(multi_);
        multi_ = nullptr;
        idle_.clear();
        waiting_.clear();
        receiving_.clear();
        files_.clear();
        targets_.clear();
        active_ = 0;
    }

    Options options_;
    std::vector<detail::RemoteFile> files_;
    std::vector<detail::HttpTarget> targets_;  // each file's URL split, where its bodies come on connections of the backend's own
    CURLM* multi_ = nullptr;
    std::vector<std::unique_ptr<Transfer>> transfers_;
    std::vector<Transfer*> idle_;
    std::vector<Transfer*> waiting_;    // failed transiently, to be sent again at their `due`
    std::vector<Transfer*> receiving_;  // requests on connections of the backend's own
    std::vector<curl_waitfd> waits_;    // their sockets, for curl_multi_poll
    std::vector<Transfer*> polled_;     // whose socket each of waits_ is
    std::size_t active_ = 0;
    std::uint64_t retries_ = 0;
};

}  // namespace instanttensor::storage

#endif  // INSTANTTENSOR_HAS_CURL
