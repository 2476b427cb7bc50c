// SPDX-License-Identifier: MIT
/// @file
/// @brief The codec concepts: decompress one compressed cluster, compress one cluster.
///
/// A qcow2 compressed cluster is a compressed stream (raw deflate or zstd frames, by the
/// header's `compression_type`) that decodes to exactly one cluster. Its exact length is not
/// stored: readers get up to 511 bytes belonging to someone else after it (§4.3), so a
/// decompressor stops as soon as the cluster is produced. A writer compresses one cluster
/// into at most `cluster_size - 1` bytes, or stores it uncompressed.
///
/// The codecs we ship (each present only when its library is compiled in, see config.hpp):
///
/// | type | header | decompress | compress |
/// |---|---|---|---|
/// | `codec::zlib_inflater` | `codec/zlib.hpp` | raw deflate, any window | — |
/// | `codec::zlib_deflater` | `codec/zlib.hpp` | — | raw deflate, 4 KiB window, as QEMU |
/// | `codec::zlib_codec` | `codec/zlib.hpp` | raw deflate, any window | raw deflate, 4 KiB window, as QEMU |
/// | `codec::libdeflate_inflater` | `codec/deflate.hpp` | raw deflate, about 3x faster than zlib | — (its writer has a 32 KiB window) |
/// | `codec::zstd_decompressor` | `codec/zstd.hpp` | zstd frames, as QEMU | — |
/// | `codec::zstd_compressor` | `codec/zstd.hpp` | — | one zstd frame, as QEMU |
/// | `codec::zstd_codec` | `codec/zstd.hpp` | zstd frames, as QEMU | one zstd frame, as QEMU |
/// | `codec::cluster_decompressor` | `codec/dispatch.hpp` | chosen at run time by `qcow2::compression` | — |
/// | `codec::cluster_compressor` | `codec/dispatch.hpp` | — | chosen at run time by `qcow2::compression` |
///
/// Codec objects own their library state (allocated when they are constructed), keep it
/// between calls, and are movable but not copyable. One object, one thread at a time.
///
/// Everything in `qcow2::codec` lives in the ABI-tagged inline namespace (config.hpp),
/// because what it holds depends on the `QCOW2_HAS_*` settings.
///
/// @see docs/interop/qcow2.txt "Compressed Clusters Descriptor"; reference §4.3 and §6.
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/result.hpp"

#include <concepts>
#include <cstddef>
#include <span>

namespace qcow2 {
inline namespace QCOW2_ABI_NAMESPACE {
/// Cluster compression: the codec concepts, the codecs, and the run-time dispatcher.
namespace codec {

/**
 * @brief A type that decompresses one qcow2 compressed cluster.
 *
 * | expression | result | semantics |
 * |---|---|---|
 * | `d.decompress(in, out)` | `qcow2::result<void>` | decode the stream in `in` until all of `out` (exactly one cluster) is written |
 *
 * with `d` an lvalue `D`, `in` a `std::span<const std::byte>` and `out` a `std::span<std::byte>`.
 *
 * Requirements on a model:
 * - Success means every byte of `out` was produced by the stream. Input left over once
 *   `out` is full is ignored (it may belong to the next compressed cluster).
 * - Failure with `errc::invalid_compressed_data` when the stream is corrupt, ends before
 *   `out` is full, or stops making progress; `out` then holds unspecified bytes.
 * - Never writes outside `out`, never reads outside `in`, and never allocates in proportion
 *   to a size the stream claims: a stream that would decode to more than `out` either
 *   fills `out` exactly or fails, depending on the format's rules (see each codec).
 */
template <class D>
concept decompressor = requires(D& d, std::span<const std::byte> in, std::span<std::byte> out) {
    { d.decompress(in, out) } -> std::same_as<qcow2::result<void>>;
};

/**
 * @brief A type that also compresses one cluster.
 *
 * | expression | result | semantics |
 * |---|---|---|
 * | `c.compress(in, out)` | `qcow2::result<std::size_t>` | compress all of `in` into the start of `out`; the value is the compressed size |
 *
 * Requirements on a model:
 * - The output is a stream its own `decompress` (and QEMU) turns back into `in`.
 * - Failure with `errc::not_compressible` when the compressed stream would not fit in `out`.
 *   Callers pass `cluster_size - 1` bytes, so that a cluster that does not shrink is
 *   stored uncompressed, as QEMU does.
 * - Never writes outside `out`.
 */
template <class C>
concept codec = decompressor<C> && requires(C& c, std::span<const std::byte> in, std::span<std::byte> out) {
    { c.compress(in, out) } -> std::same_as<qcow2::result<std::size_t>>;
};

} // namespace codec
} // namespace QCOW2_ABI_NAMESPACE
} // namespace qcow2
