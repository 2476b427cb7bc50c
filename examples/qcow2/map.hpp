// SPDX-License-Identifier: MIT
// qcow2 map [--output=human|json] [-f FMT] [--start-offset=OFFSET] [--max-length=LEN] FILE
//
// Where each guest range comes from, through the backing chain, in the words of
// `qemu-img map` (7.2): JSON prints one extent per line with the keys start, length,
// depth, present, zero, data and (when there is one) offset; the human table lists only
// the ranges read from a file (not the holes under preallocated clusters), with the host
// offset and the file that holds them.
#pragma once

#include "common.hpp"
#include "source.hpp"

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

namespace cli {

namespace map_detail {

/// A size as qemu-img's cvtnum reads it: digits, then an optional k, M, G, T, P or E suffix.
inline std::optional<std::uint64_t> parse_size(const std::string& s) {
    if (s.empty() || s[0] < '0' || s[0] > '9') return std::nullopt;
    std::uint64_t v = 0;
    std::size_t i = 0;
    for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
        const auto d = static_cast<std::uint64_t>(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10) return std::nullopt;
        v = v * 10 + d;
    }
    if (i == s.size()) return v;
    static const std::string suffixes = "bkmgtpe";
    const auto p = suffixes.find(static_cast<char>(s[i] | 0x20));
    if (p == std::string::npos || i + 1 != s.size()) return std::nullopt;
    const unsigned shift = static_cast<unsigned>(p) * 10;
    if (shift && v > (UINT64_MAX >> shift)) return std::nullopt;
    return v << shift;
}

/// The file holding the data of each layer of the chain (an external data file when the layer has one).
inline std::vector<std::string> layer_files(qcow2::image& top) {
    std::vector<std::string> files;
    for (qcow2::image* layer = &top; layer;) {
        files.push_back(layer->data_file() ? layer->data_file()->path() : layer->backend().path());
        if (const auto* raw = layer->backing_raw()) files.push_back(raw->path());
        layer = layer->backing_image();
    }
    return files;
}

/// Prints extents as qemu-img map does, one behind so that it knows when the list ends.
class printer {
public:
    printer(output_format f, std::vector<std::string> files) : format_(f), files_(std::move(files)) {
        if (format_ == output_format::human) std::printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
        else std::putchar('[');
    }

    /// False (the error printed) when the human format cannot show `e`.
    bool add(const qcow2::map_extent& e) {
        if (format_ == output_format::json) {
            if (count_++) std::puts(",");
            std::printf("{ \"start\": %" PRIu64 ", \"length\": %" PRIu64 ", \"depth\": %u, \"present\": %s, \"zero\": %s, "
                        "\"data\": %s",
                        e.start, e.length, e.depth, e.present ? "true" : "false", e.zero ? "true" : "false",
                        e.data ? "true" : "false");
            if (e.offset) std::printf(", \"offset\": %" PRIu64, *e.offset);
            std::putchar('}');
            return true;
        }
        ++count_;
        if (e.data && !e.offset) {
            std::fflush(stdout);
            fail("File contains external, encrypted or compressed clusters.");
            return false;
        }
        if (e.data && !e.zero) { // holes under preallocated data are not listed either
            const std::string& file = e.depth < files_.size() ? files_[e.depth] : files_.back();
            std::printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e.start, e.length, *e.offset, file.c_str());
        }
        return true;
    }

    /// Ends the list; `start` is where an empty list starts (qemu-img then prints one empty extent).
    void finish(std::uint64_t start) {
        if (count_ == 0) {
            qcow2::map_extent empty;
            empty.start = start;
            (void)add(empty);
        }
        if (format_ == output_format::json) std::puts("]");
    }

private:
    output_format format_;
    std::vector<std::string> files_;
    std::size_t count_ = 0;
};

} // namespace map_detail

inline int map_command(const std::vector<std::string>& args) {
    output_format out = output_format::human;
    std::string format, path, value;
    std::uint64_t start = 0;
    std::optional<std::uint64_t> max_length;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (take_value(args, k, "--output", value)) {
            if (!parse_output(value, out)) return fail("--output must be human or json"), 1;
        } else if (take_value(args, k, "-f", value)) {
            if (value.empty()) return fail("map: option -f requires an argument"), 1;
            format = value;
        } else if (take_value(args, k, "--start-offset", value) || take_value(args, k, "-s", value)) {
            const auto v = map_detail::parse_size(value);
            if (!v) return fail("Invalid start offset specified! You may use k, M, G, T, P or E suffixes for "), 1;
            start = *v;
        } else if (take_value(args, k, "--max-length", value) || take_value(args, k, "-l", value)) {
            const auto v = map_detail::parse_size(value);
            if (!v) return fail("Invalid length specified! You may use k, M, G, T, P or E suffixes for "), 1;
            max_length = *v;
        } else if (a == "-U" || a == "--force-share") {
            // This tool takes no locks.
        } else if (!a.empty() && a[0] == '-') {
            return unknown_option("map", a);
        } else if (path.empty()) {
            path = a;
        } else {
            return fail("map: too many arguments"), 1;
        }
    }
    if (path.empty()) return fail("Expecting one image file name"), 1;

    auto d = disk::open(path, format);
    if (!d) return 1;
    const std::uint64_t size = d->size();
    const std::uint64_t end = start >= size ? start : max_length ? start + std::min(*max_length, size - start) : size;

    if (qcow2::image* img = d->image()) {
        map_detail::printer p(out, map_detail::layer_files(*img));
        bool ok = true;
        if (start < end) {
            auto r = qcow2::map_extents(*img, start, end - start, [&](const qcow2::map_extent& e) {
                if (ok) ok = p.add(e);
            });
            if (!ok) return 1;
            if (!r) {
                std::fflush(stdout);
                return fail("Could not read file metadata: " + r.error().what()), 1;
            }
        }
        p.finish(start);
        return 0;
    }

    // A raw file: data and holes, each mapped to the same offset in the file.
    map_detail::printer p(out, {path});
    std::optional<qcow2::map_extent> pending;
    for (std::uint64_t pos = start; pos < end;) {
        auto s = d->status(pos, end - pos);
        if (!s) {
            std::fflush(stdout);
            return fail("Could not read file metadata: " + s.error().what()), 1;
        }
        qcow2::map_extent e;
        e.start = pos;
        e.length = s->length;
        e.present = true;
        e.zero = s->zero();
        e.data = !s->zero();
        e.offset = pos;
        pos += s->length;
        if (pending && pending->mergeable(e)) {
            pending->length += e.length;
            continue;
        }
        if (pending && !p.add(*pending)) return 1;
        pending = e;
    }
    if (pending && !p.add(*pending)) return 1;
    p.finish(start);
    return 0;
}

} // namespace cli
