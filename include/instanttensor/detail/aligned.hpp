// instanttensor/detail/aligned.hpp: page-aligned host memory, as O_DIRECT reads need.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <span>
#include <string>
#include <utility>

#include "instanttensor/error.hpp"

namespace instanttensor::detail {

inline constexpr std::size_t page_alignment = 4096;

/// An owned, page-aligned byte buffer (not zeroed).
class AlignedBuffer {
public:
    AlignedBuffer() noexcept = default;
    explicit AlignedBuffer(std::size_t size) : size_(size) {
        if (size == 0) return;
        const std::size_t rounded = (size + page_alignment - 1) / page_alignment * page_alignment;
        data_ = static_cast<std::byte*>(std::aligned_alloc(page_alignment, rounded));
        if (data_ == nullptr)
            throw io_error("host memory", "cannot allocate " + std::to_string(size) + " bytes of host memory", ENOMEM);
    }
    AlignedBuffer(AlignedBuffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
        if (this != &o) {
            std::free(data_);
            data_ = std::exchange(o.data_, nullptr);
            size_ = std::exchange(o.size_, 0);
        }
        return *this;
    }
    AlignedBuffer(const AlignedBuffer&) = delete;
    AlignedBuffer& operator=(const AlignedBuffer&) = delete;
    ~AlignedBuffer() { std::free(data_); }

    [[nodiscard]] std::byte* data() const noexcept { return data_; }
    [[nodiscard]] std::size_t size() const noexcept { return size_; }
    [[nodiscard]] std::span<std::byte> span() const noexcept { return {data_, size_}; }

private:
    std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

}  // namespace instanttensor::detail
