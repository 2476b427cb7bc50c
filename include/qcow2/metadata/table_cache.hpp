// SPDX-License-Identifier: MIT
/// @file
/// @brief `qcow2::basic_table_cache`: a bounded LRU cache of metadata tables (L2 tables, refcount blocks).
///
/// Every metadata lookup of a guest read or write goes through this cache, so its hit
/// path is a hash probe and four index updates: no allocation, no I/O, no search.
/// Its memory is fixed when it is made and does not grow with the image.
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/error.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>

namespace qcow2 {

/// What `basic_table_cache::get` calls on a miss: `load(std::span<std::byte> out)` fills
/// all of `out` with the table and returns a `qcow2::result<void>` (convertible to it).
template <class L>
concept table_loader = std::invocable<L&, std::span<std::byte>> &&
    std::convertible_to<std::invoke_result_t<L&, std::span<std::byte>>, result<void>>;

/**
 * @brief A bounded LRU cache of fixed-size metadata tables, keyed by host offset.
 *
 * Holds up to `capacity()` tables of `table_size()` bytes each (one cluster for a
 * refcount block or a standard L2 table). A lookup that misses evicts the least
 * recently used table and asks the caller's loader to fill the freed slot.
 *
 * @par Memory
 * Everything is allocated once, by `make`, through the (rebound) allocator, in three
 * blocks: the tables (`capacity() * table_size()` bytes, untouched until loaded), one
 * 24-byte record per table (LRU links, pin count, offset) and an open-addressing hash
 * index of 16-byte buckets (a power of two, at least twice the table count, so the
 * load factor stays at or under 1/2). `memory_bytes()` is the sum. Nothing else is ever
 * allocated: not on a hit, a miss, an eviction, `invalidate` or `clear`. Memory use
 * therefore depends only on the budget given to `make`, never on the size of the image.
 *
 * @par Write-through
 * The cache never writes anything. A caller that modifies a table writes it to the
 * backend itself, then updates the cached copy (through the span from `get` or `find`)
 * or calls `invalidate`. There is no dirty state and nothing to flush, so the order in
 * which metadata reaches the disk (what survives a crash) stays entirely with the caller.
 *
 * @par Pinning
 * A pinned table is never evicted, so its span stays valid. Pins are counted: each
 * `pin` (or `get_pinned`) needs one `unpin`. While pinned a table sits outside the LRU
 * order; its last `unpin` makes it the most recently used table. With every slot pinned,
 * a miss fails with `errc::no_memory`. The cache always has at least two slots, so a
 * caller can hold one table pinned while it loads another.
 *
 * @par Complexity
 * `get`, `get_pinned`, `find`, `contains`, `invalidate`, `pin` and `unpin` are O(1) on
 * average (linear probing, deletion by backward shift, so no tombstones pile up);
 * `clear` and `make` are O(capacity()).
 *
 * @par Thread safety
 * That of a standard container: one thread at a time, even for `find` (it updates the
 * LRU order and the statistics).
 *
 * @tparam Allocator an allocator of any value type; it is rebound to `std::byte` and to
 *         the two index record types. Stored with `[[no_unique_address]]`, so a stateless
 *         allocator costs nothing.
 */
template <class Allocator = std::allocator<std::byte>>
class basic_table_cache {
public:
    /// The allocator, rebound to `std::byte`.
    using allocator_type = typename std::allocator_traits<Allocator>::template rebind_alloc<std::byte>;

    /// Counters since the cache was made (kept by `clear`).
    struct stats {
        std::uint64_t hits = 0;      ///< lookups (`get`, `get_pinned`, `find`) that found their table
        std::uint64_t misses = 0;    ///< `get` / `get_pinned` calls that had to load, failed loads included
        std::uint64_t evictions = 0; ///< tables dropped to make room for a load (not `invalidate` or `clear`)
    };

    /// The most tables a cache can hold (slot numbers are 32-bit).
    static constexpr std::size_t max_tables = std::size_t{1} << 30;

    /**
     * @brief Makes a cache of `max(2, capacity_bytes / table_size)` tables of `table_size` bytes.
     *
     * This is the only way to make a non-empty cache: it allocates all the memory the
     * cache will ever use (see the class notes) and reports what a constructor could not.
     *
     * @param capacity_bytes the memory budget for table contents; rounded down to whole
     *        tables, and raised to two tables when smaller (so one can stay pinned while
     *        another loads). The index comes on top: 56 to 88 bytes per table.
     * @param table_size bytes per table: one cluster (one L2 table, one refcount block).
     * @param alloc the allocator all three blocks come from.
     * @return the cache, or an error.
     * @par Errors
     * - `errc::invalid_argument`: `table_size` is zero; more than `max_tables` tables;
     *   the total size is not representable (`2 * table_size` overflows, say) or exceeds
     *   the allocator's `max_size()`.
     * - `errc::no_memory`: the allocator failed (reported only when exceptions are
     *   enabled; without them a failing allocator ends the program as usual).
     * @par Exception safety
     * Does not throw (allocation failures become `errc::no_memory`, and nothing leaks),
     * except `std::bad_alloc` from building an error's message.
     */
    static result<basic_table_cache> make(std::size_t capacity_bytes, std::size_t table_size,
                                          const Allocator& alloc = Allocator()) {
        if (table_size == 0) return error(errc::invalid_argument, "table cache: the table size is zero");
        const std::size_t slots = std::max<std::size_t>(2, capacity_bytes / table_size);
        if (slots > max_tables)
            return error(errc::invalid_argument, "table cache: the budget asks for more than 2^30 tables");
        // slots <= 2^30, so 2 * slots fits in a size_t of 32 bits or more.
        const std::size_t buckets = std::bit_ceil(2 * slots);
        allocator_type bytes_alloc(alloc);
        slot_alloc slots_alloc(bytes_alloc);
        bucket_alloc buckets_alloc(bytes_alloc);
        constexpr std::size_t size_max = std::numeric_limits<std::size_t>::max();
        // The index is under 2^37 bytes: computed in 64 bits, it cannot overflow even where size_t has 32.
        const std::uint64_t index_size =
            std::uint64_t{slots} * sizeof(slot_info) + std::uint64_t{buckets} * sizeof(bucket);
        if (table_size > size_max / slots ||
            slots * table_size > std::allocator_traits<allocator_type>::max_size(bytes_alloc) ||
            slots > std::allocator_traits<slot_alloc>::max_size(slots_alloc) ||
            buckets > std::allocator_traits<bucket_alloc>::max_size(buckets_alloc) ||
            index_size > size_max - slots * table_size)
            return error(errc::invalid_argument, "table cache: the table size times the table count overflows");

        basic_table_cache c(bytes_alloc);
        c.table_size_ = table_size;
        c.slot_count_ = static_cast<index>(slots);
        c.mask_ = buckets - 1;
        c.shift_ = 64 - std::countr_zero(static_cast<std::uint64_t>(buckets));
#if QCOW2_HAS_EXCEPTIONS
        try {
#endif
            // The destructor of `c` frees whichever blocks were allocated when a later one fails.
            c.tables_ = std::allocator_traits<allocator_type>::allocate(c.alloc_, slots * table_size);
            c.slots_ = std::allocator_traits<slot_alloc>::allocate(slots_alloc, slots);
            c.buckets_ = std::allocator_traits<bucket_alloc>::allocate(buckets_alloc, buckets);
#if QCOW2_HAS_EXCEPTIONS
        } catch (...) {
            return error(errc::no_memory, "table cache: allocating the tables and their index");
        }
#endif
        std::uninitialized_fill_n(c.slots_, slots, slot_info{});
        std::uninitialized_fill_n(c.buckets_, buckets, bucket{});
        c.reset_free_list();
        return c;
    }

    /// An empty cache with no slots: every `get` fails with `errc::no_memory`. Allocates nothing.
    basic_table_cache() noexcept(std::is_nothrow_default_constructible_v<allocator_type>) : alloc_() {}

    /// An empty cache with no slots that remembers `alloc`. Allocates nothing.
    explicit basic_table_cache(const allocator_type& alloc) noexcept : alloc_(alloc) {}

    /// Not copyable: a cache is a fixed budget of memory, not a value.
    basic_table_cache(const basic_table_cache&) = delete;
    /// Not copyable.
    basic_table_cache& operator=(const basic_table_cache&) = delete;

    /// Takes the tables and the index (and a copy of the allocator); `o` is left empty, with no slots.
    basic_table_cache(basic_table_cache&& o) noexcept : alloc_(o.alloc_) { steal(o); }

    /**
     * @brief Frees this cache's memory and takes `o`'s; `o` is left empty, with no slots.
     *
     * Only for allocators that propagate on move assignment or are always equal: other
     * allocators (`std::pmr::polymorphic_allocator`) could not free what the other one
     * allocated, so a cache using them is move-constructible only.
     */
    basic_table_cache& operator=(basic_table_cache&& o) noexcept
        requires(std::allocator_traits<allocator_type>::propagate_on_container_move_assignment::value ||
                 std::allocator_traits<allocator_type>::is_always_equal::value) {
        if (this == &o) return *this;
        release();
        if constexpr (std::allocator_traits<allocator_type>::propagate_on_container_move_assignment::value)
            alloc_ = o.alloc_;
        steal(o);
        return *this;
    }

    /// Frees the memory. Spans into the cache become invalid.
    ~basic_table_cache() { release(); }

    /**
     * @brief The table stored at host `offset`, loaded through `load` on a miss.
     *
     * On a hit the table becomes the most recently used. On a miss a slot is taken: a
     * free one, else the least recently used unpinned table is evicted; then
     * `load(std::span<std::byte> out)` is called once with the slot (exactly
     * `table_size()` bytes, holding stale contents) and must fill all of it, returning
     * a `qcow2::result<void>`. If the load fails (or throws), the slot is returned to
     * the free list: no entry for `offset` is left behind, the next `get` calls the
     * loader again, and the evicted table stays evicted.
     *
     * The span stays valid until the next call that can evict (`get` or `get_pinned`
     * with another offset), `invalidate` of this offset, `clear`, or the cache's move or
     * destruction; `pin` the table to keep it longer. The loader must not call back into
     * the cache.
     *
     * @param offset host offset of the table (any value; it is only a key).
     * @param load invoked as `load(std::span<std::byte>)`, only on a miss.
     * @return the cached table (`table_size()` bytes), or an error.
     * @par Errors
     * Whatever `load` returns; `errc::no_memory` when every slot is pinned (the loader
     * is not called then), or the cache was default-constructed or moved from.
     * @par Exception safety
     * Allocates nothing; an exception thrown by `load` propagates and leaves the cache
     * consistent, without an entry for `offset` (basic guarantee: a table may have been
     * evicted).
     * @par Complexity
     * O(1) on average, plus the loader.
     * @par I/O
     * None of its own; the loader's on a miss.
     */
    template <table_loader Loader>
    result<std::span<std::byte>> get(std::uint64_t offset, Loader&& load) {
        return lookup_or_load(offset, load, false);
    }

    /**
     * @brief `get`, and on success pins the table (one more pin; `unpin` once when done).
     *
     * Errors, exception safety and complexity are those of `get`; on failure nothing is pinned.
     */
    template <table_loader Loader>
    result<std::span<std::byte>> get_pinned(std::uint64_t offset, Loader&& load) {
        return lookup_or_load(offset, load, true);
    }

    /// The table at `offset` if cached (it counts as a use and a hit), else an empty span. Never loads.
    std::span<std::byte> find(std::uint64_t offset) noexcept {
        const index s = lookup(offset);
        if (s == npos) return {};
        ++stats_.hits;
        touch(s);
        return table(s);
    }

    /// True when the table at `offset` is cached. Not a use: changes neither the LRU order nor the statistics.
    bool contains(std::uint64_t offset) const noexcept { return lookup(offset) != npos; }

    /**
     * @brief Forgets the table at `offset` (after it was freed, or rewritten by other means).
     *
     * Does nothing when it is not cached. Its pins are dropped with it: do not
     * invalidate a table someone still holds, since its slot can be reused at once.
     */
    void invalidate(std::uint64_t offset) noexcept {
        if (slot_count_ == 0) return;
        const std::size_t b = find_bucket(offset);
        if (buckets_[b].slot == npos) return;
        const index s = buckets_[b].slot;
        erase_bucket(b);
        if (slots_[s].pins == 0) unlink(s);
        push_free(s);
        --used_;
    }

    /// Forgets every table, pinned ones included. Keeps the memory and the statistics. O(capacity()).
    void clear() noexcept {
        if (slot_count_ == 0) return;
        std::fill_n(buckets_, mask_ + 1, bucket{});
        std::fill_n(slots_, slot_count_, slot_info{});
        reset_free_list();
    }

    /**
     * @brief Pins the table at `offset` if it is cached: it will not be evicted until unpinned.
     * @return true when the table is cached (and now holds one more pin); false, doing
     *         nothing, when it is not cached (or already holds 2^32 - 1 pins).
     */
    bool pin(std::uint64_t offset) noexcept {
        const index s = lookup(offset);
        if (s == npos || slots_[s].pins == std::numeric_limits<std::uint32_t>::max()) return false;
        add_pin(s);
        return true;
    }

    /// Drops one pin of the table at `offset`; the last one makes it the most recently used.
    /// Does nothing when it is not cached or not pinned.
    void unpin(std::uint64_t offset) noexcept {
        const index s = lookup(offset);
        if (s == npos || slots_[s].pins == 0) return;
        if (--slots_[s].pins == 0) push_front(s);
    }

    /// True when the table at `offset` is cached and pinned.
    bool is_pinned(std::uint64_t offset) const noexcept {
        const index s = lookup(offset);
        return s != npos && slots_[s].pins != 0;
    }

    /// How many tables the cache holds at most (0 only for an empty, default-constructed or moved-from cache).
    std::size_t capacity() const noexcept { return slot_count_; }
    /// Bytes per table.
    std::size_t table_size() const noexcept { return table_size_; }
    /// How many tables are cached now.
    std::size_t size() const noexcept { return used_; }
    /// Bytes allocated (tables plus index), all of it by `make`; constant for the cache's life.
    std::size_t memory_bytes() const noexcept {
        return slot_count_ == 0 ? 0 : slot_count_ * table_size_ + index_bytes(slot_count_, mask_ + 1);
    }
    /// Hits, misses and evictions so far.
    stats statistics() const noexcept { return stats_; }
    /// The allocator.
    allocator_type get_allocator() const noexcept { return alloc_; }

private:
    using index = std::uint32_t;
    static constexpr index npos = std::numeric_limits<index>::max();

    /// One table slot: its key, its LRU (or free-list) links and its pins.
    struct slot_info {
        std::uint64_t offset = 0;
        index prev = npos; // toward the most recently used
        index next = npos; // toward the least recently used; the free list's link
        std::uint32_t pins = 0;
    };
    /// One hash bucket: the key (kept here so a probe reads one cache line) and its slot, or npos.
    struct bucket {
        std::uint64_t offset = 0;
        index slot = npos;
    };
    using slot_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<slot_info>;
    using bucket_alloc = typename std::allocator_traits<Allocator>::template rebind_alloc<bucket>;

    static_assert(std::is_same_v<typename std::allocator_traits<allocator_type>::pointer, std::byte*> &&
                      std::is_same_v<typename std::allocator_traits<slot_alloc>::pointer, slot_info*> &&
                      std::is_same_v<typename std::allocator_traits<bucket_alloc>::pointer, bucket*>,
                  "basic_table_cache needs an allocator whose pointer type is a plain pointer");

    static constexpr std::size_t index_bytes(std::size_t slots, std::size_t buckets) noexcept {
        return slots * sizeof(slot_info) + buckets * sizeof(bucket);
    }

    template <class Loader>
    result<std::span<std::byte>> lookup_or_load(std::uint64_t offset, Loader& load, bool pinned) {
        if (slot_count_ != 0) {
            const std::size_t b = find_bucket(offset);
            if (const index s = buckets_[b].slot; s != npos) {
                ++stats_.hits;
                if (pinned) {
                    if (slots_[s].pins == std::numeric_limits<std::uint32_t>::max())
                        return error(errc::no_memory, "table cache: too many pins on one table");
                    add_pin(s);
                } else {
                    touch(s);
                }
                return table(s);
            }
        }
        if (free_ == npos && tail_ == npos)
            return error(errc::no_memory, slot_count_ == 0 ? "table cache: the cache has no slots"
                                                           : "table cache: every table is pinned");
        ++stats_.misses;
        index s = free_;
        if (s != npos) {
            free_ = slots_[s].next;
        } else {
            s = tail_;
            unlink(s);
            erase_bucket(find_bucket(slots_[s].offset));
            --used_;
            ++stats_.evictions;
        }
        // Until the load succeeds the slot belongs to no list: give it back on failure or exception.
        // The loader cannot call back into the cache, so this empty bucket stays empty meanwhile.
        const std::size_t b = find_bucket(offset);
        struct give_back {
            basic_table_cache* cache;
            index slot_no;
            ~give_back() {
                if (cache) cache->push_free(slot_no);
            }
        } guard{this, s};
        result<void> r = std::invoke(load, table(s));
        if (!r) return std::move(r).error();
        guard.cache = nullptr;
        buckets_[b] = bucket{offset, s};
        slots_[s] = slot_info{offset, npos, npos, 0};
        ++used_;
        if (pinned) slots_[s].pins = 1;
        else push_front(s);
        return table(s);
    }

    std::span<std::byte> table(index s) const noexcept {
        return {tables_ + static_cast<std::size_t>(s) * table_size_, table_size_};
    }

    /// Home bucket: Fibonacci hashing (multiply, keep the high bits), good for aligned offsets.
    std::size_t home(std::uint64_t offset) const noexcept {
        return static_cast<std::size_t>((offset * 0x9E3779B97F4A7C15ull) >> shift_);
    }

    /// The bucket holding `offset`, or the empty bucket where it would go. Needs slot_count_ != 0.
    std::size_t find_bucket(std::uint64_t offset) const noexcept {
        std::size_t i = home(offset);
        while (buckets_[i].slot != npos && buckets_[i].offset != offset) i = (i + 1) & mask_;
        return i;
    }

    index lookup(std::uint64_t offset) const noexcept {
        if (slot_count_ == 0) return npos;
        return buckets_[find_bucket(offset)].slot;
    }

    /// Empties bucket `i`, shifting later members of its probe run back so every key stays reachable.
    void erase_bucket(std::size_t i) noexcept {
        std::size_t j = i;
        for (;;) {
            j = (j + 1) & mask_;
            if (buckets_[j].slot == npos) break;
            // The entry at j may move to the hole at i unless its home lies cyclically in (i, j].
            const std::size_t k = home(buckets_[j].offset);
            const bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
            if (!stays) {
                buckets_[i] = buckets_[j];
                i = j;
            }
        }
        buckets_[i] = bucket{};
    }

    void unlink(index s) noexcept {
        slot_info& e = slots_[s];
        if (e.prev != npos) slots_[e.prev].next = e.next;
        else head_ = e.next;
        if (e.next != npos) slots_[e.next].prev = e.prev;
        else tail_ = e.prev;
        e.prev = e.next = npos;
    }

    void push_front(index s) noexcept {
        slot_info& e = slots_[s];
        e.prev = npos;
        e.next = head_;
        if (head_ != npos) slots_[head_].prev = s;
        else tail_ = s;
        head_ = s;
    }

    /// Makes an unpinned table the most recently used; pinned tables are outside the LRU list.
    void touch(index s) noexcept {
        if (slots_[s].pins != 0 || head_ == s) return;
        unlink(s);
        push_front(s);
    }

    void add_pin(index s) noexcept {
        if (slots_[s].pins++ == 0) unlink(s);
    }

    /// Puts a slot that is on no list (and in no bucket) on the free list.
    void push_free(index s) noexcept {
        slots_[s] = slot_info{};
        slots_[s].next = free_;
        free_ = s;
    }

    /// Every slot free, in order; the LRU list empty.
    void reset_free_list() noexcept {
        for (index s = 0; s < slot_count_; ++s) slots_[s].next = s + 1 < slot_count_ ? s + 1 : npos;
        free_ = slot_count_ != 0 ? 0 : npos;
        head_ = tail_ = npos;
        used_ = 0;
    }

    void release() noexcept {
        if (tables_) std::allocator_traits<allocator_type>::deallocate(alloc_, tables_, slot_count_ * table_size_);
        if (slots_) {
            slot_alloc a(alloc_);
            std::allocator_traits<slot_alloc>::deallocate(a, slots_, slot_count_);
        }
        if (buckets_) {
            bucket_alloc a(alloc_);
            std::allocator_traits<bucket_alloc>::deallocate(a, buckets_, mask_ + 1);
        }
        tables_ = nullptr;
        slots_ = nullptr;
        buckets_ = nullptr;
        slot_count_ = 0;
    }

    /// Takes everything but the allocator from `o`, leaving it empty. `*this` holds no memory.
    void steal(basic_table_cache& o) noexcept {
        tables_ = std::exchange(o.tables_, nullptr);
        slots_ = std::exchange(o.slots_, nullptr);
        buckets_ = std::exchange(o.buckets_, nullptr);
        table_size_ = std::exchange(o.table_size_, 0);
        slot_count_ = std::exchange(o.slot_count_, 0);
        used_ = std::exchange(o.used_, 0);
        mask_ = std::exchange(o.mask_, 0);
        shift_ = std::exchange(o.shift_, 63);
        head_ = std::exchange(o.head_, npos);
        tail_ = std::exchange(o.tail_, npos);
        free_ = std::exchange(o.free_, npos);
        stats_ = std::exchange(o.stats_, stats{});
    }

    [[no_unique_address]] allocator_type alloc_;
    std::byte* tables_ = nullptr; // slot_count_ * table_size_ bytes
    slot_info* slots_ = nullptr;  // slot_count_ records
    bucket* buckets_ = nullptr;   // mask_ + 1 buckets (a power of two >= 2 * slot_count_)
    std::size_t table_size_ = 0;
    index slot_count_ = 0;
    index used_ = 0;
    std::size_t mask_ = 0;
    int shift_ = 63;    // 64 - log2(bucket count)
    index head_ = npos; // most recently used unpinned table
    index tail_ = npos; // least recently used unpinned table: the next victim
    index free_ = npos; // first free slot
    stats stats_;
};

/// The table cache with the standard allocator.
using table_cache = basic_table_cache<>;

} // namespace qcow2
