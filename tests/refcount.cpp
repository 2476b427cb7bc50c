// SPDX-License-Identifier: MIT
// Refcount entries of every width (format/refcount.hpp) and the refcount reader
// (metadata/refcounts.hpp) over in-memory files, including its errors.
#include "qcow2/format/refcount.hpp"
#include "qcow2/metadata/refcounts.hpp"

#include "qcow2/io/memory.hpp"

#include <catch2/catch.hpp>

#include <cstddef>
#include <algorithm>
#include <climits>
#include <cstdint>
#include <random>
#include <vector>

using qcow2::errc;

TEST_CASE("refcount entries: widths, maxima and block geometry", "[refcount]") {
    CHECK(qcow2::refcount_max(0) == 1);
    CHECK(qcow2::refcount_max(1) == 3);
    CHECK(qcow2::refcount_max(2) == 15);
    CHECK(qcow2::refcount_max(3) == 255);
    CHECK(qcow2::refcount_max(4) == 65535);
    CHECK(qcow2::refcount_max(5) == 0xFFFFFFFFull);
    CHECK(qcow2::refcount_max(6) == ~std::uint64_t{0});
    CHECK(qcow2::refcount_entries_per_block(16, 4) == 32768);
    CHECK(qcow2::refcount_entries_per_block(9, 0) == 4096);
    CHECK(qcow2::refcount_entries_per_block(21, 6) == 262144);
    CHECK(qcow2::reftable_bits::offset_mask == 0xFFFFFFFFFFFFFE00ull);
    CHECK(qcow2::reftable_bits::reserved == 0x1FFull);
}

TEST_CASE("refcount entries: get/set round trips for every width", "[refcount]") {
    std::mt19937_64 rng(42);
    for (unsigned order = 0; order <= 6; ++order) {
        CAPTURE(order);
        const unsigned bits = 1u << order;
        std::vector<std::byte> block(512);
        const std::uint64_t n = block.size() * 8 / bits;
        std::vector<std::uint64_t> want(n);
        for (auto& w : want) w = rng() & qcow2::refcount_max(order);
        for (std::uint64_t k = 0; k < n; ++k) qcow2::set_refcount(block, k, order, want[k]);
        for (std::uint64_t k = 0; k < n; ++k) REQUIRE(qcow2::get_refcount(block, k, order) == want[k]);
        // Setting one entry leaves its neighbours alone, at zero and at max.
        for (std::uint64_t k : {std::uint64_t{0}, n / 2 + 1, n - 1}) {
            qcow2::set_refcount(block, k, order, qcow2::refcount_max(order));
            CHECK(qcow2::get_refcount(block, k, order) == qcow2::refcount_max(order));
            qcow2::set_refcount(block, k, order, 0);
            CHECK(qcow2::get_refcount(block, k, order) == 0);
            if (k > 0) CHECK(qcow2::get_refcount(block, k - 1, order) == want[k - 1]);
            if (k + 1 < n) CHECK(qcow2::get_refcount(block, k + 1, order) == want[k + 1]);
            want[k] = 0;
        }
    }
}

TEST_CASE("refcount entries: byte layout", "[refcount]") {
    std::vector<std::byte> b(8);
    qcow2::set_refcount(b, 1, 0, 1); // 1-bit entry 1 = bit 1 of byte 0 (LSB first)
    CHECK(b[0] == std::byte{0x02});
    qcow2::set_refcount(b, 3, 2, 0xA); // 4-bit entry 3 = high nibble of byte 1
    CHECK(b[1] == std::byte{0xA0});
    std::vector<std::byte> c(8);
    qcow2::set_refcount(c, 1, 4, 0x1234); // 16-bit big-endian at bytes 2..3
    CHECK(c[2] == std::byte{0x12});
    CHECK(c[3] == std::byte{0x34});
    qcow2::set_refcount(c, 0, 5, 0xDEADBEEF);
    CHECK(c[0] == std::byte{0xDE});
    CHECK(c[3] == std::byte{0xEF});
    CHECK(qcow2::get_refcount(c, 0, 5) == 0xDEADBEEFull);
    std::vector<std::byte> d(8);
    qcow2::set_refcount(d, 0, 6, 0x0102030405060708ull);
    CHECK(d[0] == std::byte{0x01});
    CHECK(d[7] == std::byte{0x08});
}

namespace {

constexpr std::uint64_t cs = 512;

/// A file of `clusters` 512-byte clusters: reftable in cluster 1 (one cluster), refblocks where told.
qcow2::io::memory make_file(std::uint64_t clusters, unsigned order, std::vector<std::uint64_t> reftable, qcow2::header& h) {
    std::vector<std::byte> bytes(static_cast<std::size_t>(clusters * cs));
    for (std::size_t i = 0; i < reftable.size(); ++i) qcow2::detail::store_be64(bytes, cs + i * 8, reftable[i]);
    h = {};
    h.cluster_bits = 9;
    h.refcount_order = order;
    h.refcount_table_offset = cs;
    h.refcount_table_clusters = 1;
    return qcow2::io::memory(qcow2::io::memory::vector_type(bytes.begin(), bytes.end()));
}

} // namespace

TEST_CASE("refcount reader: reads entries of every width", "[refcount]") {
    for (unsigned order = 0; order <= 6; ++order) {
        CAPTURE(order);
        qcow2::header h;
        auto file = make_file(8, order, {2 * cs, 0, 3 * cs}, h);
        // Fill the two blocks through the format functions.
        std::vector<std::byte> blk(cs);
        const std::uint64_t per = qcow2::refcount_entries_per_block(9, order);
        for (std::uint64_t k = 0; k < per; ++k) qcow2::set_refcount(blk, k, order, (k + 1) & qcow2::refcount_max(order));
        REQUIRE(!file.write_at(2 * cs, blk));
        REQUIRE(!file.write_at(3 * cs, blk));
        auto r = qcow2::basic_refcount_reader<qcow2::io::memory>::open(file, h);
        REQUIRE(r);
        CHECK(r->table().size() == cs / 8);
        CHECK(r->entries_per_block() == per);
        CHECK(r->max_refcount() == qcow2::refcount_max(order));
        for (std::uint64_t k : {std::uint64_t{0}, std::uint64_t{1}, per - 1}) {
            auto v = r->get(k);
            REQUIRE(v);
            CHECK(*v == ((k + 1) & qcow2::refcount_max(order)));
            auto w = r->get(2 * per + k); // third reftable entry
            REQUIRE(w);
            CHECK(*w == *v);
        }
        auto z = r->get(per + 3); // zero reftable entry
        REQUIRE(z);
        CHECK(*z == 0);
        auto beyond = r->get(per * (cs / 8) + 5); // beyond the table
        REQUIRE(beyond);
        CHECK(*beyond == 0);
    }
}

TEST_CASE("refcount reader: errors name the reftable index", "[refcount]") {
    qcow2::header h;
    SECTION("misaligned refcount block") {
        auto file = make_file(8, 4, {}, h);
        h.cluster_bits = 10; // 1 KiB clusters: the block at 1536 is misaligned
        h.refcount_table_offset = 1024;
        std::vector<std::byte> t(8);
        qcow2::detail::store_be64(t, 0, 1536);
        REQUIRE(!file.write_at(1024, t));
        auto r = qcow2::basic_refcount_reader<qcow2::io::memory>::open(file, h);
        REQUIRE(r);
        auto v = r->get(0);
        REQUIRE(!v);
        CHECK(v.error() == errc::misaligned_offset);
        CHECK_THAT(v.error().message(), Catch::Contains("reftable index 0"));
    }
    SECTION("refcount block past the end of the file") {
        auto file = make_file(4, 4, {0, 100 * cs}, h);
        auto r = qcow2::basic_refcount_reader<qcow2::io::memory>::open(file, h);
        REQUIRE(r);
        auto ok = r->get(0);
        REQUIRE(ok);
        CHECK(*ok == 0);
        auto v = r->get(qcow2::refcount_entries_per_block(9, 4) + 1);
        REQUIRE(!v);
        CHECK(v.error() == errc::short_read);
        CHECK_THAT(v.error().message(), Catch::Contains("reftable index 1"));
    }
    SECTION("refcount table over 8 MiB") {
        auto file = make_file(4, 4, {}, h);
        h.refcount_table_clusters = (8u << 20) / 512 + 1;
        auto r = qcow2::basic_refcount_reader<qcow2::io::memory>::open(file, h);
        REQUIRE(!r);
        CHECK(r.error() == errc::refcount_table_too_large);
    }
    SECTION("refcount table past the end of the file reads as zeroes") {
        auto file = make_file(2, 4, {}, h);
        h.refcount_table_offset = 64 * cs;
        auto r = qcow2::basic_refcount_reader<qcow2::io::memory>::open(file, h);
        REQUIRE(r);
        for (auto e : r->table()) CHECK(e == 0);
        auto v = r->get(0);
        REQUIRE(v);
        CHECK(*v == 0);
    }
    SECTION("reserved bits of a reftable entry are ignored by lookups") {
        auto file = make_file(4, 4, {2 * cs | 1}, h);
        std::vector<std::byte> blk(cs);
        qcow2::set_refcount(blk, 0, 4, 7);
        REQUIRE(!file.write_at(2 * cs, blk));
        auto r = qcow2::basic_refcount_reader<qcow2::io::memory>::open(file, h);
        REQUIRE(r);
        auto v = r->get(0);
        REQUIRE(v);
        CHECK(*v == 7);
    }
}

namespace {

using table_type = qcow2::basic_refcount_table<qcow2::io::memory>;

/// A 512-byte-cluster file whose clusters 0..3 are in use: header, reftable (cluster 1), the
/// first refcount block (cluster 2), cluster 3; the block counts them.
qcow2::io::memory used_file(unsigned order, qcow2::header& h) {
    auto file = make_file(4, order, {2 * cs}, h);
    std::vector<std::byte> blk(cs);
    for (std::uint64_t k = 0; k < 4; ++k) qcow2::set_refcount(blk, k, order, 1);
    REQUIRE(!file.write_at(2 * cs, blk));
    return file;
}

std::uint64_t get(table_type& t, qcow2::io::memory& f, std::uint64_t c) {
    auto v = t.get(f, c);
    REQUIRE(v);
    return *v;
}

} // namespace

TEST_CASE("refcount table: changes of every width, refused past the maximum and below zero", "[refcount]") {
    for (unsigned order = 0; order <= 6; ++order) {
        CAPTURE(order);
        qcow2::header h;
        auto file = used_file(order, h);
        auto t = table_type::open(file, h);
        REQUIRE(t);
        const std::uint64_t maxv = qcow2::refcount_max(order);
        CHECK(get(*t, file, 3) == 1);
        // Up to the maximum, one step at a time for narrow widths.
        const std::uint64_t step = maxv > 1000 ? std::min<std::uint64_t>(maxv - 1, INT64_MAX) : 1;
        for (std::uint64_t v = 1; v < maxv; v += step) REQUIRE(t->update(file, 3, 1, static_cast<std::int64_t>(std::min(step, maxv - v))));
        CHECK(get(*t, file, 3) == maxv);
        // One more is refused, and refusing changes nothing, for the whole run either.
        auto over = t->update(file, 2, 2, 1);
        REQUIRE_FALSE(over);
        CHECK(over.error() == errc::refcount_overflow);
        CHECK(get(*t, file, 2) == 1);
        CHECK(get(*t, file, 3) == maxv);
        // Below zero is a corruption, refused as a whole too.
        REQUIRE(t->update(file, 3, 1, -static_cast<std::int64_t>(std::min<std::uint64_t>(maxv, 1u << 30))));
        if (maxv <= (1u << 30)) {
            CHECK(get(*t, file, 3) == 0);
            auto under = t->update(file, 2, 2, -1);
            REQUIRE_FALSE(under);
            CHECK(under.error() == errc::image_corrupt);
            CHECK(get(*t, file, 2) == 1);
        }
        // Nothing reaches the file before write_back.
        auto reader = qcow2::basic_refcount_reader<qcow2::io::memory>::open(file, h);
        REQUIRE(reader);
        CHECK(*reader->get(3) == 1);
        REQUIRE(t->write_back(file));
        auto reader2 = qcow2::basic_refcount_reader<qcow2::io::memory>::open(file, h);
        REQUIRE(reader2);
        CHECK(*reader2->get(3) == get(*t, file, 3));
    }
}

TEST_CASE("refcount table: allocation is first fit from the free-cluster hint", "[refcount]") {
    qcow2::header h;
    auto file = used_file(4, h);
    auto t = table_type::open(file, h);
    REQUIRE(t);
    auto a = t->allocate(file, 3);
    REQUIRE(a);
    CHECK(a->first == 4);
    CHECK(a->count == 3);
    auto b = t->allocate(file, 2);
    REQUIRE(b);
    CHECK(b->first == 7);
    // Free one cluster in the middle: a run of one fits there, a run of two does not.
    std::vector<std::uint64_t> freed;
    REQUIRE(t->release(file, 5, 1, [&](std::uint64_t c) { freed.push_back(c); }));
    CHECK(freed == std::vector<std::uint64_t>{5});
    CHECK(t->free_hint() == 5);
    auto c = t->allocate(file, 2);
    REQUIRE(c);
    CHECK(c->first == 9);
    auto d = t->allocate(file, 1);
    REQUIRE(d);
    CHECK(d->first == 5);
    // Without `exact`, the first free run is cut to what is free there.
    REQUIRE(t->release(file, 8, 1, [](std::uint64_t) {}));
    auto e = t->allocate(file, 4, false);
    REQUIRE(e);
    CHECK(e->first == 8);
    CHECK(e->count == 1);
    auto zero = t->allocate(file, 0);
    REQUIRE_FALSE(zero);
    CHECK(zero.error() == errc::invalid_argument);
}

TEST_CASE("refcount table: new blocks and a new table describe themselves, the header switches last", "[refcount]") {
    for (unsigned order : {0u, 4u, 6u}) {
        CAPTURE(order);
        qcow2::header h;
        auto file = used_file(order, h);
        auto t = table_type::open(file, h);
        REQUIRE(t);
        const std::uint64_t per_block = qcow2::refcount_entries_per_block(9, order);
        const std::uint64_t covered = per_block * (cs / 8); // what one reftable cluster covers
        // Allocate past the first block: the missing block goes in the first free cluster
        // (counted by the first block), and the run comes after it.
        auto a = t->allocate(file, per_block);
        REQUIRE(a);
        CHECK(a->first == 5);
        CHECK(t->table()[1] == 4 * cs);
        CHECK(get(*t, file, 4) == 1);
        auto b = t->allocate(file, 2);
        REQUIRE(b);
        CHECK(b->first == 5 + per_block);
        // Fill past what the table covers: it grows, self-describing, and the header moves.
        auto big = t->allocate(file, covered);
        REQUIRE(big);
        REQUIRE(t->write_back(file));
        CHECK(t->table_offset() != cs);
        std::vector<std::byte> hb(12);
        REQUIRE(!file.read_at(48, hb));
        CHECK(qcow2::detail::load_be64(hb, 0) == t->table_offset());
        CHECK(qcow2::detail::load_be32(hb, 8) == t->table_clusters());
        // The old table's cluster was freed, and the next block created went there (the first free cluster).
        CHECK(std::find(t->table().begin(), t->table().end(), cs) != t->table().end());
        CHECK(get(*t, file, 1) == 1);
        // Every block and table cluster has refcount 1.
        for (std::uint64_t k = 0; k < t->table_clusters(); ++k) CHECK(get(*t, file, (t->table_offset() / cs) + k) == 1);
        for (const std::uint64_t e : t->table())
            if (e) CHECK(get(*t, file, e / cs) == 1);
        // A fresh reader of the file agrees with the table about everything allocated.
        h.refcount_table_offset = t->table_offset();
        h.refcount_table_clusters = t->table_clusters();
        auto reader = qcow2::basic_refcount_reader<qcow2::io::memory>::open(file, h);
        REQUIRE(reader);
        for (std::uint64_t c : {std::uint64_t{0}, std::uint64_t{4}, a->first + a->count - 1, b->first, big->first, big->first + big->count - 1})
            CHECK(*reader->get(c) == get(*t, file, c));
        CHECK(t->overlaps(t->table_offset(), 1));
        CHECK(t->overlaps(4 * cs + 100, 1));
        CHECK_FALSE(t->overlaps(3 * cs, cs));
        CHECK_FALSE(t->overlaps(5 * cs, cs));
    }
}
