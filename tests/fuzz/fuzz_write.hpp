// SPDX-License-Identifier: MIT
// The body of the write-path fuzz target (fuzz_write.cpp), shared with the regression replay
// (tests/fuzz_regressions.cpp): an input is a small set of create options and a sequence of
// guest operations on a fresh image in memory, run against a raw shadow of the guest disk.
//
// Input format (bytes past the end of the input read as 0):
//
//   header, 8 bytes
//     [0] bit 0: version 2 (else 3)         bit 1: lazy refcounts (v3)
//         bit 2: extended L2 (v3, >= 16 KiB) bit 3: zstd (v3, when built with zstd)
//         bit 4: a small cache (2 tables)   bit 5: preallocation=metadata
//     [1] cluster size 512 << (b % 8)       (512 B ... 64 KiB)
//     [2] refcount width 1 << (b % 7)       (1 ... 64 bits; version 2: 16)
//     [3..4] virtual size, 512-byte sectors: 1 + u16 % 2048 (at most 1 MiB)
//     [5..7] reserved
//   then operations, each an opcode byte (low 4 bits: the operation, high 4 bits: modifiers)
//   and its arguments: `off` a u32 (offset modulo the disk size), `len` a u16
//     0 write off len          1 write_zeroes off len     2 write_zeroes(unmap) off len
//     3 discard off len        4 write_compressed u16 cluster (modifier: data kind)
//     5 resize u16 sectors     6 flush                    7 close + reopen
//     8 create_snapshot        9 apply_snapshot u8        10 delete_snapshot u8
//     11 make_empty            12-15 read off len (compared with the shadow)
//   offset modifiers (bits 4-5 of the opcode): 1 align to 512, 2 align to the cluster,
//   3 the last cluster of the disk. At most 48 operations and 6 snapshots are run.
//
// Oracle: after every operation the bytes it touched read as the shadow says (a whole-disk
// comparison after reopen and at the end), the virtual size and the snapshot list match, a
// set all-zero bit means a disk of zeroes; at the end `check` finds no corruption, leak or
// check error, a read-only open reads the same disk, and applying each snapshot (on a copy)
// gives the disk it was taken of. Errors are failures, except the documented refusals
// (refcount_overflow for references a narrow refcount cannot count, not_supported for
// resizing a version 2 image with snapshots), after which nothing may have changed.
#pragma once

#include "qcow2/all_zero.hpp"
#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"
#include "qcow2/ops/check.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace qcow2_fuzz {

/// Reads the input as a little-endian byte stream; past its end every byte reads 0.
class input_reader {
public:
    explicit input_reader(std::span<const std::uint8_t> d) noexcept : d_(d) {}
    bool done() const noexcept { return pos_ >= d_.size(); }
    std::uint8_t u8() noexcept { return pos_ < d_.size() ? d_[pos_++] : std::uint8_t{0}; }
    std::uint16_t u16() noexcept { return static_cast<std::uint16_t>(u8() | (unsigned{u8()} << 8)); }
    std::uint32_t u32() noexcept { return u16() | (std::uint32_t{u16()} << 16); }

private:
    std::span<const std::uint8_t> d_;
    std::size_t pos_ = 0;
};

/// The operations of the input format.
enum class write_op : std::uint8_t {
    write = 0, zeroes = 1, zeroes_unmap = 2, discard = 3, compressed = 4, resize = 5, flush = 6, reopen = 7,
    snapshot_create = 8, snapshot_apply = 9, snapshot_delete = 10, make_empty = 11, read = 12,
};

/// Builds inputs in the format above (for the seed corpus and the tests).
class input_writer {
public:
    /// The 8-byte header. `flags` as byte 0; cluster size and refcount width as powers of two.
    input_writer(std::uint8_t flags, unsigned cluster_bits, unsigned refcount_order, std::uint16_t sectors) {
        b_ = {flags, static_cast<std::uint8_t>(cluster_bits - 9), static_cast<std::uint8_t>(refcount_order),
              static_cast<std::uint8_t>((sectors - 1) & 0xFF), static_cast<std::uint8_t>((sectors - 1) >> 8), 0, 0, 0};
    }
    input_writer& op(write_op o, std::uint8_t modifiers = 0) {
        b_.push_back(static_cast<std::uint8_t>(static_cast<unsigned>(o) | (unsigned{modifiers} << 4)));
        return *this;
    }
    input_writer& u8(std::uint8_t v) {
        b_.push_back(v);
        return *this;
    }
    input_writer& u16(std::uint16_t v) {
        b_.push_back(static_cast<std::uint8_t>(v & 0xFF));
        b_.push_back(static_cast<std::uint8_t>(v >> 8));
        return *this;
    }
    input_writer& u32(std::uint32_t v) {
        u16(static_cast<std::uint16_t>(v & 0xFFFF));
        return u16(static_cast<std::uint16_t>(v >> 16));
    }
    /// An operation with an offset and a length (write, zeroes, discard, read).
    input_writer& range(write_op o, std::uint32_t off, std::uint16_t len, std::uint8_t modifiers = 0) {
        return op(o, modifiers).u32(off).u16(len);
    }
    const std::vector<std::uint8_t>& bytes() const noexcept { return b_; }

private:
    std::vector<std::uint8_t> b_;
};

/// A few inputs that reach every operation: the seed corpus of fuzz_write.
inline std::vector<std::pair<std::string, std::vector<std::uint8_t>>> write_seeds() {
    using o = write_op;
    std::vector<std::pair<std::string, std::vector<std::uint8_t>>> s;
    // 64 KiB clusters, 16-bit refcounts, 1 MiB: writes, zeroes, discard, compressed, reads.
    s.emplace_back("basic", input_writer(0, 16, 4, 2048)
                                .range(o::write, 1000, 5000)
                                .range(o::zeroes, 2000, 100)
                                .range(o::write, 65536 * 3, 65535, 2)
                                .range(o::discard, 65536 * 3, 65535, 2)
                                .op(o::compressed).u16(5)
                                .range(o::zeroes_unmap, 65536 * 5 + 512, 512, 0)
                                .range(o::read, 0, 65535)
                                .op(o::flush)
                                .range(o::read, 65536 * 5, 4096)
                                .bytes());
    // 512-byte clusters, 2-bit refcounts: snapshots until the refcounts overflow, COW, apply, delete.
    s.emplace_back("snapshots", input_writer(0, 9, 1, 300)
                                    .range(o::write, 0, 20000)
                                    .op(o::snapshot_create)
                                    .range(o::write, 700, 3000)
                                    .op(o::snapshot_create)
                                    .op(o::snapshot_create)
                                    .range(o::write, 10000, 700)
                                    .op(o::snapshot_apply).u8(0)
                                    .range(o::read, 0, 30000)
                                    .op(o::snapshot_delete).u8(0)
                                    .op(o::reopen)
                                    .op(o::snapshot_apply).u8(0)
                                    .bytes());
    // Extended L2, 16 KiB clusters, lazy refcounts, zstd: subcluster writes and zeroes, resize, reopen.
    s.emplace_back("extended", input_writer(2 | 4 | 8, 14, 4, 1024)
                                   .range(o::write, 1000, 600)
                                   .range(o::zeroes, 16384 + 512, 2048, 1)
                                   .op(o::compressed, 1).u16(3)
                                   .op(o::resize).u16(2000)
                                   .range(o::write, 0, 100, 3)
                                   .op(o::reopen)
                                   .op(o::resize).u16(100)
                                   .range(o::read, 0, 65535)
                                   .bytes());
    // Version 2, 4 KiB clusters, a small cache: many tables, make_empty, snapshots, resize refused.
    s.emplace_back("v2", input_writer(1 | 16, 12, 4, 2048)
                             .range(o::write, 0, 65535)
                             .range(o::write, 500000, 65535)
                             .range(o::write, 900000, 65535)
                             .op(o::snapshot_create)
                             .op(o::resize).u16(4000)
                             .range(o::discard, 0, 65535)
                             .op(o::make_empty)
                             .range(o::write, 4096, 10, 1)
                             .op(o::reopen)
                             .bytes());
    // 1-bit refcounts with preallocated metadata, 64-bit refcounts with 1 KiB clusters.
    s.emplace_back("refcount-widths", input_writer(32, 10, 0, 2048)
                                          .range(o::write, 3, 3000)
                                          .op(o::snapshot_create)
                                          .op(o::compressed, 1).u16(7)
                                          .op(o::compressed, 0).u16(8)
                                          .range(o::zeroes_unmap, 0, 65535)
                                          .bytes());
    s.emplace_back("wide-refcounts", input_writer(0, 10, 6, 2048)
                                         .range(o::write, 0, 65535)
                                         .op(o::resize).u16(2048)
                                         .op(o::snapshot_create)
                                         .range(o::write, 1024 * 5, 1024)
                                         .op(o::make_empty)
                                         .op(o::snapshot_apply).u8(0)
                                         .bytes());
    return s;
}

namespace detail {

using image = qcow2::basic_image<qcow2::io::memory>;
using bytes = std::vector<std::byte>;

inline std::string dec(std::uint64_t v) { return std::to_string(v); }

/// Deterministic bytes for operation `seed`; `kind` 0: noise, 1: compressible text, 2: zeroes.
inline void fill(std::span<std::byte> out, std::uint64_t seed, std::uint64_t at, unsigned kind) {
    if (kind == 2) {
        std::fill(out.begin(), out.end(), std::byte{0});
        return;
    }
    if (kind == 1) {
        static constexpr char text[] = "qcow2 fuzz: the same words again and again, ";
        for (std::size_t i = 0; i < out.size(); ++i)
            out[i] = static_cast<std::byte>(text[(at + i + seed) % (sizeof text - 1)] + static_cast<char>(seed % 7));
        return;
    }
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + at + 1;
    for (std::size_t i = 0; i < out.size(); ++i) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out[i] = static_cast<std::byte>((x >> 24) | 1); // never all zero: a lost write shows
    }
}

/// True when `b` holds only zero bytes.
inline bool all_zero(const bytes& b) {
    static constexpr std::byte zeroes[4096] = {};
    for (std::size_t i = 0; i < b.size(); i += sizeof zeroes)
        if (std::memcmp(b.data() + i, zeroes, std::min(sizeof zeroes, b.size() - i)) != 0) return false;
    return true;
}

struct shadow_snapshot {
    std::string id;
    std::string name;
    bytes disk;
};

/// Runs one input; the text of the first failure, or empty.
class write_run {
public:
    /// `tamper`, when given, is called with the image after every operation (tests of the oracle).
    explicit write_run(std::span<const std::uint8_t> data, std::function<void(image&)> tamper = {})
        : in_(data), tamper_(std::move(tamper)) {}

    std::string run() {
        if (!setup()) return failure_;
        for (unsigned n = 0; n < 48 && !in_.done() && failure_.empty(); ++n) {
            op_ = n;
            step();
            if (tamper_ && img_) tamper_(*img_);
            if (failure_.empty()) invariants();
        }
        if (failure_.empty()) finish();
        return failure_;
    }

private:
    bool fail(const std::string& what) {
        if (failure_.empty()) failure_ = "op " + dec(op_) + " (" + what_ + "): " + what;
        return false;
    }
    bool ok(const qcow2::result<void>& r, const char* what) {
        if (r) return true;
        return fail(std::string(what) + " failed: " + r.error().what());
    }

    bool setup() {
        const std::uint8_t flags = in_.u8();
        opts_.version = (flags & 1) ? 2 : 3;
        const bool v3 = opts_.version == 3;
        opts_.cluster_size = std::uint64_t{512} << (in_.u8() % 8);
        const std::uint8_t width = in_.u8();
        opts_.refcount_bits = v3 ? 1u << (width % 7) : 16u;
        opts_.lazy_refcounts = v3 && (flags & 2);
        opts_.extended_l2 = v3 && (flags & 4) && opts_.cluster_size >= 16384;
#if QCOW2_HAS_ZSTD
        if (v3 && (flags & 8)) opts_.compression_type = qcow2::compression::zstd;
#endif
        if (flags & 32) opts_.prealloc = qcow2::preallocation::metadata;
        opts_.size = (1u + in_.u16() % max_sectors) * 512ull;
        (void)in_.u8();
        (void)in_.u16();
        oo_.writable = true;
        if (flags & 16) oo_.cache_bytes = 2 * static_cast<std::size_t>(opts_.cluster_size);
        what_ = "create";
        auto z = image::create(qcow2::io::memory(file_options()), opts_, qcow2::deny_files{}, oo_);
        if (!z) return fail(std::string("create failed: ") + z.error().what());
        if (v3 && !z->image().template has<qcow2::features::all_zero>()) return fail("a new version 3 image lacks the all-zero bit");
        img_.emplace(std::move(*z).release());
        disk_.assign(static_cast<std::size_t>(opts_.size), std::byte{0});
        return compare(0, disk_.size());
    }

    static qcow2::io::memory_options file_options() {
        qcow2::io::memory_options mo;
        mo.max_size = 64ull << 20; // a 1 MiB disk and its snapshots never need more
        return mo;
    }

    std::uint64_t cs() const noexcept { return opts_.cluster_size; }

    /// An offset in the disk, with the opcode's alignment modifier.
    std::uint64_t offset(unsigned mod) {
        const std::uint64_t size = disk_.size();
        std::uint64_t off = in_.u32() % size;
        switch (mod & 3) {
        case 1: off &= ~std::uint64_t{511}; break;
        case 2: off &= ~(cs() - 1); break;
        case 3: off = (size - 1) & ~(cs() - 1); break;
        default: break;
        }
        return off;
    }
    std::uint64_t length(std::uint64_t off) {
        const std::uint64_t l = in_.u16();
        return std::min<std::uint64_t>(l, disk_.size() - off);
    }

    void step() {
        const std::uint8_t code = in_.u8();
        const unsigned mod = code >> 4;
        switch (code & 15) {
        case 0: return do_write(mod);
        case 1: return do_zeroes(mod, qcow2::zero_mode::keep_allocation);
        case 2: return do_zeroes(mod, qcow2::zero_mode::unmap);
        case 3: return do_discard(mod);
        case 4: return do_compressed(mod);
        case 5: return do_resize();
        case 6: what_ = "flush"; (void)ok(img_->flush(), "flush"); return;
        case 7: return do_reopen();
        case 8: return do_snapshot_create();
        case 9: return do_snapshot_apply(mod);
        case 10: return do_snapshot_delete();
        case 11: return do_make_empty();
        default: return do_read(mod);
        }
    }

    void do_write(unsigned mod) {
        const std::uint64_t off = offset(mod), len = length(off);
        what_ = "write " + dec(off) + " " + dec(len);
        bytes buf(static_cast<std::size_t>(len));
        fill(buf, op_, off, mod >> 2);
        if (!ok(img_->write(off, buf), "write")) return;
        std::copy(buf.begin(), buf.end(), disk_.begin() + static_cast<std::ptrdiff_t>(off));
        compare_around(off, len);
    }

    void do_zeroes(unsigned mod, qcow2::zero_mode m) {
        const std::uint64_t off = offset(mod), len = length(off);
        what_ = std::string(m == qcow2::zero_mode::unmap ? "write_zeroes(unmap) " : "write_zeroes ") + dec(off) + " " + dec(len);
        if (!ok(img_->write_zeroes(off, len, m), "write_zeroes")) return;
        std::fill_n(disk_.begin() + static_cast<std::ptrdiff_t>(off), len, std::byte{0});
        compare_around(off, len);
    }

    void do_discard(unsigned mod) {
        const std::uint64_t off = offset(mod), len = length(off);
        what_ = "discard " + dec(off) + " " + dec(len);
        if (!ok(img_->discard(off, len), "discard")) return;
        // Whole clusters inside the range read zero (the disk's last cluster counts as whole
        // when the range reaches the end of the disk); parts of clusters are left alone.
        const std::uint64_t size = disk_.size(), end = off + len;
        for (std::uint64_t c = (off + cs() - 1) & ~(cs() - 1); c < end; c += cs()) {
            const std::uint64_t ce = std::min(c + cs(), size);
            if (ce <= end) std::fill(disk_.begin() + static_cast<std::ptrdiff_t>(c), disk_.begin() + static_cast<std::ptrdiff_t>(ce), std::byte{0});
        }
        compare_around(off, len);
    }

    void do_compressed(unsigned mod) {
        const std::uint64_t clusters = (disk_.size() + cs() - 1) / cs();
        const std::uint64_t off = (in_.u16() % clusters) * cs();
        const std::uint64_t len = std::min(cs(), disk_.size() - off);
        what_ = "write_compressed " + dec(off);
        bytes buf(static_cast<std::size_t>(len));
        const unsigned kind = (mod & 3) == 0 ? 1 : (mod & 3) == 1 ? 0 : (mod & 3) == 2 ? 2 : 1;
        fill(buf, op_, off, kind);
        if ((mod & 3) == 3) std::fill_n(buf.begin(), buf.size() / 2, std::byte{0}); // half zeroes, half text
        if (!ok(img_->write_compressed(off, buf), "write_compressed")) return;
        std::copy(buf.begin(), buf.end(), disk_.begin() + static_cast<std::ptrdiff_t>(off));
        compare_around(off, len);
    }

    void do_resize() {
        const std::uint64_t n = (1u + in_.u16() % max_sectors) * 512ull;
        what_ = "resize " + dec(n);
        auto r = img_->resize(n);
        if (!r && r.error().is(qcow2::errc::not_supported) && opts_.version == 2 && !snaps_.empty()) return; // documented refusal
        if (!ok(r, "resize")) return;
        const std::uint64_t old = disk_.size();
        disk_.resize(static_cast<std::size_t>(n), std::byte{0});
        if (n > old) compare(old > cs() ? old - cs() : 0, n - (old > cs() ? old - cs() : 0));
        else compare(n > cs() ? n - cs() : 0, std::min<std::uint64_t>(n, cs()));
    }

    void do_reopen() {
        what_ = "close + reopen";
        if (!ok(img_->close(), "close")) return;
        bytes file(img_->backend().bytes().begin(), img_->backend().bytes().end());
        img_.reset();
        auto again = image::open(qcow2::io::memory(std::move(file), file_options()), oo_);
        if (!again) {
            fail(std::string("reopen failed: ") + again.error().what());
            return;
        }
        img_.emplace(std::move(*again));
        if (img_->template has<qcow2::features::dirty>()) fail("the dirty bit survives close");
        compare(0, disk_.size());
    }

    bool may_overflow(const qcow2::result<void>& r) const { return !r && r.error().is(qcow2::errc::refcount_overflow); }

    void do_snapshot_create() {
        what_ = "create_snapshot";
        if (snaps_.size() >= 6) return;
        const std::string name = "n" + dec(op_);
        auto r = img_->create_snapshot(name);
        if (may_overflow(r)) return compare_all_cheap(); // a narrow refcount cannot count another reference
        if (!ok(r, "create_snapshot")) return;
        if (img_->snapshots().size() != snaps_.size() + 1) {
            fail("the snapshot table did not grow by one");
            return;
        }
        snaps_.push_back({img_->snapshots().back().id, name, disk_});
        if (img_->snapshots().back().name != name) fail("the new snapshot is not named '" + name + "'");
    }

    void do_snapshot_apply(unsigned mod) {
        const std::uint8_t k = in_.u8();
        what_ = "apply_snapshot";
        if (snaps_.empty()) return;
        const shadow_snapshot& s = snaps_[k % snaps_.size()];
        // By id, or (modifier) by name: names are unique here ("n" and the op number).
        const std::string key = (mod & 1) ? s.name : s.id;
        what_ = "apply_snapshot " + key;
        auto r = img_->apply_snapshot(key);
        if (may_overflow(r)) return compare_all_cheap();
        if (!ok(r, "apply_snapshot")) return;
        disk_ = s.disk;
        compare(0, disk_.size());
    }

    void do_snapshot_delete() {
        const std::uint8_t k = in_.u8();
        what_ = "delete_snapshot";
        if (snaps_.empty()) return;
        const std::size_t i = k % snaps_.size();
        what_ = "delete_snapshot " + snaps_[i].id;
        if (!ok(img_->delete_snapshot(snaps_[i].id), "delete_snapshot")) return;
        snaps_.erase(snaps_.begin() + static_cast<std::ptrdiff_t>(i));
    }

    void do_make_empty() {
        what_ = "make_empty";
        auto z = qcow2::make_empty(*img_);
        if (!z) {
            fail(std::string("make_empty failed: ") + z.error().what());
            return;
        }
        if (opts_.version == 3 && !qcow2::known_zeroes(z->image())) fail("an emptied version 3 image is not known to read zero");
        img_.emplace(std::move(*z).release());
        std::fill(disk_.begin(), disk_.end(), std::byte{0});
        compare(0, disk_.size());
    }

    void do_read(unsigned mod) {
        const std::uint64_t off = offset(mod), len = length(off);
        what_ = "read " + dec(off) + " " + dec(len);
        compare(off, len);
    }

    /// After a refused operation: the size, the snapshot list and a sample of the disk are as before.
    void compare_all_cheap() {
        if (img_->snapshots().size() != snaps_.size()) fail("a refused operation changed the snapshot table");
        compare(0, std::min<std::uint64_t>(disk_.size(), 4 * cs()));
        compare(disk_.size() - std::min<std::uint64_t>(disk_.size(), cs()), std::min<std::uint64_t>(disk_.size(), cs()));
    }

    /// Compares the clusters around `[off, off + len)`.
    void compare_around(std::uint64_t off, std::uint64_t len) {
        const std::uint64_t lo = off & ~(cs() - 1);
        const std::uint64_t hi = std::min<std::uint64_t>(disk_.size(), ((off + len + cs() - 1) & ~(cs() - 1)) + cs());
        compare(lo, hi - lo);
    }

    bool compare(std::uint64_t off, std::uint64_t len) { return compare_image(*img_, off, len, disk_, "the image"); }

    bool compare_image(image& img, std::uint64_t off, std::uint64_t len, const bytes& disk, const char* which) {
        if (img.size() != disk.size()) return fail(std::string(which) + " has size " + dec(img.size()) + ", expected " + dec(disk.size()));
        if (len == 0) return true;
        buf_.resize(static_cast<std::size_t>(len));
        if (auto r = img.read(off, buf_); !r) return fail(std::string("reading ") + which + " at " + dec(off) + ": " + r.error().what());
        // memcmp first: comparing byte by byte in instrumented code is slow.
        if (std::memcmp(buf_.data(), disk.data() + off, buf_.size()) == 0) return true;
        const auto first = std::mismatch(buf_.begin(), buf_.end(), disk.begin() + static_cast<std::ptrdiff_t>(off));
        const auto at = off + static_cast<std::uint64_t>(first.first - buf_.begin());
        return fail(std::string(which) + " reads " + dec(std::to_integer<unsigned>(*first.first)) + " at guest offset " + dec(at) +
                    ", expected " + dec(std::to_integer<unsigned>(*first.second)));
    }

    void invariants() {
        if (img_->size() != disk_.size()) {
            fail("the virtual size is " + dec(img_->size()) + ", expected " + dec(disk_.size()));
            return;
        }
        if (img_->snapshots().size() != snaps_.size()) {
            fail("the image lists " + dec(img_->snapshots().size()) + " snapshots, expected " + dec(snaps_.size()));
            return;
        }
        if (img_->template has<qcow2::features::all_zero>() && !all_zero(disk_))
            fail("the all-zero bit is set on a disk that does not read zero");
    }

    void finish() {
        what_ = "final check";
        if (!compare(0, disk_.size())) return;
        auto rep = qcow2::check(*img_);
        if (!rep) {
            fail(std::string("check failed: ") + rep.error().what());
            return;
        }
        if (rep->corruptions || rep->leaks || rep->check_errors) {
            fail("check found " + dec(rep->corruptions) + " corruptions, " + dec(rep->leaks) + " leaks, " + dec(rep->check_errors) +
                 " check errors" + (rep->first_check_error ? ": " + rep->first_check_error->what() : std::string()));
            return;
        }
        if (!ok(img_->close(), "close")) return;
        const bytes file(img_->backend().bytes().begin(), img_->backend().bytes().end());
        img_.reset();
        what_ = "read-only reopen";
        qcow2::io::memory_options ro = file_options();
        ro.read_only = true;
        auto r = image::open(qcow2::io::memory(bytes(file), ro));
        if (!r) {
            fail(std::string("read-only open failed: ") + r.error().what());
            return;
        }
        if (!compare_image(*r, 0, disk_.size(), disk_, "the read-only image")) return;
        // Each snapshot (the first three) still holds the disk it was taken of.
        for (std::size_t i = 0; i < snaps_.size() && i < 3; ++i) {
            what_ = "checking snapshot " + snaps_[i].id;
            auto c = image::open(qcow2::io::memory(bytes(file), file_options()), oo_);
            if (!c) {
                fail(std::string("open failed: ") + c.error().what());
                return;
            }
            auto a = c->apply_snapshot(snaps_[i].id);
            if (may_overflow(a)) continue;
            if (!ok(a, "apply_snapshot")) return;
            if (!compare_image(*c, 0, snaps_[i].disk.size(), snaps_[i].disk, "the snapshot")) return;
        }
    }

    static constexpr unsigned max_sectors = 2048;

    input_reader in_;
    std::function<void(image&)> tamper_;
    qcow2::create_options opts_;
    qcow2::open_options oo_;
    std::optional<image> img_;
    bytes disk_;
    bytes buf_;
    std::vector<shadow_snapshot> snaps_;
    std::uint64_t op_ = 0;
    std::string what_;
    std::string failure_;
};

} // namespace detail

/// The image type fuzz_write runs on.
using write_image = detail::image;

/// Runs one fuzz_write input: the first failure, or an empty string. `tamper` (for tests of
/// the oracle) is called with the image after every operation.
inline std::string run_write(std::span<const std::uint8_t> data, std::function<void(write_image&)> tamper = {}) {
    return detail::write_run(data, std::move(tamper)).run();
}

} // namespace qcow2_fuzz
