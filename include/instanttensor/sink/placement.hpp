// instanttensor/sink/placement.hpp: tensors land in memory the caller chose for each of them.
//
// The caller's function returns, for each selected tensor, a span of exactly its size (for example
// a slice of the runtime's own preallocated weight buffer); bytes go there and nowhere else, so a
// view stays valid as long as the caller's memory does. The function is called in load order,
// before any byte of that tensor is read.
#pragma once

#include <cstring>
#include <functional>
#include <string>

#include "instanttensor/concepts.hpp"
#include "instanttensor/error.hpp"

namespace instanttensor::sink {

class placement {
public:
    static constexpr MemoryKind memory = MemoryKind::host;
    using Destination = std::function<std::span<std::byte>(const format::TensorRef&)>;

    explicit placement(Destination destination) : destination_(std::move(destination)) {}

    void prepare(std::uint64_t) {
        if (!destination_) throw error("", "sink::placement needs a destination function");
    }

    std::span<std::byte> reserve(const format::TensorRef& tensor) {
        const auto span = destination_(tensor);
        if (span.size() != tensor.nbytes() || span.data() == nullptr)
            throw error("", "destination for tensor '" + tensor.name() + "' has " + std::to_string(span.size()) +
                                " bytes; the tensor needs " + std::to_string(tensor.nbytes()));
        return span;
    }

    void store(std::byte* destination, const std::byte* staged, std::uint64_t bytes) {
        std::memcpy(destination, staged, bytes);
    }

    void release(const format::TensorRef&) noexcept {}

private:
    Destination destination_;
};

}  // namespace instanttensor::sink
