// tools/crypt.cpp: `instanttensor keygen KEYFILE`, `encrypt IN OUT` and `decrypt IN OUT`: encrypted
// checkpoints (format/encryption.hpp, docs/integrity.md).
//
// keygen writes a new random key (64 hex digits) to a file only its owner may read, never over one
// that exists. encrypt writes IN (a .safetensors file, or a directory: each of its .safetensors
// files encrypted, its other files copied) to OUT, which must not exist; decrypt does the reverse
// through the loader, so every chunk is authenticated as a load would. The key comes from
// --key-file or --key-env, never from the command line, and is never printed.
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/format/encryption.hpp"
#include "instanttensor/format/writer.hpp"
#include "loading.hpp"

namespace instanttensor::cli {
namespace {

namespace fs = std::filesystem;

struct CryptOptions {
    std::string in, out;
    KeySource key;
    std::string cipher = "auto";
    std::uint64_t chunk_kib = format::default_chunk_bytes >> 10;
    LoadSettings settings;  // decrypt: how the loader reads
};

/// The pairs (input file, output file) IN and OUT name, with the other files of a directory to copy.
struct Work {
    std::vector<std::pair<fs::path, fs::path>> files, copies;
    fs::path created;  // the directory OUT, made here: removed if the work fails
};

/// Runs `each` on every file of `work`, then copies the others; on failure removes what it made.
template <class Each>
void run_work(const Work& work, Each&& each) {
    try {
        for (const auto& [from, to] : work.files) each(from, to);
        for (const auto& [from, to] : work.copies) fs::copy_file(from, to);
    } catch (...) {
        std::error_code ignored;
        if (!work.created.empty()) fs::remove_all(work.created, ignored);
        throw;
    }
}

Work plan_work(const std::string& in, const std::string& out) {
    if (fs::exists(fs::symlink_status(out))) throw io_error(out, "exists: not overwritten", EEXIST);
    Work work;
    if (!fs::is_directory(in)) {
        work.files.emplace_back(in, out);
        return work;
    }
    std::error_code ec;
    fs::create_directory(out, ec);
    if (ec) throw io_error(out, "cannot create directory", ec.value());
    work.created = out;
    for (const auto& entry : fs::directory_iterator(in)) {
        if (!entry.is_regular_file()) continue;
        auto& list = entry.path().extension() == ".safetensors" ? work.files : work.copies;
        list.emplace_back(entry.path(), fs::path(out) / entry.path().filename());
    }
    if (work.files.empty()) throw usage_error(in, "holds no .safetensors file");
    return work;
}

#if INSTANTTENSOR_HAS_CRYPTO

int run_keygen(const std::string& path) {
    const auto file = format::create_new_file(path, 0600);
    std::string text = format::Key::generate().text();
    try {
        format::write_at(file.get(), std::as_bytes(std::span(text)), 0, path);
        if (::fsync(file.get()) != 0) throw io_error(path, "cannot flush", errno);
    } catch (...) {
        sodium_memzero(text.data(), text.size());
        ::unlink(path.c_str());
        throw;
    }
    sodium_memzero(text.data(), text.size());
    print("wrote a new key to {} (readable by its owner only; whoever holds it can read what it encrypts)\n", escape_control(path));
    return exit_ok;
}

int run_encrypt(const CryptOptions& options) {
    const format::Key key = read_key(options.key);
    format::EncryptOptions encrypt;
    if (options.cipher != "auto") encrypt.cipher = format::parse_cipher(options.cipher, "--cipher");
    encrypt.chunk_bytes = options.chunk_kib << 10;
    run_work(plan_work(options.in, options.out), [&](const fs::path& from, const fs::path& to) {
        const format::Header header = format::read_header(from);
        ProgressBar bar(header.data_size, options.settings.progress);
        encrypt.progress = [&bar](std::uint64_t done) { bar.update(done); };
        format::encrypt_file(from, to, key, encrypt);
        print("encrypted {} ({}, {}, {} chunks)\n", escape_control(to.string()), count_of(header.tensors.size(), "tensor"),
              format::cipher_name(encrypt.cipher), human_bytes(encrypt.chunk_bytes));
    });
    return exit_ok;
}

/// Writes `to`: the file `from` decrypted by the loader, tensor by tensor as they land.
void decrypt_file(const fs::path& from, const fs::path& to, const LoadSettings& settings) {
    const auto checkpoint = format::Checkpoint::open({from});
    const format::Header& header = checkpoint.files().front().header;
    if (!format::is_encrypted(header)) throw usage_error(from.string(), "is not encrypted");
    const std::string target = to.string();
    format::write_new_file(to, format::header_json(header, format::plain_metadata(header.metadata)), header.data_size,
                           [&](int fd, std::uint64_t data_offset) {
                               load_checkpoint(checkpoint, settings, true, [&](const TensorView& t, std::span<const std::byte> bytes) {
                                   format::write_at(fd, bytes, data_offset + t.ref->info->begin, target);
                               });
                           });
}

int run_decrypt(const CryptOptions& options) {
    LoadSettings settings = options.settings;
    settings.key = options.key;
    run_work(plan_work(options.in, options.out), [&](const fs::path& from, const fs::path& to) {
        decrypt_file(from, to, settings);
        print("decrypted {}\n", escape_control(to.string()));
    });
    return exit_ok;
}

#else

[[noreturn]] int unavailable() {
    throw unavailable_error("encryption", "this build has no libsodium and OpenSSL (Debian: libsodium-dev, libssl-dev)");
}
int run_keygen(const std::string&) { unavailable(); }
int run_encrypt(const CryptOptions&) { unavailable(); }
int run_decrypt(const CryptOptions&) { unavailable(); }

#endif

void add_in_out(CLI::App& sub, CryptOptions& options) {
    sub.add_option("IN", options.in, "A .safetensors file, or a directory of them")->required()->type_name("IN");
    sub.add_option("OUT", options.out, "Where to write: a file, or a directory (created); must not exist")->required()->type_name("OUT");
    add_key_options(sub, options.key, true);
}

}  // namespace

void add_crypt(CLI::App& app, Action& action) {
    auto keygen = std::make_shared<std::string>();
    auto* gen = app.add_subcommand("keygen", "Write a new random key to KEYFILE (mode 0600), for encrypt, decrypt and load --key-file");
    gen->add_option("KEYFILE", *keygen, "The file to create; never overwritten")->required();
    gen->callback([keygen, &action] { action = [keygen] { return run_keygen(*keygen); }; });

    auto encrypt = std::make_shared<CryptOptions>();
    auto* enc = app.add_subcommand("encrypt", "Encrypt a checkpoint's tensors; the header stays readable by every safetensors reader");
    enc->footer(
        "Each tensor is cut into chunks, each encrypted and authenticated with AES-256-GCM (where the CPU has\n"
        "AES instructions) or XChaCha20-Poly1305. Names, dtypes and shapes stay visible (docs/integrity.md).\n");
    add_in_out(*enc, *encrypt);
    enc->add_option("--cipher", encrypt->cipher, "aes-256-gcm, xchacha20-poly1305, or auto")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "aes-256-gcm", "xchacha20-poly1305"}));
    enc->add_option("--chunk-kib", encrypt->chunk_kib, "Bytes each tag authenticates, in KiB: a power of two from 4 to 65536")
        ->capture_default_str()
        ->check(CLI::IsMember({4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536}));
    enc->callback([encrypt, &action] { action = [encrypt] { return run_encrypt(*encrypt); }; });

    auto decrypt = std::make_shared<CryptOptions>();
    decrypt->settings.device = "cpu";
    auto* dec = app.add_subcommand("decrypt", "Write an encrypted checkpoint back in clear, every chunk authenticated");
    add_in_out(*dec, *decrypt);
    dec->callback([decrypt, &action] { action = [decrypt] { return run_decrypt(*decrypt); }; });
}

}  // namespace instanttensor::cli
