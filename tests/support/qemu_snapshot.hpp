// SPDX-License-Identifier: MIT
/// @file
/// @brief `with_qemu_snapshot`: an image's bytes after `qemu-img snapshot -c` (for tests that
///        need an internal snapshot; the library does not create snapshots).
#pragma once

#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

namespace qcow2::test {

/// Reads a whole file.
inline std::vector<std::byte> read_whole_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::vector<std::byte> b;
    std::transform(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), std::back_inserter(b),
                   [](char c) { return static_cast<std::byte>(c); });
    return b;
}

/**
 * Writes `image` to a temporary file, runs `qemu-img snapshot -c NAME` on it and returns the
 * file's new bytes; nothing when qemu-img is not installed. A failing qemu-img fails the test.
 */
inline std::optional<std::vector<std::byte>> with_qemu_snapshot(const std::vector<std::byte>& image,
                                                                const std::string& name = "s1") {
    const auto qemu_img = qcow2_test::find_program("qemu-img");
    if (!qemu_img) return std::nullopt;
    qcow2_test::temp_dir dir("qcow2-snapshot-");
    const std::string path = dir / "snap.qcow2";
    {
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(image.data()), static_cast<std::streamsize>(image.size()));
    }
    const auto r = qcow2_test::run({*qemu_img, "snapshot", "-c", name, path});
    INFO(r.out << r.err);
    REQUIRE(r.status == 0);
    return read_whole_file(path);
}

} // namespace qcow2::test
