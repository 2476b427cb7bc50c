// SPDX-License-Identifier: MIT
// The write path over in-memory files (image.hpp, metadata/refcounts.hpp): randomized
// workloads against a shadow vector for many create options, each image then checked by
// our own `check` (no corruption, no leak) and reopened; refcount table growth; refused
// writes (read-only, past the end, corrupt bit) that change nothing; the overlap check;
// refcount overflow with compressed clusters; a dirty image repaired on open. The same
// images go to qemu-img in tests/interop_write.cpp.
#include "qcow2/image.hpp"

#include "qcow2/io/memory.hpp"
#include "qcow2/ops/check.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

using qcow2::errc;

namespace {

using mem_image = qcow2::basic_image<qcow2::io::memory>;

std::vector<std::byte> bytes_of(const qcow2::io::memory& m) { return {m.bytes().begin(), m.bytes().end()}; }

mem_image create(const qcow2::create_options& o) {
    auto z = mem_image::create(qcow2::io::memory{}, o);
    if (!z) FAIL("create: " << z.error().what());
    return std::move(*z).release();
}

mem_image reopen(std::vector<std::byte> bytes, bool writable = true) {
    auto img = mem_image::open(qcow2::io::memory(std::move(bytes)), qcow2::open_options{.writable = writable});
    if (!img) FAIL("open: " << img.error().what());
    return std::move(*img);
}

std::vector<std::byte> read_all(mem_image& img) {
    std::vector<std::byte> out(static_cast<std::size_t>(img.size()));
    auto r = img.read(0, out);
    if (!r) FAIL("read: " << r.error().what());
    return out;
}

/// Empty when `a == b`, else where they first differ (comparing whole disks prints nothing huge).
std::string difference(const std::vector<std::byte>& a, const std::vector<std::byte>& b) {
    if (a.size() != b.size()) return "sizes " + std::to_string(a.size()) + " and " + std::to_string(b.size());
    const auto m = std::mismatch(a.begin(), a.end(), b.begin());
    if (m.first == a.end()) return {};
    const auto at = static_cast<std::size_t>(m.first - a.begin());
    return "first difference at byte " + std::to_string(at) + ": " + std::to_string(std::to_integer<int>(*m.first)) + " vs " +
           std::to_string(std::to_integer<int>(*m.second));
}

/// Our own check of the flushed image: clean, no leaks.
void require_clean(mem_image& img) {
    auto rep = qcow2::check(img);
    if (!rep) FAIL("check: " << rep.error().what());
    CHECK(rep->check_errors == 0);
    CHECK(rep->corruptions == 0);
    CHECK(rep->leaks == 0);
}

/// A random workload applied to an image and to a shadow of its guest disk.
struct workload {
    std::mt19937_64 rng;
    std::vector<std::byte> shadow;
    std::uint64_t cs;
    bool v2;
    bool compressed_ok;

    std::uint64_t pick(std::uint64_t n) { return n ? rng() % n : 0; }

    void discard_shadow(std::uint64_t off, std::uint64_t len) {
        const std::uint64_t size = shadow.size();
        std::uint64_t s = (off + cs - 1) / cs * cs, e = (off + len) / cs * cs;
        if (off + len == size) e = size;
        if (s < e) std::fill(shadow.begin() + static_cast<std::ptrdiff_t>(s), shadow.begin() + static_cast<std::ptrdiff_t>(e), std::byte{0});
    }

    void step(mem_image& img) {
        const std::uint64_t size = shadow.size();
        const std::uint64_t off = pick(size);
        const std::uint64_t max_len = std::min<std::uint64_t>(size - off, 3 * cs + 1000);
        const std::uint64_t len = 1 + pick(max_len);
        const auto kind = pick(20);
        if (kind < 11) {
            std::vector<std::byte> buf(static_cast<std::size_t>(len));
            const auto fillv = static_cast<std::byte>(1 + pick(255));
            for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = i % 7 ? fillv : static_cast<std::byte>(rng());
            auto r = img.write(off, buf);
            REQUIRE(r);
            std::copy(buf.begin(), buf.end(), shadow.begin() + static_cast<std::ptrdiff_t>(off));
        } else if (kind < 14) {
            auto r = img.write_zeroes(off, len, kind == 13 ? qcow2::zero_mode::unmap : qcow2::zero_mode::keep_allocation);
            REQUIRE(r);
            std::fill(shadow.begin() + static_cast<std::ptrdiff_t>(off), shadow.begin() + static_cast<std::ptrdiff_t>(off + len),
                      std::byte{0});
        } else if (kind < 16) {
            auto r = img.discard(off, len);
            REQUIRE(r);
            discard_shadow(off, len);
        } else if (kind < 18 && compressed_ok) {
            const std::uint64_t c = off / cs * cs;
            const std::uint64_t n = std::min(cs, size - c);
            std::vector<std::byte> buf(static_cast<std::size_t>(n));
            for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::byte>((i / 64) % 3 == 0 ? rng() % 4 : i % 251);
            auto r = img.write_compressed(c, buf);
            REQUIRE(r);
            std::copy(buf.begin(), buf.end(), shadow.begin() + static_cast<std::ptrdiff_t>(c));
        } else if (kind < 19) {
            REQUIRE(img.flush());
        } else {
            // Resize by up to a few clusters either way (multiples of 512).
            const std::uint64_t delta = (1 + pick(4 * cs / 512 + 2)) * 512;
            const bool grow = pick(2) == 0 || size <= delta + cs;
            const std::uint64_t ns = grow ? size + delta : size - delta;
            auto r = img.resize(ns);
            REQUIRE(r);
            shadow.resize(static_cast<std::size_t>(ns), std::byte{0});
        }
    }
};

struct config {
    std::string name;
    qcow2::create_options o;
};

std::vector<config> configs() {
    std::vector<config> c;
    auto add = [&](std::string name, auto&& edit) {
        qcow2::create_options o;
        o.size = 6 << 20;
        edit(o);
        c.push_back({std::move(name), o});
    };
    add("default", [](auto&) {});
    add("512 B clusters", [](auto& o) { o.cluster_size = 512; o.size = 1 << 20; });
    add("4 KiB clusters, 1-bit refcounts", [](auto& o) { o.cluster_size = 4096; o.refcount_bits = 1; });
    add("4 KiB clusters, 2-bit refcounts", [](auto& o) { o.cluster_size = 4096; o.refcount_bits = 2; });
    add("64-bit refcounts", [](auto& o) { o.refcount_bits = 64; });
    add("8-bit refcounts, 16 KiB", [](auto& o) { o.refcount_bits = 8; o.cluster_size = 16384; });
    add("extended L2, 16 KiB", [](auto& o) { o.extended_l2 = true; o.cluster_size = 16384; });
    add("extended L2, 64 KiB, 4-bit refcounts", [](auto& o) { o.extended_l2 = true; o.refcount_bits = 4; });
    add("version 2", [](auto& o) { o.version = 2; });
    add("zstd", [](auto& o) { o.compression_type = qcow2::compression::zstd; });
    add("lazy refcounts", [](auto& o) { o.lazy_refcounts = true; });
    add("preallocation=metadata", [](auto& o) { o.prealloc = qcow2::preallocation::metadata; });
    add("preallocation=full, 32-bit", [](auto& o) { o.prealloc = qcow2::preallocation::full; o.refcount_bits = 32; o.size = 2 << 20; });
    add("extended L2, preallocation=metadata", [](auto& o) { o.extended_l2 = true; o.prealloc = qcow2::preallocation::metadata; });
    add("unaligned size", [](auto& o) { o.size = (3 << 20) + 1536; o.cluster_size = 32768; });
    add("2 MiB clusters", [](auto& o) { o.cluster_size = 2 << 20; o.size = 12 << 20; });
    return c;
}

} // namespace

TEST_CASE("write: random workloads read back as a shadow and check clean", "[write]") {
    for (const auto& cfg : configs()) {
        SECTION(cfg.name) {
            mem_image img = create(cfg.o);
            workload w{std::mt19937_64(7), std::vector<std::byte>(static_cast<std::size_t>(img.size())), img.cluster_size(),
                       cfg.o.version == 2, true};
            for (int i = 0; i < 300; ++i) {
                CAPTURE(i);
                w.step(img);
            }
            CHECK(difference(read_all(img), w.shadow) == "");
            REQUIRE(img.close());
            require_clean(img);
            // The file alone (reopened) says the same; then more work on the reopened image.
            mem_image again = reopen(bytes_of(img.backend()));
            CHECK(difference(read_all(again), w.shadow) == "");
            for (int i = 0; i < 150; ++i) w.step(again);
            CHECK(difference(read_all(again), w.shadow) == "");
            REQUIRE(again.close());
            mem_image third = reopen(bytes_of(again.backend()), false);
            CHECK(difference(read_all(third), w.shadow) == "");
            require_clean(again);
        }
    }
}

TEST_CASE("write: a fresh image is all zero, and the all-zero bit goes with the first data write", "[write]") {
    qcow2::create_options o;
    o.size = 1 << 20;
    mem_image img = create(o);
    CHECK(img.has<qcow2::features::all_zero>());
    // Zero writes and discards keep it.
    REQUIRE(img.write_zeroes(0, 65536));
    REQUIRE(img.discard(0, 1 << 20));
    CHECK(img.has<qcow2::features::all_zero>());
    const std::vector<std::byte> one(1, std::byte{1});
    REQUIRE(img.write(5, one));
    CHECK_FALSE(img.has<qcow2::features::all_zero>());
    // Durably: the file's header says so before close.
    mem_image copy = reopen(bytes_of(img.backend()), false);
    CHECK_FALSE(copy.has<qcow2::features::all_zero>());
}

TEST_CASE("write: 512-byte clusters with 64-bit refcounts grow the refcount table many times", "[write]") {
    qcow2::create_options o;
    o.size = 24 << 20;
    o.cluster_size = 512;
    o.refcount_bits = 64;
    mem_image img = create(o);
    const std::uint64_t table0 = img.header().refcount_table_offset;
    std::vector<std::byte> buf(1 << 20);
    for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<std::byte>(i * 31 + 7);
    for (std::uint64_t off = 0; off < o.size; off += buf.size()) REQUIRE(img.write(off, buf));
    REQUIRE(img.close());
    CHECK(img.header().refcount_table_offset != table0);
    CHECK(img.header().refcount_table_clusters > 1);
    require_clean(img);
    mem_image again = reopen(bytes_of(img.backend()), false);
    std::vector<std::byte> back(buf.size());
    REQUIRE(again.read(17 << 20, back));
    CHECK(back == buf);
}

TEST_CASE("write: refused writes change nothing", "[write]") {
    qcow2::create_options o;
    o.size = 1 << 20;
    mem_image made = create(o);
    const std::vector<std::byte> data(4096, std::byte{0x5A});
    REQUIRE(made.write(0, data));
    REQUIRE(made.close());
    const std::vector<std::byte> before = bytes_of(made.backend());

    SECTION("read-only") {
        mem_image ro = reopen(before, false);
        CHECK(ro.write(0, data).error().is(errc::read_only));
        CHECK(ro.write_zeroes(0, 4096).error().is(errc::read_only));
        CHECK(ro.discard(0, 65536).error().is(errc::read_only));
        CHECK(ro.write_compressed(0, std::vector<std::byte>(65536)).error().is(errc::read_only));
        CHECK(ro.resize(2 << 20).error().is(errc::read_only));
        CHECK(bytes_of(ro.backend()) == before);
    }
    SECTION("past the virtual size") {
        mem_image rw = reopen(before);
        CHECK(rw.write((1 << 20) - 100, data).error().is(errc::invalid_argument));
        CHECK(rw.write_zeroes(1 << 20, 1).error().is(errc::invalid_argument));
        CHECK(rw.discard(0, (1 << 20) + 1).error().is(errc::invalid_argument));
        CHECK(rw.resize(1000).error().is(errc::invalid_argument));
        REQUIRE(rw.close());
        CHECK(bytes_of(rw.backend()) == before);
    }
    SECTION("corrupt bit") {
        std::vector<std::byte> bad = before;
        bad[79] |= std::byte{2}; // incompatible features, bit 1
        auto refused = mem_image::open(qcow2::io::memory(bad), qcow2::open_options{.writable = true});
        REQUIRE_FALSE(refused);
        CHECK(refused.error().is(errc::image_corrupt));
        auto repair = mem_image::open(qcow2::io::memory(bad), qcow2::open_options{.writable = true, .repair = true});
        REQUIRE(repair);
        CHECK(repair->write(0, data).error().is(errc::image_corrupt));
        CHECK(repair->write_zeroes(0, 4096).error().is(errc::image_corrupt));
        CHECK(repair->resize(2 << 20).error().is(errc::image_corrupt));
        CHECK(bytes_of(repair->backend()) == bad);
    }
}

TEST_CASE("write: a write over metadata is refused and marks the image corrupt", "[write]") {
    qcow2::create_options o;
    o.size = 1 << 20;
    mem_image made = create(o);
    REQUIRE(made.write(0, std::vector<std::byte>(65536, std::byte{1})));
    REQUIRE(made.close());
    std::vector<std::byte> bytes = bytes_of(made.backend());
    // Point guest cluster 0 at the L1 table's cluster (COPIED: a writer would write in place).
    const std::uint64_t l1 = made.header().l1_table_offset;
    const std::uint64_t l2 = qcow2::detail::load_be64(bytes, l1) & qcow2::l2_bits::l1_offset_mask;
    qcow2::detail::store_be64(bytes, l2, l1 | qcow2::l2_bits::copied);
    const std::vector<std::byte> l1_before(bytes.begin() + static_cast<std::ptrdiff_t>(l1), bytes.begin() + static_cast<std::ptrdiff_t>(l1 + 512));
    mem_image img = reopen(bytes);
    auto r = img.write(100, std::vector<std::byte>(10, std::byte{0xEE}));
    REQUIRE_FALSE(r);
    CHECK(r.error().is(errc::metadata_overlap));
    CHECK_THAT(r.error().message(), Catch::Contains("L1 table") && Catch::Contains("marked corrupt"));
    const auto after = bytes_of(img.backend());
    CHECK(std::equal(l1_before.begin(), l1_before.end(), after.begin() + static_cast<std::ptrdiff_t>(l1)));
    CHECK((img.header().incompatible_features & qcow2::features::corrupt::mask) != 0);
    CHECK((std::to_integer<unsigned>(after[79]) & 2) != 0);
    // And every later write is refused, with the first error.
    CHECK(img.write(0, std::vector<std::byte>(1)).error().is(errc::metadata_overlap));
    // So is a writable open, until a repair.
    CHECK(mem_image::open(qcow2::io::memory(bytes_of(img.backend())), qcow2::open_options{.writable = true}).error().is(errc::image_corrupt));
}

TEST_CASE("write: compressed clusters share host clusters up to the refcount maximum", "[write]") {
    for (const unsigned bits : {1u, 2u, 16u}) {
        CAPTURE(bits);
        qcow2::create_options o;
        o.size = 4 << 20;
        o.cluster_size = 4096;
        o.refcount_bits = bits;
        mem_image img = create(o);
        std::vector<std::byte> shadow(static_cast<std::size_t>(o.size));
        std::vector<std::byte> c(4096);
        for (std::uint64_t k = 0; k < 64; ++k) {
            for (std::size_t i = 0; i < c.size(); ++i) c[i] = static_cast<std::byte>(i < 64 ? k + i : (i / 512) % 2);
            REQUIRE(img.write_compressed(k * 4096, c));
            std::copy(c.begin(), c.end(), shadow.begin() + static_cast<std::ptrdiff_t>(k * 4096));
        }
        // Overwrite every other compressed cluster with plain data: their shared host clusters lose one reference each.
        for (std::uint64_t k = 0; k < 64; k += 2) {
            const std::vector<std::byte> d(100, static_cast<std::byte>(k + 1));
            REQUIRE(img.write(k * 4096 + 50, d));
            std::copy(d.begin(), d.end(), shadow.begin() + static_cast<std::ptrdiff_t>(k * 4096 + 50));
        }
        REQUIRE(img.close());
        require_clean(img);
        CHECK(difference(read_all(img), shadow) == "");
    }
}

TEST_CASE("write: a dirty lazy-refcounts image left unclosed is repaired by the next writable open", "[write]") {
    qcow2::create_options o;
    o.size = 4 << 20;
    o.lazy_refcounts = true;
    mem_image img = create(o);
    std::vector<std::byte> shadow(static_cast<std::size_t>(o.size));
    for (std::uint64_t k = 0; k < 20; ++k) {
        const std::vector<std::byte> d(70000, static_cast<std::byte>(k + 3));
        REQUIRE(img.write(k * 150000, d));
        std::copy(d.begin(), d.end(), shadow.begin() + static_cast<std::ptrdiff_t>(k * 150000));
    }
    REQUIRE(img.flush());
    // The file as a crash would leave it: dirty bit set, refcounts not trustworthy.
    std::vector<std::byte> crashed = bytes_of(img.backend());
    CHECK((std::to_integer<unsigned>(crashed[79]) & 1) != 0);
    // Make the refcounts wrong as lazy refcounts may: zero the first refcount block.
    const auto rt = qcow2::detail::load_be64(crashed, img.header().refcount_table_offset);
    std::fill(crashed.begin() + static_cast<std::ptrdiff_t>(rt + 8), crashed.begin() + static_cast<std::ptrdiff_t>(rt + 65536), std::byte{0});
    mem_image repaired = reopen(crashed);
    CHECK((repaired.header().incompatible_features & qcow2::features::dirty::mask) == 0);
    require_clean(repaired);
    CHECK(difference(read_all(repaired), shadow) == "");
    // A read-only open leaves a dirty image alone.
    mem_image ro = reopen(crashed, false);
    CHECK((ro.header().incompatible_features & qcow2::features::dirty::mask) != 0);
    CHECK(difference(read_all(ro), shadow) == "");
}

TEST_CASE("write: clusters compressed elsewhere are stored as given", "[write]") {
    for (const auto type : {qcow2::compression::zlib, qcow2::compression::zstd}) {
        CAPTURE(static_cast<int>(type));
        qcow2::create_options o;
        o.size = (1 << 20) + 4096; // the last cluster is partial
        o.compression_type = type;
        mem_image img = create(o);
        std::vector<std::byte> shadow(static_cast<std::size_t>(o.size));
        qcow2::codec::cluster_compressor codec(type);
        std::vector<std::byte> cluster(65536), stream(65535);
        for (std::uint64_t at = 0; at < o.size; at += 65536) {
            const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(65536, o.size - at));
            std::fill(cluster.begin(), cluster.end(), std::byte{0});
            for (std::size_t i = 0; i < n; ++i) cluster[i] = static_cast<std::byte>((i / 100 + at / 65536) % 7);
            auto len = codec.compress(cluster, stream);
            REQUIRE(len);
            REQUIRE(img.write_precompressed(at, std::span(stream).first(*len)));
            std::copy(cluster.begin(), cluster.begin() + static_cast<std::ptrdiff_t>(n), shadow.begin() + static_cast<std::ptrdiff_t>(at));
        }
        CHECK_FALSE(img.has<qcow2::features::all_zero>());
        CHECK(difference(read_all(img), shadow) == "");
        CHECK(img.write_precompressed(100, std::span(stream).first(10)).error().is(errc::misaligned_offset));
        CHECK(img.write_precompressed(0, {}).error().is(errc::invalid_argument));
        CHECK(img.write_precompressed(0, std::vector<std::byte>(65536)).error().is(errc::invalid_argument));
        REQUIRE(img.close());
        require_clean(img);
        auto rep = qcow2::check(img);
        REQUIRE(rep);
        CHECK(rep->compressed_clusters == 17);
    }
}
