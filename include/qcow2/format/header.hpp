// SPDX-License-Identifier: MIT
/// @file
/// @brief The qcow2 header: every field of versions 2 and 3, its extensions and the
///        backing file name; decoding with QEMU's checks, and encoding byte for byte.
///
/// Cluster 0 of a qcow2 file holds, in order: the header fields (72 bytes in version 2,
/// `header_length` bytes in version 3), the header extensions, an end marker, and the
/// backing file name at `backing_file_offset`. `decode_header` reads all of it from the
/// bytes of cluster 0; `encode_header` writes it back so that an image written by QEMU
/// re-encodes to the same bytes.
///
/// @see qcow2 spec (docs/interop/qcow2.txt), "Header" and "Header extensions".
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/format/extensions.hpp"
#include "qcow2/format/features.hpp"
#include "qcow2/result.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qcow2 {

/// "QFI\xfb".
inline constexpr std::uint32_t header_magic = 0x514649FB;
/// Size of the version 2 header fields.
inline constexpr std::uint32_t v2_header_length = 72;
/// Smallest version 3 header (up to and including header_length).
inline constexpr std::uint32_t v3_min_header_length = 104;
/// Header length QEMU writes for version 3 (with compression_type and its padding).
inline constexpr std::uint32_t v3_qemu_header_length = 112;
/// Bytes to read before `decode_header` can learn the cluster size.
inline constexpr std::size_t header_probe_size = 112;

/// compression_type values.
enum class compression : std::uint8_t { zlib = 0, zstd = 1 };

/// Encryption methods (crypt_method).
enum class crypt_method : std::uint32_t { none = 0, aes = 1, luks = 2 };

/**
 * @brief Every field of the header, plus what follows it in cluster 0.
 *
 * Version 2 images have `header_length == 72`, no feature bits and `refcount_order == 4`.
 */
struct header {
    /// 2 or 3 (byte 4).
    std::uint32_t version = 3;
    /// Where the backing file name starts in cluster 0; 0 without a backing file (byte 8).
    std::uint64_t backing_file_offset = 0;
    /// Length of the backing file name in bytes (byte 16).
    std::uint32_t backing_file_size = 0;
    /// log2 of the cluster size, 9 to 21 (byte 20).
    std::uint32_t cluster_bits = 16;
    /// The virtual disk size in bytes (byte 24).
    std::uint64_t size = 0;
    /// 0 none, 1 AES, 2 LUKS (byte 32; see `qcow2::crypt_method`).
    std::uint32_t crypt_method = 0;
    /// Entries in the active L1 table (byte 36).
    std::uint32_t l1_size = 0;
    /// Host offset of the active L1 table (byte 40).
    std::uint64_t l1_table_offset = 0;
    /// Host offset of the refcount table (byte 48).
    std::uint64_t refcount_table_offset = 0;
    /// Length of the refcount table in clusters (byte 56).
    std::uint32_t refcount_table_clusters = 0;
    /// Internal snapshots in the snapshot table (byte 60).
    std::uint32_t nb_snapshots = 0;
    /// Host offset of the snapshot table (byte 64).
    std::uint64_t snapshots_offset = 0;
    /// Incompatible feature bits: unknown ones refuse the open (byte 72, version 3).
    std::uint64_t incompatible_features = 0;
    /// Compatible feature bits: unknown ones are ignored (byte 80, version 3).
    std::uint64_t compatible_features = 0;
    /// Autoclear feature bits: a writer clears those it does not maintain (byte 88, version 3).
    std::uint64_t autoclear_features = 0;
    /// log2 of the refcount width in bits, 0 to 6 (byte 96; 4 in version 2).
    std::uint32_t refcount_order = 4;
    /// Bytes of header fields (byte 100; 72 in version 2).
    std::uint32_t header_length = v3_qemu_header_length;
    std::uint8_t compression_type = 0; ///< meaningful only when header_length > 104
    /// Bytes from 105 up to header_length (compression_type's padding, then fields this
    /// library does not know), kept so that rewriting the header preserves them.
    std::vector<std::byte> unknown_fields = std::vector<std::byte>(7);
    /// Extensions in file order, without the end marker.
    std::vector<header_extension> extensions;
    /// True when the extension list ended with an explicit end marker.
    bool has_end_marker = true;
    /// The backing file name, exactly as stored (not NUL terminated in the file).
    std::string backing_file;

    /// The cluster size in bytes.
    constexpr std::uint64_t cluster_size() const noexcept { return std::uint64_t{1} << cluster_bits; }
    /// The width of a refcount entry in bits.
    constexpr unsigned refcount_bits() const noexcept { return 1u << refcount_order; }
    /// True when any incompatible bit of `incompatible_mask` is set.
    constexpr bool has(std::uint64_t incompatible_mask) const noexcept { return incompatible_features & incompatible_mask; }
    /// True for 128-bit L2 entries with subclusters (incompatible bit 4).
    constexpr bool extended_l2() const noexcept { return incompatible_features & features::extended_l2::mask; }
    /// Bytes per L2 entry: 8, or 16 with extended L2 entries.
    constexpr std::uint32_t l2_entry_size() const noexcept { return extended_l2() ? 16 : 8; }
    /// log2 of the entries per L2 table.
    constexpr std::uint32_t l2_bits() const noexcept { return cluster_bits - (extended_l2() ? 4 : 3); }
    /// Bytes of guest disk one L1 entry covers.
    constexpr std::uint64_t l1_entry_coverage() const noexcept { return std::uint64_t{1} << (cluster_bits + l2_bits()); }
    /// The L1 entries needed to cover the virtual size.
    constexpr std::uint64_t min_l1_entries() const noexcept { return detail::div_round_up(size, l1_entry_coverage()); }
    /// The compression type as an enumeration.
    constexpr compression compression_kind() const noexcept { return static_cast<compression>(compression_type); }

    /// The extension of a type, or nullptr.
    constexpr const header_extension* find_extension(std::uint32_t type) const noexcept {
        for (const auto& e : extensions)
            if (e.type == type) return &e;
        return nullptr;
    }
    /// Replaces (or appends) the extension of `type`; an empty `data` with `remove` drops it.
    constexpr void set_extension(std::uint32_t type, std::vector<std::byte> data) {
        for (auto& e : extensions)
            if (e.type == type) {
                e.data = std::move(data);
                return;
            }
        extensions.push_back({type, std::move(data)});
    }
    /// Removes the extension of `type`, if present.
    constexpr void remove_extension(std::uint32_t type) {
        std::erase_if(extensions, [type](const header_extension& e) { return e.type == type; });
    }

    /// The backing format name, when the extension is present.
    constexpr std::optional<std::string> backing_format() const {
        if (const auto* e = find_extension(extension_type::backing_format)) return detail::to_string(e->data);
        return std::nullopt;
    }
    /// The external data file name, when the extension is present.
    constexpr std::optional<std::string> data_file() const {
        if (const auto* e = find_extension(extension_type::data_file)) return detail::to_string(e->data);
        return std::nullopt;
    }
    /// The image's own feature name table (empty when it has none).
    constexpr std::vector<feature_name_entry> feature_names() const {
        if (const auto* e = find_extension(extension_type::feature_names)) return decode_feature_names(e->data);
        return {};
    }
    /// The bitmaps extension, when present (its length was checked by decode_header).
    constexpr std::optional<bitmaps_extension> bitmaps() const {
        if (const auto* e = find_extension(extension_type::bitmaps))
            if (auto b = decode_bitmaps_extension(e->data)) return *b;
        return std::nullopt;
    }
    /// The full disk encryption extension, when present.
    constexpr std::optional<encryption_extension> encryption() const {
        if (const auto* e = find_extension(extension_type::encryption))
            if (auto x = decode_encryption_extension(e->data)) return *x;
        return std::nullopt;
    }

    /// Equal when every field is.
    friend constexpr bool operator==(const header&, const header&) = default;
};

namespace detail {

constexpr error header_error(errc code, std::string msg) { return error{code, std::move(msg)}; }

/// Checks that `[offset, offset + bytes)` of a table is aligned and below 2^56.
constexpr result<void> check_table(std::string_view what, std::uint64_t offset, std::uint64_t bytes,
                                   std::uint64_t cluster_size) {
    if (!is_aligned(offset, cluster_size))
        return header_error(errc::misaligned_offset, cat(what, " offset ", hex(offset), " is not aligned to the cluster size ",
                                                         dec(cluster_size)));
    auto end = checked_add(offset, bytes);
    if (!end || *end > limits::max_host_offset + 1)
        return header_error(errc::offset_too_large,
                            cat(what, " at ", hex(offset), " of ", dec(bytes), " bytes ends beyond 2^56"));
    return {};
}

} // namespace detail

/**
 * @brief Checks the header fields against the spec and QEMU's limits.
 *
 * Everything here is a property of the header alone; checks that need the file
 * (its size, the tables' contents) belong to the image.
 *
 * @par Errors
 * One `errc` per rule, with a message naming the field and its value:
 * `invalid_cluster_size`, `invalid_header_length`, `invalid_refcount_order`,
 * `misaligned_offset`, `offset_too_large`, `l1_too_large`, `l1_too_small`, `image_too_large`,
 * `refcount_table_empty`, `refcount_table_too_large`, `too_many_snapshots`,
 * `invalid_compression_type`, `invalid_subcluster_size`, `feature_conflict`,
 * `unsupported_encryption`, `backing_name_too_long`, `backing_format_too_long`.
 */
constexpr result<void> validate_header(const header& h) {
    using detail::cat;
    using detail::dec;
    using detail::hex;
    using detail::header_error;
    if (h.cluster_bits < limits::min_cluster_bits || h.cluster_bits > limits::max_cluster_bits)
        return header_error(errc::invalid_cluster_size,
                            cat("cluster_bits is ", dec(h.cluster_bits), ", must be between ",
                                dec(limits::min_cluster_bits), " and ", dec(limits::max_cluster_bits)));
    const std::uint64_t cs = h.cluster_size();
    if (h.version == 3) {
        if (h.header_length < v3_min_header_length || h.header_length % 8 != 0 || h.header_length > cs)
            return header_error(errc::invalid_header_length,
                                cat("header_length is ", dec(h.header_length),
                                    ", must be a multiple of 8 between 104 and the cluster size ", dec(cs)));
    }
    if (h.refcount_order > limits::max_refcount_order || (h.version == 2 && h.refcount_order != 4))
        return header_error(errc::invalid_refcount_order,
                            cat("refcount_order is ", dec(h.refcount_order),
                                h.version == 2 ? ", version 2 images use 4" : ", must be at most 6"));
    // compression_type and incompatible bit 3 must agree.
    const bool has_ct_field = h.version == 3 && h.header_length > v3_min_header_length;
    const std::uint8_t ct = has_ct_field ? h.compression_type : 0;
    if (ct > 1)
        return header_error(errc::invalid_compression_type,
                            cat("compression_type is ", dec(ct), ", known types are 0 (zlib) and 1 (zstd)"));
    if ((h.incompatible_features & features::compression_type::mask) && ct == 0)
        return header_error(errc::invalid_compression_type,
                            "incompatible bit 3 (compression type) is set but compression_type is zlib or absent");
    if (!(h.incompatible_features & features::compression_type::mask) && ct != 0)
        return header_error(errc::invalid_compression_type,
                            cat("compression_type is ", dec(ct), " but incompatible bit 3 (compression type) is clear"));
    if (h.extended_l2() && h.cluster_bits < 14)
        return header_error(errc::invalid_subcluster_size,
                            cat("extended L2 entries need clusters of at least 16 KiB, cluster size is ", dec(cs)));
    if ((h.autoclear_features & features::raw_external_data::mask) &&
        !(h.incompatible_features & features::external_data_file::mask))
        return header_error(errc::feature_conflict,
                            "autoclear bit 1 (raw external data) is set without incompatible bit 2 (external data file)");
    if (h.crypt_method > 2)
        return header_error(errc::unsupported_encryption, cat("crypt_method is ", dec(h.crypt_method),
                                                              ", known methods are 0 (none), 1 (AES) and 2 (LUKS)"));
    if (h.crypt_method == 2 && !h.encryption())
        return header_error(errc::unsupported_encryption,
                            "LUKS encryption (crypt_method 2) without the full disk encryption header extension");
    if (h.crypt_method != 2 && h.encryption())
        return header_error(errc::invalid_extension,
                            "full disk encryption extension present but crypt_method is not LUKS");

    // Refcount table.
    if (h.refcount_table_clusters == 0)
        return header_error(errc::refcount_table_empty, "refcount_table_clusters is 0");
    if (std::uint64_t{h.refcount_table_clusters} * cs > limits::max_refcount_table_bytes)
        return header_error(errc::refcount_table_too_large,
                            cat("refcount table of ", dec(h.refcount_table_clusters), " clusters (",
                                dec(std::uint64_t{h.refcount_table_clusters} * cs), " bytes) exceeds 8 MiB"));
    if (auto r = detail::check_table("refcount table", h.refcount_table_offset,
                                     std::uint64_t{h.refcount_table_clusters} * cs, cs);
        !r)
        return r;
    // L1 table.
    if (std::uint64_t{h.l1_size} * 8 > limits::max_l1_bytes)
        return header_error(errc::l1_too_large, cat("L1 table of ", dec(h.l1_size), " entries (",
                                                    dec(std::uint64_t{h.l1_size} * 8), " bytes) exceeds ",
                                                    dec(limits::max_l1_bytes), " bytes"));
    if (h.min_l1_entries() > 0x7fffffffu)
        return header_error(errc::image_too_large, cat("virtual size ", dec(h.size), " needs ",
                                                       dec(h.min_l1_entries()), " L1 entries"));
    if (h.l1_size < h.min_l1_entries())
        return header_error(errc::l1_too_small, cat("L1 table of ", dec(h.l1_size), " entries covers less than the virtual size ",
                                                    dec(h.size), " (needs ", dec(h.min_l1_entries()), ")"));
    if (auto r = detail::check_table("L1 table", h.l1_table_offset, std::uint64_t{h.l1_size} * 8, cs); !r) return r;
    // Snapshot table.
    if (h.nb_snapshots > limits::max_snapshots)
        return header_error(errc::too_many_snapshots,
                            cat("nb_snapshots is ", dec(h.nb_snapshots), ", at most ", dec(limits::max_snapshots)));
    if (h.nb_snapshots > 0)
        if (auto r = detail::check_table("snapshot table", h.snapshots_offset, 0, cs); !r) return r;
    // Names.
    if (h.backing_file_offset != 0 && h.backing_file.size() > limits::max_backing_name)
        return header_error(errc::backing_name_too_long, cat("backing file name is ", dec(h.backing_file.size()),
                                                             " bytes, at most ", dec(limits::max_backing_name)));
    if (auto f = h.backing_format(); f && f->size() > limits::max_backing_format)
        return header_error(errc::backing_format_too_long, cat("backing format name is ", dec(f->size()),
                                                               " bytes, at most ", dec(limits::max_backing_format)));
    return {};
}

/**
 * @brief Decodes and validates the header from the bytes of cluster 0.
 *
 * @param cluster0 the first bytes of the file: at least `header_probe_size` bytes (or the
 *        whole file when shorter), ideally the whole first cluster; the extension area and
 *        the backing name must lie inside it.
 * @par Errors
 * `truncated_header`, `bad_magic`, `unsupported_version`, `extension_too_large`,
 * `invalid_extension`, `duplicate_extension`, `backing_name_too_long`, and everything
 * `validate_header` reports.
 * @par Complexity
 * Linear in the size of cluster 0. Constant expression.
 */
constexpr result<header> decode_header(std::span<const std::byte> cluster0) {
    using detail::cat;
    using detail::dec;
    using detail::header_error;
    using detail::hex;
    using detail::load_be32;
    using detail::load_be64;
    const auto& b = cluster0;
    if (b.size() < 8) return header_error(errc::truncated_header, cat("file is ", dec(b.size()), " bytes, shorter than a header"));
    if (load_be32(b, 0) != header_magic)
        return header_error(errc::bad_magic, cat("magic is ", hex(load_be32(b, 0)), ", expected 0x514649fb (\"QFI\\xfb\")"));
    header h;
    h.version = load_be32(b, 4);
    if (h.version != 2 && h.version != 3)
        return header_error(errc::unsupported_version, cat("version is ", dec(h.version), ", supported are 2 and 3"));
    const std::size_t fixed = h.version == 2 ? v2_header_length : v3_min_header_length;
    if (b.size() < fixed)
        return header_error(errc::truncated_header, cat("file is ", dec(b.size()), " bytes, the version ", dec(h.version),
                                                        " header needs ", dec(fixed)));
    h.backing_file_offset = load_be64(b, 8);
    h.backing_file_size = load_be32(b, 16);
    h.cluster_bits = load_be32(b, 20);
    h.size = load_be64(b, 24);
    h.crypt_method = load_be32(b, 32);
    h.l1_size = load_be32(b, 36);
    h.l1_table_offset = load_be64(b, 40);
    h.refcount_table_offset = load_be64(b, 48);
    h.refcount_table_clusters = load_be32(b, 56);
    h.nb_snapshots = load_be32(b, 60);
    h.snapshots_offset = load_be64(b, 64);
    h.unknown_fields.clear();
    if (h.version == 2) {
        h.incompatible_features = h.compatible_features = h.autoclear_features = 0;
        h.refcount_order = 4;
        h.header_length = v2_header_length;
    } else {
        h.incompatible_features = load_be64(b, 72);
        h.compatible_features = load_be64(b, 80);
        h.autoclear_features = load_be64(b, 88);
        h.refcount_order = load_be32(b, 96);
        h.header_length = load_be32(b, 100);
    }
    if (h.cluster_bits < limits::min_cluster_bits || h.cluster_bits > limits::max_cluster_bits)
        return validate_header(h).error(); // names the field
    const std::uint64_t cs = h.cluster_size();
    if (h.version == 3) {
        if (h.header_length < v3_min_header_length || h.header_length % 8 != 0 || h.header_length > cs)
            return validate_header(h).error();
        if (b.size() < h.header_length)
            return header_error(errc::truncated_header, cat("file is ", dec(b.size()), " bytes, header_length is ",
                                                            dec(h.header_length)));
        if (h.header_length > v3_min_header_length) {
            h.compression_type = static_cast<std::uint8_t>(b[104]);
            h.unknown_fields.assign(b.begin() + 105, b.begin() + h.header_length);
        }
    }

    // Extensions: from the end of the header to the backing file name, else to the end of cluster 0.
    if (h.backing_file_offset != 0 && (h.backing_file_offset < h.header_length || h.backing_file_offset > cs))
        return header_error(errc::backing_name_too_long,
                            cat("backing_file_offset ", hex(h.backing_file_offset), " is outside cluster 0 after the header (",
                                dec(h.header_length), " to ", dec(cs), ")"));
    const std::uint64_t area_end = h.backing_file_offset != 0 ? h.backing_file_offset : cs;
    const std::uint64_t avail = std::min<std::uint64_t>(area_end, b.size());
    std::uint64_t off = h.header_length;
    h.has_end_marker = false;
    while (off + 8 <= area_end) {
        if (off + 8 > avail)
            return header_error(errc::truncated_header,
                                cat("file ends at ", dec(b.size()), " inside the header extension area (up to ", dec(area_end), ")"));
        const std::uint32_t type = load_be32(b, off);
        const std::uint32_t len = load_be32(b, off + 4);
        if (type == extension_type::end) {
            h.has_end_marker = true;
            break;
        }
        if (len > area_end - off - 8)
            return header_error(errc::extension_too_large,
                                cat(detail::ext_name(type), " at offset ", dec(off), " has length ", dec(len),
                                    " and runs past the end of the extension area at ", dec(area_end)));
        if (off + 8 + len > avail)
            return header_error(errc::truncated_header, cat("file ends inside the ", detail::ext_name(type), " at offset ", dec(off)));
        if (type != extension_type::end && h.find_extension(type) && type != 0 &&
            (type == extension_type::backing_format || type == extension_type::feature_names ||
             type == extension_type::bitmaps || type == extension_type::encryption || type == extension_type::data_file))
            return header_error(errc::duplicate_extension, cat("the ", detail::ext_name(type), " appears twice (again at offset ",
                                                               dec(off), ")"));
        header_extension e{type, std::vector<std::byte>(b.begin() + static_cast<std::ptrdiff_t>(off + 8),
                                                        b.begin() + static_cast<std::ptrdiff_t>(off + 8 + len))};
        if (type == extension_type::bitmaps)
            if (auto r = decode_bitmaps_extension(e.data); !r) return r.error();
        if (type == extension_type::encryption)
            if (auto r = decode_encryption_extension(e.data); !r) return r.error();
        h.extensions.push_back(std::move(e));
        off += 8 + ((std::uint64_t{len} + 7) & ~std::uint64_t{7});
    }

    // The backing file name.
    if (h.backing_file_offset != 0) {
        if (h.backing_file_size > limits::max_backing_name || h.backing_file_offset + h.backing_file_size > cs)
            return header_error(errc::backing_name_too_long,
                                cat("backing file name of ", dec(h.backing_file_size), " bytes at offset ",
                                    dec(h.backing_file_offset), " is over 1023 bytes or leaves cluster 0"));
        if (h.backing_file_offset + h.backing_file_size > b.size())
            return header_error(errc::truncated_header, cat("file ends inside the backing file name at offset ",
                                                            dec(h.backing_file_offset)));
        h.backing_file = detail::to_string(b.subspan(h.backing_file_offset, h.backing_file_size));
    }
    if (auto r = validate_header(h); !r) return r.error();
    return h;
}

/// Bytes `encode_header` writes: header fields, extensions, end marker and backing name.
constexpr std::uint64_t encoded_header_size(const header& h) {
    std::uint64_t n = h.header_length;
    for (const auto& e : h.extensions) n += 8 + ((e.data.size() + 7) & ~std::size_t{7});
    if (h.has_end_marker) n += 8;
    if (h.backing_file_offset != 0) n = std::max<std::uint64_t>(n, h.backing_file_offset + h.backing_file.size());
    return n;
}

/**
 * @brief Sets the derived fields for a header about to be written: `header_length` from the
 *        version and the unknown fields, `backing_file_offset`/`backing_file_size` right after
 *        the end marker (where QEMU puts them), and an end marker.
 */
constexpr void lay_out_header(header& h) {
    if (h.version == 2) {
        h.header_length = v2_header_length;
        h.unknown_fields.clear();
    } else {
        h.header_length = static_cast<std::uint32_t>(v3_min_header_length + 1 + h.unknown_fields.size());
        if (h.header_length % 8) { // keep the spec's multiple of 8, padding with zeroes
            h.unknown_fields.resize(h.unknown_fields.size() + 8 - h.header_length % 8);
            h.header_length = static_cast<std::uint32_t>(v3_min_header_length + 1 + h.unknown_fields.size());
        }
    }
    h.has_end_marker = true;
    h.backing_file_offset = 0;
    if (!h.backing_file.empty()) {
        h.backing_file_offset = encoded_header_size(h);
        h.backing_file_size = static_cast<std::uint32_t>(h.backing_file.size());
    } else {
        h.backing_file_size = 0;
    }
}

/**
 * @brief Encodes the header into `out` (normally one cluster), zero-filling the rest.
 * @par Errors
 * `invalid_argument` when `out` is too small or the layout is inconsistent (the backing
 * name would overlap the extensions); everything `validate_header` reports.
 */
constexpr result<void> encode_header(const header& h, std::span<std::byte> out) {
    using detail::cat;
    using detail::dec;
    using detail::store_be32;
    using detail::store_be64;
    if (auto r = validate_header(h); !r) return r;
    const std::uint64_t need = encoded_header_size(h);
    if (need > out.size() || need > h.cluster_size())
        return error{errc::invalid_argument, cat("header needs ", dec(need), " bytes, buffer is ", dec(out.size()),
                                                 " and the cluster ", dec(h.cluster_size()))};
    if (h.version == 3 && h.header_length != v3_min_header_length + (h.header_length > v3_min_header_length ? 1 + h.unknown_fields.size() : 0))
        return error{errc::invalid_argument, cat("header_length ", dec(h.header_length), " does not match the ",
                                                 dec(h.unknown_fields.size()), " unknown field bytes")};
    for (auto& x : out) x = std::byte{0};
    store_be32(out, 0, header_magic);
    store_be32(out, 4, h.version);
    store_be64(out, 8, h.backing_file_offset);
    store_be32(out, 16, h.backing_file_size); // kept as stored even when meaningless (offset 0)
    store_be32(out, 20, h.cluster_bits);
    store_be64(out, 24, h.size);
    store_be32(out, 32, h.crypt_method);
    store_be32(out, 36, h.l1_size);
    store_be64(out, 40, h.l1_table_offset);
    store_be64(out, 48, h.refcount_table_offset);
    store_be32(out, 56, h.refcount_table_clusters);
    store_be32(out, 60, h.nb_snapshots);
    store_be64(out, 64, h.snapshots_offset);
    if (h.version == 3) {
        store_be64(out, 72, h.incompatible_features);
        store_be64(out, 80, h.compatible_features);
        store_be64(out, 88, h.autoclear_features);
        store_be32(out, 96, h.refcount_order);
        store_be32(out, 100, h.header_length);
        if (h.header_length > v3_min_header_length) {
            out[104] = static_cast<std::byte>(h.compression_type);
            for (std::size_t i = 0; i < h.unknown_fields.size(); ++i) out[105 + i] = h.unknown_fields[i];
        }
    }
    std::uint64_t off = h.header_length;
    std::uint64_t used = off; // end of the last byte that carries meaning (padding does not)
    for (const auto& e : h.extensions) {
        store_be32(out, off, e.type);
        store_be32(out, off + 4, static_cast<std::uint32_t>(e.data.size()));
        for (std::size_t i = 0; i < e.data.size(); ++i) out[off + 8 + i] = e.data[i];
        used = off + 8 + e.data.size();
        off += 8 + ((e.data.size() + 7) & ~std::size_t{7});
    }
    if (h.has_end_marker) used = off += 8; // type 0, length 0: already zero
    if (h.backing_file_offset != 0) {
        // The name may start inside the last extension's padding (QEMU reads such files), not its data.
        if (h.backing_file_offset < used || h.backing_file_size != h.backing_file.size())
            return error{errc::invalid_argument, cat("backing file name at ", dec(h.backing_file_offset),
                                                     " overlaps the header extensions ending at ", dec(off),
                                                     " or its size field disagrees with the name")};
        for (std::size_t i = 0; i < h.backing_file.size(); ++i)
            out[h.backing_file_offset + i] = static_cast<std::byte>(h.backing_file[i]);
    }
    return {};
}

} // namespace qcow2
