// SPDX-License-Identifier: MIT
// The codec layer: round trips of every codec at every cluster size, interop with QEMU in
// both directions (qemu-img writes, we read; we write, qemu-img reads), and hostile input
// (truncated, random, short, "bomb" streams, huge zstd windows) that must fail cleanly or
// fill exactly one cluster, never writing outside it (guard bytes, and ASan in that build).
#include "qcow2/codec/codec.hpp"
#include "qcow2/codec/deflate.hpp"
#include "qcow2/codec/dispatch.hpp"
#include "qcow2/codec/zlib.hpp"
#include "qcow2/codec/zstd.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/format/header.hpp"

#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if QCOW2_HAS_ZLIB
#include <zlib.h>
#endif
#if QCOW2_HAS_ZSTD
#include <zstd.h>
#endif

namespace {

using bytes = std::vector<std::byte>;
using qcow2::compression;
using qcow2::errc;
namespace codec = qcow2::codec;

constexpr std::size_t KiB = 1024, MiB = 1024 * KiB;
constexpr std::size_t cluster_sizes[] = {512, 4 * KiB, 64 * KiB, 2 * MiB};

// ---- data ----

/// Text-like data: words from a small vocabulary and numbers, compressible within a 4 KiB window.
bytes compressible(std::size_t n, std::uint64_t seed) {
    static const char* const words[] = {"qcow2 ", "cluster ", "refcount ", "table ", "L2 ", "entry ", "zlib ", "zstd ",
                                        "offset ", "guest ", "host ", "sector ", "image ", "backing ", "snapshot ", "\n"};
    std::mt19937_64 rng(seed);
    bytes b;
    b.reserve(n);
    while (b.size() < n) {
        const std::uint64_t r = rng();
        std::string w = (r & 3) == 0 ? std::to_string(r % 100000) + " " : words[(r >> 2) % std::size(words)];
        for (const char c : w) {
            if (b.size() == n) break;
            b.push_back(static_cast<std::byte>(c));
        }
    }
    return b;
}

/// Random lower-case letters (compressible by entropy coding only) in 8 KiB blocks repeated:
/// a 32 KiB window finds the repeats 8 KiB back, a 4 KiB window (QEMU's) cannot.
bytes far_repeats(std::size_t n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    bytes block(8 * KiB);
    for (auto& c : block) c = static_cast<std::byte>('a' + rng() % 26);
    bytes b(n);
    for (std::size_t i = 0; i < n; ++i) b[i] = block[i % block.size()];
    return b;
}

bytes random_bytes(std::size_t n, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    bytes b(n);
    for (auto& c : b) c = static_cast<std::byte>(rng());
    return b;
}

bytes concat(bytes a, const bytes& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

/// A buffer with guard bytes on both sides: `inner()` is what a codec may write.
class guarded {
public:
    static constexpr std::size_t guard = 64;
    static constexpr std::byte fill{0xA5};
    explicit guarded(std::size_t n) : buf_(n + 2 * guard, fill), n_(n) {}
    std::span<std::byte> inner() { return std::span<std::byte>(buf_).subspan(guard, n_); }
    bytes contents() const { return bytes(buf_.begin() + guard, buf_.begin() + static_cast<std::ptrdiff_t>(guard + n_)); }
    bool guards_intact() const {
        return std::all_of(buf_.begin(), buf_.begin() + guard, [](std::byte c) { return c == fill; }) &&
               std::all_of(buf_.end() - guard, buf_.end(), [](std::byte c) { return c == fill; });
    }

private:
    bytes buf_;
    std::size_t n_;
};

/// Compresses with `c` into `cluster_size - 1` bytes, as a qcow2 writer does; returns the stream.
template <class C>
bytes compress_cluster(C& c, const bytes& data) {
    guarded out(data.size() - 1);
    auto r = c.compress(data, out.inner());
    REQUIRE(out.guards_intact());
    if (!r) FAIL(r.error().what());
    REQUIRE(*r < data.size());
    bytes s = out.contents();
    s.resize(*r);
    return s;
}

/// Decompresses `in` into a guarded cluster of `n` bytes; the result, and the bytes on success.
template <class D>
std::pair<qcow2::result<void>, bytes> decompress_cluster(D& d, const bytes& in, std::size_t n) {
    // An exact-size copy of the input, so that ASan catches any read past its end.
    const bytes input(in);
    guarded out(n);
    auto r = d.decompress(input, out.inner());
    CHECK(out.guards_intact());
    return {std::move(r), out.contents()};
}

template <class D>
void require_decodes(D& d, const bytes& in, const bytes& expected) {
    auto [r, got] = decompress_cluster(d, in, expected.size());
    if (!r) FAIL(r.error().what());
    REQUIRE(got == expected);
}

template <class D>
void require_invalid(D& d, const bytes& in, std::size_t n) {
    auto [r, got] = decompress_cluster(d, in, n);
    REQUIRE_FALSE(r);
    INFO(r.error().what());
    CHECK(r.error() == errc::invalid_compressed_data);
}

#if QCOW2_HAS_ZLIB
/// A raw deflate stream made with zlib's default 32 KiB window (what QEMU cannot always read).
bytes deflate_window15(const bytes& data, int level = Z_DEFAULT_COMPRESSION) {
    z_stream s{};
    REQUIRE(deflateInit2(&s, level, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) == Z_OK);
    bytes out(deflateBound(&s, static_cast<uLong>(data.size())));
    s.next_in = const_cast<Bytef*>(reinterpret_cast<const Bytef*>(data.data()));
    s.avail_in = static_cast<uInt>(data.size());
    s.next_out = reinterpret_cast<Bytef*>(out.data());
    s.avail_out = static_cast<uInt>(out.size());
    const int r = deflate(&s, Z_FINISH);
    deflateEnd(&s);
    REQUIRE(r == Z_STREAM_END);
    out.resize(static_cast<std::size_t>(s.total_out));
    return out;
}
#endif

#if QCOW2_HAS_ZSTD
/// A zstd frame of `data` made with `setup` applied to the context, through the streaming API.
template <class Setup>
bytes zstd_frame(const bytes& data, Setup setup, bool pledge_size = true) {
    ZSTD_CCtx* c = ZSTD_createCCtx();
    REQUIRE(c);
    setup(c);
    bytes out(ZSTD_compressBound(data.size()) + 1024);
    ZSTD_inBuffer in{data.data(), data.size(), 0};
    ZSTD_outBuffer o{out.data(), out.size(), 0};
    std::size_t r = 0;
    if (!pledge_size) { // feed without ZSTD_e_end first: the frame does not record its size
        r = ZSTD_compressStream2(c, &o, &in, ZSTD_e_continue);
        REQUIRE_FALSE(ZSTD_isError(r));
    }
    do {
        r = ZSTD_compressStream2(c, &o, &in, ZSTD_e_end);
        REQUIRE_FALSE(ZSTD_isError(r));
    } while (r != 0);
    ZSTD_freeCCtx(c);
    out.resize(o.pos);
    return out;
}
bytes zstd_frame(const bytes& data) {
    return zstd_frame(data, [](ZSTD_CCtx*) {});
}
#endif

// ---- files and images ----

bytes read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    REQUIRE(f);
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    bytes b(c.size());
    std::transform(c.begin(), c.end(), b.begin(), [](char x) { return static_cast<std::byte>(x); });
    return b;
}

void write_file(const std::string& path, const bytes& b) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    REQUIRE(f);
    f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    REQUIRE(f);
}

void run_ok(const std::vector<std::string>& argv) {
    const auto r = qcow2_test::run(argv);
    INFO(qcow2_test::command_line(argv) << "\nstdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(r.ok());
}

/// Just enough of a qcow2 file to find and replace the compressed clusters of the first L2 table.
struct parsed_image {
    bytes file;
    qcow2::header h;
    std::uint64_t l2_offset = 0;

    unsigned x() const { return 70 - h.cluster_bits; } // offset bits of a compressed descriptor (§4.3)
    std::uint64_t l2_entry(std::size_t i) const { return qcow2::detail::load_be64(file, static_cast<std::size_t>(l2_offset) + 8 * i); }
    void set_l2_entry(std::size_t i, std::uint64_t e) { qcow2::detail::store_be64(file, static_cast<std::size_t>(l2_offset) + 8 * i, e); }

    /// The bytes QEMU reads for guest cluster i: (n + 1) * 512 - offset % 512 from the offset, clamped to the file.
    bytes compressed_range(std::size_t i) const {
        const std::uint64_t e = l2_entry(i);
        REQUIRE(((e >> 62) & 1) == 1);
        const std::uint64_t offset = e & ((std::uint64_t{1} << x()) - 1);
        const std::uint64_t n = (e >> x()) & ((std::uint64_t{1} << (h.cluster_bits - 8)) - 1);
        const std::uint64_t size = (n + 1) * 512 - offset % 512;
        REQUIRE(offset < file.size());
        const std::uint64_t end = std::min<std::uint64_t>(offset + size, file.size());
        return bytes(file.begin() + static_cast<std::ptrdiff_t>(offset), file.begin() + static_cast<std::ptrdiff_t>(end));
    }

    /// Appends `stream` at the end of the file (at an odd offset, on purpose) and points guest cluster i at it.
    void replace_compressed(std::size_t i, const bytes& stream) {
        const std::uint64_t offset = file.size() + 7;
        const std::uint64_t n = (offset + stream.size() - 1) / 512 - offset / 512;
        REQUIRE(n <= (std::uint64_t{1} << (h.cluster_bits - 8)) - 1);
        file.resize(static_cast<std::size_t>(offset), std::byte{0});
        file.insert(file.end(), stream.begin(), stream.end());
        file.resize((file.size() + 511) / 512 * 512, std::byte{0});
        set_l2_entry(i, offset | (std::uint64_t{1} << 62) | (n << x()));
    }
};

parsed_image parse_image(const std::string& path) {
    parsed_image p;
    p.file = read_file(path);
    REQUIRE(p.file.size() >= qcow2::header_probe_size);
    const std::size_t cs = std::size_t{1} << qcow2::detail::load_be32(p.file, 20);
    auto h = qcow2::decode_header(std::span<const std::byte>(p.file).first(std::min(cs, p.file.size())));
    if (!h) FAIL(h.error().what());
    p.h = std::move(*h);
    REQUIRE(p.h.l1_size >= 1);
    p.l2_offset = qcow2::detail::load_be64(p.file, static_cast<std::size_t>(p.h.l1_table_offset)) & 0x00fffffffffffe00ull;
    REQUIRE(p.l2_offset != 0);
    REQUIRE(p.l2_offset + p.h.cluster_size() <= p.file.size());
    return p;
}

/// Guest data for the interop images: `clusters` clusters, each different, all compressible.
bytes guest_data(std::size_t cs, std::size_t clusters, std::uint64_t seed) {
    bytes all;
    for (std::size_t i = 0; i < clusters; ++i) all = concat(std::move(all), compressible(cs, seed + i));
    return all;
}

bytes cluster_of(const bytes& all, std::size_t cs, std::size_t i) {
    return bytes(all.begin() + static_cast<std::ptrdiff_t>(i * cs), all.begin() + static_cast<std::ptrdiff_t>((i + 1) * cs));
}

/// qemu-img convert -c of `raw` into a qcow2 image of cluster size `cs` and the given compression type.
std::string qemu_compressed_image(const qcow2_test::temp_dir& dir, const bytes& raw, std::size_t cs, compression type) {
    write_file(dir / "guest.raw", raw);
    std::string options = "cluster_size=" + std::to_string(cs);
    if (type == compression::zstd) options += ",compression_type=zstd";
    run_ok({"qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", "-o", options, dir / "guest.raw", dir / "qemu.qcow2"});
    return dir / "qemu.qcow2";
}

/// What qemu-img reads from `image`, as raw bytes.
qcow2_test::process_result qemu_read(const qcow2_test::temp_dir& dir, const std::string& image, bytes& out) {
    const std::vector<std::string> argv{"qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", image, dir / "read.raw"};
    auto r = qcow2_test::run(argv);
    if (r.ok()) out = read_file(dir / "read.raw");
    return r;
}

bool have_qemu() {
    if (qcow2_test::find_program("qemu-img")) return true;
    FAIL("qemu-img is not on PATH: install qemu-utils (the QEMU interop checks never skip)");
    return false;
}

} // namespace

// ---- concepts ----

#if QCOW2_HAS_ZLIB
static_assert(codec::codec<codec::zlib_codec> && codec::decompressor<codec::zlib_inflater>);
static_assert(!codec::decompressor<codec::zlib_deflater>);
static_assert(!std::is_copy_constructible_v<codec::zlib_codec> && std::is_nothrow_move_constructible_v<codec::zlib_codec> &&
              std::is_nothrow_move_assignable_v<codec::zlib_codec>);
#endif
#if QCOW2_HAS_LIBDEFLATE
static_assert(codec::decompressor<codec::libdeflate_inflater> && !codec::codec<codec::libdeflate_inflater>);
static_assert(!std::is_copy_constructible_v<codec::libdeflate_inflater> && std::is_nothrow_move_constructible_v<codec::libdeflate_inflater>);
#endif
#if QCOW2_HAS_ZSTD
static_assert(codec::codec<codec::zstd_codec> && codec::decompressor<codec::zstd_decompressor>);
static_assert(!std::is_copy_constructible_v<codec::zstd_codec> && std::is_nothrow_move_constructible_v<codec::zstd_codec>);
#endif
static_assert(codec::decompressor<codec::cluster_decompressor> && !codec::codec<codec::cluster_decompressor>);
static_assert(!std::is_copy_constructible_v<codec::cluster_decompressor> && std::is_nothrow_move_constructible_v<codec::cluster_decompressor>);
static_assert(!std::is_copy_constructible_v<codec::cluster_compressor> && std::is_nothrow_move_constructible_v<codec::cluster_compressor>);
static_assert(!codec::decompressor<int> && !codec::codec<std::vector<std::byte>>);
// The codec namespace is the ABI-tagged one: TUs built with other QCOW2_HAS_* settings cannot link with these.
static_assert(std::is_same_v<codec::cluster_decompressor, qcow2::QCOW2_ABI_NAMESPACE::codec::cluster_decompressor>);

// ---- round trips ----

TEST_CASE("every codec round-trips compressible clusters of every size", "[codec]") {
    for (const std::size_t cs : cluster_sizes) {
        DYNAMIC_SECTION("cluster size " << cs) {
            const bytes data = compressible(cs, cs);
            const bytes trailing = random_bytes(511, cs + 1); // QEMU readers get up to 511 bytes of what follows
#if QCOW2_HAS_ZLIB
            {
                codec::zlib_codec z;
                const bytes s = compress_cluster(z, data);
                require_decodes(z, s, data);
                require_decodes(z, concat(s, trailing), data);
                codec::zlib_inflater inflater;
                require_decodes(inflater, concat(s, trailing), data);
#if QCOW2_HAS_LIBDEFLATE
                codec::libdeflate_inflater ld;
                require_decodes(ld, s, data);
                require_decodes(ld, concat(s, trailing), data);
#endif
                // A stream with a 32 KiB window reads too (readers accept every window).
                const bytes wide = deflate_window15(data);
                require_decodes(z, wide, data);
            }
#endif
#if QCOW2_HAS_ZSTD
            {
                codec::zstd_codec z;
                const bytes s = compress_cluster(z, data);
                require_decodes(z, s, data);
                require_decodes(z, concat(s, trailing), data);
                // The same frame QEMU's ZSTD_compressStream2(ZSTD_e_end) loop makes.
                CHECK(s == zstd_frame(data));
            }
#endif
            for (const compression type : {compression::zlib, compression::zstd}) {
                if (!codec::cluster_compressor::available(type)) continue;
                codec::cluster_compressor c(type);
                codec::cluster_decompressor d(type);
                const bytes s = compress_cluster(c, data);
                require_decodes(d, concat(s, trailing), data);
            }
        }
    }
}

TEST_CASE("random data is not compressible and nothing is written past the room given", "[codec]") {
    for (const std::size_t cs : cluster_sizes) {
        DYNAMIC_SECTION("cluster size " << cs) {
            const bytes data = random_bytes(cs, cs + 2);
            const auto check = [&](auto& c) {
                guarded out(cs - 1);
                auto r = c.compress(data, out.inner());
                REQUIRE(out.guards_intact());
                REQUIRE_FALSE(r);
                INFO(r.error().what());
                CHECK(r.error() == errc::not_compressible);
                CHECK(r.error().code().message() == "data does not shrink when compressed");
            };
#if QCOW2_HAS_ZLIB
            codec::zlib_codec z;
            check(z);
#endif
#if QCOW2_HAS_ZSTD
            codec::zstd_codec s;
            check(s);
#endif
            for (const compression type : {compression::zlib, compression::zstd}) {
                if (!codec::cluster_compressor::available(type)) continue;
                codec::cluster_compressor c(type);
                check(c);
            }
        }
    }
}

TEST_CASE("compression levels", "[codec]") {
    const bytes data = compressible(64 * KiB, 5);
#if QCOW2_HAS_ZLIB
    {
        codec::zlib_codec fast(1), best(9);
        CHECK(fast.level() == 1);
        const bytes a = compress_cluster(fast, data), b = compress_cluster(best, data);
        CHECK(b.size() <= a.size());
        require_decodes(fast, b, data);
        REQUIRE(fast.set_level(9));
        CHECK(compress_cluster(fast, data) == b);
        auto bad = fast.set_level(10);
        REQUIRE_FALSE(bad);
        CHECK(bad.error() == errc::invalid_argument);
        CHECK(fast.level() == 9);
        codec::zlib_codec invalid(42);
        guarded out(data.size() - 1);
        auto r = invalid.compress(data, out.inner());
        REQUIRE_FALSE(r);
        CHECK(r.error() == errc::invalid_argument);
        codec::cluster_compressor c(compression::zlib, 1);
        CHECK(compress_cluster(c, data) == a);
    }
#endif
#if QCOW2_HAS_ZSTD
    {
        codec::zstd_codec fast(1), best(19);
        const bytes a = compress_cluster(fast, data), b = compress_cluster(best, data);
        CHECK(b.size() < a.size());
        require_decodes(fast, b, data);
        REQUIRE(fast.set_level(19));
        CHECK(fast.level() == 19);
        CHECK(compress_cluster(fast, data) == b);
        codec::cluster_compressor c(compression::zstd, 1);
        CHECK(compress_cluster(c, data) == a);
    }
#endif
}

#if QCOW2_HAS_ZLIB
namespace {

/// Inflates with a 4 KiB window (QEMU's window bits) one output byte per call, so that every
/// back-reference must lie within the 4 KiB window: zlib checks distances against the window
/// only across calls (within one call it can reach back over everything the call wrote, which
/// is why QEMU, inflating a whole cluster in one call, happens to read wider streams too).
bool inflates_with_4k_window(const bytes& stream, const bytes& expected) {
    z_stream s{};
    REQUIRE(inflateInit2(&s, -12) == Z_OK);
    bytes out(expected.size());
    s.next_in = const_cast<Bytef*>(reinterpret_cast<const Bytef*>(stream.data()));
    s.avail_in = static_cast<uInt>(stream.size());
    std::size_t produced = 0;
    int r = Z_OK;
    while (produced < out.size() && r == Z_OK) {
        s.next_out = reinterpret_cast<Bytef*>(out.data() + produced);
        s.avail_out = 1;
        r = inflate(&s, Z_NO_FLUSH);
        produced += 1 - s.avail_out;
    }
    inflateEnd(&s);
    return produced == out.size() && out == expected;
}

} // namespace

TEST_CASE("zlib streams we write only refer back 4 KiB, as QEMU's window needs", "[codec]") {
    for (const std::size_t cs : cluster_sizes) {
        DYNAMIC_SECTION("cluster size " << cs) {
            codec::zlib_codec z;
            const bytes text = compressible(cs, 61);
            CHECK(inflates_with_4k_window(compress_cluster(z, text), text));
            if (cs >= 16 * KiB) {
                const bytes far = far_repeats(cs, 62);
                CHECK(inflates_with_4k_window(compress_cluster(z, far), far));
                // The checker has teeth: deflated with a 32 KiB window, the same data refers 8 KiB back.
                CHECK_FALSE(inflates_with_4k_window(deflate_window15(far), far));
            }
        }
    }
}
#endif

// ---- QEMU interop ----

TEST_CASE("clusters compressed by qemu-img decode with every codec", "[codec][qemu]") {
    if (!have_qemu()) return;
    for (const compression type : {compression::zlib, compression::zstd}) {
        if (!codec::cluster_decompressor::available(type)) continue;
        for (const std::size_t cs : {std::size_t{512}, 64 * KiB, 2 * MiB}) {
            DYNAMIC_SECTION((type == compression::zlib ? "zlib" : "zstd") << ", cluster size " << cs) {
                qcow2_test::temp_dir dir("qcow2-codec-");
                const std::size_t clusters = 4;
                const bytes raw = guest_data(cs, clusters, 100);
                const parsed_image img = parse_image(qemu_compressed_image(dir, raw, cs, type));
                REQUIRE(img.h.cluster_size() == cs);
                REQUIRE(img.h.compression_kind() == type);
                codec::cluster_decompressor d(type);
                for (std::size_t i = 0; i < clusters; ++i) {
                    INFO("guest cluster " << i);
                    const bytes stream = img.compressed_range(i);
                    const bytes expected = cluster_of(raw, cs, i);
                    require_decodes(d, stream, expected);
                    if (type == compression::zlib) {
#if QCOW2_HAS_ZLIB
                        codec::zlib_codec z;
                        require_decodes(z, stream, expected);
                        // Our writer makes QEMU's exact bytes (same zlib, same parameters).
                        const bytes ours = compress_cluster(z, expected);
                        CHECK(bytes(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(std::min(ours.size(), stream.size()))) == ours);
#endif
#if QCOW2_HAS_LIBDEFLATE
                        codec::libdeflate_inflater ld;
                        require_decodes(ld, stream, expected);
#endif
                    } else {
#if QCOW2_HAS_ZSTD
                        codec::zstd_codec z;
                        require_decodes(z, stream, expected);
                        const bytes ours = compress_cluster(z, expected);
                        CHECK(bytes(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(std::min(ours.size(), stream.size()))) == ours);
#endif
                    }
                }
            }
        }
    }
}

TEST_CASE("qemu-img reads clusters compressed by our codecs", "[codec][qemu]") {
    if (!have_qemu()) return;
    for (const compression type : {compression::zlib, compression::zstd}) {
        if (!codec::cluster_compressor::available(type)) continue;
        for (const std::size_t cs : {std::size_t{512}, 64 * KiB, 2 * MiB}) {
            DYNAMIC_SECTION((type == compression::zlib ? "zlib" : "zstd") << ", cluster size " << cs) {
                qcow2_test::temp_dir dir("qcow2-codec-");
                const std::size_t clusters = 4, target = 1;
                const bytes raw = guest_data(cs, clusters, 200);
                parsed_image img = parse_image(qemu_compressed_image(dir, raw, cs, type));
                // New contents for one cluster, written by us (repeats 8 KiB apart where the cluster is
                // big enough: a 4 KiB window cannot reach them, see the window test).
                const bytes mine = cs >= 16 * KiB ? far_repeats(cs, 7) : compressible(cs, 7);
                codec::cluster_compressor c(type);
                img.replace_compressed(target, compress_cluster(c, mine));
                write_file(dir / "ours.qcow2", img.file);
                bytes got;
                const auto r = qemu_read(dir, dir / "ours.qcow2", got);
                INFO("stderr: " << r.err);
                REQUIRE(r.ok());
                REQUIRE(got.size() == raw.size());
                for (std::size_t i = 0; i < clusters; ++i) {
                    INFO("guest cluster " << i);
                    CHECK(cluster_of(got, cs, i) == (i == target ? mine : cluster_of(raw, cs, i)));
                }
                // And our reader agrees with itself on the file we made.
                codec::cluster_decompressor d(type);
                require_decodes(d, img.compressed_range(target), mine);

            }
        }
    }
}

// ---- hostile input ----

namespace {

/// Checks every decompressor of `type` against the same corrupt inputs. `bomb_fills` says whether
/// a stream of 100 clusters of zeroes fills one cluster (zlib, as QEMU) or is refused (zstd, as QEMU).
template <class D>
void hostile_inputs(D& d, const std::function<bytes(const bytes&)>& make, std::size_t cs, bool bomb_fills) {
    const bytes data = compressible(cs, 11);
    const bytes stream = make(data);
    SECTION("truncated stream") {
        require_invalid(d, bytes(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(stream.size() / 2)), cs);
        require_invalid(d, bytes(stream.begin(), stream.begin() + 1), cs);
        require_invalid(d, bytes{}, cs);
    }
    SECTION("random bytes") {
        for (std::uint64_t seed = 1; seed <= 20; ++seed) require_invalid(d, random_bytes(cs - 1, seed), cs);
    }
    SECTION("a stream of less than one cluster") {
        const bytes half = make(bytes(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(cs / 2)));
        require_invalid(d, half, cs);
        require_invalid(d, concat(half, random_bytes(511, 3)), cs);
    }
    SECTION("a bomb: 100 clusters of zeroes") {
        const bytes bomb = make(bytes(100 * cs));
        CHECK(bomb.size() < cs);
        auto [r, got] = decompress_cluster(d, bomb, cs);
        if (bomb_fills) {
            if (!r) FAIL(r.error().what());
            CHECK(got == bytes(cs));
        } else {
            REQUIRE_FALSE(r);
            INFO(r.error().what());
            CHECK(r.error() == errc::invalid_compressed_data);
        }
    }
    SECTION("the object stays usable after errors") {
        require_invalid(d, random_bytes(cs - 1, 99), cs);
        require_invalid(d, bytes(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(stream.size() / 2)), cs);
        require_decodes(d, stream, data);
    }
}

} // namespace

TEST_CASE("corrupt zlib streams fail cleanly; a bomb fills one cluster", "[codec]") {
#if QCOW2_HAS_ZLIB
    const std::size_t cs = 64 * KiB;
    const auto make = [](const bytes& data) { return deflate_window15(data); };
    SECTION("zlib_inflater") {
        codec::zlib_inflater d;
        hostile_inputs(d, make, cs, true);
    }
    SECTION("cluster_decompressor (libdeflate with zlib behind it, or zlib)") {
        codec::cluster_decompressor d(compression::zlib);
        hostile_inputs(d, make, cs, true);
    }
    SECTION("small clusters") {
        codec::zlib_inflater d;
        hostile_inputs(d, make, 512, true);
    }
#else
    SUCCEED("zlib is not compiled in");
#endif
}

TEST_CASE("libdeflate_inflater needs the stream to end within the cluster", "[codec]") {
#if QCOW2_HAS_LIBDEFLATE && QCOW2_HAS_ZLIB
    const std::size_t cs = 64 * KiB;
    codec::libdeflate_inflater d;
    hostile_inputs(d, [](const bytes& data) { return deflate_window15(data); }, cs, false);
#else
    SUCCEED("libdeflate or zlib is not compiled in");
#endif
}

TEST_CASE("corrupt zstd streams fail cleanly, as in QEMU", "[codec]") {
#if QCOW2_HAS_ZSTD
    const std::size_t cs = 64 * KiB;
    const auto make = [](const bytes& data) { return zstd_frame(data); };
    SECTION("zstd_decompressor") {
        codec::zstd_decompressor d;
        hostile_inputs(d, make, cs, false);
    }
    SECTION("cluster_decompressor") {
        codec::cluster_decompressor d(compression::zstd);
        hostile_inputs(d, make, cs, false);
    }
    SECTION("small clusters") {
        codec::zstd_decompressor d;
        hostile_inputs(d, make, 512, false);
    }
    SECTION("frames without their size go through zstd's buffers") {
        codec::zstd_decompressor d;
        hostile_inputs(d, [](const bytes& data) { return zstd_frame(data, [](ZSTD_CCtx*) {}, false); }, cs, false);
    }
#else
    SUCCEED("zstd is not compiled in");
#endif
}

TEST_CASE("zstd: several frames make one cluster, trailing input is ignored", "[codec]") {
#if QCOW2_HAS_ZSTD
    const std::size_t cs = 64 * KiB;
    const bytes data = compressible(cs, 21);
    const auto half = static_cast<std::ptrdiff_t>(cs / 2);
    const bytes a = zstd_frame(bytes(data.begin(), data.begin() + half)), b = zstd_frame(bytes(data.begin() + half, data.end()));
    codec::zstd_decompressor d;
    require_decodes(d, concat(a, b), data);
    require_decodes(d, concat(concat(a, b), random_bytes(511, 4)), data);
    // A frame that completes the cluster followed by the next cluster's frame.
    require_decodes(d, concat(concat(a, b), zstd_frame(data)), data);
    // A skippable frame (magic 0x184D2A50, 4-byte length) before the data.
    const bytes skippable{std::byte{0x50}, std::byte{0x2a}, std::byte{0x4d}, std::byte{0x18}, std::byte{3},
                          std::byte{0},    std::byte{0},    std::byte{0},    std::byte{1},    std::byte{2},
                          std::byte{3}};
    require_decodes(d, concat(skippable, concat(a, b)), data);
    // A frame with a checksum.
    require_decodes(d, zstd_frame(data, [](ZSTD_CCtx* c) { ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1); }), data);
    bytes bad_sum = zstd_frame(data, [](ZSTD_CCtx* c) { ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1); });
    bad_sum.back() ^= std::byte{1};
    require_invalid(d, bad_sum, cs);
#else
    SUCCEED("zstd is not compiled in");
#endif
}

TEST_CASE("zstd: frames that ask for a window over 8 MiB are refused", "[codec]") {
#if QCOW2_HAS_ZSTD
    const std::size_t cs = 64 * KiB;
    const bytes data = compressible(cs, 31);
    codec::zstd_decompressor d;
    const auto with_window = [&](int log) {
        return zstd_frame(
            data,
            [log](ZSTD_CCtx* c) {
                ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, log);
                ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0);
            },
            false);
    };
    require_decodes(d, with_window(codec::zstd_decompressor::max_window_log), data);
    auto [r, got] = decompress_cluster(d, with_window(27), cs); // zstd's default limit; 128 MiB of buffer
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::invalid_compressed_data);
    CHECK_THAT(r.error().message(), Catch::Contains("zstd"));
#else
    SUCCEED("zstd is not compiled in");
#endif
}

// ---- the dispatcher ----

TEST_CASE("cluster_decompressor and cluster_compressor pick the codec at run time", "[codec]") {
    CHECK(codec::cluster_decompressor::available(compression::zlib) == (QCOW2_HAS_ZLIB || QCOW2_HAS_LIBDEFLATE));
    CHECK(codec::cluster_decompressor::available(compression::zstd) == bool(QCOW2_HAS_ZSTD));
    CHECK(codec::cluster_compressor::available(compression::zlib) == bool(QCOW2_HAS_ZLIB));
    CHECK(codec::cluster_compressor::available(compression::zstd) == bool(QCOW2_HAS_ZSTD));
    CHECK_FALSE(codec::cluster_decompressor::available(static_cast<compression>(2)));
    static_assert(codec::cluster_decompressor::available(compression::zlib) || !QCOW2_HAS_ZLIB);

    codec::cluster_decompressor z(compression::zlib), s(compression::zstd);
    CHECK(z.type() == compression::zlib);
    CHECK(z.library() == (QCOW2_HAS_LIBDEFLATE ? "libdeflate" : QCOW2_HAS_ZLIB ? "zlib" : ""));
    CHECK(s.library() == (QCOW2_HAS_ZSTD ? "zstd" : ""));

    SECTION("an unknown compression type") {
        codec::cluster_decompressor d(static_cast<compression>(7));
        bytes out(512);
        auto r = d.decompress(bytes(16), out);
        REQUIRE_FALSE(r);
        CHECK(r.error() == errc::invalid_compression_type);
        CHECK_THAT(r.error().message(), Catch::Contains("7"));
        codec::cluster_compressor c(static_cast<compression>(7));
        auto w = c.compress(bytes(512), out);
        REQUIRE_FALSE(w);
        CHECK(w.error() == errc::invalid_compression_type);
    }
    SECTION("moving") {
        const bytes data = compressible(4 * KiB, 41);
        for (const compression type : {compression::zlib, compression::zstd}) {
            if (!codec::cluster_compressor::available(type)) continue;
            codec::cluster_compressor c1(type);
            codec::cluster_compressor c2 = std::move(c1);
            const bytes stream = compress_cluster(c2, data);
            codec::cluster_decompressor d1(type);
            codec::cluster_decompressor d2 = std::move(d1);
            require_decodes(d2, stream, data);
            d1 = std::move(d2); // NOLINT(bugprone-use-after-move): moved-to again
            require_decodes(d1, stream, data);
            bytes out(data.size());
            auto r = d2.decompress(stream, out); // NOLINT(bugprone-use-after-move): the moved-from object fails cleanly
            REQUIRE_FALSE(r);
            CHECK(r.error() == errc::no_memory);
        }
    }
    SECTION("an empty output needs no input") {
        for (const compression type : {compression::zlib, compression::zstd}) {
            if (!codec::cluster_decompressor::available(type)) continue;
            codec::cluster_decompressor d(type);
            CHECK(d.decompress({}, {}));
        }
    }
}

// ---- throughput (informational) ----

TEST_CASE("decompression throughput of one 64 KiB cluster", "[.][codec_bench]") {
    const std::size_t cs = 64 * KiB;
    const bytes data = compressible(cs, 51);
    const int rounds = 2000;
    const auto measure = [&](const char* name, auto& d, const bytes& stream) {
        bytes out(cs);
        REQUIRE(d.decompress(stream, out));
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < rounds; ++i) REQUIRE(d.decompress(stream, out));
        const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
        std::printf("%-12s %6zu -> %zu bytes: %8.0f MB/s\n", name, stream.size(), cs,
                    static_cast<double>(cs) * rounds / dt.count() / 1e6);
    };
#if QCOW2_HAS_ZLIB
    codec::zlib_codec z;
    const bytes zs = compress_cluster(z, data);
    measure("zlib", z, zs);
#if QCOW2_HAS_LIBDEFLATE
    codec::libdeflate_inflater ld;
    measure("libdeflate", ld, zs);
#endif
#endif
#if QCOW2_HAS_ZSTD
    codec::zstd_codec s;
    const bytes ss = compress_cluster(s, data);
    measure("zstd", s, ss);
#endif
    (void)measure;
}
