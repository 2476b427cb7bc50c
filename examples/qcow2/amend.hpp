// SPDX-License-Identifier: MIT
// qcow2 amend [-f qcow2] [-p] [-q] -o OPTIONS FILE
//
// Changes the options of an existing qcow2 image as `qemu-img amend` (7.2) does: compat
// (0.10/v2, 1.1/v3), refcount_bits, lazy_refcounts, data_file_raw (off only) and size, in
// QEMU's order, through the library's `basic_image::amend`. Options that only creation takes
// are refused with qemu-img's words; so are what the library cannot do yet (a downgrade of an
// image with internal snapshots). Nothing is printed on success but -p's progress (one step:
// the amend is one library call); errors exit with 1.
#pragma once

#include "common.hpp"
#include "convert.hpp" // progress_meter
#include "create.hpp"

#include <cctype>
#include <cstdint>
#include <string>
#include <vector>

namespace cli {

inline int amend_command(const std::vector<std::string>& args) {
    std::string format, value;
    std::vector<std::string> lists, files;
    bool options_done = false, quiet = false, show_progress = false;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if (take_value(args, k, "-f", value)) {
            format = value;
        } else if (take_value(args, k, "-o", value)) {
            if (!create_opts::valid_list(value)) return 1;
            lists.push_back(value);
        } else if (a == "-q") {
            quiet = true;
        } else if (a == "-p") {
            show_progress = true;
        } else if (a == "-U" || a == "--force") {
            // no locks are taken
        } else {
            return unknown_option("amend", a);
        }
    }
    if (lists.empty()) return fail("Must specify options (-o)"), 1;
    if (files.empty()) return fail("Expecting one image file name"), 1;
    if (!format.empty() && format != "qcow2") return fail("Unknown file format '" + format + "'"), 1;
    create_opts opts;
    for (const auto& l : lists)
        if (std::string err = opts.parse(l); !err.empty()) return fail(err), 1;
    // What only creation takes, in QEMU's words.
    for (const char* name : {"cluster_size", "preallocation", "extended_l2", "compression_type", "backing_file", "backing_fmt",
                             "data_file"})
        if (opts.has(name))
            return fail(std::string("Invalid parameter '") + name + "'\nThis option is only supported for image creation"), 1;

    const std::string& path = files.front();
    auto file = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_write);
    if (!file) return open_failed(path, file.error());
    if (probe_format(*file) != "qcow2") return fail("Could not open '" + path + "': Image is not in qcow2 format"), 1;
    auto img = qcow2::image::open(std::move(*file), qcow2::open_options{.writable = true},
                                  qcow2::posix_resolver(path, {.allow_absolute = true, .allow_outside = true}));
    if (!img) return open_failed(path, img.error());

    qcow2::amend_options a;
    if (const auto* c = opts.text("compat")) {
        if (*c == "0.10" || *c == "v2") a.version = 2;
        else if (*c == "1.1" || *c == "v3") a.version = 3;
        else return fail("Invalid compatibility level: '" + *c + "'"), 1;
    }
    if (opts.has("refcount_bits")) a.refcount_bits = static_cast<unsigned>(opts.number("refcount_bits", 16));
    if (opts.has("lazy_refcounts")) a.lazy_refcounts = opts.number("lazy_refcounts", 0) != 0;
    if (opts.has("data_file_raw")) a.data_file_raw = opts.number("data_file_raw", 0) != 0;
    if (opts.has("size")) a.size = opts.number("size", 0);
    progress_meter meter(show_progress && !quiet);
    if (auto r = img->amend(a); !r) {
        // qemu-img's sentences start with a capital, except those naming an option first.
        std::string m = r.error().message();
        if (!m.empty() && m.rfind("compat=", 0) != 0 && m.rfind("data-file-raw", 0) != 0)
            m[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(m[0])));
        return fail(m), 1;
    }
    if (auto r = img->close(); !r) return fail("error while closing '" + path + "': " + r.error().what()), 1;
    meter.finish();
    return 0;
}

} // namespace cli
