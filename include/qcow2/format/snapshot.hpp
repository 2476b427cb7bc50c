// SPDX-License-Identifier: MIT
/// @file
/// @brief The internal snapshot table: decode and encode.
///
/// The table is `nb_snapshots` variable-length entries at `snapshots_offset`, each
/// starting on an 8-byte boundary: fixed fields, extra data, the id and the name.
/// @see qcow2 spec, "Snapshots".
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/format/extensions.hpp"
#include "qcow2/result.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace qcow2 {

/// One snapshot table entry.
struct snapshot_entry {
    /// Host offset of the snapshot's L1 table.
    std::uint64_t l1_table_offset = 0;
    /// Entries in the snapshot's L1 table.
    std::uint32_t l1_size = 0;
    /// When the snapshot was taken: seconds since the epoch...
    std::uint32_t date_sec = 0;
    /// ...and nanoseconds.
    std::uint32_t date_nsec = 0;
    /// The guest's clock at the snapshot, in nanoseconds.
    std::uint64_t vm_clock_nsec = 0;
    /// The 32-bit VM state size field (see `vm_state_size()`).
    std::uint32_t vm_state_size32 = 0;
    /// Extra data as stored: +0 u64 VM state size, +8 u64 disk size, +16 u64 icount, then unknown bytes.
    std::vector<std::byte> extra;
    /// The snapshot's id ("1", "2", ...).
    std::string id;
    /// The snapshot's name.
    std::string name;

    /// The VM state size (the 64-bit field of the extra data when present).
    constexpr std::uint64_t vm_state_size() const noexcept {
        return extra.size() >= 8 ? detail::load_be64(extra, 0) : vm_state_size32;
    }
    /// The virtual disk size at the time of the snapshot, when recorded.
    constexpr std::optional<std::uint64_t> disk_size() const noexcept {
        if (extra.size() >= 16) return detail::load_be64(extra, 8);
        return std::nullopt;
    }
    /// The instruction count, when recorded and enabled (stored as -1 when disabled).
    constexpr std::optional<std::uint64_t> icount() const noexcept {
        if (extra.size() >= 24 && detail::load_be64(extra, 16) != UINT64_MAX) return detail::load_be64(extra, 16);
        return std::nullopt;
    }
    /// Equal when every field is.
    friend constexpr bool operator==(const snapshot_entry&, const snapshot_entry&) = default;
};

/// Bytes one entry occupies in the table, padding included.
constexpr std::uint64_t snapshot_entry_size(const snapshot_entry& s) {
    return (40 + s.extra.size() + s.id.size() + s.name.size() + 7) & ~std::uint64_t{7};
}

/**
 * @brief Decodes `count` entries from the table bytes `table`.
 * @param table the bytes of the snapshot table.
 * @param count the number of entries (the header's nb_snapshots).
 * @param cluster_size for the alignment check of each entry's L1 table.
 * @par Errors
 * `invalid_snapshot_table` when an entry runs past `table`, has more than 1024 bytes of
 * extra data, or an L1 table that is misaligned or over 32 MiB; `too_many_snapshots`.
 */
constexpr result<std::vector<snapshot_entry>> decode_snapshot_table(std::span<const std::byte> table, std::uint32_t count,
                                                                   std::uint64_t cluster_size) {
    using detail::cat;
    using detail::dec;
    if (count > limits::max_snapshots)
        return error{errc::too_many_snapshots, cat("nb_snapshots is ", dec(count), ", at most ", dec(limits::max_snapshots))};
    std::vector<snapshot_entry> out;
    std::uint64_t off = 0;
    for (std::uint32_t i = 0; i < count; ++i) {
        auto bad = [&](std::string what) {
            return error{errc::invalid_snapshot_table, cat("snapshot ", dec(i), " at table offset ", dec(off), ": ", what)};
        };
        if (off + 40 > table.size()) return bad("entry runs past the end of the table");
        snapshot_entry s;
        s.l1_table_offset = detail::load_be64(table, off);
        s.l1_size = detail::load_be32(table, off + 8);
        const std::uint16_t id_len = detail::load_be16(table, off + 12);
        const std::uint16_t name_len = detail::load_be16(table, off + 14);
        s.date_sec = detail::load_be32(table, off + 16);
        s.date_nsec = detail::load_be32(table, off + 20);
        s.vm_clock_nsec = detail::load_be64(table, off + 24);
        s.vm_state_size32 = detail::load_be32(table, off + 32);
        const std::uint32_t extra_len = detail::load_be32(table, off + 36);
        if (extra_len > limits::max_snapshot_extra_data)
            return bad(cat("extra data of ", dec(extra_len), " bytes exceeds ", dec(limits::max_snapshot_extra_data)));
        const std::uint64_t end = off + 40 + extra_len + id_len + name_len;
        if (end > table.size()) return bad("entry runs past the end of the table");
        if (!detail::is_aligned(s.l1_table_offset, cluster_size))
            return bad(cat("L1 table offset ", detail::hex(s.l1_table_offset), " is not cluster aligned"));
        if (std::uint64_t{s.l1_size} * 8 > limits::max_l1_bytes)
            return bad(cat("L1 table of ", dec(s.l1_size), " entries exceeds 32 MiB"));
        const auto at = [&](std::uint64_t o) { return table.begin() + static_cast<std::ptrdiff_t>(o); };
        s.extra.assign(at(off + 40), at(off + 40 + extra_len));
        s.id = detail::to_string(table.subspan(off + 40 + extra_len, id_len));
        s.name = detail::to_string(table.subspan(off + 40 + extra_len + id_len, name_len));
        off = (end + 7) & ~std::uint64_t{7};
        out.push_back(std::move(s));
    }
    return out;
}

/// Total bytes of the table for `entries`.
constexpr std::uint64_t snapshot_table_size(std::span<const snapshot_entry> entries) {
    std::uint64_t n = 0;
    for (const auto& s : entries) n += snapshot_entry_size(s);
    return n;
}

/// Encodes `entries` (zero padding between them).
constexpr std::vector<std::byte> encode_snapshot_table(std::span<const snapshot_entry> entries) {
    std::vector<std::byte> out(snapshot_table_size(entries));
    std::uint64_t off = 0;
    for (const auto& s : entries) {
        detail::store_be64(out, off, s.l1_table_offset);
        detail::store_be32(out, off + 8, s.l1_size);
        detail::store_be16(out, off + 12, static_cast<std::uint16_t>(s.id.size()));
        detail::store_be16(out, off + 14, static_cast<std::uint16_t>(s.name.size()));
        detail::store_be32(out, off + 16, s.date_sec);
        detail::store_be32(out, off + 20, s.date_nsec);
        detail::store_be64(out, off + 24, s.vm_clock_nsec);
        detail::store_be32(out, off + 32, s.vm_state_size32);
        detail::store_be32(out, off + 36, static_cast<std::uint32_t>(s.extra.size()));
        std::uint64_t p = off + 40;
        for (auto x : s.extra) out[p++] = x;
        for (char c : s.id) out[p++] = static_cast<std::byte>(c);
        for (char c : s.name) out[p++] = static_cast<std::byte>(c);
        off += snapshot_entry_size(s);
    }
    return out;
}

} // namespace qcow2
