// SPDX-License-Identifier: MIT
// qcow2 commit [-f FMT] [-q] [-p] [-d] FILE
//
// Writes what a qcow2 image holds itself into its backing file, as `qemu-img commit` (7.2)
// does, then empties the image: every range the image provides (`map_range` of this layer:
// data and compressed clusters are copied, zero clusters become zeroes written in the
// backing file) goes into the backing file, which is opened here, for writing, through the
// rules the image's chain is opened with (relative to the image's directory; a qcow2 image
// with its own chain, or a raw file, as the header's backing format says, else probed). A
// backing file smaller than the image is grown to its size first, as QEMU's commit job
// does. The backing file is flushed; then the image is emptied with `qcow2::make_empty`
// (not with -d), so that it reads as its backing file and carries the all-zero bit, and
// "Image committed." is printed (not with -q). -p prints qemu-img's progress on stderr
// when it is a terminal. The messages and exit status (0, or 1 on error) are qemu-img's.
#pragma once

#include "common.hpp"
#include "convert.hpp"
#include "snapshot.hpp"
#include "source.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace cli {

/// A backing file opened for writing: a qcow2 image (with its own chain) or a raw file.
struct writable_backing {
    std::string path; ///< as opened (relative to the working directory)
    std::optional<qcow2::image> qcow2;
    std::optional<qcow2::io::posix_file> raw;

    /// The virtual size (a raw file's size in whole sectors, as QEMU sees it).
    qcow2::result<std::uint64_t> size() const {
        if (qcow2) return qcow2->size();
        auto n = qcow2::io::size_of(*raw);
        if (!n) return n.error();
        return (*n + sector_size - 1) / sector_size * sector_size;
    }
    /// Grows the disk to `n` bytes.
    qcow2::result<void> grow(std::uint64_t n) {
        if (qcow2) return qcow2->resize(n);
        if (auto ec = raw->resize(n)) return qcow2::error(ec, "growing the backing file");
        return {};
    }
    qcow2::result<void> write(std::uint64_t offset, std::span<const std::byte> data) {
        if (qcow2) return qcow2->write(offset, data);
        if (auto ec = raw->write_at(offset, data)) return qcow2::error(ec, "writing the backing file");
        return {};
    }
    qcow2::result<void> write_zeroes(std::uint64_t offset, std::uint64_t length) {
        if (qcow2) return qcow2->write_zeroes(offset, length, qcow2::zero_mode::unmap);
        if (auto ec = raw->write_zeroes(offset, length)) return qcow2::error(ec, "zeroing the backing file");
        return {};
    }
    /// Writes everything kept in caches and makes it durable.
    qcow2::result<void> close() {
        if (qcow2) return qcow2->close();
        if (auto ec = raw->flush()) return qcow2::error(ec, "flushing the backing file");
        return {};
    }
};

/**
 * Opens the backing file of `img` (the image at `path`) for writing, through the rules its
 * chain was opened with; prints qemu-img's message and returns nothing on failure.
 */
inline std::optional<writable_backing> open_backing_writable(const std::string& path, qcow2::image& img) {
    const std::string& name = img.header().backing_file;
    writable_backing b;
    b.path = path_combine(path, name);
    qcow2::posix_resolver resolve(path, {.allow_absolute = true, .allow_outside = true});
    auto file = resolve(qcow2::file_request{name, qcow2::file_role::backing, 0, true});
    if (!file) {
        open_error(b.path, file.error());
        return std::nullopt;
    }
    std::string format = img.header().backing_format().value_or("");
    const std::string probed = probe_format(*file);
    if (format.empty()) format = probed;
    if (format == "raw") {
        b.raw.emplace(std::move(*file));
        return b;
    }
    if (format != "qcow2") {
        fail("Could not open '" + b.path + "': Unknown driver '" + format + "'");
        return std::nullopt;
    }
    if (probed != "qcow2") {
        fail("Could not open '" + b.path + "': Image is not in qcow2 format");
        return std::nullopt;
    }
    auto opened = qcow2::image::open(std::move(*file), qcow2::open_options{.writable = true},
                                     qcow2::posix_resolver(b.path, {.allow_absolute = true, .allow_outside = true}));
    if (!opened) {
        open_error(b.path, opened.error());
        return std::nullopt;
    }
    b.qcow2.emplace(std::move(*opened));
    return b;
}

/**
 * Copies every range `top` provides itself into `base` (data and compressed runs read and
 * written, zero runs zeroed), calling `advance(done)` as it goes; the error message, empty
 * on success. Nothing is read from `top`'s backing chain.
 */
template <class Advance>
std::string copy_layer(qcow2::image& top, writable_backing& base, Advance&& advance) {
    constexpr std::uint64_t chunk = std::uint64_t{2} << 20;
    std::vector<std::byte> buf;
    const std::uint64_t size = top.size();
    for (std::uint64_t pos = 0; pos < size;) {
        auto m = top.map_range(pos, std::min(chunk, size - pos));
        if (!m) return "error while reading image metadata: " + m.error().what();
        switch (m->state) {
        case qcow2::cluster_state::data:
        case qcow2::cluster_state::compressed: {
            buf.resize(static_cast<std::size_t>(m->length));
            if (auto r = top.read(pos, buf); !r) return "error while reading at byte " + std::to_string(pos) + ": " + r.error().what();
            if (auto r = base.write(pos, buf); !r)
                return "error while writing at byte " + std::to_string(pos) + ": " + r.error().what();
            break;
        }
        case qcow2::cluster_state::zero:
            if (auto r = base.write_zeroes(pos, m->length); !r)
                return "error while writing at byte " + std::to_string(pos) + ": " + r.error().what();
            break;
        case qcow2::cluster_state::unallocated:
        case qcow2::cluster_state::invalid: break;
        }
        pos += m->length;
        advance(pos);
    }
    return {};
}

inline int commit_command(const std::vector<std::string>& args) {
    std::string format, value;
    bool quiet = false, show_progress = false, keep = false, options_done = false;
    std::vector<std::string> files;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if (take_value(args, k, "-f", value)) {
            if (value.empty()) return fail("commit: option -f requires an argument"), 1;
            format = value;
        } else if (a == "-q") {
            quiet = true;
        } else if (a == "-p") {
            show_progress = true;
        } else if (a == "-d") {
            keep = true;
        } else if (a.rfind("-b", 0) == 0 || a.rfind("-r", 0) == 0 || a.rfind("-t", 0) == 0) {
            return fail("commit: " + a.substr(0, 2) + " is not built"), 1;
        } else {
            return unknown_option("commit", a);
        }
    }
    if (quiet) show_progress = false;
    if (files.size() != 1) return fail("Expecting one image file name"), 1;
    const std::string& path = files[0];

    auto opened = open_image(path, format, true);
    if (!opened) return 1;
    if (!opened->qcow2 || !opened->qcow2->has_backing()) return fail("Image does not have a backing file"), 1;
    qcow2::image& top = *opened->qcow2;
    auto base = open_backing_writable(path, top);
    if (!base) return 1;

    progress_meter meter(show_progress);
    auto base_size = base->size();
    if (!base_size) return fail(base_size.error().what()), 1;
    if (top.size() > *base_size)
        if (auto r = base->grow(top.size()); !r) return fail("Could not resize the backing file: " + r.error().what()), 1;
    if (std::string err = copy_layer(top, *base, [&](std::uint64_t done) { meter.update(done, top.size()); }); !err.empty())
        return fail(err), 1;
    if (auto r = base->close(); !r) return fail(r.error().what()), 1;
    base.reset();
    if (!keep) {
        // The top now reads as its backing file: empty it (the all-zero bit says so).
        auto z = qcow2::make_empty(top);
        if (!z) return fail("Could not empty " + path + ": " + z.error().what()), 1;
        qcow2::image emptied = std::move(*z).release();
        if (auto r = emptied.close(); !r) return fail(r.error().what()), 1;
    } else if (auto r = top.close(); !r) {
        return fail(r.error().what()), 1;
    }
    meter.finish();
    if (!quiet) std::printf("Image committed.\n");
    return 0;
}

} // namespace cli
