// SPDX-License-Identifier: MIT
// qcow2 resize [-f FMT] [--shrink] [-q] FILE [+|-]SIZE
//
// Changes the virtual size of a qcow2 image (or the size of a raw file) as `qemu-img
// resize` (7.2) does: SIZE is the last argument (so that "-1G" is not taken for an option),
// "+" and "-" make it relative to the current size, shrinking needs --shrink, and success
// prints "Image resized." unless -q. The messages and the exit status (0 or 1) are qemu-img's.
#pragma once

#include "common.hpp"
#include "source.hpp"

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace cli {

inline int resize_command(const std::vector<std::string>& args) {
    if (args.size() < 2) return fail("Not enough arguments"), 1;
    std::string size_text = args.back();
    const std::vector<std::string> rest(args.begin(), args.end() - 1);
    std::string format, value;
    bool shrink = false, quiet = false, options_done = false;
    std::vector<std::string> files;
    for (std::size_t k = 0; k < rest.size(); ++k) {
        const std::string& a = rest[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if (take_value(rest, k, "-f", value)) {
            if (value.empty()) return fail("resize: option -f requires an argument"), 1;
            format = value;
        } else if (a == "--shrink") {
            shrink = true;
        } else if (a == "-q") {
            quiet = true;
        } else {
            return unknown_option("resize", a);
        }
    }
    if (files.size() != 1) return fail("Expecting image file name and size"), 1;
    const std::string& path = files[0];

    int relative = 0;
    if (!size_text.empty() && (size_text[0] == '+' || size_text[0] == '-')) {
        relative = size_text[0] == '+' ? 1 : -1;
        size_text.erase(0, 1);
    }
    const auto n = parse_qemu_size(size_text);
    if (n.status == size_status::out_of_range)
        return fail("Value '" + size_text + "' is out of range for parameter 'size'"), 1;
    if (n.status != size_status::ok)
        return fail("Parameter 'size' expects a non-negative number below 2^64\n"
                    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                    "and exabytes, respectively."),
               1;

    auto file = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_write);
    if (!file) return open_failed(path, file.error());
    if (format.empty()) format = probe_format(*file);
    if (format != "qcow2" && format != "raw") return fail("Unknown file format '" + format + "'"), 1;
    std::optional<qcow2::image> img;
    std::uint64_t current = 0;
    if (format == "qcow2") {
        auto opened = qcow2::image::open(std::move(*file), qcow2::open_options{.writable = true},
                                         qcow2::posix_resolver(path, {.allow_absolute = true, .allow_outside = true}));
        if (!opened) return open_failed(path, opened.error());
        img.emplace(std::move(*opened));
        current = img->size();
    } else {
        auto bytes = qcow2::io::size_of(*file);
        if (!bytes) return fail("Failed to inquire current image size: " + bytes.error().what()), 1;
        current = (*bytes + sector_size - 1) / sector_size * sector_size; // QEMU sees whole sectors
    }

    // qemu-img computes in signed 64 bits: a size that wraps below zero is "not positive".
    const auto total =
        static_cast<std::int64_t>(relative ? current + static_cast<std::uint64_t>(relative) * n.value : n.value);
    if (total <= 0) return fail("New image size must be positive"), 1;
    const auto new_size = static_cast<std::uint64_t>(total);
    if (current > new_size && !shrink) {
        fail("Use the --shrink option to perform a shrink operation.");
        fail("warning: Shrinking an image will delete all data beyond the shrunken image's end. Before performing such "
             "an operation, make sure there is no important data there.");
        return 1;
    }

    if (img) {
        if (new_size % sector_size) return fail("The new size must be a multiple of 512"), 1;
        if (auto r = img->resize(new_size); !r) {
            // QEMU refuses this case too, and its words are shorter than the library's.
            if (r.error().is(qcow2::errc::not_supported) && img->header().version == 2 && !img->snapshots().empty())
                return fail("Can't resize a v2 image which has snapshots"), 1;
            return fail(r.error().what()), 1;
        }
        if (auto r = img->close(); !r) return fail(r.error().what()), 1;
    } else if (auto ec = file->resize(new_size)) {
        return fail("Failed to resize the file: " + ec.message()), 1;
    }
    if (!quiet) std::printf("Image resized.\n");
    return 0;
}

} // namespace cli
