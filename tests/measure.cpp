// SPDX-License-Identifier: MIT
// `qcow2::measure` (ops/measure.hpp): the numbers of `qemu-img measure -O qcow2` 7.2 for
// --size (figures taken from qemu-img runs), the L1 limit at its exact boundary, the
// options QEMU refuses, the data clusters a source's ranges require, the bitmaps figure,
// and a cross-check with the library itself: an image created with preallocation=metadata
// is exactly as large as the fully allocated size. Against qemu-img on real sources:
// tests/interop_qemu_img_rest.cpp.
#include "qcow2/ops/measure.hpp"

#include "qcow2/io/memory.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

using qcow2::errc;

namespace {

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB, TiB = 1024 * GiB;

qcow2::create_options opts(std::uint64_t size, std::uint64_t cluster_size = 65536, unsigned refcount_bits = 16,
                           bool extended_l2 = false) {
    qcow2::create_options o;
    o.size = size;
    o.cluster_size = cluster_size;
    o.refcount_bits = refcount_bits;
    o.extended_l2 = extended_l2;
    return o;
}

qcow2::measurement must_measure(const qcow2::create_options& o) {
    auto m = qcow2::measure(o);
    INFO((m ? std::string() : m.error().what()));
    REQUIRE(m);
    return *m;
}

qcow2::measurement must_measure(const qcow2::create_options& o, const qcow2::measure_source& s) {
    auto m = qcow2::measure(o, s);
    INFO((m ? std::string() : m.error().what()));
    REQUIRE(m);
    return *m;
}

} // namespace

// The fixed point of the refcount metadata, at compile time.
static_assert(qcow2::refcount_metadata_size(1, 65536, 16) == 2 * 65536);           // one block, one table cluster
static_assert(qcow2::refcount_metadata_size(32768 - 2, 65536, 16) == 2 * 65536);   // the block counts itself and the table
static_assert(qcow2::refcount_metadata_size(32768 - 1, 65536, 16) == 3 * 65536);   // one cluster more needs a second block
static_assert(qcow2::refcount_metadata_size(0, 512, 1) == 0);
static_assert(qcow2::fully_allocated_size(0, 65536, 16, false) == 196608);
static_assert(qcow2::fully_allocated_size(GiB, 65536, 16, false) == 1074135040);

TEST_CASE("measure: --size figures are qemu-img's", "[measure]") {
    struct row {
        const char* what;
        qcow2::create_options o;
        std::uint64_t required, fully_allocated;
    };
    auto falloc = opts(3 * GiB, 16 * KiB, 8, true);
    falloc.prealloc = qcow2::preallocation::falloc;
    auto full = opts(GiB);
    full.prealloc = qcow2::preallocation::full;
    auto metadata = opts(GiB);
    metadata.prealloc = qcow2::preallocation::metadata;
    auto v2 = opts(100 * GiB);
    v2.version = 2;
    const std::vector<row> rows{
        // qemu-img measure -O qcow2 [-o ...] --size ... --output=json
        {"defaults, 1G", opts(GiB), 393216, 1074135040},
        {"size 0", opts(0), 196608, 196608},
        {"size 1000 (rounded up to a cluster)", opts(1000), 327680, 393216},
        {"extended_l2, 5G", opts(5 * GiB, 65536, 16, true), 1703936, 5370413056},
        {"512-byte clusters, 100M", opts(100 * MiB, 512), 2088960, 106946560},
        {"1-bit refcounts, 4k clusters, 10G", opts(10 * GiB, 4096, 1), 21352448, 10758770688},
        {"64-bit refcounts, 2M clusters, 1T", opts(TiB, 2 * MiB, 64), 16777216, 1099528404992},
        {"compat=0.10, 100G", v2, 16646144, 107390828544},
        {"preallocation=falloc, 16k clusters, extended_l2, 8-bit refcounts", falloc, 3224633344, 3224633344},
        {"preallocation=full", full, 1074135040, 1074135040},
        {"preallocation=metadata counts metadata only", metadata, 393216, 1074135040},
    };
    for (const auto& r : rows) {
        DYNAMIC_SECTION(r.what) {
            const auto m = must_measure(r.o);
            CHECK(m.required == r.required);
            CHECK(m.fully_allocated == r.fully_allocated);
            CHECK_FALSE(m.bitmaps); // never without a source
        }
    }
}

TEST_CASE("measure: the L1 limit of 32 MiB, at its boundary", "[measure]") {
    // 512-byte clusters: an L2 table covers 64 clusters (32 KiB), 4 Mi tables fit: 128 GiB.
    CHECK(qcow2::measure(opts(128 * GiB, 512)));
    auto over = qcow2::measure(opts(128 * GiB + 512, 512));
    REQUIRE_FALSE(over);
    CHECK(over.error().is(errc::image_too_large));
    // 16 KiB clusters: 128 TiB with 2048 entries per table; extended L2 entries are twice
    // as large, so half of it.
    CHECK(qcow2::measure(opts(128 * TiB, 16 * KiB)));
    CHECK(qcow2::measure(opts(64 * TiB, 16 * KiB, 16, true)));
    CHECK_FALSE(qcow2::measure(opts(64 * TiB + 16 * KiB, 16 * KiB, 16, true)));
    auto huge = qcow2::measure(opts(7ull << 60, 2 * MiB));
    REQUIRE_FALSE(huge);
    CHECK(huge.error().is(errc::image_too_large));
    CHECK(qcow2::measure(opts(~std::uint64_t{0})).error().is(errc::image_too_large)); // rounding up overflows
}

TEST_CASE("measure: options QEMU refuses", "[measure]") {
    auto v2_refcounts = opts(GiB, 65536, 8);
    v2_refcounts.version = 2;
    auto v4 = opts(GiB);
    v4.version = 4;
    const std::vector<qcow2::create_options> bad{opts(GiB, 3000), opts(GiB, 256), opts(GiB, 4 * MiB), opts(GiB, 8192, 16, true),
                                                 opts(GiB, 65536, 3), opts(GiB, 65536, 0), opts(GiB, 65536, 128), v2_refcounts, v4};
    for (const auto& o : bad) {
        auto m = qcow2::measure(o);
        REQUIRE_FALSE(m);
        CHECK(m.error().is(errc::invalid_argument));
    }
    // What measure does not look at is not checked (as in QEMU): extended L2 with version 2.
    auto v2_extended = opts(GiB, 65536, 16, true);
    v2_extended.version = 2;
    CHECK(qcow2::measure(v2_extended));
}

TEST_CASE("measure: the data clusters a source's ranges require", "[measure]") {
    const auto base = must_measure(opts(64 * MiB));
    const auto with = [&](std::vector<qcow2::guest_range> ranges, qcow2::create_options o = opts(0)) {
        qcow2::measure_source s;
        s.size = 64 * MiB;
        s.data = ranges;
        return must_measure(o, s);
    };
    // The metadata is that of the source's size, whatever target.size says.
    CHECK(with({}).required == base.required);
    CHECK(with({}).fully_allocated == base.fully_allocated);
    CHECK(with({{0, 1}}).required == base.required + 65536);
    CHECK(with({{0, 65536}}).required == base.required + 65536);
    CHECK(with({{65535, 2}}).required == base.required + 2 * 65536);                 // across a boundary
    CHECK(with({{0, 4096}, {8192, 4096}, {60000, 6000}}).required == base.required + 2 * 65536); // shared clusters count once
    CHECK(with({{0, 4096}, {4096, 4096}}).required == base.required + 65536);         // touching ranges
    CHECK(with({{0, 64 * MiB}}).required == base.fully_allocated);
    // A backing file in the target: every cluster (it may share nothing with the source).
    auto backed = opts(0);
    backed.backing_file = "base.qcow2";
    CHECK(with({{0, 4096}}, backed).required == base.fully_allocated);
    // Preallocation with data: every cluster too.
    auto full = opts(0);
    full.prealloc = qcow2::preallocation::full;
    CHECK(with({}, full).required == base.fully_allocated);

    // Out of order, or past the source's end: refused.
    qcow2::measure_source s;
    s.size = 64 * MiB;
    const std::vector<qcow2::guest_range> unordered{{65536, 1}, {0, 1}};
    s.data = unordered;
    CHECK(qcow2::measure(opts(0), s).error().is(errc::invalid_argument));
    const std::vector<qcow2::guest_range> past{{64 * MiB - 1, 2}};
    s.data = past;
    CHECK(qcow2::measure(opts(0), s).error().is(errc::invalid_argument));
    // The L1 limit is checked for target.size, as qemu-img checks its -o size.
    s.data = {};
    CHECK(qcow2::measure(opts(129 * GiB, 512), s).error().is(errc::image_too_large));
    s.size = 200 * GiB;
    CHECK(qcow2::measure(opts(0, 512), s));
}

TEST_CASE("measure: bitmaps, only for a source that can hold them and a version 3 target", "[measure]") {
    qcow2::bitmap_entry a, b;
    a.name = "b1";           // 1 GiB at 64 KiB granularity: 16384 bits, 2 KiB
    a.granularity_bits = 16;
    b.name = std::string(30, 'x');
    b.granularity_bits = 9;  // 1 GiB at 512 bytes: 2 Mi bits, 256 KiB
    b.extra.resize(16);      // extra data is not copied
    const std::vector<qcow2::bitmap_entry> bitmaps{a, b};
    // a: 1 data cluster + 1 table cluster; b: 4 data clusters + 1 table cluster; directory
    // entries of 32 and 56 bytes: one cluster.
    CHECK(qcow2::bitmaps_copy_size(bitmaps, GiB, 65536) == (2 + 5 + 1) * 65536);
    CHECK(qcow2::bitmaps_copy_size({}, GiB, 65536) == 0);
    // 512-byte clusters: a takes 4 data clusters and 1 table cluster, b 512 and 8; 88 directory bytes.
    CHECK(qcow2::bitmaps_copy_size(bitmaps, GiB, 512) == (4 + 1 + 512 + 8 + 1) * 512);

    qcow2::measure_source s;
    s.size = GiB;
    CHECK_FALSE(must_measure(opts(0), s).bitmaps); // a source that cannot hold bitmaps
    s.bitmaps = std::span<const qcow2::bitmap_entry>();
    CHECK(must_measure(opts(0), s).bitmaps == std::uint64_t{0}); // one that could, without any: "bitmaps": 0
    s.bitmaps = std::span(bitmaps);
    CHECK(must_measure(opts(0), s).bitmaps == (2 + 5 + 1) * 65536);
    auto v2 = opts(0);
    v2.version = 2;
    CHECK_FALSE(must_measure(v2, s).bitmaps);
}

TEST_CASE("measure: an image created with preallocation=metadata is the fully allocated size", "[measure]") {
    struct row {
        std::uint64_t size, cluster_size;
        unsigned refcount_bits;
        bool extended_l2;
    };
    const std::vector<row> rows{{100 * MiB, 65536, 16, false}, {100 * MiB, 4096, 16, false}, {10 * MiB, 512, 1, false},
                                {64 * MiB, 16384, 64, true},  {5 * MiB + 512, 2 * MiB, 8, false}};
    for (const auto& r : rows) {
        DYNAMIC_SECTION(r.size << " bytes, " << r.cluster_size << "-byte clusters, " << r.refcount_bits << "-bit refcounts"
                                << (r.extended_l2 ? ", extended L2" : "")) {
            auto o = opts(r.size, r.cluster_size, r.refcount_bits, r.extended_l2);
            o.prealloc = qcow2::preallocation::metadata;
            const auto m = must_measure(o);
            auto created = qcow2::basic_image<qcow2::io::memory>::create(qcow2::io::memory{}, o);
            REQUIRE(created);
            auto img = std::move(*created).release();
            REQUIRE(img.close());
            CHECK(qcow2::io::size_of(img.backend()).value() == m.fully_allocated);
        }
    }
}
