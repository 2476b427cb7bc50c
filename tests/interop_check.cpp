// SPDX-License-Identifier: MIT
// Interop with QEMU for `check`: images made at test time by qemu-img and qemu-io (every
// refcount width, several cluster sizes, data, snapshots, compressed clusters, bitmaps, an
// external data file, preallocation=metadata, extended L2), some damaged on purpose
// afterwards (a leaked cluster, a zero refcount under data, an L2 entry pointing into the
// L1 table, a cleared COPIED flag, a lazy-refcount image left dirty by a killed qemu-io, a
// refcount block overwritten with garbage). For each: `qcow2 check --output=json` equals
// `qemu-img check --output=json` (parsed) and the exit codes match. Each damaged image is
// then repaired (`-r all`, and `-r leaks`) by both on identical copies: same report, same
// exit code, byte-identical files, and a repaired image qemu-img finds clean whose guest
// content is what it was before the damage.
#include "qcow2/qcow2.hpp"

#include "support/json.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#ifndef QCOW2_TEST_CLI
#error "QCOW2_TEST_CLI must give the path of the qcow2 CLI binary (tests/CMakeLists.txt)"
#endif

namespace {

namespace json = qcow2_test::json;
using qcow2_test::command_line;

/// The file at `path` as raw bytes at `offset`.
std::uint64_t peek64(const std::string& path, std::uint64_t offset) {
    std::ifstream f(path, std::ios::binary);
    f.seekg(static_cast<std::streamoff>(offset));
    unsigned char b[8]{};
    f.read(reinterpret_cast<char*>(b), 8);
    std::uint64_t v = 0;
    for (unsigned char c : b) v = (v << 8) | c;
    return v;
}

void poke64(const std::string& path, std::uint64_t offset, std::uint64_t v) {
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(offset));
    char b[8];
    for (int i = 7; i >= 0; --i) {
        b[i] = static_cast<char>(v & 0xFF);
        v >>= 8;
    }
    f.write(b, 8);
    REQUIRE(f.good());
}

qcow2::header header_of(const std::string& path) {
    auto file = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_only);
    REQUIRE(file);
    qcow2::open_options o;
    o.metadata_only = true;
    auto img = qcow2::image::open(std::move(*file), o);
    REQUIRE(img);
    return img->header();
}

/// Host offset of the refcount entry of host cluster `cluster` (16-bit refcounts only).
std::uint64_t refcount_entry_offset(const std::string& path, std::uint64_t cluster) {
    const auto h = header_of(path);
    REQUIRE(h.refcount_order == 4);
    const std::uint64_t per = h.cluster_size() / 2;
    const std::uint64_t block = peek64(path, h.refcount_table_offset + cluster / per * 8) & qcow2::reftable_bits::offset_mask;
    REQUIRE(block != 0);
    return block + cluster % per * 2;
}

void set_refcount16(const std::string& path, std::uint64_t cluster, std::uint16_t v) {
    const std::uint64_t at = refcount_entry_offset(path, cluster);
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(at));
    const char b[2] = {static_cast<char>(v >> 8), static_cast<char>(v & 0xFF)};
    f.write(b, 2);
    REQUIRE(f.good());
}

/// Host offset of L2 entry 0 of the table of L1 entry 0.
std::uint64_t first_l2_entry(const std::string& path) {
    const auto h = header_of(path);
    const std::uint64_t l2 = peek64(path, h.l1_table_offset) & qcow2::l2_bits::l1_offset_mask;
    REQUIRE(l2 != 0);
    return l2;
}

/// Overwrites the first refcount block with pseudo-random bytes.
void garbage_refblock(const std::string& path) {
    const auto h = header_of(path);
    const std::uint64_t block = peek64(path, h.refcount_table_offset) & qcow2::reftable_bits::offset_mask;
    REQUIRE(block != 0);
    std::string junk(static_cast<std::size_t>(h.cluster_size()), '\0');
    std::uint32_t x = 12345;
    for (char& c : junk) {
        x = x * 1103515245u + 12345u;
        c = static_cast<char>(x >> 24);
    }
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    f.seekp(static_cast<std::streamoff>(block));
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
    REQUIRE(f.good());
}

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

struct check_case {
    std::string name;
    std::vector<std::vector<std::string>> steps; ///< commands run in the directory (any exit status)
    std::function<void(const std::string&)> damage; ///< applied to the image's path afterwards
    int expect_status = -1;                         ///< when >= 0, the exit code both must give
};

std::vector<std::string> create(const std::string& name, const std::string& options, const std::string& size) {
    std::vector<std::string> a{"qemu-img", "create", "-q", "-f", "qcow2"};
    if (!options.empty()) a.insert(a.end(), {"-o", options});
    a.insert(a.end(), {name, size});
    return a;
}

std::vector<std::string> io(const std::string& name, const std::vector<std::string>& cmds) {
    std::vector<std::string> a{"qemu-io", "-f", "qcow2"};
    for (const auto& c : cmds) a.insert(a.end(), {"-c", c});
    a.push_back(name);
    return a;
}

std::vector<check_case> cases() {
    std::vector<check_case> c;
    // Every refcount width with several cluster sizes: data, compressed data, a snapshot
    // (with the active image then diverging), a persistent bitmap with dirty bits.
    for (const unsigned bits : {1u, 2u, 4u, 8u, 16u, 32u, 64u}) {
        for (const std::string cs : {"512", "4K", "64K", "2M"}) {
            const std::string n = "rc" + std::to_string(bits) + "_cs" + cs + ".qcow2";
            c.push_back({n,
                         {create(n, "refcount_bits=" + std::to_string(bits) + ",cluster_size=" + cs, "8M"),
                          {"qemu-img", "bitmap", "--add", n, "b0"},
                          io(n, {"write -P 1 0 192k", "write -c -P 2 1M 64k", "write -c -P 3 1088k 8k", "write -z 2M 64k"}),
                          {"qemu-img", "snapshot", "-c", "s1", n},
                          io(n, {"write -P 4 64k 64k", "write -P 5 5M 64k", "discard 1M 64k"})},
                         {},
                         -1});
        }
    }
    c.push_back({"compat010.qcow2",
                 {create("compat010.qcow2", "compat=0.10", "8M"), io("compat010.qcow2", {"write 0 1M", "write -c 2M 64k"}),
                  {"qemu-img", "snapshot", "-c", "s1", "compat010.qcow2"}, io("compat010.qcow2", {"write 0 64k"})},
                 {},
                 0});
    c.push_back({"extl2.qcow2",
                 {create("extl2.qcow2", "extended_l2=on", "8M"), io("extl2.qcow2", {"write 0 4k", "write 64k 64k", "write -z 1M 8k"}),
                  {"qemu-img", "snapshot", "-c", "s1", "extl2.qcow2"}, io("extl2.qcow2", {"write 8k 4k"})},
                 {},
                 0});
    c.push_back({"datafile.qcow2",
                 {create("datafile.qcow2", "data_file=datafile.raw", "8M"), io("datafile.qcow2", {"write 0 1M", "write 4M 64k"})},
                 {},
                 0});
    c.push_back({"prealloc.qcow2", {create("prealloc.qcow2", "preallocation=metadata", "64M")}, {}, 0});
    c.push_back({"prealloc_4k.qcow2",
                 {create("prealloc_4k.qcow2", "preallocation=metadata,cluster_size=4K", "16M"),
                  {"qemu-img", "snapshot", "-c", "s1", "prealloc_4k.qcow2"}},
                 {},
                 0});
    c.push_back({"empty.qcow2", {create("empty.qcow2", "", "1M")}, {}, 0});

    // Damaged images.
    c.push_back({"leak.qcow2",
                 {create("leak.qcow2", "", "8M"), io("leak.qcow2", {"write 0 128k"})},
                 [](const std::string& p) { set_refcount16(p, 0, 2); }, // the header cluster counted twice
                 3});
    c.push_back({"zero_refcount.qcow2",
                 {create("zero_refcount.qcow2", "", "8M"), io("zero_refcount.qcow2", {"write 0 128k"})},
                 [](const std::string& p) {
                     const std::uint64_t data = peek64(p, first_l2_entry(p)) & qcow2::l2_bits::offset_mask;
                     set_refcount16(p, data >> 16, 0);
                 },
                 2});
    c.push_back({"l2_into_l1.qcow2",
                 {create("l2_into_l1.qcow2", "", "8M"), io("l2_into_l1.qcow2", {"write 0 128k"})},
                 [](const std::string& p) {
                     const auto h = header_of(p);
                     poke64(p, first_l2_entry(p) + 8, h.l1_table_offset | qcow2::l2_bits::copied);
                 },
                 2});
    c.push_back({"copied_cleared.qcow2",
                 {create("copied_cleared.qcow2", "", "8M"), io("copied_cleared.qcow2", {"write 0 128k"})},
                 [](const std::string& p) {
                     const std::uint64_t at = first_l2_entry(p);
                     poke64(p, at, peek64(p, at) & ~qcow2::l2_bits::copied);
                 },
                 2});
    c.push_back({"dirty.qcow2",
                 {create("dirty.qcow2", "lazy_refcounts=on", "8M"), io("dirty.qcow2", {"write 0 64k"}),
                  io("dirty.qcow2", {"write 1M 1M", "sigraise 9"})},
                 {},
                 2});
    c.push_back({"garbage_refblock.qcow2",
                 {create("garbage_refblock.qcow2", "", "8M"), io("garbage_refblock.qcow2", {"write -P 7 0 128k", "write -P 9 3M 64k"})},
                 garbage_refblock,
                 -1});
    c.push_back({"refcount1_snapshot.qcow2", // the snapshot fails on refcount overflow and leaks
                 {create("refcount1_snapshot.qcow2", "refcount_bits=1", "8M"), io("refcount1_snapshot.qcow2", {"write 0 1M"}),
                  {"qemu-img", "snapshot", "-c", "s1", "refcount1_snapshot.qcow2"}},
                 {},
                 -1});
    return c;
}

} // namespace

TEST_CASE("check: qcow2 check equals qemu-img check", "[interop]") {
    // Interop tests run, never skip: without qemu-utils they fail.
    REQUIRE(qcow2_test::find_program("qemu-img"));
    REQUIRE(qcow2_test::find_program("qemu-io"));
    qcow2_test::temp_dir dir("qcow2-check-");
    for (const auto& k : cases()) {
        SECTION(k.name) {
            for (const auto& s : k.steps) qcow2_test::run(s, dir.path());
            if (k.damage) k.damage(dir / k.name);
            const auto q = qcow2_test::run({"qemu-img", "check", "--output=json", k.name}, dir.path());
            const auto m = qcow2_test::run({QCOW2_TEST_CLI, "check", "--output=json", k.name}, dir.path());
            INFO("qemu-img: " << q.status << "\n" << q.out << q.err);
            INFO("qcow2: " << m.status << "\n" << m.out << m.err);
            CHECK(m.status == q.status);
            if (k.expect_status >= 0) CHECK(q.status == k.expect_status);
            REQUIRE(!q.out.empty());
            REQUIRE(!m.out.empty());
            const auto qj = json::parse(q.out);
            const auto mj = json::parse(m.out);
            CHECK(json::differences(qj, mj).empty());
            // The human form too: same text on stdout.
            const auto qh = qcow2_test::run({"qemu-img", "check", k.name}, dir.path());
            const auto mh = qcow2_test::run({QCOW2_TEST_CLI, "check", k.name}, dir.path());
            CHECK(mh.out == qh.out);
            CHECK(mh.status == qh.status);
        }
    }
}

TEST_CASE("check: formats without checks and repair", "[interop]") {
    REQUIRE(qcow2_test::find_program("qemu-img")); // interop tests run, never skip: install qemu-utils
    qcow2_test::temp_dir dir("qcow2-check-");
    qcow2_test::run({"qemu-img", "create", "-q", "-f", "raw", "r.raw", "1M"}, dir.path());
    qcow2_test::run({"qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "1M"}, dir.path());
    const auto q = qcow2_test::run({"qemu-img", "check", "r.raw"}, dir.path());
    const auto m = qcow2_test::run({QCOW2_TEST_CLI, "check", "r.raw"}, dir.path());
    CHECK(q.status == 63);
    CHECK(m.status == 63);
    const auto r = qcow2_test::run({QCOW2_TEST_CLI, "check", "-r", "some", "q.qcow2"}, dir.path());
    CHECK(r.status == 1);
    CHECK(r.err.find("expecting 'leaks' or 'all'") != std::string::npos);
    // A clean image: nothing to repair, same output and status as qemu-img.
    const auto qc = qcow2_test::run({"qemu-img", "check", "-r", "all", "q.qcow2"}, dir.path());
    const auto mc = qcow2_test::run({QCOW2_TEST_CLI, "check", "-r", "all", "q.qcow2"}, dir.path());
    CHECK(mc.status == qc.status);
    CHECK(mc.out == qc.out);
    // -q: no report on stdout, the exit status still tells (as qemu-img check -q).
    for (const char* fmt : {"--output=human", "--output=json"}) {
        const auto quiet = qcow2_test::run({QCOW2_TEST_CLI, "check", "-q", fmt, "q.qcow2"}, dir.path());
        CHECK(quiet.status == 0);
        CHECK(quiet.out.empty());
    }
    qcow2_test::run({"qemu-img", "create", "-q", "-f", "qcow2", "leak.qcow2", "1M"}, dir.path());
    set_refcount16(dir / "leak.qcow2", 0, 2); // the header cluster counted twice: one leak
    const auto ql = qcow2_test::run({"qemu-img", "check", "-q", "leak.qcow2"}, dir.path());
    const auto ml = qcow2_test::run({QCOW2_TEST_CLI, "check", "-q", "leak.qcow2"}, dir.path());
    CHECK(ql.status == 3);
    CHECK(ml.status == ql.status);
    CHECK(ml.out == ql.out);
    // The library refuses to repair an image opened read-only.
    auto file = qcow2::io::posix_file::open(dir / "q.qcow2", qcow2::io::open_mode::read_only);
    REQUIRE(file);
    auto img = qcow2::image::open(std::move(*file));
    REQUIRE(img);
    qcow2::check_options o;
    o.repair = qcow2::check_repair::leaks;
    const auto rep = qcow2::check(*img, o);
    REQUIRE(!rep);
    CHECK(rep.error().code() == qcow2::make_error_code(qcow2::errc::read_only));
}

TEST_CASE("check: qcow2 check -r repairs as qemu-img check -r does", "[interop]") {
    // Interop tests run, never skip: without qemu-utils they fail.
    REQUIRE(qcow2_test::find_program("qemu-img"));
    REQUIRE(qcow2_test::find_program("qemu-io"));
    namespace fs = std::filesystem;
    struct repair_case {
        std::string image;
        std::string mode;
        bool same_guest_data; ///< the damage leaves the guest content as it was
    };
    const std::vector<repair_case> repairs{
        {"leak.qcow2", "leaks", true},          {"leak.qcow2", "all", true},
        {"zero_refcount.qcow2", "all", true},   {"zero_refcount.qcow2", "leaks", true}, // leaks: needs a rebuild, fails
        {"l2_into_l1.qcow2", "all", false},     {"l2_into_l1.qcow2", "leaks", false},   // leaks: a corruption stays
        {"copied_cleared.qcow2", "all", true},  {"copied_cleared.qcow2", "leaks", true},
        {"dirty.qcow2", "all", true},           {"garbage_refblock.qcow2", "all", true},
    };
    qcow2_test::temp_dir dir("qcow2-repair-");
    for (const auto& k : cases()) {
        for (const auto& r : repairs) {
            if (r.image != k.name) continue;
            SECTION(k.name + " -r " + r.mode) {
                for (const auto& s : k.steps) qcow2_test::run(s, dir.path());
                // The guest content before the damage (the dirty image's damage is its steps).
                REQUIRE(qcow2_test::run({"qemu-img", "convert", "-U", "-O", "raw", k.name, "before.raw"}, dir.path()).status == 0);
                if (k.damage) k.damage(dir / k.name);
                const std::string q = "q_" + k.name, h = "h_" + k.name, mh = "mh_" + k.name;
                for (const auto& copy : {q, h, mh}) fs::copy_file(dir / k.name, dir / copy, fs::copy_options::overwrite_existing);

                const auto qr = qcow2_test::run({"qemu-img", "check", "-r", r.mode, "--output=json", q}, dir.path());
                const auto mr = qcow2_test::run({QCOW2_TEST_CLI, "check", "-r", r.mode, "--output=json", k.name}, dir.path());
                INFO("qemu-img: " << qr.status << "\n" << qr.out << qr.err);
                INFO("qcow2: " << mr.status << "\n" << mr.out << mr.err);
                CHECK(mr.status == qr.status);
                CHECK(qr.out.empty() == mr.out.empty());
                if (!qr.out.empty() && !mr.out.empty()) {
                    auto qj = json::parse(qr.out);
                    auto mj = json::parse(mr.out);
                    qj.erase("filename");
                    mj.erase("filename");
                    CHECK(json::differences(qj, mj).empty());
                }
                // Byte for byte the file qemu-img repaired (same refcounts, flags, rebuilt structure, discards).
                const bool same_file = slurp(dir / k.name) == slurp(dir / q);
                CHECK(same_file);

                // The human form: same stdout, same status.
                const auto qh = qcow2_test::run({"qemu-img", "check", "-r", r.mode, h}, dir.path());
                const auto mhr = qcow2_test::run({QCOW2_TEST_CLI, "check", "-r", r.mode, mh}, dir.path());
                CHECK(mhr.out == qh.out);
                CHECK(mhr.status == qh.status);

                if (qr.status != 0) continue; // not fully repairable in this mode
                const auto after = qcow2_test::run({"qemu-img", "check", "--output=json", k.name}, dir.path());
                INFO("after: " << after.out << after.err);
                CHECK(after.status == 0);
                const auto aj = json::parse(after.out);
                CHECK(aj.find("corruptions") == nullptr);
                CHECK(aj.find("leaks") == nullptr);
                // The dirty and corrupt bits are cleared.
                CHECK((header_of(dir / k.name).incompatible_features &
                       (qcow2::features::dirty::mask | qcow2::features::corrupt::mask)) == 0);
                if (r.same_guest_data) {
                    REQUIRE(qcow2_test::run({"qemu-img", "convert", "-O", "raw", k.name, "after.raw"}, dir.path()).status == 0);
                    const bool same_guest = slurp(dir / "after.raw") == slurp(dir / "before.raw");
                    CHECK(same_guest);
                }
            }
        }
    }
}

TEST_CASE("check: a dirty image is repaired by a writable open, as QEMU repairs it", "[interop]") {
    REQUIRE(qcow2_test::find_program("qemu-img"));
    REQUIRE(qcow2_test::find_program("qemu-io"));
    namespace fs = std::filesystem;
    qcow2_test::temp_dir dir("qcow2-dirty-open-");
    // Lazy refcounts, data written, then qemu-io killed: the dirty bit stays, refcounts lag.
    REQUIRE(qcow2_test::run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "d.qcow2", "16M"}, dir.path()).ok());
    REQUIRE(qcow2_test::run({"qemu-io", "-c", "write -P 0x11 0 64k", "d.qcow2"}, dir.path()).ok());
    qcow2_test::run({"qemu-io", "-c", "write -P 0x22 1M 3M", "-c", "write -P 0x33 8M 64k", "-c", "sigraise 9", "d.qcow2"}, dir.path());
    REQUIRE((header_of(dir / "d.qcow2").incompatible_features & qcow2::features::dirty::mask) != 0);
    const auto dirty_check = qcow2_test::run({"qemu-img", "check", "d.qcow2"}, dir.path());
    CHECK(dirty_check.status != 0); // the lagging refcounts are visible before the repair
    fs::copy_file(dir / "d.qcow2", dir / "q.qcow2");
    // QEMU repairs on open: a qemu-io session that writes nothing.
    REQUIRE(qcow2_test::run({"qemu-io", "-c", "flush", "q.qcow2"}, dir.path()).ok());

    {
        auto file = qcow2::io::posix_file::open(dir / "d.qcow2", qcow2::io::open_mode::read_write);
        REQUIRE(file);
        auto img = qcow2::image::open(std::move(*file), qcow2::open_options{.writable = true});
        REQUIRE(img);
        CHECK((img->header().incompatible_features & qcow2::features::dirty::mask) == 0);
        // A write after the repair lands in a consistent image.
        REQUIRE(img->write(12 << 20, std::vector<std::byte>(4096, std::byte{0x44})));
        REQUIRE(img->close());
    }

    const auto after = qcow2_test::run({"qemu-img", "check", "--output=json", "d.qcow2"}, dir.path());
    INFO(after.out << after.err);
    CHECK(after.status == 0);
    for (const auto& [off, len, pat] : std::vector<std::tuple<std::string, std::string, std::string>>{
             {"0", "64k", "0x11"}, {"1M", "3M", "0x22"}, {"8M", "64k", "0x33"}, {"12M", "4k", "0x44"}}) {
        const auto r = qcow2_test::run({"qemu-io", "-c", "read -P " + pat + " " + off + " " + len, "d.qcow2"}, dir.path());
        CHECK(r.ok());
        CHECK(r.out.find("Pattern verification failed") == std::string::npos);
    }
    // Same guest data as QEMU's repaired copy everywhere but the last write.
    REQUIRE(qcow2_test::run({"qemu-io", "-c", "write -P 0x44 12M 4k", "q.qcow2"}, dir.path()).ok());
    CHECK(qcow2_test::run({"qemu-img", "compare", "d.qcow2", "q.qcow2"}, dir.path()).ok());
}
