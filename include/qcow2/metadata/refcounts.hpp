// SPDX-License-Identifier: MIT
/// @file
/// @brief Refcounts of an image file: `basic_refcount_reader` reads them (what `check`
///        needs), `basic_refcount_table` also changes them and allocates clusters (what the
///        writer needs).
///
/// Both load the refcount table once and read refcount blocks on demand through a bounded
/// `basic_table_cache`. The writer is write-through: every change reaches the file before
/// the call returns, so the cached blocks always equal the file.
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/format/header.hpp"
#include "qcow2/format/refcount.hpp"
#include "qcow2/io/backend.hpp"
#include "qcow2/metadata/table_cache.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

namespace qcow2 {

namespace detail {
/// Reads `out.size()` bytes at `offset` of a file of `file_size` bytes; bytes past the end
/// read as zeroes (as QEMU's block layer pads reads past the end of a file).
template <io::readable_backend B>
result<void> read_zero_padded(B& b, std::uint64_t file_size, std::uint64_t offset, std::span<std::byte> out,
                              std::string_view what) {
    const std::uint64_t avail = offset >= file_size ? 0 : std::min<std::uint64_t>(out.size(), file_size - offset);
    if (avail)
        if (auto r = io::read_exact(b, offset, out.first(static_cast<std::size_t>(avail)), what); !r) return r;
    // An empty `out` may have no storage at all (memset of a null pointer is undefined).
    if (avail < out.size()) std::memset(out.data() + avail, 0, out.size() - static_cast<std::size_t>(avail));
    return {};
}
} // namespace detail

/**
 * @brief Reads stored refcounts of the image file `Backend` (non-owning).
 *
 * The reader refers to the backend it was opened on: the backend must outlive it and stay
 * at the same address. It also remembers the file size given at `open`.
 *
 * @par Memory
 * The refcount table (at most 8 MiB, QEMU's limit, as 64-bit entries) and a table cache of
 * `cache_bytes` (at least two refcount blocks of one cluster each, plus its index): all
 * allocated by `open`, nothing afterwards.
 * @par Thread safety
 * None: one thread at a time (lookups update the cache).
 */
template <io::readable_backend Backend, class Allocator = std::allocator<std::byte>>
class basic_refcount_reader {
public:
    /// The allocator.
    using allocator_type = Allocator;

    /**
     * @brief Loads the refcount table described by `h` from `file`.
     * @param file the image file (kept by address). @param h its decoded header.
     * @param alloc the allocator for the table and the cache.
     * @param cache_bytes memory for cached refcount blocks.
     * @par Errors
     * `refcount_table_too_large` (over 8 MiB), `misaligned_offset` (table offset),
     * `invalid_refcount_order`; I/O errors. A table that runs past the end of the file reads
     * as zero entries there (as QEMU reads it).
     * @par I/O
     * One read of the table (at most 8 MiB).
     */
    static result<basic_refcount_reader> open(Backend& file, const header& h, std::size_t cache_bytes = std::size_t{256} << 10,
                                              const Allocator& alloc = Allocator()) {
        using detail::cat;
        using detail::dec;
        const std::uint64_t cs = h.cluster_size();
        if (h.refcount_order > limits::max_refcount_order)
            return error{errc::invalid_refcount_order, cat("refcount_order is ", dec(h.refcount_order))};
        const std::uint64_t bytes = std::uint64_t{h.refcount_table_clusters} * cs;
        if (bytes > limits::max_refcount_table_bytes)
            return error{errc::refcount_table_too_large,
                         cat("refcount table of ", dec(h.refcount_table_clusters), " clusters exceeds 8 MiB")};
        if (!detail::is_aligned(h.refcount_table_offset, cs))
            return error{errc::misaligned_offset,
                         cat("refcount table offset ", detail::hex(h.refcount_table_offset), " is not cluster aligned")};
        auto size = io::size_of(file);
        if (!size) return size.error();
        auto cache = basic_table_cache<Allocator>::make(cache_bytes, static_cast<std::size_t>(cs), alloc);
        if (!cache) return cache.error();
        basic_refcount_reader r(file, std::move(*cache), alloc);
        r.file_size_ = *size;
        r.cluster_bits_ = h.cluster_bits;
        r.order_ = h.refcount_order;
        r.table_offset_ = h.refcount_table_offset;
        std::vector<std::byte, byte_alloc> raw(static_cast<std::size_t>(bytes), byte_alloc(alloc));
        if (auto rr = detail::read_zero_padded(file, r.file_size_, h.refcount_table_offset, raw, "reading the refcount table");
            !rr)
            return rr.error();
        r.table_.resize(static_cast<std::size_t>(bytes / 8));
        for (std::size_t i = 0; i < r.table_.size(); ++i) r.table_[i] = detail::load_be64(raw, i * 8);
        return r;
    }

    /// Moves the table and the cache.
    basic_refcount_reader(basic_refcount_reader&&) noexcept = default;
    /// Moves the table and the cache.
    basic_refcount_reader& operator=(basic_refcount_reader&&) noexcept = default;

    /// The refcount table entries as stored (reserved bits included).
    std::span<const std::uint64_t> table() const noexcept { return {table_.data(), table_.size()}; }
    /// The refcount_order (0..6).
    unsigned refcount_order() const noexcept { return order_; }
    /// The largest refcount an entry holds.
    std::uint64_t max_refcount() const noexcept { return refcount_max(order_); }
    /// Refcount entries per block (clusters one reftable entry covers).
    std::uint64_t entries_per_block() const noexcept { return refcount_entries_per_block(cluster_bits_, order_); }
    /// The file size given at `open` (what blocks are checked against).
    std::uint64_t file_size() const noexcept { return file_size_; }
    /// The cache's counters.
    auto cache_statistics() const noexcept { return cache_.statistics(); }

    /**
     * @brief The refcount block for reftable entry `index`, or an empty span when the entry is
     *        beyond the table or zero (every cluster it covers then has refcount 0).
     *
     * The span stays valid until the next `block` or `get` call.
     * @par Errors
     * `misaligned_offset` when the block offset is not cluster aligned, `short_read` when it
     * starts at or past the end of the file; both name the reftable index and the offset.
     * A block that ends past the end of the file reads as zeroes there. I/O errors.
     * @par I/O
     * At most one cluster read (through the cache).
     */
    result<std::span<const std::byte>> block(std::uint64_t index) {
        using detail::cat;
        using detail::dec;
        using detail::hex;
        if (index >= table_.size()) return std::span<const std::byte>{};
        const std::uint64_t off = table_[static_cast<std::size_t>(index)] & reftable_bits::offset_mask;
        if (off == 0) return std::span<const std::byte>{};
        const std::uint64_t cs = std::uint64_t{1} << cluster_bits_;
        if (!detail::is_aligned(off, cs))
            return error{errc::misaligned_offset, cat("refcount block offset ", hex(off), " is not cluster aligned (reftable index ",
                                                      dec(index), ")")};
        if (off >= file_size_)
            return error{errc::short_read, cat("refcount block at host offset ", hex(off), " (reftable index ", dec(index),
                                               ") lies past the end of the file (", dec(file_size_), " bytes)")};
        auto t = cache_.get(off, [&](std::span<std::byte> dst) {
            return detail::read_zero_padded(*file_, file_size_, off, dst, cat("reading the refcount block of reftable index ", dec(index)));
        });
        if (!t) return t.error();
        return std::span<const std::byte>(*t);
    }

    /**
     * @brief The stored refcount of host cluster `cluster_index` (host offset >> cluster_bits).
     *
     * Clusters beyond the table, or under a zero reftable entry, have refcount 0.
     * @par Errors
     * Those of `block`.
     */
    result<std::uint64_t> get(std::uint64_t cluster_index) {
        const unsigned bits = cluster_bits_ + 3 - order_;
        auto b = block(cluster_index >> bits);
        if (!b) return b.error();
        if (b->empty()) return std::uint64_t{0};
        return get_refcount(*b, cluster_index & ((std::uint64_t{1} << bits) - 1), order_);
    }

    /// Forgets the cached copy of the refcount block at host `offset` (after it was rewritten elsewhere).
    void invalidate_block(std::uint64_t offset) noexcept { cache_.invalidate(offset); }

private:
    using byte_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::byte>;
    using u64_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::uint64_t>;

    basic_refcount_reader(Backend& file, basic_table_cache<Allocator> cache, const Allocator& alloc)
        : file_(&file), cache_(std::move(cache)), table_(u64_alloc(alloc)) {}

    Backend* file_;
    basic_table_cache<Allocator> cache_;
    std::vector<std::uint64_t, u64_alloc> table_;
    std::uint64_t file_size_ = 0;
    std::uint64_t table_offset_ = 0;
    unsigned cluster_bits_ = 16;
    unsigned order_ = 4;
};

/// A run of host clusters: `count` clusters from cluster index `first`.
struct cluster_run {
    std::uint64_t first = 0; ///< cluster index (host offset >> cluster_bits)
    /// How many clusters.
    std::uint64_t count = 0;
};

namespace detail {

/**
 * @brief The tables of a `basic_table_cache` changed in memory and not yet written.
 *
 * A dirty table is pinned in the cache (one pin, however often it is marked) so that it
 * cannot be evicted before it is written, and remembers the byte range that changed, so
 * that writing it back sends only those bytes. The owner decides when to write back, and
 * so decides the order in which changes reach the file.
 */
template <class Allocator>
class dirty_tables {
public:
    explicit dirty_tables(const Allocator& a = Allocator()) : list_(entry_alloc(a)) {}

    /// Marks bytes `[lo, hi)` of the cached table at `offset` changed (pinning it the first time).
    template <class CacheAllocator>
    void mark(basic_table_cache<CacheAllocator>& cache, std::uint64_t offset, std::size_t lo, std::size_t hi) {
        for (auto& d : list_)
            if (d.offset == offset) {
                d.lo = std::min(d.lo, lo);
                d.hi = std::max(d.hi, hi);
                return;
            }
        cache.pin(offset);
        list_.push_back({offset, lo, hi});
    }

    /// How many tables are dirty.
    std::size_t size() const noexcept { return list_.size(); }
    bool empty() const noexcept { return list_.empty(); }
    /// True when the table at `offset` is dirty.
    bool contains(std::uint64_t offset) const noexcept {
        return std::any_of(list_.begin(), list_.end(), [&](const entry& d) { return d.offset == offset; });
    }

    /**
     * @brief Writes every dirty range, in increasing offset order, with
     *        `write(std::uint64_t host_offset, std::span<const std::byte> bytes) -> result<void>`.
     *
     * A table whose write succeeded is unpinned and forgotten; on the first failure the
     * tables not yet written stay dirty and pinned.
     */
    template <class CacheAllocator, class Write>
    result<void> write_all(basic_table_cache<CacheAllocator>& cache, Write&& write) {
        std::sort(list_.begin(), list_.end(), [](const entry& a, const entry& b) { return a.offset > b.offset; });
        while (!list_.empty()) {
            const entry d = list_.back();
            const std::span<std::byte> t = cache.find(d.offset);
            if (t.size() < d.hi) return error{errc::invalid_argument, "a dirty metadata table is no longer cached"};
            if (auto r = write(d.offset + d.lo, std::span<const std::byte>(t).subspan(d.lo, d.hi - d.lo)); !r) return r;
            cache.unpin(d.offset);
            list_.pop_back();
        }
        return {};
    }

    /// Forgets the table at `offset` without writing it (it is no longer metadata), and unpins it.
    template <class CacheAllocator>
    void drop(basic_table_cache<CacheAllocator>& cache, std::uint64_t offset) {
        for (std::size_t i = 0; i < list_.size(); ++i)
            if (list_[i].offset == offset) {
                cache.unpin(offset);
                list_.erase(list_.begin() + static_cast<std::ptrdiff_t>(i));
                return;
            }
    }

private:
    struct entry {
        std::uint64_t offset;
        std::size_t lo, hi;
    };
    using entry_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<entry>;
    std::vector<entry, entry_alloc> list_;
};

/// A guard that accepts every placement (for callers without other metadata to protect).
struct no_overlap_guard {
    result<void> operator()(std::uint64_t, std::uint64_t) const noexcept { return {}; }
};

} // namespace detail

/**
 * @brief The refcounts of a writable image file: get, change and allocate, for every width.
 *
 * The refcount table is held in memory; refcount blocks go through a bounded
 * `basic_table_cache`. The class does not hold the backend: every call that may read or
 * write takes it, so the object can live inside a movable image.
 *
 * @par Write-back, and the order of writes
 * Changes to refcount blocks are made in the cache and reach the file when `write_back`
 * is called (or earlier, when the dirty blocks would fill the cache). That is always safe
 * for increments: a refcount on disk above the references is only a leak. Decrements are
 * safe only once the references they drop are durable, so callers apply them (`release`)
 * after the metadata that dropped the references has been written and flushed. Between
 * `write_back` and the first write of a metadata table that refers to newly allocated
 * clusters, the caller flushes the file.
 *
 * @par Growth, in crash-safe order
 * - A missing refcount block (reftable entry 0) goes in the first free cluster, as QEMU
 *   places it: counted by the block covering that cluster (whose change is written first),
 *   or, when no block covers it, as the block of that cluster's own range, counting itself.
 *   The block is written and flushed before its reftable entry is written (8 bytes).
 * - A refcount table too small for a cluster is replaced: new blocks for the range past
 *   the old table's coverage and the new table are written there, describing themselves
 *   and the whole new area; the file is flushed; the header is pointed at the new table
 *   (one 12-byte write at byte 48) and flushed; only then are the old table's clusters
 *   released. A crash at any point leaves the old structure or the new one, at worst with
 *   leaked clusters. Callers that keep their own copy of the header take the new
 *   `table_offset()` and `table_clusters()` from this object.
 *
 * Refcounts never wrap: an increment past the width's maximum is `refcount_overflow`, a
 * decrement below 0 is `image_corrupt`, and neither changes anything.
 *
 * @par Memory
 * The refcount table (at most 8 MiB), a block cache of `cache_bytes`, and one sorted list
 * of block offsets (8 bytes per block) for overlap checks.
 * @par Thread safety
 * None: one thread at a time.
 */
template <io::backend Backend, class Allocator = std::allocator<std::byte>>
class basic_refcount_table {
public:
    /// The allocator.
    using allocator_type = Allocator;

    /**
     * @brief Loads the refcount table described by `h` from `file`.
     * @par Errors
     * As `basic_refcount_reader::open`, plus `image_corrupt` for a refcount table entry with
     * reserved bits set or an unaligned block offset (the structure needs a repair first).
     * @par I/O
     * One read of the table (at most 8 MiB).
     */
    static result<basic_refcount_table> open(Backend& file, const header& h, std::size_t cache_bytes = std::size_t{256} << 10,
                                             const Allocator& alloc = Allocator()) {
        using detail::cat;
        using detail::dec;
        const std::uint64_t cs = h.cluster_size();
        if (h.refcount_order > limits::max_refcount_order)
            return error{errc::invalid_refcount_order, cat("refcount_order is ", dec(h.refcount_order))};
        const std::uint64_t bytes = std::uint64_t{h.refcount_table_clusters} * cs;
        if (bytes > limits::max_refcount_table_bytes)
            return error{errc::refcount_table_too_large,
                         cat("refcount table of ", dec(h.refcount_table_clusters), " clusters exceeds 8 MiB")};
        if (h.refcount_table_clusters == 0) return error{errc::refcount_table_empty, "the refcount table has no clusters"};
        if (!detail::is_aligned(h.refcount_table_offset, cs))
            return error{errc::misaligned_offset,
                         cat("refcount table offset ", detail::hex(h.refcount_table_offset), " is not cluster aligned")};
        auto size = io::size_of(file);
        if (!size) return size.error();
        auto cache = basic_table_cache<Allocator>::make(cache_bytes, static_cast<std::size_t>(cs), alloc);
        if (!cache) return cache.error();
        basic_refcount_table t(std::move(*cache), alloc);
        t.file_end_ = *size;
        t.cluster_bits_ = h.cluster_bits;
        t.order_ = h.refcount_order;
        t.table_offset_ = h.refcount_table_offset;
        t.table_clusters_ = h.refcount_table_clusters;
        std::vector<std::byte, byte_alloc> raw(static_cast<std::size_t>(bytes), byte_alloc(alloc));
        if (auto r = detail::read_zero_padded(file, t.file_end_, h.refcount_table_offset, raw, "reading the refcount table"); !r)
            return r.error();
        t.table_.resize(static_cast<std::size_t>(bytes / 8));
        for (std::size_t i = 0; i < t.table_.size(); ++i) {
            const std::uint64_t e = detail::load_be64(raw, i * 8);
            if ((e & reftable_bits::reserved) || !detail::is_aligned(e, cs))
                return error{errc::image_corrupt, cat("refcount table entry ", dec(i), " (", detail::hex(e),
                                                      ") has reserved bits set or is not cluster aligned")};
            t.table_[i] = e;
            if (e) t.blocks_.push_back(e);
        }
        std::sort(t.blocks_.begin(), t.blocks_.end());
        return t;
    }

    /// Moves the table, the cache and the pending changes.
    basic_refcount_table(basic_refcount_table&&) noexcept = default;
    /// Moves the table, the cache and the pending changes.
    basic_refcount_table& operator=(basic_refcount_table&&) noexcept = default;

    /// The refcount table entries.
    std::span<const std::uint64_t> table() const noexcept { return {table_.data(), table_.size()}; }
    /// Where the refcount table is now (it moves when it grows).
    std::uint64_t table_offset() const noexcept { return table_offset_; }
    /// Its length in clusters.
    std::uint32_t table_clusters() const noexcept { return table_clusters_; }
    /// The largest refcount an entry holds.
    std::uint64_t max_refcount() const noexcept { return refcount_max(order_); }
    /// Refcount entries per block.
    std::uint64_t entries_per_block() const noexcept { return refcount_entries_per_block(cluster_bits_, order_); }
    /// The end of the file as this table knows it (grown by its own writes and `note_file_end`).
    std::uint64_t file_end() const noexcept { return file_end_; }
    /// Tells the table the file reaches `n` bytes (writes made by others).
    void note_file_end(std::uint64_t n) noexcept { file_end_ = std::max(file_end_, n); }
    /// The lowest cluster index that may be free.
    std::uint64_t free_hint() const noexcept { return hint_; }
    /// Refcount blocks changed in memory and not yet written.
    std::size_t dirty_blocks() const noexcept { return dirty_.size(); }

    /// True when `[offset, offset + length)` touches the refcount table or a refcount block.
    bool overlaps(std::uint64_t offset, std::uint64_t length) const noexcept {
        if (length == 0) return false;
        const std::uint64_t cs = cluster_size();
        const std::uint64_t end = offset + length;
        if (offset < table_offset_ + std::uint64_t{table_clusters_} * cs && table_offset_ < end) return true;
        // The first block starting at or after the cluster holding `offset`.
        auto it = std::lower_bound(blocks_.begin(), blocks_.end(), offset & ~(cs - 1));
        return it != blocks_.end() && *it < end;
    }

    /**
     * @brief The refcount of host cluster `cluster` (host offset >> cluster_bits).
     * @par Errors
     * `short_read` for a block past the end of the file; I/O errors.
     */
    result<std::uint64_t> get(Backend& f, std::uint64_t cluster) {
        auto b = block(f, cluster >> block_shift());
        if (!b) return b.error();
        if (b->block.empty()) return std::uint64_t{0};
        return get_refcount(b->block, cluster & (entries_per_block() - 1), order_);
    }

    /**
     * @brief Adds `delta` to the refcount of each of the `count` clusters from `cluster`,
     *        all or nothing, in memory (written by `write_back`).
     *
     * Refcount blocks must exist for increments (`allocate` makes them). Decrements here are
     * the caller's responsibility to order (see the class notes); prefer `release`.
     * @par Errors
     * `refcount_overflow`; `image_corrupt` (below zero, or no block to increment in); I/O errors.
     */
    result<void> update(Backend& f, std::uint64_t cluster, std::uint64_t count, std::int64_t delta) {
        auto ignore = [](std::uint64_t) {};
        return change(f, cluster, count, delta, ignore);
    }

    /**
     * @brief Drops one reference from each of the `count` clusters from `cluster`; calls
     *        `on_freed(std::uint64_t cluster)` for each whose refcount reaches 0.
     *
     * Call it only once the references dropped are durable in the file.
     * @par Errors
     * As `update`.
     */
    template <class OnFreed>
    result<void> release(Backend& f, std::uint64_t cluster, std::uint64_t count, OnFreed&& on_freed) {
        return change(f, cluster, count, -1, on_freed);
    }

    /**
     * @brief Allocates clusters (refcount 0 to 1) and returns them.
     *
     * With `exact`, `count` contiguous clusters: the first such run at or after the
     * free-cluster hint. Without, the first free run at or after the hint, cut to `count`
     * (at least one cluster): what a writer takes when it can use a shorter run.
     * `guard(std::uint64_t offset, std::uint64_t length) -> result<void>` is asked before a
     * new refcount block or table is written at a place, so that a corrupt image whose
     * refcounts are too low cannot make them overwrite other metadata.
     * @par Errors
     * `invalid_argument` for count 0; `refcount_table_too_large` when the refcount table
     * would pass 8 MiB; `offset_too_large` past 2^56; the guard's errors; I/O errors.
     * @par I/O
     * Reads refcount blocks through the cache; creating a block or growing the table
     * writes and flushes as described in the class notes.
     */
    template <class Guard = detail::no_overlap_guard>
    result<cluster_run> allocate(Backend& f, std::uint64_t count, bool exact = true, Guard&& guard = {}) {
        using detail::cat;
        using detail::dec;
        if (count == 0) return error{errc::invalid_argument, "allocating 0 clusters"};
        for (int attempt = 0; attempt < 4096; ++attempt) {
            auto run = find_free(f, count, exact);
            if (!run) return run.error();
            if (((run->first + run->count) << cluster_bits_) > limits::max_host_offset + 1 || run->first >> (63 - cluster_bits_))
                return error{errc::offset_too_large,
                             cat("allocating ", dec(run->count), " clusters at cluster ", dec(run->first), ": past 2^56 bytes")};
            auto changed = ensure_blocks(f, *run, guard);
            if (!changed) return changed.error();
            if (*changed) continue; // new structures may sit in the run: look again
            if (auto r = update(f, run->first, run->count, 1); !r) return r.error();
            if (run->first <= hint_) hint_ = run->first + run->count;
            return *run;
        }
        return error{errc::io_error, "cluster allocation did not settle after 4096 attempts"};
    }

    /**
     * @brief Writes the changed bytes of every dirty refcount block (no flush).
     * @par Errors
     * I/O errors (the blocks not written stay dirty).
     */
    result<void> write_back(Backend& f) {
        return dirty_.write_all(cache_, [&](std::uint64_t off, std::span<const std::byte> bytes) {
            return write(f, off, bytes, "writing a refcount block");
        });
    }

private:
    using byte_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::byte>;
    using u64_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::uint64_t>;

    struct block_ref {
        std::span<std::byte> block; ///< empty: no block (every refcount 0)
        std::uint64_t offset = 0;
    };

    basic_refcount_table(basic_table_cache<Allocator> cache, const Allocator& alloc)
        : cache_(std::move(cache)), table_(u64_alloc(alloc)), blocks_(u64_alloc(alloc)), dirty_(alloc), alloc_(alloc) {}

    unsigned block_shift() const noexcept { return cluster_bits_ + 3 - order_; }
    std::uint64_t cluster_size() const noexcept { return std::uint64_t{1} << cluster_bits_; }

    result<void> write(Backend& f, std::uint64_t offset, std::span<const std::byte> data, std::string_view what) {
        if (auto r = check_io(f.write_at(offset, data), what); !r) return r;
        file_end_ = std::max(file_end_, offset + data.size());
        return {};
    }
    result<void> flush(Backend& f, std::string_view what) { return check_io(f.flush(), what); }

    bool has_block(std::uint64_t cluster) const noexcept {
        const std::uint64_t idx = cluster >> block_shift();
        return idx < table_.size() && (table_[static_cast<std::size_t>(idx)] & reftable_bits::offset_mask) != 0;
    }

    result<block_ref> block(Backend& f, std::uint64_t index) {
        using detail::cat;
        using detail::dec;
        using detail::hex;
        if (index >= table_.size()) return block_ref{};
        const std::uint64_t off = table_[static_cast<std::size_t>(index)] & reftable_bits::offset_mask;
        if (off == 0) return block_ref{};
        if (off >= file_end_ && !cache_.contains(off))
            return error{errc::short_read, cat("refcount block at host offset ", hex(off), " (reftable index ", dec(index),
                                               ") lies past the end of the file (", dec(file_end_), " bytes)")};
        auto t = cache_.get(off, [&](std::span<std::byte> dst) {
            return detail::read_zero_padded(f, file_end_, off, dst, cat("reading the refcount block of reftable index ", dec(index)));
        });
        if (!t) return t.error();
        return block_ref{*t, off};
    }

    template <class OnFreed>
    result<void> change(Backend& f, std::uint64_t cluster, std::uint64_t count, std::int64_t delta, OnFreed& on_freed) {
        using detail::cat;
        using detail::dec;
        if (count == 0 || delta == 0) return {};
        const std::uint64_t maxv = max_refcount();
        const std::uint64_t mag = delta > 0 ? static_cast<std::uint64_t>(delta) : static_cast<std::uint64_t>(-(delta + 1)) + 1;
        // Pass 1: refuse before changing anything.
        for (std::uint64_t c = cluster; c < cluster + count; ++c) {
            if (delta > 0 && !has_block(c))
                return error{errc::image_corrupt, cat("no refcount block covers host cluster ", dec(c))};
            auto v = get(f, c);
            if (!v) return v.error();
            if (delta > 0 && (*v > maxv || mag > maxv - *v))
                return error{errc::refcount_overflow, cat("refcount of host cluster ", dec(c), " (", dec(*v), ") cannot grow by ",
                                                          dec(mag), ": the maximum is ", dec(maxv))};
            if (delta < 0 && *v < mag)
                return error{errc::image_corrupt,
                             cat("refcount of host cluster ", dec(c), " is ", dec(*v), " and cannot drop by ", dec(mag))};
        }
        // Pass 2: per block, change the entries in the cache and mark the bytes dirty.
        const std::uint64_t epb = entries_per_block();
        const std::uint64_t bits = std::uint64_t{1} << order_;
        std::uint64_t c = cluster;
        while (c < cluster + count) {
            const std::uint64_t idx = c >> block_shift();
            const std::uint64_t end = std::min(cluster + count, (idx + 1) * epb);
            if (!dirty_.contains(table_[static_cast<std::size_t>(idx)] & reftable_bits::offset_mask) &&
                dirty_.size() + 2 >= cache_.capacity())
                if (auto r = write_back(f); !r) return r; // keep room for clean blocks
            auto b = block(f, idx);
            if (!b) return b.error();
            const std::span<std::byte> blk = b->block;
            const std::uint64_t first = c & (epb - 1), last = (end - 1) & (epb - 1);
            for (std::uint64_t k = first; k <= last; ++k) {
                const std::uint64_t v = get_refcount(blk, k, order_);
                const std::uint64_t nv = delta > 0 ? v + mag : v - mag;
                set_refcount(blk, k, order_, nv);
                if (nv == 0) {
                    hint_ = std::min(hint_, idx * epb + k);
                    on_freed(idx * epb + k);
                }
            }
            dirty_.mark(cache_, b->offset, static_cast<std::size_t>(first * bits / 8),
                        static_cast<std::size_t>(((last + 1) * bits + 7) / 8));
            c = end;
        }
        return {};
    }

    /// The first run of free clusters at or after the hint (see `allocate`); past the table all is free.
    result<cluster_run> find_free(Backend& f, std::uint64_t n, bool exact) {
        const std::uint64_t epb = entries_per_block();
        std::uint64_t run_start = hint_, run = 0;
        bool first_free_seen = false;
        for (std::uint64_t c = hint_;;) {
            const std::uint64_t idx = c >> block_shift();
            if (idx >= table_.size()) { // everything past the table is free
                if (run == 0) run_start = c;
                if (!first_free_seen) hint_ = c;
                return cluster_run{run_start, n};
            }
            auto b = block(f, idx);
            if (!b) return b.error();
            if (b->block.empty()) { // the whole block's range is free
                if (run == 0) run_start = c;
                if (!first_free_seen) {
                    hint_ = c;
                    first_free_seen = true;
                }
                const std::uint64_t next = (idx + 1) * epb;
                run += next - c;
                if (run >= n) return cluster_run{run_start, n};
                c = next;
                continue;
            }
            if (get_refcount(b->block, c & (epb - 1), order_) == 0) {
                if (!first_free_seen) {
                    hint_ = c;
                    first_free_seen = true;
                }
                if (run == 0) run_start = c;
                if (++run >= n) return cluster_run{run_start, n};
            } else {
                if (!exact && run > 0) return cluster_run{run_start, run};
                run = 0;
            }
            ++c;
        }
    }

    /// Makes sure refcount blocks cover `run`. True when it added structures (which may now
    /// occupy part of the run).
    template <class Guard>
    result<bool> ensure_blocks(Backend& f, cluster_run run, Guard& guard) {
        bool changed = false;
        const std::uint64_t first = run.first >> block_shift(), last = (run.first + run.count - 1) >> block_shift();
        for (std::uint64_t idx = first; idx <= last; ++idx) {
            if (idx < table_.size() && (table_[static_cast<std::size_t>(idx)] & reftable_bits::offset_mask)) continue;
            if (auto r = add_block(f, idx, guard); !r) return r.error();
            changed = true;
        }
        return changed;
    }

    std::vector<std::byte, byte_alloc> zero_cluster() const {
        return std::vector<std::byte, byte_alloc>(static_cast<std::size_t>(cluster_size()), std::byte{0}, byte_alloc(alloc_));
    }

    void add_block_offset(std::uint64_t offset) { blocks_.insert(std::upper_bound(blocks_.begin(), blocks_.end(), offset), offset); }

    /**
     * Adds a refcount block for reftable entry `idx`, where QEMU's `alloc_refcount_block` puts
     * it: in the first free cluster. When a block already covers that cluster, the new block
     * is counted there (and that refcount written first); when none does, the cluster's own
     * range gets the block, which then counts itself. The block is written and flushed before
     * the reftable entry points at it. With no reftable entry for the place, the table grows.
     */
    template <class Guard>
    result<void> add_block(Backend& f, std::uint64_t idx, Guard& guard) {
        if (idx >= table_.size()) return grow_table(f, idx, guard);
        auto place = find_free(f, 1, true);
        if (!place) return place.error();
        const std::uint64_t c = place->first;
        const std::uint64_t idx_c = c >> block_shift();
        if (idx_c >= table_.size()) return grow_table(f, idx_c, guard);
        const std::uint64_t at = c << cluster_bits_;
        if (auto r = guard(at, cluster_size()); !r) return r;
        auto buf = zero_cluster();
        const bool self = (table_[static_cast<std::size_t>(idx_c)] & reftable_bits::offset_mask) == 0;
        if (self) {
            idx = idx_c; // the block for the free cluster's own range, counting itself
            set_refcount(buf, c & (entries_per_block() - 1), order_, 1);
        } else {
            if (auto r = update(f, c, 1, 1); !r) return r;
            if (auto r = write_back(f); !r) return r;
        }
        cache_.invalidate(at);
        if (auto r = write(f, at, buf, "writing a new refcount block"); !r) return r;
        if (auto r = flush(f, "flushing a new refcount block"); !r) return r;
        std::byte e[8];
        detail::store_be64(e, 0, at);
        if (auto r = write(f, table_offset_ + idx * 8, e, "writing a refcount table entry"); !r) return r;
        table_[static_cast<std::size_t>(idx)] = at;
        add_block_offset(at);
        if (c <= hint_) hint_ = c + 1;
        return {};
    }

    /// Replaces the refcount table with one that has an entry for `needed` (class notes).
    template <class Guard>
    result<void> grow_table(Backend& f, std::uint64_t needed, Guard& guard) {
        using detail::cat;
        using detail::dec;
        const std::uint64_t cs = cluster_size(), epb = entries_per_block(), per_cluster = cs / 8;
        const std::uint64_t old_n = table_.size();
        // 1.5 times the old size or what is needed, in whole clusters; enough blocks to cover
        // the new blocks and the new table themselves (a fixed point, as QEMU computes it).
        std::uint64_t new_n = std::max(needed + 1, old_n + old_n / 2);
        std::uint64_t blocks = 1, table_clusters = 0;
        for (;;) {
            new_n = detail::div_round_up(new_n, per_cluster) * per_cluster;
            table_clusters = new_n / per_cluster;
            blocks = 1;
            while (blocks * epb < blocks + table_clusters) ++blocks;
            if (new_n >= old_n + blocks) break;
            new_n = old_n + blocks;
        }
        if (table_clusters * cs > limits::max_refcount_table_bytes)
            return error{errc::refcount_table_too_large,
                         cat("the refcount table would need ", dec(table_clusters), " clusters, more than 8 MiB")};
        const std::uint64_t area = old_n * epb; // the first cluster the old table does not cover
        const std::uint64_t area_clusters = blocks + table_clusters;
        if (auto r = guard(area << cluster_bits_, area_clusters * cs); !r) return r;
        // The new blocks: block j covers reftable index old_n + j and counts the area's clusters in its range.
        auto buf = zero_cluster();
        for (std::uint64_t j = 0; j < blocks; ++j) {
            std::fill(buf.begin(), buf.end(), std::byte{0});
            const std::uint64_t lo = (old_n + j) * epb, hi = lo + epb;
            for (std::uint64_t c = std::max(area, lo); c < std::min(area + area_clusters, hi); ++c) set_refcount(buf, c - lo, order_, 1);
            cache_.invalidate((area + j) << cluster_bits_);
            if (auto r = write(f, (area + j) << cluster_bits_, buf, "writing a refcount block for the new refcount table"); !r) return r;
        }
        // The new table: the old entries, then the new blocks.
        std::vector<std::uint64_t, u64_alloc> t(table_.begin(), table_.end(), u64_alloc(alloc_));
        t.resize(static_cast<std::size_t>(new_n), 0);
        for (std::uint64_t j = 0; j < blocks; ++j) t[static_cast<std::size_t>(old_n + j)] = (area + j) << cluster_bits_;
        const std::uint64_t table_at = (area + blocks) << cluster_bits_;
        for (std::uint64_t k = 0; k < table_clusters; ++k) {
            for (std::uint64_t e = 0; e < per_cluster; ++e) detail::store_be64(buf, e * 8, t[static_cast<std::size_t>(k * per_cluster + e)]);
            if (auto r = write(f, table_at + k * cs, buf, "writing the new refcount table"); !r) return r;
        }
        if (auto r = flush(f, "flushing the new refcount table"); !r) return r;
        std::byte h[12];
        detail::store_be64(h, 0, table_at);
        detail::store_be32(h, 8, static_cast<std::uint32_t>(table_clusters));
        if (auto r = write(f, 48, h, "pointing the header at the new refcount table"); !r) return r;
        if (auto r = flush(f, "flushing the header"); !r) return r;
        const std::uint64_t old_at = table_offset_, old_clusters = table_clusters_;
        table_ = std::move(t);
        table_offset_ = table_at;
        table_clusters_ = static_cast<std::uint32_t>(table_clusters);
        for (std::uint64_t j = 0; j < blocks; ++j) add_block_offset((area + j) << cluster_bits_);
        // The header is durable: nothing references the old table, so its clusters are released.
        return update(f, old_at >> cluster_bits_, old_clusters, -1);
    }

    basic_table_cache<Allocator> cache_;
    std::vector<std::uint64_t, u64_alloc> table_;
    std::vector<std::uint64_t, u64_alloc> blocks_; ///< offsets of the refcount blocks, sorted
    detail::dirty_tables<Allocator> dirty_;
    [[no_unique_address]] Allocator alloc_;
    std::uint64_t file_end_ = 0;
    std::uint64_t table_offset_ = 0;
    std::uint32_t table_clusters_ = 0;
    std::uint64_t hint_ = 0;
    unsigned cluster_bits_ = 16;
    unsigned order_ = 4;
};

/// Opens a refcount reader over an image's file (`img.backend()`, `img.header()`).
template <class Image>
auto open_refcount_reader(Image& img, std::size_t cache_bytes = std::size_t{256} << 10) {
    return basic_refcount_reader<typename Image::backend_type>::open(img.backend(), img.header(), cache_bytes);
}

} // namespace qcow2
