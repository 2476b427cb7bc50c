// SPDX-License-Identifier: MIT
/// @file
/// @brief Big-endian loads and stores on byte spans, usable in constant expressions.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>

namespace qcow2::detail {

/// `v` with its bytes in reverse order.
template <class T>
    requires std::is_unsigned_v<T>
constexpr T byte_swap(T v) noexcept {
#if defined(__GNUC__) || defined(__clang__)
    if constexpr (sizeof(T) == 8) return static_cast<T>(__builtin_bswap64(v));
    else if constexpr (sizeof(T) == 4) return static_cast<T>(__builtin_bswap32(v));
    else if constexpr (sizeof(T) == 2) return static_cast<T>(__builtin_bswap16(v));
    else return v;
#else
    T r = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) {
        r = static_cast<T>((r << 8) | (v & 0xff));
        if constexpr (sizeof(T) > 1) v = static_cast<T>(v >> 8);
    }
    return r;
#endif
}

/// Reads a big-endian unsigned integer of type `T` at `p[0..sizeof(T))`.
///
/// At run time one load and a byte swap (every L1, L2 and refcount entry goes through here);
/// in constant expressions, byte by byte.
template <class T>
    requires std::is_unsigned_v<T>
constexpr T load_be(const std::byte* p) noexcept {
    if (std::is_constant_evaluated()) {
        T v = 0;
        for (std::size_t i = 0; i < sizeof(T); ++i) v = static_cast<T>((v << 8) | static_cast<T>(p[i]));
        return v;
    }
    T v;
    std::memcpy(&v, p, sizeof v);
    if constexpr (std::endian::native == std::endian::little) v = byte_swap(v);
    return v;
}

/// Writes `v` big-endian at `p[0..sizeof(T))`.
template <class T>
    requires std::is_unsigned_v<T>
constexpr void store_be(std::byte* p, T v) noexcept {
    if (std::is_constant_evaluated()) {
        for (std::size_t i = sizeof(T); i-- > 0;) {
            p[i] = static_cast<std::byte>(v & 0xff);
            if constexpr (sizeof(T) > 1) v = static_cast<T>(v >> 8);
        }
        return;
    }
    if constexpr (std::endian::native == std::endian::little) v = byte_swap(v);
    std::memcpy(p, &v, sizeof v);
}

constexpr std::uint16_t load_be16(std::span<const std::byte> s, std::size_t off) noexcept { return load_be<std::uint16_t>(s.data() + off); }
constexpr std::uint32_t load_be32(std::span<const std::byte> s, std::size_t off) noexcept { return load_be<std::uint32_t>(s.data() + off); }
constexpr std::uint64_t load_be64(std::span<const std::byte> s, std::size_t off) noexcept { return load_be<std::uint64_t>(s.data() + off); }
constexpr void store_be16(std::span<std::byte> s, std::size_t off, std::uint16_t v) noexcept { store_be(s.data() + off, v); }
constexpr void store_be32(std::span<std::byte> s, std::size_t off, std::uint32_t v) noexcept { store_be(s.data() + off, v); }
constexpr void store_be64(std::span<std::byte> s, std::size_t off, std::uint64_t v) noexcept { store_be(s.data() + off, v); }

} // namespace qcow2::detail
