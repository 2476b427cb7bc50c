// SPDX-License-Identifier: MIT
/// @file
/// @brief `basic_refcount_reader`: the stored refcount of any host cluster of an image file.
///
/// The read side of refcount management: the refcount table is loaded once, refcount
/// blocks are read on demand through a bounded `basic_table_cache`. The write side
/// (increment, decrement, allocation) will extend this class; the cache is write-through,
/// so a writer updates the file and then the cached block (see `invalidate_block`).
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
    std::memset(out.data() + avail, 0, out.size() - static_cast<std::size_t>(avail));
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
    using allocator_type = Allocator;

    /**
     * @brief Loads the refcount table described by `h` from `file`.
     * @param file the image file (kept by address). @param h its decoded header.
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

    basic_refcount_reader(basic_refcount_reader&&) noexcept = default;
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

/// Opens a refcount reader over an image's file (`img.backend()`, `img.header()`).
template <class Image>
auto open_refcount_reader(Image& img, std::size_t cache_bytes = std::size_t{256} << 10) {
    return basic_refcount_reader<typename Image::backend_type>::open(img.backend(), img.header(), cache_bytes);
}

} // namespace qcow2
