// tools/loading.cpp: runs the loader for `load` and `hash` (see loading.hpp).
#include "loading.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include "cli.hpp"

namespace instanttensor::cli {
namespace {

using clock_type = std::chrono::steady_clock;

/// A one-line progress bar on stderr, redrawn at most ten times a second; silent when stderr is
/// not a terminal, so logs and pipes get no control characters.
class ProgressBar {
public:
    ProgressBar(std::uint64_t total, bool enabled) : total_(total), enabled_(enabled && ::isatty(2) == 1) {}
    ~ProgressBar() {
        if (drawn_) std::fputs("\r\033[K", stderr);
    }

    void update(std::uint64_t done) {
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
                   std::string(static_cast<std::size_t>(width - filled), ' '), fraction * 100, human_bytes(done),
                   human_bytes(total_), seconds > 0 ? static_cast<double>(done) / seconds / 1e9 : 0.0);
        std::fflush(stderr);
    }

private:
    std::uint64_t total_;
    bool enabled_;
    bool drawn_ = false;
    clock_type::time_point start_ = clock_type::now();
    clock_type::time_point last_{};
};

std::uint64_t peak_rss() {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    return static_cast<std::uint64_t>(usage.ru_maxrss) * 1024;
}

DirectIo parse_direct(const std::string& s) {
    return s == "on" ? DirectIo::on : s == "off" ? DirectIo::off : DirectIo::automatic;
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

template <class Loader>
void fill_report(LoadReport& report, const Loader& loader) {
    report.backend = std::string(loader.storage().name());
    report.fallback = loader.storage().fallback_reason();
    report.direct_files = loader.storage().direct_files();
    report.stats = loader.stats();
}

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
    sub.add_option("--backend", settings.backend, "Storage backend: auto (io_uring, else pread), uring, pread or memory")
        ->type_name("BACKEND")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "uring", "pread", "memory"}));
    sub.add_option("--direct", settings.direct,
                   "O_DIRECT: auto (for files not in the page cache), on, or off (always buffered)")
        ->type_name("MODE")
        ->capture_default_str()
        ->check(CLI::IsMember({"auto", "on", "off"}));
    sub.add_option("--staging-mib", settings.staging_mib, "Staging memory (pinned for a GPU load), in MiB")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 20));
    sub.add_option("--slot-mib", settings.slot_mib, "Largest single read (one staging slot), in MiB; at most half the staging")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(1, 1 << 12));
    sub.add_option("--copy-streams", settings.copy_streams, "GPU loads: CUDA streams taking turns at the copies")
        ->type_name("N")
        ->capture_default_str()
        ->check(CLI::Range(1, 8));
}

LoadReport load_checkpoint(const format::Checkpoint& checkpoint, const LoadSettings& settings, bool want_host_bytes,
                           const TensorConsumer& consume) {
    const storage::automatic::Options storage{*storage::parse_backend(settings.backend), parse_direct(settings.direct)};
    LoadOptions options;
    options.staging_bytes = settings.staging_mib << 20;
    // Two slots at least, so that a read and a copy overlap.
    options.slot_bytes = std::min<std::uint64_t>(settings.slot_mib << 20, std::max<std::uint64_t>(options.staging_bytes / 2, 1 << 20));

    LoadReport report;
    std::string device = settings.device;
#if INSTANTTENSOR_HAS_CUDA
    if (device == "auto") device = detail::device_count() > 0 ? "0" : "cpu";
#else
    if (device == "auto") device = "cpu";
#endif
    if (device == "cpu") {
        report.device = "cpu";
        auto loader = load_to_host(checkpoint, options, storage);
        drain(loader, checkpoint, settings, consume,
              [](const TensorView& t) { return std::span<const std::byte>(t.data); }, [] {});
        fill_report(report, loader);
        report.window_bytes = loader.sink().window_bytes();
        report.peak_rss_bytes = peak_rss();
        return report;
    }
#if INSTANTTENSOR_HAS_CUDA
    const int ordinal = std::stoi(device);
    if (ordinal >= detail::device_count())
        throw unavailable_error("cuda:" + device, detail::device_count() == 0 ? "no CUDA device on this machine; use --device cpu"
                                                                            : "no such GPU (" + std::to_string(detail::device_count()) + " present)");
    report.device = "cuda:" + device;
    std::size_t free_at_start = 0, free_now = 0, total = 0;
    {
        detail::DeviceGuard guard(ordinal);
        cudaFree(nullptr);  // create the context first, so that it does not count as the load's memory
        INSTANTTENSOR_CUDA_CHECK(cudaMemGetInfo(&free_at_start, &total));
    }
    std::size_t lowest_free = free_at_start;
    std::vector<std::byte> host;
    auto loader = load_to_device(checkpoint, {.device = ordinal, .copy_streams = settings.copy_streams}, options, storage);
    auto next_sample = clock_type::now();
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
            // cudaMemGetInfo asks the driver: sample it every 20 ms, not at every tensor.
            if (clock_type::now() < next_sample) return;
            next_sample = clock_type::now() + std::chrono::milliseconds(20);
            detail::DeviceGuard guard(ordinal);
            if (cudaMemGetInfo(&free_now, &total) == cudaSuccess) lowest_free = std::min(lowest_free, free_now);
        });
    fill_report(report, loader);
    report.window_bytes = loader.sink().ring_bytes();
    report.peak_device_bytes = free_at_start - lowest_free;
    report.peak_rss_bytes = peak_rss();
    return report;
#else
    throw unavailable_error("--device " + device, "this build has no CUDA; use --device cpu");
#endif
}

}  // namespace instanttensor::cli
