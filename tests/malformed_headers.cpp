// SPDX-License-Identifier: MIT
// Malformed images: each test takes a valid image built by image_builder, corrupts one field,
// and checks that opening it fails with the exact errc and a message naming the field.
#include "qcow2/image.hpp"

#include "support/image_builder.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

using namespace qcow2;
using namespace qcow2::test;
using Catch::Matchers::Contains;

namespace {

using image = basic_image<io::memory>;

// GCC 12 warns about designated initializers that leave members out, so options are set by name.
open_options writable_options() {
    open_options o;
    o.writable = true;
    return o;
}

// Header validation is under test here, not file resolution: backing files are not opened.
result<image> open_bytes(std::vector<std::byte> b, open_options o = {}) {
    o.metadata_only = true;
    return image::open(image_builder::to_memory(std::move(b)), o);
}

/// The valid image most cases start from: 64 KiB clusters, version 3, 1 GiB, reftable at cluster 1, L1 at cluster 3.
std::vector<std::byte> valid() { return image_builder().bytes(); }

/// Requires that `bytes` opens (read-only and read-write) before a test corrupts it.
void require_opens(const std::vector<std::byte>& bytes) {
    auto ro = open_bytes(bytes);
    INFO((ro ? std::string("ok") : ro.error().what()));
    REQUIRE(ro);
    auto rw = open_bytes(bytes, writable_options());
    INFO((rw ? std::string("ok") : rw.error().what()));
    REQUIRE(rw);
}

constexpr std::uint64_t bit(unsigned n) { return std::uint64_t{1} << n; }

} // namespace

TEST_CASE("the starting images open cleanly", "[malformed]") {
    auto file = valid();
    require_opens(file);
    auto img = open_bytes(file);
    REQUIRE(img);
    CHECK(img->size() == (1ull << 30));
    CHECK(img->cluster_size() == 65536);
    CHECK(img->header().l1_table_offset == 0x30000);
    CHECK(img->header().refcount_table_offset == 0x10000);
    CHECK(img->read_only());
    CHECK(img->snapshots().empty());
    CHECK(img->bitmaps().empty());
    require_opens(image_builder(12).bytes());
    require_opens(image_builder(16, 2).bytes());
    image_builder with_all;
    with_all.backing("base.qcow2", "qcow2").feature_table().extension(0x5a5a5a5a, bytes_of("future"));
    require_opens(with_all.bytes());
}

// ---- Magic, version, cluster size, header length ----

TEST_CASE("bad magic", "[malformed]") {
    auto f = valid();
    poke32(f, field::magic, 0x514649fa);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::bad_magic, "magic is 0x514649fa");
}

TEST_CASE("version 1 and version 4", "[malformed]") {
    auto f = valid();
    poke32(f, field::version, 1);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::unsupported_version, "version is 1, supported are 2 and 3");
    poke32(f, field::version, 4);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::unsupported_version, "version is 4");
}

TEST_CASE("cluster_bits 8 and 22", "[malformed]") {
    auto f = valid();
    poke32(f, field::cluster_bits, 8);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_cluster_size, "cluster_bits is 8, must be between 9 and 21");
    poke32(f, field::cluster_bits, 22);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_cluster_size, "cluster_bits is 22");
}

TEST_CASE("version 3 header_length 96, under 104", "[malformed]") {
    auto f = valid();
    poke32(f, field::header_length, 96);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_header_length, "header_length is 96");
}

TEST_CASE("header_length not a multiple of 8", "[malformed]") {
    auto f = valid();
    poke32(f, field::header_length, 108);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_header_length, "header_length is 108, must be a multiple of 8");
}

TEST_CASE("header_length larger than the cluster", "[malformed]") {
    auto f = valid();
    poke32(f, field::header_length, 65536 + 8);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_header_length, "header_length is 65544");
    CHECK_THAT(open_bytes(f).error().message(), Contains("the cluster size 65536"));
}

// ---- Header extensions ----

TEST_CASE("an extension whose length runs past cluster 0", "[malformed]") {
    image_builder b;
    b.extension(0x5a5a5a5a, bytes_of("future"));
    auto f = b.bytes();
    REQUIRE(peek32(f, 112) == 0x5a5a5a5a);
    require_opens(f);
    poke32(f, 116, 65536);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::extension_too_large,
                        "header extension 0x5a5a5a5a at offset 112 has length 65536 and runs past the end of the "
                        "extension area at 65536");
    // One byte too many is too many; filling cluster 0 exactly is allowed.
    poke32(f, 116, 65536 - 112 - 8 + 1);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::extension_too_large, "has length 65417");
    poke32(f, 116, 65536 - 112 - 8);
    CHECK(open_bytes(f));
}

TEST_CASE("bitmaps extension of length 20", "[malformed]") {
    image_builder b;
    b.extension(extension_type::bitmaps, encode_bitmaps_extension({1, 0, 32, 0x40000}));
    auto f = b.bytes();
    require_opens(f); // without autoclear bit 0 the bitmaps are ignored
    poke32(f, 116, 20);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_extension, "bitmaps extension has length 20, expected 24");
}

TEST_CASE("duplicate backing format extension", "[malformed]") {
    image_builder b;
    b.backing("base.img", "qcow2").extension(0x12345678, bytes_of("raw"));
    auto f = b.bytes();
    require_opens(f);
    REQUIRE(find_extension_offset(f, 0x12345678) == 128);
    poke32(f, 128, extension_type::backing_format);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::duplicate_extension,
                        "the backing format extension appears twice (again at offset 128)");
}

TEST_CASE("full disk encryption extension without LUKS", "[malformed]") {
    image_builder b;
    b.h.crypt_method = static_cast<std::uint32_t>(crypt_method::luks);
    b.extension(extension_type::encryption, encode_encryption_extension({0x40000, 4096}));
    auto f = b.bytes();
    require_opens(f);
    poke32(f, field::crypt_method, 0);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_extension,
                        "full disk encryption extension present but crypt_method is not LUKS");
}

// ---- Tables: L1, refcount table, snapshots ----

TEST_CASE("L1 table over QEMU's 32 MiB limit", "[malformed]") {
    auto f = valid();
    poke32(f, field::l1_size, (32u << 20) / 8 + 1);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::l1_too_large,
                        "L1 table of 4194305 entries (33554440 bytes) exceeds 33554432 bytes");
}

TEST_CASE("L1 table too small for the virtual size", "[malformed]") {
    auto f = valid();
    poke32(f, field::l1_size, 1);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::l1_too_small,
                        "L1 table of 1 entries covers less than the virtual size 1073741824 (needs 2)");
    poke32(f, field::l1_size, 2);
    poke64(f, field::size, (1ull << 30) + 512); // one sector more needs another L1 entry
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::l1_too_small, "needs 3");
}

TEST_CASE("virtual size needing more L1 entries than QEMU allows", "[malformed]") {
    auto f = valid();
    poke64(f, field::size, 1ull << 62);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::image_too_large,
                        "virtual size 4611686018427387904 needs 8589934592 L1 entries");
}

TEST_CASE("l1_table_offset not cluster aligned", "[malformed]") {
    auto f = valid();
    poke64(f, field::l1_table_offset, 0x30200);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::misaligned_offset,
                        "L1 table offset 0x30200 is not aligned to the cluster size 65536");
}

TEST_CASE("l1_table_offset beyond 2^56", "[malformed]") {
    auto f = valid();
    poke64(f, field::l1_table_offset, 1ull << 56);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::offset_too_large, "L1 table at 0x100000000000000 of 16 bytes ends beyond 2^56");
}

TEST_CASE("refcount_table_offset not cluster aligned", "[malformed]") {
    auto f = valid();
    poke64(f, field::refcount_table_offset, 0x10200);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::misaligned_offset, "refcount table offset 0x10200 is not aligned");
}

TEST_CASE("refcount table over 8 MiB", "[malformed]") {
    auto f = valid();
    poke32(f, field::refcount_table_clusters, 129);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::refcount_table_too_large,
                        "refcount table of 129 clusters (8454144 bytes) exceeds 8 MiB");
    // 128 clusters of 64 KiB are exactly 8 MiB: allowed.
    header h = decode_file_header(valid());
    h.refcount_table_clusters = 128;
    CHECK(validate_header(h));
}

TEST_CASE("refcount_table_clusters 0", "[malformed]") {
    auto f = valid();
    poke32(f, field::refcount_table_clusters, 0);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::refcount_table_empty, "refcount_table_clusters is 0");
}

TEST_CASE("refcount_order 7", "[malformed]") {
    auto f = valid();
    poke32(f, field::refcount_order, 6);
    CHECK(open_bytes(f)); // 64-bit refcounts are the maximum
    poke32(f, field::refcount_order, 7);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_refcount_order, "refcount_order is 7, must be at most 6");
}

TEST_CASE("too many snapshots (nb_snapshots 65537)", "[malformed]") {
    auto f = valid();
    poke32(f, field::nb_snapshots, 65537);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::too_many_snapshots, "nb_snapshots is 65537, at most 65536");
}

TEST_CASE("snapshot table with an entry running past EOF", "[malformed]") {
    snapshot_entry s;
    s.id = "1";
    s.name = "before upgrade";
    s.extra.resize(24);
    detail::store_be64(s.extra, 8, 1ull << 30);
    image_builder b;
    b.snapshots({s});
    auto f = b.bytes();
    const auto table = static_cast<std::size_t>(b.snapshot_table_offset());
    REQUIRE(table == 0x50000);
    REQUIRE(f.size() == 0x60000); // the table's cluster is the last one
    {
        auto img = open_bytes(f);
        REQUIRE(img);
        REQUIRE(img->snapshots().size() == 1);
        CHECK(img->snapshots()[0].name == "before upgrade");
        CHECK(img->snapshots()[0].disk_size() == (1ull << 30));
    }
    SECTION("the name runs past the end of the file") {
        poke16(f, table + 14, 0xffff);
        QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_snapshot_table,
                            "snapshot 0 at host offset 0x50000 has 24 bytes of extra data and 65560 variable bytes");
    }
    SECTION("a second entry starts past the end of the file") {
        poke32(f, field::nb_snapshots, 2);
        // Entry 0 (40 + 24 + 1 + name bytes) now ends at table + 65504 = 0x5ffe0, leaving 32 bytes
        // for entry 1, which needs at least 40.
        poke16(f, table + 14, 65504 - 65);
        QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_snapshot_table,
                            "snapshot 1 at host offset 0x5ffe0 lies past the end of the file");
    }
    SECTION("the table itself is past the end of the file") {
        poke64(f, field::snapshots_offset, 0x100000);
        QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_snapshot_table, "snapshot 0 at host offset 0x100000");
    }
    SECTION("an entry with a misaligned L1 table") {
        poke64(f, table, 0x40008);
        QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_snapshot_table, "L1 table offset 0x40008 is not cluster aligned");
    }
}

TEST_CASE("bitmap directory past the end of the file", "[malformed]") {
    bitmap_entry e;
    e.name = "backup";
    e.flags = bitmap_flags::auto_;
    image_builder b;
    b.bitmaps({e});
    auto f = b.bytes();
    {
        auto img = open_bytes(f);
        REQUIRE(img);
        REQUIRE(img->bitmaps().size() == 1);
        CHECK(img->bitmaps()[0].name == "backup");
    }
    const auto ext = find_extension_offset(f, extension_type::bitmaps);
    REQUIRE(ext != 0);
    poke64(f, ext + 8 + 16, 0x100000); // directory_offset
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_bitmap_directory,
                        "bitmap directory of 32 bytes at 0x100000 is too large or past the end of the file");
}

// ---- Backing file ----

TEST_CASE("backing name over 1023 bytes", "[malformed]") {
    image_builder b;
    b.backing("base.qcow2");
    auto f = b.bytes();
    require_opens(f);
    poke32(f, field::backing_file_size, 1024);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::backing_name_too_long, "backing file name of 1024 bytes at offset 120");
}

TEST_CASE("backing name leaving cluster 0", "[malformed]") {
    image_builder b;
    b.backing("base.qcow2");
    auto f = b.bytes();
    poke64(f, field::backing_file_offset, 65536 - 9); // 10 bytes from here end one byte into cluster 1
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::backing_name_too_long,
                        "backing file name of 10 bytes at offset 65527 is over 1023 bytes or leaves cluster 0");
    poke64(f, field::backing_file_offset, 65536 + 8);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::backing_name_too_long, "backing_file_offset 0x10008 is outside cluster 0");
}

TEST_CASE("backing format over 15 bytes", "[malformed]") {
    image_builder b;
    b.backing("base", "qcow2");
    auto f = b.bytes();
    require_opens(f);
    REQUIRE(peek32(f, 112) == extension_type::backing_format);
    // 16 bytes: "qcow2", its padding and the end marker, up to the backing name at 136.
    poke32(f, 116, 16);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::backing_format_too_long, "backing format name is 16 bytes, at most 15");
}

// ---- Feature bits and the fields that go with them ----

TEST_CASE("unknown incompatible bit, named from the image's feature name table", "[malformed]") {
    image_builder b;
    b.feature_table({{feature_class::incompatible, 5, "frobnication"}});
    auto f = b.bytes();
    require_opens(f);
    SECTION("the table names the bit") {
        poke64(f, field::incompatible_features, bit(5));
        QCOW2_REQUIRE_ERROR(open_bytes(f), errc::unknown_incompatible_feature,
                            "unsupported incompatible feature(s): \"frobnication\" (bit 5)");
    }
    SECTION("the table has no entry for the bit") {
        poke64(f, field::incompatible_features, bit(6));
        QCOW2_REQUIRE_ERROR(open_bytes(f), errc::unknown_incompatible_feature,
                            "unsupported incompatible feature(s): unknown incompatible feature bit 6");
    }
    SECTION("both") {
        poke64(f, field::incompatible_features, bit(5) | bit(63));
        QCOW2_REQUIRE_ERROR(open_bytes(f), errc::unknown_incompatible_feature,
                            "\"frobnication\" (bit 5), unknown incompatible feature bit 63");
    }
}

TEST_CASE("unknown incompatible bit in an image without a feature name table", "[malformed]") {
    auto f = valid();
    poke64(f, field::incompatible_features, bit(5));
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::unknown_incompatible_feature, "unknown incompatible feature bit 5");
}

TEST_CASE("compression_type 1 with incompatible bit 3 clear", "[malformed]") {
    auto f = valid();
    f[field::compression_type] = std::byte{1};
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_compression_type,
                        "compression_type is 1 but incompatible bit 3 (compression type) is clear");
}

TEST_CASE("incompatible bit 3 set with compression_type 0", "[malformed]") {
    auto f = valid();
    poke64(f, field::incompatible_features, features::compression_type::mask);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_compression_type,
                        "incompatible bit 3 (compression type) is set but compression_type is zlib or absent");
    // With header_length 104 the field is absent, which means zlib: bit 3 cannot be set either.
    f[field::compression_type] = std::byte{1};
    poke32(f, field::header_length, 104);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_compression_type, "compression_type is zlib or absent");
}

TEST_CASE("unknown compression type 2", "[malformed]") {
    auto f = valid();
    poke64(f, field::incompatible_features, features::compression_type::mask);
    f[field::compression_type] = std::byte{2};
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_compression_type,
                        "compression_type is 2, known types are 0 (zlib) and 1 (zstd)");
}

TEST_CASE("extended L2 entries with 4 KiB clusters", "[malformed]") {
    auto f = image_builder(12).bytes();
    poke64(f, field::incompatible_features, features::extended_l2::mask);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::invalid_subcluster_size,
                        "extended L2 entries need clusters of at least 16 KiB, cluster size is 4096");
    // 16 KiB is the smallest cluster size allowed with extended L2 entries.
    image_builder ok(14);
    ok.h.incompatible_features = features::extended_l2::mask;
    ok.h.l1_size = static_cast<std::uint32_t>(ok.h.min_l1_entries());
    CHECK(ok.h.l1_size == 64);
    require_opens(ok.bytes());
}

TEST_CASE("raw external data bit without the external data file bit", "[malformed]") {
    auto f = valid();
    poke64(f, field::autoclear_features, features::raw_external_data::mask);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::feature_conflict,
                        "autoclear bit 1 (raw external data) is set without incompatible bit 2 (external data file)");
}

TEST_CASE("crypt_method 3", "[malformed]") {
    auto f = valid();
    poke32(f, field::crypt_method, 3);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::unsupported_encryption, "crypt_method is 3");
}

TEST_CASE("LUKS without the encryption extension", "[malformed]") {
    auto f = valid();
    poke32(f, field::crypt_method, 2);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::unsupported_encryption,
                        "LUKS encryption (crypt_method 2) without the full disk encryption header extension");
}

// ---- Short files ----

TEST_CASE("truncated file (50 bytes)", "[malformed]") {
    auto f = valid();
    f.resize(50);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::truncated_header, "file is 50 bytes, the version 3 header needs 104");
    f = valid();
    f.resize(110);
    QCOW2_REQUIRE_ERROR(open_bytes(f), errc::truncated_header, "file is 110 bytes, header_length is 112");
}

TEST_CASE("empty file", "[malformed]") {
    QCOW2_REQUIRE_ERROR(open_bytes({}), errc::truncated_header, "file is 0 bytes");
}

// ---- Feature bits on open ----

TEST_CASE("corrupt bit: read-write open refused, read-only open allowed", "[malformed]") {
    auto f = valid();
    poke64(f, field::incompatible_features, features::corrupt::mask);
    QCOW2_REQUIRE_ERROR(open_bytes(f, writable_options()), errc::image_corrupt, "the corrupt bit is set");
    auto ro = open_bytes(f);
    REQUIRE(ro);
    CHECK(ro->has<features::corrupt>());
    CHECK(ro->read_only());
}

TEST_CASE("dirty bit: read-write open repairs and clears it, read-only open leaves it", "[malformed]") {
    auto f = valid();
    poke64(f, field::incompatible_features, features::dirty::mask);
    auto ro = open_bytes(f);
    REQUIRE(ro);
    CHECK(ro->has<features::dirty>());
    auto rw = open_bytes(f, writable_options());
    REQUIRE(rw);
    CHECK_FALSE(rw->has<features::dirty>());
    std::uint64_t on_disk = 0;
    for (std::size_t i = 0; i < 8; ++i) on_disk = (on_disk << 8) | std::to_integer<std::uint64_t>(rw->backend().bytes()[field::incompatible_features + i]);
    CHECK(on_disk == 0);
}

TEST_CASE("read-write open clears autoclear bits it does not maintain, on disk", "[malformed][features]") {
    const std::uint64_t bit2 = features::all_zero::mask;

    SECTION("no feature name table: unknown bit 5 and the all-zero bit are both cleared") {
        auto f = valid();
        poke64(f, field::autoclear_features, bit(5) | bit2);
        auto img = open_bytes(f, writable_options());
        REQUIRE(img);
        CHECK(img->header().autoclear_features == 0);
        CHECK_FALSE(img->has<features::all_zero>());
        const auto disk = img->backend().bytes();
        CHECK(decode_file_header(disk).autoclear_features == 0);
        // Nothing else in the file changed.
        auto expected = f;
        poke64(expected, field::autoclear_features, 0);
        CHECK(std::equal(disk.begin(), disk.end(), expected.begin(), expected.end()));
    }
    SECTION("a table naming bit 2 \"all zero\" keeps it") {
        image_builder b;
        b.feature_table({{feature_class::autoclear, 2, "all zero"}});
        auto f = b.bytes();
        poke64(f, field::autoclear_features, bit(5) | bit2);
        auto img = open_bytes(f, writable_options());
        REQUIRE(img);
        CHECK(img->header().autoclear_features == bit2);
        CHECK(img->has<features::all_zero>());
        const header on_disk = decode_file_header(img->backend().bytes());
        CHECK(on_disk.autoclear_features == bit2);
        CHECK(on_disk.feature_names() == b.h.feature_names()); // the table survives the rewrite
    }
    SECTION("a table naming bit 2 something else drops it") {
        image_builder b;
        b.feature_table_only({{feature_class::autoclear, 2, "all zeroes"}});
        auto f = b.bytes();
        poke64(f, field::autoclear_features, bit2);
        auto img = open_bytes(f, writable_options());
        REQUIRE(img);
        CHECK(decode_file_header(img->backend().bytes()).autoclear_features == 0);
        CHECK_FALSE(img->has<features::all_zero>());
    }
    SECTION("read-only open changes nothing") {
        auto f = valid();
        poke64(f, field::autoclear_features, bit(5) | bit2);
        auto img = open_bytes(f);
        REQUIRE(img);
        CHECK(img->header().autoclear_features == (bit(5) | bit2));
        CHECK_FALSE(img->has<features::all_zero>()); // set, but not vouched for by a table
        const auto disk = img->backend().bytes();
        CHECK(std::equal(disk.begin(), disk.end(), f.begin(), f.end()));
    }
    SECTION("the bitmaps bit is kept by the default type, cleared by one that does not maintain bitmaps") {
        bitmap_entry e;
        e.name = "b";
        image_builder b;
        b.bitmaps({e});
        auto f = b.bytes();
        {
            auto img = open_bytes(f, writable_options());
            REQUIRE(img);
            CHECK(decode_file_header(img->backend().bytes()).autoclear_features == features::bitmaps::mask);
            CHECK(img->bitmaps().size() == 1);
        }
        using unaware = basic_image<io::memory, maintained_features_without_bitmaps>;
        open_options o = writable_options();
        o.metadata_only = true;
        auto img = unaware::open(image_builder::to_memory(f), o);
        REQUIRE(img);
        const header on_disk = decode_file_header(img->backend().bytes());
        CHECK(on_disk.autoclear_features == 0);
        CHECK(on_disk.bitmaps()); // the extension stays (QEMU drops it when it opens the image)
        CHECK(img->bitmaps().empty());
    }
    SECTION("nothing to clear: nothing written") {
        image_builder b;
        b.h.autoclear_features = 0;
        b.h.compatible_features = features::lazy_refcounts::mask | bit(9); // compatible bits are kept as found
        auto f = b.bytes();
        auto img = open_bytes(f, writable_options());
        REQUIRE(img);
        const auto disk = img->backend().bytes();
        CHECK(std::equal(disk.begin(), disk.end(), f.begin(), f.end()));
    }
}
