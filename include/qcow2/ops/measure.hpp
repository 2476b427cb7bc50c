// SPDX-License-Identifier: MIT
/// @file
/// @brief `measure`: how large a new qcow2 image will be, as `qemu-img measure` computes it.
///
/// QEMU's formula (block/qcow2.c, `qcow2_measure` and `qcow2_calc_prealloc_size`): a fully
/// allocated image holds one header cluster, every L2 table the virtual size needs (whole
/// tables), the L1 table (whole clusters), the refcount blocks and table that count all of
/// these and themselves (a fixed point, `refcount_metadata_size`), and every data cluster.
/// The size an image needs for a source's contents is that, less the data clusters the
/// source does not fill. Metadata is counted as for the fully allocated image, so the
/// figure errs on the large side, as QEMU's does.
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/format/bitmap.hpp"
#include "qcow2/image.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>

namespace qcow2 {

/// A range of guest bytes.
struct guest_range {
    /// Guest offset of the first byte.
    std::uint64_t offset = 0;
    /// Length in bytes.
    std::uint64_t length = 0;
};

/// What `measure` computes: the keys of `qemu-img measure --output=json`.
struct measurement {
    /// "required": the file size a new image needs to hold the source's data (with no
    /// source, only its metadata), metadata counted as for the fully allocated image.
    std::uint64_t required = 0;
    /// "fully-allocated": the file size once every cluster of the disk is written.
    std::uint64_t fully_allocated = 0;
    /// "bitmaps": the bytes that copying the source's persistent bitmaps adds; only when the
    /// source can hold persistent bitmaps and the new image is version 3 (as qemu-img prints it).
    std::optional<std::uint64_t> bitmaps;
};

/// The guest disk a new image is measured for (qemu-img measure's SRC).
struct measure_source {
    /// The virtual size (a raw file's size rounded up to whole 512-byte sectors, as QEMU sees it).
    std::uint64_t size = 0;
    /// The ranges that read data through the whole chain, in ascending order (they may touch,
    /// or share clusters). Ranges that read as zeroes (zero clusters, holes, unallocated
    /// clusters with nothing below) are left out: they take no data cluster in the new image.
    std::span<const guest_range> data{};
    /// The source's persistent bitmaps when it can hold them (a version 3 qcow2 image, even
    /// one without bitmaps); nothing for a source that cannot (raw files, version 2 images).
    std::optional<std::span<const bitmap_entry>> bitmaps{};
};

/**
 * @brief Bytes of refcount blocks and refcount table that count `clusters` clusters and
 *        themselves (QEMU's `qcow2_refcount_metadata_size`, without the 1.5x headroom).
 *
 * The smallest numbers of blocks and table clusters such that the blocks cover the clusters,
 * the blocks and the table: found by iterating to the fixed point.
 * @param clusters the host clusters to count (data and other metadata).
 * @param cluster_size the cluster size in bytes.
 * @param refcount_bits 1, 2, 4, 8, 16, 32 or 64.
 * @par Complexity
 * A few iterations (each one adds less than a block per refcount block's coverage).
 * @see QEMU block/qcow2.c, `qcow2_refcount_metadata_size`
 */
constexpr std::uint64_t refcount_metadata_size(std::uint64_t clusters, std::uint64_t cluster_size, unsigned refcount_bits) noexcept {
    const std::uint64_t per_block = cluster_size * 8 / refcount_bits;
    const std::uint64_t blocks_per_table_cluster = cluster_size / 8;
    std::uint64_t blocks = 0, table = 0, last = 0, n = 0;
    do {
        last = n;
        blocks = detail::div_round_up(clusters + blocks + table, per_block);
        table = detail::div_round_up(blocks, blocks_per_table_cluster);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cluster_size;
}

/**
 * @brief The file size of an image of virtual size `size` once every cluster is written
 *        (QEMU's `qcow2_calc_prealloc_size`): the header cluster, every L2 table, the L1
 *        table in whole clusters, the refcount metadata for all of these, and the data.
 *
 * `size` is rounded up to whole clusters first. The caller checks that the L1 table fits
 * (`measure` does): then nothing here overflows.
 */
constexpr std::uint64_t fully_allocated_size(std::uint64_t size, std::uint64_t cluster_size, unsigned refcount_bits,
                                             bool extended_l2) noexcept {
    const std::uint64_t data = detail::div_round_up(size, cluster_size) * cluster_size;
    const std::uint64_t entry = extended_l2 ? 16 : 8;
    std::uint64_t meta = cluster_size; // the header
    // Whole L2 tables for every data cluster.
    const std::uint64_t l2_entries = detail::div_round_up(data / cluster_size, cluster_size / entry) * (cluster_size / entry);
    meta += l2_entries * entry;
    // One L1 entry per L2 table, in whole clusters.
    const std::uint64_t l1_entries = detail::div_round_up(l2_entries * entry / cluster_size, cluster_size / 8) * (cluster_size / 8);
    meta += l1_entries * 8;
    meta += refcount_metadata_size((meta + data) / cluster_size, cluster_size, refcount_bits);
    return meta + data;
}

/**
 * @brief The bytes that copying `bitmaps` of a disk of `disk_size` bytes into a new image
 *        with `cluster_size` clusters takes (QEMU's `qcow2_get_persistent_dirty_bitmap_size`):
 *        for each bitmap, its data clusters as if all were allocated and its bitmap table in
 *        whole clusters; then the directory (entries without extra data) in whole clusters.
 */
constexpr std::uint64_t bitmaps_copy_size(std::span<const bitmap_entry> bitmaps, std::uint64_t disk_size,
                                          std::uint64_t cluster_size) noexcept {
    std::uint64_t total = 0, directory = 0;
    for (const auto& b : bitmaps) {
        const std::uint64_t bytes = detail::div_round_up(detail::div_round_up(disk_size, b.granularity()), 8);
        const std::uint64_t clusters = detail::div_round_up(bytes, cluster_size);
        total += clusters * cluster_size;
        total += detail::div_round_up(clusters * 8, cluster_size) * cluster_size;
        directory += (24 + b.name.size() + 7) & ~std::uint64_t{7};
    }
    return total + detail::div_round_up(directory, cluster_size) * cluster_size;
}

namespace detail {

/// Checks the options `measure` uses as QEMU's `qcow2_measure` does, in its order; the
/// virtual size rounded up to whole clusters.
inline result<std::uint64_t> check_measure_options(const create_options& o, std::uint64_t size) {
    const std::uint64_t cs = o.cluster_size;
    if (cs < (std::uint64_t{1} << limits::min_cluster_bits) || cs > (std::uint64_t{1} << limits::max_cluster_bits) || (cs & (cs - 1)))
        return error{errc::invalid_argument, cat("cluster size ", dec(cs), " is not a power of two from 512 to 2 MiB")};
    if (o.extended_l2 && cs < 16384)
        return error{errc::invalid_argument, cat("extended L2 entries need clusters of at least 16384 bytes, not ", dec(cs))};
    if (o.version != 2 && o.version != 3) return error{errc::invalid_argument, cat("version ", dec(o.version), " is neither 2 nor 3")};
    const unsigned rb = o.refcount_bits;
    if (rb == 0 || rb > 64 || (rb & (rb - 1)))
        return error{errc::invalid_argument, cat("refcount width ", dec(rb), " is not a power of two up to 64")};
    if (o.version < 3 && rb != 16) return error{errc::invalid_argument, "version 2 images have 16-bit refcounts only"};
    const auto rounded = align_up(size, cs);
    const std::uint64_t entry = o.extended_l2 ? 16 : 8;
    if (!rounded || div_round_up(*rounded / cs, cs / entry) * 8 > limits::max_l1_bytes)
        return error{errc::image_too_large, cat("a virtual size of ", dec(size), " bytes with ", dec(cs),
                                                "-byte clusters needs an L1 table of more than 32 MiB")};
    return *rounded;
}

/// The measurement once the data bytes are known: the fully allocated size less the data
/// clusters not required.
inline measurement finish_measure(const create_options& o, std::uint64_t virtual_size, std::uint64_t data) {
    if (o.prealloc == preallocation::falloc || o.prealloc == preallocation::full) data = virtual_size;
    measurement m;
    m.fully_allocated = fully_allocated_size(virtual_size, o.cluster_size, o.refcount_bits, o.extended_l2);
    m.required = m.fully_allocated - virtual_size + data;
    return m;
}

} // namespace detail

/**
 * @brief What a new image with options `target` of `target.size` bytes takes, with nothing
 *        written to it (`qemu-img measure --size`).
 *
 * Only the options that change the layout count: `size`, `cluster_size`, `refcount_bits`,
 * `extended_l2`, `version` (checked with `refcount_bits`) and `prealloc` (`falloc` and
 * `full` require the data clusters too). There is no `bitmaps` figure.
 * @par Errors
 * `invalid_argument` for a cluster size, refcount width or version QEMU refuses (extended L2
 * entries with clusters under 16 KiB, a version 2 image with refcounts other than 16 bits);
 * `image_too_large` when the L1 table would exceed 32 MiB.
 * @par Complexity
 * Constant; no I/O.
 */
inline result<measurement> measure(const create_options& target) {
    auto vs = detail::check_measure_options(target, target.size);
    if (!vs) return vs.error();
    return detail::finish_measure(target, *vs, 0);
}

/**
 * @brief What a new image with options `target` takes to hold the guest disk `source`
 *        (`qemu-img measure SRC`): the new image has the source's size.
 *
 * The data clusters required are those that some byte of `source.data` falls in; with a
 * backing file in `target` every cluster is (the new image's backing file may share nothing
 * with the source), as with `prealloc` `falloc` or `full`. As in QEMU, the L1 limit is
 * checked for `target.size` (what qemu-img's `-o size` gives, 0 by default), not for the
 * source's size: a source too large for the target's cluster size is measured anyway.
 * @par Errors
 * Those of `measure(target)`; `invalid_argument` for data ranges out of order or past the
 * source's size.
 * @par Complexity
 * Linear in the number of data ranges; no I/O.
 */
inline result<measurement> measure(const create_options& target, const measure_source& source) {
    if (auto checked = detail::check_measure_options(target, target.size); !checked) return checked.error();
    const std::uint64_t cs = target.cluster_size;
    const auto vs = detail::align_up(source.size, cs);
    if (!vs) return error{errc::image_too_large, detail::cat("a source of ", detail::dec(source.size), " bytes")};
    std::uint64_t data = 0;
    if (!target.backing_file.empty()) {
        data = *vs;
    } else {
        std::uint64_t counted = 0, previous = 0; // clusters [0, counted) are counted already
        for (const guest_range& r : source.data) {
            if (r.length == 0) continue;
            if (r.offset < previous || r.offset > source.size || r.length > source.size - r.offset)
                return error{errc::invalid_argument,
                             detail::cat("data range of ", detail::dec(r.length), " bytes at guest offset ", detail::dec(r.offset),
                                         " is out of order or past the source's size ", detail::dec(source.size))};
            previous = r.offset;
            const std::uint64_t first = std::max(r.offset / cs, counted);
            const std::uint64_t last = detail::div_round_up(r.offset + r.length, cs);
            if (last > first) {
                data += (last - first) * cs;
                counted = last;
            }
        }
    }
    measurement m = detail::finish_measure(target, *vs, data);
    if (target.version >= 3 && source.bitmaps) m.bitmaps = bitmaps_copy_size(*source.bitmaps, source.size, cs);
    return m;
}

} // namespace qcow2
