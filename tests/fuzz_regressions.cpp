// SPDX-License-Identifier: MIT
// Replays inputs the fuzzers once failed on (tests/fuzz/regressions/<target>/) through the
// fuzz targets' own bodies (tests/fuzz/fuzz_*.hpp), so a fixed bug stays fixed in ordinary
// test runs; and runs fuzz_write's seed sequences, so its oracle runs in every build.
#include "fuzz/fuzz_header.hpp"
#include "fuzz/fuzz_open.hpp"
#include "fuzz/fuzz_write.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace {

std::vector<std::filesystem::path> inputs(const char* target) {
    std::vector<std::filesystem::path> out;
    const auto dir = std::filesystem::path(QCOW2_FUZZ_REGRESSIONS) / target;
    if (std::filesystem::exists(dir))
        for (const auto& e : std::filesystem::directory_iterator(dir))
            if (e.is_regular_file() && e.path().filename().string().front() != '.') out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
}

std::vector<std::uint8_t> slurp(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::uint8_t> b(c.size());
    for (std::size_t i = 0; i < c.size(); ++i) b[i] = static_cast<std::uint8_t>(c[i]);
    return b;
}

} // namespace

TEST_CASE("fuzz regressions: header inputs decode, encode and decode to the same header", "[fuzz]") {
    const auto files = inputs("header");
    REQUIRE_FALSE(files.empty());
    for (const auto& p : files) {
        INFO(p.filename().string());
        CHECK(qcow2_fuzz::run_header(slurp(p)).empty());
    }
}

TEST_CASE("fuzz regressions: open inputs open, map, read and check without crashing", "[fuzz]") {
    for (const auto& p : inputs("open")) {
        INFO(p.filename().string());
        qcow2_fuzz::run_open(slurp(p)); // a crash or a sanitizer report is the failure
    }
}

TEST_CASE("fuzz regressions: write inputs and fuzz_write's seeds read as the shadow disk and check clean", "[fuzz]") {
    std::size_t n = 0;
    for (const auto& p : inputs("write")) {
        INFO(p.filename().string());
        CHECK(qcow2_fuzz::run_write(slurp(p)) == "");
        ++n;
    }
    for (const auto& [name, input] : qcow2_fuzz::write_seeds()) {
        INFO("seed " << name);
        CHECK(qcow2_fuzz::run_write(input) == "");
        ++n;
    }
    CHECK(n >= 6);
}

TEST_CASE("fuzz regressions: fuzz_write's oracle fails on a wrong disk and on a leak", "[fuzz]") {
    using qcow2_fuzz::write_op;
    // 4 KiB clusters, 16-bit refcounts, 8 KiB: write, flush, read.
    qcow2_fuzz::input_writer w(0, 12, 4, 16);
    w.range(write_op::write, 0, 4096).op(write_op::flush).range(write_op::read, 0, 8192);
    REQUIRE(qcow2_fuzz::run_write(w.bytes()) == "");

    SECTION("guest data changed behind the image's back") {
        const std::string f = qcow2_fuzz::run_write(w.bytes(), [](qcow2_fuzz::write_image& img) {
            auto m = img.map_range(0, 4096);
            if (!m || m->state != qcow2::cluster_state::data) return;
            const std::byte x{0x5A};
            (void)img.backend().write_at(m->host_offset + 100, std::span(&x, 1));
        });
        CHECK_THAT(f, Catch::Matchers::Contains("reads 90 at guest offset 100"));
    }
    SECTION("a cluster leaked behind the image's back") {
        const std::string f = qcow2_fuzz::run_write(w.bytes(), [](qcow2_fuzz::write_image& img) {
            // Raise the refcount of the L1 table (cluster 3) to 2: the refcount block is
            // cluster 2 of a fresh image (16-bit entries).
            const std::uint64_t block = img.header().refcount_table_offset + img.cluster_size();
            const std::byte two[2]{std::byte{0}, std::byte{2}};
            (void)img.backend().write_at(block + 2 * (img.header().l1_table_offset / img.cluster_size()), std::span(two));
        });
        CHECK_THAT(f, Catch::Matchers::Contains("check found 0 corruptions, 1 leaks"));
    }
}
