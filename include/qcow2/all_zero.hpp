// SPDX-License-Identifier: MIT
/// @file
/// @brief The all-zero autoclear bit as types: `zeroed<Image>`, the proof that an image reads
///        as zero; `known_zeroes`, the whole backing chain's answer in O(chain length).
///
/// This project's extension to the format (docs/all-zero-bit.md): autoclear bit 2, named
/// "all zero" in the image's feature name table, says that every cluster whose contents
/// come from the image reads as zero. `create` and `make_empty` set it and return the image
/// wrapped in `zeroed<>`; the first modification that can make anything read non-zero
/// clears it. Code that relies on zero contents takes a `zeroed<>`, and every call that
/// changes the image consumes the proof (`&&`), so a stale proof cannot be used.
#pragma once

#include "qcow2/detail/strings.hpp"
#include "qcow2/format/features.hpp"
#include "qcow2/format/l2_entry.hpp"
#include "qcow2/io/backend.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace qcow2 {

/// True for image types that maintain the all-zero bit (and so may be asked about it).
template <class Image>
concept maintains_all_zero = Image::features_type::template contains<features::all_zero>;

/// What a call that changes a `zeroed<>` image returns: the image, no longer a proof, and the call's result.
template <class Image>
struct changed {
    Image image;          ///< the image, whatever the call did
    result<void> status;  ///< what the call returned
};

template <class Image>
class zeroed;

template <class Image>
result<zeroed<Image>> make_empty(Image& img);
template <class Image>
result<zeroed<Image>> verify_zeroes(Image& img);
template <class Image>
    requires maintains_all_zero<Image>
std::optional<zeroed<Image>> trust_zeroes(Image& img);

/**
 * @brief An image known to read as zero in every cluster whose contents come from it.
 *
 * Only `create`, `make_empty`, a full verifying scan (`verify_zeroes`) and the image's own
 * trusted all-zero bit (`trust_zeroes`) make one. Clusters the image leaves unallocated
 * read from the backing file, if any: `known_zeroes` answers for the whole chain.
 *
 * The proof gives const access to the image, reads, and flushes. Every call that changes
 * the image (`write`, `write_zeroes`, `discard`, `write_compressed`, `resize`) consumes the
 * proof and returns the plain image with the call's result; `release` gives the image up.
 * @tparam Image a `basic_image` instantiation.
 */
template <class Image>
class zeroed {
public:
    /// Moves the proof (and the image) on.
    zeroed(zeroed&&) noexcept = default;
    /// Moves the proof (and the image) on.
    zeroed& operator=(zeroed&&) noexcept = default;
    zeroed(const zeroed&) = delete;
    zeroed& operator=(const zeroed&) = delete;
    ~zeroed() = default;

    /// The image, for reading its header and metadata.
    const Image& image() const noexcept { return img_; }
    /// The image, for reading its header and metadata.
    /// @{
    const Image& operator*() const noexcept { return img_; }
    const Image* operator->() const noexcept { return &img_; }
    /// @}

    /// Reads guest data (zeroes, or the backing chain's data where the image defers to it).
    result<void> read(std::uint64_t offset, std::span<std::byte> out) & { return img_.read(offset, out); }
    /// Makes completed changes durable; changes nothing the proof covers.
    result<void> flush() & { return img_.flush(); }

    /// `Image::write`; the image no longer reads as zero.
    changed<Image> write(std::uint64_t offset, std::span<const std::byte> data) && {
        auto r = img_.write(offset, data);
        return {std::move(img_), std::move(r)};
    }
    /// `Image::write_zeroes` (with its optional `zero_mode`).
    template <class... Mode>
    changed<Image> write_zeroes(std::uint64_t offset, std::uint64_t length, Mode... mode) && {
        auto r = img_.write_zeroes(offset, length, mode...);
        return {std::move(img_), std::move(r)};
    }
    /// `Image::discard`.
    changed<Image> discard(std::uint64_t offset, std::uint64_t length) && {
        auto r = img_.discard(offset, length);
        return {std::move(img_), std::move(r)};
    }
    /// `Image::write_compressed`; the image no longer reads as zero.
    changed<Image> write_compressed(std::uint64_t offset, std::span<const std::byte> data) && {
        auto r = img_.write_compressed(offset, data);
        return {std::move(img_), std::move(r)};
    }
    /// `Image::resize`.
    changed<Image> resize(std::uint64_t new_size) && {
        auto r = img_.resize(new_size);
        return {std::move(img_), std::move(r)};
    }

    /// Gives up the proof and returns the image.
    Image release() && noexcept { return std::move(img_); }

private:
    friend Image;
    friend result<zeroed<Image>> make_empty<Image>(Image&);
    friend result<zeroed<Image>> verify_zeroes<Image>(Image&);
    template <class I>
        requires maintains_all_zero<I>
    friend std::optional<zeroed<I>> trust_zeroes(I&);
    explicit zeroed(Image&& img) noexcept : img_(std::move(img)) {}
    Image img_;
};

/**
 * @brief True when the whole guest disk of `img` reads as zero, known from the all-zero bits
 *        alone: the bit is set (and trusted) in `img` and in every image of its backing chain.
 *
 * A layer larger than its backing image reads zero past the backing image's end, so sizes
 * do not matter. A raw backing file, or a chain opened metadata-only, is not known zero.
 * @par Complexity
 * O(chain length); no I/O (the bits were read when the chain was opened).
 */
template <class Image>
    requires maintains_all_zero<Image>
bool known_zeroes(const Image& img) noexcept {
    for (const Image* layer = &img;;) {
        if (!layer->template has<features::all_zero>()) return false;
        if (!layer->has_backing() || layer->backing_size() == 0) return true;
        layer = layer->backing_image();
        if (!layer) return false;
    }
}

namespace detail {

/// The first guest offset whose contents come from `img` itself and do not read as zero,
/// or nothing. Zero and unallocated runs are skipped from the metadata; data and
/// compressed runs are read (in pieces of at most 1 MiB).
template <class Image>
result<std::optional<std::uint64_t>> first_nonzero(Image& img) {
    constexpr std::uint64_t chunk = std::uint64_t{1} << 20;
    std::vector<std::byte> buf;
    for (std::uint64_t pos = 0; pos < img.size();) {
        auto m = img.map_range(pos, img.size() - pos);
        if (!m) return m.error();
        if (m->state == cluster_state::data || m->state == cluster_state::compressed) {
            for (std::uint64_t p = pos; p < pos + m->length;) {
                std::uint64_t n = std::min(chunk, pos + m->length - p);
                // Holes in the file read as zero: skip them without reading (SEEK_HOLE).
                if constexpr (io::supports_block_status<typename Image::backend_type>) {
                    if (m->state == cluster_state::data) {
                        io::extent_status st;
                        if (!img.data_backend().block_status(m->host_offset + (p - pos), pos + m->length - p, st) && st.length) {
                            if (!st.data) {
                                p += st.length;
                                continue;
                            }
                            n = std::min(n, st.length);
                        }
                    }
                }
                buf.resize(static_cast<std::size_t>(n));
                // Only this layer: a data or compressed run never defers to the backing file.
                if (auto r = img.read(p, buf); !r) return r.error();
                const auto nz = std::find_if(buf.begin(), buf.end(), [](std::byte b) { return b != std::byte{0}; });
                if (nz != buf.end()) return std::optional<std::uint64_t>(p + static_cast<std::uint64_t>(nz - buf.begin()));
                p += n;
            }
        }
        pos += m->length;
    }
    return std::optional<std::uint64_t>{};
}

} // namespace detail

/**
 * @brief The proof for `img`, made by reading it: every cluster whose contents come from it
 *        reads as zero. On success `img` is moved into the proof; on failure it is untouched.
 * @par Errors
 * `invalid_argument` naming the first guest offset that reads non-zero; read errors.
 * @par Complexity
 * One pass over the L1 and L2 tables, plus a read of every data and compressed cluster.
 */
template <class Image>
result<zeroed<Image>> verify_zeroes(Image& img) {
    auto nz = detail::first_nonzero(img);
    if (!nz) return nz.error();
    if (*nz) return error{errc::invalid_argument, detail::cat("guest offset ", detail::dec(**nz), " does not read as zero")};
    return zeroed<Image>(std::move(img));
}

/**
 * @brief The proof for `img` from its own all-zero bit (set and trusted), in O(1); nothing
 *        when the bit is not there. On success `img` is moved into the proof.
 *
 * The bit says what the proof says, and only `create` and `make_empty` set it.
 */
template <class Image>
    requires maintains_all_zero<Image>
std::optional<zeroed<Image>> trust_zeroes(Image& img) {
    if (!img.template has<features::all_zero>()) return std::nullopt;
    return zeroed<Image>(std::move(img));
}

/**
 * @brief Empties `img` (every cluster unallocated, its host clusters freed, as QEMU's
 *        `make_empty` does for `qemu-img commit`) and sets its all-zero bit; on success the
 *        image is moved into the returned proof.
 * @par Errors
 * Those of `Image::make_empty`.
 */
template <class Image>
result<zeroed<Image>> make_empty(Image& img) {
    if (auto r = img.make_empty(); !r) return r.error();
    return zeroed<Image>(std::move(img));
}

} // namespace qcow2
