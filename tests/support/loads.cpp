// tests/support/loads.cpp: the loads every configuration test runs, compiled once (loads.hpp).
#include "loads.hpp"

#include <doctest/doctest.h>

#include <string>
#include <utility>

namespace instanttensor_test {

Outcome load(const fmt::Checkpoint& checkpoint, Via via, it::DirectIo direct, SinkKind sink, it::LoadOptions options) {
    Outcome out;
    with_storage(via, direct, [&](auto storage) {
        using S = decltype(storage);
        if (sink == SinkKind::host) {
            it::Loader<S, it::transport::single, it::sink::host> loader(checkpoint, std::move(storage), {},
                                                                        it::sink::host(test_ring), options);
            drain(loader, out);
        } else {
            Placements places(checkpoint);
            it::Loader<S, it::transport::single, it::sink::placement> loader(checkpoint, std::move(storage), {},
                                                                             places.sink(), options);
            for (const it::TensorView& t : loader) {
                const auto b = places.buffer(std::string(t.name));
                if (t.data.size() > 0) CHECK(t.data.data() == b.data());
                CHECK(t.data.size() == b.size());
                Loaded l{std::string(t.name), t.dtype, {t.shape.begin(), t.shape.end()}, {b.begin(), b.end()}, t.ref};
                out.tensors.push_back(std::move(l));
            }
            out.stats = loader.stats();
            out.plan_read_bytes = loader.plan().read_bytes;
            out.plan_extents = loader.plan().extents.size();
            out.direct_files = direct_files_of(loader.storage());
            // Each non-empty selected tensor asked for its destination exactly once.
            std::size_t non_empty = 0;
            for (const auto& t : out.tensors) non_empty += t.bytes.empty() ? 0 : 1;
            CHECK(places.calls() == non_empty);
        }
    });
    return out;
}

}  // namespace instanttensor_test
