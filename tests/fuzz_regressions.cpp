// SPDX-License-Identifier: MIT
// Replays inputs the fuzzers once failed on (tests/fuzz/regressions/<target>/), with the
// same assertions as the fuzz targets, so a fixed bug stays fixed in ordinary test runs.
#include "qcow2/format/header.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

namespace {

std::vector<std::filesystem::path> inputs(const char* target) {
    std::vector<std::filesystem::path> out;
    const auto dir = std::filesystem::path(QCOW2_FUZZ_REGRESSIONS) / target;
    if (std::filesystem::exists(dir))
        for (const auto& e : std::filesystem::directory_iterator(dir))
            if (e.is_regular_file()) out.push_back(e.path());
    return out;
}

std::vector<std::byte> slurp(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> b(c.size());
    for (std::size_t i = 0; i < c.size(); ++i) b[i] = static_cast<std::byte>(c[i]);
    return b;
}

} // namespace

TEST_CASE("fuzz regressions: header inputs decode, encode and decode to the same header", "[fuzz]") {
    const auto files = inputs("header");
    REQUIRE_FALSE(files.empty());
    for (const auto& p : files) {
        INFO(p.filename().string());
        const auto bytes = slurp(p);
        auto h = qcow2::decode_header(bytes);
        if (!h) continue; // a clear error is a fine answer
        std::vector<std::byte> out(static_cast<std::size_t>(h->cluster_size()));
        REQUIRE(qcow2::encode_header(*h, out));
        auto again = qcow2::decode_header(out);
        REQUIRE(again);
        CHECK(*again == *h);
    }
}
