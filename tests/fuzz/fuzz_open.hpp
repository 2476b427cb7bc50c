// SPDX-License-Identifier: MIT
// The body of the open fuzz target (fuzz_open.cpp), shared with the regression replay
// (tests/fuzz_regressions.cpp): arbitrary bytes as an image in memory (other files refused):
// open, map every extent, read every byte, check. Errors are fine; crashes, leaks and hangs
// are not (the sanitizers and libFuzzer's limits catch those).
#pragma once

#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"
#include "qcow2/ops/check.hpp"
#include "qcow2/ops/map.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace qcow2_fuzz {

/// Runs one fuzz_open input.
inline void run_open(std::span<const std::uint8_t> data) {
    std::vector<std::byte> bytes(data.size());
    if (!data.empty()) std::memcpy(bytes.data(), data.data(), data.size());
    qcow2::io::memory_options mo;
    mo.read_only = true;
    qcow2::open_options oo;
    oo.cache_bytes = 256 * 1024;
    auto img = qcow2::basic_image<qcow2::io::memory>::open(qcow2::io::memory(std::move(bytes), mo), oo);
    if (!img) return;
    // Bound the work per input: at most 64 MiB of guest data.
    const std::uint64_t limit = std::min<std::uint64_t>(img->size(), 64ull << 20);
    std::size_t extents = 0;
    (void)qcow2::map_extents(*img, 0, limit, [&](const qcow2::map_extent&) { ++extents; });
    std::vector<std::byte> buf(1 << 16);
    for (std::uint64_t off = 0; off < limit; off += buf.size()) {
        const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), limit - off));
        if (!img->read(off, std::span(buf).first(n))) break;
    }
    (void)qcow2::check(*img);
}

} // namespace qcow2_fuzz
