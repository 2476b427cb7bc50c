// SPDX-License-Identifier: MIT
#include "qcow2/format/header.hpp"

#include "support/image_builder.hpp"

#include <array>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

using namespace qcow2;
using namespace qcow2::test;

namespace {

std::vector<std::byte> from_hex(std::string_view hex) {
    auto nibble = [](char c) { return static_cast<unsigned>(c <= '9' ? c - '0' : c - 'a' + 10); };
    std::vector<std::byte> out;
    for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
        out.push_back(static_cast<std::byte>(nibble(hex[i]) << 4 | nibble(hex[i + 1])));
    return out;
}

std::vector<std::byte> bytes(std::initializer_list<unsigned> v) {
    std::vector<std::byte> out;
    for (auto x : v) out.push_back(static_cast<std::byte>(x));
    return out;
}

/// A valid version 3 header (64 KiB clusters, 1 GiB, QEMU's layout) before `lay_out_header`.
header valid_v3() { return image_builder().h; }

/// Encodes `h` into one cluster, failing the test on error.
std::vector<std::byte> encode_cluster(const header& h) {
    std::vector<std::byte> out(static_cast<std::size_t>(h.cluster_size()));
    auto r = encode_header(h, out);
    INFO((r ? std::string("ok") : r.error().what()));
    REQUIRE(r);
    return out;
}

/// Decodes, failing the test on error.
header decode_ok(std::span<const std::byte> b) {
    auto r = decode_header(b);
    INFO((r ? std::string("ok") : r.error().what()));
    REQUIRE(r);
    return *r;
}

// Cluster 0 of `qemu-img create -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 1G` (QEMU 7.2),
// up to the end of the backing file name; the rest of the cluster is zero.
constexpr std::string_view qemu_cluster0_hex =
    "514649fb0000000300000000000002100000000a000000100000000040000000"
    "0000000000000002000000000003000000000000000100000000000100000000"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "00000004000000700000000000000000e2792aca0000000571636f7732000000"
    "6803f85700000180000064697274792062697400000000000000000000000000"
    "0000000000000000000000000000000000000000000000000001636f72727570"
    "7420626974000000000000000000000000000000000000000000000000000000"
    "0000000000000000000265787465726e616c20646174612066696c6500000000"
    "0000000000000000000000000000000000000000000000000003636f6d707265"
    "7373696f6e207479706500000000000000000000000000000000000000000000"
    "00000000000000000004657874656e646564204c3220656e7472696573000000"
    "00000000000000000000000000000000000000000000000001006c617a792072"
    "6566636f756e7473000000000000000000000000000000000000000000000000"
    "000000000000000002006269746d617073000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000201726177206578"
    "7465726e616c2064617461000000000000000000000000000000000000000000"
    "00000000000000000000000000000000626173652e71636f7732";

std::vector<std::byte> qemu_cluster0() {
    auto b = from_hex(qemu_cluster0_hex);
    b.resize(65536);
    return b;
}

} // namespace

TEST_CASE("a header written by QEMU decodes field by field and re-encodes to the same bytes", "[header]") {
    const auto file = qemu_cluster0();
    const header h = decode_ok(file);
    CHECK(h.version == 3);
    CHECK(h.backing_file_offset == 0x210);
    CHECK(h.backing_file_size == 10);
    CHECK(h.backing_file == "base.qcow2");
    CHECK(h.cluster_bits == 16);
    CHECK(h.cluster_size() == 65536);
    CHECK(h.size == (1ull << 30));
    CHECK(h.crypt_method == 0);
    CHECK(h.l1_size == 2);
    CHECK(h.l1_table_offset == 0x30000);
    CHECK(h.refcount_table_offset == 0x10000);
    CHECK(h.refcount_table_clusters == 1);
    CHECK(h.nb_snapshots == 0);
    CHECK(h.snapshots_offset == 0);
    CHECK(h.incompatible_features == 0);
    CHECK(h.compatible_features == 0);
    CHECK(h.autoclear_features == 0);
    CHECK(h.refcount_order == 4);
    CHECK(h.refcount_bits() == 16);
    CHECK(h.header_length == 112);
    CHECK(h.compression_type == 0);
    CHECK(h.compression_kind() == compression::zlib);
    CHECK(h.unknown_fields == std::vector<std::byte>(7));
    CHECK(h.has_end_marker);
    REQUIRE(h.extensions.size() == 2);
    CHECK(h.extensions[0].type == extension_type::backing_format);
    CHECK(h.extensions[1].type == extension_type::feature_names);
    CHECK(h.backing_format() == "qcow2");
    CHECK(h.feature_names() == qemu_features::name_table());
    CHECK_FALSE(h.data_file());
    CHECK_FALSE(h.bitmaps());
    CHECK_FALSE(h.encryption());

    CHECK(encode_cluster(h) == file);

    // lay_out_header puts the backing name where QEMU does, so building the same header anew gives QEMU's bytes.
    header fresh = valid_v3();
    fresh.backing_file = "base.qcow2";
    fresh.set_extension(extension_type::backing_format, bytes_of("qcow2"));
    fresh.set_extension(extension_type::feature_names, encode_feature_names(qemu_features::name_table()));
    lay_out_header(fresh);
    CHECK(fresh == h);
    CHECK(encode_cluster(fresh) == file);
}

TEST_CASE("version 3 round trip: encode then decode gives the same header, and the same bytes again", "[header]") {
    header h = valid_v3();
    h.size = 5ull << 30;
    h.l1_size = 24; // more than the 20 entries needed (extended L2 entries cover 256 MiB each)
    h.nb_snapshots = 3;
    h.snapshots_offset = 7 * 65536;
    h.incompatible_features = features::compression_type::mask | features::extended_l2::mask;
    h.compression_type = 1;
    h.compatible_features = features::lazy_refcounts::mask | (1ull << 17);
    h.autoclear_features = features::bitmaps::mask | (1ull << 40);
    h.refcount_order = 6;
    h.refcount_table_clusters = 2;
    h.crypt_method = 1;
    h.backing_file = "some/dir/backing image.qcow2";
    h.set_extension(extension_type::backing_format, bytes_of("qcow2"));
    h.set_extension(0x12345678, bytes({0x01, 0x02, 0x03}));
    lay_out_header(h);
    REQUIRE(validate_header(h));

    const auto enc = encode_cluster(h);
    CHECK(peek32(enc, field::magic) == header_magic);
    CHECK(peek32(enc, field::version) == 3);
    CHECK(peek64(enc, field::size) == (5ull << 30));
    CHECK(peek64(enc, field::incompatible_features) == 0x18);
    CHECK(peek64(enc, field::compatible_features) == ((1ull << 17) | 1));
    CHECK(peek64(enc, field::autoclear_features) == ((1ull << 40) | 1));
    CHECK(peek32(enc, field::refcount_order) == 6);
    CHECK(peek32(enc, field::header_length) == 112);
    CHECK(enc[field::compression_type] == std::byte{1});

    const header d = decode_ok(enc);
    CHECK(d == h);
    CHECK(d.compression_kind() == compression::zstd);
    CHECK(d.refcount_bits() == 64);
    CHECK(d.extended_l2());
    CHECK(d.has(features::compression_type::mask));
    CHECK_FALSE(d.has(features::dirty::mask));
    CHECK(encode_cluster(d) == enc);
}

TEST_CASE("version 2 round trip: 72-byte header, extensions right after it", "[header]") {
    header h = image_builder(16, 2).h;
    h.backing_file = "base.raw";
    h.set_extension(extension_type::backing_format, bytes_of("raw"));
    lay_out_header(h);
    CHECK(h.header_length == v2_header_length);
    CHECK(h.unknown_fields.empty());
    CHECK(h.backing_file_offset == 72 + 16 + 8);

    const auto enc = encode_cluster(h);
    CHECK(peek32(enc, field::version) == 2);
    CHECK(peek32(enc, 72) == extension_type::backing_format); // no v3 fields in between
    CHECK(peek32(enc, 76) == 3);

    const header d = decode_ok(enc);
    CHECK(d == h);
    CHECK(d.refcount_order == 4);
    CHECK(d.incompatible_features == 0);
    CHECK(d.backing_format() == "raw");
    CHECK(d.backing_file == "base.raw");
    CHECK(encode_cluster(d) == enc);

    // A v2 header's bytes 72..103 are extension data, never feature bits.
    auto poked = enc;
    poke64(poked, field::incompatible_features, ~0ull);
    QCOW2_REQUIRE_ERROR(decode_header(poked), errc::extension_too_large, "header extension 0xffffffff at offset 72");
    image_builder plain(16, 2);
    auto file = plain.bytes();
    const header p = decode_ok(file);
    CHECK(p.version == 2);
    CHECK(p.header_length == 72);
    CHECK(p.extensions.empty());
    CHECK(p.has_end_marker);
}

TEST_CASE("lay_out_header derives header_length, the end marker and the backing name's place", "[header]") {
    SECTION("version 3 with QEMU's padding") {
        header h = valid_v3();
        h.header_length = 0;
        h.has_end_marker = false;
        lay_out_header(h);
        CHECK(h.header_length == 112);
        CHECK(h.unknown_fields.size() == 7);
        CHECK(h.has_end_marker);
        CHECK(h.backing_file_offset == 0);
        CHECK(h.backing_file_size == 0);
    }
    SECTION("unknown field bytes are kept and padded to a multiple of 8") {
        header h = valid_v3();
        h.unknown_fields = bytes({0, 0, 0, 0, 0, 0, 0, 0xaa}); // 105 + 8 = 113 -> 120
        lay_out_header(h);
        CHECK(h.header_length == 120);
        REQUIRE(h.unknown_fields.size() == 15);
        CHECK(h.unknown_fields[7] == std::byte{0xaa});
        for (std::size_t i = 8; i < 15; ++i) CHECK(h.unknown_fields[i] == std::byte{0});
        h.unknown_fields.resize(3);
        lay_out_header(h);
        CHECK(h.header_length == 112);
        CHECK(h.unknown_fields.size() == 7);
        h.unknown_fields.resize(15);
        lay_out_header(h);
        CHECK(h.header_length == 120);
    }
    SECTION("version 2 drops the v3 fields") {
        header h = valid_v3();
        h.version = 2;
        lay_out_header(h);
        CHECK(h.header_length == 72);
        CHECK(h.unknown_fields.empty());
    }
    SECTION("the backing name goes right after the end marker") {
        header h = valid_v3();
        h.extensions = {{0x10000001, bytes({1, 2, 3, 4, 5})}, {0x10000002, {}}, {0x10000003, std::vector<std::byte>(24)}};
        h.backing_file = "backing.qcow2";
        h.backing_file_offset = 4000; // stale values are recomputed
        h.backing_file_size = 99;
        lay_out_header(h);
        CHECK(h.backing_file_offset == 112 + 16 + 8 + 32 + 8);
        CHECK(h.backing_file_size == 13);
        CHECK(encoded_header_size(h) == h.backing_file_offset + 13);
        const auto enc = encode_cluster(h);
        CHECK(detail::to_string(std::span(enc).subspan(static_cast<std::size_t>(h.backing_file_offset), 13)) ==
              "backing.qcow2");
        CHECK(peek64(enc, field::backing_file_offset) == 176);
        CHECK(peek32(enc, field::backing_file_size) == 13);
        CHECK(peek64(enc, 168) == 0); // the end marker
        CHECK(enc[176 + 13] == std::byte{0}); // nothing after the name (it is not NUL terminated, the rest is zero fill)
    }
    SECTION("no backing name clears stale offset and size") {
        header h = valid_v3();
        h.backing_file_offset = 512;
        h.backing_file_size = 7;
        lay_out_header(h);
        CHECK(h.backing_file_offset == 0);
        CHECK(h.backing_file_size == 0);
    }
}

TEST_CASE("unknown header fields (header_length 120) are kept byte for byte", "[header]") {
    const auto pattern = bytes({0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8});

    SECTION("decoding a header written by a newer tool") {
        auto file = image_builder().bytes();
        // 8 more header bytes where QEMU's end marker was; the end marker is now at 120.
        poke32(file, field::header_length, 120);
        std::copy(pattern.begin(), pattern.end(), file.begin() + 112);
        REQUIRE(peek64(file, 120) == 0);
        const header h = decode_ok(file);
        CHECK(h.header_length == 120);
        REQUIRE(h.unknown_fields.size() == 15);
        CHECK(std::equal(pattern.begin(), pattern.end(), h.unknown_fields.begin() + 7));
        CHECK(h.unknown_fields[0] == std::byte{0});
        CHECK(h.extensions.empty());
        CHECK(h.has_end_marker);
        std::vector<std::byte> out(65536);
        REQUIRE(encode_header(h, out));
        CHECK(std::equal(out.begin(), out.end(), file.begin()));
        CHECK(decode_ok(out) == h);
    }
    SECTION("encoding them back after an extension change") {
        header h = valid_v3();
        h.unknown_fields = std::vector<std::byte>(7);
        h.unknown_fields.insert(h.unknown_fields.end(), pattern.begin(), pattern.end());
        h.set_extension(0x0badf00d, bytes_of("x"));
        lay_out_header(h);
        REQUIRE(h.header_length == 120);
        const auto enc = encode_cluster(h);
        CHECK(peek32(enc, field::header_length) == 120);
        CHECK(std::equal(pattern.begin(), pattern.end(), enc.begin() + 112));
        CHECK(peek32(enc, 120) == 0x0badf00d); // extensions start at header_length
        const header d = decode_ok(enc);
        CHECK(d == h);
        CHECK(encode_cluster(d) == enc);
    }
    SECTION("header_length 104: no compression_type byte, no unknown fields") {
        auto file = image_builder().bytes();
        poke32(file, field::header_length, 104);
        const header h = decode_ok(file);
        CHECK(h.header_length == 104);
        CHECK(h.unknown_fields.empty());
        CHECK(h.compression_type == 0);
        CHECK(encode_cluster(h) == std::vector<std::byte>(file.begin(), file.begin() + 65536));
    }
}

TEST_CASE("unknown header extensions are kept in order, padded to 8 bytes", "[header]") {
    header h = valid_v3();
    h.extensions = {
        {0x11111111, bytes_of("abc")},
        {extension_type::backing_format, bytes_of("qcow2")},
        {0x22222222, {}},
        {0x33333333, std::vector<std::byte>(17, std::byte{0x5a})},
        {0x11111111, bytes_of("again")}, // unknown types may repeat
    };
    lay_out_header(h);
    const auto enc = encode_cluster(h);
    CHECK(peek32(enc, 112) == 0x11111111);
    CHECK(peek32(enc, 116) == 3);
    CHECK(enc[120 + 3] == std::byte{0}); // zero padding
    CHECK(peek32(enc, 128) == extension_type::backing_format);
    CHECK(peek32(enc, 144) == 0x22222222);
    CHECK(peek32(enc, 148) == 0);
    CHECK(peek32(enc, 152) == 0x33333333);
    CHECK(peek32(enc, 156) == 17);
    CHECK(peek32(enc, 184) == 0x11111111);
    CHECK(peek64(enc, 200) == 0); // end marker

    const header d = decode_ok(enc);
    REQUIRE(d.extensions.size() == 5);
    CHECK(d.extensions == h.extensions);
    CHECK(d.backing_format() == "qcow2");
    CHECK(encode_cluster(d) == enc);

    // An extension list that fills the area exactly has no end marker, and is read to the end.
    header full = valid_v3();
    full.cluster_bits = 9;
    full.refcount_table_offset = 512;
    full.l1_table_offset = 1536;
    full.size = 1 << 20;
    full.l1_size = 32;
    lay_out_header(full);
    full.extensions = {{0x44444444, std::vector<std::byte>(512 - 112 - 8, std::byte{1})}};
    full.has_end_marker = false;
    std::vector<std::byte> small(512);
    REQUIRE(encode_header(full, small));
    const header fd = decode_ok(small);
    CHECK_FALSE(fd.has_end_marker);
    CHECK(fd == full);
}

TEST_CASE("known extension accessors", "[header]") {
    header h = valid_v3();
    SECTION("absent") {
        CHECK_FALSE(h.backing_format());
        CHECK_FALSE(h.data_file());
        CHECK(h.feature_names().empty());
        CHECK_FALSE(h.bitmaps());
        CHECK_FALSE(h.encryption());
        CHECK(h.find_extension(extension_type::backing_format) == nullptr);
    }
    SECTION("backing format") {
        h.set_extension(extension_type::backing_format, bytes_of("raw"));
        h.backing_file = "disk.raw";
        lay_out_header(h);
        const header d = decode_ok(encode_cluster(h));
        CHECK(d.backing_format() == "raw");
        CHECK(d.find_extension(extension_type::backing_format)->data == bytes_of("raw"));
        h.set_extension(extension_type::backing_format, bytes_of("qcow2")); // replaces
        CHECK(h.extensions.size() == 1);
        CHECK(h.backing_format() == "qcow2");
        h.remove_extension(extension_type::backing_format);
        CHECK_FALSE(h.backing_format());
    }
    SECTION("external data file") {
        h.incompatible_features = features::external_data_file::mask;
        h.autoclear_features = features::raw_external_data::mask;
        h.set_extension(extension_type::data_file, bytes_of("/images/guest data.raw"));
        lay_out_header(h);
        const header d = decode_ok(encode_cluster(h));
        CHECK(d.data_file() == "/images/guest data.raw");
        CHECK(d == h);
    }
    SECTION("feature name table") {
        std::vector<feature_name_entry> t = qemu_features::name_table();
        t.push_back({feature_class::autoclear, 2, "all zero"});
        t.push_back({feature_class::incompatible, 63, std::string(46, 'n')}); // 46 bytes: no NUL in the entry
        h.set_extension(extension_type::feature_names, encode_feature_names(t));
        lay_out_header(h);
        const auto enc = encode_cluster(h);
        CHECK(peek32(enc, 116) == 10 * 48);
        const header d = decode_ok(enc);
        CHECK(d.feature_names() == t);
        CHECK(table_name(d.feature_names(), feature_class::incompatible, 63) == std::string(46, 'n'));
    }
    SECTION("bitmaps") {
        const bitmaps_extension b{3, 0, 4096, 0x50000};
        h.autoclear_features = features::bitmaps::mask;
        h.set_extension(extension_type::bitmaps, encode_bitmaps_extension(b));
        lay_out_header(h);
        const auto enc = encode_cluster(h);
        CHECK(peek32(enc, 116) == 24);
        CHECK(peek32(enc, 120) == 3);
        CHECK(peek64(enc, 128) == 4096);
        CHECK(peek64(enc, 136) == 0x50000);
        const header d = decode_ok(enc);
        REQUIRE(d.bitmaps());
        CHECK(*d.bitmaps() == b);
    }
    SECTION("full disk encryption") {
        const encryption_extension x{0x20000, 0x1000};
        h.crypt_method = static_cast<std::uint32_t>(crypt_method::luks);
        h.set_extension(extension_type::encryption, encode_encryption_extension(x));
        lay_out_header(h);
        const auto enc = encode_cluster(h);
        CHECK(peek32(enc, 112) == extension_type::encryption);
        CHECK(peek32(enc, 116) == 16);
        CHECK(peek64(enc, 120) == 0x20000);
        CHECK(peek64(enc, 128) == 0x1000);
        const header d = decode_ok(enc);
        REQUIRE(d.encryption());
        CHECK(*d.encryption() == x);
        // The extension is only allowed with LUKS.
        h.crypt_method = 0;
        QCOW2_REQUIRE_ERROR(validate_header(h), errc::invalid_extension, "not LUKS");
    }
    SECTION("payload codecs check their length") {
        QCOW2_REQUIRE_ERROR(decode_bitmaps_extension(std::vector<std::byte>(20)), errc::invalid_extension,
                            "length 20, expected 24");
        QCOW2_REQUIRE_ERROR(decode_bitmaps_extension(std::vector<std::byte>(32)), errc::invalid_extension,
                            "length 32");
        QCOW2_REQUIRE_ERROR(decode_encryption_extension(std::vector<std::byte>(8)), errc::invalid_extension,
                            "length 8, expected 16");
        CHECK(decode_encryption_extension(encode_encryption_extension({1, 2})).value() == encryption_extension{1, 2});
        CHECK(decode_bitmaps_extension(encode_bitmaps_extension({1, 7, 2, 3})).value() == bitmaps_extension{1, 7, 2, 3});
    }
}

TEST_CASE("the backing file name: placement, bounds of the extension area, exact length", "[header]") {
    image_builder b;
    b.backing("base.qcow2", "qcow2");
    auto file = b.bytes();
    const header h = decode_file_header(file);
    REQUIRE(h.backing_file_offset == 112 + 16 + 8);
    const auto at = static_cast<std::size_t>(h.backing_file_offset);

    SECTION("the name is not NUL terminated: exactly backing_file_size bytes") {
        file[at + 10] = std::byte{'X'};
        CHECK(decode_file_header(file).backing_file == "base.qcow2");
        poke32(file, field::backing_file_size, 4);
        CHECK(decode_file_header(file).backing_file == "base");
    }
    SECTION("the name may sit anywhere after the extensions, up to the end of cluster 0") {
        std::fill(file.begin() + static_cast<std::ptrdiff_t>(at), file.begin() + static_cast<std::ptrdiff_t>(at) + 10,
                  std::byte{0});
        const std::size_t end_at = 65536 - 10;
        for (std::size_t i = 0; i < 10; ++i) file[end_at + i] = static_cast<std::byte>(h.backing_file[i]);
        poke64(file, field::backing_file_offset, end_at);
        const header d = decode_file_header(file);
        CHECK(d.backing_file == "base.qcow2");
        CHECK(d.backing_file_offset == end_at);
        CHECK(d.backing_format() == "qcow2");
        std::vector<std::byte> out(65536);
        REQUIRE(encode_header(d, out));
        CHECK(std::equal(out.begin(), out.end(), file.begin()));
    }
    SECTION("the extension area ends at the backing name") {
        // An extension in front of the name may not run into it (the name is at 136).
        poke32(file, 112, 0x77777777); // an unknown extension instead of the backing format
        poke32(file, 116, 17);
        QCOW2_REQUIRE_ERROR(decode_header(std::span(file).first(65536)), errc::extension_too_large,
                            "header extension 0x77777777 at offset 112 has length 17");
        poke32(file, 116, 16); // exactly filling the area is fine, and leaves no room for an end marker
        const header d = decode_file_header(file);
        REQUIRE(d.extensions.size() == 1);
        CHECK(d.extensions[0].data == bytes_of(std::string_view("qcow2\0\0\0\0\0\0\0\0\0\0\0", 16)));
        CHECK_FALSE(d.has_end_marker);
        CHECK(d.backing_file == "base.qcow2");
    }
    SECTION("backing_file_offset 0 means no backing file, whatever the size field says") {
        poke64(file, field::backing_file_offset, 0);
        const header d = decode_file_header(file);
        CHECK(d.backing_file.empty());
        CHECK(d.backing_file_offset == 0);
    }
    SECTION("the name may not start inside the header fields") {
        poke64(file, field::backing_file_offset, 64);
        QCOW2_REQUIRE_ERROR(decode_header(file), errc::backing_name_too_long, "backing_file_offset 0x40");
    }
    SECTION("a maximal 1023-byte name fits") {
        image_builder big;
        big.backing(std::string(1023, 'b'));
        const header d = decode_file_header(big.bytes());
        CHECK(d.backing_file == std::string(1023, 'b'));
        header too_long = big.h;
        too_long.backing_file += 'b';
        lay_out_header(too_long);
        QCOW2_REQUIRE_ERROR(validate_header(too_long), errc::backing_name_too_long, "1024 bytes, at most 1023");
    }
}

TEST_CASE("encode_header refuses what it cannot write", "[header]") {
    header h = valid_v3();
    lay_out_header(h);
    SECTION("buffer too small") {
        std::vector<std::byte> out(100);
        QCOW2_REQUIRE_ERROR(encode_header(h, out), errc::invalid_argument, "buffer is 100");
    }
    SECTION("more than one cluster of header") {
        h.set_extension(0x55555555, std::vector<std::byte>(70000));
        std::vector<std::byte> out(1 << 17);
        QCOW2_REQUIRE_ERROR(encode_header(h, out), errc::invalid_argument, "the cluster 65536");
    }
    SECTION("header_length disagrees with the unknown fields") {
        h.header_length = 120;
        std::vector<std::byte> out(65536);
        QCOW2_REQUIRE_ERROR(encode_header(h, out), errc::invalid_argument, "header_length 120");
    }
    SECTION("backing name overlapping the extensions") {
        h.backing_file = "x";
        h.backing_file_offset = 112;
        h.backing_file_size = 1;
        std::vector<std::byte> out(65536);
        QCOW2_REQUIRE_ERROR(encode_header(h, out), errc::invalid_argument, "overlaps");
    }
    SECTION("an invalid header") {
        h.refcount_table_clusters = 0;
        std::vector<std::byte> out(65536);
        QCOW2_REQUIRE_ERROR(encode_header(h, out), errc::refcount_table_empty, "refcount_table_clusters is 0");
    }
    SECTION("version 2 keeps refcount_order 4 (the field does not exist in the file)") {
        h = image_builder(16, 2).h;
        h.refcount_order = 5;
        lay_out_header(h);
        std::vector<std::byte> out(65536);
        QCOW2_REQUIRE_ERROR(encode_header(h, out), errc::invalid_refcount_order, "version 2 images use 4");
    }
}

TEST_CASE("decode_header reports short buffers", "[header]") {
    const auto file = image_builder().bytes();
    QCOW2_REQUIRE_ERROR(decode_header(std::span(file).first(0)), errc::truncated_header, "file is 0 bytes");
    QCOW2_REQUIRE_ERROR(decode_header(std::span(file).first(7)), errc::truncated_header, "file is 7 bytes");
    QCOW2_REQUIRE_ERROR(decode_header(std::span(file).first(103)), errc::truncated_header, "header needs 104");
    QCOW2_REQUIRE_ERROR(decode_header(std::span(file).first(108)), errc::truncated_header, "header_length is 112");
    // The extension area must be readable: a file ending right after the header fields is cut short.
    QCOW2_REQUIRE_ERROR(decode_header(std::span(file).first(112)), errc::truncated_header, "extension area");
    CHECK(decode_header(std::span(file).first(120)));
    image_builder v2(16, 2);
    const auto f2 = v2.bytes();
    QCOW2_REQUIRE_ERROR(decode_header(std::span(f2).first(71)), errc::truncated_header, "header needs 72");
}

TEST_CASE("L1 geometry follows the cluster size and extended L2 entries", "[header]") {
    header h = valid_v3();
    CHECK(h.l2_bits() == 13);
    CHECK(h.l2_entry_size() == 8);
    CHECK(h.l1_entry_coverage() == (512ull << 20));
    CHECK(h.min_l1_entries() == 2);
    h.incompatible_features = features::extended_l2::mask;
    CHECK(h.l2_bits() == 12);
    CHECK(h.l2_entry_size() == 16);
    CHECK(h.min_l1_entries() == 4);
    QCOW2_REQUIRE_ERROR(validate_header(h), errc::l1_too_small, "needs 4");
    h.l1_size = 4;
    CHECK(validate_header(h));
    h.size = (512ull << 20) + 1;
    h.incompatible_features = 0;
    CHECK(h.min_l1_entries() == 2);
}

// ---- The codec in constant expressions ----

namespace {

/// A valid header with 512-byte clusters, small enough for a constant-expression buffer.
constexpr header small_header() {
    header h;
    h.cluster_bits = 9;
    h.size = 1 << 20; // 32 L1 entries of 32 KiB each
    h.refcount_table_offset = 512;
    h.refcount_table_clusters = 1;
    h.l1_table_offset = 3 * 512;
    h.l1_size = 32;
    return h;
}

constexpr bool constexpr_round_trip() {
    header h = small_header();
    h.backing_file = "base";
    h.set_extension(extension_type::backing_format, detail::to_bytes("raw"));
    h.compatible_features = features::lazy_refcounts::mask;
    lay_out_header(h);
    std::array<std::byte, 512> buf{};
    if (!encode_header(h, buf)) return false;
    auto d = decode_header(buf);
    if (!d || !(*d == h)) return false;
    std::array<std::byte, 512> again{};
    if (!encode_header(*d, again)) return false;
    return again == buf && d->backing_file == "base" && d->backing_format() == "raw" &&
           detail::load_be64(buf, h.backing_file_offset - 8) == 0;
}

constexpr bool constexpr_bad_magic() {
    header h = small_header();
    lay_out_header(h);
    std::array<std::byte, 512> buf{};
    if (!encode_header(h, buf)) return false;
    buf[3] = std::byte{0xfa};
    auto d = decode_header(buf);
    return !d && d.error().is(errc::bad_magic) &&
           d.error().message() == "magic is 0x514649fa, expected 0x514649fb (\"QFI\\xfb\")";
}

constexpr bool constexpr_validation() {
    header h = small_header();
    h.cluster_bits = 22;
    auto r = validate_header(h);
    return !r && r.error().is(errc::invalid_cluster_size);
}

} // namespace

/// True when `F()` is a constant expression yielding true (false, not an error, when it is not constant).
template <auto F>
concept holds_at_compile_time = requires { typename std::enable_if_t<F()>; };

/// Every header holds strings and every error a message, so the codec is constant-evaluable only where
/// std::string is: GCC 12 evaluates libstdc++'s std::string at compile time, Clang 14 does not.
constexpr bool constexpr_strings() {
    std::string s = "QFI";
    s += detail::hex(0xfb);
    return s == "QFI0xfb";
}
inline constexpr bool toolchain_has_constexpr_string = holds_at_compile_time<constexpr_strings>;
#if defined(__GNUC__) && !defined(__clang__)
static_assert(toolchain_has_constexpr_string, "GCC evaluates std::string at compile time: the cases below must be real");
#endif

static_assert(!toolchain_has_constexpr_string || holds_at_compile_time<constexpr_round_trip>,
              "encode_header then decode_header must work (and agree) in a constant expression");
static_assert(!toolchain_has_constexpr_string || holds_at_compile_time<constexpr_bad_magic>,
              "a bad magic must be reported as errc::bad_magic in a constant expression");
static_assert(!toolchain_has_constexpr_string || holds_at_compile_time<constexpr_validation>,
              "validate_header must work in a constant expression");

TEST_CASE("the constant-expression cases also hold at run time", "[header]") {
    CHECK(constexpr_round_trip());
    CHECK(constexpr_bad_magic());
    CHECK(constexpr_validation());
}

TEST_CASE("backing_file_size survives a round trip even without a backing file (found by fuzz_header)", "[header]") {
    qcow2::header h;
    h.size = 1 << 20;
    h.l1_size = 1;
    h.l1_table_offset = 3 * h.cluster_size();
    h.refcount_table_offset = h.cluster_size();
    h.refcount_table_clusters = 1;
    qcow2::lay_out_header(h);
    h.backing_file_size = 1; // meaningless while backing_file_offset is 0, but it is in the file
    std::vector<std::byte> a(static_cast<std::size_t>(h.cluster_size()));
    REQUIRE(qcow2::encode_header(h, a));
    auto d = qcow2::decode_header(a);
    REQUIRE(d);
    CHECK(d->backing_file_size == 1);
    std::vector<std::byte> b(a.size());
    REQUIRE(qcow2::encode_header(*d, b));
    CHECK(a == b);
}
