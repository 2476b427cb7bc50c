// SPDX-License-Identifier: MIT
// Guest reads of damaged images: each test makes a valid image in memory (the layout of
// tests/support/image_builder.hpp plus one L2 table and data clusters), damages one
// thing, and checks the error code and that the message names the structure and where
// it is. Backing chains that loop, run too deep or name files a resolver must refuse are
// checked with posix_resolver over files in a temporary directory, or with a resolver
// over memory images.
#include "qcow2/image.hpp"

#include "qcow2/backing.hpp"
#include "qcow2/format/l2_entry.hpp"
#include "qcow2/io/memory.hpp"
#include "qcow2/io/posix_file.hpp"

#include "support/image_builder.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace {

using qcow2::errc;
using qcow2::test::image_builder;
using qcow2::test::poke64;
using mem_image = qcow2::basic_image<qcow2::io::memory>;
using file_image = qcow2::basic_image<qcow2::io::posix_file>;

constexpr std::uint64_t copied = qcow2::l2_bits::copied;

/// A valid image of 1 GiB with 64 KiB clusters (two L1 entries) whose first guest clusters
/// hold data: clusters 0-3 as image_builder lays them out, cluster 4 the L2 table of L1
/// index 0, clusters 5-7 data (0xAB, 0xCD, 0xFF bytes) for guest clusters 0-2.
struct test_image {
    image_builder builder;
    std::vector<std::byte> bytes;
    std::uint64_t cs = 0;

    explicit test_image(std::optional<std::string> backing = std::nullopt, image_builder b = image_builder(16))
        : builder(std::move(b)) {
        if (backing) builder.backing(*backing, "qcow2");
        bytes = builder.bytes();
        cs = builder.cs();
        bytes.resize(static_cast<std::size_t>(8 * cs));
        set_l1(0, 4 * cs | copied);
        for (std::uint64_t i = 0; i < 3; ++i) {
            set_l2(i, (5 + i) * cs | copied);
            const std::byte fill[] = {std::byte{0xAB}, std::byte{0xCD}, std::byte{0xFF}};
            std::fill_n(bytes.begin() + static_cast<std::ptrdiff_t>((5 + i) * cs), cs, fill[i]);
        }
    }

    std::uint64_t l1_offset() const { return builder.h.l1_table_offset; }
    void set_l1(std::uint64_t index, std::uint64_t entry) { poke64(bytes, static_cast<std::size_t>(l1_offset() + 8 * index), entry); }
    void set_l2(std::uint64_t index, std::uint64_t entry) { poke64(bytes, static_cast<std::size_t>(4 * cs + 8 * index), entry); }

    qcow2::result<mem_image> open(const qcow2::open_options& o = {}) const {
        return mem_image::open(qcow2::io::memory(bytes), o);
    }
};

mem_image open_ok(const test_image& t, const qcow2::open_options& o = {}) {
    auto img = t.open(o);
    INFO((img ? std::string() : img.error().what()));
    REQUIRE(img);
    return std::move(*img);
}

/// Open options with one field changed (designated initializers would leave the others to a warning).
qcow2::open_options metadata_only() {
    qcow2::open_options o;
    o.metadata_only = true;
    return o;
}
qcow2::open_options max_depth(std::size_t n) {
    qcow2::open_options o;
    o.max_chain_depth = n;
    return o;
}
qcow2::posix_resolver_options allow(bool absolute, bool outside) {
    qcow2::posix_resolver_options o;
    o.allow_absolute = absolute;
    o.allow_outside = outside;
    return o;
}

/// Reads `n` guest bytes at `offset`.
qcow2::result<std::vector<std::byte>> read(mem_image& img, std::uint64_t offset, std::size_t n) {
    std::vector<std::byte> out(n, std::byte{0x55});
    if (auto r = img.read(offset, out); !r) return r.error();
    return out;
}

bool all_equal(const std::vector<std::byte>& v, std::byte b) {
    return std::all_of(v.begin(), v.end(), [b](std::byte x) { return x == b; });
}

void write_file(const std::string& path, const std::vector<std::byte>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
}

qcow2::result<file_image> open_file(const std::string& path, qcow2::posix_resolver resolver) {
    auto f = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_only);
    REQUIRE(f);
    return file_image::open(std::move(*f), {}, std::move(resolver));
}

} // namespace

TEST_CASE("read errors: the undamaged test image reads its data", "[read]") {
    test_image t;
    auto img = open_ok(t);
    auto a = read(img, 0, 4096);
    REQUIRE(a);
    CHECK(all_equal(*a, std::byte{0xAB}));
    auto b = read(img, 2 * t.cs - 100, 200); // across guest clusters 1 and 2
    REQUIRE(b);
    CHECK(all_equal(std::vector<std::byte>(b->begin(), b->begin() + 100), std::byte{0xCD}));
    CHECK(all_equal(std::vector<std::byte>(b->begin() + 100, b->end()), std::byte{0xFF}));
    auto z = read(img, 3 * t.cs, 4096); // unallocated, no backing file
    REQUIRE(z);
    CHECK(all_equal(*z, std::byte{0}));
    auto far = read(img, img.size() - 512, 512); // L1 index 1: no L2 table
    REQUIRE(far);
    CHECK(all_equal(*far, std::byte{0}));
}

TEST_CASE("read errors: a file truncated before its L1 table fails to open with short_read", "[read]") {
    test_image t;
    SECTION("the whole L1 table is missing") { t.bytes.resize(static_cast<std::size_t>(t.l1_offset())); }
    SECTION("the L1 table is cut short") { t.bytes.resize(static_cast<std::size_t>(t.l1_offset() + 8)); }
    QCOW2_REQUIRE_ERROR(t.open(), errc::short_read, "L1 table");
    // Only the metadata does not help: the L1 table is metadata.
    QCOW2_REQUIRE_ERROR(t.open(metadata_only()), errc::short_read, "L1 table");
}

TEST_CASE("read errors: an L2 table past the end of the file is a short_read naming it and its L1 index", "[read]") {
    test_image t;
    t.set_l1(1, 100 * t.cs | copied);
    auto img = open_ok(t); // L2 tables are read on demand
    QCOW2_REQUIRE_ERROR(read(img, img.size() - 4096, 4096), errc::short_read, "L2 table");
    QCOW2_REQUIRE_ERROR(read(img, img.size() - 4096, 4096), errc::short_read, "(L1 index 1)");
    QCOW2_REQUIRE_ERROR(img.map_range(img.size() - 4096, 4096), errc::short_read, "past the end of the file");
    // The other L2 table still reads.
    CHECK(read(img, 0, 512));

    SECTION("one byte short of a whole table") {
        test_image u;
        u.bytes.resize(static_cast<std::size_t>(8 * u.cs));
        u.set_l1(1, 7 * u.cs | copied); // the last cluster, cut by one byte below
        u.bytes.resize(static_cast<std::size_t>(8 * u.cs - 1));
        auto img2 = open_ok(u);
        QCOW2_REQUIRE_ERROR(read(img2, img2.size() - 512, 512), errc::short_read, "L2 table at host offset 0x70000");
    }
}

TEST_CASE("read errors: an unaligned L2 table offset is misaligned_offset", "[read]") {
    test_image t;
    t.set_l1(0, (4 * t.cs + 512) | copied);
    auto img = open_ok(t);
    QCOW2_REQUIRE_ERROR(read(img, 0, 512), errc::misaligned_offset, "L2 table offset 0x40200 is not cluster aligned (L1 index 0)");
    QCOW2_REQUIRE_ERROR(img.map_range(0, 512), errc::misaligned_offset, "L1 index 0");
}

TEST_CASE("read errors: an unaligned data cluster offset is image_corrupt naming the L2 index", "[read]") {
    test_image t;
    t.set_l2(2, (7 * t.cs + 4096) | copied);
    auto img = open_ok(t);
    CHECK(read(img, 0, 2 * t.cs)); // the entries before it are fine
    QCOW2_REQUIRE_ERROR(read(img, 2 * t.cs, 512), errc::image_corrupt, "at L2 index 2");
    QCOW2_REQUIRE_ERROR(read(img, 0, 3 * t.cs), errc::image_corrupt, "not cluster aligned");
    QCOW2_REQUIRE_ERROR(img.map_range(2 * t.cs + 1024, 512), errc::image_corrupt, "L1 index 0, guest offset 132096");
}

TEST_CASE("read errors: a compressed cluster past the end of the file is a short_read", "[read]") {
    test_image t;
    t.set_l2(1, qcow2::encode_compressed(100 * t.cs + 100, 2000, 16));
    auto img = open_ok(t);
    auto m = img.map_range(t.cs, t.cs);
    REQUIRE(m);
    CHECK(m->state == qcow2::cluster_state::compressed);
    QCOW2_REQUIRE_ERROR(read(img, t.cs, 512), errc::short_read, "compressed cluster at host offset 0x640064");
    QCOW2_REQUIRE_ERROR(read(img, t.cs, 512), errc::short_read, "guest offset 65536");
    CHECK(read(img, 0, 512));
}

TEST_CASE("read errors: a corrupt compressed stream is invalid_compressed_data", "[read]") {
    SECTION("zlib (deflate): an invalid block type") {
        test_image t;
        // Cluster 7 holds 0xFF bytes: a final block of the reserved type 3.
        t.set_l2(1, qcow2::encode_compressed(7 * t.cs, 1024, 16));
        auto img = open_ok(t);
        QCOW2_REQUIRE_ERROR(read(img, t.cs + 4096, 512), errc::invalid_compressed_data,
                            "compressed cluster at host offset 0x70000 for guest offset 69632");
    }
    SECTION("zlib (deflate): a stream that ends before the cluster is full") {
        test_image t;
        // A stored block of 5 bytes, final: far less than one cluster.
        const std::byte stored[] = {std::byte{0x01}, std::byte{0x05}, std::byte{0x00}, std::byte{0xFA}, std::byte{0xFF},
                                    std::byte{'h'},  std::byte{'e'},  std::byte{'l'},  std::byte{'l'},  std::byte{'o'}};
        std::copy(std::begin(stored), std::end(stored), t.bytes.begin() + static_cast<std::ptrdiff_t>(7 * t.cs));
        t.set_l2(1, qcow2::encode_compressed(7 * t.cs, sizeof stored, 16));
        auto img = open_ok(t);
        QCOW2_REQUIRE_ERROR(read(img, t.cs, 512), errc::invalid_compressed_data, "guest offset 65536");
    }
#if QCOW2_HAS_ZSTD
    SECTION("zstd: not a zstd frame") {
        image_builder b(16);
        b.h.compression_type = 1;
        b.h.incompatible_features |= qcow2::features::compression_type::mask;
        test_image t(std::nullopt, b);
        t.set_l2(1, qcow2::encode_compressed(6 * t.cs, 1024, 16)); // 0xCD bytes
        auto img = open_ok(t);
        QCOW2_REQUIRE_ERROR(read(img, t.cs, 512), errc::invalid_compressed_data, "compressed cluster at host offset 0x60000");
    }
#endif
}

TEST_CASE("read errors: reading past the virtual size is invalid_argument", "[read]") {
    test_image t;
    auto img = open_ok(t);
    const std::uint64_t size = img.size();
    CHECK(read(img, size - 512, 512));
    CHECK(read(img, size, 0)); // nothing to read
    QCOW2_REQUIRE_ERROR(read(img, size - 512, 1024), errc::invalid_argument, "past the virtual size");
    QCOW2_REQUIRE_ERROR(read(img, size, 1), errc::invalid_argument, "past the virtual size");
    QCOW2_REQUIRE_ERROR(read(img, ~std::uint64_t{0} - 10, 512), errc::invalid_argument, "past the virtual size");
    QCOW2_REQUIRE_ERROR(img.map_range(size, 512), errc::invalid_argument, "outside the virtual size");
}

TEST_CASE("read errors: the default resolver refuses backing and data files", "[read]") {
    test_image t("base.qcow2");
    QCOW2_REQUIRE_ERROR(t.open(), errc::backing_file_refused, "backing file 'base.qcow2' refused: no resolver");

    // Metadata only: the image opens, its own data reads, its unallocated clusters cannot.
    auto img = open_ok(t, metadata_only());
    CHECK(img.has_backing());
    CHECK(img.backing_image() == nullptr);
    CHECK(img.backing_raw() == nullptr);
    auto a = read(img, 0, 512);
    REQUIRE(a);
    CHECK(all_equal(*a, std::byte{0xAB}));
    QCOW2_REQUIRE_ERROR(read(img, 3 * t.cs, 512), errc::not_supported, "metadata-only");

    SECTION("an external data file") {
        image_builder b(16);
        b.h.incompatible_features |= qcow2::features::external_data_file::mask;
        b.h.set_extension(qcow2::extension_type::data_file, qcow2::test::bytes_of("data.raw"));
        test_image d(std::nullopt, b);
        QCOW2_REQUIRE_ERROR(d.open(), errc::backing_file_refused, "data file 'data.raw' refused");
        CHECK(d.open(metadata_only()));
    }
}

TEST_CASE("read errors: a backing chain that loops is refused", "[read]") {
    qcow2_test::temp_dir dir("qcow2-read-errors-");
    write_file(dir / "a.qcow2", test_image("b.qcow2").bytes);
    write_file(dir / "b.qcow2", test_image("a.qcow2").bytes);
    auto img = open_file(dir / "a.qcow2", qcow2::posix_resolver(dir / "a.qcow2"));
    QCOW2_REQUIRE_ERROR(img, errc::backing_file_refused, "loops");
    CHECK_THAT(img.error().message(), Catch::Matchers::Contains("'a.qcow2'"));

    SECTION("an image naming itself") {
        write_file(dir / "self.qcow2", test_image("self.qcow2").bytes);
        QCOW2_REQUIRE_ERROR(open_file(dir / "self.qcow2", qcow2::posix_resolver(dir / "self.qcow2")),
                            errc::backing_file_refused, "loops");
    }
    SECTION("a longer loop, through another spelling of a name") {
        write_file(dir / "x.qcow2", test_image("y.qcow2").bytes);
        write_file(dir / "y.qcow2", test_image("z.qcow2").bytes);
        write_file(dir / "z.qcow2", test_image("./x.qcow2").bytes);
        QCOW2_REQUIRE_ERROR(open_file(dir / "x.qcow2", qcow2::posix_resolver(dir / "x.qcow2")), errc::backing_file_refused,
                            "loops");
    }
    SECTION("a chain that does not loop opens") {
        write_file(dir / "top.qcow2", test_image("base.qcow2").bytes);
        write_file(dir / "base.qcow2", test_image().bytes);
        CHECK(open_file(dir / "top.qcow2", qcow2::posix_resolver(dir / "top.qcow2")));
    }
}

TEST_CASE("read errors: a chain deeper than max_chain_depth is invalid_argument", "[read]") {
    // image0 -> image1 -> ... -> image<last>, in memory.
    const auto chain = [](unsigned images) {
        std::map<std::string, std::vector<std::byte>, std::less<>> files;
        for (unsigned i = 1; i < images; ++i)
            files["image" + std::to_string(i)] =
                i + 1 < images ? test_image("image" + std::to_string(i + 1)).bytes : test_image().bytes;
        return files;
    };
    const auto open_chain = [&](unsigned images, std::size_t limit) {
        auto files = chain(images);
        auto resolver = [files](const qcow2::file_request& q) -> qcow2::result<qcow2::io::memory> {
            const auto it = files.find(q.name);
            if (it == files.end()) return qcow2::error{errc::backing_file_refused, "no such test file"};
            return qcow2::io::memory(it->second);
        };
        const auto& top = images > 1 ? test_image("image1").bytes : test_image().bytes;
        return mem_image::open(qcow2::io::memory(top), max_depth(limit), resolver);
    };
    CHECK(open_chain(3, 3));
    CHECK(open_chain(1, 1));
    QCOW2_REQUIRE_ERROR(open_chain(4, 3), errc::invalid_argument, "backing chain deeper than 3 images (at 'image3')");
    QCOW2_REQUIRE_ERROR(open_chain(2, 1), errc::invalid_argument, "deeper than 1");
    // The default limit stops a chain that never ends.
    auto endless = [](const qcow2::file_request&) -> qcow2::result<qcow2::io::memory> {
        return qcow2::io::memory(test_image("again").bytes);
    };
    QCOW2_REQUIRE_ERROR(mem_image::open(qcow2::io::memory(test_image("again").bytes), {}, endless), errc::invalid_argument,
                        "deeper than 128");
    // A chain of the deepest allowed length opens every layer.
    auto ok = open_chain(3, 3);
    REQUIRE(ok);
    REQUIRE(ok->backing_image());
    REQUIRE(ok->backing_image()->backing_image());
    CHECK(ok->backing_image()->backing_image()->backing_image() == nullptr);
}

TEST_CASE("read errors: posix_resolver refuses json:, protocol, absolute and outside names by default", "[read]") {
    qcow2_test::temp_dir dir("qcow2-read-errors-");
    write_file(dir / "base.qcow2", test_image().bytes);
    const auto open_with_backing = [&](const std::string& backing, qcow2::posix_resolver_options o = {}) {
        write_file(dir / "top.qcow2", test_image(backing).bytes);
        return open_file(dir / "top.qcow2", qcow2::posix_resolver(dir / "top.qcow2", o));
    };
    QCOW2_REQUIRE_ERROR(open_with_backing("json:{\"driver\":\"qcow2\",\"file\":{\"filename\":\"base.qcow2\"}}"),
                        errc::backing_file_refused, "protocol and json: names are not opened");
    QCOW2_REQUIRE_ERROR(open_with_backing("nbd://localhost/disk"), errc::backing_file_refused, "protocol");
    // Even when absolute and outside names are allowed.
    QCOW2_REQUIRE_ERROR(open_with_backing("json:{}", allow(true, true)),
                        errc::backing_file_refused, "json:");

    const std::string absolute = dir / "base.qcow2";
    QCOW2_REQUIRE_ERROR(open_with_backing(absolute), errc::backing_file_refused, "absolute names are not allowed");
    CHECK(open_with_backing(absolute, allow(true, false)));

    qcow2_test::temp_dir other("qcow2-read-errors-other-");
    write_file(other / "outside.qcow2", test_image().bytes);
    const std::string outside = "../" + other.path().substr(other.path().rfind('/') + 1) + "/outside.qcow2";
    QCOW2_REQUIRE_ERROR(open_with_backing(outside), errc::backing_file_refused, "outside the image's directory");
    CHECK(open_with_backing(outside, allow(false, true)));

    // A backing file that does not exist: the system's error, naming the file.
    auto missing = open_with_backing("missing.qcow2");
    REQUIRE_FALSE(missing);
    CHECK_THAT(missing.error().message(), Catch::Matchers::Contains("missing.qcow2"));
}

TEST_CASE("read errors: guest data of an encrypted image is refused and never returned as ciphertext", "[read]") {
    test_image t;
    qcow2::detail::store_be32(t.bytes, 32, 1); // crypt_method 1: legacy AES, whose header needs no extension
    auto img = t.open();
    REQUIRE(img);
    CHECK(img->header().crypt_method == 1);
    std::vector<std::byte> out(512);
    QCOW2_REQUIRE_ERROR(img->read(0, out), errc::unsupported_encryption, "encrypted");
}
