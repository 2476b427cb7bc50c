// SPDX-License-Identifier: MIT
/// @file
/// @brief `libdeflate_inflater`: fast decompression of zlib (raw deflate) compressed clusters.
///
/// Present only when `QCOW2_HAS_LIBDEFLATE` is 1 (config.hpp); the header may be included
/// either way and then declares nothing. Link with `-ldeflate` (the `qcow2::qcow2` CMake
/// target does).
///
/// libdeflate decodes a whole deflate stream in one call, several times faster than zlib.
/// It only ever decompresses here: its compressor always uses a 32 KiB window, and QEMU
/// inflates with a 4 KiB one, so clusters it wrote could be unreadable by QEMU (write with
/// `zlib_deflater`).
///
/// It is stricter than zlib in one respect: a stream must end (its final block) within
/// the cluster. A stream that goes on past a full cluster, which zlib and QEMU accept by
/// keeping the first cluster's worth, fails here; `cluster_decompressor` then retries
/// with zlib when zlib is compiled in, so the dispatcher accepts exactly what zlib does.
///
/// @see reference §6.1 and §6.3.
#pragma once

#include "qcow2/codec/codec.hpp"
#include "qcow2/config.hpp"
#include "qcow2/detail/strings.hpp"
#include "qcow2/error.hpp"
#include "qcow2/result.hpp"

#if QCOW2_HAS_LIBDEFLATE
#include <libdeflate.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace qcow2 {
inline namespace QCOW2_ABI_NAMESPACE {
namespace codec {

/**
 * @brief Decompresses zlib (raw deflate) compressed clusters with libdeflate; a
 *        `codec::decompressor` (it cannot compress, see the file comment).
 *
 * Holds one `libdeflate_decompressor` (about 10 KiB), allocated by the constructor and
 * reused; `decompress` allocates nothing but the text of an error. libdeflate accepts
 * every window size.
 */
class libdeflate_inflater {
public:
    /// Allocates the decompressor. Never throws; if allocation fails, every call reports `errc::no_memory`.
    libdeflate_inflater() noexcept : d_(libdeflate_alloc_decompressor()) {}
    libdeflate_inflater(const libdeflate_inflater&) = delete;
    libdeflate_inflater& operator=(const libdeflate_inflater&) = delete;
    /// Takes the other's decompressor; the moved-from object reports `errc::no_memory`.
    libdeflate_inflater(libdeflate_inflater&&) noexcept = default;
    /// Frees this decompressor and takes the other's.
    libdeflate_inflater& operator=(libdeflate_inflater&&) noexcept = default;
    /// Frees the decompressor.
    ~libdeflate_inflater() = default;

    /**
     * @brief Decodes the raw deflate stream at the start of `in`, which must make exactly `out`.
     *
     * Input after the end of the stream is ignored (libdeflate reports how much it used).
     *
     * @param in  the compressed bytes (may run past the end of the stream)
     * @param out where the cluster goes; every byte is written on success
     * @return success when the stream decodes to exactly `out.size()` bytes.
     * @par Errors
     * - `errc::invalid_compressed_data`: the stream is corrupt, ends before `out` is
     *   full, or goes on past it (stricter than zlib, see the file comment). `out` then
     *   holds unspecified bytes.
     * - `errc::no_memory`: the decompressor could not be allocated (or `*this` was moved from).
     * @par Exception safety
     * Only the text of an error can throw (`std::bad_alloc`). Never writes outside `out`.
     */
    result<void> decompress(std::span<const std::byte> in, std::span<std::byte> out) {
        if (!d_) return error{errc::no_memory, "libdeflate: no decompressor (allocation failed, or the codec was moved from)"};
        if (out.empty()) return {};
        if (in.empty()) return corrupt("the input is empty", out.size());
        std::size_t used = 0, produced = 0;
        const libdeflate_result r =
            libdeflate_deflate_decompress_ex(d_.get(), in.data(), in.size(), out.data(), out.size(), &used, &produced);
        switch (r) {
        case LIBDEFLATE_SUCCESS:
            if (produced == out.size()) return {};
            return error{errc::invalid_compressed_data,
                         qcow2::detail::cat("libdeflate: the deflate stream ends early (", qcow2::detail::dec(produced), " of ",
                                            qcow2::detail::dec(out.size()), " bytes produced)")};
        case LIBDEFLATE_INSUFFICIENT_SPACE:
            return corrupt("the deflate stream goes on past the end of the cluster", out.size());
        case LIBDEFLATE_BAD_DATA:
            return corrupt("corrupt deflate stream, or the input ends before the cluster is complete", out.size());
        default:
            return corrupt("unexpected result from libdeflate_deflate_decompress_ex", out.size());
        }
    }

private:
    static error corrupt(const char* what, std::size_t wanted) {
        return error{errc::invalid_compressed_data,
                     qcow2::detail::cat("libdeflate: ", what, " (a cluster of ", qcow2::detail::dec(wanted), " bytes)")};
    }

    struct free_decompressor {
        void operator()(libdeflate_decompressor* d) const noexcept { libdeflate_free_decompressor(d); }
    };
    std::unique_ptr<libdeflate_decompressor, free_decompressor> d_;
};

static_assert(decompressor<libdeflate_inflater>);

} // namespace codec
} // namespace QCOW2_ABI_NAMESPACE
} // namespace qcow2

#endif // QCOW2_HAS_LIBDEFLATE
