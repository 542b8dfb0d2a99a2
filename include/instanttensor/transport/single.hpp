// instanttensor/transport/single.hpp: one process loads the whole checkpoint by itself.
#pragma once

#include "instanttensor/io.hpp"

namespace instanttensor::transport {

/// The group of one: rank 0 reads every extent and nothing is exchanged.
struct single {
    static constexpr MemoryKind memory = MemoryKind::host;  ///< exchanges nothing: fits any sink
    [[nodiscard]] constexpr int rank() const noexcept { return 0; }
    [[nodiscard]] constexpr int size() const noexcept { return 1; }
};

}  // namespace instanttensor::transport
