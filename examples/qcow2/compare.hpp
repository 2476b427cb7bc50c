// SPDX-License-Identifier: MIT
// qcow2 compare [-f FMT] [-F FMT] [-s] [-q] [-p] A B
//
// Compares the guest disks of A and B (qcow2 images through their backing chains, or raw
// files) as qemu-img compare does, with its messages on stdout and its exit codes:
// 0 identical, 1 different, 2 an image could not be opened, 3 the allocation of a range
// could not be queried, 4 a read failed.
//
// A mismatch names the first differing 512-byte sector, as qemu-img does ("Content
// mismatch at offset N!", N a multiple of 512 from the start of the compared run). Without
// -s, images of different sizes compare equal when the extra part of the larger one reads
// as zeroes; with -s a size difference, or a difference in block status (allocated, zero,
// data, mapped to a host offset, reaching the end of the image) is a mismatch, as in
// qemu-img, which compares the BDRV_BLOCK_* bits of the two images run by run.
#pragma once

#include "common.hpp"
#include "convert.hpp"
#include "source.hpp"

#include <algorithm>
#include <iterator>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace cli {

namespace compare_detail {

/// Offset (from the start of the buffers) of the first 512-byte sector that differs, if any.
inline std::optional<std::uint64_t> first_difference(std::span<const std::byte> a, std::span<const std::byte> b) {
    if (std::memcmp(a.data(), b.data(), a.size()) == 0) return std::nullopt;
    for (std::size_t at = 0; at < a.size(); at += sector_size) {
        const std::size_t n = std::min<std::size_t>(sector_size, a.size() - at);
        if (std::memcmp(a.data() + at, b.data() + at, n) != 0) return at;
    }
    return std::nullopt;
}

/// Offset of the first 512-byte sector that is not all zeroes, if any.
inline std::optional<std::uint64_t> first_nonzero(std::span<const std::byte> a) {
    if (is_zero(a)) return std::nullopt;
    for (std::size_t at = 0; at < a.size(); at += sector_size) {
        const std::size_t n = std::min<std::size_t>(sector_size, a.size() - at);
        if (!is_zero(a.subspan(at, n))) return at;
    }
    return std::nullopt;
}

/// Block status as `compare -s` sees it. A qcow2 image answers from its `map_extents` (the
/// bits qemu-img map shows: present, zero, data, offset; holes under the data clusters of a
/// metadata-preallocated image read as zeroes); a raw file from its holes.
class strict_status {
public:
    explicit strict_status(disk& d) : d_(d) {}

    qcow2::result<disk_run> at(std::uint64_t pos, std::uint64_t max_length) {
        qcow2::image* img = d_.image();
        if (!img) return d_.status(pos, max_length);
        if (!mapped_) {
            auto r = qcow2::map_extents(*img, [&](const qcow2::map_extent& e) { extents_.push_back(e); });
            if (!r) return r.error();
            mapped_ = true;
        }
        const auto it = std::upper_bound(extents_.begin(), extents_.end(), pos,
                                         [](std::uint64_t p, const qcow2::map_extent& e) { return p < e.start; });
        if (it == extents_.begin()) return qcow2::error(qcow2::errc::invalid_argument, "offset outside the map");
        const qcow2::map_extent& e = *std::prev(it);
        unsigned flags = (e.data ? block::data : 0u) | (e.zero ? block::zero : 0u) | (e.offset ? block::offset_valid : 0u) |
                         (e.present ? block::allocated : 0u);
        return disk_run{std::min(e.start + e.length - pos, max_length), flags};
    }

private:
    disk& d_;
    bool mapped_ = false;
    std::vector<qcow2::map_extent> extents_;
};

/// Prints unless quiet, on stdout (qemu-img's qprintf).
inline void say(bool quiet, const std::string& text) {
    if (!quiet) std::printf("%s\n", text.c_str());
}

} // namespace compare_detail

inline int compare_command(const std::vector<std::string>& args) {
    using compare_detail::say;
    std::string fmt1, fmt2, value;
    bool strict = false, quiet = false, show_progress = false, options_done = false;
    std::vector<std::string> files;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if (take_value(args, k, "-f", value)) {
            if (value.empty()) return fail("compare: option -f requires an argument"), 1;
            fmt1 = value;
        } else if (take_value(args, k, "-F", value)) {
            if (value.empty()) return fail("compare: option -F requires an argument"), 1;
            fmt2 = value;
        } else if (a == "-s") {
            strict = true;
        } else if (a == "-q") {
            quiet = true;
        } else if (a == "-p") {
            show_progress = true;
        } else if (a == "-U" || a == "--force-share") {
            // This tool takes no locks.
        } else {
            return unknown_option("compare", a);
        }
    }
    if (files.size() != 2) return fail("Expecting two image file names"), 1;
    const std::string& name1 = files[0];
    const std::string& name2 = files[1];

    auto d1 = disk::open(name1, fmt1);
    if (!d1) return 2;
    auto d2 = disk::open(name2, fmt2);
    if (!d2) return 2;

    const std::uint64_t size1 = d1->size(), size2 = d2->size();
    const std::uint64_t common = std::min(size1, size2), total = std::max(size1, size2);
    progress_meter meter(show_progress && !quiet);
    if (strict && size1 != size2) {
        say(quiet, "Strict mode: Image size mismatch!");
        return 1;
    }

    constexpr std::size_t chunk_max = std::size_t{2} << 20;
    std::vector<std::byte> buf1(chunk_max), buf2(chunk_max);

    const auto status_failed = [](const std::string& name, const qcow2::error& e) {
        fail("Sector allocation test failed for " + name + ": " + e.what());
        return 3;
    };
    const auto read_failed = [](std::uint64_t at, const std::string& name, const qcow2::error& e) {
        fail("Error while reading offset " + std::to_string(at) + " of " + name + ": " + e.what());
        return 4;
    };

    compare_detail::strict_status strict1(*d1), strict2(*d2);
    std::uint64_t pos = 0;
    while (pos < common) {
        auto s1 = strict ? strict1.at(pos, common - pos) : d1->status(pos, common - pos);
        if (!s1) return status_failed(name1, s1.error());
        auto s2 = strict ? strict2.at(pos, common - pos) : d2->status(pos, common - pos);
        if (!s2) return status_failed(name2, s2.error());
        std::uint64_t chunk = std::min(s1->length, s2->length);
        // QEMU's status also says whether the run reaches the end of the image (sizes are equal here).
        const auto eof = [&](const disk_run& r) { return pos + r.length == common ? block::eof : 0u; };
        if (strict && (s1->flags | eof(*s1)) != (s2->flags | eof(*s2))) {
            say(quiet, "Strict mode: Offset " + std::to_string(pos) + " block status mismatch!");
            return 1;
        }
        if (!(s1->zero() && s2->zero())) {
            chunk = std::min<std::uint64_t>(chunk, chunk_max);
            const auto n = static_cast<std::size_t>(chunk);
            std::optional<std::uint64_t> diff;
            if (s1->zero() || s2->zero()) {
                // One side is known zero: read only the other.
                disk& other = s1->zero() ? *d2 : *d1;
                if (auto r = other.read(pos, std::span(buf1).first(n)); !r)
                    return read_failed(pos, other.path(), r.error());
                diff = compare_detail::first_nonzero(std::span(buf1).first(n));
            } else {
                if (auto r = d1->read(pos, std::span(buf1).first(n)); !r) return read_failed(pos, name1, r.error());
                if (auto r = d2->read(pos, std::span(buf2).first(n)); !r) return read_failed(pos, name2, r.error());
                diff = compare_detail::first_difference(std::span(buf1).first(n), std::span(buf2).first(n));
            }
            if (diff) {
                say(quiet, "Content mismatch at offset " + std::to_string(pos + *diff) + "!");
                return 1;
            }
        }
        pos += chunk;
        meter.update(pos, total);
    }

    if (size1 != size2) {
        say(quiet, "Warning: Image size mismatch!");
        disk& over = size1 > size2 ? *d1 : *d2;
        while (pos < total) {
            auto s = over.status(pos, total - pos);
            if (!s) return status_failed(over.path(), s.error());
            std::uint64_t chunk = s->length;
            if (!s->zero()) {
                chunk = std::min<std::uint64_t>(chunk, chunk_max);
                const auto data = std::span(buf1).first(static_cast<std::size_t>(chunk));
                if (auto r = over.read(pos, data); !r) return read_failed(pos, over.path(), r.error());
                if (auto diff = compare_detail::first_nonzero(data)) {
                    say(quiet, "Content mismatch at offset " + std::to_string(pos + *diff) + "!");
                    return 1;
                }
            }
            pos += chunk;
            meter.update(pos, total);
        }
    }
    meter.finish();
    say(quiet, "Images are identical.");
    return 0;
}

} // namespace cli
