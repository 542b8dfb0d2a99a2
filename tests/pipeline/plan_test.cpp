// make_plan: extents cover every selected tensor's bytes exactly once, aligned and bounded, shared
// by adjacent tensors, split across extents for large tensors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "instanttensor/format/writer.hpp"
#include "instanttensor/pipeline/plan.hpp"
#include "loads.hpp"

namespace {

using namespace instanttensor_test;
using it::Plan;


std::uint64_t align_down(std::uint64_t v, std::uint64_t a) { return v / a * a; }

/// Every property a plan must have, checked from the checkpoint and the plan alone (planned with
/// every file's chunk size `chunk`: 1 for none).
void check_plan(const fmt::Checkpoint& checkpoint, const Plan& plan, const it::TensorFilter& filter,
                const std::vector<std::uint64_t>& alignment, std::uint64_t max_extent, std::uint64_t chunk = 1) {
    // The selected tensors, in file then offset order.
    const auto refs = expected_order(checkpoint, filter);
    REQUIRE(plan.tensors.size() == refs.size());
    std::uint64_t tensor_bytes = 0, largest = 0;
    for (std::size_t t = 0; t < refs.size(); ++t) {
        CHECK(plan.tensors[t].ref == refs[t]);
        tensor_bytes += refs[t]->nbytes();
        largest = std::max(largest, refs[t]->nbytes());
    }
    CHECK(plan.tensor_bytes == tensor_bytes);
    CHECK(plan.largest_tensor == largest);

    const auto owns_extents = [&](const fmt::TensorRef& t) { return alignment[t.file] == 1 && t.nbytes() >= max_extent; };

    // Extents: aligned, bounded, in file then offset order, owning consecutive runs of pieces.
    std::uint32_t next_piece = 0;
    std::uint64_t read_bytes = 0;
    std::vector<std::vector<std::uint32_t>> pieces_of(refs.size());
    for (std::size_t x = 0; x < plan.extents.size(); ++x) {
        const auto& e = plan.extents[x];
        CAPTURE(x);
        REQUIRE(e.file < alignment.size());
        const std::uint64_t a = alignment[e.file];
        CHECK(e.offset % a == 0);
        CHECK(e.length % a == 0);
        CHECK(e.length <= max_extent);
        CHECK(e.needed > 0);
        CHECK(e.needed <= e.length);
        CHECK(e.length - e.needed < a);  // no more than the alignment's round-up
        CHECK(e.first_piece == next_piece);
        CHECK(e.piece_count >= 1);
        if (x > 0) {
            const auto& prev = plan.extents[x - 1];
            CHECK((prev.file < e.file || (prev.file == e.file && prev.offset <= e.offset)));
            // A new extent starts only when the previous one is full (no room for the next chunk), the
            // bytes are not adjacent, or a tensor with extents of its own ends or starts there.
            const auto& first = plan.pieces[e.first_piece];
            const auto& before = plan.pieces[prev.first_piece + prev.piece_count - 1];
            const std::uint64_t starts_at = refs[first.tensor]->file_offset + first.tensor_offset;
            const bool own = owns_extents(*refs[first.tensor]) || owns_extents(*refs[before.tensor]);
            const std::uint64_t next_chunk = std::min(chunk, refs[first.tensor]->nbytes() - first.tensor_offset);
            if (prev.file == e.file && prev.offset + prev.needed == starts_at && !own) CHECK(prev.needed + next_chunk > max_extent);
        }
        // In a buffered file, a tensor of at least one extent shares none of its extents.
        for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p)
            if (owns_extents(*refs[plan.pieces[p].tensor])) CHECK(e.piece_count == 1);
        std::uint64_t cursor = 0;
        for (std::uint32_t p = e.first_piece; p < e.first_piece + e.piece_count; ++p) {
            REQUIRE(p < plan.pieces.size());
            const auto& piece = plan.pieces[p];
            REQUIRE(piece.tensor < refs.size());
            const auto& ref = *refs[piece.tensor];
            CHECK(ref.file == e.file);
            CHECK(piece.length > 0);
            // The piece's bytes in the extent are the tensor's bytes in the file.
            CHECK(e.offset + piece.extent_offset == ref.file_offset + piece.tensor_offset);
            if (p == e.first_piece) CHECK(piece.extent_offset < a);  // extents start at most one alignment early
            else CHECK(piece.extent_offset == cursor);               // pieces of an extent are adjacent
            cursor = piece.extent_offset + piece.length;
            pieces_of[piece.tensor].push_back(p);
        }
        CHECK(cursor == e.needed);
        next_piece += e.piece_count;
        read_bytes += e.length;
    }
    CHECK(next_piece == plan.pieces.size());
    CHECK(plan.read_bytes == read_bytes);

    // Each tensor's bytes are covered exactly once, by consecutive pieces in tensor order.
    for (std::size_t t = 0; t < refs.size(); ++t) {
        CAPTURE(refs[t]->name());
        const auto& mine = pieces_of[t];
        CHECK(plan.tensors[t].piece_count == mine.size());
        if (refs[t]->nbytes() == 0) CHECK(mine.empty());
        std::uint64_t covered = 0;
        for (std::size_t k = 0; k < mine.size(); ++k) {
            CHECK(mine[k] == mine[0] + k);
            CHECK(plan.pieces[mine[k]].tensor_offset == covered);
            covered += plan.pieces[mine[k]].length;
        }
        CHECK(covered == refs[t]->nbytes());
    }

    // Unselected tensors are not planned, and with no alignment padding no extent touches them.
    for (const auto& t : checkpoint.tensors()) {
        if (!filter || filter(t) || t.nbytes() == 0) continue;
        if (alignment[t.file] != 1) continue;
        for (const auto& e : plan.extents)
            if (e.file == t.file)
                CHECK((e.offset + e.length <= t.file_offset || e.offset >= t.file_offset + t.nbytes()));
    }
}

std::vector<std::uint64_t> alignments(const fmt::Checkpoint& c, std::uint64_t a) {
    return std::vector<std::uint64_t>(c.files().size(), a);
}

}  // namespace

TEST_CASE("plan: tiny adjacent tensors share extents") {
    const auto checkpoint = checkpoint_of({tiny_specs(400)});
    const auto& file = checkpoint.files()[0];
    const std::uint64_t begin = file.header.data_offset(), end = file.header.file_size();
    for (std::uint64_t a : {1ull, 512ull, 4096ull}) {
        for (std::uint64_t max : {3 * 4096ull, 16384ull, 1ull << 20}) {
            CAPTURE(a);
            CAPTURE(max);
            const auto align = alignments(checkpoint, a);
            const auto plan = it::make_plan(checkpoint, {}, align, max);
            check_plan(checkpoint, plan, {}, align, max);
            // Extents are as few as the bytes allow: full extents from the aligned start, then the rest.
            const std::uint64_t span = end - align_down(begin, a);
            CHECK(plan.extents.size() == (span + max - 1) / max);
            CHECK(plan.extents.size() < plan.tensors.size() / 10);
            if (a == 1) CHECK(plan.read_bytes == plan.tensor_bytes);
        }
    }
}

TEST_CASE("plan: a tensor larger than an extent is cut into consecutive pieces") {
    const auto checkpoint = checkpoint_of({{{"small.a", fmt::Dtype::U8, {3}},
                                            {"big", fmt::Dtype::U8, {(1u << 20) + 77}},
                                            {"small.b", fmt::Dtype::U8, {5}},
                                            {"medium", fmt::Dtype::F32, {3000}}}});
    for (std::uint64_t a : {1ull, 4096ull}) {
        for (std::uint64_t max : {3 * 4096ull, 65536ull, 1ull << 19}) {
            CAPTURE(a);
            CAPTURE(max);
            const auto align = alignments(checkpoint, a);
            const auto plan = it::make_plan(checkpoint, {}, align, max);
            check_plan(checkpoint, plan, {}, align, max);
            const auto* big = checkpoint.find("big");
            REQUIRE(big != nullptr);
            std::uint32_t big_index = 0;
            while (plan.tensors[big_index].ref != big) ++big_index;
            CHECK(plan.tensors[big_index].piece_count >= big->nbytes() / max);
            CHECK(plan.tensors[big_index].piece_count <= big->nbytes() / max + 2);
        }
    }
}

TEST_CASE("plan: unaligned data sections, odd offsets, several files") {
    const auto checkpoint = checkpoint_of({odd_specs(), tiny_specs(50, 7), {{"last", fmt::Dtype::U8, {99999}}}});
    // Data sections start at 8 + header length: a multiple of 8, not of 4096.
    for (const auto& f : checkpoint.files()) CHECK(f.header.data_offset() % 4096 != 0);
    std::size_t odd = 0;
    for (const auto& t : checkpoint.tensors()) odd += t.file_offset % 2;
    CHECK(odd > 3);
    for (std::uint64_t max : {3 * 4096ull, 16384ull, 20480ull, 1ull << 20}) {
        CAPTURE(max);
        for (const auto& align : {std::vector<std::uint64_t>{1, 1, 1}, std::vector<std::uint64_t>{4096, 4096, 4096},
                                  std::vector<std::uint64_t>{512, 1, 4096}}) {
            const auto plan = it::make_plan(checkpoint, {}, align, max);
            check_plan(checkpoint, plan, {}, align, max);
            for (const auto& e : plan.extents)
                CHECK(e.offset >= align_down(checkpoint.files()[e.file].header.data_offset(), align[e.file]));
        }
    }
}

TEST_CASE("plan: a filter leaves unselected tensors out and unread") {
    const auto checkpoint = checkpoint_of({odd_specs(), tiny_specs(60, 3)});
    const it::TensorFilter by_names = it::select_names({"odd.2", "odd.6", "odd.12", "tiny.7", "tiny.8", "wide.b"});
    const it::TensorFilter by_predicate = [](const fmt::TensorRef& t) { return t.nbytes() % 3 != 0; };
    const it::TensorFilter none = [](const fmt::TensorRef&) { return false; };
    for (const auto* filter : {&by_names, &by_predicate, &none}) {
        for (std::uint64_t a : {1ull, 4096ull}) {
            CAPTURE(a);
            const auto align = alignments(checkpoint, a);
            const auto plan = it::make_plan(checkpoint, *filter, align, 16384);
            check_plan(checkpoint, plan, *filter, align, 16384);
            if (a == 1) CHECK(plan.read_bytes == plan.tensor_bytes);
        }
    }
    const auto plan = it::make_plan(checkpoint, by_names, alignments(checkpoint, 1), 16384);
    CHECK(plan.tensors.size() == 6);
    const auto empty = it::make_plan(checkpoint, none, alignments(checkpoint, 4096), 16384);
    CHECK(empty.tensors.empty());
    CHECK(empty.extents.empty());
    CHECK(empty.read_bytes == 0);
}

TEST_CASE("plan: empty tensors and scalars") {
    const auto checkpoint = checkpoint_of({edge_specs()});
    for (std::uint64_t a : {1ull, 4096ull}) {
        const auto align = alignments(checkpoint, a);
        const auto plan = it::make_plan(checkpoint, {}, align, 16384);
        check_plan(checkpoint, plan, {}, align, 16384);
        for (const auto& t : plan.tensors) CHECK((t.piece_count == 0) == (t.ref->nbytes() == 0));
    }
    const auto only_empty = checkpoint_of({{{"e1", fmt::Dtype::F32, {0}}, {"e2", fmt::Dtype::U8, {4, 0}}}});
    const auto plan = it::make_plan(only_empty, {}, alignments(only_empty, 4096), 16384);
    CHECK(plan.tensors.size() == 2);
    CHECK(plan.extents.empty());
    CHECK(plan.pieces.empty());
    CHECK(plan.largest_tensor == 0);
    for (const auto& t : plan.tensors) CHECK(t.piece_count == 0);
}

TEST_CASE("plan: randomized layouts, filters, alignments and extent sizes") {
    std::mt19937_64 rng(20240611);
    for (int round = 0; round < 150; ++round) {
        CAPTURE(round);
        std::vector<std::vector<fmt::TensorSpec>> files(1 + rng() % 3);
        std::size_t n = 0;
        for (auto& f : files) {
            const std::size_t count = 1 + rng() % 30;
            for (std::size_t i = 0; i < count; ++i, ++n) {
                std::uint64_t size;
                switch (rng() % 10) {
                case 0: size = 0; break;
                case 1: case 2: case 3: case 4: size = 1 + rng() % 100; break;
                case 5: case 6: case 7: size = 100 + rng() % 20000; break;
                case 8: size = 4096 * (1 + rng() % 8) + rng() % 3; break;
                default: size = 20000 + rng() % 150000; break;
                }
                f.push_back({"t" + std::to_string(n), fmt::Dtype::U8, {size}});
            }
        }
        const auto checkpoint = checkpoint_of(files);
        std::vector<std::uint64_t> align;
        std::uint64_t largest_a = 1;
        for (std::size_t f = 0; f < files.size(); ++f) {
            const std::uint64_t choices[] = {1, 1, 512, 4096};
            align.push_back(choices[rng() % 4]);
            largest_a = std::max(largest_a, align.back());
        }
        const std::uint64_t max = largest_a * 3 + largest_a * (rng() % 40);
        const std::uint64_t keep = rng() % 4;  // 0: all; otherwise a pseudo-random subset
        const std::uint64_t salt = rng();
        it::TensorFilter filter;
        if (keep != 0)
            filter = [keep, salt](const fmt::TensorRef& t) {
                return (std::hash<std::string>{}(t.name()) ^ salt) % 4 < keep;
            };
        CAPTURE(max);
        const auto plan = it::make_plan(checkpoint, filter, align, max);
        check_plan(checkpoint, plan, filter, align, max);
    }
}

TEST_CASE("plan: invalid arguments are refused") {
    const auto checkpoint = checkpoint_of({tiny_specs(5)});
    const std::vector<std::uint64_t> two{1, 1};
    CHECK_THROWS_AS(it::make_plan(checkpoint, {}, two, 16384), std::invalid_argument);
    CHECK_THROWS_AS(it::make_plan(checkpoint, {}, std::vector<std::uint64_t>{3}, 16384), std::invalid_argument);
    CHECK_THROWS_AS(it::make_plan(checkpoint, {}, std::vector<std::uint64_t>{0}, 16384), std::invalid_argument);
    CHECK_THROWS_AS(it::make_plan(checkpoint, {}, std::vector<std::uint64_t>{4096}, 8192), std::invalid_argument);
    CHECK_THROWS_AS(it::make_plan(checkpoint, {}, std::vector<std::uint64_t>{4096}, 4096 * 3 + 1),
                    std::invalid_argument);
    CHECK_NOTHROW(it::make_plan(checkpoint, {}, std::vector<std::uint64_t>{4096}, 4096 * 3));
}

TEST_CASE("plan: with chunks, every piece starts on a chunk of its tensor and ends on one or at its end") {
    const auto checkpoint = checkpoint_of({odd_specs(), tiny_specs(50, 7), {{"big", fmt::Dtype::U8, {(1u << 20) + 77}}}});
    for (std::uint64_t a : {1ull, 4096ull}) {
        for (std::uint64_t chunk : {4096ull, 16384ull}) {
            for (std::uint64_t max : {3 * 4096ull, 65536ull, 1ull << 20}) {
                if (max - (a > 1 ? a : 0) < chunk) continue;  // a read must hold a chunk past its aligned head
                CAPTURE(a);
                CAPTURE(chunk);
                CAPTURE(max);
                const auto align = alignments(checkpoint, a);
                const std::vector<std::uint64_t> chunks(checkpoint.files().size(), chunk);
                const auto plan = it::make_plan(checkpoint, {}, align, max, {}, chunks);
                check_plan(checkpoint, plan, {}, align, max, chunk);
                for (const it::Piece& p : plan.pieces) {
                    const std::uint64_t end = p.tensor_offset + p.length;
                    CHECK(p.tensor_offset % chunk == 0);
                    CHECK((end % chunk == 0 || end == plan.tensors[p.tensor].ref->nbytes()));
                }
            }
        }
    }
    const std::vector<std::uint64_t> chunks(checkpoint.files().size(), 1 << 20);
    CHECK_THROWS_WITH_AS(it::make_plan(checkpoint, {}, alignments(checkpoint, 1), 65536, {}, chunks),
                         doctest::Contains("cannot hold a chunk"), it::usage_error);
    CHECK_THROWS_WITH_AS(it::make_plan(checkpoint, {}, alignments(checkpoint, 1), 65536,
                                       [](const fmt::TensorRef& t) { return std::pair<std::uint64_t, std::uint64_t>{0, std::min<std::uint64_t>(t.nbytes(), 1)}; },
                                       std::vector<std::uint64_t>(checkpoint.files().size(), 4096)),
                         doctest::Contains("cuts one of its chunks"), it::usage_error);
}

TEST_CASE("plan: whole files tile each file from its first byte to its last, headers and files without tensors included") {
    // A header larger than an extent (400 tiny tensors), a file without tensors, a tensor of its own extents.
    const auto checkpoint = checkpoint_of({tiny_specs(400), {}, {{"small", fmt::Dtype::U8, {3}}, {"big", fmt::Dtype::U8, {(1u << 20) + 77}}}});
    for (std::uint64_t a : {1ull, 4096ull}) {
        for (std::uint64_t max : {3 * 4096ull, 16384ull, 1ull << 20}) {
            CAPTURE(a);
            CAPTURE(max);
            const auto align = alignments(checkpoint, a);
            const auto plan = it::make_plan(checkpoint, {}, align, max, {}, {}, it::Coverage::whole_files);
            const auto tensors_only = it::make_plan(checkpoint, {}, align, max);
            CHECK(plan.tensors.size() == tensors_only.tensors.size());
            std::vector<std::uint64_t> covered(checkpoint.files().size());
            std::uint32_t file = 0, next_piece = 0;
            for (const it::Extent& e : plan.extents) {
                CHECK(e.file >= file);  // in file order
                file = e.file;
                CHECK(e.offset == covered[e.file]);
                CHECK(e.offset % a == 0);
                CHECK(e.needed > 0);
                CHECK(e.length <= max);
                CHECK(e.length == (e.needed + a - 1) / a * a);
                CHECK(e.first_piece == next_piece);
                next_piece += e.piece_count;
                if (e.piece_count == 0) CHECK(e.offset + e.needed <= checkpoint.files()[e.file].header.data_offset());
                covered[e.file] += e.needed;
            }
            CHECK(next_piece == plan.pieces.size());
            for (std::uint32_t f = 0; f < covered.size(); ++f) CHECK(covered[f] == checkpoint.files()[f].header.file_size());
            std::vector<std::uint64_t> landed(plan.tensors.size());
            for (const it::Piece& p : plan.pieces) landed[p.tensor] += p.length;
            for (std::size_t t = 0; t < plan.tensors.size(); ++t) CHECK(landed[t] == plan.tensors[t].ref->nbytes());
        }
    }
    SUBCASE("a filter leaves a gap where the tensors it drops lie") {
        const auto plan = it::make_plan(checkpoint, [](const fmt::TensorRef& t) { return t.name() != "tiny.5"; },
                                        alignments(checkpoint, 1), 16384, {}, {}, it::Coverage::whole_files);
        bool gap = false;
        std::vector<std::uint64_t> covered(checkpoint.files().size());
        for (const it::Extent& e : plan.extents) {
            gap |= e.offset != covered[e.file];
            covered[e.file] = e.offset + e.needed;
        }
        CHECK(gap);
    }
}
