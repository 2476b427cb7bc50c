// SPDX-License-Identifier: MIT
// Micro-benchmarks of the library's hot paths (Google Benchmark), all in memory:
//
// - the L1/L2 walker: `basic_image::map_range` and `read` over runs of data, zero and
//   unallocated clusters, and over a region where every other cluster is data (one run
//   per cluster), of an image made with `create` in a `qcow2::io::memory` file;
// - the refcount table (`basic_refcount_table`): `get` and `update` through its block
//   cache, `allocate` of single clusters;
// - the table cache (`basic_table_cache`): hits, and misses that evict (with 512-byte
//   tables, where the loader costs little, and with 64 KiB tables filled by memcpy);
// - the codecs (`codec::cluster_compressor` / `cluster_decompressor`, zlib and zstd) on
//   64 KiB clusters of text-like and random data, compressed into cluster_size - 1 bytes as
//   a qcow2 writer does (random data does not fit: that failure is what is timed).
//
// Built with QCOW2_BUILD_BENCH when Google Benchmark is installed (libbenchmark-dev):
//
//   cmake --preset release && cmake --build --preset release --target qcow2_micro_bench
//   build/release/bench/qcow2_micro_bench [--benchmark_filter=REGEX]
//
// Not part of ctest.
#include <qcow2/qcow2.hpp>

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace {

using mem_image = qcow2::basic_image<qcow2::io::memory>;
using refcount_table = qcow2::basic_refcount_table<qcow2::io::memory>;
using table_cache = qcow2::basic_table_cache<>;

constexpr std::uint64_t KiB = 1024;
constexpr std::uint64_t MiB = 1024 * KiB;
constexpr std::uint64_t cluster = 64 * KiB;

/// The iterations run so far, unsigned.
std::uint64_t iterations(const benchmark::State& state) { return static_cast<std::uint64_t>(state.iterations()); }

/// Ends the program with the library's message: a benchmark of a failing call measures nothing.
[[noreturn]] void die(const char* what, const qcow2::error& e) {
    std::fprintf(stderr, "qcow2_micro_bench: %s: %s\n", what, e.what().c_str());
    std::exit(1);
}

template <class T>
T take(qcow2::result<T> r, const char* what) {
    if (!r) die(what, r.error());
    return std::move(*r);
}

void must(qcow2::result<void> r, const char* what) {
    if (!r) die(what, r.error());
}

/// Pseudo-random bytes (xorshift64), the same for the same seed.
std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed) {
    std::vector<std::byte> out(n);
    std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (auto& b : out) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b = static_cast<std::byte>(x >> 32);
    }
    return out;
}

/// Text-like bytes: log lines with numbers and a few recurring words (compresses about 4:1 to 6:1).
std::vector<std::byte> text_bytes(std::size_t n) {
    static const char* const words[] = {"read",  "write", "cluster", "offset", "table", "refcount",
                                        "guest", "host",  "image",   "zero",   "data",  "backing"};
    std::string s;
    std::uint64_t x = 12345;
    for (unsigned line = 0; s.size() < n; ++line) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        s += "2024-06-01 12:";
        s += std::to_string(line % 60);
        s += " qcow2[";
        s += std::to_string(1000 + (x >> 60));
        s += "]: ";
        for (unsigned w = 0; w < 5; ++w) {
            s += words[(x >> (8 * w)) % 12];
            s += ' ';
        }
        s += "at ";
        s += std::to_string((x >> 20) % 1000000);
        s += '\n';
    }
    std::vector<std::byte> out(n);
    std::memcpy(out.data(), s.data(), n);
    return out;
}

// --- The L1/L2 walker ---------------------------------------------------------------------

/// The regions of the walker's image (64 KiB clusters, 256 MiB virtual):
/// [0, 32M) data; [32M, 64M) zero clusters (no host cluster); [64M, 128M) unallocated;
/// [128M, 160M) every other cluster data, the others unallocated.
struct walker_layout {
    static constexpr std::uint64_t data = 0, zero = 32 * MiB, unallocated = 64 * MiB, alternating = 128 * MiB;
    static constexpr std::uint64_t region = 32 * MiB;
    static constexpr std::uint64_t size = 256 * MiB;
};

mem_image& walker_image() {
    static std::optional<mem_image> img;
    if (!img) {
        qcow2::create_options o;
        o.size = walker_layout::size;
        auto made = take(mem_image::create(qcow2::io::memory{}, o), "create");
        mem_image m = std::move(made).release();
        const auto chunk = random_bytes(static_cast<std::size_t>(MiB), 1);
        for (std::uint64_t at = 0; at < walker_layout::region; at += MiB) must(m.write(walker_layout::data + at, chunk), "write");
        // Zero clusters: written with data first (zeroes over unallocated clusters of an
        // image without a backing file change nothing), then zeroed, freeing their host clusters.
        for (std::uint64_t at = 0; at < walker_layout::region; at += MiB) must(m.write(walker_layout::zero + at, chunk), "write");
        must(m.write_zeroes(walker_layout::zero, walker_layout::region, qcow2::zero_mode::unmap), "write_zeroes");
        const auto one = random_bytes(static_cast<std::size_t>(cluster), 2);
        for (std::uint64_t at = 0; at < walker_layout::region; at += 2 * cluster)
            must(m.write(walker_layout::alternating + at, one), "write");
        must(m.flush(), "flush");
        // Each region must map as it says, or its benchmarks would time something else.
        const std::pair<std::uint64_t, qcow2::cluster_state> expect[] = {
            {walker_layout::data, qcow2::cluster_state::data},
            {walker_layout::zero, qcow2::cluster_state::zero},
            {walker_layout::unallocated, qcow2::cluster_state::unallocated},
            {walker_layout::alternating, qcow2::cluster_state::data},
            {walker_layout::alternating + cluster, qcow2::cluster_state::unallocated}};
        for (const auto& [at, state] : expect) {
            auto r = m.map_range(at, cluster);
            if (!r) die("map_range", r.error());
            if (r->state != state) {
                std::fprintf(stderr, "qcow2_micro_bench: guest offset %llu of the walker's image maps as state %d, not %d\n",
                             static_cast<unsigned long long>(at), static_cast<int>(r->state), static_cast<int>(state));
                std::exit(1);
            }
        }
        img.emplace(std::move(m));
    }
    return *img;
}

/// map_range over one region, run after run: items are clusters walked.
void walker_map_range(benchmark::State& state, std::uint64_t start) {
    mem_image& img = walker_image();
    std::uint64_t runs = 0;
    for (auto _ : state) {
        for (std::uint64_t pos = start; pos < start + walker_layout::region;) {
            auto m = img.map_range(pos, start + walker_layout::region - pos);
            if (!m) die("map_range", m.error());
            benchmark::DoNotOptimize(m->host_offset);
            pos += m->length;
            ++runs;
        }
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(iterations(state) * (walker_layout::region / cluster)));
    state.counters["runs/iter"] = static_cast<double>(runs) / static_cast<double>(iterations(state));
}

/// read of `state.range(0)`-byte requests across one region, in order.
void walker_read(benchmark::State& state, std::uint64_t start) {
    mem_image& img = walker_image();
    const auto len = static_cast<std::uint64_t>(state.range(0));
    std::vector<std::byte> buf(static_cast<std::size_t>(len));
    std::uint64_t pos = 0;
    for (auto _ : state) {
        must(img.read(start + pos, buf), "read");
        benchmark::DoNotOptimize(buf.data());
        pos = (pos + len) % walker_layout::region;
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(iterations(state) * len));
}

BENCHMARK_CAPTURE(walker_map_range, data, walker_layout::data);
BENCHMARK_CAPTURE(walker_map_range, zero, walker_layout::zero);
BENCHMARK_CAPTURE(walker_map_range, unallocated, walker_layout::unallocated);
BENCHMARK_CAPTURE(walker_map_range, alternating, walker_layout::alternating);
BENCHMARK_CAPTURE(walker_read, data, walker_layout::data)->Arg(4096)->Arg(1 << 20);
BENCHMARK_CAPTURE(walker_read, zero, walker_layout::zero)->Arg(4096)->Arg(1 << 20);
BENCHMARK_CAPTURE(walker_read, unallocated, walker_layout::unallocated)->Arg(4096)->Arg(1 << 20);
BENCHMARK_CAPTURE(walker_read, alternating, walker_layout::alternating)->Arg(4096)->Arg(1 << 20);

// --- The refcount table -------------------------------------------------------------------

/// A file and its header: a new 4 GiB image with its first 64 MiB written (1024 data clusters).
struct refcount_file {
    qcow2::header header;
    std::vector<std::byte> bytes;
};

const refcount_file& refcount_source() {
    static std::optional<refcount_file> f;
    if (!f) {
        qcow2::create_options o;
        o.size = 4096 * MiB;
        mem_image m = take(mem_image::create(qcow2::io::memory{}, o), "create").release();
        const auto chunk = random_bytes(static_cast<std::size_t>(MiB), 3);
        for (std::uint64_t at = 0; at < 64 * MiB; at += MiB) must(m.write(at, chunk), "write");
        must(m.flush(), "flush");
        refcount_file r;
        r.header = m.header();
        r.bytes.assign(m.backend().bytes().begin(), m.backend().bytes().end());
        f.emplace(std::move(r));
    }
    return *f;
}

/// The file and its refcount table, opened afresh from `refcount_source()`.
struct refcount_fixture {
    qcow2::io::memory file;
    refcount_table table;

    static refcount_fixture open() {
        const refcount_file& src = refcount_source();
        qcow2::io::memory file(qcow2::io::memory::vector_type(src.bytes.begin(), src.bytes.end()));
        auto t = take(refcount_table::open(file, src.header), "refcount table open");
        return refcount_fixture{std::move(file), std::move(t)};
    }
};

void refcount_get(benchmark::State& state) {
    auto f = refcount_fixture::open();
    std::uint64_t c = 0;
    for (auto _ : state) {
        auto v = f.table.get(f.file, c);
        if (!v) die("get", v.error());
        benchmark::DoNotOptimize(*v);
        c = (c + 1) & 2047; // the clusters in use and some free ones past them, one block
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(refcount_get);

void refcount_update(benchmark::State& state) {
    auto f = refcount_fixture::open();
    std::uint64_t c = 8; // data clusters (the metadata starts the file)
    std::int64_t delta = 1;
    for (auto _ : state) {
        must(f.table.update(f.file, c, 1, delta), "update");
        if (++c == 1024) {
            c = 8;
            delta = -delta; // +1 over the range, then -1 back
        }
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(refcount_update);

/// Allocates single clusters; every 8192 allocations (512 MiB of host space) the table is
/// reopened from the source file, outside the timing, so that the file stays small.
void refcount_allocate(benchmark::State& state) {
    std::optional<refcount_fixture> f(refcount_fixture::open());
    std::uint64_t n = 0;
    for (auto _ : state) {
        auto run = f->table.allocate(f->file, 1);
        if (!run) die("allocate", run.error());
        benchmark::DoNotOptimize(run->first);
        if (++n % 8192 == 0) {
            state.PauseTiming();
            f.reset();
            f.emplace(refcount_fixture::open());
            state.ResumeTiming();
        }
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
}
BENCHMARK(refcount_allocate);

// --- The table cache ----------------------------------------------------------------------

/// Lookups cycling over 8 cached tables of a 16-table cache: every one a hit.
void table_cache_hit(benchmark::State& state) {
    auto cache = take(table_cache::make(16 * cluster, cluster), "table cache make");
    const auto fill = [](std::span<std::byte> out) -> qcow2::result<void> {
        std::memset(out.data(), 0, out.size());
        return {};
    };
    for (std::uint64_t k = 0; k < 8; ++k) (void)take(cache.get(k * cluster, fill), "get");
    std::uint64_t k = 0;
    for (auto _ : state) {
        auto t = cache.get(k * cluster, fill);
        if (!t) die("get", t.error());
        benchmark::DoNotOptimize(t->data());
        k = (k + 1) & 7;
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
    state.counters["misses"] = static_cast<double>(cache.statistics().misses);
}
BENCHMARK(table_cache_hit);

/// Lookups cycling over 32 tables of a 16-table cache: every one a miss that evicts the
/// least recently used table, the loader copying a table of `state.range(0)` bytes.
void table_cache_miss(benchmark::State& state) {
    const auto size = static_cast<std::size_t>(state.range(0));
    auto cache = take(table_cache::make(16 * size, size), "table cache make");
    const std::vector<std::byte> source = random_bytes(size, 4);
    const auto load = [&](std::span<std::byte> out) -> qcow2::result<void> {
        std::memcpy(out.data(), source.data(), out.size());
        return {};
    };
    std::uint64_t k = 0;
    for (auto _ : state) {
        auto t = cache.get(k * size, load);
        if (!t) die("get", t.error());
        benchmark::DoNotOptimize(t->data());
        k = (k + 1) & 31;
    }
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()));
    state.counters["hits"] = static_cast<double>(cache.statistics().hits);
}
BENCHMARK(table_cache_miss)->Arg(512)->Arg(static_cast<std::int64_t>(cluster));

// --- The codecs ---------------------------------------------------------------------------

enum class payload { text, random };

std::vector<std::byte> payload_bytes(payload p) {
    return p == payload::text ? text_bytes(static_cast<std::size_t>(cluster)) : random_bytes(static_cast<std::size_t>(cluster), 5);
}

/// Compresses one 64 KiB cluster into cluster_size - 1 bytes, as qcow2 writers do.
void codec_compress(benchmark::State& state, qcow2::compression type, payload p) {
    if (!qcow2::codec::cluster_compressor::available(type)) {
        state.SkipWithError("this codec was not compiled in");
        return;
    }
    qcow2::codec::cluster_compressor c(type);
    const auto in = payload_bytes(p);
    std::vector<std::byte> out(static_cast<std::size_t>(cluster) - 1);
    std::size_t size = 0;
    for (auto _ : state) {
        auto r = c.compress(in, out);
        if (r) size = *r;
        else if (!r.error().is(qcow2::errc::not_compressible)) die("compress", r.error());
        else size = in.size();
        benchmark::DoNotOptimize(out.data());
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(iterations(state) * cluster));
    state.counters["ratio"] = static_cast<double>(in.size()) / static_cast<double>(size);
}

/// Decompresses one 64 KiB cluster (random data compressed without the size limit).
void codec_decompress(benchmark::State& state, qcow2::compression type, payload p) {
    if (!qcow2::codec::cluster_compressor::available(type) || !qcow2::codec::cluster_decompressor::available(type)) {
        state.SkipWithError("this codec was not compiled in");
        return;
    }
    qcow2::codec::cluster_compressor c(type);
    const auto in = payload_bytes(p);
    std::vector<std::byte> stream(2 * static_cast<std::size_t>(cluster));
    stream.resize(take(c.compress(in, stream), "compress"));
    qcow2::codec::cluster_decompressor d(type);
    std::vector<std::byte> out(static_cast<std::size_t>(cluster));
    for (auto _ : state) {
        must(d.decompress(stream, out), "decompress");
        benchmark::DoNotOptimize(out.data());
    }
    if (out != in) {
        state.SkipWithError("decompressed data differs");
        return;
    }
    state.SetBytesProcessed(static_cast<std::int64_t>(iterations(state) * cluster));
}

BENCHMARK_CAPTURE(codec_compress, zlib_text, qcow2::compression::zlib, payload::text);
BENCHMARK_CAPTURE(codec_compress, zlib_random, qcow2::compression::zlib, payload::random);
BENCHMARK_CAPTURE(codec_compress, zstd_text, qcow2::compression::zstd, payload::text);
BENCHMARK_CAPTURE(codec_compress, zstd_random, qcow2::compression::zstd, payload::random);
BENCHMARK_CAPTURE(codec_decompress, zlib_text, qcow2::compression::zlib, payload::text);
BENCHMARK_CAPTURE(codec_decompress, zlib_random, qcow2::compression::zlib, payload::random);
BENCHMARK_CAPTURE(codec_decompress, zstd_text, qcow2::compression::zstd, payload::text);
BENCHMARK_CAPTURE(codec_decompress, zstd_random, qcow2::compression::zstd, payload::random);

} // namespace

BENCHMARK_MAIN();
