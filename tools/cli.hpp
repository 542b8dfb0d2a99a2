// tools/cli.hpp: what the subcommands of the `instanttensor` command share.
//
// Each subcommand lives in its own file and registers itself with add_<name>(). Its CLI11
// callback only records what to run; main() runs it after parsing, inside run_reporting_errors(),
// so that failures of the work itself never pass through CLI11 and always end the same way:
// exit status 1 and one line `instanttensor: <what>` on stderr.
#pragma once

#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <functional>
#include <new>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/core.h>
#include <re2/re2.h>

#include "instanttensor/error.hpp"
#include "instanttensor/format/header.hpp"

namespace CLI {
class App;
}

namespace instanttensor::cli {

/// Exit statuses of the command.
inline constexpr int exit_ok = 0;
inline constexpr int exit_failure = 1;  ///< the input or the system refused (bad file, I/O error)
inline constexpr int exit_usage = 2;    ///< the command line is wrong

/// The work a parsed subcommand asks for; returns the exit status.
using Action = std::function<int()>;

/// Adds the PATH... positional every subcommand but sample takes: one checkpoint, required.
void add_checkpoint_paths(CLI::App& sub, std::vector<std::string>& paths);

/// Subcommands: each adds itself to `app` and, when it is the one parsed, sets `action`.
void add_inspect(CLI::App& app, Action& action);
void add_hash(CLI::App& app, Action& action);
void add_sample(CLI::App& app, Action& action);
void add_load(CLI::App& app, Action& action);
void add_plan(CLI::App& app, Action& action);
void add_seal(CLI::App& app, Action& action);
void add_crypt(CLI::App& app, Action& action);  // keygen, encrypt, decrypt

/// `text` as names and paths print: control characters and backslashes escaped
/// (detail::append_escaped), so that a name cannot break a table row or a message in two.
inline std::string escape_control(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    detail::append_escaped(out, text);
    return out;
}

/// A CLI11 validator's check that `text` is a regular expression in RE2's syntax ("" when it is).
inline std::string check_regex(std::string& text) {
    const RE2 pattern(text, RE2::Quiet);
    return pattern.ok() ? std::string() : "not a regular expression: " + pattern.error();
}

/// A CLI11 check that an option is a whole number in [min, max]: "'abc' is not a whole number",
/// "0 is not in [1, 8]" (CLI11's Range says "not in range" of any text).
template <class T>
CLI::Validator whole_number(T min, T max) {
    const std::string range = "[" + std::to_string(min) + ", " + std::to_string(max) + "]";
    return CLI::Validator(
        [min, max, range](std::string& text) -> std::string {
            T value{};
            const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
            if (text.empty() || end != text.data() + text.size() || (ec != std::errc() && ec != std::errc::result_out_of_range))
                return "'" + escape_control(text) + "' is not a whole number";
            if (ec == std::errc::result_out_of_range || value < min || value > max) return text + " is not in " + range;
            return {};
        },
        "in " + range);
}

/// Columns a UTF-8 string takes in a terminal, approximated as its number of code points.
inline std::size_t display_width(std::string_view text) {
    std::size_t width = 0;
    for (char ch : text)
        if ((static_cast<unsigned char>(ch) & 0xc0) != 0x80) ++width;
    return width;
}

/// A byte count for people: "512 B", "64.0 MiB", "14.96 GiB" (binary units, 3 significant digits).
inline std::string human_bytes(std::uint64_t bytes) {
    static constexpr const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (bytes < 1024) return fmt::format("{} B", bytes);
    double value = static_cast<double>(bytes);
    std::size_t unit = 0;
    while (value >= 1024.0 && unit + 1 < std::size(units)) {
        value /= 1024.0;
        ++unit;
    }
    const int decimals = value < 10.0 ? 2 : value < 100.0 ? 1 : 0;
    return fmt::format("{:.{}f} {}", value, decimals, units[unit]);
}

/// "[4096, 4096]"; "[]" for a scalar.
inline std::string format_shape(std::span<const std::uint64_t> shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) out.append(i ? ", " : "").append(std::to_string(shape[i]));
    out.push_back(']');
    return out;
}

/// "1 tensor", "3 tensors".
inline std::string count_of(std::uint64_t n, std::string_view noun) {
    return fmt::format("{} {}{}", n, noun, n == 1 ? "" : "s");
}

/// Command-line paths as given; Checkpoint::open resolves files, indexes and directories.
inline std::vector<std::filesystem::path> to_paths(const std::vector<std::string>& args) {
    return {args.begin(), args.end()};
}

/// Prints to stdout. A write that fails (a full disk, a closed descriptor) is an io_error naming
/// <stdout>, not fmt's "cannot write to file".
template <class... Args>
void print(fmt::format_string<Args...> format, Args&&... args) {
    const std::string text = fmt::format(format, std::forward<Args>(args)...);
    if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size()) throw io_error("<stdout>", "write failed", errno);
}

/// Makes sure everything printed reached stdout (a full disk or closed pipe is an error too).
inline void finish_stdout() {
    if (std::fflush(stdout) != 0 || std::ferror(stdout))
        throw io_error("<stdout>", "write failed", errno);
}

/// Prints `instanttensor: <message>` as one line on stderr.
inline void report_error(std::string_view message) noexcept {
    try {
        fmt::print(stderr, "instanttensor: {}\n", escape_control(message));
    } catch (...) {
        std::fputs("instanttensor: error (and reporting it failed)\n", stderr);
    }
}

/// Runs `action`, turning every exception into exit status 1 and one line on stderr.
/// instanttensor::error's what() already reads "<path>: <what is wrong>".
inline int run_reporting_errors(const Action& action) noexcept {
    try {
        return action();
    } catch (const std::bad_alloc&) {
        report_error("out of memory");
    } catch (const std::exception& e) {
        report_error(e.what());
    } catch (...) {
        report_error("unknown error");
    }
    return exit_failure;
}

}  // namespace instanttensor::cli
