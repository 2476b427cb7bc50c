// SPDX-License-Identifier: MIT
// qcow2 bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
//              [-b SOURCE_FILE [-F SOURCE_FMT]] [-g GRANULARITY] [-f FMT] FILE BITMAP
//
// Changes the persistent dirty bitmaps of a qcow2 image as `qemu-img bitmap` (7.2) does: the
// actions are applied to BITMAP in the order given (--add makes an enabled bitmap of
// GRANULARITY, by default the cluster size within 4 KiB to 64 KiB, as in qemu-img; --merge SOURCE sets in BITMAP every
// granule the bitmap SOURCE marks, SOURCE taken from SOURCE_FILE when -b names one), and the first that fails stops the
// command with qemu-img's "Operation ACTION on bitmap BITMAP failed: ..." (what came before it stays done). Exit status
// 0, or 1 on error.
#pragma once

#include "common.hpp"
#include "snapshot.hpp"
#include "source.hpp"

#include <optional>
#include <string>
#include <vector>

namespace cli {

inline int bitmap_command(const std::vector<std::string>& args) {
    enum class kind { add, remove, clear, enable, disable, merge };
    struct action {
        kind k;
        std::string source; // --merge
    };
    std::vector<action> actions;
    std::vector<std::string> files;
    std::string format, source_file, source_format, granularity_text, value;
    bool have_granularity = false, have_source_file = false, have_source_format = false, options_done = false;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if (a == "--add") {
            actions.push_back({kind::add, {}});
        } else if (a == "--remove") {
            actions.push_back({kind::remove, {}});
        } else if (a == "--clear") {
            actions.push_back({kind::clear, {}});
        } else if (a == "--enable") {
            actions.push_back({kind::enable, {}});
        } else if (a == "--disable") {
            actions.push_back({kind::disable, {}});
        } else if (a == "--merge" || a.rfind("--merge=", 0) == 0) {
            if (a == "--merge" && k + 1 >= args.size()) return fail("option '--merge' requires an argument"), 1;
            (void)take_value(args, k, "--merge", value);
            actions.push_back({kind::merge, value});
        } else if (a.rfind("-g", 0) == 0 || a == "--granularity" || a.rfind("--granularity=", 0) == 0) {
            const char* opt = a.rfind("--", 0) == 0 ? "--granularity" : "-g";
            if ((a == "-g" || a == "--granularity") && k + 1 >= args.size())
                return fail(std::string("option requires an argument -- '") + (opt[1] == 'g' ? "g" : "granularity") +
                            "'"),
                       1;
            (void)take_value(args, k, opt, granularity_text);
            have_granularity = true;
        } else if (a.rfind("-b", 0) == 0 || a == "--source-file" || a.rfind("--source-file=", 0) == 0) {
            const char* opt = a.rfind("--", 0) == 0 ? "--source-file" : "-b";
            if ((a == "-b" || a == "--source-file") && k + 1 >= args.size())
                return fail("option requires an argument -- 'b'"), 1;
            (void)take_value(args, k, opt, source_file);
            have_source_file = true;
        } else if (a.rfind("-F", 0) == 0 || a == "--source-format" || a.rfind("--source-format=", 0) == 0) {
            const char* opt = a.rfind("--", 0) == 0 ? "--source-format" : "-F";
            if ((a == "-F" || a == "--source-format") && k + 1 >= args.size())
                return fail("option requires an argument -- 'F'"), 1;
            (void)take_value(args, k, opt, source_format);
            have_source_format = true;
        } else if (a.rfind("-f", 0) == 0) {
            if (a == "-f" && k + 1 >= args.size()) return fail("option requires an argument -- 'f'"), 1;
            (void)take_value(args, k, "-f", format);
        } else {
            return unknown_option("bitmap", a);
        }
    }
    // qemu-img's checks, in its order.
    std::uint64_t granularity = 0;
    if (have_granularity) {
        const qemu_size g = parse_qemu_size(granularity_text);
        if (g.status != size_status::ok)
            return fail("Invalid granularity specified. You may use k, M, G, T, P or E suffixes for\n"
                        "qcow2: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."),
                   1;
        granularity = g.value;
    }
    if (actions.empty())
        return fail("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge"), 1;
    bool add = false, merge = false;
    for (const auto& act : actions) {
        add |= act.k == kind::add;
        merge |= act.k == kind::merge;
    }
    if (have_granularity && !add) return fail("granularity only supported with --add"), 1;
    if (have_source_format && !have_source_file) return fail("-F only supported with -b"), 1;
    if (have_source_file && !merge) return fail("Merge bitmap source file only supported with --merge"), 1;
    if (files.size() != 2) return fail("Expecting filename and bitmap name"), 1;
    const std::string& path = files[0];
    const std::string& name = files[1];

    auto img = open_image(path, format, true);
    if (!img) return 1;
    const auto failed = [&](const char* op, std::string why) {
        // qemu-img names the image (its block node) where a bitmap cannot be made persistent.
        if (const auto p = why.find("' persistent: ");
            why.rfind("Can't make bitmap '", 0) == 0 && p != std::string::npos)
            why.replace(p, 14, "' persistent in '" + path + "': ");
        fail(std::string("Operation ") + op + " on bitmap " + name + " failed: " + why);
        return 1;
    };
    if (!img->qcow2) {
        // A raw file keeps no persistent bitmaps.
        if (actions[0].k == kind::add)
            return failed("add", "Can't store persistent bitmaps to '" + path + "': Operation not supported");
        static const char* const names[] = {"add", "remove", "clear", "enable", "disable", "merge"};
        return failed(names[static_cast<int>(actions[0].k)], "Dirty bitmap '" + name + "' not found");
    }
    qcow2::image& image = *img->qcow2;

    // The source image of --merge -b, opened read-only as qemu-img opens it.
    std::optional<opened_image> source;
    for (const auto& act : actions) {
        qcow2::result<void> r;
        const char* op = "";
        switch (act.k) {
        case kind::add:
            op = "add";
            r = image.add_bitmap(name, granularity, true); // 0: the default for the image, as in qemu-img
            break;
        case kind::remove:
            op = "remove";
            r = image.remove_bitmap(name);
            break;
        case kind::clear:
            op = "clear";
            r = image.clear_bitmap(name);
            break;
        case kind::enable:
            op = "enable";
            r = image.enable_bitmap(name, true);
            break;
        case kind::disable:
            op = "disable";
            r = image.enable_bitmap(name, false);
            break;
        case kind::merge: {
            op = "merge";
            // qemu-img looks the destination up first.
            bool known = false;
            for (const auto& b : image.bitmaps()) known |= b.name == name;
            if (!known) return failed(op, "Dirty bitmap '" + name + "' not found");
            qcow2::result<qcow2::bitmap_bits> bits = qcow2::error{qcow2::errc::invalid_argument, ""};
            if (have_source_file) {
                if (!source) {
                    source = open_image(source_file, source_format, false, true);
                    if (!source) return 1;
                }
                if (!source->qcow2) return failed(op, "Dirty bitmap '" + act.source + "' not found");
                bits = source->qcow2->read_bitmap(act.source);
            } else {
                bits = image.read_bitmap(act.source);
            }
            if (!bits) return failed(op, bits.error().message());
            r = image.merge_bitmap(name, *bits);
            break;
        }
        }
        if (!r) return failed(op, r.error().message());
    }
    if (auto r = image.close(); !r) return fail(r.error().message()), 1;
    return 0;
}

} // namespace cli
