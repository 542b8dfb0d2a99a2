// instanttensor/loader.hpp: Loader<Storage, Transport, Sink>, the iterator over a checkpoint's
// tensors as they land in memory, and the helpers that make the usual ones.
//
//   auto checkpoint = instanttensor::format::Checkpoint::open("model/");
//   auto loader = instanttensor::load_to_host(checkpoint);
//   for (const instanttensor::TensorView& t : loader)
//       use(t.name, t.dtype, t.shape, t.data);   // t.data valid until the next iteration
//
// A Loader is the consumer's side of exactly one pipeline, chosen at compile time from the
// Transport: pipeline::Single for one process alone (pipeline/single.hpp), pipeline::Group for one
// rank of a GroupTransport (pipeline/group.hpp). The pipeline runs in the caller's thread, inside
// operator++, and returns once the next tensor is complete; reads run ahead of the consumer by up
// to the staging size and the sink's ring. No thread of the loader's own: parallelism comes from
// the kernel (io_uring), the backend's pool (pread), the copy engines and NCCL.
//
// Errors: any failure (io_error naming the file and byte offset, a refused destination, ...)
// propagates from operator++ (or begin()), after which the loader is stopped: further use throws
// the first error again, of the same type and with the same code, its what() prefixed with
// "loader: stopped after an earlier error: ". Destroying a loader waits for reads and copies still
// in flight, then frees staging memory, the sink's memory and the file descriptors, whether or not
// it finished (and a group load lets its peers know it stopped).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <iterator>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/config.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/pipeline/group.hpp"
#include "instanttensor/pipeline/options.hpp"
#include "instanttensor/pipeline/single.hpp"
#include "instanttensor/sink/host.hpp"
#include "instanttensor/sink/placement.hpp"
#include "instanttensor/storage/automatic.hpp"
#include "instanttensor/transport/single.hpp"
#if INSTANTTENSOR_HAS_CUDA
#include "instanttensor/sink/device_ring.hpp"
#include "instanttensor/storage/gds.hpp"
#endif
#if INSTANTTENSOR_HAS_NCCL
#include "instanttensor/transport/nccl.hpp"
#endif

namespace instanttensor {

/// A tensor that has landed. `data` lives in the sink's memory (host or device, see `memory`);
/// how long it stays valid is the sink's rule (sink::host: until the loader advances;
/// sink::placement: as long as the caller's memory).
struct TensorView {
    std::string_view name;
    format::Dtype dtype{};
    std::span<const std::uint64_t> shape;   ///< of a block (a share of the tensor): the block's shape
    std::span<std::byte> data;
    MemoryKind memory = MemoryKind::host;
    const format::TensorRef* ref = nullptr;  ///< file and offsets, from the checkpoint
    std::uint32_t block_dim = 0;             ///< of a block: the dimension it is cut along
    std::uint64_t block_first = 0;           ///< and its first index along it (0 for a whole tensor)
};

/// Selects tensors by exact name; a name no tensor has selects nothing.
inline TensorFilter select_names(std::vector<std::string> names) {
    std::sort(names.begin(), names.end());
    return [names = std::move(names)](const format::TensorRef& t) {
        return std::binary_search(names.begin(), names.end(), t.name());
    };
}

/// Selects tensors by exact name, each of which `checkpoint` must hold: usage_error names the
/// first it does not (a misspelt weight fails here, not as a tensor missing later).
inline TensorFilter select_names(const format::Checkpoint& checkpoint, std::vector<std::string> names) {
    for (const std::string& name : names)
        if (checkpoint.find(name) == nullptr)
            throw usage_error("select_names", "the checkpoint has no tensor named '" + name + "'");
    return select_names(std::move(names));
}

/// The checkpoint a loader reads, borrowed: it must outlive the loader. Made from an lvalue only, so
/// that passing a temporary (`load_to_host(Checkpoint::open(path))`) is a compile error rather
/// than a loader reading freed memory.
class BorrowedCheckpoint {
public:
    BorrowedCheckpoint(const format::Checkpoint& checkpoint) noexcept : checkpoint_(&checkpoint) {}  // implicit on purpose
    BorrowedCheckpoint(const format::Checkpoint&&) = delete;  // a temporary: keep the checkpoint in a variable
    [[nodiscard]] const format::Checkpoint& get() const noexcept { return *checkpoint_; }

private:
    const format::Checkpoint* checkpoint_;
};

namespace detail {
/// A stopped loader's first error again, of the same type and with the same code; an exception
/// that is not the library's (one the caller's destination function threw) as it was.
[[noreturn]] inline void throw_stopped(const std::exception_ptr& first) {
    try {
        std::rethrow_exception(first);
    } catch (const error& e) {
        e.throw_again("loader: stopped after an earlier error: ");
    }
}

/// The pipeline a Loader runs: a group load for a GroupTransport, else a single one.
template <class Storage, class Tr, class Sk>
struct pipeline_of {
    using type = pipeline::Single<Storage, Sk>;
};
template <class Storage, GroupTransport Tr, class Sk>
struct pipeline_of<Storage, Tr, Sk> {
    using type = pipeline::Group<Storage, Tr, Sk>;
};
}  // namespace detail

template <StorageBackend Storage, Transport Tr, Sink Sk>
    requires ReadsIntoSinkMemory<Storage, Sk> && TransportFitsSink<Tr, Sk>
class Loader {
public:
    using Pipeline = typename detail::pipeline_of<Storage, Tr, Sk>::type;

    /// Opens the checkpoint's files with `storage`, plans the selected tensors and allocates staging
    /// memory and the sink's memory (and for a group load its window buffers). `checkpoint` must
    /// outlive the loader.
    Loader(BorrowedCheckpoint checkpoint, Storage storage, Tr transport, Sk sink, LoadOptions options = {})
        : pipeline_(checkpoint.get(), std::move(storage), std::move(transport), std::move(sink), std::move(options)) {}

    Loader(const Loader&) = delete;
    Loader& operator=(const Loader&) = delete;

    class iterator {
    public:
        using value_type = TensorView;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        const TensorView& operator*() const { return loader_->view_; }
        const TensorView* operator->() const { return &loader_->view_; }
        iterator& operator++() {
            loader_->advance();
            return *this;
        }
        void operator++(int) { ++*this; }
        bool operator==(std::default_sentinel_t) const { return loader_->current_ >= loader_->plan().tensors.size(); }

    private:
        friend class Loader;
        explicit iterator(Loader* loader) : loader_(loader) {}
        Loader* loader_ = nullptr;
    };

    /// Starts the load and returns once the first tensor landed. A loader is iterated once.
    iterator begin() {
        if (failure_) detail::throw_stopped(failure_);
        if (started_) throw usage_error("loader", "a Loader is iterated only once");
        started_ = true;
        start_ = std::chrono::steady_clock::now();
        current_ = before_first;
        advance();
        return iterator(this);
    }
    std::default_sentinel_t end() const noexcept { return {}; }

    [[nodiscard]] const Plan& plan() const noexcept { return pipeline_.plan(); }
    /// Group loads: how the group splits the reads and exchanges the windows.
    [[nodiscard]] const GroupPlan& group_plan() const noexcept
        requires GroupTransport<Tr>
    {
        return pipeline_.group_plan();
    }
    [[nodiscard]] const LoadStats& stats() const noexcept { return pipeline_.stats(); }
    [[nodiscard]] const Storage& storage() const noexcept { return pipeline_.storage(); }
    [[nodiscard]] const Sk& sink() const noexcept { return pipeline_.sink(); }

private:
    static constexpr std::size_t before_first = static_cast<std::size_t>(-1);

    /// Releases the current tensor, then loads the next one this rank yields.
    void advance() {
        if (failure_) detail::throw_stopped(failure_);
        try {
            if (current_ != before_first)  // the caller had the tensor in view until now
                pipeline_.stats().times.consumer += std::chrono::duration<double>(std::chrono::steady_clock::now() - yielded_).count();
            const std::size_t tensors = plan().tensors.size();
            if (current_ < tensors) pipeline_.release(static_cast<std::uint32_t>(current_));
            do ++current_;
            while (current_ < tensors && !pipeline_.destinations().yields(static_cast<std::uint32_t>(current_)));
            if (current_ >= tensors) {
                pipeline_.finish();
                pipeline_.stats().seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
                return;
            }
            pipeline_.load(static_cast<std::uint32_t>(current_));
            set_view(static_cast<std::uint32_t>(current_));
            yielded_ = std::chrono::steady_clock::now();
        } catch (...) {
            failure_ = std::current_exception();
            throw;
        }
    }

    void set_view(std::uint32_t t) {
        const format::TensorRef& ref = *plan().tensors[t].ref;
        const KeptBytes kept = pipeline_.destinations().kept(t);
        view_ = {ref.name(), ref.info->dtype, ref.info->shape, pipeline_.destinations().at(t), Sk::memory, &ref, kept.dim, kept.first};
        if (!ref.info->shape.empty() && kept.count != ref.info->shape[kept.dim]) {  // a block of the tensor
            view_shape_.assign(ref.info->shape.begin(), ref.info->shape.end());
            view_shape_[kept.dim] = kept.count;
            view_.shape = view_shape_;
        }
        LoadStats& stats = pipeline_.stats();
        ++stats.tensors;
        stats.tensor_bytes += view_.data.size();
    }

    Pipeline pipeline_;
    std::size_t current_ = 0;  // index into plan().tensors of the tensor in view_
    bool started_ = false;
    TensorView view_;
    std::vector<std::uint64_t> view_shape_;  // a split tensor's shape on this rank
    std::exception_ptr failure_;
    std::chrono::steady_clock::time_point start_;
    std::chrono::steady_clock::time_point yielded_;  // when the tensor in view_ was yielded
};

/// A loader over the first of two storages that opens: `preferred` where given (GPUDirect Storage,
/// for load_to_device), else, or when it is unavailable here (unavailable_error), `fallback`. The
/// choice is made once, when the loader is made, and says why the preferred one was passed over;
/// each step then visits a closed variant (no virtual call).
template <StorageBackend Preferred, StorageBackend Fallback, Sink Sk>
class FallbackLoader {
    using PreferredLoader = Loader<Preferred, transport::single, Sk>;
    using FallbackStorageLoader = Loader<Fallback, transport::single, Sk>;

public:
    /// Makes the sink of each try: a loader that could not be made took its sink with it.
    using MakeSink = std::function<Sk()>;

    /// Tries `preferred` when given; loads with `fallback` when not, or when the preferred storage
    /// throws unavailable_error and a fallback is given. Any other error propagates.
    FallbackLoader(BorrowedCheckpoint checkpoint, std::optional<Preferred> preferred, std::optional<Fallback> fallback,
                   MakeSink make_sink, LoadOptions options = {}) {
        if (!preferred && !fallback) throw usage_error("FallbackLoader", "needs a preferred or a fallback storage");
        if (preferred) {
            const std::string name(preferred->name());
            try {
                loaders_.template emplace<1>(checkpoint, std::move(*preferred), transport::single{}, make_sink(), options);
                return;
            } catch (const unavailable_error& e) {
                if (!fallback) throw;
                passed_over_ = name + ": " + e.what();
            }
        }
        loaders_.template emplace<2>(checkpoint, std::move(*fallback), transport::single{}, make_sink(), std::move(options));
    }

    class iterator {
    public:
        using value_type = TensorView;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        template <class Inner>
        explicit iterator(Inner inner) : inner_(std::move(inner)) {}
        const TensorView& operator*() const {
            return std::visit([](const auto& i) -> const TensorView& { return *i; }, inner_);
        }
        const TensorView* operator->() const { return &**this; }
        iterator& operator++() {
            std::visit([](auto& i) { ++i; }, inner_);
            return *this;
        }
        void operator++(int) { ++*this; }
        bool operator==(std::default_sentinel_t end) const {
            return std::visit([end](const auto& i) { return i == end; }, inner_);
        }

    private:
        std::variant<typename PreferredLoader::iterator, typename FallbackStorageLoader::iterator> inner_;
    };

    iterator begin() {
        return visit([](auto& loader) { return iterator(loader.begin()); });
    }
    std::default_sentinel_t end() const noexcept { return {}; }

    /// Calls `f` with the loader in use (a Loader<Preferred, ...> or a Loader<Fallback, ...>).
    template <class F>
    decltype(auto) visit(F&& f) {
        if (loaders_.index() == 1) return f(std::get<1>(loaders_));
        return f(std::get<2>(loaders_));
    }
    template <class F>
    decltype(auto) visit(F&& f) const {
        if (loaders_.index() == 1) return f(std::get<1>(loaders_));
        return f(std::get<2>(loaders_));
    }

    [[nodiscard]] const Plan& plan() const {
        return visit([](const auto& loader) -> const Plan& { return loader.plan(); });
    }
    [[nodiscard]] const LoadStats& stats() const {
        return visit([](const auto& loader) -> const LoadStats& { return loader.stats(); });
    }
    [[nodiscard]] const Sk& sink() const {
        return visit([](const auto& loader) -> const Sk& { return loader.sink(); });
    }
    /// The storage in use: "gds", "uring", "pread", ...
    [[nodiscard]] std::string_view backend() const {
        return visit([](const auto& loader) { return std::string_view(loader.storage().name()); });
    }
    /// Why the preferred storage was passed over, then why the fallback's own choice fell back
    /// (storage::automatic: io_uring refused), joined by "; "; empty when neither was.
    [[nodiscard]] std::string fallback_reason() const {
        std::string reason = passed_over_;
        visit([&reason](const auto& loader) {
            if constexpr (requires { loader.storage().fallback_reason(); }) {
                const std::string& own = loader.storage().fallback_reason();
                if (!own.empty()) reason += (reason.empty() ? "" : "; ") + own;
            }
        });
        return reason;
    }

private:
    std::variant<std::monostate, PreferredLoader, FallbackStorageLoader> loaders_;
    std::string passed_over_;
};

/// A loader that reads with the automatic backend choice into a bounded host ring.
inline Loader<storage::automatic, transport::single, sink::host> load_to_host(
    BorrowedCheckpoint checkpoint, LoadOptions options = {}, storage::automatic::Options storage = {},
    std::uint64_t ring_bytes = 0) {
    return {checkpoint, storage::automatic(storage), transport::single{}, sink::host(ring_bytes), std::move(options)};
}

/// A loader that reads each tensor into the host memory `destination` returns for it.
inline Loader<storage::automatic, transport::single, sink::placement> load_into(
    BorrowedCheckpoint checkpoint, sink::placement::Destination destination, LoadOptions options = {},
    storage::automatic::Options storage = {}) {
    return {checkpoint, storage::automatic(storage), transport::single{}, sink::placement(std::move(destination)),
            std::move(options)};
}

#if INSTANTTENSOR_HAS_CUDA
/// A load to the GPU: GPUDirect Storage where it can run, else the host backends through pinned
/// staging (the FallbackLoader says which, and why).
template <Sink Sk>
using DeviceLoader = FallbackLoader<storage::gds, storage::automatic, Sk>;

namespace detail {
/// The storages a load to GPU `device` tries, as `options.backend` asks: under Backend::automatic
/// GDS first where its library and the nvidia-fs driver are present (storage::gds::available())
/// and the load neither verifies nor decrypts (GDS reads into device memory, out of the CPU's reach),
/// then io_uring, then pread; Backend::gds GDS alone; any other backend that one alone.
inline std::pair<std::optional<storage::gds>, std::optional<storage::automatic>> device_storages(
    int device, storage::automatic::Options options, const LoadOptions& load) {
    std::pair<std::optional<storage::gds>, std::optional<storage::automatic>> tries;
    if (options.backend == storage::Backend::gds ||
        (options.backend == storage::Backend::automatic && !load.verify && !load.verify_files && !load.key && storage::gds::available()))
        tries.first.emplace(storage::gds::Options{.device = device});
    if (options.backend != storage::Backend::gds) tries.second.emplace(options);
    return tries;
}
}  // namespace detail

/// A loader that reads through staging (pinned, or device memory with GDS) into a ring of device
/// memory on `ring.device`.
inline DeviceLoader<sink::device_ring> load_to_device(BorrowedCheckpoint checkpoint, sink::device_ring::Options ring = {},
                                                      LoadOptions options = {}, storage::automatic::Options storage = {}) {
    auto [gds, host] = detail::device_storages(ring.device, storage, options);
    return {checkpoint, std::move(gds), std::move(host), [ring] { return sink::device_ring(ring); }, std::move(options)};
}

/// A loader that copies each tensor into the device memory `destination` returns for it.
inline DeviceLoader<sink::device_placement> load_into_device(
    BorrowedCheckpoint checkpoint, sink::placement::Destination destination,
    sink::device_placement::Options placement = {}, LoadOptions options = {}, storage::automatic::Options storage = {}) {
    auto [gds, host] = detail::device_storages(placement.device, storage, options);
    return {checkpoint, std::move(gds), std::move(host),
            [destination = std::move(destination), placement] { return sink::device_placement(destination, placement); },
            std::move(options)};
}
#endif

#if INSTANTTENSOR_HAS_NCCL
/// A loader for one rank of an NCCL group: it reads about 1/N of the checkpoint, the group
/// exchanges the rest, and the tensors this rank keeps (options.share) land in a device ring on
/// the communicator's GPU.
inline Loader<storage::automatic, transport::nccl, sink::device_ring> load_distributed(
    BorrowedCheckpoint checkpoint, transport::nccl group, LoadOptions options = {},
    sink::device_ring::Options ring = {}, storage::automatic::Options storage = {}) {
    ring.device = group.device();
    return {checkpoint, storage::automatic(storage), std::move(group), sink::device_ring(ring), std::move(options)};
}

/// A loader for one rank of an NCCL group that copies the bytes this rank keeps into the device
/// memory `destination` returns for each tensor it keeps (of the size of its rows, for a split one).
inline Loader<storage::automatic, transport::nccl, sink::device_placement> load_distributed_into(
    BorrowedCheckpoint checkpoint, transport::nccl group, sink::placement::Destination destination,
    LoadOptions options = {}, sink::device_placement::Options placement = {}, storage::automatic::Options storage = {}) {
    placement.device = group.device();
    return {checkpoint, storage::automatic(storage), std::move(group),
            sink::device_placement(std::move(destination), placement), std::move(options)};
}
#endif

}  // namespace instanttensor
