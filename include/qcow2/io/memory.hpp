// SPDX-License-Identifier: MIT
/// @file
/// @brief `qcow2::io::basic_memory`: a backend that keeps the whole file in a vector.
///
/// Used by the tests and the fuzzers, and by programs that build an image in memory
/// before writing it out. The file grows on demand up to a configurable bound, so a
/// hostile image (or a bug) cannot make it allocate without limit.
#pragma once

#include "qcow2/config.hpp"
#include "qcow2/error.hpp"
#include "qcow2/io/backend.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace qcow2::io {

/// Construction options for `basic_memory`.
struct memory_options {
    /// Largest size the file may reach; growing past it fails with `errc::file_too_large`.
    std::uint64_t max_size = 16ull << 30;
    /// When true, every modification fails with `errc::read_only`.
    bool read_only = false;
};

/**
 * @brief An in-memory file: a `std::vector<std::byte>` behind the backend interface.
 *
 * Satisfies `backend`, `supports_discard`, `supports_write_zeroes`,
 * `supports_preallocate` and `supports_allocated_size`. Every member is `noexcept`.
 *
 * Allocation happens only when the file grows (`write_at`, `resize`, `write_zeroes`,
 * `preallocate` past the end); the capacity never exceeds `max_size()`. An allocation
 * failure (any exception thrown by the allocator) is reported as `errc::no_memory` and
 * leaves the file unchanged. Built with `-fno-exceptions`, a failing allocator ends the
 * program as it would anywhere else.
 *
 * @tparam Allocator an allocator of any value type; it is rebound to `std::byte`.
 */
template <class Allocator = std::allocator<std::byte>>
class basic_memory {
public:
    /// The allocator, rebound to `std::byte`.
    using allocator_type = typename std::allocator_traits<Allocator>::template rebind_alloc<std::byte>;
    /// The storage type.
    using vector_type = std::vector<std::byte, allocator_type>;

    /// Default bound on the file size: 16 GiB.
    static constexpr std::uint64_t default_max_size = memory_options{}.max_size;

    /// An empty, writable file with the default size bound and a default-constructed allocator.
    basic_memory() noexcept : basic_memory(memory_options{}, allocator_type()) {}

    /// An empty, writable file with the default size bound, allocating through `alloc`.
    explicit basic_memory(const allocator_type& alloc) noexcept : basic_memory(memory_options{}, alloc) {}

    /// An empty file with the given options, allocating through `alloc`.
    explicit basic_memory(memory_options options, const allocator_type& alloc = allocator_type()) noexcept
        : data_(alloc), max_size_(options.max_size), read_only_(options.read_only) {}

    /**
     * @brief A file holding `bytes` (moved in; no allocation here).
     *
     * If `bytes` is already larger than `options.max_size`, the bound is raised to
     * `bytes.size()`: the file keeps its contents but cannot grow.
     */
    explicit basic_memory(vector_type bytes, memory_options options = {}) noexcept
        : data_(std::move(bytes)),
          max_size_(std::max<std::uint64_t>(options.max_size, data_.size())),
          read_only_(options.read_only) {}

    basic_memory(const basic_memory&) = delete;
    basic_memory& operator=(const basic_memory&) = delete;
    /// Moves the contents; the source is left empty.
    basic_memory(basic_memory&& o) noexcept
        : data_(std::move(o.data_)), max_size_(o.max_size_), read_only_(o.read_only_) {
        o.data_.clear();
    }
    /// Moves the contents; the source is left empty. Allocates (and so may fail) only
    /// for allocators that neither propagate on move assignment nor compare equal.
    basic_memory& operator=(basic_memory&& o) noexcept(std::is_nothrow_move_assignable_v<vector_type>) {
        data_ = std::move(o.data_);
        o.data_.clear();
        max_size_ = o.max_size_;
        read_only_ = o.read_only_;
        return *this;
    }
    ~basic_memory() = default;

    /**
     * @brief A copy of this file (contents, bound and read-only flag).
     * @par Errors
     * `errc::no_memory` when the allocator fails.
     */
    result<basic_memory> clone() const noexcept {
#if QCOW2_HAS_EXCEPTIONS
        try {
#endif
            vector_type copy(data_, std::allocator_traits<allocator_type>::select_on_container_copy_construction(
                                        data_.get_allocator()));
            return basic_memory(std::move(copy), memory_options{max_size_, read_only_});
#if QCOW2_HAS_EXCEPTIONS
        } catch (...) {
            return error(errc::no_memory, {});
        }
#endif
    }

    /**
     * @brief Fills all of `out` from `offset`.
     * @par Errors
     * `errc::short_read` when any requested byte lies at or past the end (nothing is
     * copied then). A zero-length read always succeeds.
     */
    std::error_code read_at(std::uint64_t offset, std::span<std::byte> out) noexcept {
        if (out.empty()) return {};
        if (offset >= data_.size() || out.size() > data_.size() - offset) return make_error_code(errc::short_read);
        std::memcpy(out.data(), data_.data() + offset, out.size());
        return {};
    }

    /**
     * @brief Writes all of `in` at `offset`, growing the file (gap reads as zeroes).
     * @par Errors
     * `errc::read_only`; `errc::file_too_large` when the end would pass `max_size()`;
     * `errc::no_memory` when growing fails. On error the file is unchanged.
     * A zero-length write changes nothing, even past the end.
     */
    std::error_code write_at(std::uint64_t offset, std::span<const std::byte> in) noexcept {
        if (read_only_) return make_error_code(errc::read_only);
        if (in.empty()) return {};
        if (offset > std::numeric_limits<std::uint64_t>::max() - in.size()) return make_error_code(errc::file_too_large);
        if (auto ec = grow_to(offset + in.size())) return ec;
        std::memcpy(data_.data() + offset, in.data(), in.size());
        return {};
    }

    /// The current length of the file; never fails.
    std::error_code size(std::uint64_t& out) const noexcept {
        out = data_.size();
        return {};
    }

    /**
     * @brief Truncates or extends (with zeroes) to exactly `n` bytes.
     * @par Errors
     * `errc::read_only`, `errc::file_too_large` (past `max_size()`), `errc::no_memory`.
     * Shrinking never allocates and never releases capacity.
     */
    std::error_code resize(std::uint64_t n) noexcept {
        if (read_only_) return make_error_code(errc::read_only);
        if (n <= data_.size()) {
            data_.resize(static_cast<std::size_t>(n));
            return {};
        }
        return grow_to(n);
    }

    /// Nothing to make durable: always succeeds.
    std::error_code flush() noexcept { return {}; }

    /**
     * @brief Makes `[offset, offset + length)` read as zeroes, keeping the size.
     *
     * The range is clamped to the end of the file; a range entirely past the end does
     * nothing. Memory is not released.
     * @par Errors
     * `errc::read_only`.
     */
    std::error_code discard(std::uint64_t offset, std::uint64_t length) noexcept {
        if (read_only_) return make_error_code(errc::read_only);
        const std::uint64_t n = data_.size();
        if (offset >= n || length == 0) return {};
        const std::uint64_t len = std::min(length, n - offset);
        std::memset(data_.data() + offset, 0, static_cast<std::size_t>(len));
        return {};
    }

    /**
     * @brief Makes `[offset, offset + length)` read as zeroes, growing the file if it ends past the end.
     * @par Errors
     * `errc::read_only`, `errc::file_too_large`, `errc::no_memory`; the file is unchanged on error.
     */
    std::error_code write_zeroes(std::uint64_t offset, std::uint64_t length) noexcept {
        if (read_only_) return make_error_code(errc::read_only);
        if (length == 0) return {};
        if (offset > std::numeric_limits<std::uint64_t>::max() - length) return make_error_code(errc::file_too_large);
        const std::uint64_t old = data_.size();
        const std::uint64_t end = offset + length;
        if (auto ec = grow_to(end)) return ec;
        // Bytes past the old end were value-initialised by the growth.
        if (offset < old) std::memset(data_.data() + offset, 0, static_cast<std::size_t>(std::min(end, old) - offset));
        return {};
    }

    /**
     * @brief Reserves `[offset, offset + length)`: grows the file with zeroes if the range ends past the end.
     * @par Errors
     * `errc::read_only`, `errc::file_too_large`, `errc::no_memory`.
     */
    std::error_code preallocate(std::uint64_t offset, std::uint64_t length) noexcept {
        if (read_only_) return make_error_code(errc::read_only);
        if (length == 0) return {};
        if (offset > std::numeric_limits<std::uint64_t>::max() - length) return make_error_code(errc::file_too_large);
        return grow_to(offset + length);
    }

    /// The bytes occupied: the size of the file.
    std::error_code allocated_size(std::uint64_t& out) const noexcept { return size(out); }

    /// The contents, for inspection.
    std::span<const std::byte> bytes() const noexcept { return {data_.data(), data_.size()}; }
    /// The contents, for tests that corrupt an image on purpose (ignores the read-only flag).
    std::span<std::byte> bytes() noexcept { return {data_.data(), data_.size()}; }

    /// The largest size the file may grow to.
    std::uint64_t max_size() const noexcept { return max_size_; }
    /// True when modifications are refused.
    bool is_read_only() const noexcept { return read_only_; }
    /// Refuses (`true`) or allows (`false`) modifications from now on.
    void set_read_only(bool value) noexcept { read_only_ = value; }
    /// The allocator.
    allocator_type get_allocator() const noexcept { return data_.get_allocator(); }

private:
    // Grows to exactly `n` bytes (n >= size()), new bytes zero. Capacity stays within max_size_.
    std::error_code grow_to(std::uint64_t n) noexcept {
        if (n <= data_.size()) return {};
        if (n > max_size_ || n > data_.max_size()) return make_error_code(errc::file_too_large);
        const auto want = static_cast<std::size_t>(n);
#if QCOW2_HAS_EXCEPTIONS
        try {
#endif
            if (want > data_.capacity()) {
                // Geometric growth, but never past the bound.
                std::uint64_t cap = std::max<std::uint64_t>(n, 2 * static_cast<std::uint64_t>(data_.capacity()));
                cap = std::min<std::uint64_t>({cap, max_size_, data_.max_size()});
                data_.reserve(static_cast<std::size_t>(cap));
            }
            data_.resize(want);
#if QCOW2_HAS_EXCEPTIONS
        } catch (...) {
            return make_error_code(errc::no_memory);
        }
#endif
        return {};
    }

    vector_type data_; // holds the allocator
    std::uint64_t max_size_;
    bool read_only_;
};

/// The in-memory backend with the standard allocator.
using memory = basic_memory<>;

static_assert(backend<memory> && supports_discard<memory> && supports_write_zeroes<memory> &&
              supports_preallocate<memory> && supports_allocated_size<memory>);

} // namespace qcow2::io
