// instanttensor/transport/single.hpp: one process loads the whole checkpoint by itself.
#pragma once

namespace instanttensor::transport {

/// The group of one: rank 0 reads every extent and nothing is exchanged.
struct single {
    static constexpr bool needs_device_memory = false;
    [[nodiscard]] constexpr int rank() const noexcept { return 0; }
    [[nodiscard]] constexpr int size() const noexcept { return 1; }
};

}  // namespace instanttensor::transport
