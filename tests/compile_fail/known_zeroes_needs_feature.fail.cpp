// SPDX-License-Identifier: MIT
// Proves that known_zeroes refuses an image type that does not maintain the all-zero bit
// (such a type clears the bit on every read-write open, so the bit tells it nothing).
#include "qcow2/all_zero.hpp"
#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"

using no_all_zero = qcow2::feature_set<qcow2::features::dirty, qcow2::features::corrupt, qcow2::features::lazy_refcounts>;
using image = qcow2::basic_image<qcow2::io::memory, no_all_zero>;

bool f(const image& img) { return qcow2::known_zeroes(img); }
