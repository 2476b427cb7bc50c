// SPDX-License-Identifier: MIT
/// @file
/// @brief Refcount blocks and the refcount table: entry access for every width, masks and limits.
///
/// Pure functions, usable in constant expressions. A refcount block is one cluster of
/// `cluster_size * 8 / refcount_bits` entries of `refcount_bits = 1 << refcount_order` bits.
/// Widths below 8 are packed LSB-first within each byte (entry `k` in byte `k * bits / 8`
/// at bit `k * bits % 8`); widths 8 to 64 are big-endian integers at index `k`.
/// @see qcow2 spec, "Host cluster management"; QEMU `get_refcount_ro0`..`ro6`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace qcow2 {

/// Bits of refcount table entries.
namespace reftable_bits {
inline constexpr std::uint64_t offset_mask = 0xFFFFFFFFFFFFFE00ull; ///< refcount block offset (QEMU REFT_OFFSET_MASK)
inline constexpr std::uint64_t reserved = 0x1FFull;                 ///< must be zero (QEMU REFT_RESERVED_MASK)
} // namespace reftable_bits

/// Bits per refcount entry for `refcount_order` (0..6).
constexpr unsigned refcount_width(unsigned refcount_order) noexcept { return 1u << refcount_order; }

/// The largest refcount an entry of `refcount_order` (0..6) holds: 2^bits - 1.
constexpr std::uint64_t refcount_max(unsigned refcount_order) noexcept {
    const unsigned bits = refcount_width(refcount_order);
    return bits >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << bits) - 1;
}

/// Entries per refcount block: `cluster_size * 8 / bits` (QEMU `1 << refcount_block_bits`).
constexpr std::uint64_t refcount_entries_per_block(unsigned cluster_bits, unsigned refcount_order) noexcept {
    return std::uint64_t{1} << (cluster_bits + 3 - refcount_order);
}

/**
 * @brief Entry `k` of the refcount block `block` with entries of `refcount_order` (0..6).
 *
 * Precondition: `(k + 1) * bits <= block.size() * 8` (entry inside the block).
 */
constexpr std::uint64_t get_refcount(std::span<const std::byte> block, std::uint64_t k, unsigned refcount_order) noexcept {
    const unsigned bits = refcount_width(refcount_order);
    if (bits < 8) {
        const auto byte = static_cast<unsigned>(block[static_cast<std::size_t>(k * bits / 8)]);
        return (byte >> (k * bits % 8)) & ((1u << bits) - 1);
    }
    const std::size_t n = bits / 8;
    const std::size_t at = static_cast<std::size_t>(k) * n;
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v = (v << 8) | static_cast<std::uint64_t>(block[at + i]);
    return v;
}

/**
 * @brief Sets entry `k` of `block` to `value` (truncated to the entry's width).
 *
 * Preconditions: as `get_refcount`; `value <= refcount_max(refcount_order)` for the value to be kept whole.
 */
constexpr void set_refcount(std::span<std::byte> block, std::uint64_t k, unsigned refcount_order, std::uint64_t value) noexcept {
    const unsigned bits = refcount_width(refcount_order);
    if (bits < 8) {
        const auto at = static_cast<std::size_t>(k * bits / 8);
        const unsigned shift = static_cast<unsigned>(k * bits % 8);
        const unsigned mask = ((1u << bits) - 1) << shift;
        const unsigned old = static_cast<unsigned>(block[at]);
        block[at] = static_cast<std::byte>((old & ~mask) | ((static_cast<unsigned>(value) << shift) & mask));
        return;
    }
    const std::size_t n = bits / 8;
    const std::size_t at = static_cast<std::size_t>(k) * n;
    for (std::size_t i = n; i-- > 0;) {
        block[at + i] = static_cast<std::byte>(value & 0xFF);
        value >>= 8;
    }
}

namespace detail {
constexpr bool refcount_selftest() {
    std::byte b[16]{};
    for (unsigned order = 0; order <= 6; ++order) {
        for (auto& x : b) x = std::byte{0};
        const std::uint64_t n = 16 * 8 / refcount_width(order);
        for (std::uint64_t k = 0; k < n; ++k) set_refcount(b, k, order, (k * 7 + 3) & refcount_max(order));
        for (std::uint64_t k = 0; k < n; ++k)
            if (get_refcount(b, k, order) != ((k * 7 + 3) & refcount_max(order))) return false;
    }
    std::byte c[2]{};
    set_refcount(c, 1, 1, 3); // 2-bit entry 1: bits 2..3 of byte 0
    return c[0] == std::byte{0x0C} && refcount_max(6) == ~std::uint64_t{0} && refcount_max(0) == 1;
}
static_assert(refcount_selftest());
} // namespace detail

} // namespace qcow2
