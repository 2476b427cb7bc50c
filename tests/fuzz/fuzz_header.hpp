// SPDX-License-Identifier: MIT
// The body of the header fuzz target (fuzz_header.cpp), shared with the regression replay
// (tests/fuzz_regressions.cpp): a header that decodes must encode, and decode again to the
// same header.
#pragma once

#include "qcow2/format/header.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace qcow2_fuzz {

/// Runs one fuzz_header input: the failure, or an empty string (a decode error is fine).
inline std::string run_header(std::span<const std::uint8_t> data) {
    const std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data.data()), data.size());
    auto h = qcow2::decode_header(in);
    if (!h) return {};
    std::vector<std::byte> out(static_cast<std::size_t>(h->cluster_size()));
    if (auto e = qcow2::encode_header(*h, out); !e) return "a header that decodes does not encode: " + e.error().what();
    auto again = qcow2::decode_header(out);
    if (!again) return "the encoded header does not decode: " + again.error().what();
    if (!(*again == *h)) return "the encoded header decodes to another header";
    return {};
}

} // namespace qcow2_fuzz
