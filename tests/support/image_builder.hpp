// SPDX-License-Identifier: MIT
/// @file
/// @brief `image_builder`: small, valid qcow2 images in memory, for tests that corrupt one field.
///
/// The layout follows what `qemu-img create` writes:
///
/// | cluster | contents                                   |
/// |---------|--------------------------------------------|
/// | 0       | header, extensions, backing file name      |
/// | 1       | refcount table (1 cluster)                 |
/// | 2       | refcount block (16-bit refcounts)          |
/// | 3       | active L1 table (all entries unallocated)  |
/// | 4...    | snapshot L1 tables, snapshot table, bitmap tables, bitmap directory |
///
/// Every cluster in use has refcount 1, so `qemu-img check` finds the image clean.
/// `field` names the byte offsets of the header fields, for tests that poke them.
#pragma once

#include "qcow2/detail/endian.hpp"
#include "qcow2/error.hpp"
#include "qcow2/format/bitmap.hpp"
#include "qcow2/format/extensions.hpp"
#include "qcow2/format/features.hpp"
#include "qcow2/format/header.hpp"
#include "qcow2/format/snapshot.hpp"
#include "qcow2/io/memory.hpp"
#include "qcow2/result.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qcow2::test {

/// Byte offsets of the header fields (qcow2 spec, "Header").
namespace field {
inline constexpr std::size_t magic = 0;
inline constexpr std::size_t version = 4;
inline constexpr std::size_t backing_file_offset = 8;
inline constexpr std::size_t backing_file_size = 16;
inline constexpr std::size_t cluster_bits = 20;
inline constexpr std::size_t size = 24;
inline constexpr std::size_t crypt_method = 32;
inline constexpr std::size_t l1_size = 36;
inline constexpr std::size_t l1_table_offset = 40;
inline constexpr std::size_t refcount_table_offset = 48;
inline constexpr std::size_t refcount_table_clusters = 56;
inline constexpr std::size_t nb_snapshots = 60;
inline constexpr std::size_t snapshots_offset = 64;
inline constexpr std::size_t incompatible_features = 72;
inline constexpr std::size_t compatible_features = 80;
inline constexpr std::size_t autoclear_features = 88;
inline constexpr std::size_t refcount_order = 96;
inline constexpr std::size_t header_length = 100;
inline constexpr std::size_t compression_type = 104;
} // namespace field

inline std::uint32_t peek32(std::span<const std::byte> b, std::size_t off) { return detail::load_be32(b, off); }
inline std::uint64_t peek64(std::span<const std::byte> b, std::size_t off) { return detail::load_be64(b, off); }
inline void poke16(std::span<std::byte> b, std::size_t off, std::uint16_t v) { detail::store_be16(b, off, v); }
inline void poke32(std::span<std::byte> b, std::size_t off, std::uint32_t v) { detail::store_be32(b, off, v); }
inline void poke64(std::span<std::byte> b, std::size_t off, std::uint64_t v) { detail::store_be64(b, off, v); }

/// Bytes of a string, for extension payloads and names.
inline std::vector<std::byte> bytes_of(std::string_view s) { return detail::to_bytes(s); }

/// Offset of the first extension of `type` in the encoded cluster 0 (its type field), or 0.
inline std::size_t find_extension_offset(std::span<const std::byte> b, std::uint32_t type) {
    std::size_t off = peek32(b, field::version) == 2 ? v2_header_length : peek32(b, field::header_length);
    while (off + 8 <= b.size()) {
        const std::uint32_t t = peek32(b, off);
        if (t == type) return off;
        if (t == extension_type::end) return 0;
        off += 8 + ((std::size_t{peek32(b, off + 4)} + 7) & ~std::size_t{7});
    }
    return 0;
}

/**
 * @brief Builds a valid image: set up `h` (or use the helpers), then call `bytes()` or `memory()`.
 *
 * The constructor gives a header that opens cleanly: version 3 (or 2), 1 GiB virtual size,
 * QEMU's 112-byte header, the layout above and no extensions.
 */
class image_builder {
public:
    explicit image_builder(std::uint32_t cluster_bits = 16, std::uint32_t version = 3) {
        h.version = version;
        h.cluster_bits = cluster_bits;
        h.size = std::uint64_t{1} << 30;
        h.refcount_table_offset = 1 * cs();
        h.refcount_table_clusters = 1;
        h.l1_table_offset = 3 * cs();
        h.l1_size = static_cast<std::uint32_t>(h.min_l1_entries());
        if (version == 2) h.unknown_fields.clear();
    }

    /// The header as it will be laid out (fields set by the helpers included).
    header h;

    std::uint64_t cs() const { return h.cluster_size(); }

    /// A backing file name, and optionally the backing format extension.
    image_builder& backing(std::string name, std::optional<std::string> format = std::nullopt) {
        h.backing_file = std::move(name);
        if (format) h.set_extension(extension_type::backing_format, bytes_of(*format));
        return *this;
    }

    /// QEMU's feature name table, followed by `more` entries.
    image_builder& feature_table(std::vector<feature_name_entry> more = {}) {
        auto entries = qemu_features::name_table();
        entries.insert(entries.end(), more.begin(), more.end());
        h.set_extension(extension_type::feature_names, encode_feature_names(entries));
        return *this;
    }

    /// A feature name table holding exactly `entries`.
    image_builder& feature_table_only(const std::vector<feature_name_entry>& entries) {
        h.set_extension(extension_type::feature_names, encode_feature_names(entries));
        return *this;
    }

    /// Appends an extension (of any type, unknown ones included).
    image_builder& extension(std::uint32_t type, std::vector<std::byte> data) {
        h.extensions.push_back({type, std::move(data)});
        return *this;
    }

    /// Internal snapshots: each gets its own copy of the (empty) active L1 table.
    image_builder& snapshots(std::vector<snapshot_entry> entries) {
        snapshots_ = std::move(entries);
        return *this;
    }

    /// Persistent bitmaps (with the extension and autoclear bit 0); tables and directory are laid out here.
    image_builder& bitmaps(std::vector<bitmap_entry> entries) {
        bitmaps_ = std::move(entries);
        return *this;
    }

    /// Host offset of the snapshot table (valid after `bytes()`; 0 without snapshots).
    std::uint64_t snapshot_table_offset() const { return snapshot_table_offset_; }
    /// Host offset of the bitmap directory (valid after `bytes()`; 0 without bitmaps).
    std::uint64_t bitmap_directory_offset() const { return bitmap_directory_offset_; }

    /// The whole file. Fails the test (throws) when the header does not encode.
    std::vector<std::byte> bytes() {
        const std::uint64_t c = cs();
        std::vector<std::pair<std::uint64_t, std::vector<std::byte>>> blobs;
        std::uint64_t next = 4; // first free cluster
        auto place = [&](std::vector<std::byte> data) {
            const std::uint64_t at = next * c;
            next += detail::div_round_up(std::max<std::uint64_t>(data.size(), 1), c);
            blobs.emplace_back(at, std::move(data));
            return at;
        };

        h.nb_snapshots = static_cast<std::uint32_t>(snapshots_.size());
        h.snapshots_offset = 0;
        snapshot_table_offset_ = 0;
        if (!snapshots_.empty()) {
            for (auto& s : snapshots_) {
                s.l1_size = h.l1_size;
                s.l1_table_offset = place(std::vector<std::byte>(std::size_t{h.l1_size} * 8));
            }
            h.snapshots_offset = snapshot_table_offset_ = place(encode_snapshot_table(snapshots_));
        }

        bitmap_directory_offset_ = 0;
        if (!bitmaps_.empty()) {
            for (auto& b : bitmaps_) {
                const std::uint64_t bits = detail::div_round_up(h.size, b.granularity());
                b.table_size = static_cast<std::uint32_t>(detail::div_round_up(detail::div_round_up(bits, 8), c));
                b.table_offset = place(std::vector<std::byte>(std::size_t{b.table_size} * 8));
            }
            auto dir = encode_bitmap_directory(bitmaps_);
            const auto dir_size = dir.size();
            bitmap_directory_offset_ = place(std::move(dir));
            h.set_extension(extension_type::bitmaps,
                            encode_bitmaps_extension({static_cast<std::uint32_t>(bitmaps_.size()), 0, dir_size,
                                                      bitmap_directory_offset_}));
            h.autoclear_features |= features::bitmaps::mask;
        }

        lay_out_header(h);
        std::vector<std::byte> file(static_cast<std::size_t>(next * c));
        encode_header(h, std::span(file).first(static_cast<std::size_t>(c))).value();
        // Refcount table entry 0 -> the refcount block in cluster 2; every used cluster has refcount 1.
        poke64(file, static_cast<std::size_t>(h.refcount_table_offset), 2 * c);
        for (std::uint64_t i = 0; i < next; ++i) poke16(file, static_cast<std::size_t>(2 * c + 2 * i), 1);
        for (auto& [at, data] : blobs)
            std::copy(data.begin(), data.end(), file.begin() + static_cast<std::ptrdiff_t>(at));
        return file;
    }

    /// The file in an `io::memory`.
    io::memory memory() { return to_memory(bytes()); }

    /// Wraps bytes into an `io::memory`.
    static io::memory to_memory(std::vector<std::byte> b) { return io::memory(std::move(b)); }

private:
    std::vector<snapshot_entry> snapshots_;
    std::vector<bitmap_entry> bitmaps_;
    std::uint64_t snapshot_table_offset_ = 0;
    std::uint64_t bitmap_directory_offset_ = 0;
};

/// The decoded header of the first cluster of `file`, failing the test when it does not decode.
inline header decode_file_header(std::span<const std::byte> file) {
    return decode_header(file.first(std::min<std::size_t>(file.size(), std::size_t{2} << 20))).value();
}

} // namespace qcow2::test

/// Requires `res` (any `qcow2::result`) to hold an error with code `code` whose message contains `text`.
#define QCOW2_REQUIRE_ERROR(res, code, text)                                                                           \
    do {                                                                                                               \
        const auto& qcow2_res_ = (res);                                                                                \
        REQUIRE_FALSE(qcow2_res_.has_value());                                                                         \
        INFO("error: " << qcow2_res_.error().what());                                                                  \
        CHECK(qcow2_res_.error().is(code));                                                                            \
        CHECK_THAT(qcow2_res_.error().message(), Catch::Matchers::Contains(text));                                     \
    } while (false)
