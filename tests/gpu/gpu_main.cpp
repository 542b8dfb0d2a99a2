// doctest main for the GPU tests: exit 77 (skipped) where there is no GPU.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <instanttensor/detail/cuda.hpp>

#include <cstdio>

int main(int argc, char** argv) {
    if (instanttensor::detail::device_count() == 0) {
        std::puts("no CUDA device: GPU tests skipped");
        return 77;
    }
    return doctest::Context(argc, argv).run();
}
