// SPDX-License-Identifier: MIT
#include "qcow2/result.hpp"
#include "qcow2/detail/checked.hpp"
#include "qcow2/detail/endian.hpp"
#include "qcow2/detail/strings.hpp"

#include <array>
#include <catch2/catch.hpp>

using namespace qcow2;

TEST_CASE("errc is a std::error_code enum with messages", "[basics]") {
    std::error_code ec = errc::bad_magic;
    CHECK(ec.category().name() == std::string("qcow2"));
    CHECK(ec.message() == "not a qcow2 image (bad magic)");
    CHECK(ec == errc::bad_magic);
    CHECK(ec != errc::l1_too_large);
}

TEST_CASE("error carries code and message, foreign codes survive", "[basics]") {
    error e{errc::l1_too_large, "L1 table of 5000000 entries"};
    CHECK(e.is(errc::l1_too_large));
    CHECK(e == errc::l1_too_large);
    CHECK(e.what() == "L1 table of 5000000 entries: L1 table too large");
    error io{std::make_error_code(std::errc::io_error), "reading L2 table"};
    CHECK(io.code() == std::errc::io_error);
    CHECK_FALSE(io.is(errc::io_error));
    error wrapped{make_error_code(errc::short_read), "x"};
    CHECK(wrapped.is(errc::short_read));
}

static result<int> half(int v) {
    if (v % 2) return error{errc::invalid_argument, "odd"};
    return v / 2;
}

TEST_CASE("result holds a value or an error", "[basics]") {
    auto a = half(4);
    REQUIRE(a);
    CHECK(*a == 2);
    auto b = half(3);
    REQUIRE_FALSE(b);
    CHECK(b.error() == errc::invalid_argument);
    CHECK(b.value_or(7) == 7);
    result<std::string> s = std::string("abc");
    result<std::string> t = s;
    CHECK(*t == "abc");
    t = error{errc::io_error, "y"};
    CHECK_FALSE(t);
    result<void> ok;
    CHECK(ok);
    result<void> bad = error{errc::io_error, "z"};
    CHECK_FALSE(bad);
    CHECK(check_io({}, "nothing"));
    CHECK(check_io(std::make_error_code(std::errc::no_space_on_device), "w").error().code() ==
          std::errc::no_space_on_device);
#if QCOW2_HAS_EXCEPTIONS
    CHECK_THROWS_AS(b.value(), std::system_error);
#endif
}

static_assert([] {
    std::array<std::byte, 8> buf{};
    detail::store_be64(buf, 0, 0x0102030405060708ull);
    return buf[0] == std::byte{1} && buf[7] == std::byte{8} && detail::load_be64(buf, 0) == 0x0102030405060708ull &&
           detail::load_be32(buf, 4) == 0x05060708u && detail::load_be16(buf, 2) == 0x0304u;
}());
// Clang 14 cannot build a std::string of libstdc++ 12 in a constant expression (GCC can),
// so the compile-time cases that make message text run where the compiler allows it.
#if !defined(__clang__) || __clang_major__ >= 15
static_assert(detail::hex(0x50000) == "0x50000" && detail::hex(0) == "0x0");
static_assert(detail::dec(-12) == "-12" && detail::dec(18446744073709551615ull) == "18446744073709551615");
#endif
static_assert(!detail::checked_add(UINT64_MAX, 1) && *detail::checked_add(1, 2) == 3);
static_assert(!detail::checked_mul(1ull << 40, 1ull << 30) && *detail::checked_mul(3, 4) == 12);
static_assert(detail::div_round_up(10, 4) == 3 && detail::is_aligned(0x10000, 0x10000));
static_assert(!detail::align_up(UINT64_MAX, 512) && *detail::align_up(513, 512) == 1024);
#if !defined(__clang__) || __clang_major__ >= 15
static_assert([] {
    result<std::string> r = error{errc::bad_magic, detail::cat("at ", detail::hex(16))};
    return !r && r.error().message() == "at 0x10" && r.error() == errc::bad_magic;
}());
#endif
