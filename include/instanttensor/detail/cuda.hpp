// instanttensor/detail/cuda.hpp: the CUDA runtime calls the library makes, each checked, and RAII
// owners for device memory, pinned host memory, streams and events.
//
// Every CUDA return code goes through INSTANTTENSOR_CUDA_CHECK, which throws cuda_error with the
// call, the CUDA error name and message, and the library source line.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_CUDA

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdio>
#include <span>
#include <string>
#include <utility>

#include "instanttensor/error.hpp"

namespace instanttensor::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line,
                                          const std::string& context = {}) {
    cudaGetLastError();  // clear it, so that later calls report errors of their own
    std::string message = std::string(call) + " failed: " + cudaGetErrorName(status) + " (" +
                          cudaGetErrorString(status) + ")";
    if (!context.empty()) message += "; " + context;
    message += " [" + std::string(file) + ":" + std::to_string(line) + "]";
    throw cuda_error("cuda", message);
}

#define INSTANTTENSOR_CUDA_CHECK(call)                                                        \
    do {                                                                                      \
        if (const cudaError_t instanttensor_status_ = (call); instanttensor_status_ != cudaSuccess) \
            ::instanttensor::detail::throw_cuda_error(instanttensor_status_, #call, __FILE__, __LINE__); \
    } while (0)

inline std::string gib(std::size_t bytes) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / double(1ull << 30));
    return buf;
}

/// Number of CUDA devices, 0 when there is no driver or no GPU (never throws).
inline int device_count() noexcept {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

/// Makes `device` current for a scope and restores the caller's device after it: the library
/// never leaves the calling thread on another device.
class DeviceGuard {
public:
    explicit DeviceGuard(int device) {
        INSTANTTENSOR_CUDA_CHECK(cudaGetDevice(&previous_));
        if (previous_ != device) {
            INSTANTTENSOR_CUDA_CHECK(cudaSetDevice(device));
            switched_ = true;
        }
    }
    DeviceGuard(const DeviceGuard&) = delete;
    DeviceGuard& operator=(const DeviceGuard&) = delete;
    /// Restores the previous device only where it switched: cudaSetDevice makes the device's
    /// context, and a guard for GPU k in a thread already on GPU k must not make one on GPU 0.
    ~DeviceGuard() {
        if (switched_) cudaSetDevice(previous_);
    }

private:
    int previous_ = 0;
    bool switched_ = false;
};

/// Sole owner of memory from a CUDA allocator, released with `Free` on destruction.
template <cudaError_t (*Free)(void*)>
class CudaMemory {
public:
    CudaMemory() noexcept = default;
    CudaMemory(CudaMemory&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    CudaMemory& operator=(CudaMemory&& o) noexcept {
        if (this != &o) {
            reset();
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    CudaMemory(const CudaMemory&) = delete;
    CudaMemory& operator=(const CudaMemory&) = delete;
    ~CudaMemory() { reset(); }

    [[nodiscard]] std::byte* data() const noexcept { return static_cast<std::byte*>(data_); }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] std::span<std::byte> span() const noexcept { return {data(), size_}; }

protected:
    void reset() noexcept {
        if (data_ != nullptr) Free(data_);
        data_ = nullptr;
    }
    void* data_ = nullptr;
    std::size_t size_ = 0;
};

/// Device memory (cudaMalloc). An allocation that does not fit says how much was asked, how much
/// is free, and `lower_with` (the option that lowers the need).
class DeviceBuffer : public CudaMemory<cudaFree> {
public:
    DeviceBuffer() noexcept = default;
    explicit DeviceBuffer(std::size_t size, const char* lower_with = "the staging size (staging_bytes, --staging-mib)") {
        if (size == 0) return;
        if (const cudaError_t status = cudaMalloc(&data_, size); status != cudaSuccess) {
            data_ = nullptr;
            std::size_t free = 0, total = 0;
            cudaGetLastError();
            cudaMemGetInfo(&free, &total);
            throw_cuda_error(status, "cudaMalloc", __FILE__, __LINE__,
                             "asked for " + gib(size) + " of device memory, " + gib(free) + " of " + gib(total) +
                                 " free; lower " + lower_with);
        }
        size_ = size;
    }
};

/// Page-locked host memory (cudaHostAlloc, page aligned).
class PinnedBuffer : public CudaMemory<cudaFreeHost> {
public:
    PinnedBuffer() noexcept = default;
    explicit PinnedBuffer(std::size_t size) {
        if (size == 0) return;
        if (const cudaError_t status = cudaHostAlloc(&data_, size, cudaHostAllocDefault); status != cudaSuccess) {
            data_ = nullptr;
            throw_cuda_error(status, "cudaHostAlloc", __FILE__, __LINE__,
                             "asked for " + gib(size) + " of pinned host memory; lower the staging size (staging_bytes, --staging-mib)");
        }
        size_ = size;
    }
};

/// A non-blocking stream, destroyed (after its work) on destruction.
class Stream {
public:
    Stream() { INSTANTTENSOR_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
    Stream(Stream&& o) noexcept : stream_(std::exchange(o.stream_, nullptr)) {}
    Stream& operator=(Stream&&) = delete;
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    ~Stream() {
        if (stream_ != nullptr) {
            cudaStreamSynchronize(stream_);
            cudaStreamDestroy(stream_);
        }
    }
    [[nodiscard]] cudaStream_t get() const noexcept { return stream_; }

private:
    cudaStream_t stream_ = nullptr;
};

/// An event without timing, destroyed on destruction.
class Event {
public:
    Event() { INSTANTTENSOR_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming)); }
    Event(Event&& o) noexcept : event_(std::exchange(o.event_, nullptr)) {}
    Event& operator=(Event&&) = delete;
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;
    ~Event() {
        if (event_ != nullptr) cudaEventDestroy(event_);
    }
    [[nodiscard]] cudaEvent_t get() const noexcept { return event_; }

    void record(cudaStream_t stream) { INSTANTTENSOR_CUDA_CHECK(cudaEventRecord(event_, stream)); }
    /// Whether the work before the last record() finished (true if never recorded).
    [[nodiscard]] bool done() const {
        const cudaError_t status = cudaEventQuery(event_);
        if (status == cudaErrorNotReady) return false;
        INSTANTTENSOR_CUDA_CHECK(status);
        return true;
    }
    void wait() const { INSTANTTENSOR_CUDA_CHECK(cudaEventSynchronize(event_)); }

private:
    cudaEvent_t event_ = nullptr;
};

}  // namespace instanttensor::detail

#endif  // INSTANTTENSOR_HAS_CUDA
