// SPDX-License-Identifier: MIT
// Helpers shared by the qcow2 CLI's commands: errors, option parsing, sizes, paths.
#pragma once

#include <qcow2/qcow2.hpp>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace cli {

/// Prints "qcow2: <text>" to stderr, as qemu-img prints its errors.
inline void fail(std::string_view text) { std::fprintf(stderr, "qcow2: %.*s\n", static_cast<int>(text.size()), text.data()); }

/// An option the command does not take: says so, and where the command's options are listed.
inline int unknown_option(std::string_view command, std::string_view option) {
    std::fprintf(stderr, "qcow2: %.*s: unknown option '%.*s'\nTry 'qcow2 %.*s --help' for its options\n",
                 static_cast<int>(command.size()), command.data(), static_cast<int>(option.size()), option.data(),
                 static_cast<int>(command.size()), command.data());
    return 1;
}

/// The error of a failed open, in qemu-img's words.
inline int open_failed(const std::string& path, const qcow2::error& e) {
    fail("Could not open '" + path + "': " + e.what());
    return 1;
}

/// Sizes as qemu-img prints them: three significant digits and a binary suffix ("64 MiB").
inline std::string human_size(std::uint64_t v) {
    static const char* const suffixes[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    int e = 0;
    std::frexp(static_cast<double>(v) / (1000.0 / 1024.0), &e);
    int i = e > 0 ? (e - 1) / 10 : 0;
    if (i > 6) i = 6;
    const double div = std::ldexp(1.0, i * 10);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%0.3g %s", static_cast<double>(v) / div, suffixes[i]);
    return buf;
}

/// A name relative to the directory of `base` (absolute names are kept), like QEMU's path_combine.
inline std::string path_combine(const std::string& base, const std::string& name) {
    if (name.empty() || name.front() == '/') return name;
    const auto slash = base.rfind('/');
    if (slash == std::string::npos) return name;
    return base.substr(0, slash + 1) + name;
}

/// "qcow2" when the file starts with the qcow2 magic, else "raw" (qemu-img's probe for these two).
inline std::string probe_format(qcow2::io::posix_file& f) {
    std::byte magic[4]{};
    std::uint64_t size = 0;
    if (!f.size(size) && size >= 4 && !f.read_at(0, magic) && qcow2::detail::load_be32(magic, 0) == qcow2::header_magic)
        return "qcow2";
    return "raw";
}

/// Parsed "--output=human|json".
enum class output_format { human, json };

/// Parses an --output value; false when it is neither human nor json.
inline bool parse_output(std::string_view v, output_format& out) {
    if (v == "human") out = output_format::human;
    else if (v == "json") out = output_format::json;
    else return false;
    return true;
}

/// How `parse_qemu_size` ended.
enum class size_status { ok, invalid, out_of_range };

/// A size parsed by `parse_qemu_size`.
struct qemu_size {
    std::uint64_t value = 0;
    size_status status = size_status::invalid;
};

/**
 * A size as QEMU's qemu_strtosz reads it (qemu-img sizes, -o size options, qemu-io offsets):
 * leading blanks, decimal digits, an optional fraction (only with a suffix other than b/B),
 * an optional suffix b/B (bytes) or k/K, m/M, g/G, t/T, p/P, e/E (powers of 1024); or 0x
 * and hex digits, without a fraction (a suffix after them is taken with QEMU 7.2's
 * deprecation warning on stderr). The whole string must be used. Fractions round to the
 * nearest byte (1.1k is 1126), as QEMU's 64.64 fixed point does.
 */
inline qemu_size parse_qemu_size(const std::string& s) {
    const auto digit = [](char c, unsigned base) -> int {
        int d = 99;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        return d < static_cast<int>(base) ? d : -1;
    };
    // Digits in `base` from `i`; false on overflow (i is then past all the digits).
    const auto number = [&](std::size_t& i, unsigned base, std::uint64_t& v) {
        bool fits = true;
        v = 0;
        for (int d; i < s.size() && (d = digit(s[i], base)) >= 0; ++i) {
            const auto u = static_cast<std::uint64_t>(d);
            if (v > (UINT64_MAX - u) / base) fits = false;
            v = v * base + u;
        }
        return fits;
    };
    // QEMU reports a range error only when nothing follows the number.
    const auto result = [&](std::size_t end, size_status st, std::uint64_t v) {
        return end == s.size() ? qemu_size{v, st} : qemu_size{0, size_status::invalid};
    };
    std::size_t i = 0;
    while (i < s.size() && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r'))) ++i;
    const bool negative = i < s.size() && s[i] == '-';
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (i == s.size() || digit(s[i], 10) < 0) return {};
    const std::size_t digits = i;
    std::uint64_t val = 0;
    if (!number(i, 10, val)) return result(i, size_status::out_of_range, 0);
    if (negative) return {};
    std::uint64_t frac = 0; // the fraction in 0.64 fixed point
    bool hex = false;
    if (val == 0 && i == digits + 1 && i < s.size() && (s[i] == 'x' || s[i] == 'X')) {
        // Hex: no fraction.
        std::size_t h = ++i;
        if (!number(h, 16, val)) return result(h, size_status::out_of_range, 0);
        if (h == i || (h < s.size() && s[h] == '.')) return {};
        i = h;
        hex = true;
    } else if (i < s.size() && s[i] == '.') {
        std::size_t f = ++i;
        while (f < s.size() && digit(s[f], 10) >= 0) ++f;
        if (f > i) {
            // strtod would take an exponent along, which QEMU refuses.
            std::size_t e = f + 1;
            if (e < s.size() && (s[e] == '+' || s[e] == '-')) ++e;
            if (f < s.size() && (s[f] == 'e' || s[f] == 'E') && e < s.size() && digit(s[e], 10) >= 0) return {};
            const double fraction = std::strtod(("0" + s.substr(i - 1, f - i + 1)).c_str(), nullptr);
            // A fraction that rounds to 1 overflows QEMU's conversion to 0 (on x86-64): so here too.
            frac = fraction >= 1.0 ? 0 : static_cast<std::uint64_t>(std::ldexp(fraction, 64));
        }
        i = f;
    }
    static const std::string_view suffixes = "BKMGTPE";
    unsigned shift = 0;
    if (i < s.size()) {
        const char c = s[i] >= 'a' && s[i] <= 'z' ? static_cast<char>(s[i] - 'a' + 'A') : s[i];
        if (const auto p = suffixes.find(c); p != std::string_view::npos) {
            if (hex) fail("warning: Using a multiplier suffix on hex numbers is deprecated: " + s);
            shift = static_cast<unsigned>(p) * 10;
            ++i;
        }
    }
    if (shift == 0) return frac ? qemu_size{} : result(i, size_status::ok, val);
    // (val + frac) * 2^shift in 128 bits, rounding the fraction half up.
    std::uint64_t hi = val >> (64 - shift);
    std::uint64_t lo = val << shift;
    const std::uint64_t frac_whole = frac >> (64 - shift), round = (frac << shift) >> 63;
    lo += frac_whole;
    hi += lo < frac_whole;
    lo += round;
    hi += lo < round;
    if (hi) return result(i, size_status::out_of_range, 0);
    return result(i, size_status::ok, lo);
}

/// The errno text QEMU prints for a failed request ("Input/output error"): the system's
/// text for an errno code, and for the library's codes the errno QEMU would return.
inline std::string errno_text(const qcow2::error& e) {
    const std::error_code ec = e.code();
    if (ec.category() != qcow2::error_category()) return ec.message();
    int n = EIO;
    switch (static_cast<qcow2::errc>(ec.value())) {
    case qcow2::errc::invalid_argument:
    case qcow2::errc::misaligned_offset: n = EINVAL; break;
    case qcow2::errc::not_supported:
    case qcow2::errc::unsupported_compression:
    case qcow2::errc::unsupported_encryption: n = ENOTSUP; break;
    case qcow2::errc::read_only: n = EACCES; break;
    case qcow2::errc::no_memory: n = ENOMEM; break;
    case qcow2::errc::file_too_large: n = EFBIG; break;
    default: break;
    }
    return std::strerror(n);
}

} // namespace cli
