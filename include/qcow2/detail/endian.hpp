// SPDX-License-Identifier: MIT
/// @file
/// @brief Big-endian loads and stores on byte spans, usable in constant expressions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

namespace qcow2::detail {

/// Reads a big-endian unsigned integer of type `T` at `p[0..sizeof(T))`.
template <class T>
    requires std::is_unsigned_v<T>
constexpr T load_be(const std::byte* p) noexcept {
    T v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) v = static_cast<T>((v << 8) | static_cast<T>(p[i]));
    return v;
}

/// Writes `v` big-endian at `p[0..sizeof(T))`.
template <class T>
    requires std::is_unsigned_v<T>
constexpr void store_be(std::byte* p, T v) noexcept {
    for (std::size_t i = sizeof(T); i-- > 0;) {
        p[i] = static_cast<std::byte>(v & 0xff);
        if constexpr (sizeof(T) > 1) v = static_cast<T>(v >> 8);
    }
}

constexpr std::uint16_t load_be16(std::span<const std::byte> s, std::size_t off) noexcept { return load_be<std::uint16_t>(s.data() + off); }
constexpr std::uint32_t load_be32(std::span<const std::byte> s, std::size_t off) noexcept { return load_be<std::uint32_t>(s.data() + off); }
constexpr std::uint64_t load_be64(std::span<const std::byte> s, std::size_t off) noexcept { return load_be<std::uint64_t>(s.data() + off); }
constexpr void store_be16(std::span<std::byte> s, std::size_t off, std::uint16_t v) noexcept { store_be(s.data() + off, v); }
constexpr void store_be32(std::span<std::byte> s, std::size_t off, std::uint32_t v) noexcept { store_be(s.data() + off, v); }
constexpr void store_be64(std::span<std::byte> s, std::size_t off, std::uint64_t v) noexcept { store_be(s.data() + off, v); }

} // namespace qcow2::detail
