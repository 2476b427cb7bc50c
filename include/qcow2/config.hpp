// SPDX-License-Identifier: MIT
/// @file
/// @brief Build configuration: optional codecs, limits and the ABI tag.
///
/// Each `QCOW2_HAS_*` macro may be set by the build (the CMake package does it);
/// when it is not, `__has_include` decides. Settings that change inline code are
/// folded into the inline namespace `QCOW2_ABI_NAMESPACE`, so translation units
/// compiled with different settings cannot be linked together by accident.
#pragma once

#include "qcow2/version.hpp"

#ifndef QCOW2_HAS_ZLIB
#if __has_include(<zlib.h>)
#define QCOW2_HAS_ZLIB 1
#else
#define QCOW2_HAS_ZLIB 0
#endif
#endif

#ifndef QCOW2_HAS_ZSTD
#if __has_include(<zstd.h>)
#define QCOW2_HAS_ZSTD 1
#else
#define QCOW2_HAS_ZSTD 0
#endif
#endif

#ifndef QCOW2_HAS_LIBDEFLATE
#if __has_include(<libdeflate.h>)
#define QCOW2_HAS_LIBDEFLATE 1
#else
#define QCOW2_HAS_LIBDEFLATE 0
#endif
#endif

/// 1 when the translation unit is compiled with exceptions, else 0 (then failures that
/// would throw abort).
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define QCOW2_HAS_EXCEPTIONS 1
#else
#define QCOW2_HAS_EXCEPTIONS 0
#endif

#define QCOW2_ABI_CAT3_(z, s, d) abi_z##z##_s##s##_d##d##_v0
#define QCOW2_ABI_CAT_(z, s, d) QCOW2_ABI_CAT3_(z, s, d) // expands the macros before pasting
/// Inline namespace whose name encodes the codec settings.
#define QCOW2_ABI_NAMESPACE QCOW2_ABI_CAT_(QCOW2_HAS_ZLIB, QCOW2_HAS_ZSTD, QCOW2_HAS_LIBDEFLATE)

namespace qcow2::limits {

/// Smallest and largest cluster_bits QEMU accepts (512 B to 2 MiB).
inline constexpr unsigned min_cluster_bits = 9;
/// Largest cluster_bits: 21 (2 MiB), or `QCOW2_MAX_CLUSTER_BITS` (tests lower it to reach the limit paths).
#ifdef QCOW2_MAX_CLUSTER_BITS
inline constexpr unsigned max_cluster_bits = QCOW2_MAX_CLUSTER_BITS;
#else
inline constexpr unsigned max_cluster_bits = 21;
#endif
/// Largest active L1 table, in bytes (QEMU: 32 MiB).
#ifdef QCOW2_MAX_L1_BYTES
inline constexpr unsigned long long max_l1_bytes = QCOW2_MAX_L1_BYTES;
#else
inline constexpr unsigned long long max_l1_bytes = 32ull << 20;
#endif
/// Largest refcount table, in bytes (QEMU: 8 MiB).
inline constexpr unsigned long long max_refcount_table_bytes = 8ull << 20;
/// Largest refcount_order (64-bit refcounts).
inline constexpr unsigned max_refcount_order = 6;
/// Longest backing file name and backing format name QEMU accepts.
inline constexpr unsigned max_backing_name = 1023;
/// Longest backing format name QEMU accepts.
inline constexpr unsigned max_backing_format = 15;
/// Snapshot table limits (QEMU).
inline constexpr unsigned max_snapshots = 65536;
/// Largest snapshot table, in bytes.
inline constexpr unsigned long long max_snapshot_table_bytes = 64ull << 20;
/// Largest extra data of one snapshot table entry, in bytes.
inline constexpr unsigned max_snapshot_extra_data = 1024;
/// Bitmap directory limits (QEMU).
inline constexpr unsigned max_bitmaps = 65535;
/// Largest bitmap directory, in bytes.
inline constexpr unsigned long long max_bitmap_directory_bytes = 1024ull * 65535;
/// Longest bitmap name, in bytes.
inline constexpr unsigned max_bitmap_name = 1023;
/// Host offsets of metadata and data must be below 2^56.
inline constexpr unsigned long long max_host_offset = (1ull << 56) - 1;

} // namespace qcow2::limits
