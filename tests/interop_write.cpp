// SPDX-License-Identifier: MIT
// Interop with QEMU for the write path: images this library creates and writes (over
// `io::posix_file`, with `posix_resolver` for backing and data files) must pass
// `qemu-img check` with no errors and no leaks, and must read exactly like a raw "shadow"
// that received the same operations (`qemu-img compare`, and our own `read`).
//
//   1. Randomized workloads (fixed seeds, std::mt19937_64): writes of 1 byte to several
//      clusters at unaligned offsets (many next to L2 table boundaries and the end of the
//      disk), zero writes in both modes, discards, compressed writes, resizes (growing and
//      shrinking), flushes, close + reopen, `qemu-img check` of the open image after a flush,
//      and qemu-io writing into the closed image between our operations; for every cluster
//      size, refcount width, extended L2, version 2, zstd, lazy refcounts, every
//      preallocation mode, external data files (raw or not), over backing chains made by
//      qemu-img/qemu-io (larger and smaller than the overlay, two deep, a raw backing file),
//      and on images qemu-img created. Each workload runs in batches; after each batch the
//      image is closed and checked, then reopened for the next batch. The shadow follows
//      QEMU's semantics: a discard zeroes the whole clusters of its range (and the partial
//      last cluster of the disk when the range reaches the end), except in a version 2 image
//      with a backing file, where it changes nothing (as `qemu-io discard` there); growing
//      reads zero in the new range, even over a longer backing file; a raw data file holds
//      the disk. One workload uses 512 B clusters with 64-bit refcounts so that the refcount
//      table grows, and asserts that it did.
//   2. Cross-reading: what we write, `qemu-io read -P` verifies; what qemu-io writes
//      (`write -P`, `write -z`, `write -z -u`, `write -c`, `discard`) into images we created,
//      we read back; zlib and zstd compressed clusters both ways (counted by qemu-img check).
//   3. Refused modifications (read-only image, corrupt bit with and without
//      `open_options::repair`, past the virtual size, misaligned or wrongly sized compressed
//      writes, compressed writes with an external data file, resizes to sizes not a multiple
//      of 512): the right errc, and the file's bytes unchanged (the whole file is compared
//      after each). A writable open of an image left dirty with a leaked cluster repairs it,
//      as QEMU does.
//   4. Images with internal snapshots made by `qemu-img snapshot -c`: our writes (and, in
//      version 3, resizes) copy shared clusters and L2 tables (check clean, the active image
//      equals the shadow); a version 2 image with snapshots refuses resizing;
//      `qemu-img snapshot -a` brings each snapshot's contents (and size) back; our writes go
//      on after the revert and after `qemu-img snapshot -d`.
//   5. Lazy refcounts: the dirty bit is set on disk while the image is open and written,
//      and clear after close(); an image whose writer died (fork, _exit) is repaired by our
//      writable open as by QEMU's, and both give the same disk.
//
// Environment:
//   QCOW2_WRITE_OPS=N     operations per batch of every randomized workload and of the
//                         snapshot test (default: each workload's own count, 150 to 330,
//                         three batches; the whole file takes about 25 s in a Debug build
//                         on tmpfs, 55 s under ASan). Larger values run longer.
//   QCOW2_WRITE_SEED=S    added to every workload's (and the snapshot test's) seed, to
//                         explore other sequences.
//   QCOW2_WRITE_REDUCE=1  when a workload fails, shrink its operation list to a minimal one
//                         that still fails (delta debugging; slow) and print it to stderr.
//   QCOW2_KEEP_TEST_FILES keep the temporary directories (support/process.hpp).
//   TMPDIR                where the temporary directories go; when it is not set, /dev/shm
//                         if it has 2 GiB free (the workloads flush often, and fsync on a
//                         disk would dominate their run time: about 2 minutes), else /tmp.
// A failure names the workload, its seed, the batch and the operation; run one workload
// with `qcow2_interop_tests "write interop: ..." -c "<workload name>"`.
#include "qcow2/qcow2.hpp"

#include "support/json.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

namespace {

namespace json = qcow2_test::json;
using qcow2_test::command_line;
using qcow2_test::process_result;

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB;
using argv_t = std::vector<std::string>;
using bytes = std::vector<std::byte>;

std::string hex_byte(unsigned v) {
    char b[8];
    std::snprintf(b, sizeof b, "0x%02x", v & 0xFFu);
    return b;
}

std::uint64_t env_u64(const char* name, std::uint64_t fallback) {
    const char* v = std::getenv(name);
    if (!v || !*v) return fallback;
    return std::strtoull(v, nullptr, 0);
}

/// The directory the tests' temporary directories go in (nullptr: temp_dir's default, $TMPDIR or /tmp).
const char* work_base() {
    static const std::string base = [] {
        if (const char* t = std::getenv("TMPDIR"); t && *t) return std::string();
        struct statvfs st {};
        if (::statvfs("/dev/shm", &st) == 0 && ::access("/dev/shm", W_OK) == 0 &&
            static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize >= 2 * 1024 * MiB)
            return std::string("/dev/shm");
        return std::string();
    }();
    return base.empty() ? nullptr : base.c_str();
}

/// A run's output, for messages.
std::string describe(const argv_t& argv, const process_result& r) {
    return command_line(argv) + " -> exit " + std::to_string(r.status) + "\nstdout: " + r.out + "\nstderr: " + r.err;
}

/// The whole file as bytes.
std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

/// "" when the file at `path` still holds `before`, else where it changed.
std::string changed(const std::string& path, const std::string& before) {
    const std::string now = slurp(path);
    if (now == before) return {};
    if (now.size() != before.size())
        return path + " changed size: " + std::to_string(before.size()) + " -> " + std::to_string(now.size()) + " bytes";
    std::size_t i = 0;
    while (now[i] == before[i]) ++i;
    return path + " changed at byte " + std::to_string(i);
}

/// Eight big-endian bytes of the file at `offset`.
std::uint64_t peek64(const std::string& path, std::uint64_t offset) {
    std::ifstream f(path, std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    unsigned char b[8]{};
    f.read(reinterpret_cast<char*>(b), 8);
    std::uint64_t v = 0;
    for (unsigned char c : b) v = (v << 8) | c;
    return v;
}

void poke64(const std::string& path, std::uint64_t offset, std::uint64_t v) {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(offset));
    char b[8];
    for (int i = 7; i >= 0; --i) {
        b[i] = static_cast<char>(v & 0xFF);
        v >>= 8;
    }
    f.write(b, 8);
    REQUIRE(f.good());
}

/// The incompatible feature bits in the header of the file (offset 72).
std::uint64_t incompatible_bits(const std::string& path) { return peek64(path, 72); }

// ------------------------------------------------------------------ the shadow disk

/**
 * A sparse in-memory disk: what a raw file that received the same operations would hold.
 * Pages that were never written (or were zeroed whole) are absent and read as zero.
 */
class sparse_disk {
public:
    static constexpr std::uint64_t page = 64 * KiB;

    explicit sparse_disk(std::uint64_t size = 0) : size_(size) {}

    std::uint64_t size() const noexcept { return size_; }

    void write(std::uint64_t off, std::span<const std::byte> d) {
        std::size_t i = 0;
        while (i < d.size()) {
            const std::uint64_t pos = off + i, in = pos % page;
            const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(page - in, d.size() - i));
            bytes& pg = pages_[pos / page];
            if (pg.empty()) pg.assign(static_cast<std::size_t>(page), std::byte{0});
            std::memcpy(pg.data() + in, d.data() + i, n);
            i += n;
        }
    }

    void fill(std::uint64_t off, std::uint64_t len, std::byte v) {
        bytes b(static_cast<std::size_t>(std::min(len, 4 * MiB)), v);
        for (std::uint64_t done = 0; done < len;) {
            const std::uint64_t n = std::min<std::uint64_t>(b.size(), len - done);
            write(off + done, std::span<const std::byte>(b).first(static_cast<std::size_t>(n)));
            done += n;
        }
    }

    void zero(std::uint64_t off, std::uint64_t len) {
        const std::uint64_t end = off + len;
        for (auto it = pages_.lower_bound(off / page); it != pages_.end() && it->first * page < end;) {
            const std::uint64_t ps = it->first * page;
            const std::uint64_t lo = std::max(off, ps), hi = std::min(end, ps + page);
            if (lo == ps && hi == ps + page) {
                it = pages_.erase(it);
            } else {
                std::memset(it->second.data() + (lo - ps), 0, static_cast<std::size_t>(hi - lo));
                ++it;
            }
        }
    }

    /// Bytes `[off, off + out.size())`; bytes past the size read as zero.
    void read(std::uint64_t off, std::span<std::byte> out) const {
        std::size_t i = 0;
        while (i < out.size()) {
            const std::uint64_t pos = off + i, in = pos % page;
            const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(page - in, out.size() - i));
            const auto it = pages_.find(pos / page);
            if (it == pages_.end() || pos >= size_) std::memset(out.data() + i, 0, n);
            else std::memcpy(out.data() + i, it->second.data() + in, n);
            i += n;
        }
        if (off + out.size() > size_) {
            const std::uint64_t from = std::max(off, size_);
            std::memset(out.data() + (from - off), 0, static_cast<std::size_t>(off + out.size() - from));
        }
    }

    /// `[off, off + len)` becomes what `src` holds there (zero past its size).
    void copy_from(const sparse_disk& src, std::uint64_t off, std::uint64_t len) {
        bytes b(static_cast<std::size_t>(page));
        for (std::uint64_t done = 0; done < len;) {
            const std::uint64_t pos = off + done;
            const std::uint64_t n = std::min(page - pos % page, len - done);
            auto s = std::span<std::byte>(b).first(static_cast<std::size_t>(n));
            src.read(pos, s);
            if (std::all_of(s.begin(), s.end(), [](std::byte x) { return x == std::byte{0}; })) zero(pos, n);
            else write(pos, s);
            done += n;
        }
    }

    /// Shrinking drops the bytes past `n`; growing adds zeroes.
    void resize(std::uint64_t n) {
        if (n < size_) zero(n, size_ - n);
        size_ = n;
    }

    /// Writes the disk as a sparse raw file.
    bool save(const std::string& path) const {
        const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0) return false;
        bool ok = ::ftruncate(fd, static_cast<off_t>(size_)) == 0;
        for (const auto& [index, pg] : pages_) {
            const std::uint64_t at = index * page;
            if (at >= size_) break;
            const auto n = static_cast<std::size_t>(std::min(page, size_ - at));
            ok = ok && ::pwrite(fd, pg.data(), n, static_cast<off_t>(at)) == static_cast<ssize_t>(n);
        }
        ok = ::close(fd) == 0 && ok;
        return ok;
    }

private:
    std::uint64_t size_ = 0;
    std::map<std::uint64_t, bytes> pages_;
};

/// Where two buffers first differ, for messages ("" when equal).
std::string first_difference(std::span<const std::byte> got, std::span<const std::byte> want, std::uint64_t base) {
    if (std::memcmp(got.data(), want.data(), got.size()) == 0) return {};
    std::size_t i = 0;
    while (got[i] == want[i]) ++i;
    std::size_t j = i;
    while (j < got.size() && got[j] != want[j]) ++j;
    return "guest offset " + std::to_string(base + i) + ": read " + hex_byte(static_cast<unsigned>(got[i])) + ", expected " +
           hex_byte(static_cast<unsigned>(want[i])) + " (first differing run: " + std::to_string(j - i) + " bytes)";
}

// ------------------------------------------------------------------ qemu-img as the oracle

/// Runs `argv` in `dir`; "" when it exits 0, else the command and its output.
std::string run_in(const std::string& dir, const argv_t& argv) {
    const auto r = qcow2_test::run(argv, dir);
    return r.ok() ? std::string() : describe(argv, r);
}

/// `qemu-img check --output=json`: "" when it exits 0 and reports no corruption, no leak and
/// no check error; else why not.
std::string qemu_check(const std::string& dir, const std::string& image, json::value* report = nullptr, bool force_share = false) {
    argv_t argv{"qemu-img", "check", "--output=json", "-f", "qcow2"};
    if (force_share) argv.push_back("-U");
    argv.push_back(image);
    const auto r = qcow2_test::run(argv, dir);
    std::string why;
    try {
        const json::value v = json::parse(r.out);
        if (v.find("corruptions")) why += "corruptions: " + v.find("corruptions")->dump() + "; ";
        if (v.find("leaks")) why += "leaks: " + v.find("leaks")->dump() + "; ";
        if (!v.find("check-errors") || v.find("check-errors")->dump() != "0") why += "check errors; ";
        if (report) *report = v;
    } catch (const std::exception& e) {
        why += std::string("no JSON report (") + e.what() + "); ";
    }
    if (!r.ok()) why += "exit status " + std::to_string(r.status) + "; ";
    if (!why.empty()) why += "\n" + describe(argv, r);
    return why;
}

/// `qemu-img compare -f qcow2 -F raw`: "" when identical.
std::string qemu_compare(const std::string& dir, const std::string& image, const std::string& raw,
                         const std::string& format = "qcow2") {
    const argv_t argv{"qemu-img", "compare", "-f", format, "-F", "raw", image, raw};
    const auto r = qcow2_test::run(argv, dir);
    if (r.ok() && r.out.find("Images are identical") != std::string::npos) return {};
    return describe(argv, r);
}

/// Opens `path` with our library (through a resolver for its backing and data files).
qcow2::result<qcow2::image> open_image(const std::string& path, bool writable, bool repair = false) {
    auto f = qcow2::io::posix_file::open(path, writable ? qcow2::io::open_mode::read_write : qcow2::io::open_mode::read_only);
    if (!f) return f.error();
    qcow2::posix_resolver resolver(path);
    qcow2::open_options o;
    o.writable = writable;
    o.repair = repair;
    return qcow2::image::open(std::move(*f), o, resolver);
}

/// Our read of the whole disk against `shadow`: "" when equal.
std::string read_back(qcow2::image& img, const sparse_disk& shadow) {
    if (img.size() != shadow.size())
        return "virtual size " + std::to_string(img.size()) + ", expected " + std::to_string(shadow.size());
    const std::uint64_t chunk = std::max<std::uint64_t>(MiB, img.cluster_size());
    bytes got(static_cast<std::size_t>(chunk)), want(static_cast<std::size_t>(chunk));
    for (std::uint64_t off = 0; off < shadow.size(); off += chunk) {
        const auto n = static_cast<std::size_t>(std::min(chunk, shadow.size() - off));
        auto g = std::span<std::byte>(got).first(n);
        auto w = std::span<std::byte>(want).first(n);
        if (auto r = img.read(off, g); !r) return "read at " + std::to_string(off) + " failed: " + r.error().what();
        shadow.read(off, w);
        if (auto d = first_difference(g, w, off); !d.empty()) return d;
    }
    return {};
}

/// A raw file (the data file of a raw external data image) against `shadow`: "" when equal.
/// It must be at least as long as the disk (QEMU grows it with the disk); bytes past the
/// disk size are not compared.
std::string raw_file_matches(const std::string& path, const sparse_disk& shadow) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return "cannot open " + path;
    const std::uint64_t chunk = MiB;
    bytes got(static_cast<std::size_t>(chunk)), want(static_cast<std::size_t>(chunk));
    std::string why;
    for (std::uint64_t off = 0; off < shadow.size() && why.empty(); off += chunk) {
        const auto n = static_cast<std::size_t>(std::min(chunk, shadow.size() - off));
        std::memset(got.data(), 0, n);
        if (::pread(fd, got.data(), n, static_cast<off_t>(off)) < 0) why = "read error";
        shadow.read(off, std::span<std::byte>(want).first(n));
        if (why.empty()) why = first_difference(std::span<const std::byte>(got).first(n), std::span<const std::byte>(want).first(n), off);
    }
    struct stat st {};
    if (why.empty() && ::fstat(fd, &st) == 0 && static_cast<std::uint64_t>(st.st_size) < shadow.size())
        why = "the file has " + std::to_string(st.st_size) + " bytes, the disk " + std::to_string(shadow.size());
    ::close(fd);
    return why.empty() ? why : path + " is not a raw image of the disk: " + why;
}

// ------------------------------------------------------------------ operations

/// splitmix64: the data of an operation comes from its seed alone, so lists replay.
std::uint64_t mix(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/// `len` bytes made from `seed`: random (most), one repeated byte, zeroes, or a text
/// (compressible); half random, half zero.
bytes make_data(std::uint64_t seed, std::uint64_t len) {
    bytes d(static_cast<std::size_t>(len));
    std::uint64_t x = seed;
    switch (seed % 8) {
    case 0: std::fill(d.begin(), d.end(), static_cast<std::byte>(1 + (seed >> 8) % 255)); break;
    case 1: break; // zeroes
    case 2: {
        const std::string word = "qcow2 text " + std::to_string(seed % 1000) + " ";
        for (std::size_t i = 0; i < d.size(); ++i) d[i] = static_cast<std::byte>(word[(i + i / 4096) % word.size()]);
        break;
    }
    case 3:
        for (std::size_t i = 0; i < d.size() / 2; i += 8) {
            const std::uint64_t v = mix(x);
            std::memcpy(d.data() + i, &v, std::min<std::size_t>(8, d.size() / 2 - i));
        }
        break;
    default:
        for (std::size_t i = 0; i < d.size(); i += 8) {
            const std::uint64_t v = mix(x);
            std::memcpy(d.data() + i, &v, std::min<std::size_t>(8, d.size() - i));
        }
    }
    return d;
}

enum class op_kind { write, zero_keep, zero_unmap, discard, compressed, resize, flush, reopen, check_open, qemu_io, end_batch };

const char* kind_name(op_kind k) {
    switch (k) {
    case op_kind::write: return "write";
    case op_kind::zero_keep: return "zero_keep";
    case op_kind::zero_unmap: return "zero_unmap";
    case op_kind::discard: return "discard";
    case op_kind::compressed: return "compressed";
    case op_kind::resize: return "resize";
    case op_kind::flush: return "flush";
    case op_kind::reopen: return "reopen";
    case op_kind::check_open: return "check_open";
    case op_kind::qemu_io: return "qemu_io";
    case op_kind::end_batch: return "end_batch";
    }
    return "?";
}

/// One operation: `off`/`len` are the guest range (resize: `off` is the new size); the data
/// of writes comes from `seed`.
struct op {
    op_kind kind = op_kind::flush;
    std::uint64_t off = 0;
    std::uint64_t len = 0;
    std::uint64_t seed = 0;
};

std::string to_string(const op& o) {
    return std::string("{") + kind_name(o.kind) + ", " + std::to_string(o.off) + ", " + std::to_string(o.len) + ", " +
           std::to_string(o.seed) + "}";
}

// ------------------------------------------------------------------ workloads

/// What lies below the image.
enum class backing_kind {
    none,
    qcow2, ///< base.qcow2, made by qemu-img create + qemu-io write -P
    chain, ///< mid.qcow2 (qemu-io writes, zero writes) over base.qcow2
    raw,   ///< base.raw, written by qemu-io -f raw
};

struct workload_config {
    std::string name;
    qcow2::create_options create; ///< the image (backing_file is set from `backing`)
    std::uint64_t seed = 1;
    std::size_t ops = 80; ///< per batch
    unsigned batches = 3;
    backing_kind backing = backing_kind::none;
    std::uint64_t backing_size = 0;          ///< size of the image just below
    std::uint64_t backing_cluster = 65536;   ///< its cluster size (qcow2)
    unsigned backing_version = 3;            ///< its version (qcow2)
    std::uint64_t base_size = 0;             ///< chain: size of the bottom image
    std::uint64_t max_write = 0;             ///< longest write (0: four clusters, at most 8 MiB)
    bool resize = true;
    std::uint32_t min_reftable_clusters = 0; ///< the refcount table must have grown to this at the end
    /// When set, qemu-img creates the image with these `-o` options (which must match
    /// `create`, which the operations follow) instead of our `create`.
    std::string qemu_create;
};

/// A uniform integer in [lo, hi].
std::uint64_t uniform(std::mt19937_64& rng, std::uint64_t lo, std::uint64_t hi) {
    return std::uniform_int_distribution<std::uint64_t>(lo, hi)(rng);
}

struct generator {
    const workload_config& cfg;
    std::mt19937_64 rng;
    std::uint64_t size;
    std::uint64_t cs, coverage;

    generator(const workload_config& c, std::uint64_t seed)
        : cfg(c), rng(seed), size(c.create.size), cs(c.create.cluster_size),
          coverage(c.create.cluster_size * (c.create.cluster_size / (c.create.extended_l2 ? 16 : 8))) {}

    /// An offset, often close to the start, to an L2 table boundary or to the end of the disk.
    std::uint64_t offset() {
        const std::uint64_t zone = uniform(rng, 0, 99);
        std::uint64_t o = 0;
        if (zone < 25) {
            o = uniform(rng, 0, size - 1);
        } else if (zone < 45) {
            o = uniform(rng, 0, std::min(size, 8 * cs) - 1);
        } else if (zone < 70 && size > coverage) {
            const std::uint64_t b = uniform(rng, 1, (size - 1) / coverage) * coverage;
            o = b - std::min(b, 3 * cs) + uniform(rng, 0, 6 * cs);
        } else if (zone < 88) {
            o = size - uniform(rng, 1, std::min(size, 4 * cs));
        } else {
            o = uniform(rng, 0, (size - 1) / cs) * cs;
        }
        return std::min(o, size - 1);
    }

    std::uint64_t length(std::uint64_t off) {
        const std::uint64_t max_write = cfg.max_write ? cfg.max_write : std::min(4 * cs, 8 * MiB);
        const std::uint64_t shape = uniform(rng, 0, 99);
        std::uint64_t n;
        if (shape < 35) n = uniform(rng, 1, 512);
        else if (shape < 65) n = uniform(rng, 1, std::min(cs, max_write));
        else if (shape < 88) n = uniform(rng, 1, max_write);
        else n = std::max<std::uint64_t>(1, uniform(rng, 1, std::max<std::uint64_t>(1, max_write / cs)) * cs);
        return std::min(n, size - off);
    }

    std::uint64_t new_size() {
        const std::uint64_t initial = cfg.create.size;
        const std::uint64_t lo = std::max<std::uint64_t>(512, initial / 2 / 512 * 512), hi = (initial + initial / 2) / 512 * 512;
        const std::uint64_t shape = uniform(rng, 0, 99);
        std::uint64_t n;
        if (shape < 30) n = size + uniform(rng, 1, 4 * cs / 512 + 1) * 512; // a little larger
        else if (shape < 50) n = size - std::min(size - 512, uniform(rng, 1, 4 * cs / 512 + 1) * 512); // a little smaller
        else if (shape < 75) n = uniform(rng, lo / cs, hi / cs) * cs;
        else n = uniform(rng, lo / 512, hi / 512) * 512;
        return std::clamp<std::uint64_t>(n, 512, hi);
    }

    std::vector<op> batch(std::size_t count) {
        std::vector<op> ops;
        const bool compressed = cfg.create.data_file.empty();
        while (ops.size() < count) {
            op o;
            o.seed = rng();
            const std::uint64_t k = uniform(rng, 0, 999);
            if (k < 400) o.kind = op_kind::write;
            else if (k < 500) o.kind = op_kind::zero_keep;
            else if (k < 580) o.kind = op_kind::zero_unmap;
            else if (k < 700) o.kind = op_kind::discard;
            else if (k < 800) o.kind = compressed ? op_kind::compressed : op_kind::write;
            else if (k < 850) o.kind = cfg.resize ? op_kind::resize : op_kind::write;
            else if (k < 920) o.kind = op_kind::flush;
            else if (k < 960) o.kind = op_kind::reopen;
            else if (k < 975) o.kind = op_kind::check_open;
            else if (k < 990) o.kind = op_kind::qemu_io;
            else o.kind = op_kind::write;
            switch (o.kind) {
            case op_kind::compressed:
                o.off = offset() / cs * cs;
                o.len = std::min(cs, size - o.off);
                // Mostly compressible data; sometimes random (stored as a plain cluster).
                if (o.seed % 8 >= 4 && uniform(rng, 0, 3) != 0) o.seed = o.seed / 8 * 8 + uniform(rng, 0, 3);
                break;
            case op_kind::resize:
                o.off = new_size();
                size = o.off;
                break;
            case op_kind::flush:
            case op_kind::reopen:
            case op_kind::check_open:
            case op_kind::qemu_io:
            case op_kind::end_batch: break;
            default:
                o.off = offset();
                o.len = length(o.off);
            }
            ops.push_back(o);
        }
        return ops;
    }
};

/// A backing-file write made by qemu-io: `write -P pattern off len`, or `write -z` (pattern 0).
struct backing_write {
    std::uint64_t off, len;
    unsigned pattern;
};

/**
 * One workload: the image in a directory, the shadow, and the operations applied so far.
 * Failures are collected in `problems` (with the operation that failed), not asserted, so
 * that a failing list can be replayed and reduced.
 */
class workload {
public:
    workload(const workload_config& c, std::string dir) : cfg_(c), dir_(std::move(dir)), path_(dir_ + "/image.qcow2") {}

    std::vector<std::string> problems;

    const sparse_disk& shadow() const noexcept { return shadow_; }
    const std::string& path() const noexcept { return path_; }

    bool failed() const noexcept { return !problems.empty(); }

    /// Makes the backing chain and the image.
    bool setup() {
        const bool ok = make_backing();
        if (!ok) return false;
        qcow2::create_options o = cfg_.create;
        switch (cfg_.backing) {
        case backing_kind::none: break;
        case backing_kind::qcow2:
            o.backing_file = "base.qcow2";
            o.backing_format = "qcow2";
            break;
        case backing_kind::chain:
            o.backing_file = "mid.qcow2";
            o.backing_format = "qcow2";
            break;
        case backing_kind::raw:
            o.backing_file = "base.raw";
            o.backing_format = "raw";
            break;
        }
        if (!cfg_.qemu_create.empty()) {
            argv_t argv{"qemu-img", "create", "-q", "-f", "qcow2", "-o", cfg_.qemu_create};
            if (!o.backing_file.empty()) argv.insert(argv.end(), {"-b", o.backing_file, "-F", o.backing_format});
            argv.insert(argv.end(), {"image.qcow2", std::to_string(o.size)});
            where_ = "qemu-img create";
            if (!run(argv)) return false;
            sparse_disk start = backing_view_;
            start.resize(o.size);
            if (cfg_.backing == backing_kind::none) start = sparse_disk(o.size);
            return adopt(start);
        }
        if (!o.data_file.empty()) {
            auto d = qcow2::io::posix_file::open(dir_ + "/" + o.data_file, qcow2::io::open_mode::create);
            if (!d) return problem("creating the data file: " + d.error().what());
        }
        auto f = qcow2::io::posix_file::open(path_, qcow2::io::open_mode::create);
        if (!f) return problem("creating the image file: " + f.error().what());
        qcow2::posix_resolver resolver(path_);
        auto z = qcow2::image::create(std::move(*f), o, resolver);
        if (!z) return problem("create: " + z.error().what());
        img_.emplace(std::move(*z).release());
        shadow_ = backing_view_;
        shadow_.resize(o.size);
        if (cfg_.backing == backing_kind::none) shadow_ = sparse_disk(o.size);
        return true;
    }

    /// Takes the image already at `path()` (made by qemu-img), which reads as `shadow`.
    bool adopt(const sparse_disk& shadow) {
        where_ = "opening the image made by qemu-img";
        shadow_ = shadow;
        return reopen();
    }

    /// Applies `o`; ranges are clipped to the current size (for replays of reduced lists).
    bool apply(op o, const std::string& where) {
        where_ = where + " " + to_string(o);
        if (!img_ && o.kind != op_kind::end_batch && !reopen()) return false;
        const std::uint64_t size = shadow_.size();
        const std::uint64_t cs = cfg_.create.cluster_size;
        switch (o.kind) {
        case op_kind::write:
        case op_kind::zero_keep:
        case op_kind::zero_unmap:
        case op_kind::discard:
            if (o.off >= size) return true;
            o.len = std::min(o.len, size - o.off);
            break;
        case op_kind::compressed:
            if (o.off >= size) return true;
            o.len = std::min(cs, size - o.off);
            break;
        default: break;
        }
        switch (o.kind) {
        case op_kind::write: {
            const bytes d = make_data(o.seed, o.len);
            if (auto r = img_->write(o.off, d); !r) return problem("write failed: " + r.error().what());
            shadow_.write(o.off, d);
            break;
        }
        case op_kind::zero_keep:
        case op_kind::zero_unmap: {
            const auto mode = o.kind == op_kind::zero_keep ? qcow2::zero_mode::keep_allocation : qcow2::zero_mode::unmap;
            if (auto r = img_->write_zeroes(o.off, o.len, mode); !r) return problem("write_zeroes failed: " + r.error().what());
            shadow_.zero(o.off, o.len);
            break;
        }
        case op_kind::discard: {
            if (auto r = img_->discard(o.off, o.len); !r) return problem("discard failed: " + r.error().what());
            // Whole clusters only, and the partial last cluster when the range reaches the end;
            // they read as zero. A version 2 image with a backing file cannot express that, and
            // QEMU 7.2 leaves it unchanged (qemu-io discard there is a no-op; the library does the same).
            const std::uint64_t first = (o.off + cs - 1) / cs * cs;
            const std::uint64_t last = o.off + o.len == size ? size : (o.off + o.len) / cs * cs;
            if (last > first && !(cfg_.create.version == 2 && cfg_.backing != backing_kind::none)) shadow_.zero(first, last - first);
            break;
        }
        case op_kind::compressed: {
            const bytes d = make_data(o.seed, o.len);
            if (auto r = img_->write_compressed(o.off, d); !r) return problem("write_compressed failed: " + r.error().what());
            shadow_.write(o.off, d);
            break;
        }
        case op_kind::resize:
            if (auto r = img_->resize(o.off); !r) return problem("resize failed: " + r.error().what());
            shadow_.resize(o.off);
            break;
        case op_kind::flush:
            if (auto r = img_->flush(); !r) return problem("flush failed: " + r.error().what());
            break;
        case op_kind::reopen:
            if (!close()) return false;
            return reopen();
        case op_kind::check_open:
            if (auto r = img_->flush(); !r) return problem("flush failed: " + r.error().what());
            if (auto why = qemu_check(dir_, "image.qcow2", nullptr, true); !why.empty())
                return problem("qemu-img check of the open image after flush: " + why);
            break;
        case op_kind::qemu_io: return qemu_writes(o.seed);
        case op_kind::end_batch: return verify();
        }
        return true;
    }

    /// Closes the image, lets qemu-io write into it (`write -P`, `write -z`, `write -z -u`,
    /// `discard` of whole clusters), then reopens it.
    bool qemu_writes(std::uint64_t seed) {
        if (!close()) return false;
        std::mt19937_64 rng(seed);
        const std::uint64_t size = shadow_.size(), cs = cfg_.create.cluster_size;
        argv_t argv{"qemu-io", "-f", "qcow2"};
        for (int i = 0; i < 4; ++i) {
            const std::uint64_t kind = uniform(rng, 0, 3);
            if (kind == 3) { // discard of whole clusters
                const std::uint64_t clusters = (size + cs - 1) / cs;
                const std::uint64_t first = uniform(rng, 0, clusters - 1), n = uniform(rng, 1, std::min<std::uint64_t>(4, clusters - first));
                const std::uint64_t off = first * cs, len = std::min(n * cs, size - off);
                argv.insert(argv.end(), {"-c", "discard " + std::to_string(off) + " " + std::to_string(len)});
                if (!(cfg_.create.version == 2 && cfg_.backing != backing_kind::none)) shadow_.zero(off, len);
                continue;
            }
            const std::uint64_t off = uniform(rng, 0, size - 1);
            const std::uint64_t len = std::min(size - off, uniform(rng, 1, 2 * cs + 1000));
            if (kind == 0) {
                const auto pattern = static_cast<unsigned>(uniform(rng, 1, 255));
                argv.insert(argv.end(), {"-c", "write -P " + hex_byte(pattern) + " " + std::to_string(off) + " " + std::to_string(len)});
                shadow_.fill(off, len, static_cast<std::byte>(pattern));
            } else {
                argv.insert(argv.end(), {"-c", std::string(kind == 1 ? "write -z " : "write -z -u ") + std::to_string(off) + " " +
                                                   std::to_string(len)});
                shadow_.zero(off, len);
            }
        }
        argv.push_back("image.qcow2");
        if (auto why = run_in(dir_, argv); !why.empty()) return problem("qemu-io writing into the image: " + why);
        return reopen();
    }

    /// Closes the image, then: qemu-img check is clean, qemu-img compare and our read find
    /// the shadow, a raw data file holds the disk.
    bool verify() {
        if (img_ && !close()) return false;
        if (auto why = qemu_check(dir_, "image.qcow2"); !why.empty()) return problem("qemu-img check: " + why);
        if (!shadow_.save(dir_ + "/shadow.raw")) return problem("cannot write shadow.raw");
        if (auto why = qemu_compare(dir_, "image.qcow2", "shadow.raw"); !why.empty()) return problem("qemu-img compare: " + why);
        auto img = open_image(path_, false);
        if (!img) return problem("reopening read-only: " + img.error().what());
        if (auto why = read_back(*img, shadow_); !why.empty()) return problem("our read differs from the shadow: " + why);
        if (cfg_.create.data_file_raw)
            if (auto why = raw_file_matches(dir_ + "/" + cfg_.create.data_file, shadow_); !why.empty()) return problem(why);
        if (const std::uint64_t n = peek64(path_, 56) >> 32; cfg_.min_reftable_clusters && batches_verified_ + 1 == cfg_.batches &&
                                                              n < cfg_.min_reftable_clusters)
            return problem("the refcount table has " + std::to_string(n) + " clusters, the test wants it to have grown to " +
                           std::to_string(cfg_.min_reftable_clusters) + " (make the workload write more)");
        ++batches_verified_;
        return true;
    }

private:
    bool problem(const std::string& what) {
        problems.push_back(cfg_.name + " (seed " + std::to_string(cfg_.seed) + "), " + where_ + ": " + what);
        return false;
    }

    bool close() {
        if (!img_) return true;
        auto r = img_->close();
        img_.reset();
        if (!r) return problem("close failed: " + r.error().what());
        return true;
    }

    bool reopen() {
        auto img = open_image(path_, true);
        if (!img) return problem("reopening for writing failed: " + img.error().what());
        img_.emplace(std::move(*img));
        return true;
    }

    /// The writes of one backing image, from the seed: patterns at random places, one at
    /// its very end, one across `overlay` (the overlay's size) when it is inside.
    std::vector<backing_write> backing_writes(std::uint64_t size, std::uint64_t salt, std::uint64_t cluster) {
        std::mt19937_64 rng(cfg_.seed * 7919 + salt);
        std::vector<backing_write> w;
        for (int i = 0; i < 8; ++i) {
            const std::uint64_t off = uniform(rng, 0, size - 1);
            const std::uint64_t len = std::min(size - off, uniform(rng, 1, 3 * std::max(cluster, cfg_.create.cluster_size)));
            w.push_back({off, len, static_cast<unsigned>(0x11 + (salt * 8 + static_cast<std::uint64_t>(i)) * 0x1d % 0xEE)});
        }
        const std::uint64_t tail = std::min(size, 3 * cluster);
        w.push_back({size - tail, tail, static_cast<unsigned>(0xE0 + salt)});
        const std::uint64_t ov = cfg_.create.size;
        if (ov < size) {
            const std::uint64_t from = ov - std::min<std::uint64_t>(ov, 5000);
            w.push_back({from, std::min<std::uint64_t>(size, ov + 5000) - from, static_cast<unsigned>(0xC0 + salt)});
        }
        return w;
    }

    bool run(const argv_t& argv) {
        if (auto why = run_in(dir_, argv); !why.empty()) return problem(why);
        return true;
    }

    bool qemu_write(const std::string& name, const std::string& format, const std::vector<backing_write>& writes, bool zeroes) {
        argv_t argv{"qemu-io", "-f", format};
        for (const auto& w : writes) {
            argv.push_back("-c");
            if (zeroes) argv.push_back("write -z " + std::to_string(w.off) + " " + std::to_string(w.len));
            else argv.push_back("write -P " + hex_byte(w.pattern) + " " + std::to_string(w.off) + " " + std::to_string(w.len));
        }
        argv.push_back(name);
        return run(argv);
    }

    static void model(sparse_disk& d, const std::vector<backing_write>& writes, bool zeroes) {
        for (const auto& w : writes) {
            if (zeroes) d.zero(w.off, w.len);
            else d.fill(w.off, w.len, static_cast<std::byte>(w.pattern));
        }
    }

    bool make_backing() {
        where_ = "making the backing chain";
        const std::uint64_t bs = cfg_.backing_size;
        switch (cfg_.backing) {
        case backing_kind::none: return true;
        case backing_kind::qcow2: {
            const auto w = backing_writes(bs, 1, cfg_.backing_cluster);
            const std::string opts = "cluster_size=" + std::to_string(cfg_.backing_cluster) +
                                     (cfg_.backing_version == 2 ? ",compat=0.10" : "");
            if (!run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "base.qcow2", std::to_string(bs)})) return false;
            if (!qemu_write("base.qcow2", "qcow2", w, false)) return false;
            backing_view_ = sparse_disk(bs);
            model(backing_view_, w, false);
            break;
        }
        case backing_kind::chain: {
            const std::uint64_t base = cfg_.base_size;
            const auto wb = backing_writes(base, 2, 65536);
            if (!run({"qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", std::to_string(base)})) return false;
            if (!qemu_write("base.qcow2", "qcow2", wb, false)) return false;
            if (!run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=" + std::to_string(cfg_.backing_cluster), "-b",
                      "base.qcow2", "-F", "qcow2", "mid.qcow2", std::to_string(bs)}))
                return false;
            const auto wm = backing_writes(bs, 3, cfg_.backing_cluster);
            auto wz = backing_writes(bs, 4, cfg_.backing_cluster);
            wz.resize(3);
            if (!qemu_write("mid.qcow2", "qcow2", wm, false) || !qemu_write("mid.qcow2", "qcow2", wz, true)) return false;
            sparse_disk b(base);
            model(b, wb, false);
            backing_view_ = sparse_disk(bs);
            backing_view_.copy_from(b, 0, std::min(base, bs));
            model(backing_view_, wm, false);
            model(backing_view_, wz, true);
            break;
        }
        case backing_kind::raw: {
            const auto w = backing_writes(bs, 5, 4096);
            if (!run({"qemu-img", "create", "-q", "-f", "raw", "base.raw", std::to_string(bs)})) return false;
            if (!qemu_write("base.raw", "raw", w, false)) return false;
            backing_view_ = sparse_disk(bs);
            model(backing_view_, w, false);
            break;
        }
        }
        // The harness itself: the model of the backing chain is what QEMU reads.
        if (!backing_view_.save(dir_ + "/backing-view.raw")) return problem("cannot write backing-view.raw");
        const std::string top = cfg_.backing == backing_kind::chain ? "mid.qcow2" : cfg_.backing == backing_kind::raw ? "base.raw" : "base.qcow2";
        if (auto why = qemu_compare(dir_, top, "backing-view.raw", cfg_.backing == backing_kind::raw ? "raw" : "qcow2"); !why.empty())
            return problem("the model of the backing chain is wrong (test bug): " + why);
        return true;
    }

    const workload_config& cfg_;
    std::string dir_, path_;
    std::string where_;
    std::optional<qcow2::image> img_;
    sparse_disk shadow_, backing_view_;
    unsigned batches_verified_ = 0;
};

/// Applies one generated batch and the checks that end it (`label` names it in messages).
bool run_batch(workload& w, generator& gen, std::size_t count, const std::string& label) {
    auto ops = gen.batch(count);
    ops.push_back(op{op_kind::end_batch, 0, 0, 0});
    for (std::size_t i = 0; i < ops.size(); ++i)
        if (!w.apply(ops[i], label + " op " + std::to_string(i))) return false;
    return true;
}

/// Runs `ops` on a fresh image of `cfg`; the problems found (empty: none).
std::vector<std::string> replay(const workload_config& cfg, const std::vector<op>& ops) {
    qcow2_test::temp_dir dir("qcow2-write-", work_base());
    workload w(cfg, dir.path());
    if (!w.setup()) return w.problems;
    for (std::size_t i = 0; i < ops.size(); ++i)
        if (!w.apply(ops[i], "op " + std::to_string(i))) return w.problems;
    w.verify();
    return w.problems;
}

/// Delta debugging (ddmin) of a failing operation list.
std::vector<op> reduce(const workload_config& cfg, std::vector<op> ops) {
    std::size_t n = 2;
    while (ops.size() >= 2) {
        const std::size_t chunk = (ops.size() + n - 1) / n;
        bool reduced = false;
        for (std::size_t i = 0; i < n && !reduced; ++i) {
            std::vector<op> rest;
            for (std::size_t j = 0; j < ops.size(); ++j)
                if (j / chunk != i) rest.push_back(ops[j]);
            if (rest.size() == ops.size() || rest.empty()) continue;
            if (!replay(cfg, rest).empty()) {
                ops = std::move(rest);
                n = std::max<std::size_t>(n - 1, 2);
                reduced = true;
            }
        }
        if (!reduced) {
            if (n >= ops.size()) break;
            n = std::min(ops.size(), n * 2);
        }
    }
    return ops;
}

/// Runs the workload in batches; returns the problems (empty: it passed).
std::vector<std::string> run_workload(workload_config cfg) {
    cfg.seed += env_u64("QCOW2_WRITE_SEED", 0);
    if (const std::uint64_t n = env_u64("QCOW2_WRITE_OPS", 0)) cfg.ops = static_cast<std::size_t>(n);
    qcow2_test::temp_dir dir("qcow2-write-", work_base());
    workload w(cfg, dir.path());
    std::vector<op> done;
    if (w.setup()) {
        generator gen(cfg, cfg.seed);
        for (unsigned b = 0; b < cfg.batches && !w.failed(); ++b) {
            auto ops = gen.batch(cfg.ops);
            ops.push_back(op{op_kind::end_batch, 0, 0, 0});
            for (std::size_t i = 0; i < ops.size() && !w.failed(); ++i) {
                done.push_back(ops[i]);
                w.apply(ops[i], "batch " + std::to_string(b) + " op " + std::to_string(i));
            }
        }
    }
    if (w.failed() && env_u64("QCOW2_WRITE_REDUCE", 0) && !done.empty()) {
        const auto small = reduce(cfg, done);
        std::string list;
        for (const auto& o : small) list += "    " + to_string(o) + ",\n";
        const auto again = replay(cfg, small);
        std::fprintf(stderr, "workload %s (seed %llu) reduced to %zu operations:\n%s  fails with: %s\n", cfg.name.c_str(),
                     static_cast<unsigned long long>(cfg.seed), small.size(), list.c_str(),
                     again.empty() ? "(no longer fails)" : again.front().c_str());
    }
    return w.problems;
}

/// Runs each workload in its own section.
void run_workloads(const std::vector<workload_config>& list) {
    for (const auto& cfg : list) {
        DYNAMIC_SECTION(cfg.name) {
            const auto problems = run_workload(cfg);
            for (const auto& p : problems) UNSCOPED_INFO(p);
            CHECK(problems.empty());
        }
    }
}

qcow2::create_options opts(std::uint64_t size, std::uint64_t cluster_size = 65536) {
    qcow2::create_options o;
    o.size = size;
    o.cluster_size = cluster_size;
    return o;
}

workload_config config(std::string name, qcow2::create_options o, std::uint64_t seed, std::size_t ops) {
    workload_config c;
    c.name = std::move(name);
    c.create = std::move(o);
    c.seed = seed;
    c.ops = ops;
    return c;
}

} // namespace

// ====================================================================== 1. workloads

TEST_CASE("write interop: randomized workloads: cluster sizes", "[interop][write]") {
    std::vector<workload_config> list;
    list.push_back(config("64K clusters, 544 MiB + 512 (two L2 tables)", opts(544 * MiB + 512), 101, 300));
    list.push_back(config("512 B clusters, 3 MiB + 1.5 KiB", opts(3 * MiB + 1536, 512), 102, 330));
    list.push_back(config("4 KiB clusters, 9 MiB + 2.5 KiB", opts(9 * MiB + 2560, 4096), 103, 330));
    auto big = config("2 MiB clusters, 40 MiB + 512", opts(40 * MiB + 512, 2 * MiB), 104, 150);
    big.max_write = 5 * MiB;
    list.push_back(big);
    list.push_back(config("64K clusters, 1 MiB + 512 (one partial cluster)", opts(MiB + 512), 105, 180));
    run_workloads(list);
}

TEST_CASE("write interop: randomized workloads: refcount widths", "[interop][write]") {
    std::vector<workload_config> list;
    const struct {
        unsigned bits;
        std::uint64_t cs, size;
    } widths[] = {{1, 4096, 5 * MiB + 512}, {2, 512, 2 * MiB + 512}, {4, 65536, 520 * MiB}, {8, 512, MiB + 3584},
                  {32, 4096, 6 * MiB}, {64, 65536, 30 * MiB + 1024}, {16, 1024, 2 * MiB}};
    std::uint64_t seed = 200;
    for (const auto& w : widths) {
        auto o = opts(w.size, w.cs);
        o.refcount_bits = w.bits;
        list.push_back(config("refcount_bits=" + std::to_string(w.bits) + ", " + std::to_string(w.cs) + " B clusters", o, ++seed, 210));
    }
    // 512 B clusters with 64-bit refcounts: a refcount block covers 32 KiB of the file and the
    // first refcount table 2 MiB, so large writes make the table grow (and move) several times.
    auto grow = opts(12 * MiB, 512);
    grow.refcount_bits = 64;
    auto growc = config("refcount_bits=64, 512 B clusters, large writes (refcount table growth)", grow, 210, 200);
    growc.max_write = 512 * KiB;
    growc.min_reftable_clusters = 2;
    list.push_back(growc);
    run_workloads(list);
}

TEST_CASE("write interop: randomized workloads: image features", "[interop][write]") {
    std::vector<workload_config> list;
    auto ext16 = opts(40 * MiB + 1536, 16384);
    ext16.extended_l2 = true;
    list.push_back(config("extended_l2, 16 KiB clusters", ext16, 301, 300));
    auto ext64 = opts(300 * MiB, 65536);
    ext64.extended_l2 = true;
    list.push_back(config("extended_l2, 64 KiB clusters", ext64, 302, 270));
    auto v2 = opts(520 * MiB + 512);
    v2.version = 2;
    list.push_back(config("version 2, 64 KiB clusters", v2, 303, 270));
    auto v2s = opts(5 * MiB + 512, 4096);
    v2s.version = 2;
    list.push_back(config("version 2, 4 KiB clusters", v2s, 304, 270));
    auto zstd = opts(24 * MiB + 512);
    zstd.compression_type = qcow2::compression::zstd;
    list.push_back(config("zstd, 64 KiB clusters", zstd, 305, 270));
    auto zstd4 = opts(6 * MiB, 4096);
    zstd4.compression_type = qcow2::compression::zstd;
    zstd4.refcount_bits = 2;
    list.push_back(config("zstd, 4 KiB clusters, refcount_bits=2", zstd4, 306, 240));
    auto lazy = opts(24 * MiB + 512);
    lazy.lazy_refcounts = true;
    list.push_back(config("lazy_refcounts, 64 KiB clusters", lazy, 307, 270));
    auto lazy4 = opts(4 * MiB + 512, 4096);
    lazy4.lazy_refcounts = true;
    lazy4.refcount_bits = 8;
    list.push_back(config("lazy_refcounts, 4 KiB clusters, refcount_bits=8", lazy4, 308, 240));
    run_workloads(list);
}

TEST_CASE("write interop: randomized workloads: preallocation and data files", "[interop][write]") {
    std::vector<workload_config> list;
    auto meta = opts(8 * MiB + 512, 4096);
    meta.prealloc = qcow2::preallocation::metadata;
    list.push_back(config("preallocation=metadata, 4 KiB clusters", meta, 401, 240));
    auto fal = opts(24 * MiB);
    fal.prealloc = qcow2::preallocation::falloc;
    list.push_back(config("preallocation=falloc, 64 KiB clusters", fal, 402, 210));
    auto full = opts(12 * MiB + 1024);
    full.prealloc = qcow2::preallocation::full;
    list.push_back(config("preallocation=full, 64 KiB clusters", full, 403, 210));
    auto ext = opts(20 * MiB, 16384);
    ext.prealloc = qcow2::preallocation::metadata;
    ext.extended_l2 = true;
    list.push_back(config("preallocation=metadata, extended_l2, 16 KiB clusters", ext, 404, 210));
    auto data = opts(24 * MiB + 512);
    data.data_file = "data.raw";
    list.push_back(config("data_file, 64 KiB clusters", data, 405, 240));
    auto raw = opts(24 * MiB + 512);
    raw.data_file = "data.raw";
    raw.data_file_raw = true;
    list.push_back(config("data_file_raw, 64 KiB clusters", raw, 406, 240));
    auto raw4 = opts(3 * MiB + 1536, 4096);
    raw4.data_file = "data.raw";
    raw4.data_file_raw = true;
    list.push_back(config("data_file_raw, 4 KiB clusters", raw4, 407, 240));
    auto dataext = opts(20 * MiB, 32768);
    dataext.data_file = "data.raw";
    dataext.extended_l2 = true;
    list.push_back(config("data_file, extended_l2, 32 KiB clusters", dataext, 408, 210));
    run_workloads(list);
}

TEST_CASE("write interop: randomized workloads: backing chains", "[interop][write]") {
    std::vector<workload_config> list;
    auto larger = config("qcow2 backing larger than the image", opts(20 * MiB + 512), 501, 270);
    larger.backing = backing_kind::qcow2;
    larger.backing_size = 28 * MiB;
    list.push_back(larger);
    auto smaller = config("qcow2 backing smaller than the image, 4 KiB clusters over 64 KiB", opts(9 * MiB, 4096), 502, 270);
    smaller.backing = backing_kind::qcow2;
    smaller.backing_size = 5 * MiB + 512;
    list.push_back(smaller);
    auto chain = config("two-deep chain, 16 KiB clusters", opts(12 * MiB + 512, 16384), 503, 270);
    chain.backing = backing_kind::chain;
    chain.backing_size = 10 * MiB;
    chain.backing_cluster = 4096;
    chain.base_size = 14 * MiB;
    list.push_back(chain);
    auto raw = config("raw backing file, 4 KiB clusters", opts(6 * MiB + 512, 4096), 504, 270);
    raw.backing = backing_kind::raw;
    raw.backing_size = 7 * MiB;
    list.push_back(raw);
    auto v2 = opts(16 * MiB + 512);
    v2.version = 2;
    auto v2c = config("version 2 image over a version 2 qcow2 backing (discard changes nothing)", v2, 505, 270);
    v2c.backing = backing_kind::qcow2;
    v2c.backing_size = 18 * MiB;
    v2c.backing_version = 2;
    list.push_back(v2c);
    auto ext = opts(12 * MiB, 32768);
    ext.extended_l2 = true;
    ext.prealloc = qcow2::preallocation::metadata;
    auto extc = config("extended_l2 + preallocation=metadata over a qcow2 backing", ext, 506, 270);
    extc.backing = backing_kind::qcow2;
    extc.backing_size = 14 * MiB;
    extc.backing_cluster = 4096;
    list.push_back(extc);
    auto small = config("512 B clusters over a 64 KiB qcow2 backing", opts(2 * MiB + 512, 512), 507, 270);
    small.backing = backing_kind::qcow2;
    small.backing_size = 3 * MiB;
    list.push_back(small);
    auto data = opts(10 * MiB + 512);
    data.data_file = "data.raw";
    auto datac = config("data_file over a qcow2 backing", data, 508, 240);
    datac.backing = backing_kind::qcow2;
    datac.backing_size = 8 * MiB;
    list.push_back(datac);
    auto lz = opts(8 * MiB, 8192);
    lz.lazy_refcounts = true;
    lz.compression_type = qcow2::compression::zstd;
    auto lzc = config("lazy_refcounts + zstd, 8 KiB clusters, over a raw backing", lz, 509, 240);
    lzc.backing = backing_kind::raw;
    lzc.backing_size = 9 * MiB + 512;
    list.push_back(lzc);
    run_workloads(list);
}

TEST_CASE("write interop: randomized workloads: images qemu-img created", "[interop][write]") {
    std::vector<workload_config> list;
    const auto qemu = [&](std::string name, qcow2::create_options o, std::string qemu_opts, std::uint64_t seed, std::size_t ops) {
        auto c = config(std::move(name), std::move(o), seed, ops);
        c.qemu_create = std::move(qemu_opts);
        return c;
    };
    list.push_back(qemu("qemu-img default options", opts(20 * MiB + 512), "cluster_size=65536", 701, 240));
    auto v2 = opts(6 * MiB, 4096);
    v2.version = 2;
    list.push_back(qemu("qemu-img compat=0.10, 4 KiB clusters", v2, "compat=0.10,cluster_size=4096", 702, 240));
    auto rc1 = opts(5 * MiB + 512, 4096);
    rc1.refcount_bits = 1;
    list.push_back(qemu("qemu-img refcount_bits=1, 4 KiB clusters", rc1, "refcount_bits=1,cluster_size=4096", 703, 240));
    auto ext = opts(20 * MiB, 16384);
    ext.extended_l2 = true;
    ext.compression_type = qcow2::compression::zstd;
    list.push_back(qemu("qemu-img extended_l2, zstd, 16 KiB clusters", ext, "extended_l2=on,compression_type=zstd,cluster_size=16384", 704, 240));
    auto meta = opts(8 * MiB + 512, 4096);
    meta.prealloc = qcow2::preallocation::metadata;
    meta.lazy_refcounts = true;
    list.push_back(qemu("qemu-img preallocation=metadata, lazy_refcounts", meta, "preallocation=metadata,lazy_refcounts=on,cluster_size=4096", 705, 240));
    auto raw = opts(8 * MiB);
    raw.data_file = "data.raw";
    raw.data_file_raw = true;
    list.push_back(qemu("qemu-img data_file_raw", raw, "data_file=data.raw,data_file_raw=on", 706, 240));
    auto over = qemu("qemu-img overlay on a qcow2 backing, 8 KiB clusters", opts(10 * MiB + 512, 8192), "cluster_size=8192", 707, 240);
    over.backing = backing_kind::qcow2;
    over.backing_size = 12 * MiB;
    list.push_back(over);
    run_workloads(list);
}

// ====================================================================== 2. cross-reading

namespace {

/// The disk as runs of one repeated byte: `read -P 0xVV off len` commands for qemu-io, for
/// every run of at least 64 bytes (shorter ones, in text, are left to qemu-img compare).
std::vector<std::string> pattern_reads(const sparse_disk& d) {
    std::vector<std::string> cmds;
    bytes buf(static_cast<std::size_t>(MiB));
    std::uint64_t run_start = 0;
    int run_value = -1;
    for (std::uint64_t off = 0; off < d.size(); off += MiB) {
        const auto n = static_cast<std::size_t>(std::min(MiB, d.size() - off));
        d.read(off, std::span<std::byte>(buf).first(n));
        for (std::size_t i = 0; i < n; ++i) {
            const int v = static_cast<int>(buf[i]);
            if (v == run_value) continue;
            if (run_value >= 0 && off + i - run_start >= 64)
                cmds.push_back("read -P " + hex_byte(static_cast<unsigned>(run_value)) + " " + std::to_string(run_start) + " " +
                               std::to_string(off + i - run_start));
            run_start = off + i;
            run_value = v;
        }
    }
    if (run_value >= 0)
        cmds.push_back("read -P " + hex_byte(static_cast<unsigned>(run_value)) + " " + std::to_string(run_start) + " " +
                       std::to_string(d.size() - run_start));
    return cmds;
}

/// `qemu-io -r` running `cmds`: "" when it exits 0 and no pattern verification failed.
std::string qemu_io_reads(const std::string& dir, const std::string& image, const std::vector<std::string>& cmds) {
    argv_t argv{"qemu-io", "-r", "-f", "qcow2"};
    for (const auto& c : cmds) argv.insert(argv.end(), {"-c", c});
    argv.push_back(image);
    const auto r = qcow2_test::run(argv, dir);
    if (r.ok() && r.out.find("Pattern verification failed") == std::string::npos &&
        r.err.find("Pattern verification failed") == std::string::npos)
        return {};
    // The failed reads only (the command line can be long).
    std::string failed;
    for (std::size_t at = r.out.find("Pattern verification failed"); at != std::string::npos;
         at = r.out.find("Pattern verification failed", at + 1))
        failed += r.out.substr(at, r.out.find('\n', at) - at) + "\n";
    return "qemu-io -r (" + std::to_string(cmds.size()) + " pattern reads) on " + image + " -> exit " + std::to_string(r.status) +
           "\n" + failed + "stderr: " + r.err;
}

/// The count qemu-img check reports under `key` (0 when absent, as QEMU omits zero counts).
std::uint64_t report_count(const json::value& report, const char* key) {
    const json::value* v = report.find(key);
    return v ? v->as_uint() : 0;
}

bytes filled(std::uint64_t n, unsigned v) { return bytes(static_cast<std::size_t>(n), static_cast<std::byte>(v)); }

struct cross_case {
    std::string name;
    std::uint64_t cluster_size;
    qcow2::compression compression;
    bool extended_l2;
};

} // namespace

TEST_CASE("write interop: qemu-io reads what we write and we read what qemu-io writes", "[interop][write]") {
    const cross_case cases[] = {
        {"zlib, 64 KiB clusters", 65536, qcow2::compression::zlib, false},
        {"zstd, 64 KiB clusters", 65536, qcow2::compression::zstd, false},
        {"zlib, 4 KiB clusters (an L2 boundary at 2 MiB)", 4096, qcow2::compression::zlib, false},
        {"zstd, 16 KiB clusters, extended_l2", 16384, qcow2::compression::zstd, true},
    };
    for (const auto& c : cases) {
        DYNAMIC_SECTION(c.name) {
            qcow2_test::temp_dir dir("qcow2-write-cross-", work_base());
            const std::string path = dir / "image.qcow2";
            const std::uint64_t cs = c.cluster_size;
            const std::uint64_t size = 40 * cs + 3072; // a partial last cluster
            qcow2::create_options o;
            o.size = size;
            o.cluster_size = cs;
            o.compression_type = c.compression;
            o.extended_l2 = c.extended_l2;
            {
                auto f = qcow2::io::posix_file::open(path, qcow2::io::open_mode::create);
                REQUIRE(f);
                auto z = qcow2::image::create(std::move(*f), o);
                REQUIRE(z);
            }
            sparse_disk shadow(size);
            const std::uint64_t last = (size - 1) / cs * cs;
            std::string text;
            for (int i = 0; text.size() < cs; ++i) text += "compressible line " + std::to_string(i) + "\n";
            bytes text_cluster(static_cast<std::size_t>(cs));
            std::memcpy(text_cluster.data(), text.data(), text_cluster.size());

            // Our writes: only repeated-byte patterns (so that qemu-io read -P can check every
            // byte), except one text cluster that qemu-img compare checks.
            {
                auto img = open_image(path, true);
                REQUIRE(img);
                auto write = [&](std::uint64_t off, std::uint64_t len, unsigned v) {
                    const bytes d = filled(len, v);
                    auto r = img->write(off, d);
                    INFO("write at " << off << ": " << (r ? "" : r.error().what()));
                    REQUIRE(r);
                    shadow.write(off, d);
                };
                auto compressed = [&](std::uint64_t off, std::span<const std::byte> d) {
                    auto r = img->write_compressed(off, d);
                    INFO("compressed write at " << off << ": " << (r ? "" : r.error().what()));
                    REQUIRE(r);
                    shadow.write(off, d);
                };
                auto zeroes = [&](std::uint64_t off, std::uint64_t len, qcow2::zero_mode m) {
                    auto r = img->write_zeroes(off, len, m);
                    INFO("write_zeroes at " << off << ": " << (r ? "" : r.error().what()));
                    REQUIRE(r);
                    shadow.zero(off, len);
                };
                write(0, 3 * cs + 100, 0x11);
                write(5 * cs + 7, 1000, 0x22);
                write(31 * cs - 300, 600, 0x33);
                compressed(8 * cs, filled(cs, 0x44));
                compressed(9 * cs, text_cluster);
                compressed(10 * cs, filled(cs, 0x55));
                write(10 * cs + 100, 50, 0x66); // copies the compressed cluster out
                compressed(last, filled(size - last, 0x77));
                zeroes(cs + 10, cs, qcow2::zero_mode::keep_allocation);
                zeroes(2 * cs, cs, qcow2::zero_mode::unmap);
                write(12 * cs, 3 * cs, 0x88);
                write(22 * cs, 2 * cs, 0x99);
                REQUIRE(img->discard(12 * cs + cs / 2, 2 * cs)); // only cluster 13 is whole
                shadow.zero(13 * cs, cs);
                REQUIRE(img->discard(0, cs));
                shadow.zero(0, cs);
                REQUIRE(img->close());
            }
            REQUIRE(shadow.save(dir / "shadow.raw"));
            CHECK(qemu_io_reads(dir.path(), "image.qcow2", pattern_reads(shadow)) == "");
            CHECK(qemu_compare(dir.path(), "image.qcow2", "shadow.raw") == "");
            json::value report;
            CHECK(qemu_check(dir.path(), "image.qcow2", &report) == "");
            CHECK(report_count(report, "compressed-clusters") == 3); // clusters 8, 9 and the last

            // qemu-io writes into our image; we read it back.
            const argv_t qemu_writes{"qemu-io", "-f", "qcow2",
                                     "-c", "write -P 0xa1 " + std::to_string(20 * cs + 333) + " 5000",
                                     "-c", "write -z " + std::to_string(21 * cs + 10) + " " + std::to_string(cs),
                                     "-c", "write -z -u " + std::to_string(22 * cs) + " " + std::to_string(2 * cs),
                                     "-c", "write -c -P 0xb2 " + std::to_string(26 * cs) + " " + std::to_string(cs),
                                     "-c", "write -c -P 0xb3 " + std::to_string(27 * cs) + " " + std::to_string(cs),
                                     "-c", "discard " + std::to_string(12 * cs) + " " + std::to_string(3 * cs),
                                     "-c", "write -P 0xa4 " + std::to_string(8 * cs + 10) + " 20",
                                     "image.qcow2"};
            REQUIRE(run_in(dir.path(), qemu_writes) == "");
            shadow.fill(20 * cs + 333, 5000, std::byte{0xa1});
            shadow.zero(21 * cs + 10, cs);
            shadow.zero(22 * cs, 2 * cs);
            shadow.fill(26 * cs, cs, std::byte{0xb2});
            shadow.fill(27 * cs, cs, std::byte{0xb3});
            shadow.zero(12 * cs, 3 * cs);
            shadow.fill(8 * cs + 10, 20, std::byte{0xa4});
            {
                auto img = open_image(path, false);
                REQUIRE(img);
                CHECK(read_back(*img, shadow) == "");
            }
            CHECK(qemu_check(dir.path(), "image.qcow2", &report) == "");
            CHECK(report_count(report, "compressed-clusters") == 4); // 9, the last, and qemu's 26 and 27

            // Our writes over qemu's compressed clusters.
            {
                auto img = open_image(path, true);
                REQUIRE(img);
                const bytes d = filled(10, 0xc5);
                REQUIRE(img->write(26 * cs + 5, d));
                shadow.write(26 * cs + 5, d);
                REQUIRE(img->write_zeroes(27 * cs, cs));
                shadow.zero(27 * cs, cs);
                REQUIRE(img->close());
            }
            REQUIRE(shadow.save(dir / "shadow.raw"));
            CHECK(qemu_check(dir.path(), "image.qcow2", &report) == "");
            CHECK(report_count(report, "compressed-clusters") == 2);
            CHECK(qemu_io_reads(dir.path(), "image.qcow2", pattern_reads(shadow)) == "");
            CHECK(qemu_compare(dir.path(), "image.qcow2", "shadow.raw") == "");
        }
    }
}

// ====================================================================== 3. refused writes

namespace {

/// Every kind of modification, each expected to fail with `code`; `size` is the virtual size.
void expect_all_refused(qcow2::image& img, qcow2::errc code, std::uint64_t size, std::uint64_t cs) {
    const bytes d = filled(cs, 0x5b);
    const auto expect = [&](const char* what, const qcow2::result<void>& r) {
        INFO(what << ": " << (r ? std::string("succeeded") : r.error().what()));
        CHECK(!r);
        if (!r) {
            CHECK(r.error().is(code));
            CHECK(!r.error().message().empty());
        }
    };
    expect("write", img.write(100, std::span<const std::byte>(d).first(1000)));
    expect("write_zeroes keep", img.write_zeroes(0, 2 * cs, qcow2::zero_mode::keep_allocation));
    expect("write_zeroes unmap", img.write_zeroes(cs, cs, qcow2::zero_mode::unmap));
    expect("discard", img.discard(0, size));
    expect("write_compressed", img.write_compressed(2 * cs, d));
    expect("resize up", img.resize(size + cs));
    expect("resize down", img.resize(size - cs));
}

} // namespace

TEST_CASE("write interop: refused modifications leave the file unchanged", "[interop][write]") {
    qcow2_test::temp_dir dir("qcow2-write-refused-", work_base());
    const std::string path = dir / "image.qcow2";
    const std::uint64_t cs = 4096, size = 2 * MiB;
    REQUIRE(run_in(dir.path(), {"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096,lazy_refcounts=on", "image.qcow2", "2M"}) == "");
    REQUIRE(run_in(dir.path(), {"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 300k", "-c", "write -c -P 0x21 1M 4k", "image.qcow2"}) == "");
    const auto reads_as_written = [&](qcow2::image& img) {
        sparse_disk d(size);
        d.fill(0, 300 * KiB, std::byte{0x5a});
        d.fill(MiB, 4 * KiB, std::byte{0x21});
        CHECK(read_back(img, d) == "");
    };

    SECTION("an image opened read-only: errc::read_only") {
        const std::string before = slurp(path);
        {
            auto img = open_image(path, false);
            REQUIRE(img);
            CHECK(img->read_only());
            expect_all_refused(*img, qcow2::errc::read_only, size, cs);
            CHECK(changed(path, before) == "");
            reads_as_written(*img);
            CHECK(img->close());
        }
        CHECK(changed(path, before) == "");
    }

    SECTION("an image with the corrupt bit: errc::image_corrupt") {
        poke64(path, 72, incompatible_bits(path) | 2);
        const std::string before = slurp(path);
        {
            auto img = open_image(path, true);
            REQUIRE(!img);
            INFO(img.error().what());
            CHECK(img.error().is(qcow2::errc::image_corrupt));
        }
        CHECK(changed(path, before) == "");
        {
            auto img = open_image(path, false); // reading is allowed
            REQUIRE(img);
            reads_as_written(*img);
        }
        {
            auto img = open_image(path, true, true); // open_options::repair opens it, writes still fail
            INFO((img ? "" : img.error().what()));
            REQUIRE(img);
            expect_all_refused(*img, qcow2::errc::image_corrupt, size, cs);
            CHECK(changed(path, before) == "");
        }
        CHECK(changed(path, before) == "");
    }

    SECTION("an image with the dirty bit and a leaked cluster: a writable open repairs it, as QEMU does") {
        // Raise the refcount of cluster 0 (16-bit refcounts) from 1 to 2: a leak.
        const std::uint64_t block = peek64(path, peek64(path, 48)) & ~std::uint64_t{0x1FF};
        REQUIRE(block != 0);
        std::uint64_t first = peek64(path, block);
        REQUIRE((first >> 48) == 1);
        poke64(path, block, (first & 0x0000FFFFFFFFFFFFull) | (std::uint64_t{2} << 48));
        poke64(path, 72, incompatible_bits(path) | 1);
        json::value report;
        CHECK(qemu_check(dir.path(), "image.qcow2", &report) != ""); // the damage is real
        CHECK(report_count(report, "leaks") == 1);
        {
            auto img = open_image(path, false); // read-only: not repaired
            REQUIRE(img);
            reads_as_written(*img);
        }
        CHECK((incompatible_bits(path) & 1) == 1);
        {
            auto img = open_image(path, true);
            INFO((img ? "" : img.error().what()));
            REQUIRE(img);
            CHECK((incompatible_bits(path) & 1) == 0);
            reads_as_written(*img);
            const bytes d = filled(5000, 0x7e);
            REQUIRE(img->write(MiB - 100, d));
            REQUIRE(img->close());
        }
        CHECK((incompatible_bits(path) & 1) == 0);
        CHECK(qemu_check(dir.path(), "image.qcow2") == "");
        CHECK(qemu_io_reads(dir.path(), "image.qcow2", {"read -P 0x5a 0 300k", "read -P 0x7e 1048476 5000"}) == "");
    }

    // Past the virtual size, and compressed writes and resizes with bad arguments: on the
    // qemu-img image (lazy refcounts: a modification would set the dirty bit first) and on
    // an image we created (empty: the all-zero bit must survive).
    const auto past_the_end = [&](const std::string& image, bool ours) {
        const std::string before = slurp(image);
        {
            auto img = open_image(image, true);
            REQUIRE(img);
            const bytes d = filled(cs, 0x6c);
            const auto expect = [&](const char* what, const qcow2::result<void>& r, qcow2::errc code) {
                INFO(what << ": " << (r ? std::string("succeeded") : r.error().what()));
                CHECK(!r);
                if (!r) CHECK(r.error().is(code));
                CHECK(changed(image, before) == "");
            };
            const auto inv = qcow2::errc::invalid_argument;
            const std::span<const std::byte> two = std::span<const std::byte>(d).first(2);
            expect("write across the end", img->write(size - 1, two), inv);
            expect("write at the end", img->write(size, two.first(1)), inv);
            expect("write far past the end", img->write(size + 10 * MiB, two), inv);
            expect("write whose end overflows", img->write(~std::uint64_t{0} - 1, two), inv);
            expect("write_zeroes across the end", img->write_zeroes(size - 512, 1024), inv);
            expect("write_zeroes whose end overflows", img->write_zeroes(cs, ~std::uint64_t{0}), inv);
            expect("discard past the end", img->discard(size, cs), inv);
            expect("discard across the end", img->discard(0, size + 1), inv);
            expect("write_compressed past the end", img->write_compressed(size, d), inv);
            expect("write_compressed misaligned", img->write_compressed(100, d), qcow2::errc::misaligned_offset);
            expect("write_compressed of half a cluster", img->write_compressed(0, std::span<const std::byte>(d).first(cs / 2)), inv);
            expect("write_compressed of two clusters", img->write_compressed(0, filled(2 * cs, 1)), inv);
            expect("resize to a size not a multiple of 512", img->resize(size + 100), inv);
            if (!ours) reads_as_written(*img);
            else CHECK(read_back(*img, sparse_disk(size)) == "");
            // The refusals did not break the image: a valid write works.
            REQUIRE(img->write(size - 2, two));
            REQUIRE(img->close());
        }
        CHECK(changed(image, before) != "");
        const std::string name = image.substr(image.rfind('/') + 1);
        CHECK(qemu_check(dir.path(), name) == "");
        CHECK(qemu_io_reads(dir.path(), name, {"read -P 0x6c " + std::to_string(size - 2) + " 2"}) == "");
    };
    SECTION("compressed writes to an image with an external data file: errc::not_supported") {
        REQUIRE(run_in(dir.path(), {"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096,data_file=data.raw",
                                    "external.qcow2", "2M"}) == "");
        const std::string ext = dir / "external.qcow2";
        const std::string before = slurp(ext), data_before = slurp(dir / "data.raw");
        {
            auto img = open_image(ext, true);
            REQUIRE(img);
            auto r = img->write_compressed(cs, filled(cs, 0x42));
            INFO((r ? std::string("succeeded") : r.error().what()));
            CHECK(!r);
            if (!r) CHECK(r.error().is(qcow2::errc::not_supported));
            CHECK(changed(ext, before) == "");
            CHECK(changed(dir / "data.raw", data_before) == "");
            REQUIRE(img->close());
        }
        CHECK(changed(ext, before) == "");
        CHECK(changed(dir / "data.raw", data_before) == "");
    }
    SECTION("past the virtual size and malformed compressed writes, on the qemu-img image") { past_the_end(path, false); }
    SECTION("past the virtual size and malformed compressed writes, on an empty image we created") {
        const std::string ours = dir / "ours.qcow2";
        qcow2::create_options o;
        o.size = size;
        o.cluster_size = cs;
        auto f = qcow2::io::posix_file::open(ours, qcow2::io::open_mode::create);
        REQUIRE(f);
        REQUIRE(qcow2::image::create(std::move(*f), o));
        REQUIRE((peek64(ours, 88) & 4) != 0); // the all-zero bit
        past_the_end(ours, true);
    }
}

// ====================================================================== 4. snapshots

TEST_CASE("write interop: writes to images with internal snapshots made by qemu-img", "[interop][write]") {
    const struct {
        const char* name;
        std::uint64_t cs, size;
        std::uint64_t seed;
        unsigned version;
    } cases[] = {{"4 KiB clusters, four L2 tables", 4096, 8 * MiB, 601, 3},
                 {"64 KiB clusters", 65536, 32 * MiB + 512, 602, 3},
                 {"version 2, 16 KiB clusters", 16384, 12 * MiB, 603, 2}};
    for (const auto& c : cases) {
        DYNAMIC_SECTION(c.name) {
            qcow2_test::temp_dir dir("qcow2-write-snap-", work_base());
            const std::string cs = std::to_string(c.cs);
            REQUIRE(run_in(dir.path(), {"qemu-img", "create", "-q", "-f", "qcow2", "-o",
                                        "cluster_size=" + cs + (c.version == 2 ? ",compat=0.10" : ""), "image.qcow2",
                                        std::to_string(c.size)}) == "");
            // Data in every L2 table, a compressed cluster, a zero range.
            sparse_disk shadow(c.size);
            argv_t io{"qemu-io", "-f", "qcow2"};
            for (std::uint64_t i = 0; i < 8; ++i) {
                const std::uint64_t off = c.size / 8 * i + 777, len = 3 * c.cs + 1234;
                io.insert(io.end(), {"-c", "write -P " + hex_byte(static_cast<unsigned>(0x40 + i)) + " " + std::to_string(off) + " " +
                                               std::to_string(len)});
                shadow.fill(off, len, static_cast<std::byte>(0x40 + i));
            }
            const std::uint64_t packed = (c.size / 2 / c.cs - 2) * c.cs;
            io.insert(io.end(), {"-c", "write -c -P 0x5e " + std::to_string(packed) + " " + cs});
            shadow.fill(packed, c.cs, std::byte{0x5e});
            io.insert(io.end(), {"-c", "write -z " + std::to_string(c.size / 8 + c.cs) + " " + std::to_string(c.cs)});
            shadow.zero(c.size / 8 + c.cs, c.cs);
            io.push_back("image.qcow2");
            REQUIRE(run_in(dir.path(), io) == "");
            REQUIRE(run_in(dir.path(), {"qemu-img", "snapshot", "-c", "one", "image.qcow2"}) == "");
            const sparse_disk at_one = shadow;

            auto o = opts(c.size, c.cs);
            o.version = c.version;
            workload_config cfg = config(std::string("snapshots, ") + c.name, o, c.seed + env_u64("QCOW2_WRITE_SEED", 0),
                                         static_cast<std::size_t>(env_u64("QCOW2_WRITE_OPS", 150)));
            // Version 3 images with snapshots grow and shrink (as QEMU 7.2 does: a revert
            // restores the snapshot's size); version 2 ones cannot be resized.
            cfg.resize = c.version == 3;
            workload w(cfg, dir.path());
            generator gen(cfg, cfg.seed);
            const bool ok = w.adopt(shadow) && run_batch(w, gen, cfg.ops, "after snapshot one:");
            for (const auto& p : w.problems) UNSCOPED_INFO(p);
            REQUIRE(ok);
            REQUIRE(run_in(dir.path(), {"qemu-img", "snapshot", "-c", "two", "image.qcow2"}) == "");
            const sparse_disk at_two = w.shadow();
            const bool ok2 = run_batch(w, gen, cfg.ops, "after snapshot two:");
            for (const auto& p : w.problems) UNSCOPED_INFO(p);
            REQUIRE(ok2);

            if (c.version == 2) { // resizing is refused, and changes nothing
                const std::string before = slurp(w.path());
                auto img = open_image(w.path(), true);
                REQUIRE(img);
                for (const std::uint64_t n : {c.size - c.cs, c.size + c.cs}) {
                    auto r = img->resize(n);
                    CHECK(!r);
                    if (!r) CHECK(r.error().is(qcow2::errc::not_supported));
                    CHECK(changed(w.path(), before) == "");
                }
                REQUIRE(img->close());
                CHECK(changed(w.path(), before) == "");
            }

            // Reverting brings the snapshots' contents back: our writes left them alone.
            const auto revert = [&](const char* name, const sparse_disk& want) {
                INFO("qemu-img snapshot -a " << name);
                REQUIRE(run_in(dir.path(), {"qemu-img", "snapshot", "-a", name, "image.qcow2"}) == "");
                CHECK(qemu_check(dir.path(), "image.qcow2") == "");
                REQUIRE(want.save(dir / "shadow.raw"));
                CHECK(qemu_compare(dir.path(), "image.qcow2", "shadow.raw") == "");
                auto img = open_image(w.path(), false);
                REQUIRE(img);
                CHECK(read_back(*img, want) == "");
            };
            revert("two", at_two);
            revert("one", at_one);

            // Writes after QEMU's revert, then with the snapshots deleted.
            workload w2(cfg, dir.path());
            generator gen2(cfg, cfg.seed + 1000);
            bool ok3 = w2.adopt(at_one) && run_batch(w2, gen2, cfg.ops / 2, "after reverting to one:");
            ok3 = ok3 && run_in(dir.path(), {"qemu-img", "snapshot", "-d", "two", "image.qcow2"}).empty() &&
                  run_in(dir.path(), {"qemu-img", "snapshot", "-d", "one", "image.qcow2"}).empty();
            ok3 = ok3 && run_batch(w2, gen2, cfg.ops / 2, "after deleting the snapshots:");
            for (const auto& p : w2.problems) UNSCOPED_INFO(p);
            CHECK(ok3);
        }
    }
}

// ====================================================================== 5. lazy refcounts

TEST_CASE("write interop: lazy refcounts keep the dirty bit set only while the image is open", "[interop][write]") {
    qcow2_test::temp_dir dir("qcow2-write-lazy-", work_base());
    const std::string path = dir / "image.qcow2";
    const std::uint64_t size = 16 * MiB;
    bool lazy = true;
    SECTION("an image we created with lazy_refcounts") {
        qcow2::create_options o;
        o.size = size;
        o.lazy_refcounts = true;
        auto f = qcow2::io::posix_file::open(path, qcow2::io::open_mode::create);
        REQUIRE(f);
        REQUIRE(qcow2::image::create(std::move(*f), o));
    }
    SECTION("an image qemu-img created with lazy_refcounts=on") {
        REQUIRE(run_in(dir.path(), {"qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "image.qcow2", "16M"}) == "");
    }
    SECTION("without lazy refcounts the bit is never set") {
        lazy = false;
        REQUIRE(run_in(dir.path(), {"qemu-img", "create", "-q", "-f", "qcow2", "image.qcow2", "16M"}) == "");
    }
    const auto dirty = [&] { return (incompatible_bits(path) & 1) != 0; };
    CHECK_FALSE(dirty());
    sparse_disk shadow(size);
    {
        auto img = open_image(path, true);
        REQUIRE(img);
        CHECK_FALSE(dirty()); // opening alone does not set it
        const bytes d = make_data(12345, 200 * KiB);
        REQUIRE(img->write(70000, d));
        shadow.write(70000, d);
        CHECK(dirty() == lazy);
        REQUIRE(img->write_zeroes(100000, 5000, qcow2::zero_mode::unmap));
        shadow.zero(100000, 5000);
        REQUIRE(img->discard(3 * MiB, 2 * MiB));
        const bytes c = filled(65536, 0x3d);
        REQUIRE(img->write_compressed(5 * MiB, c));
        shadow.write(5 * MiB, c);
        REQUIRE(img->flush());
        CHECK(dirty() == lazy);
        // After a flush the refcounts on disk are complete, dirty bit or not.
        CHECK(qemu_check(dir.path(), "image.qcow2", nullptr, true) == "");
        REQUIRE(img->close());
        CHECK_FALSE(dirty());
        CHECK(qemu_check(dir.path(), "image.qcow2") == "");
        // The image stays usable after close(): a write sets the bit again, the destructor clears it.
        const bytes e = make_data(777, 3000);
        REQUIRE(img->write(10 * MiB + 1, e));
        shadow.write(10 * MiB + 1, e);
        CHECK(dirty() == lazy);
    }
    CHECK_FALSE(dirty());
    CHECK(qemu_check(dir.path(), "image.qcow2") == "");
    const auto info = qcow2_test::run({"qemu-img", "info", "--output=json", "image.qcow2"}, dir.path());
    REQUIRE(info.ok());
    const auto j = json::parse(info.out);
    REQUIRE(j.find("dirty-flag"));
    CHECK_FALSE(j.find("dirty-flag")->as_bool());
    REQUIRE(shadow.save(dir / "shadow.raw"));
    CHECK(qemu_compare(dir.path(), "image.qcow2", "shadow.raw") == "");
}

TEST_CASE("write interop: a lazy-refcount image whose writer died is repaired on a writable open", "[interop][write]") {
    qcow2_test::temp_dir dir("qcow2-write-died-", work_base());
    const std::string path = dir / "image.qcow2";
    const std::uint64_t size = 24 * MiB, cs = 4096;
    qcow2::create_options o;
    o.size = size;
    o.cluster_size = cs;
    o.lazy_refcounts = true;
    {
        auto f = qcow2::io::posix_file::open(path, qcow2::io::open_mode::create);
        REQUIRE(f);
        REQUIRE(qcow2::image::create(std::move(*f), o));
    }
    // The durable part: [0, 8 MiB) written and flushed. Then writes, zero writes and discards
    // in [8 MiB, 24 MiB), never flushed, and the writer exits without closing.
    sparse_disk durable(size);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        int status = 1;
        if (auto img = open_image(path, true)) {
            bool ok = true;
            for (std::uint64_t i = 0; i < 64 && ok; ++i) ok = bool(img->write(i * 131072 + i, make_data(i + 4, 70000)));
            ok = ok && img->flush();
            std::mt19937_64 rng(99);
            for (int i = 0; i < 400 && ok; ++i) {
                const std::uint64_t off = uniform(rng, 8 * MiB, size - 300 * KiB);
                const std::uint64_t k = uniform(rng, 0, 9);
                if (k < 6) ok = bool(img->write(off, make_data(rng(), uniform(rng, 1, 200 * KiB))));
                else if (k < 8) ok = bool(img->write_zeroes(off, uniform(rng, 1, 100 * KiB), qcow2::zero_mode::unmap));
                else ok = bool(img->discard(off, uniform(rng, 1, 200 * KiB)));
            }
            ::_exit(ok ? 0 : 2); // no close, no destructor: the dirty bit stays set
        }
        ::_exit(status);
    }
    int wstatus = 0;
    REQUIRE(::waitpid(child, &wstatus, 0) == child);
    REQUIRE(WIFEXITED(wstatus));
    REQUIRE(WEXITSTATUS(wstatus) == 0);
    for (std::uint64_t i = 0; i < 64; ++i) durable.write(i * 131072 + i, make_data(i + 4, 70000));
    REQUIRE((incompatible_bits(path) & 1) == 1);

    // QEMU repairs a copy the same way (a read-write open of a dirty image repairs it).
    REQUIRE(run_in(dir.path(), {"cp", "image.qcow2", "qemu.qcow2"}) == "");
    REQUIRE(run_in(dir.path(), {"qemu-io", "-f", "qcow2", "-c", "flush", "qemu.qcow2"}) == "");
    CHECK((incompatible_bits(dir / "qemu.qcow2") & 1) == 0);
    CHECK(qemu_check(dir.path(), "qemu.qcow2") == "");
    {
        auto img = open_image(path, true);
        INFO((img ? "" : img.error().what()));
        REQUIRE(img);
        CHECK((incompatible_bits(path) & 1) == 0);
        bytes got(8 * MiB), want(8 * MiB);
        REQUIRE(img->read(0, got));
        durable.read(0, want);
        CHECK(first_difference(got, want, 0) == "");
        // It takes writes again.
        const bytes d = make_data(4242, 300 * KiB);
        REQUIRE(img->write(5 * MiB + 3, d));
        REQUIRE(img->close());
    }
    CHECK((incompatible_bits(path) & 1) == 0);
    CHECK(qemu_check(dir.path(), "image.qcow2") == "");
    // Both repairs kept the same guest contents outside what we wrote afterwards.
    REQUIRE(run_in(dir.path(), {"qemu-io", "-f", "qcow2", "-c", "write -P 0 " + std::to_string(5 * MiB) + " " + std::to_string(MiB),
                                "image.qcow2"}) == "");
    REQUIRE(run_in(dir.path(), {"qemu-io", "-f", "qcow2", "-c", "write -P 0 " + std::to_string(5 * MiB) + " " + std::to_string(MiB),
                                "qemu.qcow2"}) == "");
    const auto cmp = qcow2_test::run({"qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", "image.qcow2", "qemu.qcow2"}, dir.path());
    INFO(describe({"qemu-img", "compare", "image.qcow2", "qemu.qcow2"}, cmp));
    CHECK(cmp.ok());
}
