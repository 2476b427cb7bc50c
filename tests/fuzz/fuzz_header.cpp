// SPDX-License-Identifier: MIT
// Fuzz target: header decode -> encode -> decode must give the same header, and never crash.
#include "qcow2/format/header.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
    auto h = qcow2::decode_header(in);
    if (!h) return 0;
    std::vector<std::byte> out(static_cast<std::size_t>(h->cluster_size()));
    auto e = qcow2::encode_header(*h, out);
    if (!e) std::abort(); // a header that decodes must encode
    auto again = qcow2::decode_header(out);
    if (!again || !(*again == *h)) std::abort();
    return 0;
}
