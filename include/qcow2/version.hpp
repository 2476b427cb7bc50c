// SPDX-License-Identifier: MIT
/// @file
/// @brief The library version, the one place it is written down.
#pragma once

/// The major version: changes when the API breaks.
#define QCOW2_VERSION_MAJOR 0
/// The minor version: changes with new features.
#define QCOW2_VERSION_MINOR 1
/// The patch version: changes with fixes.
#define QCOW2_VERSION_PATCH 0
/// The version as "major.minor.patch".
#define QCOW2_VERSION_STRING "0.1.0"

namespace qcow2 {

/// The library version as numbers, for run-time checks.
struct version_info {
    /// The major, minor and patch numbers (`QCOW2_VERSION_MAJOR` and so on).
    /// @{
    int major, minor, patch;
    /// @}
};

/// The version of the headers this translation unit was compiled with.
inline constexpr version_info version{QCOW2_VERSION_MAJOR, QCOW2_VERSION_MINOR, QCOW2_VERSION_PATCH};

} // namespace qcow2
