// SPDX-License-Identifier: MIT
/// @file
/// @brief zstd codecs for compression_type 1, behaving as QEMU's.
///
/// Present only when `QCOW2_HAS_ZSTD` is 1 (config.hpp); the header may be included either
/// way and then declares nothing. Link with `-lzstd` (the `qcow2::qcow2` CMake target does).
///
/// - `zstd_decompressor` (`codec::decompressor`) runs QEMU's loop: `ZSTD_decompressStream`
///   until the cluster is full (it may take several frames), failing when a step makes no
///   progress or the input ends first, and when the last frame is not finished once the
///   cluster is full (it would decode to more than one cluster). Input after the frame
///   that completes the cluster is ignored.
/// - `zstd_compressor` writes one frame with `ZSTD_compress2` at the default level, the
///   same frame QEMU's `ZSTD_compressStream2(ZSTD_e_end)` loop makes.
/// - `zstd_codec` is both (`codec::codec`).
///
/// @see reference §6.2; QEMU block/qcow2-threads.c `qcow2_zstd_compress`/`_decompress`.
#pragma once

#include "qcow2/codec/codec.hpp"
#include "qcow2/config.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/error.hpp"
#include "qcow2/result.hpp"

#if QCOW2_HAS_ZSTD
#include <zstd.h>
#include <zstd_errors.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace qcow2 {
inline namespace QCOW2_ABI_NAMESPACE {
namespace codec {

/**
 * @brief Decompresses zstd compressed clusters; a `codec::decompressor`.
 *
 * Holds one `ZSTD_DCtx`, created by the constructor and reused. A frame that fits in the
 * cluster and is wholly in the input (every frame QEMU writes) is decoded straight into
 * `out` without further allocation. Other frames go through zstd's buffers, which it
 * allocates once and keeps; their size is bounded by `max_window_log`, whatever the
 * stream claims.
 */
class zstd_decompressor {
public:
    /**
     * @brief Largest window accepted, as a power of two (8 MiB).
     *
     * zstd's default allows 2^27 (128 MiB of buffer for one crafted frame). Every frame
     * of zstd's non-"ultra" levels (1 to 19) fits in 2^23, and frames that record their
     * size, as QEMU's do, need no more than the cluster.
     */
    static constexpr int max_window_log = 23;

    /// Creates the context. Never throws; if allocation fails, every call reports `errc::no_memory`.
    zstd_decompressor() noexcept : d_(ZSTD_createDCtx()) {
        if (d_ && ZSTD_isError(ZSTD_DCtx_setParameter(d_.get(), ZSTD_d_windowLogMax, max_window_log))) d_.reset();
    }
    zstd_decompressor(const zstd_decompressor&) = delete;
    zstd_decompressor& operator=(const zstd_decompressor&) = delete;
    /// Takes the other's context; the moved-from object reports `errc::no_memory`.
    zstd_decompressor(zstd_decompressor&&) noexcept = default;
    /// Frees this context and takes the other's.
    zstd_decompressor& operator=(zstd_decompressor&&) noexcept = default;
    /// Frees the context.
    ~zstd_decompressor() = default;

    /**
     * @brief Decodes zstd frames from `in` until all of `out` is written.
     *
     * @param in  the compressed bytes: one or more frames (skippable frames allowed), and
     *            anything after the frame that completes the cluster
     * @param out where the cluster goes; every byte is written on success
     * @return success when `out` is full and the frame that filled it has ended.
     * @par Errors
     * - `errc::invalid_compressed_data`: a frame is corrupt or needs a window over
     *   2^`max_window_log` (zstd's reason is in the message); the input ends before `out`
     *   is full; a step makes no progress; or the frame that fills `out` goes on after it
     *   (it would make more than one cluster; QEMU refuses it too). `out` then holds
     *   unspecified bytes.
     * - `errc::no_memory`: the context could not be created (or `*this` was moved from),
     *   or zstd could not allocate its buffers.
     * @par Exception safety
     * Only the text of an error can throw (`std::bad_alloc`). Never writes outside `out`.
     */
    result<void> decompress(std::span<const std::byte> in, std::span<std::byte> out) {
        if (!d_) return error{errc::no_memory, "zstd: no decompression context (allocation failed, or the codec was moved from)"};
        if (out.empty()) return {};
        ZSTD_DCtx_reset(d_.get(), ZSTD_reset_session_only);
        ZSTD_inBuffer src{in.data(), in.size(), 0};
        ZSTD_outBuffer dst{out.data(), out.size(), 0};
        std::size_t r = 0;
        while (dst.pos < dst.size) {
            const std::size_t in_before = src.pos, out_before = dst.pos;
            r = ZSTD_decompressStream(d_.get(), &dst, &src);
            if (ZSTD_isError(r)) {
                if (ZSTD_getErrorCode(r) == ZSTD_error_memory_allocation)
                    return error{errc::no_memory, "zstd: out of memory while decompressing"};
                return corrupt(ZSTD_getErrorName(r), dst.pos, dst.size);
            }
            if (src.pos == in_before && dst.pos == out_before)
                return corrupt(src.pos == src.size ? "the input ends before the cluster is complete" : "the stream makes no progress",
                               dst.pos, dst.size);
        }
        if (r != 0) return corrupt("the frame goes on past the end of the cluster", dst.pos, dst.size);
        return {};
    }

private:
    static error corrupt(const char* what, std::size_t produced, std::size_t wanted) {
        return error{errc::invalid_compressed_data,
                     qcow2::detail::cat("zstd: ", what, " (", qcow2::detail::dec(produced), " of ",
                                        qcow2::detail::dec(wanted), " bytes produced)")};
    }

    struct free_dctx {
        void operator()(ZSTD_DCtx* d) const noexcept { ZSTD_freeDCtx(d); }
    };
    std::unique_ptr<ZSTD_DCtx, free_dctx> d_;
};

/**
 * @brief Compresses clusters as QEMU does for compression_type zstd.
 *
 * Holds one `ZSTD_CCtx`, created by the constructor. zstd sizes its working memory at the
 * first call (for the cluster size and level) and reuses it for the following calls of
 * the same size.
 */
class zstd_compressor {
public:
    /// zstd's default level (`ZSTD_CLEVEL_DEFAULT`, 3), QEMU's choice.
    static constexpr int default_level = ZSTD_CLEVEL_DEFAULT;

    /**
     * @brief Creates the context, compressing at `level` (zstd's range, negative levels included).
     *
     * Never throws. If allocation fails, every call reports `errc::no_memory`; an invalid
     * level makes every call report `errc::invalid_argument`.
     */
    explicit zstd_compressor(int level = default_level) noexcept : c_(ZSTD_createCCtx()) {
        if (c_) level_status_ = ZSTD_CCtx_setParameter(c_.get(), ZSTD_c_compressionLevel, level);
        if (!ZSTD_isError(level_status_)) level_ = level;
    }
    zstd_compressor(const zstd_compressor&) = delete;
    zstd_compressor& operator=(const zstd_compressor&) = delete;
    /// Takes the other's context; the moved-from object reports `errc::no_memory`.
    zstd_compressor(zstd_compressor&&) noexcept = default;
    /// Frees this context and takes the other's.
    zstd_compressor& operator=(zstd_compressor&&) noexcept = default;
    /// Frees the context.
    ~zstd_compressor() = default;

    /// The compression level in use.
    int level() const noexcept { return level_; }

    /**
     * @brief Changes the compression level for the following calls.
     * @par Errors
     * `errc::invalid_argument` when zstd refuses the level (the level is unchanged);
     * `errc::no_memory` when there is no context.
     */
    result<void> set_level(int level) {
        if (!c_) return no_context();
        if (const std::size_t r = ZSTD_CCtx_setParameter(c_.get(), ZSTD_c_compressionLevel, level); ZSTD_isError(r))
            return error{errc::invalid_argument, qcow2::detail::cat("zstd: compression level ", qcow2::detail::dec(level), ": ",
                                                                    ZSTD_getErrorName(r))};
        level_ = level;
        level_status_ = 0;
        return {};
    }

    /**
     * @brief Compresses `in` into one zstd frame (with its content size) at the start of `out`.
     *
     * @param in  the data, typically one cluster
     * @param out where the frame goes; pass `cluster_size - 1` bytes so that a cluster that
     *            does not shrink is stored uncompressed
     * @return the number of bytes of `out` used.
     * @par Errors
     * - `errc::not_compressible`: the frame does not fit in `out`.
     * - `errc::invalid_argument`: the level given to the constructor was refused.
     * - `errc::no_memory`: no context (allocation failed, or `*this` was moved from), or zstd
     *   could not allocate its working memory.
     * @par Exception safety
     * Only the text of an error can throw (`std::bad_alloc`). Never writes outside `out`.
     */
    result<std::size_t> compress(std::span<const std::byte> in, std::span<std::byte> out) {
        if (!c_) return no_context();
        if (ZSTD_isError(level_status_))
            return error{errc::invalid_argument, qcow2::detail::cat("zstd: invalid compression level: ", ZSTD_getErrorName(level_status_))};
        const std::size_t r = ZSTD_compress2(c_.get(), out.data(), out.size(), in.data(), in.size());
        if (!ZSTD_isError(r)) return r;
        switch (ZSTD_getErrorCode(r)) {
        case ZSTD_error_dstSize_tooSmall:
            return error{errc::not_compressible, qcow2::detail::cat("zstd: ", qcow2::detail::dec(in.size()),
                                                                    " bytes do not compress into ", qcow2::detail::dec(out.size()), " bytes")};
        case ZSTD_error_memory_allocation:
            return error{errc::no_memory, "zstd: out of memory while compressing"};
        default:
            return error{errc::invalid_argument, qcow2::detail::cat("zstd: compression failed: ", ZSTD_getErrorName(r))};
        }
    }

private:
    static error no_context() {
        return error{errc::no_memory, "zstd: no compression context (allocation failed, or the codec was moved from)"};
    }

    struct free_cctx {
        void operator()(ZSTD_CCtx* c) const noexcept { ZSTD_freeCCtx(c); }
    };
    std::unique_ptr<ZSTD_CCtx, free_cctx> c_;
    std::size_t level_status_ = 0;
    int level_ = default_level;
};

/**
 * @brief zstd compression and decompression in one object; a `codec::codec`.
 *
 * A `zstd_decompressor` and a `zstd_compressor` side by side; see them for the contracts.
 */
class zstd_codec {
public:
    /// zstd's default level, QEMU's choice.
    static constexpr int default_level = zstd_compressor::default_level;

    /// Creates both contexts; compression uses `level`.
    explicit zstd_codec(int level = default_level) noexcept : compressor_(level) {}

    /// Decodes one cluster; see `zstd_decompressor::decompress`.
    result<void> decompress(std::span<const std::byte> in, std::span<std::byte> out) { return decompressor_.decompress(in, out); }
    /// Compresses one cluster as QEMU does; see `zstd_compressor::compress`.
    result<std::size_t> compress(std::span<const std::byte> in, std::span<std::byte> out) { return compressor_.compress(in, out); }
    /// The compression level in use.
    int level() const noexcept { return compressor_.level(); }
    /// Changes the compression level; see `zstd_compressor::set_level`.
    result<void> set_level(int level) { return compressor_.set_level(level); }

private:
    zstd_decompressor decompressor_;
    zstd_compressor compressor_;
};

static_assert(decompressor<zstd_decompressor>);
static_assert(codec<zstd_codec>);

} // namespace codec
} // namespace QCOW2_ABI_NAMESPACE
} // namespace qcow2

#endif // QCOW2_HAS_ZSTD
