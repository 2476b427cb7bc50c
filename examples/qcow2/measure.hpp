// SPDX-License-Identifier: MIT
// qcow2 measure [--output=human|json] [-O qcow2|raw] [-o OPTIONS] [-f FMT] [-U] (SRC | --size SIZE)
//
// The size of a new image, as `qemu-img measure` (7.2) computes and prints it: "required
// size" (what the image needs for SRC's data, or only its metadata with --size),
// "fully allocated size", and for a qcow2 v3 SRC and a version 3 target the "bitmaps size"
// that copying SRC's persistent bitmaps adds; --output=json prints the same as
// {"bitmaps", "required", "fully-allocated"}. -O qcow2 takes create's -o options (only the
// layout ones count: cluster_size, refcount_bits, extended_l2, compat, preallocation,
// backing_file; the others are checked and ignored, as in QEMU); the default output format
// is raw, as in qemu-img, whose answer is the disk size. The numbers come from the
// library's `qcow2::measure`; which ranges of SRC hold data is what `qemu-img map` says
// (`qcow2::map_extents`, holes under preallocated clusters included). The messages and
// exit status (0, or 1 on error) are qemu-img's.
#pragma once

#include "common.hpp"
#include "create.hpp"
#include "json.hpp"
#include "snapshot.hpp"
#include "source.hpp"

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace cli {

namespace measure_detail {

/// The library's options for a qcow2 target, checked as QEMU's `qcow2_measure` checks them
/// (its order and words, which differ from create's: compat takes only 0.10 and 1.1, and
/// options that do not change the layout are not checked against each other); the error, or empty.
inline std::string qcow2_target(const create_opts& opts, qcow2::create_options& c) {
    c = {};
    c.extended_l2 = opts.number("extended_l2", 0) != 0;
    const std::uint64_t cs = opts.number("cluster_size", 65536);
    if (cs < 512 || cs > (std::uint64_t{2} << 20) || (cs & (cs - 1)))
        return "Cluster size must be a power of two between 512 and 2048k";
    if (c.extended_l2 && cs < 16384)
        return "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes";
    c.cluster_size = cs;
    if (const auto* v = opts.text("compat")) {
        if (*v == "0.10") c.version = 2;
        else if (*v == "1.1") c.version = 3;
        else return "Invalid compatibility level: '" + *v + "'";
    }
    const std::uint64_t rb = opts.number("refcount_bits", 16);
    if (rb > 64 || rb == 0 || (rb & (rb - 1))) return "Refcount width must be a power of two and may not exceed 64 bits";
    if (c.version < 3 && rb != 16)
        return "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)";
    c.refcount_bits = static_cast<unsigned>(rb);
    if (const auto* v = opts.text("preallocation")) {
        if (*v == "off") c.prealloc = qcow2::preallocation::off;
        else if (*v == "metadata") c.prealloc = qcow2::preallocation::metadata;
        else if (*v == "falloc") c.prealloc = qcow2::preallocation::falloc;
        else if (*v == "full") c.prealloc = qcow2::preallocation::full;
        else return "invalid parameter value: " + *v;
    }
    if (const auto* v = opts.text("backing_file")) c.backing_file = v->empty() ? std::string(" ") : *v; // given, even empty
    c.size = opts.number("size", 0);
    return {};
}

/// The guest ranges of `src` that read data (what QEMU's block status calls data and not
/// zero, through the whole chain), in order; the error message, empty on success.
inline std::string data_ranges(disk& src, std::vector<qcow2::guest_range>& out) {
    if (auto* img = src.image()) {
        auto r = qcow2::map_extents(*img, [&](const qcow2::map_extent& e) {
            if (e.data && !e.zero) out.push_back({e.start, e.length});
        });
        if (!r) return "Unable to get block status: " + r.error().what();
        return {};
    }
    for (std::uint64_t pos = 0; pos < src.size();) {
        auto run = src.status(pos, src.size() - pos);
        if (!run) return "Unable to get block status: " + run.error().what();
        if (run->flags & block::data) out.push_back({pos, run->length});
        pos += run->length;
    }
    return {};
}

inline void print(const qcow2::measurement& m, output_format out) {
    if (out == output_format::json) {
        json::object o;
        if (m.bitmaps) o.emplace_back("bitmaps", *m.bitmaps);
        o.emplace_back("required", m.required);
        o.emplace_back("fully-allocated", m.fully_allocated);
        std::printf("%s\n", json::dump(o).c_str());
        return;
    }
    std::printf("required size: %llu\nfully allocated size: %llu\n", static_cast<unsigned long long>(m.required),
                static_cast<unsigned long long>(m.fully_allocated));
    if (m.bitmaps) std::printf("bitmaps size: %llu\n", static_cast<unsigned long long>(*m.bitmaps));
}

} // namespace measure_detail

inline int measure_command(const std::vector<std::string>& args) {
    output_format out = output_format::human;
    std::string in_format, out_format = "raw", value;
    std::vector<std::string> lists, files;
    std::optional<std::uint64_t> size;
    bool options_done = false;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if (take_value(args, k, "--output", value)) {
            if (!parse_output(value, out)) return fail("--output must be used with human or json as argument."), 1;
        } else if (take_value(args, k, "--size", value)) {
            const auto s = parse_qemu_size(value);
            if (s.status == size_status::invalid)
                return fail("Invalid image size specified. You may use k, M, G, T, P or E suffixes for"),
                       fail("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."), 1;
            if (s.status == size_status::out_of_range || s.value > INT64_MAX)
                return fail("Invalid image size specified. Must be between 0 and 9223372036854775807."), 1;
            size = s.value;
        } else if (take_value(args, k, "-f", value)) {
            if (value.empty()) return fail("measure: option -f requires an argument"), 1;
            in_format = value;
        } else if (take_value(args, k, "-O", value)) {
            if (value.empty()) return fail("measure: option -O requires an argument"), 1;
            out_format = value;
        } else if (take_value(args, k, "-o", value)) {
            if (!create_opts::valid_list(value)) return 1;
            lists.push_back(value);
        } else if (a == "-U" || a == "--force-share") {
            // This tool takes no locks.
        } else if (a.rfind("-l", 0) == 0 || a == "--image-opts" || a.rfind("--object", 0) == 0) {
            return fail("measure: " + a + " is not built"), 1;
        } else {
            return unknown_option("measure", a);
        }
    }
    if (files.size() > 1) return fail("At most one filename argument is allowed."), 1;
    if (files.empty() && !in_format.empty()) return fail("--image-opts, -f, and -l require a filename argument."), 1;
    if (!files.empty() && size) return fail("--size N cannot be used together with a filename."), 1;
    if (files.empty() && !size) return fail("Either --size N or one filename must be specified."), 1;

    std::optional<disk> src;
    if (!files.empty()) {
        const std::string& path = files[0];
        if (!in_format.empty() && in_format != "qcow2" && in_format != "raw")
            return fail("Could not open '" + path + "': Unknown driver '" + in_format + "'"), 1;
        // QEMU's words for a file that does not open; disk::open reports the rest.
        if (auto f = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_only); !f) return open_error(path, f.error());
        src = disk::open(path, in_format);
        if (!src) return 1;
    }

    if (out_format != "qcow2" && out_format != "raw") {
        // The formats QEMU knows that cannot be measured, and the ones it does not know.
        static const char* const qemu_formats[] = {"bochs", "cloop", "dmg", "luks", "parallels", "qcow", "qed",
                                                   "vdi", "vhdx", "vmdk", "vpc", "vvfat"};
        for (const char* f : qemu_formats)
            if (out_format == f) return fail("Block driver '" + out_format + "' does not support size measurement"), 1;
        return fail("Unknown file format '" + out_format + "'"), 1;
    }
    create_opts opts;
    for (const auto& l : lists)
        if (std::string err = opts.parse(l); !err.empty())
            return fail(err), fail("Invalid options for file format '" + out_format + "'"), 1;
    if (size) opts.set_number("size", *size);

    if (out_format == "raw") {
        // Raw images take the whole disk (QEMU's raw_measure): only size and preallocation apply.
        for (const auto& d : create_detail::option_list) {
            const std::string n = d.name;
            if (n != "size" && n != "preallocation" && opts.has(n))
                return fail("Invalid parameter '" + n + "'"), fail("Invalid options for file format 'raw'"), 1;
        }
        const std::uint64_t bytes = src ? src->size() : (opts.number("size", 0) + 511) / 512 * 512;
        measure_detail::print(qcow2::measurement{bytes, bytes, std::nullopt}, out);
        return 0;
    }

    qcow2::create_options target;
    if (std::string err = measure_detail::qcow2_target(opts, target); !err.empty()) return fail(err), 1;
    qcow2::result<qcow2::measurement> m = qcow2::measurement{};
    if (src) {
        std::vector<qcow2::guest_range> data;
        if (std::string err = measure_detail::data_ranges(*src, data); !err.empty()) return fail(err), 1;
        qcow2::measure_source s;
        s.size = src->size();
        s.data = data;
        // Only a version 3 qcow2 image can hold persistent bitmaps (QEMU's bdrv_supports_persistent_dirty_bitmap).
        if (const auto* img = src->image(); img && img->header().version >= 3) s.bitmaps = std::span(img->bitmaps());
        m = qcow2::measure(target, s);
    } else {
        m = qcow2::measure(target);
    }
    if (!m) {
        if (m.error().is(qcow2::errc::image_too_large))
            return fail("The image size is too large (try using a larger cluster size)"), 1;
        return fail(m.error().what()), 1;
    }
    measure_detail::print(*m, out);
    return 0;
}

} // namespace cli
