// SPDX-License-Identifier: MIT
// ABI check, first translation unit: the build's codec settings (zstd compiled in), linked
// with abi_mix_b.cpp, which has QCOW2_HAS_ZSTD=0. The program links (no duplicate or merged
// definitions), each TU has its own basic_image type, and both work: each reads and writes
// with its own codecs, and they exchange images through the backend, whose type does not
// depend on the codecs.
#include <qcow2/qcow2.hpp>

#include <cstdio>
#include <span>
#include <string>
#include <typeinfo>
#include <utility>
#include <vector>

#if !QCOW2_HAS_ZSTD
#error "abi_mix_a.cpp needs zstd (tests/CMakeLists.txt adds this test only when zstd is found)"
#endif

namespace abi_mix {

// Defined in abi_mix_b.cpp.
std::string abi_namespace_b();
const std::type_info& image_type_b();
std::string make_image_b(qcow2::io::memory& out);
std::string read_image_b(qcow2::io::memory file, std::byte& first);

#define QCOW2_ABI_MIX_STR2_(x) #x
#define QCOW2_ABI_MIX_STR_(x) QCOW2_ABI_MIX_STR2_(x)
std::string abi_namespace_a() { return QCOW2_ABI_MIX_STR_(QCOW2_ABI_NAMESPACE); }
#undef QCOW2_ABI_MIX_STR_
#undef QCOW2_ABI_MIX_STR2_

// An image with one zstd-compressed cluster (zstd is compiled in here).
std::string make_image_a(qcow2::io::memory& out) {
    qcow2::create_options o;
    o.size = 1 << 20;
    o.compression_type = qcow2::compression::zstd;
    auto z = qcow2::memory_image::create(qcow2::io::memory{}, o);
    if (!z) return "create: " + z.error().what();
    auto img = std::move(*z).release();
    std::vector<std::byte> cluster(65536, std::byte{'a'});
    if (auto r = img.write_compressed(0, cluster); !r) return "write_compressed (zstd): " + r.error().what();
    if (auto r = img.close(); !r) return "close: " + r.error().what();
    out = std::move(img.backend());
    return "";
}

} // namespace abi_mix

int main() {
    using namespace abi_mix;
    int failures = 0;
    auto expect = [&](bool ok, const std::string& what) {
        std::printf("%s: %s\n", ok ? "ok  " : "FAIL", what.c_str());
        if (!ok) ++failures;
    };
    const std::string a = abi_namespace_a(), b = abi_namespace_b();
    expect(a != b, "the two translation units use different ABI namespaces (" + a + ", " + b + ")");
    expect(typeid(qcow2::memory_image) != image_type_b(), "qcow2::memory_image is a different type in each");

    // TU b (no zstd) makes a zlib image and refuses zstd writes; TU a (zstd) makes a zstd image.
    qcow2::io::memory file_a, file_b;
    std::string e = make_image_b(file_b);
    expect(e.empty(), "without zstd: zstd compressed writes fail with unsupported_compression, zlib works " + e);
    e = make_image_a(file_a);
    expect(e.empty(), "with zstd: a zstd compressed write works " + e);

    // Each reads the other's image: TU a reads TU b's zlib cluster...
    {
        auto img = qcow2::memory_image::open(std::move(file_b));
        std::byte got[1]{};
        const bool ok = img && img->read(0, got) && got[0] == std::byte{'b'};
        expect(ok, "with zstd: reads the image written without zstd");
    }
    // ...and TU b reports unsupported_compression for TU a's zstd cluster, instead of crashing
    // or running TU a's zstd code by accident.
    std::byte first{};
    e = read_image_b(std::move(file_a), first);
    expect(e.find("zstd") != std::string::npos && e.find("not supported") != std::string::npos,
           "without zstd: reading a zstd cluster is refused (" + e + ")");
    return failures == 0 ? 0 : 1;
}
