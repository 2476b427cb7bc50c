// SPDX-License-Identifier: MIT
/// @file
/// @brief Overflow-checked arithmetic and alignment helpers on unsigned 64-bit values.
#pragma once

#include <cstdint>
#include <optional>

namespace qcow2::detail {

/// `a + b`, or nothing when it overflows.
constexpr std::optional<std::uint64_t> checked_add(std::uint64_t a, std::uint64_t b) noexcept {
    if (a > UINT64_MAX - b) return std::nullopt;
    return a + b;
}

/// `a * b`, or nothing when it overflows.
constexpr std::optional<std::uint64_t> checked_mul(std::uint64_t a, std::uint64_t b) noexcept {
    if (a != 0 && b > UINT64_MAX / a) return std::nullopt;
    return a * b;
}

/// `ceil(a / b)` for `b > 0`, without overflow.
constexpr std::uint64_t div_round_up(std::uint64_t a, std::uint64_t b) noexcept { return a / b + (a % b != 0); }

/// True when `v` is a multiple of `align` (a power of two).
constexpr bool is_aligned(std::uint64_t v, std::uint64_t align) noexcept { return (v & (align - 1)) == 0; }

/// `v` rounded up to a multiple of `align` (a power of two), or nothing on overflow.
constexpr std::optional<std::uint64_t> align_up(std::uint64_t v, std::uint64_t align) noexcept {
    auto s = checked_add(v, align - 1);
    if (!s) return std::nullopt;
    return *s & ~(align - 1);
}

} // namespace qcow2::detail
