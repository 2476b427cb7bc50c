// SPDX-License-Identifier: MIT
/// @file
/// @brief The library version, the one place it is written down.
#pragma once

#define QCOW2_VERSION_MAJOR 0
#define QCOW2_VERSION_MINOR 1
#define QCOW2_VERSION_PATCH 0
#define QCOW2_VERSION_STRING "0.1.0"

namespace qcow2 {

/// The library version as numbers, for run-time checks.
struct version_info {
    int major, minor, patch;
};

/// The version of the headers this translation unit was compiled with.
inline constexpr version_info version{QCOW2_VERSION_MAJOR, QCOW2_VERSION_MINOR, QCOW2_VERSION_PATCH};

} // namespace qcow2
