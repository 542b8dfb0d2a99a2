// The ceiling of ranged GETs from a server: libcurl's multi interface fetching every byte of the
// given files in ranges of --range-mib, --connections at once, each body thrown away as it arrives
// (no copy), or with --copy copied into a buffer of the range's size, as any client of libcurl must
// (it hands bodies over from its own buffer). What bench/remote_side_by_side.py measures
// instanttensor's remote loads against.
//
//   instanttensor_bench_remote_ceiling [--connections N] [--range-mib M] [--copy] URL...
//
// Prints one JSON line: {"bytes":..,"seconds":..,"gbps":..,"requests":..}. Written on libcurl alone,
// not on the library, so that it measures the server and the network, not instanttensor.
#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Range {
    const char* url;
    std::uint64_t first, last;
};

struct Body {
    std::vector<char> buffer;  // empty: thrown away
    std::uint64_t offset = 0;  // where the next bytes go in buffer
    std::uint64_t* received = nullptr;
};

std::size_t take(char* data, std::size_t size, std::size_t count, void* body_) {
    auto* body = static_cast<Body*>(body_);
    const std::size_t n = size * count;
    if (!body->buffer.empty()) {
        if (body->offset + n > body->buffer.size()) return 0;
        std::memcpy(body->buffer.data() + body->offset, data, n);
        body->offset += n;
    }
    *body->received += n;
    return n;
}

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "remote_ceiling: %s\n", what.c_str());
    std::exit(1);
}

/// The size of the file at `url`, from a HEAD request.
std::uint64_t size_of(const char* url) {
    CURL* c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    if (curl_easy_perform(c) != CURLE_OK) fail(std::string("HEAD failed: ") + url);
    curl_off_t length = -1;
    curl_easy_getinfo(c, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
    curl_easy_cleanup(c);
    if (length < 0) fail(std::string("no Content-Length: ") + url);
    return static_cast<std::uint64_t>(length);
}

}  // namespace

int main(int argc, char** argv) {
    long connections = 16;
    std::uint64_t range_bytes = 4ull << 20;
    bool copy = false;
    std::vector<const char*> urls;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--connections") == 0 && i + 1 < argc) connections = std::atol(argv[++i]);
        else if (std::strcmp(argv[i], "--range-mib") == 0 && i + 1 < argc) range_bytes = std::strtoull(argv[++i], nullptr, 10) << 20;
        else if (std::strcmp(argv[i], "--copy") == 0) copy = true;
        else urls.push_back(argv[i]);
    }
    if (urls.empty() || connections < 1 || range_bytes == 0) fail("usage: [--connections N] [--range-mib M] [--copy] URL...");
    curl_global_init(CURL_GLOBAL_DEFAULT);

    std::vector<Range> ranges;
    for (const char* url : urls) {
        const std::uint64_t size = size_of(url);
        for (std::uint64_t first = 0; first < size; first += range_bytes)
            ranges.push_back({url, first, std::min(size, first + range_bytes) - 1});
    }

    CURLM* multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, connections);
    curl_multi_setopt(multi, CURLMOPT_PIPELINING, static_cast<long>(CURLPIPE_MULTIPLEX));
    std::uint64_t received = 0;
    std::vector<CURL*> idle;
    std::vector<Body> bodies(static_cast<std::size_t>(connections));
    for (auto& body : bodies) {
        idle.push_back(curl_easy_init());
        body.received = &received;
        if (copy) body.buffer.resize(range_bytes);  // touched once before the clock starts
        curl_easy_setopt(idle.back(), CURLOPT_PRIVATE, &body);
    }
    std::size_t next = 0, active = 0;

    const auto start = std::chrono::steady_clock::now();
    for (;;) {
        while (next < ranges.size() && !idle.empty()) {
            CURL* c = idle.back();
            idle.pop_back();
            const std::string range = std::to_string(ranges[next].first) + "-" + std::to_string(ranges[next].last);
            curl_easy_setopt(c, CURLOPT_URL, ranges[next].url);
            curl_easy_setopt(c, CURLOPT_RANGE, range.c_str());  // libcurl copies the strings it is given
            Body* body = nullptr;
            curl_easy_getinfo(c, CURLINFO_PRIVATE, &body);
            body->offset = 0;
            curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, &take);
            curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
            curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
            curl_easy_setopt(c, CURLOPT_PIPEWAIT, 1L);
            curl_multi_add_handle(multi, c);
            ++next;
            ++active;
        }
        if (active == 0) break;
        int running = 0;
        curl_multi_perform(multi, &running);
        int left = 0;
        bool finished = false;
        while (CURLMsg* m = curl_multi_info_read(multi, &left)) {
            if (m->msg != CURLMSG_DONE) continue;
            long status = 0;
            curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            if (m->data.result != CURLE_OK || status != 206)
                fail("a range failed: " + std::string(curl_easy_strerror(m->data.result)) + ", HTTP " + std::to_string(status));
            curl_multi_remove_handle(multi, m->easy_handle);
            idle.push_back(m->easy_handle);
            --active;
            finished = true;
        }
        if (!finished) curl_multi_poll(multi, nullptr, 0, 1000, nullptr);  // else start the next ranges first
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("{\"bytes\":%llu,\"seconds\":%.4f,\"gbps\":%.4f,\"requests\":%zu}\n", static_cast<unsigned long long>(received),
                seconds, static_cast<double>(received) / seconds / 1e9, ranges.size());
    for (CURL* c : idle) curl_easy_cleanup(c);
    curl_multi_cleanup(multi);
    return 0;
}
