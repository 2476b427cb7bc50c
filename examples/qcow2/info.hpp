// SPDX-License-Identifier: MIT
// qcow2 info [--output=human|json] [--backing-chain] [-f FMT] FILE
//
// The keys and values of `qemu-img info` (7.2), plus "all-zero" in the qcow2
// format-specific data: whether the image carries the trusted all-zero autoclear bit.
#pragma once

#include "common.hpp"
#include "json.hpp"

#include <ctime>
#include <optional>
#include <string>
#include <vector>

namespace cli {

/// One image of a chain, described.
struct described {
    std::string filename;
    std::string format; // "qcow2" or "raw"
    std::uint64_t virtual_size = 0;
    std::optional<std::uint64_t> actual_size;
    std::optional<qcow2::image_info> qcow2; // set for qcow2 images
    std::optional<std::string> full_backing;
};

inline json::value snapshot_json(const qcow2::snapshot_entry& s) {
    json::object o;
    if (auto ic = s.icount()) o.emplace_back("icount", *ic);
    o.emplace_back("vm-clock-nsec", s.vm_clock_nsec % 1000000000u);
    o.emplace_back("name", s.name);
    o.emplace_back("date-sec", std::uint64_t{s.date_sec});
    o.emplace_back("date-nsec", std::uint64_t{s.date_nsec});
    o.emplace_back("vm-clock-sec", s.vm_clock_nsec / 1000000000u);
    o.emplace_back("id", s.id);
    o.emplace_back("vm-state-size", s.vm_state_size());
    return o;
}

inline json::value info_json(const described& d) {
    json::object o;
    if (d.qcow2) {
        const auto& i = *d.qcow2;
        if (i.backing_format) o.emplace_back("backing-filename-format", *i.backing_format);
        if (!i.snapshots.empty()) {
            json::array snaps;
            for (const auto& s : i.snapshots) snaps.push_back(snapshot_json(s));
            o.emplace_back("snapshots", std::move(snaps));
        }
    }
    o.emplace_back("virtual-size", d.virtual_size);
    o.emplace_back("filename", d.filename);
    if (d.qcow2) o.emplace_back("cluster-size", d.qcow2->cluster_size);
    o.emplace_back("format", d.format);
    if (d.actual_size) o.emplace_back("actual-size", *d.actual_size);
    if (d.qcow2) {
        const auto& i = *d.qcow2;
        if (i.encrypted) o.emplace_back("encrypted", true);
        json::object data;
        data.emplace_back("compat", i.version == 2 ? "0.10" : "1.1");
        data.emplace_back("compression-type", i.compression_type);
        if (i.version >= 3) data.emplace_back("lazy-refcounts", i.lazy_refcounts);
        if (!i.bitmaps.empty()) {
            json::array bms;
            for (const auto& b : i.bitmaps) {
                json::array flags;
                if (b.in_use) flags.emplace_back("in-use");
                if (b.auto_) flags.emplace_back("auto");
                bms.push_back(json::object{{"flags", std::move(flags)}, {"name", b.name}, {"granularity", b.granularity}});
            }
            data.emplace_back("bitmaps", std::move(bms));
        }
        data.emplace_back("refcount-bits", i.refcount_bits);
        if (i.data_file) data.emplace_back("data-file", *i.data_file);
        if (i.has_data_file) data.emplace_back("data-file-raw", i.data_file_raw);
        if (i.version >= 3) {
            data.emplace_back("corrupt", i.corrupt);
            data.emplace_back("extended-l2", i.extended_l2);
        }
        data.emplace_back("all-zero", i.all_zero);
        o.emplace_back("format-specific", json::object{{"type", "qcow2"}, {"data", std::move(data)}});
        if (d.full_backing) o.emplace_back("full-backing-filename", *d.full_backing);
        if (i.backing_filename) o.emplace_back("backing-filename", *i.backing_filename);
    }
    o.emplace_back("dirty-flag", d.qcow2 ? d.qcow2->dirty_flag : false);
    return o;
}

inline void print_human(const described& d) {
    std::printf("image: %s\nfile format: %s\n", d.filename.c_str(), d.format.c_str());
    std::printf("virtual size: %s (%llu bytes)\n", human_size(d.virtual_size).c_str(),
                static_cast<unsigned long long>(d.virtual_size));
    std::printf("disk size: %s\n", d.actual_size ? human_size(*d.actual_size).c_str() : "unavailable");
    if (!d.qcow2) return;
    const auto& i = *d.qcow2;
    if (i.encrypted) std::printf("encrypted: yes\n");
    std::printf("cluster_size: %llu\n", static_cast<unsigned long long>(i.cluster_size));
    if (i.backing_filename) {
        std::printf("backing file: %s", i.backing_filename->c_str());
        if (d.full_backing && *d.full_backing != *i.backing_filename)
            std::printf(" (actual path: %s)", d.full_backing->c_str());
        std::printf("\n");
    }
    if (i.backing_format) std::printf("backing file format: %s\n", i.backing_format->c_str());
    if (i.dirty_flag) std::printf("cleanly shut down: no\n");
    if (!i.snapshots.empty()) {
        std::printf("Snapshot list:\n%-10s%-17s%8s%20s%13s%11s\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
        for (const auto& s : i.snapshots) {
            char date[32] = "";
            std::time_t t = static_cast<std::time_t>(s.date_sec);
            std::tm tm{};
            if (localtime_r(&t, &tm)) std::strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
            const std::uint64_t ms = s.vm_clock_nsec / 1000000u;
            char clock[32];
            std::snprintf(clock, sizeof clock, "%02llu:%02llu:%02llu.%03llu",
                          static_cast<unsigned long long>(ms / 3600000u), static_cast<unsigned long long>(ms / 60000u % 60u),
                          static_cast<unsigned long long>(ms / 1000u % 60u), static_cast<unsigned long long>(ms % 1000u));
            const std::string icount = s.icount() ? std::to_string(*s.icount()) : "";
            std::printf("%-9s %-16s %8s%20s%13s%11s\n", s.id.c_str(), s.name.c_str(), human_size(s.vm_state_size()).c_str(),
                        date, clock, icount.c_str());
        }
    }
    std::printf("Format specific information:\n");
    std::printf("    compat: %s\n    compression type: %s\n", i.version == 2 ? "0.10" : "1.1", i.compression_type.c_str());
    if (i.version >= 3) std::printf("    lazy refcounts: %s\n", i.lazy_refcounts ? "true" : "false");
    if (!i.bitmaps.empty()) {
        std::printf("    bitmaps:\n");
        for (std::size_t k = 0; k < i.bitmaps.size(); ++k) {
            const auto& b = i.bitmaps[k];
            std::printf("        [%zu]:\n            flags:\n", k);
            int n = 0;
            if (b.in_use) std::printf("                [%d]: in-use\n", n++);
            if (b.auto_) std::printf("                [%d]: auto\n", n++);
            std::printf("            name: %s\n            granularity: %llu\n", b.name.c_str(),
                        static_cast<unsigned long long>(b.granularity));
        }
    }
    std::printf("    refcount bits: %u\n", i.refcount_bits);
    if (i.data_file) std::printf("    data file: %s\n", i.data_file->c_str());
    if (i.has_data_file) std::printf("    data file raw: %s\n", i.data_file_raw ? "true" : "false");
    if (i.version >= 3)
        std::printf("    corrupt: %s\n    extended l2: %s\n", i.corrupt ? "true" : "false", i.extended_l2 ? "true" : "false");
    std::printf("    all zero: %s\n", i.all_zero ? "true" : "false");
}

/// Opens `path` (qcow2 or raw) and describes it; the error is already printed on failure.
inline std::optional<described> describe_file(const std::string& path, std::string format) {
    auto file = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_only);
    if (!file) {
        open_failed(path, file.error());
        return std::nullopt;
    }
    if (format.empty()) format = probe_format(*file);
    described d;
    d.filename = path;
    d.format = format;
    std::uint64_t n = 0;
    if (!file->allocated_size(n)) d.actual_size = n;
    if (format == "raw") {
        if (auto ec = file->size(n)) {
            open_failed(path, qcow2::error(ec, "querying the file size"));
            return std::nullopt;
        }
        d.virtual_size = n;
        return d;
    }
    if (format != "qcow2") {
        fail("Unknown file format '" + format + "'");
        return std::nullopt;
    }
    // info reads metadata only: backing and data files are described, not opened, here.
    qcow2::open_options opts;
    opts.metadata_only = true;
    auto img = qcow2::image::open(std::move(*file), opts);
    if (!img) {
        open_failed(path, img.error());
        return std::nullopt;
    }
    d.qcow2 = qcow2::describe(*img);
    d.virtual_size = d.qcow2->virtual_size;
    if (d.qcow2->backing_filename) d.full_backing = path_combine(path, *d.qcow2->backing_filename);
    return d;
}

inline int info_command(const std::vector<std::string>& args) {
    output_format out = output_format::human;
    bool chain = false;
    std::string format, path;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (a.rfind("--output=", 0) == 0) {
            if (!parse_output(a.substr(9), out)) return fail("--output must be human or json"), 1;
        } else if (a == "--output" && k + 1 < args.size()) {
            if (!parse_output(args[++k], out)) return fail("--output must be human or json"), 1;
        } else if (a == "--backing-chain") {
            chain = true;
        } else if (a == "-f" && k + 1 < args.size()) {
            format = args[++k];
        } else if (a == "-U" || a == "--force-share") {
            // Accepted for qemu-img compatibility: this tool takes no locks.
        } else if (!a.empty() && a[0] == '-') {
            return unknown_option("info", a);
        } else if (path.empty()) {
            path = a;
        } else {
            return fail("info: too many arguments"), 1;
        }
    }
    if (path.empty()) return fail("Expecting one image file name"), 1;

    std::vector<described> images;
    std::string next = path;
    constexpr std::size_t max_depth = 1000;
    while (!next.empty()) {
        for (const auto& seen : images)
            if (seen.filename == next) return fail("Backing file '" + next + "' creates an infinite loop"), 1;
        if (images.size() == max_depth) return fail("Backing chain is deeper than 1000 images"), 1;
        auto d = describe_file(next, format);
        if (!d) return 1;
        images.push_back(std::move(*d));
        const auto& last = images.back();
        if (!chain || !last.full_backing) break;
        next = *last.full_backing;
        format = last.qcow2->backing_format.value_or("");
    }
    if (out == output_format::json) {
        if (chain) {
            json::array a;
            for (const auto& d : images) a.push_back(info_json(d));
            std::printf("%s\n", json::dump(a).c_str());
        } else {
            std::printf("%s\n", json::dump(info_json(images.front())).c_str());
        }
    } else {
        for (std::size_t k = 0; k < images.size(); ++k) {
            if (k) std::printf("\n");
            print_human(images[k]);
        }
    }
    return 0;
}

} // namespace cli
