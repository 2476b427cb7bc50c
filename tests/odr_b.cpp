// SPDX-License-Identifier: MIT
// ODR check, second translation unit (see odr_a.cpp).
#include <qcow2/qcow2.hpp>
#include <qcow2/qcow2.hpp> // twice: #pragma once (and, in single-header mode, the amalgamation) must hold

#include <system_error>

namespace odr_test {

qcow2::result<int> make_result_b(int v);
const std::error_category* category_b();

qcow2::result<int> make_result_b(int v) {
    if (v < 0) return qcow2::error{qcow2::errc::bad_magic, "from odr_b.cpp"};
    return v * 2;
}

const std::error_category* category_b() { return &qcow2::error_category(); }

} // namespace odr_test
