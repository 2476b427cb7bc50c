// SPDX-License-Identifier: MIT
// Tutorial 6: reads through a backing chain opened by a resolver that serves in-memory files
// by name, and shows the default resolver (deny_files) refusing to open the backing file.
//
// An overlay image stores only the clusters written to it; every other cluster reads from its
// backing file. The library never opens a file by itself: when an image names a backing file,
// it asks the resolver the caller passed, which decides what the name may reach.
#include <qcow2/qcow2.hpp>

#include <cstdint>
#include <cstdio>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace {

// A resolver: a callable taking a file_request and returning result<Backend>. This one hands
// out copies of files kept in memory under their names, and logs what it was asked for.
struct memory_resolver {
    std::map<std::string, qcow2::io::memory, std::less<>> files;

    qcow2::result<qcow2::io::memory> operator()(const qcow2::file_request& q) {
        std::printf("  resolver: %s '%.*s' asked by the image at depth %zu\n",
                    q.role == qcow2::file_role::backing ? "backing file" : "data file", static_cast<int>(q.name.size()),
                    q.name.data(), q.depth);
        const auto it = files.find(q.name);
        if (it == files.end())
            return qcow2::error{qcow2::errc::backing_file_refused, "no file named '" + std::string(q.name) + "'"};
        return it->second.clone(); // the image owns what it gets: give it a copy
    }
};

int fail(const char* what, const qcow2::error& e) {
    std::fprintf(stderr, "%s: %s\n", what, e.what().c_str());
    return 1;
}

qcow2::result<void> write_text(qcow2::memory_image& img, std::uint64_t offset, std::string_view text) {
    return img.write(offset, std::as_bytes(std::span<const char>(text.data(), text.size())));
}

std::string read_text(qcow2::memory_image& img, std::uint64_t offset, std::size_t n) {
    std::vector<std::byte> b(n);
    if (auto r = img.read(offset, b); !r) return "(" + r.error().what() + ")";
    std::string s;
    for (std::byte x : b) s += x == std::byte{0} ? '.' : static_cast<char>(x);
    return s;
}

} // namespace

int main() {
    constexpr std::uint64_t MiB = 1 << 20;
    memory_resolver resolver;

    // 1. The base image, with data at 0 and at 1 MiB. close() leaves a complete file.
    qcow2::create_options base_opts;
    base_opts.size = 16 * MiB;
    auto base = qcow2::memory_image::create(qcow2::io::memory{}, base_opts);
    if (!base) return fail("creating the base", base.error());
    qcow2::memory_image b = std::move(*base).release();
    if (auto r = write_text(b, 0, "base at 0"); !r) return fail("write", r.error());
    if (auto r = write_text(b, 1 * MiB, "base at 1M"); !r) return fail("write", r.error());
    if (auto r = b.close(); !r) return fail("close", r.error());
    resolver.files.emplace("base.qcow2", std::move(b.backend()));

    // 2. The overlay names its backing file and its format; create() opens it through the resolver.
    qcow2::create_options top_opts;
    top_opts.size = 16 * MiB;
    top_opts.backing_file = "base.qcow2";
    top_opts.backing_format = "qcow2";
    std::printf("creating the overlay:\n");
    auto top = qcow2::memory_image::create(qcow2::io::memory{}, top_opts, resolver);
    if (!top) return fail("creating the overlay", top.error());
    qcow2::memory_image img = std::move(*top).release();
    if (auto r = write_text(img, 1 * MiB, "top at 1M"); !r) return fail("write", r.error());

    // 3. Reads: what the overlay holds wins; everything else comes from the base; the base's
    //    unwritten clusters read as zero. The overlay's first write filled its new cluster
    //    around the 9 new bytes with what the base held there (copy on write): the 10th byte.
    std::printf("guest 0:      \"%s\"  (from the base)\n", read_text(img, 0, 10).c_str());
    std::printf("guest 1 MiB:  \"%s\"  (the overlay's 9 bytes, then the base's)\n",
                read_text(img, 1 * MiB, 10).c_str());
    std::printf("guest 2 MiB:  \"%s\"  (neither: zeroes)\n", read_text(img, 2 * MiB, 10).c_str());
    auto m = img.map_range(0, 1);
    if (!m) return fail("map_range", m.error());
    std::printf("in the overlay, guest 0 is %s; backing file '%s', %llu bytes\n",
                m->state == qcow2::cluster_state::unallocated ? "unallocated (defers to the base)" : "allocated",
                img.header().backing_file.c_str(), static_cast<unsigned long long>(img.backing_size()));
    if (auto r = img.close(); !r) return fail("close", r.error());

    // 4. The same overlay opened again, through the resolver...
    auto copy = img.backend().clone();
    if (!copy) return fail("clone", copy.error());
    std::printf("opening the overlay with the resolver:\n");
    auto again = qcow2::memory_image::open(std::move(*copy), {}, resolver);
    if (!again) return fail("open", again.error());
    std::printf("  guest 0 reads \"%s\"\n", read_text(*again, 0, 9).c_str());

    // 5. ...and without one. The default resolver, deny_files, refuses every file, so a file
    //    name inside an untrusted image can never make the program open something it did not mean to.
    auto copy2 = img.backend().clone();
    if (!copy2) return fail("clone", copy2.error());
    auto refused = qcow2::memory_image::open(std::move(*copy2));
    if (refused) return fail("open without a resolver", qcow2::error{qcow2::errc::invalid_argument, "opened?!"});
    std::printf("without a resolver: %s\n", refused.error().what().c_str());
    std::printf("  is backing_file_refused: %s\n",
                refused.error().is(qcow2::errc::backing_file_refused) ? "yes" : "no");

    // Reading only the metadata needs no other file (what `qcow2 info` does).
    auto copy3 = img.backend().clone();
    if (!copy3) return fail("clone", copy3.error());
    qcow2::open_options meta;
    meta.metadata_only = true;
    auto info = qcow2::memory_image::open(std::move(*copy3), meta);
    if (!info) return fail("metadata-only open", info.error());
    std::printf("metadata only: opened, backing file '%s' (format %s), not opened\n",
                info->header().backing_file.c_str(), info->header().backing_format().value_or("?").c_str());
    return 0;
}
