// instanttensor/detail/cufile_shim.hpp: the few cuFile (GPUDirect Storage) entry points the gds
// backend calls, loaded with dlopen on first use. Nothing links libcufile and nothing needs
// cufile.h at build time; the types below mirror the C ABI of cufile.h for these calls.
#pragma once

#include <dlfcn.h>
#include <sys/types.h>

#include <cstddef>
#include <string>
#include <type_traits>

#include "instanttensor/error.hpp"

namespace instanttensor::detail {

struct CuFileError {
    int err;     // CUfileOpError: 0 success, 5000 and up failures
    int cu_err;  // CUresult when err says a CUDA call failed
};

struct CuFileDescr {
    int type;  // CU_FILE_HANDLE_TYPE_OPAQUE_FD
    union {
        int fd;
        void* handle;
    } handle;
    const void* fs_ops;
};

using CuFileHandle = void*;
inline constexpr int cufile_handle_type_fd = 1;  // CU_FILE_HANDLE_TYPE_OPAQUE_FD

/// Words for the cuFile errors a load meets when GDS cannot run.
inline std::string describe(CuFileError e) {
    std::string s = "cuFile error " + std::to_string(e.err);
    switch (e.err) {
    case 5027: return s + " (file descriptor is not registered: no nvidia-fs driver, or GDS does not support this filesystem)";
    case 5011: return s + " (CUDA driver error " + std::to_string(e.cu_err) + ")";
    default: return s;
    }
}

/// libcufile's functions, resolved once per process.
struct CuFile {
    CuFileError (*driver_open)() = nullptr;
    CuFileError (*handle_register)(CuFileHandle*, CuFileDescr*) = nullptr;
    void (*handle_deregister)(CuFileHandle) = nullptr;
    ssize_t (*read)(CuFileHandle, void*, std::size_t, off_t, off_t) = nullptr;
    CuFileError (*buf_register)(const void*, std::size_t, int) = nullptr;
    CuFileError (*buf_deregister)(const void*) = nullptr;

    /// The loaded library, or unavailable_error saying why it could not be loaded.
    static const CuFile& load();
};

struct CuFileLibrary {
    CuFile api;
    std::string problem;  // why it could not be loaded; empty when it was

    static CuFileLibrary open() {
        CuFileLibrary l;
        void* lib = nullptr;
        for (const char* name : {"libcufile.so.0", "libcufile.so", "/usr/local/cuda/lib64/libcufile.so.0"})
            if ((lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
        if (lib == nullptr) {
            const char* why = ::dlerror();
            l.problem = std::string("cannot load libcufile.so.0 (GPUDirect Storage is not installed): ") + (why ? why : "not found");
            return l;
        }
        // The library stays loaded for the life of the process, like the driver it opens.
        auto bind = [&](auto& fn, const char* symbol) {
            fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(lib, symbol));
            if (fn == nullptr && l.problem.empty()) l.problem = std::string("libcufile has no ") + symbol;
        };
        bind(l.api.driver_open, "cuFileDriverOpen");
        bind(l.api.handle_register, "cuFileHandleRegister");
        bind(l.api.handle_deregister, "cuFileHandleDeregister");
        bind(l.api.read, "cuFileRead");
        bind(l.api.buf_register, "cuFileBufRegister");
        bind(l.api.buf_deregister, "cuFileBufDeregister");
        return l;
    }
};

inline const CuFile& CuFile::load() {
    static const CuFileLibrary library = CuFileLibrary::open();
    if (!library.problem.empty()) throw unavailable_error("libcufile", library.problem);
    return library.api;
}

}  // namespace instanttensor::detail
