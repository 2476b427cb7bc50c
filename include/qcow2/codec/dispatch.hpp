// SPDX-License-Identifier: MIT
/// @file
/// @brief `cluster_decompressor` and `cluster_compressor`: the codec for an image's
///        `compression_type`, chosen at run time among those compiled in.
///
/// | type | decompress with | compress with |
/// |---|---|---|
/// | `compression::zlib` | libdeflate if compiled in (falling back to zlib for the streams it refuses), else zlib | zlib (window bits -12) |
/// | `compression::zstd` | zstd | zstd |
///
/// A type whose library was not compiled in is not a compile error: the objects can be
/// made, `available()` says false, and every call fails with `errc::unsupported_compression`
/// and a message naming the library and the macro ("zstd support was not compiled in
/// (QCOW2_HAS_ZSTD=0)"). An image can therefore be opened, inspected and read everywhere
/// but in its compressed clusters.
#pragma once

#include "qcow2/codec/codec.hpp"
#include "qcow2/codec/deflate.hpp"
#include "qcow2/codec/zlib.hpp"
#include "qcow2/codec/zstd.hpp"
#include "qcow2/config.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/error.hpp"
#include "qcow2/format/header.hpp"
#include "qcow2/result.hpp"

#include <cstddef>
#include <optional>
#include <span>
#include <string_view>

namespace qcow2 {
inline namespace QCOW2_ABI_NAMESPACE {
namespace codec {

namespace dispatch_detail {

inline error unknown_type(compression type) {
    return error{errc::invalid_compression_type,
                 qcow2::detail::cat("compression type ", qcow2::detail::dec(static_cast<unsigned>(type)),
                                    " is unknown (known: 0 zlib, 1 zstd)")};
}

inline error zstd_missing() { return error{errc::unsupported_compression, "zstd support was not compiled in (QCOW2_HAS_ZSTD=0)"}; }

} // namespace dispatch_detail

/**
 * @brief Decompresses the clusters of an image whose `compression_type` is known only at
 *        run time; a `codec::decompressor`.
 *
 * Holds the state of the one library it needs (made by the constructor, reused by every
 * call). Movable, not copyable; one thread at a time.
 */
class cluster_decompressor {
public:
    /**
     * @brief True when clusters of `type` can be decompressed in this build.
     *
     * zlib: `QCOW2_HAS_ZLIB` or `QCOW2_HAS_LIBDEFLATE`; zstd: `QCOW2_HAS_ZSTD`; other values: false.
     */
    static constexpr bool available(compression type) noexcept {
        switch (type) {
        case compression::zlib: return QCOW2_HAS_ZLIB || QCOW2_HAS_LIBDEFLATE;
        case compression::zstd: return QCOW2_HAS_ZSTD;
        }
        return false;
    }

    /**
     * @brief Sets up the library for `type`. Never fails: a type that is unknown or not
     *        compiled in, or a library that cannot allocate, is reported by `decompress`.
     */
    explicit cluster_decompressor(compression type) noexcept : type_(type) {
        switch (type) {
        case compression::zlib:
#if QCOW2_HAS_LIBDEFLATE
            libdeflate_.emplace();
#elif QCOW2_HAS_ZLIB
            zlib_.emplace();
#endif
            break;
        case compression::zstd:
#if QCOW2_HAS_ZSTD
            zstd_.emplace();
#endif
            break;
        }
    }

    cluster_decompressor(const cluster_decompressor&) = delete;
    cluster_decompressor& operator=(const cluster_decompressor&) = delete;
    /// Takes the other's library state; the moved-from object reports `errc::no_memory` (or, with no
    /// library compiled in for its type, what it reported before).
    cluster_decompressor(cluster_decompressor&&) noexcept = default;
    /// Frees this object's library state and takes the other's.
    cluster_decompressor& operator=(cluster_decompressor&&) noexcept = default;
    /// Frees the library state.
    ~cluster_decompressor() = default;

    /// The compression type this object decompresses.
    compression type() const noexcept { return type_; }

    /// The library doing the work: "libdeflate", "zlib", "zstd", or "" when none is available.
    std::string_view library() const noexcept {
        switch (type_) {
        case compression::zlib: return QCOW2_HAS_LIBDEFLATE ? "libdeflate" : QCOW2_HAS_ZLIB ? "zlib" : "";
        case compression::zstd: return QCOW2_HAS_ZSTD ? "zstd" : "";
        }
        return "";
    }

    /**
     * @brief Decompresses one cluster: fills all of `out` from the stream in `in`.
     *
     * zlib: libdeflate decodes when it is compiled in; when it refuses the stream and zlib
     * is compiled in too, zlib decodes it again (creating its state on that first
     * refusal), so that exactly the streams zlib and QEMU accept are accepted, those that
     * go on past the cluster included. zstd: see `zstd_decompressor::decompress` (a frame
     * that goes on past the cluster is refused, as QEMU does).
     *
     * @param in  the compressed bytes, as read from the descriptor's range (may include
     *            up to 511 bytes of what follows the stream)
     * @param out exactly one cluster; every byte is written on success
     * @par Errors
     * - `errc::invalid_compressed_data`: the stream is corrupt, ends early, or (zstd) goes on past the cluster.
     * - `errc::unsupported_compression`: the library for this type was not compiled in
     *   (the message names it and its macro).
     * - `errc::invalid_compression_type`: `type()` is neither zlib nor zstd.
     * - `errc::no_memory`: the library could not allocate its state.
     * @par Allocation
     * None on success; the zlib fallback's state is allocated at the first refusal.
     * @par Exception safety
     * Only the text of an error can throw (`std::bad_alloc`). Never writes outside `out`.
     */
    result<void> decompress(std::span<const std::byte> in, std::span<std::byte> out) {
        switch (type_) {
        case compression::zlib: {
#if QCOW2_HAS_LIBDEFLATE
            auto r = libdeflate_->decompress(in, out);
#if QCOW2_HAS_ZLIB
            if (!r && r.error().is(errc::invalid_compressed_data)) {
                if (!zlib_) zlib_.emplace();
                return zlib_->decompress(in, out); // zlib's verdict, with its more detailed message
            }
#endif
            return r;
#elif QCOW2_HAS_ZLIB
            return zlib_->decompress(in, out);
#else
            (void)in;
            (void)out;
            return error{errc::unsupported_compression,
                         "zlib support was not compiled in (QCOW2_HAS_ZLIB=0 and QCOW2_HAS_LIBDEFLATE=0)"};
#endif
        }
        case compression::zstd:
#if QCOW2_HAS_ZSTD
            return zstd_->decompress(in, out);
#else
            (void)in;
            (void)out;
            return dispatch_detail::zstd_missing();
#endif
        }
        return dispatch_detail::unknown_type(type_);
    }

private:
    compression type_;
#if QCOW2_HAS_LIBDEFLATE
    std::optional<libdeflate_inflater> libdeflate_;
#endif
#if QCOW2_HAS_ZLIB
    std::optional<zlib_inflater> zlib_;
#endif
#if QCOW2_HAS_ZSTD
    std::optional<zstd_decompressor> zstd_;
#endif
};

/**
 * @brief Compresses clusters for an image whose `compression_type` is known only at run
 *        time, as QEMU does.
 *
 * Holds the state of the one library it needs (made by the constructor, reused by every
 * call). Movable, not copyable; one thread at a time.
 */
class cluster_compressor {
public:
    /**
     * @brief True when clusters of `type` can be compressed in this build.
     *
     * zlib: `QCOW2_HAS_ZLIB` (libdeflate does not count: QEMU could not read its output);
     * zstd: `QCOW2_HAS_ZSTD`; other values: false.
     */
    static constexpr bool available(compression type) noexcept {
        switch (type) {
        case compression::zlib: return QCOW2_HAS_ZLIB;
        case compression::zstd: return QCOW2_HAS_ZSTD;
        }
        return false;
    }

    /**
     * @brief Sets up the library for `type` at its default level (QEMU's). Never fails:
     *        problems are reported by `compress`.
     */
    explicit cluster_compressor(compression type) noexcept : type_(type) {
        switch (type) {
        case compression::zlib:
#if QCOW2_HAS_ZLIB
            zlib_.emplace();
#endif
            break;
        case compression::zstd:
#if QCOW2_HAS_ZSTD
            zstd_.emplace();
#endif
            break;
        }
    }

    /**
     * @brief Sets up the library for `type` at `level`, in that library's scale
     *        (zlib: -1 to 9; zstd: its levels). Never fails: problems are reported by `compress`.
     */
    cluster_compressor(compression type, int level) noexcept : type_(type) {
        switch (type) {
        case compression::zlib:
#if QCOW2_HAS_ZLIB
            zlib_.emplace(level);
#endif
            break;
        case compression::zstd:
#if QCOW2_HAS_ZSTD
            zstd_.emplace(level);
#endif
            break;
        }
        (void)level;
    }

    cluster_compressor(const cluster_compressor&) = delete;
    cluster_compressor& operator=(const cluster_compressor&) = delete;
    /// Takes the other's library state; the moved-from object reports `errc::no_memory` (or, with no
    /// library compiled in for its type, what it reported before).
    cluster_compressor(cluster_compressor&&) noexcept = default;
    /// Frees this object's library state and takes the other's.
    cluster_compressor& operator=(cluster_compressor&&) noexcept = default;
    /// Frees the library state.
    ~cluster_compressor() = default;

    /// The compression type this object writes.
    compression type() const noexcept { return type_; }

    /**
     * @brief Compresses one cluster into the start of `out`.
     *
     * @param in  the cluster
     * @param out where the stream goes; pass `cluster_size - 1` bytes so that a cluster
     *            that does not shrink is stored uncompressed
     * @return the compressed size.
     * @par Errors
     * - `errc::not_compressible`: the stream does not fit in `out`.
     * - `errc::unsupported_compression`: the library for this type was not compiled in
     *   (the message names it and its macro).
     * - `errc::invalid_compression_type`: `type()` is neither zlib nor zstd.
     * - `errc::invalid_argument`, `errc::no_memory`: see `zlib_deflater::compress`,
     *   `zstd_compressor::compress`.
     * @par Exception safety
     * Only the text of an error can throw (`std::bad_alloc`). Never writes outside `out`.
     */
    result<std::size_t> compress(std::span<const std::byte> in, std::span<std::byte> out) {
        switch (type_) {
        case compression::zlib:
#if QCOW2_HAS_ZLIB
            return zlib_->compress(in, out);
#else
            (void)in;
            (void)out;
            return error{errc::unsupported_compression,
                         QCOW2_HAS_LIBDEFLATE ? "zlib support was not compiled in (QCOW2_HAS_ZLIB=0); libdeflate only decompresses"
                                              : "zlib support was not compiled in (QCOW2_HAS_ZLIB=0)"};
#endif
        case compression::zstd:
#if QCOW2_HAS_ZSTD
            return zstd_->compress(in, out);
#else
            (void)in;
            (void)out;
            return dispatch_detail::zstd_missing();
#endif
        }
        return dispatch_detail::unknown_type(type_);
    }

private:
    compression type_;
#if QCOW2_HAS_ZLIB
    std::optional<zlib_deflater> zlib_;
#endif
#if QCOW2_HAS_ZSTD
    std::optional<zstd_compressor> zstd_;
#endif
};

static_assert(decompressor<cluster_decompressor>);

} // namespace codec
} // namespace QCOW2_ABI_NAMESPACE
} // namespace qcow2
