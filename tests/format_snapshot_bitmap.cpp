// SPDX-License-Identifier: MIT
#include "qcow2/format/snapshot.hpp"
#include "qcow2/format/bitmap.hpp"

#include "support/image_builder.hpp"

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

using namespace qcow2;
using namespace qcow2::test;

namespace {

constexpr std::uint64_t cs = 65536;

/// Extra data of `n` bytes holding the known fields (those that fit) and then a pattern.
std::vector<std::byte> extra_data(std::size_t n, std::uint64_t vm_state, std::uint64_t disk, std::uint64_t icount) {
    std::vector<std::byte> e(n);
    if (n >= 8) detail::store_be64(e, 0, vm_state);
    if (n >= 16) detail::store_be64(e, 8, disk);
    if (n >= 24) detail::store_be64(e, 16, icount);
    for (std::size_t i = 24; i < n; ++i) e[i] = static_cast<std::byte>(0xc0 + i);
    return e;
}

snapshot_entry snap(std::uint64_t l1, std::string id, std::string name, std::vector<std::byte> extra) {
    snapshot_entry s;
    s.l1_table_offset = l1;
    s.l1_size = 2;
    s.date_sec = 1700000000;
    s.date_nsec = 123456789;
    s.vm_clock_nsec = 42'000'000'000ull;
    s.vm_state_size32 = 0x1000;
    s.extra = std::move(extra);
    s.id = std::move(id);
    s.name = std::move(name);
    return s;
}

std::vector<std::byte> from_hex(std::string_view hex) {
    auto nibble = [](char c) { return static_cast<unsigned>(c <= '9' ? c - '0' : c - 'a' + 10); };
    std::vector<std::byte> out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
        out.push_back(static_cast<std::byte>(nibble(hex[i]) << 4 | nibble(hex[i + 1])));
    return out;
}

} // namespace

TEST_CASE("snapshot tables round trip with 0, 16, 24 and 40 bytes of extra data", "[snapshot]") {
    const std::vector<snapshot_entry> entries{
        snap(0x40000, "1", "no extra", {}),
        snap(0x50000, "2", "v3 minimum", extra_data(16, 1ull << 33, 1ull << 30, 0)),
        snap(0x60000, "3", "qemu", extra_data(24, 0, 1ull << 30, UINT64_MAX)),
        snap(0x70000, "10", "future fields", extra_data(40, 77, 2ull << 30, 5'000'000)),
    };
    const auto table = encode_snapshot_table(entries);
    // 40 + extra + id + name, each rounded up to 8.
    CHECK(snapshot_entry_size(entries[0]) == 56);  // 40 + 0 + 1 + 8 = 49
    CHECK(snapshot_entry_size(entries[1]) == 72);  // 40 + 16 + 1 + 10 = 67
    CHECK(snapshot_entry_size(entries[2]) == 72);  // 40 + 24 + 1 + 4 = 69
    CHECK(snapshot_entry_size(entries[3]) == 96);  // 40 + 40 + 2 + 13 = 95
    REQUIRE(table.size() == 56 + 72 + 72 + 96);
    CHECK(snapshot_table_size(entries) == table.size());

    // Field placement of the first and second entries.
    CHECK(peek64(table, 0) == 0x40000);
    CHECK(peek32(table, 8) == 2);
    CHECK(detail::load_be16(table, 12) == 1);
    CHECK(detail::load_be16(table, 14) == 8);
    CHECK(peek32(table, 16) == 1700000000);
    CHECK(peek32(table, 20) == 123456789);
    CHECK(peek64(table, 24) == 42'000'000'000ull);
    CHECK(peek32(table, 32) == 0x1000);
    CHECK(peek32(table, 36) == 0);
    CHECK(table[40] == std::byte{'1'});
    CHECK(table[49] == std::byte{0}); // padding
    CHECK(peek32(table, 56 + 36) == 16);
    CHECK(peek64(table, 56 + 40) == (1ull << 33));

    const auto decoded = decode_snapshot_table(table, 4, cs);
    REQUIRE(decoded);
    CHECK(*decoded == entries);
    CHECK(encode_snapshot_table(*decoded) == table);

    const auto& d = *decoded;
    // No extra data: the 32-bit VM state size, no disk size, no icount.
    CHECK(d[0].vm_state_size() == 0x1000);
    CHECK_FALSE(d[0].disk_size());
    CHECK_FALSE(d[0].icount());
    // 16 bytes: the 64-bit VM state size overrides the 32-bit one.
    CHECK(d[1].vm_state_size() == (1ull << 33));
    CHECK(d[1].disk_size() == (1ull << 30));
    CHECK_FALSE(d[1].icount());
    // 24 bytes with icount -1: disabled.
    CHECK(d[2].vm_state_size() == 0);
    CHECK(d[2].disk_size() == (1ull << 30));
    CHECK_FALSE(d[2].icount());
    // 40 bytes: icount, and 16 unknown bytes kept.
    CHECK(d[3].icount() == 5'000'000u);
    CHECK(d[3].extra.size() == 40);
    CHECK(d[3].extra[39] == std::byte{0xc0 + 39});
    CHECK(d[3].id == "10");
    CHECK(d[3].name == "future fields");

    // Fewer entries than the table holds: the rest is not read.
    const auto first_two = decode_snapshot_table(table, 2, cs);
    REQUIRE(first_two);
    CHECK(first_two->size() == 2);
    CHECK(decode_snapshot_table({}, 0, cs)->empty());
}

TEST_CASE("a snapshot table written by QEMU decodes and re-encodes to the same bytes", "[snapshot]") {
    // `qemu-img snapshot -c snap1`, then `-c second`, on a 1 GiB image (QEMU 7.2): two entries, 24 bytes of extra data.
    const auto table = from_hex("00000000000400000000000200010005"
                                "6b06aaee0fa9b8480000000000000000"
                                "00000000000000180000000000000000"
                                "00000000400000000000000000000000"
                                "31736e61703100000000000000060000"
                                "00000002000100066b06aaee109e12f8"
                                "00000000000000000000000000000018"
                                "00000000000000000000000040000000"
                                "0000000000000000327365636f6e6400"); // + 1 byte of padding
    REQUIRE(table.size() == 0x90);
    const auto d = decode_snapshot_table(table, 2, cs);
    REQUIRE(d);
    REQUIRE(d->size() == 2);
    CHECK((*d)[0].id == "1");
    CHECK((*d)[0].name == "snap1");
    CHECK((*d)[0].l1_table_offset == 0x40000);
    CHECK((*d)[0].l1_size == 2);
    CHECK((*d)[0].date_sec == 0x6b06aaee);
    CHECK((*d)[0].extra.size() == 24);
    CHECK((*d)[0].vm_state_size() == 0);
    CHECK((*d)[0].disk_size() == (1ull << 30));
    CHECK((*d)[1].id == "2");
    CHECK((*d)[1].name == "second");
    CHECK((*d)[1].l1_table_offset == 0x60000);
    CHECK(encode_snapshot_table(*d) == table);
}

TEST_CASE("malformed snapshot tables", "[snapshot]") {
    const std::vector<snapshot_entry> one{snap(0x40000, "1", "s", extra_data(24, 0, 1ull << 30, UINT64_MAX))};
    auto table = encode_snapshot_table(one);
    REQUIRE(decode_snapshot_table(table, 1, cs));

    SECTION("too many snapshots") {
        QCOW2_REQUIRE_ERROR(decode_snapshot_table(table, 65537, cs), errc::too_many_snapshots, "nb_snapshots is 65537");
    }
    SECTION("fixed part past the end of the table") {
        QCOW2_REQUIRE_ERROR(decode_snapshot_table(std::span(table).first(39), 1, cs), errc::invalid_snapshot_table,
                            "snapshot 0 at table offset 0: entry runs past the end of the table");
        QCOW2_REQUIRE_ERROR(decode_snapshot_table(table, 2, cs), errc::invalid_snapshot_table,
                            "snapshot 1 at table offset 72: entry runs past");
    }
    SECTION("variable part past the end of the table") {
        QCOW2_REQUIRE_ERROR(decode_snapshot_table(std::span(table).first(65), 1, cs), errc::invalid_snapshot_table,
                            "entry runs past the end of the table");
        poke16(table, 14, 100); // name length
        QCOW2_REQUIRE_ERROR(decode_snapshot_table(table, 1, cs), errc::invalid_snapshot_table, "runs past");
    }
    SECTION("too much extra data") {
        poke32(table, 36, 1025);
        QCOW2_REQUIRE_ERROR(decode_snapshot_table(table, 1, cs), errc::invalid_snapshot_table,
                            "extra data of 1025 bytes exceeds 1024");
    }
    SECTION("misaligned L1 table") {
        poke64(table, 0, 0x40200);
        QCOW2_REQUIRE_ERROR(decode_snapshot_table(table, 1, cs), errc::invalid_snapshot_table,
                            "L1 table offset 0x40200 is not cluster aligned");
        CHECK(decode_snapshot_table(table, 1, 512)); // aligned to 512-byte clusters
    }
    SECTION("L1 table over 32 MiB") {
        poke32(table, 8, (32u << 20) / 8 + 1);
        QCOW2_REQUIRE_ERROR(decode_snapshot_table(table, 1, cs), errc::invalid_snapshot_table,
                            "L1 table of 4194305 entries exceeds 32 MiB");
        poke32(table, 8, (32u << 20) / 8);
        CHECK(decode_snapshot_table(table, 1, cs));
    }
}

// ---- Bitmap directory ----

namespace {

bitmap_entry bitmap(std::uint64_t table, std::string name, std::uint32_t flags = bitmap_flags::auto_,
                    std::vector<std::byte> extra = {}) {
    bitmap_entry e;
    e.table_offset = table;
    e.table_size = 1;
    e.flags = flags;
    e.granularity_bits = 16;
    e.extra = std::move(extra);
    e.name = std::move(name);
    return e;
}

bitmaps_extension ext_for(const std::vector<std::byte>& dir, std::uint32_t n) {
    return {n, 0, dir.size(), 0x80000};
}

} // namespace

TEST_CASE("bitmap directories round trip", "[bitmap]") {
    const std::vector<bitmap_entry> entries{
        bitmap(0x50000, "bitmap0"),
        bitmap(0x60000, "in use, with extra data", bitmap_flags::in_use | bitmap_flags::extra_data_compatible,
               {std::byte{1}, std::byte{2}, std::byte{3}}),
        bitmap(0, "x", 0),
    };
    const auto dir = encode_bitmap_directory(entries);
    CHECK(bitmap_entry_size(entries[0]) == 32); // 24 + 7 -> 32
    CHECK(bitmap_entry_size(entries[1]) == 56); // 24 + 3 + 23 = 50 -> 56
    CHECK(bitmap_entry_size(entries[2]) == 32); // 24 + 1 -> 32
    REQUIRE(dir.size() == 32 + 56 + 32);
    CHECK(peek64(dir, 0) == 0x50000);
    CHECK(peek32(dir, 8) == 1);
    CHECK(peek32(dir, 12) == bitmap_flags::auto_);
    CHECK(dir[16] == std::byte{1});
    CHECK(dir[17] == std::byte{16});
    CHECK(detail::load_be16(dir, 18) == 7);
    CHECK(peek32(dir, 20) == 0);
    CHECK(detail::to_string(std::span(dir).subspan(24, 7)) == "bitmap0");
    CHECK(dir[31] == std::byte{0});
    CHECK(peek32(dir, 32 + 20) == 3);
    CHECK(dir[32 + 24] == std::byte{1});

    const auto d = decode_bitmap_directory(dir, ext_for(dir, 3), cs);
    REQUIRE(d);
    CHECK(*d == entries);
    CHECK((*d)[0].granularity() == 65536);
    CHECK(encode_bitmap_directory(*d) == dir);

    // The limits themselves are accepted.
    auto edge = entries;
    edge[0].granularity_bits = 9;
    edge[1].granularity_bits = 31;
    edge[2].name = std::string(1023, 'n');
    const auto edge_dir = encode_bitmap_directory(edge);
    const auto e = decode_bitmap_directory(edge_dir, ext_for(edge_dir, 3), cs);
    REQUIRE(e);
    CHECK(*e == edge);
}

TEST_CASE("malformed bitmap directories", "[bitmap]") {
    const std::vector<bitmap_entry> entries{bitmap(0x50000, "a"), bitmap(0x60000, "b")};
    auto dir = encode_bitmap_directory(entries);
    REQUIRE(dir.size() == 64);
    const auto ext = ext_for(dir, 2);
    REQUIRE(decode_bitmap_directory(dir, ext, cs));
    auto with = [](bitmaps_extension x, auto change) {
        change(x);
        return x;
    };

    SECTION("the extension's fields") {
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, with(ext, [](auto& x) { x.nb_bitmaps = 0; }), cs),
                            errc::invalid_bitmap_directory, "lists 0 bitmaps, must be 1 to 65535");
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, with(ext, [](auto& x) { x.nb_bitmaps = 65536; }), cs),
                            errc::invalid_bitmap_directory, "lists 65536 bitmaps");
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, with(ext, [](auto& x) { x.directory_size = 63; }), cs),
                            errc::invalid_bitmap_directory, "bitmap directory size 63");
        QCOW2_REQUIRE_ERROR(
            decode_bitmap_directory(dir, with(ext, [](auto& x) { x.directory_size = 1024ull * 65535 + 1; }), cs),
            errc::invalid_bitmap_directory, "bitmap directory size 67107841");
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, with(ext, [](auto& x) { x.directory_offset = 0x80200; }), cs),
                            errc::invalid_bitmap_directory, "bitmap directory offset 0x80200 is not cluster aligned");
    }
    SECTION("more bitmaps listed than the directory holds") {
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, with(ext, [](auto& x) { x.nb_bitmaps = 3; }), cs),
                            errc::invalid_bitmap_directory, "bitmap 2 at directory offset 64: entry runs past");
    }
    SECTION("an entry whose name runs past the directory") {
        poke16(dir, 32 + 18, 9);
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, ext, cs), errc::invalid_bitmap_directory,
                            "bitmap 1 at directory offset 32: entry runs past the end of the directory");
    }
    SECTION("extra data running past the directory") {
        poke32(dir, 20, 0xffffffff);
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, ext, cs), errc::invalid_bitmap_directory,
                            "bitmap 0 at directory offset 0: entry runs past");
    }
    SECTION("an empty name") {
        poke16(dir, 18, 0);
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, ext, cs), errc::invalid_bitmap_directory,
                            "name length 0 is not 1 to 1023");
    }
    SECTION("a name over 1023 bytes") {
        auto long_name = entries;
        long_name[1].name = std::string(1024, 'n');
        const auto d = encode_bitmap_directory(long_name);
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(d, ext_for(d, 2), cs), errc::invalid_bitmap_directory,
                            "bitmap 1 at directory offset 32: name length 1024 is not 1 to 1023");
    }
    SECTION("a reserved type") {
        dir[32 + 16] = std::byte{2};
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, ext, cs), errc::invalid_bitmap_directory,
                            "type 2 is not 1 (dirty tracking)");
    }
    SECTION("granularity outside 9..31") {
        dir[17] = std::byte{8};
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, ext, cs), errc::invalid_bitmap_directory,
                            "granularity_bits 8 is not 9 to 31");
        dir[17] = std::byte{32};
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, ext, cs), errc::invalid_bitmap_directory,
                            "granularity_bits 32 is not 9 to 31");
    }
    SECTION("reserved flags") {
        poke32(dir, 12, bitmap_flags::auto_ | (1u << 3));
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, ext, cs), errc::invalid_bitmap_directory,
                            "reserved flags set: 0xa");
    }
    SECTION("a misaligned bitmap table") {
        poke64(dir, 32, 0x60200);
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, ext, cs), errc::invalid_bitmap_directory,
                            "bitmap table offset 0x60200 is not cluster aligned");
    }
}

// QEMU's bitmap_list_load walks the whole directory and refuses one holding more than nb_bitmaps entries
// ("More bitmaps found than specified in header extension") or bytes left after the last entry
// ("Broken bitmap directory"). decode_bitmap_directory stops after nb_bitmaps entries and accepts both.
TEST_CASE("a directory with more than nb_bitmaps entries, or bytes after the last one, is refused", "[bitmap]") {
    const std::vector<bitmap_entry> entries{bitmap(0x50000, "a"), bitmap(0x60000, "b")};
    SECTION("an extra entry") {
        const auto dir = encode_bitmap_directory(entries);
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, ext_for(dir, 1), cs), errc::invalid_bitmap_directory,
                            "directory");
    }
    SECTION("trailing bytes") {
        auto dir = encode_bitmap_directory(std::vector<bitmap_entry>{entries[0]});
        dir.resize(dir.size() + 8);
        QCOW2_REQUIRE_ERROR(decode_bitmap_directory(dir, ext_for(dir, 1), cs), errc::invalid_bitmap_directory,
                            "directory");
    }
}
