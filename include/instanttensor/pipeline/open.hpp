// instanttensor/pipeline/open.hpp: how every load starts: the files opened, the reads planned
// for the storage's alignment, the staging sized.
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "instanttensor/concepts.hpp"
#include "instanttensor/detail/aligned.hpp"
#include "instanttensor/error.hpp"
#include "instanttensor/format/checkpoint.hpp"
#include "instanttensor/format/encryption.hpp"
#include "instanttensor/pipeline/options.hpp"
#include "instanttensor/pipeline/plan.hpp"

namespace instanttensor::pipeline {

/// The smallest slot: three pages (make_plan needs reads of at least three times the largest
/// alignment, so that each one gets well past its aligned head).
inline constexpr std::uint64_t min_slot_bytes = 3 * detail::page_alignment;

/// How the reads of a plan are aligned.
enum class PlanAlignment : std::uint8_t {
    /// As the storage requires for each file: 1 where it reads buffered. A single load.
    storage,
    /// At page alignment in every file, whatever the storage chose: a group load, whose ranks must
    /// plan the same reads although each chooses buffered or O_DIRECT from its own page cache and
    /// filesystem. Every backend's alignment divides a page (detail::FileSet refuses O_DIRECT that
    /// needs more), so page-aligned reads suit every rank.
    page,
};

/// Opens the checkpoint's files with `storage` and plans the selected tensors, in reads of at most
/// one slot aligned as `alignment` says, of each tensor the bytes `range` says, cut at each file's
/// `chunk` (make_plan). A load that decrypts passes the chunk sizes (pipeline::Decryptor); one that
/// passes none refuses a key, and every load without a key refuses an encrypted file.
template <StorageBackend Storage>
Plan open_and_plan(const format::Checkpoint& checkpoint, Storage& storage, const LoadOptions& options,
                   PlanAlignment alignment = PlanAlignment::storage, const TensorRange& range = {},
                   std::span<const std::uint64_t> chunk = {}) {
    if (options.slot_bytes < min_slot_bytes || options.slot_bytes % detail::page_alignment != 0)
        throw usage_error("loader", "slot_bytes must be a multiple of 4096 and at least 12288");
    if (options.key && chunk.empty())
        throw usage_error(std::string(storage.name()), "reads into device memory, where a key cannot decrypt the bytes: load an "
                                                       "encrypted checkpoint through a host backend");
    if (!options.key)
        for (const format::CheckpointFile& file : checkpoint.files())
            if (format::is_encrypted(file.header))
                throw usage_error(file.path.string(), INSTANTTENSOR_HAS_CRYPTO
                                                          ? "is encrypted: load it with its key (LoadOptions::key; --key-file or --key-env)"
                                                          : "is encrypted, and this build cannot decrypt (it has no libsodium and OpenSSL)");
    storage.open(checkpoint);
    std::vector<std::uint64_t> aligned(checkpoint.files().size());
    for (std::uint32_t f = 0; f < aligned.size(); ++f) {
        aligned[f] = storage.alignment(f);
        if (alignment == PlanAlignment::page) {
            if (detail::page_alignment % aligned[f] != 0)
                throw usage_error(checkpoint.files()[f].path.string(),
                                  "the storage reads it at an alignment of " + std::to_string(aligned[f]) +
                                      " bytes, which does not divide the page alignment a group load plans with");
            aligned[f] = detail::page_alignment;
        }
    }
    return make_plan(checkpoint, options.filter, aligned, options.slot_bytes, range, chunk,
                     options.verify_files ? Coverage::whole_files : Coverage::tensors);
}

/// Staging slots for a plan: what the staging size holds, at least two (a read and a copy
/// overlap), at most one per extent.
inline std::uint64_t staging_slots(const Plan& plan, const LoadOptions& options) {
    return std::clamp<std::uint64_t>(options.staging_bytes / options.slot_bytes, 2,
                                     std::max<std::uint64_t>(2, plan.extents.size()));
}

}  // namespace instanttensor::pipeline
