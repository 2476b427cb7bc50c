// SPDX-License-Identifier: MIT
// The dispatcher in a build without zstd and libdeflate (QCOW2_HAS_ZSTD=0,
// QCOW2_HAS_LIBDEFLATE=0, set on this executable only): everything still compiles, zstd
// clusters fail with errc::unsupported_compression and a message naming the codec, and
// zlib clusters go through zlib alone (when zlib is compiled in).
//
// This is its own executable (qcow2_codec_absent_tests), linked with no other test file:
// its codec types live in another ABI namespace than the main suite's.
#include "qcow2/codec/dispatch.hpp"

#include <catch2/catch.hpp>

#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

#if QCOW2_HAS_ZSTD || QCOW2_HAS_LIBDEFLATE
#error "qcow2_codec_absent_tests must be compiled with QCOW2_HAS_ZSTD=0 and QCOW2_HAS_LIBDEFLATE=0 (tests/CMakeLists.txt)"
#endif

namespace {

using qcow2::compression;
using qcow2::errc;
namespace codec = qcow2::codec;
using bytes = std::vector<std::byte>;

bytes text(std::size_t n) {
    static const char words[] = "compressed cluster of a qcow2 image, ";
    bytes b(n);
    for (std::size_t i = 0; i < n; ++i)
        b[i] = static_cast<std::byte>(static_cast<std::size_t>(words[i % (sizeof words - 1)]) + (i / 4096) % 3);
    return b;
}

} // namespace

// The ABI tag says which codecs this translation unit was built with.
#if QCOW2_HAS_ZLIB
static_assert(std::is_same_v<codec::cluster_decompressor, qcow2::abi_z1_s0_d0_v0::codec::cluster_decompressor>);
#else
static_assert(std::is_same_v<codec::cluster_decompressor, qcow2::abi_z0_s0_d0_v0::codec::cluster_decompressor>);
#endif

TEST_CASE("without zstd, zstd clusters report unsupported_compression naming the codec", "[codec]") {
    CHECK_FALSE(codec::cluster_decompressor::available(compression::zstd));
    CHECK_FALSE(codec::cluster_compressor::available(compression::zstd));

    codec::cluster_decompressor d(compression::zstd);
    CHECK(d.library().empty());
    bytes in(100), out(4096);
    auto r = d.decompress(in, out);
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::unsupported_compression);
    CHECK(r.error().message() == "zstd support was not compiled in (QCOW2_HAS_ZSTD=0)");
    CHECK(r.error().what() == "zstd support was not compiled in (QCOW2_HAS_ZSTD=0): compression type not supported by this build");

    codec::cluster_compressor c(compression::zstd);
    bytes room(4095);
    auto w = c.compress(text(4096), room);
    REQUIRE_FALSE(w);
    CHECK(w.error() == errc::unsupported_compression);
    CHECK(w.error().message() == "zstd support was not compiled in (QCOW2_HAS_ZSTD=0)");
}

TEST_CASE("without libdeflate, zlib clusters go through zlib", "[codec]") {
#if QCOW2_HAS_ZLIB
    CHECK(codec::cluster_decompressor::available(compression::zlib));
    CHECK(codec::cluster_compressor::available(compression::zlib));
    codec::cluster_decompressor d(compression::zlib);
    CHECK(d.library() == "zlib");
    codec::cluster_compressor c(compression::zlib);
    for (const std::size_t cs : {std::size_t{512}, std::size_t{65536}}) {
        const bytes data = text(cs);
        bytes stream(cs - 1);
        auto n = c.compress(data, stream);
        REQUIRE(n);
        stream.resize(*n);
        bytes out(cs);
        REQUIRE(d.decompress(stream, out));
        CHECK(out == data);
        // A stream that goes on past the cluster fills it, as zlib and QEMU do.
        bytes bomb(cs - 1);
        auto b = c.compress(bytes(10 * cs), bomb);
        REQUIRE(b);
        bomb.resize(*b);
        REQUIRE(d.decompress(bomb, out));
        CHECK(out == bytes(cs));
        stream.resize(stream.size() / 2);
        auto bad = d.decompress(stream, out);
        REQUIRE_FALSE(bad);
        CHECK(bad.error() == errc::invalid_compressed_data);
    }
#else
    // No zlib either: zlib clusters are unsupported too, and the message says which macros.
    CHECK_FALSE(codec::cluster_decompressor::available(compression::zlib));
    codec::cluster_decompressor d(compression::zlib);
    bytes in(100), out(4096);
    auto r = d.decompress(in, out);
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::unsupported_compression);
    CHECK(r.error().message() == "zlib support was not compiled in (QCOW2_HAS_ZLIB=0 and QCOW2_HAS_LIBDEFLATE=0)");
    codec::cluster_compressor c(compression::zlib);
    auto w = c.compress(text(4096), out);
    REQUIRE_FALSE(w);
    CHECK(w.error() == errc::unsupported_compression);
    CHECK(w.error().message() == "zlib support was not compiled in (QCOW2_HAS_ZLIB=0)");
#endif
}
