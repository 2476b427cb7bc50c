// SPDX-License-Identifier: MIT
/// @file
/// @brief The persistent dirty bitmap directory: decode and encode.
///
/// The bitmaps extension points at a directory of variable-length entries, each
/// 8-byte aligned: the bitmap table's place and size, flags, granularity, extra data
/// and the name. @see qcow2 spec, "Bitmaps".
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/format/extensions.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace qcow2 {

/// Flags of a bitmap directory entry.
namespace bitmap_flags {
/// The bitmap was not saved consistently (it is being written, or the writer crashed).
inline constexpr std::uint32_t in_use = 1u << 0;
/// The bitmap tracks guest writes (QEMU's "auto" flag).
inline constexpr std::uint32_t auto_ = 1u << 1;
/// The entry's extra data may be ignored by readers that do not know it.
inline constexpr std::uint32_t extra_data_compatible = 1u << 2;
} // namespace bitmap_flags

/// One bitmap directory entry.
struct bitmap_entry {
    /// Host offset of the bitmap table.
    std::uint64_t table_offset = 0;
    /// Entries in the bitmap table.
    std::uint32_t table_size = 0;
    /// `bitmap_flags` bits.
    std::uint32_t flags = 0;
    /// 1: a dirty tracking bitmap (the only type defined).
    std::uint8_t type = 1;
    /// log2 of the bytes of guest disk one bit covers, 9 to 31.
    std::uint8_t granularity_bits = 16;
    /// Extra data as stored.
    std::vector<std::byte> extra;
    /// The bitmap's name.
    std::string name;

    /// Bytes of guest disk one bit covers.
    constexpr std::uint64_t granularity() const noexcept { return std::uint64_t{1} << granularity_bits; }
    /// Equal when every field is.
    friend constexpr bool operator==(const bitmap_entry&, const bitmap_entry&) = default;
};

/// Bytes one entry occupies in the directory, padding included.
constexpr std::uint64_t bitmap_entry_size(const bitmap_entry& e) {
    return (24 + e.extra.size() + e.name.size() + 7) & ~std::uint64_t{7};
}

/**
 * @brief Decodes the bitmap directory `dir` holding `ext.nb_bitmaps` entries.
 * @par Errors
 * `invalid_bitmap_directory` for a directory over QEMU's limits or entries that run past it,
 * have an empty or over-long name, reserved flags or type, a granularity outside 9..31, or a
 * misaligned table.
 */
constexpr result<std::vector<bitmap_entry>> decode_bitmap_directory(std::span<const std::byte> dir,
                                                                   const bitmaps_extension& ext,
                                                                   std::uint64_t cluster_size) {
    using detail::cat;
    using detail::dec;
    if (ext.nb_bitmaps == 0 || ext.nb_bitmaps > limits::max_bitmaps)
        return error{errc::invalid_bitmap_directory, cat("bitmaps extension lists ", dec(ext.nb_bitmaps),
                                                         " bitmaps, must be 1 to ", dec(limits::max_bitmaps))};
    if (ext.directory_size > limits::max_bitmap_directory_bytes || ext.directory_size != dir.size())
        return error{errc::invalid_bitmap_directory, cat("bitmap directory size ", dec(ext.directory_size),
                                                         " is over the limit or does not match the bytes read")};
    if (!detail::is_aligned(ext.directory_offset, cluster_size))
        return error{errc::invalid_bitmap_directory,
                     cat("bitmap directory offset ", detail::hex(ext.directory_offset), " is not cluster aligned")};
    std::vector<bitmap_entry> out;
    std::uint64_t off = 0;
    for (std::uint32_t i = 0; i < ext.nb_bitmaps; ++i) {
        auto bad = [&](std::string what) {
            return error{errc::invalid_bitmap_directory, cat("bitmap ", dec(i), " at directory offset ", dec(off), ": ", what)};
        };
        if (off + 24 > dir.size()) return bad("entry runs past the end of the directory");
        bitmap_entry e;
        e.table_offset = detail::load_be64(dir, off);
        e.table_size = detail::load_be32(dir, off + 8);
        e.flags = detail::load_be32(dir, off + 12);
        e.type = static_cast<std::uint8_t>(dir[off + 16]);
        e.granularity_bits = static_cast<std::uint8_t>(dir[off + 17]);
        const std::uint16_t name_len = detail::load_be16(dir, off + 18);
        const std::uint32_t extra_len = detail::load_be32(dir, off + 20);
        const std::uint64_t end = off + 24 + std::uint64_t{extra_len} + name_len;
        if (end > dir.size()) return bad("entry runs past the end of the directory");
        if (name_len == 0 || name_len > limits::max_bitmap_name) return bad(cat("name length ", dec(name_len), " is not 1 to 1023"));
        if (e.type != 1) return bad(cat("type ", dec(e.type), " is not 1 (dirty tracking)"));
        if (e.granularity_bits < 9 || e.granularity_bits > 31)
            return bad(cat("granularity_bits ", dec(e.granularity_bits), " is not 9 to 31"));
        if (e.flags & ~(bitmap_flags::in_use | bitmap_flags::auto_ | bitmap_flags::extra_data_compatible))
            return bad(cat("reserved flags set: ", detail::hex(e.flags)));
        if (!detail::is_aligned(e.table_offset, cluster_size))
            return bad(cat("bitmap table offset ", detail::hex(e.table_offset), " is not cluster aligned"));
        const auto at = [&](std::uint64_t o) { return dir.begin() + static_cast<std::ptrdiff_t>(o); };
        e.extra.assign(at(off + 24), at(off + 24 + extra_len));
        e.name = detail::to_string(dir.subspan(off + 24 + extra_len, name_len));
        off = (end + 7) & ~std::uint64_t{7};
        out.push_back(std::move(e));
    }
    if (off != dir.size())
        return error{errc::invalid_bitmap_directory,
                     cat("bitmap directory is ", dec(dir.size()), " bytes but its ", dec(ext.nb_bitmaps),
                         " entries fill ", dec(off), " (more entries than nb_bitmaps, or trailing bytes)")};
    return out;
}

/// Bitmap table entries (qcow2 spec, "Bitmap table").
namespace bitmap_table_bits {
/// Bits 9 to 55: the host offset of the data cluster (0: none).
inline constexpr std::uint64_t offset_mask = 0x00FFFFFFFFFFFE00ull;
/// Without a data cluster, bit 0 set: every bit of the cluster is set.
inline constexpr std::uint64_t all_ones = 1;
/// Reserved bits, zero in a valid entry.
inline constexpr std::uint64_t reserved = 0xFF000000000001FEull;
} // namespace bitmap_table_bits

/// The most entries QEMU accepts in a bitmap table.
inline constexpr std::uint64_t max_bitmap_table_entries = 0x8000000;
/// The most bitmap data (table entries times the cluster size) QEMU accepts for one bitmap.
inline constexpr std::uint64_t max_bitmap_data_bytes = std::uint64_t{512} << 20;

/// Bytes of bitmap data for a disk of `disk_size` bytes at `granularity_bits` (a bit per granule, rounded up).
constexpr std::uint64_t bitmap_data_bytes(std::uint64_t disk_size, unsigned granularity_bits) noexcept {
    const std::uint64_t g = std::uint64_t{1} << granularity_bits;
    const std::uint64_t bits = disk_size / g + (disk_size % g != 0);
    return bits / 8 + (bits % 8 != 0);
}

/// Entries of the bitmap table for a disk of `disk_size` bytes (one per cluster of bitmap data).
constexpr std::uint64_t bitmap_table_entries(std::uint64_t disk_size, unsigned granularity_bits, std::uint64_t cluster_size) noexcept {
    const std::uint64_t b = bitmap_data_bytes(disk_size, granularity_bits);
    return b / cluster_size + (b % cluster_size != 0);
}

/**
 * @brief The bits of one dirty bitmap: bit `k` says guest bytes `[k * granularity,
 *        (k + 1) * granularity)` were written; bit `k` is bit `k % 8` (least significant
 *        first) of byte `k / 8`, as the data clusters store it. Unused tail bits are 0.
 */
struct bitmap_bits {
    /// Bytes of guest disk one bit covers (a power of two, 512 to 2^31).
    std::uint64_t granularity = 65536;
    /// The virtual disk size the bitmap describes.
    std::uint64_t disk_size = 0;
    /// `bitmap_data_bytes(disk_size, log2(granularity))` bytes.
    std::vector<std::uint8_t> bytes;

    /// Bits in the bitmap.
    constexpr std::uint64_t count() const noexcept { return disk_size / granularity + (disk_size % granularity != 0); }
    /// True when bit `k` is set.
    constexpr bool test(std::uint64_t k) const noexcept { return k < count() && (bytes[static_cast<std::size_t>(k / 8)] >> (k % 8) & 1); }
    /// The number of set bits.
    constexpr std::uint64_t dirty_bits() const noexcept {
        std::uint64_t n = 0;
        for (auto b : bytes) n += static_cast<std::uint64_t>(std::popcount(b));
        return n;
    }
    /// Sets the bits of the granules that `[offset, offset + length)` touches (clipped to the disk).
    constexpr void mark(std::uint64_t offset, std::uint64_t length) noexcept {
        if (length == 0 || offset >= disk_size) return;
        const std::uint64_t end = std::min(disk_size, offset + std::min(length, disk_size - offset));
        const std::uint64_t first = offset / granularity, last = (end - 1) / granularity;
        std::uint64_t k = first;
        for (; k <= last && k % 8; ++k) bytes[static_cast<std::size_t>(k / 8)] |= static_cast<std::uint8_t>(1u << (k % 8));
        for (; k + 8 <= last + 1; k += 8) bytes[static_cast<std::size_t>(k / 8)] = 0xFF;
        for (; k <= last; ++k) bytes[static_cast<std::size_t>(k / 8)] |= static_cast<std::uint8_t>(1u << (k % 8));
    }
    /// Sets every bit whose granule `other` marks (any granularity, the same disk size).
    constexpr void merge(const bitmap_bits& other) noexcept {
        const std::uint64_t n = other.count();
        for (std::uint64_t i = 0; i < other.bytes.size(); ++i) {
            const std::uint8_t b = other.bytes[static_cast<std::size_t>(i)];
            if (!b) continue;
            for (unsigned j = 0; j < 8; ++j)
                if ((b >> j & 1) && i * 8 + j < n) mark((i * 8 + j) * other.granularity, other.granularity);
        }
    }
    /// Equal when granularity, size and bits are.
    friend constexpr bool operator==(const bitmap_bits&, const bitmap_bits&) = default;
};

/// Encodes directory entries (zero padding between them).
constexpr std::vector<std::byte> encode_bitmap_directory(std::span<const bitmap_entry> entries) {
    std::uint64_t n = 0;
    for (const auto& e : entries) n += bitmap_entry_size(e);
    std::vector<std::byte> out(n);
    std::uint64_t off = 0;
    for (const auto& e : entries) {
        detail::store_be64(out, off, e.table_offset);
        detail::store_be32(out, off + 8, e.table_size);
        detail::store_be32(out, off + 12, e.flags);
        out[off + 16] = static_cast<std::byte>(e.type);
        out[off + 17] = static_cast<std::byte>(e.granularity_bits);
        detail::store_be16(out, off + 18, static_cast<std::uint16_t>(e.name.size()));
        detail::store_be32(out, off + 20, static_cast<std::uint32_t>(e.extra.size()));
        std::uint64_t p = off + 24;
        for (auto x : e.extra) out[p++] = x;
        for (char c : e.name) out[p++] = static_cast<std::byte>(c);
        off += bitmap_entry_size(e);
    }
    return out;
}

} // namespace qcow2
