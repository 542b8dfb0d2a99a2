// instanttensor/format/detail/header.inl: the SAX handler and the validation behind
// format/header.hpp, which includes this file at its end (not to be included on its own).
#pragma once

#include <algorithm>
#include <bit>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

#include "instanttensor/detail/fd.hpp"
#include "instanttensor/detail/json_sax.hpp"
#include "instanttensor/error.hpp"

namespace instanttensor::detail {

// Format types the parser fills.
using format::bit_size;
using format::byte_size;
using format::element_count;
using format::Header;
using format::parse_dtype;
using format::TensorInfo;
using format::to_string;


inline std::string quote_name(std::string_view name) {
    std::string s;
    s.reserve(name.size() + 2);
    s.append("'").append(name).append("'");
    return s;
}

/// Appends `text` to `out` with control characters (newline, tab, ESC, NUL, DEL...) written as \n,
/// \r, \t, \xNN and a backslash as \\, so that a name or path cannot break a line in two and a
/// name holding a newline never reads like one holding a backslash and an n. Other bytes (UTF-8
/// included) pass unchanged. Returns whether anything was escaped. The command prints names and
/// paths this way; digest lines (format/digests.hpp) write escaped names this way.
inline bool append_escaped(std::string& out, std::string_view text) {
    bool escaped = false;
    for (char ch : text) {
        const auto c = static_cast<unsigned char>(ch);
        if (c >= 0x20 && c != 0x7f && c != '\\') {
            out.push_back(ch);
            continue;
        }
        escaped = true;
        if (c == '\\') out.append("\\\\");
        else if (c == '\n') out.append("\\n");
        else if (c == '\r') out.append("\\r");
        else if (c == '\t') out.append("\\t");
        else {
            char hex[5];
            std::snprintf(hex, sizeof hex, "\\x%02x", c);
            out.append(hex);
        }
    }
    return escaped;
}

/// Builds the tensor table and metadata of a header from parser events. Where it is in the
/// document is one state; depth is implied by the state, so no stack is needed.
class HeaderHandler : public detail::StrictJsonHandler {
public:
    explicit HeaderHandler(Header& header) : header_(header) {}

    Header& result() && { return header_; }

    bool on_object_begin(error_code& ec) {
        switch (state_) {
        case State::document: state_ = State::top_key; return true;
        case State::top_value:
            if (in_metadata_) { state_ = State::metadata_key; return true; }
            tensor_ = {};
            tensor_.name = std::string(key_);
            seen_ = 0;
            state_ = State::tensor_key;
            return true;
        default: return refuse(ec, "an object");
        }
    }

    bool on_object_end(std::size_t, error_code& ec) {
        switch (state_) {
        case State::top_key: state_ = State::finished; return true;
        case State::metadata_key: state_ = State::top_key; return true;
        case State::tensor_key:
            if (seen_ != (seen_dtype | seen_shape | seen_offsets))
                return fail(ec, "tensor " + quote_name(tensor_.name) + ": missing " + missing_keys());
            header_.tensors.push_back(std::move(tensor_));
            state_ = State::top_key;
            return true;
        default: return refuse(ec, "the end of an object");
        }
    }

    bool on_key_part(string_view part, std::size_t, error_code&) {
        text_.append(part);
        return true;
    }

    bool on_key(string_view last, std::size_t, error_code& ec) {
        std::string_view key = text_.finish(last);
        switch (state_) {
        case State::top_key:
            key_ = key;
            in_metadata_ = key == "__metadata__";
            if (in_metadata_ && seen_metadata_) return fail(ec, "duplicate \"__metadata__\" key");
            seen_metadata_ = seen_metadata_ || in_metadata_;
            if (key.empty()) return fail(ec, "empty tensor name");
            state_ = State::top_value;
            return true;
        case State::metadata_key:
            key_ = key;
            state_ = State::metadata_value;
            return true;
        case State::tensor_key: return on_tensor_key(key, ec);
        default: return refuse(ec, "a key");
        }
    }

    bool on_string_part(string_view part, std::size_t, error_code&) {
        text_.append(part);
        return true;
    }

    bool on_string(string_view last, std::size_t, error_code& ec) {
        std::string_view value = text_.finish(last);
        if (state_ == State::metadata_value) {
            if (!header_.metadata.emplace(key_, value).second)
                return fail(ec, "duplicate metadata key " + quote_name(key_));
            state_ = State::metadata_key;
            return true;
        }
        if (state_ == State::tensor_dtype) {
            auto dtype = parse_dtype(value);
            if (!dtype)
                return fail(ec, "tensor " + quote_name(tensor_.name) + ": unknown dtype " + quote_name(value));
            tensor_.dtype = *dtype;
            state_ = State::tensor_key;
            return true;
        }
        return refuse(ec, "a string");
    }

    bool on_null(error_code& ec) {
        if (state_ == State::top_value && in_metadata_) {  // the reference accepts "__metadata__": null
            state_ = State::top_key;
            return true;
        }
        return refuse(ec, "null");
    }

    bool on_array_begin(error_code& ec) {
        if (state_ == State::tensor_shape) { state_ = State::shape_items; return true; }
        if (state_ == State::tensor_offsets) { state_ = State::offset_items; offsets_seen_ = 0; return true; }
        return refuse(ec, "an array");
    }

    bool on_array_end(std::size_t, error_code& ec) {
        if (state_ == State::shape_items) { state_ = State::tensor_key; return true; }
        if (state_ == State::offset_items) {
            if (offsets_seen_ != 2) return fail(ec, "tensor " + quote_name(tensor_.name) + ": data_offsets must hold exactly two integers");
            state_ = State::tensor_key;
            return true;
        }
        return refuse(ec, "the end of an array");
    }

    // A number may come in parts; its sign is its first character. "-0" is an int64 of 0, and
    // negative all the same (the reference refuses it).
    bool on_number_part(string_view part, error_code&) {
        if (!in_number_) negative_ = part.starts_with('-');
        in_number_ = true;
        return true;
    }

    bool on_int64(std::int64_t v, string_view last, error_code& ec) {
        const bool negative = in_number_ ? negative_ : last.starts_with('-');
        in_number_ = false;
        if (negative && (state_ == State::shape_items || state_ == State::offset_items))
            return fail(ec, "tensor " + quote_name(tensor_.name) + ": negative " + item_kind());
        return on_uint64(static_cast<std::uint64_t>(v), {}, ec);
    }

    bool on_uint64(std::uint64_t v, string_view, error_code& ec) {
        in_number_ = false;
        if (state_ == State::shape_items) {
            if (tensor_.shape.size() == format::max_dimensions)
                return fail(ec, "tensor " + quote_name(tensor_.name) + ": shape has more than " +
                                    std::to_string(format::max_dimensions) + " dimensions");
            tensor_.shape.push_back(v);
            return true;
        }
        if (state_ == State::offset_items) {
            if (offsets_seen_ >= 2) return fail(ec, "tensor " + quote_name(tensor_.name) + ": data_offsets must hold exactly two integers");
            (offsets_seen_++ == 0 ? tensor_.begin : tensor_.end) = v;
            return true;
        }
        return refuse(ec, "a number");
    }

    bool on_double(double, string_view, error_code& ec) {
        in_number_ = false;
        if (state_ == State::shape_items || state_ == State::offset_items)
            return fail(ec, "tensor " + quote_name(tensor_.name) + ": " + item_kind() + " is not an integer in [0, 2^64)");
        return refuse(ec, "a number");
    }

    bool on_bool(bool, error_code& ec) { return refuse(ec, "a boolean"); }

private:
    enum class State {
        document,        // before the root value
        top_key,         // in the root object, expecting a tensor name or "__metadata__"
        top_value,       // after a root key
        metadata_key,    // in "__metadata__", expecting a key
        metadata_value,  // expecting a metadata string
        tensor_key,      // in a tensor entry, expecting dtype / shape / data_offsets
        tensor_dtype,
        tensor_shape,
        shape_items,
        tensor_offsets,
        offset_items,
        finished,
    };
    static constexpr unsigned seen_dtype = 1, seen_shape = 2, seen_offsets = 4;

    bool on_tensor_key(std::string_view key, error_code& ec) {
        unsigned bit = key == "dtype" ? seen_dtype : key == "shape" ? seen_shape : key == "data_offsets" ? seen_offsets : 0;
        if (bit == 0) return fail(ec, "tensor " + quote_name(tensor_.name) + ": unknown key " + quote_name(key));
        if (seen_ & bit) return fail(ec, "tensor " + quote_name(tensor_.name) + ": duplicate key " + quote_name(key));
        seen_ |= bit;
        state_ = bit == seen_dtype ? State::tensor_dtype : bit == seen_shape ? State::tensor_shape : State::tensor_offsets;
        return true;
    }

    std::string missing_keys() const {
        std::string s;
        for (auto [bit, name] : {std::pair{seen_dtype, "dtype"}, {seen_shape, "shape"}, {seen_offsets, "data_offsets"}})
            if (!(seen_ & bit)) s.append(s.empty() ? "" : ", ").append(name);
        return s;
    }

    std::string item_kind() const { return state_ == State::shape_items ? "shape dimension" : "data offset"; }

    /// A value of the wrong kind for where the parser is: say what was expected there.
    bool refuse(error_code& ec, std::string_view found) {
        std::string where;
        switch (state_) {
        case State::document: return fail(ec, "header is not a JSON object (found " + std::string(found) + ")");
        case State::top_value:
            where = in_metadata_ ? "\"__metadata__\" must be an object of strings" : "tensor " + quote_name(key_) + " must be an object";
            break;
        case State::metadata_value: where = "metadata " + quote_name(key_) + " must be a string"; break;
        case State::tensor_dtype: where = "tensor " + quote_name(tensor_.name) + ": dtype must be a string"; break;
        case State::tensor_shape:
        case State::shape_items: where = "tensor " + quote_name(tensor_.name) + ": shape must be an array of non-negative integers"; break;
        case State::tensor_offsets:
        case State::offset_items: where = "tensor " + quote_name(tensor_.name) + ": data_offsets must be an array of two non-negative integers"; break;
        default: where = "unexpected JSON structure"; break;
        }
        return fail(ec, where + " (found " + std::string(found) + ")");
    }

    Header& header_;
    State state_ = State::document;
    detail::PartialText text_;
    std::string key_;
    bool in_metadata_ = false;
    bool seen_metadata_ = false;
    TensorInfo tensor_;
    unsigned seen_ = 0;
    unsigned offsets_seen_ = 0;
    bool in_number_ = false;  // a number's first part came (on_number_part)
    bool negative_ = false;   // and began with '-'
};

/// Why a tensor's declared byte range cannot hold its shape, or empty when it can.
inline std::string size_mismatch(const TensorInfo& t) {
    auto bytes = byte_size(t.dtype, t.shape);
    if (!bytes) {
        auto n = element_count(t.shape);
        std::uint64_t bits;
        if (!n || __builtin_mul_overflow(*n, std::uint64_t{bit_size(t.dtype)}, &bits))
            return "size of shape × dtype overflows 64 bits";
        return std::to_string(*n) + " elements of " + std::string(to_string(t.dtype)) + " are not a whole number of bytes";
    }
    if (t.end < t.begin)
        return "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] end before they begin";
    if (*bytes != t.nbytes())
        return "shape and dtype need " + std::to_string(*bytes) + " bytes but data_offsets [" + std::to_string(t.begin) +
               ", " + std::to_string(t.end) + "] hold " + std::to_string(t.nbytes());
    return {};
}

/// Checks names, sizes and layout of a parsed header, and sorts its tensors by offset.
inline void validate(Header& h, std::string_view source) {
    auto fail = [&](std::string what) { throw format_error(std::string(source), what); };

    for (const auto& t : h.tensors)
        if (auto why = size_mismatch(t); !why.empty()) fail("tensor " + quote_name(t.name) + ": " + why);

    {
        std::vector<std::string_view> names;
        names.reserve(h.tensors.size());
        for (const auto& t : h.tensors) names.push_back(t.name);
        std::sort(names.begin(), names.end());
        if (auto dup = std::adjacent_find(names.begin(), names.end()); dup != names.end())
            fail("duplicate tensor name " + quote_name(*dup));
    }

    std::stable_sort(h.tensors.begin(), h.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::uint64_t covered = 0;  // the data section is covered up to here
    const TensorInfo* previous = nullptr;
    for (const auto& t : h.tensors) {
        if (t.end > h.data_size) {
            std::uint64_t end_in_file = 0;  // an end offset near 2^64 must not wrap in the message
            const std::string end = __builtin_add_overflow(h.data_offset(), t.end, &end_in_file)
                                        ? "data byte " + std::to_string(t.end)
                                        : "byte " + std::to_string(end_in_file) + " of the file";
            fail("tensor " + quote_name(t.name) + " ends at " + end + ", past its end at " +
                 std::to_string(h.file_size()) + " (truncated file?)");
        }
        if (t.begin < covered)
            fail("tensor " + quote_name(t.name) + " overlaps tensor " + quote_name(previous->name) + " at data byte " +
                 std::to_string(t.begin));
        if (t.begin > covered)
            fail("hole in the data section: bytes " + std::to_string(covered) + " to " + std::to_string(t.begin) +
                 " before tensor " + quote_name(t.name) + " belong to no tensor");
        covered = t.end;
        previous = &t;
    }
    if (covered != h.data_size)
        fail("data section holds " + std::to_string(h.data_size) + " bytes but the tensors cover " +
             std::to_string(covered) + ": " + std::to_string(h.data_size - covered) +
             " trailing bytes belong to no tensor");
}

}  // namespace instanttensor::detail

namespace instanttensor::format {

inline std::uint64_t decode_header_length(std::span<const std::byte> prefix, std::uint64_t file_size,
                                          std::string_view source) {
    auto fail = [&](std::string what) { throw format_error(std::string(source), what); };
    if (prefix.size() < header_length_size || file_size < header_length_size)
        fail("file of " + std::to_string(file_size) + " bytes is too small for a safetensors header (8 bytes at least)");
    std::uint64_t n = 0;
    std::memcpy(&n, prefix.data(), sizeof n);
    if constexpr (std::endian::native == std::endian::big) n = __builtin_bswap64(n);
    if (n > max_header_size)
        fail("header length " + std::to_string(n) + " exceeds the limit of " + std::to_string(max_header_size) + " bytes");
    if (n > file_size - header_length_size)
        fail("header length " + std::to_string(n) + " runs past the end of the file (" + std::to_string(file_size) + " bytes)");
    return n;
}

inline Header parse_header(std::string_view json, std::uint64_t file_size, std::string_view source) {
    Header header;
    header.json_size = json.size();
    if (file_size < header.data_offset())
        throw format_error(std::string(source), "header runs past the end of the file");
    header.data_size = file_size - header.data_offset();
    detail::parse_json<detail::HeaderHandler>(json, source, header_length_size, header);
    detail::validate(header, source);
    return header;
}

inline Header parse_file_bytes(std::span<const std::byte> file, std::string_view source) {
    std::uint64_t n = decode_header_length(file, file.size(), source);
    std::string_view json(reinterpret_cast<const char*>(file.data()) + header_length_size, n);
    return parse_header(json, file.size(), source);
}

}  // namespace instanttensor::format

namespace instanttensor::detail {

/// The validated header of the open file `fd` of `file_size` bytes.
inline format::Header read_header(int fd, std::uint64_t file_size, const std::string& source) {
    std::byte prefix[format::header_length_size]{};
    if (file_size >= format::header_length_size) read_exact(fd, prefix, 0, source);
    const std::uint64_t n = format::decode_header_length(prefix, file_size, source);
    std::string json(n, '\0');
    read_exact(fd, std::as_writable_bytes(std::span(json)), format::header_length_size, source);
    return format::parse_header(json, file_size, source);
}

}  // namespace instanttensor::detail

namespace instanttensor::format {

inline Header read_header(const std::filesystem::path& path) {
    auto fd = detail::open_read_only(path);
    const std::string source = path.string();
    return detail::read_header(fd.get(), detail::regular_file_size(fd.get(), source), source);
}

}  // namespace instanttensor::format
