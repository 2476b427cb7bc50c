// SPDX-License-Identifier: MIT
/// @file
/// @brief Header extensions: framing, the known types, and their typed payloads.
///
/// Extensions follow the header fields in cluster 0: `u32 type`, `u32 length`, the data,
/// then zero padding to a multiple of 8. A type of 0 ends the list. Unknown types are
/// kept byte for byte so that rewriting a header never loses them.
#pragma once

#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"
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

/// Header extension type numbers (qcow2 spec, "Header extensions").
namespace extension_type {
/// The end of the extension list.
inline constexpr std::uint32_t end = 0x00000000;
/// The backing file's format name ("qcow2", "raw").
inline constexpr std::uint32_t backing_format = 0xE2792ACA;
/// The feature name table: 48-byte entries naming feature bits.
inline constexpr std::uint32_t feature_names = 0x6803F857;
/// Where the persistent bitmap directory is.
inline constexpr std::uint32_t bitmaps = 0x23852875;
/// Where the LUKS header is (full disk encryption header pointer).
inline constexpr std::uint32_t encryption = 0x0537BE77;
/// The external data file's name ("DATA").
inline constexpr std::uint32_t data_file = 0x44415441;
} // namespace extension_type

/// A header extension as stored: its type and its data (without padding).
struct header_extension {
    /// The extension type (see `extension_type`).
    std::uint32_t type = 0;
    /// Its data, `length` bytes.
    std::vector<std::byte> data;
    /// Equal when every field is.
    friend constexpr bool operator==(const header_extension&, const header_extension&) = default;
};

/// Payload of the bitmaps extension (24 bytes).
struct bitmaps_extension {
    /// Bitmaps in the directory.
    std::uint32_t nb_bitmaps = 0;
    /// Reserved, zero.
    std::uint32_t reserved = 0;
    /// Size of the bitmap directory in bytes.
    std::uint64_t directory_size = 0;
    /// Host offset of the bitmap directory.
    std::uint64_t directory_offset = 0;
    /// Equal when every field is.
    friend constexpr bool operator==(const bitmaps_extension&, const bitmaps_extension&) = default;
};

/// Payload of the full disk encryption header pointer extension (16 bytes).
struct encryption_extension {
    /// Host offset of the LUKS header area (cluster aligned).
    std::uint64_t offset = 0;
    /// Its length in bytes.
    std::uint64_t length = 0;
    /// Equal when every field is.
    friend constexpr bool operator==(const encryption_extension&, const encryption_extension&) = default;
};

namespace detail {

constexpr std::string ext_name(std::uint32_t type) {
    switch (type) {
    case extension_type::backing_format: return "backing format extension";
    case extension_type::feature_names: return "feature name table extension";
    case extension_type::bitmaps: return "bitmaps extension";
    case extension_type::encryption: return "full disk encryption extension";
    case extension_type::data_file: return "external data file extension";
    default: return cat("header extension ", hex(type));
    }
}

constexpr std::vector<std::byte> to_bytes(std::string_view s) {
    std::vector<std::byte> v(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) v[i] = static_cast<std::byte>(s[i]);
    return v;
}

constexpr std::string to_string(std::span<const std::byte> b) {
    std::string s(b.size(), '\0');
    for (std::size_t i = 0; i < b.size(); ++i) s[i] = static_cast<char>(b[i]);
    return s;
}

} // namespace detail

/// Decodes the feature name table (48-byte entries; a trailing partial entry is ignored).
constexpr std::vector<feature_name_entry> decode_feature_names(std::span<const std::byte> data) {
    std::vector<feature_name_entry> out;
    for (std::size_t off = 0; off + 48 <= data.size(); off += 48) {
        std::size_t len = 0;
        while (len < 46 && data[off + 2 + len] != std::byte{0}) ++len;
        out.push_back({static_cast<feature_class>(data[off]), static_cast<std::uint8_t>(data[off + 1]),
                       detail::to_string(data.subspan(off + 2, len))});
    }
    return out;
}

/// Encodes feature name table entries (names longer than 46 bytes are cut to 46).
constexpr std::vector<std::byte> encode_feature_names(std::span<const feature_name_entry> entries) {
    std::vector<std::byte> out(entries.size() * 48);
    for (std::size_t i = 0; i < entries.size(); ++i) {
        out[i * 48] = static_cast<std::byte>(entries[i].klass);
        out[i * 48 + 1] = static_cast<std::byte>(entries[i].bit);
        for (std::size_t j = 0; j < entries[i].name.size() && j < 46; ++j)
            out[i * 48 + 2 + j] = static_cast<std::byte>(entries[i].name[j]);
    }
    return out;
}

/// Decodes the 24-byte bitmaps extension payload.
constexpr result<bitmaps_extension> decode_bitmaps_extension(std::span<const std::byte> d) {
    if (d.size() != 24)
        return error{errc::invalid_extension, detail::cat("bitmaps extension has length ", detail::dec(d.size()),
                                                          ", expected 24")};
    return bitmaps_extension{detail::load_be32(d, 0), detail::load_be32(d, 4), detail::load_be64(d, 8),
                             detail::load_be64(d, 16)};
}

/// Encodes the bitmaps extension payload.
constexpr std::vector<std::byte> encode_bitmaps_extension(const bitmaps_extension& b) {
    std::vector<std::byte> d(24);
    detail::store_be32(d, 0, b.nb_bitmaps);
    detail::store_be32(d, 4, b.reserved);
    detail::store_be64(d, 8, b.directory_size);
    detail::store_be64(d, 16, b.directory_offset);
    return d;
}

/// Decodes the 16-byte full disk encryption extension payload.
constexpr result<encryption_extension> decode_encryption_extension(std::span<const std::byte> d) {
    if (d.size() != 16)
        return error{errc::invalid_extension, detail::cat("full disk encryption extension has length ",
                                                          detail::dec(d.size()), ", expected 16")};
    return encryption_extension{detail::load_be64(d, 0), detail::load_be64(d, 8)};
}

/// Encodes the full disk encryption extension payload.
constexpr std::vector<std::byte> encode_encryption_extension(const encryption_extension& e) {
    std::vector<std::byte> d(16);
    detail::store_be64(d, 0, e.offset);
    detail::store_be64(d, 8, e.length);
    return d;
}

} // namespace qcow2
