// SPDX-License-Identifier: MIT
/// @file
/// @brief `describe`: what `qemu-img info` reports about one qcow2 image, as a value.
#pragma once

#include "qcow2/format/features.hpp"
#include "qcow2/format/bitmap.hpp"
#include "qcow2/format/header.hpp"
#include "qcow2/format/snapshot.hpp"
#include "qcow2/io/backend.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qcow2 {

/// A persistent bitmap as `info` lists it.
struct bitmap_info {
    /// The bitmap's name.
    std::string name;
    /// Bytes of guest disk per bit.
    std::uint64_t granularity = 0;
    /// The in-use flag: the bitmap may be inconsistent.
    bool in_use = false;
    /// The auto flag: the bitmap tracks writes.
    bool auto_ = false;
};

/// What `qemu-img info` reports about a qcow2 image (keys of its JSON in the comments).
struct image_info {
    std::uint64_t virtual_size = 0;            ///< virtual-size
    std::uint64_t cluster_size = 0;            ///< cluster-size
    std::optional<std::uint64_t> actual_size;  ///< actual-size: bytes the file occupies, when the backend knows
    bool dirty_flag = false;                   ///< dirty-flag: the dirty bit
    bool encrypted = false;                    ///< encrypted
    std::optional<std::string> backing_filename; ///< backing-filename, as stored
    std::optional<std::string> backing_format;   ///< backing-filename-format
    std::vector<snapshot_entry> snapshots;     ///< snapshots
    // format-specific data
    std::uint32_t version = 3;                 ///< compat: "0.10" for 2, "1.1" for 3
    std::string compression_type = "zlib";     ///< compression-type
    bool lazy_refcounts = false;               ///< lazy-refcounts (v3)
    bool corrupt = false;                      ///< corrupt (v3)
    bool extended_l2 = false;                  ///< extended-l2 (v3)
    unsigned refcount_bits = 16;               ///< refcount-bits
    bool has_data_file = false;                ///< the external data file bit
    std::optional<std::string> data_file;      ///< data-file: the recorded name
    bool data_file_raw = false;                ///< data-file-raw
    std::vector<bitmap_info> bitmaps;          ///< bitmaps
    bool all_zero = false;                     ///< all-zero: the trusted all-zero bit (this project's extension)
};

/**
 * @brief Describes an opened image the way `qemu-img info` does.
 * @par I/O
 * At most one `allocated_size` call on the backend; everything else is already in memory.
 */
template <class Image>
image_info describe(const Image& img) {
    const header& h = img.header();
    image_info i;
    i.virtual_size = h.size;
    i.cluster_size = h.cluster_size();
    if constexpr (io::supports_allocated_size<typename Image::backend_type>) {
        std::uint64_t n = 0;
        if (!img.backend().allocated_size(n)) i.actual_size = n;
    }
    i.dirty_flag = h.incompatible_features & features::dirty::mask;
    i.encrypted = h.crypt_method != 0;
    if (h.backing_file_offset != 0) i.backing_filename = h.backing_file;
    i.backing_format = h.backing_format();
    i.snapshots = img.snapshots();
    i.version = h.version;
    i.compression_type = h.compression_kind() == compression::zstd ? "zstd" : "zlib";
    i.lazy_refcounts = h.compatible_features & features::lazy_refcounts::mask;
    i.corrupt = h.incompatible_features & features::corrupt::mask;
    i.extended_l2 = h.extended_l2();
    i.refcount_bits = h.refcount_bits();
    i.has_data_file = h.incompatible_features & features::external_data_file::mask;
    i.data_file = h.data_file();
    i.data_file_raw = h.autoclear_features & features::raw_external_data::mask;
    for (const auto& b : img.bitmaps())
        i.bitmaps.push_back({b.name, b.granularity(), (b.flags & bitmap_flags::in_use) != 0, (b.flags & bitmap_flags::auto_) != 0});
    i.all_zero = img.template has<features::all_zero>();
    return i;
}

} // namespace qcow2
