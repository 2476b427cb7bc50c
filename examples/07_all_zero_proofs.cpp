// SPDX-License-Identifier: MIT
// Tutorial 7: uses the all-zero proof types: zeroed<> from create, known_zeroes, a write that
// consumes the proof, trust_zeroes and make_empty.
//
// A new image reads as zero everywhere; a program copying a disk onto it may then skip the
// source's zero regions. Getting that wrong silently leaves stale data, so the library makes
// the knowledge a type: only create, make_empty, verify_zeroes and trust_zeroes hand out a
// zeroed<Image>, and every call that changes the image takes the proof away.
#include <qcow2/qcow2.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace {

using image = qcow2::memory_image;

int fail(const char* what, const qcow2::error& e) {
    std::fprintf(stderr, "%s: %s\n", what, e.what().c_str());
    return 1;
}

// Copies `src` onto a destination that is known to read as zero, writing only the clusters
// that are not all zero: the proof is what makes skipping the others correct. Taking a
// zeroed<> by value means no caller can pass an image that might hold old data.
qcow2::changed<image> copy_onto_zeroes(qcow2::zeroed<image> dst, std::span<const std::byte> src) {
    const std::size_t cs = static_cast<std::size_t>(dst->cluster_size());
    std::size_t written = 0;
    std::optional<image> plain; // after the first write the proof is gone: keep the plain image
    qcow2::result<void> status;
    for (std::size_t at = 0; at < src.size(); at += cs) {
        const auto chunk = src.subspan(at, std::min(cs, src.size() - at));
        if (std::all_of(chunk.begin(), chunk.end(), [](std::byte b) { return b == std::byte{0}; })) continue;
        if (!plain) {
            auto c = std::move(dst).write(at, chunk); // consumes the proof: `dst` must not be used again
            plain.emplace(std::move(c.image));
            status = std::move(c.status);
        } else {
            status = plain->write(at, chunk);
        }
        if (!status) break;
        ++written;
    }
    std::printf("copy: %zu of %zu clusters written, the rest skipped\n", written, (src.size() + cs - 1) / cs);
    if (!plain) return {std::move(dst).release(), {}};
    return {std::move(*plain), std::move(status)};
}

} // namespace

int main() {
    // 1. create() returns the image wrapped in its proof. known_zeroes() answers for the
    //    image and its whole backing chain from the header bits alone: O(1) here, however
    //    large the disk or its preallocation.
    qcow2::create_options opts;
    opts.size = 8 << 20;
    auto created = image::create(qcow2::io::memory{}, opts);
    if (!created) return fail("create", created.error());
    qcow2::zeroed<image> z = std::move(*created);
    std::printf("after create: known_zeroes %s\n", qcow2::known_zeroes(*z) ? "yes" : "no");

    // A proof allows reads and const access. It does not allow z.write(...): that line would
    // not compile, because the proof would outlive the write (tests/compile_fail/ shows it).
    std::vector<std::byte> sector(512);
    if (auto r = z.read(0, sector); !r) return fail("read", r.error());

    // 2. A source disk with data in two clusters; copy it, consuming the proof.
    std::vector<std::byte> src(1 << 20);
    std::fill_n(src.begin() + 70000, 100, std::byte{0x11});
    std::fill_n(src.begin() + 600000, 100, std::byte{0x22});
    auto copied = copy_onto_zeroes(std::move(z), src);
    if (!copied.status) return fail("copy", copied.status.error());
    image img = std::move(copied.image);
    std::printf("after the copy: known_zeroes %s, all-zero bit %s\n", qcow2::known_zeroes(img) ? "yes" : "no",
                img.has<qcow2::features::all_zero>() ? "set" : "clear");

    // 3. trust_zeroes() makes a proof from the image's own bit, and so refuses now.
    std::printf("trust_zeroes: %s\n", qcow2::trust_zeroes(img) ? "a proof" : "no proof (the bit is clear)");

    // 4. make_empty() drops every cluster (what `qemu-img commit` does to the top image) and
    //    sets the bit again once that is durable, returning a new proof.
    auto emptied = qcow2::make_empty(img); // on success, `img` has moved into the proof
    if (!emptied) return fail("make_empty", emptied.error());
    std::printf("after make_empty: known_zeroes %s\n", qcow2::known_zeroes(**emptied) ? "yes" : "no");
    image again = std::move(*emptied).release(); // give up the proof: a plain image again
    if (auto r = again.close(); !r) return fail("close", r.error());

    // 5. The bit is in the file: a later open can trust it, in O(1), without reading the disk.
    auto bytes = again.backend().clone();
    if (!bytes) return fail("clone", bytes.error());
    qcow2::open_options rw;
    rw.writable = true;
    auto reopened = image::open(std::move(*bytes), rw);
    if (!reopened) return fail("open", reopened.error());
    std::optional<qcow2::zeroed<image>> trusted = qcow2::trust_zeroes(*reopened);
    std::printf("reopened: trust_zeroes %s\n", trusted ? "gives a proof" : "refuses");

    // verify_zeroes() is the slow way, for images whose bit is clear: it reads every data
    // cluster. It finds the first non-zero byte of the copied disk.
    auto fresh = image::create(qcow2::io::memory{}, opts);
    if (!fresh) return fail("create", fresh.error());
    image dirty = std::move(*fresh).release();
    if (auto r = dirty.write(600000, std::span(src).subspan(600000, 100)); !r) return fail("write", r.error());
    auto verified = qcow2::verify_zeroes(dirty);
    std::printf("verify_zeroes: %s\n", verified ? "a proof" : verified.error().message().c_str());
    return trusted && !verified ? 0 : 1;
}
