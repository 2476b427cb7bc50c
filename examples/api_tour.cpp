// SPDX-License-Identifier: MIT
// A tour of the public API: open an image, read its header and features, handle errors.
//
// Run it with a qcow2 file to inspect that file, or with no argument to inspect a tiny
// image this program builds in memory with the header codec.
#include <qcow2/qcow2.hpp>

#include <cstdio>
#include <vector>

namespace {

// Builds a minimal valid qcow2 image in a memory backend. Real programs create images
// with qemu-img (or, later, this library's create); building one by hand shows the layout:
// the header in cluster 0, the refcount table in cluster 1, the L1 table in cluster 2.
qcow2::io::memory tiny_image() {
    qcow2::header h;                       // version 3, 64 KiB clusters by default
    h.size = 1 << 30;                      // a 1 GiB virtual disk
    h.l1_size = static_cast<std::uint32_t>(h.min_l1_entries());
    h.refcount_table_offset = 1 * h.cluster_size();
    h.refcount_table_clusters = 1;
    h.l1_table_offset = 2 * h.cluster_size();
    // Name every feature bit we know in the image's own feature name table, as QEMU does.
    h.set_extension(qcow2::extension_type::feature_names,
                    qcow2::encode_feature_names(qcow2::known_features::name_table()));
    qcow2::lay_out_header(h);              // header_length, end marker, backing name position

    std::vector<std::byte> cluster0(h.cluster_size());
    if (auto r = qcow2::encode_header(h, cluster0); !r) std::fprintf(stderr, "encode: %s\n", r.error().what().c_str());
    qcow2::io::memory file;
    (void)file.write_at(0, cluster0);
    (void)file.resize(3 * h.cluster_size());
    return file;
}

template <class Image>
void show(const Image& img) {
    const qcow2::header& h = img.header();
    std::printf("version %u, %llu bytes virtual, %llu-byte clusters, %u-bit refcounts\n", h.version,
                static_cast<unsigned long long>(img.size()), static_cast<unsigned long long>(img.cluster_size()),
                h.refcount_bits());
    // Feature bits are types: has<F>() also applies each bit's trust rule.
    std::printf("lazy refcounts: %s, extended L2: %s, all zero: %s\n",
                img.template has<qcow2::features::lazy_refcounts>() ? "yes" : "no",
                img.template has<qcow2::features::extended_l2>() ? "yes" : "no",
                img.template has<qcow2::features::all_zero>() ? "yes" : "no");
    if (auto f = h.backing_format()) std::printf("backing file: %s (%s)\n", h.backing_file.c_str(), f->c_str());
    for (const auto& s : img.snapshots()) std::printf("snapshot %s \"%s\"\n", s.id.c_str(), s.name.c_str());
}

} // namespace

int main(int argc, char** argv) {
    if (argc > 1) {
        // Every fallible call returns qcow2::result<T>: test it, then use the value.
        auto file = qcow2::io::posix_file::open(argv[1], qcow2::io::open_mode::read_only);
        if (!file) {
            std::fprintf(stderr, "%s\n", file.error().what().c_str());
            return 1;
        }
        // The library opens no other file by itself: backing and data files go through a
        // resolver. posix_resolver opens them relative to the image's directory.
        qcow2::posix_resolver resolver(argv[1]);
        auto img = qcow2::image::open(std::move(*file), {}, resolver);
        if (!img) {
            // The message names what and where; the code is a std::error_code for programs.
            std::fprintf(stderr, "cannot open %s: %s\n", argv[1], img.error().what().c_str());
            return img.error().is(qcow2::errc::bad_magic) ? 2 : 1;
        }
        show(*img);

        // Guest reads go through compressed clusters and the whole backing chain.
        std::vector<std::byte> sector(512);
        if (auto r = img->read(0, sector); !r) {
            std::fprintf(stderr, "reading sector 0: %s\n", r.error().what().c_str());
            return 1;
        }
        std::printf("sector 0 starts with %02x %02x %02x %02x\n", static_cast<unsigned>(sector[0]),
                    static_cast<unsigned>(sector[1]), static_cast<unsigned>(sector[2]), static_cast<unsigned>(sector[3]));
        return 0;
    }

    auto img = qcow2::memory_image::open(tiny_image());
    if (!img) {
        std::fprintf(stderr, "%s\n", img.error().what().c_str());
        return 1;
    }
    show(*img);

    // A damaged header gets a precise error instead of a crash.
    qcow2::io::memory broken = tiny_image();
    const std::byte bad_version[4]{std::byte{0}, std::byte{0}, std::byte{0}, std::byte{7}};
    (void)broken.write_at(4, bad_version);
    auto refused = qcow2::memory_image::open(std::move(broken));
    std::printf("damaged copy: %s\n", refused ? "opened?!" : refused.error().what().c_str());
    return refused ? 1 : 0;
}
