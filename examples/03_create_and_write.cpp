// SPDX-License-Identifier: MIT
// Tutorial 3: creates an image in memory and writes to it (data, zeroes, a discard), reads it
// back, closes it, and shows the all-zero bit going away with the first data write.
#include <qcow2/qcow2.hpp>

#include <cstdint>
#include <cstdio>
#include <utility>
#include <vector>

namespace {

constexpr std::uint64_t MiB = 1 << 20;

int fail(const char* what, const qcow2::error& e) {
    std::fprintf(stderr, "%s: %s\n", what, e.what().c_str());
    return 1;
}

const char* state_name(qcow2::cluster_state s) {
    switch (s) {
    case qcow2::cluster_state::unallocated: return "unallocated";
    case qcow2::cluster_state::zero: return "zero";
    case qcow2::cluster_state::data: return "data";
    case qcow2::cluster_state::compressed: return "compressed";
    case qcow2::cluster_state::invalid: break;
    }
    return "invalid";
}

// Prints the guest disk as runs of equal state, the way `qcow2 map` does.
template <class Image>
qcow2::result<void> print_map(Image& img) {
    for (std::uint64_t pos = 0; pos < img.size();) {
        auto m = img.map_range(pos, img.size() - pos);
        if (!m) return m.error();
        std::printf("  [%8llu, %8llu) %s", static_cast<unsigned long long>(pos),
                    static_cast<unsigned long long>(pos + m->length), state_name(m->state));
        if (m->has_host) std::printf(" at host 0x%llx", static_cast<unsigned long long>(m->host_offset));
        std::printf("\n");
        pos += m->length;
    }
    return {};
}

template <class Image>
const char* all_zero(const Image& img) {
    return img.template has<qcow2::features::all_zero>() ? "set" : "clear";
}

} // namespace

int main() {
    // 1. Create: a 4 MiB disk with 64 KiB clusters. The file is truncated and laid out as
    //    QEMU would lay it out; the image comes back open for writing.
    qcow2::create_options opts;
    opts.size = 4 * MiB;
    auto created = qcow2::memory_image::create(qcow2::io::memory{}, opts);
    if (!created) return fail("create", created.error());
    std::printf("created: %llu bytes virtual, file of %zu bytes, all-zero bit %s\n",
                static_cast<unsigned long long>(created->image().size()), created->image().backend().bytes().size(),
                all_zero(created->image()));

    // 2. Zero writes keep the image reading as zero, so they keep the bit. On a zeroed<> proof
    //    every change consumes the proof (std::move) and hands back the plain image.
    auto zeroed_run = std::move(*created).write_zeroes(0, 1 * MiB);
    if (!zeroed_run.status) return fail("write_zeroes", zeroed_run.status.error());
    qcow2::memory_image img = std::move(zeroed_run.image);
    std::printf("after write_zeroes: all-zero bit %s\n", all_zero(img));

    // 3. The first data write clears the bit, in the file, before any data reaches it: a crash
    //    can never leave a set bit over a cluster that holds data.
    std::vector<std::byte> data(100 * 1024, std::byte{0xAB}); // 100 KiB: two clusters, the second in part
    if (auto r = img.write(2 * MiB, data); !r) return fail("write", r.error());
    const auto byte95 = static_cast<unsigned>(img.backend().bytes()[95]); // last byte of autoclear_features
    std::printf("after write: all-zero bit %s (header byte 95 is now 0x%02x)\n", all_zero(img), byte95);

    // 4. Discard the first of those clusters: its host cluster is freed and it reads as zero.
    if (auto r = img.discard(2 * MiB, 64 * 1024); !r) return fail("discard", r.error());

    // 5. Read back: the discarded cluster is zeroes, the rest of the write is still there.
    std::vector<std::byte> back(data.size());
    if (auto r = img.read(2 * MiB, back); !r) return fail("read", r.error());
    std::printf("read back: byte 0 = 0x%02x (discarded), byte 65536 = 0x%02x, byte %zu = 0x%02x\n",
                static_cast<unsigned>(back[0]), static_cast<unsigned>(back[65536]), back.size() - 1,
                static_cast<unsigned>(back.back()));
    // The map: the zeroed first MiB stayed unallocated (with no backing file it already read
    // as zero, so there was nothing to record); the discarded cluster became a zero cluster.
    std::printf("map:\n");
    if (auto r = print_map(img); !r) return fail("map", r.error());

    // 6. close() flushes the cached metadata and makes everything durable. The destructor
    //    does the same but cannot report errors: call close() to see them.
    if (auto r = img.close(); !r) return fail("close", r.error());
    std::printf("closed: file of %zu bytes\n", img.backend().bytes().size());

    // 7. The bytes are a complete qcow2 file: open them again, read-only this time.
    auto copy = img.backend().clone();
    if (!copy) return fail("clone", copy.error());
    auto reopened = qcow2::memory_image::open(std::move(*copy));
    if (!reopened) return fail("open", reopened.error());
    std::byte b[1];
    if (auto r = reopened->read(2 * MiB + 65536, b); !r) return fail("read after reopen", r.error());
    std::printf("reopened: byte at 2 MiB + 64 KiB = 0x%02x, all-zero bit %s\n", static_cast<unsigned>(b[0]),
                all_zero(*reopened));
    return b[0] == std::byte{0xAB} ? 0 : 1;
}
