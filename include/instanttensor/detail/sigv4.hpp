// instanttensor/detail/sigv4.hpp: AWS Signature Version 4 for the GETs storage::http writes
// itself (detail/http1.hpp); libcurl signs its own transfers (CURLOPT_AWS_SIGV4).
//
// A GET signs Host, Range, X-Amz-Content-Sha256 (an empty body's hash) and X-Amz-Date, and
// X-Amz-Security-Token where a session token is set; other headers (If-Match) go unsigned, as
// S3 allows. HMAC-SHA256 and SHA-256 are OpenSSL's: without it (INSTANTTENSOR_HAS_CRYPTO=0) nothing here is
// declared, and signed S3 requests stay with libcurl.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_CRYPTO

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <array>
#include <cstdint>
#include <ctime>
#include <span>
#include <string>
#include <string_view>

#include "instanttensor/detail/aead.hpp"
#include "instanttensor/detail/hex.hpp"
#include "instanttensor/detail/remote.hpp"
#include "instanttensor/error.hpp"

namespace instanttensor::detail {

namespace sigv4 {

using Digest = std::array<std::uint8_t, 32>;

inline std::span<const std::uint8_t> bytes_of(std::string_view text) {
    return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()};
}

inline Digest hmac(std::span<const std::uint8_t> key, std::string_view message) {
    Digest out{};
    unsigned size = 0;
    if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(message.data()),
             message.size(), out.data(), &size) == nullptr)
        throw unavailable_error("OpenSSL", "its HMAC-SHA256 failed");
    return out;
}

/// X-Amz-Date's form of `t`: 20130524T000000Z.
inline std::string amz_date(std::time_t t) {
    std::tm utc{};
    gmtime_r(&t, &utc);
    char text[17];
    std::strftime(text, sizeof text, "%Y%m%dT%H%M%SZ", &utc);
    return text;
}

}  // namespace sigv4

/// The header lines ("Name: value\r\n") that sign a GET of `path` (as the request line has it,
/// already encoded, without a query) at `host` (the Host header's value) for bytes `range`
/// ("0-99"), at `date` (amz_date), with `credentials`.
inline std::string sigv4_get_headers(const S3Credentials& credentials, std::string_view host, std::string_view path,
                                     std::string_view range, const std::string& date) {
    const std::string day = date.substr(0, 8);
    const std::string scope = day + "/" + credentials.region + "/s3/aws4_request";
    std::string canonical_headers = "host:" + std::string(host) + "\nrange:bytes=" + std::string(range) +
                                    "\nx-amz-content-sha256:" + std::string(empty_payload_sha256) + "\nx-amz-date:" + date + "\n";
    std::string signed_headers = "host;range;x-amz-content-sha256;x-amz-date";
    if (!credentials.session_token.empty()) {
        canonical_headers += "x-amz-security-token:" + credentials.session_token + "\n";
        signed_headers += ";x-amz-security-token";
    }
    const std::string canonical_request = "GET\n" + std::string(path) + "\n\n" + canonical_headers + "\n" + signed_headers +
                                          "\n" + std::string(empty_payload_sha256);
    const std::string to_sign = "AWS4-HMAC-SHA256\n" + date + "\n" + scope + "\n" + hex_of(sha256(sigv4::bytes_of(canonical_request)));
    auto key = sigv4::hmac(sigv4::bytes_of("AWS4" + credentials.secret_key), day);
    key = sigv4::hmac(key, credentials.region);
    key = sigv4::hmac(key, "s3");
    key = sigv4::hmac(key, "aws4_request");
    const std::string signature = hex_of(sigv4::hmac(key, to_sign));
    std::string lines = "X-Amz-Content-Sha256: " + std::string(empty_payload_sha256) + "\r\nX-Amz-Date: " + date + "\r\n";
    if (!credentials.session_token.empty()) lines += "X-Amz-Security-Token: " + credentials.session_token + "\r\n";
    return lines + "Authorization: AWS4-HMAC-SHA256 Credential=" + credentials.access_key + "/" + scope +
           ", SignedHeaders=" + signed_headers + ", Signature=" + signature + "\r\n";
}

}  // namespace instanttensor::detail

#endif  // INSTANTTENSOR_HAS_CRYPTO
