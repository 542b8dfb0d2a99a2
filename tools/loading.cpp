// tools/loading.cpp: runs the loader for `load` and `hash` (see loading.hpp).
#include "loading.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli.hpp"
#include "instanttensor/detail/xxh3.hpp"
#include "splits.hpp"

namespace instanttensor::cli {
namespace {

using clock_type = std::chrono::steady_clock;

std::uint64_t peak_rss() {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;
}

/// Runs any loader to the end, feeding `consume`; `host_copy` turns a view into host bytes.
template <class Loader, class HostCopy, class Sample>
void drain(Loader& loader, const format::Checkpoint& checkpoint, const LoadSettings& settings,
           const TensorConsumer& consume, HostCopy&& host_copy, Sample&& sample) {
    ProgressBar bar(checkpoint.total_bytes(), settings.progress);
    std::uint64_t done = 0;
    for (const auto& t : loader) {
        consume(t, host_copy(t));
        done += t.data.size();
        bar.update(done);
        sample();
    }
}

/// Fills `report` from a loader that has yielded its last tensor (so, before it and its memory go).
template <class Loader>
void fill_report(LoadReport& report, const Loader& loader) {
    report.finished = clock_type::now();
    const auto& storage = loader.storage();
    report.backend = std::string(storage.name());
    if constexpr (requires { storage.fallback_reason(); }) report.fallback = storage.fallback_reason();
    if constexpr (requires { storage.direct_files(); }) report.direct_files = storage.direct_files();
    report.stats = loader.stats();
}

/// The same for a FallbackLoader: the loader it chose, and why it chose it.
template <class Preferred, class Fallback, class Sink>
void fill_report(LoadReport& report, const FallbackLoader<Preferred, Fallback, Sink>& loader) {
    loader.visit([&report](const auto& chosen) { fill_report(report, chosen); });
    report.fallback = loader.fallback_reason();
}

#if INSTANTTENSOR_HAS_CUDA
/// Device memory free on GPU `ordinal` now (its context created first, so that the context does
/// not count as the load's memory).
std::size_t device_free(int ordinal) {
    detail::DeviceGuard guard(ordinal);
    std::size_t free = 0, total = 0;
    INSTANTTENSOR_CUDA_CHECK(cudaFree(nullptr));
    INSTANTTENSOR_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return free;
}

/// Runs a GPU loader to the end and fills `report`; `free_before` is the device memory free before
/// the loader was made, against which the peak in use is measured (sampled every 20 ms: it asks
/// the driver).
template <class Loader>
LoadReport run_device_load(Loader& loader, const format::Checkpoint& checkpoint, const LoadSettings& settings,
                           int ordinal, std::size_t free_before, bool want_host_bytes, const TensorConsumer& consume,
                           LoadReport report) {
    std::size_t lowest_free = device_free(ordinal);
    std::vector<std::byte> host;
    auto next_sample = clock_type::now() + std::chrono::milliseconds(20);
    drain(
        loader, checkpoint, settings, consume,
        [&](const TensorView& t) {
            if (!want_host_bytes) return std::span<const std::byte>();
            host.resize(t.data.size());
            if (!host.empty())
                INSTANTTENSOR_CUDA_CHECK(cudaMemcpy(host.data(), t.data.data(), host.size(), cudaMemcpyDeviceToHost));
            return std::span<const std::byte>(host);
        },
        [&] {
            if (clock_type::now() < next_sample) return;
            next_sample = clock_type::now() + std::chrono::milliseconds(20);
            lowest_free = std::min(lowest_free, device_free(ordinal));
        });
    fill_report(report, loader);
    report.ring_bytes = loader.sink().ring_bytes();
    report.peak_device_bytes = free_before - std::min(free_before, lowest_free);
    report.peak_rss_bytes = peak_rss();
    return report;
}
#endif

#if INSTANTTENSOR_HAS_NCCL
/// The group's communicator on GPU `ordinal`: a world of one, or rank `rank` of `ranks` with the
/// unique id handed out through the --nccl-id file.
class Communicator {
public:
    Communicator(const LoadSettings& settings, int ordinal) {
        detail::DeviceGuard guard(ordinal);
        ncclUniqueId id{};
        if (settings.nccl_id.empty()) INSTANTTENSOR_NCCL_CHECK(nullptr, ncclGetUniqueId(&id));
        else id = transport::unique_id_through_file(settings.rank, settings.nccl_id);
        INSTANTTENSOR_NCCL_CHECK(nullptr, ncclCommInitRank(&comm_, settings.ranks, id, settings.rank));
    }
    Communicator(const Communicator&) = delete;
    Communicator& operator=(const Communicator&) = delete;
    /// Destroyed while an exception unwinds, the load failed and its transport may have aborted the
    /// communicator (a peer silent past the deadline, an NCCL error), which frees it: then it is
    /// left alone (the process exits).
    ~Communicator() {
        if (std::uncaught_exceptions() == unwinding_) ncclCommDestroy(comm_);
    }
    [[nodiscard]] ncclComm_t get() const noexcept { return comm_; }

private:
    ncclComm_t comm_ = nullptr;
    int unwinding_ = std::uncaught_exceptions();
};
#endif

}  // namespace

void add_load_options(CLI::App& sub, LoadSettings& settings, const std::string& default_device) {
    settings.device = default_device;
    sub.add_option("--device", settings.device, "cpu, a GPU ordinal (0, 1...), or auto: GPU 0 if there is one, else cpu")
        ->type_name("DEVICE")
        ->capture_default_str()
        ->check(CLI::Validator(
            [](std::string& v) -> std::string {
                if (v == "cpu" || v == "auto") return {};
                if (!v.empty() && v.size() < 4 && v.find_first_not_of("0123456789") == std::string::npos) return {};
                return "'" + v + "' is not cpu, auto or a GPU ordinal";
            },
            "", "device"));
    sub.add_option("--backend", settings.backend,
                   "Storage backend: auto (http for a URL; else GDS where nvidia-fs is, else io_uring, else pread), uring, pread, "
                   "memory, gds or http")
        ->type_name("BACKEND")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "uring", "pread", "memory", "gds", "http"}));
    sub.add_option("--direct", settings.direct,
                   "O_DIRECT: auto (for files not in the page cache), on (every file, or an error), or off (always buffered)")
        ->type_name("MODE")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "on", "off"}));
    sub.add_option("--staging-mib", settings.staging_mib,
                   "Staging memory (pinned for a GPU load), in MiB; default " + std::to_string(LoadOptions{}.staging_bytes >> 20) +
                       ", or twice --slot-mib if more, or for a remote checkpoint 2 x --connections x --slot-mib if more")
        ->type_name("N")
        ->check(whole_number(1, 1 << 20));
    CLI::Option* slot = sub.add_option("--slot-mib", settings.slot_mib, "Largest single read (one staging slot), in MiB; at most half the staging")
        ->type_name("N")
        ->capture_default_str()
        ->check(whole_number(std::uint64_t{1}, max_slot_mib));
    sub.add_option("--ring-mib", settings.ring_mib,
                   "Where the tensors land: the host or device ring, in MiB (at least twice the largest tensor); 0 = as the load needs")
        ->type_name("N")
        ->capture_default_str()
        ->check(whole_number(0, 1 << 24));
    sub.add_option("--connections", settings.connections, "Remote checkpoints: ranged GETs in flight (one staging slot each)")
        ->type_name("N")
        ->capture_default_str()
        ->check(whole_number(1, 1024));
    sub.add_option("--stall-timeout", settings.stall_timeout_s,
                   "Remote checkpoints: seconds a response may move under 1 KiB/s before it is failed and tried again")
        ->type_name("S")
        ->capture_default_str()
        ->check(whole_number(1, 86400));
    sub.add_option("--copy-streams", settings.copy_streams, "GPU loads: CUDA streams taking turns at the copies")
        ->type_name("N")
        ->capture_default_str()
        ->check(whole_number(1, 8));

    add_key_options(sub, settings.key, false);

    auto* group = sub.add_option_group("group", "Loading as one rank of an NCCL group (docs/distributed.md)");
    group->add_option("--ranks", settings.ranks, "Load as one of N processes, each reading 1/N; 1 runs the group path on one GPU")
        ->type_name("N")
        ->check(whole_number(1, 4096));
    group->add_option("--rank", settings.rank, "This process's rank, 0 to N-1")->type_name("R")->capture_default_str();
    group->add_option("--nccl-id", settings.nccl_id, "File through which rank 0 hands out the NCCL unique id (remove it before each job)")
        ->type_name("FILE");
    group->add_option("--split", settings.splits,
                      "Split the tensors whose name matches REGEX along dimension DIM across the ranks (repeatable: the first match decides)")
        ->type_name("REGEX=DIM")
        ->check(CLI::Validator(check_split, "", "split"));
    group->add_option("--split-rows", settings.split_rows, "Split the tensors whose name matches this regular expression by rows (--split REGEX=0)")
        ->type_name("REGEX")
        ->check(CLI::Validator(check_regex, "", "regex"));
    group->add_option("--window-mib", settings.window_mib, "Bytes the group reads, then exchanges, at a time")
        ->type_name("N")
        ->capture_default_str()
        ->check(whole_number(1, 1 << 20));
    auto* timeout = group->add_option("--group-timeout", settings.group_timeout_s,
                                      "Seconds without any exchange completing before giving up on the peers (one died or hangs)")
                        ->type_name("S")
                        ->capture_default_str()
                        ->check(whole_number(1, 7 * 24 * 3600));
    sub.parse_complete_callback([&settings, slot, timeout] {
        // Two slots at least, so that a read and a copy overlap: the default slot shrinks to fit
        // a small staging, a slot asked for does not (the default staging grows to fit it).
        if (slot->count() > 0 && settings.staging_mib != 0 && 2 * settings.slot_mib > settings.staging_mib)
            throw CLI::ValidationError("--slot-mib", "must be at most half of --staging-mib");
        if (settings.ranks == 0) {
            if (settings.rank != 0 || !settings.nccl_id.empty() || !settings.splits.empty() || !settings.split_rows.empty() ||
                timeout->count() > 0)
                throw CLI::ValidationError("--rank, --nccl-id, --split, --split-rows and --group-timeout", "need --ranks");
            return;
        }
        if (settings.rank < 0 || settings.rank >= settings.ranks)
            throw CLI::ValidationError("--rank", "must be 0 to " + std::to_string(settings.ranks - 1));
        if (settings.ranks > 1 && settings.nccl_id.empty())
            throw CLI::ValidationError("--nccl-id", "is needed with more than one rank");
        if (settings.device == "cpu") throw CLI::ValidationError("--ranks", "loads over NCCL, into GPU memory: not with --device cpu");
        if (settings.window_mib < settings.slot_mib) throw CLI::ValidationError("--window-mib", "must be at least --slot-mib");
    });
}

ProgressBar::ProgressBar(std::uint64_t total, bool enabled) : total_(total), enabled_(enabled && ::isatty(2) == 1) {}

ProgressBar::~ProgressBar() {
    if (drawn_) std::fputs("\r\033[K", stderr);
}

void ProgressBar::update(std::uint64_t done) {
    if (!enabled_) return;
    const auto now = clock_type::now();
    if (drawn_ && now - last_ < std::chrono::milliseconds(100) && done < total_) return;
    last_ = now;
    drawn_ = true;
    constexpr int width = 30;
    const double fraction = total_ == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total_);
    const int filled = static_cast<int>(fraction * width);
    const double seconds = std::chrono::duration<double>(now - start_).count();
    fmt::print(stderr, "\r[{}{}] {:3.0f}% {} of {}, {:.1f} GB/s\033[K", std::string(static_cast<std::size_t>(filled), '#'),
               std::string(static_cast<std::size_t>(width - filled), ' '), fraction * 100, human_bytes(done), human_bytes(total_),
               seconds > 0 ? static_cast<double>(done) / seconds / 1e9 : 0.0);
    std::fflush(stderr);
}

void add_key_options(CLI::App& sub, KeySource& key, bool required) {
    auto* group = sub.add_option_group("key", "The key of an encrypted checkpoint (docs/integrity.md); never on the command line");
    group->add_option("--key-file", key.file, "File holding the key (`instanttensor keygen` writes one)")->type_name("FILE");
    group->add_option("--key-env", key.environment, "Environment variable holding the key (64 hex digits)")->type_name("NAME");
    group->require_option(required ? 1 : 0, 1);
}

#if INSTANTTENSOR_HAS_CRYPTO
format::Key read_key(const KeySource& source) {
    return source.file.empty() ? format::Key::from_environment(source.environment) : format::Key::read(source.file);
}
#endif

LoadReport load_checkpoint(const format::Checkpoint& checkpoint, const LoadSettings& settings, [[maybe_unused]] bool want_host_bytes,
                           const TensorConsumer& consume) {
    storage::automatic::Options storage{storage::parse_backend(settings.backend).value_or(storage::Backend::automatic),
                                        parse_direct_io(settings.direct).value_or(DirectIo::automatic)};
    storage.remote.connections = settings.connections;
    storage.remote.stall_timeout_s = settings.stall_timeout_s;
    LoadOptions options;
    if (settings.staging_mib != 0) {
        options.staging_bytes = settings.staging_mib << 20;
        // The default slot shrinks to half a small staging (add_load_options refuses such a slot asked for).
        options.slot_bytes = std::min(settings.slot_mib << 20, options.staging_bytes / 2 / detail::page_alignment * detail::page_alignment);
    } else {
        options.slot_bytes = settings.slot_mib << 20;
        options.staging_bytes = std::max(options.staging_bytes, 2 * options.slot_bytes);
        if (checkpoint.remote()) options.staging_bytes = std::max(options.staging_bytes, remote_staging_bytes(storage.remote, options.slot_bytes));
    }
    const std::uint64_t ring_bytes = settings.ring_mib << 20;
    if (!settings.verify_with.empty()) options.verify = format::TensorDigests::read(settings.verify_with);
    else if (settings.verify) options.verify = format::TensorDigests::sealed(checkpoint);
    if (!settings.verify_files.empty()) options.verify_files = format::FileDigests::read(settings.verify_files);
    if (settings.key.given()) {
#if INSTANTTENSOR_HAS_CRYPTO
        options.key = std::make_shared<const format::Key>(read_key(settings.key));
#else
        throw unavailable_error("--key-file, --key-env", "this build cannot decrypt: it has no libsodium and OpenSSL");
#endif
    }

    LoadReport report;
    std::string device = settings.device;
#if INSTANTTENSOR_HAS_CUDA
    if (device == "auto") device = detail::device_count() > 0 ? std::to_string(settings.rank % detail::device_count()) : "cpu";
#else
    if (device == "auto") device = "cpu";
#endif
    if (settings.keep && device != "cpu") throw usage_error("--keep", "keeps every tensor in host memory: load with --device cpu");
    if (device == "cpu") {
        if (settings.ranks > 0) throw unavailable_error("--ranks", "group loads exchange GPU memory over NCCL, and there is no GPU here");
        if (settings.backend == "gds") throw unavailable_error("gds", "GPUDirect Storage reads into GPU memory; use --device N");
        report.device = "cpu";
        auto host_bytes = [](const TensorView& t) { return std::span<const std::byte>(t.data); };
        if (settings.keep) {  // as a runtime keeps its weights, and the Python package's load_file
            std::vector<sink::TensorMemory> kept;
            kept.reserve(checkpoint.tensors().size());
            auto loader = load_into(
                checkpoint,
                [&kept, read = options.slot_bytes](const format::TensorRef& t) { return kept.emplace_back(t, t.nbytes(), read).span(); },
                options, storage);
            drain(loader, checkpoint, settings, consume, host_bytes, [] {});
            fill_report(report, loader);
            for (const auto& memory : kept) report.kept_bytes += memory.span().size();
        } else {
            auto loader = load_to_host(checkpoint, options, storage, ring_bytes);
            drain(loader, checkpoint, settings, consume, host_bytes, [] {});
            fill_report(report, loader);
            report.ring_bytes = loader.sink().ring_bytes();
        }
        report.peak_rss_bytes = peak_rss();
        return report;
    }
#if INSTANTTENSOR_HAS_CUDA
    const int ordinal = std::stoi(device);
    if (ordinal >= detail::device_count())
        throw unavailable_error("cuda:" + device, detail::device_count() == 0 ? "no CUDA device on this machine; use --device cpu"
                                                                            : "no such GPU (" + std::to_string(detail::device_count()) + " present)");
    report.device = "cuda:" + device;
    const std::size_t free_before = device_free(ordinal);
    if (settings.ranks > 0) {
#if INSTANTTENSOR_HAS_NCCL
        if (settings.backend == "gds") throw unavailable_error("gds", "group loads read through pinned staging; use another --backend");
        options.window_bytes = settings.window_mib << 20;
        options.group_timeout = std::chrono::seconds(settings.group_timeout_s);
        if (!settings.splits.empty() || !settings.split_rows.empty())
            options.share = splits_matching(checkpoint, split_patterns(settings.splits, settings.split_rows));
        const Communicator comm(settings, ordinal);
        const detail::Stream stream = [&] {  // on the communicator's GPU, where NCCL runs
            detail::DeviceGuard guard(ordinal);
            return detail::Stream();
        }();
        auto loader = load_distributed(checkpoint, transport::nccl(comm.get(), stream.get()),
                                       options, {.device = ordinal, .ring_bytes = ring_bytes, .copy_streams = settings.copy_streams}, storage);
        report.ranks = settings.ranks;
        return run_device_load(loader, checkpoint, settings, ordinal, free_before, want_host_bytes, consume, report);
#else
        throw unavailable_error("--ranks", "this build has no NCCL");
#endif
    }
    // The library's choice: GDS where it can run, else io_uring, else pread (reported, with why).
    auto loader = load_to_device(checkpoint, {.device = ordinal, .ring_bytes = ring_bytes, .copy_streams = settings.copy_streams},
                                 options, storage);
    return run_device_load(loader, checkpoint, settings, ordinal, free_before, want_host_bytes, consume, report);
#else
    throw unavailable_error("--device " + device, "this build has no CUDA; use --device cpu");
#endif
}

format::TensorDigests digest_checkpoint(const format::Checkpoint& checkpoint, const LoadSettings& settings) {
    format::TensorDigests digests("the loaded bytes");
    load_checkpoint(checkpoint, settings, true, [&](const TensorView& t, std::span<const std::byte> bytes) {
        digests.add(std::string(t.name), detail::xxh3(bytes));
    });
    return digests;
}

}  // namespace instanttensor::cli
