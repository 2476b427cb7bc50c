// SPDX-License-Identifier: MIT
/// @file
/// @brief The refcount check and repair behind `qcow2::check` (ops/check.hpp), here because an
///        image opened for writing with the dirty bit set repairs itself with it, as QEMU does.
///
/// Rebuilds the refcount every host cluster should have from all of the image's metadata,
/// as QEMU's `calculate_refcounts` does, compares it with the stored refcounts
/// (`compare_refcounts`) and checks the COPIED flags of the active tables
/// (`check_oflag_copied`). Counts and classification are QEMU 7.2's, so the report equals
/// what `qemu-img check --output=json` prints for the same file. With repair, the stored
/// refcounts and COPIED flags are corrected as QEMU's `qcow2_check_refcounts` does, and
/// broken refcount structures are rebuilt (`rebuild_refcount_structure`).
#pragma once

#include "qcow2/all_zero.hpp"
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
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qcow2 {

/// What `check` found, with the fields of QEMU's `BdrvCheckResult` (and `qemu-img check`'s keys).
struct check_report {
    std::uint64_t check_errors = 0;        ///< internal errors (a refcount that could not be read)
    std::optional<error> first_check_error; ///< what went wrong at the first check error (not in qemu-img's report)
    std::uint64_t corruptions = 0;         ///< stored refcount below the references, bad entries, wrong COPIED flags
    std::uint64_t leaks = 0;               ///< stored refcount above the references
    std::uint64_t corruptions_fixed = 0;   ///< corruptions repaired (refcounts raised, COPIED flags, rebuilt structures)
    std::uint64_t leaks_fixed = 0;         ///< leaked clusters repaired (refcounts lowered)
    std::uint64_t image_end_offset = 0;    ///< (highest cluster with a stored or expected refcount + 1) * cluster size
    std::uint64_t total_clusters = 0;      ///< guest clusters: virtual size in clusters
    std::uint64_t allocated_clusters = 0;  ///< active L2 entries with a host cluster (data, preallocated zero, compressed)
    std::uint64_t fragmented_clusters = 0; ///< allocated clusters not following the previous one of their L2 table; compressed ones
    std::uint64_t compressed_clusters = 0; ///< active compressed clusters

    /// `qemu-img check`'s exit code: 1 check errors, 2 corruptions, 3 leaks only, 0 clean.
    constexpr int exit_code() const noexcept { return check_errors ? 1 : corruptions ? 2 : leaks ? 3 : 0; }
};

/// What `check` repairs (`qemu-img check -r`).
enum class check_repair {
    none,  ///< check only; the image is not modified
    leaks, ///< lower refcounts above the references (QEMU BDRV_FIX_LEAKS)
    all,   ///< also raise refcounts below them, fix COPIED flags, rebuild broken refcount structures (BDRV_FIX_ERRORS too)
};

/// How `check` runs.
struct check_options {
    /// What to repair; anything but `none` needs an image opened writable (see `open_options::repair`).
    check_repair repair = check_repair::none;
    /// Largest in-memory refcount array accepted: `check` needs 2 bytes per host cluster of the
    /// file (4 with 32-bit refcounts, 8 with 64-bit ones); above this it fails with `errc::no_memory`.
    std::uint64_t max_memory_bytes = std::uint64_t{1} << 30;
    /// Memory for cached refcount blocks.
    std::size_t cache_bytes = std::size_t{1} << 20;
    /// Called with each problem found or repaired, in QEMU's words ("ERROR cluster 5 refcount=0
    /// reference=1", "Repairing cluster 5 refcount=2 reference=1"); may be empty.
    std::function<void(std::string_view)> on_problem;
    /// With `check_repair::all`: write the refcount structure anew with this refcount_order
    /// (0 to 6), as `amend` does to change the refcount width. Refused (`invalid_argument`)
    /// when a refcount would not fit the new width.
    std::optional<unsigned> refcount_order;
};

namespace detail {

template <class Image, class Counter>
class refcount_checker {
public:
    using Backend = typename Image::backend_type;

    refcount_checker(Image& img, const check_options& opts, basic_refcount_reader<Backend>& reader, std::uint64_t file_len,
                     std::vector<Counter>& counters, check_repair fix)
        : img_(img), file_(img.backend()), opts_(opts), reader_(reader), h_(img.header()), file_len_(file_len),
          counters_(counters) {
        fix_leaks_ = fix != check_repair::none;
        fix_errors_ = fix == check_repair::all;
        out_order_ = fix_errors_ && opts.refcount_order ? *opts.refcount_order : h_.refcount_order;
        cb_ = h_.cluster_bits;
        cs_ = h_.cluster_size();
        nb_ = div_round_up(file_len_, cs_);
        max_ = std::min<std::uint64_t>(refcount_max(h_.refcount_order), std::numeric_limits<Counter>::max());
        external_ = (h_.incompatible_features & features::external_data_file::mask) != 0;
        extended_ = h_.extended_l2();
        l2_buf_.resize(static_cast<std::size_t>(cs_));
    }

    /// QEMU `qcow2_check_refcounts`.
    result<check_report> run() {
        rep_.total_clusters = div_round_up(h_.size / 512 * 512, cs_);
        if (auto r = calculate(); !r) return r.error();
        const check_report pre_compare = rep_;
        if (auto r = compare(false, false); !r) return r.error();
        // A repair needs every stored refcount: one that could not be read would make it
        // "fix" COPIED flags and refcounts from a guess. Stop, with what went wrong.
        if (fix_leaks_ && rep_.first_check_error) return *rep_.first_check_error;
        if (out_order_ != h_.refcount_order) {
            // A new width: every refcount must fit it, then the structure is written anew.
            const std::uint64_t top = refcount_max(out_order_);
            for (std::uint64_t i = 0; i < nb_; ++i)
                if (counters_[static_cast<std::size_t>(i)] > top)
                    return error{errc::invalid_argument,
                                 cat("cannot decrease refcount entry width to ", dec(refcount_width(out_order_)), " bits: cluster at offset ",
                                     hex(i << cb_), " has a refcount of ", dec(counters_[static_cast<std::size_t>(i)]))};
            rebuild_ = true;
        }
        if (rebuild_ && fix_errors_) {
            const check_report old = rep_;
            std::uint64_t fresh_leaks = 0;
            problem("Rebuilding refcount structure");
            if (auto r = rebuild_structure(); !r) {
                ++rep_.check_errors;
                return r.error();
            }
            rep_.corruptions = 0;
            rep_.leaks = 0;
            // The old structure is replaced: count the references again.
            rebuild_ = false;
            if (auto r = restart(); !r) return r.error();
            if (auto r = calculate(); !r) return r.error();
            // The old refcount structures are now leaked: fix that. Leaks left here were made by the rebuild.
            const check_report saved = rep_;
            rep_ = check_report{};
            if (auto r = compare(true, false); !r) return r.error();
            if (rebuild_) problem("ERROR rebuilt refcount structure is still broken");
            fresh_leaks = rep_.leaks;
            rep_ = saved;
            if (rep_.corruptions < old.corruptions) rep_.corruptions_fixed += old.corruptions - rep_.corruptions;
            if (rep_.leaks < old.leaks) rep_.leaks_fixed += old.leaks - rep_.leaks;
            rep_.leaks += fresh_leaks;
        } else if (fix_leaks_) {
            if (rebuild_) {
                problem("ERROR need to rebuild refcount structures");
                return error{errc::image_corrupt, "the refcount structure needs a rebuild, which only a full repair does"};
            }
            if (rep_.leaks || rep_.corruptions) {
                rep_ = pre_compare;
                if (auto r = compare(fix_leaks_, fix_errors_); !r) return r.error();
            }
        }
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

    /// `inc(offset, cs_)`, the hot case: one cluster inside the file, aligned, not at the maximum.
    void inc_cluster(std::uint64_t offset) {
        const std::uint64_t k = offset >> cb_;
        if ((offset & (cs_ - 1)) == 0 && k < nb_ && offset + cs_ <= file_len_) {
            Counter& c = counters_[static_cast<std::size_t>(k)];
            if (c != max_) {
                ++c;
                return;
            }
        }
        inc(offset, cs_);
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
                if (!external_) inc_cluster(off);
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
                rebuild_ = true;
                continue;
            }
            if (off & (cs_ - 1)) {
                corruption(cat("ERROR refcount block ", dec(i), " is not cluster aligned; refcount table entry corrupted"));
                rebuild_ = true;
                continue;
            }
            if (cluster >= nb_) {
                // QEMU's repair grows the file to include the block; this one rebuilds the structure instead.
                corruption(cat("ERROR refcount block ", dec(i), " is outside image"));
                if (fix_errors_) rebuild_ = true;
                continue;
            }
            if (off) {
                inc(off, cs_);
                const std::uint64_t rc = counters_[static_cast<std::size_t>(cluster)];
                if (rc != 1) {
                    corruption(cat("ERROR refcount block ", dec(i), " refcount=", dec(rc)));
                    rebuild_ = true;
                }
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

    /// QEMU `compare_refcounts`, one refcount block at a time. A zero stored refcount under a
    /// reference asks for a rebuild; other mismatches are repaired when allowed: the block is
    /// corrected in memory and written back once (one cluster write), its cached copy dropped.
    result<void> compare(bool fix_leaks, bool fix_errors) {
        const std::uint64_t per_block = reader_.entries_per_block();
        const unsigned order = h_.refcount_order;
        highest_ = 0;
        std::vector<std::byte> copy;
        std::vector<std::uint64_t> freed;
        for (std::uint64_t start = 0; start < nb_; start += per_block) {
            const std::uint64_t end = std::min(nb_, start + per_block);
            const std::uint64_t index = start / per_block;
            auto b = reader_.block(index);
            const bool past_end = !b && b.error().code() == make_error_code(errc::short_read);
            bool dirty = false;
            for (std::uint64_t i = start; i < end; ++i) {
                std::uint64_t rc1 = 0;
                if (!b && !past_end) {
                    ++rep_.check_errors;
                    if (!rep_.first_check_error) rep_.first_check_error = b.error();
                    problem(cat("Can't get refcount for cluster ", dec(i), ": ", b.error().message()));
                    continue;
                }
                if (b && !b->empty()) rc1 = get_refcount(dirty ? std::span<const std::byte>(copy) : *b, i - start, order);
                const std::uint64_t rc2 = counters_[static_cast<std::size_t>(i)];
                if (rc1 || rc2) highest_ = i;
                if (rc1 == rc2) continue;
                std::uint64_t* fixed = nullptr;
                if (rc1 == 0) rebuild_ = true;
                else if (rc1 > rc2 && fix_leaks) fixed = &rep_.leaks_fixed;
                else if (rc1 < rc2 && fix_errors) fixed = &rep_.corruptions_fixed;
                problem(cat(fixed ? "Repairing" : rc1 < rc2 ? "ERROR" : "Leaked", " cluster ", dec(i), " refcount=", dec(rc1),
                            " reference=", dec(rc2)));
                if (fixed) {
                    if (!dirty) {
                        copy.assign(b->begin(), b->end());
                        dirty = true;
                    }
                    set_refcount(copy, i - start, order, rc2);
                    if (rc2 == 0) freed.push_back(i);
                    ++*fixed;
                    continue;
                }
                if (rc1 < rc2) ++rep_.corruptions;
                else ++rep_.leaks;
            }
            if (dirty) {
                const std::uint64_t off = reader_.table()[static_cast<std::size_t>(index)] & reftable_bits::offset_mask;
                reader_.invalidate_block(off);
                if (auto r = check_io(file_.write_at(off, copy), "writing a repaired refcount block"); !r) {
                    ++rep_.check_errors;
                    return r;
                }
                // As QEMU (QCOW2_DISCARD_ALWAYS): the clusters freed are discarded, after their refcount is written.
                if constexpr (io::supports_discard<Backend>)
                    for (const std::uint64_t c : freed) (void)file_.discard(c << cb_, cs_);
            }
            freed.clear();
        }
        return {};
    }

    /// Starts counting references again after the refcount structure was replaced: a fresh
    /// reader for the new table, the new file size, zeroed counters.
    result<void> restart() {
        auto len = io::size_of(file_);
        if (!len) return len.error();
        file_len_ = *len;
        nb_ = std::max(nb_, div_round_up(file_len_, cs_));
        auto r = basic_refcount_reader<Backend>::open(file_, h_, opts_.cache_bytes);
        if (!r) return r.error();
        reader_ = std::move(*r);
        std::fill(counters_.begin(), counters_.end(), Counter{0});
        counters_.resize(static_cast<std::size_t>(nb_ + 1), Counter{0});
        active_l1_.clear();
        return {};
    }

    /// QEMU `alloc_clusters_imrt`: the first run of `count` clusters without references at or
    /// after `first_free`, growing the counted range past its end when none is free; the
    /// run's counters are set to 1. Returns its first cluster index.
    std::uint64_t alloc_imrt(std::uint64_t count, std::uint64_t& first_free) {
        std::uint64_t cluster = first_free, contiguous = 0;
        bool first_gap = true;
        for (; cluster < nb_ && contiguous < count; ++cluster) {
            if (!counters_[static_cast<std::size_t>(cluster)]) {
                ++contiguous;
                if (first_gap) {
                    first_free = cluster;
                    first_gap = false;
                }
            } else {
                contiguous = 0;
            }
        }
        if (contiguous < count) {
            nb_ = cluster + count - contiguous;
            counters_.resize(static_cast<std::size_t>(nb_ + 1), Counter{0});
        }
        cluster -= contiguous;
        for (std::uint64_t i = 0; i < count; ++i) counters_[static_cast<std::size_t>(cluster + i)] = 1;
        return cluster;
    }

    /// QEMU `rebuild_refcounts_write_refblocks`: writes, for every refcount block covering a
    /// counted cluster of [first, end), a block holding the counted refcounts; blocks not yet
    /// in `table` are placed (`alloc_imrt`) and entered. Returns true when `table` grew.
    result<bool> write_refblocks(std::uint64_t first, std::uint64_t end, std::vector<std::uint64_t>& table) {
        const std::uint64_t per_block = refcount_entries_per_block(cb_, out_order_);
        const unsigned order = out_order_;
        std::uint64_t first_free = 0;
        bool grown = false;
        std::vector<std::byte> block(static_cast<std::size_t>(cs_));
        for (std::uint64_t cluster = first; cluster < end; ++cluster) {
            if (cluster >= nb_ || !counters_[static_cast<std::size_t>(cluster)]) continue;
            const std::uint64_t index = cluster / per_block;
            const std::uint64_t block_start = index * per_block;
            std::uint64_t off = 0;
            if (index < table.size() && table[static_cast<std::size_t>(index)]) {
                off = table[static_cast<std::size_t>(index)];
            } else {
                // Never place a block in a range whose block is already written.
                first_free = std::max(first_free, block_start);
                const std::uint64_t at = alloc_imrt(1, first_free);
                off = at << cb_;
                if (at >= end) end = at + 1; // the block holding this block's refcount must be written too
                if (table.size() <= index) {
                    const std::uint64_t per_cluster = cs_ / 8;
                    const std::uint64_t entries = (index + 1 + per_cluster - 1) / per_cluster * per_cluster;
                    if (entries * 8 > limits::max_refcount_table_bytes)
                        return error{errc::refcount_table_too_large, "the rebuilt refcount table would exceed 8 MiB"};
                    table.resize(static_cast<std::size_t>(entries), 0);
                    grown = true;
                }
                table[static_cast<std::size_t>(index)] = off;
            }
            std::fill(block.begin(), block.end(), std::byte{0});
            for (std::uint64_t k = 0; k < per_block && block_start + k < nb_; ++k)
                set_refcount(block, k, order, counters_[static_cast<std::size_t>(block_start + k)]);
            if (auto r = check_io(file_.write_at(off, block), "writing a rebuilt refcount block"); !r) return r.error();
            cluster = block_start + per_block - 1; // this block is done
        }
        return grown;
    }

    /**
     * QEMU `rebuild_refcount_structure`: new refcount blocks for every counted cluster, then a
     * new refcount table, both placed in clusters no metadata references (QEMU's first fit,
     * so the repaired file is laid out as QEMU lays it out) and counted themselves; then the
     * header is switched to the new table in one 12-byte write between two flushes. Until
     * that write the old structure stays in force, so a crash leaves at worst leaked clusters.
     */
    result<void> rebuild_structure() {
        std::vector<std::uint64_t> table;
        auto grown = write_refblocks(0, nb_, table);
        if (!grown) return grown.error();
        std::uint64_t table_offset = 0, table_clusters = 0;
        do {
            std::uint64_t first_free = 0;
            table_clusters = div_round_up(table.size() * 8, cs_);
            table_offset = alloc_imrt(table_clusters, first_free) << cb_;
            // The table's clusters are counted now: rewrite the blocks covering them.
            grown = write_refblocks(table_offset >> cb_, (table_offset >> cb_) + table_clusters, table);
            if (!grown) return grown.error();
        } while (*grown);
        std::vector<std::byte> raw(table.size() * 8);
        for (std::size_t i = 0; i < table.size(); ++i) store_be64(raw, i * 8, table[i]);
        if (auto r = check_io(file_.write_at(table_offset, raw), "writing the rebuilt refcount table"); !r) return r;
        return img_.replace_refcount_table(table_offset, static_cast<std::uint32_t>(table_clusters), out_order_);
    }

    /// QEMU `check_oflag_copied`; with errors repaired, a wrong L1 entry is rewritten at once
    /// and an L2 table with wrong entries once, after its scan (through the image, whose
    /// L1 table and L2 cache stay current).
    /// `stored`, through the refcount block of the last lookup: the clusters of an L2 table
    /// mostly share a block, and the block's span stays valid until the reader's next lookup,
    /// which only this function makes while the COPIED flags are checked.
    result<std::uint64_t> stored_memo(std::uint64_t cluster) {
        const unsigned shift = cb_ + 3 - h_.refcount_order;
        const std::uint64_t idx = cluster >> shift;
        if (idx != memo_index_) {
            auto b = reader_.block(idx);
            if (!b) {
                memo_index_ = ~std::uint64_t{0};
                if (b.error().code() == make_error_code(errc::short_read)) return std::uint64_t{0};
                return b.error();
            }
            memo_ = *b;
            memo_index_ = idx;
        }
        if (memo_.empty()) return std::uint64_t{0};
        return get_refcount(memo_, cluster & ((std::uint64_t{1} << shift) - 1), h_.refcount_order);
    }

    result<void> check_oflag_copied() {
        memo_index_ = ~std::uint64_t{0};
        // -r leaks repairs COPIED flags only when everything else is clean now (the refcounts are then right).
        const bool repair = fix_errors_ || (fix_leaks_ && !rep_.check_errors && !rep_.corruptions && !rep_.leaks);
        const char* verb = repair ? "Repairing" : "ERROR";
        for (std::size_t i = 0; i < active_l1_.size(); ++i) {
            const std::uint64_t e = active_l1_[i];
            const std::uint64_t l2 = e & l2_bits::l1_offset_mask;
            if (!l2) continue;
            auto rc = stored_memo(l2 >> cb_);
            if (!rc) continue;
            if ((*rc == 1) != ((e & l2_bits::copied) != 0)) {
                problem(cat(verb, " OFLAG_COPIED L2 cluster: l1_index=", dec(i), " l1_entry=", hex(e).substr(2), " refcount=", dec(*rc)));
                if (repair) {
                    const std::uint64_t fixed = *rc == 1 ? e | l2_bits::copied : e & ~l2_bits::copied;
                    if (auto r = img_.write_l1_entry(i, fixed); !r) {
                        ++rep_.check_errors;
                        return r;
                    }
                    active_l1_[i] = fixed;
                    ++rep_.corruptions_fixed;
                } else {
                    ++rep_.corruptions;
                }
            }
            if (auto r = read_l2(l2); !r) {
                ++rep_.check_errors;
                return r;
            }
            bool dirty = false;
            for (std::size_t j = 0; j < l2_entries(); ++j) {
                const std::uint64_t le = l2_entry(j);
                const type t = classify_entry(le);
                if (t != type::normal && t != type::zero_alloc) continue;
                std::uint64_t refcount = 1;
                if (!external_) {
                    auto s = stored_memo((le & l2_bits::offset_mask) >> cb_);
                    if (!s) continue;
                    refcount = *s;
                }
                if ((refcount == 1) != ((le & l2_bits::copied) != 0)) {
                    problem(cat(verb, " OFLAG_COPIED data cluster: l2_entry=", hex(le).substr(2), " refcount=", dec(refcount)));
                    if (repair) {
                        store_be64(l2_buf_, j * (extended_ ? 16 : 8), refcount == 1 ? le | l2_bits::copied : le & ~l2_bits::copied);
                        dirty = true;
                        ++rep_.corruptions_fixed;
                    } else {
                        ++rep_.corruptions;
                    }
                }
            }
            if (dirty)
                if (auto r = img_.write_l2_table(l2, l2_buf_); !r) {
                    ++rep_.check_errors;
                    return r;
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
    bool fix_leaks_ = false;
    bool fix_errors_ = false;
    bool rebuild_ = false; ///< QEMU's `rebuild`: the refcount structure must be rebuilt
    unsigned out_order_ = 4; ///< the refcount_order a rebuilt structure gets
    std::vector<std::byte> l2_buf_;
    std::vector<std::uint64_t> active_l1_;
    std::span<const std::byte> memo_;                 ///< the refcount block of `stored_memo`'s last lookup
    std::uint64_t memo_index_ = ~std::uint64_t{0};
    check_report rep_;
};

template <class Counter, class Image>
result<check_report> run_check(Image& img, const check_options& opts, basic_refcount_reader<typename Image::backend_type>& reader,
                               std::uint64_t file_len, std::uint64_t nb_clusters, check_repair fix) {
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
    refcount_checker<Image, Counter> c(img, opts, reader, file_len, counters, fix);
    return c.run();
}

/// One pass of QEMU's `qcow2_check_refcounts` with repair `fix`.
template <class Image>
result<check_report> check_pass(Image& img, const check_options& opts, check_repair fix) {
    auto len = io::size_of(img.backend());
    if (!len) return len.error();
    const std::uint64_t cs = img.cluster_size();
    const std::uint64_t nb = div_round_up(*len, cs);
    if (nb > 0x7FFFFFFFull)
        return error{errc::file_too_large, cat("the image file has ", dec(nb), " clusters, more than QEMU checks (2^31 - 1)")};
    auto reader = basic_refcount_reader<typename Image::backend_type>::open(img.backend(), img.header(), opts.cache_bytes);
    if (!reader) return reader.error();
    const unsigned order = img.header().refcount_order;
    if (order <= 4) return run_check<std::uint16_t>(img, opts, *reader, *len, nb, fix);
    if (order == 5) return run_check<std::uint32_t>(img, opts, *reader, *len, nb, fix);
    return run_check<std::uint64_t>(img, opts, *reader, *len, nb, fix);
}

/// This project's addition to QEMU's check: a set (and trusted) all-zero bit must be true.
/// A cluster of the image that does not read as zero is a corruption; repairing all clears
/// the bit. Metadata too broken to read is left to the refcount check, which reports it.
template <class Image>
result<void> check_all_zero_bit(Image& img, const check_options& opts, check_report& rep, bool fix) {
    if (!img.template has<features::all_zero>()) return {};
    auto nz = first_nonzero(img);
    if (!nz || !*nz) return {};
    auto say = [&](std::string_view verb) {
        if (opts.on_problem)
            opts.on_problem(cat(verb, " the all-zero bit is set, but guest offset ", dec(**nz), " does not read as zero"));
    };
    if (!fix) {
        say("ERROR");
        ++rep.corruptions;
        return {};
    }
    say("Repairing");
    if (auto r = img.clear_autoclear_bits(features::all_zero::mask); !r) return r;
    ++rep.corruptions_fixed;
    return {};
}

/// QEMU's `qcow2_co_check` with repair: a pass that repairs, and a second pass that reports
/// what is left (see `qcow2::check`).
template <class Image>
result<check_report> check_and_repair(Image& img, const check_options& opts) {
    if (opts.repair == check_repair::none) {
        auto rep = check_pass(img, opts, check_repair::none);
        if (rep)
            if (auto r = check_all_zero_bit(img, opts, *rep, false); !r) return r.error();
        return rep;
    }
    if (img.read_only()) return error{errc::read_only, "repairing an image opened read-only"};
    auto first = check_pass(img, opts, opts.repair);
    if (!first) return first;
    if (auto r = check_all_zero_bit(img, opts, *first, opts.repair == check_repair::all); !r) return r.error();
    if (auto r = img.flush(); !r) return r.error();
    check_report rep = *first;
    if (first->corruptions_fixed || first->leaks_fixed) {
        auto again = check_pass(img, opts, check_repair::none);
        if (!again) return again;
        if (auto r = check_all_zero_bit(img, opts, *again, false); !r) return r.error();
        rep = *again;
        rep.corruptions_fixed = first->corruptions_fixed;
        rep.leaks_fixed = first->leaks_fixed;
    }
    if (first->check_errors == 0 && first->corruptions == 0)
        if (auto r = img.clear_incompatible_bits(features::dirty::mask | features::corrupt::mask); !r) return r.error();
    return rep;
}

} // namespace detail

} // namespace qcow2
