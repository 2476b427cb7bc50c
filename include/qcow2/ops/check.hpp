// SPDX-License-Identifier: MIT
/// @file
/// @brief `check`: QEMU's consistency check and repair of an image's refcounts (`qemu-img check [-r leaks|all]`).
///
/// Rebuilds the refcount every host cluster should have from all of the image's metadata,
/// as QEMU's `calculate_refcounts` does, compares it with the stored refcounts
/// (`compare_refcounts`) and checks the COPIED flags of the active tables
/// (`check_oflag_copied`). Counts and classification are QEMU 7.2's, so the report equals
/// what `qemu-img check --output=json` prints for the same file. With repair, the stored
/// refcounts and COPIED flags are corrected as QEMU's `qcow2_check_refcounts` does, and
/// broken refcount structures are rebuilt (`rebuild_refcount_structure`). The algorithm is
/// in metadata/refcount_check.hpp.
#pragma once

#include "qcow2/metadata/refcount_check.hpp"
#include "qcow2/result.hpp"

namespace qcow2 {

/**
 * @brief Checks, and with `opts.repair` repairs, the refcounts of `img` as `qemu-img check [-r leaks|all]` does.
 *
 * Rebuilds the expected refcount of every host cluster from all metadata (header, active
 * and snapshot L1 tables, every L2 table once per referencing L1 entry, data and compressed
 * clusters, the snapshot table, the refcount table and blocks, the bitmap directory, tables
 * and data, the LUKS header), compares it with the stored refcounts and checks the COPIED
 * flags of the active L1 and L2 entries. Problems are counted in the report (and passed to
 * `opts.on_problem`), not returned as errors.
 *
 * @par Repair
 * `check_repair::none` does not modify the image. `leaks` lowers every stored refcount above
 * its references to the references (a leaked cluster gets 0); `all` also raises refcounts
 * below them, sets the COPIED flag of active L1 and L2 entries exactly when the refcount is
 * 1, and, when the refcount structure itself is broken (a referenced cluster under a missing
 * block or with refcount 0, a block that is unaligned, outside the file, has reserved bits or
 * a refcount other than 1), writes a new refcount structure as QEMU's
 * `rebuild_refcount_structure` does and then frees the old one. As `qemu-img check -r`, when
 * anything was fixed the image is checked again, and the report holds that second check's
 * counts plus the first pass's `corruptions_fixed` and `leaks_fixed`. When the repair pass
 * leaves no corruption and no check error, the dirty and corrupt bits are cleared. `leaks`
 * on an image whose structure needs a rebuild fails with `image_corrupt` and changes nothing
 * (QEMU then still clears the dirty bit when it closes the image; this does not).
 * Not repaired (QEMU repairs them): a refcount block outside the file is not appended to
 * the file (the structure is rebuilt instead, with the same counts), unaligned preallocated
 * zero clusters are not turned into plain zero clusters, freed clusters are not discarded.
 * @par Write order
 * Each write keeps the image consistent: lowering a refcount or raising one only ever
 * leaks; a rebuilt structure lives in clusters nothing references until the header is
 * switched to it (flush, one 12-byte header write, flush); COPIED flags follow the
 * refcounts already written. The image is flushed before the report is returned. The image's
 * header, L1 table and L2 cache are updated through its own members, so it stays usable.
 *
 * @par Memory
 * One counter per host cluster of the file plus one: 2 bytes each for refcount widths up
 * to 16 bits, 4 for 32 and 8 for 64 (QEMU keeps the same array); refused above
 * `opts.max_memory_bytes` (a rebuild may grow it by the clusters of the new structure).
 * Plus one cluster for L2 tables, the largest L1 table actually in the file (at most
 * 32 MiB), one bitmap table at a time (at most 8 MiB), the refcount table (at most 8 MiB,
 * twice during a rebuild) and `opts.cache_bytes` of refcount blocks.
 * @par I/O
 * Reads every L1 table, every L2 table (active ones twice), the bitmap tables, the
 * refcount table and every refcount block (through the cache); a repair reads it all again
 * (up to three times after a rebuild) and writes each corrected refcount block, L1 entry and
 * L2 table once.
 * @par Errors
 * Only when the check cannot complete (QEMU's "Check failed"): `image_corrupt` for a
 * `leaks` repair of an image whose refcount structure needs a rebuild; `read_only` for a repair of
 * an image opened read-only; `file_too_large` when the file has more than 2^31 - 1 clusters,
 * `no_memory`, `invalid_bitmap_directory` for a bitmap table QEMU would refuse to load, the
 * refcount table's errors (`basic_refcount_reader::open`), `refcount_table_too_large` when a
 * rebuilt table would exceed 8 MiB, I/O errors. After a failed repair the image may hold
 * leaked clusters but no new corruption.
 */
template <class Image>
result<check_report> check(Image& img, const check_options& opts = {}) {
    // What an image open for writing holds in its caches must be in the file the check reads.
    if (!img.read_only())
        if (auto r = img.flush(); !r) return r.error();
    return detail::check_and_repair(img, opts);
}

} // namespace qcow2
