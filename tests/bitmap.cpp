// SPDX-License-Identifier: MIT
// Persistent bitmaps over in-memory files: `bitmap_bits` (format/bitmap.hpp) and the bitmap
// operations of image.hpp (add, remove, clear, enable, disable, merge, and the bits guest
// writes set while the image is open). After each step `check` finds no corruption and no
// leak. The same operations against QEMU are in tests/interop_bitmap.cpp.
#include "qcow2/format/bitmap.hpp"

#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"
#include "qcow2/ops/check.hpp"

#include "support/image_builder.hpp"

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

using qcow2::errc;

namespace {

using mem_image = qcow2::basic_image<qcow2::io::memory>;

mem_image make(std::uint64_t size, std::uint64_t cs = 65536, unsigned version = 3) {
    qcow2::create_options o;
    o.size = size;
    o.cluster_size = cs;
    o.version = version;
    auto z = mem_image::create(qcow2::io::memory{}, o);
    REQUIRE(z);
    return std::move(*z).release();
}

void require_clean(mem_image& img) {
    REQUIRE(img.flush());
    auto rep = qcow2::check(img);
    REQUIRE(rep);
    CHECK(rep->corruptions == 0);
    CHECK(rep->leaks == 0);
    CHECK(rep->check_errors == 0);
}

std::vector<std::byte> bytes_of(const mem_image& img) {
    const auto b = img.backend().bytes();
    return {b.begin(), b.end()};
}

qcow2::result<mem_image> reopen(std::vector<std::byte> bytes, bool writable = false) {
    qcow2::open_options o;
    o.writable = writable;
    return mem_image::open(qcow2::io::memory(std::move(bytes)), o);
}

std::vector<std::uint64_t> set_bits(const qcow2::bitmap_bits& b) {
    std::vector<std::uint64_t> out;
    for (std::uint64_t k = 0; k < b.count(); ++k)
        if (b.test(k)) out.push_back(k);
    return out;
}

} // namespace

TEST_CASE("bitmap_bits: mark, test and merge", "[bitmap]") {
    qcow2::bitmap_bits b;
    b.granularity = 512;
    b.disk_size = 10000; // 20 bits in 3 bytes
    b.bytes.assign(qcow2::bitmap_data_bytes(10000, 9), 0);
    REQUIRE(b.bytes.size() == 3);
    CHECK(b.count() == 20);
    b.mark(0, 1);
    b.mark(511, 2);    // granules 0 and 1
    b.mark(9999, 100); // the last granule only, clipped to the disk
    b.mark(10000, 1);  // past the end: nothing
    b.mark(700, 0);    // empty: nothing
    CHECK(set_bits(b) == std::vector<std::uint64_t>{0, 1, 19});
    b.mark(1024, 8 * 512); // granules 2 to 9, across a byte boundary
    CHECK(set_bits(b) == std::vector<std::uint64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 19});
    CHECK(b.dirty_bits() == 11);
    CHECK(b.bytes[2] == 0x08); // unused tail bits stay clear

    qcow2::bitmap_bits coarse;
    coarse.granularity = 4096;
    coarse.disk_size = 10000; // 3 bits
    coarse.bytes.assign(1, 0);
    coarse.mark(4096, 1); // granule 1: bytes 4096..8191
    qcow2::bitmap_bits fine = b;
    std::fill(fine.bytes.begin(), fine.bytes.end(), 0);
    fine.merge(coarse);
    CHECK(set_bits(fine) == std::vector<std::uint64_t>{8, 9, 10, 11, 12, 13, 14, 15});
    coarse.merge(b); // fine into coarse: every touched 4 KiB granule
    CHECK(set_bits(coarse) == std::vector<std::uint64_t>{0, 1, 2});
    CHECK(qcow2::bitmap_table_entries(10000, 9, 512) == 1);
    CHECK(qcow2::bitmap_table_entries(std::uint64_t{1} << 40, 9, 65536) == 4096);
}

TEST_CASE("bitmaps: add, remove, clear, enable, disable, merge", "[bitmap]") {
    for (const std::uint64_t cs : {65536u, 512u}) {
        CAPTURE(cs);
        mem_image img = make(3 << 20, cs);
        REQUIRE(img.add_bitmap("dflt")); // QEMU's default: the cluster size within 4 KiB to 64 KiB
        CHECK(img.bitmaps()[0].granularity() == (cs == 512 ? 4096 : 65536));
        REQUIRE(img.remove_bitmap("dflt"));
        REQUIRE(img.add_bitmap("a", 65536));
        REQUIRE(img.add_bitmap("fine", 512, false));
        require_clean(img);
        REQUIRE(img.bitmaps().size() == 2);
        CHECK(img.bitmaps()[0].flags == qcow2::bitmap_flags::auto_);
        CHECK(img.bitmaps()[1].flags == 0);
        CHECK(img.bitmaps()[1].granularity() == 512);
        CHECK(img.header().autoclear_features & qcow2::features::bitmaps::mask);
        // Writes set the enabled bitmap's bits only.
        std::vector<std::byte> d(70000, std::byte{1});
        REQUIRE(img.write(100000, d));
        REQUIRE(img.write_zeroes(2 << 20, 1));
        REQUIRE(img.discard(65536 * 40, 65536));
        auto a = img.read_bitmap("a");
        REQUIRE(a);
        CHECK(set_bits(*a) == std::vector<std::uint64_t>{1, 2, 32, 40});
        CHECK(img.read_bitmap("fine")->dirty_bits() == 0);
        // Merge: a's 64 KiB granules into the 512-byte bitmap.
        REQUIRE(img.merge_bitmap("fine", *a));
        require_clean(img);
        auto fine = img.read_bitmap("fine");
        REQUIRE(fine);
        CHECK(fine->dirty_bits() == 4 * 128);
        CHECK(fine->test(128));
        CHECK_FALSE(fine->test(127));
        // Clear, enable, disable.
        REQUIRE(img.clear_bitmap("a"));
        CHECK(img.read_bitmap("a")->dirty_bits() == 0);
        REQUIRE(img.enable_bitmap("fine"));
        REQUIRE(img.enable_bitmap("a", false));
        CHECK(img.bitmaps()[0].flags == 0);
        CHECK(img.bitmaps()[1].flags == qcow2::bitmap_flags::auto_);
        REQUIRE(img.write(0, std::span(d).first(1)));
        CHECK(img.read_bitmap("fine")->dirty_bits() == 4 * 128 + 1);
        CHECK(img.read_bitmap("a")->dirty_bits() == 0);
        require_clean(img);
        REQUIRE(img.close());
        // Stored at close, as they were.
        auto again = reopen(bytes_of(img));
        REQUIRE(again);
        CHECK(again->read_bitmap("fine")->dirty_bits() == 4 * 128 + 1);
        CHECK(again->bitmaps()[1].flags == qcow2::bitmap_flags::auto_);
        // Removing the last bitmap takes the extension and the bit.
        REQUIRE(img.remove_bitmap("a"));
        REQUIRE(img.remove_bitmap("fine"));
        CHECK(img.bitmaps().empty());
        CHECK_FALSE(img.header().bitmaps());
        CHECK(img.header().autoclear_features == 0);
        require_clean(img);
    }
}

TEST_CASE("bitmaps: refusals in qemu-img's words", "[bitmap]") {
    mem_image img = make(1 << 20);
    REQUIRE(img.add_bitmap("b"));
    QCOW2_REQUIRE_ERROR(img.add_bitmap("b"), errc::invalid_argument, "Bitmap already exists: b");
    QCOW2_REQUIRE_ERROR(img.add_bitmap(""), errc::invalid_argument, "Bitmap name cannot be empty");
    QCOW2_REQUIRE_ERROR(img.add_bitmap("c", 1000), errc::invalid_argument,
                        "Granularity must be power of 2 and at least 512");
    QCOW2_REQUIRE_ERROR(img.add_bitmap("c", 256), errc::invalid_argument,
                        "Granularity must be power of 2 and at least 512");
    QCOW2_REQUIRE_ERROR(img.add_bitmap("c", std::uint64_t{1} << 32), errc::invalid_argument,
                        "Granularity exceeds maximum");
    QCOW2_REQUIRE_ERROR(img.add_bitmap(std::string(1024, 'x')), errc::invalid_argument,
                        "Name length exceeds maximum (1023 characters)");
    REQUIRE(img.add_bitmap(std::string(1023, 'x'), std::uint64_t{1} << 31));
    QCOW2_REQUIRE_ERROR(img.remove_bitmap("nope"), errc::invalid_argument, "Dirty bitmap 'nope' not found");
    QCOW2_REQUIRE_ERROR(img.clear_bitmap("nope"), errc::invalid_argument, "Dirty bitmap 'nope' not found");
    QCOW2_REQUIRE_ERROR(img.read_bitmap("nope"), errc::invalid_argument, "Dirty bitmap 'nope' not found");
    auto b = img.read_bitmap("b");
    REQUIRE(b);
    qcow2::bitmap_bits other = *b;
    other.disk_size = 2 << 20;
    other.bytes.resize(qcow2::bitmap_data_bytes(other.disk_size, 16));
    QCOW2_REQUIRE_ERROR(
        img.merge_bitmap("b", other), errc::invalid_argument,
        "Bitmaps are of different sizes (destination size is 1048576, source size is 2097152) and can't be merged");
    require_clean(img);

    mem_image v2 = make(1 << 20, 65536, 2);
    QCOW2_REQUIRE_ERROR(v2.add_bitmap("b"), errc::not_supported, "Cannot store dirty bitmaps in qcow2 v2 files");

    // A read-only image, and an image type that does not maintain bitmaps.
    auto ro = reopen(bytes_of(img));
    REQUIRE(ro);
    QCOW2_REQUIRE_ERROR(ro->add_bitmap("c"), errc::read_only, "read-only");
    using unaware = qcow2::basic_image<qcow2::io::memory, qcow2::maintained_features_without_bitmaps>;
    qcow2::open_options o;
    o.writable = true;
    auto u = unaware::open(qcow2::io::memory(bytes_of(img)), o);
    REQUIRE(u);
    CHECK(u->bitmaps().empty());
    CHECK_FALSE(u->header().autoclear_features & qcow2::features::bitmaps::mask); // cleared on open: inconsistent now
    QCOW2_REQUIRE_ERROR(u->add_bitmap("c"), errc::not_supported, "does not maintain persistent bitmaps");
}

TEST_CASE("bitmaps: in use on disk while a writer has them, consistent after close", "[bitmap]") {
    mem_image img = make(4 << 20);
    REQUIRE(img.add_bitmap("on"));
    REQUIRE(img.add_bitmap("off", 65536, false));
    REQUIRE(img.close());
    CHECK(img.bitmaps()[0].flags == qcow2::bitmap_flags::auto_); // no write yet: not in use
    std::vector<std::byte> d(4096, std::byte{9});
    REQUIRE(img.write(3 << 20, d));
    // The first write marked the enabled bitmap in use, durably; the disabled one is untouched.
    const auto crashed = bytes_of(img);
    {
        auto c = reopen(crashed);
        REQUIRE(c);
        CHECK(c->bitmaps()[0].flags == (qcow2::bitmap_flags::auto_ | qcow2::bitmap_flags::in_use));
        CHECK(c->bitmaps()[1].flags == 0);
        QCOW2_REQUIRE_ERROR(c->read_bitmap("on"), errc::invalid_bitmap_directory,
                            "Bitmap 'on' is inconsistent and cannot be used");
        CHECK(c->read_bitmap("off"));
    }
    {
        auto c = reopen(crashed, true);
        REQUIRE(c);
        QCOW2_REQUIRE_ERROR(c->clear_bitmap("on"), errc::invalid_argument,
                            "Bitmap 'on' is inconsistent and cannot be used");
        QCOW2_REQUIRE_ERROR(c->enable_bitmap("on", false), errc::invalid_argument, "is inconsistent");
        REQUIRE(c->write(0, d)); // an inconsistent bitmap is not tracked (and stays in use)
        REQUIRE(c->remove_bitmap("on"));
        REQUIRE(c->bitmaps().size() == 1);
        require_clean(*c);
    }
    // Within the session the bits are there; close stores them and clears the flag.
    CHECK(img.read_bitmap("on")->test(48));
    REQUIRE(img.close());
    CHECK(img.bitmaps()[0].flags == qcow2::bitmap_flags::auto_);
    require_clean(img);
    auto c = reopen(bytes_of(img));
    REQUIRE(c);
    auto on = c->read_bitmap("on");
    REQUIRE(on);
    CHECK(set_bits(*on) == std::vector<std::uint64_t>{48});
    CHECK(c->read_bitmap("off")->dirty_bits() == 0);
}

TEST_CASE("bitmaps: a resize takes them along (new granules clean, those past the end dropped)", "[bitmap]") {
    mem_image img = make(1 << 20);
    REQUIRE(img.add_bitmap("b", 4096));
    REQUIRE(img.add_bitmap("off", 65536, false));
    std::vector<std::byte> d(4096, std::byte{3});
    REQUIRE(img.write(0, d));
    REQUIRE(img.write((1 << 20) - 4096, d));
    REQUIRE(img.resize(3 << 20)); // grows while the bits are in memory
    auto b = img.read_bitmap("b");
    REQUIRE(b);
    CHECK(b->disk_size == 3 << 20);
    CHECK(set_bits(*b) == std::vector<std::uint64_t>{0, 255});
    CHECK(img.bitmaps()[0].flags == qcow2::bitmap_flags::auto_);
    CHECK(img.bitmaps()[0].table_size == qcow2::bitmap_table_entries(3 << 20, 12, 65536));
    REQUIRE(img.write(2 << 20, d));
    require_clean(img);
    REQUIRE(img.resize((1 << 20) - 512)); // shrinks: the last granule is partial now
    b = img.read_bitmap("b");
    REQUIRE(b);
    CHECK(set_bits(*b) == std::vector<std::uint64_t>{0, 255});
    CHECK(img.read_bitmap("off")->count() == 16);
    require_clean(img);
    REQUIRE(img.close());
    auto again = reopen(bytes_of(img));
    REQUIRE(again);
    CHECK(set_bits(*again->read_bitmap("b")) == std::vector<std::uint64_t>{0, 255});
    // An inconsistent bitmap stops a resize, as in QEMU.
    REQUIRE(img.write(0, d));
    auto left_open = reopen(bytes_of(img), true);
    REQUIRE(left_open);
    QCOW2_REQUIRE_ERROR(left_open->resize(2 << 20), errc::invalid_argument,
                        "Bitmap 'b' is inconsistent and cannot be used");
    CHECK(left_open->size() == (1 << 20) - 512);
}
