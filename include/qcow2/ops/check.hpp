// SPDX-License-Identifier: MIT
/// @file
/// @brief `check`: QEMU's consistency check of an image's refcounts (`qemu-img check`, no repair).
///
/// Rebuilds the refcount every host cluster should have from all of the image's metadata,
/// as QEMU's `calculate_refcounts` does, compares it with the stored refcounts
/// (`compare_refcounts`) and checks the COPIED flags of the active tables
/// (`check_oflag_copied`). Counts and classification are QEMU 7.2's, so the report equals
/// what `qemu-img check --output=json` prints for the same file.
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/format/features.hpp"
#include "qcow2/format/header.hpp"
#include "qcow2/format/l2_entry.hpp"
#include "qcow2/format/refcount.hpp"
#include "qcow2/io/backend.hpp"
#include "qcow2/metadata/refcounts.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace qcow2 {

/// What `check` found, with the fields of QEMU's `BdrvCheckResult` (and `qemu-img check`'s keys).
struct check_report {
    std::uint64_t check_errors = 0;        ///< internal errors (a refcount that could not be read)
    std::uint64_t corruptions = 0;         ///< stored refcount below the references, bad entries, wrong COPIED flags
    std::uint64_t leaks = 0;               ///< stored refcount above the references
    std::uint64_t corruptions_fixed = 0;   ///< always 0 (repair is not built yet)
    std::uint64_t leaks_fixed = 0;         ///< always 0 (repair is not built yet)
    std::uint64_t image_end_offset = 0;    ///< (highest cluster with a stored or expected refcount + 1) * cluster size
    std::uint64_t total_clusters = 0;      ///< guest clusters: virtual size in clusters
    std::uint64_t allocated_clusters = 0;  ///< active L2 entries with a host cluster (data, preallocated zero, compressed)
    std::uint64_t fragmented_clusters = 0; ///< allocated clusters not following the previous one of their L2 table; compressed ones
    std::uint64_t compressed_clusters = 0; ///< active compressed clusters

    /// `qemu-img check`'s exit code: 1 check errors, 2 corruptions, 3 leaks only, 0 clean.
    constexpr int exit_code() const noexcept { return check_errors ? 1 : corruptions ? 2 : leaks ? 3 : 0; }
};

/// How `check` runs.
struct check_options {
    /// Largest in-memory refcount array accepted: `check` needs 2 bytes per host cluster of the
    /// file (4 with 32-bit refcounts, 8 with 64-bit ones); above this it fails with `errc::no_memory`.
    std::uint64_t max_memory_bytes = std::uint64_t{1} << 30;
    /// Memory for cached refcount blocks.
    std::size_t cache_bytes = std::size_t{1} << 20;
    /// Called with each problem found, in QEMU's words ("ERROR cluster 5 refcount=0 reference=1"); may be empty.
    std::function<void(std::string_view)> on_problem;
};

namespace detail {

template <class Image, class Counter>
class refcount_checker {
public:
    using Backend = typename Image::backend_type;

    refcount_checker(Image& img, const check_options& opts, basic_refcount_reader<Backend>& reader, std::uint64_t file_len,
                     std::vector<Counter>& counters)
        : img_(img), file_(img.backend()), opts_(opts), reader_(reader), h_(img.header()), file_len_(file_len),
          counters_(counters) {
        cb_ = h_.cluster_bits;
        cs_ = h_.cluster_size();
        nb_ = div_round_up(file_len_, cs_);
        max_ = std::min<std::uint64_t>(refcount_max(h_.refcount_order), std::numeric_limits<Counter>::max());
        external_ = (h_.incompatible_features & features::external_data_file::mask) != 0;
        extended_ = h_.extended_l2();
        l2_buf_.resize(static_cast<std::size_t>(cs_));
    }

    result<check_report> run() {
        rep_.total_clusters = div_round_up(h_.size / 512 * 512, cs_);
        if (auto r = calculate(); !r) return r.error();
        compare();
        if (auto r = check_oflag_copied(); !r) return r.error();
        rep_.image_end_offset = (highest_ + 1) * cs_;
        return rep_;
    }

private:
    enum class type { unallocated, zero_plain, zero_alloc, normal, compressed };

    void problem(std::string_view text) {
        if (opts_.on_problem) opts_.on_problem(text);
    }
    void corruption(std::string_view text) {
        ++rep_.corruptions;
        problem(text);
    }

    type classify_entry(std::uint64_t e) const noexcept {
        if (e & l2_bits::compressed) return type::compressed;
        if ((e & l2_bits::zero) && !extended_) return (e & l2_bits::offset_mask) ? type::zero_alloc : type::zero_plain;
        if (!(e & l2_bits::offset_mask)) return external_ && (e & l2_bits::copied) ? type::normal : type::unallocated;
        return type::normal;
    }

    /// QEMU `qcow2_inc_refcounts_imrt`.
    void inc(std::uint64_t offset, std::uint64_t size) {
        if (size == 0) return;
        // A region may end less than one cluster past the end of the file (a partly written last cluster).
        const auto end = checked_add(offset, size);
        if (!end || *end >= file_len_ + cs_) {
            corruption(cat("ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset ",
                           hex(offset), " size ", hex(size)));
            return;
        }
        const std::uint64_t first = offset >> cb_, last = (offset + size - 1) >> cb_;
        for (std::uint64_t k = first; k <= last; ++k) {
            if (k >= nb_) nb_ = k + 1; // at most one cluster past the file's: counters_ has room
            Counter& c = counters_[static_cast<std::size_t>(k)];
            if (c == max_) {
                corruption(cat("ERROR: overflow cluster offset=", hex(k << cb_)));
                continue;
            }
            ++c;
        }
    }

    result<std::vector<std::uint64_t>> read_l1(std::uint64_t offset, std::uint32_t entries) {
        std::vector<std::uint64_t> l1;
        // Entries past the end of the file read as zero: read (and keep) only those before it.
        const std::uint64_t avail = offset >= file_len_ ? 0 : (file_len_ - offset) / 8 + 1;
        const std::uint64_t n = std::min<std::uint64_t>(entries, avail);
        std::vector<std::byte> raw(static_cast<std::size_t>(n * 8));
        if (auto r = read_zero_padded(file_, file_len_, offset, raw, "reading an L1 table"); !r) return r.error();
        l1.resize(static_cast<std::size_t>(n));
        for (std::size_t i = 0; i < l1.size(); ++i) l1[i] = load_be64(raw, i * 8);
        return l1;
    }

    result<void> read_l2(std::uint64_t offset) {
        return read_zero_padded(file_, file_len_, offset, l2_buf_, "reading an L2 table");
    }

    std::uint64_t l2_entry(std::size_t i) const noexcept { return load_be64(l2_buf_, i * (extended_ ? 16 : 8)); }
    std::uint64_t l2_bitmap(std::size_t i) const noexcept { return extended_ ? load_be64(l2_buf_, i * 16 + 8) : 0; }
    std::size_t l2_entries() const noexcept { return static_cast<std::size_t>(cs_ / (extended_ ? 16 : 8)); }

    /// QEMU `check_refcounts_l2`.
    result<void> check_l2(std::uint64_t l2_offset, bool active) {
        if (auto r = read_l2(l2_offset); !r) return r;
        std::uint64_t next_contiguous = 0;
        for (std::size_t i = 0; i < l2_entries(); ++i) {
            std::uint64_t e = l2_entry(i);
            const std::uint64_t bitmap = l2_bitmap(i);
            const type t = classify_entry(e);
            if (t != type::compressed && (e & l2_bits::standard_reserved))
                corruption(cat("ERROR found l2 entry with reserved bits set: ", hex(e)));
            switch (t) {
            case type::compressed: {
                const unsigned x = 70 - cb_;
                if (e & l2_bits::copied) {
                    corruption(cat("ERROR: coffset=", hex(e & ((std::uint64_t{1} << x) - 1)),
                                   ": copied flag must never be set for compressed clusters"));
                    e &= ~l2_bits::copied;
                }
                if (external_) {
                    corruption(cat("ERROR compressed cluster ", dec(i), " with data file, entry=", hex(e)));
                    break;
                }
                if (bitmap) {
                    corruption(cat("ERROR compressed cluster ", dec(i), " with non-zero subcluster allocation bitmap, entry=", hex(e)));
                    break;
                }
                const compressed_extent c = decode_compressed(e, cb_);
                inc(c.offset, c.size);
                if (active) {
                    ++rep_.allocated_clusters;
                    ++rep_.compressed_clusters;
                    ++rep_.fragmented_clusters;
                }
                break;
            }
            case type::zero_alloc:
            case type::normal: {
                const std::uint64_t off = e & l2_bits::offset_mask;
                if ((bitmap >> 32) & bitmap)
                    corruption(cat("ERROR offset=", hex(off), ": Allocated cluster has corrupted subcluster allocation bitmap"));
                if (off & (cs_ - 1)) {
                    const bool data = extended_ ? (bitmap & 0xFFFFFFFFull) != 0 : !(e & l2_bits::zero);
                    corruption(data ? cat("ERROR offset=", hex(off), ": Data cluster is not properly aligned; L2 entry corrupted.")
                                    : cat("ERROR offset=", hex(off), ": Preallocated cluster is not properly aligned; L2 entry corrupted."));
                }
                if (active) {
                    ++rep_.allocated_clusters;
                    if (next_contiguous && off != next_contiguous) ++rep_.fragmented_clusters;
                    next_contiguous = off + cs_;
                }
                if (!external_) inc(off, cs_);
                break;
            }
            case type::zero_plain: break;
            case type::unallocated:
                if (bitmap & 0xFFFFFFFFull) corruption("ERROR: Unallocated cluster has non-zero subcluster allocation map");
                break;
            }
        }
        return {};
    }

    /// QEMU `check_refcounts_l1`.
    result<void> check_l1(std::uint64_t offset, std::uint32_t size, bool active) {
        if (size == 0) return {};
        inc(offset, std::uint64_t{size} * 8);
        auto l1 = read_l1(offset, size);
        if (!l1) return l1.error();
        for (const std::uint64_t e : *l1) {
            if (!e) continue;
            if (e & l2_bits::l1_reserved) corruption(cat("ERROR found L1 entry with reserved bits set: ", hex(e)));
            const std::uint64_t l2 = e & l2_bits::l1_offset_mask;
            inc(l2, cs_);
            if (l2 & (cs_ - 1)) corruption(cat("ERROR l2_offset=", hex(l2), ": Table is not cluster aligned; L1 entry corrupted"));
            if (auto r = check_l2(l2, active); !r) return r;
        }
        if (active) active_l1_ = std::move(*l1);
        return {};
    }

    /// QEMU `qcow2_check_bitmaps_refcounts`.
    result<void> check_bitmaps() {
        const auto& bms = img_.bitmaps();
        const auto ext = h_.bitmaps();
        if (bms.empty() || !ext) return {};
        inc(ext->directory_offset, ext->directory_size);
        for (const auto& bm : bms) {
            const std::uint64_t bytes = std::uint64_t{bm.table_size} * 8;
            inc(bm.table_offset, bytes);
            // QEMU refuses tables describing over 512 MiB of bitmap (so at most 8 MiB of table).
            if (bm.table_size == 0 || std::uint64_t{bm.table_size} * cs_ > (std::uint64_t{512} << 20)) {
                ++rep_.corruptions;
                return error{errc::invalid_bitmap_directory, cat("bitmap '", bm.name, "' has a bitmap table of ",
                                                                 dec(bm.table_size), " entries: too large")};
            }
            std::vector<std::byte> raw(static_cast<std::size_t>(bytes));
            if (auto r = read_zero_padded(file_, file_len_, bm.table_offset, raw, "reading a bitmap table"); !r) return r;
            for (std::size_t i = 0; i < bm.table_size; ++i) {
                const std::uint64_t e = load_be64(raw, i * 8);
                const std::uint64_t off = e & 0x00FFFFFFFFFFFE00ull;
                if ((e & 0xFF000000000001FEull) || (off && ((e & 1) || (off & (cs_ - 1))))) {
                    ++rep_.corruptions;
                    return error{errc::invalid_bitmap_directory,
                                 cat("bitmap '", bm.name, "': invalid bitmap table entry ", hex(e), " at index ", dec(i))};
                }
            }
            for (std::size_t i = 0; i < bm.table_size; ++i) {
                const std::uint64_t off = load_be64(raw, i * 8) & 0x00FFFFFFFFFFFE00ull;
                if (off) inc(off, cs_);
            }
        }
        return {};
    }

    /// QEMU `check_refblocks`.
    void check_refblocks() {
        const auto table = reader_.table();
        for (std::size_t i = 0; i < table.size(); ++i) {
            const std::uint64_t off = table[i] & reftable_bits::offset_mask;
            const std::uint64_t cluster = off >> cb_;
            if (table[i] & reftable_bits::reserved) {
                corruption(cat("ERROR refcount table entry ", dec(i), " has reserved bits set"));
                continue;
            }
            if (off & (cs_ - 1)) {
                corruption(cat("ERROR refcount block ", dec(i), " is not cluster aligned; refcount table entry corrupted"));
                continue;
            }
            if (cluster >= nb_) {
                corruption(cat("ERROR refcount block ", dec(i), " is outside image"));
                continue;
            }
            if (off) {
                inc(off, cs_);
                const std::uint64_t rc = counters_[static_cast<std::size_t>(cluster)];
                if (rc != 1) corruption(cat("ERROR refcount block ", dec(i), " refcount=", dec(rc)));
            }
        }
    }

    /// The snapshot table's size as QEMU computes it: every entry padded to 8 bytes but the last.
    std::uint64_t snapshots_size() const {
        std::uint64_t n = 0;
        const auto& s = img_.snapshots();
        for (std::size_t i = 0; i < s.size(); ++i)
            n += i + 1 < s.size() ? snapshot_entry_size(s[i]) : 40 + s[i].extra.size() + s[i].id.size() + s[i].name.size();
        return n;
    }

    /// QEMU `calculate_refcounts`.
    result<void> calculate() {
        inc(0, cs_);
        if (auto r = check_l1(h_.l1_table_offset, h_.l1_size, true); !r) return r;
        const auto& snaps = img_.snapshots();
        if (external_ && !snaps.empty()) corruption(cat("ERROR ", dec(snaps.size()), " snapshots in image with data file"));
        for (const auto& sn : snaps)
            if (auto r = check_l1(sn.l1_table_offset, sn.l1_size, false); !r) return r;
        inc(h_.snapshots_offset, snapshots_size());
        inc(h_.refcount_table_offset, std::uint64_t{h_.refcount_table_clusters} * cs_);
        if (const auto crypt = h_.encryption()) inc(crypt->offset, crypt->length);
        if (auto r = check_bitmaps(); !r) return r;
        check_refblocks();
        return {};
    }

    /// The stored refcount; QEMU reads a block past the end of the file as zeroes.
    result<std::uint64_t> stored(std::uint64_t cluster) {
        auto r = reader_.get(cluster);
        if (!r && r.error().code() == make_error_code(errc::short_read)) return std::uint64_t{0};
        return r;
    }

    /// QEMU `compare_refcounts`, one refcount block at a time.
    void compare() {
        const std::uint64_t per_block = reader_.entries_per_block();
        const unsigned order = h_.refcount_order;
        for (std::uint64_t start = 0; start < nb_; start += per_block) {
            const std::uint64_t end = std::min(nb_, start + per_block);
            auto b = reader_.block(start / per_block);
            const bool past_end = !b && b.error().code() == make_error_code(errc::short_read);
            for (std::uint64_t i = start; i < end; ++i) {
                std::uint64_t rc1 = 0;
                if (!b && !past_end) {
                    ++rep_.check_errors;
                    problem(cat("Can't get refcount for cluster ", dec(i), ": ", b.error().message()));
                    continue;
                }
                if (b && !b->empty()) rc1 = get_refcount(*b, i - start, order);
                const std::uint64_t rc2 = counters_[static_cast<std::size_t>(i)];
                if (rc1 || rc2) highest_ = i;
                if (rc1 != rc2) {
                    if (rc1 < rc2) ++rep_.corruptions;
                    else ++rep_.leaks;
                    problem(cat(rc1 < rc2 ? "ERROR" : "Leaked", " cluster ", dec(i), " refcount=", dec(rc1), " reference=", dec(rc2)));
                }
            }
        }
    }

    /// QEMU `check_oflag_copied` (without repair).
    result<void> check_oflag_copied() {
        for (std::size_t i = 0; i < active_l1_.size(); ++i) {
            const std::uint64_t e = active_l1_[i];
            const std::uint64_t l2 = e & l2_bits::l1_offset_mask;
            if (!l2) continue;
            auto rc = stored(l2 >> cb_);
            if (!rc) continue;
            if ((*rc == 1) != ((e & l2_bits::copied) != 0))
                corruption(cat("ERROR OFLAG_COPIED L2 cluster: l1_index=", dec(i), " l1_entry=", hex(e), " refcount=", dec(*rc)));
            if (auto r = read_l2(l2); !r) {
                ++rep_.check_errors;
                return r;
            }
            for (std::size_t j = 0; j < l2_entries(); ++j) {
                const std::uint64_t le = l2_entry(j);
                const type t = classify_entry(le);
                if (t != type::normal && t != type::zero_alloc) continue;
                std::uint64_t refcount = 1;
                if (!external_) {
                    auto s = stored((le & l2_bits::offset_mask) >> cb_);
                    if (!s) continue;
                    refcount = *s;
                }
                if ((refcount == 1) != ((le & l2_bits::copied) != 0))
                    corruption(cat("ERROR OFLAG_COPIED data cluster: l2_entry=", hex(le), " refcount=", dec(refcount)));
            }
        }
        return {};
    }

    Image& img_;
    Backend& file_;
    const check_options& opts_;
    basic_refcount_reader<Backend>& reader_;
    const header& h_;
    std::uint64_t file_len_;
    std::vector<Counter>& counters_;
    unsigned cb_ = 16;
    std::uint64_t cs_ = 0;
    std::uint64_t nb_ = 0;
    std::uint64_t max_ = 0;
    std::uint64_t highest_ = 0;
    bool external_ = false;
    bool extended_ = false;
    std::vector<std::byte> l2_buf_;
    std::vector<std::uint64_t> active_l1_;
    check_report rep_;
};

template <class Counter, class Image>
result<check_report> run_check(Image& img, const check_options& opts, basic_refcount_reader<typename Image::backend_type>& reader,
                               std::uint64_t file_len, std::uint64_t nb_clusters) {
    // One spare counter: a reference may end less than one cluster past the end of the file.
    const std::uint64_t count = nb_clusters + 1;
    if (count > opts.max_memory_bytes / sizeof(Counter))
        return error{errc::no_memory, cat("checking needs ", dec(count * sizeof(Counter)), " bytes of refcounts for ",
                                          dec(nb_clusters), " host clusters, over the limit of ", dec(opts.max_memory_bytes),
                                          " bytes")};
    std::vector<Counter> counters;
#if QCOW2_HAS_EXCEPTIONS
    try {
#endif
        counters.resize(static_cast<std::size_t>(count));
#if QCOW2_HAS_EXCEPTIONS
    } catch (...) {
        return error{errc::no_memory, cat("allocating ", dec(count * sizeof(Counter)), " bytes of refcounts")};
    }
#endif
    refcount_checker<Image, Counter> c(img, opts, reader, file_len, counters);
    return c.run();
}

} // namespace detail

/**
 * @brief Checks the refcounts of `img` as `qemu-img check` does (without repair).
 *
 * Rebuilds the expected refcount of every host cluster from all metadata (header, active
 * and snapshot L1 tables, every L2 table once per referencing L1 entry, data and compressed
 * clusters, the snapshot table, the refcount table and blocks, the bitmap directory, tables
 * and data, the LUKS header), compares it with the stored refcounts and checks the COPIED
 * flags of the active L1 and L2 entries. Problems are counted in the report (and passed to
 * `opts.on_problem`), not returned as errors. The image is not modified.
 *
 * @par Memory
 * One counter per host cluster of the file plus one: 2 bytes each for refcount widths up
 * to 16 bits, 4 for 32 and 8 for 64 (QEMU keeps the same array); refused above
 * `opts.max_memory_bytes`. Plus one cluster for L2 tables, the largest L1 table actually
 * in the file (at most 32 MiB), one bitmap table at a time (at most 8 MiB), the refcount
 * table (at most 8 MiB) and `opts.cache_bytes` of refcount blocks.
 * @par I/O
 * Reads every L1 table, every L2 table (active ones twice), the bitmap tables, the
 * refcount table and every refcount block (through the cache).
 * @par Errors
 * Only when the check cannot complete (QEMU's "Check failed"): `file_too_large` when the
 * file has more than 2^31 - 1 clusters, `no_memory`, `invalid_bitmap_directory` for a
 * bitmap table QEMU would refuse to load, the refcount table's errors
 * (`basic_refcount_reader::open`), I/O errors.
 */
template <class Image>
result<check_report> check(Image& img, const check_options& opts = {}) {
    using detail::cat;
    using detail::dec;
    auto len = io::size_of(img.backend());
    if (!len) return len.error();
    const std::uint64_t cs = img.cluster_size();
    const std::uint64_t nb = detail::div_round_up(*len, cs);
    if (nb > 0x7FFFFFFFull)
        return error{errc::file_too_large, cat("the image file has ", dec(nb), " clusters, more than QEMU checks (2^31 - 1)")};
    auto reader = basic_refcount_reader<typename Image::backend_type>::open(img.backend(), img.header(), opts.cache_bytes);
    if (!reader) return reader.error();
    const unsigned order = img.header().refcount_order;
    if (order <= 4) return detail::run_check<std::uint16_t>(img, opts, *reader, *len, nb);
    if (order == 5) return detail::run_check<std::uint32_t>(img, opts, *reader, *len, nb);
    return detail::run_check<std::uint64_t>(img, opts, *reader, *len, nb);
}

} // namespace qcow2
