// SPDX-License-Identifier: MIT
// Interop with QEMU for `qcow2 amend`: on twin images (one amended by qemu-img amend, one by
// ours) holding data, zero clusters and compressed clusters, every step gives the same
// `qemu-img info` format-specific data and virtual size, the same guest data, and an image
// `qemu-img check` finds clean; refusals have qemu-img's words and exit status.
#include "qcow2/qcow2.hpp"

#include "support/json.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

#ifndef QCOW2_TEST_CLI
#error "QCOW2_TEST_CLI must give the path of the qcow2 CLI binary (tests/CMakeLists.txt)"
#endif

namespace {

namespace json = qcow2_test::json;
using argv_t = std::vector<std::string>;

qcow2_test::process_result must(const argv_t& argv, const std::string& dir) {
    auto r = qcow2_test::run(argv, dir);
    INFO(qcow2_test::command_line(argv) << "\n" << r.out << r.err);
    REQUIRE(r.status == 0);
    return r;
}

/// qemu-img info's virtual size and qcow2 format-specific data (what amend changes).
json::value info_of(const std::string& dir, const std::string& image) {
    auto j = json::parse(must({"qemu-img", "info", "--output=json", image}, dir).out);
    json::value out = json::parse("{}");
    const auto* fs = j.find("format-specific");
    REQUIRE(fs);
    return json::parse("{\"virtual-size\": " + std::to_string(j.find("virtual-size")->as_uint()) + ", \"data\": " +
                       fs->find("data")->dump() + "}");
}

} // namespace

TEST_CASE("cli amend: every step as qemu-img amend's, data unchanged, check clean", "[interop]") {
    REQUIRE(qcow2_test::find_program("qemu-img"));
    REQUIRE(qcow2_test::find_program("qemu-io"));
    qcow2_test::temp_dir dir("qcow2-amend-");
    for (const std::string create : {"cluster_size=65536", "cluster_size=4096", "compat=0.10"}) {
        DYNAMIC_SECTION(create) {
            must({"qemu-img", "create", "-q", "-f", "qcow2", "-o", create, "q.qcow2", "16M"}, dir.path());
            must({"qemu-io", "-c", "write -P 0x11 0 1M", "-c", "write -z 2M 1M", "-c", "write -c -P 0x22 4M 64k",
                  "-c", "write -P 0x33 8M 300k", "q.qcow2"}, dir.path());
            must({"cp", "q.qcow2", "m.qcow2"}, dir.path());
            must({"qemu-img", "convert", "-O", "raw", "q.qcow2", "before.raw"}, dir.path());
            const std::vector<std::string> steps{"compat=1.1", "refcount_bits=64", "lazy_refcounts=on", "refcount_bits=8",
                                                 "lazy_refcounts=off,refcount_bits=16", "size=32M", "compat=0.10", "compat=v3"};
            for (const auto& step : steps) {
                INFO(step);
                const auto q = qcow2_test::run({"qemu-img", "amend", "-o", step, "q.qcow2"}, dir.path());
                const auto m = qcow2_test::run({QCOW2_TEST_CLI, "amend", "-o", step, "m.qcow2"}, dir.path());
                INFO("qemu-img: " << q.err << "\nqcow2: " << m.err);
                REQUIRE(m.status == q.status);
                CHECK(json::differences(info_of(dir.path(), "q.qcow2"), info_of(dir.path(), "m.qcow2")).empty());
                CHECK(qcow2_test::run({"qemu-img", "check", "m.qcow2"}, dir.path()).status == 0);
                CHECK(qcow2_test::run({"qemu-img", "compare", "q.qcow2", "m.qcow2"}, dir.path()).status == 0);
            }
            // Grown to 32M with zeroes after the old end: the first 16M are what they were.
            must({"qemu-img", "resize", "-f", "raw", "before.raw", "32M"}, dir.path());
            CHECK(qcow2_test::run({"qemu-img", "compare", "-F", "raw", "m.qcow2", "before.raw"}, dir.path()).status == 0);
        }
    }
}

TEST_CASE("cli amend: refusals as qemu-img's", "[interop]") {
    REQUIRE(qcow2_test::find_program("qemu-img"));
    qcow2_test::temp_dir dir("qcow2-amend-err-");
    must({"qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "4M"}, dir.path());
    must({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "4M"}, dir.path());
    const std::vector<argv_t> cases{
        {"-o", "compat=0.10,refcount_bits=8", "a.qcow2"},
        {"-o", "cluster_size=4096", "a.qcow2"},
        {"-o", "foo=1", "a.qcow2"},
        {"a.qcow2"},
        {"-o", "lazy_refcounts=on", "v2.qcow2"},
        {"-o", "refcount_bits=8", "v2.qcow2"},
        {"-o", "refcount_bits=3", "a.qcow2"},
        {"-o", "data_file_raw=on", "a.qcow2"},
    };
    for (const auto& c : cases) {
        argv_t q{"qemu-img", "amend"}, m{QCOW2_TEST_CLI, "amend"};
        q.insert(q.end(), c.begin(), c.end());
        m.insert(m.end(), c.begin(), c.end());
        const auto qr = qcow2_test::run(q, dir.path());
        const auto mr = qcow2_test::run(m, dir.path());
        INFO(qcow2_test::command_line(m) << "\nqemu-img: " << qr.err << "\nqcow2: " << mr.err);
        CHECK(mr.status == qr.status);
        const auto first_line = [](const std::string& s, const std::string& prefix) {
            auto line = s.substr(0, s.find('\n'));
            return line.rfind(prefix, 0) == 0 ? line.substr(prefix.size()) : line;
        };
        CHECK(first_line(mr.err, "qcow2: ") == first_line(qr.err, "qemu-img: "));
    }
}
