// SPDX-License-Identifier: MIT
// qcow2 create [-f qcow2] [-o OPTIONS] [-b BACKING -F FMT] [-q] FILE [SIZE]
//
// Creates a qcow2 image as `qemu-img create -f qcow2` (7.2) does: the same -o options
// (`-o a=b,c=d`, ",," for a comma in a value, "-o help" for the list), sizes with QEMU's
// suffixes, the same "Formatting 'FILE', fmt=qcow2 ..." line (unless -q), the same errors
// in the same order (those found while reading the options before that line, those of the
// qcow2 driver after it). The backing file is opened, relative to the new image's
// directory, to check its format and, without SIZE, to take its size. An external data
// file is created (or truncated) here, where the image will look for it (relative to the
// image's directory; qemu-img creates it relative to the working directory, which is the
// same place when the image is named without a directory). Only qcow2 images are created.
//
// The option parsing and the checks are shared with `convert -O qcow2`.
#pragma once

#include "common.hpp"
#include "source.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cli {

namespace create_detail {

enum class opt_type { size, number, boolean, string };

/// One qcow2 creation option, as qemu-img describes it.
struct opt_desc {
    const char* name;
    opt_type type;
    const char* def; ///< printed in the "Formatting" line when the option is not given
    const char* help;
};

/// The options in the order qemu-img 7.2 prints them in its "Formatting" line.
inline constexpr opt_desc option_list[] = {
    {"cluster_size", opt_type::size, "65536", "qcow2 cluster size"},
    {"extended_l2", opt_type::boolean, "off", "Extended L2 tables"},
    {"preallocation", opt_type::string, nullptr, "Preallocation mode (allowed values: off, metadata, falloc, full)"},
    {"compression_type", opt_type::string, "zlib", "Compression method used for image cluster compression"},
    {"size", opt_type::size, nullptr, "Virtual disk size"},
    {"compat", opt_type::string, nullptr, "Compatibility level (v2 [0.10] or v3 [1.1])"},
    {"backing_file", opt_type::string, nullptr, "File name of a base image"},
    {"backing_fmt", opt_type::string, nullptr, "Image format of the base image"},
    {"data_file", opt_type::string, nullptr, "File name of an external data file"},
    {"data_file_raw", opt_type::boolean, nullptr, "The external data file must stay valid as a raw image"},
    {"lazy_refcounts", opt_type::boolean, "off", "Postpone refcount updates"},
    {"refcount_bits", opt_type::number, "16", "Width of a reference count entry in bits"},
};

inline constexpr std::size_t option_count = std::size(option_list);

} // namespace create_detail

/// The qcow2 creation options given with -o (and -b, -F, SIZE), as qemu-img keeps them:
/// the text as given, and for sizes and numbers the parsed value.
class create_opts {
public:
    /// False, with qemu-img's message, when `list` is not a well-formed -o argument
    /// (empty, a leading comma, or an odd number of trailing commas).
    static bool valid_list(std::string_view list) {
        std::size_t commas = 0;
        while (commas < list.size() && list[list.size() - 1 - commas] == ',') ++commas;
        if (list.empty() || list.front() == ',' || commas % 2) {
            fail("Invalid option list: " + std::string(list));
            return false;
        }
        return true;
    }

    /// True when one of the -o lists asks for help ("help" or "?").
    static bool wants_help(const std::vector<std::string>& lists) {
        for (const auto& l : lists) {
            bool found = false;
            for_each_option(l, [&](std::string name, std::string, bool flag) {
                if (flag && (name == "help" || name == "?")) found = true;
                return std::string{};
            });
            if (found) return true;
        }
        return false;
    }

    /// Prints the options as `qemu-img create -o help` lists them.
    static void print_help() {
        std::vector<std::string> lines;
        for (const auto& d : create_detail::option_list) {
            static const char* const types[] = {"size", "num", "bool (on/off)", "str"};
            std::string line = std::string("  ") + d.name + "=<" + types[static_cast<int>(d.type)] + ">";
            if (line.size() < 24) line.resize(24, ' ');
            lines.push_back(line + " - " + d.help);
        }
        std::sort(lines.begin(), lines.end());
        std::printf("Supported options:\n");
        for (const auto& l : lines) std::printf("%s\n", l.c_str());
    }

    /// Takes the options of one -o list (later ones win); the error in qemu-img's words, or empty.
    std::string parse(const std::string& list) {
        return for_each_option(
            list, [this](std::string name, std::string value, bool) { return set(name, std::move(value)); });
    }

    /// Sets option `name` from its text, as QEMU's option parser does; the error, or empty.
    std::string set(const std::string& name, std::string text) {
        using create_detail::opt_type;
        const std::size_t k = index(name);
        if (k == create_detail::option_count) return "Invalid parameter '" + name + "'";
        stored v{std::move(text), 0};
        switch (create_detail::option_list[k].type) {
        case opt_type::size: {
            const auto s = parse_qemu_size(v.text);
            if (s.status == size_status::out_of_range)
                return "Value '" + v.text + "' is out of range for parameter '" + name + "'";
            if (s.status != size_status::ok)
                return "Parameter '" + name +
                       "' expects a non-negative number below 2^64\n"
                       "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
                       "and exabytes, respectively.";
            v.number = s.value;
            break;
        }
        case opt_type::number: {
            // qemu_strtou64 with base 0: decimal, 0x hex or 0 octal; "-1" wraps around.
            const char* p = v.text.c_str();
            char* end = nullptr;
            errno = 0;
            v.number = std::strtoull(p, &end, 0);
            if (errno == ERANGE) return "Value '" + v.text + "' is too large for parameter '" + name + "'";
            if (end == p || *end != '\0') return "Parameter '" + name + "' expects a number";
            break;
        }
        case opt_type::boolean:
            if (v.text == "on" || v.text == "yes" || v.text == "true" || v.text == "y") v.number = 1;
            else if (!(v.text == "off" || v.text == "no" || v.text == "false" || v.text == "n"))
                return "Parameter '" + name + "' expects 'on' or 'off'";
            break;
        case opt_type::string: break;
        }
        values_[k] = std::move(v);
        return {};
    }

    /// Sets a size or number option from its value (what qemu_opt_set_number does).
    void set_number(const std::string& name, std::uint64_t n) { values_[index(name)] = stored{std::to_string(n), n}; }

    bool has(const std::string& name) const { return values_[index(name)].has_value(); }
    /// The text of a given option, or nullptr.
    const std::string* text(const std::string& name) const {
        const auto& v = values_[index(name)];
        return v ? &v->text : nullptr;
    }
    /// The value of a size, number or boolean option, or `def` when it is not given.
    std::uint64_t number(const std::string& name, std::uint64_t def) const {
        const auto& v = values_[index(name)];
        return v ? v->number : def;
    }

    /// The line qemu-img prints before creating `file` (QEMU's qemu_opts_print): every
    /// option given or with a default, strings with commas doubled, sizes and numbers as
    /// the signed 64-bit value they were parsed to.
    std::string formatting_line(const std::string& file) const {
        using create_detail::opt_type;
        std::string line = "Formatting '" + file + "', fmt=qcow2 ";
        const char* sep = "";
        for (std::size_t k = 0; k < create_detail::option_count; ++k) {
            const auto& d = create_detail::option_list[k];
            const auto& v = values_[k];
            if (!v && !d.def) continue;
            line += sep;
            line += d.name;
            line += '=';
            if (!v) {
                line += d.def;
            } else if (d.type == opt_type::string) {
                for (const char c : v->text) line += c == ',' ? std::string(",,") : std::string(1, c);
            } else if (d.type == opt_type::boolean) {
                line += v->text;
            } else {
                line += std::to_string(static_cast<std::int64_t>(v->number));
            }
            sep = " ";
        }
        return line;
    }

    /**
     * The library's options for these (size included), checked as QEMU's qcow2 driver checks
     * them, in its order and words; the error, or empty. Not checked here is what only the
     * library can tell (an L1 table over 32 MiB, a backing name that leaves cluster 0).
     */
    std::string to_library(qcow2::create_options& c) const {
        c = {};
        c.size = number("size", 0);
        // QEMU's QAPI names in these messages: 'version', 'compression-type'.
        if (const auto* v = text("compat")) {
            if (*v == "0.10" || *v == "v2") c.version = 2;
            else if (*v == "1.1" || *v == "v3") c.version = 3;
            else return "Parameter 'version' does not accept value '" + *v + "'";
        }
        if (const auto* v = text("preallocation")) {
            if (*v == "off") c.prealloc = qcow2::preallocation::off;
            else if (*v == "metadata") c.prealloc = qcow2::preallocation::metadata;
            else if (*v == "falloc") c.prealloc = qcow2::preallocation::falloc;
            else if (*v == "full") c.prealloc = qcow2::preallocation::full;
            else return "Parameter 'preallocation' does not accept value '" + *v + "'";
        }
        if (const auto* v = text("compression_type")) {
            if (*v == "zlib") c.compression_type = qcow2::compression::zlib;
            else if (*v == "zstd") c.compression_type = qcow2::compression::zstd;
            else return "Parameter 'compression-type' does not accept value '" + *v + "'";
        }
        if (const auto* v = text("backing_file")) c.backing_file = *v;
        if (const auto* v = text("backing_fmt")) c.backing_format = *v;
        if (const auto* v = text("data_file")) {
            if (v->empty()) return "Could not create '': No such file or directory"; // what creating the file "" gives
            c.data_file = *v;
        }
        c.extended_l2 = number("extended_l2", 0) != 0;
        c.lazy_refcounts = number("lazy_refcounts", 0) != 0;
        c.data_file_raw = number("data_file_raw", 0) != 0;
        const std::uint64_t cs = number("cluster_size", 65536);
        const std::uint64_t rb = number("refcount_bits", 16);
        const bool has_backing = has("backing_file");

        const std::string v3 = " (use version=v3 or greater)";
        if (c.extended_l2 && c.version < 3)
            return "Extended L2 entries are only supported with compatibility level 1.1 and above" + v3;
        if (cs < 512 || cs > (std::uint64_t{2} << 20) || (cs & (cs - 1)))
            return "Cluster size must be a power of two between 512 and 2048k";
        if (c.extended_l2 && cs < 16384)
            return "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes";
        c.cluster_size = cs;
        if (has_backing && c.prealloc != qcow2::preallocation::off && !c.extended_l2)
            return "Backing file and preallocation can only be used at the same time if extended_l2 is on";
        if (has("backing_fmt") && !has_backing) return "Backing format cannot be used without backing file";
        if (c.version < 3 && c.lazy_refcounts)
            return "Lazy refcounts only supported with compatibility level 1.1 and above" + v3;
        if (rb > 64 || rb == 0 || (rb & (rb - 1)))
            return "Refcount width must be a power of two and may not exceed 64 bits";
        if (c.version < 3 && rb != 16)
            return "Different refcount widths than 16 bits require compatibility level 1.1 or above" + v3;
        c.refcount_bits = static_cast<unsigned>(rb);
        if (c.data_file_raw && !has("data_file")) return "data-file-raw requires data-file";
        if (c.data_file_raw && has_backing) return "Backing file and data-file-raw cannot be used at the same time";
        if (has("data_file") && c.version < 3)
            return "External data files are only supported with compatibility level 1.1 and above" + v3;
        if (c.compression_type != qcow2::compression::zlib && c.version < 3)
            return "Non-zlib compression type is only supported with compatibility level 1.1 and above" + v3;
        return {};
    }

private:
    struct stored {
        std::string text;
        std::uint64_t number = 0;
    };

    static std::size_t index(std::string_view name) {
        std::size_t k = 0;
        while (k < create_detail::option_count && name != create_detail::option_list[k].name) ++k;
        return k;
    }

    /**
     * Calls `f(name, value, flag)` for each option of `list` as QEMU's option parser splits
     * it: "name=value" (",," in a value is a comma), or a bare "name" meaning name=on
     * ("noname": name=off), with `flag` set. Stops at the first error `f` returns.
     */
    template <class F>
    static std::string for_each_option(std::string_view list, F&& f) {
        std::size_t p = 0;
        while (p < list.size()) {
            const std::size_t stop = std::min(list.find_first_of("=,", p), list.size());
            const std::size_t len = stop - p;
            std::string name(list.substr(p, len));
            std::string value;
            const bool flag = p + len == list.size() || list[p + len] != '=';
            p += len;
            if (flag) {
                if (name.compare(0, 2, "no") == 0) {
                    name.erase(0, 2);
                    value = "off";
                } else {
                    value = "on";
                }
            } else {
                for (++p; p < list.size(); ++p) {
                    if (list[p] == ',') {
                        if (p + 1 < list.size() && list[p + 1] == ',') ++p;
                        else break;
                    }
                    value += list[p];
                }
            }
            if (p < list.size()) ++p; // the comma
            if (std::string err = f(std::move(name), std::move(value), flag); !err.empty()) return err;
        }
        return {};
    }

    std::array<std::optional<stored>, create_detail::option_count> values_;
};

/// The library's error in qemu-img's words where they differ in substance.
inline std::string create_error_text(const qcow2::error& e, const qcow2::create_options& o) {
    if (e.is(qcow2::errc::image_too_large))
        return "The image size is too large for file format 'qcow2' (try using a larger cluster size)";
    if (e.is(qcow2::errc::backing_name_too_long) && !o.backing_file.empty())
        // QEMU writes the name after creating the image: EINVAL over 1023 bytes, else ENOSPC in cluster 0.
        return "Could not assign backing file '" + o.backing_file + "' with format '" + o.backing_format +
               "': " + std::strerror(o.backing_file.size() > 1023 ? EINVAL : ENOSPC);
    return e.what();
}

/**
 * Creates the qcow2 image `path` with options `o`; the error text (without the file name)
 * on failure, else the new image, which reads as zero.
 *
 * The external data file is created (or truncated) first, relative to the image's
 * directory, because the library opens it through the resolver, which opens only
 * existing files. Backing and data files may be named by absolute paths or outside the
 * image's directory, as in qemu-img.
 */
inline std::optional<qcow2::zeroed<qcow2::image>> create_image(const std::string& path, const qcow2::create_options& o,
                                                               std::string& err) {
    const auto cannot_create = [&](const std::string& file, const qcow2::error& e) {
        err = "Could not create '" + file + "': " + errno_text(e);
        return std::nullopt;
    };
    if (!o.data_file.empty()) {
        const std::string data = path_combine(path, o.data_file);
        auto f = qcow2::io::posix_file::open(data, qcow2::io::open_mode::create);
        if (!f) return cannot_create(data, f.error());
    }
    auto file = qcow2::io::posix_file::open(path, qcow2::io::open_mode::create);
    if (!file) return cannot_create(path, file.error());
    auto z = qcow2::image::create(std::move(*file), o,
                                  qcow2::posix_resolver(path, {.allow_absolute = true, .allow_outside = true}));
    if (!z) {
        err = create_error_text(z.error(), o);
        return std::nullopt;
    }
    return std::move(*z);
}

namespace create_detail {

/**
 * Opens the backing file `name` of the new image `path` as format `fmt` ("" to probe), as
 * qemu-img create does before creating; its virtual size, or nothing with the error in `err`
 * (qemu-img's text, with its "Could not open backing image." hint when the open failed).
 */
inline std::optional<std::uint64_t> backing_size(const std::string& path, const std::string& name,
                                                 const std::string& fmt, std::string& err) {
    const std::string full = path_combine(path, name);
    const auto open_failed_hint = [&](const std::string& why) {
        err = why + "\nCould not open backing image.";
        return std::nullopt;
    };
    qcow2::posix_resolver resolve(path, {.allow_absolute = true, .allow_outside = true});
    auto f = resolve(qcow2::file_request{name, qcow2::file_role::backing, 0, false});
    if (!f) {
        const bool system = f.error().code().category() != qcow2::error_category();
        return open_failed_hint(system ? "Could not open '" + full + "': " + errno_text(f.error()) : f.error().what());
    }
    const std::string probed = probe_format(*f);
    if (!fmt.empty() && fmt != "qcow2" && fmt != "raw") return open_failed_hint("Unknown driver '" + fmt + "'");
    if (fmt.empty()) {
        err = "Backing file specified without backing format\nDetected format of " + probed + ".";
        return std::nullopt;
    }
    if (fmt == "raw") {
        auto n = qcow2::io::size_of(*f);
        if (!n) return open_failed_hint(n.error().what());
        return (*n + 511) / 512 * 512; // QEMU sees whole sectors
    }
    if (probed != "qcow2") return open_failed_hint("Image is not in qcow2 format");
    auto img = qcow2::image::open(std::move(*f), {},
                                  qcow2::posix_resolver(full, {.allow_absolute = true, .allow_outside = true}));
    if (!img) return open_failed_hint(img.error().what());
    return img->size();
}

} // namespace create_detail

inline int create_command(const std::vector<std::string>& args) {
    std::string format = "qcow2", value;
    std::optional<std::string> backing_given, backing_fmt_given;
    std::vector<std::string> lists, files;
    bool quiet = false, options_done = false;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if (take_value(args, k, "-f", value)) {
            if (value.empty()) return fail("create: option -f requires an argument"), 1;
            format = value;
        } else if (take_value(args, k, "-o", value)) {
            if (!create_opts::valid_list(value)) return 1;
            lists.push_back(value);
        } else if (take_value(args, k, "-b", value)) {
            backing_given = value;
        } else if (take_value(args, k, "-F", value)) {
            backing_fmt_given = value;
        } else if (a == "-q") {
            quiet = true;
        } else {
            return unknown_option("create", a);
        }
    }
    if (create_opts::wants_help(lists)) {
        create_opts::print_help();
        return 0;
    }
    if (files.empty()) return fail("Expecting image file name"), 1;
    if (files.size() > 2) return fail("Unexpected argument: " + files[2]), 1;
    const std::string& path = files[0];
    std::optional<std::uint64_t> size;
    if (files.size() == 2) {
        const auto s = parse_qemu_size(files[1]);
        if (s.status == size_status::invalid)
            return fail("Invalid image size specified. You may use k, M, G, T, P or E suffixes for"),
                   fail("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes."), 1;
        if (s.status == size_status::out_of_range || s.value > INT64_MAX)
            return fail("Invalid image size specified. Must be between 0 and 9223372036854775807."), 1;
        size = s.value;
    }

    // What qemu-img's bdrv_img_create does, in its order; its errors name the file.
    const auto failed = [&](const std::string& why) {
        fail(path + ": " + why);
        return 1;
    };
    if (format != "qcow2") return failed("Unknown file format '" + format + "' (this tool creates qcow2 images only)");
    create_opts opts;
    for (const auto& l : lists)
        if (std::string err = opts.parse(l); !err.empty()) return failed(err);
    if (!opts.has("size")) {
        if (size) opts.set_number("size", *size);
    } else if (size) {
        return failed("The image size must be specified only once");
    }
    if (backing_given) (void)opts.set("backing_file", *backing_given);
    if (backing_fmt_given) (void)opts.set("backing_fmt", *backing_fmt_given);
    if (const auto* b = opts.text("backing_file")) {
        if (*b == path) return failed("Error: Trying to create an image with the same filename as the backing file");
        if (b->empty()) return failed("Expected backing file name, got empty string");
        std::string err;
        const auto* f = opts.text("backing_fmt");
        const auto bsize = create_detail::backing_size(path, *b, f ? *f : std::string{}, err);
        if (!bsize) return failed(err);
        if (!opts.has("size")) opts.set_number("size", *bsize);
    }
    if (!opts.has("size")) return failed("Image creation needs a size parameter");
    if (!quiet) {
        std::printf("%s\n", opts.formatting_line(path).c_str());
        std::fflush(stdout);
    }

    qcow2::create_options o;
    if (std::string err = opts.to_library(o); !err.empty()) return failed(err);
    std::string err;
    auto z = create_image(path, o, err);
    if (!z) return failed(err);
    qcow2::image img = std::move(*z).release();
    if (auto r = img.close(); !r) return failed("Could not close the new image: " + r.error().what());
    return 0;
}

} // namespace cli
