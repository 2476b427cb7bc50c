// SPDX-License-Identifier: MIT
// A user's program: includes the library through the package and links qcow2::qcow2,
// whose codec libraries and QCOW2_HAS_* definitions must come along with it.
#include <qcow2/qcow2.hpp>

#include <cstdio>

#if QCOW2_HAS_ZLIB
#include <zlib.h>
#endif
#if QCOW2_HAS_ZSTD
#include <zstd.h>
#endif
#if QCOW2_HAS_LIBDEFLATE
#include <libdeflate.h>
#endif

#if defined(EXPECT_SINGLE_HEADER) && !defined(QCOW2_AMALGAMATED)
#error "expected the single header (single_include/qcow2/qcow2.hpp)"
#endif

int main() {
    qcow2::result<int> r = qcow2::error{qcow2::errc::bad_magic, "consumer"};
    if (r || !(r.error() == qcow2::errc::bad_magic)) return 1;
        // Call into each codec the package says it has: proves the library is linked.
#if QCOW2_HAS_ZLIB
    if (zlibVersion() == nullptr) return 1;
#endif
#if QCOW2_HAS_ZSTD
    if (ZSTD_versionNumber() == 0) return 1;
#endif
#if QCOW2_HAS_LIBDEFLATE
    libdeflate_compressor* c = libdeflate_alloc_compressor(6);
    if (c == nullptr) return 1;
    libdeflate_free_compressor(c);
#endif
    std::printf("qcow2 %s consumer OK (zlib=%d zstd=%d libdeflate=%d)\n", QCOW2_VERSION_STRING, QCOW2_HAS_ZLIB,
                QCOW2_HAS_ZSTD, QCOW2_HAS_LIBDEFLATE);
    return 0;
}
