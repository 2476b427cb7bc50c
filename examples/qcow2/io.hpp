// SPDX-License-Identifier: MIT
// qcow2 io [-f FMT] -c CMD [-c CMD...] FILE
//
// A subset of qemu-io (7.2), for scripts and tests: FILE (a qcow2 image, opened for
// writing with its backing chain, or a raw file) and the commands
//
//   read [-q] [-P pattern [-s off] [-l len]] off len   (alias r)
//   write [-cquz] [-P pattern] off len                 (alias w)
//   discard [-q] off len                               (alias d)
//   flush                                              (alias f)
//
// with qemu-io's options, numbers (QEMU's size suffixes), messages and report lines
// ("wrote 4096/4096 bytes at offset 0", then the timing line). `read -P` verifies the
// pattern; `write` writes the pattern (0xcd by default), `-z` zeroes (`-u` letting the
// image free the clusters), `-c` writes compressed clusters (whole clusters, or the rest of
// the disk at its end). Every command runs; the exit status is 1 when any of them failed
// (a failed verification included), else 0. Command lines are split at spaces, and options
// may follow the operands, as qemu-io's getopt allows.
#pragma once

#include "common.hpp"
#include "source.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
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

namespace io_detail {

/// The disk the commands act on: a qcow2 image opened for writing, or a raw file.
class device {
public:
    /// Opens `path` as `format` ("" to probe); prints qemu-io's message on failure.
    static std::optional<device> open(const std::string& path, std::string format) {
        const auto cannot = [&](const std::string& why) {
            fail("can't open device " + path + ": " + why);
            return std::nullopt;
        };
        auto file = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_write);
        if (!file) return cannot(file.error().what());
        if (format.empty()) format = probe_format(*file);
        device d;
        if (format == "raw") {
            auto n = qcow2::io::size_of(*file);
            if (!n) return cannot(n.error().what());
            d.file_size_ = *n;
            d.raw_.emplace(std::move(*file));
            return d;
        }
        if (format != "qcow2") return cannot("Unknown driver '" + format + "'");
        auto img = qcow2::image::open(std::move(*file), qcow2::open_options{.writable = true},
                                      qcow2::posix_resolver(path, {.allow_absolute = true, .allow_outside = true}));
        if (!img) return cannot(img.error().what());
        d.image_.emplace(std::move(*img));
        return d;
    }

    /// The size requests are checked against (a raw file's size in whole sectors, as QEMU sees it).
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
        file_size_ = std::max(file_size_, offset + in.size());
        return {};
    }

    qcow2::result<void> write_zeroes(std::uint64_t offset, std::uint64_t length, bool unmap) {
        if (image_)
            return image_->write_zeroes(offset, length,
                                        unmap ? qcow2::zero_mode::unmap : qcow2::zero_mode::keep_allocation);
        if (auto ec = raw_->write_zeroes(offset, length)) return qcow2::error(ec, "zeroing the raw file");
        file_size_ = std::max(file_size_, offset + length);
        return {};
    }

    qcow2::result<void> discard(std::uint64_t offset, std::uint64_t length) {
        if (image_) return image_->discard(offset, length);
        if (auto ec = raw_->discard(offset, length)) return qcow2::error(ec, "discarding in the raw file");
        return {};
    }

    /// Compressed clusters, as qemu-io's `write -c`: `offset` cluster aligned, `in` whole
    /// clusters or reaching the end of the disk, none of them holding a host cluster.
    qcow2::result<void> write_compressed(std::uint64_t offset, std::span<const std::byte> in) {
        if (!image_) return qcow2::error(qcow2::errc::not_supported, "a raw file has no compressed clusters");
        const std::uint64_t cs = image_->cluster_size();
        if (offset % cs || (in.size() % cs && offset + in.size() != image_->size()))
            return qcow2::error(qcow2::errc::invalid_argument, "compressed writes take whole clusters");
        // QEMU never compresses over an allocated cluster (data, compressed, or preallocated
        // zero): it fails with EIO. The library could replace the cluster; qemu-io's answer is kept.
        for (std::uint64_t at = offset; at < offset + in.size(); at += cs) {
            auto m = image_->map_range(at, cs);
            if (!m) return m.error();
            if (m->has_host || m->state == qcow2::cluster_state::compressed)
                return qcow2::error(qcow2::errc::io_error,
                                    "qemu-io does not compress over the allocated cluster at guest offset " +
                                        std::to_string(at));
        }
        for (std::size_t at = 0; at < in.size(); at += static_cast<std::size_t>(cs)) {
            const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(cs, in.size() - at));
            if (auto r = image_->write_compressed(offset + at, in.subspan(at, n)); !r) return r;
        }
        return {};
    }

    qcow2::result<void> flush() {
        if (image_) return image_->flush();
        if (auto ec = raw_->flush()) return qcow2::error(ec, "flushing the raw file");
        return {};
    }

    /// Closes the image (flushing, clearing the dirty bit of lazy refcounts).
    qcow2::result<void> close() {
        if (image_) return image_->close();
        return {};
    }

private:
    device() = default;

    std::optional<qcow2::image> image_;
    std::optional<qcow2::io::posix_file> raw_;
    std::uint64_t file_size_ = 0;
};

/// One command: its names, its getopt string, its argument count, and its usage line.
struct command_desc {
    const char* name;
    const char* alias;
    const char* optstring;
    int argmin, argmax; ///< argmax -1: no upper bound
    const char* args;
    const char* oneline;
};

inline constexpr command_desc commands[] = {
    {"read", "r", "P:qs:l:", 2, -1, "[-q] [-P pattern [-s off] [-l len]] off len",
     "reads a number of bytes at a specified offset"},
    {"write", "w", "cP:quz", 2, -1, "[-cquz] [-P pattern] off len", "writes a number of bytes at a specified offset"},
    {"discard", "d", "q", 2, -1, "[-q] off len", "discards a number of bytes at a specified offset"},
    {"flush", "f", "", 0, 0, "", "flush all in-core file state to disk"},
};

/// The largest request qemu-io takes (BDRV_REQUEST_MAX_BYTES).
inline constexpr std::uint64_t max_request = 2147483136;

/// qemu's cvtstr: "4 KiB", "1.500 KiB", "512 bytes".
inline std::string cvtstr(double v) {
    static const char* const suffixes[] = {" KiB", " MiB", " GiB", " TiB", " PiB", " EiB"};
    char buf[64];
    const char* suffix = " bytes";
    int unit = -1;
    for (int i = 5; i >= 0 && unit < 0; --i)
        if (v >= std::ldexp(1.0, 10 * (i + 1))) unit = i;
    if (unit >= 0) {
        suffix = suffixes[unit];
        std::snprintf(buf, sizeof buf, "%.3f", v / std::ldexp(1.0, 10 * (unit + 1)));
    } else {
        std::snprintf(buf, sizeof buf, "%f", v);
    }
    std::string s = buf;
    if (const auto trim = s.find(".000"); trim != std::string::npos) s.erase(trim);
    return s + suffix;
}

/// qemu-io's report of a finished request: what was done, then the time and the rates.
inline void print_report(const char* op, std::chrono::nanoseconds t, std::uint64_t offset, std::uint64_t count) {
    const auto ns = static_cast<std::uint64_t>(t.count());
    const std::uint64_t sec = ns / 1000000000u;
    const double frac = static_cast<double>(ns % 1000000000u) / 1e9;
    const double seconds = static_cast<double>(sec) + frac;
    char ts[64];
    if (sec) {
        std::snprintf(ts, sizeof ts, "%u:%02u:%05.2f", static_cast<unsigned>(sec / 3600),
                      static_cast<unsigned>(sec % 3600 / 60), static_cast<double>(sec % 60) + frac);
    } else {
        std::snprintf(ts, sizeof ts, "%05.2f sec", frac);
    }
    const double total = static_cast<double>(count);
    std::printf("%s %llu/%llu bytes at offset %llu\n", op, static_cast<unsigned long long>(count),
                static_cast<unsigned long long>(count), static_cast<unsigned long long>(offset));
    std::printf("%s, 1 ops; %s (%s/sec and %.4f ops/sec)\n", cvtstr(total).c_str(), ts, cvtstr(total / seconds).c_str(),
                1.0 / seconds);
}

/// A number as qemu-io's cvtnum reads it, or nothing after printing its parsing error.
inline std::optional<std::uint64_t> number(const std::string& arg) {
    const auto s = parse_qemu_size(arg);
    if (s.status == size_status::ok && s.value <= INT64_MAX) return s.value;
    if (s.status == size_status::invalid)
        std::printf("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- %s\n", arg.c_str());
    else std::printf("Parsing error: argument too large -- %s\n", arg.c_str());
    return std::nullopt;
}

/// A pattern byte as qemu-io reads it (strtol base 0: 0xab, 171, 0253), or nothing after printing why not.
inline std::optional<std::byte> pattern(const std::string& arg) {
    char* end = nullptr;
    const long v = std::strtol(arg.c_str(), &end, 0);
    if (v < 0 || v > 255 || *end != '\0') {
        std::printf("%s is not a valid pattern byte\n", arg.c_str());
        return std::nullopt;
    }
    return static_cast<std::byte>(v);
}

/// Options and operands of one command, split as glibc's getopt does (operands may come
/// before options; "--" ends the options).
struct parsed_args {
    std::vector<std::pair<char, std::string>> options;
    std::vector<std::string> operands;
};

/// False, after getopt's message on stderr, for an unknown option or a missing option argument.
inline bool getopt(const std::string& cmd, const std::vector<std::string>& args, std::string_view optstring,
                   parsed_args& out) {
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (a == "--") {
            out.operands.insert(out.operands.end(), args.begin() + static_cast<std::ptrdiff_t>(k) + 1, args.end());
            break;
        }
        if (a.size() < 2 || a[0] != '-') {
            out.operands.push_back(a);
            continue;
        }
        for (std::size_t i = 1; i < a.size(); ++i) {
            const auto p = optstring.find(a[i]);
            if (p == std::string_view::npos || a[i] == ':') {
                std::fprintf(stderr, "%s: invalid option -- '%c'\n", cmd.c_str(), a[i]);
                return false;
            }
            if (p + 1 < optstring.size() && optstring[p + 1] == ':') {
                if (i + 1 < a.size()) {
                    out.options.emplace_back(a[i], a.substr(i + 1));
                } else if (k + 1 < args.size()) {
                    out.options.emplace_back(a[i], args[++k]);
                } else {
                    std::fprintf(stderr, "%s: option requires an argument -- '%c'\n", cmd.c_str(), a[i]);
                    return false;
                }
                break;
            }
            out.options.emplace_back(a[i], std::string{});
        }
    }
    return true;
}

/// Runs one command line on `dev`; false when the command failed.
inline bool run_command(device& dev, const std::string& line) {
    std::vector<std::string> words;
    for (std::size_t p = 0; p <= line.size();) {
        const std::size_t q = std::min(line.find(' ', p), line.size());
        if (q > p) words.push_back(line.substr(p, q - p));
        p = q + 1;
    }
    if (words.empty()) return true;
    const std::string cmd = words.front();
    words.erase(words.begin());
    const command_desc* c = nullptr;
    for (const auto& d : commands)
        if (cmd == d.name || cmd == d.alias) c = &d;
    if (!c) {
        std::fprintf(stderr, "command \"%s\" not found\n", cmd.c_str());
        return false;
    }
    const int argc = static_cast<int>(words.size());
    if ((c->argmax == -1 && argc < c->argmin) || (c->argmax >= 0 && c->argmin == c->argmax && argc != c->argmin)) {
        if (c->argmax == -1)
            std::fprintf(stderr, "bad argument count %d to %s, expected at least %d arguments\n", argc, cmd.c_str(),
                         c->argmin);
        else std::fprintf(stderr, "bad argument count %d to %s, expected %d arguments\n", argc, cmd.c_str(), c->argmin);
        return false;
    }
    const auto usage = [c] {
        std::printf("%s %s -- %s\n", c->name, c->args, c->oneline);
        return false;
    };
    parsed_args pa;
    if (!getopt(cmd, words, c->optstring, pa)) return usage();
    if (std::string_view(c->name) == "flush") {
        if (auto r = dev.flush(); !r) return fail(r.error().what()), false;
        return true;
    }

    bool quiet = false, zero = false, unmap = false, compressed = false;
    std::optional<std::byte> pat;
    std::optional<std::uint64_t> pat_offset, pat_length;
    for (const auto& [o, v] : pa.options) {
        switch (o) {
        case 'q': quiet = true; break;
        case 'z': zero = true; break;
        case 'u': unmap = true; break;
        case 'c': compressed = true; break;
        case 'P':
            if (!(pat = pattern(v))) return false;
            break;
        case 's':
            if (!(pat_offset = number(v))) return false;
            break;
        case 'l':
            if (!(pat_length = number(v))) return false;
            break;
        default: return usage();
        }
    }
    if (pa.operands.size() != 2) return usage();
    const std::string_view name = c->name;
    if (name == "write") {
        if (unmap && !zero) return std::printf("-u requires -z to be specified\n"), false;
        if (zero && pat) return std::printf("Only one of -z, -P, and -s can be specified at the same time\n"), false;
    }
    const auto offset = number(pa.operands[0]);
    if (!offset) return false;
    const auto count = number(pa.operands[1]);
    if (!count) return false;
    if (*count > max_request)
        return std::printf("length cannot exceed %llu, given %s\n", static_cast<unsigned long long>(max_request),
                           pa.operands[1].c_str()),
               false;
    if (name == "write" && compressed) {
        if (*offset % sector_size)
            return std::printf("%llu is not a sector-aligned value for 'offset'\n",
                               static_cast<unsigned long long>(*offset)),
                   false;
        if (*count % sector_size)
            return std::printf("%llu is not a sector-aligned value for 'count'\n",
                               static_cast<unsigned long long>(*count)),
                   false;
    }
    if (name == "read") {
        if (!pat && (pat_offset || pat_length)) return usage();
        const std::uint64_t po = pat_offset.value_or(0);
        if (po > *count || pat_length.value_or(*count - po) > *count - po)
            return std::printf("pattern verification range exceeds end of read data\n"), false;
    }

    const char* const failed = name == "read" ? "read failed" : name == "write" ? "write failed" : "discard failed";
    // QEMU's block layer refuses a request past the end of the disk with EIO.
    if (*offset > dev.size() || dev.size() - *offset < *count)
        return std::printf("%s: Input/output error\n", failed), false;
    std::vector<std::byte> buf;
    if (name == "read" || (name == "write" && !zero))
        buf.assign(static_cast<std::size_t>(*count), name == "write" ? pat.value_or(std::byte{0xcd}) : std::byte{0});

    const auto start = std::chrono::steady_clock::now();
    qcow2::result<void> r;
    if (name == "read") r = dev.read(*offset, buf);
    else if (name == "discard") r = dev.discard(*offset, *count);
    else if (zero) r = dev.write_zeroes(*offset, *count, unmap);
    else if (compressed) r = dev.write_compressed(*offset, buf);
    else r = dev.write(*offset, buf);
    const auto took = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start);
    if (!r) {
        std::printf("%s: %s\n", failed, errno_text(r.error()).c_str());
        std::fflush(stdout);
        fail(r.error().what()); // the library's account, which qemu-io does not give
        return false;
    }

    bool ok = true;
    if (name == "read" && pat) {
        const std::uint64_t po = pat_offset.value_or(0), pl = pat_length.value_or(*count - po);
        const auto part = std::span(buf).subspan(static_cast<std::size_t>(po), static_cast<std::size_t>(pl));
        if (std::any_of(part.begin(), part.end(), [&](std::byte b) { return b != *pat; })) {
            std::printf("Pattern verification failed at offset %llu, %llu bytes\n",
                        static_cast<unsigned long long>(*offset + po), static_cast<unsigned long long>(pl));
            ok = false;
        }
    }
    if (!quiet) print_report(name == "read" ? "read" : name == "write" ? "wrote" : "discard", took, *offset, *count);
    return ok;
}

} // namespace io_detail

inline int io_command(const std::vector<std::string>& args) {
    std::string format, value;
    std::vector<std::string> cmds, files;
    bool options_done = false;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if (take_value(args, k, "-f", value) || take_value(args, k, "--format", value)) {
            if (value.empty()) return fail("io: option -f requires an argument"), 1;
            format = value;
        } else if (take_value(args, k, "-c", value) || take_value(args, k, "--cmd", value)) {
            cmds.push_back(value);
        } else {
            return unknown_option("io", a);
        }
    }
    if (files.size() != 1) return fail("io: expecting one image file name"), 1;
    if (cmds.empty()) return fail("io: no command given (-c CMD; the interactive mode of qemu-io is not built)"), 1;
    auto dev = io_detail::device::open(files[0], format);
    if (!dev) return 1;
    bool ok = true;
    for (const auto& c : cmds) {
        ok = io_detail::run_command(*dev, c) && ok;
        std::fflush(stdout);
    }
    if (auto r = dev->close(); !r) {
        fail(r.error().what());
        ok = false;
    }
    return ok ? 0 : 1;
}

} // namespace cli
