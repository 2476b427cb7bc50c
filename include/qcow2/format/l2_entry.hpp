// SPDX-License-Identifier: MIT
/// @file
/// @brief L1 and L2 entries: what a (sub)cluster of the guest disk maps to.
///
/// Pure functions, usable in constant expressions. An L2 entry is 64 bits (standard) or
/// 128 bits (extended L2: the same 64 bits plus a bitmap of 32 subclusters). The state of
/// a (sub)cluster follows QEMU's classification (`qcow2_get_cluster_type`,
/// `qcow2_get_subcluster_type`). @see qcow2 spec, "Cluster mapping".
#pragma once

#include <cstdint>

namespace qcow2 {

/// Bits of L1 and L2 entries.
namespace l2_bits {
inline constexpr std::uint64_t copied = std::uint64_t{1} << 63;     ///< refcount is exactly 1
inline constexpr std::uint64_t compressed = std::uint64_t{1} << 62; ///< compressed cluster descriptor
inline constexpr std::uint64_t zero = 1;                            ///< reads as zero (v3, standard L2)
inline constexpr std::uint64_t offset_mask = 0x00FFFFFFFFFFFE00ull; ///< host cluster offset
/// L2 table offset in an L1 entry.
inline constexpr std::uint64_t l1_offset_mask = 0x00FFFFFFFFFFFE00ull;
/// Reserved bits of an L1 entry (must be zero).
inline constexpr std::uint64_t l1_reserved = 0x7F000000000001FFull;
/// Reserved bits of a standard L2 entry (must be zero).
inline constexpr std::uint64_t standard_reserved = 0x3F000000000001FEull;
} // namespace l2_bits

/// What reading a guest (sub)cluster yields, in one layer.
enum class cluster_state : std::uint8_t {
    unallocated, ///< defer to the backing file (zeroes without one)
    zero,        ///< reads as zeroes, whatever the backing file holds
    data,        ///< host data at the mapped offset
    compressed,  ///< a compressed cluster
    invalid,     ///< an entry the format forbids (corruption)
};

/// One classified (sub)cluster.
struct subcluster {
    /// What reading it yields.
    cluster_state state = cluster_state::unallocated;
    bool has_host = false;        ///< a host range is allocated (data, zero with preallocation, reserved space)
    std::uint64_t host = 0;       ///< host offset of the (sub)cluster start when `has_host`
    const char* why = nullptr;    ///< for `invalid`: which rule the entry breaks
};

/// The geometry that decides how entries decode.
struct l2_geometry {
    /// log2 of the cluster size.
    unsigned cluster_bits = 16;
    bool extended = false;      ///< incompatible bit 4
    bool external_data = false; ///< incompatible bit 2
    bool version2 = false;      ///< zero flags are invalid in version 2

    /// The cluster size in bytes.
    constexpr std::uint64_t cluster_size() const noexcept { return std::uint64_t{1} << cluster_bits; }
    /// The unit one L2 entry (or subcluster bit) maps: the cluster, or 1/32 of it.
    constexpr std::uint64_t subcluster_size() const noexcept { return extended ? cluster_size() / 32 : cluster_size(); }
    /// Bytes per L2 entry.
    constexpr unsigned entry_bytes() const noexcept { return extended ? 16 : 8; }
    /// Entries per L2 table (one cluster).
    constexpr std::uint64_t entries_per_table() const noexcept { return cluster_size() / entry_bytes(); }
};

/**
 * @brief Classifies subcluster `sc` (0 for standard L2) of the cluster an entry describes.
 * @param g the image's geometry.
 * @param sc the subcluster index, 0 to 31 (0 for standard L2 entries).
 * @param entry the first 64 bits; @param bitmap the subcluster bitmap (extended L2 only).
 */
constexpr subcluster classify(const l2_geometry& g, std::uint64_t entry, std::uint64_t bitmap, unsigned sc) noexcept {
    subcluster r;
    if (entry & l2_bits::compressed) {
        if (g.external_data) return {cluster_state::invalid, false, 0, "compressed cluster in an image with an external data file"};
        r.state = cluster_state::compressed;
        return r;
    }
    const std::uint64_t off = entry & l2_bits::offset_mask;
    const bool allocated = off != 0 || (g.external_data && (entry & l2_bits::copied));
    if (allocated && (off & (g.cluster_size() - 1)))
        return {cluster_state::invalid, false, 0, "data cluster offset is not cluster aligned"};
    if (!g.extended) {
        if (entry & l2_bits::zero) {
            if (g.version2) return {cluster_state::invalid, false, 0, "zero flag in a version 2 image"};
            return {cluster_state::zero, allocated, off, nullptr};
        }
        if (!allocated) return r;
        return {cluster_state::data, true, off, nullptr};
    }
    const std::uint32_t alloc = static_cast<std::uint32_t>(bitmap);
    const std::uint32_t zero = static_cast<std::uint32_t>(bitmap >> 32);
    const std::uint64_t host = off + sc * g.subcluster_size();
    if (!allocated) {
        if (alloc) return {cluster_state::invalid, false, 0, "subcluster allocation bits set in an unallocated cluster"};
        return {(zero >> sc & 1) ? cluster_state::zero : cluster_state::unallocated, false, 0, nullptr};
    }
    if (alloc & zero) return {cluster_state::invalid, false, 0, "a subcluster is marked both allocated and zero"};
    if (zero >> sc & 1) return {cluster_state::zero, true, host, nullptr};
    if (alloc >> sc & 1) return {cluster_state::data, true, host, nullptr};
    return {cluster_state::unallocated, true, host, nullptr};
}

/// Where a compressed cluster's bytes are and how many to read.
struct compressed_extent {
    std::uint64_t offset = 0; ///< host byte offset (not aligned)
    std::uint64_t size = 0;   ///< bytes to read: whole 512-byte sectors from the sector holding `offset`
};

/// Decodes a compressed cluster descriptor (the `70 - cluster_bits` offset split).
constexpr compressed_extent decode_compressed(std::uint64_t entry, unsigned cluster_bits) noexcept {
    const unsigned x = 70 - cluster_bits;
    const std::uint64_t offset = entry & ((std::uint64_t{1} << x) - 1);
    const std::uint64_t n = (entry >> x) & ((std::uint64_t{1} << (cluster_bits - 8)) - 1);
    return {offset, (n + 1) * 512 - (offset & 511)};
}

/// Encodes a compressed cluster descriptor for `length` bytes at host byte `offset`.
constexpr std::uint64_t encode_compressed(std::uint64_t offset, std::uint64_t length, unsigned cluster_bits) noexcept {
    const unsigned x = 70 - cluster_bits;
    const std::uint64_t n = (offset + length - 1) / 512 - offset / 512;
    return offset | l2_bits::compressed | (n << x);
}

static_assert(decode_compressed(encode_compressed(0x12345, 1000, 16), 16).offset == 0x12345);
static_assert(decode_compressed(encode_compressed(0x12345, 1000, 16), 16).size == 1024 + 512 - 0x145);

} // namespace qcow2
