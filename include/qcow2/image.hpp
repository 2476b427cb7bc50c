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

#include "qcow2/all_zero.hpp"
#include "qcow2/backing.hpp"
#include "qcow2/codec/dispatch.hpp"
#include "qcow2/config.hpp"
#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/format/bitmap.hpp"
#include "qcow2/format/features.hpp"
#include "qcow2/format/header.hpp"
#include "qcow2/format/l2_entry.hpp"
#include "qcow2/format/snapshot.hpp"
#include "qcow2/io/backend.hpp"
#include "qcow2/metadata/refcount_check.hpp"
#include "qcow2/metadata/refcounts.hpp"
#include "qcow2/metadata/table_cache.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qcow2 {

/// The features the library maintains when writing: everything it knows, persistent bitmaps
/// included (guest writes set the bits of the enabled ones, stored at `close`).
using maintained_features = feature_set<features::dirty, features::corrupt, features::external_data_file,
                                        features::compression_type, features::extended_l2, features::lazy_refcounts,
                                        features::bitmaps, features::raw_external_data, features::all_zero>;

/// What an image type that leaves persistent bitmaps alone maintains: a read-write open clears
/// the bitmaps bit (marking them inconsistent, as the spec requires of such a writer).
using maintained_features_without_bitmaps =
    feature_set<features::dirty, features::corrupt, features::external_data_file, features::compression_type, features::extended_l2,
                features::lazy_refcounts, features::raw_external_data, features::all_zero>;

/// How to open an image.
struct open_options {
    /// Open for writing. A read-write open may rewrite the header at once (autoclear bits).
    bool writable = false;
    /// Read only the metadata of this image: do not open backing or data files (guest
    /// reads then fail with `errc::not_supported`). What `info` needs.
    bool metadata_only = false;
    /// Memory for cached L2 tables, per image of the chain, in bytes (at least two tables are kept).
    std::size_t cache_bytes = std::size_t{1} << 20;
    /// Deepest backing chain accepted (the image itself is depth 0).
    std::size_t max_chain_depth = 128;
    /// External data file name, overriding the one recorded in the image (QEMU's data-file option).
    std::optional<std::string> data_file{};
    /// Open for `check` with repair (QEMU's BDRV_O_CHECK): a writable open then accepts an
    /// image with the dirty or corrupt bit, and keeps every autoclear bit (repair rewrites
    /// only refcounts and COPIED flags, which no autoclear feature depends on).
    bool repair = false;
};

/// What `basic_image::write_zeroes` does with host clusters of whole zeroed clusters.
enum class zero_mode {
    keep_allocation, ///< a cluster this image owns alone keeps its host cluster (QEMU's default)
    unmap,           ///< free host clusters (QEMU's BDRV_REQ_MAY_UNMAP, `qemu-io write -z -u`)
};

/// Preallocation modes of `basic_image::create` (qemu-img's `preallocation` option).
enum class preallocation {
    off,      ///< only the header, refcount structures and the L1 table
    metadata, ///< every L2 table, every guest cluster mapped to a host cluster (the file stays sparse)
    falloc,   ///< metadata, and the data clusters reserved in the file (fallocate)
    full,     ///< metadata, and the data clusters written with zeroes
};

/// The options of `basic_image::create`, with qemu-img's defaults (`qemu-img create -f qcow2 -o ...`).
struct create_options {
    std::uint64_t size = 0;                      ///< virtual size in bytes; rounded up to a multiple of 512
    unsigned version = 3;                        ///< 2 (compat=0.10) or 3 (compat=1.1)
    std::uint64_t cluster_size = 65536;          ///< a power of two from 512 to 2 MiB
    unsigned refcount_bits = 16;                 ///< 1, 2, 4, 8, 16, 32 or 64 (version 2: 16)
    bool extended_l2 = false;                    ///< 32 subclusters per cluster (version 3, clusters of 16 KiB or more)
    compression compression_type = compression::zlib; ///< what compressed writes use (zstd: version 3)
    bool lazy_refcounts = false;                 ///< defer refcount ordering, protected by the dirty bit (version 3)
    preallocation prealloc = preallocation::off; ///< with a backing file only together with extended_l2
    std::string backing_file;                    ///< the backing file name as stored (empty: none)
    std::string backing_format;                  ///< its format name, stored in the header (empty: none)
    std::string data_file;                       ///< an external data file name (version 3; empty: none)
    bool data_file_raw = false;                  ///< the data file is kept a valid raw image (no backing file)
};

/// What `basic_image::amend` changes (`qemu-img amend -o ...`); fields left empty stay as they are.
struct amend_options {
    std::optional<unsigned> version;       ///< 2 (compat=0.10) or 3 (compat=1.1)
    std::optional<bool> lazy_refcounts;    ///< version 3 only
    std::optional<unsigned> refcount_bits; ///< 1 to 64, a power of two (version 2: 16)
    std::optional<bool> data_file_raw;     ///< may only be turned off
    std::optional<std::uint64_t> size;     ///< as `resize`
};

/// One run of a guest range in one layer of the chain, as `basic_image::map_range` reports it.
struct mapping {
    /// Guest offset where the run starts.
    std::uint64_t guest_offset = 0;
    /// Length of the run in bytes.
    std::uint64_t length = 0;
    cluster_state state = cluster_state::unallocated; ///< never `invalid` (that is an error)
    bool has_host = false;        ///< a host range backs it (data, preallocated zero, reserved subclusters)
    std::uint64_t host_offset = 0; ///< host offset of `guest_offset` when `has_host`; compressed: the descriptor's byte offset
    std::uint64_t compressed_size = 0; ///< compressed: bytes to read at `host_offset`
};

namespace detail {

/// Gives `h` a feature name table naming every known bit, when it has none and it fits.
inline void add_feature_names(qcow2::header& h) {
    if (h.find_extension(extension_type::feature_names)) return;
    qcow2::header c = h;
    c.set_extension(extension_type::feature_names, encode_feature_names(known_features::name_table()));
    lay_out_header(c);
    if (encoded_header_size(c) <= c.cluster_size()) h = std::move(c);
}

/**
 * Names the all-zero bit in `h`'s feature name table, so that readers trust it: a new
 * table names every known bit, or, where cluster 0 has no room for that (small clusters
 * and a long backing file name), only the all-zero bit; an existing table gets the entry
 * (replacing another name for the bit). False when cluster 0 has no room even for that.
 */
inline bool name_all_zero_bit(qcow2::header& h) {
    using az = features::all_zero;
    std::vector<feature_name_entry> table = h.feature_names();
    if (table_name(table, az::klass, az::bit) == az::name) return true;
    std::erase_if(table, [](const feature_name_entry& e) { return e.klass == az::klass && e.bit == az::bit; });
    table.push_back({az::klass, static_cast<std::uint8_t>(az::bit), std::string(az::name)});
    const bool fresh = h.find_extension(extension_type::feature_names) == nullptr;
    const std::vector<feature_name_entry> candidates[2] = {fresh ? known_features::name_table() : table, {table.back()}};
    for (const auto& t : candidates) {
        qcow2::header c = h;
        c.set_extension(extension_type::feature_names, encode_feature_names(t));
        lay_out_header(c);
        if (encoded_header_size(c) <= c.cluster_size()) {
            h = std::move(c);
            return true;
        }
    }
    return false;
}

/// The header of a new image for `o`, checked as QEMU checks the options.
inline result<qcow2::header> plan_create(const create_options& o) {
    using detail::cat;
    using detail::dec;
    auto bad = [](std::string_view m) { return error{errc::invalid_argument, m}; };
    qcow2::header h;
    if (o.version != 2 && o.version != 3) return bad(cat("compat level ", dec(o.version), " is unknown (2 is 0.10, 3 is 1.1)"));
    h.version = o.version;
    const std::uint64_t cs = o.cluster_size;
    if (cs < 512 || cs > (std::uint64_t{2} << 20) || (cs & (cs - 1)))
        return bad(cat("cluster size ", dec(cs), ": it must be a power of two between 512 and 2048k"));
    h.cluster_bits = static_cast<std::uint32_t>(std::countr_zero(cs));
    const unsigned rb = o.refcount_bits;
    if (rb == 0 || rb > 64 || (rb & (rb - 1))) return bad("refcount width must be a power of two and may not exceed 64 bits");
    if (o.version == 2 && rb != 16)
        return bad("different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)");
    h.refcount_order = static_cast<std::uint32_t>(std::countr_zero(rb));
    if (o.version == 2) {
        if (o.extended_l2) return bad("extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
        if (o.lazy_refcounts) return bad("lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
        if (o.compression_type != compression::zlib)
            return bad("non-zlib compression type is only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
        if (!o.data_file.empty()) return bad("data file can only be used with compatibility level 1.1 and above (use compat=1.1 or greater)");
    }
    if (o.extended_l2 && cs < 16384) return bad("extended L2 entries are only supported with cluster sizes of at least 16 KB");
    if (o.data_file_raw && o.data_file.empty()) return bad("data_file_raw requires a data file (data_file)");
    if (o.data_file_raw && !o.backing_file.empty()) return bad("backing file and data_file_raw cannot be used at the same time");
    if (!o.backing_format.empty() && o.backing_file.empty()) return bad("backing format cannot be used without backing file");
    if (o.prealloc != preallocation::off && !o.backing_file.empty() && !o.extended_l2)
        return bad("backing file and preallocation can only be used at the same time if extended_l2 is on");
    if (o.backing_file.size() > limits::max_backing_name)
        return error{errc::backing_name_too_long, cat("backing file name of ", dec(o.backing_file.size()), " bytes is over 1023")};
    if (o.backing_format.size() > limits::max_backing_format)
        return error{errc::backing_format_too_long, cat("backing format '", o.backing_format, "' is over 15 bytes")};
    if (o.compression_type != compression::zlib && o.compression_type != compression::zstd)
        return bad("unknown compression type");
    h.size = (o.size + 511) & ~std::uint64_t{511};
    if (h.size < o.size) return error{errc::image_too_large, "the virtual size overflows"};
    if (o.version == 3) {
        if (!o.data_file.empty()) h.incompatible_features |= features::external_data_file::mask;
        if (o.compression_type == compression::zstd) {
            h.incompatible_features |= features::compression_type::mask;
            h.compression_type = static_cast<std::uint8_t>(compression::zstd);
        }
        if (o.extended_l2) h.incompatible_features |= features::extended_l2::mask;
        if (o.lazy_refcounts) h.compatible_features |= features::lazy_refcounts::mask;
        if (o.data_file_raw) h.autoclear_features |= features::raw_external_data::mask;
    } else {
        h.header_length = v2_header_length;
        h.refcount_order = 4;
        h.unknown_fields.clear();
    }
    const std::uint64_t l1 = h.min_l1_entries();
    if (l1 * 8 > limits::max_l1_bytes)
        return error{errc::image_too_large, cat("a virtual size of ", dec(h.size), " bytes needs an L1 table of ", dec(l1 * 8),
                                                " bytes, more than 32 MiB (use larger clusters)")};
    h.l1_size = static_cast<std::uint32_t>(l1);
    // QEMU's extension order: backing format, data file name, feature name table.
    if (!o.backing_format.empty()) h.set_extension(extension_type::backing_format, detail::to_bytes(o.backing_format));
    if (!o.data_file.empty()) h.set_extension(extension_type::data_file, detail::to_bytes(o.data_file));
    h.backing_file = o.backing_file;
    lay_out_header(h);
    if (encoded_header_size(h) > cs) return error{errc::backing_name_too_long, "the backing file name does not fit in cluster 0"};
    // Version 3 images without a data file start with the all-zero bit, named in the table.
    if (o.version == 3 && o.data_file.empty() && name_all_zero_bit(h)) h.autoclear_features |= features::all_zero::mask;
    else if (o.version == 3) add_feature_names(h);
    return h; // validated by encode_header, once the layout is known
}

} // namespace detail

// The image holds codec state whose layout depends on QCOW2_HAS_*: keep it in the ABI namespace.
inline namespace QCOW2_ABI_NAMESPACE {

/**
 * @brief A qcow2 image stored in a backend of type `Backend`.
 * @tparam Backend a type satisfying `qcow2::io::backend`; the image owns it.
 * @tparam Features the `feature_set` this image type maintains: incompatible bits outside
 *         it refuse the open, autoclear bits outside it are cleared on read-write open.
 */
template <io::backend Backend, class Features = maintained_features, class Allocator = std::allocator<std::byte>>
class basic_image {
public:
    /// The backend the image owns.
    using backend_type = Backend;
    /// The features this image type maintains.
    using features_type = Features;
    /// The allocator of the L1 table, the caches and the buffers.
    using allocator_type = Allocator;

    /**
     * @brief Opens the image in `file`, and through `resolve` its backing chain and data file.
     * @param file the image file; the image owns it.
     * @param opts how to open it (read-only by default).
     * @param resolve a `file_resolver` for `Backend`; the default refuses every other file, so
     *        an image with a backing or data file opens only with `metadata_only`.
     * @param alloc the allocator of everything the image (and each image of its chain) allocates.
     * @par Errors
     * Everything `decode_header` reports; `unknown_incompatible_feature` naming the bits (from
     * the image's feature name table when present); `image_corrupt` for a read-write open of
     * an image with the corrupt bit (accepted with `open_options::repair`); for a read-write
     * open of an image with the dirty bit, the errors of its repair (`check` with
     * `check_repair::all`, run as QEMU runs it on open, unless `open_options::repair`); `short_read` when the L1 table lies past the
     * end of the file; `invalid_snapshot_table`, `invalid_bitmap_directory`;
     * `backing_file_refused` and the resolver's errors, prefixed with the chain position;
     * `invalid_argument` when the chain is deeper than `max_chain_depth`; I/O errors.
     * @par I/O
     * Reads cluster 0 (at most 2 MiB), the L1 table (at most 32 MiB), the snapshot table and the
     * bitmap directory, then opens each backing image the same way; a read-write open that must
     * clear autoclear bits writes cluster 0 and flushes.
     */
    template <class Resolver = deny_files>
        requires file_resolver<std::remove_cvref_t<Resolver>, Backend>
    static result<basic_image> open(Backend file, const open_options& opts = {}, Resolver&& resolve = {},
                                    const Allocator& alloc = Allocator()) {
        return open_layer(std::move(file), opts, resolve, alloc, 0);
    }

    /// Moves the image (its backend, tables and caches) on.
    basic_image(basic_image&&) noexcept = default;
    /// Closes this image (as the destructor does), then takes `o`'s place.
    basic_image& operator=(basic_image&& o) noexcept {
        if (this != &o) {
            std::destroy_at(this);
            std::construct_at(this, std::move(o));
        }
        return *this;
    }

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
    /// The backend, read-only.
    const Backend& backend() const noexcept { return file_; }

    /// True when feature `F` is set and trustworthy (named in the image's table when `F` needs it).
    template <feature F>
    bool has() const {
        const std::uint64_t bits = F::klass == feature_class::incompatible ? header_.incompatible_features
                                   : F::klass == feature_class::compatible ? header_.compatible_features
                                                                           : header_.autoclear_features;
        return trusted_bit<F>(bits, names_);
    }

    /// The backing image when it is a qcow2 image, else nullptr.
    const basic_image* backing_image() const noexcept { return backing_qcow2_.get(); }
    /// The backing image when it is a qcow2 image, else nullptr.
    basic_image* backing_image() noexcept { return backing_qcow2_.get(); }
    /// The backing file when it is raw, else nullptr.
    const Backend* backing_raw() const noexcept { return backing_raw_ ? &*backing_raw_ : nullptr; }
    /// True when the image has a backing file (opened unless `metadata_only`).
    bool has_backing() const noexcept { return header_.backing_file_offset != 0; }
    /// Virtual size of the backing image (0 without one).
    std::uint64_t backing_size() const noexcept { return backing_size_; }
    /// The external data file, when the image has one and it was opened.
    const Backend* data_file() const noexcept { return data_file_ ? &*data_file_ : nullptr; }
    /// The backend holding guest data clusters: the data file, or the image file itself.
    const Backend& data_backend() const noexcept { return data_file_ ? *data_file_ : file_; }
    /// The L2 cache's counters.
    auto cache_statistics() const noexcept { return l2_cache_->statistics(); }

    /**
     * @brief The first run of equal state at guest `offset`, in this layer only (no backing).
     *
     * The run ends at `offset + max_length`, at the virtual size, at the end of the L2 table,
     * or where the state (or host contiguity) changes; an unallocated L1 entry answers for its
     * whole range at once. A compressed run is always one cluster.
     * @par Errors
     * `invalid_argument` for an offset at or past the virtual size; `misaligned_offset`,
     * `short_read` (an L2 table past the end of the file), `image_corrupt` (an entry the
     * format forbids), naming the L1/L2 index and host offset.
     * @par I/O
     * At most one L2 table read (through the cache).
     */
    result<mapping> map_range(std::uint64_t offset, std::uint64_t max_length) {
        using detail::cat;
        using detail::dec;
        using detail::hex;
        if (offset >= header_.size || max_length == 0)
            return error{errc::invalid_argument, cat("map at guest offset ", dec(offset), " outside the virtual size ",
                                                     dec(header_.size))};
        const std::uint64_t end = offset + std::min(max_length, header_.size - offset);
        const std::uint64_t coverage = header_.l1_entry_coverage();
        const std::uint64_t l1_index = offset / coverage;
        const std::uint64_t table_end = std::min(end, (l1_index + 1) * coverage);
        mapping m;
        m.guest_offset = offset;
        const std::uint64_t l1e = l1_index < l1_.size() ? l1_[l1_index] : 0;
        const std::uint64_t l2_offset = l1e & l2_bits::l1_offset_mask;
        if (l2_offset == 0) {
            m.length = table_end - offset;
            return m;
        }
        auto table = l2_table(l2_offset, l1_index);
        if (!table) return table.error();
        const std::span<const std::byte> t = *table;
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t sc_size = geometry_.subcluster_size();
        const unsigned eb = geometry_.entry_bytes();
        std::uint64_t pos = offset;
        bool first = true;
        while (pos < table_end) {
            const std::uint64_t l2_index = (pos >> cb) & (geometry_.entries_per_table() - 1);
            const std::uint64_t entry = detail::load_be64(t, l2_index * eb);
            const std::uint64_t bitmap = geometry_.extended ? detail::load_be64(t, l2_index * eb + 8) : 0;
            const unsigned sc = geometry_.extended ? static_cast<unsigned>((pos & (header_.cluster_size() - 1)) / sc_size) : 0;
            const subcluster s = classify(geometry_, entry, bitmap, sc);
            if (s.state == cluster_state::invalid)
                return error{errc::image_corrupt, cat("L2 entry ", hex(entry), " at L2 index ", dec(l2_index), " of the table at ",
                                                      hex(l2_offset), " (L1 index ", dec(l1_index), ", guest offset ", dec(pos),
                                                      "): ", s.why)};
            const std::uint64_t unit_start = pos & ~(sc_size - 1);
            const std::uint64_t unit_end = std::min(unit_start + sc_size, table_end);
            const std::uint64_t host = s.has_host ? s.host + (pos - unit_start) : 0;
            if (first) {
                m.state = s.state;
                m.has_host = s.has_host;
                m.host_offset = host;
                if (s.state == cluster_state::compressed) {
                    const auto c = decode_compressed(entry, cb);
                    m.host_offset = c.offset;
                    m.compressed_size = c.size;
                    m.length = std::min(table_end, (pos | (header_.cluster_size() - 1)) + 1) - offset;
                    return m;
                }
                first = false;
            } else if (s.state != m.state || s.has_host != m.has_host ||
                       (s.has_host && host != m.host_offset + (pos - offset))) {
                break;
            }
            pos = unit_end;
        }
        m.length = pos - offset;
        return m;
    }

    /**
     * @brief Reads guest bytes `[offset, offset + out.size())` through the backing chain.
     * @par Errors
     * `invalid_argument` past the virtual size; `unsupported_encryption` for an encrypted image;
     * `not_supported` for an image opened
     * metadata-only that needs its backing or data file; everything `map_range` reports;
     * `unsupported_compression`, `invalid_compressed_data`; I/O errors.
     * @par I/O
     * One backend read per run of contiguous host data; one read and one decompression per
     * compressed cluster (the last one is kept); zero and unallocated runs read nothing here.
     */
    result<void> read(std::uint64_t offset, std::span<std::byte> out) {
        if (out.empty()) return {};
        if (header_.crypt_method != 0)
            return error{errc::unsupported_encryption,
                         detail::cat("guest data of encrypted images (crypt_method ", detail::dec(header_.crypt_method),
                                     ") cannot be read: decryption is not built")};
        if (offset > header_.size || out.size() > header_.size - offset)
            return error{errc::invalid_argument, detail::cat("read of ", detail::dec(out.size()), " bytes at guest offset ",
                                                             detail::dec(offset), " past the virtual size ",
                                                             detail::dec(header_.size))};
        std::uint64_t pos = offset;
        while (pos < offset + out.size()) {
            auto m = map_range(pos, offset + out.size() - pos);
            if (!m) return m.error();
            auto dst = out.subspan(static_cast<std::size_t>(pos - offset), static_cast<std::size_t>(m->length));
            switch (m->state) {
            case cluster_state::data:
                if (auto r = read_host(m->host_offset, dst); !r) return r;
                break;
            case cluster_state::zero: std::memset(dst.data(), 0, dst.size()); break;
            case cluster_state::unallocated:
                if (auto r = read_backing(pos, dst); !r) return r;
                break;
            case cluster_state::compressed:
                if (auto r = read_compressed(*m, pos, dst); !r) return r;
                break;
            case cluster_state::invalid: break; // map_range never returns it
            }
            pos += m->length;
        }
        return {};
    }

    /**
     * @brief Creates a new image in `file` and opens it for writing.
     *
     * `file` is truncated first. The layout is QEMU's: the header in cluster 0, the
     * refcount table from cluster 1, the refcount blocks, then the L1 table; with
     * preallocation, every L2 table and then the data clusters in guest order. A version 3
     * image gets a feature name table (when it fits in cluster 0 with the backing file name:
     * every known bit, else only the all-zero bit) and the all-zero bit, unless it has an
     * external data file. The backing file and the data file are opened through `resolve`
     * (the data file with write access: it is truncated and, with preallocation, sized).
     * @return the image, wrapped in the proof that it reads as zero (see `zeroed`).
     * @par Errors
     * `invalid_argument` for options QEMU refuses (the message names the option); `image_too_large`
     * when the L1 table would exceed 32 MiB; the resolver's errors; I/O errors; then those of `open`.
     * @par I/O
     * Writes the metadata in a few large sequential writes (with preallocation: every L2
     * table and refcount block), flushes, then opens the image.
     */
    template <class Resolver = deny_files>
        requires file_resolver<std::remove_cvref_t<Resolver>, Backend>
    static result<zeroed<basic_image>> create(Backend file, const create_options& o, Resolver&& resolve = {},
                                              open_options opts = {}, const Allocator& alloc = Allocator()) {
        auto h = detail::plan_create(o);
        if (!h) return h.error();
        std::optional<Backend> data;
        if (!o.data_file.empty()) {
            result<Backend> f = resolve(file_request{o.data_file, file_role::data_file, 0, true});
            if (!f) return error(f.error().code(), detail::cat("opening the data file '", o.data_file, "': ", f.error().message()));
            data.emplace(std::move(*f));
        }
        if (auto r = write_new_image(file, data ? &*data : nullptr, *h, o, alloc); !r) return r.error();
        data.reset();
        opts.writable = true;
        opts.repair = false;
        auto img = open(std::move(file), opts, resolve, alloc);
        if (!img) return img.error();
        return zeroed<basic_image>(std::move(*img));
    }

    /// @name Guest writes
    /// Every write needs an image opened with `open_options::writable`, whose corrupt bit is
    /// clear, that is not encrypted, and a range inside the virtual size; otherwise it fails
    /// with `read_only`, `image_corrupt`, `unsupported_encryption` or `invalid_argument` and
    /// changes nothing. Metadata changes are kept in the caches and written by `flush` (or
    /// when the caches fill) in an order that keeps the image consistent at every step:
    /// refcount increases, flush, L2 tables, flush, L1 entries, flush, refcount decreases.
    /// A crash between flushes may leak clusters but never leaves a cluster referenced
    /// with a refcount below its references. Every write is checked against the image's
    /// metadata first (QEMU's overlap check): a hit marks the image corrupt and fails with
    /// `metadata_overlap` instead of overwriting it. After a metadata write fails, the image
    /// refuses every further modification with the first error (its state in memory may be
    /// ahead of the file); reopen it.
    /// @{

    /**
     * @brief Writes `data` at guest `offset` (any byte offset and length).
     *
     * Clusters whose L2 entry says COPIED are written in place; every other cluster
     * (unallocated, zero, compressed, shared with a snapshot) gets a new host cluster, filled
     * around the new bytes with what the cluster read before (from this image or the backing
     * chain): whole clusters, or with extended L2 entries only the subclusters written, plus
     * those that held data. The all-zero bit is cleared (header written and flushed) first.
     * @par I/O
     * One write per run of contiguous host clusters; partial clusters are read and written
     * whole; allocation reads refcount blocks through their cache.
     */
    result<void> write(std::uint64_t offset, std::span<const std::byte> data) {
        if (auto r = check_modify(offset, data.size()); !r || data.empty()) return r;
        if (auto r = prepare_modify(true); !r) return r;
        if (auto r = begin_guest_change(offset, data.size()); !r) return r;
        return guarded(write_guest(offset, data));
    }

    /**
     * @brief Makes `[offset, offset + length)` read as zeroes.
     *
     * Whole clusters become zero clusters (version 3) or zero subclusters (extended L2);
     * with `zero_mode::keep_allocation` a cluster this image owns alone keeps its host cluster
     * (preallocated zero), otherwise host clusters are freed. Parts of clusters that do not
     * already read as zero are written with zeroes. A version 2 image (no zero clusters)
     * frees clusters when there is no backing file and writes zeroes otherwise. Keeps the
     * all-zero bit. With a raw external data file the data file gets the zeroes too.
     */
    result<void> write_zeroes(std::uint64_t offset, std::uint64_t length, zero_mode mode = zero_mode::keep_allocation) {
        if (auto r = check_modify(offset, length); !r || length == 0) return r;
        if (auto r = prepare_modify(false); !r) return r;
        if (auto r = begin_guest_change(offset, length); !r) return r;
        return guarded(zero_range(offset, offset + length, mode == zero_mode::unmap ? op::zero_unmap : op::zero_keep));
    }

    /**
     * @brief Discards the whole clusters inside `[offset, offset + length)` and frees their
     *        host clusters, as QEMU does (parts of clusters are left alone; the last cluster of
     *        a disk whose size is not a multiple of the cluster size counts as whole when the
     *        range reaches the end of the disk).
     *
     * A discarded cluster reads as zero. A version 2 image with a backing file has no way to
     * say that (no zero clusters: a freed cluster would show the backing file's data), so
     * there a discard does nothing, as in QEMU. Freed host clusters are punched out of the
     * file when the backend can discard. Keeps the all-zero bit.
     */
    result<void> discard(std::uint64_t offset, std::uint64_t length) {
        if (auto r = check_modify(offset, length); !r || length == 0) return r;
        if (header_.version == 2 && has_backing()) return {};
        if (auto r = prepare_modify(false); !r) return r;
        if (auto r = begin_guest_change(offset, length); !r) return r;
        return guarded(zero_range(offset, offset + length, op::discard));
    }

    /**
     * @brief Writes one compressed cluster at cluster-aligned guest `offset`.
     *
     * `data` is one cluster, or the rest of the disk for its last cluster (padded with
     * zeroes). Data that does not shrink is written as a plain cluster. zlib streams use
     * window bits -12 so that QEMU reads them. Compressed clusters are packed one after
     * another at byte granularity, as QEMU packs them.
     * @par Errors
     * Also `not_supported` for an image with an external data file, `unsupported_compression`
     * when the image's codec is not compiled in, `misaligned_offset`, `invalid_argument` for
     * a length other than one cluster (or the rest of the disk).
     */
    result<void> write_compressed(std::uint64_t offset, std::span<const std::byte> data) {
        if (auto r = check_modify(offset, data.size()); !r) return r;
        auto n = compress_cluster(offset, data); // refuses bad arguments before anything changes
        if (!n) return n.error();
        if (auto r = prepare_modify(true); !r) return r;
        if (auto r = begin_guest_change(offset, data.size()); !r) return r;
        if (*n == 0) return guarded(write_guest(offset, data)); // does not shrink: stored plain, as QEMU does
        return guarded(store_compressed(offset, *n));
    }

    /**
     * @brief Stores a cluster compressed elsewhere (by a `codec::cluster_compressor` of this
     *        image's `compression_type`, given the cluster zero-padded to the cluster size
     *        and `cluster_size() - 1` bytes of output) at cluster-aligned guest `offset`.
     *
     * What `write_compressed` does after compressing: so that a program can compress
     * clusters on several threads and store them in order on one. The stream is stored as
     * given; one that does not decompress to the cluster makes the cluster unreadable.
     * @par Errors
     * As `write_compressed`; `invalid_argument` for an empty stream or one of a cluster or more.
     */
    result<void> write_precompressed(std::uint64_t offset, std::span<const std::byte> stream) {
        using detail::cat;
        using detail::dec;
        if (auto r = check_modify(offset, 0); !r) return r;
        const std::uint64_t cs = cluster_size();
        if (geometry_.external_data) return error{errc::not_supported, "images with an external data file cannot hold compressed clusters"};
        if (offset & (cs - 1) || offset >= header_.size)
            return error{errc::misaligned_offset, cat("compressed write at guest offset ", dec(offset), " is not a cluster of the disk")};
        if (stream.empty() || stream.size() >= cs)
            return error{errc::invalid_argument, cat("a compressed stream of ", dec(stream.size()), " bytes for a cluster of ", dec(cs))};
        w_->cbuf.resize(static_cast<std::size_t>(cs + 512));
        std::memcpy(w_->cbuf.data(), stream.data(), stream.size());
        if (auto r = prepare_modify(true); !r) return r;
        if (auto r = begin_guest_change(offset, std::min(cs, header_.size - offset)); !r) return r;
        return guarded(store_compressed(offset, stream.size()));
    }

    /**
     * @brief Changes the virtual size (a multiple of 512).
     *
     * Growing may move the L1 table (the new table is written and flushed before the header
     * points at it); the new range reads as zero (zero clusters hide a longer backing file,
     * and the rest of a partial last cluster is zeroed). Shrinking frees every cluster past
     * the new size and truncates the file after the last cluster in use (the clusters
     * internal snapshots share stay theirs). Keeps the all-zero bit. The new size is durable
     * when the call returns. An external data file is resized with the disk. Persistent
     * bitmaps follow, as QEMU truncates them: new granules clean, those past the new end gone
     * (marked in use across the change, then stored at the new size).
     * @par Errors
     * `invalid_argument` for a size that is not a multiple of 512, or an inconsistent (in
     * use) bitmap, as QEMU refuses it; `image_too_large` when the
     * L1 table would exceed 32 MiB; `not_supported` for a version 2 image with internal
     * snapshots (QEMU refuses to resize those).
     */
    result<void> resize(std::uint64_t new_size) {
        using detail::cat;
        using detail::dec;
        if (auto r = check_modify(0, 0); !r) return r;
        if (new_size % 512) return error{errc::invalid_argument, cat("the new size ", dec(new_size), " is not a multiple of 512")};
        if (header_.version == 2 && !snapshots_.empty())
            return error{errc::not_supported, "a version 2 image with internal snapshots cannot be resized"};
        const std::uint64_t need = detail::div_round_up(new_size, header_.l1_entry_coverage());
        if (need * 8 > limits::max_l1_bytes)
            return error{errc::image_too_large, cat("a virtual size of ", dec(new_size), " bytes needs an L1 table of ", dec(need * 8),
                                                    " bytes, more than 32 MiB")};
        if (new_size == header_.size) return {};
        if (auto r = check_bitmaps_resizable(new_size); !r) return r;
        if (auto r = prepare_modify(false); !r) return r;
        return guarded(resize_with_bitmaps(new_size));
    }

    /**
     * @brief Writes every change kept in the caches, in the consistent order, and makes all
     *        completed writes durable (the image file and the data file).
     * @par I/O
     * Up to three flushes between the metadata writes, then one per file.
     */
    result<void> flush() {
        if (w_) {
            if (w_->failed) return *w_->failed;
            if (auto r = guarded(commit(true)); !r) return r;
        }
        // A failed flush may have dropped what it was to make durable (Linux forgets the
        // dirty pages): later calls must not report success over it, so it poisons the writer.
        if (data_file_ && writable_)
            if (auto r = check_io(data_file_->flush(), "flushing the data file"); !r) return poison(r);
        if (auto r = check_io(file_.flush(), "flushing the image file"); !r) return poison(r);
        if (w_) w_->unflushed_data = false;
        return {};
    }

    /**
     * @brief Flushes, and clears the dirty bit set for lazy refcounts. The image stays
     *        usable (a later write sets the dirty bit again). The destructor calls it for
     *        an image opened for writing, ignoring errors: call it to see them.
     */
    result<void> close() {
        if (!writable_) return {};
        if (w_ && !w_->failed)
            if (auto r = guarded(store_tracked()); !r) return r;
        if (auto r = flush(); !r) return r;
        if (w_ && w_->marked_dirty) {
            if (auto r = clear_incompatible_bits(features::dirty::mask); !r) return r;
            w_->marked_dirty = false;
        }
        return {};
    }

    /// Closes the image (`close()`, ignoring its errors) when it was opened for writing.
    ~basic_image() {
        if (w_) (void)close();
    }
    /// @}

    /**
     * @brief Empties the image: every cluster becomes unallocated (so the image defers to
     *        its backing file, or reads zero without one), its host clusters and L2 tables are
     *        freed and the file is truncated after the last cluster in use; then the
     *        all-zero bit is set (version 3, no external data file), after the emptying is
     *        durable. `qcow2::make_empty` wraps the result in the proof.
     * @par Errors
     * Those of the guest writes (`read_only`, `image_corrupt`, ...); I/O errors.
     */
    result<void> make_empty() {
        if (auto r = check_modify(0, 0); !r) return r;
        if (auto r = prepare_modify(false); !r) return r;
        if (auto r = begin_guest_change(0, header_.size); !r) return r;
        return guarded(make_empty_impl());
    }

    /**
     * @brief Changes what `qemu-img amend` changes, in QEMU's order: the version up, the
     *        refcount width, the raw data file flag, lazy refcounts, the size, the version down.
     *
     * - Version 3 to 2 needs what version 2 can hold: 16-bit refcounts, no external data file,
     *   extended L2 entries, zstd, bitmaps or internal snapshots (snapshots: not built); zero
     *   clusters are expanded (written with zeroes where a backing file would show through,
     *   else made unallocated), and the compatible and autoclear bits and unknown header
     *   fields go (version 2 has no room for them).
     * - The refcount width is changed by writing a new refcount structure of the new width
     *   (refused when a refcount would not fit), then switching the header to it.
     * - `data_file_raw` can be turned off only, as in QEMU.
     * @par Errors
     * `invalid_argument` for values QEMU refuses; `not_supported` as above; those of the writes.
     */
    result<void> amend(const amend_options& o) {
        using detail::cat;
        using detail::dec;
        if (auto r = check_modify(0, 0); !r) return r;
        const unsigned target = o.version.value_or(header_.version);
        if (target != 2 && target != 3) return error{errc::invalid_argument, cat("compat level ", dec(target), " is unknown")};
        if (o.refcount_bits) {
            const unsigned b = *o.refcount_bits;
            if (b == 0 || b > 64 || (b & (b - 1))) return error{errc::invalid_argument, "refcount width must be a power of two and may not exceed 64 bits"};
            if (target == 2 && b != 16)
                return error{errc::invalid_argument, "refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)"};
        }
        if (o.lazy_refcounts && *o.lazy_refcounts && target == 2)
            return error{errc::invalid_argument, "lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)"};
        if (o.data_file_raw && *o.data_file_raw && !data_file_raw())
            return error{errc::invalid_argument, "data-file-raw cannot be set on existing images"};
        if (target == 2 && header_.version == 3) {
            if ((o.refcount_bits ? *o.refcount_bits : header_.refcount_bits()) != 16)
                return error{errc::invalid_argument, "compat=0.10 requires refcount_bits=16"};
            if (geometry_.external_data) return error{errc::not_supported, "cannot downgrade an image with a data file"};
            if (geometry_.extended) return error{errc::not_supported, "cannot downgrade an image with extended L2 entries"};
            if (header_.compression_kind() != compression::zlib)
                return error{errc::not_supported, "cannot downgrade an image with a compression type other than zlib"};
            if (header_.bitmaps()) return error{errc::not_supported, "cannot downgrade an image with bitmaps"};
            if (!snapshots_.empty()) return error{errc::not_supported, "downgrading an image with internal snapshots is not built"};
        }
        if (o.size && *o.size != header_.size)
            if (auto r = check_bitmaps_resizable(*o.size); !r) return r;
        if (auto r = prepare_modify(false); !r) return r;
        return guarded(amend_impl(o, target));
    }

    /**
     * @brief Changes the backing file the header names (what `qemu-img rebase -u` does): the
     *        name as stored, and its format (empty: no backing format extension). An empty
     *        name removes the backing file. Nothing else changes: reads of unallocated
     *        clusters go to the new file once the image is opened again.
     * @par Errors
     * `read_only`; `not_supported` with a raw external data file (QEMU forbids a backing
     * file there); `backing_name_too_long` or `backing_format_too_long`; `invalid_argument`
     * when cluster 0 has no room for the name; I/O errors (the header in memory is kept).
     */
    result<void> set_backing_file(std::string_view name, std::string_view format = {}) {
        if (!writable_) return error{errc::read_only, "rewriting the header of an image opened read-only"};
        if (!name.empty() && data_file_raw()) return error{errc::not_supported, "an image with a raw external data file cannot have a backing file"};
        if (name.size() > limits::max_backing_name)
            return error{errc::backing_name_too_long, detail::cat("backing file name of ", detail::dec(name.size()), " bytes is over 1023")};
        if (format.size() > limits::max_backing_format)
            return error{errc::backing_format_too_long, detail::cat("backing format '", format, "' is over 15 bytes")};
        if (auto r = flush(); !r) return r;
        qcow2::header h = header_;
        h.backing_file = std::string(name);
        if (format.empty() || name.empty()) h.remove_extension(extension_type::backing_format);
        else h.set_extension(extension_type::backing_format, detail::to_bytes(format));
        lay_out_header(h);
        if (encoded_header_size(h) > cluster_size())
            return error{errc::invalid_argument, "the backing file name does not fit in cluster 0"};
        const qcow2::header old = std::move(header_);
        header_ = std::move(h);
        if (auto r = write_header(); !r) {
            header_ = old;
            return r;
        }
        return {};
    }

    /// @name Internal snapshots
    /// Snapshots of the guest disk kept inside the image, as `qemu-img snapshot` keeps them
    /// (disk only: no VM state). They need a writable image without an external data file.
    /// @{

    /**
     * @brief Creates a snapshot of the disk as it is now (QEMU's `qcow2_snapshot_create`).
     *
     * Every cluster the active tables reference gains a reference (so later writes copy
     * them), a copy of the L1 table is written, and a new snapshot table that lists the
     * snapshot replaces the old one (the header switches to it in one 12-byte write between
     * flushes). A crash before the switch leaves only leaked references.
     * @param name the snapshot's name (names may repeat, as in QEMU; ids may not).
     * @param id its id; empty: one more than the largest numeric id, as QEMU numbers them.
     * @param date_sec, date_nsec the time it is taken (what `qemu-img snapshot -l` shows).
     * @par Errors
     * `invalid_argument` for an id taken, or more than 65536 snapshots;
     * `not_supported` with an external data file; `refcount_overflow` when a cluster's
     * refcount would pass the width's maximum (1-bit refcounts hold no snapshot); I/O errors.
     */
    result<void> create_snapshot(std::string_view name, std::string_view id = {}, std::uint32_t date_sec = 0,
                                 std::uint32_t date_nsec = 0) {
        if (auto r = check_modify(0, 0); !r) return r;
        if (auto r = check_snapshot_create(name, id); !r) return r;
        if (auto r = prepare_modify(false); !r) return r;
        return guarded(create_snapshot_impl(name, id, date_sec, date_nsec));
    }

    /**
     * @brief Makes the disk what it was when snapshot `id_or_name` was taken (QEMU's
     *        `qcow2_snapshot_goto`; ids are tried before names), the virtual size included.
     *
     * The snapshot's clusters gain a reference, its L1 table is copied over the active one,
     * the clusters the old active tables referenced lose one, and the COPIED flags are
     * recomputed. Clears the all-zero bit first.
     * @par Errors
     * `invalid_argument` for an unknown snapshot; those of `create_snapshot`.
     */
    result<void> apply_snapshot(std::string_view id_or_name) {
        if (auto r = check_modify(0, 0); !r) return r;
        const auto i = find_snapshot(id_or_name);
        if (!i) return i.error();
        if (const auto size = snapshots_[*i].disk_size(); size && *size != header_.size && !bitmaps_.empty())
            return error{errc::not_supported, "applying a snapshot of another disk size to an image with persistent bitmaps is not built"};
        if (auto r = prepare_modify(true); !r) return r;
        if (auto r = begin_guest_change(0, header_.size); !r) return r;
        return guarded(apply_snapshot_impl(*i));
    }

    /**
     * @brief Deletes snapshot `id_or_name` (QEMU's `qcow2_snapshot_delete`; ids are tried
     *        before names): the table without it replaces the old one, then its clusters lose
     *        their reference (freed when no longer used) and the COPIED flags are recomputed.
     * @par Errors
     * `invalid_argument` for an unknown snapshot; I/O errors.
     */
    result<void> delete_snapshot(std::string_view id_or_name) {
        if (auto r = check_modify(0, 0); !r) return r;
        const auto i = find_snapshot(id_or_name);
        if (!i) return i.error();
        if (auto r = prepare_modify(false); !r) return r;
        return guarded(delete_snapshot_impl(*i));
    }
    /// @}

    /// @name Persistent dirty bitmaps
    /// The bitmaps `qemu-img bitmap` manages. Each operation writes the new structures, makes
    /// them durable, then switches the header's bitmaps extension to a new directory (cluster 0
    /// rewritten and flushed), then frees what the old directory used: a crash leaves at worst
    /// leaked clusters. They need an image type that maintains the bitmaps autoclear bit
    /// (`Features` holds `features::bitmaps`); others cleared the bit when they opened the image.
    /// While the image is open for writing, guest writes (write, write_zeroes, discard, the
    /// compressed writes) set the bits of every enabled bitmap in memory: the first one marks
    /// those bitmaps in use on disk, and `close` stores them and clears the mark (as QEMU does).
    /// @{

    /**
     * @brief The bits of bitmap `name` (what guest writes set since it was added or cleared),
     *        including those set by this image's writes not yet stored.
     * @par Errors
     * `invalid_argument` for an unknown bitmap; `invalid_bitmap_directory` for one in use
     * (inconsistent: not saved by the last writer) or whose table is damaged; `no_memory`
     * when the bits would pass 512 MiB; I/O errors.
     */
    result<bitmap_bits> read_bitmap(std::string_view name) {
        auto i = find_bitmap(name);
        if (!i) return i.error();
        for (const auto& t : tracked_)
            if (t.name == name) return t.bits;
        if (bitmaps_[*i].flags & bitmap_flags::in_use)
            return error{errc::invalid_bitmap_directory, detail::cat("Bitmap '", name, "' is inconsistent and cannot be used")};
        return load_bitmap_bits(bitmaps_[*i]);
    }

    /**
     * @brief Adds an empty bitmap (`qemu-img bitmap --add [-g granularity] [--disable]`).
     * @param name the new bitmap's name (unique in the image, at most 1023 bytes).
     * @param granularity bytes of guest disk one bit covers; 0: QEMU's default, the cluster
     *        size within 4 KiB to 64 KiB.
     * @param enabled QEMU's "auto" flag: guest writes set its bits.
     * @par Errors
     * `invalid_argument` with qemu-img's words for an empty or taken name, a name over 1023
     * bytes, a granularity that is not a power of two from 512 to 2^31, a table QEMU would
     * refuse, 65535 bitmaps already, or a directory over its limit; `not_supported` for a
     * version 2 image or an image type that does not maintain bitmaps; I/O errors.
     */
    result<void> add_bitmap(std::string_view name, std::uint64_t granularity = 0, bool enabled = true) {
        using detail::cat;
        if (auto r = check_bitmap_modify(); !r) return r;
        if (granularity == 0) granularity = std::clamp<std::uint64_t>(cluster_size(), 4096, 65536);
        if (name.empty()) return error{errc::invalid_argument, "Bitmap name cannot be empty"};
        if (granularity < 512 || (granularity & (granularity - 1)))
            return error{errc::invalid_argument, "Granularity must be power of 2 and at least 512"};
        if (granularity > (std::uint64_t{1} << 31)) return error{errc::invalid_argument, "Granularity exceeds maximum (2147483648 bytes)"};
        for (const auto& b : bitmaps_)
            if (b.name == name) return error{errc::invalid_argument, cat("Bitmap already exists: ", name)};
        if (header_.version < 3) return error{errc::not_supported, cat("Can't make bitmap '", name, "' persistent: Cannot store dirty bitmaps in qcow2 v2 files")};
        if (name.size() > limits::max_bitmap_name)
            return error{errc::invalid_argument, cat("Can't make bitmap '", name, "' persistent: Name length exceeds maximum (1023 characters)")};
        bitmap_entry e;
        e.granularity_bits = static_cast<std::uint8_t>(std::countr_zero(granularity));
        e.name = std::string(name);
        e.flags = enabled ? bitmap_flags::auto_ : 0;
        const std::uint64_t entries = bitmap_table_entries(header_.size, e.granularity_bits, cluster_size());
        if (entries > max_bitmap_table_entries || entries * cluster_size() > max_bitmap_data_bytes)
            return error{errc::invalid_argument,
                         cat("Can't make bitmap '", name, "' persistent: Too much space will be occupied by the bitmap. Use larger granularity")};
        if (bitmaps_.size() >= limits::max_bitmaps)
            return error{errc::invalid_argument, cat("Can't make bitmap '", name, "' persistent: Maximum number of persistent bitmaps is already reached")};
        std::uint64_t dir = bitmap_entry_size(e);
        for (const auto& b : bitmaps_) dir += bitmap_entry_size(b);
        if (dir > limits::max_bitmap_directory_bytes)
            return error{errc::invalid_argument, cat("Can't make bitmap '", name, "' persistent: Not enough space in the bitmap directory")};
        if (auto r = prepare_modify(false); !r) return r;
        return guarded(add_bitmap_impl(std::move(e)));
    }

    /**
     * @brief Removes bitmap `name` and frees its clusters (`qemu-img bitmap --remove`); an
     *        inconsistent (in use) bitmap may be removed too. The last one takes the bitmaps
     *        extension and the autoclear bit with it, as in QEMU.
     * @par Errors
     * `invalid_argument` for an unknown bitmap; those of `add_bitmap`'s writes.
     */
    result<void> remove_bitmap(std::string_view name) {
        if (auto r = check_bitmap_modify(); !r) return r;
        auto i = find_bitmap(name);
        if (!i) return i.error();
        if (auto r = prepare_modify(false); !r) return r;
        return guarded(remove_bitmap_impl(name));
    }

    /**
     * @brief Clears every bit of bitmap `name` (`qemu-img bitmap --clear`).
     * @par Errors
     * `invalid_argument` for an unknown or inconsistent bitmap; I/O errors.
     */
    result<void> clear_bitmap(std::string_view name) {
        if (auto r = usable_bitmap(name); !r) return r.error();
        if (auto r = prepare_modify(false); !r) return r;
        return guarded(clear_bitmap_impl(name));
    }

    /**
     * @brief Enables (`qemu-img bitmap --enable`) or disables (`--disable`) bitmap `name`:
     *        whether guest writes set its bits (the "auto" flag).
     * @par Errors
     * `invalid_argument` for an unknown or inconsistent bitmap; I/O errors.
     */
    result<void> enable_bitmap(std::string_view name, bool enabled = true) {
        if (auto r = usable_bitmap(name); !r) return r.error();
        if (auto r = prepare_modify(false); !r) return r;
        return guarded(enable_bitmap_impl(name, enabled));
    }

    /**
     * @brief Sets in bitmap `name` every granule `source` marks (`qemu-img bitmap --merge`);
     *        `source` comes from `read_bitmap` of this or another image, of any granularity.
     * @par Errors
     * `invalid_argument` for an unknown or inconsistent bitmap, or a source of another disk size; I/O errors.
     */
    result<void> merge_bitmap(std::string_view name, const bitmap_bits& source) {
        auto i = usable_bitmap(name);
        if (!i) return i.error();
        if (source.disk_size != header_.size || source.granularity == 0 ||
            source.bytes.size() != bitmap_data_bytes(source.disk_size, static_cast<unsigned>(std::countr_zero(source.granularity))))
            return error{errc::invalid_argument, detail::cat("Bitmaps are of different sizes (destination size is ", detail::dec(header_.size),
                                                             ", source size is ", detail::dec(source.disk_size), ") and can't be merged")};
        if (auto r = prepare_modify(false); !r) return r;
        return guarded(merge_bitmap_impl(name, source));
    }
    /// @}

    /**
     * @brief Clears the autoclear bits in `mask` (a repair found the all-zero bit wrong):
     *        rewrites the header and flushes. No-op when none is set.
     * @par Errors
     * `read_only`; I/O errors (the header in memory is restored).
     */
    result<void> clear_autoclear_bits(std::uint64_t mask) {
        if (!writable_) return error{errc::read_only, "rewriting the header of an image opened read-only"};
        if (!(header_.autoclear_features & mask)) return {};
        const std::uint64_t old = header_.autoclear_features;
        header_.autoclear_features &= ~mask;
        auto r = write_header();
        if (!r) header_.autoclear_features = old;
        return r;
    }


    /// @name Metadata rewrites used by `check` with repair
    /// Each needs a writable image, writes through to the file at once and keeps the image's
    /// in-memory state (header, L1 table, L2 cache, file size) equal to the file.
    /// @{

    /**
     * @brief Sets active L1 entry `index` to `value`: writes its 8 bytes, then updates the L1 table in memory.
     * @par Errors
     * `read_only`; `invalid_argument` for an index past the L1 table; I/O errors (memory then unchanged).
     * @par I/O
     * One 8-byte write (no flush).
     */
    result<void> write_l1_entry(std::size_t index, std::uint64_t value) {
        if (!writable_) return error{errc::read_only, "writing an L1 entry of an image opened read-only"};
        if (auto r = retire_writer(); !r) return r;
        if (index >= l1_.size())
            return error{errc::invalid_argument, detail::cat("L1 index ", detail::dec(index), " past the L1 table of ",
                                                             detail::dec(l1_.size()), " entries")};
        std::byte b[8];
        detail::store_be64(b, 0, value);
        if (auto r = check_io(file_.write_at(header_.l1_table_offset + index * 8, b), "writing an L1 entry"); !r) return r;
        l1_[index] = value;
        return {};
    }

    /**
     * @brief Writes the L2 table `table` (one cluster) at host `offset` and drops any cached copy of it.
     * @par Errors
     * `read_only`; `invalid_argument` when `table` is not one cluster or `offset` is not cluster
     * aligned; I/O errors (the cached copy is dropped whatever the outcome).
     * @par I/O
     * One cluster write (no flush).
     */
    result<void> write_l2_table(std::uint64_t offset, std::span<const std::byte> table) {
        if (!writable_) return error{errc::read_only, "writing an L2 table of an image opened read-only"};
        if (auto r = retire_writer(); !r) return r;
        if (table.size() != cluster_size() || !detail::is_aligned(offset, cluster_size()))
            return error{errc::invalid_argument, detail::cat("L2 table write of ", detail::dec(table.size()), " bytes at ",
                                                             detail::hex(offset), ": not one aligned cluster")};
        if (l2_cache_) l2_cache_->invalidate(offset);
        return check_io(file_.write_at(offset, table), "writing an L2 table");
    }

    /**
     * @brief Points the header at a new refcount table: flushes, writes the 12 bytes of
     *        refcount_table_offset and refcount_table_clusters in one write, flushes. With
     *        `order` different from the header's, the new structure has that refcount width
     *        and the whole header is rewritten instead.
     *
     * The new table and its blocks must already be written. Also refreshes the file size the
     * image checks metadata against (the new structures may have grown the file).
     * @par Errors
     * `read_only`; `misaligned_offset`; I/O errors (the header in memory is updated only on success).
     * @par I/O
     * Two flushes around one 12-byte write at byte 48.
     */
    result<void> replace_refcount_table(std::uint64_t offset, std::uint32_t clusters, std::optional<unsigned> order = std::nullopt) {
        if (!writable_) return error{errc::read_only, "replacing the refcount table of an image opened read-only"};
        if (auto r = retire_writer(); !r) return r;
        if (!detail::is_aligned(offset, cluster_size()))
            return error{errc::misaligned_offset, detail::cat("refcount table offset ", detail::hex(offset), " is not cluster aligned")};
        if (auto r = flush(); !r) return r;
        if (order && *order != header_.refcount_order) {
            // A new width too: the fields (48..59 and 96..99) change in one write of the header,
            // whose first sector holds them all.
            qcow2::header h = header_;
            h.refcount_table_offset = offset;
            h.refcount_table_clusters = clusters;
            h.refcount_order = *order;
            if (auto r = swap_header(std::move(h)); !r) return r;
            auto n = io::size_of(file_);
            if (!n) return n.error();
            file_size_ = *n;
            return {};
        }
        std::byte b[12];
        detail::store_be64(b, 0, offset);
        detail::store_be32(b, 8, clusters);
        if (auto r = check_io(file_.write_at(48, b), "writing the refcount table fields of the header"); !r) return r;
        if (auto r = flush(); !r) return r;
        header_.refcount_table_offset = offset;
        header_.refcount_table_clusters = clusters;
        auto n = io::size_of(file_);
        if (!n) return n.error();
        file_size_ = *n;
        return {};
    }

    /**
     * @brief Clears the incompatible feature bits in `mask` (the dirty and corrupt bits after a
     *        successful repair): flushes, then rewrites the header and flushes. No-op when none is set.
     * @par Errors
     * `read_only`; `invalid_argument` when `mask` has bits other than dirty and corrupt; I/O errors.
     * @par I/O
     * A flush, one write of cluster 0, a flush.
     */
    result<void> clear_incompatible_bits(std::uint64_t mask) {
        if (!writable_) return error{errc::read_only, "rewriting the header of an image opened read-only"};
        if (mask & ~(features::dirty::mask | features::corrupt::mask))
            return error{errc::invalid_argument, "only the dirty and corrupt bits can be cleared"};
        if (!(header_.incompatible_features & mask)) return {};
        if (auto r = flush(); !r) return r;
        const std::uint64_t old = header_.incompatible_features;
        header_.incompatible_features &= ~mask;
        auto r = write_header();
        if (!r) header_.incompatible_features = old;
        return r;
    }
    /// @}

private:
    using u64_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::uint64_t>;
    using byte_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::byte>;

    // ------------------------------------------------------------------ writing

    /// What `zero_range` makes of whole clusters.
    enum class op {
        zero_keep,    ///< read as zero, keeping host clusters this image owns alone
        zero_unmap,   ///< read as zero, freeing host clusters
        discard,      ///< QEMU's guest discard: zero (version 3 or no backing), else unallocated
        full_discard, ///< unallocated, host clusters freed (what shrinking does past the new size)
    };

    /// A range of the file that holds metadata, for the overlap check.
    struct extent {
        std::uint64_t offset = 0;
        std::uint64_t length = 0;
        const char* what = "";
    };

    /// An L2 entry change waiting for the data write that makes it true.
    struct entry_update {
        std::uint64_t index = 0;
        std::uint64_t entry = 0;
        std::uint64_t bitmap = 0;
        std::uint64_t old_entry = 0; ///< its references are dropped once the update is made
        bool allocated = false;      ///< the host cluster was allocated for it (released if the write fails)
    };

    using extent_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<extent>;
    using run_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<cluster_run>;
    using update_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<entry_update>;

    /// Everything a writable image needs beyond the read path; made at its first modification.
    struct writer_state {
        writer_state(basic_refcount_table<Backend, Allocator> t, const Allocator& a)
            : rc(std::move(t)), dirty_l2(a), l2_index(u64_alloc(a)), fixed(extent_alloc(a)), pending(run_alloc(a)),
              freed(u64_alloc(a)), batch(update_alloc(a)), buf(byte_alloc(a)), zeros(byte_alloc(a)), cbuf(byte_alloc(a)) {}
        basic_refcount_table<Backend, Allocator> rc;
        detail::dirty_tables<Allocator> dirty_l2;       ///< L2 tables changed in the cache
        std::uint64_t l1_lo = ~std::uint64_t{0};        ///< first changed L1 entry
        std::uint64_t l1_hi = 0;                        ///< one past the last changed L1 entry
        std::vector<std::uint64_t, u64_alloc> l2_index; ///< host offsets of the active L2 tables, sorted
        std::vector<extent, extent_alloc> fixed;        ///< header, L1, snapshot table and L1s, bitmaps, LUKS area
        std::vector<cluster_run, run_alloc> pending;    ///< references dropped in memory, released after the next commit
        std::vector<std::uint64_t, u64_alloc> freed;    ///< clusters whose refcount reached 0, punched after the release
        std::vector<entry_update, update_alloc> batch;  ///< entry changes of the data write being gathered
        std::vector<std::byte, byte_alloc> buf;         ///< one cluster: partial writes, new L2 tables
        std::vector<std::byte, byte_alloc> zeros;       ///< one cluster of zeroes
        std::vector<std::byte, byte_alloc> cbuf;        ///< compressed output
        std::optional<codec::cluster_compressor> compressor;
        std::uint64_t compressed_next = 0; ///< where the next compressed cluster may go (0: in a new cluster)
        bool lazy = false;                 ///< lazy refcounts: the dirty bit replaces the refcount ordering flushes
        bool marked_dirty = false;         ///< this writer set the dirty bit (cleared by `close`)
        bool unflushed_data = false;       ///< guest data written since the last flush of the file
        std::optional<error> failed;       ///< a write to the file failed: the file may lag the memory
    };

    std::uint64_t l2_entry(std::span<const std::byte> t, std::uint64_t i) const noexcept {
        return detail::load_be64(t, i * geometry_.entry_bytes());
    }
    std::uint64_t l2_bitmap(std::span<const std::byte> t, std::uint64_t i) const noexcept {
        return geometry_.extended ? detail::load_be64(t, i * 16 + 8) : 0;
    }

    /// Refuses a modification the image cannot take (changing nothing), and sets the writer up.
    result<void> check_modify(std::uint64_t offset, std::uint64_t length) {
        using detail::cat;
        using detail::dec;
        if (!writable_) return error{errc::read_only, "writing to an image opened read-only"};
        if (w_ && w_->failed) return *w_->failed;
        if (header_.incompatible_features & features::corrupt::mask)
            return error{errc::image_corrupt, "the image is marked corrupt: repair it (check with repair) before writing"};
        if (header_.incompatible_features & features::dirty::mask && !(w_ && w_->marked_dirty))
            return error{errc::not_supported, "the dirty bit is set: repair the image (check with repair) before writing"};
        if (header_.crypt_method != 0) return error{errc::unsupported_encryption, "writing to encrypted images is not built"};
        if (offset > header_.size || length > header_.size - offset)
            return error{errc::invalid_argument, cat("a write of ", dec(length), " bytes at guest offset ", dec(offset),
                                                     " reaches past the virtual size ", dec(header_.size))};
        if ((geometry_.external_data && !data_file_) || (has_backing() && !backing_qcow2_ && !backing_raw_))
            return error{errc::not_supported, "writing to an image opened metadata-only (its backing or data file is not open)"};
        if (auto r = ensure_writer(); !r) return r;
        if (w_->failed) return *w_->failed;
        return {};
    }

    /// What comes before the first change of a modification: the dirty bit for lazy
    /// refcounts, and before data the all-zero bit cleared (both written and flushed).
    result<void> prepare_modify(bool data) {
        if (w_->lazy && !w_->marked_dirty) {
            header_.incompatible_features |= features::dirty::mask;
            if (auto r = write_header(); !r) {
                header_.incompatible_features &= ~features::dirty::mask; // memory says what the file may say
                return poison(r);
            }
            w_->marked_dirty = true;
        }
        if (data && (header_.autoclear_features & features::all_zero::mask)) {
            // The image is about to read non-zero: the bit goes first, durably.
            header_.autoclear_features &= ~features::all_zero::mask;
            if (auto r = write_header(); !r) {
                header_.autoclear_features |= features::all_zero::mask;
                return poison(r);
            }
        }
        return {};
    }

    /// Remembers a failure of a write to the file: every later modification reports it.
    result<void> poison(result<void> r) {
        if (!r && w_ && !w_->failed) w_->failed = r.error();
        return r;
    }

    /// An operation's result: a failure that came from the backend leaves the file behind
    /// the memory, so it poisons the writer (qcow2's own refusals do not).
    result<void> guarded(result<void> r) {
        if (!r && r.error().code().category() != error_category()) return poison(std::move(r));
        if (!r && r.error().is(errc::io_error)) return poison(std::move(r));
        return r;
    }

    result<void> ensure_writer() {
        if (w_) return {};
        auto rc = basic_refcount_table<Backend, Allocator>::open(file_, header_, cache_bytes_, alloc_);
        if (!rc) return error(rc.error().code(), detail::cat("loading the refcounts for writing: ", rc.error().message()));
        auto w = std::make_unique<writer_state>(std::move(*rc), alloc_);
        const std::uint64_t cs = cluster_size();
        // Lazy refcounts relax only the order of refcount updates against L2 tables (the dirty
        // bit makes the next writable open rebuild the refcounts); new refcount structures and
        // L1 entries keep theirs.
        w->lazy = header_.version >= 3 && (header_.compatible_features & features::lazy_refcounts::mask);
        w->rc.note_file_end(file_size_);
        w->buf.resize(static_cast<std::size_t>(cs));
        w->zeros.resize(static_cast<std::size_t>(cs));
        w->batch.reserve(static_cast<std::size_t>(geometry_.entries_per_table()));
        w_ = std::move(w);
        rebuild_metadata_index();
        return {};
    }

    /// The metadata every write is checked against (QEMU's "cached" overlap template), from
    /// the header, the snapshot table, the bitmap directory and the active L1 table.
    void rebuild_metadata_index() {
        auto& fixed = w_->fixed;
        fixed.clear();
        fixed.push_back({0, cluster_size(), "the header"});
        if (header_.l1_size) fixed.push_back({header_.l1_table_offset, std::uint64_t{header_.l1_size} * 8, "the L1 table"});
        if (header_.nb_snapshots) {
            fixed.push_back({header_.snapshots_offset, snapshot_table_size(snapshots_), "the snapshot table"});
            for (const auto& sn : snapshots_)
                if (sn.l1_size) fixed.push_back({sn.l1_table_offset, std::uint64_t{sn.l1_size} * 8, "a snapshot's L1 table"});
        }
        if (const auto b = header_.bitmaps()) {
            fixed.push_back({b->directory_offset, b->directory_size, "the bitmap directory"});
            for (const auto& bm : bitmaps_) fixed.push_back({bm.table_offset, std::uint64_t{bm.table_size} * 8, "a bitmap table"});
        }
        if (const auto c = header_.encryption()) fixed.push_back({c->offset, c->length, "the encryption header"});
        auto& idx = w_->l2_index;
        idx.clear();
        for (const std::uint64_t e : l1_)
            if (const std::uint64_t off = e & l2_bits::l1_offset_mask) idx.push_back(off);
        std::sort(idx.begin(), idx.end());
        idx.erase(std::unique(idx.begin(), idx.end()), idx.end());
    }

    /// The metadata that `[offset, offset + length)` of the image file would overwrite, or
    /// nullptr; `own` is a cluster the write may touch (the L2 table being written).
    const char* metadata_at(std::uint64_t offset, std::uint64_t length, std::uint64_t own = ~std::uint64_t{0}) const {
        if (length == 0) return nullptr;
        const std::uint64_t end = offset + length;
        const std::uint64_t cs = cluster_size();
        for (const extent& e : w_->fixed) {
            // Whole clusters are metadata: QEMU rounds the ranges out too.
            const std::uint64_t lo = e.offset & ~(cs - 1), hi = (e.offset + e.length + cs - 1) & ~(cs - 1);
            if (offset < hi && lo < end && e.length) return e.what;
        }
        if (w_->rc.overlaps(offset, length)) return "the refcount structures";
        for (auto it = std::lower_bound(w_->l2_index.begin(), w_->l2_index.end(), offset & ~(cs - 1));
             it != w_->l2_index.end() && *it < end; ++it)
            if (*it != own) return "an active L2 table";
        return nullptr;
    }

    /// Refuses a write over metadata: as QEMU does, the image is marked corrupt first.
    result<void> guard(std::uint64_t offset, std::uint64_t length, std::uint64_t own = ~std::uint64_t{0}) {
        const char* what = metadata_at(offset, length, own);
        if (!what) return {};
        return signal_corruption(errc::metadata_overlap, detail::cat("a write of ", detail::dec(length), " bytes at host offset ",
                                                                     detail::hex(offset), " would overwrite ", what));
    }

    /// Marks the image corrupt (header written and flushed) and refuses further writes.
    error signal_corruption(errc code, std::string message) {
        header_.incompatible_features |= features::corrupt::mask;
        if (auto r = write_header(); !r) message += detail::cat(" (marking the image corrupt failed too: ", r.error().what(), ")");
        else message += "; the image is now marked corrupt";
        error e{code, message};
        if (w_ && !w_->failed) w_->failed = e;
        return e;
    }

    result<void> write_meta(std::uint64_t offset, std::span<const std::byte> bytes, std::string_view what) {
        if (auto r = check_io(file_.write_at(offset, bytes), what); !r) return r;
        file_size_ = std::max(file_size_, offset + bytes.size());
        w_->rc.note_file_end(file_size_);
        return {};
    }

    /// Writes guest data at `host` of the file holding data clusters.
    result<void> write_host(std::uint64_t host, std::span<const std::byte> bytes) {
        if (bytes.empty()) return {};
        compressed_host_ = ~std::uint64_t{0}; // the last decompressed cluster may live there
        w_->unflushed_data = true;
        if (data_file_) {
            if (auto r = check_io(data_file_->write_at(host, bytes), "writing guest data to the data file"); !r) return r;
            data_file_size_ = std::max(data_file_size_, host + bytes.size());
            return {};
        }
        if (auto r = guard(host, bytes.size()); !r) return r;
        return write_meta(host, bytes, "writing guest data");
    }

    /// The size of the file data clusters live in, as far as this image knows.
    std::uint64_t data_end() const noexcept { return data_file_ ? data_file_size_ : std::max(file_size_, w_->rc.file_end()); }

    /// Flushes and drops the writer's caches: metadata is about to change behind them (repair).
    result<void> retire_writer() {
        if (!w_) return {};
        if (auto r = flush(); !r) return r;
        w_.reset();
        return {};
    }

    /// The refcount table may have moved (it grows by itself): the header in memory follows it.
    void sync_refcount_fields() noexcept {
        if (!w_) return;
        header_.refcount_table_offset = w_->rc.table_offset();
        header_.refcount_table_clusters = w_->rc.table_clusters();
    }

    result<cluster_run> allocate_clusters(std::uint64_t count, bool exact) {
        auto run = w_->rc.allocate(file_, count, exact, [this](std::uint64_t off, std::uint64_t len) { return guard(off, len); });
        sync_refcount_fields();
        if (!run) return run.error();
        // Clusters with refcount 0 that metadata uses: the refcounts are corrupt.
        if (auto r = guard(run->first << header_.cluster_bits, run->count << header_.cluster_bits); !r) return r.error();
        return run;
    }

    /// Releases clusters allocated but never referenced (a write failed): at once, nothing on disk refers to them.
    void release_unused(cluster_run run) {
        if (run.count == 0 || geometry_.external_data) return;
        (void)w_->rc.release(file_, run.first, run.count, [this](std::uint64_t c) { note_freed(c, false); });
    }

    void note_freed(std::uint64_t cluster, bool punch) {
        if (w_->compressed_next && (w_->compressed_next >> header_.cluster_bits) == cluster) w_->compressed_next = 0;
        if (punch) w_->freed.push_back(cluster);
    }

    /// Drops, after the next commit, one reference from `count` clusters from `cluster`.
    void defer_release(std::uint64_t cluster, std::uint64_t count) {
        auto& p = w_->pending;
        if (!p.empty() && p.back().first + p.back().count == cluster) p.back().count += count;
        else p.push_back({cluster, count});
    }

    /// Drops the references an L2 entry held (after the next commit).
    void drop_reference(std::uint64_t entry) {
        if (geometry_.external_data) return; // data clusters of a data file are not refcounted
        const unsigned cb = header_.cluster_bits;
        if (entry & l2_bits::compressed) {
            const compressed_extent c = decode_compressed(entry, cb);
            const std::uint64_t first = c.offset >> cb, last = (c.offset + c.size - 1) >> cb;
            defer_release(first, last - first + 1);
        } else if (const std::uint64_t off = entry & l2_bits::offset_mask) {
            defer_release(off >> cb, 1);
        }
    }

    void mark_l1(std::uint64_t index) {
        w_->l1_lo = std::min(w_->l1_lo, index);
        w_->l1_hi = std::max(w_->l1_hi, index + 1);
    }

    /// Writes what the caches hold, in crash-safe order; with `all` also the refcount
    /// decreases (no final flush: `flush` does it).
    result<void> commit(bool all) {
        writer_state& w = *w_;
        if (w.failed) return *w.failed;
        return poison(commit_steps(w, all));
    }

    result<void> commit_steps(writer_state& w, bool all) {
        const bool ordered = !w.lazy;
        const bool l1_dirty = w.l1_lo < w.l1_hi;
        const bool tables = !w.dirty_l2.empty() || l1_dirty;
        // 1. Refcount increases, durable before anything refers to the clusters (lazy
        // refcounts let them lag); guest data, durable before an entry maps it (always: an
        // entry that maps bytes never written would show whatever the host cluster held).
        bool flush_first = tables && w.unflushed_data;
        if (w.rc.dirty_blocks()) {
            if (auto r = w.rc.write_back(file_); !r) return r;
            flush_first |= tables && ordered;
        }
        if (flush_first) {
            if (data_file_)
                if (auto r = check_io(data_file_->flush(), "flushing the data file"); !r) return r;
            if (auto r = check_io(file_.flush(), "flushing guest data and refcount blocks"); !r) return r;
            w.unflushed_data = false;
        }
        // 2. L2 tables.
        if (!w.dirty_l2.empty()) {
            const std::uint64_t mask = ~(cluster_size() - 1);
            auto r = w.dirty_l2.write_all(*l2_cache_, [&](std::uint64_t off, std::span<const std::byte> bytes) -> result<void> {
                if (auto g = guard(off, bytes.size(), off & mask); !g) return g;
                return write_meta(off, bytes, "writing an L2 table");
            });
            if (!r) return r;
        }
        // 3. L1 entries, once the tables they point at are durable (lazy refcounts or not: an
        // L1 entry pointing at a table that never reached the disk is a corruption no repair undoes).
        if (l1_dirty) {
            if (auto r = check_io(file_.flush(), "flushing L2 tables"); !r) return r;
            const std::uint64_t n = w.l1_hi - w.l1_lo;
            std::vector<std::byte, byte_alloc> raw(static_cast<std::size_t>(n * 8), byte_alloc(alloc_));
            for (std::uint64_t i = 0; i < n; ++i) detail::store_be64(raw, i * 8, l1_[static_cast<std::size_t>(w.l1_lo + i)]);
            if (auto r = write_meta(header_.l1_table_offset + w.l1_lo * 8, raw, "writing L1 entries"); !r) return r;
            w.l1_lo = ~std::uint64_t{0};
            w.l1_hi = 0;
        }
        // 4. Refcount decreases, once the references they drop are durable (lazy refcounts too:
        // a released cluster is punched and reused at once).
        if (!w.pending.empty()) {
            if (tables)
                if (auto r = check_io(file_.flush(), "flushing L1 and L2 tables"); !r) return r;
            for (std::size_t i = 0; i < w.pending.size(); ++i)
                if (auto r = w.rc.release(file_, w.pending[i].first, w.pending[i].count, [this](std::uint64_t c) { note_freed(c, true); });
                    !r) {
                    w.pending.erase(w.pending.begin(), w.pending.begin() + static_cast<std::ptrdiff_t>(i));
                    return r;
                }
            w.pending.clear();
            punch_freed();
        }
        if (all && w.rc.dirty_blocks())
            if (auto r = w.rc.write_back(file_); !r) return r;
        return {};
    }

    /// Gives the space of freed clusters back to the file system (when the backend can).
    void punch_freed() {
        auto& f = w_->freed;
        if constexpr (io::supports_discard<Backend>) {
            std::sort(f.begin(), f.end());
            const unsigned cb = header_.cluster_bits;
            for (std::size_t i = 0; i < f.size();) {
                std::size_t j = i + 1;
                while (j < f.size() && f[j] == f[j - 1] + 1) ++j;
                if ((f[i] << cb) < file_size_) (void)file_.discard(f[i] << cb, std::uint64_t{j - i} << cb);
                i = j;
            }
        }
        f.clear();
    }

    /// Keeps the caches from filling with dirty tables and the release list from growing.
    result<void> make_room() {
        if (w_->dirty_l2.size() + 3 >= l2_cache_->capacity() || w_->pending.size() >= 4096) return commit(false);
        return {};
    }

    /// The L2 table of L1 entry `l1_index`, ready to change and pinned (unpin it when done):
    /// a new empty table when there is none, a copy when it is shared with a snapshot.
    result<std::pair<std::span<std::byte>, std::uint64_t>> writable_l2(std::uint64_t l1_index) {
        if (auto r = make_room(); !r) return r.error();
        const std::uint64_t e = l1_[static_cast<std::size_t>(l1_index)];
        const std::uint64_t old = e & l2_bits::l1_offset_mask;
        if (old && (e & l2_bits::copied)) {
            auto t = l2_table(old, l1_index);
            if (!t) return t.error();
            l2_cache_->pin(old);
            return std::pair{*t, old};
        }
        auto& buf = w_->buf;
        if (old) {
            auto t = l2_table(old, l1_index);
            if (!t) return t.error();
            std::memcpy(buf.data(), t->data(), buf.size());
        } else {
            std::memset(buf.data(), 0, buf.size());
        }
        auto run = allocate_clusters(1, true);
        if (!run) return run.error();
        const std::uint64_t at = run->first << header_.cluster_bits;
        l2_cache_->invalidate(at);
        auto t = l2_cache_->get_pinned(at, [&](std::span<std::byte> dst) {
            std::memcpy(dst.data(), buf.data(), dst.size());
            return result<void>{};
        });
        if (!t) {
            release_unused(*run);
            return t.error();
        }
        w_->dirty_l2.mark(*l2_cache_, at, 0, t->size());
        auto& idx = w_->l2_index;
        idx.insert(std::upper_bound(idx.begin(), idx.end(), at), at);
        l1_[static_cast<std::size_t>(l1_index)] = at | l2_bits::copied;
        mark_l1(l1_index);
        if (old) { // the shared table stays with the snapshot; this image's reference goes
            if (auto it = std::lower_bound(idx.begin(), idx.end(), old); it != idx.end() && *it == old) idx.erase(it);
            defer_release(old >> header_.cluster_bits, 1);
        }
        return std::pair{*t, at};
    }

    void set_l2(std::span<std::byte> table, std::uint64_t table_offset, std::uint64_t i, std::uint64_t entry, std::uint64_t bitmap) {
        const unsigned eb = geometry_.entry_bytes();
        detail::store_be64(table, i * eb, entry);
        if (geometry_.extended) detail::store_be64(table, i * eb + 8, bitmap);
        w_->dirty_l2.mark(*l2_cache_, table_offset, static_cast<std::size_t>(i * eb), static_cast<std::size_t>((i + 1) * eb));
    }

    /// Fails for an entry the format forbids (a corruption a writer must not build on).
    result<void> check_entry(std::uint64_t entry, std::uint64_t bitmap, std::uint64_t guest) {
        const subcluster s = classify(geometry_, entry, bitmap, 0);
        if (s.state == cluster_state::invalid)
            return signal_corruption(errc::image_corrupt, detail::cat("L2 entry ", detail::hex(entry), " for guest offset ",
                                                                      detail::dec(guest), ": ", s.why));
        if (geometry_.external_data && (entry & l2_bits::copied) && (entry & l2_bits::offset_mask) != (guest & ~(cluster_size() - 1)))
            return signal_corruption(errc::image_corrupt, detail::cat("L2 entry ", detail::hex(entry), " for guest offset ",
                                                                      detail::dec(guest), " maps the data file elsewhere"));
        return {};
    }

    /// True when the entry's cluster belongs to this image alone and may be written in place.
    bool owned(std::uint64_t entry) const noexcept {
        if (entry & l2_bits::compressed) return false;
        if (!(entry & l2_bits::copied)) return false;
        return (entry & l2_bits::offset_mask) != 0 || geometry_.external_data;
    }

    /// Bit mask of the allocation units (subclusters, or the one cluster) touching `[a, b)`.
    std::uint32_t unit_mask(std::uint64_t a, std::uint64_t b) const noexcept {
        if (!geometry_.extended) return 1;
        const std::uint64_t u = geometry_.subcluster_size();
        const auto lo = static_cast<unsigned>(a / u), hi = static_cast<unsigned>((b + u - 1) / u);
        return static_cast<std::uint32_t>(((std::uint64_t{1} << hi) - 1) & ~((std::uint64_t{1} << lo) - 1));
    }

    /// Units of `mask` that `[a, b)` does not cover whole (bytes past `valid`, the end of the disk, need no cover).
    std::uint32_t partial_units(std::uint32_t mask, std::uint64_t a, std::uint64_t b, std::uint64_t valid) const noexcept {
        const std::uint64_t u = geometry_.extended ? geometry_.subcluster_size() : cluster_size();
        std::uint32_t partial = 0;
        for (unsigned i = 0; i < 32 && (mask >> i); ++i) {
            if (!(mask >> i & 1)) continue;
            const std::uint64_t lo = i * u, hi = std::min((i + 1) * u, valid);
            if (lo >= valid) continue;
            if (a > lo || b < hi) partial |= std::uint32_t{1} << i;
        }
        return partial;
    }

    /// Writes `data` at guest `offset` (the caller checked the range).
    result<void> write_guest(std::uint64_t offset, std::span<const std::byte> data) {
        const std::uint64_t end = offset + data.size();
        const std::uint64_t coverage = header_.l1_entry_coverage();
        std::uint64_t pos = offset;
        while (pos < end) {
            const std::uint64_t l1_index = pos / coverage;
            const std::uint64_t table_end = std::min(end, (l1_index + 1) * coverage);
            auto slot = writable_l2(l1_index);
            if (!slot) return slot.error();
            auto r = write_in_table(slot->first, slot->second, pos, data.subspan(static_cast<std::size_t>(pos - offset),
                                                                                static_cast<std::size_t>(table_end - pos)));
            l2_cache_->unpin(slot->second);
            if (!r) return r;
            pos = table_end;
        }
        return {};
    }

    /**
     * Writes `data` at guest `pos`, inside one L2 table. Each cluster is written in place
     * (owned, and nothing to fill), read-modified-written in place (owned, but a partly
     * written unit did not hold data), or given a new host cluster (taken from a run
     * allocated for all the clusters that need one). Writes of consecutive clusters that
     * are contiguous in the file and in `data` go out as one; the L2 entries change only
     * once their data is written.
     */
    result<void> write_in_table(std::span<std::byte> table, std::uint64_t table_offset, std::uint64_t pos,
                                std::span<const std::byte> data) {
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t cs = cluster_size();
        const std::uint64_t ept = geometry_.entries_per_table();
        const std::uint64_t start = pos, end = pos + data.size();
        writer_state& w = *w_;
        w.batch.clear();
        std::uint64_t batch_host = 0, batch_guest = 0, batch_len = 0;
        cluster_run spare{}; // allocated, not yet used

        auto fail = [&](result<void> r) {
            for (const auto& u : w.batch)
                if (u.allocated) release_unused({(u.entry & l2_bits::offset_mask) >> cb, 1});
            w.batch.clear();
            release_unused(spare);
            return r;
        };
        auto apply = [&](const entry_update& u) {
            set_l2(table, table_offset, u.index, u.entry, u.bitmap);
            if (u.old_entry && !owned(u.old_entry)) drop_reference(u.old_entry);
        };
        auto flush_batch = [&]() -> result<void> {
            if (batch_len == 0) return {};
            if (auto r = write_host(batch_host, data.subspan(static_cast<std::size_t>(batch_guest - start),
                                                             static_cast<std::size_t>(batch_len)));
                !r)
                return r;
            for (const auto& u : w.batch) apply(u);
            w.batch.clear();
            batch_len = 0;
            return {};
        };

        while (pos < end) {
            const std::uint64_t idx = (pos >> cb) & (ept - 1);
            const std::uint64_t cstart = pos & ~(cs - 1);
            const std::uint64_t a = pos - cstart, b = std::min(end, cstart + cs) - cstart;
            const std::uint64_t valid = std::min(cs, header_.size - cstart);
            const std::uint64_t e = l2_entry(table, idx), bm = l2_bitmap(table, idx);
            if (auto r = check_entry(e, bm, cstart); !r) return fail(r);
            const std::uint32_t touched = unit_mask(a, b);
            const std::uint32_t partial = partial_units(touched, a, b, valid);
            const auto alloc_bits = static_cast<std::uint32_t>(bm), zero_bits = static_cast<std::uint32_t>(bm >> 32);
            const bool own = owned(e);
            // Units holding data whose bytes stay valid without a fill.
            const std::uint32_t data_units = !own ? 0 : geometry_.extended ? alloc_bits : (e & l2_bits::zero) ? 0 : 1;
            std::uint64_t host = 0;
            bool fresh_alloc = false;
            if (own) {
                host = geometry_.external_data ? cstart : e & l2_bits::offset_mask;
            } else if (geometry_.external_data) {
                host = cstart; // a data file maps guest offset to the same host offset
            } else {
                if (spare.count == 0) {
                    // One run for this cluster and the following ones that need a new cluster too.
                    std::uint64_t n = 1;
                    for (std::uint64_t p = cstart + cs; p < end && ((p >> cb) & (ept - 1)) != 0; p += cs, ++n)
                        if (owned(l2_entry(table, (p >> cb) & (ept - 1)))) break;
                    auto run = allocate_clusters(n, false);
                    if (!run) return fail(run.error());
                    spare = *run;
                }
                host = spare.first << cb;
                ++spare.first;
                --spare.count;
                fresh_alloc = true;
            }
            // The new entry.
            std::uint64_t ne = host | l2_bits::copied, nbm = 0;
            if (geometry_.external_data && !own) ne = cstart | l2_bits::copied;
            std::uint32_t must = touched; // units to write
            if (geometry_.extended) {
                std::uint32_t keep_alloc = 0, keep_zero = zero_bits;
                if (own) keep_alloc = alloc_bits;
                else if (e & l2_bits::compressed) keep_alloc = 0xFFFFFFFFu, keep_zero = 0;
                else if (e & l2_bits::offset_mask) keep_alloc = alloc_bits; // a shared cluster: copy its data units
                const std::uint32_t na = keep_alloc | touched;
                nbm = (std::uint64_t{keep_zero & ~na} << 32) | na;
                if (!own) must |= keep_alloc;
            } else if (!own) {
                must = 1;
            }
            // Units written only in part, or copied, that need bytes from what the cluster read before.
            const std::uint32_t fill = geometry_.extended ? ((partial & ~data_units) | (must & ~touched))
                                                          : ((own ? (partial & ~data_units) : (a > 0 || b < valid)) ? 1 : 0);
            entry_update u{idx, ne, nbm, e, fresh_alloc};
            if (fill == 0) {
                // Straight from `data`.
                const std::uint64_t h = host + a, g = cstart + a, len = b - a;
                if (batch_len && (batch_host + batch_len != h || batch_guest + batch_len != g))
                    if (auto r = flush_batch(); !r) return fail(r);
                if (batch_len == 0) {
                    batch_host = h;
                    batch_guest = g;
                }
                batch_len += len;
                if (ne != e || nbm != bm) w.batch.push_back(u);
            } else {
                if (auto r = flush_batch(); !r) return fail(r);
                if (auto r = write_cluster_rmw(cstart, a, b, valid, must, host, data.subspan(static_cast<std::size_t>(cstart + a - start),
                                                                                           static_cast<std::size_t>(b - a)));
                    !r) {
                    if (fresh_alloc) w.batch.push_back(u);
                    return fail(r);
                }
                if (ne != e || nbm != bm) apply(u);
            }
            pos = cstart + b;
        }
        if (auto r = flush_batch(); !r) return fail(r);
        release_unused(spare);
        return {};
    }

    /// Writes the units `must` of a cluster at `host`: bytes `[a, b)` from `data`, the rest
    /// of those units from what the cluster reads now. A cluster past the end of the file
    /// reads as zero already, so zero bytes at either end are not written.
    result<void> write_cluster_rmw(std::uint64_t cstart, std::uint64_t a, std::uint64_t b, std::uint64_t valid, std::uint32_t must,
                                   std::uint64_t host, std::span<const std::byte> data) {
        const std::uint64_t u = geometry_.extended ? geometry_.subcluster_size() : cluster_size();
        auto& buf = w_->buf;
        std::uint64_t lo = ~std::uint64_t{0}, hi = 0;
        for (unsigned i = 0; i < 32 && (must >> i); ++i) {
            if (!(must >> i & 1)) continue;
            const std::uint64_t ulo = i * u, uhi = (i + 1) * u;
            lo = std::min(lo, ulo);
            hi = std::max(hi, uhi);
            // The parts of this unit outside [a, b), inside the disk, read as they read now.
            const std::uint64_t parts[2][2] = {{ulo, std::min(uhi, a)}, {std::max(ulo, b), uhi}};
            for (const auto& p : parts) {
                const std::uint64_t plo = p[0], phi = std::min(p[1], valid);
                if (plo < phi)
                    if (auto r = read(cstart + plo, std::span(buf).subspan(static_cast<std::size_t>(plo), static_cast<std::size_t>(phi - plo)));
                        !r)
                        return r;
                const std::uint64_t zlo = std::max(plo, valid), zhi = p[1];
                if (zlo < zhi) std::memset(buf.data() + zlo, 0, static_cast<std::size_t>(zhi - zlo));
            }
        }
        std::memcpy(buf.data() + a, data.data(), data.size());
        if (host >= data_end()) {
            // Past the end of the file the cluster reads as zero already: trim the zeroes at
            // the edges, but keep the file reaching into the cluster (qemu-img check counts a
            // reference that starts at or past the end of the file as a corruption).
            while (lo < hi && buf[static_cast<std::size_t>(lo)] == std::byte{0}) ++lo;
            while (hi > lo && buf[static_cast<std::size_t>(hi - 1)] == std::byte{0}) --hi;
            if (lo == hi) return write_host(host + cluster_size() - 1, std::span<const std::byte>(w_->zeros).first(1));
        }
        return write_host(host + lo, std::span<const std::byte>(buf).subspan(static_cast<std::size_t>(lo), static_cast<std::size_t>(hi - lo)));
    }

    /// True when guest `[offset, offset + length)` reads as zero from this image alone
    /// (zero clusters, or unallocated ones without a backing file).
    result<bool> reads_zero_here(std::uint64_t offset, std::uint64_t length) {
        std::uint64_t pos = offset;
        while (pos < offset + length) {
            auto m = map_range(pos, offset + length - pos);
            if (!m) return m.error();
            const bool zero = m->state == cluster_state::zero ||
                              (m->state == cluster_state::unallocated && (!has_backing() || pos >= backing_size_));
            if (!zero) return false;
            pos += m->length;
        }
        return true;
    }

    /// Makes `[start, end)` read as zero (or discards it): partial clusters through
    /// `zero_partial`, whole clusters by changing their L2 entries.
    result<void> zero_range(std::uint64_t start, std::uint64_t end, op what) {
        const std::uint64_t cs = cluster_size();
        if (start >= end) return {};
        // A partial cluster at either end, the whole clusters between (the disk's last cluster,
        // when partial, counts as whole once the range reaches the end of the disk).
        const std::uint64_t head_end = (start & (cs - 1)) ? std::min(end, (start + cs - 1) & ~(cs - 1)) : start;
        const std::uint64_t tail_start = end == header_.size ? end : std::max(head_end, end & ~(cs - 1));
        if (head_end > start) {
            if (what == op::zero_keep || what == op::zero_unmap)
                if (auto r = zero_partial(start, head_end); !r) return r;
        }
        if (tail_start > head_end) {
            if (auto r = zero_clusters(head_end, tail_start, what); !r) return r;
        }
        if (end > tail_start) {
            if (what == op::zero_keep || what == op::zero_unmap)
                if (auto r = zero_partial(tail_start, end); !r) return r;
        }
        return {};
    }

    /// Zeroes `[start, end)` inside one cluster, not all of it.
    result<void> zero_partial(std::uint64_t start, std::uint64_t end) {
        auto z = reads_zero_here(start, end - start);
        if (!z) return z.error();
        if (*z) return {};
        const std::uint64_t cs = cluster_size();
        const std::uint64_t cstart = start & ~(cs - 1);
        const auto& zeros = w_->zeros;
        auto write_zero_bytes = [&](std::uint64_t lo, std::uint64_t hi) -> result<void> {
            if (lo >= hi) return {};
            auto zz = reads_zero_here(lo, hi - lo);
            if (!zz) return zz.error();
            if (*zz) return {};
            if (data_file_raw())
                if (auto r = write_host(lo, std::span(zeros).first(static_cast<std::size_t>(hi - lo))); !r) return r;
            return write_guest(lo, std::span(zeros).first(static_cast<std::size_t>(hi - lo)));
        };
        if (!geometry_.extended) return write_zero_bytes(start, end);
        // Whole subclusters get zero bits; the partial ones at either end get zero bytes.
        const std::uint64_t u = geometry_.subcluster_size();
        const std::uint64_t valid_end = std::min(cstart + cs, header_.size);
        const std::uint64_t ulo = (start + u - 1) & ~(u - 1);
        std::uint64_t uhi = end & ~(u - 1);
        if (end == valid_end) uhi = std::min(cstart + cs, (end + u - 1) & ~(u - 1));
        if (ulo >= uhi) return write_zero_bytes(start, end);
        if (auto r = write_zero_bytes(start, ulo); !r) return r;
        if (auto r = write_zero_bytes(uhi, end); !r) return r;
        const std::uint64_t l1_index = cstart / header_.l1_entry_coverage();
        auto slot = writable_l2(l1_index);
        if (!slot) return slot.error();
        const std::uint64_t idx = (cstart >> header_.cluster_bits) & (geometry_.entries_per_table() - 1);
        std::uint64_t e = l2_entry(slot->first, idx), bm = l2_bitmap(slot->first, idx);
        result<void> r = check_entry(e, bm, cstart);
        if (r) {
            if (e & l2_bits::compressed) { // a compressed cluster has no subclusters: write its zeroes
                l2_cache_->unpin(slot->second);
                if (data_file_raw())
                    if (auto rr = write_host(ulo, std::span(zeros).first(static_cast<std::size_t>(uhi - ulo))); !rr) return rr;
                return write_guest(ulo, std::span(zeros).first(static_cast<std::size_t>(std::min(uhi, valid_end) - ulo)));
            }
            const std::uint32_t m = unit_mask(ulo - cstart, uhi - cstart);
            const std::uint64_t nbm = (bm & ~std::uint64_t{m}) | (std::uint64_t{m} << 32);
            if (data_file_raw()) r = write_host(ulo, std::span(zeros).first(static_cast<std::size_t>(std::min(uhi, valid_end) - ulo)));
            if (r && nbm != bm) set_l2(slot->first, slot->second, idx, e, nbm);
        }
        l2_cache_->unpin(slot->second);
        return r;
    }

    bool data_file_raw() const noexcept { return geometry_.external_data && (header_.autoclear_features & features::raw_external_data::mask); }

    /// Zeroes or discards the whole clusters of `[start, end)` (cluster aligned; `end` may be
    /// the end of a disk whose last cluster is partial).
    result<void> zero_clusters(std::uint64_t start, std::uint64_t end, op what) {
        const std::uint64_t cs = cluster_size();
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t coverage = header_.l1_entry_coverage();
        const std::uint64_t ept = geometry_.entries_per_table();
        const bool v2 = header_.version == 2;
        const bool backing = has_backing();
        const auto& zeros = w_->zeros;
        std::uint64_t pos = start;
        while (pos < end) {
            const std::uint64_t l1_index = pos / coverage;
            const std::uint64_t table_end = std::min(end, (l1_index + 1) * coverage);
            const std::uint64_t l1e = l1_[static_cast<std::size_t>(l1_index)];
            // No table: every cluster is unallocated, which already reads as wanted unless a
            // backing file shows through where zeroes are wanted.
            const bool want_zero = what != op::full_discard && !(what == op::discard && v2);
            if (!(l1e & l2_bits::l1_offset_mask) && (!backing || !want_zero || pos >= backing_size_) && !data_file_raw()) {
                pos = table_end;
                continue;
            }
            if (v2 && backing && want_zero) {
                // Version 2 has no zero clusters: write zeroes (only where they do not read as zero already).
                for (std::uint64_t p = pos; p < table_end; p += cs) {
                    const std::uint64_t n = std::min(cs, table_end - p);
                    auto z = reads_zero_here(p, n);
                    if (!z) return z.error();
                    if (!*z)
                        if (auto r = write_guest(p, std::span(zeros).first(static_cast<std::size_t>(n))); !r) return r;
                }
                pos = table_end;
                continue;
            }
            auto slot = writable_l2(l1_index);
            if (!slot) return slot.error();
            const std::span<std::byte> table = slot->first;
            result<void> r;
            for (std::uint64_t p = pos; p < table_end && r; p += cs) {
                const std::uint64_t idx = (p >> cb) & (ept - 1);
                const std::uint64_t e = l2_entry(table, idx), bm = l2_bitmap(table, idx);
                r = check_entry(e, bm, p);
                if (!r) break;
                const bool has_host = (e & l2_bits::compressed) || (e & l2_bits::offset_mask) || (geometry_.external_data && (e & l2_bits::copied));
                const bool unallocated = !has_host && !(geometry_.extended ? (bm >> 32) : (e & l2_bits::zero));
                std::uint64_t ne = e, nbm = bm;
                bool drop = false;
                if (what == op::full_discard || (what == op::discard && v2) || (v2 && !backing)) {
                    ne = 0;
                    nbm = 0;
                    drop = has_host;
                } else if (what == op::discard) {
                    if (!unallocated || (backing && p < backing_size_)) {
                        ne = geometry_.extended ? 0 : l2_bits::zero;
                        nbm = geometry_.extended ? std::uint64_t{0xFFFFFFFFu} << 32 : 0;
                        drop = has_host;
                    }
                } else { // zero
                    const bool keep = what == op::zero_keep && owned(e);
                    if (unallocated && !(backing && p < backing_size_)) {
                        // Reads as zero already.
                    } else if (geometry_.extended) {
                        ne = keep ? e : 0;
                        nbm = std::uint64_t{0xFFFFFFFFu} << 32;
                        drop = !keep && has_host;
                    } else {
                        ne = keep ? (e & (l2_bits::offset_mask | l2_bits::copied)) | l2_bits::zero : l2_bits::zero;
                        drop = !keep && has_host;
                    }
                }
                if (data_file_raw()) { // the data file stays a raw image of the disk
                    const std::uint64_t n = std::min(cs, header_.size - p);
                    r = write_host(p, std::span(zeros).first(static_cast<std::size_t>(n)));
                    if (!r) break;
                } else if (geometry_.external_data && drop && what != op::zero_keep) {
                    if constexpr (io::supports_discard<Backend>)
                        if (p < data_file_size_) (void)data_file_->discard(p, std::min(cs, data_file_size_ - p));
                }
                if (ne != e || nbm != bm) {
                    set_l2(table, slot->second, idx, ne, nbm);
                    if (drop) drop_reference(e);
                }
            }
            l2_cache_->unpin(slot->second);
            if (!r) return r;
            pos = table_end;
        }
        return {};
    }

    /// Where the next compressed cluster of `length` bytes goes, packed after the previous one
    /// as QEMU's `qcow2_alloc_bytes` packs them; its clusters' refcounts are raised.
    result<std::uint64_t> allocate_bytes(std::uint64_t length) {
        writer_state& w = *w_;
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t cs = cluster_size();
        std::uint64_t off = w.compressed_next;
        if (off) {
            auto rc = w.rc.get(file_, off >> cb);
            if (!rc) return rc.error();
            if (*rc >= w.rc.max_refcount() || *rc == 0) off = 0; // full, or freed meanwhile
        }
        const std::uint64_t room = off ? cs - (off & (cs - 1)) : 0;
        if (off && length <= room) {
            if (auto r = w.rc.update(file_, off >> cb, 1, 1); !r) return r.error();
        } else {
            const std::uint64_t need = detail::div_round_up(off ? length - room : length, cs);
            auto run = allocate_clusters(need, true);
            if (!run) return run.error();
            if (off && run->first == (off >> cb) + 1) {
                if (auto r = w.rc.update(file_, off >> cb, 1, 1); !r) {
                    release_unused(*run);
                    return r.error();
                }
            } else {
                off = run->first << cb;
            }
        }
        w.compressed_next = ((off + length) & (cs - 1)) ? off + length : 0;
        return off;
    }

    /// Compresses the cluster at guest `offset` into the writer's buffer: its length, or 0
    /// when it does not shrink. Refuses what `write_compressed` refuses.
    result<std::uint64_t> compress_cluster(std::uint64_t offset, std::span<const std::byte> data) {
        using detail::cat;
        using detail::dec;
        const std::uint64_t cs = cluster_size();
        if (geometry_.external_data) return error{errc::not_supported, "images with an external data file cannot hold compressed clusters"};
        if (offset & (cs - 1))
            return error{errc::misaligned_offset, cat("compressed write at guest offset ", dec(offset), " is not cluster aligned")};
        const std::uint64_t valid = offset < header_.size ? std::min(cs, header_.size - offset) : 0;
        if (data.size() != valid || valid == 0)
            return error{errc::invalid_argument, cat("a compressed write at guest offset ", dec(offset), " must be ", dec(valid),
                                                     " bytes, not ", dec(data.size()))};
        writer_state& w = *w_;
        if (!w.compressor) w.compressor.emplace(header_.compression_kind());
        std::memcpy(w.buf.data(), data.data(), data.size());
        std::memset(w.buf.data() + data.size(), 0, static_cast<std::size_t>(cs - data.size()));
        w.cbuf.resize(static_cast<std::size_t>(cs + 512)); // the stream (at most cs - 1 bytes) and sector padding
        auto n = w.compressor->compress(w.buf, std::span(w.cbuf).first(static_cast<std::size_t>(cs - 1)));
        if (!n) {
            if (n.error().is(errc::not_compressible)) return std::uint64_t{0};
            return n.error();
        }
        return std::uint64_t{*n};
    }

    /// Stores the `n` compressed bytes in the writer's buffer as guest cluster `offset`.
    result<void> store_compressed(std::uint64_t offset, std::uint64_t n) {
        const unsigned cb = header_.cluster_bits;
        writer_state& w = *w_;
        auto host = allocate_bytes(n);
        if (!host) return host.error();
        const std::uint64_t first = *host >> cb, last = (*host + n - 1) >> cb;
        // Past the end of the file, pad to a whole sector: readers read whole sectors.
        std::uint64_t len = n;
        if (*host + len > data_end()) {
            const std::uint64_t padded = ((*host + len + 511) & ~std::uint64_t{511}) - *host;
            std::memset(w.cbuf.data() + len, 0, static_cast<std::size_t>(padded - len));
            len = padded;
        }
        if (auto r = write_host(*host, std::span<const std::byte>(w.cbuf).first(static_cast<std::size_t>(len))); !r) {
            release_unused({first, last - first + 1});
            return r;
        }
        const std::uint64_t l1_index = offset / header_.l1_entry_coverage();
        auto slot = writable_l2(l1_index);
        if (!slot) {
            release_unused({first, last - first + 1});
            return slot.error();
        }
        const std::uint64_t idx = (offset >> cb) & (geometry_.entries_per_table() - 1);
        const std::uint64_t old = l2_entry(slot->first, idx);
        result<void> r = check_entry(old, l2_bitmap(slot->first, idx), offset);
        if (r) {
            set_l2(slot->first, slot->second, idx, encode_compressed(*host, n, cb), 0);
            drop_reference(old);
        } else {
            release_unused({first, last - first + 1});
        }
        l2_cache_->unpin(slot->second);
        return r;
    }

    /// Replaces the L1 table with one of `entries` entries, in crash-safe order: everything
    /// the old one refers to is made durable, the new one is written and flushed, then the
    /// header points at it (12 bytes at offset 36, flushed); the old one is released last.
    result<void> grow_l1(std::uint64_t entries) {
        const std::uint64_t cs = cluster_size();
        if (auto r = commit(true); !r) return r;
        if (auto r = check_io(file_.flush(), "flushing before the L1 table moves"); !r) return r;
        const std::uint64_t clusters = detail::div_round_up(entries * 8, cs);
        auto run = allocate_clusters(clusters, true);
        if (!run) return run.error();
        const std::uint64_t at = run->first << header_.cluster_bits;
        std::vector<std::byte, byte_alloc> raw(static_cast<std::size_t>(clusters * cs), std::byte{0}, byte_alloc(alloc_));
        for (std::size_t i = 0; i < l1_.size(); ++i) detail::store_be64(raw, i * 8, l1_[i]);
        if (auto r = write_meta(at, raw, "writing the new L1 table"); !r) return r;
        if (auto r = w_->rc.write_back(file_); !r) return r;
        if (auto r = check_io(file_.flush(), "flushing the new L1 table"); !r) return r;
        std::byte h[12];
        detail::store_be32(h, 0, static_cast<std::uint32_t>(entries));
        detail::store_be64(h, 4, at);
        if (auto r = write_meta(36, h, "pointing the header at the new L1 table"); !r) return r;
        if (auto r = check_io(file_.flush(), "flushing the header"); !r) return r;
        const std::uint64_t old_at = header_.l1_table_offset, old_size = header_.l1_size;
        header_.l1_size = static_cast<std::uint32_t>(entries);
        header_.l1_table_offset = at;
        l1_.resize(static_cast<std::size_t>(entries), 0);
        rebuild_metadata_index();
        if (old_size) defer_release(old_at >> header_.cluster_bits, detail::div_round_up(old_size * 8, cs));
        return {};
    }

    result<void> resize_impl(std::uint64_t new_size) {
        using detail::cat;
        using detail::dec;
        const std::uint64_t cs = cluster_size();
        const std::uint64_t old = header_.size;
        const std::uint64_t need = detail::div_round_up(new_size, header_.l1_entry_coverage());
        if (new_size < old) {
            // Everything past the new size goes: whole clusters, then the L2 tables past the new L1 size.
            const std::uint64_t keep_end = std::min(old, (new_size + cs - 1) & ~(cs - 1));
            if (auto r = zero_clusters(keep_end, old, op::full_discard); !r) return r;
            drop_l2_tables(need);
            header_.size = new_size;
            if (auto r = commit(true); !r) return r;
            if (auto r = check_io(file_.flush(), "flushing before the size changes"); !r) return r;
            if (auto r = write_header(); !r) return r;
            if (data_file_) { // the data file follows the disk, as QEMU truncates it
                if (auto r = check_io(data_file_->resize(new_size), "truncating the data file"); !r) return r;
                data_file_size_ = new_size;
            }
            return truncate_unused();
        }
        if (need > l1_.size())
            if (auto r = grow_l1(need); !r) return r;
        if (data_file_ && data_file_size_ < new_size) {
            if (auto r = check_io(data_file_->resize(new_size), "growing the data file"); !r) return r;
            data_file_size_ = new_size;
        }
        header_.size = new_size;
        if (data_file_raw())
            // A raw data file maps the whole disk 1:1 (QEMU preallocates metadata when it grows).
            if (auto r = map_identity((old + cs - 1) & ~(cs - 1), new_size); !r) {
                header_.size = old;
                return r;
            }
        // The new range reads as zero: the rest of the old last cluster may hold old bytes,
        // and a longer backing file must not show through.
        const std::uint64_t zero_end = std::min(new_size, std::max((old + cs - 1) & ~(cs - 1), has_backing() ? backing_size_ : 0));
        if (zero_end > old)
            if (auto r = zero_range(old, zero_end, op::zero_unmap); !r) {
                header_.size = old;
                return r;
            }
        if (auto r = commit(true); !r) return r;
        if (auto r = check_io(file_.flush(), "flushing before the size changes"); !r) return r;
        return write_header();
    }

    /// Drops the L2 tables of L1 entries `first` and up (their entries were emptied first).
    void drop_l2_tables(std::uint64_t first) {
        for (std::uint64_t i = first; i < l1_.size(); ++i) {
            const std::uint64_t off = l1_[static_cast<std::size_t>(i)] & l2_bits::l1_offset_mask;
            if (!off) continue;
            if (l1_[static_cast<std::size_t>(i)] & l2_bits::copied) { // ours alone (else a snapshot keeps it)
                w_->dirty_l2.drop(*l2_cache_, off);
                l2_cache_->invalidate(off);
            }
            auto& idx = w_->l2_index;
            if (auto it = std::lower_bound(idx.begin(), idx.end(), off); it != idx.end() && *it == off) idx.erase(it);
            defer_release(off >> header_.cluster_bits, 1);
            l1_[static_cast<std::size_t>(i)] = 0;
            mark_l1(i);
        }
    }

    result<void> make_empty_impl() {
        if (auto r = zero_clusters(0, header_.size, op::full_discard); !r) return r;
        drop_l2_tables(0);
        w_->compressed_next = 0;
        if (auto r = commit(true); !r) return r;
        if (auto r = check_io(file_.flush(), "flushing the emptied image"); !r) return r;
        // Only now, with the emptying durable, may the image claim to read as zero.
        if (header_.version >= 3 && !geometry_.external_data) {
            qcow2::header h = header_;
            if (detail::name_all_zero_bit(h)) {
                h.autoclear_features |= features::all_zero::mask;
                const qcow2::header old = std::move(header_);
                header_ = std::move(h);
                if (auto r = write_header(); !r) {
                    header_ = old;
                    return r;
                }
                names_ = header_.feature_names();
            }
        }
        return truncate_unused();
    }

    // ------------------------------------------------------------ amend

    result<void> amend_impl(const amend_options& o, unsigned target) {
        if (target == 3 && header_.version == 2) {
            if (auto r = commit(true); !r) return r;
            if (auto r = check_io(file_.flush(), "flushing before the upgrade"); !r) return r;
            qcow2::header h = header_;
            h.version = 3;
            h.refcount_order = 4;
            h.unknown_fields = std::vector<std::byte>(7);
            detail::add_feature_names(h);
            lay_out_header(h);
            if (encoded_header_size(h) > cluster_size()) h.remove_extension(extension_type::feature_names), lay_out_header(h);
            if (auto r = swap_header(std::move(h)); !r) return r;
        }
        if (o.refcount_bits && *o.refcount_bits != header_.refcount_bits())
            if (auto r = change_refcount_width(static_cast<unsigned>(std::countr_zero(*o.refcount_bits))); !r) return r;
        if (o.data_file_raw && !*o.data_file_raw && data_file_raw()) {
            qcow2::header h = header_;
            h.autoclear_features &= ~features::raw_external_data::mask;
            if (auto r = swap_header(std::move(h)); !r) return r;
        }
        if (o.lazy_refcounts && header_.version >= 3) {
            const bool on = *o.lazy_refcounts;
            if (on != ((header_.compatible_features & features::lazy_refcounts::mask) != 0)) {
                // Turning them off: the refcounts must be written and the dirty bit gone first.
                if (auto r = commit(true); !r) return r;
                if (auto r = check_io(file_.flush(), "flushing before lazy refcounts change"); !r) return r;
                qcow2::header h = header_;
                h.compatible_features ^= features::lazy_refcounts::mask;
                if (!on) h.incompatible_features &= ~features::dirty::mask;
                if (auto r = swap_header(std::move(h)); !r) return r;
                w_->lazy = on;
                w_->marked_dirty = false;
            }
        }
        if (o.size && *o.size != header_.size) {
            if (*o.size % 512) return error{errc::invalid_argument, "the new size is not a multiple of 512"};
            if (auto r = resize_with_bitmaps(*o.size); !r) return r;
        }
        if (target == 2 && header_.version == 3) return downgrade();
        return {};
    }

    /// Writes `h` as the header (the file flushed before, the header flushed after); the
    /// header in memory follows only on success.
    result<void> swap_header(qcow2::header h) {
        qcow2::header old = std::move(header_);
        header_ = std::move(h);
        if (auto r = write_header(); !r) {
            header_ = std::move(old);
            return r;
        }
        names_ = header_.feature_names();
        return {};
    }

    /// Version 3 to 2: zero clusters expanded, then the version 2 header.
    result<void> downgrade() {
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t cs = cluster_size();
        const std::uint64_t ept = geometry_.entries_per_table();
        for (std::size_t i = 0; i < l1_.size(); ++i) {
            if (!(l1_[i] & l2_bits::l1_offset_mask)) continue;
            for (std::uint64_t k = 0; k < ept; ++k) {
                const std::uint64_t g = ((std::uint64_t{i} * ept) + k) << cb;
                if (g >= header_.size) break;
                auto slot = writable_l2(i);
                if (!slot) return slot.error();
                const std::uint64_t e = l2_entry(slot->first, k);
                l2_cache_->unpin(slot->second);
                if (!(e & l2_bits::zero) || (e & l2_bits::compressed)) continue;
                const bool backing = has_backing() && g < backing_size_;
                // Version 2 reads an unallocated cluster from the backing file: only there
                // must the zeroes be written.
                std::uint64_t ne = 0;
                if (backing || owned(e)) {
                    // The host cluster is written with zeroes: its own when it is this
                    // image's alone, else a new one.
                    std::uint64_t host = owned(e) ? (e & l2_bits::offset_mask) : 0;
                    if (!host) {
                        auto run = allocate_clusters(1, true);
                        if (!run) return run.error();
                        host = run->first << cb;
                    }
                    if (auto r = write_host(host, std::span(w_->zeros).first(static_cast<std::size_t>(cs))); !r) return r;
                    ne = host | l2_bits::copied;
                }
                auto again = writable_l2(i);
                if (!again) return again.error();
                set_l2(again->first, again->second, k, ne, 0);
                l2_cache_->unpin(again->second);
                if (!owned(e) && (e & l2_bits::offset_mask)) drop_reference(e);
            }
        }
        if (auto r = commit(true); !r) return r;
        if (auto r = check_io(file_.flush(), "flushing before the downgrade"); !r) return r;
        qcow2::header h = header_;
        h.version = 2;
        h.incompatible_features = h.compatible_features = h.autoclear_features = 0;
        h.refcount_order = 4;
        h.compression_type = 0;
        h.remove_extension(extension_type::feature_names);
        lay_out_header(h); // version 2: 72 bytes of fields, unknown fields dropped
        if (auto r = swap_header(std::move(h)); !r) return r;
        geometry_.version2 = true;
        w_->lazy = false;
        w_->marked_dirty = false;
        return {};
    }

    /// A new refcount structure of refcount_order `order` (what the metadata references,
    /// counted again), the header switched to it, the old one freed; through `check`'s rebuild.
    result<void> change_refcount_width(unsigned order) {
        if (auto r = retire_writer(); !r) return r;
        check_options co;
        co.repair = check_repair::all;
        co.refcount_order = order;
        auto rep = detail::check_and_repair(*this, co);
        if (!rep) return rep.error();
        if (header_.refcount_order != order)
            return error{errc::image_corrupt, "the new refcount structure could not be written"};
        return ensure_writer();
    }

    // ------------------------------------------------------------ snapshots

    /// The index of the snapshot whose id is `key`, else whose name is, as QEMU looks it up.
    result<std::size_t> find_snapshot(std::string_view key) const {
        for (std::size_t i = 0; i < snapshots_.size(); ++i)
            if (snapshots_[i].id == key) return i;
        for (std::size_t i = 0; i < snapshots_.size(); ++i)
            if (snapshots_[i].name == key) return i;
        return error{errc::invalid_argument, detail::cat("no snapshot with id or name '", key, "'")};
    }

    result<void> check_snapshot_create(std::string_view name, std::string_view id) const {
        using detail::cat;
        if (geometry_.external_data) return error{errc::not_supported, "images with an external data file cannot hold internal snapshots"};
        if (snapshots_.size() >= limits::max_snapshots) return error{errc::invalid_argument, "the image holds 65536 snapshots already"};
        if (name.size() > 0xFFFF || id.size() > 0xFFFF) return error{errc::invalid_argument, "a snapshot name or id is over 65535 bytes"};
        // As QEMU: ids are unique, names need not be (lookups try ids first, then the first name).
        for (const auto& sn : snapshots_)
            if (!id.empty() && sn.id == id) return error{errc::invalid_argument, cat("a snapshot with id '", id, "' exists already")};
        if (w_->rc.max_refcount() < 2)
            return error{errc::refcount_overflow, "1-bit refcounts cannot count the references a snapshot adds"};
        return {};
    }

    /**
     * Calls `f(first_cluster, count)` for every host cluster run the L1 table `l1` refers to:
     * each L2 table, and in it each data, preallocated zero and compressed cluster (not the
     * data clusters of an external data file, which are not refcounted). Stops at the first
     * error `f` returns; `limit` stops it after that many calls (the rest is not visited).
     */
    template <class F>
    result<std::uint64_t> for_each_reference(std::span<const std::uint64_t> l1, F&& f, std::uint64_t limit = ~std::uint64_t{0}) {
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t ept = geometry_.entries_per_table();
        std::uint64_t calls = 0;
        for (std::size_t i = 0; i < l1.size(); ++i) {
            const std::uint64_t l2 = l1[i] & l2_bits::l1_offset_mask;
            if (!l2) continue;
            if (calls == limit) return calls;
            if (auto r = f(l2 >> cb, std::uint64_t{1}); !r) return r.error();
            ++calls;
            auto t = l2_table(l2, i);
            if (!t) return t.error();
            std::vector<std::byte, byte_alloc> table(t->begin(), t->end(), byte_alloc(alloc_)); // f may use the cache
            for (std::uint64_t k = 0; k < ept; ++k) {
                const std::uint64_t e = l2_entry(table, k);
                std::uint64_t first = 0, count = 0;
                if (e & l2_bits::compressed) {
                    const compressed_extent c = decode_compressed(e, cb);
                    first = c.offset >> cb;
                    count = ((c.offset + c.size - 1) >> cb) - first + 1;
                } else if ((e & l2_bits::offset_mask) && !geometry_.external_data) {
                    first = (e & l2_bits::offset_mask) >> cb;
                    count = 1;
                }
                if (!count) continue;
                if (calls == limit) return calls;
                if (auto r = f(first, count); !r) return r.error();
                ++calls;
            }
        }
        return calls;
    }

    /// Adds one reference to everything `l1` refers to, all or nothing.
    result<void> reference_all(std::span<const std::uint64_t> l1) {
        std::uint64_t made = 0;
        auto done = for_each_reference(l1, [&](std::uint64_t c, std::uint64_t n) {
            auto r = w_->rc.update(file_, c, n, 1);
            if (r) ++made;
            return r;
        });
        if (done) return {};
        // Undo the references made before the failure (nothing refers to them yet).
        (void)for_each_reference(l1, [&](std::uint64_t c, std::uint64_t n) { return w_->rc.update(file_, c, n, -1); }, made);
        return done.error();
    }

    /// Sets the COPIED flags of the active L1 and L2 entries to what the refcounts say (QEMU's
    /// `qcow2_update_snapshot_refcount` with addend 0).
    result<void> recompute_copied() {
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t ept = geometry_.entries_per_table();
        for (std::size_t i = 0; i < l1_.size(); ++i) {
            const std::uint64_t l2 = l1_[i] & l2_bits::l1_offset_mask;
            if (!l2) continue;
            auto rc = w_->rc.get(file_, l2 >> cb);
            if (!rc) return rc.error();
            const bool own = *rc == 1;
            if (own != ((l1_[i] & l2_bits::copied) != 0)) {
                l1_[i] = own ? l1_[i] | l2_bits::copied : l1_[i] & ~l2_bits::copied;
                mark_l1(i);
            }
            if (auto r = make_room(); !r) return r;
            auto t = l2_table(l2, i);
            if (!t) return t.error();
            l2_cache_->pin(l2);
            result<void> r;
            for (std::uint64_t k = 0; k < ept && r; ++k) {
                const std::uint64_t e = l2_entry(*t, k);
                if ((e & l2_bits::compressed) || !(e & l2_bits::offset_mask) || geometry_.external_data) continue;
                auto d = w_->rc.get(file_, (e & l2_bits::offset_mask) >> cb);
                if (!d) {
                    r = d.error();
                    break;
                }
                const bool mine = *d == 1;
                if (mine != ((e & l2_bits::copied) != 0)) set_l2(*t, l2, k, mine ? e | l2_bits::copied : e & ~l2_bits::copied, l2_bitmap(*t, k));
            }
            l2_cache_->unpin(l2);
            if (!r) return r;
        }
        return {};
    }

    /// Writes `entries` as the snapshot table in new clusters, points the header at it (12
    /// bytes at 60, between flushes) and releases the old table.
    result<void> replace_snapshot_table(std::vector<snapshot_entry> entries) {
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t cs = cluster_size();
        const std::uint64_t bytes = snapshot_table_size(entries);
        std::uint64_t at = 0;
        if (bytes) {
            auto run = allocate_clusters(detail::div_round_up(bytes, cs), true);
            if (!run) return run.error();
            at = run->first << cb;
            std::vector<std::byte> raw = encode_snapshot_table(entries);
            raw.resize(static_cast<std::size_t>(detail::div_round_up(bytes, cs) * cs));
            if (auto r = write_meta(at, raw, "writing the snapshot table"); !r) return r;
        }
        if (auto r = commit(true); !r) return r;
        if (auto r = check_io(file_.flush(), "flushing the new snapshot table"); !r) return r;
        std::byte h[12];
        detail::store_be32(h, 0, static_cast<std::uint32_t>(entries.size()));
        detail::store_be64(h, 4, at);
        if (auto r = write_meta(60, h, "pointing the header at the new snapshot table"); !r) return r;
        if (auto r = check_io(file_.flush(), "flushing the header"); !r) return r;
        const std::uint64_t old_at = header_.snapshots_offset, old_bytes = snapshot_table_size(snapshots_);
        header_.nb_snapshots = static_cast<std::uint32_t>(entries.size());
        header_.snapshots_offset = at;
        snapshots_ = std::move(entries);
        rebuild_metadata_index();
        if (old_bytes) defer_release(old_at >> cb, detail::div_round_up(old_bytes, cs));
        return {};
    }

    /// Reads the L1 table of a snapshot.
    result<std::vector<std::uint64_t, u64_alloc>> read_snapshot_l1(const snapshot_entry& sn) {
        std::vector<std::byte, byte_alloc> raw(static_cast<std::size_t>(sn.l1_size) * 8, byte_alloc(alloc_));
        if (auto r = detail::read_zero_padded(file_, file_size_, sn.l1_table_offset, raw, "reading a snapshot's L1 table"); !r)
            return r.error();
        std::vector<std::uint64_t, u64_alloc> l1(sn.l1_size, u64_alloc(alloc_));
        for (std::size_t i = 0; i < l1.size(); ++i) l1[i] = detail::load_be64(raw, i * 8);
        return l1;
    }

    result<void> create_snapshot_impl(std::string_view name, std::string_view id, std::uint32_t date_sec, std::uint32_t date_nsec) {
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t cs = cluster_size();
        if (auto r = commit(true); !r) return r;
        // The copy of the L1 table (as it is, COPIED flags included, as QEMU copies it).
        snapshot_entry sn;
        sn.l1_size = header_.l1_size;
        if (sn.l1_size) {
            auto run = allocate_clusters(detail::div_round_up(std::uint64_t{sn.l1_size} * 8, cs), true);
            if (!run) return run.error();
            sn.l1_table_offset = run->first << cb;
            std::vector<std::byte, byte_alloc> raw(static_cast<std::size_t>(detail::div_round_up(std::uint64_t{sn.l1_size} * 8, cs) * cs),
                                                   std::byte{0}, byte_alloc(alloc_));
            for (std::size_t i = 0; i < l1_.size(); ++i) detail::store_be64(raw, i * 8, l1_[i]);
            if (auto r = guard(sn.l1_table_offset, raw.size()); !r) return r;
            if (auto r = write_meta(sn.l1_table_offset, raw, "writing a snapshot's L1 table"); !r) return r;
        }
        // One more reference to everything the disk uses; then nothing of it is this image's alone.
        if (auto r = reference_all(l1_); !r) {
            if (sn.l1_size) release_unused({sn.l1_table_offset >> cb, detail::div_round_up(std::uint64_t{sn.l1_size} * 8, cs)});
            return r;
        }
        if (auto r = recompute_copied(); !r) return r;
        // The entry: QEMU's 24 bytes of extra data (no VM state, the disk size, an instruction
        // count of 0, as qemu-img stores it).
        std::uint64_t next = 1;
        for (const auto& s : snapshots_) {
            std::uint64_t v = 0;
            const bool numeric = !s.id.empty() && std::all_of(s.id.begin(), s.id.end(), [](char c) { return c >= '0' && c <= '9'; });
            if (numeric && s.id.size() < 19) v = std::stoull(s.id);
            next = std::max(next, v + 1);
        }
        sn.id = id.empty() ? detail::dec(next) : std::string(id);
        sn.name = std::string(name);
        sn.date_sec = date_sec;
        sn.date_nsec = date_nsec;
        sn.extra.resize(24);
        detail::store_be64(sn.extra, 0, 0);
        detail::store_be64(sn.extra, 8, header_.size);
        detail::store_be64(sn.extra, 16, 0);
        std::vector<snapshot_entry> entries = snapshots_;
        entries.push_back(std::move(sn));
        if (auto r = replace_snapshot_table(std::move(entries)); !r) return r;
        if (auto r = commit(true); !r) return r;
        return check_io(file_.flush(), "flushing the image");
    }

    result<void> delete_snapshot_impl(std::size_t index) {
        const unsigned cb = header_.cluster_bits;
        if (auto r = commit(true); !r) return r;
        const snapshot_entry sn = snapshots_[index];
        auto l1 = read_snapshot_l1(sn);
        if (!l1) return l1.error();
        std::vector<snapshot_entry> entries = snapshots_;
        entries.erase(entries.begin() + static_cast<std::ptrdiff_t>(index));
        if (auto r = replace_snapshot_table(std::move(entries)); !r) return r;
        // The header no longer names the snapshot: its references go (after the next commit, in order).
        auto walked = for_each_reference(*l1, [&](std::uint64_t c, std::uint64_t n) {
            defer_release(c, n);
            return result<void>{};
        });
        if (!walked) return walked.error();
        if (sn.l1_size) defer_release(sn.l1_table_offset >> cb, detail::div_round_up(std::uint64_t{sn.l1_size} * 8, cluster_size()));
        if (auto r = commit(true); !r) return r; // releases applied: refcounts final
        if (auto r = recompute_copied(); !r) return r;
        if (auto r = commit(true); !r) return r;
        return check_io(file_.flush(), "flushing the image");
    }

    result<void> apply_snapshot_impl(std::size_t index) {
        const snapshot_entry sn = snapshots_[index];
        const auto size = sn.disk_size();
        if (size && *size != header_.size && *size % 512)
            return error{errc::image_corrupt, "the snapshot's disk size is not a multiple of 512"};
        if (auto r = commit(true); !r) return r;
        auto l1 = read_snapshot_l1(sn);
        if (!l1) return l1.error();
        // The snapshot's clusters take their new reference first: a refusal (refcount_overflow)
        // then leaves the image as it was, the size included. (QEMU resizes first.)
        if (auto r = reference_all(*l1); !r) return r;
        // The disk takes the snapshot's size (newer QEMU resizes too; an old entry without it keeps the size).
        if (size && *size != header_.size)
            if (auto r = resize_impl(*size); !r) return r; // the references made are leaks, never corruption
        if (auto r = commit(true); !r) return r;
        if (l1->size() > l1_.size())
            if (auto r = grow_l1(l1->size()); !r) return r;
        // The old active references go once the new L1 table is durable.
        std::vector<std::uint64_t, u64_alloc> old(l1_.begin(), l1_.end(), u64_alloc(alloc_));
        std::fill(l1_.begin(), l1_.end(), 0);
        std::copy(l1->begin(), l1->end(), l1_.begin());
        mark_l1(0);
        mark_l1(l1_.size() - 1);
        auto walked = for_each_reference(old, [&](std::uint64_t c, std::uint64_t n) {
            defer_release(c, n);
            return result<void>{};
        });
        if (!walked) return walked.error();
        rebuild_metadata_index();
        if (auto r = commit(true); !r) return r;
        if (auto r = recompute_copied(); !r) return r;
        if (auto r = commit(true); !r) return r;
        return check_io(file_.flush(), "flushing the image");
    }

    // ------------------------------------------------------------ persistent bitmaps

    result<std::size_t> find_bitmap(std::string_view name) const {
        for (std::size_t i = 0; i < bitmaps_.size(); ++i)
            if (bitmaps_[i].name == name) return i;
        return error{errc::invalid_argument, detail::cat("Dirty bitmap '", name, "' not found")};
    }

    result<void> check_bitmap_modify() {
        if constexpr (!Features::template contains<features::bitmaps>)
            return error{errc::not_supported, "this image type does not maintain persistent bitmaps (its read-write open cleared them)"};
        return check_modify(0, 0);
    }

    /// A bitmap an operation may change: known and consistent (or kept up to date by this image).
    result<std::size_t> usable_bitmap(std::string_view name) {
        if (auto r = check_bitmap_modify(); !r) return r.error();
        auto i = find_bitmap(name);
        if (!i) return i.error();
        const bool tracked = std::any_of(tracked_.begin(), tracked_.end(), [&](const tracked_bitmap& t) { return t.name == name; });
        if ((bitmaps_[*i].flags & bitmap_flags::in_use) && !tracked)
            return error{errc::invalid_argument, detail::cat("Bitmap '", name, "' is inconsistent and cannot be used")};
        return i;
    }

    /// The bitmap table of `e` (entries checked for reserved bits and alignment).
    result<std::vector<std::uint64_t>> read_bitmap_table(const bitmap_entry& e) {
        using detail::cat;
        if (e.table_size > max_bitmap_table_entries || std::uint64_t{e.table_size} * cluster_size() > max_bitmap_data_bytes)
            return error{errc::invalid_bitmap_directory,
                         cat("bitmap '", e.name, "' has a bitmap table of ", detail::dec(e.table_size), " entries: too large")};
        std::vector<std::byte> raw(static_cast<std::size_t>(e.table_size) * 8);
        if (auto r = detail::read_zero_padded(file_, file_size_, e.table_offset, raw, "reading a bitmap table"); !r) return r.error();
        std::vector<std::uint64_t> t(e.table_size);
        for (std::size_t i = 0; i < t.size(); ++i) {
            t[i] = detail::load_be64(raw, i * 8);
            const std::uint64_t off = t[i] & bitmap_table_bits::offset_mask;
            if ((t[i] & bitmap_table_bits::reserved) || (off && ((t[i] & bitmap_table_bits::all_ones) || !detail::is_aligned(off, cluster_size()))))
                return error{errc::invalid_bitmap_directory,
                             cat("bitmap '", e.name, "': invalid bitmap table entry ", detail::hex(t[i]), " at index ", detail::dec(i))};
        }
        return t;
    }

    result<bitmap_bits> load_bitmap_bits(const bitmap_entry& e) {
        using detail::cat;
        using detail::dec;
        const std::uint64_t cs = cluster_size();
        bitmap_bits b;
        b.granularity = e.granularity();
        b.disk_size = header_.size;
        const std::uint64_t bytes = bitmap_data_bytes(header_.size, e.granularity_bits);
        const std::uint64_t need = detail::div_round_up(bytes, cs);
        if (e.table_size != need)
            return error{errc::invalid_bitmap_directory, cat("bitmap '", e.name, "' has a table of ", dec(e.table_size), " entries, a disk of ",
                                                             dec(header_.size), " bytes at granularity ", dec(b.granularity), " needs ", dec(need))};
        if (bytes > max_bitmap_data_bytes)
            return error{errc::no_memory, cat("bitmap '", e.name, "' holds ", dec(bytes), " bytes, over the 512 MiB limit")};
        auto t = read_bitmap_table(e);
        if (!t) return t.error();
        b.bytes.assign(static_cast<std::size_t>(bytes), 0);
        auto span = std::as_writable_bytes(std::span(b.bytes));
        for (std::size_t i = 0; i < t->size(); ++i) {
            const std::uint64_t at = std::uint64_t{i} * cs, n = std::min(cs, bytes - at);
            const std::uint64_t off = (*t)[i] & bitmap_table_bits::offset_mask;
            if (!off) {
                if ((*t)[i] & bitmap_table_bits::all_ones) std::memset(b.bytes.data() + at, 0xFF, static_cast<std::size_t>(n));
                continue;
            }
            if (off >= file_size_ || n > file_size_ - off)
                return error{errc::invalid_bitmap_directory, cat("bitmap '", e.name, "': data cluster at ", detail::hex(off), " lies past the end of the file")};
            if (auto r = io::read_exact(file_, off, span.subspan(static_cast<std::size_t>(at), static_cast<std::size_t>(n)), "reading bitmap data"); !r)
                return r.error();
        }
        if (const std::uint64_t tail = b.count() % 8; tail && !b.bytes.empty()) b.bytes.back() &= static_cast<std::uint8_t>((1u << tail) - 1);
        return b;
    }

    /// The clusters a bitmap uses: its data clusters (from its `table`) and its table.
    void release_bitmap(const bitmap_entry& e, std::span<const std::uint64_t> table) {
        const unsigned cb = header_.cluster_bits;
        for (const std::uint64_t t : table)
            if (const std::uint64_t off = t & bitmap_table_bits::offset_mask) defer_release(off >> cb, 1);
        if (e.table_size) defer_release(e.table_offset >> cb, detail::div_round_up(std::uint64_t{e.table_size} * 8, cluster_size()));
    }

    /// Writes `bits` in new clusters (data clusters only where a bit is set) and a new table
    /// pointing at them; `fresh` collects what was allocated. Returns the table's offset.
    result<std::uint64_t> write_bitmap_data(const bitmap_bits& bits, std::vector<cluster_run>& fresh) {
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t cs = cluster_size();
        const std::uint64_t entries = detail::div_round_up(bits.bytes.size(), cs);
        const std::uint64_t table_clusters = detail::div_round_up(std::max<std::uint64_t>(entries, 1) * 8, cs);
        std::vector<std::byte> table(static_cast<std::size_t>(table_clusters * cs));
        for (std::uint64_t i = 0; i < entries; ++i) {
            const std::uint64_t at = i * cs, n = std::min<std::uint64_t>(cs, bits.bytes.size() - at);
            const auto* p = bits.bytes.data() + at;
            if (std::all_of(p, p + n, [](std::uint8_t v) { return v == 0; })) continue;
            auto run = allocate_clusters(1, true);
            if (!run) return run.error();
            fresh.push_back(*run);
            std::fill(w_->buf.begin(), w_->buf.end(), std::byte{0});
            std::memcpy(w_->buf.data(), p, static_cast<std::size_t>(n));
            if (auto r = guard(run->first << cb, cs); !r) return r.error();
            if (auto r = write_meta(run->first << cb, std::span(w_->buf).first(static_cast<std::size_t>(cs)), "writing bitmap data"); !r)
                return r.error();
            detail::store_be64(table, static_cast<std::size_t>(i * 8), run->first << cb);
        }
        auto run = allocate_clusters(table_clusters, true);
        if (!run) return run.error();
        fresh.push_back(*run);
        if (auto r = guard(run->first << cb, table.size()); !r) return r.error();
        if (auto r = write_meta(run->first << cb, table, "writing a bitmap table"); !r) return r.error();
        return run->first << cb;
    }

    /// Writes `entries` as the bitmap directory in new clusters, makes it durable, switches the
    /// header's bitmaps extension (and autoclear bit) to it, and releases the old directory.
    /// No entries: the extension and the bit go.
    result<void> replace_bitmap_directory(std::vector<bitmap_entry> entries, std::vector<cluster_run>& fresh) {
        const unsigned cb = header_.cluster_bits;
        const std::uint64_t cs = cluster_size();
        qcow2::header h = header_;
        if (entries.empty()) {
            h.remove_extension(extension_type::bitmaps);
            h.autoclear_features &= ~features::bitmaps::mask;
        } else {
            std::vector<std::byte> raw = encode_bitmap_directory(entries);
            const std::uint64_t bytes = raw.size(), n = detail::div_round_up(bytes, cs);
            auto run = allocate_clusters(n, true);
            if (!run) return run.error();
            fresh.push_back(*run);
            raw.resize(static_cast<std::size_t>(n * cs));
            if (auto r = guard(run->first << cb, raw.size()); !r) return r;
            if (auto r = write_meta(run->first << cb, raw, "writing the bitmap directory"); !r) return r;
            h.set_extension(extension_type::bitmaps,
                            encode_bitmaps_extension({static_cast<std::uint32_t>(entries.size()), 0, bytes, run->first << cb}));
            h.autoclear_features |= features::bitmaps::mask;
        }
        lay_out_header(h);
        if (encoded_header_size(h) > cs) return error{errc::invalid_argument, "the bitmaps extension does not fit in cluster 0"};
        if (auto r = commit(true); !r) return r;
        if (auto r = check_io(file_.flush(), "flushing the new bitmap directory"); !r) return r;
        // A directory without the autoclear bit was left by a writer that did not maintain
        // it: its clusters may have been reused since (QEMU leaks them too).
        std::uint64_t old_at = 0, old_bytes = 0;
        if (const auto old = header_.bitmaps(); old && (header_.autoclear_features & features::bitmaps::mask)) {
            old_at = old->directory_offset;
            old_bytes = old->directory_size;
        }
        if (auto r = swap_header(std::move(h)); !r) return r;
        fresh.clear(); // referenced now
        if (old_bytes) defer_release(old_at >> cb, detail::div_round_up(old_bytes, cs));
        bitmaps_ = std::move(entries);
        rebuild_metadata_index();
        return {};
    }

    /// Runs `f` (allocating into `fresh`); on failure releases what it allocated and nothing references.
    template <class F>
    result<void> with_fresh(F&& f) {
        std::vector<cluster_run> fresh;
        result<void> r = f(fresh);
        if (!r)
            for (const auto& run : fresh) release_unused(run);
        if (!r) return r;
        if (auto c = commit(true); !c) return c;
        return check_io(file_.flush(), "flushing the image");
    }

    /// New tables for the bitmaps `which` of `entries` (bits `bits[k]` for `which[k]`), then the
    /// directory `entries` with them; the old tables and data clusters are released.
    result<void> rewrite_bitmaps(std::vector<bitmap_entry> entries, std::span<const std::size_t> which,
                                 std::span<const bitmap_bits* const> bits) {
        return with_fresh([&](std::vector<cluster_run>& fresh) -> result<void> {
            std::vector<std::pair<bitmap_entry, std::vector<std::uint64_t>>> old;
            for (std::size_t k = 0; k < which.size(); ++k) {
                bitmap_entry& e = entries[which[k]];
                auto t = read_bitmap_table(e);
                if (!t) return t.error();
                old.emplace_back(e, std::move(*t));
                auto at = write_bitmap_data(*bits[k], fresh);
                if (!at) return at.error();
                e.table_offset = *at;
                e.table_size = static_cast<std::uint32_t>(detail::div_round_up(bits[k]->bytes.size(), cluster_size()));
            }
            if (auto r = replace_bitmap_directory(std::move(entries), fresh); !r) return r;
            for (const auto& [e, t] : old) release_bitmap(e, t);
            return {};
        });
    }

    result<void> add_bitmap_impl(bitmap_entry e) {
        if (auto r = store_tracked(); !r) return r;
        return with_fresh([&](std::vector<cluster_run>& fresh) -> result<void> {
            bitmap_bits empty;
            empty.granularity = e.granularity();
            empty.disk_size = header_.size;
            empty.bytes.assign(static_cast<std::size_t>(bitmap_data_bytes(header_.size, e.granularity_bits)), 0);
            auto at = write_bitmap_data(empty, fresh);
            if (!at) return at.error();
            e.table_offset = *at;
            e.table_size = static_cast<std::uint32_t>(bitmap_table_entries(header_.size, e.granularity_bits, cluster_size()));
            std::vector<bitmap_entry> entries = bitmaps_;
            entries.push_back(std::move(e));
            return replace_bitmap_directory(std::move(entries), fresh);
        });
    }

    result<void> remove_bitmap_impl(std::string_view name) {
        if (auto r = store_tracked(); !r) return r;
        auto i = find_bitmap(name);
        if (!i) return i.error();
        const bitmap_entry e = bitmaps_[*i];
        auto t = read_bitmap_table(e);
        if (!t) return t.error();
        return with_fresh([&](std::vector<cluster_run>& fresh) -> result<void> {
            std::vector<bitmap_entry> entries = bitmaps_;
            entries.erase(entries.begin() + static_cast<std::ptrdiff_t>(*i));
            if (auto r = replace_bitmap_directory(std::move(entries), fresh); !r) return r;
            release_bitmap(e, *t);
            return {};
        });
    }

    result<void> clear_bitmap_impl(std::string_view name) {
        if (auto r = store_tracked(); !r) return r;
        auto i = find_bitmap(name);
        if (!i) return i.error();
        bitmap_bits empty;
        empty.granularity = bitmaps_[*i].granularity();
        empty.disk_size = header_.size;
        empty.bytes.assign(static_cast<std::size_t>(bitmap_data_bytes(header_.size, bitmaps_[*i].granularity_bits)), 0);
        const std::size_t which[] = {*i};
        const bitmap_bits* bits[] = {&empty};
        return rewrite_bitmaps(bitmaps_, which, bits);
    }

    result<void> enable_bitmap_impl(std::string_view name, bool enabled) {
        if (auto r = store_tracked(); !r) return r;
        auto i = find_bitmap(name);
        if (!i) return i.error();
        std::vector<bitmap_entry> entries = bitmaps_;
        const std::uint32_t flags = enabled ? entries[*i].flags | bitmap_flags::auto_ : entries[*i].flags & ~bitmap_flags::auto_;
        if (flags == entries[*i].flags) return {};
        entries[*i].flags = flags;
        return with_fresh([&](std::vector<cluster_run>& fresh) { return replace_bitmap_directory(std::move(entries), fresh); });
    }

    result<void> merge_bitmap_impl(std::string_view name, const bitmap_bits& source) {
        if (auto r = store_tracked(); !r) return r;
        auto i = find_bitmap(name);
        if (!i) return i.error();
        auto bits = load_bitmap_bits(bitmaps_[*i]);
        if (!bits) return bits.error();
        bits->merge(source);
        const std::size_t which[] = {*i};
        const bitmap_bits* b[] = {&*bits};
        return rewrite_bitmaps(bitmaps_, which, b);
    }

    /// Before the first guest write: the enabled bitmaps' bits into memory, and those bitmaps
    /// marked in use on disk (a crash from here on leaves them inconsistent, as in QEMU).
    result<void> track_bitmaps() {
        if constexpr (!Features::template contains<features::bitmaps>) return {};
        if (tracking_ || bitmaps_.empty()) return {};
        std::vector<tracked_bitmap> t;
        std::vector<bitmap_entry> entries = bitmaps_;
        for (auto& e : entries) {
            if (!(e.flags & bitmap_flags::auto_) || (e.flags & bitmap_flags::in_use)) continue;
            auto bits = load_bitmap_bits(e);
            if (!bits) return bits.error();
            t.push_back({e.name, std::move(*bits)});
            e.flags |= bitmap_flags::in_use;
        }
        if (!t.empty())
            if (auto r = with_fresh([&](std::vector<cluster_run>& fresh) { return replace_bitmap_directory(std::move(entries), fresh); }); !r)
                return r;
        tracked_ = std::move(t);
        tracking_ = true;
        return {};
    }

    /// A guest write of `[offset, offset + length)`: the enabled bitmaps' bits for it.
    void mark_bitmaps(std::uint64_t offset, std::uint64_t length) noexcept {
        for (auto& t : tracked_) t.bits.mark(offset, length);
    }

    result<void> begin_guest_change(std::uint64_t offset, std::uint64_t length) {
        if (auto r = guarded(track_bitmaps()); !r) return r;
        mark_bitmaps(offset, length);
        return {};
    }

    /// QEMU's conditions for resizing an image with bitmaps: none inconsistent, and every one
    /// within QEMU's table limits at the new size.
    result<void> check_bitmaps_resizable(std::uint64_t new_size) const {
        using detail::cat;
        for (const auto& b : bitmaps_) {
            const bool tracked = std::any_of(tracked_.begin(), tracked_.end(), [&](const tracked_bitmap& t) { return t.name == b.name; });
            if ((b.flags & bitmap_flags::in_use) && !tracked)
                return error{errc::invalid_argument, cat("Bitmap '", b.name, "' is inconsistent and cannot be used")};
            const std::uint64_t entries = bitmap_table_entries(new_size, b.granularity_bits, cluster_size());
            if (entries > max_bitmap_table_entries || entries * cluster_size() > max_bitmap_data_bytes)
                return error{errc::invalid_argument, cat("bitmap '", b.name, "' would need a bitmap table of ", detail::dec(entries),
                                                         " entries at the new size, over QEMU's limit")};
        }
        return {};
    }

    /// Resizes the disk with its bitmaps (as QEMU truncates them: new granules clean, those
    /// past the new end dropped). The bitmaps are marked in use before the size changes and
    /// stored at the new size after, so that a crash between leaves them inconsistent, never
    /// of the wrong size.
    result<void> resize_with_bitmaps(std::uint64_t new_size) {
        if (bitmaps_.empty()) return resize_impl(new_size);
        if (auto r = store_tracked(); !r) return r;
        std::vector<bitmap_bits> bits;
        for (const auto& b : bitmaps_) {
            auto x = load_bitmap_bits(b);
            if (!x) return x.error();
            bits.push_back(std::move(*x));
        }
        std::vector<bitmap_entry> entries = bitmaps_;
        for (auto& e : entries) e.flags |= bitmap_flags::in_use;
        if (auto r = with_fresh([&](std::vector<cluster_run>& fresh) { return replace_bitmap_directory(std::move(entries), fresh); }); !r)
            return r;
        if (auto r = resize_impl(new_size); !r) return r;
        entries = bitmaps_;
        std::vector<std::size_t> which;
        std::vector<const bitmap_bits*> ptrs;
        for (std::size_t i = 0; i < entries.size(); ++i) {
            bitmap_bits& b = bits[i];
            b.disk_size = new_size;
            b.bytes.resize(static_cast<std::size_t>(bitmap_data_bytes(new_size, entries[i].granularity_bits)), 0);
            if (const std::uint64_t tail = b.count() % 8; tail && !b.bytes.empty()) b.bytes.back() &= static_cast<std::uint8_t>((1u << tail) - 1);
            entries[i].flags &= ~bitmap_flags::in_use;
            which.push_back(i);
            ptrs.push_back(&b);
        }
        return rewrite_bitmaps(std::move(entries), which, ptrs);
    }

    /// Stores the bitmaps kept in memory and clears their in-use flags (what close does).
    result<void> store_tracked() {
        if (!tracking_) return {};
        if (tracked_.empty()) {
            tracking_ = false;
            return {};
        }
        std::vector<bitmap_entry> entries = bitmaps_;
        std::vector<std::size_t> which;
        std::vector<const bitmap_bits*> bits;
        for (const auto& t : tracked_) {
            auto i = find_bitmap(t.name);
            if (!i) return i.error();
            entries[*i].flags &= ~bitmap_flags::in_use;
            which.push_back(*i);
            bits.push_back(&t.bits);
        }
        if (auto r = rewrite_bitmaps(std::move(entries), which, bits); !r) return r;
        tracked_.clear();
        tracking_ = false;
        return {};
    }

    /// Maps the unallocated clusters of `[start, end)` to the same offsets of the data file.
    result<void> map_identity(std::uint64_t start, std::uint64_t end) {
        const std::uint64_t cs = cluster_size();
        const std::uint64_t coverage = header_.l1_entry_coverage();
        const std::uint64_t ept = geometry_.entries_per_table();
        for (std::uint64_t pos = start; pos < end;) {
            const std::uint64_t l1_index = pos / coverage;
            const std::uint64_t table_end = std::min(end, (l1_index + 1) * coverage);
            auto slot = writable_l2(l1_index);
            if (!slot) return slot.error();
            for (std::uint64_t p = pos; p < table_end; p += cs) {
                const std::uint64_t idx = (p >> header_.cluster_bits) & (ept - 1);
                if (l2_entry(slot->first, idx) == 0 && l2_bitmap(slot->first, idx) == 0)
                    set_l2(slot->first, slot->second, idx, p | l2_bits::copied, 0);
            }
            l2_cache_->unpin(slot->second);
            pos = table_end;
        }
        return {};
    }

    /// After shrinking, cuts the file after the last cluster in use.
    result<void> truncate_unused() {
        const unsigned cb = header_.cluster_bits;
        std::uint64_t n = detail::div_round_up(file_size_, cluster_size());
        while (n > 0) {
            auto rc = w_->rc.get(file_, n - 1);
            if (!rc) return rc.error();
            if (*rc) break;
            --n;
        }
        if ((n << cb) < file_size_) {
            if (auto r = check_io(file_.resize(n << cb), "truncating the image file"); !r) return r;
            file_size_ = n << cb;
        }
        return {};
    }

    // ----------------------------------------------------------------- creating

    /**
     * Writes a new image: header, refcount table, refcount blocks, L1 table and (with
     * preallocation) L2 tables, each in one pass, then the data area as preallocation asks.
     */
    static result<void> write_new_image(Backend& file, Backend* data, qcow2::header& h, const create_options& o,
                                        const Allocator& alloc) {
        using detail::store_be64;
        const std::uint64_t cs = h.cluster_size();
        const unsigned cb = h.cluster_bits;
        preallocation pre = o.prealloc;
        if (o.data_file_raw && pre == preallocation::off) pre = preallocation::metadata; // the data file must map 1:1
        const bool prealloc = pre != preallocation::off;
        const bool external = data != nullptr;
        const std::uint64_t l1 = h.l1_size;
        const std::uint64_t l1_clusters = detail::div_round_up(l1 * 8, cs);
        const std::uint64_t ept = cs / h.l2_entry_size();
        const std::uint64_t guest_clusters = detail::div_round_up(h.size, cs);
        const std::uint64_t l2_tables = prealloc ? l1 : 0;
        const std::uint64_t data_clusters = prealloc && !external ? guest_clusters : 0;
        const std::uint64_t epb = refcount_entries_per_block(cb, h.refcount_order);
        // The refcount structures must count themselves: a fixed point, as QEMU computes it.
        std::uint64_t blocks = 1, table = 1;
        for (;;) {
            const std::uint64_t n = 1 + table + blocks + l1_clusters + l2_tables + data_clusters;
            const std::uint64_t nb = detail::div_round_up(n, epb);
            const std::uint64_t nt = detail::div_round_up(nb * 8, cs);
            if (nb == blocks && nt == table) break;
            blocks = std::max(blocks, nb);
            table = std::max(table, nt);
        }
        if (table * cs > limits::max_refcount_table_bytes)
            return error{errc::refcount_table_too_large, "the new image's refcount table would exceed 8 MiB"};
        const std::uint64_t table_at = 1, blocks_at = table_at + table, l1_at = blocks_at + blocks, l2_at = l1_at + l1_clusters,
                            data_at = l2_at + l2_tables, total = data_at + data_clusters;
        if ((total << cb) > limits::max_host_offset) return error{errc::image_too_large, "the new image would pass 2^56 bytes"};
        h.refcount_table_offset = table_at << cb;
        h.refcount_table_clusters = static_cast<std::uint32_t>(table);
        h.l1_table_offset = l1_at << cb;

        auto put = [&](Backend& f, std::uint64_t off, std::span<const std::byte> b, std::string_view what) {
            return check_io(f.write_at(off, b), what);
        };
        if (auto r = check_io(file.resize(0), "truncating the new image file"); !r) return r;
        std::vector<std::byte, byte_alloc> buf(static_cast<std::size_t>(cs), byte_alloc(alloc));
        if (auto r = encode_header(h, buf); !r) return r;
        if (auto r = put(file, 0, buf, "writing the header"); !r) return r;
        // Refcount table, then blocks: clusters [0, total) have refcount 1.
        std::vector<std::byte, byte_alloc> big(static_cast<std::size_t>(std::max(table, l1_clusters) * cs), byte_alloc(alloc));
        std::fill(big.begin(), big.end(), std::byte{0});
        for (std::uint64_t j = 0; j < blocks; ++j) store_be64(big, j * 8, (blocks_at + j) << cb);
        if (auto r = put(file, table_at << cb, std::span(big).first(static_cast<std::size_t>(table * cs)), "writing the refcount table"); !r) return r;
        for (std::uint64_t j = 0; j < blocks; ++j) {
            std::fill(buf.begin(), buf.end(), std::byte{0});
            for (std::uint64_t k = 0; k < epb && j * epb + k < total; ++k) set_refcount(buf, k, h.refcount_order, 1);
            if (auto r = put(file, (blocks_at + j) << cb, buf, "writing a refcount block"); !r) return r;
        }
        // L1 table, then L2 tables.
        if (l1_clusters) {
            std::fill(big.begin(), big.end(), std::byte{0});
            if (prealloc)
                for (std::uint64_t i = 0; i < l1; ++i) store_be64(big, i * 8, ((l2_at + i) << cb) | l2_bits::copied);
            if (auto r = put(file, l1_at << cb, std::span(big).first(static_cast<std::size_t>(l1_clusters * cs)), "writing the L1 table"); !r)
                return r;
        }
        for (std::uint64_t i = 0; i < l2_tables; ++i) {
            std::fill(buf.begin(), buf.end(), std::byte{0});
            for (std::uint64_t k = 0; k < ept && i * ept + k < guest_clusters; ++k) {
                const std::uint64_t g = i * ept + k;
                const std::uint64_t host = external ? g << cb : (data_at + g) << cb;
                store_be64(buf, k * h.l2_entry_size(), host | l2_bits::copied);
            }
            if (auto r = put(file, (l2_at + i) << cb, buf, "writing an L2 table"); !r) return r;
        }
        // The data area.
        Backend& df = external ? *data : file;
        const std::uint64_t data_start = external ? 0 : data_at << cb;
        const std::uint64_t data_len = external ? h.size : data_clusters << cb;
        if (external)
            if (auto r = check_io(data->resize(0), "truncating the data file"); !r) return r;
        if (auto r = check_io(file.resize(std::max<std::uint64_t>(total << cb, l2_at << cb)), "sizing the image file"); !r) return r;
        if (external && !prealloc)
            if (auto r = check_io(data->resize(h.size), "sizing the data file"); !r) return r;
        if (prealloc && data_len) {
            if (pre == preallocation::full) {
                std::vector<std::byte, byte_alloc> z(static_cast<std::size_t>(std::min<std::uint64_t>(data_len, 1 << 20)), std::byte{0},
                                                     byte_alloc(alloc));
                for (std::uint64_t p = 0; p < data_len; p += z.size()) {
                    const std::uint64_t n = std::min<std::uint64_t>(z.size(), data_len - p);
                    if (auto r = put(df, data_start + p, std::span(z).first(static_cast<std::size_t>(n)), "preallocating (full)"); !r) return r;
                }
            } else if (pre == preallocation::falloc) {
                if constexpr (io::supports_preallocate<Backend>) {
                    if (auto r = check_io(df.preallocate(data_start, data_len), "preallocating (falloc)"); !r) return r;
                }
            }
            if (auto r = check_io(df.resize(data_start + data_len), "sizing the data area"); !r) return r;
        }
        if (external)
            if (auto r = check_io(data->flush(), "flushing the data file"); !r) return r;
        return check_io(file.flush(), "flushing the new image");
    }

    basic_image(Backend file, bool writable, const Allocator& alloc)
        : file_(std::move(file)), writable_(writable), alloc_(alloc), l1_(u64_alloc(alloc)) {}


    template <class Resolver>
    static result<basic_image> open_layer(Backend file, const open_options& opts, Resolver& resolve, const Allocator& alloc,
                                          std::size_t depth) {
        basic_image img(std::move(file), opts.writable && depth == 0, alloc);
        img.repair_mode_ = opts.repair && img.writable_;
        img.cache_bytes_ = opts.cache_bytes;
        if (auto r = img.load(); !r) return r.error();
        if (auto r = img.load_l1(opts); !r) return r.error();
        if (!opts.metadata_only)
            if (auto r = img.open_files(opts, resolve, depth); !r) return r.error();
        if (img.needs_repair_) {
            // As QEMU: a writable open of a dirty image rebuilds its refcounts from the metadata.
            check_options co;
            co.repair = check_repair::all;
            auto rep = detail::check_and_repair(img, co);
            if (!rep) return error(rep.error().code(), detail::cat("could not repair the dirty image: ", rep.error().message()));
            if (rep->check_errors) { // a read failed: report why, as QEMU reports the EIO
                const error why = rep->first_check_error.value_or(error{errc::io_error, "a refcount could not be read"});
                return error(why.code(), detail::cat("could not repair the dirty image: ", why.message()));
            }
            if (img.header_.incompatible_features & features::dirty::mask)
                return error{errc::image_corrupt, detail::cat("could not repair the dirty image: ", detail::dec(rep->corruptions),
                                                              " corruptions and ", detail::dec(rep->check_errors), " check errors remain")};
            img.needs_repair_ = false;
        }
        return img;
    }

    result<void> load_l1(const open_options& opts) {
        geometry_ = {header_.cluster_bits, header_.extended_l2(),
                     (header_.incompatible_features & features::external_data_file::mask) != 0, header_.version == 2};
        // A read-only image (every backing layer) keeps its L1 table as it is: it never has more
        // L2 tables than L1 entries, so its cache needs no more slots (a deep chain of small
        // images then does not take cache_bytes per layer).
        std::size_t cache_bytes = opts.cache_bytes;
        if (!writable_)
            cache_bytes = static_cast<std::size_t>(
                std::min<std::uint64_t>(cache_bytes, std::max<std::uint64_t>(header_.l1_size, 2) * cluster_size()));
        auto cache = basic_table_cache<Allocator>::make(cache_bytes, static_cast<std::size_t>(cluster_size()), alloc_);
        if (!cache) return cache.error();
        l2_cache_ = std::make_unique<basic_table_cache<Allocator>>(std::move(*cache));
        decompressor_.emplace(header_.compression_kind());
        if (header_.l1_size == 0) return {};
        if (header_.l1_table_offset > file_size_ || std::uint64_t{header_.l1_size} * 8 > file_size_ - header_.l1_table_offset)
            return error{errc::short_read, detail::cat("L1 table of ", detail::dec(header_.l1_size), " entries at host offset ",
                                                       detail::hex(header_.l1_table_offset), " lies past the end of the file (",
                                                       detail::dec(file_size_), " bytes)")};
        std::vector<std::byte, byte_alloc> raw(static_cast<std::size_t>(header_.l1_size) * 8, byte_alloc(alloc_));
        if (auto r = io::read_exact(file_, header_.l1_table_offset, raw, "reading the L1 table"); !r) return r;
        l1_.resize(header_.l1_size);
        for (std::size_t i = 0; i < l1_.size(); ++i) l1_[i] = detail::load_be64(raw, i * 8);
        return {};
    }

    template <class Resolver>
    result<void> open_files(const open_options& opts, Resolver& resolve, std::size_t depth) {
        using detail::cat;
        if (geometry_.external_data) {
            std::optional<std::string> name = depth == 0 && opts.data_file ? opts.data_file : header_.data_file();
            if (!name)
                return error{errc::invalid_extension,
                             "the image has an external data file but records no name; give one in open_options::data_file"};
            result<Backend> f = resolve(file_request{*name, file_role::data_file, depth, writable_});
            if (!f) return error(f.error().code(), cat("opening the data file '", *name, "': ", f.error().message()));
            data_file_.emplace(std::move(*f));
            if (auto n = io::size_of(*data_file_); n) data_file_size_ = *n;
            else return n.error();
        }
        if (!has_backing()) return {};
        if (depth + 1 >= opts.max_chain_depth)
            return error{errc::invalid_argument, cat("backing chain deeper than ", detail::dec(opts.max_chain_depth),
                                                     " images (at '", header_.backing_file, "')")};
        result<Backend> f = resolve(file_request{header_.backing_file, file_role::backing, depth, false});
        if (!f) return error(f.error().code(), cat("opening the backing file '", header_.backing_file, "': ", f.error().message()));
        std::string format = header_.backing_format().value_or("");
        if (format.empty()) { // QEMU probes; of the formats read here, only qcow2 has a signature
            std::byte magic[4]{};
            std::uint64_t n = 0;
            format = !f->size(n) && n >= 4 && !f->read_at(0, magic) && detail::load_be32(magic, 0) == header_magic ? "qcow2" : "raw";
        }
        if (format == "raw") {
            auto n = io::size_of(*f);
            if (!n) return n.error();
            // QEMU sees a raw file as whole 512-byte sectors; the tail past the file reads as zeroes.
            backing_raw_size_ = *n;
            backing_size_ = (*n + 511) & ~std::uint64_t{511};
            backing_raw_.emplace(std::move(*f));
            return {};
        }
        if (format != "qcow2")
            return error{errc::not_supported, cat("backing file '", header_.backing_file, "' has format '", format,
                                                  "'; only qcow2 and raw are read")};
        open_options sub = opts;
        sub.writable = false;
        auto b = open_layer(std::move(*f), sub, resolve, alloc_, depth + 1);
        if (!b) return error(b.error().code(), cat("in backing file '", header_.backing_file, "': ", b.error().message()));
        backing_size_ = b->size();
        backing_qcow2_ = std::make_unique<basic_image>(std::move(*b));
        return {};
    }

    /// The L2 table at `l2_offset`, through the cache, checked against the file.
    result<std::span<std::byte>> l2_table(std::uint64_t l2_offset, std::uint64_t l1_index) {
        using detail::cat;
        using detail::dec;
        using detail::hex;
        if (!detail::is_aligned(l2_offset, cluster_size()))
            return error{errc::misaligned_offset, cat("L2 table offset ", hex(l2_offset), " is not cluster aligned (L1 index ",
                                                      dec(l1_index), ")")};
        if (!l2_cache_->contains(l2_offset) && (l2_offset > file_size_ || cluster_size() > file_size_ - l2_offset))
            return error{errc::short_read, cat("L2 table at host offset ", hex(l2_offset), " (L1 index ", dec(l1_index),
                                               ") lies past the end of the file (", dec(file_size_), " bytes)")};
        return l2_cache_->get(l2_offset, [&](std::span<std::byte> dst) {
            return io::read_exact(file_, l2_offset, dst, cat("reading the L2 table of L1 index ", dec(l1_index)));
        });
    }

    /// Reads host data of guest clusters; bytes past the end of the file read as zeroes
    /// (the last cluster of a file may be partly written, as QEMU's own reads allow).
    result<void> read_host(std::uint64_t host, std::span<std::byte> dst) {
        Backend& f = data_file_ ? *data_file_ : file_;
        const std::uint64_t size = data_file_ ? data_file_size_ : file_size_;
        const std::uint64_t avail = host >= size ? 0 : std::min<std::uint64_t>(dst.size(), size - host);
        if (avail) {
            auto r = io::read_exact(f, host, dst.first(static_cast<std::size_t>(avail)), "reading guest data");
            if (!r) return r;
        }
        std::memset(dst.data() + avail, 0, dst.size() - static_cast<std::size_t>(avail));
        return {};
    }

    result<void> read_backing(std::uint64_t guest, std::span<std::byte> dst) {
        if (!has_backing()) {
            std::memset(dst.data(), 0, dst.size());
            return {};
        }
        if (!backing_qcow2_ && !backing_raw_)
            return error{errc::not_supported, "reading unallocated clusters of an image opened metadata-only"};
        // Beyond the backing image's end the guest reads zeroes.
        const std::uint64_t avail = guest >= backing_size_ ? 0 : std::min<std::uint64_t>(dst.size(), backing_size_ - guest);
        if (avail) {
            auto part = dst.first(static_cast<std::size_t>(avail));
            if (backing_qcow2_) {
                if (auto r = backing_qcow2_->read(guest, part); !r) return r;
            } else {
                const std::uint64_t in_file = guest >= backing_raw_size_ ? 0 : std::min<std::uint64_t>(avail, backing_raw_size_ - guest);
                if (in_file)
                    if (auto r = io::read_exact(*backing_raw_, guest, part.first(static_cast<std::size_t>(in_file)),
                                                "reading the raw backing file");
                        !r)
                        return r;
                std::memset(part.data() + in_file, 0, part.size() - static_cast<std::size_t>(in_file));
            }
        }
        std::memset(dst.data() + avail, 0, dst.size() - static_cast<std::size_t>(avail));
        return {};
    }

    result<void> read_compressed(const mapping& m, std::uint64_t guest, std::span<std::byte> dst) {
        const std::uint64_t cs = cluster_size();
        if (compressed_host_ != m.host_offset || cluster_buf_.empty()) {
            if (m.host_offset >= file_size_)
                return error{errc::short_read, detail::cat("compressed cluster at host offset ", detail::hex(m.host_offset),
                                                           " for guest offset ", detail::dec(guest),
                                                           " lies past the end of the file (", detail::dec(file_size_), " bytes)")};
            cluster_buf_.resize(static_cast<std::size_t>(cs));
            // The descriptor may overstate by up to 511 bytes and run past the end of the file:
            // read what exists (the codec stops once one cluster is produced).
            const std::uint64_t n = std::min(m.compressed_size, file_size_ - m.host_offset);
            compressed_buf_.resize(static_cast<std::size_t>(n));
            if (auto r = io::read_exact(file_, m.host_offset, compressed_buf_, "reading a compressed cluster"); !r) return r;
            compressed_host_ = ~std::uint64_t{0};
            if (auto r = decompressor_->decompress(compressed_buf_, cluster_buf_); !r)
                return error(r.error().code(), detail::cat("compressed cluster at host offset ", detail::hex(m.host_offset),
                                                           " for guest offset ", detail::dec(guest), ": ", r.error().message()));
            compressed_host_ = m.host_offset;
        }
        std::memcpy(dst.data(), cluster_buf_.data() + (guest & (cs - 1)), dst.size());
        return {};
    }

    result<void> load() {
        auto file_size = io::size_of(file_);
        if (!file_size) return file_size.error();
        file_size_ = *file_size;
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
        if (writable_ && !repair_mode_ && (header_.incompatible_features & features::corrupt::mask))
            return error{errc::image_corrupt, "the corrupt bit is set; open read-only or repair the image first"};
        // A dirty image (lazy refcounts left unclean) is repaired once it is open (open_layer).
        needs_repair_ = writable_ && !repair_mode_ && (header_.incompatible_features & features::dirty::mask);
        if (auto r = load_snapshots(*file_size); !r) return r;
        if (auto r = load_bitmaps(*file_size); !r) return r;
        if (writable_ && !repair_mode_) {
            const std::uint64_t keep = autoclear_to_keep<Features>(header_.autoclear_features, names_);
            if (keep != header_.autoclear_features) {
                header_.autoclear_features = keep;
                if (!(keep & features::bitmaps::mask)) bitmaps_.clear(); // inconsistent from now on
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
        sync_refcount_fields();
        std::vector<std::byte> buf(static_cast<std::size_t>(cluster_size()));
        if (auto r = encode_header(header_, buf); !r) return r;
        if (auto r = check_io(file_.write_at(0, buf), "writing the header"); !r) return r;
        // The file only (not `flush`, which would also write the caches' metadata).
        return check_io(file_.flush(), "flushing the header");
    }

    Backend file_;
    bool writable_ = false;
    bool repair_mode_ = false;
    bool needs_repair_ = false;
    [[no_unique_address]] Allocator alloc_;
    std::uint64_t file_size_ = 0;
    l2_geometry geometry_;
    std::vector<std::uint64_t, u64_alloc> l1_;
    std::unique_ptr<basic_table_cache<Allocator>> l2_cache_;
    std::optional<codec::cluster_decompressor> decompressor_;
    std::vector<std::byte, byte_alloc> compressed_buf_{byte_alloc(alloc_)};
    std::vector<std::byte, byte_alloc> cluster_buf_{byte_alloc(alloc_)};
    std::uint64_t compressed_host_ = ~std::uint64_t{0};
    std::optional<Backend> data_file_;
    std::uint64_t data_file_size_ = 0;
    std::unique_ptr<basic_image> backing_qcow2_;
    std::optional<Backend> backing_raw_;
    std::uint64_t backing_raw_size_ = 0;
    std::uint64_t backing_size_ = 0;
    qcow2::header header_;
    std::vector<feature_name_entry> names_;
    std::vector<snapshot_entry> snapshots_;
    std::vector<bitmap_entry> bitmaps_;
    /// An enabled bitmap whose bits this image keeps up to date while it writes.
    struct tracked_bitmap {
        std::string name;
        bitmap_bits bits;
    };
    std::vector<tracked_bitmap> tracked_;
    bool tracking_ = false; ///< the enabled bitmaps are in `tracked_` (and marked in use on disk)
    std::size_t cache_bytes_ = std::size_t{1} << 20;
    std::unique_ptr<writer_state> w_;
};

} // inline namespace QCOW2_ABI_NAMESPACE

} // namespace qcow2
