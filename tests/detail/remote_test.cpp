// detail/remote.hpp, detail/curl.hpp, detail/http1.hpp and detail/sigv4.hpp without a server: how remote paths resolve and show, and
// what the headers of a response are read as. The transfers themselves are tested against real
// servers by tests/remote/remote_test.py.
#include "instanttensor/detail/remote.hpp"

#include <doctest/doctest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "instanttensor/config.hpp"
#if INSTANTTENSOR_HAS_CURL
#include "instanttensor/detail/curl.hpp"
#include "instanttensor/detail/http1.hpp"
#endif
#if INSTANTTENSOR_HAS_CRYPTO
#include "instanttensor/detail/sigv4.hpp"
#endif

namespace {

namespace detail = instanttensor::detail;

/// Sets an environment variable for one scope.
class ScopedEnv {
public:
    ScopedEnv(const char* name, const char* value) : name_(name) {
        if (const char* old = ::getenv(name)) old_ = old, had_ = true;
        if (value != nullptr) ::setenv(name, value, 1);
        else ::unsetenv(name);
    }
    ~ScopedEnv() {
        if (had_) ::setenv(name_, old_.c_str(), 1);
        else ::unsetenv(name_);
    }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;

private:
    const char* name_;
    std::string old_;
    bool had_ = false;
};

TEST_CASE("remote paths are told from local ones by their scheme") {
    CHECK(detail::is_remote("http://h/m.safetensors"));
    CHECK(detail::is_remote("https://h/m.safetensors"));
    CHECK(detail::is_remote("hf://org/name"));
    CHECK(detail::is_remote("s3://bucket/key"));
    CHECK_FALSE(detail::is_remote("model.safetensors"));
    CHECK_FALSE(detail::is_remote("/data/http://x"));
    CHECK_FALSE(detail::is_remote("s3:/bucket"));
    CHECK_FALSE(detail::is_remote("gs://bucket/key"));
}

TEST_CASE("a URL is shown without its credentials and its query") {
    CHECK(detail::shown_url("https://user:secret@host:8443/dir/m.safetensors") == "https://host:8443/dir/m.safetensors");
    CHECK(detail::shown_url("https://host/m.safetensors?X-Amz-Signature=abc#frag") == "https://host/m.safetensors");
    CHECK(detail::shown_url("http://host/a@b/m.safetensors") == "http://host/a@b/m.safetensors");  // '@' in the path stays
    CHECK(detail::shown_url("http://host") == "http://host");
}

TEST_CASE("a shard beside a remote index is encoded in its URL, shown as named") {
    const auto index = detail::locate_remote("http://host/dir/model.safetensors.index.json?sig=1");
    const auto shard = index.sibling("sub/a b%.safetensors");
    CHECK(shard.url == "http://host/dir/sub/a%20b%25.safetensors");
    CHECK(shard.shown == "http://host/dir/sub/a b%.safetensors");
    CHECK_FALSE(index.is_directory());
    CHECK(detail::locate_remote("http://host/dir/").is_directory());
}

TEST_CASE("hf:// paths resolve to the Hub's layout with the token of HF_TOKEN") {
    ScopedEnv endpoint("HF_ENDPOINT", "http://127.0.0.1:9/hub/");
    ScopedEnv token("HF_TOKEN", "hf_secret");
    const auto file = detail::locate_remote("hf://org/name@v1.0/sub/model.safetensors");
    CHECK(file.url == "http://127.0.0.1:9/hub/org/name/resolve/v1.0/sub/model.safetensors");
    CHECK(file.shown == "hf://org/name@v1.0/sub/model.safetensors");
    CHECK(file.bearer_token == "hf_secret");
    CHECK(file.shown.find("hf_secret") == std::string::npos);

    const auto repo = detail::locate_remote("hf://org/name");
    CHECK(repo.url == "http://127.0.0.1:9/hub/org/name/resolve/main/");
    CHECK(repo.is_directory());
    CHECK(repo.sibling("model.safetensors").shown == "hf://org/name@main/model.safetensors");

    CHECK_THROWS_AS(detail::locate_remote("hf://name-without-org"), instanttensor::usage_error);
    CHECK_THROWS_AS(detail::locate_remote("hf://org/"), instanttensor::usage_error);
    CHECK_THROWS_AS(detail::locate_remote("hf://org/name@/m.safetensors"), instanttensor::usage_error);
}

TEST_CASE("without HF_TOKEN the Hub's token file is read") {
    ScopedEnv token("HF_TOKEN", nullptr);
    const std::string path = "/tmp/instanttensor-remote-test-token";
    {
        FILE* f = std::fopen(path.c_str(), "w");
        REQUIRE(f != nullptr);
        std::fputs("hf_from_file\n", f);
        std::fclose(f);
    }
    ScopedEnv token_path("HF_TOKEN_PATH", path.c_str());
    CHECK(detail::hub_token() == "hf_from_file");
    std::remove(path.c_str());
    CHECK(detail::hub_token().empty());
}

TEST_CASE("s3:// paths: path-style at a custom endpoint, else AWS's virtual host; credentials from the environment or a profile") {
    const std::string dir = "/tmp/instanttensor-remote-test-aws";
    std::filesystem::create_directories(dir);
    {
        std::ofstream(dir + "/credentials") << "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s1\n"
                                               "[other]\n aws_access_key_id=AKOTHER \naws_secret_access_key = s2\naws_session_token = t2\n";
        std::ofstream(dir + "/config") << "[default]\nregion = eu-west-1\n[profile other]\nregion = ap-south-1\n";
    }
    ScopedEnv id("AWS_ACCESS_KEY_ID", nullptr), secret("AWS_SECRET_ACCESS_KEY", nullptr), token("AWS_SESSION_TOKEN", nullptr),
        region("AWS_REGION", nullptr), default_region("AWS_DEFAULT_REGION", nullptr), profile("AWS_PROFILE", nullptr),
        credentials("AWS_SHARED_CREDENTIALS_FILE", (dir + "/credentials").c_str()), config("AWS_CONFIG_FILE", (dir + "/config").c_str());
    {
        ScopedEnv endpoint("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/");
        const auto object = detail::locate_remote("s3://bucket/dir/a b.safetensors");
        CHECK(object.s3);
        CHECK(object.url == "http://127.0.0.1:9000/bucket/dir/a%20b.safetensors");
        CHECK(object.shown == "s3://bucket/dir/a b.safetensors");
        CHECK(object.credentials.access_key == "AKDEFAULT");
        CHECK(object.credentials.region == "eu-west-1");
        CHECK(detail::locate_remote("s3://bucket/dir/").is_directory());
        CHECK(detail::locate_remote("s3://bucket").is_directory());
        ScopedEnv s3_endpoint("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9001");
        CHECK(detail::locate_remote("s3://bucket/m.safetensors").url == "http://127.0.0.1:9001/bucket/m.safetensors");
    }
    {
        ScopedEnv endpoint("AWS_ENDPOINT_URL", nullptr), s3_endpoint("AWS_ENDPOINT_URL_S3", nullptr), other("AWS_PROFILE", "other");
        const auto object = detail::locate_remote("s3://bucket/m.safetensors");
        CHECK(object.url == "https://bucket.s3.ap-south-1.amazonaws.com/m.safetensors");
        CHECK(object.credentials.access_key == "AKOTHER");
        CHECK(object.credentials.secret_key == "s2");
        CHECK(object.credentials.session_token == "t2");
        ScopedEnv env_id("AWS_ACCESS_KEY_ID", "AKENV"), env_secret("AWS_SECRET_ACCESS_KEY", "s3"), env_region("AWS_REGION", "us-west-2");
        CHECK(detail::locate_remote("s3://bucket/m.safetensors").credentials.access_key == "AKENV");
        CHECK(detail::locate_remote("s3://bucket/m.safetensors").credentials.region == "us-west-2");
    }
    CHECK_THROWS_AS(detail::locate_remote("s3:///key"), instanttensor::usage_error);
    std::filesystem::remove_all(dir);
}

TEST_CASE("an S3 prefix is listed page by page: the query as SigV4 signs it, keys decoded, pages chained") {
    ScopedEnv endpoint("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"), id("AWS_ACCESS_KEY_ID", "AK"), secret("AWS_SECRET_ACCESS_KEY", "s");
    const auto prefix = detail::locate_remote("s3://bucket/my models/v1/");
    CHECK(prefix.bucket_url == "http://127.0.0.1:9000/bucket/");
    CHECK(prefix.key == "my models/v1/");
    CHECK(prefix.sibling("a.safetensors").key == "my models/v1/a.safetensors");
    // Parameters in name order, '/' and ' ' encoded in values.
    CHECK(detail::s3_listing_url(prefix, "") == "http://127.0.0.1:9000/bucket/?delimiter=%2F&list-type=2&prefix=my%20models%2Fv1%2F");
    CHECK(detail::s3_listing_url(prefix, "1/a+b=") ==
          "http://127.0.0.1:9000/bucket/?continuation-token=1%2Fa%2Bb%3D&delimiter=%2F&list-type=2&prefix=my%20models%2Fv1%2F");
    CHECK(detail::s3_listing_url(detail::locate_remote("s3://bucket/"), "") == "http://127.0.0.1:9000/bucket/?delimiter=%2F&list-type=2&prefix=");

    std::vector<std::string> names;
    const std::string first =
        R"(<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">)"
        R"(<Name>bucket</Name><Prefix>my models/v1/</Prefix><KeyCount>2</KeyCount><IsTruncated>true</IsTruncated>)"
        R"(<Contents><Key>my models/v1/a&amp;b.safetensors</Key><Size>10</Size></Contents>)"
        R"(<Contents><Key>my models/v1/&#233;t&#xE9;.safetensors</Key></Contents>)"
        R"(<CommonPrefixes><Prefix>my models/v1/sub/</Prefix></CommonPrefixes>)"
        R"(<NextContinuationToken>next&amp;page</NextContinuationToken></ListBucketResult>)";
    CHECK(detail::parse_s3_listing(first, prefix.key, names, "s3://bucket/my models/v1/") == "next&page");
    const std::string last = R"(<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>my models/v1/z.json</Key></Contents></ListBucketResult>)";
    CHECK(detail::parse_s3_listing(last, prefix.key, names, "s3").empty());
    CHECK(names == std::vector<std::string>{"a&b.safetensors", "\xc3\xa9t\xc3\xa9.safetensors", "z.json"});

    // Answers that are not listings, or break its rules, are format errors naming the prefix.
    const auto refused = [&](const std::string& xml, const char* why) {
        std::vector<std::string> ignored;
        CHECK_THROWS_WITH_AS(detail::parse_s3_listing(xml, prefix.key, ignored, "s3://bucket/my models/v1/"),
                             doctest::Contains(why), instanttensor::format_error);
    };
    refused("<Error><Code>AccessDenied</Code></Error>", "not a ListBucketResult");
    refused("<ListBucketResult><Contents><Key>other/a.safetensors</Key></Contents></ListBucketResult>", "outside the prefix");
    refused("<ListBucketResult><Contents><Key>my models/v1/a</Key></ListBucketResult>", "without its end");
    refused("<ListBucketResult><Contents><Key>my models/v1/&bogus;</Key></Contents></ListBucketResult>", "unknown XML entity");
    refused("<ListBucketResult><Contents><Key>my models/v1/&#0;</Key></Contents></ListBucketResult>", "bad character reference");
    refused("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>", "names no next page");
}

#if INSTANTTENSOR_HAS_CURL
TEST_CASE("a response's head: status, validators, range; a redirect starts over") {
    detail::ResponseHead head;
    head.parse_line("HTTP/1.1 302 Found\r\n");
    head.parse_line("ETag: \"redirect\"\r\n");
    head.parse_line("HTTP/2 206\r\n");
    head.parse_line("etag: \"abc\"\r\n");
    head.parse_line("Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n");
    head.parse_line("Content-Range: bytes 100-199/1000\r\n");
    head.parse_line("\r\n");
    CHECK(head.status == 206);
    CHECK(head.etag == "\"abc\"");
    CHECK(head.last_modified == "Tue, 01 Dec 2026 10:00:00 GMT");
    CHECK(head.has_range);
    CHECK(head.first == 100);
    CHECK(head.total_known);
    CHECK(head.total == 1000);

    detail::ResponseHead unsatisfiable;
    unsatisfiable.parse_line("HTTP/1.1 416 Range Not Satisfiable\r\n");
    unsatisfiable.parse_line("Content-Range: bytes */0\r\n");
    CHECK(unsatisfiable.status == 416);
    CHECK(unsatisfiable.reason == "Range Not Satisfiable");
    CHECK_FALSE(unsatisfiable.has_range);
    CHECK(unsatisfiable.total_known);
    CHECK(unsatisfiable.total == 0);

    detail::ResponseHead busy;
    busy.parse_line("HTTP/1.1 503 Service Unavailable\r\n");
    busy.parse_line("Retry-After: 7\r\n");
    busy.parse_line("Content-Range: bytes 0-9/*\r\n");  // a total the server does not know
    CHECK(busy.retry_after_s == 7);
    CHECK_FALSE(busy.total_known);

    detail::ResponseHead sized;  // what a connection of storage::http's own needs: the body's length, whether it stays open
    sized.parse_line("HTTP/1.1 206 Partial Content\r\n");
    sized.parse_line("Content-Length: 4194304\r\n");
    sized.parse_line("Connection: Close\r\n");
    CHECK(sized.length_known);
    CHECK(sized.length == 4194304);
    CHECK_FALSE(sized.empty_body);
    CHECK(sized.close);
    detail::ResponseHead chunked;
    chunked.parse_line("HTTP/1.1 206 Partial Content\r\n");
    chunked.parse_line("Transfer-Encoding: chunked\r\n");
    chunked.parse_line("Connection: keep-alive\r\n");
    CHECK_FALSE(chunked.length_known);
    CHECK_FALSE(chunked.close);
    detail::ResponseHead old_server;  // HTTP/1.0 closes unless it says otherwise
    old_server.parse_line("HTTP/1.0 206 Partial Content\r\n");
    CHECK(old_server.close);
    old_server.parse_line("Connection: Keep-Alive\r\n");
    CHECK_FALSE(old_server.close);
}

TEST_CASE("a request on a connection of storage::http's own: its origin, Host and target from the URL") {
    const auto plain = detail::HttpTarget::of("http://127.0.0.1:8080/dir/a%20b.safetensors", "shown");
    CHECK(plain.origin == "http://127.0.0.1:8080");
    CHECK(plain.host == "127.0.0.1:8080");
    CHECK(plain.path == "/dir/a%20b.safetensors");
    CHECK(plain.target() == "/dir/a%20b.safetensors");
    const auto default_port = detail::HttpTarget::of("https://Example.com/m.safetensors?X-Amz-Signature=abc", "shown");
    CHECK(default_port.origin == "https://example.com:443");  // one origin however the URL writes it
    CHECK(default_port.host == "Example.com");
    CHECK(default_port.path == "/m.safetensors");
    CHECK(default_port.query == "X-Amz-Signature=abc");
    CHECK(default_port.target() == "/m.safetensors?X-Amz-Signature=abc");
    const auto v6 = detail::HttpTarget::of("http://[::1]:9000/bucket/key", "shown");
    CHECK(v6.host == "[::1]:9000");
    CHECK(v6.origin == "http://[::1]:9000");
    CHECK_THROWS_WITH_AS(detail::HttpTarget::of("http://exa mple.com/x", "http://exa mple.com/x"),
                         doctest::Contains("http://exa mple.com/x"), instanttensor::usage_error);
}

#if INSTANTTENSOR_HAS_CRYPTO
TEST_CASE("a GET is signed as AWS's own SigV4 example signs it (GET Object, bytes 0-9 of test.txt)") {
    detail::S3Credentials credentials{"us-east-1", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
    const std::string lines = detail::sigv4_get_headers(credentials, "examplebucket.s3.amazonaws.com", "/test.txt", "0-9",
                                                        "20130524T000000Z");
    CHECK(lines.find("X-Amz-Date: 20130524T000000Z\r\n") != std::string::npos);
    CHECK(lines.find("Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                     "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                     "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41\r\n") != std::string::npos);
    credentials.session_token = "token";
    const std::string with_token = detail::sigv4_get_headers(credentials, "examplebucket.s3.amazonaws.com", "/test.txt", "0-9",
                                                             "20130524T000000Z");
    CHECK(with_token.find("X-Amz-Security-Token: token\r\n") != std::string::npos);
    CHECK(with_token.find("SignedHeaders=host;range;x-amz-content-sha256;x-amz-date;x-amz-security-token, ") != std::string::npos);
    CHECK(detail::sigv4::amz_date(1369353600) == "20130524T000000Z");
}
#endif

TEST_CASE("pauses between tries double from the first, up to 10 s") {
    instanttensor::RemoteOptions options;
    options.first_backoff_ms = 100;
    CHECK(detail::RangeGet::backoff_ms(options, 1) == 100);
    CHECK(detail::RangeGet::backoff_ms(options, 2) == 200);
    CHECK(detail::RangeGet::backoff_ms(options, 4) == 800);
    CHECK(detail::RangeGet::backoff_ms(options, 40) == 10'000);
}
#endif

}  // namespace
