// SPDX-License-Identifier: MIT
// Helpers shared by the qcow2 CLI's commands: errors, option parsing, sizes, paths.
#pragma once

#include <qcow2/qcow2.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace cli {

/// Prints "qcow2: <text>" to stderr, as qemu-img prints its errors.
inline void fail(std::string_view text) { std::fprintf(stderr, "qcow2: %.*s\n", static_cast<int>(text.size()), text.data()); }

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

} // namespace cli
