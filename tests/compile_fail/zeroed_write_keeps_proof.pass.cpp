// SPDX-License-Identifier: MIT
// Twin of zeroed_write_keeps_proof.fail.cpp: the write consumes the proof and hands back the image.
#include "qcow2/all_zero.hpp"
#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"

#include <cstddef>
#include <span>
#include <utility>

using image = qcow2::basic_image<qcow2::io::memory>;

bool f(qcow2::zeroed<image>& z, std::span<const std::byte> data) {
    auto c = std::move(z).write(0, data);
    return c.image.size() > 0 && c.status.has_value();
}
