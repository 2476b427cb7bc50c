// SPDX-License-Identifier: MIT
// qcow2 check [--output=human|json] [-f FMT] [-r leaks|all] FILE
//
// The report, text and exit codes of `qemu-img check` (7.2): 0 clean, 1 check errors or
// failure, 2 corruptions, 3 leaks only, 63 a format without checks (raw). Problems go to
// stderr in QEMU's words. With -r leaks|all the image is opened writable and repaired as
// qemu-img does: when anything was fixed, "The following inconsistencies were found and
// repaired" is printed and the report is that of a second check, plus the fixed counts.
#pragma once

#include "common.hpp"
#include "json.hpp"

#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace cli {

inline json::value check_json(const std::string& filename, const qcow2::check_report& r) {
    // The keys and order qemu-img prints (its QDict's order); optional keys only when non-zero.
    json::object o;
    const auto opt = [&o](const char* key, std::uint64_t v) {
        if (v) o.emplace_back(key, v);
    };
    opt("image-end-offset", r.image_end_offset);
    opt("compressed-clusters", r.compressed_clusters);
    opt("total-clusters", r.total_clusters);
    opt("corruptions", r.corruptions);
    opt("leaks", r.leaks);
    o.emplace_back("check-errors", r.check_errors);
    opt("allocated-clusters", r.allocated_clusters);
    o.emplace_back("filename", filename);
    o.emplace_back("format", "qcow2");
    opt("fragmented-clusters", r.fragmented_clusters);
    opt("corruptions-fixed", r.corruptions_fixed);
    opt("leaks-fixed", r.leaks_fixed);
    return o;
}

inline void print_check_human(const qcow2::check_report& r) {
    if (!(r.corruptions || r.leaks || r.check_errors)) {
        std::printf("No errors were found on the image.\n");
    } else {
        if (r.corruptions)
            std::printf("\n%llu errors were found on the image.\n"
                        "Data may be corrupted, or further writes to the image may corrupt it.\n",
                        static_cast<unsigned long long>(r.corruptions));
        if (r.leaks)
            std::printf("\n%llu leaked clusters were found on the image.\n"
                        "This means waste of disk space, but no harm to data.\n",
                        static_cast<unsigned long long>(r.leaks));
        if (r.check_errors)
            std::printf("\n%llu internal errors have occurred during the check.\n",
                        static_cast<unsigned long long>(r.check_errors));
    }
    if (r.total_clusters && r.allocated_clusters) {
        const auto a = static_cast<double>(r.allocated_clusters);
        std::printf("%llu/%llu = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n",
                    static_cast<unsigned long long>(r.allocated_clusters), static_cast<unsigned long long>(r.total_clusters),
                    a * 100.0 / static_cast<double>(r.total_clusters), static_cast<double>(r.fragmented_clusters) * 100.0 / a,
                    static_cast<double>(r.compressed_clusters) * 100.0 / a);
    }
    if (r.image_end_offset) std::printf("Image end offset: %llu\n", static_cast<unsigned long long>(r.image_end_offset));
}

inline int check_command(const std::vector<std::string>& args) {
    output_format out = output_format::human;
    bool quiet = false;
    std::string format, path, repair;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (a.rfind("--output=", 0) == 0) {
            if (!parse_output(a.substr(9), out)) return fail("--output must be human or json"), 1;
        } else if (a == "--output" && k + 1 < args.size()) {
            if (!parse_output(args[++k], out)) return fail("--output must be human or json"), 1;
        } else if (a == "-f" && k + 1 < args.size()) {
            format = args[++k];
        } else if (a == "-r" && k + 1 < args.size()) {
            repair = args[++k];
        } else if (a.rfind("-r", 0) == 0 && a.size() > 2) {
            repair = a.substr(2);
        } else if (a == "-q" || a == "--quiet") {
            quiet = true; // like qemu-img: no report on stdout, the exit code still tells
        } else if (a == "-U" || a == "--force-share") {
            // Accepted for qemu-img compatibility: this tool takes no locks.
        } else if (!a.empty() && a[0] == '-') {
            return unknown_option("check", a);
        } else if (path.empty()) {
            path = a;
        } else {
            return fail("check: too many arguments"), 1;
        }
    }
    qcow2::check_options copts;
    if (!repair.empty()) {
        if (repair != "leaks" && repair != "all") return fail("Unknown option value for -r (expecting 'leaks' or 'all'): " + repair), 1;
        copts.repair = repair == "all" ? qcow2::check_repair::all : qcow2::check_repair::leaks;
    }
    if (path.empty()) return fail("Expecting one image file name"), 1;

    const bool writable = copts.repair != qcow2::check_repair::none;
    auto file = qcow2::io::posix_file::open(path, writable ? qcow2::io::open_mode::read_write : qcow2::io::open_mode::read_only);
    if (!file) return open_failed(path, file.error());
    if (format.empty()) format = probe_format(*file);
    if (format == "raw") return fail("This image format does not support checks"), 63;
    if (format != "qcow2") return fail("Unknown file format '" + format + "'"), 1;
    // The check reads this file's metadata only: the backing and data files are not needed.
    qcow2::open_options opts;
    opts.metadata_only = true;
    opts.writable = writable;
    opts.repair = writable;
    auto img = qcow2::image::open(std::move(*file), opts);
    if (!img) return open_failed(path, img.error());

    copts.on_problem = [](std::string_view text) {
        std::fprintf(stderr, "%.*s\n", static_cast<int>(text.size()), text.data());
    };
    auto report = qcow2::check(*img, copts);
    if (!report) return fail("Check failed: " + report.error().what()), 1;
    if (quiet) {
        if (report->check_errors) fail("Check failed");
        return report->exit_code();
    }
    if (out == output_format::human && (report->corruptions_fixed || report->leaks_fixed))
        std::printf("The following inconsistencies were found and repaired:\n\n"
                    "    %llu leaked clusters\n"
                    "    %llu corruptions\n\n"
                    "Double checking the fixed image now...\n",
                    static_cast<unsigned long long>(report->leaks_fixed), static_cast<unsigned long long>(report->corruptions_fixed));
    if (out == output_format::json) std::printf("%s\n", json::dump(check_json(path, *report)).c_str());
    else print_check_human(*report);
    if (report->check_errors) fail("Check failed");
    return report->exit_code();
}

} // namespace cli
