// instanttensor/detail/json_sax.hpp: strict event-driven JSON parsing on Boost.JSON's basic_parser.
//
// The library parses headers and index files with SAX handlers instead of a DOM: the handler sees
// every key, so duplicate keys (which a DOM silently collapses) are caught, values are checked
// against the expected type as they arrive, and nothing but the result is allocated.
#pragma once

#include <boost/json/basic_parser_impl.hpp>
#include <boost/system/errc.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "instanttensor/detail/utf8.hpp"
#include "instanttensor/error.hpp"

namespace instanttensor::detail {

/// Base of the library's SAX handlers: every event is refused unless the derived handler declares
/// a member of the same name (the parser calls the derived type's members directly, no virtuals).
/// A refusal records `problem` and makes the parser stop.
struct StrictJsonHandler {
    static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
    static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
    static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);
    static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);

    using error_code = boost::system::error_code;
    using string_view = boost::json::string_view;

    std::string problem;  // what the handler refused, in words; empty if the parser itself failed

    bool fail(error_code& ec, std::string what) {
        problem = std::move(what);
        ec = boost::system::errc::make_error_code(boost::system::errc::invalid_argument);
        return false;
    }

    bool on_document_begin(error_code&) { return true; }
    bool on_document_end(error_code&) { return true; }
    bool on_array_begin(error_code& ec) { return fail(ec, "unexpected array"); }
    bool on_array_end(std::size_t, error_code& ec) { return fail(ec, "unexpected array"); }
    bool on_object_begin(error_code& ec) { return fail(ec, "unexpected object"); }
    bool on_object_end(std::size_t, error_code& ec) { return fail(ec, "unexpected object"); }
    bool on_string_part(string_view, std::size_t, error_code& ec) { return fail(ec, "unexpected string"); }
    bool on_string(string_view, std::size_t, error_code& ec) { return fail(ec, "unexpected string"); }
    bool on_key_part(string_view, std::size_t, error_code& ec) { return fail(ec, "unexpected key"); }
    bool on_key(string_view, std::size_t, error_code& ec) { return fail(ec, "unexpected key"); }
    bool on_number_part(string_view, error_code&) { return true; }
    bool on_int64(std::int64_t, string_view, error_code& ec) { return fail(ec, "unexpected number"); }
    bool on_uint64(std::uint64_t, string_view, error_code& ec) { return fail(ec, "unexpected number"); }
    bool on_double(double, string_view, error_code& ec) { return fail(ec, "unexpected number"); }
    bool on_bool(bool, error_code& ec) { return fail(ec, "unexpected boolean"); }
    bool on_null(error_code& ec) { return fail(ec, "unexpected null"); }
    bool on_comment_part(string_view, error_code& ec) { return fail(ec, "unexpected comment"); }
    bool on_comment(string_view, error_code& ec) { return fail(ec, "unexpected comment"); }
};

/// Joins a string or key that the parser delivers in several parts (it does so when the text holds
/// escapes); the common unescaped case is handed through without a copy.
class PartialText {
public:
    void append(std::string_view part) { buffer_.append(part); }

    /// The whole text, given its last part. Valid until the next call.
    std::string_view finish(std::string_view last) {
        if (buffer_.empty()) return last;
        buffer_.append(last);
        joined_.swap(buffer_);
        buffer_.clear();
        return joined_;
    }

private:
    std::string buffer_;
    std::string joined_;
};

/// Parses `json` as one complete document with `Handler` (constructed from `args`), and returns the
/// handler's result as the handler declares it: a handler that fills the caller's object returns a
/// reference, which `auto` would turn into a copy of the whole header. Syntax errors name the byte
/// offset in the file (`json` starts at `file_offset`); handler refusals carry the handler's own
/// words. Throws format_error.
template <class Handler, class... Args>
decltype(auto) parse_json(std::string_view json, std::string_view source, std::uint64_t file_offset,
                Args&&... args) {
    boost::json::basic_parser<Handler> parser(boost::json::parse_options{}, std::forward<Args>(args)...);
    boost::system::error_code ec;
    std::size_t consumed = parser.write_some(false, json.data(), json.size(), ec);
    if (ec) {
        if (!parser.handler().problem.empty()) throw format_error(std::string(source), parser.handler().problem);
        // Boost.JSON reports bytes that are not UTF-8 as a syntax error; say what is wrong.
        if (const std::size_t bad = first_invalid_utf8(json); bad <= consumed)
            throw format_error(std::string(source), "invalid UTF-8 at byte " + std::to_string(file_offset + bad) +
                                                        ": the header must be UTF-8 JSON");
        throw format_error(std::string(source), "invalid JSON at byte " + std::to_string(file_offset + consumed) +
                                                    ": " + ec.message());
    }
    if (consumed != json.size())
        throw format_error(std::string(source), "unexpected data at byte " +
                                                    std::to_string(file_offset + consumed) + " after the JSON");
    return std::move(parser.handler()).result();
}

}  // namespace instanttensor::detail
