// SPDX-License-Identifier: MIT
// Interop with QEMU for the all-zero autoclear bit (docs/all-zero-bit.md): `qcow2 create`
// sets it and `qcow2 info` shows it; QEMU accepts such images (`qemu-img check` clean,
// info and reads unchanged) and clears the bit on every read-write open, as it clears
// every autoclear bit it does not know; our data writes clear it and our zero writes,
// discards and resizes keep it; a feature name table that names bit 2 otherwise makes the
// bit untrusted; `qcow2 convert -n` skips the zero regions of the source only when the
// destination is known zero, and leaves an identical copy either way.
#include "qcow2/qcow2.hpp"

#include "support/json.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <fstream>
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

/// "all-zero" from `qcow2 info --output=json`.
bool all_zero(const std::string& dir, const std::string& image) {
    const auto r = must({QCOW2_TEST_CLI, "info", "--output=json", image}, dir);
    const auto j = json::parse(r.out);
    const auto* v = j.find("format-specific");
    REQUIRE(v);
    const auto* d = v->find("data");
    REQUIRE(d);
    const auto* b = d->find("all-zero");
    REQUIRE(b);
    return b->as_bool();
}

/// The autoclear bits in the file.
std::uint64_t autoclear(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    f.seekg(88);
    unsigned char b[8]{};
    f.read(reinterpret_cast<char*>(b), 8);
    std::uint64_t v = 0;
    for (unsigned char c : b) v = (v << 8) | c;
    return v;
}

void require_qemu() {
    REQUIRE(qcow2_test::find_program("qemu-img"));
    REQUIRE(qcow2_test::find_program("qemu-io"));
}

} // namespace

TEST_CASE("all-zero interop: QEMU accepts the bit and clears it on a read-write open", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-allzero-");
    for (const std::string opts : {"cluster_size=65536", "cluster_size=4096", "cluster_size=512", "preallocation=metadata",
                                   "preallocation=full,cluster_size=16384,extended_l2=on", "refcount_bits=1,lazy_refcounts=on"}) {
        DYNAMIC_SECTION(opts) {
            must({QCOW2_TEST_CLI, "create", "-q", "-f", "qcow2", "-o", opts, "a.qcow2", "8M"}, dir.path());
            CHECK(all_zero(dir.path(), "a.qcow2"));
            CHECK((autoclear(dir / "a.qcow2") & 4) != 0);
            // qemu-img reads it as any image: check clean, info fine, reads zero.
            const auto c = qcow2_test::run({"qemu-img", "check", "--output=json", "a.qcow2"}, dir.path());
            CHECK(c.status == 0);
            must({"qemu-img", "info", "a.qcow2"}, dir.path());
            const auto rd = must({"qemu-io", "-r", "-c", "read -P 0 0 8M", "a.qcow2"}, dir.path());
            CHECK(rd.out.find("Pattern verification failed") == std::string::npos);
            CHECK((autoclear(dir / "a.qcow2") & 4) != 0); // a read-only open keeps it
            // Any read-write open by QEMU clears it (even one that writes nothing).
            must({"qemu-io", "-c", "flush", "a.qcow2"}, dir.path());
            CHECK((autoclear(dir / "a.qcow2") & 4) == 0);
            CHECK_FALSE(all_zero(dir.path(), "a.qcow2"));
            CHECK(qcow2_test::run({"qemu-img", "check", "a.qcow2"}, dir.path()).status == 0);
        }
    }
}

TEST_CASE("all-zero interop: our writes clear the bit, zero writes, discards and resizes keep it", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-allzero-ops-");
    struct step {
        argv_t io;     ///< qcow2 io commands, or a resize when it starts with "resize"
        bool keeps;    ///< the bit is still set after it
    };
    const std::vector<step> steps{
        {{"read 0 64k"}, true},
        {{"write -z 0 1M"}, true},
        {{"write -z -u 1M 1M"}, true},
        {{"discard 0 4M"}, true},
        {{"flush"}, true},
        {{"resize", "16M"}, true},
        {{"resize", "--shrink", "4M"}, true},
        {{"write -P 0x5a 100k 4k"}, false},
    };
    must({QCOW2_TEST_CLI, "create", "-q", "-f", "qcow2", "z.qcow2", "8M"}, dir.path());
    for (const auto& s : steps) {
        INFO(s.io.front());
        if (s.io.front() == "resize") {
            argv_t a{QCOW2_TEST_CLI, "resize", "-q"};
            a.insert(a.end(), s.io.begin() + 1, s.io.end());
            a.insert(a.end() - 1, "z.qcow2");
            must(a, dir.path());
        } else {
            must({QCOW2_TEST_CLI, "io", "-c", s.io.front(), "z.qcow2"}, dir.path());
        }
        CHECK(all_zero(dir.path(), "z.qcow2") == s.keeps);
        CHECK(qcow2_test::run({"qemu-img", "check", "z.qcow2"}, dir.path()).status == 0);
    }
    // A compressed write clears it too.
    must({QCOW2_TEST_CLI, "create", "-q", "-f", "qcow2", "c.qcow2", "8M"}, dir.path());
    must({QCOW2_TEST_CLI, "io", "-c", "write -c 0 64k", "c.qcow2"}, dir.path());
    CHECK_FALSE(all_zero(dir.path(), "c.qcow2"));
    // An image made by qemu-img never has it.
    must({"qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "8M"}, dir.path());
    CHECK_FALSE(all_zero(dir.path(), "q.qcow2"));
}

TEST_CASE("all-zero interop: a bit 2 named otherwise is not trusted", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-allzero-name-");
    must({QCOW2_TEST_CLI, "create", "-q", "-f", "qcow2", "n.qcow2", "8M"}, dir.path());
    // Rename the table's entry for autoclear bit 2 in place (the table is the one we wrote).
    auto file = qcow2::io::posix_file::open(dir / "n.qcow2", qcow2::io::open_mode::read_write);
    REQUIRE(file);
    std::vector<std::byte> c0(65536);
    REQUIRE(!file->read_at(0, c0));
    auto h = qcow2::decode_header(c0);
    REQUIRE(h);
    auto t = h->feature_names();
    bool renamed = false;
    for (auto& e : t)
        if (e.klass == qcow2::feature_class::autoclear && e.bit == 2) e.name = "someone else's bit", renamed = true;
    REQUIRE(renamed);
    h->set_extension(qcow2::extension_type::feature_names, qcow2::encode_feature_names(t));
    REQUIRE(qcow2::encode_header(*h, c0));
    REQUIRE(!file->write_at(0, c0));
    REQUIRE(!file->flush());
    CHECK((autoclear(dir / "n.qcow2") & 4) != 0);
    CHECK_FALSE(all_zero(dir.path(), "n.qcow2"));
    // convert -n onto it must write the zeroes: its old data goes.
    must({"qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "8M"}, dir.path());
    must({"qemu-io", "-c", "write -P 0x33 1M 64k", "src.qcow2"}, dir.path());
    must({QCOW2_TEST_CLI, "io", "-c", "write -P 0x77 0 8M", "n.qcow2"}, dir.path()); // (this clears the bit anyway)
    must({QCOW2_TEST_CLI, "convert", "-n", "-O", "qcow2", "src.qcow2", "n.qcow2"}, dir.path());
    CHECK(qcow2_test::run({"qemu-img", "compare", "src.qcow2", "n.qcow2"}, dir.path()).status == 0);
}

TEST_CASE("all-zero interop: convert -n skips zero regions only onto a known-zero image", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-allzero-convert-");
    must({"qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "64M"}, dir.path());
    must({"qemu-io", "-c", "write -P 0x21 0 1M", "-c", "write -P 0x43 32M 64k", "src.qcow2"}, dir.path());
    // Preallocated destinations: every cluster maps a host cluster, so a zeroed one shows.
    must({QCOW2_TEST_CLI, "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "known.qcow2", "64M"}, dir.path());
    must({QCOW2_TEST_CLI, "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "unknown.qcow2", "64M"}, dir.path());
    must({"qemu-io", "-c", "flush", "unknown.qcow2"}, dir.path()); // QEMU clears the bit
    REQUIRE(all_zero(dir.path(), "known.qcow2"));
    REQUIRE_FALSE(all_zero(dir.path(), "unknown.qcow2"));
    for (const std::string dst : {"known.qcow2", "unknown.qcow2"}) {
        must({QCOW2_TEST_CLI, "convert", "-n", "-O", "qcow2", "src.qcow2", dst}, dir.path());
        CHECK(qcow2_test::run({"qemu-img", "compare", "src.qcow2", dst}, dir.path()).status == 0);
        CHECK(qcow2_test::run({"qemu-img", "check", dst}, dir.path()).status == 0);
    }
    // Onto the known-zero image nothing was written where the source is zero: those clusters
    // are still preallocated data (reading zero from the sparse file). Onto the other one
    // they were zeroed.
    const auto map_of = [&](const std::string& img) {
        return json::parse(must({"qemu-img", "map", "--output=json", img}, dir.path()).out);
    };
    const auto zero_at = [](const json::value& m, std::uint64_t off) {
        for (const auto& e : m.as_array()) {
            const auto s = e.find("start")->as_uint();
            const auto l = e.find("length")->as_uint();
            if (off >= s && off < s + l) return e.find("zero")->as_bool() && !e.find("data")->as_bool();
        }
        FAIL("offset not mapped");
        return false;
    };
    const auto known = map_of("known.qcow2"), unknown = map_of("unknown.qcow2");
    CHECK_FALSE(zero_at(known, 16 << 20));
    CHECK(zero_at(unknown, 16 << 20));
    CHECK_FALSE(zero_at(known, 0));
    CHECK_FALSE(zero_at(unknown, 0));
    // A destination full of old data ends up identical to the source too.
    must({"qemu-img", "create", "-q", "-f", "qcow2", "old.qcow2", "64M"}, dir.path());
    must({"qemu-io", "-c", "write -P 0x99 0 64M", "old.qcow2"}, dir.path());
    must({QCOW2_TEST_CLI, "convert", "-n", "-O", "qcow2", "src.qcow2", "old.qcow2"}, dir.path());
    CHECK(qcow2_test::run({"qemu-img", "compare", "src.qcow2", "old.qcow2"}, dir.path()).status == 0);
}
