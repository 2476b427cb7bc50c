// SPDX-License-Identifier: MIT
// Proves that writing through a zeroed<> consumes it: a write on the proof itself (which
// would leave a stale proof behind, usable after the write) does not compile.
#include "qcow2/all_zero.hpp"
#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"

#include <cstddef>
#include <span>

using image = qcow2::basic_image<qcow2::io::memory>;

bool f(qcow2::zeroed<image>& z, std::span<const std::byte> data) {
    auto c = z.write(0, data);  // not an rvalue: refused
    return z->size() > 0 && c.status.has_value();
}
