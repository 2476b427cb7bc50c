// SPDX-License-Identifier: MIT
/// @file
/// @brief `fault_backend`: wraps a backend, counts its calls and fails a chosen one with EIO.
#pragma once

#include "qcow2/io/backend.hpp"

#include <cstdint>
#include <span>
#include <system_error>
#include <type_traits>
#include <utility>

namespace qcow2::test {

/// The kinds of backend operation `fault_backend` counts and can fail.
enum class fault_op {
    read,         ///< `read_at`
    write,        ///< `write_at`
    size,         ///< `size`
    resize,       ///< `resize`
    flush,        ///< `flush`
    discard,      ///< `discard`
    write_zeroes, ///< `write_zeroes`
    preallocate,  ///< `preallocate`
    block_status, ///< `block_status`
    copy_range,   ///< `copy_range_to`
    allocated_size, ///< `allocated_size`
    any,          ///< any of the above (only as a fault target)
};

/// How many calls of each kind `fault_backend` has seen (failed ones included).
struct fault_counts {
    std::uint64_t reads = 0;           ///< `read_at` calls
    std::uint64_t writes = 0;          ///< `write_at` calls
    std::uint64_t sizes = 0;           ///< `size` calls
    std::uint64_t resizes = 0;         ///< `resize` calls
    std::uint64_t flushes = 0;         ///< `flush` calls
    std::uint64_t discards = 0;        ///< `discard` calls
    std::uint64_t zero_writes = 0;     ///< `write_zeroes` calls
    std::uint64_t preallocations = 0;  ///< `preallocate` calls
    std::uint64_t block_statuses = 0;  ///< `block_status` calls
    std::uint64_t copies = 0;          ///< `copy_range_to` calls
    std::uint64_t allocated_sizes = 0; ///< `allocated_size` calls
    std::uint64_t total = 0;           ///< all calls

    /// The count for one kind (`any` gives `total`).
    std::uint64_t of(fault_op op) const noexcept {
        switch (op) {
        case fault_op::read: return reads;
        case fault_op::write: return writes;
        case fault_op::size: return sizes;
        case fault_op::resize: return resizes;
        case fault_op::flush: return flushes;
        case fault_op::discard: return discards;
        case fault_op::write_zeroes: return zero_writes;
        case fault_op::preallocate: return preallocations;
        case fault_op::block_status: return block_statuses;
        case fault_op::copy_range: return copies;
        case fault_op::allocated_size: return allocated_sizes;
        case fault_op::any: return total;
        }
        return 0;
    }
};

/**
 * @brief A backend that forwards to `Inner` and can be told to fail.
 *
 * Every call is counted (see `counts()`). `fail_nth(op, n)` arms one fault: the n-th
 * call of kind `op` from now (1 = the next one) returns `std::errc::io_error` without
 * reaching the inner backend. In sticky mode every call after that fault fails too, like
 * a disk that has died; otherwise only that one call fails. Optional capabilities are
 * forwarded exactly when `Inner` has them.
 *
 * @tparam Inner the wrapped backend, held by value.
 */
template <qcow2::io::backend Inner>
class fault_backend {
public:
    /// Wraps `inner`, with no fault armed.
    explicit fault_backend(Inner inner) noexcept(std::is_nothrow_move_constructible_v<Inner>)
        : inner_(std::move(inner)) {}

    /// The wrapped backend (calls through it are neither counted nor failed).
    Inner& inner() noexcept { return inner_; }
    /// The wrapped backend.
    const Inner& inner() const noexcept { return inner_; }

    /// Makes the n-th call (n >= 1, counted from now) of kind `op` fail; `sticky` fails every call after it too.
    void fail_nth(fault_op op, std::uint64_t n, bool sticky = false) noexcept {
        armed_ = n > 0;
        target_ = op;
        remaining_ = n;
        sticky_ = sticky;
        dead_ = false;
    }
    /// Removes any armed fault and revives a dead (sticky) backend.
    void disarm() noexcept {
        armed_ = false;
        dead_ = false;
    }
    /// How many calls were failed on purpose.
    std::uint64_t faults() const noexcept { return faults_; }
    /// True when a sticky fault has fired and every call now fails.
    bool dead() const noexcept { return dead_; }
    /// The call counts.
    const fault_counts& counts() const noexcept { return counts_; }
    /// `read_at` calls so far.
    std::uint64_t reads() const noexcept { return counts_.reads; }
    /// `write_at` calls so far.
    std::uint64_t writes() const noexcept { return counts_.writes; }
    /// `flush` calls so far.
    std::uint64_t flushes() const noexcept { return counts_.flushes; }
    /// `resize` calls so far.
    std::uint64_t resizes() const noexcept { return counts_.resizes; }

    /// Forwards `read_at` unless failing.
    std::error_code read_at(std::uint64_t off, std::span<std::byte> out) noexcept {
        if (auto ec = hit(fault_op::read, counts_.reads)) return ec;
        return inner_.read_at(off, out);
    }
    /// Forwards `write_at` unless failing.
    std::error_code write_at(std::uint64_t off, std::span<const std::byte> in) noexcept {
        if (auto ec = hit(fault_op::write, counts_.writes)) return ec;
        return inner_.write_at(off, in);
    }
    /// Forwards `size` unless failing.
    std::error_code size(std::uint64_t& n) const noexcept {
        if (auto ec = hit(fault_op::size, counts_.sizes)) return ec;
        return inner_.size(n);
    }
    /// Forwards `resize` unless failing.
    std::error_code resize(std::uint64_t n) noexcept {
        if (auto ec = hit(fault_op::resize, counts_.resizes)) return ec;
        return inner_.resize(n);
    }
    /// Forwards `flush` unless failing.
    std::error_code flush() noexcept {
        if (auto ec = hit(fault_op::flush, counts_.flushes)) return ec;
        return inner_.flush();
    }
    /// Forwards `discard` unless failing.
    std::error_code discard(std::uint64_t off, std::uint64_t len) noexcept
        requires qcow2::io::supports_discard<Inner>
    {
        if (auto ec = hit(fault_op::discard, counts_.discards)) return ec;
        return inner_.discard(off, len);
    }
    /// Forwards `write_zeroes` unless failing.
    std::error_code write_zeroes(std::uint64_t off, std::uint64_t len) noexcept
        requires qcow2::io::supports_write_zeroes<Inner>
    {
        if (auto ec = hit(fault_op::write_zeroes, counts_.zero_writes)) return ec;
        return inner_.write_zeroes(off, len);
    }
    /// Forwards `preallocate` unless failing.
    std::error_code preallocate(std::uint64_t off, std::uint64_t len) noexcept
        requires qcow2::io::supports_preallocate<Inner>
    {
        if (auto ec = hit(fault_op::preallocate, counts_.preallocations)) return ec;
        return inner_.preallocate(off, len);
    }
    /// Forwards `block_status` unless failing.
    std::error_code block_status(std::uint64_t off, std::uint64_t len, qcow2::io::extent_status& st) const noexcept
        requires qcow2::io::supports_block_status<Inner>
    {
        if (auto ec = hit(fault_op::block_status, counts_.block_statuses)) return ec;
        return inner_.block_status(off, len, st);
    }
    /// Forwards `copy_range_to` (to any destination the inner backend can copy to) unless failing.
    template <class Dst>
        requires qcow2::io::supports_copy_range<Inner, Dst>
    std::error_code copy_range_to(std::uint64_t src_off, Dst& dst, std::uint64_t dst_off, std::uint64_t len) noexcept {
        if (auto ec = hit(fault_op::copy_range, counts_.copies)) return ec;
        return inner_.copy_range_to(src_off, dst, dst_off, len);
    }
    /// Forwards `allocated_size` unless failing.
    std::error_code allocated_size(std::uint64_t& n) const noexcept
        requires qcow2::io::supports_allocated_size<Inner>
    {
        if (auto ec = hit(fault_op::allocated_size, counts_.allocated_sizes)) return ec;
        return inner_.allocated_size(n);
    }

private:
    // Counts one call of kind `op` and decides whether it fails.
    std::error_code hit(fault_op op, std::uint64_t& counter) const noexcept {
        ++counter;
        ++counts_.total;
        bool fail = dead_;
        if (!fail && armed_ && (target_ == fault_op::any || target_ == op) && --remaining_ == 0) {
            armed_ = false;
            dead_ = sticky_;
            fail = true;
        }
        if (!fail) return {};
        ++faults_;
        return std::make_error_code(std::errc::io_error);
    }

    Inner inner_;
    // Mutable: const calls (size, block_status) are counted and can fail too.
    mutable fault_counts counts_{};
    mutable std::uint64_t remaining_ = 0;
    mutable std::uint64_t faults_ = 0;
    mutable bool armed_ = false;
    mutable bool dead_ = false;
    fault_op target_ = fault_op::any;
    bool sticky_ = false;
};

} // namespace qcow2::test
