// SPDX-License-Identifier: MIT
// Twin of known_zeroes_needs_feature.fail.cpp: an image type that maintains the bit may ask.
#include "qcow2/all_zero.hpp"
#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"

using image = qcow2::basic_image<qcow2::io::memory>; // maintained_features includes all_zero

bool f(const image& img) { return qcow2::known_zeroes(img); }
