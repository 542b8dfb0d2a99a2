// tools/loading.hpp: how `load` and `hash` run the loader: the options they share, the choice of
// host or GPU loader, the progress bar and the figures a load reports.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/format/digests.hpp"
#include "instanttensor/format/encryption.hpp"
#include "instanttensor/loader.hpp"

namespace CLI {
class App;
}

namespace instanttensor::cli {

/// The largest --slot-mib: one read (storage::uring asks the kernel for at most 1 GiB at once).
inline constexpr std::uint64_t max_slot_mib = 1024;

/// Where the key of an encrypted checkpoint comes from: a file or an environment variable, never the
/// command line (other users see it in ps, shells keep it in history).
struct KeySource {
    std::string file;         ///< --key-file
    std::string environment;  ///< --key-env: the variable's name

    [[nodiscard]] bool given() const noexcept { return !file.empty() || !environment.empty(); }
};

/// Adds --key-file and --key-env (one or the other; `required`: one of them) to `sub`.
void add_key_options(CLI::App& sub, KeySource& key, bool required);

#if INSTANTTENSOR_HAS_CRYPTO
/// The key `source` names (io_error, format_error, usage_error).
format::Key read_key(const KeySource& source);
#endif

/// A one-line progress bar on stderr, redrawn at most ten times a second; silent when stderr is
/// not a terminal, so logs and pipes get no control characters.
class ProgressBar {
public:
    ProgressBar(std::uint64_t total, bool enabled);
    ~ProgressBar();
    ProgressBar(const ProgressBar&) = delete;
    ProgressBar& operator=(const ProgressBar&) = delete;
    void update(std::uint64_t done);

private:
    std::uint64_t total_;
    bool enabled_;
    bool drawn_ = false;
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point last_{};
};

/// Options of a load, as the command line gives them.
struct LoadSettings {
    std::string device;            ///< "cpu", "auto" (GPU 0 if there is one, else cpu) or a GPU ordinal
    std::string backend = "auto";  ///< storage::Backend name
    std::string direct = "auto";   ///< auto | on | off
    /// 0: LoadOptions' default, or more where the load needs it: two slots at least, and for a
    /// remote checkpoint a slot for each connection's GET and as many landing (remote_staging_bytes).
    std::uint64_t staging_mib = 0;
    std::uint64_t slot_mib = LoadOptions{}.slot_bytes >> 20;  ///< the largest single read
    std::uint64_t ring_mib = 0;    ///< where the tensors land: the host or device ring; 0 = as the load needs
    bool keep = false;             ///< host loads: every tensor into memory of its own, kept to the end (no ring)
    unsigned copy_streams = 2;     ///< GPU loads: streams taking turns at host-to-device copies
    bool progress = true;          ///< a progress bar on stderr, if stderr is a terminal
    bool verify = false;           ///< verify every tensor against the checkpoint's seals
    std::string verify_with;       ///< or against this manifest (the `hash` command's output)
    std::string verify_files;      ///< check each file's SHA-256 against this manifest (sha256sum's output)
    KeySource key;                 ///< the key of an encrypted checkpoint, if one is named
    unsigned connections = RemoteOptions{}.connections;          ///< remote checkpoints: GETs in flight
    unsigned stall_timeout_s = RemoteOptions{}.stall_timeout_s;  ///< remote checkpoints: a stalled response fails after this

    // Group loads over NCCL (ranks > 0): this process is rank `rank` of `ranks`.
    int ranks = 0;
    int rank = 0;
    std::string nccl_id;           ///< the file through which rank 0 hands out the NCCL unique id
    std::vector<std::string> splits;  ///< REGEX=DIM each: tensors split along DIM across the ranks
    std::string split_rows;        ///< a regular expression: tensors split by rows (REGEX=0, after splits)
    std::uint64_t window_mib = LoadOptions{}.window_bytes >> 20;
    /// Seconds a rank waits without any of its exchanges completing before it gives up on its peers.
    unsigned group_timeout_s = static_cast<unsigned>(std::chrono::duration_cast<std::chrono::seconds>(LoadOptions{}.group_timeout).count());
};

/// Adds --device, --backend, --direct, --staging-mib, --slot-mib, --ring-mib, --copy-streams,
/// --connections, --stall-timeout and the group
/// options (--ranks, --rank, --nccl-id, --split, --split-rows, --window-mib, --group-timeout) to `sub`, with
/// `default_device`.
void add_load_options(CLI::App& sub, LoadSettings& settings, const std::string& default_device);

/// What a load did.
struct LoadReport {
    std::string device;           ///< "cpu" or "cuda:N"
    std::string backend;          ///< chosen storage backend
    std::string fallback;         ///< why the backends tried before the chosen one were passed over
    std::size_t direct_files = 0; ///< files read with O_DIRECT
    LoadStats stats;
    std::uint64_t ring_bytes = 0;         ///< the sink's memory: the host or device ring
    std::uint64_t kept_bytes = 0;         ///< --keep: the memory of the tensors kept
    std::uint64_t peak_device_bytes = 0;  ///< device memory in use at the peak of the load, over its start
    std::uint64_t peak_rss_bytes = 0;     ///< the process's peak resident memory
    int ranks = 0;                        ///< group loads: the group's size (0: not a group load)
    std::chrono::steady_clock::time_point finished;  ///< when the last tensor landed, before the load's memory was freed
};

/// Called with each tensor as it lands; `host_bytes` holds its bytes in host memory (copied back
/// from the device for a GPU load, only when `want_host_bytes`).
using TensorConsumer = std::function<void(const TensorView& tensor, std::span<const std::byte> host_bytes)>;

/// Loads every tensor of `checkpoint` as `settings` say, calling `consume` for each.
LoadReport load_checkpoint(const format::Checkpoint& checkpoint, const LoadSettings& settings,
                           bool want_host_bytes, const TensorConsumer& consume);

/// The XXH3-64 digest of every tensor as the loader delivers it (`hash`, `seal`).
format::TensorDigests digest_checkpoint(const format::Checkpoint& checkpoint, const LoadSettings& settings);

}  // namespace instanttensor::cli
