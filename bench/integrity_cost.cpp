// What verifying and decrypting cost a load: the same load plain, with LoadOptions::verify, with
// LoadOptions::verify_files, and of the checkpoint encrypted with LoadOptions::key, side by side.
//
//   instanttensor_bench_integrity [--runs N] [--device cpu|N] [--threads T]... [--decrypt-threads T]...
//                                 [--encrypted DIR] [--cold-only|--warm-only] PATH...
//
// For warm (page cache) and cold (pages dropped first) in turn, runs in rounds: a plain load, a
// verified one for each --threads (digesting threads; default: the library's default), then, in a
// build with libsodium and OpenSSL, one hashing whole files (verify_files, the default threads)
// and one of the encrypted copy for each --decrypt-threads, each to
// host memory (load_to_host, touching a byte per page) or, with --device N, to GPU N
// (load_to_device). Digests are taken once beforehand, by a plain load (the files' SHA-256 by
// reading each file); the encrypted copy is
// written once beforehand (format::encrypt_file, the default cipher and chunk) into --encrypted
// (default: PATH.bench-encrypted beside the first PATH, on the same disk) and removed at the end.
// Prints, per load, the median GB/s of the rounds and their range, and the median of each round's
// time over the plain load's.
#include <instanttensor/detail/xxh3.hpp>
#include <instanttensor/format/encryption.hpp>
#include <instanttensor/loader.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "raw_read.hpp"

namespace it = instanttensor;
using clock_type = std::chrono::steady_clock;

namespace {

struct Settings {
    int runs = 5;
    int device = -1;  // -1: host memory
    std::vector<unsigned> threads, decrypt_threads;
    std::filesystem::path encrypted;
    bool warm = true, cold = true;
};

/// One load of the rounds: its name, what it loads, how.
struct Load {
    std::string name;
    const it::format::Checkpoint* checkpoint;
    it::LoadOptions options;
};

#if INSTANTTENSOR_HAS_CRYPTO
/// Writes every file of `checkpoint` encrypted under `key` into `directory` (created), the index
/// copied; the encrypted checkpoint, opened as the plain one was from `paths`.
it::format::Checkpoint encrypt_copy(const it::format::Checkpoint& checkpoint, const std::vector<std::filesystem::path>& paths,
                                    const std::filesystem::path& directory, const it::format::Key& key) {
    namespace fs = std::filesystem;
    fs::create_directories(directory);
    std::vector<fs::path> copies;
    for (const auto& file : checkpoint.files())
        it::format::encrypt_file(file.path, directory / file.path.filename(), key);
    for (const auto& p : paths) {
        if (fs::is_directory(p)) {
            for (const auto& entry : fs::directory_iterator(p))
                if (entry.path().extension() == ".json") fs::copy_file(entry.path(), directory / entry.path().filename());
            copies.push_back(directory);
        } else {
            if (p.extension() == ".json") fs::copy_file(p, directory / p.filename());
            copies.push_back(directory / p.filename());
        }
    }
    return it::format::Checkpoint::open(copies);
}
#endif

/// Seconds to load every tensor of `checkpoint` with `options`.
double timed_load(const it::format::Checkpoint& checkpoint, const Settings& settings, const it::LoadOptions& options) {
    const auto start = clock_type::now();
    std::uint64_t touched = 0;
    if (settings.device < 0) {
        for (const auto& t : it::load_to_host(checkpoint, options))
            for (std::size_t i = 0; i < t.data.size(); i += 4096) touched += static_cast<std::uint8_t>(t.data[i]);
    } else {
#if INSTANTTENSOR_HAS_CUDA
        it::sink::device_ring::Options ring;
        ring.device = settings.device;
        for (const auto& t : it::load_to_device(checkpoint, ring, options)) touched += t.data.size();
#else
        throw it::unavailable_error("--device", "this build has no CUDA");
#endif
    }
    if (touched == 0xdeadbeef) std::puts("");
    return std::chrono::duration<double>(clock_type::now() - start).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
    Settings settings;
    std::vector<std::filesystem::path> paths;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--runs" && i + 1 < argc) settings.runs = std::max(1, std::atoi(argv[++i]));
        else if (a == "--device" && i + 1 < argc) {
            const std::string d = argv[++i];
            settings.device = d == "cpu" ? -1 : std::atoi(d.c_str());
        } else if (a == "--threads" && i + 1 < argc) settings.threads.push_back(static_cast<unsigned>(std::atoi(argv[++i])));
        else if (a == "--decrypt-threads" && i + 1 < argc) settings.decrypt_threads.push_back(static_cast<unsigned>(std::atoi(argv[++i])));
        else if (a == "--encrypted" && i + 1 < argc) settings.encrypted = argv[++i];
        else if (a == "--cold-only") settings.warm = false;
        else if (a == "--warm-only") settings.cold = false;
        else paths.emplace_back(a);
    }
    if (paths.empty()) {
        std::fprintf(stderr, "usage: instanttensor_bench_integrity [--runs N] [--device cpu|N] [--threads T]... [--decrypt-threads T]...\n"
                             "                                     [--encrypted DIR] [--cold-only|--warm-only] PATH...\n");
        return 2;
    }
    if (settings.threads.empty()) settings.threads.push_back(it::pipeline::default_verify_threads());
#if INSTANTTENSOR_HAS_CRYPTO
    if (settings.decrypt_threads.empty()) settings.decrypt_threads.push_back(it::pipeline::default_decrypt_threads());
#endif
    if (settings.encrypted.empty()) settings.encrypted = paths.front().string() + ".bench-encrypted";
    struct Cleanup {
        std::filesystem::path directory;
        bool made = false;
        ~Cleanup() {
            std::error_code ignored;
            if (made) std::filesystem::remove_all(directory, ignored);
        }
    } cleanup{settings.encrypted};
    try {
        const auto checkpoint = it::format::Checkpoint::open(paths);
        it::LoadOptions plain;
        it::format::TensorDigests digests("the first load");
        for (const auto& t : it::load_to_host(checkpoint, plain)) digests.add(std::string(t.name), it::detail::xxh3(t.data));
        std::vector<Load> loads{{"plain", &checkpoint, plain}};
        for (unsigned t : settings.threads) {
            Load verified{"verify, " + std::to_string(t) + " thread(s)", &checkpoint, {}};
            verified.options.verify = digests;
            verified.options.verify_threads = t;
            loads.push_back(verified);
        }
#if INSTANTTENSOR_HAS_CRYPTO
        Load hashed{"verify files (SHA-256)", &checkpoint, {}};
        hashed.options.verify_files = it::format::FileDigests("sha256 of each file");
        for (const auto& file : checkpoint.files()) {
            std::ifstream in(file.path, std::ios::binary);
            const std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
            hashed.options.verify_files->add(file.path.string(),
                                             it::detail::sha256({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()}));
        }
        loads.push_back(hashed);
        if (std::filesystem::exists(settings.encrypted))
            throw it::usage_error(settings.encrypted.string(), "exists: the encrypted copy goes there (--encrypted)");
        cleanup.made = true;
        const auto key = std::make_shared<const it::format::Key>(it::format::Key::generate());
        const auto encrypted = encrypt_copy(checkpoint, paths, settings.encrypted, *key);
        for (unsigned t : settings.decrypt_threads) {
            Load decrypted{"decrypt, " + std::to_string(t) + " thread(s)", &encrypted, {}};
            decrypted.options.key = key;
            decrypted.options.decrypt_threads = t;
            loads.push_back(decrypted);
        }
        std::printf("encrypted copy: %s (%s, chunks of %llu bytes)\n", settings.encrypted.c_str(),
                    std::string(it::format::cipher_name(it::format::preferred_cipher())).c_str(),
                    static_cast<unsigned long long>(it::format::default_chunk_bytes));
#endif
        const double gb = static_cast<double>(checkpoint.total_bytes()) / 1e9;
        std::printf("checkpoint: %zu files, %zu tensors, %.2f GB; to %s; median [range] of %d rounds\n", checkpoint.files().size(),
                    checkpoint.tensors().size(), gb, settings.device < 0 ? "host memory" : ("cuda:" + std::to_string(settings.device)).c_str(),
                    settings.runs);
        std::printf("%-5s %-22s %22s %26s\n", "cache", "load", "GB/s", "time / plain");
        for (const bool cold : {false, true}) {
            if ((cold && !settings.cold) || (!cold && !settings.warm)) continue;
            std::vector<std::vector<double>> seconds(loads.size());
            for (int r = 0; r < settings.runs; ++r)
                for (std::size_t l = 0; l < loads.size(); ++l) {
                    if (cold) bench::drop_cache(*loads[l].checkpoint);
                    seconds[l].push_back(timed_load(*loads[l].checkpoint, settings, loads[l].options));
                }
            for (std::size_t l = 0; l < loads.size(); ++l) {
                std::vector<double> ratios;
                for (int r = 0; r < settings.runs; ++r) ratios.push_back(seconds[l][r] / seconds[0][r]);
                const auto [fastest, slowest] = std::minmax_element(seconds[l].begin(), seconds[l].end());
                const std::string& name = loads[l].name;
                std::printf("%-5s %-22s %8.2f [%5.2f-%5.2f] %12.3f [%.3f-%.3f]\n", cold ? "cold" : "warm", name.c_str(),
                            gb / median(seconds[l]), gb / *slowest, gb / *fastest, median(ratios),
                            *std::min_element(ratios.begin(), ratios.end()), *std::max_element(ratios.begin(), ratios.end()));
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "instanttensor_bench_integrity: %s\n", e.what());
        return 1;
    }
}
