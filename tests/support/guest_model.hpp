// SPDX-License-Identifier: MIT
/// @file
/// @brief The guest-disk oracle of the crash and fault tests: what an image may read after a
///        crash or a failed write, given what was durable and what was in flight.
///
/// A workload applies `guest_op`s to a shadow of the guest disk. When the image is cut off
/// (a crash, a failed write), the durable shadow (the operations acknowledged by a call that
/// promises durability) must read back, except where an operation issued since may have
/// landed: each such byte reads its durable value or one of the values those operations
/// wrote there. Past the durable size the disk reads zero. Patterns differ per operation and
/// per offset, so a cluster mapped to the wrong place, or stale bytes, are caught.
#pragma once

#include "qcow2/ops/check.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace qcow2::test {

using bytes = std::vector<std::byte>;

/// Concatenates anything `std::ostream` prints.
template <class... A>
std::string cat(const A&... a) {
    std::ostringstream s;
    (s << ... << a);
    return s.str();
}

/// One guest operation: once done, guest bytes `[offset, offset + data.size())` read `data`.
struct guest_op {
    std::uint64_t offset = 0;
    bytes data;
    std::optional<std::uint64_t> new_size{}; ///< a resize: the new virtual size
};

/// Applies an operation to a shadow of the guest disk (named so that ADL cannot pick std::apply).
inline void apply_op(bytes& guest, const guest_op& op) {
    if (op.new_size) guest.resize(static_cast<std::size_t>(*op.new_size), std::byte{0});
    if (op.offset >= guest.size()) return;
    const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(op.data.size(), guest.size() - op.offset));
    if (n)
        std::memcpy(guest.data() + op.offset, op.data.data(),
                    n); // (memcpy with a null source is undefined, even for 0 bytes)
}

/// The operation a resize from `old_size` to `new_size` is: the bytes between read zero.
inline guest_op resize_op(std::uint64_t old_size, std::uint64_t new_size) {
    return {std::min(old_size, new_size),
            bytes(static_cast<std::size_t>(old_size > new_size ? old_size - new_size : new_size - old_size)), new_size};
}

/// The operation `discard(off, len)` is on a disk of `size` bytes with `cluster_size`
/// clusters: the whole clusters inside the range read zero (the last, partial cluster of the
/// disk counts as whole when the range reaches the end), as `basic_image::discard` documents.
inline guest_op discard_op(std::uint64_t off, std::uint64_t len, std::uint64_t size, std::uint64_t cluster_size,
                           bool does_nothing) {
    const std::uint64_t s = (off + cluster_size - 1) / cluster_size * cluster_size;
    std::uint64_t e = (off + len) / cluster_size * cluster_size;
    if (off + len == size) e = size;
    return {s, bytes(static_cast<std::size_t>(s < e && !does_nothing ? e - s : 0)), {}};
}

/// Bytes no other operation or offset writes: each depends on `tag` and its guest offset (never 0).
inline bytes pattern(std::uint64_t tag, std::uint64_t offset, std::uint64_t len) {
    bytes b(static_cast<std::size_t>(len));
    for (std::size_t i = 0; i < b.size(); ++i) {
        std::uint64_t x = (offset + i) * 0x9E3779B97F4A7C15ull ^ (tag + 1) * 0xC2B2AE3D27D4EB4Full;
        x ^= x >> 29;
        b[i] = static_cast<std::byte>((x >> 40) | 1);
    }
    return b;
}

/// A cluster that compresses well (runs of 64 equal bytes), different for each tag.
inline bytes compressible(std::uint64_t tag, std::uint64_t len) {
    bytes b(static_cast<std::size_t>(len));
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::byte>(((tag * 37 + i / 64 * 11) % 255) + 1);
    return b;
}

/// True when `n` bytes at `p` are all zero.
inline bool all_zero(const std::byte* p, std::size_t n) {
    static const bytes zeros(65536);
    while (n) {
        const std::size_t k = std::min(n, zeros.size());
        if (std::memcmp(p, zeros.data(), k) != 0) return false;
        p += k;
        n -= k;
    }
    return true;
}

/**
 * Empty when `got` (the guest disk of an image cut off) is what the model allows: the
 * durable shadow `durable`, except where an operation in `inflight` may have landed (partly or
 * wholly, any of the values it wrote); past the durable size, zeroes. Else what differs.
 */
inline std::string compare_guest(const bytes& got, const bytes& durable, std::span<const guest_op> inflight) {
    const std::size_t n = got.size();
    constexpr std::size_t chunk = 512;
    for (std::size_t at = 0; at < n; at += chunk) {
        const std::size_t len = std::min(chunk, n - at);
        const std::size_t in_durable = at < durable.size() ? std::min(len, durable.size() - at) : 0;
        if ((in_durable == 0 || std::memcmp(got.data() + at, durable.data() + at, in_durable) == 0) &&
            all_zero(got.data() + at + in_durable, len - in_durable))
            continue;
        // Fast path: the whole piece is what one operation in flight wrote.
        if (std::any_of(inflight.begin(), inflight.end(), [&](const guest_op& op) {
                return at >= op.offset && at + len <= op.offset + op.data.size() &&
                       std::memcmp(got.data() + at, op.data.data() + (at - op.offset), len) == 0;
            }))
            continue;
        for (std::size_t i = at; i < at + len; ++i) {
            const std::byte want = i < durable.size() ? durable[i] : std::byte{0};
            if (got[i] == want) continue;
            const bool landed = std::any_of(inflight.begin(), inflight.end(), [&](const guest_op& op) {
                return i >= op.offset && i - op.offset < op.data.size() &&
                       op.data[static_cast<std::size_t>(i - op.offset)] == got[i];
            });
            if (!landed)
                return cat("guest byte ", i, " reads ", std::to_integer<int>(got[i]), ", but was durably ",
                           std::to_integer<int>(want), " and no operation in flight (", inflight.size(),
                           ") wrote that there");
        }
    }
    return {};
}

/// Reads the disk of `img` into `got` and compares it with the model (see `compare_guest`);
/// the virtual size must be the durable one or one a resize in flight set.
template <class Image>
std::string verify_guest(Image& img, const bytes& durable, std::span<const guest_op> inflight, bytes& got) {
    const std::uint64_t n = img.size();
    const bool size_ok = n == durable.size() || std::any_of(inflight.begin(), inflight.end(), [&](const guest_op& op) {
                             return op.new_size && *op.new_size == n;
                         });
    if (!size_ok)
        return cat("virtual size ", n, ", but it was durably ", durable.size(), " and no resize in flight set it");
    got.resize(static_cast<std::size_t>(n));
    if (auto r = img.read(0, got); !r) return "reading the guest disk: " + r.error().what();
    return compare_guest(got, durable, inflight);
}

/// The first problems `check` names, for failure messages.
template <class Image>
std::string check_problems(Image& img) {
    std::string out;
    int n = 0;
    qcow2::check_options o;
    o.on_problem = [&](std::string_view p) {
        if (n++ < 4) out += cat("; ", p);
    };
    (void)qcow2::check(img, o);
    return out;
}

/// Empty when `check` finds no check error and (unless `allow_corruption`) no corruption;
/// leaks are fine. `which` names the image in the message.
template <class Image>
std::string check_no_corruption(Image& img, bool allow_corruption, std::string_view which) {
    auto rep = qcow2::check(img);
    if (!rep) return cat("check (", which, ") failed: ", rep.error().what());
    if (rep->check_errors || (rep->corruptions && !allow_corruption))
        return cat("check (", which, "): ", rep->corruptions, " corruptions, ", rep->check_errors, " check errors",
                   check_problems(img));
    return {};
}

} // namespace qcow2::test
