// instanttensor/storage/gds.hpp: GPUDirect Storage, reading files straight into device memory.
//
// cuFile is loaded with dlopen (detail/cufile_shim.hpp): the library builds without cufile.h and
// runs without libcufile. Reads are cuFileRead calls on a small pool of threads (each with the GPU
// current), into the tensors' device destinations or device staging. When the library, its
// driver (nvidia-fs) or a file refuses, open() throws unavailable_error saying which and why, and
// a caller falls back to a host backend (the `instanttensor` command does, under --backend auto).
//
// `available()` answers cheaply whether trying is worthwhile: libcufile loads and the nvidia-fs
// driver is present. Without nvidia-fs cuFile can only emulate GDS with POSIX reads (compat mode),
// which the host backends' pinned pipeline beats.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_CUDA

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "instanttensor/detail/cuda.hpp"
#include "instanttensor/detail/cufile_shim.hpp"
#include "instanttensor/detail/fd.hpp"
#include "instanttensor/detail/read_pool.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/io.hpp"

namespace instanttensor::storage {

class gds {
public:
    static constexpr MemoryKind destination = MemoryKind::device;

    struct Options {
        int device = 0;        ///< the GPU the destinations are on
        unsigned threads = 8;  ///< cuFileRead calls in flight
    };

    gds() : gds(Options{}) {}
    explicit gds(Options options) : options_(options) {}
    gds(gds&& other) noexcept : options_(other.options_) {}  // unopened only, as the other backends
    gds& operator=(gds&&) = delete;
    ~gds() { close(); }

    /// Whether GDS can be expected to work here: libcufile loads and nvidia-fs is present.
    [[nodiscard]] static bool available() noexcept {
        try {
            detail::CuFile::load();
        } catch (const unavailable_error&) {
            return false;
        }
        std::error_code ec;
        return std::filesystem::exists("/proc/driver/nvidia-fs", ec);
    }

    void open(const format::Checkpoint& checkpoint) {
        close();
        const auto paths = checkpoint.paths_to_open();
        api_ = &detail::CuFile::load();
        {
            detail::DeviceGuard guard(options_.device);
            INSTANTTENSOR_CUDA_CHECK(cudaFree(nullptr));  // cuFile needs the device's context
            if (const auto e = api_->driver_open(); e.err != 0)
                throw unavailable_error("cuFile", "cuFileDriverOpen failed: " + detail::describe(e));
        }
        for (std::uint32_t i = 0; i < paths.size(); ++i) {
            File file{paths[i].string(), checkpoint.open_file(i, O_DIRECT), nullptr};
            detail::CuFileDescr descr{};
            descr.type = detail::cufile_handle_type_fd;
            descr.handle.fd = file.fd.get();
            if (const auto e = api_->handle_register(&file.handle, &descr); e.err != 0)
                throw unavailable_error(file.path, "GPUDirect Storage refused the file: cuFileHandleRegister: " + detail::describe(e));
            files_.push_back(std::move(file));
        }
        pool_.start(options_.threads, [this](const ReadRequest& r) { return read_once(r); },
                    [device = options_.device] { cudaSetDevice(device); });
    }

    /// Registers the device staging memory with cuFile (faster reads into it); a refusal is harmless.
    void register_memory(std::span<std::byte> memory) {
        if (api_ != nullptr && !memory.empty() && api_->buf_register(memory.data(), memory.size(), 0).err == 0)
            registered_ = memory.data();
    }

    /// cuFile splits and aligns reads itself: any offset, length and address will do.
    [[nodiscard]] std::uint64_t alignment(std::uint32_t) const noexcept { return 1; }
    [[nodiscard]] std::size_t queue_depth() const noexcept { return options_.threads; }
    [[nodiscard]] std::string_view name() const noexcept { return "gds"; }
    [[nodiscard]] int device() const noexcept { return options_.device; }

    void submit(const ReadRequest& request) { pool_.submit(request); }
    std::size_t reap(std::span<ReadResult> out, bool wait) { return pool_.reap(out, wait); }

private:
    struct File {
        std::string path;
        detail::FileDescriptor fd;
        detail::CuFileHandle handle;
    };

    /// cuFileRead returns bytes, -1 with errno for a system error, or minus a cuFile error code.
    std::int64_t read_once(const ReadRequest& r) {
        const ssize_t n = api_->read(files_[r.file].handle, r.destination, r.length, static_cast<off_t>(r.offset), 0);
        if (n >= 0) return n;
        return n == -1 ? -errno : -EIO;
    }

    void close() noexcept {
        pool_.stop();
        if (api_ == nullptr) return;
        if (registered_ != nullptr) api_->buf_deregister(registered_);
        registered_ = nullptr;
        for (auto& f : files_)
            if (f.handle != nullptr) api_->handle_deregister(f.handle);
        files_.clear();
    }

    Options options_;
    const detail::CuFile* api_ = nullptr;
    std::vector<File> files_;
    void* registered_ = nullptr;
    detail::ReadPool pool_;
};

}  // namespace instanttensor::storage

#endif  // INSTANTTENSOR_HAS_CUDA
