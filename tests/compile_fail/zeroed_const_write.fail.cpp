// SPDX-License-Identifier: MIT
// Proves that a const proof cannot be written through, even when moved from.
#include "qcow2/all_zero.hpp"
#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"

#include <cstddef>
#include <span>
#include <utility>

using image = qcow2::basic_image<qcow2::io::memory>;

bool f(const qcow2::zeroed<image>& z, std::span<const std::byte> data) {
    auto c = std::move(z).write(0, data);
    return c.status.has_value();
}
