// SPDX-License-Identifier: MIT
// Internal snapshots over in-memory files (image.hpp): create, apply, delete, with writes
// in between, for several refcount widths and cluster sizes, compressed clusters and a
// resize; after each step the disk reads as expected and `check` finds no corruption and
// no leak. The same operations against QEMU are in tests/interop_snapshot.cpp.
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

std::vector<std::byte> read_all(mem_image& img) {
    std::vector<std::byte> out(static_cast<std::size_t>(img.size()));
    REQUIRE(img.read(0, out));
    return out;
}

void require_clean(mem_image& img) {
    REQUIRE(img.flush());
    auto rep = qcow2::check(img);
    REQUIRE(rep);
    CHECK(rep->corruptions == 0);
    CHECK(rep->leaks == 0);
    CHECK(rep->check_errors == 0);
}

/// Writes random runs (data, zeroes, compressed clusters) into `img` and `shadow`.
void scribble(mem_image& img, std::vector<std::byte>& shadow, std::mt19937_64& rng, int n) {
    const std::uint64_t cs = img.cluster_size();
    for (int i = 0; i < n; ++i) {
        const std::uint64_t off = rng() % shadow.size();
        const std::uint64_t len = std::min<std::uint64_t>(1 + rng() % (3 * cs), shadow.size() - off);
        const auto kind = rng() % 4;
        if (kind == 0) {
            REQUIRE(img.write_zeroes(off, len));
            std::fill_n(shadow.begin() + static_cast<std::ptrdiff_t>(off), len, std::byte{0});
        } else if (kind == 1) {
            const std::uint64_t c = off / cs * cs, m = std::min(cs, shadow.size() - c);
            std::vector<std::byte> d(static_cast<std::size_t>(m), static_cast<std::byte>(rng() % 3));
            REQUIRE(img.write_compressed(c, d));
            std::copy(d.begin(), d.end(), shadow.begin() + static_cast<std::ptrdiff_t>(c));
        } else {
            std::vector<std::byte> d(static_cast<std::size_t>(len), static_cast<std::byte>(1 + rng() % 255));
            REQUIRE(img.write(off, d));
            std::copy(d.begin(), d.end(), shadow.begin() + static_cast<std::ptrdiff_t>(off));
        }
    }
}

} // namespace

TEST_CASE("snapshot: create, write, apply, delete keep the image consistent", "[snapshot]") {
    for (const auto& [cs, bits] : std::vector<std::pair<std::uint64_t, unsigned>>{{65536, 16}, {4096, 16}, {512, 64}, {16384, 32}}) {
        CAPTURE(cs, bits);
        qcow2::create_options o;
        o.size = 4 << 20;
        o.cluster_size = cs;
        o.refcount_bits = bits;
        auto z = mem_image::create(qcow2::io::memory{}, o);
        REQUIRE(z);
        mem_image img = std::move(*z).release();
        std::mt19937_64 rng(cs + bits);
        std::vector<std::byte> shadow(static_cast<std::size_t>(o.size));
        scribble(img, shadow, rng, 40);
        auto made = img.create_snapshot("first", {}, 1700000000, 5);
        if (!made) FAIL(made.error().what());
        const std::vector<std::byte> first = shadow;
        REQUIRE(img.snapshots().size() == 1);
        CHECK(img.snapshots()[0].id == "1");
        CHECK(img.snapshots()[0].name == "first");
        CHECK(img.snapshots()[0].disk_size() == o.size);
        require_clean(img);
        CHECK(read_all(img) == shadow);

        scribble(img, shadow, rng, 40); // copy-on-write of shared clusters and L2 tables
        require_clean(img);
        CHECK(read_all(img) == shadow);
        REQUIRE(img.create_snapshot("second"));
        CHECK(img.snapshots()[1].id == "2");
        const std::vector<std::byte> second = shadow;
        scribble(img, shadow, rng, 20);
        require_clean(img);

        REQUIRE(img.apply_snapshot("first"));
        CHECK(read_all(img) == first);
        require_clean(img);
        shadow = first;
        scribble(img, shadow, rng, 20);
        CHECK(read_all(img) == shadow);
        require_clean(img);

        REQUIRE(img.delete_snapshot("1")); // by id
        CHECK(img.snapshots().size() == 1);
        require_clean(img);
        REQUIRE(img.apply_snapshot("second"));
        CHECK(read_all(img) == second);
        REQUIRE(img.delete_snapshot("second"));
        CHECK(img.snapshots().empty());
        CHECK(img.header().nb_snapshots == 0);
        require_clean(img);
        CHECK(read_all(img) == second);
        // Reopened from the file alone: the same.
        REQUIRE(img.close());
        auto again = mem_image::open(qcow2::io::memory(qcow2::io::memory::vector_type(img.backend().bytes().begin(), img.backend().bytes().end())));
        REQUIRE(again);
        CHECK(read_all(*again) == second);
    }
}

TEST_CASE("snapshot: applying one taken at another size restores the size", "[snapshot]") {
    qcow2::create_options o;
    o.size = 2 << 20;
    auto z = mem_image::create(qcow2::io::memory{}, o);
    REQUIRE(z);
    mem_image img = std::move(*z).release();
    REQUIRE(img.write(100, std::vector<std::byte>(3000, std::byte{9})));
    REQUIRE(img.create_snapshot("small"));
    const auto before = read_all(img);
    REQUIRE(img.resize(64 << 20));
    REQUIRE(img.write(50 << 20, std::vector<std::byte>(10, std::byte{1})));
    REQUIRE(img.apply_snapshot("small"));
    CHECK(img.size() == o.size);
    CHECK(read_all(img) == before);
    require_clean(img);
}

TEST_CASE("snapshot: refusals change nothing", "[snapshot]") {
    qcow2::create_options o;
    o.size = 1 << 20;
    SECTION("names taken, unknown snapshots") {
        auto z = mem_image::create(qcow2::io::memory{}, o);
        REQUIRE(z);
        mem_image img = std::move(*z).release();
        REQUIRE(img.create_snapshot("a"));
        CHECK(img.create_snapshot("b", "1").error().is(errc::invalid_argument));
        REQUIRE(img.create_snapshot("a")); // names may repeat, as in QEMU: ids 1 and 2
        CHECK(img.snapshots().back().id == "2");
        REQUIRE(img.delete_snapshot("a")); // the first one
        CHECK(img.snapshots().front().id == "2");
        CHECK(img.apply_snapshot("nope").error().is(errc::invalid_argument));
        CHECK(img.delete_snapshot("nope").error().is(errc::invalid_argument));
        CHECK(img.snapshots().size() == 1);
        require_clean(img);
    }
    SECTION("1-bit refcounts") {
        o.refcount_bits = 1;
        auto z = mem_image::create(qcow2::io::memory{}, o);
        REQUIRE(z);
        mem_image img = std::move(*z).release();
        REQUIRE(img.write(0, std::vector<std::byte>(100, std::byte{1})));
        CHECK(img.create_snapshot("x").error().is(errc::refcount_overflow));
        CHECK(img.snapshots().empty());
        require_clean(img);
    }
    SECTION("2-bit refcounts fill up: the failed snapshot undoes its references") {
        o.refcount_bits = 2;
        auto z = mem_image::create(qcow2::io::memory{}, o);
        REQUIRE(z);
        mem_image img = std::move(*z).release();
        REQUIRE(img.write(0, std::vector<std::byte>(100, std::byte{1})));
        REQUIRE(img.create_snapshot("a"));
        REQUIRE(img.create_snapshot("b"));
        auto r = img.create_snapshot("c"); // a data cluster would need a refcount of 4
        REQUIRE_FALSE(r);
        CHECK(r.error().is(errc::refcount_overflow));
        CHECK(img.snapshots().size() == 2);
        require_clean(img);
    }
}

TEST_CASE("backing file: the header's name and format change, the rest stays", "[snapshot]") {
    {
        auto z = mem_image::create(qcow2::io::memory{}, [] {
            qcow2::create_options c;
            c.size = 1 << 20;
            return c;
        }());
        REQUIRE(z);
        mem_image m = std::move(*z).release();
        REQUIRE(m.write(0, std::vector<std::byte>(10, std::byte{4})));
        REQUIRE(m.set_backing_file("base.raw", "raw"));
        CHECK(m.header().backing_file == "base.raw");
        CHECK(m.header().backing_format() == "raw");
        REQUIRE(m.set_backing_file("other.qcow2"));
        CHECK(m.header().backing_format() == std::nullopt);
        CHECK(m.set_backing_file(std::string(1024, 'x')).error().is(errc::backing_name_too_long));
        REQUIRE(m.set_backing_file({}));
        CHECK_FALSE(m.has_backing());
        REQUIRE(m.close());
        auto again = mem_image::open(qcow2::io::memory(qcow2::io::memory::vector_type(m.backend().bytes().begin(), m.backend().bytes().end())));
        REQUIRE(again);
        CHECK(again->header().backing_file.empty());
        std::vector<std::byte> b(10);
        REQUIRE(again->read(0, b));
        CHECK(b == std::vector<std::byte>(10, std::byte{4}));
    }
}

TEST_CASE("amend: compat, refcount width, lazy refcounts, size", "[amend]") {
    qcow2::create_options o;
    o.size = 4 << 20;
    o.cluster_size = 4096;
    auto z = mem_image::create(qcow2::io::memory{}, o);
    REQUIRE(z);
    mem_image img = std::move(*z).release();
    std::mt19937_64 rng(5);
    std::vector<std::byte> shadow(static_cast<std::size_t>(o.size));
    scribble(img, shadow, rng, 60);
    for (const unsigned bits : {64u, 1u, 2u, 8u, 32u, 16u}) {
        CAPTURE(bits);
        qcow2::amend_options a;
        a.refcount_bits = bits;
        auto r = img.amend(a);
        if (bits <= 2) { // compressed clusters share host clusters: 1 or 2 bits cannot count them
            REQUIRE_FALSE(r);
            CHECK_THAT(r.error().message(), Catch::Contains("cannot decrease refcount entry width"));
            CHECK(r.error().is(errc::invalid_argument));
            CHECK(img.header().refcount_bits() == 64);
            continue;
        }
        REQUIRE(r);
        CHECK(img.header().refcount_bits() == bits);
        require_clean(img);
        CHECK(read_all(img) == shadow);
        scribble(img, shadow, rng, 10);
        require_clean(img);
    }
    qcow2::amend_options lazy;
    lazy.lazy_refcounts = true;
    REQUIRE(img.amend(lazy));
    CHECK((img.header().compatible_features & qcow2::features::lazy_refcounts::mask) != 0);
    scribble(img, shadow, rng, 10);
    lazy.lazy_refcounts = false;
    REQUIRE(img.amend(lazy));
    CHECK(img.header().compatible_features == 0);
    CHECK((img.header().incompatible_features & qcow2::features::dirty::mask) == 0);
    require_clean(img);
    // Down to version 2: zero clusters expanded (none may remain), and back up.
    REQUIRE(img.write_zeroes(4096 * 3, 4096 * 5));
    std::fill_n(shadow.begin() + 4096 * 3, 4096 * 5, std::byte{0});
    qcow2::amend_options v2;
    v2.version = 2;
    v2.size = 8 << 20;
    REQUIRE(img.amend(v2));
    shadow.resize(8 << 20);
    CHECK(img.header().version == 2);
    CHECK(img.size() == (8u << 20));
    require_clean(img);
    CHECK(read_all(img) == shadow);
    qcow2::amend_options v3;
    v3.version = 3;
    REQUIRE(img.amend(v3));
    CHECK(img.header().version == 3);
    CHECK(img.header().refcount_bits() == 16);
    require_clean(img);
    CHECK(read_all(img) == shadow);
    // Refusals.
    qcow2::amend_options bad;
    bad.version = 2;
    bad.refcount_bits = 8;
    CHECK(img.amend(bad).error().is(errc::invalid_argument));
    qcow2::amend_options raw_on;
    raw_on.data_file_raw = true;
    CHECK(img.amend(raw_on).error().is(errc::invalid_argument));
}
