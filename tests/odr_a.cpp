// SPDX-License-Identifier: MIT
// ODR check, first translation unit: odr_a.cpp and odr_b.cpp both include the whole
// library and are linked into one program. Duplicate non-inline definitions fail to
// link; an inline function's static (the error category) must be one object in both.
#include <qcow2/qcow2.hpp>
#include <qcow2/qcow2.hpp> // twice: #pragma once (and, in single-header mode, the amalgamation) must hold

#include <catch2/catch.hpp>

#include <system_error>

namespace odr_test {

qcow2::error make_error_a() { return qcow2::error{qcow2::errc::bad_magic, "from odr_a.cpp"}; }
const std::error_category* category_a() { return &qcow2::error_category(); }

// Defined in odr_b.cpp.
qcow2::result<int> make_result_b(int v);
const std::error_category* category_b();

} // namespace odr_test

TEST_CASE("the library is ODR-clean across two translation units", "[odr]") {
    auto a = odr_test::make_error_a();
    auto b = odr_test::make_result_b(-1);
    REQUIRE_FALSE(b);
    CHECK(a.code() == b.error().code());
    CHECK(a.code() == qcow2::errc::bad_magic);
    CHECK(odr_test::category_a() == odr_test::category_b());
    auto ok = odr_test::make_result_b(21);
    REQUIRE(ok);
    CHECK(*ok == 42);
}
