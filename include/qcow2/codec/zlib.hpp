// SPDX-License-Identifier: MIT
/// @file
/// @brief zlib codecs for compression_type 0: raw deflate, read with any window, written
///        with the 4 KiB window QEMU reads.
///
/// Present only when `QCOW2_HAS_ZLIB` is 1 (config.hpp); the header may be included either
/// way and then declares nothing. Link with `-lz` (the `qcow2::qcow2` CMake target does).
///
/// - `zlib_inflater` decompresses (`codec::decompressor`). It inflates with window bits
///   -15, which accepts streams made with every smaller window, and is as lenient as
///   QEMU: the cluster is good once `out` is full, whatever follows.
/// - `zlib_deflater` compresses with exactly QEMU's parameters: `deflateInit2(level,
///   Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY)` and one `Z_FINISH`, so the bytes are QEMU's.
///   The 4 KiB window is what QEMU's reader declares (`inflateInit2(-12)`): a reader that
///   inflates in pieces, or a zlib built with INFLATE_STRICT, refuses references further
///   back ("invalid distance too far back"). (QEMU 7.2 inflates a cluster in one call, in
///   which zlib follows references back into that call's own output, so in practice it
///   also reads wider streams; we do not rely on that.)
/// - `zlib_codec` is both (`codec::codec`).
///
/// @see reference §6.1; QEMU block/qcow2-threads.c `qcow2_zlib_compress`/`_decompress`.
#pragma once

#include "qcow2/codec/codec.hpp"
#include "qcow2/config.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/error.hpp"
#include "qcow2/result.hpp"

#if QCOW2_HAS_ZLIB
#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <memory>
#include <new>
#include <span>
#include <string>

namespace qcow2 {
inline namespace QCOW2_ABI_NAMESPACE {
namespace codec {

namespace zlib_detail {

/// Largest count one zlib call takes (`uInt`).
inline constexpr std::size_t max_chunk = UINT_MAX;

/// Frees an inflate stream made by `inflateInit2`.
struct inflate_end {
    void operator()(z_stream* s) const noexcept {
        inflateEnd(s);
        delete s;
    }
};
/// Frees a deflate stream made by `deflateInit2`.
struct deflate_end {
    void operator()(z_stream* s) const noexcept {
        deflateEnd(s);
        delete s;
    }
};

/// zlib's `next_in` is not const unless ZLIB_CONST is defined; zlib never writes through it.
inline Bytef* in_ptr(const std::byte* p) noexcept { return const_cast<Bytef*>(reinterpret_cast<const Bytef*>(p)); }
/// `p` as zlib's byte pointer.
inline Bytef* out_ptr(std::byte* p) noexcept { return reinterpret_cast<Bytef*>(p); }

/// The error for a stream that could not be set up (allocation failure or a bad parameter).
inline error init_error(const char* what, int status) {
    if (status == Z_MEM_ERROR || status == Z_OK)
        return error{errc::no_memory, qcow2::detail::cat("zlib: no ", what, " state (allocation failed, or the codec was moved from)")};
    return error{errc::invalid_argument, qcow2::detail::cat("zlib: cannot set up the ", what, " stream (zlib status ",
                                                            qcow2::detail::dec(status), ")")};
}

} // namespace zlib_detail

/**
 * @brief Decompresses zlib (raw deflate) compressed clusters; a `codec::decompressor`.
 *
 * Holds one inflate stream with its 32 KiB window, both allocated by the constructor and
 * reused by every call: `decompress` allocates nothing but the text of an error.
 */
class zlib_inflater {
public:
    /// Window bits passed to `inflateInit2`: raw deflate, largest window (accepts all smaller ones).
    static constexpr int window_bits = -15;

    /// Sets up the inflate stream. Never throws; if allocation fails, every call reports `errc::no_memory`.
    zlib_inflater() noexcept {
        auto* s = new (std::nothrow) z_stream{};
        if (!s) {
            status_ = Z_MEM_ERROR;
            return;
        }
        status_ = inflateInit2(s, window_bits);
        if (status_ != Z_OK) {
            delete s;
            return;
        }
        s_.reset(s);
        allocate_window();
    }
    zlib_inflater(const zlib_inflater&) = delete;
    zlib_inflater& operator=(const zlib_inflater&) = delete;
    /// Takes the other inflater's stream; the moved-from object reports `errc::no_memory`.
    zlib_inflater(zlib_inflater&&) noexcept = default;
    /// Frees this stream and takes the other's.
    zlib_inflater& operator=(zlib_inflater&&) noexcept = default;
    /// Frees the stream (`inflateEnd`).
    ~zlib_inflater() = default;

    /**
     * @brief Inflates the raw deflate stream in `in` until all of `out` is written.
     *
     * Input left once `out` is full is ignored, and so is the rest of the stream: a stream
     * that would decode to more than `out` fills it and stops (QEMU accepts such a stream,
     * `Z_BUF_ERROR` with a full buffer). `out` is typically one cluster.
     *
     * @param in  the compressed bytes (may run past the end of the stream)
     * @param out where the cluster goes; every byte is written on success
     * @return success when `out` is full.
     * @par Errors
     * - `errc::invalid_compressed_data`: the stream is corrupt (zlib's reason is in the
     *   message), ends before `out` is full, or stops making progress; the message says
     *   how many bytes were produced. `out` then holds unspecified bytes.
     * - `errc::no_memory`: the stream could not be set up (or `*this` was moved from).
     * @par Exception safety
     * Only the text of an error can throw (`std::bad_alloc`). Never writes outside `out`.
     */
    result<void> decompress(std::span<const std::byte> in, std::span<std::byte> out) {
        if (!s_) return zlib_detail::init_error("inflate", status_);
        if (out.empty()) return {};
        z_stream& s = *s_;
        inflateReset(&s);
        s.next_in = zlib_detail::in_ptr(in.data());
        s.avail_in = 0;
        s.next_out = zlib_detail::out_ptr(out.data());
        s.avail_out = 0;
        std::size_t in_left = in.size(), out_left = out.size();
        const auto produced = [&] { return out.size() - out_left - s.avail_out; };
        for (;;) {
            if (s.avail_in == 0 && in_left) {
                const std::size_t n = std::min(in_left, zlib_detail::max_chunk);
                s.avail_in = static_cast<uInt>(n);
                in_left -= n;
            }
            if (s.avail_out == 0 && out_left) {
                const std::size_t n = std::min(out_left, zlib_detail::max_chunk);
                s.avail_out = static_cast<uInt>(n);
                out_left -= n;
            }
            const uInt in_before = s.avail_in, out_before = s.avail_out;
            const int r = inflate(&s, Z_FINISH);
            if (s.avail_out == 0 && out_left == 0) return {}; // one full cluster: done, whatever follows
            switch (r) {
            case Z_STREAM_END:
                return corrupt("the deflate stream ends early", produced(), out.size());
            case Z_DATA_ERROR:
                return corrupt(s.msg ? s.msg : "corrupt deflate stream", produced(), out.size());
            case Z_NEED_DICT:
                return corrupt("the stream asks for a preset dictionary", produced(), out.size());
            case Z_MEM_ERROR:
                return error{errc::no_memory, "zlib: out of memory while inflating"};
            case Z_OK:
            case Z_BUF_ERROR:
                break;
            default:
                return error{errc::invalid_argument,
                             qcow2::detail::cat("zlib: inflate failed with status ", qcow2::detail::dec(r))};
            }
            if (s.avail_in == in_before && s.avail_out == out_before) {
                if (s.avail_in == 0 && in_left == 0) return corrupt("the input ends before the cluster is complete", produced(), out.size());
                return corrupt("the stream makes no progress", produced(), out.size());
            }
        }
    }

private:
    static error corrupt(const char* what, std::size_t produced, std::size_t wanted) {
        return error{errc::invalid_compressed_data,
                     qcow2::detail::cat("zlib: ", what, " (", qcow2::detail::dec(produced), " of ",
                                        qcow2::detail::dec(wanted), " bytes produced)")};
    }

    /// zlib allocates the window at the first call that leaves a stream unfinished; make that
    /// happen now (a one-byte stored block that is not the last), so no call allocates later.
    void allocate_window() noexcept {
        static constexpr unsigned char stored_block[] = {0x00, 0x01, 0x00, 0xfe, 0xff, 0x00};
        unsigned char one = 0;
        z_stream& s = *s_;
        s.next_in = const_cast<Bytef*>(stored_block);
        s.avail_in = sizeof stored_block;
        s.next_out = &one;
        s.avail_out = 1;
        (void)inflate(&s, Z_NO_FLUSH);
        inflateReset(&s);
        s.next_in = Z_NULL;
        s.next_out = Z_NULL;
        s.avail_in = s.avail_out = 0;
    }

    std::unique_ptr<z_stream, zlib_detail::inflate_end> s_;
    int status_ = Z_OK;
};

/**
 * @brief Compresses clusters as QEMU does for compression_type zlib.
 *
 * Holds one deflate stream (about 280 KiB with QEMU's parameters), allocated by the
 * constructor and reused by every call: `compress` allocates nothing but the text of an error.
 */
class zlib_deflater {
public:
    /// Window bits passed to `deflateInit2`: raw deflate with a 4 KiB window, which QEMU can inflate.
    static constexpr int window_bits = -12;
    /// memLevel passed to `deflateInit2` (QEMU's).
    static constexpr int mem_level = 9;
    /// `Z_DEFAULT_COMPRESSION` (zlib's level 6), QEMU's choice.
    static constexpr int default_level = Z_DEFAULT_COMPRESSION;

    /**
     * @brief Sets up the deflate stream at `level` (-1 for zlib's default, 0 to 9).
     *
     * Never throws. If allocation fails, every call reports `errc::no_memory`; an invalid
     * level makes every call report `errc::invalid_argument`.
     */
    explicit zlib_deflater(int level = default_level) noexcept : level_(level) {
        auto* s = new (std::nothrow) z_stream{};
        if (!s) {
            status_ = Z_MEM_ERROR;
            return;
        }
        status_ = deflateInit2(s, level, Z_DEFLATED, window_bits, mem_level, Z_DEFAULT_STRATEGY);
        if (status_ != Z_OK) {
            delete s;
            return;
        }
        s_.reset(s);
    }
    zlib_deflater(const zlib_deflater&) = delete;
    zlib_deflater& operator=(const zlib_deflater&) = delete;
    /// Takes the other deflater's stream; the moved-from object reports `errc::no_memory`.
    zlib_deflater(zlib_deflater&&) noexcept = default;
    /// Frees this stream and takes the other's.
    zlib_deflater& operator=(zlib_deflater&&) noexcept = default;
    /// Frees the stream (`deflateEnd`).
    ~zlib_deflater() = default;

    /// The compression level in use.
    int level() const noexcept { return level_; }

    /**
     * @brief Changes the compression level for the following calls.
     * @par Errors
     * `errc::invalid_argument` when `level` is not -1 or 0 to 9 (the level is unchanged);
     * `errc::no_memory` when there is no stream.
     */
    result<void> set_level(int level) {
        if (level < -1 || level > 9)
            return error{errc::invalid_argument,
                         qcow2::detail::cat("zlib: compression level ", qcow2::detail::dec(level), " is not -1 or 0 to 9")};
        if (!s_) return zlib_detail::init_error("deflate", status_);
        deflateReset(s_.get());
        if (const int r = deflateParams(s_.get(), level, Z_DEFAULT_STRATEGY); r != Z_OK)
            return error{errc::invalid_argument, qcow2::detail::cat("zlib: deflateParams failed with status ", qcow2::detail::dec(r))};
        level_ = level;
        return {};
    }

    /**
     * @brief Compresses `in` into one raw deflate stream at the start of `out`.
     *
     * @param in  the data, typically one cluster (at most 4 GiB - 1 bytes)
     * @param out where the stream goes; pass `cluster_size - 1` bytes so that a cluster
     *            that does not shrink is stored uncompressed
     * @return the number of bytes of `out` used.
     * @par Errors
     * - `errc::not_compressible`: the stream does not fit in `out`.
     * - `errc::invalid_argument`: `in` is 4 GiB or larger, or the level given to the
     *   constructor was invalid.
     * - `errc::no_memory`: the stream could not be set up (or `*this` was moved from).
     * @par Exception safety
     * Only the text of an error can throw (`std::bad_alloc`). Never writes outside `out`.
     */
    result<std::size_t> compress(std::span<const std::byte> in, std::span<std::byte> out) {
        if (!s_) return zlib_detail::init_error("deflate", status_);
        if (in.size() > zlib_detail::max_chunk)
            return error{errc::invalid_argument, qcow2::detail::cat("zlib: cannot compress ", qcow2::detail::dec(in.size()),
                                                                    " bytes in one call (at most 4 GiB - 1)")};
        if (out.empty()) return not_compressible(in.size(), 0);
        z_stream& s = *s_;
        deflateReset(&s);
        s.next_in = zlib_detail::in_ptr(in.data());
        s.avail_in = static_cast<uInt>(in.size());
        s.next_out = zlib_detail::out_ptr(out.data());
        s.avail_out = static_cast<uInt>(std::min(out.size(), zlib_detail::max_chunk));
        const int r = deflate(&s, Z_FINISH);
        if (r == Z_STREAM_END) return static_cast<std::size_t>(s.total_out);
        if (r == Z_OK || r == Z_BUF_ERROR) return not_compressible(in.size(), out.size());
        return error{errc::invalid_argument, qcow2::detail::cat("zlib: deflate failed with status ", qcow2::detail::dec(r))};
    }

private:
    static error not_compressible(std::size_t in, std::size_t room) {
        return error{errc::not_compressible, qcow2::detail::cat("zlib: ", qcow2::detail::dec(in), " bytes do not compress into ",
                                                                qcow2::detail::dec(room), " bytes")};
    }

    std::unique_ptr<z_stream, zlib_detail::deflate_end> s_;
    int status_ = Z_OK;
    int level_;
};

/**
 * @brief zlib compression and decompression in one object; a `codec::codec`.
 *
 * A `zlib_inflater` and a `zlib_deflater` side by side; see them for the contracts.
 */
class zlib_codec {
public:
    /// `Z_DEFAULT_COMPRESSION`, QEMU's level.
    static constexpr int default_level = zlib_deflater::default_level;

    /// Sets up both streams; compression uses `level` (-1 for zlib's default, 0 to 9).
    explicit zlib_codec(int level = default_level) noexcept : deflater_(level) {}

    /// Inflates one cluster; see `zlib_inflater::decompress`.
    result<void> decompress(std::span<const std::byte> in, std::span<std::byte> out) { return inflater_.decompress(in, out); }
    /// Deflates one cluster as QEMU does; see `zlib_deflater::compress`.
    result<std::size_t> compress(std::span<const std::byte> in, std::span<std::byte> out) { return deflater_.compress(in, out); }
    /// The compression level in use.
    int level() const noexcept { return deflater_.level(); }
    /// Changes the compression level; see `zlib_deflater::set_level`.
    result<void> set_level(int level) { return deflater_.set_level(level); }

private:
    zlib_inflater inflater_;
    zlib_deflater deflater_;
};

static_assert(decompressor<zlib_inflater>);
static_assert(codec<zlib_codec>);

} // namespace codec
} // namespace QCOW2_ABI_NAMESPACE
} // namespace qcow2

#endif // QCOW2_HAS_ZLIB
