// SPDX-License-Identifier: MIT
// Proves which header the suite is compiled against, so the single header under test
// cannot be swapped for include/ (or the other way round) without the build failing.
#include <qcow2/qcow2.hpp>

#include <catch2/catch.hpp>

#include <string_view>

#if defined(QCOW2_SINGLE_HEADER)
#if !defined(QCOW2_AMALGAMATED)
#error "QCOW2_SINGLE_HEADER is set but <qcow2/qcow2.hpp> is not the generated single_include/qcow2/qcow2.hpp"
#endif
// A component header must resolve to the amalgamation too, never to include/.
#include "qcow2/result.hpp"
#else
#if defined(QCOW2_AMALGAMATED)
#error "the multi-header build picked up single_include/qcow2/qcow2.hpp instead of include/"
#endif
#endif

// CMake passes the version it read from include/qcow2/version.hpp: a stale single
// header with an older version stamp fails here.
#if defined(QCOW2_TEST_EXPECTED_VERSION)
static_assert(std::string_view(QCOW2_VERSION_STRING) == QCOW2_TEST_EXPECTED_VERSION,
              "the header under test carries another version than include/qcow2/version.hpp");
#endif

TEST_CASE("the header under test is the configured one", "[single_header]") {
#if defined(QCOW2_SINGLE_HEADER)
    CHECK(QCOW2_AMALGAMATED == 1);
#endif
    CHECK(qcow2::version.major == QCOW2_VERSION_MAJOR);
    CHECK(qcow2::version.minor == QCOW2_VERSION_MINOR);
    CHECK(qcow2::version.patch == QCOW2_VERSION_PATCH);
}
