// SPDX-License-Identifier: MIT
/// @file
/// @brief `basic_image`: a qcow2 image over any backend, parameterised by the features it maintains.
///
/// Opening an image reads cluster 0, validates the header against the spec and QEMU's
/// limits, applies the feature-bit rules, and loads the snapshot table and bitmap
/// directory. A read-write open clears, before anything else is written, every autoclear
/// bit the image type does not maintain (and the all-zero bit when the image's feature
/// name table does not name it), exactly as QEMU clears autoclear bits it does not know.
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/format/bitmap.hpp"
#include "qcow2/format/features.hpp"
#include "qcow2/format/header.hpp"
#include "qcow2/format/snapshot.hpp"
#include "qcow2/io/backend.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace qcow2 {

/// The features the library maintains when writing: everything it knows except persistent
/// bitmaps, which it does not yet update on writes (so a read-write open clears the
/// bitmaps bit, marking them inconsistent, as the spec requires of such a writer).
using maintained_features = feature_set<features::dirty, features::corrupt, features::external_data_file,
                                        features::compression_type, features::extended_l2, features::lazy_refcounts,
                                        features::raw_external_data, features::all_zero>;

/// How to open an image.
struct open_options {
    /// Open for writing. A read-write open may rewrite the header at once (autoclear bits).
    bool writable = false;
};

/**
 * @brief A qcow2 image stored in a backend of type `Backend`.
 * @tparam Backend a type satisfying `qcow2::io::backend`; the image owns it.
 * @tparam Features the `feature_set` this image type maintains: incompatible bits outside
 *         it refuse the open, autoclear bits outside it are cleared on read-write open.
 */
template <io::backend Backend, class Features = maintained_features>
class basic_image {
public:
    using backend_type = Backend;
    using features_type = Features;

    /**
     * @brief Opens the image in `file`.
     * @par Errors
     * Everything `decode_header` reports; `unknown_incompatible_feature` naming the bits (from
     * the image's feature name table when present); `image_corrupt` for a read-write open of
     * an image with the corrupt bit; `not_supported` for a read-write open of an image with the
     * dirty bit (refcount repair is not built yet); `invalid_snapshot_table`,
     * `invalid_bitmap_directory`; I/O errors from the backend.
     * @par I/O
     * Reads cluster 0 (at most 2 MiB), the snapshot table and the bitmap directory; a
     * read-write open that must clear autoclear bits writes cluster 0 and flushes.
     */
    static result<basic_image> open(Backend file, open_options opts = {}) {
        basic_image img(std::move(file), opts.writable);
        if (auto r = img.load(); !r) return r.error();
        return img;
    }

    basic_image(basic_image&&) noexcept = default;
    basic_image& operator=(basic_image&&) noexcept = default;

    /// The decoded header.
    const qcow2::header& header() const noexcept { return header_; }
    /// The virtual disk size in bytes.
    std::uint64_t size() const noexcept { return header_.size; }
    /// The cluster size in bytes.
    std::uint64_t cluster_size() const noexcept { return header_.cluster_size(); }
    /// True when opened read-only.
    bool read_only() const noexcept { return !writable_; }
    /// The snapshot table.
    const std::vector<snapshot_entry>& snapshots() const noexcept { return snapshots_; }
    /// The persistent bitmaps (empty when the bitmaps autoclear bit is clear).
    const std::vector<bitmap_entry>& bitmaps() const noexcept { return bitmaps_; }
    /// The backend.
    Backend& backend() noexcept { return file_; }
    const Backend& backend() const noexcept { return file_; }

    /// True when feature `F` is set and trustworthy (named in the image's table when `F` needs it).
    template <feature F>
    bool has() const {
        const std::uint64_t bits = F::klass == feature_class::incompatible ? header_.incompatible_features
                                   : F::klass == feature_class::compatible ? header_.compatible_features
                                                                           : header_.autoclear_features;
        return trusted_bit<F>(bits, names_);
    }

    /// Makes every completed write durable.
    result<void> flush() { return check_io(file_.flush(), "flushing the image file"); }

private:
    basic_image(Backend file, bool writable) : file_(std::move(file)), writable_(writable) {}

    result<void> load() {
        auto file_size = io::size_of(file_);
        if (!file_size) return file_size.error();
        // Learn the cluster size from the fixed fields, then decode all of cluster 0.
        std::vector<std::byte> buf(static_cast<std::size_t>(std::min<std::uint64_t>(*file_size, header_probe_size)));
        if (auto r = io::read_exact(file_, 0, buf, "reading the header"); !r) return r;
        std::uint64_t cs = 0;
        if (buf.size() >= 24) {
            const std::uint32_t bits = detail::load_be32(buf, 20);
            if (bits >= limits::min_cluster_bits && bits <= limits::max_cluster_bits) cs = std::uint64_t{1} << bits;
        }
        if (cs == 0) { // not decodable beyond the probe: let the decoder name the problem
            auto h = decode_header(buf);
            if (!h) return h.error();
            return error{errc::truncated_header, "header could not be read"};
        }
        buf.resize(static_cast<std::size_t>(std::min<std::uint64_t>(*file_size, cs)));
        if (auto r = io::read_exact(file_, 0, buf, "reading cluster 0"); !r) return r;
        auto h = decode_header(buf);
        if (!h) return h.error();
        header_ = std::move(*h);
        names_ = header_.feature_names();

        if (auto r = check_incompatible(header_.incompatible_features, Features::mask(feature_class::incompatible), names_);
            !r)
            return r;
        if (writable_ && (header_.incompatible_features & features::corrupt::mask))
            return error{errc::image_corrupt, "the corrupt bit is set; open read-only or repair the image first"};
        if (writable_ && (header_.incompatible_features & features::dirty::mask))
            return error{errc::not_supported,
                         "the dirty bit is set (lazy refcounts); repairing refcounts on open is not built yet, open read-only"};
        if (auto r = load_snapshots(*file_size); !r) return r;
        if (auto r = load_bitmaps(*file_size); !r) return r;
        if (writable_) {
            const std::uint64_t keep = autoclear_to_keep<Features>(header_.autoclear_features, names_);
            if (keep != header_.autoclear_features) {
                header_.autoclear_features = keep;
                if (auto r = write_header(); !r) return r;
            }
        }
        return {};
    }

    result<void> load_snapshots(std::uint64_t file_size) {
        if (header_.nb_snapshots == 0) return {};
        // Entries are variable length: read each fixed part, then its variable part, never
        // more than QEMU's 64 MiB table limit nor past the end of the file.
        std::vector<std::byte> table;
        std::uint64_t off = 0;
        for (std::uint32_t i = 0; i < header_.nb_snapshots; ++i) {
            const std::uint64_t entry_at = header_.snapshots_offset + off;
            if (off + 40 > limits::max_snapshot_table_bytes || entry_at + 40 > file_size)
                return error{errc::invalid_snapshot_table,
                             detail::cat("snapshot ", detail::dec(i), " at host offset ", detail::hex(entry_at),
                                         " lies past the end of the file or the 64 MiB table limit")};
            table.resize(static_cast<std::size_t>(off + 40));
            if (auto r = io::read_exact(file_, entry_at, std::span(table).subspan(static_cast<std::size_t>(off)),
                                        "reading the snapshot table");
                !r)
                return r;
            const std::uint64_t extra = detail::load_be32(table, off + 36);
            const std::uint64_t var = extra + detail::load_be16(table, off + 12) + detail::load_be16(table, off + 14);
            const std::uint64_t entry_end = (off + 40 + var + 7) & ~std::uint64_t{7};
            if (extra > limits::max_snapshot_extra_data || entry_end > limits::max_snapshot_table_bytes ||
                header_.snapshots_offset + off + 40 + var > file_size)
                return error{errc::invalid_snapshot_table,
                             detail::cat("snapshot ", detail::dec(i), " at host offset ", detail::hex(entry_at),
                                         " has ", detail::dec(extra), " bytes of extra data and ", detail::dec(var),
                                         " variable bytes: too large, or past the end of the file")};
            table.resize(static_cast<std::size_t>(off + 40 + var));
            if (var)
                if (auto r = io::read_exact(file_, entry_at + 40, std::span(table).subspan(static_cast<std::size_t>(off + 40)),
                                            "reading the snapshot table");
                    !r)
                    return r;
            off = entry_end;
        }
        auto s = decode_snapshot_table(table, header_.nb_snapshots, cluster_size());
        if (!s) return s.error();
        snapshots_ = std::move(*s);
        return {};
    }

    result<void> load_bitmaps(std::uint64_t file_size) {
        auto ext = header_.bitmaps();
        // Without the autoclear bit the bitmaps are inconsistent and ignored (as QEMU does).
        if (!ext || !(header_.autoclear_features & features::bitmaps::mask)) return {};
        if (ext->directory_size > limits::max_bitmap_directory_bytes ||
            ext->directory_offset > file_size || ext->directory_size > file_size - ext->directory_offset)
            return error{errc::invalid_bitmap_directory,
                         detail::cat("bitmap directory of ", detail::dec(ext->directory_size), " bytes at ",
                                     detail::hex(ext->directory_offset), " is too large or past the end of the file")};
        std::vector<std::byte> dir(static_cast<std::size_t>(ext->directory_size));
        if (auto r = io::read_exact(file_, ext->directory_offset, dir, "reading the bitmap directory"); !r) return r;
        auto b = decode_bitmap_directory(dir, *ext, cluster_size());
        if (!b) return b.error();
        bitmaps_ = std::move(*b);
        return {};
    }

    /// Rewrites cluster 0 from `header_` and flushes (QEMU rewrites the whole cluster too).
    result<void> write_header() {
        if (!writable_) return error{errc::read_only, "rewriting the header of an image opened read-only"};
        std::vector<std::byte> buf(static_cast<std::size_t>(cluster_size()));
        if (auto r = encode_header(header_, buf); !r) return r;
        if (auto r = check_io(file_.write_at(0, buf), "writing the header"); !r) return r;
        return flush();
    }

    Backend file_;
    bool writable_ = false;
    qcow2::header header_;
    std::vector<feature_name_entry> names_;
    std::vector<snapshot_entry> snapshots_;
    std::vector<bitmap_entry> bitmaps_;
};

} // namespace qcow2
