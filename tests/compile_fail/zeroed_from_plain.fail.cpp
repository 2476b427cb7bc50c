// SPDX-License-Identifier: MIT
// Proves that a zeroed<> proof cannot be built from a plain image: only create, make_empty,
// verify_zeroes and trust_zeroes make one.
#include "qcow2/all_zero.hpp"
#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"

using image = qcow2::basic_image<qcow2::io::memory>;

qcow2::zeroed<image> f(image& img) { return qcow2::zeroed<image>(std::move(img)); }
