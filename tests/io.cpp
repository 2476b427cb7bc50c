// SPDX-License-Identifier: MIT
#include "qcow2/io/memory.hpp"
#include "qcow2/io/posix_file.hpp"
#include "support/counting_allocator.hpp"
#include "support/fault_backend.hpp"
#include "support/process.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace io = qcow2::io;
using qcow2::errc;
using qcow2::test::allocation_stats;
using qcow2::test::counting_allocator;
using qcow2::test::fault_backend;
using qcow2::test::fault_op;

namespace {

constexpr std::uint64_t kib = 1024;
constexpr std::uint64_t mib = 1024 * kib;
const std::error_code no_error{};
const std::error_code eio = std::make_error_code(std::errc::io_error);

// ---------------------------------------------------------------------------------------
// Helpers

/// Pseudo-random bytes, different for each seed.
std::vector<std::byte> pattern(std::size_t n, std::uint32_t seed = 1) {
    std::vector<std::byte> v(n);
    std::uint32_t x = seed * 2654435761u + 12345u;
    for (auto& b : v) {
        x = x * 1664525u + 1013904223u;
        b = static_cast<std::byte>(x >> 24);
    }
    return v;
}

/// Writes `data` at `offset` into a shadow model of the file, growing it with zeroes.
void put(std::vector<std::byte>& model, std::uint64_t offset, std::span<const std::byte> data) {
    const auto off = static_cast<std::size_t>(offset);
    if (model.size() < off + data.size()) model.resize(off + data.size());
    std::copy(data.begin(), data.end(), model.begin() + static_cast<std::ptrdiff_t>(off));
}

/// Zeroes `[offset, offset + length)` in the model, growing it.
void put_zeroes(std::vector<std::byte>& model, std::uint64_t offset, std::uint64_t length) {
    put(model, offset, std::vector<std::byte>(static_cast<std::size_t>(length)));
}

/// The whole file, read through the backend.
template <class B>
std::vector<std::byte> contents(B& b) {
    std::uint64_t n = 0;
    REQUIRE(b.size(n) == no_error);
    std::vector<std::byte> out(static_cast<std::size_t>(n));
    REQUIRE(b.read_at(0, out) == no_error);
    return out;
}

/// `n` bytes at `offset`, read through the backend.
template <class B>
std::vector<std::byte> read_range(B& b, std::uint64_t offset, std::size_t n) {
    std::vector<std::byte> out(n, std::byte{0xee});
    REQUIRE(b.read_at(offset, out) == no_error);
    return out;
}

/// "" when `got` equals `want`, else where they first differ (short, unlike printing the vectors).
std::string mismatch(std::span<const std::byte> got, std::span<const std::byte> want) {
    const auto n = std::min(got.size(), want.size());
    for (std::size_t i = 0; i < n; ++i) {
        if (got[i] != want[i])
            return "byte " + std::to_string(i) + " is " + std::to_string(std::to_integer<int>(got[i])) + ", expected " +
                   std::to_string(std::to_integer<int>(want[i]));
    }
    if (got.size() != want.size())
        return "size is " + std::to_string(got.size()) + ", expected " + std::to_string(want.size());
    return {};
}

bool all_zero(std::span<const std::byte> s) {
    return std::all_of(s.begin(), s.end(), [](std::byte b) { return b == std::byte{0}; });
}

template <class B>
std::uint64_t file_size(const B& b) {
    std::uint64_t n = 0;
    REQUIRE(b.size(n) == no_error);
    return n;
}

using qcow2_test::temp_dir;

io::posix_file open_file(const std::string& path, io::open_mode mode) {
    auto r = io::posix_file::open(path, mode);
    if (!r) FAIL(r.error().what());
    return std::move(*r);
}

// ---------------------------------------------------------------------------------------
// Fixtures: one per backend under the conformance suite. `make()` gives an empty,
// writable file; `read_only(b)` gives the same file with modifications refused.

struct memory_fixture {
    using backend_type = io::memory;
    backend_type make() { return backend_type(); }
    backend_type read_only(backend_type b) {
        b.set_read_only(true);
        return b;
    }
};

/// True when `dir` exists and is writable (for tests that want a second filesystem).
bool writable_dir(const char* dir) {
    struct stat st {};
    return ::stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && ::access(dir, W_OK) == 0;
}

struct posix_fixture {
    using backend_type = io::posix_file;
    explicit posix_fixture(const char* base = nullptr) : dir("qcow2-io-", base) {}
    temp_dir dir;
    std::string path = (dir / "conformance.img");
    backend_type make() {
        return open_file(path, io::open_mode::create);
    }
    backend_type read_only(backend_type b) {
        REQUIRE(b.close() == no_error);
        return open_file(path, io::open_mode::read_only);
    }
};

/// The same on tmpfs when there is one: no FALLOC_FL_ZERO_RANGE there, so write_zeroes takes its fallback.
struct posix_tmpfs_fixture : posix_fixture {
    posix_tmpfs_fixture() : posix_fixture(writable_dir("/dev/shm") ? "/dev/shm" : nullptr) {}
};

struct counting_memory_fixture {
    using backend_type = io::basic_memory<counting_allocator<std::byte>>;
    allocation_stats stats;
    backend_type make() { return backend_type(counting_allocator<std::byte>(stats)); }
    backend_type read_only(backend_type b) {
        b.set_read_only(true);
        return b;
    }
};

struct fault_memory_fixture {
    using backend_type = fault_backend<io::memory>;
    backend_type make() { return backend_type(io::memory()); }
    backend_type read_only(backend_type b) {
        b.inner().set_read_only(true);
        return b;
    }
};

} // namespace

// ---------------------------------------------------------------------------------------
// Static checks: which types are backends, and with which capabilities.

namespace {
struct no_flush {
    std::error_code read_at(std::uint64_t, std::span<std::byte>) noexcept { return {}; }
    std::error_code write_at(std::uint64_t, std::span<const std::byte>) noexcept { return {}; }
    std::error_code size(std::uint64_t&) const noexcept { return {}; }
    std::error_code resize(std::uint64_t) noexcept { return {}; }
};
struct throwing_flush : no_flush {
    std::error_code flush() { return {}; } // not noexcept
};
struct minimal : no_flush {
    std::error_code flush() noexcept { return {}; }
};
} // namespace

static_assert(!io::backend<int>);
static_assert(!io::backend<no_flush> && io::readable_backend<no_flush>);
static_assert(!io::backend<throwing_flush>);
static_assert(io::backend<minimal> && !io::supports_discard<minimal> && !io::supports_preallocate<minimal>);

static_assert(io::backend<io::memory> && io::supports_discard<io::memory> && io::supports_write_zeroes<io::memory> &&
              io::supports_preallocate<io::memory> && io::supports_allocated_size<io::memory>);
static_assert(!io::supports_block_status<io::memory> && !io::supports_copy_range<io::memory, io::memory>);
static_assert(io::backend<io::basic_memory<counting_allocator<std::byte>>> &&
              io::backend<io::basic_memory<counting_allocator<int>>>);
static_assert(std::is_same_v<io::basic_memory<counting_allocator<int>>::allocator_type, counting_allocator<std::byte>>);
static_assert(std::is_nothrow_move_constructible_v<io::memory> && !std::is_copy_constructible_v<io::memory>);
static_assert(std::is_nothrow_move_assignable_v<io::basic_memory<counting_allocator<std::byte>>>);

static_assert(io::backend<io::posix_file> && io::supports_discard<io::posix_file> &&
              io::supports_write_zeroes<io::posix_file> && io::supports_preallocate<io::posix_file> &&
              io::supports_block_status<io::posix_file> && io::supports_copy_range<io::posix_file, io::posix_file> &&
              io::supports_allocated_size<io::posix_file>);
static_assert(!io::supports_copy_range<io::posix_file, io::memory>);
static_assert(std::is_nothrow_move_constructible_v<io::posix_file> && std::is_nothrow_move_assignable_v<io::posix_file> &&
              !std::is_copy_constructible_v<io::posix_file> && !std::is_copy_assignable_v<io::posix_file>);
static_assert(noexcept(std::declval<io::posix_file&>().close()));

static_assert(io::backend<fault_backend<io::memory>> && io::supports_discard<fault_backend<io::memory>> &&
              io::supports_write_zeroes<fault_backend<io::memory>> &&
              io::supports_preallocate<fault_backend<io::memory>> &&
              io::supports_allocated_size<fault_backend<io::memory>>);
static_assert(!io::supports_block_status<fault_backend<io::memory>>);
static_assert(!io::supports_discard<fault_backend<minimal>> && io::backend<fault_backend<minimal>>);
static_assert(io::supports_block_status<fault_backend<io::posix_file>> &&
              io::supports_copy_range<fault_backend<io::posix_file>, io::posix_file>);

// ---------------------------------------------------------------------------------------
// The conformance suite, run over every backend.

TEMPLATE_TEST_CASE("backend conformance", "[io]", memory_fixture, posix_fixture, posix_tmpfs_fixture,
                   counting_memory_fixture, fault_memory_fixture) {
    TestType fx;
    auto f = fx.make();
    std::vector<std::byte> model;

    SECTION("a new file is empty") {
        CHECK(file_size(f) == 0);
        std::vector<std::byte> one(1);
        CHECK(f.read_at(0, one) == errc::short_read);
        CHECK(f.read_at(0, {}) == no_error);
        std::uint64_t alloc = 1234;
        CHECK(f.allocated_size(alloc) == no_error);
        CHECK(alloc != 1234);
    }

    SECTION("write then read back") {
        const auto a = pattern(1000, 1);
        const auto b = pattern(37, 2);
        REQUIRE(f.write_at(0, a) == no_error);
        REQUIRE(f.write_at(500, b) == no_error);
        put(model, 0, a);
        put(model, 500, b);
        CHECK(file_size(f) == 1000);
        CHECK(mismatch(contents(f), model) == "");
        CHECK(mismatch(read_range(f, 495, 50), std::span(model).subspan(495, 50)) == "");
        REQUIRE(f.write_at(1000, b) == no_error); // appending exactly at the end
        put(model, 1000, b);
        CHECK(mismatch(contents(f), model) == "");
        CHECK(f.write_at(5000, {}) == no_error); // an empty write never grows the file
        CHECK(file_size(f) == 1037);
    }

    SECTION("reading past the end is short_read") {
        REQUIRE(f.write_at(0, pattern(100)) == no_error);
        std::vector<std::byte> buf(20);
        CHECK(f.read_at(90, buf) == errc::short_read);
        CHECK(f.read_at(100, std::span(buf).first(1)) == errc::short_read);
        CHECK(f.read_at(1ull << 40, buf) == errc::short_read);
        CHECK(f.read_at(std::numeric_limits<std::uint64_t>::max() - 1, buf) == errc::short_read);
        CHECK(f.read_at(80, buf) == no_error);
        CHECK(f.read_at(100, {}) == no_error);
        CHECK(file_size(f) == 100);
    }

    SECTION("writing past the end grows the file with a zero gap") {
        const auto a = pattern(10, 3);
        REQUIRE(f.write_at(0, a) == no_error);
        REQUIRE(f.write_at(4096 + 7, a) == no_error);
        CHECK(file_size(f) == 4096 + 17);
        const auto all = contents(f);
        CHECK(mismatch(std::span(all).first(10), a) == "");
        CHECK(all_zero(std::span(all).subspan(10, 4096 - 3)));
        CHECK(mismatch(std::span(all).subspan(4096 + 7), a) == "");
        // A range that cannot be addressed is refused and changes nothing.
        CHECK(f.write_at(std::numeric_limits<std::uint64_t>::max() - 2, a) == errc::file_too_large);
        CHECK(file_size(f) == 4096 + 17);
    }

    SECTION("resize down and up") {
        const auto a = pattern(8192, 4);
        REQUIRE(f.write_at(0, a) == no_error);
        REQUIRE(f.resize(100) == no_error);
        CHECK(file_size(f) == 100);
        std::vector<std::byte> past(1);
        CHECK(f.read_at(100, past) == errc::short_read);
        REQUIRE(f.resize(5000) == no_error);
        CHECK(file_size(f) == 5000);
        const auto all = contents(f);
        CHECK(mismatch(std::span(all).first(100), std::span(a).first(100)) == "");
        CHECK(all_zero(std::span(all).subspan(100))); // the old bytes do not come back
        REQUIRE(f.resize(5000) == no_error);
        CHECK(file_size(f) == 5000);
        REQUIRE(f.resize(0) == no_error);
        CHECK(file_size(f) == 0);
    }

    SECTION("flush keeps the data") {
        const auto a = pattern(3000, 5);
        REQUIRE(f.write_at(123, a) == no_error);
        CHECK(f.flush() == no_error);
        CHECK(mismatch(read_range(f, 123, 3000), a) == "");
        CHECK(f.flush() == no_error);
    }

    SECTION("discard reads as zeroes and keeps the size") {
        const auto a = pattern(64 * kib, 6);
        REQUIRE(f.write_at(0, a) == no_error);
        model = a;
        REQUIRE(f.discard(4096, 8192) == no_error); // aligned: a real hole where supported
        put_zeroes(model, 4096, 8192);
        REQUIRE(f.discard(1000, 10) == no_error); // unaligned
        put_zeroes(model, 1000, 10);
        CHECK(mismatch(contents(f), model) == "");
        REQUIRE(f.discard(60000, 100000) == no_error); // clamped to the end
        put_zeroes(model, 60000, 64 * kib - 60000);
        CHECK(file_size(f) == 64 * kib);
        CHECK(mismatch(contents(f), model) == "");
        CHECK(f.discard(1ull << 30, 10) == no_error); // entirely past the end: nothing
        CHECK(f.discard(std::numeric_limits<std::uint64_t>::max() - 5, 10) == no_error);
        CHECK(f.discard(0, 0) == no_error);
        CHECK(file_size(f) == 64 * kib);
        CHECK(mismatch(contents(f), model) == "");
    }

    SECTION("write_zeroes reads as zeroes and grows when needed") {
        const auto a = pattern(16 * kib, 7);
        REQUIRE(f.write_at(0, a) == no_error);
        model = a;
        REQUIRE(f.write_zeroes(4096, 4096) == no_error);
        put_zeroes(model, 4096, 4096);
        REQUIRE(f.write_zeroes(100, 3) == no_error);
        put_zeroes(model, 100, 3);
        CHECK(file_size(f) == 16 * kib);
        CHECK(mismatch(contents(f), model) == "");
        REQUIRE(f.write_zeroes(16000, 10000) == no_error); // crosses the end
        put_zeroes(model, 16000, 10000);
        CHECK(file_size(f) == 26000);
        CHECK(mismatch(contents(f), model) == "");
        REQUIRE(f.write_zeroes(40000, 100) == no_error); // past the end, with a gap
        put_zeroes(model, 40000, 100);
        CHECK(file_size(f) == 40100);
        CHECK(mismatch(contents(f), model) == "");
        CHECK(f.write_zeroes(0, 0) == no_error);
        CHECK(f.write_zeroes(std::numeric_limits<std::uint64_t>::max() - 2, 10) == errc::file_too_large);
        CHECK(file_size(f) == 40100);
    }

    SECTION("preallocate grows with zeroes and keeps data") {
        const auto a = pattern(100, 8);
        REQUIRE(f.write_at(0, a) == no_error);
        REQUIRE(f.preallocate(0, 50) == no_error);
        CHECK(file_size(f) == 100);
        CHECK(mismatch(contents(f), a) == "");
        REQUIRE(f.preallocate(50, 1000) == no_error);
        CHECK(file_size(f) == 1050);
        const auto all = contents(f);
        CHECK(mismatch(std::span(all).first(100), a) == "");
        CHECK(all_zero(std::span(all).subspan(100)));
        REQUIRE(f.preallocate(2000, 48) == no_error);
        CHECK(file_size(f) == 2048);
        const auto grown = contents(f);
        CHECK(all_zero(std::span(grown).subspan(100)));
    }

    SECTION("a read-only file refuses every modification") {
        const auto a = pattern(4096, 9);
        REQUIRE(f.write_at(0, a) == no_error);
        auto r = fx.read_only(std::move(f));
        const auto b = pattern(10, 10);
        CHECK(r.write_at(0, b) == errc::read_only);
        CHECK(r.write_at(8192, b) == errc::read_only);
        CHECK(r.resize(10) == errc::read_only);
        CHECK(r.resize(10000) == errc::read_only);
        CHECK(r.discard(0, 4096) == errc::read_only);
        CHECK(r.write_zeroes(0, 100) == errc::read_only);
        CHECK(r.preallocate(0, 100000) == errc::read_only);
        CHECK(r.flush() == no_error);
        CHECK(file_size(r) == 4096);
        CHECK(mismatch(contents(r), a) == "");
    }
}

// ---------------------------------------------------------------------------------------
// memory

TEST_CASE("memory: construction from bytes, accessors and clone", "[io]") {
    const auto a = pattern(300, 11);
    io::memory m(std::vector<std::byte>(a.begin(), a.end()));
    CHECK(file_size(m) == 300);
    CHECK(mismatch(m.bytes(), a) == "");
    CHECK(mismatch(read_range(m, 10, 20), std::span(a).subspan(10, 20)) == "");
    std::uint64_t alloc = 0;
    REQUIRE(m.allocated_size(alloc) == no_error);
    CHECK(alloc == 300);
    CHECK(m.max_size() == io::memory::default_max_size);
    CHECK(io::memory::default_max_size == 16ull << 30);
    CHECK_FALSE(m.is_read_only());

    auto c = m.clone();
    REQUIRE(c);
    REQUIRE(m.write_at(0, pattern(5, 12)) == no_error);
    CHECK(mismatch(contents(*c), a) == ""); // the clone is independent

    io::memory moved(std::move(m));
    CHECK(file_size(moved) == 300);
    CHECK(file_size(m) == 0); // NOLINT(bugprone-use-after-move): the source is left empty

    io::memory ro(std::vector<std::byte>(a.begin(), a.end()), {.max_size = 16, .read_only = true});
    CHECK(ro.is_read_only());
    CHECK(ro.max_size() == 300); // raised to the initial size
    CHECK(ro.write_at(0, a) == errc::read_only);
    ro.set_read_only(false);
    CHECK(ro.write_at(0, pattern(300, 13)) == no_error);
    CHECK(ro.write_at(300, pattern(1)) == errc::file_too_large);
}

TEST_CASE("memory: refuses to grow past its bound without allocating", "[io]") {
    allocation_stats stats;
    using counted = io::basic_memory<counting_allocator<std::byte>>;
    {
        counted m({.max_size = 4096}, counting_allocator<std::byte>(stats));
        const auto a = pattern(200);
        CHECK(m.write_at(4000, a) == errc::file_too_large);
        CHECK(m.resize(4097) == errc::file_too_large);
        CHECK(m.write_zeroes(0, 5000) == errc::file_too_large);
        CHECK(m.preallocate(4096, 1) == errc::file_too_large);
        CHECK(file_size(m) == 0);
        CHECK(stats.attempts == 0);

        REQUIRE(m.write_at(3896, a) == no_error); // ends exactly at the bound
        CHECK(file_size(m) == 4096);
        CHECK(m.write_at(4096, std::span(a).first(1)) == errc::file_too_large);
        CHECK(stats.peak_bytes <= 4096); // capacity never passes the bound
        CHECK(file_size(m) == 4096);
    }
    CHECK(stats.current_bytes == 0);

    // The default bound is 16 GiB: a write there fails instead of trying to allocate it.
    counted big{counting_allocator<std::byte>(stats)};
    const auto before = stats.attempts;
    CHECK(big.write_at(16ull << 30, pattern(1)) == errc::file_too_large);
    CHECK(big.resize((16ull << 30) + 1) == errc::file_too_large);
    CHECK(stats.attempts == before);
}

TEST_CASE("memory: the counting allocator sees every allocation", "[io]") {
    allocation_stats stats;
    {
        io::basic_memory<counting_allocator<int>> m{counting_allocator<std::byte>(stats)};
        REQUIRE(m.write_at(0, pattern(100)) == no_error);
        CHECK(stats.allocations >= 1);
        CHECK(stats.current_bytes >= 100);
        REQUIRE(m.write_at(0, pattern(10000)) == no_error);
        CHECK(stats.current_bytes >= 10000);
        CHECK(stats.peak_bytes >= stats.current_bytes);
        REQUIRE(m.resize(10) == no_error);
        CHECK(stats.current_bytes >= 10000); // shrinking keeps the capacity
    }
    CHECK(stats.current_bytes == 0);
    CHECK(stats.outstanding() == 0);
    CHECK(stats.total_bytes >= 10000);
}

#if QCOW2_HAS_EXCEPTIONS
TEST_CASE("memory: an allocation failure is no_memory and changes nothing", "[io]") {
    allocation_stats stats;
    io::basic_memory<counting_allocator<std::byte>> m{counting_allocator<std::byte>(stats)};
    const auto a = pattern(100, 14);
    REQUIRE(m.write_at(0, a) == no_error);
    const auto attempts = stats.attempts;

    stats.fail_nth(1);
    CHECK(m.write_at(100, pattern(mib)) == errc::no_memory);
    CHECK(stats.attempts == attempts + 1);
    CHECK(file_size(m) == 100);
    CHECK(mismatch(contents(m), a) == "");
    stats.fail_nth(1);
    CHECK(m.resize(mib) == errc::no_memory);
    stats.fail_nth(1);
    CHECK(m.write_zeroes(0, mib) == errc::no_memory);
    stats.fail_nth(1);
    CHECK(m.preallocate(0, mib) == errc::no_memory);
    stats.fail_nth(1);
    CHECK_FALSE(m.clone());
    CHECK(file_size(m) == 100);
    CHECK(stats.outstanding() == 1);

    // Without an armed failure, the same calls succeed.
    CHECK(m.write_at(100, pattern(mib)) == no_error);
    CHECK(file_size(m) == 100 + mib);
}

TEST_CASE("memory: failing the N-th allocation of a workload, for every N", "[io]") {
    // A workload that allocates several times; each run fails at a later allocation until one succeeds.
    const auto run = [](io::basic_memory<counting_allocator<std::byte>>& m) -> std::error_code {
        for (std::uint64_t i = 0; i < 6; ++i) {
            if (auto ec = m.write_at(i * 10000, pattern(10000, static_cast<std::uint32_t>(i)))) return ec;
        }
        return {};
    };
    bool succeeded = false;
    std::size_t failures = 0;
    for (std::size_t n = 1; n < 50 && !succeeded; ++n) {
        allocation_stats stats;
        {
            io::basic_memory<counting_allocator<std::byte>> m{counting_allocator<std::byte>(stats)};
            stats.fail_nth(n);
            const auto ec = run(m);
            if (ec) {
                ++failures;
                CHECK(ec == errc::no_memory);
                // Whatever was written before the failure is intact.
                const auto all = contents(m);
                CHECK(all.size() % 10000 == 0);
                for (std::size_t i = 0; i < all.size() / 10000; ++i)
                    CHECK(mismatch(std::span(all).subspan(i * 10000, 10000), pattern(10000, static_cast<std::uint32_t>(i))) == "");
            } else {
                succeeded = true;
                CHECK(file_size(m) == 60000);
            }
        }
        CHECK(stats.current_bytes == 0);
    }
    CHECK(succeeded);
    CHECK(failures >= 2); // the workload grows more than once
}
#endif

// ---------------------------------------------------------------------------------------
// posix_file

TEST_CASE("posix_file: open modes and errors", "[io]") {
    temp_dir dir("qcow2-io-");
    const std::string missing = (dir / "does-not-exist.img");

    auto r = io::posix_file::open(missing, io::open_mode::read_only);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == std::errc::no_such_file_or_directory);
    CHECK(r.error().message().find(missing) != std::string::npos);
    CHECK(r.error().what().find(missing) != std::string::npos);
    CHECK_FALSE(io::posix_file::open(missing, io::open_mode::read_write));

    const std::string p = (dir / "a.img");
    {
        auto f = open_file(p, io::open_mode::create_new);
        CHECK(f.is_open());
        CHECK_FALSE(f.is_read_only());
        CHECK(f.path() == p);
        CHECK(f.native_handle() >= 0);
        REQUIRE(f.write_at(0, pattern(100)) == no_error);
    }
    auto again = io::posix_file::open(p, io::open_mode::create_new);
    REQUIRE_FALSE(again);
    CHECK(again.error().code() == std::errc::file_exists);
    CHECK(again.error().message().find(p) != std::string::npos);

    {
        auto f = open_file(p, io::open_mode::read_write); // keeps the contents
        CHECK(mismatch(contents(f), pattern(100)) == "");
    }
    {
        auto f = open_file(p, io::open_mode::read_only);
        CHECK(f.is_read_only());
        CHECK(mismatch(contents(f), pattern(100)) == "");
        CHECK(f.write_at(0, pattern(1)) == errc::read_only);
        // The descriptor really is read-only, so nothing was attempted behind our back.
        CHECK((::fcntl(f.native_handle(), F_GETFL) & O_ACCMODE) == O_RDONLY);
        CHECK((::fcntl(f.native_handle(), F_GETFD) & FD_CLOEXEC) != 0);
    }
    {
        auto f = open_file(p, io::open_mode::create); // truncates
        CHECK(file_size(f) == 0);
    }

    auto d = io::posix_file::open(dir.path(), io::open_mode::read_only);
    REQUIRE_FALSE(d);
    CHECK(d.error().code() == std::errc::is_a_directory);
    CHECK(d.error().message().find(dir.path()) != std::string::npos);
}

TEST_CASE("posix_file: moving and closing", "[io]") {
    temp_dir dir("qcow2-io-");
    auto f = open_file((dir / "m.img"), io::open_mode::create);
    REQUIRE(f.write_at(0, pattern(10)) == no_error);
    const int fd = f.native_handle();
    io::posix_file g(std::move(f));
    CHECK(g.native_handle() == fd);
    CHECK_FALSE(f.is_open()); // NOLINT(bugprone-use-after-move)
    std::uint64_t n = 0;
    CHECK(f.size(n) == std::errc::bad_file_descriptor);
    CHECK(file_size(g) == 10);

    io::posix_file h;
    CHECK_FALSE(h.is_open());
    h = std::move(g);
    CHECK(file_size(h) == 10);
    CHECK(h.close() == no_error);
    CHECK_FALSE(h.is_open());
    CHECK(h.close() == no_error); // closing twice is harmless
    std::vector<std::byte> buf(1);
    CHECK(h.read_at(0, buf) == std::errc::bad_file_descriptor);
    CHECK(::fcntl(fd, F_GETFD) == -1); // the descriptor was really closed
}

TEST_CASE("posix_file: block_status reports data and holes", "[io]") {
    temp_dir dir("qcow2-io-");
    auto f = open_file((dir / "sparse.img"), io::open_mode::create);
    REQUIRE(f.resize(4 * mib) == no_error);
    REQUIRE(f.write_at(1 * mib, pattern(64 * kib)) == no_error);
    REQUIRE(f.flush() == no_error);

    std::uint64_t allocated = 0;
    REQUIRE(f.allocated_size(allocated) == no_error);
    const bool holes = allocated < 4 * mib; // the file is sparse: this filesystem has holes
    CHECK(allocated >= 64 * kib);

    io::extent_status st;
    REQUIRE(f.block_status(1 * mib, 4 * mib, st) == no_error);
    CHECK(st.data);
    CHECK(st.length >= 1);
    CHECK(st.length <= 3 * mib);
    REQUIRE(f.block_status(1 * mib, 100, st) == no_error);
    CHECK(st.data);
    CHECK(st.length == 100); // clamped to max_length

    CHECK(f.block_status(4 * mib, 1, st) == errc::invalid_argument);
    CHECK(f.block_status(5 * mib, 1, st) == errc::invalid_argument);
    CHECK(f.block_status(0, 0, st) == errc::invalid_argument);

    if (!holes) {
        WARN("the temporary directory's filesystem does not keep holes; only data regions are checked");
        return;
    }
    REQUIRE(f.block_status(0, 4 * mib, st) == no_error);
    CHECK_FALSE(st.data);
    CHECK(st.length == 1 * mib);
    REQUIRE(f.block_status(4096, 8192, st) == no_error);
    CHECK_FALSE(st.data);
    CHECK(st.length == 8192);

    REQUIRE(f.block_status(1 * mib, 4 * mib, st) == no_error);
    REQUIRE(st.data);
    CHECK(st.length >= 64 * kib);
    const std::uint64_t after = 1 * mib + st.length;
    REQUIRE(after < 4 * mib);
    REQUIRE(f.block_status(after, 8 * mib, st) == no_error);
    CHECK_FALSE(st.data);
    CHECK(st.length == 4 * mib - after); // a hole to the end of the file, clamped there

    // Punch a hole over the first half of the data.
    REQUIRE(f.discard(1 * mib, 32 * kib) == no_error);
    CHECK(file_size(f) == 4 * mib);
    REQUIRE(f.block_status(0, 4 * mib, st) == no_error);
    CHECK_FALSE(st.data);
    CHECK(st.length == 1 * mib + 32 * kib);
    REQUIRE(f.block_status(1 * mib + 32 * kib, 4 * mib, st) == no_error);
    CHECK(st.data);
    CHECK(st.length >= 32 * kib);
    CHECK(all_zero(read_range(f, 1 * mib, 32 * kib)));
    const auto p = pattern(64 * kib);
    CHECK(mismatch(read_range(f, 1 * mib + 32 * kib, 32 * kib), std::span(p).subspan(32 * kib)) == "");

    std::uint64_t after_punch = 0;
    REQUIRE(f.allocated_size(after_punch) == no_error);
    CHECK(after_punch < allocated);

    // write_zeroes over data leaves zeroes (a hole or zeroed extent, either is fine).
    REQUIRE(f.write_zeroes(1 * mib + 32 * kib, 32 * kib) == no_error);
    CHECK(all_zero(contents(f)));
}

TEST_CASE("posix_file: a fully written file is one data extent", "[io]") {
    temp_dir dir("qcow2-io-");
    auto f = open_file((dir / "dense.img"), io::open_mode::create);
    REQUIRE(f.write_at(0, pattern(256 * kib)) == no_error);
    io::extent_status st;
    REQUIRE(f.block_status(0, 1ull << 40, st) == no_error);
    CHECK(st.data);
    CHECK(st.length == 256 * kib);
    REQUIRE(f.block_status(100 * kib, 1ull << 40, st) == no_error);
    CHECK(st.data);
    CHECK(st.length == 156 * kib);
}

TEST_CASE("posix_file: copy_range_to", "[io]") {
    temp_dir dir("qcow2-io-");
    const auto src_bytes = pattern(3 * mib + 123, 21);
    auto src = open_file((dir / "src.img"), io::open_mode::create);
    REQUIRE(src.write_at(0, src_bytes) == no_error);

    SECTION("between two files, at offsets") {
        auto dst = open_file((dir / "dst.img"), io::open_mode::create);
        const std::uint64_t len = 2 * mib + 17;
        REQUIRE(src.copy_range_to(100, dst, 5000, len) == no_error);
        CHECK(file_size(dst) == 5000 + len);
        const auto all = contents(dst);
        CHECK(all_zero(std::span(all).first(5000)));
        CHECK(mismatch(std::span(all).subspan(5000), std::span(src_bytes).subspan(100, len)) == "");
        CHECK(mismatch(contents(src), src_bytes) == ""); // the source is untouched
        CHECK(src.copy_range_to(0, dst, 0, 0) == no_error);
    }

    SECTION("past the end of the source") {
        auto dst = open_file((dir / "dst.img"), io::open_mode::create);
        CHECK(src.copy_range_to(3 * mib, dst, 0, mib) == errc::short_read);
        CHECK(src.copy_range_to(std::numeric_limits<std::uint64_t>::max() - 5, dst, 0, 10) == errc::short_read);
    }

    SECTION("into a read-only file") {
        {
            auto w = open_file((dir / "ro.img"), io::open_mode::create);
            REQUIRE(w.write_at(0, pattern(10)) == no_error);
        }
        auto ro = open_file((dir / "ro.img"), io::open_mode::read_only);
        CHECK(src.copy_range_to(0, ro, 0, 10) == errc::read_only);
        CHECK(mismatch(contents(ro), pattern(10)) == "");
        // A read-only file can still be the source.
        auto dst = open_file((dir / "dst.img"), io::open_mode::create);
        REQUIRE(ro.copy_range_to(2, dst, 0, 8) == no_error);
        const auto ten = pattern(10);
        CHECK(mismatch(contents(dst), std::span(ten).subspan(2)) == "");
    }

    SECTION("within one file") {
        std::vector<std::byte> model = src_bytes;
        // Disjoint ranges.
        REQUIRE(src.copy_range_to(0, src, 4 * mib, mib) == no_error);
        put(model, 4 * mib, std::span(src_bytes).first(mib));
        CHECK(mismatch(contents(src), model) == "");
        // Overlapping, destination above the source: as memmove.
        std::vector<std::byte> before = model;
        REQUIRE(src.copy_range_to(0, src, 4096, 2 * mib) == no_error);
        put(model, 4096, std::span(before).first(2 * mib));
        CHECK(mismatch(contents(src), model) == "");
        // Overlapping, destination below the source.
        before = model;
        REQUIRE(src.copy_range_to(8192, src, 0, mib + 5) == no_error);
        put(model, 0, std::span(before).subspan(8192, mib + 5));
        CHECK(mismatch(contents(src), model) == "");
    }

    SECTION("across filesystems (falls back to read and write)") {
        if (!writable_dir("/dev/shm")) {
            WARN("no writable /dev/shm; cross-filesystem copy not tested");
            return;
        }
        temp_dir other("qcow2-io-", "/dev/shm");
        auto dst = open_file((other / "dst.img"), io::open_mode::create);
        REQUIRE(src.copy_range_to(7, dst, 3, 3 * mib) == no_error);
        const auto all = contents(dst);
        REQUIRE(all.size() == 3 + 3 * mib);
        CHECK(all_zero(std::span(all).first(3)));
        CHECK(mismatch(std::span(all).subspan(3), std::span(src_bytes).subspan(7, 3 * mib)) == "");
        // And back again.
        auto back = open_file((dir / "back.img"), io::open_mode::create);
        REQUIRE(dst.copy_range_to(3, back, 0, 3 * mib) == no_error);
        CHECK(mismatch(contents(back), std::span(src_bytes).subspan(7, 3 * mib)) == "");
    }
}

// ---------------------------------------------------------------------------------------
// fault_backend

TEST_CASE("fault_backend: the N-th write of a workload fails with EIO", "[io]") {
    constexpr std::uint64_t writes = 5;
    constexpr std::size_t block = 512;
    for (std::uint64_t n = 1; n <= writes; ++n) {
        CAPTURE(n);
        fault_backend<io::memory> f{io::memory()};
        f.fail_nth(fault_op::write, n);
        REQUIRE(f.resize(writes * block) == no_error);
        for (std::uint64_t i = 0; i < writes; ++i) {
            const auto ec = f.write_at(i * block, pattern(block, static_cast<std::uint32_t>(i + 1)));
            CAPTURE(i);
            if (i + 1 == n) CHECK(ec == eio);
            else CHECK(ec == no_error);
        }
        CHECK(f.flush() == no_error);
        const auto all = contents(f);
        for (std::uint64_t i = 0; i < writes; ++i) {
            const auto part = std::span(all).subspan(static_cast<std::size_t>(i * block), block);
            if (i + 1 == n) CHECK(all_zero(part)); // the failed write never reached the file
            else CHECK(mismatch(part, pattern(block, static_cast<std::uint32_t>(i + 1))) == "");
        }
        CHECK(f.writes() == writes);
        CHECK(f.reads() == 1);
        CHECK(f.flushes() == 1);
        CHECK(f.resizes() == 1);
        CHECK(f.counts().sizes == 1);
        CHECK(f.faults() == 1);
        CHECK_FALSE(f.dead());
    }
}

TEST_CASE("fault_backend: sticky faults fail everything afterwards", "[io]") {
    fault_backend<io::memory> f{io::memory()};
    f.fail_nth(fault_op::write, 2, true);
    CHECK(f.write_at(0, pattern(10)) == no_error);
    CHECK(f.write_at(10, pattern(10)) == eio);
    CHECK(f.dead());
    CHECK(f.write_at(20, pattern(10)) == eio);
    std::vector<std::byte> buf(5);
    CHECK(f.read_at(0, buf) == eio);
    CHECK(f.flush() == eio);
    CHECK(f.resize(0) == eio);
    std::uint64_t n = 0;
    CHECK(f.size(n) == eio);
    CHECK(f.discard(0, 1) == eio);
    CHECK(f.write_zeroes(0, 1) == eio);
    CHECK(f.preallocate(0, 1) == eio);
    CHECK(f.allocated_size(n) == eio);
    CHECK(f.faults() == 10);
    CHECK(f.counts().total == 11);
    CHECK(f.inner().bytes().size() == 10); // only the first write got through

    f.disarm();
    CHECK_FALSE(f.dead());
    CHECK(f.write_at(10, pattern(10)) == no_error);
    CHECK(file_size(f) == 20);
}

TEST_CASE("fault_backend: faults by kind, by any kind, and once", "[io]") {
    fault_backend<io::memory> f{io::memory()};
    std::vector<std::byte> buf(4);

    f.fail_nth(fault_op::any, 3);
    CHECK(f.write_at(0, pattern(8)) == no_error); // 1
    CHECK(f.flush() == no_error);                 // 2
    CHECK(f.read_at(0, buf) == eio);              // 3
    CHECK(f.read_at(0, buf) == no_error);         // once only
    CHECK(f.faults() == 1);

    f.fail_nth(fault_op::flush, 2);
    CHECK(f.flush() == no_error);
    CHECK(f.write_at(0, pattern(8)) == no_error); // other kinds do not count
    CHECK(f.flush() == eio);
    CHECK(f.flush() == no_error);

    f.fail_nth(fault_op::discard, 1);
    CHECK(f.write_zeroes(0, 2) == no_error);
    CHECK(f.discard(0, 8) == eio);
    CHECK(f.read_at(0, buf) == no_error);
    CHECK(mismatch(buf, std::vector<std::byte>{std::byte{0}, std::byte{0}, pattern(8)[2], pattern(8)[3]}) == "");
    CHECK(f.discard(0, 8) == no_error);
    CHECK(all_zero(contents(f)));

    f.fail_nth(fault_op::resize, 1);
    CHECK(f.resize(100) == eio);
    CHECK(file_size(f) == 8);
    CHECK(f.faults() == 4);
    CHECK(f.counts().of(fault_op::flush) == 4);
    CHECK(f.counts().of(fault_op::discard) == 2);
    CHECK(f.counts().of(fault_op::resize) == 1);
}

TEST_CASE("fault_backend: forwards posix_file's capabilities", "[io]") {
    temp_dir dir("qcow2-io-");
    fault_backend<io::posix_file> f{open_file((dir / "f.img"), io::open_mode::create)};
    REQUIRE(f.write_at(0, pattern(8192)) == no_error);
    io::extent_status st;
    REQUIRE(f.block_status(0, 8192, st) == no_error);
    CHECK(st.data);
    auto dst = open_file((dir / "g.img"), io::open_mode::create);
    REQUIRE(f.copy_range_to(0, dst, 0, 8192) == no_error);
    CHECK(mismatch(contents(dst), pattern(8192)) == "");
    f.fail_nth(fault_op::copy_range, 1);
    CHECK(f.copy_range_to(0, dst, 0, 8192) == eio);
    f.fail_nth(fault_op::block_status, 1);
    CHECK(f.block_status(0, 8192, st) == eio);
    CHECK(f.counts().copies == 2);
    CHECK(f.counts().block_statuses == 2);
}
