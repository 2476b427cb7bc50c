// SPDX-License-Identifier: MIT
/// @file
/// @brief Small constexpr string builders for error messages ("... at host offset 0x50000").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

namespace qcow2::detail {

/// Decimal text of an unsigned or signed integer.
template <class T>
    requires std::is_integral_v<T>
constexpr std::string dec(T value) {
    char buf[24]{};
    std::size_t n = 0;
    bool neg = false;
    std::uint64_t v;
    if constexpr (std::is_signed_v<T>) {
        neg = value < 0;
        v = neg ? 0 - static_cast<std::uint64_t>(value) : static_cast<std::uint64_t>(value);
    } else {
        v = static_cast<std::uint64_t>(value);
    }
    do {
        buf[n++] = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v);
    std::string s;
    if (neg) s += '-';
    while (n) s += buf[--n];
    return s;
}

/// "0x" followed by lower-case hexadecimal digits.
constexpr std::string hex(std::uint64_t v) {
    char buf[16]{};
    std::size_t n = 0;
    do {
        buf[n++] = "0123456789abcdef"[v & 0xf];
        v >>= 4;
    } while (v);
    std::string s = "0x";
    while (n) s += buf[--n];
    return s;
}

/// Concatenates string pieces.
template <class... S>
constexpr std::string cat(const S&... parts) {
    std::string s;
    (s.append(std::string_view(parts)), ...);
    return s;
}

} // namespace qcow2::detail
