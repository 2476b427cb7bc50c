// SPDX-License-Identifier: MIT
/// @file
/// @brief Forward declarations, for code that only names the library's types.
#pragma once

#include <memory>

namespace qcow2 {
enum class errc : int;
class error;
template <class T>
class result;
struct header;
struct snapshot_entry;
struct bitmap_entry;
struct image_info;
namespace io {
template <class Allocator>
class basic_memory;
class posix_file;
} // namespace io
} // namespace qcow2
