// SPDX-License-Identifier: MIT
// Tutorial 1: reads the header of a qcow2 image byte by byte, printing each field with its offset.
//
// A qcow2 file starts with cluster 0: fixed big-endian fields, then header extensions, then
// (when there is one) the backing file name. We create a small image in memory, decode its
// first bytes by hand, and check that the library's decoder reads the same values.
#include <qcow2/qcow2.hpp>

#include <cstdint>
#include <cstdio>
#include <span>

namespace {

// Every integer in a qcow2 file is big-endian: the first byte is the most significant.
std::uint64_t be(std::span<const std::byte> b, std::size_t offset, std::size_t size) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < size; ++i) v = (v << 8) | static_cast<std::uint64_t>(b[offset + i]);
    return v;
}

// Prints one field: where it is, how wide, its raw bytes, and the number they make
// (in hexadecimal for magic numbers and bit masks, where the bits matter more than the value).
std::uint64_t field(std::span<const std::byte> b, std::size_t offset, std::size_t size, const char* name,
                    bool hex = false) {
    std::printf("%5zu %4zu  %-24s ", offset, size, name);
    for (std::size_t i = 0; i < 8; ++i) {
        if (i < size) std::printf("%02x ", static_cast<unsigned>(b[offset + i]));
        else std::printf("   ");
    }
    const std::uint64_t v = be(b, offset, size);
    std::printf(hex ? " 0x%llx\n" : " %llu\n", static_cast<unsigned long long>(v));
    return v;
}

} // namespace

int main() {
    // 1. Make an image to look at: 1 GiB virtual, QEMU's defaults (version 3, 64 KiB clusters).
    //    create() returns result<zeroed<image>>: test it before using it.
    qcow2::create_options opts;
    opts.size = std::uint64_t{1} << 30;
    auto created = qcow2::memory_image::create(qcow2::io::memory{}, opts);
    if (!created) {
        std::fprintf(stderr, "create: %s\n", created.error().what().c_str());
        return 1;
    }
    // The memory backend lets us see the file's bytes. Cluster 0 is the header's cluster.
    const std::span<const std::byte> file = created->image().backend().bytes();
    const std::span<const std::byte> c0 = file.first(65536);

    // 2. The fixed fields. Versions 2 and 3 share the first 72 bytes; version 3 adds five more.
    std::printf("cluster 0 of a new 1 GiB image, field by field (big-endian):\n");
    std::printf("offset size  field                    bytes                     value\n");
    const std::uint64_t magic = field(c0, 0, 4, "magic", true);
    std::printf("             (\"QFI\\xfb\": %s)\n", magic == qcow2::header_magic ? "a qcow2 image" : "NOT qcow2");
    field(c0, 4, 4, "version");
    field(c0, 8, 8, "backing_file_offset"); // 0: no backing file
    field(c0, 16, 4, "backing_file_size");
    const auto cluster_bits = field(c0, 20, 4, "cluster_bits"); // 16: clusters of 1 << 16 bytes
    field(c0, 24, 8, "size");                                   // the guest disk, in bytes
    field(c0, 32, 4, "crypt_method");                           // 0: not encrypted
    field(c0, 36, 4, "l1_size");                                // entries in the L1 table
    field(c0, 40, 8, "l1_table_offset");                        // cluster 3 (cluster 2 is a refcount block)
    field(c0, 48, 8, "refcount_table_offset");                  // cluster 1, as QEMU lays it out
    field(c0, 56, 4, "refcount_table_clusters");
    field(c0, 60, 4, "nb_snapshots");
    field(c0, 64, 8, "snapshots_offset");
    field(c0, 72, 8, "incompatible_features", true); // unknown bits here: refuse to open
    field(c0, 80, 8, "compatible_features", true);   // unknown bits here: ignore
    field(c0, 88, 8, "autoclear_features", true);    // unknown bits here: clear before writing
    const auto refcount_order = field(c0, 96, 4, "refcount_order");
    const auto header_length = field(c0, 100, 4, "header_length");
    field(c0, 104, 1, "compression_type"); // present because header_length > 104
    std::printf("cluster size %llu, refcounts of %llu bits\n", 1ull << cluster_bits, 1ull << refcount_order);
    // autoclear bit 2 (0x4) is this project's "all zero" bit: set by create, see tutorial 7.

    // 3. Header extensions start at header_length: (type, length, data padded to 8) until type 0.
    std::printf("header extensions from byte %llu:\n", static_cast<unsigned long long>(header_length));
    std::size_t off = static_cast<std::size_t>(header_length);
    std::size_t names = 0;
    while (off + 8 <= c0.size()) {
        const auto type = static_cast<std::uint32_t>(be(c0, off, 4));
        const auto len = static_cast<std::size_t>(be(c0, off + 4, 4));
        std::printf("%5zu  type 0x%08x, %zu bytes", off, type, len);
        if (type == qcow2::extension_type::end) {
            std::printf(" (end of extensions)\n");
            break;
        }
        if (type == qcow2::extension_type::feature_names) {
            // 48-byte entries: class (0 incompatible, 1 compatible, 2 autoclear), bit, name.
            std::printf(" (feature name table)\n");
            for (std::size_t e = off + 8; e + 48 <= off + 8 + len; e += 48) {
                const char* name = reinterpret_cast<const char*>(c0.data() + e + 2);
                std::printf("         class %u bit %u  \"%.46s\"\n", static_cast<unsigned>(c0[e]),
                            static_cast<unsigned>(c0[e + 1]), name);
                ++names;
            }
        } else {
            std::printf("\n");
        }
        off += 8 + (len + 7) / 8 * 8;
    }

    // 4. The library's decoder must agree with our reading (it also validates every field).
    auto h = qcow2::decode_header(c0);
    if (!h) {
        std::fprintf(stderr, "decode_header: %s\n", h.error().what().c_str());
        return 1;
    }
    const bool same = h->size == be(c0, 24, 8) && h->l1_table_offset == be(c0, 40, 8) &&
                      h->cluster_bits == cluster_bits && h->header_length == header_length &&
                      h->feature_names().size() == names;
    std::printf("decode_header agrees: %s\n", same ? "yes" : "NO");
    return same ? 0 : 1;
}
