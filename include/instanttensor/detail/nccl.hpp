// instanttensor/detail/nccl.hpp: every NCCL return code goes through INSTANTTENSOR_NCCL_CHECK,
// which throws nccl_error with the call, NCCL's error string and the communicator's last error.
#pragma once

#include "instanttensor/config.hpp"

#if INSTANTTENSOR_HAS_NCCL

#include <nccl.h>

#include <string>

#include "instanttensor/error.hpp"

namespace instanttensor::detail {

[[noreturn]] inline void throw_nccl_error(ncclResult_t status, ncclComm_t comm, const char* call) {
    std::string message = std::string(call) + " failed: " + ncclGetErrorString(status);
    if (comm != nullptr)
        if (const char* last = ncclGetLastError(comm); last != nullptr && *last != '\0') message += " (" + std::string(last) + ")";
    throw nccl_error("nccl", message);
}

}  // namespace instanttensor::detail

#define INSTANTTENSOR_NCCL_CHECK(comm, call)                                                                   \
    do {                                                                                                       \
        if (const ncclResult_t instanttensor_nccl_status_ = (call); instanttensor_nccl_status_ != ncclSuccess) \
            ::instanttensor::detail::throw_nccl_error(instanttensor_nccl_status_, comm, #call);                \
    } while (0)

#endif  // INSTANTTENSOR_HAS_NCCL
