// SPDX-License-Identifier: MIT
/// @file
/// @brief `qcow2::errc`, its `std::error_category`, and `qcow2::error` (a code plus a message).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

namespace qcow2 {

/// Every way a qcow2 operation can fail. Registered with `std::error_code`.
enum class errc : int {
    // I/O and environment
    io_error = 1,          ///< the backend reported an error (the message carries its text)
    short_read,            ///< a read went past the end of the file
    no_memory,             ///< an allocation failed or would exceed a configured bound
    invalid_argument,      ///< a caller passed an argument outside its domain
    read_only,             ///< a write was attempted on an image or backend opened read-only
    not_supported,         ///< the operation is valid qcow2 but this library does not do it
    file_too_large,        ///< a backend cannot grow to the requested size
    // header
    truncated_header,      ///< the file is shorter than the header it claims
    bad_magic,             ///< the first four bytes are not "QFI\xfb"
    unsupported_version,   ///< version is neither 2 nor 3
    invalid_cluster_size,  ///< cluster_bits outside 9..21
    invalid_header_length, ///< header_length below 104, above the cluster, or not a multiple of 8
    invalid_refcount_order,///< refcount_order above 6, or not 4 in a version 2 image
    misaligned_offset,     ///< a table offset is not cluster aligned
    offset_too_large,      ///< an offset is beyond 2^56 or overflows with its size
    l1_too_large,          ///< the L1 table is larger than 32 MiB
    l1_too_small,          ///< the L1 table does not cover the virtual size
    image_too_large,       ///< the virtual size needs more L1 entries than QEMU allows
    refcount_table_too_large, ///< the refcount table is larger than 8 MiB
    refcount_table_empty,  ///< refcount_table_clusters is zero
    // extensions and names
    extension_too_large,   ///< a header extension runs past the end of its area
    invalid_extension,     ///< a known header extension has the wrong length or content
    duplicate_extension,   ///< a header extension type appears twice
    backing_name_too_long, ///< the backing file name is over 1023 bytes or leaves cluster 0
    backing_format_too_long, ///< the backing format name is over 15 bytes
    // features
    unknown_incompatible_feature, ///< an incompatible feature bit this library does not know is set
    invalid_compression_type,     ///< compression_type and incompatible bit 3 disagree, or the type is unknown
    unsupported_compression,      ///< the image's compression codec was not compiled in
    invalid_subcluster_size,      ///< extended L2 entries with clusters below 16 KiB
    feature_conflict,             ///< feature bits that cannot be combined (e.g. raw data without a data file)
    image_corrupt,                ///< the corrupt bit is set and a read-write open was asked for
    unsupported_encryption,       ///< an unknown crypt_method, or LUKS without its header extension
    // snapshots and bitmaps
    too_many_snapshots,           ///< more than 65536 snapshots
    invalid_snapshot_table,       ///< the snapshot table is malformed or too large
    invalid_bitmap_directory,     ///< the bitmap directory or extension is malformed
    // resolution of other files
    backing_file_refused,         ///< a resolver refused to open a backing or data file
    // compressed clusters
    invalid_compressed_data,      ///< a compressed cluster is corrupt, ends early or does not make exactly one cluster
    not_compressible,             ///< data does not shrink into the space allowed when compressed (store it plain)
    // writing
    refcount_overflow,            ///< a refcount would exceed the largest value its width holds
    metadata_overlap,             ///< a write would overwrite metadata (the image is then marked corrupt)
};

namespace detail {

inline constexpr std::string_view errc_text(errc e) noexcept {
    switch (e) {
    case errc::io_error: return "I/O error";
    case errc::short_read: return "read past the end of the file";
    case errc::no_memory: return "out of memory";
    case errc::invalid_argument: return "invalid argument";
    case errc::read_only: return "image is read-only";
    case errc::not_supported: return "operation not supported";
    case errc::file_too_large: return "file too large";
    case errc::truncated_header: return "truncated header";
    case errc::bad_magic: return "not a qcow2 image (bad magic)";
    case errc::unsupported_version: return "unsupported qcow2 version";
    case errc::invalid_cluster_size: return "invalid cluster size";
    case errc::invalid_header_length: return "invalid header length";
    case errc::invalid_refcount_order: return "invalid refcount order";
    case errc::misaligned_offset: return "offset not cluster aligned";
    case errc::offset_too_large: return "offset too large";
    case errc::l1_too_large: return "L1 table too large";
    case errc::l1_too_small: return "L1 table too small";
    case errc::image_too_large: return "image too large";
    case errc::refcount_table_too_large: return "refcount table too large";
    case errc::refcount_table_empty: return "refcount table empty";
    case errc::extension_too_large: return "header extension too large";
    case errc::invalid_extension: return "invalid header extension";
    case errc::duplicate_extension: return "duplicate header extension";
    case errc::backing_name_too_long: return "backing file name too long";
    case errc::backing_format_too_long: return "backing file format name too long";
    case errc::unknown_incompatible_feature: return "unknown incompatible feature";
    case errc::invalid_compression_type: return "invalid compression type";
    case errc::unsupported_compression: return "compression type not supported by this build";
    case errc::invalid_subcluster_size: return "invalid subcluster size";
    case errc::feature_conflict: return "conflicting feature bits";
    case errc::image_corrupt: return "image is marked corrupt";
    case errc::unsupported_encryption: return "unsupported encryption";
    case errc::too_many_snapshots: return "too many snapshots";
    case errc::invalid_snapshot_table: return "invalid snapshot table";
    case errc::invalid_bitmap_directory: return "invalid bitmap directory";
    case errc::invalid_compressed_data: return "invalid compressed data";
    case errc::not_compressible: return "data does not shrink when compressed";
    case errc::refcount_overflow: return "refcount overflow";
    case errc::metadata_overlap: return "write would overwrite metadata";
    case errc::backing_file_refused: return "backing or data file refused";
    }
    return "unknown qcow2 error";
}

class error_category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "qcow2"; }
    std::string message(int ev) const override { return std::string(errc_text(static_cast<errc>(ev))); }
};

} // namespace detail

/// The category of `qcow2::errc` values.
inline const std::error_category& error_category() noexcept {
    static const detail::error_category_impl instance;
    return instance;
}

/// Makes a `std::error_code` from an `errc` (found by ADL).
inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

/**
 * @brief A failure: an error code and a message that names what and where.
 *
 * The code is a `qcow2::errc` or, for failures reported by a backend, any
 * `std::error_code` (an errno value, say). The type is usable in constant
 * expressions so that the header codec can be `constexpr`.
 */
class error {
public:
    /// A `qcow2::errc` failure with a message naming what and where.
    constexpr error(errc code, std::string_view message) : value_(static_cast<int>(code)), message_(message.data(), message.size()) {}
    /// A failure with any `std::error_code` (a backend's errno value, say) and a message.
    error(std::error_code code, std::string_view message)
        : value_(code.value()), category_(&code.category()), message_(message) {
        if (category_ == &error_category()) category_ = nullptr;
    }

    // Written out because GCC 12 cannot move a short std::string in a constant expression.
    /// Copies the code and the message.
    constexpr error(const error& o) : value_(o.value_), category_(o.category_), message_(o.message_.data(), o.message_.size()) {}
    /// Moves the code and the message.
    constexpr error(error&& o) noexcept : value_(o.value_), category_(o.category_) { take(o.message_); }
    /// Copies the code and the message.
    constexpr error& operator=(const error& o) {
        value_ = o.value_;
        category_ = o.category_;
        message_.assign(o.message_.data(), o.message_.size());
        return *this;
    }
    /// Moves the code and the message.
    constexpr error& operator=(error&& o) noexcept {
        value_ = o.value_;
        category_ = o.category_;
        take(o.message_);
        return *this;
    }
    /// Destroys the message.
    constexpr ~error() = default;

    /// The code as a `std::error_code`.
    std::error_code code() const noexcept {
        return category_ ? std::error_code(value_, *category_) : make_error_code(static_cast<errc>(value_));
    }
    /// True when the code is the given `errc`.
    constexpr bool is(errc e) const noexcept { return category_ == nullptr && value_ == static_cast<int>(e); }
    /// The message naming what failed and where (without the code's own text).
    constexpr const std::string& message() const noexcept { return message_; }
    /// "message: code text", for printing.
    std::string what() const { return message_.empty() ? code().message() : message_ + ": " + code().message(); }

    /// True when `a`'s code is `b` (`a.is(b)`).
    constexpr friend bool operator==(const error& a, errc b) noexcept { return a.is(b); }

private:
    constexpr void take(std::string& m) noexcept {
        if (std::is_constant_evaluated()) message_.assign(m.data(), m.size());
        else message_.swap(m);
    }

    int value_;
    const std::error_category* category_ = nullptr; // nullptr: qcow2::error_category()
    std::string message_;
};

} // namespace qcow2

template <>
struct std::is_error_code_enum<qcow2::errc> : std::true_type {};
