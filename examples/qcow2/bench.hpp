// SPDX-License-Identifier: MIT
// qcow2 bench [-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=N] [-i AIO] [-n] [--no-drain]
//             [-o OFFSET] [--pattern=N] [-q] [-s BUFFER_SIZE] [-S STEP_SIZE] [-t CACHE] [-w] [-U] FILE
//
// `qemu-img bench` (7.2) on the library: COUNT requests (default 75000) of BUFFER_SIZE bytes
// (default 4096), reads (or with -w writes of bytes PATTERN, default 0), the first at OFFSET,
// each next one STEP_SIZE bytes further (default BUFFER_SIZE), wrapping at the end of the
// disk; then qemu-img's lines: "Sending N read requests, B bytes each, D in parallel
// (starting at offset O, step size S)", "Sending flush every N requests" with
// --flush-interval, and "Run completed in X.XXX seconds.". As in qemu-img, -q changes
// nothing (bench prints its lines anyway), and a request past the end of the disk fails the
// run ("Failed request: Input/output error", exit 1).
//
// FILE is a qcow2 image (reads go through `qcow2::image::read` and the backing chain; with
// -w the image is opened writable, with a posix_resolver, and written with `write`) or a raw
// file (pread/pwrite). The requests are synchronous, one at a time: DEPTH is only printed
// (qemu-img keeps DEPTH requests in flight), and -t, -i, -n and --no-drain are checked as
// qemu-img checks them and otherwise ignored (there is no cache mode or AIO engine to choose;
// -U is accepted: no locks are taken). --flush-interval flushes after every N requests. A
// write run ends with a flush inside the timed part (qemu-img flushes when it closes the
// image, after its timer stops), so the time printed includes making the writes durable.
#pragma once

#include "common.hpp"
#include "source.hpp"

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace cli {

namespace bench_detail {

/// The disk the requests go to: a qcow2 image (read-only, or writable with -w) or a raw file.
class target {
public:
    /// Opens `path` as `format` ("" to probe); prints qemu-img's message and returns nothing on failure.
    static std::optional<target> open(const std::string& path, std::string format, bool writable) {
        auto file = qcow2::io::posix_file::open(path, writable ? qcow2::io::open_mode::read_write
                                                               : qcow2::io::open_mode::read_only);
        if (!file) {
            open_failed(path, file.error());
            return std::nullopt;
        }
        if (format.empty()) format = probe_format(*file);
        target t;
        if (format == "raw") {
            auto n = qcow2::io::size_of(*file);
            if (!n) {
                open_failed(path, n.error());
                return std::nullopt;
            }
            t.file_size_ = *n;
            t.raw_.emplace(std::move(*file));
            return t;
        }
        if (format != "qcow2") {
            fail("Unknown file format '" + format + "'");
            return std::nullopt;
        }
        if (probe_format(*file) != "qcow2") {
            fail("Could not open '" + path + "': Image is not in qcow2 format");
            return std::nullopt;
        }
        auto img = qcow2::image::open(std::move(*file), qcow2::open_options{.writable = writable},
                                      qcow2::posix_resolver(path, {.allow_absolute = true, .allow_outside = true}));
        if (!img) {
            open_failed(path, img.error());
            return std::nullopt;
        }
        t.image_.emplace(std::move(*img));
        return t;
    }

    /// The virtual size (a raw file's size in whole sectors, as QEMU sees it).
    std::uint64_t size() const noexcept {
        return image_ ? image_->size() : (file_size_ + sector_size - 1) / sector_size * sector_size;
    }

    qcow2::result<void> read(std::uint64_t offset, std::span<std::byte> out) {
        if (image_) return image_->read(offset, out);
        return disk::read_clamped(*raw_, file_size_, offset, out);
    }

    qcow2::result<void> write(std::uint64_t offset, std::span<const std::byte> in) {
        if (image_) return image_->write(offset, in);
        if (auto ec = raw_->write_at(offset, in)) return qcow2::error(ec, "writing the raw file");
        if (offset + in.size() > file_size_) file_size_ = offset + in.size();
        return {};
    }

    qcow2::result<void> flush() {
        if (image_) return image_->flush();
        if (auto ec = raw_->flush()) return qcow2::error(ec, "flushing the raw file");
        return {};
    }

    /// Closes the image (flushing what is left, clearing the dirty bit of lazy refcounts).
    qcow2::result<void> close() {
        if (image_) return image_->close();
        return {};
    }

private:
    target() = default;

    std::optional<qcow2::image> image_;
    std::optional<qcow2::io::posix_file> raw_;
    std::uint64_t file_size_ = 0;
};

/// A number as qemu_strtoul(s, NULL, 0) reads it (decimal, 0x hex or 0 octal, the whole
/// string), at most `max`; nothing otherwise.
inline std::optional<std::uint64_t> strtoul_arg(const std::string& s, std::uint64_t max) {
    if (s.empty()) return std::nullopt;
    errno = 0;
    char* end = nullptr;
    const unsigned long long v = std::strtoull(s.c_str(), &end, 0);
    if (end == s.c_str() || *end != '\0' || errno == ERANGE || v > max) return std::nullopt;
    return static_cast<std::uint64_t>(v);
}

/// A size as qemu-img's cvtnum_full reads it (QEMU's suffixes), in [0, max]; nothing after
/// printing qemu-img's two-line or one-line complaint naming `what`.
inline std::optional<std::uint64_t> size_arg(const std::string& s, const char* what, std::uint64_t max) {
    const auto v = parse_qemu_size(s);
    if (v.status == size_status::invalid) {
        fail(std::string("Invalid ") + what + " specified. You may use k, M, G, T, P or E suffixes for");
        fail("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
        return std::nullopt;
    }
    if (v.status == size_status::out_of_range || v.value > max) {
        fail(std::string("Invalid ") + what + " specified. Must be between 0 and " + std::to_string(max) + ".");
        return std::nullopt;
    }
    return v.value;
}

/// The options of one run, with qemu-img's defaults.
struct options {
    std::uint64_t count = 75000;
    std::uint64_t depth = 64;
    std::uint64_t offset = 0;
    std::uint64_t bufsize = 4096;
    std::uint64_t step = 0; ///< 0: bufsize
    std::uint64_t flush_interval = 0;
    unsigned pattern = 0;
    bool write = false;
    bool force_share = false;
    bool native_aio = false;
    bool direct = false; ///< -t none or directsync (cache.direct=on)
    std::string format;
    std::string path;
};

/// Parses qemu-img bench's options as getopt_long does ("-c100", "-c 100", "-wq",
/// "--pattern=N", "--pattern N", operands anywhere, "--" ending the options). Returns the
/// exit status to end with, or nothing to go on.
inline std::optional<int> parse(const std::vector<std::string>& args, options& o) {
    constexpr std::string_view with_value = "cdfoStis"; // the short options taking a value
    constexpr std::string_view flags = "nqwUh";
    std::vector<std::string> operands;
    // Handles one option; `value` is its argument when it takes one.
    const auto option = [&](const std::string& name, const std::string& value) -> std::optional<int> {
        if (name == "c") {
            const auto v = strtoul_arg(value, INT_MAX);
            if (!v) return fail("Invalid request count specified"), 1;
            o.count = *v;
        } else if (name == "d") {
            const auto v = strtoul_arg(value, INT_MAX);
            if (!v) return fail("Invalid queue depth specified"), 1;
            o.depth = *v;
        } else if (name == "f") {
            o.format = value;
        } else if (name == "o") {
            const auto v = size_arg(value, "offset", INT64_MAX);
            if (!v) return 1;
            o.offset = *v;
        } else if (name == "s") {
            const auto v = size_arg(value, "buffer size", INT_MAX);
            if (!v) return 1;
            o.bufsize = *v;
        } else if (name == "S") {
            const auto v = size_arg(value, "step_size", INT_MAX);
            if (!v) return 1;
            o.step = *v;
        } else if (name == "t") {
            // qemu-img's cache modes; "none" and "directsync" bypass the host page cache.
            if (value == "none" || value == "off" || value == "directsync") o.direct = true;
            else if (value == "writeback" || value == "unsafe" || value == "writethrough") o.direct = false;
            else return fail("Invalid cache mode"), 1;
        } else if (name == "i") {
            if (value == "native") o.native_aio = true;
            else if (value == "threads" || value == "io_uring") o.native_aio = false;
            else return fail("Invalid aio option: " + value), 1;
        } else if (name == "n") {
            o.native_aio = true;
        } else if (name == "w") {
            o.write = true;
        } else if (name == "U" || name == "force-share") {
            o.force_share = true;
        } else if (name == "q" || name == "no-drain") {
            // -q: qemu-img bench prints its lines anyway; --no-drain: requests are not queued here.
        } else if (name == "pattern") {
            const auto v = strtoul_arg(value, 0xff);
            if (!v) return fail("Invalid pattern byte specified"), 1;
            o.pattern = static_cast<unsigned>(*v);
        } else if (name == "flush-interval") {
            const auto v = strtoul_arg(value, INT_MAX);
            if (!v) return fail("Invalid flush interval specified"), 1;
            o.flush_interval = *v;
        } else if (name == "h" || name == "help") {
            std::printf("usage: qcow2 bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n]\n"
                        "                   [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size]\n"
                        "                   [-S step_size] [-t cache] [-w] [-U] filename\n");
            return 0;
        } else {
            return unknown_option("bench", "-" + name);
        }
        return std::nullopt;
    };
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (a == "--") {
            operands.insert(operands.end(), args.begin() + static_cast<std::ptrdiff_t>(k) + 1, args.end());
            break;
        }
        if (a.size() < 2 || a[0] != '-') {
            operands.push_back(a);
            continue;
        }
        if (a[1] == '-') {
            std::string name = a.substr(2), value;
            const auto eq = name.find('=');
            const bool takes = name.rfind("pattern", 0) == 0 || name.rfind("flush-interval", 0) == 0;
            if (eq != std::string::npos) {
                value = name.substr(eq + 1);
                name.erase(eq);
                if (!takes) return fail("bench: option '--" + name + "' doesn't allow an argument"), 1;
            } else if (takes) {
                if (k + 1 >= args.size()) return fail("bench: option '--" + name + "' requires an argument"), 1;
                value = args[++k];
            }
            if (name != "pattern" && name != "flush-interval" && name != "no-drain" && name != "force-share" &&
                name != "help")
                return unknown_option("bench", "--" + name);
            if (auto r = option(name, value)) return r;
            continue;
        }
        for (std::size_t i = 1; i < a.size(); ++i) {
            const std::string name(1, a[i]);
            if (with_value.find(a[i]) != std::string_view::npos) {
                std::string value;
                if (i + 1 < a.size()) value = a.substr(i + 1);
                else if (k + 1 < args.size()) value = args[++k];
                else return fail("bench: option requires an argument -- '" + name + "'"), 1;
                if (auto r = option(name, value)) return r;
                break;
            }
            if (flags.find(a[i]) == std::string_view::npos) return fail("bench: invalid option -- '" + name + "'"), 1;
            if (auto r = option(name, {})) return r;
        }
    }
    if (operands.size() != 1) return fail("Expecting one image file name"), 1;
    o.path = operands[0];
    if (!o.write && o.flush_interval) return fail("--flush-interval is only available in write tests"), 1;
    if (o.flush_interval && o.flush_interval < o.depth) return fail("Flush interval can't be smaller than depth"), 1;
    if (o.write && o.force_share)
        return fail("Could not open '" + o.path + "': force-share=on can only be used with read-only images"), 1;
    if (o.native_aio && !o.direct)
        return fail("Could not open '" + o.path +
                    "': aio=native was specified, but it requires cache.direct=on, which was not specified."),
               1;
    return std::nullopt;
}

/// A failed request, in qemu-img's words, then the library's account.
inline int failed_request(const std::string& why_errno, const std::string& detail) {
    std::fflush(stdout);
    fail("Failed request: " + why_errno);
    if (!detail.empty()) fail(detail);
    return 1;
}

} // namespace bench_detail

inline int bench_command(const std::vector<std::string>& args) {
    bench_detail::options o;
    if (auto r = bench_detail::parse(args, o)) return *r;
    auto t = bench_detail::target::open(o.path, o.format, o.write);
    if (!t) return 1;
    const std::uint64_t size = t->size();
    const std::uint64_t step = o.step ? o.step : o.bufsize;
    std::printf("Sending %llu %s requests, %llu bytes each, %llu in parallel (starting at offset %llu, step size %llu)\n",
                static_cast<unsigned long long>(o.count), o.write ? "write" : "read",
                static_cast<unsigned long long>(o.bufsize), static_cast<unsigned long long>(o.depth),
                static_cast<unsigned long long>(o.offset), static_cast<unsigned long long>(step));
    if (o.flush_interval) std::printf("Sending flush every %llu requests\n", static_cast<unsigned long long>(o.flush_interval));

    std::vector<std::byte> buf(static_cast<std::size_t>(o.bufsize), static_cast<std::byte>(o.pattern));
    const auto start = std::chrono::steady_clock::now();
    std::uint64_t offset = o.offset;
    for (std::uint64_t done = 0; done < o.count;) {
        // QEMU's block layer refuses a request past the end of the disk with EIO.
        if (offset > size || size - offset < o.bufsize) return bench_detail::failed_request("Input/output error", {});
        const auto r = o.write ? t->write(offset, buf) : t->read(offset, buf);
        if (!r) return bench_detail::failed_request(errno_text(r.error()), r.error().what());
        ++done;
        offset += step;
        if (size) offset %= size;
        if (o.flush_interval && (o.count - done) % o.flush_interval == 0)
            if (auto f = t->flush(); !f) return bench_detail::failed_request(errno_text(f.error()), f.error().what());
    }
    if (o.write)
        if (auto f = t->flush(); !f) return bench_detail::failed_request(errno_text(f.error()), f.error().what());
    const auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("Run completed in %3.3f seconds.\n", took);
    std::fflush(stdout);
    if (auto c = t->close(); !c) return fail(c.error().what()), 1;
    return 0;
}

} // namespace cli
