// instanttensor/config.hpp: the one place that decides which optional parts are compiled in.
//
// CMake defines INSTANTTENSOR_HAS_CUDA / _NCCL / _URING / _CURL / _CRYPTO to 0 or 1 on the instanttensor target,
// according to what it found and linked. A consumer that includes the headers without CMake gets
// the answer from __has_include, and must then link what it asked for itself.
#pragma once

#if !defined(INSTANTTENSOR_HAS_CUDA)
#  if __has_include(<cuda_runtime_api.h>)
#    define INSTANTTENSOR_HAS_CUDA 1
#  else
#    define INSTANTTENSOR_HAS_CUDA 0
#  endif
#endif

#if !defined(INSTANTTENSOR_HAS_NCCL)
#  if INSTANTTENSOR_HAS_CUDA && __has_include(<nccl.h>)
#    define INSTANTTENSOR_HAS_NCCL 1
#  else
#    define INSTANTTENSOR_HAS_NCCL 0
#  endif
#endif

#if !defined(INSTANTTENSOR_HAS_URING)
#  if __has_include(<liburing.h>)
#    define INSTANTTENSOR_HAS_URING 1
#  else
#    define INSTANTTENSOR_HAS_URING 0
#  endif
#endif

#if !defined(INSTANTTENSOR_HAS_CURL)
#  if __has_include(<curl/curl.h>)
#    define INSTANTTENSOR_HAS_CURL 1
#  else
#    define INSTANTTENSOR_HAS_CURL 0
#  endif
#endif

// Encrypted checkpoints (format/encryption.hpp): libsodium and OpenSSL's libcrypto.
#if !defined(INSTANTTENSOR_HAS_CRYPTO)
#  if __has_include(<sodium.h>) && __has_include(<openssl/evp.h>)
#    define INSTANTTENSOR_HAS_CRYPTO 1
#  else
#    define INSTANTTENSOR_HAS_CRYPTO 0
#  endif
#endif

#if INSTANTTENSOR_HAS_NCCL && !INSTANTTENSOR_HAS_CUDA
#  error "instanttensor: NCCL support needs CUDA (INSTANTTENSOR_HAS_CUDA=1)"
#endif

#if !__has_include(<xxhash.h>)
#  error "instanttensor needs xxhash.h (Debian: libxxhash-dev): loads verify tensors' XXH3 digests with it"
#endif

#if __cplusplus < 202002L && !defined(_MSVC_LANG)
#  error "instanttensor needs C++20"
#endif

#if !defined(__linux__)
#  error "instanttensor targets Linux (io_uring, O_DIRECT, mincore)"
#endif
