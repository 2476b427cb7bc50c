// SPDX-License-Identifier: MIT
// qcow2 convert [-f qcow2|raw] [-O raw|qcow2] [-o OPTIONS] [-c] [-n] [-m N] [-p] [-q] SRC DST
//
// Writes the guest disk of SRC (a qcow2 image with its backing chain, or a raw file) to DST.
//
// -O raw (the default, as in qemu-img): a regular DST is created (or truncated), sized to
// the virtual size, and written sparsely: ranges the metadata says read as zeroes are never
// read, and 4 KiB blocks of zeroes in the data read are not written, leaving holes. Any
// other DST (a pipe such as /dev/stdout, a character or block device) gets every byte in
// order. A regular DST is written by up to N threads (-m, default one per CPU up to 4),
// each with its own open instance of SRC.
//
// -O qcow2: DST is created with the -o options of `create` (the size is SRC's; backing
// files are not built), then written cluster by cluster: clusters that read as zeroes are
// skipped (a new image reads as zero), the others written, or with -c written compressed
// with the image's codec (-o compression_type=). One thread writes.
//
// -O qcow2 onto a stream (DST "-" for stdout, or a pipe or character device by name): the
// image is written front to back by `qcow2::stream_writer` (metadata first, then the data
// clusters in guest order; no seek), after a first pass over SRC that finds the clusters
// holding data and, with -c, the length of each one's compressed stream; the second pass
// reads (and compresses) them again as it writes. The same SRC and options give the same
// bytes. What cannot be streamed is refused: -n, backing files, data_file, preallocation
// other than off, and a terminal as stdout.
//
// -n: DST exists and is written over (no -o); it must be at least as large as SRC. Ranges
// that read as zeroes in SRC are zeroed in DST, so that DST reads exactly as SRC.
// -p prints qemu-img's progress; messages and exit status (0, or 1 on error) are qemu-img's.
#pragma once

#include "common.hpp"
#include "create.hpp"
#include "source.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace cli {

/// The raw file convert writes: random access and sparse when it is a regular file, else a stream.
class raw_output {
public:
    /// Creates or truncates `path`; a regular file is sized to `size`. Prints the error on failure.
    static std::optional<raw_output> create(const std::string& path, std::uint64_t size) {
        raw_output o;
        if (path == "-") { // stdout, written in order whatever it is
            o.fd_ = ::dup(STDOUT_FILENO);
            if (o.fd_ < 0) {
                fail("-: error while converting raw: " + std::string(std::strerror(errno)));
                return std::nullopt;
            }
            o.sequential_ = true;
            return o;
        }
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

    /// Opens the existing `path` to be written over (`convert -n`): every byte of the guest
    /// disk is written, zeroes included. Prints the error on failure, and when a regular
    /// file is smaller than `size` (counted in whole sectors, as QEMU does).
    static std::optional<raw_output> open_existing(const std::string& path, std::uint64_t size) {
        raw_output o;
        do {
            o.fd_ = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
        } while (o.fd_ < 0 && errno == EINTR);
        if (o.fd_ < 0) {
            fail("Could not open '" + path + "': " + std::strerror(errno));
            return std::nullopt;
        }
        struct stat st {};
        if (::fstat(o.fd_, &st) != 0) {
            fail("Could not open '" + path + "': " + std::strerror(errno));
            return std::nullopt;
        }
        o.sequential_ = !S_ISREG(st.st_mode);
        o.dense_ = true;
        const auto sectors = (static_cast<std::uint64_t>(st.st_size) + sector_size - 1) / sector_size;
        if (!o.sequential_ && sectors * sector_size < size) {
            fail("output file is smaller than input file");
            return std::nullopt;
        }
        return o;
    }

    raw_output(raw_output&& o) noexcept
        : fd_(std::exchange(o.fd_, -1)), sequential_(o.sequential_), dense_(o.dense_), next_(o.next_) {}
    raw_output& operator=(raw_output&&) = delete;
    ~raw_output() {
        if (fd_ >= 0) ::close(fd_);
    }

    /// True when the output is not a regular file: every byte must be written, in order.
    bool sequential() const noexcept { return sequential_; }
    /// True when every byte must be written, zeroes included (a stream, or a file written over).
    bool dense() const noexcept { return sequential_ || dense_; }

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
    bool dense_ = false;
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
            // Already zero in a fresh regular file; a stream or a file written over needs the bytes.
            if (out.dense()) {
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
            auto n = static_cast<std::size_t>(std::min<std::uint64_t>(run_end - pos, chunk));
            // Data clusters of the image itself are taken where they lie in its mapped file
            // (no copy into `buf`); the rest is read.
            std::span<const std::byte> data = src.view(pos, n);
            if (!data.empty()) {
                n = data.size();
            } else {
                const auto into = std::span(buf).first(n);
                if (auto r = src.read(pos, into); !r)
                    return "error while reading at byte " + std::to_string(pos) + ": " + r.error().what();
                data = into;
            }
            if (out.dense()) {
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
            if (data.data() != buf.data()) disk::release(data);
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

/**
 * Compresses clusters on several threads (one per CPU), each with its own compressor: a
 * batch of clusters goes in, one stream per cluster comes out (empty when the cluster does
 * not shrink and must be stored plain). The streams are then stored in order by one thread.
 */
class parallel_compressor {
public:
    parallel_compressor(qcow2::compression type, std::uint64_t cluster_size)
        : type_(type), cs_(static_cast<std::size_t>(cluster_size)) {
        const unsigned n = std::clamp(std::thread::hardware_concurrency(), 1u, 16u);
        for (unsigned i = 0; i < n; ++i) codecs_.emplace_back(type_);
    }

    /// Compresses the `count` clusters of `data` (the last one may be short: it is padded
    /// with zeroes). Returns the first error's message, empty on success.
    std::string run(std::span<const std::byte> data, std::size_t count) {
        streams_.resize(count);
        std::atomic<std::size_t> next{0};
        std::mutex lock;
        std::string first_error;
        const auto work = [&](qcow2::codec::cluster_compressor& codec) {
            std::vector<std::byte> padded(cs_);
            for (std::size_t i; (i = next.fetch_add(1)) < count;) {
                auto in = data.subspan(i * cs_, std::min(cs_, data.size() - i * cs_));
                if (in.size() < cs_) { // the last cluster of the disk reads as zeroes after its end
                    std::copy(in.begin(), in.end(), padded.begin());
                    std::fill(padded.begin() + static_cast<std::ptrdiff_t>(in.size()), padded.end(), std::byte{0});
                    in = padded;
                }
                auto& out = streams_[i];
                out.resize(cs_ - 1);
                auto n = codec.compress(in, out);
                if (n) out.resize(*n);
                else if (n.error().is(qcow2::errc::not_compressible)) out.clear();
                else {
                    const std::lock_guard<std::mutex> g(lock);
                    if (first_error.empty()) first_error = n.error().what();
                }
            }
        };
        const std::size_t helpers = std::min<std::size_t>(codecs_.size(), count) - 1;
        std::vector<std::thread> pool;
        for (std::size_t t = 1; t <= helpers; ++t) pool.emplace_back([&work, this, t] { work(codecs_[t]); });
        work(codecs_[0]);
        for (auto& t : pool) t.join();
        return first_error;
    }

    /// The stream of cluster `i` of the last batch (empty: store it plain).
    std::span<const std::byte> stream(std::size_t i) const { return streams_[i]; }

private:
    qcow2::compression type_;
    std::size_t cs_;
    std::vector<qcow2::codec::cluster_compressor> codecs_;
    std::vector<std::vector<std::byte>> streams_;
};

/**
 * Reads a guest disk ahead, unit by unit, on a thread of its own, so that reading the next
 * unit overlaps writing this one (the two cores of a small machine both work). A unit the
 * metadata says reads as zeroes is not read. At most `depth` units wait, read, at a time.
 */
class read_ahead {
public:
    struct unit {
        std::uint64_t pos = 0, end = 0;
        bool zero = false;              ///< reads as zeroes (not read)
        std::span<const std::byte> bytes; ///< the unit's bytes otherwise: `data`, or the mapped raw file
        std::vector<std::byte> data;
        std::string error;              ///< set on the last unit when reading failed
    };

    read_ahead(disk& src, std::uint64_t unit_size, std::size_t depth = 2)
        : src_(src), unit_(unit_size), depth_(depth), map_(map_raw(src)), thread_([this] { run(); }) {}
    read_ahead(const read_ahead&) = delete;
    read_ahead& operator=(const read_ahead&) = delete;
    ~read_ahead() {
        {
            const std::lock_guard<std::mutex> g(lock_);
            stop_ = true;
        }
        changed_.notify_all();
        thread_.join();
        if (!map_.empty()) ::munmap(const_cast<std::byte*>(map_.data()), map_.size());
    }

    /// The next unit in order, or nothing after the last one.
    std::optional<unit> next() {
        std::unique_lock<std::mutex> g(lock_);
        changed_.wait(g, [&] { return !ready_.empty() || done_; });
        if (ready_.empty()) return std::nullopt;
        unit u = std::move(ready_.front());
        ready_.pop_front();
        changed_.notify_all();
        return u;
    }

    /// Gives a unit's buffer back for reuse.
    void recycle(std::vector<std::byte>&& buf) {
        const std::lock_guard<std::mutex> g(lock_);
        if (buf.capacity()) spare_.push_back(std::move(buf));
    }

private:
    void run() {
        const std::uint64_t size = src_.size();
        for (std::uint64_t pos = 0; pos < size;) {
            unit u;
            u.pos = pos;
            u.end = std::min(size, pos + unit_);
            u.zero = true;
            // A zero run that covers whole units goes as one unit (a sparse terabyte is a few
            // units, not a million hand-overs between the threads).
            if (auto run = src_.status(pos, size - pos); run && run->zero() && run->length >= unit_)
                u.end = run->length >= size - pos ? size : pos + run->length / unit_ * unit_;
            // The runs of the unit: only those that may hold data are read.
            runs_.clear();
            for (std::uint64_t at = pos; at < u.end;) {
                auto run = src_.status(at, u.end - at);
                if (!run) {
                    u.error = "error while reading block status at offset " + std::to_string(at) + ": " + run.error().what();
                    break;
                }
                runs_.push_back({at, run->length, run->zero()});
                u.zero = u.zero && run->zero();
                at += run->length;
            }
            if (u.error.empty() && !u.zero && u.end <= map_.size()) {
                // A raw file mapped into memory is read where it is: one copy fewer (the write's),
                // with the page tables filled here, on this thread.
                u.bytes = map_.subspan(static_cast<std::size_t>(u.pos), static_cast<std::size_t>(u.end - u.pos));
#ifdef MADV_POPULATE_READ
                (void)::madvise(const_cast<std::byte*>(u.bytes.data()), u.bytes.size(), MADV_POPULATE_READ);
#endif
            } else if (u.error.empty() && !u.zero) {
                {
                    const std::lock_guard<std::mutex> g(lock_);
                    if (!spare_.empty()) {
                        u.data = std::move(spare_.back());
                        spare_.pop_back();
                    }
                }
                u.data.resize(static_cast<std::size_t>(u.end - u.pos));
                for (const auto& r : runs_) {
                    const auto part = std::span(u.data).subspan(static_cast<std::size_t>(r.at - u.pos), static_cast<std::size_t>(r.length));
                    if (r.zero) {
                        std::fill(part.begin(), part.end(), std::byte{0});
                    } else if (auto rd = src_.read(r.at, part); !rd) {
                        u.error = "error while reading at byte " + std::to_string(r.at) + ": " + rd.error().what();
                        break;
                    }
                }
                u.bytes = u.data;
            }
            const bool failed = !u.error.empty();
            std::unique_lock<std::mutex> g(lock_);
            changed_.wait(g, [&] { return ready_.size() < depth_ || stop_; });
            if (stop_) return;
            ready_.push_back(std::move(u));
            changed_.notify_all();
            if (failed) break;
            pos = ready_.back().end;
        }
        const std::lock_guard<std::mutex> g(lock_);
        done_ = true;
        changed_.notify_all();
    }

    /// The whole raw file of `src` mapped read-only (the guest disk up to the file's last whole
    /// page), or nothing (a qcow2 source, or mmap refused: then units are read).
    static std::span<const std::byte> map_raw(disk& src) {
        auto* raw = src.raw();
        if (!raw) return {};
        std::uint64_t n = 0;
        if (raw->size(n) || n == 0 || n > std::numeric_limits<std::size_t>::max()) return {};
        void* p = ::mmap(nullptr, static_cast<std::size_t>(n), PROT_READ, MAP_SHARED, raw->native_handle(), 0);
        if (p == MAP_FAILED) return {};
        return {static_cast<const std::byte*>(p), static_cast<std::size_t>(n)};
    }

    struct run_info {
        std::uint64_t at, length;
        bool zero;
    };

    disk& src_;
    std::uint64_t unit_;
    std::size_t depth_;
    std::vector<run_info> runs_; // the reading thread's
    std::span<const std::byte> map_;
    std::mutex lock_;
    std::condition_variable changed_;
    std::deque<unit> ready_;
    std::vector<std::vector<std::byte>> spare_;
    bool stop_ = false, done_ = false;
    std::thread thread_; // last: started once everything above exists
};

/**
 * Copies the guest disk of `src` into the qcow2 image `dst`; the error message, empty on success.
 *
 * Works in 2 MiB units of whole clusters of `dst`: a unit the metadata says reads as zeroes
 * is not read; in the others, clusters that read as zeroes are skipped when `fresh` (`dst`
 * reads as zero: see the two `convert_to_qcow2`) and zeroed otherwise, and the rest is
 * written, in runs of contiguous clusters, or one compressed cluster at a time when `compressed`.
 */
inline std::string copy_into_qcow2(disk& src, qcow2::image& dst, bool fresh, bool compressed, progress_meter& meter) {
    const std::uint64_t size = src.size();
    const std::uint64_t cs = dst.cluster_size();
    // 2 MiB units, read one ahead; compressed output in 1 MiB units, which still give every
    // thread clusters to compress and keep the memory under qemu-img's.
    const std::uint64_t unit = std::max<std::uint64_t>(cs, compressed ? std::uint64_t{1} << 20 : std::uint64_t{2} << 20);
    std::optional<parallel_compressor> squeeze;
    if (compressed) squeeze.emplace(dst.header().compression_kind(), cs);
    const auto write_failed = [](std::uint64_t at, const qcow2::error& e) {
        return "error while writing at byte " + std::to_string(at) + ": " + e.what();
    };
    // [begin, end) reads as zeroes: nothing to do in a new image, else zero it.
    const auto zeroes = [&](std::uint64_t begin, std::uint64_t end) -> std::string {
        if (fresh || begin == end) return {};
        if (auto r = dst.write_zeroes(begin, end - begin, qcow2::zero_mode::unmap); !r)
            return write_failed(begin, r.error());
        return {};
    };
    read_ahead reader(src, unit);
    while (auto u = reader.next()) {
        if (!u->error.empty()) return u->error;
        const std::uint64_t pos = u->pos, end = u->end;
        if (u->zero) {
            if (auto err = zeroes(pos, end); !err.empty()) return err;
            meter.update(end, size);
            continue;
        }
        const std::span<const std::byte> data = u->bytes;
        // Runs of clusters that are all zeroes, and of clusters that are not.
        std::uint64_t run_start = pos;
        bool run_zero = true;
        const auto flush_run = [&](std::uint64_t run_end) -> std::string {
            if (run_zero) return zeroes(run_start, run_end);
            const auto part =
                data.subspan(static_cast<std::size_t>(run_start - pos), static_cast<std::size_t>(run_end - run_start));
            if (compressed) {
                // Compressed on every CPU, stored in order. A last cluster that SRC ends inside
                // is compressed only when it is also the last of DST (then it reads as zeroes
                // after SRC's end); else it is written plain, keeping what DST holds there.
                const std::size_t count = static_cast<std::size_t>((run_end - run_start + cs - 1) / cs);
                if (std::string err = squeeze->run(part, count); !err.empty()) return "error while compressing: " + err;
                for (std::size_t i = 0; i < count; ++i) {
                    const std::uint64_t at = run_start + i * cs;
                    const auto n = static_cast<std::size_t>(std::min(cs, run_end - at));
                    const auto cluster = part.subspan(static_cast<std::size_t>(at - run_start), n);
                    const auto stream = squeeze->stream(i);
                    auto r = n != cs && at + n != dst.size() ? dst.write(at, cluster)
                             : stream.empty()                 ? dst.write(at, cluster)
                                                              : dst.write_precompressed(at, stream);
                    if (!r) return write_failed(at, r.error());
                }
            } else if (auto r = dst.write(run_start, part); !r) {
                return write_failed(run_start, r.error());
            }
            return {};
        };
        for (std::uint64_t at = pos; at < end;) {
            const std::uint64_t next = std::min(end, at + cs);
            const bool zero =
                is_zero(data.subspan(static_cast<std::size_t>(at - pos), static_cast<std::size_t>(next - at)));
            if (zero != run_zero) {
                if (auto err = flush_run(at); !err.empty()) return err;
                run_start = at;
                run_zero = zero;
            }
            at = next;
        }
        if (auto err = flush_run(end); !err.empty()) return err;
        meter.update(end, size);
        if (u->data.empty()) disk::release(u->bytes); // the mapped raw file
        reader.recycle(std::move(u->data));
    }
    return {};
}

/// Copies `src` into `dst`, which may hold anything: zero runs of `src` are zeroed in `dst`.
inline std::string convert_to_qcow2(disk& src, qcow2::image& dst, bool compressed, progress_meter& meter) {
    return copy_into_qcow2(src, dst, false, compressed, meter);
}

/// Copies `src` into `dst`, proven to read as zero in every cluster of its own (a new image,
/// or one whose all-zero bit is set): zero runs of `src` are skipped, unless a backing file
/// not known to be zero shows through them. The image, no longer a proof, goes to `out`.
inline std::string convert_to_qcow2(disk& src, qcow2::zeroed<qcow2::image>&& dst, std::optional<qcow2::image>& out, bool compressed,
                                    progress_meter& meter) {
    const auto* backing = dst->backing_image();
    const bool reads_zero = !dst->has_backing() || (backing && qcow2::known_zeroes(*backing));
    out.emplace(std::move(dst).release());
    return copy_into_qcow2(src, *out, reads_zero, compressed, meter);
}

/// True when DST is a stream, written in order only: "-" (stdout), or a pipe or character
/// device given by name (`/dev/stdout` when it is a pipe, a FIFO made with mkfifo).
inline bool is_stream_destination(const std::string& path) {
    if (path == "-") return true;
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode));
}

/// A stream destination: stdout ("-"), or a pipe or character device opened by name.
class stream_output {
public:
    /// Opens `path` (stdout for "-") for writing; prints the error on failure.
    static std::optional<stream_output> open(const std::string& path) {
        stream_output o;
        if (path == "-") {
            o.fd_ = STDOUT_FILENO;
            return o;
        }
        do {
            o.fd_ = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
        } while (o.fd_ < 0 && errno == EINTR);
        if (o.fd_ < 0) {
            fail("Could not open '" + path + "': " + std::strerror(errno));
            return std::nullopt;
        }
        o.owned_ = true;
        return o;
    }

    stream_output(stream_output&& o) noexcept
        : fd_(std::exchange(o.fd_, -1)), owned_(std::exchange(o.owned_, false)), written_(o.written_) {}
    stream_output& operator=(stream_output&&) = delete;
    ~stream_output() {
        if (owned_ && fd_ >= 0) ::close(fd_);
    }

    /// True when the destination is a terminal.
    bool is_terminal() const noexcept { return ::isatty(fd_) == 1; }

    /// Writes all of `in` after what was written before; the error message, empty on success.
    std::string write(std::span<const std::byte> in) {
        const std::byte* p = in.data();
        std::size_t left = in.size();
        while (left > 0) {
            const ssize_t r = ::write(fd_, p, left);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                const int e = r < 0 ? errno : EIO;
                return "error while writing at byte " + std::to_string(written_) + ": " + std::strerror(e);
            }
            const auto n = static_cast<std::size_t>(r);
            p += n;
            left -= n;
            written_ += n;
        }
        return {};
    }

    /// Closes a destination opened by name (stdout stays open), reporting a failure of close.
    std::error_code close() {
        if (!owned_) return {};
        owned_ = false;
        const int fd = std::exchange(fd_, -1);
        if (fd >= 0 && ::close(fd) != 0 && errno != EINTR) return {errno, std::system_category()};
        return {};
    }

private:
    stream_output() = default;
    int fd_ = -1;
    bool owned_ = false;
    std::uint64_t written_ = 0;
};

/// `parallel_compressor` as the library's `batch_compressor`; its error message goes to `failure`.
struct parallel_batch_compressor {
    parallel_compressor& squeeze;
    std::string& failure;
    qcow2::result<void> compress(std::span<const std::byte> clusters, std::size_t cluster_size) {
        if (std::string err = squeeze.run(clusters, clusters.size() / cluster_size); !err.empty()) {
            failure = "error while compressing: " + err;
            return qcow2::error{qcow2::errc::invalid_compressed_data, err};
        }
        return {};
    }
    std::span<const std::byte> stream(std::size_t i) const { return squeeze.stream(i); }
};
static_assert(qcow2::batch_compressor<parallel_batch_compressor>);

/**
 * The first pass of a streamed convert: tells `w` which clusters of `src` hold data (those
 * the metadata does not say read as zeroes and a scan does not find all zeroes) and, with
 * `squeeze`, the length of each one's compressed stream. Progress runs to half of `total`
 * (the second pass does the other half).
 * The error message, empty on success.
 */
inline std::string scan_for_stream(disk& src, qcow2::stream_writer& w, parallel_compressor* squeeze, progress_meter& meter,
                                   std::uint64_t total) {
    const std::uint64_t cs = w.cluster_size();
    const std::uint64_t unit = std::max<std::uint64_t>(cs, squeeze ? std::uint64_t{1} << 20 : std::uint64_t{2} << 20);
    read_ahead reader(src, unit);
    while (auto u = reader.next()) {
        if (!u->error.empty()) return u->error;
        const std::span<const std::byte> data = u->bytes;
        for (std::uint64_t at = u->pos; !u->zero && at < u->end;) {
            const auto cluster_at = [&](std::uint64_t p) {
                return data.subspan(static_cast<std::size_t>(p - u->pos), static_cast<std::size_t>(std::min(cs, u->end - p)));
            };
            if (is_zero(cluster_at(at))) {
                at += cs;
                continue;
            }
            std::uint64_t end = at + cs; // a run of clusters that hold data
            while (end < u->end && !is_zero(cluster_at(end))) end += cs;
            end = std::min(end, u->end);
            const std::uint64_t count = (end - at + cs - 1) / cs;
            qcow2::result<void> r;
            if (!squeeze) {
                r = w.add_clusters(at / cs, count);
            } else {
                const auto part = data.subspan(static_cast<std::size_t>(at - u->pos), static_cast<std::size_t>(end - at));
                if (std::string err = squeeze->run(part, static_cast<std::size_t>(count)); !err.empty())
                    return "error while compressing: " + err;
                for (std::size_t i = 0; r && i < count; ++i) r = w.add_cluster(at / cs + i, squeeze->stream(i).size());
            }
            if (!r) return r.error().what();
            at = end;
        }
        meter.update(u->end, total);
        if (u->data.empty()) disk::release(u->bytes); // the mapped raw file
        reader.recycle(std::move(u->data));
    }
    return {};
}

/**
 * `convert -O qcow2 SRC DST` onto a stream DST (`-`, a pipe, a character device): a new
 * image written front to back by `qcow2::stream_writer`, after a first pass over SRC that
 * finds its data clusters (and, with `compressed`, measures their compressed streams); the
 * second pass reads them again (and compresses them again) as it writes. The same SRC and
 * options give the same bytes. Returns the exit status; errors are printed.
 */
inline int convert_to_stream(disk& src, const std::string& dst, const std::vector<std::string>& lists, bool compressed,
                             bool show_progress) {
    create_opts opts;
    for (const auto& l : lists)
        if (std::string err = opts.parse(l); !err.empty()) return fail(err), 1;
    if (opts.has("backing_file"))
        return fail(dst + ": error while converting qcow2: a streamed image cannot have a backing file (-o backing_file)"), 1;
    opts.set_number("size", src.size());
    if (const auto* p = opts.text("preallocation"); compressed && p && *p != "off")
        return fail("Compression and preallocation not supported at the same time"), 1;
    qcow2::create_options o;
    if (std::string err = opts.to_library(o); !err.empty()) return fail(dst + ": error while converting qcow2: " + err), 1;
    if (compressed && !qcow2::codec::cluster_compressor::available(o.compression_type))
        return fail(dst + ": error while converting qcow2: compression type not supported by this build"), 1;
    auto w = qcow2::stream_writer::make(o, src.size(), compressed);
    if (!w) return fail(dst + ": error while converting qcow2: " + create_error_text(w.error(), o)), 1;
    auto out = stream_output::open(dst);
    if (!out) return 1;
    if (out->is_terminal())
        return fail(dst + ": error while converting qcow2: refusing to write a qcow2 image to a terminal (redirect it to a file or a pipe)"), 1;

    const std::uint64_t size = src.size(), total = 2 * size;
    progress_meter meter(show_progress);
    std::optional<parallel_compressor> squeeze;
    if (compressed) squeeze.emplace(o.compression_type, w->cluster_size());
    if (std::string err = scan_for_stream(src, *w, compressed ? &*squeeze : nullptr, meter, total); !err.empty())
        return fail(err), 1;
    if (auto l = w->finish(); !l) return fail(dst + ": error while converting qcow2: " + create_error_text(l.error(), o)), 1;

    std::string failure; // the reader's, sink's or compressor's message, in the words of convert
    auto read = [&](std::uint64_t at, std::span<std::byte> buf) -> qcow2::result<void> {
        auto r = src.read(at, buf);
        if (!r) {
            failure = "error while reading at byte " + std::to_string(at) + ": " + r.error().what();
            return r;
        }
        meter.update(size + at + buf.size(), total);
        return {};
    };
    auto sink = [&](std::span<const std::byte> b) -> qcow2::result<void> {
        if (std::string err = out->write(b); !err.empty()) {
            failure = std::move(err);
            return qcow2::error{qcow2::errc::io_error, failure};
        }
        return {};
    };
    qcow2::result<void> r;
    if (compressed) r = w->write(read, sink, parallel_batch_compressor{*squeeze, failure}, std::size_t{1} << 20);
    else r = w->write(read, sink, qcow2::serial_compressor(o.compression_type), std::size_t{2} << 20);
    if (!r) return fail(failure.empty() ? r.error().what() : failure), 1;
    if (auto ec = out->close()) return fail("error while closing '" + dst + "': " + ec.message()), 1;
    meter.finish();
    return 0;
}

inline int convert_command(const std::vector<std::string>& args) {
    std::string in_format, out_format = "raw", value;
    std::vector<std::string> lists;
    bool show_progress = false, compressed = false, skip_create = false;
    // Like qemu-img's -m (8 coroutines), but threads: one per CPU, at most 4, by default.
    unsigned workers = std::clamp(std::thread::hardware_concurrency(), 1u, 4u);
    std::vector<std::string> files;
    bool options_done = false, quiet = false;
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
        } else if (take_value(args, k, "-o", value)) {
            if (!create_opts::valid_list(value)) return 1;
            lists.push_back(value);
        } else if (take_value(args, k, "-m", value)) {
            char* end = nullptr;
            const unsigned long n = std::strtoul(value.c_str(), &end, 10);
            if (value.empty() || *end != '\0' || n < 1 || n > 16)
                return fail("Invalid number of coroutines. Allowed number of coroutines is between 1 and 16"), 1;
            workers = static_cast<unsigned>(n);
        } else if (a == "-c") {
            compressed = true;
        } else if (a == "-n") {
            skip_create = true;
        } else if (a == "-p") {
            show_progress = true;
        } else if (a == "-q") {
            quiet = true; // only progress would be printed besides errors
        } else if (a == "-U" || a == "--force-share") {
            // this tool takes no locks
        } else if (a == "-B") {
            return fail("convert: backing files for the output (-B) are not built"), 1;
        } else {
            return unknown_option("convert", a);
        }
    }
    if (quiet) show_progress = false; // as in qemu-img
    if (create_opts::wants_help(lists)) {
        if (out_format != "qcow2") return fail("convert: -o is supported with -O qcow2 only"), 1;
        create_opts::print_help();
        return 0;
    }
    if (skip_create && !lists.empty()) return fail("-o has no effect when skipping image creation"), 1;
    if (!in_format.empty() && in_format != "qcow2" && in_format != "raw")
        return fail("Unknown file format '" + in_format + "'"), 1;
    if (files.size() < 2) return fail("Must specify image file name"), 1;
    if (files.size() > 2) return fail("convert: only one source image is supported"), 1;
    const std::string& dst = files[1];

    auto src = disk::open(files[0], in_format);
    if (!src) return 1;
    if (out_format != "raw" && out_format != "qcow2") return fail("Unknown file format '" + out_format + "'"), 1;
    // A stream (stdout as "-", a pipe, a character device) takes a qcow2 image written front to back.
    if (out_format == "qcow2" && is_stream_destination(dst)) {
        if (skip_create) return fail("convert: -n cannot write over a stream ('" + dst + "')"), 1;
        return convert_to_stream(*src, dst, lists, compressed, show_progress);
    }

    if (out_format == "raw") {
        if (!lists.empty()) return fail("convert: -o is supported with -O qcow2 only"), 1;
        if (compressed) return fail("Compression not supported for this file format"), 1;
        auto out = skip_create ? raw_output::open_existing(dst, src->size()) : raw_output::create(dst, src->size());
        if (!out) return 1;
        progress_meter meter(show_progress);
        if (!convert_to_raw(*src, *out, meter, workers)) return 1;
        if (auto ec = out->close()) return fail("error while closing '" + dst + "': " + ec.message()), 1;
        meter.finish();
        return 0;
    }

    std::optional<qcow2::image> img;
    std::optional<qcow2::zeroed<qcow2::image>> proof; // DST reads as zero: set instead of img
    if (skip_create) {
        auto file = qcow2::io::posix_file::open(dst, qcow2::io::open_mode::read_write);
        if (!file) return open_failed(dst, file.error());
        if (probe_format(*file) != "qcow2")
            return fail("Could not open '" + dst + "': Image is not in qcow2 format"), 1;
        auto opened = qcow2::image::open(std::move(*file), qcow2::open_options{.writable = true},
                                         qcow2::posix_resolver(dst, {.allow_absolute = true, .allow_outside = true}));
        if (!opened) return open_failed(dst, opened.error());
        if (opened->size() < src->size()) return fail("output file is smaller than input file"), 1;
        // With its all-zero bit the image proves it reads as zero, and zero runs need no writes.
        if (auto z = qcow2::trust_zeroes(*opened)) proof.emplace(std::move(*z));
        else img.emplace(std::move(*opened));
    } else {
        create_opts opts;
        for (const auto& l : lists)
            if (std::string err = opts.parse(l); !err.empty()) return fail(err), 1;
        if (opts.has("backing_file"))
            return fail("convert: backing files for the output (-o backing_file) are not built"), 1;
        opts.set_number("size", src->size());
        if (const auto* p = opts.text("preallocation"); compressed && p && *p != "off")
            return fail("Compression and preallocation not supported at the same time"), 1;
        qcow2::create_options o;
        std::string err = opts.to_library(o);
        std::optional<qcow2::zeroed<qcow2::image>> z;
        if (err.empty()) z = create_image(dst, o, err);
        if (!z) return fail(dst + ": error while converting qcow2: " + err), 1;
        proof.emplace(std::move(*z));
    }
    progress_meter meter(show_progress);
    std::string err = proof ? convert_to_qcow2(*src, std::move(*proof), img, compressed, meter)
                            : convert_to_qcow2(*src, *img, compressed, meter);
    if (!err.empty()) return fail(err), 1;
    if (auto r = img->close(); !r) return fail("error while closing '" + dst + "': " + r.error().what()), 1;
    meter.finish();
    return 0;
}

} // namespace cli
