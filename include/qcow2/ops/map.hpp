// SPDX-License-Identifier: MIT
/// @file
/// @brief `map_extents`: where each guest range of a backing chain comes from, as `qemu-img map` reports it.
#pragma once

#include "qcow2/format/l2_entry.hpp"
#include "qcow2/format/refcount.hpp"
#include "qcow2/io/backend.hpp"
#include "qcow2/metadata/refcounts.hpp"
#include "qcow2/result.hpp"

#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace qcow2 {

/// One run of the guest disk, with the keys of `qemu-img map --output=json`.
struct map_extent {
    /// Guest offset of the run.
    std::uint64_t start = 0;
    /// Its length in bytes.
    std::uint64_t length = 0;
    unsigned depth = 0;   ///< the layer that answers (0 = top); for ranges no layer has, the deepest one asked
    bool present = false; ///< some layer provides the range (false: a deeper backing file could change it)
    bool zero = false;    ///< reads as zeroes
    bool data = false;    ///< reads data from a file
    /// Stored compressed.
    bool compressed = false;
    std::optional<std::uint64_t> offset; ///< host offset in the layer's file, when there is one

    /// True when `next` directly follows and can be merged into this extent (qemu-img's rule).
    constexpr bool mergeable(const map_extent& next) const noexcept {
        return next.start == start + length && depth == next.depth && present == next.present && zero == next.zero &&
               data == next.data && compressed == next.compressed && offset.has_value() == next.offset.has_value() &&
               (!offset || *offset + length == *next.offset);
    }
};

namespace detail {

/// Block status of `[offset, offset + length)` of `b`: `data` false for a hole (and past the end of the file).
template <class Backend>
result<io::extent_status> host_status(const Backend& b, std::uint64_t offset, std::uint64_t length) {
    if constexpr (io::supports_block_status<Backend>) {
        auto size = io::size_of(b);
        if (!size) return size.error();
        if (offset >= *size) return io::extent_status{false, length};
        io::extent_status st;
        if (auto ec = b.block_status(offset, std::min(length, *size - offset), st))
            return error(ec, cat("querying holes at host offset ", hex(offset)));
        st.length = std::min(st.length, length);
        return st;
    } else {
        return io::extent_status{true, length};
    }
}

/**
 * True when an image looks preallocated with `preallocation=metadata`: QEMU's test
 * (`qcow2_detect_metadata_preallocation`) that decides whether block status looks through
 * data clusters for holes in the file. At least max(n * 10 / 9, n + 2) clusters have a
 * non-zero refcount, where n is the number of clusters the file really occupies.
 * Reads the refcount table and blocks until the threshold is reached (bounded by the file).
 */
template <class Image>
result<bool> looks_metadata_preallocated(Image& img) {
    using B = typename Image::backend_type;
    if constexpr (!io::supports_allocated_size<B>) {
        return false;
    } else {
        const auto& h = img.header();
        const std::uint64_t cs = h.cluster_size();
        auto length = io::size_of(img.backend());
        if (!length) return length.error();
        std::uint64_t allocated = 0;
        if (img.backend().allocated_size(allocated)) return false;
        const std::uint64_t real = allocated / cs;
        const std::uint64_t threshold = std::max(real * 10 / 9, real + 2);
        const std::uint64_t end_cluster = div_round_up(*length, cs);
        auto reader = basic_refcount_reader<B>::open(img.backend(), h, std::size_t{2} * static_cast<std::size_t>(cs));
        if (!reader) return reader.error();
        const std::uint64_t per_block = reader->entries_per_block();
        const std::uint64_t blocks = std::min<std::uint64_t>(div_round_up(end_cluster, per_block), reader->table().size());
        std::uint64_t count = 0;
        for (std::uint64_t t = 0; t < blocks && count < threshold; ++t) {
            auto block = reader->block(t);
            if (!block) return block.error();
            if (block->empty()) continue;
            const std::uint64_t n = std::min(per_block, end_cluster - t * per_block);
            for (std::uint64_t k = 0; k < n && count < threshold; ++k)
                count += get_refcount(*block, k, h.refcount_order) != 0;
        }
        return count >= threshold;
    }
}

/// Per-layer answers of `looks_metadata_preallocated`, asked once per layer.
template <class Image>
struct prealloc_memo {
    std::vector<std::pair<const Image*, bool>> known;
    result<bool> get(Image& img) {
        for (const auto& [p, v] : known)
            if (p == &img) return v;
        // As QEMU (qcow2_co_block_status): refcounts that cannot be read (a refcount block past
        // the end of the file) mean "not preallocated", not a failed map.
        auto v = looks_metadata_preallocated(img);
        const bool preallocated = v && *v;
        known.emplace_back(&img, preallocated);
        return preallocated;
    }
};

/// The unmerged extent at `pos` (at most `len` bytes), descending the chain.
template <class Image>
result<map_extent> resolve_extent(Image& top, std::uint64_t pos, std::uint64_t len, prealloc_memo<Image>& memo) {
    Image* layer = &top;
    unsigned depth = 0;
    for (;;) {
        auto m = layer->map_range(pos, len);
        if (!m) return m.error();
        map_extent e;
        e.start = pos;
        e.length = m->length;
        e.depth = depth;
        switch (m->state) {
        case cluster_state::data: {
            e.present = e.data = true;
            e.offset = m->host_offset;
            // Like QEMU, look for holes under data clusters only in images that look preallocated.
            auto prealloc = memo.get(*layer);
            if (!prealloc) return prealloc.error();
            if (*prealloc) {
                auto st = host_status(layer->data_backend(), m->host_offset, m->length);
                if (!st) return st.error();
                e.length = st->length;
                e.zero = !st->data;
            }
            return e;
        }
        case cluster_state::zero:
            e.present = e.zero = true;
            if (m->has_host) e.offset = m->host_offset;
            return e;
        case cluster_state::compressed:
            e.present = e.data = e.compressed = true;
            return e;
        case cluster_state::unallocated:
        case cluster_state::invalid:
            break;
        }
        if (layer->has_backing() && pos < layer->backing_size()) {
            len = std::min(m->length, layer->backing_size() - pos);
            ++depth;
            if (auto* next = layer->backing_image()) {
                layer = next;
                continue;
            }
            if (const auto* raw = layer->backing_raw()) {
                auto st = host_status(*raw, pos, len);
                if (!st) return st.error();
                e.length = st->length;
                e.depth = depth;
                e.present = true;
                e.data = st->data;
                e.zero = !st->data;
                e.offset = pos;
                return e;
            }
            return error{errc::not_supported, "mapping an image opened metadata-only that has a backing file"};
        }
        e.zero = true; // nothing below: reads as zeroes, but a backing file could change it
        if (m->has_host) e.offset = m->host_offset;
        return e;
    }
}

} // namespace detail

/**
 * @brief Calls `emit(const map_extent&)` for each merged run of `[start, start + length)`, in order.
 *
 * The runs are those of `qemu-img map --output=json`: adjacent runs with equal keys and
 * contiguous offsets are merged; in an image that looks metadata-preallocated (QEMU's test),
 * data whose host range is a hole in the file reports `zero: true`; ranges that no layer
 * provides report the deepest layer asked.
 * @par Complexity
 * One `map_range` per run or per L2 table, not per cluster; one block-status query per data run.
 */
template <class Image, class Emit>
result<void> map_extents(Image& img, std::uint64_t start, std::uint64_t length, Emit&& emit) {
    const std::uint64_t end = start + std::min(length, img.size() > start ? img.size() - start : 0);
    std::optional<map_extent> pending;
    detail::prealloc_memo<Image> memo;
    for (std::uint64_t pos = start; pos < end;) {
        auto e = detail::resolve_extent(img, pos, end - pos, memo);
        if (!e) return e.error();
        pos += e->length;
        if (pending && pending->mergeable(*e)) {
            pending->length += e->length;
            continue;
        }
        if (pending) emit(*pending);
        pending = *e;
    }
    if (pending) emit(*pending);
    return {};
}

/// `map_extents` over the whole virtual disk.
template <class Image, class Emit>
result<void> map_extents(Image& img, Emit&& emit) {
    return map_extents(img, 0, img.size(), std::forward<Emit>(emit));
}

} // namespace qcow2
