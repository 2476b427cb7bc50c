// SPDX-License-Identifier: MIT
/// @file
/// @brief Header feature bits as types, and the registry generated from them.
///
/// This file is the single source of truth for feature bits. Each bit is a tag type
/// carrying its class, number and name; masks, names for error messages and the
/// feature-name-table extension are all computed from lists of tags
/// (`feature_set<...>`), never written twice.
///
/// The three classes (qcow2 spec, "Header"):
/// - **incompatible**: a reader that does not know a set bit must refuse the image;
/// - **compatible**: may be ignored; a writer keeps the bit as it found it;
/// - **autoclear**: a writer that does not maintain the bit must clear it before it
///   modifies the image, so a stale claim never survives an unaware writer.
#pragma once

#include "qcow2/detail/strings.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace qcow2 {

/// The three classes of header feature bits; the values are those of the feature name table.
enum class feature_class : std::uint8_t { incompatible = 0, compatible = 1, autoclear = 2 };

namespace detail {
/// A string usable as a template argument.
template <std::size_t N>
struct fixed_string {
    char chars[N]{};
    constexpr fixed_string(const char (&s)[N]) { std::copy_n(s, N, chars); }
    constexpr std::string_view view() const { return {chars, N - 1}; }
};
} // namespace detail

/**
 * @brief Base of every feature tag: class, bit number and feature-name-table name.
 * @tparam NeedsName true for bits this project defines beyond the published spec: such a
 *         bit is trusted only when the image's own feature name table names it exactly
 *         so, because another tool may have used the same bit for something else.
 */
template <feature_class C, unsigned Bit, detail::fixed_string Name, bool NeedsName = false>
struct feature_tag {
    static_assert(Bit < 64);
    /// The bit's class (incompatible, compatible or autoclear).
    static constexpr feature_class klass = C;
    /// The bit number in its 64-bit header field.
    static constexpr unsigned bit = Bit;
    /// The bit as a mask of its header field.
    static constexpr std::uint64_t mask = std::uint64_t{1} << Bit;
    /// Its name in the feature name table ("dirty bit", "all zero", ...).
    static constexpr std::string_view name = Name.view();
    /// True when a set bit is believed only if the image's own feature name table names it so.
    static constexpr bool needs_name_table = NeedsName;
};

/// A feature tag type.
template <class T>
concept feature = requires {
    { T::klass } -> std::convertible_to<feature_class>;
    { T::bit } -> std::convertible_to<unsigned>;
    { T::name } -> std::convertible_to<std::string_view>;
    { T::needs_name_table } -> std::convertible_to<bool>;
};

/// One tag type per defined feature bit.
namespace features {
/// Refcounts may be stale (lazy refcounts); repair before writing.
struct dirty : feature_tag<feature_class::incompatible, 0, "dirty bit"> {};
/// Metadata may be corrupt; do not write except to repair.
struct corrupt : feature_tag<feature_class::incompatible, 1, "corrupt bit"> {};
/// Guest data lives in a separate file named by the data-file extension.
struct external_data_file : feature_tag<feature_class::incompatible, 2, "external data file"> {};
/// The compression_type header field is present and not zlib.
struct compression_type : feature_tag<feature_class::incompatible, 3, "compression type"> {};
/// 128-bit L2 entries with 32 subclusters per cluster.
struct extended_l2 : feature_tag<feature_class::incompatible, 4, "extended L2 entries"> {};
/// Refcount updates may be deferred, protected by the dirty bit.
struct lazy_refcounts : feature_tag<feature_class::compatible, 0, "lazy refcounts"> {};
/// The bitmaps extension is consistent with the image.
struct bitmaps : feature_tag<feature_class::autoclear, 0, "bitmaps"> {};
/// The external data file is itself a valid raw image of the guest disk.
struct raw_external_data : feature_tag<feature_class::autoclear, 1, "raw external data"> {};
/// Every cluster whose contents come from this image reads as zero (this project's extension).
struct all_zero : feature_tag<feature_class::autoclear, 2, "all zero", true> {};
} // namespace features

/// One row of the registry: what a feature tag says, as a value.
struct feature_info {
    /// The bit's class.
    feature_class klass;
    /// The bit number.
    unsigned bit;
    /// Its feature name table name.
    std::string_view name;
    /// See `feature_tag`.
    bool needs_name_table;
    /// Equal when every field is.
    friend constexpr bool operator==(const feature_info&, const feature_info&) = default;
};

/// One 48-byte entry of the feature name table header extension.
struct feature_name_entry {
    /// Entry type: the bit's class (byte 0 of the entry).
    feature_class klass;
    /// The bit number (byte 1 of the entry).
    std::uint8_t bit;
    std::string name; ///< at most 46 bytes
    /// Equal when every field is.
    friend constexpr bool operator==(const feature_name_entry&, const feature_name_entry&) = default;
};

/// A set of feature tags: the features an image type maintains, or a registry.
template <feature... F>
struct feature_set {
    /// True when `G` is in the set.
    template <feature G>
    static constexpr bool contains = (std::is_same_v<G, F> || ...);
    /// The number of features in the set.
    static constexpr std::size_t size = sizeof...(F);
    /// The bits of class `c` in the set.
    static constexpr std::uint64_t mask([[maybe_unused]] feature_class c) noexcept { return ((F::klass == c ? F::mask : 0) | ... | 0); }
    /// The set as registry rows, in the order given.
    static constexpr std::array<feature_info, sizeof...(F)> infos{
        feature_info{F::klass, F::bit, F::name, F::needs_name_table}...};
    /// The feature name table entries describing the set, in the order given.
    static constexpr std::vector<feature_name_entry> name_table() {
        return {feature_name_entry{F::klass, static_cast<std::uint8_t>(F::bit), std::string(F::name)}...};
    }
};

/// The bits QEMU defines, in the order QEMU writes its feature name table.
using qemu_features = feature_set<features::dirty, features::corrupt, features::external_data_file,
                                  features::compression_type, features::extended_l2, features::lazy_refcounts,
                                  features::bitmaps, features::raw_external_data>;

/// Every bit this library knows: QEMU's and the all-zero bit.
using known_features = feature_set<features::dirty, features::corrupt, features::external_data_file,
                                   features::compression_type, features::extended_l2, features::lazy_refcounts,
                                   features::bitmaps, features::raw_external_data, features::all_zero>;

/// The registry row for a bit, or nullptr when this library does not know the bit.
constexpr const feature_info* find_feature(feature_class c, unsigned bit) noexcept {
    for (const auto& f : known_features::infos)
        if (f.klass == c && f.bit == bit) return &f;
    return nullptr;
}

/// The name an image's own feature name table gives a bit, or empty.
constexpr std::string_view table_name(std::span<const feature_name_entry> table, feature_class c, unsigned bit) noexcept {
    for (const auto& e : table)
        if (e.klass == c && e.bit == bit) return e.name;
    return {};
}

/// Human name for the bits of `mask` (class `c`), from the image's table, then the registry,
/// else "unknown <class> feature bit N"; comma separated.
constexpr std::string describe_features(std::uint64_t mask, feature_class c,
                                        std::span<const feature_name_entry> table = {}) {
    std::string out;
    for (unsigned bit = 0; bit < 64; ++bit) {
        if (!(mask >> bit & 1)) continue;
        if (!out.empty()) out += ", ";
        std::string_view n = table_name(table, c, bit);
        if (n.empty())
            if (const auto* f = find_feature(c, bit)) n = f->name;
        if (!n.empty()) {
            out += "\"";
            out += n;
            out += "\" (bit ";
            out += detail::dec(bit);
            out += ")";
        } else {
            out += c == feature_class::incompatible ? "unknown incompatible feature bit "
                   : c == feature_class::compatible ? "unknown compatible feature bit "
                                                    : "unknown autoclear feature bit ";
            out += detail::dec(bit);
        }
    }
    return out;
}

/**
 * @brief Refuses incompatible bits outside `supported`, naming them.
 * @return `errc::unknown_incompatible_feature` with a message such as
 *         `unsupported incompatible feature(s): "foo" (bit 9)`; names come from the image's
 *         own feature name table when it has one.
 */
constexpr result<void> check_incompatible(std::uint64_t incompatible, std::uint64_t supported,
                                          std::span<const feature_name_entry> table = {}) {
    if (std::uint64_t unknown = incompatible & ~supported)
        return error{errc::unknown_incompatible_feature,
                     "unsupported incompatible feature(s): " +
                         describe_features(unknown, feature_class::incompatible, table)};
    return {};
}

/**
 * @brief The autoclear bits a writer maintaining `Maintained` may leave set.
 *
 * Every other set bit must be cleared (and the header written) before the first
 * modification. A maintained bit that `needs_name_table` survives only when the
 * image's own feature name table names it with the registry's name.
 */
template <class Maintained>
constexpr std::uint64_t autoclear_to_keep(std::uint64_t autoclear, std::span<const feature_name_entry> table) {
    std::uint64_t keep = 0;
    for (const auto& f : Maintained::infos) {
        if (f.klass != feature_class::autoclear || !(autoclear >> f.bit & 1)) continue;
        if (f.needs_name_table && table_name(table, f.klass, f.bit) != f.name) continue;
        keep |= std::uint64_t{1} << f.bit;
    }
    return keep;
}

/// True when a set bit `F` can be believed: it is set and, if the tag requires it, named in the table.
template <feature F>
constexpr bool trusted_bit(std::uint64_t bits_of_class, std::span<const feature_name_entry> table) {
    if (!(bits_of_class & F::mask)) return false;
    return !F::needs_name_table || table_name(table, F::klass, F::bit) == F::name;
}

} // namespace qcow2
