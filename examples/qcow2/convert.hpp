// SPDX-License-Identifier: MIT
// qcow2 convert [-f qcow2|raw] [-O raw] [-m N] [-p] [-q] SRC DST
//
// Writes the guest disk of SRC (a qcow2 image with its backing chain, or a raw file) to
// DST as a raw file. A regular DST is created (or truncated), sized to the virtual size,
// and written sparsely: ranges the metadata says read as zeroes are never read, and
// 4 KiB blocks of zeroes in the data read are not written, leaving holes. Any other DST
// (a pipe such as /dev/stdout, a character or block device) gets every byte in order.
// A regular DST is written by up to N threads (-m, default one per CPU up to 4), each
// with its own open instance of SRC.
#pragma once

#include "common.hpp"
#include "source.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace cli {

/// The raw file convert writes: random access and sparse when it is a regular file, else a stream.
class raw_output {
public:
    /// Creates or truncates `path`; a regular file is sized to `size`. Prints the error on failure.
    static std::optional<raw_output> create(const std::string& path, std::uint64_t size) {
        raw_output o;
        do {
            o.fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        } while (o.fd_ < 0 && errno == EINTR);
        if (o.fd_ < 0) {
            fail(path + ": error while converting raw: Could not create '" + path + "': " + std::strerror(errno));
            return std::nullopt;
        }
        struct stat st {};
        if (::fstat(o.fd_, &st) != 0) {
            fail(path + ": error while converting raw: " + std::strerror(errno));
            return std::nullopt;
        }
        o.sequential_ = !S_ISREG(st.st_mode);
        if (!o.sequential_ && ::ftruncate(o.fd_, static_cast<off_t>(size)) != 0) {
            fail(path + ": error while converting raw: Could not resize file: " + std::strerror(errno));
            return std::nullopt;
        }
        return o;
    }

    raw_output(raw_output&& o) noexcept : fd_(std::exchange(o.fd_, -1)), sequential_(o.sequential_), next_(o.next_) {}
    raw_output& operator=(raw_output&&) = delete;
    ~raw_output() {
        if (fd_ >= 0) ::close(fd_);
    }

    /// True when the output is not a regular file: every byte must be written, in order.
    bool sequential() const noexcept { return sequential_; }

    /// Writes `in` at `offset` (in order, with no gap, when sequential).
    std::error_code write_at(std::uint64_t offset, std::span<const std::byte> in) {
        if (sequential_ && offset != next_) return std::make_error_code(std::errc::invalid_seek);
        const std::byte* p = in.data();
        std::size_t left = in.size();
        while (left > 0) {
            const ssize_t r = sequential_ ? ::write(fd_, p, left) : ::pwrite(fd_, p, left, static_cast<off_t>(offset));
            if (r < 0) {
                if (errno == EINTR) continue;
                return {errno, std::system_category()};
            }
            if (r == 0) return std::make_error_code(std::errc::io_error);
            const auto n = static_cast<std::size_t>(r);
            p += n;
            left -= n;
            offset += n;
        }
        if (sequential_) next_ = offset; // a regular file is written by several threads at once
        return {};
    }

    /// Closes the file, reporting a failure of close (NFS reports write errors there).
    std::error_code close() {
        const int fd = std::exchange(fd_, -1);
        if (fd >= 0 && ::close(fd) != 0 && errno != EINTR) return {errno, std::system_category()};
        return {};
    }

private:
    raw_output() = default;
    int fd_ = -1;
    bool sequential_ = false;
    std::uint64_t next_ = 0;
};

/// qemu-img's "    (12.34/100%)\r" progress, on stderr and only when it is a terminal.
class progress_meter {
public:
    explicit progress_meter(bool wanted) : on_(wanted && ::isatty(2) == 1) { print(0.0); }

    void update(std::uint64_t done, std::uint64_t total) {
        if (!on_) return;
        const double pct = total ? 100.0 * static_cast<double>(done) / static_cast<double>(total) : 100.0;
        if (pct - last_ >= 1.0 || (pct >= 100.0 && last_ < 100.0)) print(pct);
    }

    void finish() {
        if (!on_) return;
        print(100.0);
        std::fputc('\n', stderr);
    }

private:
    void print(double pct) {
        if (!on_) return;
        std::fprintf(stderr, "    (%3.2f/100%%)\r", pct);
        std::fflush(stderr);
        last_ = pct;
    }

    bool on_;
    double last_ = -1.0;
};

/// Copies guest bytes `[begin, end)` of `src` into `out` through `buf`, calling `advance(n)`
/// as each `n` bytes are done. Returns the error message, empty on success.
template <class Advance>
std::string convert_range(disk& src, raw_output& out, std::uint64_t begin, std::uint64_t end, std::vector<std::byte>& buf,
                          Advance&& advance) {
    constexpr std::uint64_t block = 4096; // granularity of the holes left in the output
    const std::size_t chunk = buf.size();
    const auto write_failed = [](std::uint64_t at, const std::error_code& ec) {
        return "error while writing at byte " + std::to_string(at) + ": " + ec.message();
    };

    for (std::uint64_t pos = begin; pos < end;) {
        auto run = src.status(pos, end - pos);
        if (!run) return "error while reading block status at offset " + std::to_string(pos) + ": " + run.error().what();
        const std::uint64_t run_end = pos + run->length;
        if (run->zero()) {
            // Already zero in a fresh regular file; a stream needs the bytes.
            if (out.sequential()) {
                std::fill(buf.begin(), buf.end(), std::byte{0});
                for (std::uint64_t at = pos; at < run_end;) {
                    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(run_end - at, chunk));
                    if (auto ec = out.write_at(at, std::span(buf).first(n))) return write_failed(at, ec);
                    at += n;
                }
            }
            advance(run_end - pos);
            pos = run_end;
            continue;
        }
        while (pos < run_end) {
            const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(run_end - pos, chunk));
            const auto data = std::span(buf).first(n);
            if (auto r = src.read(pos, data); !r)
                return "error while reading at byte " + std::to_string(pos) + ": " + r.error().what();
            if (out.sequential()) {
                if (auto ec = out.write_at(pos, data)) return write_failed(pos, ec);
            } else {
                // Write the runs of non-zero blocks (blocks aligned to the guest disk).
                std::uint64_t run_start = 0, at = 0;
                bool in_run = false;
                while (at < n) {
                    const std::uint64_t next = std::min<std::uint64_t>(n, ((pos + at) / block + 1) * block - pos);
                    const bool zero = is_zero(data.subspan(static_cast<std::size_t>(at), static_cast<std::size_t>(next - at)));
                    if (!zero && !in_run) {
                        run_start = at;
                        in_run = true;
                    } else if (zero && in_run) {
                        const auto part = data.subspan(static_cast<std::size_t>(run_start), static_cast<std::size_t>(at - run_start));
                        if (auto ec = out.write_at(pos + run_start, part)) return write_failed(pos + run_start, ec);
                        in_run = false;
                    }
                    at = next;
                }
                if (in_run) {
                    const auto part = data.subspan(static_cast<std::size_t>(run_start));
                    if (auto ec = out.write_at(pos + run_start, part)) return write_failed(pos + run_start, ec);
                }
            }
            advance(n);
            pos += n;
        }
    }
    return {};
}

/// Copies the guest disk of `src` into `out` with up to `workers` threads; the error is
/// printed on failure.
///
/// An image is not shared between threads: each worker opens `src` again (its own image,
/// chain, caches and descriptors) and converts 4 MiB units of the guest disk, taken in
/// turn, writing them at their offsets. A stream output is written by one thread, in order.
inline bool convert_to_raw(disk& src, raw_output& out, progress_meter& meter, unsigned workers) {
    constexpr std::size_t chunk = std::size_t{2} << 20; // bytes read at a time
    constexpr std::uint64_t unit = std::uint64_t{4} << 20;
    const std::uint64_t size = src.size();
    const std::uint64_t units = (size + unit - 1) / unit;
    if (out.sequential() || workers < 1) workers = 1;
    if (workers > units) workers = static_cast<unsigned>(std::max<std::uint64_t>(units, 1));

    std::mutex lock; // guards done, meter and first_error
    std::uint64_t done = 0;
    std::string first_error;
    std::atomic<std::uint64_t> next_unit{0};
    std::atomic<bool> stop{false};
    const auto advance = [&](std::uint64_t n) {
        const std::lock_guard<std::mutex> g(lock);
        done += n;
        meter.update(done, size);
    };
    const auto work = [&](disk& d) {
        std::vector<std::byte> buf(chunk);
        while (!stop.load()) {
            const std::uint64_t u = next_unit.fetch_add(1);
            if (u >= units) return;
            const std::uint64_t begin = u * unit;
            std::string err = convert_range(d, out, begin, std::min(size, begin + unit), buf, advance);
            if (!err.empty()) {
                const std::lock_guard<std::mutex> g(lock);
                if (first_error.empty()) first_error = std::move(err);
                stop.store(true);
                return;
            }
        }
    };

    std::vector<disk> others;
    for (unsigned i = 1; i < workers; ++i) {
        auto d = disk::open(src.path(), src.format());
        if (!d) return false;
        others.push_back(std::move(*d));
    }
    std::vector<std::thread> pool;
    for (auto& d : others) pool.emplace_back([&work, &d] { work(d); });
    work(src);
    for (auto& t : pool) t.join();
    if (!first_error.empty()) {
        fail(first_error);
        return false;
    }
    return true;
}

inline int convert_command(const std::vector<std::string>& args) {
    std::string in_format, out_format = "raw", value;
    bool show_progress = false;
    // Like qemu-img's -m (8 coroutines), but threads: one per CPU, at most 4, by default.
    unsigned workers = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
    std::vector<std::string> files;
    bool options_done = false;
    for (std::size_t k = 0; k < args.size(); ++k) {
        const std::string& a = args[k];
        if (options_done || a.empty() || a[0] != '-' || a == "-") {
            files.push_back(a);
        } else if (a == "--") {
            options_done = true;
        } else if (take_value(args, k, "-f", value)) {
            if (value.empty()) return fail("convert: option -f requires an argument"), 1;
            in_format = value;
        } else if (take_value(args, k, "-O", value)) {
            if (value.empty()) return fail("convert: option -O requires an argument"), 1;
            out_format = value;
        } else if (take_value(args, k, "-m", value)) {
            char* end = nullptr;
            const unsigned long n = std::strtoul(value.c_str(), &end, 10);
            if (value.empty() || *end != '\0' || n < 1 || n > 16)
                return fail("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16"), 1;
            workers = static_cast<unsigned>(n);
        } else if (a == "-p") {
            show_progress = true;
        } else if (a == "-q" || a == "-U" || a == "--force-share") {
            // -q: nothing is printed but errors anyway; -U: this tool takes no locks.
        } else {
            return fail("convert: unknown option '" + a + "'"), 1;
        }
    }
    if (out_format == "qcow2") return fail("convert -O qcow2 is not built yet"), 1;
    if (out_format != "raw") return fail("Unknown file format '" + out_format + "'"), 1;
    if (!in_format.empty() && in_format != "qcow2" && in_format != "raw")
        return fail("Unknown file format '" + in_format + "'"), 1;
    if (files.size() < 2) return fail("Must specify image file name"), 1;
    if (files.size() > 2) return fail("convert: only one source image is supported"), 1;

    auto src = disk::open(files[0], in_format);
    if (!src) return 1;
    auto out = raw_output::create(files[1], src->size());
    if (!out) return 1;
    progress_meter meter(show_progress);
    if (!convert_to_raw(*src, *out, meter, workers)) return 1;
    if (auto ec = out->close()) return fail("error while closing '" + files[1] + "': " + ec.message()), 1;
    meter.finish();
    return 0;
}

} // namespace cli
