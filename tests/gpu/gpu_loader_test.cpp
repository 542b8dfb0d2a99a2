// Loading to the GPU: every backend that runs here × both device sinks gives each tensor's exact
// bytes (XXH3 of the bytes copied back == XXH3 of the file's bytes), device memory stays within the
// ring, a load that fails midway leaks neither device nor pinned memory, and transport::nccl with
// a world of one runs the group path end to end: on a non-blocking communicator too, through a
// read error mid-load (after which the communicator still works), and past an NCCL call that
// fails inside a group (which leaves no group open). A verified load checks the bytes in pinned
// staging and never yields a tensor whose digest differs.
#include <instanttensor/loader.hpp>
#include <instanttensor/format/encryption.hpp>
#include <instanttensor/format/writer.hpp>

#include <doctest/doctest.h>
#include <xxhash.h>

#include "faulty.hpp"
#include "temp_dir.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace it = instanttensor;
namespace fs = std::filesystem;

namespace {

using instanttensor_test::TempDir;

void fill_random(const it::format::TensorSpec& t, std::span<std::byte> out) {
    std::uint64_t x = std::hash<std::string>{}(t.name) | 1;
    for (auto& b : out) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        b = static_cast<std::byte>(x);
    }
}

/// XXH3 of each tensor's bytes, read straight from the files.
std::map<std::string, XXH64_hash_t> file_hashes(const it::format::Checkpoint& checkpoint) {
    std::map<std::string, XXH64_hash_t> hashes;
    for (const auto& t : checkpoint.tensors()) {
        std::vector<std::byte> bytes(t.nbytes());
        auto fd = it::detail::open_read_only(checkpoint.files()[t.file].path);
        it::detail::read_exact(fd.get(), bytes, t.file_offset, "test");
        hashes[t.name()] = XXH3_64bits(bytes.data(), bytes.size());
    }
    return hashes;
}

XXH64_hash_t device_hash(std::span<const std::byte> device_bytes) {
    std::vector<std::byte> host(device_bytes.size());
    if (!host.empty())
        INSTANTTENSOR_CUDA_CHECK(cudaMemcpy(host.data(), device_bytes.data(), host.size(), cudaMemcpyDeviceToHost));
    return XXH3_64bits(host.data(), host.size());
}

/// A checkpoint with what breaks loaders: odd offsets, tiny tensors, empty ones, one tensor larger
/// than the staging ring, three shards.
fs::path write_awkward_checkpoint(const fs::path& dir, std::uint64_t big_bytes) {
    std::vector<it::format::TensorSpec> specs;
    for (int i = 0; i < 200; ++i) specs.push_back({"tiny." + std::to_string(i), it::format::Dtype::U8, {std::uint64_t(1 + i % 37)}});
    specs.push_back({"empty", it::format::Dtype::F32, {0, 7}});
    specs.push_back({"scalar", it::format::Dtype::BF16, {}});
    specs.push_back({"big", it::format::Dtype::U8, {big_bytes}});
    for (int i = 0; i < 20; ++i) specs.push_back({"mid." + std::to_string(i), it::format::Dtype::F16, {333, std::uint64_t(100 + i)}});
    return it::format::write_sharded_checkpoint(dir, specs, 3, fill_random);
}

std::uint64_t device_free() {
    std::size_t free = 0, total = 0;
    INSTANTTENSOR_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    return free;
}

std::uint64_t resident_bytes() {
    std::ifstream status("/proc/self/statm");
    std::uint64_t pages = 0, resident = 0;
    status >> pages >> resident;
    return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

template <class Loader>
std::size_t check_all(Loader& loader, const std::map<std::string, XXH64_hash_t>& expected) {
    std::size_t n = 0;
    for (const auto& t : loader) {
        CHECK(t.memory == it::MemoryKind::device);
        REQUIRE(expected.count(std::string(t.name)) == 1);
        CHECK_MESSAGE(device_hash(t.data) == expected.at(std::string(t.name)), t.name);
        ++n;
    }
    return n;
}

/// A destination function that gives each tensor a device buffer of its own, kept in `owned`.
it::sink::placement::Destination into_new_buffers(std::vector<it::detail::DeviceBuffer>& owned) {
    return [&owned](const it::format::TensorRef& t) {
        owned.emplace_back(t.nbytes(), "test buffers");
        return std::span<std::byte>(owned.back().data(), t.nbytes());
    };
}

/// The awkward checkpoint with a 3 MB tensor, written to a temporary directory, and its hashes.
struct AwkwardCheckpoint {
    TempDir dir;
    it::format::Checkpoint checkpoint = it::format::Checkpoint::open(write_awkward_checkpoint(dir.path(), 3'000'001));
    std::map<std::string, XXH64_hash_t> expected = file_hashes(checkpoint);
};

constexpr it::storage::Backend backends[] = {it::storage::Backend::uring, it::storage::Backend::pread,
                                              it::storage::Backend::memory};

void check_checkpoint(const fs::path& path, it::LoadOptions options) {
    const auto checkpoint = it::format::Checkpoint::open(path);
    const auto expected = file_hashes(checkpoint);
    for (const auto backend : backends)
        for (const auto direct : {it::DirectIo::off, it::DirectIo::on}) {
            CAPTURE(it::storage::to_string(backend));
            CAPTURE(static_cast<int>(direct));
            auto ring = it::load_to_device(checkpoint, {}, options, {backend, direct});
            CHECK(check_all(ring, expected) == checkpoint.tensors().size());

            std::vector<it::detail::DeviceBuffer> owned;
            auto placed = it::load_into_device(checkpoint, into_new_buffers(owned), {}, options, {backend, direct});
            CHECK(check_all(placed, expected) == checkpoint.tensors().size());
        }
}

/// The fixtures directory: $INSTANTTENSOR_FIXTURES_DIR when set (a build carried to another
/// machine), else the source tree's.
fs::path fixtures_dir() {
    const char* env = std::getenv("INSTANTTENSOR_FIXTURES_DIR");
    return env != nullptr && *env != '\0' ? fs::path(env) : fs::path(INSTANTTENSOR_FIXTURES_DIR);
}

}  // namespace

TEST_CASE("every fixture loads to the device bit-exact, for every backend and both device sinks") {
    for (const auto& entry : fs::recursive_directory_iterator(fixtures_dir())) {
        const auto name = entry.path().filename().string();
        if (entry.path().parent_path().filename() == "bad" || entry.path().extension() != ".safetensors") continue;
        if (name.find("model-") == 0) continue;  // shards are loaded through their index below
        CAPTURE(entry.path().string());
        check_checkpoint(entry.path(), {});
    }
    for (const auto& entry : fs::recursive_directory_iterator(fixtures_dir()))
        if (entry.path().filename() == "model.safetensors.index.json") check_checkpoint(entry.path(), {});
}

TEST_CASE("odd offsets, tiny and empty tensors and a tensor larger than the staging ring") {
    TempDir dir;
    const auto index = write_awkward_checkpoint(dir.path(), 3'000'001);
    it::LoadOptions small_staging;
    small_staging.staging_bytes = 1 << 20;
    small_staging.slot_bytes = 256 << 10;
    check_checkpoint(index, small_staging);
    check_checkpoint(index, {});
}

TEST_CASE("a multi-GB checkpoint loads bit-exact and device memory stays within the ring") {
    TempDir dir;
    std::vector<it::format::TensorSpec> specs;
    for (int layer = 0; layer < 8; ++layer)
        for (const char* w : {"q", "k", "v", "o", "gate", "up", "down"})
            specs.push_back({"layers." + std::to_string(layer) + "." + w, it::format::Dtype::BF16,
                             {4096, std::string(w).size() > 1 ? 7168u : 4096u}});
    const auto index = it::format::write_sharded_checkpoint(dir.path(), specs, 4, fill_random);
    const auto checkpoint = it::format::Checkpoint::open(index);
    REQUIRE(checkpoint.total_bytes() > 2'000'000'000);
    const auto expected = file_hashes(checkpoint);

    const std::uint64_t before = device_free();
    auto loader = it::load_to_device(checkpoint);
    std::uint64_t lowest = before;
    std::size_t n = 0;
    for (const auto& t : loader) {
        lowest = std::min(lowest, device_free());
        CHECK(device_hash(t.data) == expected.at(std::string(t.name)));
        ++n;
    }
    CHECK(n == checkpoint.tensors().size());
    const std::uint64_t ring = loader.sink().ring_bytes();
    CHECK(ring <= 3 * (loader.plan().largest_tensor + it::sink::device_ring::tensor_alignment));
    // cudaMalloc rounds to 2 MiB pages; streams and events take a few MiB more.
    CHECK(before - lowest <= ring + (64ull << 20));
    CHECK(loader.stats().staging_bytes <= it::LoadOptions{}.staging_bytes);
}

TEST_CASE("a load that fails midway frees its device and pinned memory") {
    TempDir dir;
    const auto index = write_awkward_checkpoint(dir.path(), 40'000'000);
    const auto checkpoint = it::format::Checkpoint::open(index);
    const std::uint64_t device_before = device_free();
    const std::uint64_t rss_before = resident_bytes();
    for (int round = 0; round < 10; ++round) {
        std::size_t placed = 0;
        std::vector<it::detail::DeviceBuffer> owned;
        auto loader = it::load_into_device(checkpoint, [&](const it::format::TensorRef& t) {
            if (++placed == 150) throw it::usage_error("test", "no room for " + t.name());
            owned.emplace_back(t.nbytes(), "test buffers");
            return std::span<std::byte>(owned.back().data(), t.nbytes());
        });
        CHECK_THROWS_WITH_AS([&] { for ([[maybe_unused]] const auto& t : loader) {} }(), doctest::Contains("no room"), it::error);
        auto ring = it::load_to_device(checkpoint, {}, {}, {it::storage::Backend::pread});
        auto it_ = ring.begin();
        ++it_;  // abandon the load with reads and copies in flight
    }
    CHECK(device_free() + (16ull << 20) >= device_before);
    // Ten rounds of 256 MiB pinned staging each would show as gigabytes here if any leaked.
    CHECK(resident_bytes() < rss_before + (512ull << 20));
}

TEST_CASE("GPUDirect Storage loads bit-exact where it runs, and says which part refused where not") {
    const AwkwardCheckpoint awkward;
    const auto& checkpoint = awkward.checkpoint;
    const auto& expected = awkward.expected;
    try {
        it::Loader<it::storage::gds, it::transport::single, it::sink::device_ring> loader(
            checkpoint, it::storage::gds{}, {}, it::sink::device_ring{});
        CHECK(check_all(loader, expected) == checkpoint.tensors().size());
        MESSAGE("GDS ran here");
    } catch (const it::unavailable_error& e) {
        const std::string what = e.what();
        MESSAGE("GDS unavailable here: " << what);
        CHECK((what.find("cuFile") != std::string::npos || what.find("libcufile") != std::string::npos ||
               what.find("GPUDirect") != std::string::npos));
        CHECK(it::storage::gds::available() == std::filesystem::exists("/proc/driver/nvidia-fs"));
    }
}

TEST_CASE("load_to_device takes GPUDirect Storage where it runs, else the host backends, and says why") {
    const AwkwardCheckpoint awkward;
    const auto& checkpoint = awkward.checkpoint;
    auto loader = it::load_to_device(checkpoint);
    CHECK(check_all(loader, awkward.expected) == checkpoint.tensors().size());
    MESSAGE("load_to_device read with " << loader.backend() << "; passed over: " << loader.fallback_reason());
    if (!it::storage::gds::available()) {
        CHECK(loader.backend() != "gds");  // not even tried: nothing to pass over
        CHECK(loader.fallback_reason().find("gds") == std::string::npos);
    } else if (loader.backend() != "gds") {
        CHECK(loader.fallback_reason().find("gds: ") == 0);
    }
    // GDS alone: it loads where it runs, else the refusal names the part that refused.
    try {
        auto only = it::load_to_device(checkpoint, {}, {}, {it::storage::Backend::gds});
        CHECK(only.backend() == "gds");
        CHECK(check_all(only, awkward.expected) == checkpoint.tensors().size());
    } catch (const it::unavailable_error& e) {
        MESSAGE("GDS unavailable here: " << e.what());
        CHECK_FALSE(std::string(e.what()).empty());
    }
    // A host backend asked for is the one used.
    auto pread = it::load_to_device(checkpoint, {}, {}, {it::storage::Backend::pread});
    CHECK(pread.backend() == "pread");
    CHECK(check_all(pread, awkward.expected) == checkpoint.tensors().size());
}

#if INSTANTTENSOR_HAS_NCCL
/// A communicator of one rank on device 0: the group path end to end (pinned staging, uploads
/// into device window buffers, NCCL calls, device-to-device landing) on a one-GPU machine.
class SoloCommunicator {
public:
    SoloCommunicator() {
        int device = 0;
        INSTANTTENSOR_NCCL_CHECK(nullptr, ncclCommInitAll(&comm_, 1, &device));
    }
    /// A non-blocking communicator (config.blocking = 0): its calls may answer ncclInProgress.
    struct NonBlocking {};
    explicit SoloCommunicator(NonBlocking) {
        INSTANTTENSOR_CUDA_CHECK(cudaSetDevice(0));
        ncclUniqueId id{};
        INSTANTTENSOR_NCCL_CHECK(nullptr, ncclGetUniqueId(&id));
        ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
        config.blocking = 0;
        const ncclResult_t started = ncclCommInitRankConfig(&comm_, 1, id, 0, &config);
        if (started != ncclInProgress) INSTANTTENSOR_NCCL_CHECK(nullptr, started);
        ncclResult_t state = ncclInProgress;
        while (state == ncclInProgress) INSTANTTENSOR_NCCL_CHECK(comm_, ncclCommGetAsyncError(comm_, &state));
        INSTANTTENSOR_NCCL_CHECK(comm_, state);
    }
    SoloCommunicator(const SoloCommunicator&) = delete;
    SoloCommunicator& operator=(const SoloCommunicator&) = delete;
    ~SoloCommunicator() { ncclCommDestroy(comm_); }
    ncclComm_t get() const { return comm_; }

private:
    ncclComm_t comm_ = nullptr;
};

TEST_CASE("transport::nccl with world size 1: group loads are bit-exact through both device sinks") {
    const AwkwardCheckpoint awkward;
    const auto& checkpoint = awkward.checkpoint;
    const auto& expected = awkward.expected;
    SoloCommunicator comm;
    it::detail::Stream stream;
    it::transport::nccl group(comm.get(), stream.get());
    CHECK(group.rank() == 0);
    CHECK(group.size() == 1);

    it::LoadOptions small;  // many windows, tensors larger than one
    small.slot_bytes = 256 << 10;
    small.staging_bytes = 4 << 20;
    small.window_bytes = 1 << 20;
    for (const auto& options : {it::LoadOptions{}, small}) {
        for (const auto backend : backends) {
            CAPTURE(it::storage::to_string(backend));
            auto loader = it::load_distributed(checkpoint, it::transport::nccl(comm.get(), stream.get()), options, {},
                                               {backend, it::DirectIo::on});
            CHECK(check_all(loader, expected) == checkpoint.tensors().size());
            CHECK(loader.stats().received_bytes == 0);

            std::vector<it::detail::DeviceBuffer> owned;
            auto placed = it::load_distributed_into(checkpoint, it::transport::nccl(comm.get(), stream.get()),
                                                    into_new_buffers(owned), options, {}, {backend});
            CHECK(check_all(placed, expected) == checkpoint.tensors().size());
        }
    }
}

TEST_CASE("transport::nccl with world size 1 and GPUDirect Storage: reads land in the window buffers, where GDS runs") {
    const AwkwardCheckpoint awkward;
    const auto& checkpoint = awkward.checkpoint;
    const auto& expected = awkward.expected;
    SoloCommunicator comm;
    it::detail::Stream stream;
    try {
        it::Loader<it::storage::gds, it::transport::nccl, it::sink::device_ring> loader(
            checkpoint, it::storage::gds{}, it::transport::nccl(comm.get(), stream.get()), it::sink::device_ring{});
        CHECK(check_all(loader, expected) == checkpoint.tensors().size());
        MESSAGE("GDS group load ran here");
    } catch (const it::unavailable_error& e) {
        MESSAGE("GDS unavailable here: " << e.what());
    }
}

TEST_CASE("transport::nccl with world size 1: every exchange mode runs and leaves the window intact") {
    SoloCommunicator comm;
    it::detail::Stream stream;
    it::transport::nccl group(comm.get(), stream.get());
    const auto gather = group.gather(0x0123456789abcdefull);
    while (!group.done(gather)) {}
    CHECK(group.gathered(gather) == std::vector<std::uint64_t>{0x0123456789abcdefull});
    constexpr std::uint64_t bytes = 3 * 4096;
    std::vector<std::byte> host(bytes);
    for (std::size_t i = 0; i < host.size(); ++i) host[i] = static_cast<std::byte>(i * 7 + 1);
    it::detail::DeviceBuffer window(bytes, "test window");
    INSTANTTENSOR_CUDA_CHECK(cudaMemcpy(window.data(), host.data(), bytes, cudaMemcpyHostToDevice));
    const std::vector<it::Transfer> broadcasts{{0, it::Transfer::everyone, 0, 4096}, {0, it::Transfer::everyone, 4096, 8192}};
    const it::WindowExchange exchanges[] = {
        {it::ExchangeMode::none, bytes, bytes, {}, {}},
        {it::ExchangeMode::all_gather, bytes, bytes, {}, {}},
        {it::ExchangeMode::broadcasts, bytes, bytes, broadcasts, {}},
    };
    for (const auto& x : exchanges) {
        CAPTURE(static_cast<int>(x.mode));
        const auto ticket = group.exchange(window.data(), x);
        while (!group.done(ticket)) {}
        std::vector<std::byte> back(bytes);
        INSTANTTENSOR_CUDA_CHECK(cudaMemcpy(back.data(), window.data(), bytes, cudaMemcpyDeviceToHost));
        CHECK(back == host);
    }
}
TEST_CASE("transport::nccl with world size 1: a non-blocking communicator loads bit-exactly") {
    const AwkwardCheckpoint awkward;
    SoloCommunicator comm(SoloCommunicator::NonBlocking{});
    it::detail::Stream stream;
    it::LoadOptions small;
    small.slot_bytes = 256 << 10;
    small.window_bytes = 1 << 20;
    auto loader = it::load_distributed(awkward.checkpoint, it::transport::nccl(comm.get(), stream.get()), small);
    CHECK(check_all(loader, awkward.expected) == awkward.checkpoint.tensors().size());
}

TEST_CASE("transport::nccl with world size 1: a read error mid-load fails the load and leaves the communicator usable") {
    const AwkwardCheckpoint awkward;
    SoloCommunicator comm;
    it::detail::Stream stream;
    it::LoadOptions small;
    small.slot_bytes = 256 << 10;
    small.window_bytes = 1 << 20;
    using FaultyLoader = it::Loader<instanttensor_test::Faulty<it::storage::automatic>, it::transport::nccl, it::sink::device_ring>;
    const instanttensor_test::Fault fault{instanttensor_test::Fault::eio, 5, 1, 0};
    std::string failure;
    try {
        FaultyLoader loader(awkward.checkpoint, instanttensor_test::Faulty(it::storage::automatic(), fault),
                            it::transport::nccl(comm.get(), stream.get()), it::sink::device_ring{}, small);
        for (const auto& t : loader) (void)t;
    } catch (const it::io_error& e) {
        failure = e.what();
    }
    CHECK(failure.find("Input/output error") != std::string::npos);
    // The failing rank said so in a status round and waited for it: nothing was aborted, and the
    // communicator carries the next load.
    auto loader = it::load_distributed(awkward.checkpoint, it::transport::nccl(comm.get(), stream.get()), small);
    CHECK(check_all(loader, awkward.expected) == awkward.checkpoint.tensors().size());
}
TEST_CASE("transport::nccl: an NCCL call that fails inside a group leaves no group open") {
    // A send to a rank the world of one does not have fails inside ncclGroupStart/End. The transport
    // still ends the group (NCCL then cancels it); were it left open, every later NCCL call of this
    // thread would be held in it and never launched: the gather below would never complete.
    SoloCommunicator comm;
    it::detail::Stream stream;
    it::detail::DeviceBuffer window(4096, "test window");
    {
        it::transport::nccl group(comm.get(), stream.get());
        const std::vector<it::Transfer> sends{{0, 3, 0, 4096}};
        const std::vector<std::uint32_t> groups{0};
        CHECK_THROWS_AS(group.exchange(window.data(), {it::ExchangeMode::sends, 4096, 4096, sends, groups}), it::nccl_error);
    }
    it::transport::nccl group(comm.get(), stream.get());
    const auto ticket = group.gather(42);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    bool done = false;
    while (!(done = group.done(ticket)) && std::chrono::steady_clock::now() < deadline) {}
    REQUIRE(done);
    CHECK(group.gathered(ticket) == std::vector<std::uint64_t>{42});
}
#endif

TEST_CASE("blocks along any dimension land on the device as on the host: a single load, and transport::nccl with world size 1") {
    // The device sinks land a block cut along dimension 1 with 2-D copies (cudaMemcpy2DAsync); the
    // host loader, checked against slices on the CPU, gives the bytes they must hold.
    const AwkwardCheckpoint awkward;
    const auto& checkpoint = awkward.checkpoint;
    it::LoadOptions options;
    options.slot_bytes = 64 << 10;  // the "mid" matrices span several reads
    options.share = [](const it::format::TensorRef& t, int, int) {
        const auto& shape = t.info->shape;
        if (shape.size() == 2 && shape[1] >= 2) return it::Share::block(1, 1, shape[1] / 2);
        if (shape.size() == 1 && shape[0] >= 2) return it::Share::row_range(1, shape[0] / 2);
        return it::Share::whole();
    };
    std::map<std::string, std::vector<std::byte>> expected;
    for (const auto& t : it::load_to_host(checkpoint, options)) expected[std::string(t.name)].assign(t.data.begin(), t.data.end());
    REQUIRE(expected.size() == checkpoint.tensors().size());
    const auto check = [&](auto& loader) {
        std::size_t n = 0;
        for (const auto& t : loader) {
            std::vector<std::byte> back(t.data.size());
            if (!back.empty()) INSTANTTENSOR_CUDA_CHECK(cudaMemcpy(back.data(), t.data.data(), back.size(), cudaMemcpyDeviceToHost));
            CHECK_MESSAGE(back == expected.at(std::string(t.name)), t.name);
            if (t.name.starts_with("mid.")) CHECK((t.block_dim == 1 && t.block_first == 1));
            ++n;
        }
        CHECK(n == expected.size());
    };
    for (const auto backend : backends) {
        CAPTURE(it::storage::to_string(backend));
        auto single = it::load_to_device(checkpoint, {}, options, {backend, it::DirectIo::on});
        check(single);
        SoloCommunicator comm;
        it::detail::Stream stream;
        auto group = it::load_distributed(checkpoint, it::transport::nccl(comm.get(), stream.get()), options, {}, {backend});
        check(group);
    }
}

TEST_CASE("a verified load to the device yields exact bytes, passes over GDS, and never yields a tensor that differs") {
    const AwkwardCheckpoint awkward;
    const auto& checkpoint = awkward.checkpoint;
    it::format::TensorDigests digests("the files");
    for (const auto& [name, hash] : awkward.expected) digests.add(name, hash);
    it::LoadOptions options;
    options.staging_bytes = 1 << 20;
    options.slot_bytes = 256 << 10;
    options.verify = digests;
    for (const auto backend : backends) {
        CAPTURE(it::storage::to_string(backend));
        auto ring = it::load_to_device(checkpoint, {}, options, {backend});
        CHECK(check_all(ring, awkward.expected) == checkpoint.tensors().size());
        CHECK(ring.stats().verified == checkpoint.tensors().size());
    }
    auto automatic = it::load_to_device(checkpoint, {}, options);
    CHECK(automatic.backend() != "gds");  // GDS reads into device memory, where nothing is digested
    CHECK(check_all(automatic, awkward.expected) == checkpoint.tensors().size());
    // One digest off: every tensor before that one lands, that one is an integrity_error.
    const it::format::TensorRef& victim = checkpoint.tensors()[checkpoint.tensors().size() / 2];
    it::format::TensorDigests wrong("wrong digests");
    for (const auto& [name, hash] : awkward.expected) wrong.add(name, hash + (name == victim.name()));
    options.verify = wrong;
    auto loader = it::load_to_device(checkpoint, {}, options);
    std::size_t yielded = 0;
    auto drain = [&] {
        for (const auto& t : loader) {
            CHECK(t.name != victim.name());
            ++yielded;
        }
    };
    CHECK_THROWS_AS(drain(), it::integrity_error);
    CHECK(yielded == checkpoint.tensors().size() / 2);
}

#if INSTANTTENSOR_HAS_CRYPTO
TEST_CASE("a load of an encrypted checkpoint to the device yields the plain bytes, passes over GDS, and refuses a changed byte") {
    const AwkwardCheckpoint awkward;
    const auto key = std::make_shared<const it::format::Key>(it::format::Key::generate());
    std::vector<fs::path> encrypted;
    for (const auto& file : awkward.checkpoint.files()) {
        encrypted.push_back(awkward.dir.path() / ("encrypted-" + file.path.filename().string()));
        it::format::encrypt_file(file.path, encrypted.back(), *key, {.cipher = it::format::preferred_cipher(), .chunk_bytes = 64 << 10, .progress = {}});
    }
    const auto checkpoint = it::format::Checkpoint::open(encrypted);
    it::LoadOptions options;
    options.staging_bytes = 1 << 20;
    options.slot_bytes = 256 << 10;
    options.key = key;
    for (const auto backend : backends) {
        CAPTURE(it::storage::to_string(backend));
        auto ring = it::load_to_device(checkpoint, {}, options, {backend});
        CHECK(check_all(ring, awkward.expected) == checkpoint.tensors().size());
        std::vector<it::detail::DeviceBuffer> owned;
        auto placed = it::load_into_device(checkpoint, into_new_buffers(owned), {}, options, {backend});
        CHECK(check_all(placed, awkward.expected) == checkpoint.tensors().size());
    }
    auto automatic = it::load_to_device(checkpoint, {}, options);
    CHECK(automatic.backend() != "gds");  // GDS reads into device memory, out of the CPU's reach
    CHECK(check_all(automatic, awkward.expected) == checkpoint.tensors().size());

    // A changed byte in the largest tensor: that tensor is never yielded.
    const auto largest = std::max_element(checkpoint.tensors().begin(), checkpoint.tensors().end(),
                                          [](const auto& a, const auto& b) { return a.nbytes() < b.nbytes(); });
    {
        std::fstream f(checkpoint.files()[largest->file].path, std::ios::binary | std::ios::in | std::ios::out);
        f.seekg(static_cast<std::streamoff>(largest->file_offset + largest->nbytes() / 2));
        char c = 0;
        f.get(c);
        f.seekp(static_cast<std::streamoff>(largest->file_offset + largest->nbytes() / 2));
        f.put(static_cast<char>(c ^ 1));
    }
    const auto changed = it::format::Checkpoint::open(encrypted);
    auto loader = it::load_to_device(changed, {}, options);
    auto drain = [&] {
        for (const auto& t : loader) CHECK(t.name != largest->name());
    };
    CHECK_THROWS_WITH_AS(drain(), doctest::Contains("fails authentication"), it::integrity_error);
}
#endif
