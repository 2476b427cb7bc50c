// SPDX-License-Identifier: MIT
// qcow2 rebase [-f FMT] [-u] -b BACKING [-F FMT] [-p] [-q] [-t CACHE] [-T CACHE] [-U] FILE
//
// Changes the backing file of a qcow2 image as `qemu-img rebase` (7.2) does. With -u
// (unsafe) only the header changes (`set_backing_file`): the image is opened without its
// backing chain, which may be missing. Otherwise the guest disk is kept as it reads: every
// cluster the image leaves unallocated where the old backing chain and the new one read
// differently (both read whole, cluster by cluster; past the end of a backing file it reads
// as zeroes) is first written into the image from the old chain (zeroed, where the old
// chain has ended), then the header changes. -b "" removes the backing file (safe mode then
// copies everything the old chain provides that is not zeroes). The new backing file is
// named relative to the image's directory, as qemu-img names it; a non-empty -b needs -F,
// as in qemu-img 7.2. -p prints qemu-img's progress on stderr when it is a terminal. The
// messages and exit status (0, or 1 on error) are qemu-img's.
#pragma once

#include "common.hpp"
#include "convert.hpp"
#include "snapshot.hpp"
#include "source.hpp"

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace cli {

namespace rebase_detail {

/// The format names QEMU 7.2 knows (`bdrv_find_format`): a backing format outside them is refused.
inline bool qemu_format(const std::string& name) {
    static const char* const names[] = {
        "blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "compress", "copy-before-write", "copy-on-read",
        "dmg", "file", "ftp", "ftps", "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "iser", "luks",
        "nbd", "nfs", "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed", "quorum", "raw",
        "rbd", "replication", "snapshot-access", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat"};
    for (const char* n : names)
        if (name == n) return true;
    return false;
}

/// QEMU's cache modes (`bdrv_parse_cache_mode`).
inline bool cache_mode(const std::string& m) {
    return m == "none" || m == "off" || m == "writeback" || m == "writethrough" || m == "directsync" || m == "unsafe";
}

/**
 * The safe part of a rebase: writes into `img` every cluster it leaves unallocated where
 * its old backing chain (what `img` reads there now) and `next` (nothing: zeroes) differ,
 * from the old chain. `advance(done)` reports progress. The error message, empty on success.
 */
template <class Advance>
std::string copy_differences(qcow2::image& img, disk* next, Advance&& advance) {
    const std::uint64_t size = img.size(), cs = img.cluster_size();
    const std::uint64_t old_size = img.has_backing() ? img.backing_size() : 0;
    const std::uint64_t new_size = next ? next->size() : 0;
    constexpr std::uint64_t unit = std::uint64_t{2} << 20;
    std::vector<std::byte> old_buf, new_buf;
    for (std::uint64_t pos = 0; pos < size;) {
        auto m = img.map_range(pos, std::min(unit, size - pos));
        if (!m) return "error while reading image metadata: " + m.error().what();
        const std::uint64_t end = pos + m->length;
        if (m->state != qcow2::cluster_state::unallocated) {
            pos = end;
            advance(pos);
            continue;
        }
        // Read both chains over the run, then compare cluster by cluster.
        const auto n = static_cast<std::size_t>(end - pos);
        old_buf.resize(n);
        new_buf.resize(n);
        if (auto r = img.read(pos, old_buf); !r) return "error while reading from old backing file: " + r.error().what();
        std::fill(new_buf.begin(), new_buf.end(), std::byte{0});
        if (next && pos < new_size) {
            const auto avail = static_cast<std::size_t>(std::min<std::uint64_t>(n, new_size - pos));
            if (auto r = next->read(pos, std::span(new_buf).first(avail)); !r)
                return "error while reading from new backing file: " + r.error().what();
        }
        for (std::uint64_t at = pos; at < end;) {
            const std::uint64_t stop = std::min(end, (at / cs + 1) * cs);
            const auto off = static_cast<std::size_t>(at - pos), len = static_cast<std::size_t>(stop - at);
            if (std::memcmp(old_buf.data() + off, new_buf.data() + off, len) != 0) {
                // Past the old chain's end it reads zeroes: written as zeroes, as QEMU does.
                auto r = at >= old_size ? img.write_zeroes(at, stop - at) : img.write(at, std::span(old_buf).subspan(off, len));
                if (!r) return std::string("Error while writing to COW image: ") + std::strerror(errno_number(r.error()));
            }
            at = stop;
        }
        pos = end;
        advance(pos);
    }
    return {};
}

} // namespace rebase_detail

inline int rebase_command(const std::vector<std::string>& args) {
    std::string format, value;
    std::optional<std::string> backing, backing_format;
    bool unsafe = false, quiet = false, show_progress = false, options_done = false;
    std::vector<std::string> files;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if ((a == "-b" || a == "-F" || a == "-f" || a == "-t" || a == "-T") && k + 1 == args.size()) {
            return fail("option requires an argument -- '" + a.substr(1) + "'"), 1;
        } else if (take_value(args, k, "-b", value)) {
            backing = value; // may be empty: no backing file
        } else if (take_value(args, k, "-F", value)) {
            backing_format = value;
        } else if (take_value(args, k, "-f", value)) {
            format = value;
        } else if (take_value(args, k, "-t", value)) {
            if (!rebase_detail::cache_mode(value)) return fail("Invalid cache option: " + value), 1;
        } else if (take_value(args, k, "-T", value)) {
            if (!rebase_detail::cache_mode(value)) return fail("Invalid source cache option: " + value), 1;
        } else if (a == "-u") {
            unsafe = true;
        } else if (a == "-p") {
            show_progress = true;
        } else if (a == "-q") {
            quiet = true;
        } else if (a == "-U" || a == "--force-share") {
            // This tool takes no locks.
        } else {
            return unknown_option("rebase", a);
        }
    }
    if (quiet) show_progress = false;
    if (files.size() != 1) return fail("Expecting one image file name"), 1;
    if (!unsafe && !backing) return fail("Must specify backing file (-b) or use unsafe mode (-u)"), 1;
    const std::string& path = files[0];
    const std::string shown = backing ? *backing : "(null)"; // how QEMU prints a missing -b
    const auto change_failed = [&](const std::string& why) {
        fail("Could not change the backing file to '" + shown + "': " + why);
        return 1;
    };

    progress_meter meter(show_progress);
    // Unsafe: the old chain is not opened (it may be gone: that is what -u is for).
    auto opened = open_image(path, format, true, unsafe);
    if (!opened) return 1;
    if (backing_format && !rebase_detail::qemu_format(*backing_format))
        return fail("Invalid format name: '" + *backing_format + "'"), 1;
    if (!opened->qcow2) {
        // A raw file has no backing file to change (nothing is allocated-free to copy either).
        return change_failed(std::strerror(ENOTSUP));
    }
    qcow2::image& img = *opened->qcow2;

    if (!unsafe) {
        std::optional<disk> next;
        if (!backing->empty()) {
            const std::string full = path_combine(path, *backing);
            const auto cannot_open = [&](const std::string& why) {
                fail("Could not open new backing file '" + *backing + "': " + why);
                return 1;
            };
            if (backing_format && *backing_format != "qcow2" && *backing_format != "raw")
                return cannot_open("Unknown driver '" + *backing_format + "' (only qcow2 and raw files are read)");
            auto f = qcow2::io::posix_file::open(full, qcow2::io::open_mode::read_only);
            if (!f) return cannot_open("Could not open '" + full + "': " + std::strerror(f.error().code().value()));
            next = disk::open(full, backing_format.value_or(""));
            if (!next) return 1;
        }
        std::string err = rebase_detail::copy_differences(img, next ? &*next : nullptr,
                                                          [&](std::uint64_t done) { meter.update(done, img.size()); });
        if (!err.empty()) return fail(err), 1;
    }

    // The header: a non-empty name needs its format (qemu-img 7.2 requires one).
    if (backing && !backing->empty() && !backing_format) return change_failed("backing format must be specified");
    const std::string name = backing.value_or(""), fmt = name.empty() ? std::string() : backing_format.value_or("");
    if (auto r = img.set_backing_file(name, fmt); !r) {
        const auto& e = r.error();
        if (e.is(qcow2::errc::invalid_argument)) return change_failed("No space left in the file header");
        if (e.is(qcow2::errc::backing_name_too_long) || e.is(qcow2::errc::not_supported)) return change_failed(std::strerror(EINVAL));
        return change_failed(e.what());
    }
    if (auto r = img.close(); !r) return fail(r.error().what()), 1;
    meter.finish();
    return 0;
}

} // namespace cli
