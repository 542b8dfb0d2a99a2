// bench/raw_read.hpp: the bare io_uring read loop the benchmarks measure the loader against.
#pragma once

#include <instanttensor/detail/aligned.hpp>
#include <instanttensor/detail/fd.hpp>
#include <instanttensor/format/checkpoint.hpp>

#include <fcntl.h>
#include <liburing.h>

#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

/// Drops the checkpoint's pages from the page cache: the whole cache when
/// /proc/sys/vm/drop_caches is writable (root), and the files' own pages with
/// posix_fadvise(DONTNEED) in any case.
inline void drop_cache(const instanttensor::format::Checkpoint& checkpoint) {
    ::sync();
    if (std::ofstream drop("/proc/sys/vm/drop_caches"); drop) drop << "3\n";
    for (const auto& f : checkpoint.files()) {
        auto fd = instanttensor::detail::open_read_only(f.path);
        ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
    }
}

/// Reads every file whole, one after the other: `depth` reads of `chunk` bytes in flight into a
/// ring of buffers, buffered with IOSQE_ASYNC or O_DIRECT. Returns the bytes read.
inline std::uint64_t raw_uring_read(const instanttensor::format::Checkpoint& checkpoint, bool direct,
                                    unsigned depth = 64, std::size_t chunk = 1 << 20) {
    instanttensor::detail::AlignedBuffer buffers(depth * chunk);
    io_uring ring{};
    if (const int rc = ::io_uring_queue_init(depth, &ring, 0); rc != 0)
        throw std::runtime_error("io_uring unavailable: " + std::string(std::strerror(-rc)));
    std::uint64_t total = 0;
    for (const auto& f : checkpoint.files()) {
        auto fd = instanttensor::detail::open_read_only(f.path, direct ? O_DIRECT : 0);
        const std::uint64_t size = f.header.file_size();
        std::uint64_t next = 0;
        unsigned in_flight = 0;
        std::vector<unsigned> free_buffers;
        for (unsigned b = 0; b < depth; ++b) free_buffers.push_back(b);
        while (next < size || in_flight > 0) {
            while (next < size && !free_buffers.empty()) {
                const unsigned b = free_buffers.back();
                free_buffers.pop_back();
                io_uring_sqe* sqe = ::io_uring_get_sqe(&ring);
                ::io_uring_prep_read(sqe, fd.get(), buffers.data() + b * chunk, static_cast<unsigned>(chunk), next);
                if (!direct) sqe->flags |= IOSQE_ASYNC;
                ::io_uring_sqe_set_data64(sqe, b);
                next += chunk;
                ++in_flight;
            }
            ::io_uring_submit_and_wait(&ring, 1);
            io_uring_cqe* cqe;
            unsigned head, seen = 0;
            io_uring_for_each_cqe(&ring, head, cqe) {
                if (cqe->res < 0) {
                    ::io_uring_queue_exit(&ring);
                    throw std::runtime_error("raw read failed: " + std::string(std::strerror(-cqe->res)));
                }
                total += static_cast<std::uint64_t>(cqe->res);
                free_buffers.push_back(static_cast<unsigned>(cqe->user_data));
                ++seen;
            }
            ::io_uring_cq_advance(&ring, seen);
            in_flight -= seen;
        }
    }
    ::io_uring_queue_exit(&ring);
    return total;
}

}  // namespace bench
