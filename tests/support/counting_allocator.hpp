// SPDX-License-Identifier: MIT
/// @file
/// @brief `counting_allocator`: a standard allocator that counts, and fails on request.
#pragma once

#include "qcow2/config.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <limits>
#include <new>
#include <type_traits>

namespace qcow2::test {

/// What a family of `counting_allocator`s (all rebinds of one) has done; shared through a pointer.
struct allocation_stats {
    std::size_t attempts = 0;      ///< calls to `allocate`, failed ones included
    std::size_t allocations = 0;   ///< successful allocations
    std::size_t deallocations = 0; ///< deallocations
    std::size_t current_bytes = 0; ///< bytes allocated and not yet freed
    std::size_t peak_bytes = 0;    ///< largest `current_bytes` seen
    std::size_t total_bytes = 0;   ///< bytes ever allocated
    std::size_t fail_at = 0;       ///< the attempt number that fails (0: none)

    /// Makes the n-th allocation attempt from now fail (n >= 1; 0 disarms). Needs exceptions.
    void fail_nth(std::size_t n) noexcept { fail_at = n == 0 ? 0 : attempts + n; }
    /// Allocations not yet freed.
    std::size_t outstanding() const noexcept { return allocations - deallocations; }
};

/**
 * @brief A stateful standard allocator recording into an `allocation_stats`.
 *
 * Copies and rebinds share the stats object, which must outlive them. When told to fail
 * (`allocation_stats::fail_nth`), the chosen `allocate` throws `std::bad_alloc`. Without
 * exceptions it cannot fail (returning null is not allowed), so an armed failure aborts:
 * do not arm it in `-fno-exceptions` builds.
 *
 * @tparam T the value type.
 */
template <class T = std::byte>
class counting_allocator {
public:
    /// The allocated type.
    using value_type = T;
    /// Containers move the allocator along with their storage.
    using propagate_on_container_move_assignment = std::true_type;
    /// Containers swap allocators along with their storage.
    using propagate_on_container_swap = std::true_type;
    /// Two allocators are equal only when they share stats.
    using is_always_equal = std::false_type;

    /// An allocator recording into `stats`.
    explicit counting_allocator(allocation_stats& stats) noexcept : stats_(&stats) {}
    /// The rebind constructor: shares `other`'s stats.
    template <class U>
    counting_allocator(const counting_allocator<U>& other) noexcept : stats_(other.stats()) {}

    /// Allocates `n` objects, counting; throws `std::bad_alloc` on the armed attempt.
    T* allocate(std::size_t n) {
        const std::size_t attempt = ++stats_->attempts;
        if (stats_->fail_at != 0 && attempt == stats_->fail_at) {
            stats_->fail_at = 0;
            fail();
        }
        if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) fail();
        const std::size_t bytes = n * sizeof(T);
        void* p = ::operator new(bytes, std::align_val_t{alignof(T)}, std::nothrow);
        if (!p) fail();
        ++stats_->allocations;
        stats_->current_bytes += bytes;
        stats_->total_bytes += bytes;
        stats_->peak_bytes = std::max(stats_->peak_bytes, stats_->current_bytes);
        return static_cast<T*>(p);
    }

    /// Frees what `allocate(n)` returned, counting.
    void deallocate(T* p, std::size_t n) noexcept {
        ++stats_->deallocations;
        stats_->current_bytes -= n * sizeof(T);
        ::operator delete(p, std::align_val_t{alignof(T)});
    }

    /// The shared stats.
    allocation_stats* stats() const noexcept { return stats_; }

    /// Equal when sharing stats (memory from one can be freed by the other).
    template <class U>
    friend bool operator==(const counting_allocator& a, const counting_allocator<U>& b) noexcept {
        return a.stats() == b.stats();
    }

private:
    [[noreturn]] static void fail() {
#if QCOW2_HAS_EXCEPTIONS
        throw std::bad_alloc();
#else
        std::abort();
#endif
    }

    allocation_stats* stats_;
};

} // namespace qcow2::test
