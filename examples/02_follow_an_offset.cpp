// SPDX-License-Identifier: MIT
// Tutorial 2: reads guest data, then follows one guest offset by hand through the L1 table,
// an L2 table and the host cluster (and a compressed cluster's descriptor), checking that the
// library's road and ours lead to the same bytes.
//
// qcow2 maps the guest disk in two levels. The guest offset splits into an L1 index (which
// L2 table), an L2 index (which entry of that table) and an offset inside the cluster; the
// L2 entry holds the host offset of the cluster in the file.
#include <qcow2/qcow2.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string_view>
#include <vector>

namespace {

// Reads one big-endian 64-bit table entry straight from the file.
qcow2::result<std::uint64_t> entry_at(qcow2::io::memory& file, std::uint64_t host_offset) {
    std::byte b[8];
    if (auto r = qcow2::io::read_exact(file, host_offset, b, "table entry"); !r) return r.error();
    std::uint64_t v = 0;
    for (std::byte x : b) v = (v << 8) | static_cast<std::uint64_t>(x);
    return v;
}

int fail(const char* what, const qcow2::error& e) {
    std::fprintf(stderr, "%s: %s\n", what, e.what().c_str());
    return 1;
}

} // namespace

int main() {
    // A 1 GiB image with 64 KiB clusters. The proof that it reads as zero (tutorial 7) is not
    // needed here: release() hands us the plain image.
    qcow2::create_options opts;
    opts.size = std::uint64_t{1} << 30;
    auto created = qcow2::memory_image::create(qcow2::io::memory{}, opts);
    if (!created) return fail("create", created.error());
    qcow2::memory_image img = std::move(*created).release();

    // Write a message far into the disk, so that the second L1 entry is used.
    const std::uint64_t guest = 0x2ABC1234;
    const std::string_view text = "hello, qcow2";
    const std::span<const std::byte> bytes = std::as_bytes(std::span<const char>(text.data(), text.size()));
    if (auto r = img.write(guest, bytes); !r) return fail("write", r.error());
    // Writes keep changed tables in the image's caches; flush() puts them in the file, which
    // we are about to read behind the image's back.
    if (auto r = img.flush(); !r) return fail("flush", r.error());

    // 1. The easy road: read through the image.
    std::vector<std::byte> got(text.size());
    if (auto r = img.read(guest, got); !r) return fail("read", r.error());
    std::printf("guest offset 0x%llx reads \"%.*s\"\n", static_cast<unsigned long long>(guest),
                static_cast<int>(got.size()), reinterpret_cast<const char*>(got.data()));

    // 2. The hard road. One L2 table is one cluster of 8-byte entries, so it maps
    //    cluster_size / 8 clusters; one L1 entry therefore covers cluster_size^2 / 8 bytes.
    const qcow2::header& h = img.header();
    const std::uint64_t cs = h.cluster_size();
    const std::uint64_t l2_entries = cs / 8;
    const std::uint64_t l1_index = guest / (cs * l2_entries);
    const std::uint64_t l2_index = (guest / cs) % l2_entries;
    const std::uint64_t in_cluster = guest % cs;
    std::printf("cluster size %llu: %llu entries per L2 table, %llu MiB per L1 entry\n",
                static_cast<unsigned long long>(cs), static_cast<unsigned long long>(l2_entries),
                static_cast<unsigned long long>(cs * l2_entries >> 20));
    std::printf("split: L1 index %llu, L2 index %llu, offset in cluster 0x%llx\n",
                static_cast<unsigned long long>(l1_index), static_cast<unsigned long long>(l2_index),
                static_cast<unsigned long long>(in_cluster));

    // The L1 entry: bits 9-55 are the L2 table's host offset; bit 63 (COPIED) says the table's
    // refcount is exactly 1, so it may be changed in place.
    auto l1e = entry_at(img.backend(), h.l1_table_offset + 8 * l1_index);
    if (!l1e) return fail("reading the L1 entry", l1e.error());
    const std::uint64_t l2_table = *l1e & qcow2::l2_bits::l1_offset_mask;
    std::printf("L1 entry %llu at host 0x%llx: 0x%016llx -> L2 table at host 0x%llx%s\n",
                static_cast<unsigned long long>(l1_index),
                static_cast<unsigned long long>(h.l1_table_offset + 8 * l1_index),
                static_cast<unsigned long long>(*l1e), static_cast<unsigned long long>(l2_table),
                (*l1e & qcow2::l2_bits::copied) ? " (COPIED)" : "");

    // The L2 entry: bit 62 would mark a compressed cluster, bit 0 a zero cluster; otherwise
    // bits 9-55 are the host cluster's offset.
    auto l2e = entry_at(img.backend(), l2_table + 8 * l2_index);
    if (!l2e) return fail("reading the L2 entry", l2e.error());
    const std::uint64_t host_cluster = *l2e & qcow2::l2_bits::offset_mask;
    std::printf("L2 entry %llu at host 0x%llx: 0x%016llx -> data cluster at host 0x%llx%s%s%s\n",
                static_cast<unsigned long long>(l2_index), static_cast<unsigned long long>(l2_table + 8 * l2_index),
                static_cast<unsigned long long>(*l2e), static_cast<unsigned long long>(host_cluster),
                (*l2e & qcow2::l2_bits::copied) ? " (COPIED)" : "",
                (*l2e & qcow2::l2_bits::compressed) ? " (compressed)" : "",
                (*l2e & qcow2::l2_bits::zero) ? " (zero)" : "");

    // 3. The byte at host_cluster + in_cluster in the file is the guest byte.
    const std::uint64_t host = host_cluster + in_cluster;
    const std::byte at_host = img.backend().bytes()[static_cast<std::size_t>(host)];
    std::printf("host offset 0x%llx holds '%c'; the image read '%c': %s\n", static_cast<unsigned long long>(host),
                static_cast<char>(at_host), static_cast<char>(got[0]), at_host == got[0] ? "same byte" : "DIFFERENT");

    // The library does this walk in map_range(), which the read above used.
    auto m = img.map_range(guest, 1);
    if (!m) return fail("map_range", m.error());
    std::printf("map_range agrees: %s\n", m->has_host && m->host_offset == host ? "yes" : "NO");

    // 4. A compressed cluster. Its L2 entry (bit 62 set) is a descriptor instead: the low
    //    70 - cluster_bits bits are the host *byte* offset of the compressed data, the bits
    //    above it the number of 512-byte sectors to read after the first one.
    std::vector<std::byte> cluster(static_cast<std::size_t>(cs));
    for (std::size_t i = 0; i < cluster.size(); ++i) cluster[i] = static_cast<std::byte>("compress me! "[i % 13]);
    const std::uint64_t cguest = 0x30000000; // cluster aligned: compressed writes are whole clusters
    if (auto r = img.write_compressed(cguest, cluster); !r) return fail("write_compressed", r.error());
    if (auto r = img.flush(); !r) return fail("flush", r.error());
    auto cl2 = entry_at(img.backend(), l2_table + 8 * ((cguest / cs) % l2_entries)); // same L2 table
    if (!cl2) return fail("reading the L2 entry", cl2.error());
    const unsigned x = 70 - h.cluster_bits;
    const std::uint64_t coffset = *cl2 & ((std::uint64_t{1} << x) - 1);
    const std::uint64_t sectors = ((*cl2 >> x) & ((std::uint64_t{1} << (h.cluster_bits - 8)) - 1)) + 1;
    std::printf("L2 entry %llu: 0x%016llx (compressed) -> %llu sectors from host byte 0x%llx\n",
                static_cast<unsigned long long>((cguest / cs) % l2_entries), static_cast<unsigned long long>(*cl2),
                static_cast<unsigned long long>(sectors), static_cast<unsigned long long>(coffset));
    auto cm = img.map_range(cguest, cs);
    if (!cm) return fail("map_range", cm.error());
    std::vector<std::byte> back(cluster.size());
    if (auto r = img.read(cguest, back); !r) return fail("read", r.error());
    std::printf("map_range agrees: %s; the cluster decompresses to what was written: %s\n",
                cm->host_offset == coffset && cm->compressed_size == sectors * 512 - coffset % 512 ? "yes" : "NO",
                back == cluster ? "yes" : "NO");

    // An offset whose L1 entry is 0 has no L2 table at all: it reads as zero (or, with a
    // backing file, as the backing file reads).
    auto first = entry_at(img.backend(), h.l1_table_offset);
    if (!first) return fail("reading L1 entry 0", first.error());
    std::printf("L1 entry 0: 0x%016llx -> guest offsets below 512 MiB are unallocated\n",
                static_cast<unsigned long long>(*first));
    return at_host == got[0] && m->host_offset == host && back == cluster ? 0 : 1;
}
