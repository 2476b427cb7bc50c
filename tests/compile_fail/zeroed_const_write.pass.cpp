// SPDX-License-Identifier: MIT
// Twin of zeroed_const_write.fail.cpp: a const proof still gives const access to the image.
#include "qcow2/all_zero.hpp"
#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"

#include <cstddef>
#include <span>

using image = qcow2::basic_image<qcow2::io::memory>;

bool f(const qcow2::zeroed<image>& z, std::span<const std::byte>) { return z->size() > 0 && z.image().cluster_size() > 0; }
