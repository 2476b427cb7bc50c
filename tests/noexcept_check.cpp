// SPDX-License-Identifier: MIT
// Built with -fno-exceptions (QCOW2_NOEXCEPT_CHECK, preset no-exceptions): the whole
// library compiles without exceptions, and result/error work there. Every public header
// is also compiled on its own in this mode (generated TUs, see tests/CMakeLists.txt).
#include <qcow2/qcow2.hpp>

#include <cstdio>
#include <string>
#include <system_error>
#include <utility>

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#error "noexcept_check.cpp must be compiled with -fno-exceptions"
#endif
static_assert(QCOW2_HAS_EXCEPTIONS == 0, "config.hpp must see that exceptions are off");

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "noexcept_check: FAILED: %s\n", what);
        ++failures;
    }
}

qcow2::result<unsigned> cluster_bits(unsigned bits) {
    if (bits < qcow2::limits::min_cluster_bits || bits > qcow2::limits::max_cluster_bits)
        return qcow2::error{qcow2::errc::invalid_cluster_size, "cluster_bits " + std::to_string(bits)};
    return bits;
}

qcow2::result<void> check(bool ok) {
    if (!ok) return qcow2::error{qcow2::errc::io_error, "check"};
    return {};
}

} // namespace

static_assert(noexcept(qcow2::make_error_code(qcow2::errc::bad_magic)));
static_assert(noexcept(qcow2::error_category()));
static_assert(noexcept(std::declval<const qcow2::result<int>&>().has_value()));

int main() {
    auto good = cluster_bits(16);
    expect(good.has_value() && *good == 16u, "result holds a value");
    expect(good.value() == 16u, "value() on a value does not abort");

    auto bad = cluster_bits(40);
    expect(!bad, "result holds an error");
    expect(bad.error() == qcow2::errc::invalid_cluster_size, "error compares equal to its errc");
    expect(bad.error().what() == "cluster_bits 40: invalid cluster size", "error message names what and where");
    expect(bad.value_or(9u) == 9u, "value_or falls back");

    std::error_code ec = qcow2::errc::short_read;
    expect(ec.category().name() == std::string("qcow2"), "errc is registered with std::error_code");
    qcow2::error foreign{std::make_error_code(std::errc::no_space_on_device), "writing L2 table"};
    expect(foreign.code() == std::errc::no_space_on_device && !foreign.is(qcow2::errc::io_error),
           "foreign error codes survive");

    expect(static_cast<bool>(check(true)), "result<void> success");
    expect(!check(false) && check(false).error() == qcow2::errc::io_error, "result<void> failure");
    expect(static_cast<bool>(qcow2::check_io({}, "nothing")), "check_io success");

    if (failures) return 1;
    std::printf("noexcept_check: qcow2 %s OK without exceptions\n", QCOW2_VERSION_STRING);
    return 0;
}
