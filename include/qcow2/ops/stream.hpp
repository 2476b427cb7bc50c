// SPDX-License-Identifier: MIT
/// @file
/// @brief `basic_stream_writer` and `stream_image`: a new qcow2 image written front to back
///        to a sink that cannot seek (a pipe), the same bytes for the same input every time.
///
/// A pipe takes bytes in order and never goes back, so every position is decided before the
/// first byte leaves: the caller first names the guest clusters that hold data (it knows
/// them from a pass over the source's block status and a zero scan), and the writer lays out
/// the whole file from that list alone:
///
/// | clusters | what |
/// |---|---|
/// | 0 | the header, its feature name table (version 3) |
/// | 1 ... | the refcount table |
/// | then | the refcount blocks, covering every cluster of the file |
/// | then | the L1 table |
/// | then | one L2 table per L1 entry that maps data, in L1 order |
/// | then | the data clusters, in guest order (with compression, nearly: see below) |
///
/// The refcount blocks count themselves and the table: their numbers are a fixed point, as
/// `basic_image::create` computes them. Clusters that hold no data stay unallocated (the image
/// has no backing file, so they read as zero). Version 3 images carry the feature name table
/// `create` writes (every known bit, or only the all-zero bit when cluster 0 is too small for
/// more), and the all-zero autoclear bit exactly when no cluster holds data.
///
/// **Compressed output.** The L2 tables precede the data, but a compressed cluster's
/// descriptor holds its byte offset and length, which depend on the lengths of every stream
/// before it. The writer therefore compresses twice: a first pass (`measure`, or sizes the
/// caller measured itself with `add_cluster`) keeps only the length of each cluster's stream
/// (4 bytes per data cluster, never the streams), which fixes the layout; `write` compresses
/// again while it streams and checks that every length is the one measured (compression is
/// deterministic for a codec at a fixed level; a source that changed between the passes is
/// an error, not a corrupt image). The cost is a second read of the data and twice the
/// compression time. The data area is laid out as QEMU's allocator lays it out: streams are
/// packed back to back at byte offsets (one may run on into the next cluster); a cluster
/// that does not shrink is stored plain in the next free whole cluster, and when that comes
/// while a compressed cluster is partly filled, the plain cluster is placed after it and
/// the streams that follow fill the rest of it (the writer keeps up to 2 MiB of such plain
/// clusters until the compressed cluster before them is full; past that, the compressed
/// cluster is closed and its rest left as zero padding). So the file is about the size of
/// `qemu-img convert -c`'s. A host cluster never takes more streams than its refcount width
/// can count (with 1-bit refcounts each stream starts a cluster of its own). The file ends
/// on a cluster boundary.
///
/// **Memory.** The list of data clusters as runs of consecutive clusters (16 bytes per run),
/// 4 bytes per data cluster with compression, one cluster for the metadata being written,
/// and one batch of data (`batch_bytes`, 1 MiB by default); with compression also the
/// streams of one batch and a window of the data area (1 MiB gathered for the sink, 2 MiB
/// of plain clusters waiting, two clusters), and a count per cluster of that window while
/// the refcounts are written. Nothing grows with the image otherwise.
///
/// @see qcow2 spec, "Host cluster management", "Cluster mapping", "Compressed clusters";
///      docs/all-zero-bit.md.
#pragma once

#include "qcow2/codec/dispatch.hpp"
#include "qcow2/config.hpp"
#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/error.hpp"
#include "qcow2/format/extensions.hpp"
#include "qcow2/format/features.hpp"
#include "qcow2/format/header.hpp"
#include "qcow2/format/l2_entry.hpp"
#include "qcow2/format/refcount.hpp"
#include "qcow2/image.hpp"
#include "qcow2/ops/measure.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace qcow2 {

/// Takes the bytes of a streamed image in order: `sink(bytes)` writes all of `bytes` after
/// what it wrote before, or fails. There are no offsets.
template <class S>
concept stream_sink = requires(S& s, std::span<const std::byte> bytes) {
    { s(bytes) } -> std::convertible_to<result<void>>;
};

/// Reads the source's guest disk: `read(guest_offset, out)` fills all of `out` with the bytes
/// at `guest_offset`, or fails.
template <class R>
concept stream_reader = requires(R& r, std::uint64_t guest_offset, std::span<std::byte> out) {
    { r(guest_offset, out) } -> std::convertible_to<result<void>>;
};

/**
 * @brief Compresses batches of clusters for `basic_stream_writer`.
 *
 * `c.compress(clusters, cluster_size)` compresses each of the `clusters.size() / cluster_size`
 * whole clusters laid end to end in `clusters` (its size is a multiple of `cluster_size`);
 * then `c.stream(i)` is cluster `i`'s stream, shorter than a cluster, or empty when the
 * cluster does not shrink (it is stored plain), valid until the next `compress`. The same
 * cluster must give the same stream every time (the writer compresses twice). An
 * implementation may compress a batch on several threads.
 */
template <class C>
concept batch_compressor = requires(C& c, std::span<const std::byte> clusters, std::size_t cluster_size, std::size_t i) {
    { c.compress(clusters, cluster_size) } -> std::convertible_to<result<void>>;
    { c.stream(i) } -> std::convertible_to<std::span<const std::byte>>;
};

/// Where the parts of a streamed image lie: byte offsets in the file, sizes in clusters.
struct stream_layout {
    /// The cluster size in bytes.
    std::uint64_t cluster_size = 0;
    /// The refcount table's offset (cluster 1).
    std::uint64_t refcount_table_offset = 0;
    /// Its length in clusters.
    std::uint64_t refcount_table_clusters = 0;
    /// The first refcount block's offset; the blocks follow each other.
    std::uint64_t refcount_blocks_offset = 0;
    /// Number of refcount blocks.
    std::uint64_t refcount_blocks = 0;
    /// The L1 table's offset.
    std::uint64_t l1_table_offset = 0;
    /// Its length in clusters (0 for an empty disk).
    std::uint64_t l1_clusters = 0;
    /// The first L2 table's offset; the tables follow each other in L1 order.
    std::uint64_t l2_tables_offset = 0;
    /// Number of L2 tables (L1 entries that map data).
    std::uint64_t l2_tables = 0;
    /// Where the data area starts.
    std::uint64_t data_offset = 0;
    /// Clusters of the data area (with compression, fewer than the data clusters).
    std::uint64_t data_clusters = 0;
    /// The size of the whole file in bytes: every byte the sink receives.
    std::uint64_t file_size = 0;
    /// Guest clusters that hold data.
    std::uint64_t guest_data_clusters = 0;
    /// Of those, the clusters stored compressed.
    std::uint64_t compressed_clusters = 0;
    /// Equal when every field is.
    friend constexpr bool operator==(const stream_layout&, const stream_layout&) = default;
};

namespace detail {

/**
 * Places the data clusters of a streamed image in its data area, as QEMU's allocator would:
 * compressed streams are packed at the next free byte of the open compressed cluster (a
 * stream may run on into the next cluster, which then follows it at once), and a plain
 * cluster takes the next free whole cluster. A plain cluster that comes while a compressed
 * cluster is still open is placed after it and waits (the writer keeps it) until the open
 * cluster is full, so that the streams after it fill the open cluster instead of leaving its
 * rest empty; at most `deferred_max` bytes of plain clusters wait, then the open cluster is
 * closed with its rest as zeroes. A cluster never takes more streams than `max_refcount`.
 *
 * Everything below `sealed()` is final and may be written out; the bytes between it and
 * `end()` (the open cluster and the plain clusters after it) are at most one cluster plus
 * `deferred_max`.
 */
class stream_packer {
public:
    constexpr stream_packer(std::uint64_t cluster_size, std::uint64_t max_refcount, std::uint64_t deferred_max) noexcept
        : cs_(cluster_size), max_(max_refcount), deferred_max_(deferred_max) {}

    /// The offset (from the start of the data area) of the next cluster: `length` bytes of
    /// compressed stream (below the cluster size), or a plain cluster when `length` is 0.
    constexpr std::uint64_t place(std::uint64_t length) noexcept {
        if (length == 0) {
            if (open_ && deferred_ + cs_ > deferred_max_) close();
            const std::uint64_t at = next_;
            next_ += cs_;
            if (open_) deferred_ += cs_;
            return at;
        }
        if (open_ && refs_ < max_) {
            const std::uint64_t at = open_at_ + used_;
            if (used_ + length <= cs_) { // fits in the open cluster
                used_ += length;
                ++refs_;
                if (used_ == cs_) close();
                return at;
            }
            if (deferred_ == 0) { // runs on into a new cluster right after the open one
                used_ = used_ + length - cs_;
                open_at_ = next_;
                next_ += cs_;
                refs_ = 1;
                return at;
            }
        }
        close();
        open_ = true;
        open_at_ = next_;
        next_ += cs_;
        used_ = length;
        refs_ = 1;
        return open_at_;
    }

    /// Closes the open compressed cluster, if any: its rest stays zero.
    constexpr void close() noexcept {
        open_ = false;
        used_ = refs_ = deferred_ = 0;
    }

    /// Bytes of the data area below this offset are final.
    constexpr std::uint64_t sealed() const noexcept { return open_ ? open_at_ : next_; }

    /// Bytes of the data area used so far (whole clusters).
    constexpr std::uint64_t end() const noexcept { return next_; }

private:
    std::uint64_t cs_;
    std::uint64_t max_;
    std::uint64_t deferred_max_;
    std::uint64_t next_ = 0;     // the next free cluster
    bool open_ = false;          // a compressed cluster takes more streams
    std::uint64_t open_at_ = 0;  // its offset
    std::uint64_t used_ = 0;     // its bytes used
    std::uint64_t refs_ = 0;     // its streams
    std::uint64_t deferred_ = 0; // bytes of plain clusters placed after it
};

/// The header of a streamed image (offsets still 0), with `create`'s checks and messages; the
/// all-zero bit is left to the writer (set when no cluster holds data).
inline result<header> stream_header(const create_options& o, std::uint64_t virtual_size) {
    auto unsupported = [](std::string_view m) { return error{errc::not_supported, m}; };
    if (!o.backing_file.empty() || !o.backing_format.empty()) return unsupported("a streamed image cannot have a backing file");
    if (!o.data_file.empty() || o.data_file_raw) return unsupported("a streamed image cannot have an external data file");
    if (o.prealloc != preallocation::off) return unsupported("a streamed image cannot be preallocated (preallocation must be off)");
    create_options c = o;
    c.size = virtual_size;
    auto h = plan_create(c);
    if (h) h->autoclear_features &= ~features::all_zero::mask;
    return h;
}

} // namespace detail

// The compressor holds codec state whose layout depends on QCOW2_HAS_*: keep it in the ABI namespace.
inline namespace QCOW2_ABI_NAMESPACE {

/**
 * @brief A `batch_compressor` on the calling thread, with `codec::cluster_compressor` (QEMU's
 *        parameters for zlib and zstd).
 * @par Allocation
 * The streams of one batch: `count * (cluster_size - 1)` bytes, kept for the next batch.
 */
template <class Allocator = std::allocator<std::byte>>
class basic_serial_compressor {
public:
    /// Compresses with the codec of `type`.
    explicit basic_serial_compressor(compression type, const Allocator& alloc = Allocator())
        : codec_(type), out_(byte_alloc(alloc)), lengths_(size_alloc(alloc)) {}

    /**
     * @brief Compresses each whole cluster of `clusters`.
     * @par Errors
     * Those of `codec::cluster_compressor::compress` other than `not_compressible` (such a
     * cluster gets an empty stream): `unsupported_compression` when the codec was not compiled
     * in, `no_memory`; `invalid_argument` when `clusters` is not whole clusters.
     */
    result<void> compress(std::span<const std::byte> clusters, std::size_t cluster_size) {
        if (cluster_size < 2 || clusters.size() % cluster_size != 0)
            return error{errc::invalid_argument, "a batch to compress must be whole clusters"};
        const std::size_t count = clusters.size() / cluster_size;
        cs_ = cluster_size;
        out_.resize(count * (cluster_size - 1));
        lengths_.assign(count, 0);
        for (std::size_t i = 0; i < count; ++i) {
            auto n = codec_.compress(clusters.subspan(i * cluster_size, cluster_size),
                                     std::span(out_).subspan(i * (cluster_size - 1), cluster_size - 1));
            if (n) lengths_[i] = *n;
            else if (!n.error().is(errc::not_compressible)) return n.error();
        }
        return {};
    }

    /// Cluster `i`'s stream from the last `compress` (empty: store it plain).
    std::span<const std::byte> stream(std::size_t i) const {
        return std::span<const std::byte>(out_).subspan(i * (cs_ - 1), lengths_[i]);
    }

private:
    using byte_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::byte>;
    using size_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::size_t>;
    codec::cluster_compressor codec_;
    std::size_t cs_ = 2;
    std::vector<std::byte, byte_alloc> out_;
    std::vector<std::size_t, size_alloc> lengths_;
};

/// The serial compressor with `std::allocator`.
using serial_compressor = basic_serial_compressor<>;

static_assert(batch_compressor<serial_compressor>);


/**
 * @brief Writes a new qcow2 image to a sequential sink: plan it from the guest clusters that
 *        hold data, then `write` it front to back. See the file comment for the layout.
 *
 * Use: `make`, then `add_clusters` / `add_cluster` for each data cluster in ascending order,
 * then (compressed output, for clusters added without a length) `measure`, then `write`
 * (which calls `finish` if the caller did not). `write` may be called again: it writes the
 * same bytes, given the same source.
 *
 * @tparam Allocator allocates the list of data clusters, the compressed lengths and the
 *         buffers of `write`.
 */
template <class Allocator = std::allocator<std::byte>>
class basic_stream_writer {
public:
    /// The allocator of the lists and buffers.
    using allocator_type = Allocator;

    /**
     * @brief Plans an image with options `o` (all but `size`) and a virtual disk of
     *        `virtual_size` bytes (rounded up to a multiple of 512), holding no data yet.
     * @param o the image's options; `size` is not used.
     * @param virtual_size the guest disk's size in bytes.
     * @param compressed store the data clusters compressed with `o.compression_type`, where
     *        they shrink.
     * @param alloc allocates the lists of data clusters and lengths, and the buffers.
     * @par Errors
     * `not_supported` for what a stream cannot hold: a backing file (or format), an external
     * data file, preallocation other than `off`; `invalid_argument` for options QEMU refuses
     * (the message is `create`'s); `image_too_large` when the L1 table would exceed 32 MiB.
     */
    static result<basic_stream_writer> make(const create_options& o, std::uint64_t virtual_size, bool compressed,
                                            const Allocator& alloc = Allocator()) {
        auto h = detail::stream_header(o, virtual_size);
        if (!h) return h.error();
        return basic_stream_writer(std::move(*h), virtual_size, compressed, alloc);
    }

    /// The header; its table offsets are set by `finish`.
    const qcow2::header& header() const noexcept { return header_; }
    /// True when data clusters are stored compressed (where they shrink).
    bool compressed() const noexcept { return compressed_; }
    /// The cluster size in bytes.
    std::uint64_t cluster_size() const noexcept { return header_.cluster_size(); }
    /// The virtual size (rounded up to a multiple of 512).
    std::uint64_t size() const noexcept { return header_.size; }
    /// Guest clusters of the disk (the last one may be partly past the virtual size).
    std::uint64_t guest_clusters() const noexcept { return detail::div_round_up(header_.size, cluster_size()); }
    /// Guest clusters added so far.
    std::uint64_t data_clusters() const noexcept { return data_count_; }

    /**
     * @brief Adds the `count` guest clusters from `first`, which hold data (with compression,
     *        their lengths are learnt by `measure`).
     * @par Errors
     * `invalid_argument` when the clusters are not above every cluster added before, go past
     * the disk, or come after `finish`.
     */
    result<void> add_clusters(std::uint64_t first, std::uint64_t count) {
        if (count == 0) return {};
        if (auto r = check_add(first, count); !r) return r;
        if (!runs_.empty() && runs_.back().first + runs_.back().count == first) runs_.back().count += count;
        else runs_.push_back({first, count});
        if (compressed_) lengths_.insert(lengths_.end(), static_cast<std::size_t>(count), unmeasured);
        data_count_ += count;
        return {};
    }

    /**
     * @brief Adds guest cluster `index`, which holds data, with the length of its compressed
     *        stream as the caller measured it (0: it does not shrink, store it plain).
     *
     * The stream `write` makes for the cluster must have this length: measure with the
     * compressor `write` is given (or one that gives the same streams).
     * @par Errors
     * Those of `add_clusters`; `invalid_argument` for a length that is not below the cluster
     * size, or a non-zero length without compression.
     */
    result<void> add_cluster(std::uint64_t index, std::size_t compressed_length) {
        if (compressed_length >= cluster_size() || (compressed_length != 0 && !compressed_))
            return error{errc::invalid_argument, detail::cat("a compressed length of ", detail::dec(compressed_length),
                                                             compressed_ ? " bytes is not below the cluster size"
                                                                         : " bytes for an image written uncompressed")};
        if (auto r = add_clusters(index, 1); !r) return r;
        if (compressed_) lengths_.back() = static_cast<std::uint32_t>(compressed_length);
        return {};
    }

    /**
     * @brief Compressed output: learns the length of the stream of every cluster added
     *        without one, compressing it with `c` (the first of the two passes).
     * @param read reads the source; called for runs of consecutive clusters in guest order,
     *        never past `virtual_size` as given to `make` (the rest of a last partial cluster reads as
     *        zeroes).
     * @param c compresses one cluster's bytes into a stream (as `basic_serial_compressor`).
     * @param batch_bytes data read and compressed at a time (at least one cluster).
     * @par Errors
     * The reader's and the compressor's, unchanged; `invalid_argument` after `finish`, or for
     * a stream not shorter than a cluster.
     * @par Memory
     * One batch of data, and what `c` keeps.
     */
    template <class Reader, class Compressor>
        requires stream_reader<std::remove_cvref_t<Reader>> && batch_compressor<std::remove_cvref_t<Compressor>>
    result<void> measure(Reader&& read, Compressor&& c, std::size_t batch_bytes = default_batch) {
        if (finished_) return error{errc::invalid_argument, "the stream's layout is already fixed (finish was called)"};
        if (!compressed_) return {};
        const std::size_t cs = static_cast<std::size_t>(cluster_size());
        return for_each_batch(
            read, batch_bytes, [&](std::size_t ord) { return lengths_[ord] == unmeasured; },
            [&](std::span<const std::byte> data, std::span<const std::uint64_t>, std::span<const std::size_t> ords) -> result<void> {
                result<void> r = c.compress(data, cs);
                if (!r) return r;
                for (std::size_t i = 0; i < ords.size(); ++i) {
                    const std::span<const std::byte> s = c.stream(i);
                    if (s.size() >= cs) return error{errc::invalid_argument, "the compressor returned a stream not shorter than a cluster"};
                    lengths_[ords[i]] = static_cast<std::uint32_t>(s.size());
                }
                return {};
            });
    }

    /**
     * @brief Fixes the layout: no clusters can be added afterwards. Sets the header's offsets,
     *        and the all-zero bit (version 3) when no cluster holds data.
     * @return where everything lies, and the file's size.
     * @par Errors
     * `invalid_argument` when a compressed cluster's length is still unknown (`measure`);
     * `refcount_table_too_large` when the refcount table would exceed 8 MiB; `image_too_large`
     * when the file would pass 2^56 bytes, or compressed data an offset its descriptor can hold.
     * @par Complexity
     * Linear in the number of data clusters; no I/O.
     */
    result<stream_layout> finish() {
        if (finished_) return layout_;
        const std::uint64_t cs = cluster_size();
        const unsigned cb = header_.cluster_bits;
        std::uint64_t compressed_count = 0;
        for (const std::uint32_t n : lengths_) {
            if (n == unmeasured)
                return error{errc::invalid_argument, "the compressed length of a data cluster is unknown: call measure first"};
            if (n != 0) ++compressed_count;
        }
        // L2 tables: one per L1 entry whose range holds data.
        const std::uint64_t ept = cs / header_.l2_entry_size();
        std::uint64_t l2_tables = 0, last_table = no_table;
        for (const auto& r : runs_) {
            const std::uint64_t a = r.first / ept, b = (r.first + r.count - 1) / ept;
            l2_tables += b - a + (a == last_table ? 0u : 1u);
            last_table = b;
        }
        // The data area: every placement, in order.
        detail::stream_packer packer = make_packer();
        std::size_t ord = 0;
        for (const auto& r : runs_)
            for (std::uint64_t k = 0; k < r.count; ++k) packer.place(compressed_ ? lengths_[ord++] : 0);
        const std::uint64_t data = detail::div_round_up(packer.end(), cs);
        const std::uint64_t l1_clusters = detail::div_round_up(std::uint64_t{header_.l1_size} * 8, cs);
        // The refcount structures count themselves: a fixed point, as `create` computes it.
        const std::uint64_t epb = refcount_entries_per_block(cb, header_.refcount_order);
        std::uint64_t blocks = 1, table = 1;
        for (;;) {
            const std::uint64_t n = 1 + table + blocks + l1_clusters + l2_tables + data;
            const std::uint64_t nb = detail::div_round_up(n, epb);
            const std::uint64_t nt = detail::div_round_up(nb * 8, cs);
            if (nb == blocks && nt == table) break;
            blocks = std::max(blocks, nb);
            table = std::max(table, nt);
            if (table * cs > limits::max_refcount_table_bytes) break;
        }
        if (table * cs > limits::max_refcount_table_bytes)
            return error{errc::refcount_table_too_large, "the streamed image's refcount table would exceed 8 MiB"};
        stream_layout l;
        l.cluster_size = cs;
        l.refcount_table_offset = cs;
        l.refcount_table_clusters = table;
        l.refcount_blocks_offset = (1 + table) * cs;
        l.refcount_blocks = blocks;
        l.l1_table_offset = l.refcount_blocks_offset + blocks * cs;
        l.l1_clusters = l1_clusters;
        l.l2_tables_offset = l.l1_table_offset + l1_clusters * cs;
        l.l2_tables = l2_tables;
        l.data_offset = l.l2_tables_offset + l2_tables * cs;
        l.data_clusters = data;
        const std::uint64_t total = 1 + table + blocks + l1_clusters + l2_tables + data;
        if (total > (limits::max_host_offset + 1) >> cb) return error{errc::image_too_large, "the streamed image would pass 2^56 bytes"};
        l.file_size = total * cs;
        l.guest_data_clusters = data_count_;
        l.compressed_clusters = compressed_count;
        if (compressed_count && l.file_size > (std::uint64_t{1} << (70 - cb)))
            return error{errc::image_too_large, detail::cat("compressed data past byte ", detail::dec(std::uint64_t{1} << (70 - cb)),
                                                            ", beyond what a compressed descriptor holds with ", detail::dec(cs),
                                                            "-byte clusters")};
        header_.refcount_table_offset = l.refcount_table_offset;
        header_.refcount_table_clusters = static_cast<std::uint32_t>(table);
        header_.l1_table_offset = l.l1_table_offset;
        if (header_.version == 3 && data_count_ == 0) header_.autoclear_features |= features::all_zero::mask;
        if (auto r = validate_header(header_); !r) return r.error();
        layout_ = l;
        finished_ = true;
        return l;
    }

    /**
     * @brief Writes the whole image to `sink`, front to back (calls `finish` first if needed).
     * @param read reads the source, as for `measure`; called again for every data cluster.
     * @param sink takes the bytes in order: `stream_layout::file_size` bytes in all, in calls
     *        of one cluster (metadata), up to a batch (plain data) or of about 1 MiB
     *        (compressed data).
     * @param c compresses the data (compressed output); it must give the streams `measure`
     *        (or the caller's `add_cluster`) measured.
     * @param batch_bytes data read (and compressed) at a time (at least one cluster).
     * @par Errors
     * Those of `finish`; the reader's, the sink's and the compressor's, unchanged;
     * `invalid_argument` when a cluster's stream does not have the length measured (the
     * source changed between the passes, or the compressor differs). The sink then has part of
     * the image.
     * @par I/O
     * Reads each data cluster once, in guest order, in runs of consecutive clusters.
     * @par Memory
     * One batch of data and what `c` keeps; with compression, a window of the data area
     * (about 3 MiB and two clusters: see the file comment).
     */
    template <class Reader, class Sink, class Compressor>
        requires stream_reader<std::remove_cvref_t<Reader>> && stream_sink<std::remove_cvref_t<Sink>> &&
                 batch_compressor<std::remove_cvref_t<Compressor>>
    result<void> write(Reader&& read, Sink&& sink, Compressor&& c, std::size_t batch_bytes = default_batch) {
        if (auto l = finish(); !l) return l.error();
        std::uint64_t written = 0;
        auto out = [&](std::span<const std::byte> b) -> result<void> {
            written += b.size();
            return sink(b);
        };
        if (auto r = write_metadata(out); !r) return r;
        if (auto r = write_data(read, out, c, batch_bytes); !r) return r;
        if (written != layout_.file_size)
            return error{errc::invalid_argument, detail::cat("wrote ", detail::dec(written), " bytes of a streamed image of ",
                                                             detail::dec(layout_.file_size))};
        return {};
    }

    /// `write` with a `basic_serial_compressor` of the image's compression type.
    template <class Reader, class Sink>
        requires stream_reader<std::remove_cvref_t<Reader>> && stream_sink<std::remove_cvref_t<Sink>>
    result<void> write(Reader&& read, Sink&& sink) {
        basic_serial_compressor<Allocator> c(header_.compression_kind(), alloc_);
        return write(read, sink, c);
    }

    /// The layout `finish` fixed (all zero before).
    const stream_layout& layout() const noexcept { return layout_; }

private:
    using byte_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::byte>;
    using bytes = std::vector<std::byte, byte_alloc>;
    struct run {
        std::uint64_t first, count;
    };
    using run_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<run>;
    using u32_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::uint32_t>;
    using u64_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::uint64_t>;
    using size_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<std::size_t>;
    static constexpr std::uint32_t unmeasured = std::numeric_limits<std::uint32_t>::max();
    static constexpr std::uint64_t no_table = std::numeric_limits<std::uint64_t>::max();
    static constexpr std::size_t default_batch = std::size_t{1} << 20;
    /// Plain clusters that may wait behind an open compressed cluster (part of the layout:
    /// changing it changes the bytes written).
    static constexpr std::uint64_t deferred_plain_bytes = std::uint64_t{2} << 20;
    /// Final bytes of the data area gathered before a write to the sink, with compression.
    static constexpr std::uint64_t flush_bytes = std::uint64_t{1} << 20;

    basic_stream_writer(qcow2::header h, std::uint64_t disk_size, bool compressed, const Allocator& alloc)
        : header_(std::move(h)), disk_size_(disk_size), compressed_(compressed), alloc_(alloc), runs_(run_alloc(alloc)),
          lengths_(u32_alloc(alloc)) {}

    result<void> check_add(std::uint64_t first, std::uint64_t count) const {
        if (finished_) return error{errc::invalid_argument, "the stream's layout is already fixed (finish was called)"};
        if (first >= guest_clusters() || count > guest_clusters() - first)
            return error{errc::invalid_argument, detail::cat("guest clusters ", detail::dec(first), " to ", detail::dec(first + count - 1),
                                                             " go past the disk's ", detail::dec(guest_clusters()), " clusters")};
        if (!runs_.empty() && first < runs_.back().first + runs_.back().count)
            return error{errc::invalid_argument, detail::cat("guest cluster ", detail::dec(first),
                                                             " is not above the clusters added before (ascending order, each once)")};
        return {};
    }

    /// The packer of the data area (see `detail::stream_packer`).
    detail::stream_packer make_packer() const noexcept {
        return detail::stream_packer(cluster_size(), refcount_max(header_.refcount_order), deferred_plain_bytes);
    }

    /// Bytes of the data area the writer keeps at a time with compression: the open
    /// compressed cluster and the plain clusters waiting behind it, and up to `flush_bytes`
    /// of final bytes (written out in one call to the sink), and one more cluster.
    std::uint64_t window_bytes() const noexcept { return flush_bytes + deferred_plain_bytes + 2 * cluster_size(); }

    /// The data area's placements in guest order: `f(guest_cluster, offset_in_data_area, length,
    /// sealed)` (length 0: a plain cluster; bytes of the data area below `sealed` are then
    /// final). Stops at `f`'s first error.
    template <class F>
    result<void> for_each_placement(F&& f) const {
        detail::stream_packer packer = make_packer();
        std::size_t ord = 0;
        for (const auto& r : runs_)
            for (std::uint64_t g = r.first; g < r.first + r.count; ++g) {
                const std::uint64_t n = compressed_ ? lengths_[ord++] : 0;
                const std::uint64_t off = packer.place(n);
                if (auto res = f(g, off, n, packer.sealed()); !res) return res;
            }
        return {};
    }

    /// Header, refcount table, refcount blocks, L1 table, L2 tables: one cluster per call.
    template <class Out>
    result<void> write_metadata(Out& out) const {
        using detail::store_be64;
        const stream_layout& l = layout_;
        const std::uint64_t cs = l.cluster_size;
        const unsigned cb = header_.cluster_bits;
        const unsigned order = header_.refcount_order;
        bytes buf(static_cast<std::size_t>(cs), byte_alloc(alloc_));
        if (auto r = encode_header(header_, buf); !r) return r;
        if (auto r = out(buf); !r) return r;

        // The refcount table: one entry per block.
        const std::uint64_t per_cluster = cs / 8;
        for (std::uint64_t c = 0; c < l.refcount_table_clusters; ++c) {
            std::fill(buf.begin(), buf.end(), std::byte{0});
            for (std::uint64_t j = c * per_cluster; j < std::min(l.refcount_blocks, (c + 1) * per_cluster); ++j)
                store_be64(buf, (j - c * per_cluster) * 8, l.refcount_blocks_offset + (j << cb));
            if (auto r = out(buf); !r) return r;
        }

        // The refcount blocks: 1 for every metadata cluster, then the data area's counts.
        const std::uint64_t epb = refcount_entries_per_block(cb, order);
        std::fill(buf.begin(), buf.end(), std::byte{0});
        std::uint64_t k = 0, blocks_out = 0;
        auto put = [&](std::uint64_t value) -> result<void> {
            set_refcount(buf, k % epb, order, value);
            if (++k % epb == 0) {
                ++blocks_out;
                if (auto r = out(buf); !r) return r;
                std::fill(buf.begin(), buf.end(), std::byte{0});
            }
            return {};
        };
        const std::uint64_t data_at = l.data_offset >> cb;
        for (std::uint64_t i = 0; i < data_at; ++i)
            if (auto r = put(1); !r) return r;
        if (!compressed_) {
            for (std::uint64_t i = 0; i < l.data_clusters; ++i)
                if (auto r = put(1); !r) return r;
        } else {
            // A host cluster's count is the number of placements touching it; the counts of
            // the clusters not yet final wait in a ring, as the data does in `write_data`.
            const std::uint64_t slots = window_bytes() / cs;
            std::vector<std::uint64_t, u64_alloc> counts(static_cast<std::size_t>(slots), 0, u64_alloc(alloc_));
            std::uint64_t front = 0; // clusters of the data area counted
            auto count_to = [&](std::uint64_t end_cluster) -> result<void> {
                for (; front < end_cluster; ++front) {
                    std::uint64_t& c = counts[static_cast<std::size_t>(front % slots)];
                    if (auto e = put(c); !e) return e;
                    c = 0;
                }
                return {};
            };
            auto r = for_each_placement([&](std::uint64_t, std::uint64_t off, std::uint64_t n, std::uint64_t sealed) -> result<void> {
                const std::uint64_t c0 = off / cs, c1 = n ? (off + n - 1) / cs : c0;
                if (c0 < front || c1 >= front + slots)
                    return error{errc::invalid_argument, "a streamed cluster falls outside the writer's window"};
                for (std::uint64_t c = c0; c <= c1; ++c) ++counts[static_cast<std::size_t>(c % slots)];
                return count_to(sealed / cs);
            });
            if (!r) return r;
            if (auto e = count_to(l.data_clusters); !e) return e;
        }
        if (k != data_at + l.data_clusters)
            return error{errc::invalid_argument, "the streamed image's refcounts do not cover its data area"};
        if (k % epb != 0) {
            ++blocks_out;
            if (auto r = out(buf); !r) return r;
        }
        std::fill(buf.begin(), buf.end(), std::byte{0});
        for (; blocks_out < l.refcount_blocks; ++blocks_out)
            if (auto r = out(buf); !r) return r;

        // The L1 table: the tables in order, from the first L2 cluster.
        const std::uint64_t ept = cs / header_.l2_entry_size();
        std::uint64_t l1_cluster = 0, ordinal = 0, last = no_table;
        std::fill(buf.begin(), buf.end(), std::byte{0});
        auto l1_entry = [&](std::uint64_t t) -> result<void> {
            for (; t >= (l1_cluster + 1) * per_cluster; ++l1_cluster) {
                if (auto r = out(buf); !r) return r;
                std::fill(buf.begin(), buf.end(), std::byte{0});
            }
            store_be64(buf, (t - l1_cluster * per_cluster) * 8, (l.l2_tables_offset + (ordinal++ << cb)) | l2_bits::copied);
            return {};
        };
        for (const auto& r : runs_)
            for (std::uint64_t t = std::max(r.first / ept, last == no_table ? 0 : last + 1); t <= (r.first + r.count - 1) / ept; ++t) {
                if (auto e = l1_entry(t); !e) return e;
                last = t;
            }
        for (; l1_cluster < l.l1_clusters; ++l1_cluster) {
            if (auto r = out(buf); !r) return r;
            std::fill(buf.begin(), buf.end(), std::byte{0});
        }

        // The L2 tables.
        const std::uint64_t esz = header_.l2_entry_size();
        std::uint64_t table = no_table;
        std::fill(buf.begin(), buf.end(), std::byte{0});
        auto r = for_each_placement([&](std::uint64_t g, std::uint64_t off, std::uint64_t n, std::uint64_t) -> result<void> {
            if (g / ept != table) {
                if (table != no_table)
                    if (auto e = out(buf); !e) return e;
                std::fill(buf.begin(), buf.end(), std::byte{0});
                table = g / ept;
            }
            const std::uint64_t at = (g % ept) * esz;
            const std::uint64_t host = l.data_offset + off;
            if (n) {
                store_be64(buf, at, encode_compressed(host, n, cb));
            } else {
                store_be64(buf, at, host | l2_bits::copied);
                if (header_.extended_l2()) store_be64(buf, at + 8, 0xFFFFFFFFull); // every subcluster allocated
            }
            return {};
        });
        if (!r) return r;
        if (table != no_table)
            if (auto e = out(buf); !e) return e;
        return {};
    }

    /**
     * Reads the data clusters whose ordinal `wanted` accepts into batches of whole clusters,
     * in guest order, and calls `f(data, guest_clusters, ordinals)` for each batch.
     */
    template <class Reader, class Wanted, class F>
    result<void> for_each_batch(Reader& read, std::size_t batch_bytes, Wanted&& wanted, F&& f) const {
        const std::uint64_t cs = cluster_size();
        const std::size_t per_batch = static_cast<std::size_t>(std::max<std::uint64_t>(1, batch_bytes / cs));
        bytes buf(per_batch * static_cast<std::size_t>(cs), byte_alloc(alloc_));
        std::vector<std::uint64_t, u64_alloc> guest(per_batch, 0, u64_alloc(alloc_));
        std::vector<std::size_t, size_alloc> ords(per_batch, 0, size_alloc(alloc_));
        std::size_t n = 0, piece_slot = 0, piece_count = 0;
        std::uint64_t piece_first = 0;
        // Reads the pending run of consecutive clusters; past the source's end, zeroes.
        auto read_piece = [&]() -> result<void> {
            if (piece_count == 0) return {};
            const std::uint64_t off = piece_first * cs;
            const std::uint64_t len = off >= disk_size_ ? 0 : std::min<std::uint64_t>(piece_count * cs, disk_size_ - off);
            const auto dst = std::span(buf).subspan(piece_slot * static_cast<std::size_t>(cs), piece_count * static_cast<std::size_t>(cs));
            std::fill(dst.begin() + static_cast<std::ptrdiff_t>(len), dst.end(), std::byte{0});
            piece_count = 0;
            if (len == 0) return {};
            return read(off, dst.first(static_cast<std::size_t>(len)));
        };
        std::size_t ord = 0;
        for (const auto& r : runs_)
            for (std::uint64_t g = r.first; g < r.first + r.count; ++g, ++ord) {
                if (!wanted(ord)) continue;
                if (piece_count && g != piece_first + piece_count)
                    if (auto e = read_piece(); !e) return e;
                if (!piece_count) {
                    piece_first = g;
                    piece_slot = n;
                }
                ++piece_count;
                guest[n] = g;
                ords[n] = ord;
                if (++n == per_batch) {
                    if (auto e = read_piece(); !e) return e;
                    if (auto e = f(std::span<const std::byte>(buf), std::span<const std::uint64_t>(guest), std::span<const std::size_t>(ords)); !e)
                        return e;
                    n = 0;
                }
            }
        if (n) {
            if (auto e = read_piece(); !e) return e;
            return f(std::span<const std::byte>(buf).first(n * static_cast<std::size_t>(cs)), std::span<const std::uint64_t>(guest).first(n),
                     std::span<const std::size_t>(ords).first(n));
        }
        return {};
    }

    /// The data area: plain clusters as read, or streams packed as `finish` placed them.
    template <class Reader, class Out, class Compressor>
    result<void> write_data(Reader& read, Out& out, Compressor& c, std::size_t batch_bytes) const {
        const std::uint64_t cs = cluster_size();
        if (!compressed_) {
            return for_each_batch(read, batch_bytes, [](std::size_t) { return true; },
                                  [&](std::span<const std::byte> data, std::span<const std::uint64_t>, std::span<const std::size_t>) {
                                      return out(data);
                                  });
        }
        // The data area goes through a ring of `window_bytes()`: each cluster's bytes are put
        // where the packer placed them, and the ring is written out from `front` up to what
        // the packer has sealed, `flush_bytes` or more at a time (bytes never filled are the
        // zero padding of a closed compressed cluster).
        const std::uint64_t ring_size = window_bytes();
        bytes ring(static_cast<std::size_t>(ring_size), std::byte{0}, byte_alloc(alloc_));
        std::uint64_t front = 0; // bytes of the data area written
        auto write_to = [&](std::uint64_t to) -> result<void> {
            while (front < to) {
                const auto at = static_cast<std::size_t>(front % ring_size);
                const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(to - front, ring_size - at));
                const auto part = std::span(ring).subspan(at, n);
                if (auto r = out(std::span<const std::byte>(part)); !r) return r;
                std::fill(part.begin(), part.end(), std::byte{0});
                front += n;
            }
            return {};
        };
        auto put = [&](std::uint64_t off, std::span<const std::byte> b) -> result<void> {
            if (off < front || off + b.size() > front + ring_size)
                return error{errc::invalid_argument, "a streamed cluster falls outside the writer's window"};
            for (std::size_t done = 0; done < b.size();) {
                const auto at = static_cast<std::size_t>((off + done) % ring_size);
                const std::size_t n = std::min(b.size() - done, static_cast<std::size_t>(ring_size) - at);
                std::copy_n(b.begin() + static_cast<std::ptrdiff_t>(done), n, ring.begin() + static_cast<std::ptrdiff_t>(at));
                done += n;
            }
            return {};
        };
        detail::stream_packer packer = make_packer();
        auto r = for_each_batch(
            read, batch_bytes, [](std::size_t) { return true; },
            [&](std::span<const std::byte> data, std::span<const std::uint64_t> guest, std::span<const std::size_t> ords) -> result<void> {
                if (result<void> e = c.compress(data, static_cast<std::size_t>(cs)); !e) return e;
                for (std::size_t i = 0; i < ords.size(); ++i) {
                    const std::uint64_t want = lengths_[ords[i]];
                    const std::span<const std::byte> s = c.stream(i);
                    if (s.size() != want)
                        return error{errc::invalid_argument,
                                     detail::cat("the guest cluster at offset ", detail::dec(guest[i] * cs), " compressed to ",
                                                 detail::dec(s.size()), " bytes, ", detail::dec(want),
                                                 " when measured (0: not compressed): the source changed, or the compressor differs")};
                    const std::uint64_t off = packer.place(want);
                    if (auto e = put(off, want ? s : data.subspan(i * static_cast<std::size_t>(cs), static_cast<std::size_t>(cs))); !e) return e;
                    if (packer.sealed() - front >= flush_bytes)
                        if (auto e = write_to(packer.sealed()); !e) return e;
                }
                return {};
            });
        if (!r) return r;
        return write_to(layout_.data_clusters * cs);
    }

    qcow2::header header_;
    std::uint64_t disk_size_ = 0; // the source's size, before rounding to 512: never read past it
    bool compressed_ = false;
    bool finished_ = false;
    [[no_unique_address]] Allocator alloc_;
    std::vector<run, run_alloc> runs_;
    std::vector<std::uint32_t, u32_alloc> lengths_; // per data cluster, with compression
    std::uint64_t data_count_ = 0;
    stream_layout layout_{};
};

/// The stream writer with `std::allocator`.
using stream_writer = basic_stream_writer<>;

/**
 * @brief Writes a new qcow2 image of the guest disk `read` reads to `sink`, in one call.
 *
 * The data clusters are every cluster that some byte of `data` falls in (ranges in
 * ascending order, as `measure_source::data`; they may touch or share clusters): the
 * ranges of the source that are not known to read as zeroes, less the clusters a scan found
 * to be all zeroes. With `compress`, every data cluster is read and compressed twice (see
 * `basic_stream_writer::measure`) with a `basic_serial_compressor` of `o.compression_type`.
 * @param o the image's options (`size` is not used: the disk is `virtual_size` bytes).
 * @param virtual_size the guest disk's size in bytes.
 * @param data the guest ranges that may hold data, in ascending order.
 * @param compress store the data clusters compressed with `o.compression_type`, where they shrink.
 * @param read reads the source (see `basic_stream_writer::measure`).
 * @param sink takes the image's bytes, in order.
 * @param alloc allocates the writer's lists and buffers.
 * @return the layout of what was written.
 * @par Errors
 * Those of `basic_stream_writer::make`, `measure`, `finish` and `write`; `invalid_argument`
 * for ranges out of order or past the virtual size.
 */
template <class Reader, class Sink, class Allocator = std::allocator<std::byte>>
    requires stream_reader<std::remove_cvref_t<Reader>> && stream_sink<std::remove_cvref_t<Sink>>
result<stream_layout> stream_image(const create_options& o, std::uint64_t virtual_size, std::span<const guest_range> data,
                                   bool compress, Reader&& read, Sink&& sink, const Allocator& alloc = Allocator()) {
    auto w = basic_stream_writer<Allocator>::make(o, virtual_size, compress, alloc);
    if (!w) return w.error();
    const std::uint64_t cs = w->cluster_size();
    std::uint64_t next = 0, previous = 0; // clusters below `next` are added
    for (const guest_range& r : data) {
        if (r.length == 0) continue;
        if (r.offset < previous || r.offset > w->size() || r.length > w->size() - r.offset)
            return error{errc::invalid_argument, detail::cat("data range of ", detail::dec(r.length), " bytes at guest offset ",
                                                             detail::dec(r.offset), " is out of order or past the virtual size ",
                                                             detail::dec(w->size()))};
        previous = r.offset;
        const std::uint64_t first = std::max(r.offset / cs, next), last = detail::div_round_up(r.offset + r.length, cs);
        if (last > first) {
            if (auto e = w->add_clusters(first, last - first); !e) return e.error();
            next = last;
        }
    }
    basic_serial_compressor<Allocator> c(w->header().compression_kind(), alloc);
    if (compress)
        if (auto e = w->measure(read, c); !e) return e.error();
    auto layout = w->finish();
    if (!layout) return layout.error();
    if (auto e = w->write(read, sink, c); !e) return e.error();
    return *layout;
}

} // namespace QCOW2_ABI_NAMESPACE
} // namespace qcow2
