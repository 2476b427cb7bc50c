// SPDX-License-Identifier: MIT
// Tutorial 8: damages an image's refcounts on purpose, lets check() find the damage, and
// repairs it with check_repair::all.
//
// Every host cluster has a refcount: how many references the metadata holds to it. check()
// recounts the references from all of the metadata and compares: a refcount above its
// references is a leak (space lost, harmless), one below is a corruption (a later write
// could reuse a cluster still in use). The counts and messages are those of `qemu-img check`.
#include <qcow2/qcow2.hpp>

#include <cstdint>
#include <cstdio>
#include <string_view>
#include <vector>

namespace {

using image = qcow2::memory_image;

int fail(const char* what, const qcow2::error& e) {
    std::fprintf(stderr, "%s: %s\n", what, e.what().c_str());
    return 1;
}

void print_report(const char* when, const qcow2::check_report& r) {
    std::printf("%s: %llu corruptions, %llu leaks, %llu fixed corruptions, %llu fixed leaks (qemu-img check exit %d)\n",
                when, static_cast<unsigned long long>(r.corruptions), static_cast<unsigned long long>(r.leaks),
                static_cast<unsigned long long>(r.corruptions_fixed), static_cast<unsigned long long>(r.leaks_fixed),
                r.exit_code());
}

// Sets the 16-bit refcount of host cluster `cluster` directly in the file's refcount block.
void poke_refcount(qcow2::io::memory& file, const qcow2::header& h, std::uint64_t cluster, unsigned value) {
    std::span<std::byte> bytes = file.bytes();
    std::uint64_t block = 0; // refcount table entry 0: the block covering the first clusters
    for (std::size_t i = 0; i < 8; ++i)
        block = (block << 8) | static_cast<std::uint64_t>(bytes[h.refcount_table_offset + i]);
    const std::size_t at = static_cast<std::size_t>(block + 2 * cluster);
    bytes[at] = static_cast<std::byte>(value >> 8);
    bytes[at + 1] = static_cast<std::byte>(value & 0xFF);
}

} // namespace

int main() {
    // 1. A healthy image: three data clusters, then a discard that frees the middle one.
    qcow2::create_options opts;
    opts.size = 16 << 20;
    auto created = image::create(qcow2::io::memory{}, opts);
    if (!created) return fail("create", created.error());
    image img = std::move(*created).release();
    const std::vector<std::byte> data(3 * 65536, std::byte{0x77});
    if (auto r = img.write(0, data); !r) return fail("write", r.error());
    if (auto r = img.discard(65536, 65536); !r) return fail("discard", r.error());
    if (auto r = img.close(); !r) return fail("close", r.error());
    const qcow2::header h = img.header();

    // Each problem is reported in QEMU's words as check() finds it.
    qcow2::check_options opts_check;
    opts_check.on_problem = [](std::string_view msg) {
        std::printf("  %.*s\n", static_cast<int>(msg.size()), msg.data());
    };
    auto clean = qcow2::check(img, opts_check);
    if (!clean) return fail("check", clean.error());
    print_report("healthy", *clean);

    // 2. The damage, behind the library's back. The clusters are: 0 header, 1 refcount table,
    //    2 refcount block, 3 L1 table, 4 L2 table, 5 and 7 data, 6 freed by the discard.
    auto damaged = img.backend().clone();
    if (!damaged) return fail("clone", damaged.error());
    poke_refcount(*damaged, h, 6, 1); // a freed cluster still counted: a leak
    poke_refcount(*damaged, h, 7, 0); // a cluster in use counted as free: a corruption
    std::printf("refcount of cluster 6 set to 1, of cluster 7 set to 0\n");

    // 3. Check only: nothing is written (the image may even be opened read-only).
    auto ro = image::open(std::move(*damaged));
    if (!ro) return fail("open", ro.error());
    std::printf("check:\n");
    auto found = qcow2::check(*ro, opts_check);
    if (!found) return fail("check", found.error());
    print_report("found", *found);

    // 4. Repair. It needs a writable image; open_options::repair is QEMU's check mode: it
    //    opens an image even when its dirty or corrupt bit is set, for check() to fix it.
    auto file = ro->backend().clone();
    if (!file) return fail("clone", file.error());
    qcow2::open_options rw;
    rw.writable = true;
    rw.repair = true;
    auto fixable = image::open(std::move(*file), rw);
    if (!fixable) return fail("open for repair", fixable.error());
    opts_check.repair = qcow2::check_repair::all;
    std::printf("check with check_repair::all:\n");
    auto fixed = qcow2::check(*fixable, opts_check);
    if (!fixed) return fail("repair", fixed.error());
    // A referenced cluster with refcount 0 means the refcount structure cannot be trusted, so
    // the repair writes a new one (as QEMU's rebuild_refcount_structure does) and frees the old
    // table and block. As with qemu-img check -r, the counts are from a second check.
    print_report("repaired", *fixed);

    // 5. Check once more, without repairing, and read the data: nothing was lost.
    opts_check.repair = qcow2::check_repair::none;
    auto after = qcow2::check(*fixable, opts_check);
    if (!after) return fail("check", after.error());
    print_report("checked again", *after);
    std::vector<std::byte> back(data.size());
    if (auto r = fixable->read(0, back); !r) return fail("read", r.error());
    std::printf("guest bytes 0 and 131072: 0x%02x 0x%02x\n", static_cast<unsigned>(back[0]),
                static_cast<unsigned>(back[131072]));
    return after->exit_code();
}
