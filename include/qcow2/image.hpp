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
#include "qcow2/metadata/table_cache.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
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
    /// Read only the metadata of this image: do not open backing or data files (guest
    /// reads then fail with `errc::not_supported`). What `info` needs.
    bool metadata_only = false;
    /// Memory for cached L2 tables, per image of the chain, in bytes (at least two tables are kept).
    std::size_t cache_bytes = std::size_t{1} << 20;
    /// Deepest backing chain accepted (the image itself is depth 0).
    std::size_t max_chain_depth = 128;
    /// External data file name, overriding the one recorded in the image (QEMU's data-file option).
    std::optional<std::string> data_file;
    /// Open for `check` with repair (QEMU's BDRV_O_CHECK): a writable open then accepts an
    /// image with the dirty or corrupt bit, and keeps every autoclear bit (repair rewrites
    /// only refcounts and COPIED flags, which no autoclear feature depends on).
    bool repair = false;
};

/// One run of a guest range in one layer of the chain, as `basic_image::map_range` reports it.
struct mapping {
    std::uint64_t guest_offset = 0;
    std::uint64_t length = 0;
    cluster_state state = cluster_state::unallocated; ///< never `invalid` (that is an error)
    bool has_host = false;        ///< a host range backs it (data, preallocated zero, reserved subclusters)
    std::uint64_t host_offset = 0; ///< host offset of `guest_offset` when `has_host`; compressed: the descriptor's byte offset
    std::uint64_t compressed_size = 0; ///< compressed: bytes to read at `host_offset`
};

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
    using backend_type = Backend;
    using features_type = Features;
    using allocator_type = Allocator;

    /**
     * @brief Opens the image in `file`, and through `resolve` its backing chain and data file.
     * @param resolve a `file_resolver` for `Backend`; the default refuses every other file, so
     *        an image with a backing or data file opens only with `metadata_only`.
     * @par Errors
     * Everything `decode_header` reports; `unknown_incompatible_feature` naming the bits (from
     * the image's feature name table when present); `image_corrupt` for a read-write open of
     * an image with the corrupt bit; `not_supported` for a read-write open of an image with the
     * dirty bit (repairing on open is not built: open with `open_options::repair` and run
     * `check` with repair); both are accepted with `open_options::repair`; `short_read` when the L1 table lies past the
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

    /// The backing image when it is a qcow2 image, else nullptr.
    const basic_image* backing_image() const noexcept { return backing_qcow2_.get(); }
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

    /// Makes every completed write durable.
    result<void> flush() { return check_io(file_.flush(), "flushing the image file"); }

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
        if (table.size() != cluster_size() || !detail::is_aligned(offset, cluster_size()))
            return error{errc::invalid_argument, detail::cat("L2 table write of ", detail::dec(table.size()), " bytes at ",
                                                             detail::hex(offset), ": not one aligned cluster")};
        if (l2_cache_) l2_cache_->invalidate(offset);
        return check_io(file_.write_at(offset, table), "writing an L2 table");
    }

    /**
     * @brief Points the header at a new refcount table: flushes, writes the 12 bytes of
     *        refcount_table_offset and refcount_table_clusters in one write, flushes.
     *
     * The new table and its blocks must already be written. Also refreshes the file size the
     * image checks metadata against (the new structures may have grown the file).
     * @par Errors
     * `read_only`; `misaligned_offset`; I/O errors (the header in memory is updated only on success).
     * @par I/O
     * Two flushes around one 12-byte write at byte 48.
     */
    result<void> replace_refcount_table(std::uint64_t offset, std::uint32_t clusters) {
        if (!writable_) return error{errc::read_only, "replacing the refcount table of an image opened read-only"};
        if (!detail::is_aligned(offset, cluster_size()))
            return error{errc::misaligned_offset, detail::cat("refcount table offset ", detail::hex(offset), " is not cluster aligned")};
        if (auto r = flush(); !r) return r;
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
    basic_image(Backend file, bool writable, const Allocator& alloc)
        : file_(std::move(file)), writable_(writable), alloc_(alloc), l1_(u64_alloc(alloc)) {}

    using u64_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::uint64_t>;
    using byte_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::byte>;

    template <class Resolver>
    static result<basic_image> open_layer(Backend file, const open_options& opts, Resolver& resolve, const Allocator& alloc,
                                          std::size_t depth) {
        basic_image img(std::move(file), opts.writable && depth == 0, alloc);
        img.repair_mode_ = opts.repair && img.writable_;
        if (auto r = img.load(); !r) return r.error();
        if (auto r = img.load_l1(opts); !r) return r.error();
        if (!opts.metadata_only)
            if (auto r = img.open_files(opts, resolve, depth); !r) return r.error();
        return img;
    }

    result<void> load_l1(const open_options& opts) {
        geometry_ = {header_.cluster_bits, header_.extended_l2(),
                     (header_.incompatible_features & features::external_data_file::mask) != 0, header_.version == 2};
        auto cache = basic_table_cache<Allocator>::make(opts.cache_bytes, static_cast<std::size_t>(cluster_size()), alloc_);
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
        if (l2_offset > file_size_ || cluster_size() > file_size_ - l2_offset)
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
        if (writable_ && !repair_mode_ && (header_.incompatible_features & features::dirty::mask))
            return error{errc::not_supported,
                         "the dirty bit is set (lazy refcounts); repairing on open is not built: open read-only, or open with open_options::repair and run check with repair"};
        if (auto r = load_snapshots(*file_size); !r) return r;
        if (auto r = load_bitmaps(*file_size); !r) return r;
        if (writable_ && !repair_mode_) {
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
    bool repair_mode_ = false;
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
};

} // inline namespace QCOW2_ABI_NAMESPACE

} // namespace qcow2
