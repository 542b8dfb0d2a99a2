// instanttensor._core: the headers, reachable from Python. Everything a user calls is in
// python/instanttensor/__init__.py; this module gives it two things:
//
//   Checkpoint(paths)   a validated tensor table (format::Checkpoint): names, dtypes, shapes, metadata
//   Load(...)           one load, iterated: yields (name, array, typed) per selected tensor in load
//                       order, where array is in memory the caller owns (host: allocated here per
//                       tensor, freed with the array) and of the framework's kind: of the tensor's
//                       dtype and shape where its dtype is one of the `typed` names the framework
//                       takes through DLPack (typed is then True), else flat uint8 (for Python to
//                       view); or None where the caller gave the destination (load_into, every
//                       device load); or drained into a dict at once (load_file's path), the
//                       loader stepping on a thread of its own while the arrays are made
//
// A group load (LoadRequest.group) runs the library's group pipeline over a torch.distributed
// process group: ProcessGroupTransport hands each window's exchange to the group's own collectives
// (instanttensor/_group.py), so the bytes move through torch's communicator and its libnccl (or
// gloo's sockets); this module calls no NCCL.
//
// The GIL is released while bytes move (inside each step of the loader, or while a drain waits
// for the stepping thread); no Python object is touched then, except by the group transport,
// which takes the GIL for each call it makes. Host arrays reach torch as DLPack capsules through
// torch._C._from_dlpack, a third of the cost per tensor of torch.utils.dlpack.from_dlpack.
// Library errors become the instanttensor.errors classes, named after the C++ ones.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unordered_map.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "instanttensor/loader.hpp"

namespace nb = nanobind;
namespace it = instanttensor;

namespace {

// ---- errors ---------------------------------------------------------------------------------

/// Raises the instanttensor.errors class named `name` with `args`.
void raise(const char* name, nb::handle args) {
    nb::object errors = nb::module_::import_("instanttensor.errors");
    PyErr_SetObject(errors.attr(name).ptr(), args.ptr());
}

void translate(const std::exception_ptr& thrown, void*) {
    try {
        std::rethrow_exception(thrown);
    } catch (const it::io_error& e) {  // an OSError: errno first, so that e.errno is set
        raise("IoError", nb::make_tuple(e.code(), e.what()));
    } catch (const it::format_error& e) {
        raise("FormatError", nb::make_tuple(e.what()));
    } catch (const it::integrity_error& e) {
        raise("IntegrityError", nb::make_tuple(e.what()));
    } catch (const it::usage_error& e) {
        raise("UsageError", nb::make_tuple(e.what()));
    } catch (const it::unavailable_error& e) {
        raise("UnavailableError", nb::make_tuple(e.what()));
    } catch (const it::cuda_error& e) {
        raise("CudaError", nb::make_tuple(e.what()));
    } catch (const it::nccl_error& e) {
        raise("NcclError", nb::make_tuple(e.what()));
    }
}

// ---- checkpoint -----------------------------------------------------------------------------

it::format::Checkpoint open_checkpoint(const std::vector<std::string>& paths) {
    if (paths.size() == 1) return it::format::Checkpoint::open(std::filesystem::path(paths[0]));
    std::vector<std::filesystem::path> list(paths.begin(), paths.end());
    return it::format::Checkpoint::open(std::span<const std::filesystem::path>(list));
}

const it::format::TensorRef& find_tensor(const it::format::Checkpoint& checkpoint, const std::string& name) {
    const it::format::TensorRef* ref = checkpoint.find(name);
    if (ref == nullptr) throw nb::key_error(("no tensor named '" + name + "'").c_str());
    return *ref;
}

/// Every tensor's name, in load order (file, then offset) or sorted.
std::vector<std::string> names_of(const it::format::Checkpoint& checkpoint, bool sorted) {
    std::vector<std::string> names;
    names.reserve(checkpoint.tensors().size());
    for (const auto& t : checkpoint.tensors()) names.push_back(t.name());
    if (sorted) std::sort(names.begin(), names.end());
    return names;
}

/// (dtype name, shape, bytes, file) of a tensor.
nb::tuple describe(const it::format::Checkpoint& checkpoint, const it::format::TensorRef& ref) {
    nb::list shape;
    for (std::uint64_t d : ref.info->shape) shape.append(d);
    return nb::make_tuple(std::string(it::format::to_string(ref.info->dtype)), nb::tuple(shape), ref.nbytes(),
                          checkpoint.files()[ref.file].path.string());
}

// ---- loads ----------------------------------------------------------------------------------

/// What Python asks of a load: the keyword arguments of safe_open and load_file (Load checks them).
struct LoadRequest {
    std::optional<std::vector<std::string>> names;  // None: every tensor (required by a group load)
    int device = -1;                                // -1: host memory
    std::string backend = "auto";
    std::string direct = "auto";
    std::uint64_t staging_bytes = 0;  // 0: the library's default
    std::uint64_t slot_bytes = 0;
    std::uintptr_t stream = 0;        // device loads: the consumer's CUDA stream
    nb::object group;                 // None: a load alone; else an instanttensor._group.Group
    nb::bytes shares;                 // group loads: what each rank keeps of each name (share_function)
    /// A load alone: of each selected tensor, only the block (dimension, first index, count).
    std::optional<std::tuple<std::uint32_t, std::uint64_t, std::uint64_t>> block;
    std::shared_ptr<const it::format::TensorDigests> verify;  // None: no verification
    std::shared_ptr<const it::format::FileDigests> verify_files;  // None: files are not hashed
#if INSTANTTENSOR_HAS_CRYPTO
    std::shared_ptr<const it::format::Key> key;               // None: a checkpoint in clear
#endif
};

// ---- group loads ----------------------------------------------------------------------------

/// What rank r keeps of names[i] is shares[i * ranks + r]: nothing, the whole tensor, or, as
/// split + d, its block of dimension d (the library's block_along, so that every rank computes the
/// same blocks).
enum class Kept : std::uint8_t { nothing = 0, whole = 1, split = 2 };

it::ShareFunction share_function(const it::format::Checkpoint& checkpoint, const std::vector<std::string>& names,
                                 std::string shares, int ranks) {
    if (shares.size() != names.size() * static_cast<std::size_t>(ranks))
        throw it::usage_error("instanttensor", "a group load's share table has " + std::to_string(shares.size()) + " entries, not " +
                                                   std::to_string(names.size()) + " names × " + std::to_string(ranks) + " ranks");
    std::unordered_map<const it::format::TensorRef*, std::size_t> row;
    for (std::size_t i = 0; i < names.size(); ++i) row.emplace(&find_tensor(checkpoint, names[i]), i * static_cast<std::size_t>(ranks));
    return [row = std::move(row), shares = std::move(shares)](const it::format::TensorRef& t, int rank, int n) {
        const auto kept = static_cast<std::uint8_t>(shares[row.at(&t) + static_cast<std::size_t>(rank)]);
        if (kept == static_cast<std::uint8_t>(Kept::nothing)) return it::Share::none();
        if (kept == static_cast<std::uint8_t>(Kept::whole)) return it::Share::whole();
        return it::block_along(t, kept - static_cast<std::uint8_t>(Kept::split), rank, n);
    };
}

/// (first index, count) of rank `rank` of `ranks`'s block of a dimension of `size` indices.
std::pair<std::uint64_t, std::uint64_t> block_of(std::uint64_t size, int rank, int ranks) {
    const it::Share block = it::block_of(0, size, rank, ranks);
    return {block.first, block.count};
}

/// The bytes of the block [first, first + count) of dimension `dim` of `name` (usage_error where
/// it runs past the tensor or is not whole bytes).
std::uint64_t block_bytes(const it::format::Checkpoint& checkpoint, const std::string& name, std::uint32_t dim, std::uint64_t first,
                          std::uint64_t count) {
    const it::format::TensorRef& t = find_tensor(checkpoint, name);
    return it::kept_bytes(t, it::Share::block(dim, first, count), checkpoint.files()[t.file].path.string()).size();
}

/// A GroupTransport over a torch.distributed process group. Every call goes to the Group object
/// of instanttensor/_group.py with the GIL held: exchange(window, mode, segment, transfers) and
/// gather(value) start an operation and return its ticket; done(ticket) says whether it completed
/// (and raises what it raised); gathered(ticket) reads a gather; abort() ends what is in flight.
/// A Python exception becomes nccl_error, the library's error for a group that failed.
template <it::MemoryKind Memory>
class ProcessGroupTransport {
public:
    static constexpr it::MemoryKind memory = Memory;

    ProcessGroupTransport(nb::object group, int device) : group_(std::move(group)), device_(device) {
        rank_ = nb::cast<int>(group_.attr("rank"));
        size_ = nb::cast<int>(group_.attr("size"));
    }

    [[nodiscard]] int rank() const noexcept { return rank_; }
    [[nodiscard]] int size() const noexcept { return size_; }
    [[nodiscard]] int device() const noexcept { return device_; }

    std::uint64_t exchange(std::byte* window, const it::WindowExchange& x) {
        nb::gil_scoped_acquire gil;
        return call("an exchange", [&] {
            nb::list transfers;  // (from, to, offset, length, NCCL group of a send, source)
            std::uint64_t bytes = std::max(x.bytes, x.segment * static_cast<std::uint64_t>(size_));  // and the pack area used
            for (std::size_t i = 0; i < x.transfers.size(); ++i) {
                const it::Transfer& t = x.transfers[i];
                transfers.append(nb::make_tuple(t.from, t.to, t.offset, t.length, x.groups.empty() ? 0u : x.groups[i], t.source));
                bytes = std::max(bytes, t.source + t.length);
            }
            return nb::cast<std::uint64_t>(group_.attr("exchange")(view(window, bytes), mode_name(x.mode), x.segment, transfers));
        });
    }

    std::uint64_t gather(std::uint64_t value) {
        nb::gil_scoped_acquire gil;
        return call("a gather", [&] { return nb::cast<std::uint64_t>(group_.attr("gather")(value)); });
    }

    bool done(std::uint64_t ticket) {
        nb::gil_scoped_acquire gil;
        return call("an operation", [&] { return nb::cast<bool>(group_.attr("done")(ticket)); });
    }

    std::vector<std::uint64_t> gathered(std::uint64_t ticket) {
        nb::gil_scoped_acquire gil;
        return call("a gather", [&] { return nb::cast<std::vector<std::uint64_t>>(group_.attr("gathered")(ticket)); });
    }

    void abort() noexcept {
        nb::gil_scoped_acquire gil;
        try {
            group_.attr("abort")();
        } catch (const nb::python_error&) {  // the load failed already; its first error is the one to report
        }
    }

private:
    template <class F>
    auto call(const char* what, F f) {
        try {
            return f();
        } catch (nb::python_error& e) {
            throw it::nccl_error("process group", std::string(what) + " failed: " + nb::type_name(e.type()).c_str() + ": " +
                                                      nb::str(e.value()).c_str());
        }
    }

    static const char* mode_name(it::ExchangeMode mode) {
        switch (mode) {
        case it::ExchangeMode::none: return "none";
        case it::ExchangeMode::all_gather: return "all_gather";
        case it::ExchangeMode::broadcasts: return "broadcasts";
        case it::ExchangeMode::sends: return "sends";
        }
        return "none";
    }

    /// A torch tensor over `bytes` bytes of a window buffer; the buffer outlives every collective
    /// over it (the loader waits for them, or aborts them, before it frees it).
    nb::object view(std::byte* window, std::uint64_t bytes) const {
        const std::size_t shape[1] = {static_cast<std::size_t>(bytes)};
        constexpr int device_type = Memory == it::MemoryKind::device ? nb::device::cuda::value : nb::device::cpu::value;
        // rv_policy::reference: an array without an owner would otherwise be handed out as a copy.
        return nb::cast(nb::ndarray<nb::pytorch, std::uint8_t, nb::ndim<1>>(window, 1, shape, nb::handle(), nullptr,
                                                                            nb::dtype<std::uint8_t>(), device_type,
                                                                            Memory == it::MemoryKind::device ? device_ : 0),
                        nb::rv_policy::reference);
    }

    nb::object group_;
    int device_;
    int rank_ = 0;
    int size_ = 1;
};

/// One loader of any kind, stepped from Python.
class Steps {
public:
    virtual ~Steps() = default;
    /// The next tensor that landed, or nullptr at the end.
    virtual const it::TensorView* next() = 0;
    /// What the load reads and yields, in order.
    virtual const it::Plan& plan() const = 0;
};

template <class L>
class StepsOf final : public Steps {
public:
    template <class Make>
    explicit StepsOf(Make&& make) : loader_(make()) {}

    const it::TensorView* next() override {
        if (!current_) current_.emplace(loader_.begin());
        else ++*current_;
        return *current_ == std::default_sentinel ? nullptr : &**current_;
    }
    const it::Plan& plan() const override { return loader_.plan(); }

private:
    L loader_;
    std::optional<decltype(loader_.begin())> current_;
};

/// The digests of `names` (all where none are given): a load of a few tensors copies only theirs.
/// A name without a digest is left out, for the loader to refuse.
it::format::TensorDigests digests_of(const it::format::TensorDigests& all, const std::optional<std::vector<std::string>>& names) {
    if (!names) return all;
    it::format::TensorDigests some(all.source());
    for (const std::string& name : *names)
        if (const auto digest = all.find(name)) some.add(name, *digest);
    return some;
}

/// A tensor taken out of a load, for its array to be made of.
struct Landed {
    std::string_view name;  // the checkpoint's
    it::format::Dtype dtype{};
    std::vector<std::int64_t> shape;  // of what the load keeps of the tensor
    it::sink::TensorMemory memory;    // empty where the bytes landed in the caller's memory
};

/// Tensors passed from the thread that steps a load to the thread that makes their arrays, in
/// batches: a wake per tensor would cost more than its array.
class Handover {
public:
    /// On the stepping thread: queues what `next` returns until it returns nothing, throws (the
    /// failure is take()'s to rethrow), or stop() was called.
    template <class Next>
    void produce(Next next) noexcept {
        try {
            while (!stopped_.load(std::memory_order_relaxed)) {
                std::optional<Landed> landed = next();
                if (!landed) break;
                const std::lock_guard lock(mutex_);
                queue_.push_back(std::move(*landed));
                if (queue_.size() >= batch) ready_.notify_one();
            }
        } catch (...) {
            const std::lock_guard lock(mutex_);
            failure_ = std::current_exception();
        }
        const std::lock_guard lock(mutex_);
        finished_ = true;
        ready_.notify_one();
    }

    /// What was queued, once a batch is, the producer finished, or a tenth of a second passed;
    /// `finished` once the producer has and nothing is left. Rethrows the producer's failure.
    std::vector<Landed> take(bool& finished) {
        std::unique_lock lock(mutex_);
        ready_.wait_for(lock, std::chrono::milliseconds(100), [this] { return finished_ || queue_.size() >= batch; });
        if (failure_) std::rethrow_exception(failure_);
        finished = finished_;
        return std::exchange(queue_, {});
    }

    void stop() noexcept { stopped_.store(true, std::memory_order_relaxed); }

private:
    static constexpr std::size_t batch = 256;
    std::mutex mutex_;
    std::condition_variable ready_;
    std::vector<Landed> queue_;
    bool finished_ = false;
    std::exception_ptr failure_;
    std::atomic<bool> stopped_{false};
};

/// DLPack's DLManagedTensor (its stable C ABI, unversioned), which torch takes in a capsule named
/// "dltensor" and frees through `deleter`, from any thread and without the GIL.
struct ManagedTensor {
    nb::dlpack::dltensor dl_tensor;
    void* manager_ctx = nullptr;
    void (*deleter)(ManagedTensor*) = nullptr;
};

/// A host tensor handed to torch: the DLPack description, its shape, and the memory it frees.
struct HandedTensor {
    ManagedTensor managed{.deleter = [](ManagedTensor* m) noexcept {
        auto* self = reinterpret_cast<HandedTensor*>(m);  // managed is the first member
        std::free(self->allocation);
        delete self;
    }};
    void* allocation = nullptr;
    std::vector<std::int64_t> shape;
};
static_assert(std::is_standard_layout_v<HandedTensor>);

class Load {
public:
    /// `destinations` maps each selected name to (address, bytes) of caller-owned memory: on the
    /// device for a device load (required there), on the host otherwise (none: allocated here).
    /// `typed`: the dtype names (BF16, F32...) the framework takes through DLPack, whose arrays
    /// come with their dtype and shape.
    Load(const it::format::Checkpoint& checkpoint, LoadRequest request, std::string framework,
         std::optional<std::unordered_map<std::string, std::pair<std::uintptr_t, std::uint64_t>>> destinations,
         const std::vector<std::string>& typed)
        : framework_(std::move(framework)) {
        if (framework_ != "pt" && framework_ != "np") throw it::usage_error("instanttensor", "framework is 'pt' or 'np', not '" + framework_ + "'");
        for (const std::string& name : typed) {
            const auto dtype = it::format::parse_dtype(name);
            if (!dtype || !dlpack_dtype(*dtype)) throw it::usage_error("instanttensor", "'" + name + "' is no dtype DLPack names");
            typed_[static_cast<std::size_t>(*dtype)] = true;
        }
        it::LoadOptions options;
        if (request.names) options.filter = it::select_names(checkpoint, *request.names);
        if (request.slot_bytes != 0) options.slot_bytes = request.slot_bytes;
        if (request.staging_bytes != 0) options.staging_bytes = request.staging_bytes;
        else if (checkpoint.remote())  // a slot for each connection's GET (the command's default too)
            options.staging_bytes = std::max(options.staging_bytes, it::remote_staging_bytes(it::RemoteOptions{}, options.slot_bytes));
        if (request.verify) options.verify = digests_of(*request.verify, request.names);
        if (request.verify_files) options.verify_files = *request.verify_files;
#if INSTANTTENSOR_HAS_CRYPTO
        options.key = request.key;
#endif
        it::storage::automatic::Options storage;
        const auto backend = it::storage::parse_backend(request.backend);
        if (!backend) throw it::usage_error("instanttensor", "backend '" + request.backend + "': expected auto, uring, pread, memory, gds or http");
        storage.backend = *backend;
        const auto direct = it::parse_direct_io(request.direct);
        if (!direct) throw it::usage_error("instanttensor", "direct '" + request.direct + "': expected auto, on or off");
        storage.direct = *direct;

        if (framework_ == "pt") {
            const nb::module_ torch = nb::module_::import_("torch._C");
            from_dlpack_ = nb::hasattr(torch, "_from_dlpack") ? torch.attr("_from_dlpack")
                                                              : nb::module_::import_("torch.utils.dlpack").attr("from_dlpack");
        }
        given_mode_ = destinations.has_value() || request.device >= 0;
        if (destinations) {
            for (auto& [name, where] : *destinations)
                given_.emplace(name, std::span(reinterpret_cast<std::byte*>(where.first), where.second));
        }
        auto given = [this](const it::format::TensorRef& t) -> std::span<std::byte> {
            const auto found = given_.find(t.name());
            if (found == given_.end()) throw it::usage_error("instanttensor", "no destination for tensor '" + t.name() + "'");
            return found->second;
        };
        // The bytes of each tensor this rank keeps: all of them, or in a group load its share's.
        std::function<std::uint64_t(const it::format::TensorRef&)> kept_size = [](const it::format::TensorRef& t) { return t.nbytes(); };
        const bool grouped = request.group.is_valid() && !request.group.is_none();
        if (grouped) {
            if (!request.names || !request.shares.is_valid())
                throw it::usage_error("instanttensor", "a group load names its tensors and what each rank keeps of them");
            const int rank = nb::cast<int>(request.group.attr("rank")), ranks = nb::cast<int>(request.group.attr("size"));
            options.share = share_function(checkpoint, *request.names, std::string(request.shares.c_str(), request.shares.size()), ranks);
            kept_size = [share = options.share, rank, ranks](const it::format::TensorRef& t) {
                return it::kept_bytes(t, share(t, rank, ranks)).size();
            };
        }
        if (request.block) {  // a load alone reads the bytes the block spans and lands the block
            if (grouped) throw it::usage_error("instanttensor", "a group load says what each rank keeps through its shares, not a block");
            const auto [dim, first, count] = *request.block;
            options.share = [block = it::Share::block(dim, first, count)](const it::format::TensorRef&, int, int) { return block; };
            kept_size = [share = options.share](const it::format::TensorRef& t) { return it::kept_bytes(t, share(t, 0, 1)).size(); };
        }
        grouped_ = grouped;
        memory_for_ = [kept_size, read = options.slot_bytes](const it::format::TensorRef& t) { return it::sink::TensorMemory(t, kept_size(t), read); };
        auto allocate = [this](const it::format::TensorRef& t) -> std::span<std::byte> {  // unless drain() allocated it
            auto at = allocated_.find(&t);
            if (at == allocated_.end()) at = allocated_.emplace(&t, memory_for_(t)).first;
            return at->second.span();
        };
        if (request.device >= 0) {
#if INSTANTTENSOR_HAS_CUDA
            if (!destinations) throw it::usage_error("instanttensor", "a device load lands in tensors the caller allocated");
            it::sink::device_placement::Options placement{.device = request.device,
                                                          .consumer_stream = reinterpret_cast<cudaStream_t>(request.stream)};
            if (grouped) {
                using GroupLoader = it::Loader<it::storage::automatic, ProcessGroupTransport<it::MemoryKind::device>, it::sink::device_placement>;
                steps_ = std::make_unique<StepsOf<GroupLoader>>([&] {
                    return GroupLoader(checkpoint, it::storage::automatic(storage), ProcessGroupTransport<it::MemoryKind::device>(request.group, request.device),
                                       it::sink::device_placement(given, placement), options);
                });
            } else {
                steps_ = std::make_unique<StepsOf<it::DeviceLoader<it::sink::device_placement>>>(
                    [&] { return it::load_into_device(checkpoint, given, placement, options, storage); });
            }
#else
            throw it::unavailable_error("instanttensor", "this build of the module has no CUDA: it loads to host memory only "
                                                         "(build it where the CUDA toolkit is installed)");
#endif
        } else if (grouped) {
            using GroupLoader = it::Loader<it::storage::automatic, ProcessGroupTransport<it::MemoryKind::host>, it::sink::placement>;
            steps_ = std::make_unique<StepsOf<GroupLoader>>([&] {
                return GroupLoader(checkpoint, it::storage::automatic(storage), ProcessGroupTransport<it::MemoryKind::host>(request.group, -1),
                                   destinations ? it::sink::placement(given) : it::sink::placement(allocate), options);
            });
        } else {
            steps_ = std::make_unique<StepsOf<HostLoader>>([&] {
                return destinations ? it::load_into(checkpoint, given, options, storage) : it::load_into(checkpoint, allocate, options, storage);
            });
        }
    }

    Load(const Load&) = delete;
    Load& operator=(const Load&) = delete;
    ~Load() { close(); }

    /// (name, array or None, typed) of the next tensor; StopIteration at the end.
    nb::tuple next() {
        if (!steps_) throw nb::stop_iteration();
        const it::TensorView* view = nullptr;
        {
            nb::gil_scoped_release unlocked;
            view = steps_->next();
        }
        if (view == nullptr) throw nb::stop_iteration();
        auto [name, array, typed] = hand_out(take(*view));
        return nb::make_tuple(std::move(name), std::move(array), typed);
    }

    /// Every tensor left into `into`, name → array, in load order; returns the names whose arrays
    /// are flat uint8 (for Python to view). load_file's path, for a host load of arrays made here:
    /// the loader steps on a thread of its own while this one makes the arrays, a batch at a
    /// time, so that making 100,000 small tensors' arrays (a tenth of such a load when done in
    /// turn) overlaps the copies, which leave the second core mostly idle. Ctrl-C is seen within
    /// a tenth of a second and stops the load after the tensor landing then.
    nb::list drain(nb::dict into) {
        if (given_mode_ || grouped_) throw it::usage_error("instanttensor", "drain() hands out the arrays of a host load alone");
        nb::list untyped;
        if (!steps_) return untyped;
        // Every planned tensor's memory, allocated on this thread before the stepping one starts:
        // glibc gives each thread an arena of its own, and one grown by a thread that also copies
        // made the load of 100,000 small tensors a tenth slower than the command's (whose thread
        // allocates from the main arena).
        for (const it::PlannedTensor& t : steps_->plan().tensors)
            if (!allocated_.contains(t.ref)) allocated_.emplace(t.ref, memory_for_(*t.ref));
        Handover handover;
        std::thread stepper([this, &handover] {
            handover.produce([this]() -> std::optional<Landed> {
                const it::TensorView* view = steps_->next();
                return view == nullptr ? std::nullopt : std::optional<Landed>(take(*view));
            });
        });
        const auto join = [&] {
            handover.stop();
            nb::gil_scoped_release unlocked;
            stepper.join();
        };
        try {
            for (bool finished = false; !finished;) {
                std::vector<Landed> batch;
                {
                    nb::gil_scoped_release unlocked;
                    batch = handover.take(finished);
                }
                for (Landed& landed : batch) {
                    auto [name, array, typed] = hand_out(std::move(landed));
                    if (!typed) untyped.append(name);
                    into[std::move(name)] = std::move(array);
                }
                if (PyErr_CheckSignals() != 0) throw nb::python_error();
            }
        } catch (...) {
            join();
            throw;
        }
        join();
        return untyped;
    }

    /// Stops the load (waiting for reads in flight) and frees what it holds; arrays already
    /// handed out stay valid.
    void close() {
        steps_.reset();
        allocated_.clear();
    }

private:
    /// Takes a tensor that landed out of the load: its memory (none where it landed in the
    /// caller's), and its name and shape, which the checkpoint holds for a whole tensor and the
    /// loader only until its next step for a block.
    Landed take(const it::TensorView& view) {
        Landed landed{.name = view.name, .dtype = view.dtype, .shape = {view.shape.begin(), view.shape.end()}};
        if (given_mode_) return landed;
        const auto held = allocated_.find(view.ref);
        if (held == allocated_.end()) {  // 0 bytes: the loader asked for no memory
            landed.memory = it::sink::TensorMemory(*view.ref, 0, 0);
        } else {
            landed.memory = std::move(held->second);
            allocated_.erase(held);
        }
        return landed;
    }

    /// (name, array or None, typed) of a tensor taken out of the load: its memory passes to the array.
    std::tuple<nb::str, nb::object, bool> hand_out(Landed landed) {
        nb::str name(landed.name.data(), landed.name.size());
        if (given_mode_) return {std::move(name), nb::none(), false};
        const bool typed = typed_[static_cast<std::size_t>(landed.dtype)];
        return {std::move(name), array(std::move(landed), typed), typed};
    }

    /// The DLPack dtype of `dtype`, where DLPack has one (which of these a framework reads, the
    /// `typed` names say: numpy has no bfloat16).
    static std::optional<nb::dlpack::dtype> dlpack_dtype(it::format::Dtype dtype) {
        using it::format::Dtype;
        using Code = nb::dlpack::dtype_code;
        const auto of = [](Code code, unsigned bits) { return nb::dlpack::dtype{static_cast<std::uint8_t>(code), static_cast<std::uint8_t>(bits), 1}; };
        switch (dtype) {
        case Dtype::BOOL: return of(Code::Bool, 8);
        case Dtype::U8: return of(Code::UInt, 8);
        case Dtype::I8: return of(Code::Int, 8);
        case Dtype::I16: return of(Code::Int, 16);
        case Dtype::U16: return of(Code::UInt, 16);
        case Dtype::F16: return of(Code::Float, 16);
        case Dtype::BF16: return of(Code::Bfloat, 16);
        case Dtype::I32: return of(Code::Int, 32);
        case Dtype::U32: return of(Code::UInt, 32);
        case Dtype::F32: return of(Code::Float, 32);
        case Dtype::C64: return of(Code::Complex, 64);
        case Dtype::F64: return of(Code::Float, 64);
        case Dtype::I64: return of(Code::Int, 64);
        case Dtype::U64: return of(Code::UInt, 64);
        default: return std::nullopt;
        }
    }

    /// An array over `landed`'s memory, of the framework's kind, that frees it when collected: of
    /// its dtype and shape where `typed`, else flat uint8. One array per tensor, no view of it
    /// after: a checkpoint of 100,000 small tensors pays this per tensor.
    nb::object array(Landed landed, bool typed) const {
        const std::span<std::byte> bytes = landed.memory.span();
        nb::dlpack::dtype dtype = nb::dtype<std::uint8_t>();
        if (typed) dtype = *dlpack_dtype(landed.dtype);
        else landed.shape.assign(1, static_cast<std::int64_t>(bytes.size()));
        if (framework_ == "pt") {
            auto* handed = new HandedTensor{.allocation = landed.memory.release(), .shape = std::move(landed.shape)};
            handed->managed.dl_tensor = {.data = bytes.data(), .device = {nb::device::cpu::value, 0}, .ndim = static_cast<std::int32_t>(handed->shape.size()),
                                         .dtype = dtype, .shape = handed->shape.data()};
            // A capsule torch has taken is renamed "used_dltensor" and freed by torch; one it has not, here.
            PyObject* capsule = PyCapsule_New(&handed->managed, "dltensor", [](PyObject* o) noexcept {
                if (PyCapsule_IsValid(o, "dltensor") != 0) {
                    auto* m = static_cast<ManagedTensor*>(PyCapsule_GetPointer(o, "dltensor"));
                    m->deleter(m);
                }
            });
            if (capsule == nullptr) {
                handed->managed.deleter(&handed->managed);
                throw nb::python_error();
            }
            return from_dlpack_(nb::steal(capsule));
        }
        std::vector<std::size_t> shape(landed.shape.begin(), landed.shape.end());
        nb::capsule owner(landed.memory.release(), [](void* p) noexcept { std::free(p); });
        return nb::cast(nb::ndarray<nb::numpy>(bytes.data(), shape.size(), shape.data(), owner, nullptr, dtype));
    }

    using HostLoader = it::Loader<it::storage::automatic, it::transport::single, it::sink::placement>;

    std::string framework_;
    /// torch's C entry point for a DLPack capsule: torch.utils.dlpack.from_dlpack adds 1 µs of
    /// protocol checks per tensor around it (that one where a torch lacks the private name).
    nb::object from_dlpack_;
    bool given_mode_ = false;  // bytes land in the caller's memory: nothing to hand out
    std::array<bool, 256> typed_{};  // by format::Dtype: handed out with its dtype and shape
    std::unordered_map<std::string, std::span<std::byte>> given_;
    bool grouped_ = false;
    std::function<it::sink::TensorMemory(const it::format::TensorRef&)> memory_for_;  // host memory for what the load keeps of a tensor
    std::unordered_map<const it::format::TensorRef*, it::sink::TensorMemory> allocated_;  // landed or landing, not yet handed out
    std::unique_ptr<Steps> steps_;  // last: destroyed first, so no read is in flight into the buffers above
};

}  // namespace

NB_MODULE(_core, m) {
    m.doc() = "The instanttensor headers, bound for the Python package (use the package, not this module).";
    nb::register_exception_translator(translate);
    m.attr("has_cuda") = static_cast<bool>(INSTANTTENSOR_HAS_CUDA);
    m.attr("version") = INSTANTTENSOR_VERSION;

    nb::class_<it::format::Checkpoint>(m, "Checkpoint", "A validated tensor table: a file, a directory, an index or a list of files.")
        .def("__init__", [](it::format::Checkpoint* self, const std::vector<std::string>& paths) {
            new (self) it::format::Checkpoint(open_checkpoint(paths));
        }, nb::arg("paths"))
        .def("names", [](const it::format::Checkpoint& c) { return names_of(c, true); }, "Every tensor's name, sorted.")
        .def("names_in_load_order", [](const it::format::Checkpoint& c) { return names_of(c, false); },
             "Every tensor's name, in file then offset order (the order a load yields them).")
        .def("describe", [](const it::format::Checkpoint& c, const std::string& name) { return describe(c, find_tensor(c, name)); },
             nb::arg("name"), "(dtype, shape, bytes, file) of a tensor; KeyError when there is none.")
        .def("__contains__", [](const it::format::Checkpoint& c, const std::string& name) { return c.find(name) != nullptr; })
        .def("__len__", [](const it::format::Checkpoint& c) { return c.tensors().size(); })
        .def("metadata", [](const it::format::Checkpoint& c) {
            nb::dict d;
            c.for_each_metadata([&](const std::string& k, const std::string& v) { d[nb::str(k.data(), k.size())] = nb::str(v.data(), v.size()); });
            return d;
        }, "The files' __metadata__ merged (the first file's value where they disagree).")
        .def("files", [](const it::format::Checkpoint& c) {
            std::vector<std::string> paths;
            for (const auto& f : c.files()) paths.push_back(f.path.string());
            return paths;
        })
        .def_prop_ro("total_bytes", &it::format::Checkpoint::total_bytes);

    nb::class_<LoadRequest>(m, "LoadRequest")
        .def(nb::init<>())
        .def_rw("names", &LoadRequest::names)
        .def_rw("device", &LoadRequest::device)
        .def_rw("backend", &LoadRequest::backend)
        .def_rw("direct", &LoadRequest::direct)
        .def_rw("staging_bytes", &LoadRequest::staging_bytes)
        .def_rw("slot_bytes", &LoadRequest::slot_bytes)
        .def_rw("stream", &LoadRequest::stream)
        .def_rw("group", &LoadRequest::group, nb::arg("group").none())
        .def_rw("shares", &LoadRequest::shares)
        .def_rw("block", &LoadRequest::block, nb::arg("block").none())
        .def_rw("verify", &LoadRequest::verify, nb::arg("verify").none())
        .def_rw("verify_files", &LoadRequest::verify_files, nb::arg("verify_files").none())
#if INSTANTTENSOR_HAS_CRYPTO
        .def_rw("key", &LoadRequest::key, nb::arg("key").none())
#endif
        ;
#if INSTANTTENSOR_HAS_CRYPTO
    nb::class_<it::format::Key>(m, "Key", "The key of an encrypted checkpoint (format/encryption.hpp); wiped when freed, never printed.")
        .def_static("read", [](const std::string& path) { return std::make_shared<const it::format::Key>(it::format::Key::read(path)); },
                    nb::arg("path"), "The key in a file, as `instanttensor keygen` writes it.")
        .def_static("from_environment",
                    [](const std::string& name) { return std::make_shared<const it::format::Key>(it::format::Key::from_environment(name)); },
                    nb::arg("name"), "The key in an environment variable (64 hex digits).");
#endif

    nb::class_<it::format::TensorDigests>(m, "Digests", "Expected XXH3-64 digests of tensors, by name (format/digests.hpp).")
        .def_static("read", [](const std::string& path) { return it::format::TensorDigests::read(path); }, nb::arg("path"),
                    "Reads a manifest in the layout `instanttensor hash` prints.")
        .def_static("sealed", &it::format::TensorDigests::sealed, nb::arg("checkpoint"),
                    "The seals `instanttensor seal` stored in every file of the checkpoint.")
        .def_prop_ro("source", &it::format::TensorDigests::source, "Where they come from, as messages name it.")
        .def("__len__", &it::format::TensorDigests::size)
        .def("text", &it::format::TensorDigests::text, "All of them, in the layout `instanttensor hash` prints.");

    nb::class_<it::format::FileDigests>(m, "FileDigests", "Expected SHA-256 digests of whole files, by file name (format/digests.hpp).")
        .def_static("read", [](const std::string& path) { return it::format::FileDigests::read(path); }, nb::arg("path"),
                    "Reads a manifest in the layout `sha256sum` prints.")
        .def_prop_ro("source", &it::format::FileDigests::source, "Where they come from, as messages name it.")
        .def("__len__", &it::format::FileDigests::size);

    m.def("block_of", &block_of, nb::arg("size"), nb::arg("rank"), nb::arg("ranks"),
          "(first index, count) of rank `rank` of `ranks`'s block of a dimension of `size` indices: "
          "[size·rank/ranks, size·(rank+1)/ranks), rounded down.");
    m.def("block_bytes", &block_bytes, nb::arg("checkpoint"), nb::arg("name"), nb::arg("dim"), nb::arg("first"), nb::arg("count"),
          "The bytes of the block [first, first + count) of dimension `dim` of a tensor (UsageError where it runs past the "
          "tensor or is not whole bytes).");

    nb::class_<Load>(m, "Load", "One load of a checkpoint's selected tensors, iterated once.")
        .def(nb::init<const it::format::Checkpoint&, LoadRequest, std::string,
                      std::optional<std::unordered_map<std::string, std::pair<std::uintptr_t, std::uint64_t>>>,
                      const std::vector<std::string>&>(),
             nb::arg("checkpoint"), nb::arg("request"), nb::arg("framework"), nb::arg("destinations").none(), nb::arg("typed"),
             nb::keep_alive<1, 2>())
        .def("__iter__", [](nb::handle self) { return self; })
        .def("__next__", &Load::next)
        .def("drain", &Load::drain, nb::arg("into"),
             "Every tensor left into the dict `into`, in load order; returns the names whose arrays are flat uint8.")
        .def("close", &Load::close);
}
