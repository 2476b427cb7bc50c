// SPDX-License-Identifier: MIT
/// @file
/// @brief The I/O backend concept, and one concept per optional capability.
///
/// A backend is a byte-addressed file: a local file, a block device, an object in
/// a store, a buffer in memory. Every call takes an explicit offset (there is no
/// file position), is `noexcept`, and reports failure through `std::error_code`.
/// Capabilities beyond the core (punching holes, writing zeroes cheaply,
/// preallocating, reporting holes, copying between files inside the kernel) are
/// optional: the library detects them with the concepts below and falls back to
/// plain reads and writes when a backend does not have them.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <system_error>

#include "qcow2/detail/strings.hpp"
#include "qcow2/result.hpp"

#include <string>
#include <string_view>

namespace qcow2::io {

/**
 * @brief What every backend provides.
 *
 * - `read_at(offset, out)`: fills all of `out` from `offset`. Reading any byte at or
 *   past the end of the file is an error (`qcow2::errc::short_read`); callers that
 *   want zero-fill past the end clamp their reads to `size()`.
 * - `write_at(offset, in)`: writes all of `in` at `offset`, growing the file when
 *   the range ends past its end (a gap reads as zeroes).
 * - `size(out)`: the current length of the file in bytes.
 * - `resize(n)`: truncates or extends (with zeroes) to exactly `n` bytes.
 * - `flush()`: makes every completed write durable.
 */
template <class B>
concept backend = requires(B& b, const B& cb, std::uint64_t off, std::span<std::byte> out,
                           std::span<const std::byte> in, std::uint64_t& n) {
    { b.read_at(off, out) } noexcept -> std::same_as<std::error_code>;
    { b.write_at(off, in) } noexcept -> std::same_as<std::error_code>;
    { cb.size(n) } noexcept -> std::same_as<std::error_code>;
    { b.resize(off) } noexcept -> std::same_as<std::error_code>;
    { b.flush() } noexcept -> std::same_as<std::error_code>;
};

/// A backend that can be read but never written (writes return `errc::read_only`).
template <class B>
concept readable_backend = requires(B& b, const B& cb, std::uint64_t off, std::span<std::byte> out, std::uint64_t& n) {
    { b.read_at(off, out) } noexcept -> std::same_as<std::error_code>;
    { cb.size(n) } noexcept -> std::same_as<std::error_code>;
};

/// Can deallocate a range so that it reads as zeroes, keeping the file size (punch hole).
template <class B>
concept supports_discard = backend<B> && requires(B& b, std::uint64_t off, std::uint64_t len) {
    { b.discard(off, len) } noexcept -> std::same_as<std::error_code>;
};

/// Can make a range read as zeroes without sending zero bytes (may grow the file).
template <class B>
concept supports_write_zeroes = backend<B> && requires(B& b, std::uint64_t off, std::uint64_t len) {
    { b.write_zeroes(off, len) } noexcept -> std::same_as<std::error_code>;
};

/// Can reserve storage for a range so later writes there do not fail for lack of space.
template <class B>
concept supports_preallocate = backend<B> && requires(B& b, std::uint64_t off, std::uint64_t len) {
    { b.preallocate(off, len) } noexcept -> std::same_as<std::error_code>;
};

/// The state of a run of bytes, as reported by `block_status`.
struct extent_status {
    bool data = true;          ///< false: the run is a hole and reads as zeroes
    std::uint64_t length = 0;  ///< length of the run starting at the queried offset
};

/// Can tell holes from data (SEEK_DATA / SEEK_HOLE on a local file).
///
/// `block_status(offset, max_length, out)` describes the run that starts at `offset`
/// (at most `max_length` bytes, never past the end of the file).
template <class B>
concept supports_block_status = requires(const B& b, std::uint64_t off, std::uint64_t len, extent_status& st) {
    { b.block_status(off, len, st) } noexcept -> std::same_as<std::error_code>;
};

/// Can copy a range straight into another backend of type `Dst` (copy_file_range).
///
/// `copy_range_to(src_offset, dst, dst_offset, length)` copies all `length` bytes.
template <class B, class Dst>
concept supports_copy_range = requires(B& b, Dst& d, std::uint64_t off, std::uint64_t len) {
    { b.copy_range_to(off, d, off, len) } noexcept -> std::same_as<std::error_code>;
};

/// Can report the bytes the file really occupies on its storage (for `actual-size`).
template <class B>
concept supports_allocated_size = requires(const B& b, std::uint64_t& n) {
    { b.allocated_size(n) } noexcept -> std::same_as<std::error_code>;
};

/// The file's size as a `result`, with a message naming the call.
template <readable_backend B>
result<std::uint64_t> size_of(const B& b) {
    std::uint64_t n = 0;
    if (auto ec = b.size(n)) return error(ec, "querying the file size");
    return n;
}

/// Reads exactly `out.size()` bytes at `offset`; `what` names the structure for the message.
template <readable_backend B>
result<void> read_exact(B& b, std::uint64_t offset, std::span<std::byte> out, std::string_view what) {
    if (auto ec = b.read_at(offset, out); ec) {
        std::string m(what);
        m += " (";
        m += std::to_string(out.size());
        m += " bytes at host offset ";
        m += detail::hex(offset);
        m += ")";
        return error(ec, m);
    }
    return {};
}

} // namespace qcow2::io
