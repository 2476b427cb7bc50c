// SPDX-License-Identifier: MIT
#include "qcow2/metadata/table_cache.hpp"
#include "support/counting_allocator.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <list>
#include <map>
#include <memory_resource>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

using qcow2::errc;
using qcow2::table_cache;
using qcow2::test::allocation_stats;
using qcow2::test::counting_allocator;

namespace {

constexpr std::size_t cluster = 64 * 1024;

/// The byte a loader writes at position `i` of the table at `offset`, load number `gen`.
std::byte fill_byte(std::uint64_t offset, std::uint64_t gen, std::size_t i) {
    std::uint64_t x = (offset ^ (gen * 0x9E3779B97F4A7C15ull)) + i * 0x100000001B3ull;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 32;
    return static_cast<std::byte>(x);
}

/// A loader that records every call and fills the table with `fill_byte(offset, generation)`.
struct recording_loader {
    std::uint64_t offset;
    std::uint64_t generation;
    int* calls;
    qcow2::result<void> operator()(std::span<std::byte> out) const {
        ++*calls;
        for (std::size_t i = 0; i < out.size(); ++i) out[i] = fill_byte(offset, generation, i);
        return {};
    }
};

/// True when `t` holds what the loader wrote for `offset` at load number `gen`.
bool holds(std::span<const std::byte> t, std::uint64_t offset, std::uint64_t gen) {
    for (std::size_t i = 0; i < t.size(); ++i)
        if (t[i] != fill_byte(offset, gen, i)) return false;
    return true;
}

/// A loader that fills with one byte value.
auto fill_with(std::byte v, int* calls = nullptr) {
    return [v, calls](std::span<std::byte> out) -> qcow2::result<void> {
        if (calls) ++*calls;
        std::fill(out.begin(), out.end(), v);
        return {};
    };
}

/// A loader that fails like a backend would.
auto failing(int* calls = nullptr) {
    return [calls](std::span<std::byte> out) -> qcow2::result<void> {
        if (calls) ++*calls;
        std::fill(out.begin(), out.end(), std::byte{0xdd}); // scribbles first, as a partial read would
        return qcow2::error(errc::short_read, "reading a table");
    };
}

/// A loader that must not run.
qcow2::result<void> never(std::span<std::byte>) {
    FAIL("the loader ran on a hit");
    return {};
}

table_cache make_cache(std::size_t tables, std::size_t table_size = 64) {
    auto r = table_cache::make(tables * table_size, table_size);
    REQUIRE(r);
    return std::move(*r);
}

/**
 * The reference model: a `std::list` LRU of unpinned tables (front: most recent), plus the
 * pinned tables apart (pinned tables leave the LRU order; the last unpin puts them in front).
 */
class model_lru {
public:
    explicit model_lru(std::size_t capacity) : capacity_(capacity) {}

    bool cached(std::uint64_t off) const { return pins_.count(off) != 0 || find(off) != lru_.end(); }
    std::size_t size() const { return lru_.size() + pins_.size(); }

    /// A lookup: true on a hit (which becomes the most recent unless pinned).
    bool use(std::uint64_t off) {
        if (pins_.count(off)) return true;
        auto it = find(off);
        if (it == lru_.end()) return false;
        lru_.splice(lru_.begin(), lru_, it);
        return true;
    }

    /// Room for a load: false when every table is pinned. Evicts the least recent when full.
    bool make_room() {
        if (size() < capacity_) return true;
        if (lru_.empty()) return false;
        lru_.pop_back();
        ++evictions;
        return true;
    }

    void insert(std::uint64_t off) { lru_.push_front(off); }
    void insert_pinned(std::uint64_t off) { pins_[off] = 1; }
    void invalidate(std::uint64_t off) {
        pins_.erase(off);
        if (auto it = find(off); it != lru_.end()) lru_.erase(it);
    }
    void clear() {
        lru_.clear();
        pins_.clear();
    }
    bool pin(std::uint64_t off) {
        if (auto p = pins_.find(off); p != pins_.end()) {
            ++p->second;
            return true;
        }
        auto it = find(off);
        if (it == lru_.end()) return false;
        lru_.erase(it);
        pins_[off] = 1;
        return true;
    }
    void unpin(std::uint64_t off) {
        auto p = pins_.find(off);
        if (p == pins_.end()) return;
        if (--p->second == 0) {
            pins_.erase(p);
            lru_.push_front(off);
        }
    }
    bool is_pinned(std::uint64_t off) const { return pins_.count(off) != 0; }
    std::vector<std::uint64_t> pinned() const {
        std::vector<std::uint64_t> v;
        for (auto& [off, n] : pins_) v.push_back(off);
        return v;
    }

    std::uint64_t evictions = 0;

private:
    std::list<std::uint64_t>::const_iterator find(std::uint64_t off) const {
        return std::find(lru_.begin(), lru_.end(), off);
    }

    std::size_t capacity_;
    std::list<std::uint64_t> lru_;
    std::map<std::uint64_t, unsigned> pins_;
};

/// The offsets used by the random tests: cluster aligned, some of them far apart, one at 0.
std::vector<std::uint64_t> universe(std::size_t n) {
    std::vector<std::uint64_t> u;
    for (std::size_t i = 0; i < n; ++i) {
        const std::uint64_t base = i % 3 == 0 ? (std::uint64_t{1} << 40) : 0;
        u.push_back(base + i * cluster);
    }
    u.push_back((std::uint64_t{1} << 56) - cluster); // the highest valid metadata cluster
    return u;
}

} // namespace

// ---------------------------------------------------------------------------------------
// Static checks

static_assert(std::is_nothrow_move_constructible_v<table_cache> && std::is_nothrow_move_assignable_v<table_cache>);
static_assert(!std::is_copy_constructible_v<table_cache> && !std::is_copy_assignable_v<table_cache>);
static_assert(noexcept(std::declval<table_cache&>().find(0)) && noexcept(std::declval<table_cache&>().invalidate(0)) && noexcept(
    std::declval<table_cache&>()
        .clear()) && noexcept(std::declval<table_cache&>()
                                  .pin(
                                      0)) && noexcept(std::declval<table_cache&>()
                                                          .unpin(
                                                              0)) && noexcept(std::declval<const table_cache&>()
                                                                                  .contains(
                                                                                      0)) && noexcept(std::declval<const table_cache&>()
                                                                                                          .statistics()) && noexcept(std::
                                                                                                                                         declval<
                                                                                                                                             const table_cache&>()
                                                                                                                                             .memory_bytes()));
static_assert(
    std::is_same_v<qcow2::basic_table_cache<counting_allocator<int>>::allocator_type, counting_allocator<std::byte>>);
static_assert(std::is_nothrow_move_assignable_v<qcow2::basic_table_cache<counting_allocator<std::byte>>>);
// What a loader is: called with the slot, returns (something convertible to) result<void>.
static_assert(qcow2::table_loader<recording_loader> && qcow2::table_loader<decltype(fill_with(std::byte{0}))> &&
              qcow2::table_loader<qcow2::result<void> (*)(std::span<std::byte>)>);
static_assert(!qcow2::table_loader<int (*)(std::span<std::byte>)> &&
              !qcow2::table_loader<qcow2::result<void> (*)(std::span<std::uint8_t>)> &&
              !qcow2::table_loader<qcow2::result<void> (*)()>);
// Polymorphic allocators do not propagate: such a cache can be moved from, not moved onto.
static_assert(std::is_nothrow_move_constructible_v<qcow2::basic_table_cache<std::pmr::polymorphic_allocator<int>>> &&
              !std::is_move_assignable_v<qcow2::basic_table_cache<std::pmr::polymorphic_allocator<int>>>);
// The stateless allocator takes no room.
static_assert(sizeof(table_cache) < sizeof(qcow2::basic_table_cache<counting_allocator<std::byte>>));

// ---------------------------------------------------------------------------------------

TEST_CASE("table_cache: hits, misses and evictions follow an LRU reference model", "[table_cache]") {
    // {tables, distinct offsets}: from the two-slot minimum to a universe that mostly fits.
    const auto [tables, distinct] =
        GENERATE(table<std::size_t, std::size_t>({{2, 5}, {3, 4}, {8, 20}, {16, 17}, {61, 200}, {100, 120}, {64, 64}}));
    CAPTURE(tables, distinct);
    constexpr std::size_t table_size = 48;
    auto cache = make_cache(tables, table_size);
    REQUIRE(cache.capacity() == tables);
    const auto offsets = universe(distinct);
    model_lru model(tables);
    std::map<std::uint64_t, std::uint64_t> generation; // offset -> load number of the cached copy
    std::uint64_t loads = 0, hits = 0, misses = 0;
    std::mt19937_64 rng(20240607 + tables);

    for (int step = 0; step < 20000; ++step) {
        CAPTURE(step);
        const std::uint64_t off = offsets[rng() % offsets.size()];
        const auto op = rng() % 100;
        if (op < 70 || op >= 97) { // get (or get_pinned)
            const bool pinned = op >= 97;
            int calls = 0;
            const bool hit = model.cached(off);
            const std::uint64_t gen = hit ? generation[off] : ++loads;
            auto r = pinned ? cache.get_pinned(off, recording_loader{off, gen, &calls})
                            : cache.get(off, recording_loader{off, gen, &calls});
            if (hit) {
                ++hits;
                model.use(off);
                REQUIRE(r);
                REQUIRE(calls == 0);
                if (pinned) model.pin(off);
            } else if (!model.make_room()) {
                REQUIRE_FALSE(r);
                REQUIRE(r.error() == errc::no_memory);
                REQUIRE(calls == 0);
                --loads;
            } else {
                ++misses;
                REQUIRE(r);
                REQUIRE(calls == 1);
                generation[off] = gen;
                if (pinned) model.insert_pinned(off);
                else model.insert(off);
            }
            if (r) {
                REQUIRE(r->size() == table_size);
                REQUIRE(holds(*r, off, generation[off]));
            }
        } else if (op < 80) { // find
            const bool hit = model.use(off);
            if (hit) ++hits;
            auto t = cache.find(off);
            REQUIRE(t.empty() == !hit);
            if (hit) REQUIRE(holds(t, off, generation[off]));
        } else if (op < 85) { // pin
            REQUIRE(cache.pin(off) == model.pin(off));
        } else if (op < 93) { // unpin one of the pinned tables (or a random offset)
            const auto p = model.pinned();
            const std::uint64_t u = p.empty() || rng() % 4 == 0 ? off : p[rng() % p.size()];
            cache.unpin(u);
            model.unpin(u);
        } else if (op < 96) {
            cache.invalidate(off);
            model.invalidate(off);
        } else if (rng() % 8 == 0) {
            cache.clear();
            model.clear();
        }
        REQUIRE(cache.size() == model.size());
        if (step % 97 == 0) {
            for (auto o : offsets) REQUIRE(cache.contains(o) == model.cached(o));
            for (auto o : offsets) REQUIRE(cache.is_pinned(o) == model.is_pinned(o));
        }
    }
    const auto s = cache.statistics();
    CHECK(s.hits == hits);
    CHECK(s.misses == misses);
    CHECK(s.evictions == model.evictions);
    CHECK(misses > 100);
    CHECK(hits > 100);
}

TEST_CASE("table_cache: evicts the least recently used table", "[table_cache]") {
    auto cache = make_cache(3);
    int calls = 0;
    for (std::uint64_t off : {0u, 1u, 2u})
        REQUIRE(cache.get(off * cluster, fill_with(static_cast<std::byte>(off), &calls)));
    CHECK(calls == 3);
    CHECK(cache.size() == 3);
    // Use 0 so that 1 is now the least recently used; find counts as a use too.
    REQUIRE(cache.get(0, never));
    CHECK(cache.find(2 * cluster).size() == 64);
    REQUIRE(cache.get(3 * cluster, fill_with(std::byte{3}, &calls)));
    CHECK_FALSE(cache.contains(1 * cluster));
    CHECK(cache.contains(0));
    CHECK(cache.contains(2 * cluster));
    CHECK(cache.contains(3 * cluster));
    // contains is not a use: 0 is now the least recently used and goes next.
    CHECK(cache.contains(0));
    REQUIRE(cache.get(4 * cluster, fill_with(std::byte{4}, &calls)));
    CHECK_FALSE(cache.contains(0));
    const auto s = cache.statistics();
    CHECK(s.hits == 2);
    CHECK(s.misses == 5);
    CHECK(s.evictions == 2);
    CHECK(calls == 5);
    auto t = cache.find(3 * cluster);
    REQUIRE(t.size() == 64);
    CHECK(std::all_of(t.begin(), t.end(), [](std::byte b) { return b == std::byte{3}; }));
}

TEST_CASE("table_cache: a failed load leaves no entry and the next get retries", "[table_cache]") {
    auto cache = make_cache(2);
    int calls = 0;

    SECTION("with a free slot") {
        auto r = cache.get(cluster, failing(&calls));
        REQUIRE_FALSE(r);
        CHECK(r.error() == errc::short_read);
        CHECK(r.error().message() == "reading a table");
        CHECK_FALSE(cache.contains(cluster));
        CHECK(cache.find(cluster).empty());
        CHECK(cache.size() == 0);
        CHECK(cache.statistics().misses == 1);
    }

    SECTION("when full: the victim stays evicted, the others stay") {
        REQUIRE(cache.get(0, fill_with(std::byte{1})));
        REQUIRE(cache.get(2 * cluster, fill_with(std::byte{2})));
        auto r = cache.get(cluster, failing(&calls));
        REQUIRE_FALSE(r);
        CHECK_FALSE(cache.contains(cluster));
        CHECK_FALSE(cache.contains(0)); // the least recently used made room
        CHECK(cache.contains(2 * cluster));
        CHECK(cache.size() == 1);
        CHECK(cache.statistics().evictions == 1);
    }

    SECTION("a loader that throws") {
        REQUIRE(cache.get(0, fill_with(std::byte{1})));
        CHECK_THROWS_AS(
            cache.get(cluster, [](std::span<std::byte>) -> qcow2::result<void> { throw std::runtime_error("loader"); }),
            std::runtime_error);
        CHECK_FALSE(cache.contains(cluster));
        CHECK(cache.size() == 1);
    }

    const int before = calls;
    auto r = cache.get(cluster, fill_with(std::byte{7}, &calls));
    REQUIRE(r);
    CHECK(calls == before + 1); // the loader ran again
    CHECK((*r)[0] == std::byte{7});
    CHECK(cache.contains(cluster));
    // And both slots are usable: the failed slot went back to the free list.
    REQUIRE(cache.get(5 * cluster, fill_with(std::byte{5})));
    CHECK(cache.contains(cluster));
    CHECK(cache.size() == 2);
}

TEST_CASE("table_cache: invalidate and clear", "[table_cache]") {
    auto cache = make_cache(4);
    int calls = 0;
    for (std::uint64_t i = 0; i < 4; ++i) REQUIRE(cache.get(i * cluster, fill_with(static_cast<std::byte>(i), &calls)));
    REQUIRE(calls == 4);

    cache.invalidate(2 * cluster);
    CHECK_FALSE(cache.contains(2 * cluster));
    CHECK(cache.size() == 3);
    cache.invalidate(2 * cluster); // not cached: nothing
    cache.invalidate(99 * cluster);
    CHECK(cache.size() == 3);
    // The freed slot takes the next load without evicting anyone.
    auto r = cache.get(2 * cluster, fill_with(std::byte{0x22}, &calls));
    REQUIRE(r);
    CHECK((*r)[0] == std::byte{0x22});
    CHECK(calls == 5);
    CHECK(cache.statistics().evictions == 0);
    for (std::uint64_t i = 0; i < 4; ++i) CHECK(cache.contains(i * cluster));

    // A pinned table can be invalidated too; its pins go with it.
    REQUIRE(cache.pin(3 * cluster));
    cache.invalidate(3 * cluster);
    CHECK_FALSE(cache.is_pinned(3 * cluster));
    REQUIRE(cache.get(3 * cluster, fill_with(std::byte{3}, &calls)));
    CHECK_FALSE(cache.is_pinned(3 * cluster));

    const auto before = cache.statistics();
    const auto mem = cache.memory_bytes();
    REQUIRE(cache.pin(0));
    cache.clear();
    CHECK(cache.size() == 0);
    for (std::uint64_t i = 0; i < 4; ++i) CHECK_FALSE(cache.contains(i * cluster));
    CHECK_FALSE(cache.is_pinned(0));
    CHECK(cache.memory_bytes() == mem);
    CHECK(cache.statistics().hits == before.hits); // statistics survive clear
    CHECK(cache.statistics().misses == before.misses);
    // Everything reloads, and all four slots are free again (no evictions).
    calls = 0;
    for (std::uint64_t i = 0; i < 4; ++i)
        REQUIRE(cache.get(i * cluster, fill_with(static_cast<std::byte>(i + 10), &calls)));
    CHECK(calls == 4);
    CHECK(cache.statistics().evictions == before.evictions);
    CHECK(cache.find(cluster)[0] == std::byte{11});
}

TEST_CASE("table_cache: pinned tables are never evicted", "[table_cache]") {
    auto cache = make_cache(2);
    int calls = 0;
    REQUIRE(cache.get(0, fill_with(std::byte{0xa0})));
    CHECK_FALSE(cache.pin(cluster)); // not cached: nothing to pin
    CHECK_FALSE(cache.is_pinned(cluster));
    REQUIRE(cache.pin(0));
    CHECK(cache.is_pinned(0));
    const auto a = cache.find(0);

    // The other slot takes every other table in turn; the pinned one stays.
    for (std::uint64_t i = 1; i <= 10; ++i) {
        auto r = cache.get(i * cluster, fill_with(static_cast<std::byte>(i), &calls));
        REQUIRE(r);
        CHECK(cache.contains(0));
    }
    CHECK(calls == 10);
    CHECK(cache.find(0).data() == a.data());
    CHECK(a[0] == std::byte{0xa0});

    SECTION("every slot pinned: no_memory, and the loader does not run") {
        REQUIRE(cache.pin(10 * cluster));
        calls = 0;
        auto r = cache.get(11 * cluster, fill_with(std::byte{11}, &calls));
        REQUIRE_FALSE(r);
        CHECK(r.error() == errc::no_memory);
        CHECK(calls == 0);
        CHECK(cache.statistics().misses == 11); // refused before loading: not a miss
        // Hits on pinned tables still work.
        REQUIRE(cache.get(0, never));
        REQUIRE(cache.get(10 * cluster, never));
        // Pins count: two pins need two unpins.
        REQUIRE(cache.pin(10 * cluster));
        cache.unpin(10 * cluster);
        CHECK_FALSE(cache.get(11 * cluster, fill_with(std::byte{11})));
        cache.unpin(10 * cluster);
        CHECK_FALSE(cache.is_pinned(10 * cluster));
        auto ok = cache.get(11 * cluster, fill_with(std::byte{11}, &calls));
        REQUIRE(ok);
        CHECK(calls == 1);
        CHECK_FALSE(cache.contains(10 * cluster));
        CHECK(cache.contains(0));
    }

    SECTION("unpinning makes the table the most recently used") {
        cache.unpin(0);
        CHECK_FALSE(cache.is_pinned(0));
        cache.unpin(0);                                             // not pinned any more: nothing
        cache.unpin(77 * cluster);                                  // not cached: nothing
        REQUIRE(cache.get(20 * cluster, fill_with(std::byte{20}))); // evicts 10, not 0
        CHECK(cache.contains(0));
        CHECK_FALSE(cache.contains(10 * cluster));
        REQUIRE(cache.get(21 * cluster, fill_with(std::byte{21}))); // now 0 is the oldest
        CHECK_FALSE(cache.contains(0));
    }

    SECTION("get_pinned pins on a hit and on a miss, and not on a failure") {
        cache.unpin(0);
        auto r = cache.get_pinned(30 * cluster, fill_with(std::byte{30}));
        REQUIRE(r);
        CHECK(cache.is_pinned(30 * cluster));
        CHECK_FALSE(cache.get_pinned(31 * cluster, failing()));
        CHECK_FALSE(cache.contains(31 * cluster));
        REQUIRE(cache.get_pinned(0, fill_with(std::byte{0}))); // 0 may have been the victim above
        CHECK(cache.is_pinned(0));
        CHECK_FALSE(cache.get(32 * cluster, fill_with(std::byte{32})));
        cache.unpin(30 * cluster);
        REQUIRE(cache.get(32 * cluster, fill_with(std::byte{32})));
        CHECK_FALSE(cache.contains(30 * cluster));
        CHECK(cache.is_pinned(0));
    }
}

TEST_CASE("table_cache: capacity is whole tables, at least two", "[table_cache]") {
    struct shape {
        std::size_t capacity_bytes, table_size, tables;
    };
    const auto s = GENERATE(values<shape>({{0, 4096, 2},
                                           {1, 4096, 2},
                                           {4095, 4096, 2},
                                           {4096, 4096, 2},
                                           {2 * 4096, 4096, 2},
                                           {3 * 4096, 4096, 3},
                                           {3 * 4096 + 4095, 4096, 3},
                                           {1, 1, 2},
                                           {1000, 1, 1000},
                                           {32u << 20, cluster, 512},
                                           {1u << 20, 2u << 20, 2}}));
    CAPTURE(s.capacity_bytes, s.table_size);
    auto r = table_cache::make(s.capacity_bytes, s.table_size);
    REQUIRE(r);
    CHECK(r->capacity() == s.tables);
    CHECK(r->table_size() == s.table_size);
    CHECK(r->size() == 0);
    CHECK(r->memory_bytes() >= s.tables * s.table_size);
    auto t = r->get(123 * s.table_size, fill_with(std::byte{1}));
    REQUIRE(t);
    CHECK(t->size() == s.table_size);
}

TEST_CASE("table_cache: make reports bad arguments and allocation failures", "[table_cache]") {
    constexpr auto max = std::numeric_limits<std::size_t>::max();

    SECTION("table size zero") {
        auto r = table_cache::make(1 << 20, 0);
        REQUIRE_FALSE(r);
        CHECK(r.error() == errc::invalid_argument);
        CHECK(r.error().message().find("table size") != std::string::npos);
    }
    SECTION("the two-table minimum overflows") {
        auto r = table_cache::make(0, max / 2 + 1);
        REQUIRE_FALSE(r);
        CHECK(r.error() == errc::invalid_argument);
        auto r2 = table_cache::make(max, max);
        REQUIRE_FALSE(r2);
        CHECK(r2.error() == errc::invalid_argument);
    }
    SECTION("too many tables") {
        auto r = table_cache::make(max, 1);
        REQUIRE_FALSE(r);
        CHECK(r.error() == errc::invalid_argument);
        auto r2 = table_cache::make((table_cache::max_tables + 1) * 512, 512);
        REQUIRE_FALSE(r2);
        CHECK(r2.error() == errc::invalid_argument);
    }
    SECTION("the allocator fails: no_memory, nothing leaks") {
        for (std::size_t n = 1; n <= 3; ++n) {
            CAPTURE(n);
            allocation_stats st;
            st.fail_nth(n);
            auto r =
                qcow2::basic_table_cache<counting_allocator<int>>::make(16 * 4096, 4096, counting_allocator<int>(st));
            REQUIRE_FALSE(r);
            CHECK(r.error() == errc::no_memory);
            CHECK(st.outstanding() == 0);
            CHECK(st.current_bytes == 0);
            CHECK(st.attempts == n);
        }
        allocation_stats st;
        st.fail_nth(4); // past the three blocks: succeeds
        auto r = qcow2::basic_table_cache<counting_allocator<int>>::make(16 * 4096, 4096, counting_allocator<int>(st));
        REQUIRE(r);
        CHECK(st.allocations == 3);
    }
}

TEST_CASE("table_cache: allocates once, up front, and never on lookups", "[table_cache]") {
    allocation_stats st;
    using cache_type = qcow2::basic_table_cache<counting_allocator<std::byte>>;
    constexpr std::size_t table_size = 4096;
    {
        auto made = cache_type::make(100 * table_size + 17, table_size, counting_allocator<std::byte>(st));
        REQUIRE(made);
        cache_type cache(std::move(*made));
        REQUIRE(cache.capacity() == 100);
        const std::size_t allocations = st.allocations;
        const std::size_t attempts = st.attempts;
        CHECK(allocations == 3);
        CHECK(st.current_bytes == cache.memory_bytes());
        // The tables plus an index of well under 100 bytes per table (24-byte records, 256 16-byte buckets).
        CHECK(cache.memory_bytes() >= 100 * table_size);
        CHECK(cache.memory_bytes() - 100 * table_size <= 100 * 24 + 256 * 16);
        CHECK(st.peak_bytes == cache.memory_bytes());

        std::mt19937_64 rng(42);
        int calls = 0;
        std::size_t ok = 0;
        for (int i = 0; i < 100000; ++i) {
            const std::uint64_t off = (rng() % 150) * cluster;
            switch (rng() % 10) {
            case 0: cache.invalidate(off); break;
            case 1: (void)cache.find(off); break;
            case 2:
                if (cache.pin(off)) cache.unpin(off);
                break;
            case 3:
                if (rng() % 64 == 0) cache.clear();
                break;
            case 4: {
                auto r = cache.get(off, failing(&calls));
                ok += r.has_value();
                break;
            }
            default: {
                auto r = cache.get(off, fill_with(std::byte{1}, &calls));
                REQUIRE(r);
                ++ok;
            }
            }
        }
        CHECK(ok > 50000);
        CHECK(st.allocations == allocations);
        CHECK(st.attempts == attempts);
        CHECK(st.deallocations == 0);
        CHECK(st.peak_bytes == cache.memory_bytes());
        const auto s = cache.statistics();
        CHECK(s.hits > 0);
        CHECK(s.misses > 0);
        CHECK(s.evictions > 0);

        // Moving hands the memory over without allocating; the source is left with no slots.
        cache_type other(std::move(cache));
        CHECK(st.allocations == allocations);
        CHECK(cache.capacity() == 0);
        CHECK(cache.memory_bytes() == 0);
        CHECK(cache.find(0).empty());
        auto r = cache.get(0, fill_with(std::byte{1}));
        REQUIRE_FALSE(r);
        CHECK(r.error() == errc::no_memory);
        CHECK(other.capacity() == 100);
        CHECK(other.statistics().hits == s.hits);
        REQUIRE(other.get(7 * cluster, fill_with(std::byte{7})));

        // Move assignment frees the target's blocks and takes the source's.
        auto made2 = cache_type::make(2 * table_size, table_size, counting_allocator<std::byte>(st));
        REQUIRE(made2);
        CHECK(st.allocations == allocations + 3);
        other = std::move(*made2);
        CHECK(st.deallocations == 3);
        CHECK(other.capacity() == 2);
        CHECK(st.current_bytes == other.memory_bytes());
    }
    CHECK(st.outstanding() == 0);
    CHECK(st.current_bytes == 0);
}

TEST_CASE("table_cache: a default-constructed cache has no slots", "[table_cache]") {
    table_cache cache;
    CHECK(cache.capacity() == 0);
    CHECK(cache.memory_bytes() == 0);
    CHECK(cache.find(0).empty());
    CHECK_FALSE(cache.contains(0));
    CHECK_FALSE(cache.pin(0));
    cache.unpin(0);
    cache.invalidate(0);
    cache.clear();
    auto r = cache.get(0, fill_with(std::byte{1}));
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::no_memory);
    cache = make_cache(2);
    CHECK(cache.capacity() == 2);
}

TEST_CASE("table_cache: ns per hit lookup", "[.bench]") {
    // 512 tables of 64 KiB (32 MiB, QEMU's default L2 cache for big images), all resident;
    // random hits over all of them, so the index does not sit in L1.
    constexpr std::size_t tables = 512;
    auto made = table_cache::make(tables * cluster, cluster);
    REQUIRE(made);
    auto& cache = *made;
    for (std::size_t i = 0; i < tables; ++i)
        REQUIRE(cache.get(std::uint64_t{i} * cluster + (std::uint64_t{1} << 33), fill_with(std::byte{1})));
    std::vector<std::uint64_t> keys(1 << 16);
    std::mt19937_64 rng(7);
    for (auto& k : keys) k = (rng() % tables) * cluster + (std::uint64_t{1} << 33);

    constexpr int rounds = 64;
    std::uintptr_t sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int round = 0; round < rounds; ++round)
        for (auto k : keys) {
            auto r = cache.get(k, never);
            sink += reinterpret_cast<std::uintptr_t>(r->data());
        }
    const auto t1 = std::chrono::steady_clock::now();
    for (int round = 0; round < rounds; ++round)
        for (auto k : keys) sink += reinterpret_cast<std::uintptr_t>(cache.find(k).data());
    const auto t2 = std::chrono::steady_clock::now();
    const double n = static_cast<double>(rounds) * static_cast<double>(keys.size());
    const double get_ns =
        static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()) / n;
    const double find_ns =
        static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(t2 - t1).count()) / n;
    WARN("table_cache hit: get " << get_ns << " ns, find " << find_ns << " ns (" << tables << " tables, sink "
                                 << (sink & 1) << ")");
    CHECK(cache.statistics().misses == tables);
}

TEST_CASE("table_cache: with a polymorphic allocator", "[table_cache]") {
    // Everything comes from the arena: the cache works inside a fixed buffer.
    std::vector<std::byte> arena(64 * 1024);
    std::pmr::monotonic_buffer_resource pool(arena.data(), arena.size(), std::pmr::null_memory_resource());
    using pmr_cache = qcow2::basic_table_cache<std::pmr::polymorphic_allocator<std::byte>>;
    auto made = pmr_cache::make(8 * 4096, 4096, &pool);
    REQUIRE(made);
    pmr_cache cache(std::move(*made));
    CHECK(cache.get_allocator().resource() == &pool);
    CHECK(cache.capacity() == 8);
    CHECK(cache.memory_bytes() <= arena.size());
    for (std::uint64_t i = 0; i < 20; ++i) REQUIRE(cache.get(i * cluster, fill_with(static_cast<std::byte>(i))));
    CHECK(cache.find(19 * cluster)[4095] == std::byte{19});
    // A budget beyond the arena: the resource throws, make reports no_memory.
    auto big = pmr_cache::make(1 << 20, 4096, &pool);
    REQUIRE_FALSE(big);
    CHECK(big.error() == errc::no_memory);
}
