// SPDX-License-Identifier: MIT
// qcow2 snapshot [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] [-q] [-f FMT] [-U] FILE
//
// Lists, creates, applies and deletes internal snapshots as `qemu-img snapshot` (7.2) does:
// -l prints qemu-img's table ("Snapshot list:", then ID, TAG, VM SIZE, DATE, VM CLOCK and
// ICOUNT in its column widths; nothing for an image without snapshots, -q or not), -c takes a
// snapshot of the disk dated now, -a makes the disk what it was in a snapshot (its size
// included; the snapshot is looked up by id first, then by name), -d deletes the first
// snapshot of that name (qemu-img 7.2 deletes by name only).
// Without an action the image is opened for writing and left as it is. The messages and
// exit status (0, or 1 on error) are qemu-img's. -f (which qemu-img 7.2's snapshot does not
// take) names the format, else it is probed; a raw file has no snapshots.
//
// This file also holds what commit and rebase share with it: opening the image a command
// changes, with qemu-img's messages.
#pragma once

#include "common.hpp"
#include "source.hpp"

#include <sys/time.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cli {

/// The errno QEMU would report for a failed operation: the system's for an I/O error, and
/// for the library's codes the one QEMU returns in that case (the numbers `errno_text` names).
inline int errno_number(const qcow2::error& e) {
    const std::error_code ec = e.code();
    if (ec.category() != qcow2::error_category()) return ec.value();
    switch (static_cast<qcow2::errc>(ec.value())) {
    case qcow2::errc::invalid_argument:
    case qcow2::errc::misaligned_offset:
    case qcow2::errc::refcount_overflow: return EINVAL;
    case qcow2::errc::not_supported:
    case qcow2::errc::unsupported_compression:
    case qcow2::errc::unsupported_encryption: return ENOTSUP;
    case qcow2::errc::read_only: return EACCES;
    case qcow2::errc::no_memory: return ENOMEM;
    case qcow2::errc::file_too_large: return EFBIG;
    default: return EIO;
    }
}

/// qemu-img's message for a failed open of `path`: a system error in the words of QEMU's
/// file driver ("Could not open 'F': Could not open 'F': No such file or directory"),
/// anything else with the library's message. Returns 1.
inline int open_error(const std::string& path, const qcow2::error& e) {
    if (e.code().category() != qcow2::error_category())
        fail("Could not open '" + path + "': Could not open '" + path + "': " + std::strerror(e.code().value()));
    else
        fail("Could not open '" + path + "': " + e.what());
    return 1;
}

/// An image a command opened: a qcow2 image (with its backing chain unless opened
/// metadata-only) or a raw file.
struct opened_image {
    std::string format; ///< "qcow2" or "raw"
    std::optional<qcow2::image> qcow2;
    std::optional<qcow2::io::posix_file> raw;
};

/**
 * Opens `path` as `format` ("qcow2", "raw", or "" to probe), for writing when `writable`,
 * and a qcow2 image's backing and data files through the resolver qemu-img's rules give
 * (relative to the image's directory, absolute names and names outside it allowed) unless
 * `metadata_only`. Prints qemu-img's message and returns nothing on failure.
 */
inline std::optional<opened_image> open_image(const std::string& path, std::string format, bool writable,
                                              bool metadata_only = false) {
    auto file = qcow2::io::posix_file::open(path, writable ? qcow2::io::open_mode::read_write : qcow2::io::open_mode::read_only);
    if (!file) {
        open_error(path, file.error());
        return std::nullopt;
    }
    if (!format.empty() && format != "qcow2" && format != "raw") {
        fail("Unknown file format '" + format + "'");
        return std::nullopt;
    }
    const std::string probed = probe_format(*file);
    if (format.empty()) format = probed;
    opened_image o;
    o.format = format;
    if (format == "raw") {
        o.raw.emplace(std::move(*file));
        return o;
    }
    if (probed != "qcow2") {
        fail("Could not open '" + path + "': Image is not in qcow2 format");
        return std::nullopt;
    }
    qcow2::open_options opts;
    opts.writable = writable;
    opts.metadata_only = metadata_only;
    auto img = qcow2::image::open(std::move(*file), opts,
                                  qcow2::posix_resolver(path, {.allow_absolute = true, .allow_outside = true}));
    if (!img) {
        open_error(path, img.error());
        return std::nullopt;
    }
    o.qcow2.emplace(std::move(*img));
    return o;
}

/// The rows of `qemu-img snapshot -l` (QEMU's bdrv_snapshot_dump), header line first.
inline void print_snapshot_table(const std::vector<qcow2::snapshot_entry>& snapshots) {
    std::printf("Snapshot list:\n%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
    for (const auto& s : snapshots) {
        char date[32] = "";
        const auto t = static_cast<std::time_t>(s.date_sec);
        std::tm tm{};
        if (localtime_r(&t, &tm)) std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
        const std::uint64_t secs = s.vm_clock_nsec / 1000000000u;
        char clock[48];
        std::snprintf(clock, sizeof clock, "%02llu:%02llu:%02llu.%03llu", static_cast<unsigned long long>(secs / 3600),
                      static_cast<unsigned long long>(secs / 60 % 60), static_cast<unsigned long long>(secs % 60),
                      static_cast<unsigned long long>(s.vm_clock_nsec / 1000000u % 1000u));
        // QEMU prints the icount signed (PRId64); -1 means none.
        const std::string icount = s.icount() ? std::to_string(static_cast<std::int64_t>(*s.icount())) : "";
        std::printf("%-9s %-16s %8s%20s%13s%11s\n", s.id.c_str(), s.name.c_str(), human_size(s.vm_state_size()).c_str(),
                    date, clock, icount.c_str());
    }
}

inline int snapshot_command(const std::vector<std::string>& args) {
    enum class action { none, list, create, apply, remove };
    action act = action::none;
    std::string name, format, value;
    std::vector<std::string> files;
    bool options_done = false;
    const auto set_action = [&](action a) {
        if (act != action::none) return fail("Cannot mix '-l', '-a', '-c', '-d'"), false;
        act = a;
        return true;
    };
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if (a == "-l") {
            if (!set_action(action::list)) return 1;
        } else if (a.size() >= 2 && (a[1] == 'a' || a[1] == 'c' || a[1] == 'd') && (a.size() > 2 || k + 1 < args.size())) {
            const std::string opt = a.substr(0, 2);
            (void)take_value(args, k, opt.c_str(), value);
            if (!set_action(a[1] == 'a' ? action::apply : a[1] == 'c' ? action::create : action::remove)) return 1;
            name = value;
        } else if (a == "-a" || a == "-c" || a == "-d") {
            return fail("option requires an argument -- '" + a.substr(1) + "'"), 1;
        } else if (take_value(args, k, "-f", value)) {
            if (value.empty()) return fail("snapshot: option -f requires an argument"), 1;
            format = value;
        } else if (a == "-q" || a == "-U" || a == "--force-share") {
            // -q: only the list is printed, and it is printed anyway; -U: this tool takes no locks.
        } else {
            return unknown_option("snapshot", a);
        }
    }
    if (files.size() != 1) return fail("Expecting one image file name"), 1;
    const std::string& path = files[0];

    // qemu-img opens the image read-only only to list.
    auto img = open_image(path, format, act != action::list);
    if (!img) return 1;
    if (!img->qcow2) {
        // A raw file: QEMU's generic snapshot code finds no driver that keeps snapshots.
        switch (act) {
        case action::create: return fail("Could not create snapshot '" + name + "': -95 (Operation not supported)"), 1;
        case action::apply: return fail("Could not apply snapshot '" + name + "': Block driver does not support snapshots"), 1;
        case action::remove: return fail("Could not delete snapshot '" + name + "': snapshot not found"), 1;
        case action::list:
        case action::none: return 0;
        }
    }
    qcow2::image& image = *img->qcow2;
    const bool external_data = image.has<qcow2::features::external_data_file>();
    switch (act) {
    case action::none: break;
    case action::list:
        if (!image.snapshots().empty()) print_snapshot_table(image.snapshots());
        break;
    case action::create: {
        ::timeval tv{};
        ::gettimeofday(&tv, nullptr);
        auto r = image.create_snapshot(name, {}, static_cast<std::uint32_t>(tv.tv_sec), static_cast<std::uint32_t>(tv.tv_usec) * 1000u);
        if (!r) {
            const int e = errno_number(r.error());
            return fail("Could not create snapshot '" + name + "': " + std::to_string(-e) + " (" + std::strerror(e) + ")"), 1;
        }
        break;
    }
    case action::apply: {
        // QEMU refuses an image with an external data file before looking the snapshot up.
        const auto known = [&] {
            for (const auto& s : image.snapshots())
                if (s.id == name || s.name == name) return true;
            return false;
        };
        const auto failed = [&](int e) {
            fail("Could not apply snapshot '" + name + "': Failed to load snapshot: " + std::strerror(e));
            return 1;
        };
        if (external_data) return failed(ENOTSUP);
        if (!known()) return failed(ENOENT);
        if (auto r = image.apply_snapshot(name); !r) return failed(errno_number(r.error()));
        break;
    }
    case action::remove: {
        // qemu-img 7.2 looks the snapshot to delete up by name only (bdrv_snapshot_find: the
        // first one of that name), then deletes that one.
        std::optional<std::string> id;
        for (const auto& s : image.snapshots())
            if (!id && s.name == name) id = s.id;
        if (!id) return fail("Could not delete snapshot '" + name + "': snapshot not found"), 1;
        if (auto r = image.delete_snapshot(*id); !r)
            return fail("Could not delete snapshot '" + name + "': " + r.error().what()), 1;
        break;
    }
    }
    if (auto r = image.close(); !r) return fail(r.error().what()), 1;
    return 0;
}

} // namespace cli
