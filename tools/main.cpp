// tools/main.cpp: the `instanttensor` command: parses the command line and runs one subcommand.
//
//   instanttensor inspect [--json] PATH...   the tensor table of a checkpoint
//   instanttensor hash PATH...               XXH3-64 of every tensor's bytes, sorted by name
//   instanttensor load PATH...               loads every tensor to a GPU or host memory, reports GB/s
//                                            (--verify: each checked against its sealed digest;
//                                            --verify-files: each file against its SHA-256)
//   instanttensor plan PATH... --ranks N     what each rank of a group load reads, keeps, receives
//   instanttensor sample DIR [options]       writes a Llama-shaped checkpoint of random bytes
//   instanttensor seal PATH...               stores every tensor's digest in its file's header
//   instanttensor keygen KEYFILE             writes a new random key
//   instanttensor encrypt IN OUT             encrypts every tensor (--key-file or --key-env)
//   instanttensor decrypt IN OUT             writes an encrypted checkpoint back in clear
//                                            (load, hash, seal: --key-file/--key-env to read one)
//
// Exit status: 0 success, 1 the work failed (one line `instanttensor: <path>: <what>` on stderr),
// 2 the command line is wrong (CLI11's message and a hint at --help).
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli.hpp"

#ifndef INSTANTTENSOR_VERSION
#error "the build passes INSTANTTENSOR_VERSION (the CMake project version)"
#endif

namespace instanttensor::cli {

void add_checkpoint_paths(CLI::App& sub, std::vector<std::string>& paths) {
    sub.add_option("PATH", paths, "Checkpoint file, index .json or directory; several make one checkpoint")
        ->type_name("")
        ->required();
}

namespace {

constexpr const char* description =
    "instanttensor: inspect, load, hash, plan and write safetensors checkpoints.\n"
    "A PATH is a .safetensors file, a model.safetensors.index.json, or a directory (its one\n"
    "*.safetensors.index.json, else all its *.safetensors files); several PATHs form one checkpoint.";

constexpr const char* footer =
    "Run 'instanttensor SUBCOMMAND --help' for the options of one subcommand, or --help-all for all.\n"
    "Exit status: 0 success; 1 the checkpoint or the system refused (one line on stderr naming the\n"
    "file); 2 the command line is wrong.";

/// CLI11's own status codes (100 and up) are folded into our one usage status; help and version
/// requests are successes.
int exit_for_parse_error(CLI::App& app, const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? exit_ok : exit_usage;
}

bool is_subcommand(CLI::App& app, const std::string& name) {
    try {
        app.get_subcommand(name);
        return true;
    } catch (const CLI::OptionNotFound&) {
        return false;
    }
}

int run(int argc, char** argv) {
    CLI::App app{description, "instanttensor"};
    app.footer(footer);
    app.set_version_flag("--version", std::string(INSTANTTENSOR_VERSION), "Print the version and exit");
    app.set_help_all_flag("--help-all", "Print the help of every subcommand and exit");
    app.require_subcommand(1);
    // Options of one subcommand may not be written before its name, and "inspect hash" is not two
    // commands: each subcommand takes what follows it.
    app.fallthrough(false);

    Action action;
    add_inspect(app, action);
    add_hash(app, action);
    add_load(app, action);
    add_plan(app, action);
    add_seal(app, action);
    add_crypt(app, action);
    add_sample(app, action);

    // CLI11 would only say "A subcommand is required" for a misspelt one.
    if (argc > 1 && argv[1][0] != '-' && !is_subcommand(app, argv[1])) {
        fmt::print(stderr, "unknown subcommand '{}' (inspect, hash, load, plan, seal, keygen, encrypt, decrypt or sample)\n"
                           "Run with --help or --help-all for more information.\n", escape_control(argv[1]));
        return exit_usage;
    }
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return exit_for_parse_error(app, e);
    }
    if (!action) {  // cannot happen with require_subcommand(1); never run an empty function
        report_error("no subcommand to run");
        return exit_usage;
    }
    const int status = action();
    finish_stdout();
    return status;
}

}  // namespace
}  // namespace instanttensor::cli

int main(int argc, char** argv) {
    using namespace instanttensor::cli;
    // Everything, CLI11's setup included, runs inside the one error door.
    return run_reporting_errors([&] { return run(argc, argv); });
}
