// tests/docs/snippet_harness.hpp: what the documents' C++ blocks take as given.
//
// A block of README.md or docs/*.md is compiled as written (tests/docs/snippets.py), inside a
// function of namespace instanttensor_docs, where the names below are in scope: the runtime's
// objects that the prose introduces ("comm: your ncclComm_t"), declared and never defined, since
// the blocks are compiled, not linked or run.
#pragma once

#include <functional>
#include <map>
#include <string>

#include <instanttensor/loader.hpp>

namespace it = instanttensor;

namespace instanttensor_docs {

/// The caller's use of a tensor.
template <class... Args>
void consume(const Args&...) {}

/// A checkpoint opened earlier in the document.
extern it::format::Checkpoint checkpoint;

/// The runtime's device buffers, by tensor name.
extern std::map<std::string, void*, std::less<>> my_weights;

#if INSTANTTENSOR_HAS_CUDA
/// The runtime's stream.
extern cudaStream_t stream;
#endif

#if INSTANTTENSOR_HAS_NCCL
/// The runtime's communicator.
extern ncclComm_t comm;
#endif

}  // namespace instanttensor_docs
