// SPDX-License-Identifier: MIT
/// @file
/// @brief The umbrella header: includes every public header of the library.
///
/// This is also the amalgamator's only entry point (tools/amalgamate.py), so every
/// public header must be reachable from here. Add new headers below, one per line,
/// in layer order (basics, io, format, codec, metadata, image, operations).
#pragma once

// basics
#include "qcow2/version.hpp"
#include "qcow2/fwd.hpp"
#include "qcow2/config.hpp"
#include "qcow2/error.hpp"
#include "qcow2/result.hpp"
#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"

// io
#include "qcow2/io/backend.hpp"
#include "qcow2/io/memory.hpp"
#include "qcow2/io/posix_file.hpp"

// format
#include "qcow2/format/features.hpp"
#include "qcow2/format/extensions.hpp"
#include "qcow2/format/header.hpp"
#include "qcow2/format/snapshot.hpp"
#include "qcow2/format/bitmap.hpp"
#include "qcow2/format/l2_entry.hpp"
#include "qcow2/format/refcount.hpp"

// codec
#include "qcow2/codec/codec.hpp"
#include "qcow2/codec/zlib.hpp"
#include "qcow2/codec/deflate.hpp"
#include "qcow2/codec/zstd.hpp"
#include "qcow2/codec/dispatch.hpp"

// metadata
#include "qcow2/metadata/table_cache.hpp"
#include "qcow2/metadata/refcounts.hpp"

// image
#include "qcow2/backing.hpp"
#include "qcow2/all_zero.hpp"
#include "qcow2/image.hpp"

// operations
#include "qcow2/ops/info.hpp"
#include "qcow2/ops/map.hpp"
#include "qcow2/ops/check.hpp"
#include "qcow2/ops/measure.hpp"
#include "qcow2/ops/stream.hpp"

namespace qcow2 {
/// An image in a local file.
using image = basic_image<io::posix_file>;
/// An image in memory.
using memory_image = basic_image<io::memory>;
} // namespace qcow2
