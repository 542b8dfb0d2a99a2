// The malformed files of tests/fixtures/bad (made by make_bad_corpus.py, one per broken rule): each
// is refused with format_error by every entry point, and the message names the file and the
// tensor or byte offset at fault.
#include <set>
#include <string>
#include <vector>

#include "instanttensor/format/checkpoint.hpp"
#include "support.hpp"

using namespace format_test;

namespace {

struct BadCase {
    const char* file;     ///< in tests/fixtures/bad, without ".safetensors"
    const char* message;  ///< a distinctive part of the expected message
};

// Every file of the corpus, with what the library must say about it.
const std::vector<BadCase> bad_cases{
    // framing: the 8-byte length and the header bytes
    {"empty_file", "file of 0 bytes is too small for a safetensors header"},
    {"header_too_small", "file of 5 bytes is too small for a safetensors header"},
    {"header_too_large", "header length 100000001 exceeds the limit of 100000000 bytes"},
    {"header_length_u64_max", "header length 18446744073709551615 exceeds the limit"},
    {"header_length_big_endian", "header length 4035225266123964416 exceeds the limit"},
    {"header_length_past_eof", "header length 1000 runs past the end of the file (15 bytes)"},
    {"header_length_zero", "invalid JSON at byte 8"},
    {"header_length_cuts_json", "invalid JSON at byte 28"},
    {"truncated_in_header", "header length 56 runs past the end of the file (20 bytes)"},
    {"invalid_utf8", "invalid UTF-8 at byte 11"},
    {"invalid_utf8_overlong", "invalid UTF-8 at byte 10"},
    {"utf8_encoded_surrogate", "invalid UTF-8 at byte 10"},
    {"utf8_above_u10ffff", "invalid UTF-8 at byte 10"},
    {"utf8_truncated_sequence", "invalid UTF-8 at byte 10"},
    {"lone_surrogate_escape", "invalid JSON at byte 16"},
    {"utf8_bom", "invalid JSON at byte 8"},
    {"not_json", "invalid JSON at byte 8"},
    {"json_array", "header is not a JSON object (found an array)"},
    {"json_string", "header is not a JSON object (found a string)"},
    {"json_null", "header is not a JSON object (found null)"},
    {"trailing_characters", "unexpected data at byte 61 after the JSON"},
    {"trailing_second_object", "unexpected data at byte 61 after the JSON"},
    {"nul_bytes_after_json", "unexpected data at byte 61 after the JSON"},
    {"nul_padding", "unexpected data at byte 10 after the JSON"},
    {"json_comment", "invalid JSON at byte 9"},
    {"trailing_comma", "invalid JSON at byte 61"},
    {"single_quotes", "invalid JSON at byte 9"},
    {"unterminated_string", "invalid JSON at byte 16"},
    {"depth_bomb_arrays", "header is not a JSON object (found an array)"},
    {"depth_bomb_objects", "tensor 'a': unknown key 'a'"},
    {"depth_bomb_in_metadata", "metadata 'k' must be a string (found an array)"},
    // the tensor entries
    {"tensor_not_object", "tensor 'a' must be an object (found a number)"},
    {"tensor_is_array", "tensor 'a' must be an object (found an array)"},
    {"empty_tensor_name", "empty tensor name"},
    {"duplicate_tensor", "duplicate tensor name 'a'"},
    {"duplicate_tensor_via_escape", "duplicate tensor name 'a'"},
    {"missing_dtype", "tensor 'a': missing dtype"},
    {"missing_shape", "tensor 'a': missing shape"},
    {"missing_data_offsets", "tensor 'a': missing data_offsets"},
    {"empty_tensor_entry", "tensor 'a': missing dtype, shape, data_offsets"},
    {"unknown_tensor_key", "tensor 'a': unknown key 'extra'"},
    {"duplicate_tensor_key", "tensor 'a': duplicate key 'dtype'"},
    {"unknown_dtype", "tensor 'a': unknown dtype 'F128'"},
    {"lowercase_dtype", "tensor 'a': unknown dtype 'f32'"},
    {"python_dtype_name", "tensor 'a': unknown dtype 'float32'"},
    {"dtype_not_string", "tensor 'a': dtype must be a string (found a number)"},
    {"dtype_null", "tensor 'a': dtype must be a string (found null)"},
    {"shape_not_array", "tensor 'a': shape must be an array of non-negative integers (found a number)"},
    {"negative_dim", "tensor 'a': negative shape dimension"},
    {"minus_zero_dim", "tensor 'a': negative shape dimension"},
    {"float_dim", "tensor 'a': shape dimension is not an integer"},
    {"exponent_dim", "tensor 'a': shape dimension is not an integer"},
    {"dim_over_u64", "tensor 'a': shape dimension is not an integer in [0, 2^64)"},
    {"too_many_dims", "tensor 'a': shape has more than 1024 dimensions"},
    {"string_dim", "tensor 'a': shape must be an array of non-negative integers (found a string)"},
    {"nested_shape", "tensor 'a': shape must be an array of non-negative integers (found an array)"},
    {"bool_dim", "tensor 'a': shape must be an array of non-negative integers (found a boolean)"},
    {"data_offsets_one_entry", "tensor 'a': data_offsets must hold exactly two integers"},
    {"data_offsets_three_entries", "tensor 'a': data_offsets must hold exactly two integers"},
    {"data_offsets_empty", "tensor 'a': data_offsets must hold exactly two integers"},
    {"data_offsets_negative", "tensor 'a': negative data offset"},
    {"data_offsets_minus_zero", "tensor 'a': negative data offset"},
    {"data_offsets_float", "tensor 'a': data offset is not an integer"},
    {"data_offsets_not_array", "tensor 'a': data_offsets must be an array of two non-negative integers (found a string)"},
    {"data_offsets_end_before_begin", "tensor 'a': data_offsets [3, 0] end before they begin"},
    // sizes
    {"shape_dtype_mismatch", "tensor 'a': shape and dtype need 16 bytes but data_offsets [0, 12] hold 12"},
    {"shape_too_small_for_range", "tensor 'a': shape and dtype need 2 bytes but data_offsets [0, 3] hold 3"},
    {"shape_product_overflow", "tensor 'a': size of shape × dtype overflows 64 bits"},
    {"shape_overflow_before_zero", "tensor 'a': size of shape × dtype overflows 64 bits"},
    {"shape_bytes_overflow", "tensor 'a': size of shape × dtype overflows 64 bits"},
    {"f4_odd_elements", "tensor 'a': 3 elements of F4 are not a whole number of bytes"},
    {"f6_not_byte_aligned", "tensor 'a': 5 elements of F6_E3M2 are not a whole number of bytes"},
    {"f4_scalar", "elements of F4 are not a whole number of bytes"},
    // layout of the data section
    {"hole_between_tensors", "hole in the data section: bytes 3 to 4 before tensor 'b'"},
    {"hole_at_start", "hole in the data section: bytes 0 to 2 before tensor 'a'"},
    {"overlap", "tensor 'b' overlaps tensor 'a' at data byte 2"},
    {"same_range_twice", "overlaps tensor"},
    {"empty_tensor_inside_another", "tensor 'z' overlaps tensor 'a' at data byte 2"},
    {"empty_tensor_past_end", "tensor 'z' ends at byte 129 of the file, past its end at 123"},
    {"truncated_data", "tensor 'a' ends at byte 72 of the file, past its end at 67 (truncated file?)"},
    {"trailing_data", "data section holds 6 bytes but the tensors cover 3: 3 trailing bytes"},
    {"data_without_tensors", "data section holds 3 bytes but the tensors cover 0"},
    {"offsets_past_u64_end", "tensor 'a' ends at data byte 18446744073709551612, past its end at 107"},
    // metadata
    {"metadata_non_string_value", "metadata 'k' must be a string (found a number)"},
    {"metadata_null_value", "metadata 'k' must be a string (found null)"},
    {"metadata_nested_object", "metadata 'k' must be a string (found an object)"},
    {"metadata_array", "\"__metadata__\" must be an object of strings (found an array)"},
    {"metadata_string", "\"__metadata__\" must be an object of strings (found a string)"},
    {"duplicate_metadata_key", "duplicate metadata key 'k'"},
    {"duplicate_metadata_object", "duplicate \"__metadata__\" key"},
};

fs::path bad_dir() { return fixtures_dir() / "bad"; }

}  // namespace

TEST_CASE("bad corpus: the table and the files on disk match") {
    CHECK(bad_cases.size() >= 30);
    std::set<std::string> in_table;
    for (const auto& c : bad_cases) {
        CAPTURE(c.file);
        CHECK(in_table.insert(c.file).second);
        CHECK(fs::is_regular_file(bad_dir() / (std::string(c.file) + ".safetensors")));
    }
    std::size_t on_disk = 0;
    for (const auto& entry : fs::directory_iterator(bad_dir())) {
        if (entry.path().extension() != ".safetensors") continue;
        ++on_disk;
        CAPTURE(entry.path().string());
        CHECK(in_table.count(entry.path().stem().string()) == 1);
    }
    CHECK(on_disk == bad_cases.size());
}

TEST_CASE("bad corpus: every entry point refuses every file with format_error naming it") {
    for (const auto& c : bad_cases) {
        const fs::path path = bad_dir() / (std::string(c.file) + ".safetensors");
        const std::string source = path.string();
        CAPTURE(source);

        const Thrown by_path = thrown_by([&] { (void)fmt::read_header(path); });
        CHECK(by_path.kind == "format_error");
        CHECK(by_path.source == source);
        CHECK(by_path.what.rfind(source + ": ", 0) == 0);  // what() starts with the path
        CHECK_MESSAGE(contains(by_path.what, c.message), by_path.what);

        // The same refusal when it comes through a checkpoint, alone or next to a good file.
        const Thrown by_checkpoint = thrown_by([&] { (void)fmt::Checkpoint::open(path); });
        CHECK(by_checkpoint.kind == "format_error");
        CHECK(by_checkpoint.what == by_path.what);
        const Thrown in_pair =
            thrown_by([&] { (void)fmt::Checkpoint::open({fixtures_dir() / "scalars.safetensors", path}); });
        CHECK(in_pair.kind == "format_error");
        CHECK(in_pair.what == by_path.what);

        // And from memory, named as the caller names it.
        const auto bytes = read_bytes(path);
        const std::string name = "memory:" + std::string(c.file);
        const Thrown in_memory = thrown_by([&] { (void)fmt::parse_file_bytes(bytes, name); });
        CHECK(in_memory.kind == "format_error");
        CHECK(in_memory.source == name);
        CHECK(in_memory.message == by_path.message);
    }
}

TEST_CASE("bad corpus: a bad file in a directory is named") {
    TempDir tmp;
    fs::copy_file(fixtures_dir() / "scalars.safetensors", tmp / "a.safetensors");
    fs::copy_file(bad_dir() / "overlap.safetensors", tmp / "b.safetensors");
    const Thrown t = thrown_by([&] { (void)fmt::Checkpoint::open(tmp.path()); });
    CHECK(t.kind == "format_error");
    CHECK(t.source == (tmp / "b.safetensors").string());
    CHECK(contains(t.what, "tensor 'b' overlaps tensor 'a' at data byte 2"));
}

TEST_CASE("bad corpus: a good file cut inside its header") {
    TempDir tmp;
    const fs::path path = tmp / "shrinking.safetensors";
    fs::copy_file(fixtures_dir() / "all_dtypes.safetensors", path);
    const fmt::Header h = fmt::read_header(path);
    fs::resize_file(path, h.data_offset() - 3);
    const Thrown t = thrown_by([&] { (void)fmt::read_header(path); });
    CHECK(t.kind == "format_error");
    CHECK(contains(t.what, "header length " + std::to_string(h.json_size) + " runs past the end of the file"));
}
