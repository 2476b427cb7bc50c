// SPDX-License-Identifier: MIT
/// @file
/// @brief `zeroed<Image>`: the proof that an image reads as zero, as a type.
///
/// This project's all-zero autoclear bit (bit 2, "all zero") says that every cluster whose
/// contents come from the image reads as zero. `create` (and, later, `make_empty`) return
/// the new image wrapped in `zeroed<>`: holding one proves that nothing has been written to
/// the image since. Only the image type itself can make one.
#pragma once

#include <utility>

namespace qcow2 {

/**
 * @brief An image that is known to read as zero (in every cluster whose contents come
 *        from it), because it was just created.
 *
 * The proof gives const access to the image. `std::move(z).release()` gives the image up
 * for writing, and with it the proof.
 * @tparam Image a `basic_image` instantiation.
 */
template <class Image>
class zeroed {
public:
    zeroed(zeroed&&) noexcept = default;
    zeroed& operator=(zeroed&&) noexcept = default;
    zeroed(const zeroed&) = delete;
    zeroed& operator=(const zeroed&) = delete;
    ~zeroed() = default;

    /// The image, for reading its header and metadata.
    const Image& image() const noexcept { return img_; }
    const Image& operator*() const noexcept { return img_; }
    const Image* operator->() const noexcept { return &img_; }

    /// Gives up the proof and returns the image.
    Image release() && noexcept { return std::move(img_); }

private:
    friend Image;
    explicit zeroed(Image&& img) noexcept : img_(std::move(img)) {}
    Image img_;
};

} // namespace qcow2
