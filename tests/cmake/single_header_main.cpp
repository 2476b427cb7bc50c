// SPDX-License-Identifier: MIT
// A user's program that copied single_include/qcow2/qcow2.hpp and nothing else: no CMake, no
// pkg-config, no -D flags (tests/cmake/single_header.cmake compiles it with a plain compiler).
// The header picks the codecs it finds (__has_include); the program uses the library for real.
#include <qcow2/qcow2.hpp>

#include <cstdio>
#include <vector>

#if !defined(QCOW2_AMALGAMATED)
#error "expected the single header (single_include/qcow2/qcow2.hpp)"
#endif

int main() {
    qcow2::create_options o;
    o.size = 1 << 20;
    auto created = qcow2::memory_image::create(qcow2::io::memory{}, o);
    if (!created) {
        std::fprintf(stderr, "create: %s\n", created.error().what().c_str());
        return 1;
    }
    qcow2::memory_image img = std::move(*created).release();
    const std::vector<std::byte> cluster(65536, std::byte{0x61});
    // A compressed write needs zlib; without it the library says so instead of failing to build.
    auto r = img.write_compressed(0, cluster);
    if (QCOW2_HAS_ZLIB ? !r : (r || !r.error().is(qcow2::errc::unsupported_compression))) {
        std::fprintf(stderr, "write_compressed: %s\n", r ? "succeeded without zlib" : r.error().what().c_str());
        return 1;
    }
    if (auto w = img.write(65536, cluster); !w) {
        std::fprintf(stderr, "write: %s\n", w.error().what().c_str());
        return 1;
    }
    std::vector<std::byte> back(2 * 65536);
    if (auto rd = img.read(0, back); !rd) {
        std::fprintf(stderr, "read: %s\n", rd.error().what().c_str());
        return 1;
    }
    if (back[65536] != std::byte{0x61} || (QCOW2_HAS_ZLIB && back[0] != std::byte{0x61})) return 1;
    std::printf("qcow2 %s single header OK (zlib=%d zstd=%d libdeflate=%d)\n", QCOW2_VERSION_STRING, QCOW2_HAS_ZLIB,
                QCOW2_HAS_ZSTD, QCOW2_HAS_LIBDEFLATE);
    return 0;
}
