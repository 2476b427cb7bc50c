// SPDX-License-Identifier: MIT
// ABI check, second translation unit: built with QCOW2_HAS_ZSTD=0 while abi_mix_a.cpp has
// zstd (tests/CMakeLists.txt), and linked into the same program. Everything whose layout or
// inline code depends on the codec settings lives in the ABI namespace, so this TU's
// basic_image is another type than abi_mix_a.cpp's: the link cannot merge their inline
// functions (which would be an ODR violation, silently picking one TU's code for both).
#include <qcow2/qcow2.hpp>

#include <span>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#if QCOW2_HAS_ZSTD
#error "abi_mix_b.cpp must be compiled with QCOW2_HAS_ZSTD=0 (tests/CMakeLists.txt)"
#endif

namespace abi_mix {

#define QCOW2_ABI_MIX_STR2_(x) #x
#define QCOW2_ABI_MIX_STR_(x) QCOW2_ABI_MIX_STR2_(x)
std::string abi_namespace_b() { return QCOW2_ABI_MIX_STR_(QCOW2_ABI_NAMESPACE); }
#undef QCOW2_ABI_MIX_STR_
#undef QCOW2_ABI_MIX_STR2_

const std::type_info& image_type_b() { return typeid(qcow2::memory_image); }

// Makes an image with one zlib-compressed cluster (zlib is compiled in here) and returns
// its file; zstd images refuse compressed writes in this TU. "" on success, else what failed.
std::string make_image_b(qcow2::io::memory& out) {
    qcow2::create_options o;
    o.size = 1 << 20;
    std::vector<std::byte> cluster(65536, std::byte{'b'});
    {
        o.compression_type = qcow2::compression::zstd;
        auto z = qcow2::memory_image::create(qcow2::io::memory{}, o);
        if (!z) return "create (zstd): " + z.error().what();
        auto img = std::move(*z).release();
        auto r = img.write_compressed(0, cluster);
        if (r || !r.error().is(qcow2::errc::unsupported_compression))
            return "a zstd compressed write without zstd did not fail with unsupported_compression";
    }
    o.compression_type = qcow2::compression::zlib;
    auto z = qcow2::memory_image::create(qcow2::io::memory{}, o);
    if (!z) return "create (zlib): " + z.error().what();
    auto img = std::move(*z).release();
#if QCOW2_HAS_ZLIB
    if (auto r = img.write_compressed(0, cluster); !r) return "write_compressed (zlib): " + r.error().what();
#else
    if (auto r = img.write(0, cluster); !r) return "write: " + r.error().what();
#endif
    if (auto r = img.close(); !r) return "close: " + r.error().what();
    out = std::move(img.backend());
    return "";
}

// Reads guest byte 0 of an image made by the other TU.
std::string read_image_b(qcow2::io::memory file, std::byte& first) {
    auto img = qcow2::memory_image::open(std::move(file));
    if (!img) return "open: " + img.error().what();
    std::byte b[1];
    auto r = img->read(0, b);
    if (!r) return "read: " + r.error().what();
    first = b[0];
    return "";
}

} // namespace abi_mix
