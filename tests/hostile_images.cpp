// SPDX-License-Identifier: MIT
// A hostile corpus: images built here (no checked-in binaries) whose metadata lies, loops,
// overlaps, overflows or names files it must not reach. Each one is opened with a counting
// allocator, mapped, read in full and checked, and must end in a clear error (the code and
// the words this test names) or read exactly what it holds; under the asan-ubsan preset
// that includes no sanitizer report.
//
// Memory bound: every image here is a file of at most 64 KiB. Opening, mapping, reading
// and checking one allocates at most `peak_bound` (4 MiB, the default 1 MiB L2 cache
// included) through the image's allocator, whatever sizes its metadata claims: no table
// is allocated before it is known to fit in the file. A backing chain takes at most
// `per_layer_bound` (64 KiB) more per layer: a read-only layer caches no more L2 tables
// than its L1 table has entries, and max_chain_depth (128) stops a chain that loops or
// goes 1,000 deep. (The header, extension and snapshot-table decoders and `check`'s
// per-cluster counters use the standard allocator; their sizes are bounded by cluster 0,
// the snapshot table limits and the file size.)
#include "qcow2/image.hpp"

#include "qcow2/backing.hpp"
#include "qcow2/format/l2_entry.hpp"
#include "qcow2/io/memory.hpp"
#include "qcow2/io/posix_file.hpp"
#include "qcow2/ops/check.hpp"
#include "qcow2/ops/map.hpp"

#include "support/counting_allocator.hpp"
#include "support/image_builder.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#if QCOW2_HAS_ZLIB
#include <zlib.h>
#endif
#if QCOW2_HAS_ZSTD
#include <zstd.h>
#endif

#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace {

using qcow2::errc;
using qcow2::test::allocation_stats;
using qcow2::test::counting_allocator;
using qcow2::test::image_builder;
using qcow2::test::poke16;
using qcow2::test::poke32;
using qcow2::test::poke64;
using bytes = std::vector<std::byte>;
template <class Backend>
using counted_image = qcow2::basic_image<Backend, qcow2::maintained_features, counting_allocator<std::byte>>;

constexpr std::uint64_t copied = qcow2::l2_bits::copied;
constexpr std::size_t peak_bound = std::size_t{4} << 20;
/// A backing layer opened read-only caches at most its L1 size in L2 tables (32 KiB here).
constexpr std::size_t per_layer_bound = std::size_t{64} << 10;
constexpr std::uint64_t read_limit = std::uint64_t{16} << 20;

/// A valid image with 4 KiB clusters and a 16 MiB disk (8 L1 entries): clusters 0-3 as
/// image_builder lays them out, cluster 4 the L2 table of L1 index 0, clusters 5-7 data
/// (0xAB, 0xCD, 0xEF) for guest clusters 0-2, every cluster counted once.
struct base_image {
    image_builder b;
    bytes f;
    static constexpr std::uint64_t cs = 4096;
    static constexpr std::byte fill[3] = {std::byte{0xAB}, std::byte{0xCD}, std::byte{0xEF}};

    explicit base_image(std::function<void(image_builder&)> setup = {}) : b(12) {
        b.h.size = std::uint64_t{16} << 20;
        b.h.l1_size = static_cast<std::uint32_t>(b.h.min_l1_entries());
        if (setup) setup(b);
        f = b.bytes();
        const std::uint64_t used = f.size() / cs;
        f.resize(static_cast<std::size_t>(std::max<std::uint64_t>(used, 8) * cs));
        l1(0, 4 * cs | copied);
        for (std::uint64_t i = 0; i < 3; ++i) {
            l2(i, (5 + i) * cs | copied);
            std::fill_n(f.begin() + static_cast<std::ptrdiff_t>((5 + i) * cs), cs, fill[i]);
        }
        for (std::uint64_t i = 4; i < 8; ++i) refcount(i, 1);
    }
    std::uint64_t l1_at() const { return b.h.l1_table_offset; }
    void l1(std::uint64_t i, std::uint64_t e) { poke64(f, static_cast<std::size_t>(l1_at() + 8 * i), e); }
    void l2(std::uint64_t i, std::uint64_t e) { poke64(f, static_cast<std::size_t>(4 * cs + 8 * i), e); }
    void refcount(std::uint64_t cluster, std::uint16_t n) { poke16(f, static_cast<std::size_t>(2 * cs + 2 * cluster), n); }
    void at(std::uint64_t off, std::span<const std::byte> data) {
        if (f.size() < off + data.size()) f.resize(static_cast<std::size_t>(off + data.size()));
        std::copy(data.begin(), data.end(), f.begin() + static_cast<std::ptrdiff_t>(off));
    }
    /// The guest disk the undamaged image holds (its first 16 MiB).
    static bytes disk() {
        bytes d(static_cast<std::size_t>(read_limit), std::byte{0});
        for (std::size_t i = 0; i < 3; ++i) std::fill_n(d.begin() + static_cast<std::ptrdiff_t>(i * cs), cs, fill[i]);
        return d;
    }
};

/// What opening, mapping, reading and checking one image gave.
struct outcome {
    std::optional<qcow2::error> open_error;
    std::optional<qcow2::error> map_error;
    std::optional<qcow2::error> read_error;
    std::uint64_t read_error_at = 0;
    bytes disk; ///< what read (up to the first failing 64 KiB)
    std::optional<qcow2::error> check_error;
    std::optional<qcow2::check_report> report;
    std::size_t peak = 0;
};

template <class Backend, class Resolver>
outcome run_image(Backend file, Resolver&& resolve, const qcow2::open_options& oo = {}, std::size_t bound = peak_bound) {
    allocation_stats stats;
    outcome o;
    {
        auto img = counted_image<Backend>::open(std::move(file), oo, resolve, counting_allocator<std::byte>(stats));
        if (!img) {
            o.open_error = img.error();
        } else {
            const std::uint64_t limit = std::min(img->size(), read_limit);
            if (auto m = qcow2::map_extents(*img, 0, limit, [](const qcow2::map_extent&) {}); !m) o.map_error = m.error();
            bytes chunk(65536);
            for (std::uint64_t off = 0; off < limit; off += chunk.size()) {
                const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk.size(), limit - off));
                if (auto r = img->read(off, std::span(chunk).first(n)); !r) {
                    o.read_error = r.error();
                    o.read_error_at = off;
                    break;
                }
                o.disk.insert(o.disk.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(n));
            }
            auto rep = qcow2::check(*img);
            if (rep) o.report = *rep;
            else o.check_error = rep.error();
        }
    }
    o.peak = stats.peak_bytes;
    if (std::getenv("QCOW2_HOSTILE_VERBOSE")) { // what each image gave, for reading the corpus
        const auto text = [](const std::optional<qcow2::error>& e) { return e ? e->what() : std::string("ok"); };
        WARN("open: " << text(o.open_error) << "\nmap: " << text(o.map_error) << "\nread: " << text(o.read_error)
                      << "\ncheck: " << (o.report ? std::to_string(o.report->corruptions) + " corruptions, " +
                                                         std::to_string(o.report->leaks) + " leaks, " +
                                                         std::to_string(o.report->check_errors) + " check errors"
                                                   : text(o.check_error))
                      << "\npeak: " << o.peak << " bytes");
    }
    CHECK(stats.current_bytes == 0); // the image gave back all it took
    CHECK(stats.peak_bytes <= bound);
    // Every error is clear: a code and a message.
    for (const auto* e : {&o.open_error, &o.map_error, &o.read_error, &o.check_error})
        if (*e) {
            INFO("error: " << (*e)->what());
            CHECK_FALSE((*e)->message().empty());
        }
    return o;
}

outcome run_memory(bytes f, const qcow2::open_options& oo = {}) {
    return run_image(qcow2::io::memory(std::move(f)), qcow2::deny_files{}, oo);
}

void expect_error(const std::optional<qcow2::error>& e, errc code, const std::string& text) {
    REQUIRE(e.has_value());
    INFO("error: " << e->what());
    CHECK(e->is(code));
    CHECK_THAT(e->message(), Catch::Matchers::Contains(text));
}

/// The image is refused at open with `code` and a message holding `text`.
void refused(const outcome& o, errc code, const std::string& text) { expect_error(o.open_error, code, text); }

/// It opens, and reading fails with `code` and `text` (mapping too, at the same place).
void read_fails(const outcome& o, errc code, const std::string& text) {
    INFO("open: " << (o.open_error ? o.open_error->what() : std::string("ok")));
    REQUIRE_FALSE(o.open_error);
    expect_error(o.read_error, code, text);
}

/// It opens and reads exactly `disk` (its first 16 MiB).
void reads(const outcome& o, const bytes& disk) {
    INFO("open: " << (o.open_error ? o.open_error->what() : std::string("ok")));
    REQUIRE_FALSE(o.open_error);
    INFO("read: " << (o.read_error ? o.read_error->what() : std::string("ok")));
    REQUIRE_FALSE(o.read_error);
    INFO("map: " << (o.map_error ? o.map_error->what() : std::string("ok")));
    CHECK_FALSE(o.map_error); // what reads maps
    REQUIRE(o.disk.size() == disk.size());
    CHECK(o.disk == disk);
}

std::string check_text(const outcome& o) {
    if (o.check_error) return "check failed: " + o.check_error->what();
    if (!o.report) return "no check";
    return "check: " + std::to_string(o.report->corruptions) + " corruptions, " + std::to_string(o.report->leaks) + " leaks, " +
           std::to_string(o.report->check_errors) + " check errors";
}

/// `check` completed and found at least one corruption.
void check_finds_corruption(const outcome& o) {
    INFO(check_text(o));
    REQUIRE(o.report);
    CHECK(o.report->corruptions > 0);
}

/// `check` found the image clean.
void check_clean(const outcome& o) {
    INFO(check_text(o));
    REQUIRE(o.report);
    CHECK(o.report->corruptions == 0);
    CHECK(o.report->leaks == 0);
    CHECK(o.report->check_errors == 0);
}

/// The guest disk with cluster `guest` replaced by host cluster `host` of `f`.
bytes disk_with(const bytes& f, std::uint64_t guest, std::uint64_t host) {
    bytes d = base_image::disk();
    std::copy_n(f.begin() + static_cast<std::ptrdiff_t>(host * base_image::cs), base_image::cs,
                d.begin() + static_cast<std::ptrdiff_t>(guest * base_image::cs));
    return d;
}

#if QCOW2_HAS_ZLIB
/// `n` zero bytes as a raw deflate stream (what qcow2's zlib clusters hold).
bytes deflate_zeroes(std::size_t n) {
    z_stream s{};
    REQUIRE(deflateInit2(&s, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) == Z_OK);
    bytes in(n), out(n / 100 + 1024);
    s.next_in = reinterpret_cast<Bytef*>(in.data());
    s.avail_in = static_cast<uInt>(in.size());
    s.next_out = reinterpret_cast<Bytef*>(out.data());
    s.avail_out = static_cast<uInt>(out.size());
    REQUIRE(deflate(&s, Z_FINISH) == Z_STREAM_END);
    out.resize(s.total_out);
    deflateEnd(&s);
    return out;
}
#endif

#if QCOW2_HAS_ZSTD
bytes zstd_zeroes(std::size_t n) {
    bytes in(n), out(ZSTD_compressBound(n));
    const std::size_t r = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 19);
    REQUIRE_FALSE(ZSTD_isError(r));
    out.resize(r);
    return out;
}
#endif

/// One snapshot entry of `name_size`/`extra` lengths as stored (lengths may lie).
bytes snapshot_entry_bytes(std::uint64_t l1_offset, std::uint32_t l1_size, std::uint16_t id_size, std::uint16_t name_size,
                           std::uint32_t extra_size, std::size_t payload) {
    bytes e(40 + payload, std::byte{'x'});
    poke64(e, 0, l1_offset);
    poke32(e, 8, l1_size);
    poke16(e, 12, id_size);
    poke16(e, 14, name_size);
    for (std::size_t i = 16; i < 40; ++i) e[i] = std::byte{0};
    poke32(e, 36, extra_size);
    return e;
}

/// A base image whose snapshot table (at cluster 8, `count` entries) is `table`.
bytes with_snapshot_table(std::uint32_t count, const bytes& table, std::uint64_t table_offset = 8 * base_image::cs) {
    base_image t;
    t.at(8 * base_image::cs, table);
    t.f.resize(static_cast<std::size_t>(std::max<std::uint64_t>(t.f.size(), 9 * base_image::cs)));
    poke32(t.f, qcow2::test::field::nb_snapshots, count);
    poke64(t.f, qcow2::test::field::snapshots_offset, table_offset);
    return t.f;
}

/// Writes `f` to `path`.
void write_file(const std::string& path, const bytes& f) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(f.data()), static_cast<std::streamsize>(f.size()));
    REQUIRE(out.good());
}

/// A base image naming `backing` as its backing file (raw format).
bytes with_backing(const std::string& backing) {
    return base_image([&](image_builder& b) { b.backing(backing); }).f;
}

/// Opens `dir/top.qcow2` (holding `top`) through a posix_resolver with default options.
outcome run_posix(const std::string& dir, const bytes& top, qcow2::posix_resolver_options ro = {}) {
    const std::string path = dir + "/top.qcow2";
    write_file(path, top);
    auto f = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_only);
    REQUIRE(f);
    return run_image(std::move(*f), qcow2::posix_resolver(path, ro));
}

/// A memory resolver: names to images, counting what it was asked.
struct memory_resolver {
    std::map<std::string, bytes, std::less<>>* files;
    std::function<bytes(std::string_view)> make; // for names not in `files`
    std::size_t* asked;
    qcow2::result<qcow2::io::memory> operator()(const qcow2::file_request& q) const {
        ++*asked;
        if (auto it = files->find(q.name); it != files->end()) return qcow2::io::memory(it->second);
        if (make) return qcow2::io::memory(make(q.name));
        return qcow2::error{errc::backing_file_refused, "no such test file"};
    }
};

struct hostile_case {
    const char* name;
    std::function<void()> run;
};

std::vector<hostile_case> corpus() {
    using B = base_image;
    constexpr std::uint64_t cs = B::cs;
    std::vector<hostile_case> c;
    auto add = [&](const char* name, std::function<void()> f) { c.push_back({name, std::move(f)}); };

    add("the undamaged base image reads and checks clean", [] {
        B t;
        auto o = run_memory(t.f);
        reads(o, B::disk());
        check_clean(o);
    });

    // --- huge tables ---
    add("L1 table of 4 Mi entries (32 MiB) in a 32 KiB file", [] {
        B t;
        poke32(t.f, qcow2::test::field::l1_size, 4u << 20);
        refused(run_memory(t.f), errc::short_read, "L1 table");
    });
    add("L1 table over the 32 MiB limit", [] {
        B t;
        poke32(t.f, qcow2::test::field::l1_size, (4u << 20) + 1);
        refused(run_memory(t.f), errc::l1_too_large, "L1");
    });
    add("refcount table of 8 MiB in a 32 KiB file", [] {
        B t;
        poke32(t.f, qcow2::test::field::refcount_table_clusters, 2048);
        auto o = run_memory(t.f);
        reads(o, B::disk()); // guest reads do not need refcounts
        // As in QEMU, the table past the end of the file reads as zeroes (no more refcount blocks),
        // and its 2,040 clusters past the end of the file are referenced without a refcount.
        check_finds_corruption(o);
    });
    add("refcount table over the 8 MiB limit", [] {
        B t;
        poke32(t.f, qcow2::test::field::refcount_table_clusters, 2049);
        refused(run_memory(t.f), errc::refcount_table_too_large, "refcount table");
    });
    add("refcount block past the end of the file", [] {
        B t;
        poke64(t.f, static_cast<std::size_t>(cs), 4096 * cs);
        auto o = run_memory(t.f);
        reads(o, B::disk()); // and maps, as qemu-img map does
        check_finds_corruption(o);
    });
    add("virtual size of 2^62 bytes with a matching L1 size", [] {
        B t;
        poke64(t.f, qcow2::test::field::size, std::uint64_t{1} << 62);
        poke32(t.f, qcow2::test::field::l1_size, 0x7FFFFFFF);
        refused(run_memory(t.f), errc::l1_too_large, "L1");
    });

    // --- cyclic and self-overlapping metadata ---
    add("L1 table on the header", [] {
        B t;
        poke64(t.f, qcow2::test::field::l1_table_offset, 0);
        auto o = run_memory(t.f);
        // L1[0] is the magic and version: an L2 table at 0x4649fb00000000, past the end of the file.
        read_fails(o, errc::short_read, "L2 table at host offset 0x4649fb00000000 (L1 index 0)");
        check_finds_corruption(o);
    });
    add("L1 table on the refcount table", [] {
        B t;
        poke64(t.f, qcow2::test::field::l1_table_offset, cs);
        auto o = run_memory(t.f);
        // L1[0] is the refcount table's entry: the refcount block in cluster 2, read as an L2 table
        // of entries 0x0001000100010001: zero clusters (bit 0) with a host cluster. The disk reads zero.
        reads(o, bytes(static_cast<std::size_t>(read_limit), std::byte{0}));
        check_finds_corruption(o);
    });
    add("L2 table that is the L1 table", [] {
        B t;
        t.l1(0, 3 * cs | copied);
        // L1[0] = 3 * cs | copied read as an L2 entry: guest cluster 0 reads cluster 3, the L1 table itself.
        auto o = run_memory(t.f);
        bytes d(static_cast<std::size_t>(read_limit), std::byte{0});
        std::copy_n(t.f.begin() + static_cast<std::ptrdiff_t>(3 * cs), cs, d.begin());
        reads(o, d);
        check_finds_corruption(o);
    });
    add("L2 entry pointing at the header", [] {
        B t;
        t.l2(1, copied); // host offset 0, the header: unallocated despite the COPIED flag, as in QEMU
        t.l2(2, copied);
        auto o = run_memory(t.f);
        bytes d = B::disk();
        std::fill_n(d.begin() + static_cast<std::ptrdiff_t>(cs), 2 * cs, std::byte{0});
        reads(o, d);
        INFO(check_text(o));
        REQUIRE(o.report);
        CHECK(o.report->leaks == 2); // clusters 6 and 7 are no longer referenced
    });
    add("L2 entry pointing at the refcount table", [] {
        B t;
        t.l2(1, 1 * cs | copied);
        auto o = run_memory(t.f);
        reads(o, disk_with(t.f, 1, 1));
        check_finds_corruption(o);
    });
    add("L2 entry pointing at its own L2 table", [] {
        B t;
        t.l2(1, 4 * cs | copied);
        auto o = run_memory(t.f);
        reads(o, disk_with(t.f, 1, 4));
        check_finds_corruption(o);
    });
    add("two L2 tables pointing at each other", [] {
        B t;
        t.l1(1, 6 * cs | copied); // cluster 6 as the second L2 table
        std::fill_n(t.f.begin() + static_cast<std::ptrdiff_t>(6 * cs), cs, std::byte{0});
        poke64(t.f, static_cast<std::size_t>(6 * cs), 4 * cs | copied); // its entry 0: the first L2 table
        t.l2(1, 6 * cs | copied);                                        // the first's entry 1: the second
        auto o = run_memory(t.f);
        bytes d = disk_with(t.f, 1, 6);
        std::copy_n(t.f.begin() + static_cast<std::ptrdiff_t>(4 * cs), cs, d.begin() + static_cast<std::ptrdiff_t>(512 * cs));
        reads(o, d);
        check_finds_corruption(o);
    });
    add("two L1 entries sharing one L2 table", [] {
        B t;
        t.l1(1, 4 * cs | copied);
        auto o = run_memory(t.f);
        bytes d = B::disk();
        std::copy_n(d.begin(), 3 * cs, d.begin() + static_cast<std::ptrdiff_t>(512 * cs));
        reads(o, d);
        check_finds_corruption(o);
    });
    add("every L1 entry sharing one L2 table", [] {
        B t;
        for (std::uint64_t i = 0; i < 8; ++i) t.l1(i, 4 * cs | copied);
        auto o = run_memory(t.f);
        bytes d = B::disk();
        for (std::uint64_t i = 1; i < 8; ++i) std::copy_n(d.begin(), 3 * cs, d.begin() + static_cast<std::ptrdiff_t>(i * 512 * cs));
        reads(o, d);
        check_finds_corruption(o);
    });
    add("two L2 entries sharing one data cluster", [] {
        B t;
        t.l2(1, 5 * cs | copied);
        auto o = run_memory(t.f);
        reads(o, disk_with(t.f, 1, 5));
        check_finds_corruption(o);
    });
    add("L2 table past the end of the file", [] {
        B t;
        t.l1(2, 100000 * cs | copied);
        auto o = run_memory(t.f);
        read_fails(o, errc::short_read, "L2 table");
    });
    add("L2 table at the largest offset (2^56 - cluster)", [] {
        B t;
        t.l1(1, ((std::uint64_t{1} << 56) - cs) | copied);
        auto o = run_memory(t.f);
        read_fails(o, errc::short_read, "L2 table");
    });
    add("L1 entry with reserved bits", [] {
        B t;
        t.l1(0, 4 * cs | copied | 0x100);
        auto o = run_memory(t.f);
        // As in QEMU, reads take the offset bits only; check reports the entry.
        reads(o, B::disk());
        check_finds_corruption(o);
    });
    add("L2 entry with reserved bits", [] {
        B t;
        t.l2(1, 6 * cs | copied | (std::uint64_t{1} << 57));
        auto o = run_memory(t.f);
        reads(o, disk_with(t.f, 1, 6)); // as in QEMU, reads take the offset bits only
        check_finds_corruption(o);      // cluster 6 is referenced twice
    });
    add("data cluster past the end of the file", [] {
        B t;
        t.l2(1, 100000 * cs | copied);
        auto o = run_memory(t.f);
        // As QEMU's file reads do, bytes past the end of the file read as zeroes.
        bytes d = B::disk();
        std::fill_n(d.begin() + static_cast<std::ptrdiff_t>(cs), cs, std::byte{0});
        reads(o, d);
        check_finds_corruption(o);
    });

    // --- compressed clusters ---
    add("compressed descriptor running past the end of the file", [] {
        B t;
        t.l2(1, qcow2::encode_compressed(7 * cs + 100, 4000, 12));
        t.f.resize(static_cast<std::size_t>(8 * cs - 1000));
        // The part in the file (0xEF bytes) is no deflate stream.
        read_fails(run_memory(t.f), errc::invalid_compressed_data, "compressed cluster at host offset 0x7064");
    });
    add("compressed descriptor at the largest host offset", [] {
        B t;
        constexpr unsigned x = 70 - 12;
        t.l2(1, ((std::uint64_t{1} << x) - 1) | qcow2::l2_bits::compressed | (std::uint64_t{15} << x));
        read_fails(run_memory(t.f), errc::short_read, "compressed cluster");
    });
    add("compressed descriptor with the largest sector count", [] {
        B t;
        constexpr unsigned x = 70 - 12;
        // A valid stream in the last cluster of the file, with a descriptor of 16 sectors (8 KiB,
        // the most a 4 KiB cluster's descriptor can say): half of it past the end of the file.
        const bytes z = deflate_zeroes(cs);
        t.at(7 * cs, z);
        std::fill(t.f.begin() + static_cast<std::ptrdiff_t>(7 * cs + z.size()), t.f.end(), std::byte{0x77});
        t.l2(1, (7 * cs) | qcow2::l2_bits::compressed | (std::uint64_t{15} << x));
        t.l2(2, 0);
        auto o = run_memory(t.f);
        bytes d = B::disk();
        std::fill_n(d.begin() + static_cast<std::ptrdiff_t>(cs), 2 * cs, std::byte{0});
        reads(o, d);
    });
    add("compressed descriptor with the COPIED flag", [] {
        B t;
        const bytes z = deflate_zeroes(cs);
        t.at(6 * cs, z);
        t.l2(1, qcow2::encode_compressed(6 * cs, z.size(), 12) | copied);
        t.l2(2, 0);
        auto o = run_memory(t.f);
        bytes d = B::disk();
        std::fill_n(d.begin() + static_cast<std::ptrdiff_t>(cs), 2 * cs, std::byte{0});
        reads(o, d);                // reads ignore the flag, as QEMU's do
        check_finds_corruption(o);  // QEMU's check: "copied flag must never be set for compressed clusters"
    });
    add("compressed descriptor over the L2 table holding it", [] {
        B t;
        t.l2(1, qcow2::encode_compressed(4 * cs, 2048, 12));
        auto o = run_memory(t.f);
        read_fails(o, errc::invalid_compressed_data, "compressed cluster");
    });
#if QCOW2_HAS_ZLIB
    add("deflate bomb: 1 MiB of zeroes in a compressed 4 KiB cluster", [] {
        B t;
        const bytes z = deflate_zeroes(1 << 20);
        REQUIRE(z.size() < 2 * cs);
        t.at(8 * cs, z);
        t.f.resize(static_cast<std::size_t>(10 * cs));
        t.l2(1, qcow2::encode_compressed(8 * cs, z.size(), 12));
        auto o = run_memory(t.f);
        // As QEMU does, the cluster is the first 4 KiB the stream inflates to; the rest is never made.
        bytes d = B::disk();
        std::fill_n(d.begin() + static_cast<std::ptrdiff_t>(cs), cs, std::byte{0});
        reads(o, d);
    });
#endif
#if QCOW2_HAS_ZSTD
    add("zstd bomb: a frame of 1 MiB of zeroes in a compressed 4 KiB cluster", [] {
        B t([](image_builder& b) {
            b.h.compression_type = 1;
            b.h.incompatible_features |= qcow2::features::compression_type::mask;
        });
        const bytes z = zstd_zeroes(1 << 20);
        REQUIRE(z.size() < 2 * cs);
        t.at(8 * cs, z);
        t.f.resize(static_cast<std::size_t>(10 * cs));
        t.l2(1, qcow2::encode_compressed(8 * cs, z.size(), 12));
        auto o = run_memory(t.f);
        // As QEMU's zstd clusters: a frame that goes on past the cluster is an error.
        read_fails(o, errc::invalid_compressed_data, "the frame goes on past the end of the cluster");
    });
#endif

    // --- extensions with lying lengths ---
    auto lying_extension = [](std::uint32_t type, std::uint32_t length) {
        B t([&](image_builder& b) { b.extension(type, bytes(8, std::byte{0x41})); });
        const std::size_t at = qcow2::test::find_extension_offset(t.f, type);
        REQUIRE(at != 0);
        poke32(t.f, at + 4, length);
        return t.f;
    };
    add("unknown extension of length 2^32 - 1", [&] {
        refused(run_memory(lying_extension(0x12345678, 0xFFFFFFFF)), errc::extension_too_large, "extension");
    });
    add("unknown extension running 8 bytes past cluster 0", [&] {
        refused(run_memory(lying_extension(0x12345678, 4096 - 112 - 8 + 8)), errc::extension_too_large, "extension");
    });
    add("backing format extension of length 2^31", [&] {
        refused(run_memory(lying_extension(qcow2::extension_type::backing_format, 0x80000000u)), errc::extension_too_large,
                "extension");
    });
    add("feature name table of 47 bytes", [] {
        B t([](image_builder& b) { b.extension(qcow2::extension_type::feature_names, bytes(47, std::byte{0})); });
        auto o = run_memory(t.f);
        reads(o, B::disk()); // as QEMU, a torn last entry is ignored: the table only names bits
        check_clean(o);
    });
    add("bitmaps extension claiming 2^40 bytes of directory", [] {
        B t([](image_builder& b) {
            b.h.autoclear_features |= qcow2::features::bitmaps::mask;
            b.h.set_extension(qcow2::extension_type::bitmaps,
                              qcow2::encode_bitmaps_extension({1, 0, std::uint64_t{1} << 40, 8 * cs}));
        });
        refused(run_memory(t.f), errc::invalid_bitmap_directory, "bitmap directory of 1099511627776 bytes at 0x8000 is too large");
    });
    add("bitmaps extension claiming 2^31 bitmaps", [] {
        B t([](image_builder& b) {
            b.h.autoclear_features |= qcow2::features::bitmaps::mask;
            b.h.set_extension(qcow2::extension_type::bitmaps, qcow2::encode_bitmaps_extension({0x80000000u, 0, 4096, 8 * cs}));
        });
        refused(run_memory(t.f), errc::invalid_bitmap_directory, "bitmap directory of 4096 bytes at 0x8000");
    });
    add("bitmap directory past the end of the file", [] {
        B t([](image_builder& b) {
            b.h.autoclear_features |= qcow2::features::bitmaps::mask;
            b.h.set_extension(qcow2::extension_type::bitmaps, qcow2::encode_bitmaps_extension({1, 0, 4096, 10000 * cs}));
        });
        refused(run_memory(t.f), errc::invalid_bitmap_directory, "bitmap directory of 4096 bytes at 0x2710000 is too large or past");
    });
    add("encryption extension claiming a LUKS header past the end of the file", [] {
        B t([](image_builder& b) {
            bytes e(16);
            poke64(e, 0, 1000 * cs);
            poke64(e, 8, 2 * cs);
            b.h.crypt_method = 2;
            b.h.set_extension(qcow2::extension_type::encryption, e);
        });
        auto o = run_memory(t.f);
        // The image opens (its metadata is plain), its guest data is refused, never returned as ciphertext.
        read_fails(o, errc::unsupported_encryption, "decryption is not built");
    });
    add("backing name length running past cluster 0", [] {
        B t([](image_builder& b) { b.backing("base.raw"); });
        poke32(t.f, qcow2::test::field::backing_file_size, 1000);
        poke64(t.f, qcow2::test::field::backing_file_offset, cs - 500);
        refused(run_memory(t.f), errc::backing_name_too_long, "leaves cluster 0");
    });
    add("backing name offset of 2^63", [] {
        B t([](image_builder& b) { b.backing("base.raw"); });
        poke64(t.f, qcow2::test::field::backing_file_offset, std::uint64_t{1} << 63);
        refused(run_memory(t.f), errc::backing_name_too_long, "outside cluster 0");
    });

    // --- snapshot tables that overflow ---
    add("65536 snapshots in a table of one entry", [] {
        auto f = with_snapshot_table(65536, snapshot_entry_bytes(9 * cs, 8, 1, 1, 0, 8));
        refused(run_memory(f), errc::invalid_snapshot_table, "snapshot");
    });
    add("snapshot table at offset 2^63", [] {
        auto f = with_snapshot_table(1, snapshot_entry_bytes(9 * cs, 8, 1, 1, 0, 8), std::uint64_t{1} << 63);
        refused(run_memory(f), errc::offset_too_large, "snapshot table at 0x8000000000000000");
    });
    add("snapshot entry with 2^32 - 1 bytes of extra data", [] {
        auto f = with_snapshot_table(1, snapshot_entry_bytes(9 * cs, 8, 1, 1, 0xFFFFFFFF, 8));
        refused(run_memory(f), errc::invalid_snapshot_table, "extra data");
    });
    add("snapshot entry whose name runs 64 KiB past the table", [] {
        auto f = with_snapshot_table(1, snapshot_entry_bytes(9 * cs, 8, 1, 0xFFFF, 0, 8));
        refused(run_memory(f), errc::invalid_snapshot_table, "snapshot");
    });
    add("snapshot whose L1 table is over 32 MiB", [] {
        auto f = with_snapshot_table(1, snapshot_entry_bytes(9 * cs, 0x7FFFFFFF, 1, 1, 0, 8));
        refused(run_memory(f), errc::invalid_snapshot_table, "L1");
    });
    add("snapshot whose L1 table is the active L2 table", [] {
        auto f = with_snapshot_table(1, snapshot_entry_bytes(4 * cs, 8, 1, 1, 0, 8));
        auto o = run_memory(f);
        reads(o, B::disk());
        // The L2 table's entries read as L1 entries: check reports them.
        check_finds_corruption(o);
    });
    add("snapshot whose L1 table is past the end of the file", [] {
        auto f = with_snapshot_table(1, snapshot_entry_bytes(100000 * cs, 8, 1, 1, 0, 8));
        auto o = run_memory(f); // check used to memset a null pointer here (the table has no entry in the file)
        reads(o, B::disk());
        check_finds_corruption(o);
    });

    // --- backing chains that loop or go deep (in memory) ---
    add("backing chain that loops (a -> b -> a)", [] {
        std::map<std::string, bytes, std::less<>> files{{"a", with_backing("b")}, {"b", with_backing("a")}};
        std::size_t asked = 0;
        auto o = run_image(qcow2::io::memory(files["a"]), memory_resolver{&files, {}, &asked}, {}, 129 * per_layer_bound);
        refused(o, errc::invalid_argument, "deeper than 128");
        CHECK(asked < 130);
    });
    add("backing chain 1,000 images deep", [] {
        std::map<std::string, bytes, std::less<>> files;
        std::size_t asked = 0;
        auto make = [](std::string_view name) {
            const int n = std::stoi(std::string(name.substr(5)));
            return n < 1000 ? with_backing("layer" + std::to_string(n + 1)) : base_image().f;
        };
        auto o = run_image(qcow2::io::memory(with_backing("layer1")), memory_resolver{&files, make, &asked}, {},
                           129 * per_layer_bound);
        refused(o, errc::invalid_argument, "deeper than 128");
        CHECK(asked < 130);
    });

    // --- backing and data file names a resolver must refuse (files in a temporary directory) ---
    auto posix_refused = [](std::string name, std::string text, bool data_file = false) {
        qcow2_test::temp_dir dir("qcow2-hostile-");
        write_file(dir / "base.raw", bytes(cs));
        bytes top = data_file ? base_image([&](image_builder& b) {
                                    b.h.incompatible_features |= qcow2::features::external_data_file::mask;
                                    b.h.set_extension(qcow2::extension_type::data_file, qcow2::test::bytes_of(name));
                                }).f
                              : with_backing(name);
        refused(run_posix(dir.path(), top), errc::backing_file_refused, text);
    };
    add("backing name: an absolute path", [&] { posix_refused("/etc/passwd", "absolute names are not allowed"); });
    add("backing name: an absolute path into the image's own directory", [&] {
        qcow2_test::temp_dir dir("qcow2-hostile-");
        write_file(dir / "base.raw", bytes(cs));
        refused(run_posix(dir.path(), with_backing(dir / "base.raw")), errc::backing_file_refused, "absolute");
    });
    add("backing name: ../ escape", [&] { posix_refused("../../../../../../etc/passwd", "outside the image's directory"); });
    add("backing name: ../ escape that comes back in", [&] {
        qcow2_test::temp_dir dir("qcow2-hostile-");
        write_file(dir / "base.raw", bytes(cs));
        const std::string self = dir.path().substr(dir.path().rfind('/') + 1);
        auto o = run_posix(dir.path(), with_backing("../" + self + "/base.raw"));
        REQUIRE_FALSE(o.open_error); // it resolves inside the directory: allowed
        CHECK(o.disk.size() == read_limit);
    });
    add("backing name: json:", [&] {
        posix_refused(R"(json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}})", "json:");
    });
    add("backing name: nbd://", [&] { posix_refused("nbd://127.0.0.1:10809/export", "protocol"); });
    add("backing name: nbd:host:port", [&] { posix_refused("nbd:127.0.0.1:10809", "protocol"); });
    add("backing name: https://", [&] { posix_refused("https://example.com/disk.img", "protocol"); });
    add("backing name: file: protocol", [&] { posix_refused("file:/etc/passwd", "protocol"); });
    add("backing name: a symbolic link out of the directory", [&] {
        qcow2_test::temp_dir dir("qcow2-hostile-");
        qcow2_test::temp_dir other("qcow2-hostile-other-");
        write_file(other / "secret.raw", bytes(cs, std::byte{0x5E}));
        REQUIRE(::symlink((other / "secret.raw").c_str(), (dir / "link.raw").c_str()) == 0);
        refused(run_posix(dir.path(), with_backing("link.raw")), errc::backing_file_refused, "outside the image's directory");
    });
    add("backing name: a directory symbolic link out of the directory", [&] {
        qcow2_test::temp_dir dir("qcow2-hostile-");
        qcow2_test::temp_dir other("qcow2-hostile-other-");
        write_file(other / "secret.raw", bytes(cs, std::byte{0x5E}));
        REQUIRE(::symlink(other.path().c_str(), (dir / "sub").c_str()) == 0);
        refused(run_posix(dir.path(), with_backing("sub/secret.raw")), errc::backing_file_refused,
                "outside the image's directory");
    });
    add("backing name: a NUL byte hiding a ../ escape", [&] {
        posix_refused(std::string("base.raw\0/../../../../etc/passwd", 31), "NUL");
    });
    add("backing name: the image itself", [&] {
        qcow2_test::temp_dir dir("qcow2-hostile-");
        refused(run_posix(dir.path(), with_backing("top.qcow2")), errc::backing_file_refused, "loops");
    });
    add("backing name: an absolute path, allowed, but the resolver's image path does not resolve", [&] {
        // The directory check has nothing to compare with: it must refuse, not let everything through.
        qcow2_test::temp_dir dir("qcow2-hostile-");
        write_file(dir / "top.qcow2", with_backing("/etc/passwd"));
        auto f = qcow2::io::posix_file::open(dir / "top.qcow2", qcow2::io::open_mode::read_only);
        REQUIRE(f);
        qcow2::posix_resolver_options ro;
        ro.allow_absolute = true;
        auto o = run_image(std::move(*f), qcow2::posix_resolver(dir / "gone/top.qcow2", ro));
        refused(o, errc::backing_file_refused, "cannot be resolved");
    });
    add("data file name: an absolute path", [&] { posix_refused("/etc/passwd", "absolute names are not allowed", true); });
    add("data file name: ../ escape", [&] { posix_refused("../../../../../../etc/passwd", "outside the image's directory", true); });
    add("data file name: json:", [&] { posix_refused(R"(json:{"driver":"file","filename":"/etc/passwd"})", "json:", true); });
    add("backing name refused by the default resolver", [] {
        refused(run_memory(with_backing("base.raw")), errc::backing_file_refused, "no resolver");
    });
    return c;
}

} // namespace

TEST_CASE("hostile images: each is refused clearly or reads what it holds, within the memory bound", "[hostile]") {
    const auto cases = corpus();
    CHECK(cases.size() >= 40);
    for (const auto& k : cases)
        DYNAMIC_SECTION(k.name) { k.run(); }
}
