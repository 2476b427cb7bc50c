// SPDX-License-Identifier: MIT
// `qcow2::stream_image` and `basic_stream_writer` (ops/stream.hpp): an image written front to
// back into a vector opens with `basic_image<io::memory>`, reads back equal to its source,
// checks clean (no corruption, no leak) and is laid out where the layout says; the same call
// twice gives the same bytes. Over versions 2 and 3, cluster sizes from 512 bytes to 2 MiB,
// every refcount width, extended L2 entries, zlib and zstd, clusters that do not shrink,
// a last partial cluster, a size that is not whole sectors, disks with no data (the all-zero
// bit), several refcount blocks and L1 clusters, compressed clusters filled around plain
// ones; caller-measured lengths, a source that changes between the passes, failing sinks and
// readers, refused options, and the memory used. Against qemu-img through the CLI:
// tests/interop_stream.cpp.
#include "qcow2/ops/stream.hpp"

#include "qcow2/all_zero.hpp"
#include "qcow2/io/memory.hpp"
#include "qcow2/ops/check.hpp"

#include "support/counting_allocator.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

using qcow2::errc;

namespace {

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB;

using bytes = std::vector<std::byte>;

/// Deterministic pseudo-random bytes.
struct lcg {
    std::uint64_t s;
    std::uint8_t next() {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<std::uint8_t>(s >> 56);
    }
};

/// What a guest cluster of a test source holds.
enum class fill { zero, text, random, sparse };

/// A guest disk of `size` bytes whose cluster `i` (of `cs` bytes) is filled as `pattern(i)` says.
template <class Pattern>
bytes make_disk(std::uint64_t size, std::uint64_t cs, Pattern&& pattern, std::uint64_t seed = 1) {
    bytes d(static_cast<std::size_t>(size));
    lcg r{seed};
    for (std::uint64_t c = 0; c * cs < size; ++c) {
        const std::size_t at = static_cast<std::size_t>(c * cs),
                          n = static_cast<std::size_t>(std::min(cs, size - c * cs));
        switch (pattern(c)) {
        case fill::zero: break;
        case fill::text: // compresses well
            for (std::size_t i = 0; i < n; ++i)
                d[at + i] = static_cast<std::byte>("the quick brown fox "[(i + c) % 20]);
            break;
        case fill::random: // does not shrink
            for (std::size_t i = 0; i < n; ++i) d[at + i] = static_cast<std::byte>(r.next());
            break;
        case fill::sparse: // a few bytes: tiny streams
            d[at + n / 2] = static_cast<std::byte>(1 + c % 250);
            break;
        }
    }
    return d;
}

/// The data ranges of `d`, by a zero scan of whole clusters.
std::vector<qcow2::guest_range> data_ranges(const bytes& d, std::uint64_t cs) {
    std::vector<qcow2::guest_range> out;
    for (std::uint64_t at = 0; at < d.size(); at += cs) {
        const std::uint64_t n = std::min<std::uint64_t>(cs, d.size() - at);
        const auto* p = d.data() + at;
        if (std::all_of(p, p + n, [](std::byte b) { return b == std::byte{0}; })) continue;
        if (!out.empty() && out.back().offset + out.back().length == at) out.back().length += n;
        else out.push_back({at, n});
    }
    return out;
}

/// Reads from `d`, counting the calls and bytes, never past its end.
struct vector_reader {
    const bytes* d;
    std::uint64_t* calls = nullptr;
    qcow2::result<void> operator()(std::uint64_t off, std::span<std::byte> out) const {
        REQUIRE(off + out.size() <= d->size());
        std::memcpy(out.data(), d->data() + off, out.size());
        if (calls) ++*calls;
        return {};
    }
};

/// Appends to a vector.
struct vector_sink {
    bytes* out;
    qcow2::result<void> operator()(std::span<const std::byte> b) const {
        out->insert(out->end(), b.begin(), b.end());
        return {};
    }
};

static_assert(qcow2::stream_reader<vector_reader>);
static_assert(qcow2::stream_sink<vector_sink>);
static_assert(!qcow2::stream_sink<vector_reader>);

struct streamed {
    bytes file;
    qcow2::stream_layout layout;
};

streamed must_stream(const qcow2::create_options& o, const bytes& disk, bool compress) {
    streamed s;
    const auto ranges = data_ranges(disk, o.cluster_size);
    auto l = qcow2::stream_image(o, disk.size(), ranges, compress, vector_reader{&disk}, vector_sink{&s.file});
    INFO((l ? std::string() : l.error().what()));
    REQUIRE(l);
    s.layout = *l;
    return s;
}

/// Opens `file`, reads it back equal to `disk`, and checks it clean; returns the check report.
qcow2::check_report must_verify(const bytes& file, const bytes& disk) {
    auto img = qcow2::basic_image<qcow2::io::memory>::open(qcow2::io::memory(bytes(file)));
    INFO((img ? std::string() : img.error().what()));
    REQUIRE(img);
    REQUIRE(img->size() >= disk.size());
    REQUIRE(img->size() < disk.size() + 512);
    bytes back(disk.size());
    auto r = img->read(0, back);
    INFO((r ? std::string() : r.error().what()));
    REQUIRE(r);
    CHECK(back == disk);
    auto rep = qcow2::check(*img);
    INFO((rep ? std::string() : rep.error().what()));
    REQUIRE(rep);
    CHECK(rep->corruptions == 0);
    CHECK(rep->leaks == 0);
    CHECK(rep->check_errors == 0);
    CHECK(rep->image_end_offset == file.size());
    return *rep;
}

qcow2::create_options options(std::uint64_t cs, unsigned refcount_bits = 16, unsigned version = 3,
                              bool extended = false, qcow2::compression ct = qcow2::compression::zlib) {
    qcow2::create_options o;
    o.cluster_size = cs;
    o.refcount_bits = refcount_bits;
    o.version = version;
    o.extended_l2 = extended;
    o.compression_type = ct;
    return o;
}

fill mixed(std::uint64_t c) {
    switch (c % 7) {
    case 0:
    case 3: return fill::text;
    case 1: return fill::zero;
    case 2: return fill::random;
    case 4: return fill::sparse;
    case 5: return c % 2 ? fill::random : fill::text;
    default: return fill::zero;
    }
}

} // namespace

TEST_CASE("stream: images read back as their source and check clean", "[stream]") {
    struct row {
        std::uint64_t cs;
        unsigned refcount_bits, version;
        bool extended, compress;
        qcow2::compression ct;
    };
    const row rows[] = {
        {65536, 16, 3, false, false, qcow2::compression::zlib},
        {65536, 16, 3, false, true, qcow2::compression::zlib},
        {65536, 16, 3, false, true, qcow2::compression::zstd},
        {65536, 16, 2, false, false, qcow2::compression::zlib},
        {65536, 16, 2, false, true, qcow2::compression::zlib},
        {512, 16, 3, false, false, qcow2::compression::zlib},
        {512, 16, 3, false, true, qcow2::compression::zlib},
        {512, 1, 3, false, true, qcow2::compression::zstd},
        {4096, 1, 3, false, false, qcow2::compression::zlib},
        {4096, 2, 3, false, true, qcow2::compression::zlib},
        {4096, 4, 3, false, true, qcow2::compression::zstd},
        {16384, 8, 3, true, false, qcow2::compression::zlib},
        {16384, 32, 3, true, true, qcow2::compression::zstd},
        {65536, 64, 3, true, true, qcow2::compression::zlib},
        {65536, 1, 3, false, true, qcow2::compression::zlib},
        {2 * MiB, 16, 3, false, true, qcow2::compression::zstd},
        {2 * MiB, 16, 3, true, false, qcow2::compression::zlib},
    };
    for (const row& r : rows) {
        const auto o = options(r.cs, r.refcount_bits, r.version, r.extended, r.ct);
        // Enough clusters for several L2 tables and refcount blocks at small cluster sizes;
        // the last cluster partial (a size that is not a whole cluster).
        const std::uint64_t clusters = r.cs >= MiB ? 5 : r.cs >= 65536 ? 40 : 600;
        const std::uint64_t size = clusters * r.cs - (r.cs >= 4096 ? 1536 : 0);
        const bytes disk = make_disk(size, r.cs, mixed, r.cs + r.refcount_bits);
        INFO("cluster " << r.cs << ", refcount bits " << r.refcount_bits << ", v" << r.version
                        << (r.extended ? ", extended L2" : "")
                        << (r.compress ? (r.ct == qcow2::compression::zstd ? ", zstd" : ", zlib") : ""));
        const streamed s = must_stream(o, disk, r.compress);
        REQUIRE(s.file.size() == s.layout.file_size);
        REQUIRE(s.file.size() % r.cs == 0);
        const auto rep = must_verify(s.file, disk);
        CHECK(rep.allocated_clusters == s.layout.guest_data_clusters);
        CHECK(rep.compressed_clusters == s.layout.compressed_clusters);
        if (r.compress) {
            CHECK(s.layout.compressed_clusters > 0);
            CHECK(s.layout.compressed_clusters < s.layout.guest_data_clusters); // the random clusters stay plain
        } else {
            CHECK(s.layout.compressed_clusters == 0);
            CHECK(s.layout.data_clusters == s.layout.guest_data_clusters);
        }
        // The same call again: the same bytes.
        CHECK(must_stream(o, disk, r.compress).file == s.file);
    }
}

TEST_CASE("stream: a source whose size is not whole sectors is never read past its end", "[stream]") {
    // The virtual size is rounded up to 512 bytes; the reader (which REQUIREs it) only gets
    // the source's own bytes, and the rest of the last cluster reads as zeroes.
    for (const std::uint64_t cs : {std::uint64_t{512}, std::uint64_t{65536}}) {
        for (const bool compress : {false, true}) {
            const bytes disk = make_disk(3 * cs + 100, cs, [](std::uint64_t) { return fill::text; });
            const streamed s = must_stream(options(cs), disk, compress);
            CHECK(s.layout.guest_data_clusters == 4);
            const auto h = qcow2::decode_header(s.file);
            REQUIRE(h);
            CHECK(h->size == (3 * cs + 100 + 511) / 512 * 512);
            must_verify(s.file, disk);
        }
    }
}

TEST_CASE("stream: the layout is the one announced, in the order of the file", "[stream]") {
    const std::uint64_t cs = 512;
    auto o = options(cs, 64); // 64 entries per refcount block: many blocks, two refcount table clusters
    o.lazy_refcounts = true;
    const std::uint64_t size = 6 * MiB;
    const bytes disk = make_disk(size, cs, [](std::uint64_t c) { return c % 3 ? fill::text : fill::zero; });
    const streamed s = must_stream(o, disk, false);
    const auto& l = s.layout;
    CHECK(l.refcount_table_offset == cs);
    CHECK(l.refcount_table_clusters >= 2);
    CHECK(l.refcount_table_clusters == (l.refcount_blocks + 63) / 64);
    CHECK(l.refcount_blocks_offset == l.refcount_table_offset + l.refcount_table_clusters * cs);
    CHECK(l.l1_table_offset == l.refcount_blocks_offset + l.refcount_blocks * cs);
    CHECK(l.l1_clusters == 6 * MiB / (64 * cs) * 8 / cs); // 64 entries per L2 table
    CHECK(l.l2_tables_offset == l.l1_table_offset + l.l1_clusters * cs);
    CHECK(l.l2_tables == 6 * MiB / (64 * cs));
    CHECK(l.data_offset == l.l2_tables_offset + l.l2_tables * cs);
    CHECK(l.file_size == l.data_offset + l.data_clusters * cs);
    CHECK(l.refcount_blocks == (l.file_size / cs + 63) / 64);
    CHECK(l.guest_data_clusters == size / cs - (size / cs + 2) / 3);

    auto h = qcow2::decode_header(s.file);
    REQUIRE(h);
    CHECK(h->refcount_table_offset == l.refcount_table_offset);
    CHECK(h->refcount_table_clusters == l.refcount_table_clusters);
    CHECK(h->l1_table_offset == l.l1_table_offset);
    CHECK(h->l1_size == 6 * MiB / (64 * cs));
    CHECK(h->refcount_order == 6);
    CHECK((h->compatible_features & qcow2::features::lazy_refcounts::mask) != 0);
    CHECK((h->incompatible_features & qcow2::features::dirty::mask) == 0); // the refcounts are exact
    CHECK(h->autoclear_features == 0);                                     // data: no all-zero bit
    // 512-byte clusters: only the all-zero bit is named, as create names it.
    CHECK(h->feature_names().size() == 1);
    must_verify(s.file, disk);

    // The data area holds the data clusters in guest order.
    std::uint64_t host = l.data_offset;
    for (std::uint64_t at = 0; at < size; at += cs) {
        const auto* p = disk.data() + at;
        if (std::all_of(p, p + cs, [](std::byte b) { return b == std::byte{0}; })) continue;
        REQUIRE(std::memcmp(s.file.data() + host, p, cs) == 0);
        host += cs;
    }
    CHECK(host == l.file_size);
}

TEST_CASE("stream: a disk with no data carries the all-zero bit, named", "[stream]") {
    for (const std::uint64_t cs : {std::uint64_t{512}, std::uint64_t{65536}}) {
        for (const std::uint64_t size : {std::uint64_t{0}, 3 * MiB + 512}) {
            const bytes disk(static_cast<std::size_t>(size));
            const streamed s = must_stream(options(cs), disk, true);
            CHECK(s.layout.guest_data_clusters == 0);
            CHECK(s.layout.l2_tables == 0);
            CHECK(s.layout.data_clusters == 0);
            auto img = qcow2::basic_image<qcow2::io::memory>::open(qcow2::io::memory(bytes(s.file)));
            REQUIRE(img);
            CHECK(img->has<qcow2::features::all_zero>()); // set and named in the table
            CHECK(qcow2::trust_zeroes(*img).has_value());
            auto h = qcow2::decode_header(s.file);
            REQUIRE(h);
            CHECK(h->feature_names().size() == (cs == 512 ? 1u : qcow2::known_features::size));
            must_verify(s.file, disk);
        }
    }
    // Version 2 has no autoclear bits.
    const bytes disk(static_cast<std::size_t>(MiB));
    const streamed s = must_stream(options(65536, 16, 2), disk, false);
    auto h = qcow2::decode_header(s.file);
    REQUIRE(h);
    CHECK(h->version == 2);
    CHECK(h->autoclear_features == 0);
    CHECK(h->extensions.empty());
    must_verify(s.file, disk);
}

TEST_CASE("stream: with 1-bit refcounts no host cluster takes two compressed streams", "[stream]") {
    // Clusters of a few bytes compress to tiny streams that would share host clusters.
    const std::uint64_t cs = 4096;
    const bytes disk = make_disk(200 * cs, cs, [](std::uint64_t) { return fill::sparse; });
    for (const unsigned bits : {1u, 2u, 16u}) {
        const streamed s = must_stream(options(cs, bits), disk, true);
        CHECK(s.layout.compressed_clusters == 200);
        if (bits == 1) CHECK(s.layout.data_clusters >= 200);
        if (bits == 2) CHECK(s.layout.data_clusters >= 200 / 3);
        if (bits == 16) CHECK(s.layout.data_clusters < 10);
        must_verify(s.file, disk);
    }
}

TEST_CASE("stream: plain clusters between compressed ones leave no compressed cluster part empty", "[stream]") {
    // As QEMU's allocator does, streams after a plain cluster fill the compressed cluster
    // before it: the data area is the plain clusters and the streams, packed, plus at most
    // a cluster. A run of plain clusters longer than the writer keeps (2 MiB) closes the
    // open cluster instead (its rest stays zero).
    const std::uint64_t cs = 4096;
    struct row {
        std::uint64_t clusters, plain_run;
    };
    for (const row r : {row{400, 1}, row{400, 3}, row{2000, 700}}) {
        const auto pattern = [&](std::uint64_t c) {
            return c % (r.plain_run + 2) < r.plain_run ? fill::random : fill::text;
        };
        const bytes disk = make_disk(r.clusters * cs, cs, pattern, r.plain_run);
        qcow2::serial_compressor c(qcow2::compression::zlib);
        std::uint64_t plain = 0, stream_bytes = 0, runs_long = 0;
        for (std::uint64_t g = 0; g < r.clusters; ++g) {
            REQUIRE(c.compress(std::span(disk).subspan(static_cast<std::size_t>(g * cs), static_cast<std::size_t>(cs)),
                               static_cast<std::size_t>(cs)));
            if (c.stream(0).empty()) ++plain;
            else stream_bytes += c.stream(0).size();
            if (pattern(g) == fill::random && (g + 1 == r.clusters || pattern(g + 1) != fill::random) &&
                r.plain_run * cs > 2 * MiB)
                ++runs_long;
        }
        INFO(r.clusters << " clusters, plain runs of " << r.plain_run);
        const streamed s = must_stream(options(cs), disk, true);
        CHECK(s.layout.compressed_clusters == r.clusters - plain);
        CHECK(s.layout.data_clusters >= plain + (stream_bytes + cs - 1) / cs);
        CHECK(s.layout.data_clusters <= plain + (stream_bytes + cs - 1) / cs + 1 + runs_long);
        must_verify(s.file, disk);
    }
}

TEST_CASE("stream: lengths the caller measured give the same bytes as measure", "[stream]") {
    const std::uint64_t cs = 65536;
    const auto o = options(cs, 16, 3, false, qcow2::compression::zstd);
    const bytes disk = make_disk(30 * cs, cs, mixed);
    const streamed reference = must_stream(o, disk, true);

    auto w = qcow2::stream_writer::make(o, disk.size(), true);
    REQUIRE(w);
    qcow2::serial_compressor c(qcow2::compression::zstd);
    for (std::uint64_t g = 0; g < 30; ++g) {
        const auto cluster = std::span(disk).subspan(static_cast<std::size_t>(g * cs), static_cast<std::size_t>(cs));
        if (std::all_of(cluster.begin(), cluster.end(), [](std::byte b) { return b == std::byte{0}; })) continue;
        REQUIRE(c.compress(cluster, static_cast<std::size_t>(cs)));
        REQUIRE(w->add_cluster(g, c.stream(0).size()));
    }
    auto l = w->finish();
    REQUIRE(l);
    CHECK(*l == reference.layout);
    bytes file;
    std::uint64_t reads = 0;
    REQUIRE(w->write(vector_reader{&disk, &reads}, vector_sink{&file}, c));
    CHECK(file == reference.file);
    CHECK(reads > 0);
    // write again: the same bytes.
    bytes again;
    REQUIRE(w->write(vector_reader{&disk}, vector_sink{&again}));
    CHECK(again == file);
}

TEST_CASE("stream: a source that changes between the passes is an error, not a corrupt image", "[stream]") {
    const std::uint64_t cs = 65536;
    bytes disk = make_disk(8 * cs, cs, [](std::uint64_t) { return fill::text; });
    auto w = qcow2::stream_writer::make(options(cs), disk.size(), true);
    REQUIRE(w);
    REQUIRE(w->add_clusters(0, 8));
    qcow2::serial_compressor c(qcow2::compression::zlib);
    REQUIRE(w->measure(vector_reader{&disk}, c));
    REQUIRE(w->finish());
    disk[5 * cs + 7] = std::byte{0xEE}; // the stream of cluster 5 no longer has its length
    bytes file;
    auto r = w->write(vector_reader{&disk}, vector_sink{&file}, c);
    REQUIRE_FALSE(r);
    CHECK(r.error().is(errc::invalid_argument));
    CHECK(r.error().message().find("offset 327680") != std::string::npos);
    // Adding after finish is refused.
    CHECK(w->add_clusters(0, 1).error().is(errc::invalid_argument));
}

TEST_CASE("stream: errors of the reader and the sink come back unchanged", "[stream]") {
    const std::uint64_t cs = 65536;
    const bytes disk = make_disk(20 * cs, cs, mixed);
    const auto ranges = data_ranges(disk, cs);
    for (const bool compress : {false, true}) {
        std::uint64_t sunk = 0;
        auto failing_sink = [&](std::span<const std::byte> b) -> qcow2::result<void> {
            if (sunk + b.size() > 5 * cs) return qcow2::error{errc::io_error, "pipe closed"};
            sunk += b.size();
            return {};
        };
        auto r = qcow2::stream_image(options(cs), disk.size(), ranges, compress, vector_reader{&disk}, failing_sink);
        REQUIRE_FALSE(r);
        CHECK(r.error().message() == "pipe closed");
        int reads = 0;
        auto failing_read = [&](std::uint64_t, std::span<std::byte>) -> qcow2::result<void> {
            if (++reads > 1) return qcow2::error{errc::short_read, "source went away"};
            return {};
        };
        bytes file;
        r = qcow2::stream_image(options(cs), disk.size(), ranges, compress, failing_read, vector_sink{&file});
        REQUIRE_FALSE(r);
        CHECK(r.error().message() == "source went away");
    }
}

TEST_CASE("stream: what a stream cannot hold is refused", "[stream]") {
    const bytes disk(static_cast<std::size_t>(MiB));
    bytes file;
    const auto attempt = [&](const qcow2::create_options& o) {
        return qcow2::stream_image(o, disk.size(), {}, false, vector_reader{&disk}, vector_sink{&file});
    };
    auto o = options(65536);
    o.backing_file = "base.qcow2";
    CHECK(attempt(o).error().is(errc::not_supported));
    o = options(65536);
    o.data_file = "data.raw";
    CHECK(attempt(o).error().is(errc::not_supported));
    for (auto p : {qcow2::preallocation::metadata, qcow2::preallocation::falloc, qcow2::preallocation::full}) {
        o = options(65536);
        o.prealloc = p;
        CHECK(attempt(o).error().is(errc::not_supported));
    }
    CHECK(attempt(options(1000)).error().is(errc::invalid_argument));
    CHECK(attempt(options(65536, 3)).error().is(errc::invalid_argument));
    CHECK(attempt(options(65536, 8, 2)).error().is(errc::invalid_argument));
    CHECK(attempt(options(8192, 16, 3, true)).error().is(errc::invalid_argument));
    CHECK(attempt(options(65536, 16, 2, false, qcow2::compression::zstd)).error().is(errc::invalid_argument));
    CHECK(file.empty());

    // Clusters out of order or past the disk.
    auto w = qcow2::stream_writer::make(options(65536), 10 * 65536, false);
    REQUIRE(w);
    REQUIRE(w->add_clusters(2, 3));
    CHECK(w->add_clusters(4, 1).error().is(errc::invalid_argument));
    CHECK(w->add_clusters(9, 2).error().is(errc::invalid_argument));
    CHECK(w->add_cluster(7, 100).error().is(errc::invalid_argument)); // a length without compression
    const qcow2::guest_range backwards[] = {{3 * 65536, 10}, {65536, 10}};
    CHECK(qcow2::stream_image(options(65536), disk.size(), backwards, false, vector_reader{&disk}, vector_sink{&file})
              .error()
              .is(errc::invalid_argument));
    // Compressed clusters whose length was never measured.
    auto wc = qcow2::stream_writer::make(options(65536), 10 * 65536, true);
    REQUIRE(wc);
    REQUIRE(wc->add_clusters(0, 2));
    CHECK(wc->finish().error().is(errc::invalid_argument));
}

TEST_CASE("stream: memory stays bounded by the batches", "[stream]") {
    // A 24 MiB disk, compressed: the writer keeps lengths and runs, never the data.
    const std::uint64_t cs = 65536;
    const bytes disk = make_disk(24 * MiB, cs, mixed);
    const auto ranges = data_ranges(disk, cs);
    qcow2::test::allocation_stats stats;
    std::uint64_t sunk = 0;
    auto counting_sink = [&](std::span<const std::byte> b) -> qcow2::result<void> {
        sunk += b.size();
        return {};
    };
    auto l = qcow2::stream_image(options(cs), disk.size(), ranges, true, vector_reader{&disk}, counting_sink,
                                 qcow2::test::counting_allocator<std::byte>(stats));
    REQUIRE(l);
    CHECK(sunk == l->file_size);
    CHECK(stats.outstanding() == 0);
    // The 1 MiB batch, the streams of one batch, the data window (1 MiB to flush, 2 MiB of
    // plain clusters behind an open compressed one, two clusters), the lengths and the runs.
    CHECK(stats.peak_bytes < 6 * MiB);
    CHECK(stats.peak_bytes >= 2 * MiB); // (the batches do go through the allocator)
}
