// SPDX-License-Identifier: MIT
// Interop with QEMU for `qcow2 measure`, `qcow2 commit` and `qcow2 rebase`
// (examples/qcow2/{measure,commit,rebase}.hpp). Everything is made at test time, in
// temporary directories, by qemu-img and qemu-io:
//
// - measure: the JSON and the text of `qemu-img measure` (equal byte for byte, parsed and
//   compared too) for --size of several sizes and for sources (qcow2 with data, zero
//   clusters and discards, small clusters, compressed clusters, extended L2 subclusters,
//   preallocated metadata, a version 2 image, a backing chain, persistent bitmaps, raw files
//   with holes and an odd size), each against targets of several cluster sizes, refcount
//   widths, extended L2, preallocation modes, compat=0.10, a backing file and -O raw; the
//   errors and exit status of qemu-img's refusals;
// - commit: on copies of the same chains (qcow2 and raw backing files, a backing file
//   smaller than the image, a three-image chain, extended L2, version 2, -d), after our
//   commit the backing file reads as the image did before, the image reads as its backing
//   file, both check clean, our emptied image carries the all-zero bit, and both images
//   compare equal to those qemu-img commit made; output, errors and exit status are qemu-img's;
// - rebase: on copies of the same images (safe onto smaller, larger, raw and in-chain backing
//   files, onto none, from a raw backing file, an image in a subdirectory, version 2,
//   extended L2; unsafe renames and removals, with the old backing file gone), the guest disk
//   reads as a raw copy taken before, the image checks clean, `qemu-img info` shows the new
//   backing name and format, and the image compares equal to (and, but for extended L2,
//   allocates what) qemu-img rebase made; errors and exit status are qemu-img's.
#include "support/json.hpp"
#include "support/interop.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#ifndef QCOW2_TEST_CLI
#error "QCOW2_TEST_CLI must give the path of the qcow2 CLI binary (tests/CMakeLists.txt)"
#endif

namespace {

namespace fs = std::filesystem;
namespace json = qcow2_test::json;
using qcow2_test::command_line;
using qcow2_test::process_result;
using argv_t = std::vector<std::string>;
using qcow2_test::describe;
using qcow2_test::member;
using qcow2_test::must_run;
using qcow2_test::qemu_check_clean;

void require_qemu() {
    REQUIRE(qcow2_test::find_program("qemu-img"));
    REQUIRE(qcow2_test::find_program("qemu-io"));
}

argv_t cat(argv_t head, const argv_t& tail) {
    head.insert(head.end(), tail.begin(), tail.end());
    return head;
}

/// qemu-img's stderr in our words: "qemu-img: " at line starts becomes "qcow2: ", and its
/// "Try 'qemu-img --help'" lines and its warning about probing a raw file go.
std::string qemu_words(const std::string& err) {
    std::istringstream in(err);
    std::string line, out;
    while (std::getline(in, line)) {
        if (line.rfind("Try 'qemu-img --help'", 0) == 0 || line.rfind("WARNING: Image format was not specified", 0) == 0 ||
            line.rfind("         ", 0) == 0)
            continue;
        if (line.rfind("qemu-img: ", 0) == 0) line = "qcow2: " + line.substr(10);
        out += line + "\n";
    }
    return out;
}

json::value info_json(const std::string& dir, const std::string& file) {
    return json::parse(must_run({"qemu-img", "info", "--output=json", file}, dir).out);
}

/// `qemu-img compare` (formats probed, or given) finds `a` and `b` identical.
void require_identical(const std::string& dir, const std::string& a, const std::string& b, const argv_t& formats = {}) {
    const argv_t argv = cat(cat({"qemu-img", "compare"}, formats), {a, b});
    auto r = qcow2_test::run(argv, dir);
    INFO(describe(argv, r));
    CHECK(r.status == 0);
    CHECK_THAT(r.out, Catch::Matchers::EndsWith("Images are identical.\n"));
}

/// Runs a shell-free list of qemu-img/qemu-io command lines in `dir`.
void build(const std::string& dir, const std::vector<argv_t>& steps) {
    for (const auto& s : steps) must_run(s, dir);
}

argv_t io(const std::string& file, const argv_t& cmds, const std::string& fmt = "qcow2") {
    argv_t argv{"qemu-io", "-f", fmt};
    for (const auto& c : cmds) argv.insert(argv.end(), {"-c", c});
    argv.push_back(file);
    return argv;
}

argv_t create(const std::string& file, const std::string& size, const argv_t& options = {}) {
    return cat(cat({"qemu-img", "create", "-q", "-f", "qcow2"}, options), {file, size});
}

/// A file of `size` bytes of holes with `byte` written over each (offset, length).
void write_raw(const std::string& path, std::uint64_t size, const std::vector<std::pair<std::uint64_t, std::uint64_t>>& data,
               char byte) {
    {
        std::FILE* f = std::fopen(path.c_str(), "wb");
        REQUIRE(f);
        std::fclose(f);
    }
    fs::resize_file(path, size);
    std::FILE* f = std::fopen(path.c_str(), "r+b");
    REQUIRE(f);
    for (const auto& [off, len] : data) {
        std::string bytes(static_cast<std::size_t>(len), byte);
        std::fseek(f, static_cast<long>(off), SEEK_SET);
        std::fwrite(bytes.data(), 1, bytes.size(), f);
    }
    std::fclose(f);
}

/// `qemu-img map --output=json` of `file` without the host offsets (layouts may differ).
json::value map_without_offsets(const std::string& dir, const std::string& file) {
    auto j = json::parse(must_run({"qemu-img", "map", "--output=json", file}, dir).out);
    for (auto& e : j.as_array()) e.erase("offset");
    return j;
}

} // namespace

// ------------------------------------------------------------------------------ measure

TEST_CASE("cli measure: --size figures and output as qemu-img's", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-measure-");
    const std::string d = dir.path();
    const std::vector<argv_t> cases{
        {"--size", "0"},
        {"--size", "1G"},
        {"-O", "qcow2", "--size", "0"},
        {"-O", "qcow2", "--size", "512"},
        {"-O", "qcow2", "--size", "1000"},
        {"-O", "qcow2", "--size", "64M"},
        {"-O", "qcow2", "--size", "1.5G"},
        {"-O", "qcow2", "--size", "100G"},
        {"-O", "qcow2", "--size", "1T"},
        {"-O", "qcow2", "-o", "cluster_size=512", "--size", "100M"},
        {"-O", "qcow2", "-o", "cluster_size=512", "--size", "128G"},
        {"-O", "qcow2", "-o", "cluster_size=2M,refcount_bits=64", "--size", "10T"},
        {"-O", "qcow2", "-o", "cluster_size=4k,refcount_bits=1", "--size", "10G"},
        {"-O", "qcow2", "-o", "refcount_bits=2", "--size", "3G"},
        {"-O", "qcow2", "-o", "refcount_bits=8,cluster_size=16k", "--size", "7G"},
        {"-O", "qcow2", "-o", "refcount_bits=32", "--size", "1G"},
        {"-O", "qcow2", "-o", "extended_l2=on", "--size", "5G"},
        {"-O", "qcow2", "-o", "extended_l2=on,cluster_size=16k", "--size", "700M"},
        {"-O", "qcow2", "-o", "preallocation=metadata", "--size", "1G"},
        {"-O", "qcow2", "-o", "preallocation=falloc,cluster_size=8k", "--size", "1G"},
        {"-O", "qcow2", "-o", "preallocation=full", "--size", "300M"},
        {"-O", "qcow2", "-o", "compat=0.10", "--size", "100G"},
        {"-O", "qcow2", "-o", "compat=1.1,lazy_refcounts=on,compression_type=zstd", "--size", "2G"},
        {"-O", "qcow2", "-o", "backing_file=base.qcow2", "--size", "1G"},
        {"-O", "qcow2", "-o", "size=5G", "--size", "1G"},
        {"-O", "qcow2", "-o", "cluster_size=4k", "-o", "refcount_bits=4", "--size", "2G"},
        {"-O", "raw", "--size", "1000"},
        {"-O", "raw", "-o", "preallocation=full", "--size", "1G"},
    };
    for (const auto& args : cases) {
        for (const char* output : {"--output=json", "--output=human"}) {
            DYNAMIC_SECTION(command_line(args) << " " << output) {
                const argv_t qargv = cat({"qemu-img", "measure", output}, args);
                const argv_t margv = cat({QCOW2_TEST_CLI, "measure", output}, args);
                const auto q = qcow2_test::run(qargv, d), m = qcow2_test::run(margv, d);
                INFO(describe(qargv, q));
                INFO(describe(margv, m));
                REQUIRE(q.status == 0);
                CHECK(m.status == 0);
                CHECK(m.out == q.out);
                CHECK(m.err.empty());
                if (std::string(output) == "--output=json") CHECK(json::parse(m.out) == json::parse(q.out));
            }
        }
    }
}

TEST_CASE("cli measure: sources measured as qemu-img measures them", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-measure-");
    const std::string d = dir.path();
    build(d, {
        create("data.qcow2", "64M"),
        io("data.qcow2", {"write -P 1 0 1M", "write -P 2 1048000 5000", "write -P 3 10M 4k", "write -P 4 20M 64k",
                          "write -z 20M 64k", "write -P 5 30M 2M", "discard 31M 64k", "write -P 6 63M 4k"}),
        create("small.qcow2", "16M", {"-o", "cluster_size=4k"}),
        io("small.qcow2", {"write -P 1 0 5000", "write -P 2 8k 100k", "write -P 3 15M 1M"}),
        create("compressed.qcow2", "32M"),
        io("compressed.qcow2", {"write -c -P 1 0 64k", "write -c -P 2 1M 64k", "write -c -P 3 2M 64k", "write -P 4 3M 1M"}),
        create("extl2.qcow2", "32M", {"-o", "extended_l2=on"}),
        io("extl2.qcow2", {"write -P 1 0 2k", "write -P 2 64k 4k", "write -P 3 1M 200k", "write -z 1M 32k"}),
        create("prealloc.qcow2", "16M", {"-o", "preallocation=metadata"}),
        io("prealloc.qcow2", {"write -P 1 0 1M", "write -P 2 8M 64k"}),
        create("v2.qcow2", "16M", {"-o", "compat=0.10"}),
        io("v2.qcow2", {"write -P 1 0 3M"}),
        create("base.qcow2", "32M"),
        io("base.qcow2", {"write -P 1 0 4M", "write -P 2 16M 1M"}),
        create("top.qcow2", "48M", {"-b", "base.qcow2", "-F", "qcow2"}),
        io("top.qcow2", {"write -P 3 2M 4M", "write -z 16M 512k", "write -P 4 40M 1M"}),
        create("bitmaps.qcow2", "64M"),
        {"qemu-img", "bitmap", "--add", "bitmaps.qcow2", "b1"},
        {"qemu-img", "bitmap", "--add", "-g", "512", "bitmaps.qcow2", "a-second-bitmap"},
        io("bitmaps.qcow2", {"write -P 1 0 1M"}),
        create("empty.qcow2", "1G"),
    });
    write_raw(d + "/data.raw", 10 * 1000 * 1000 + 123, {{0, 70000}, {3 * 1024 * 1024, 4096}, {10 * 1000 * 1000, 123}}, 'x');
    write_raw(d + "/holes.raw", 8 * 1024 * 1024, {}, 'x');
    const std::vector<argv_t> sources{{"data.qcow2"},     {"small.qcow2"}, {"compressed.qcow2"}, {"extl2.qcow2"},
                                      {"prealloc.qcow2"}, {"v2.qcow2"},    {"top.qcow2"},        {"bitmaps.qcow2"},
                                      {"empty.qcow2"},    {"data.raw"},    {"holes.raw"},        {"-f", "raw", "data.qcow2"},
                                      {"-f", "qcow2", "v2.qcow2"}};
    const std::vector<argv_t> targets{
        {"-O", "qcow2"},
        {"-O", "qcow2", "-o", "cluster_size=4k"},
        {"-O", "qcow2", "-o", "cluster_size=2M,refcount_bits=64"},
        {"-O", "qcow2", "-o", "cluster_size=512,refcount_bits=1"},
        {"-O", "qcow2", "-o", "extended_l2=on,refcount_bits=8"},
        {"-O", "qcow2", "-o", "preallocation=full"},
        {"-O", "qcow2", "-o", "compat=0.10"},
        {"-O", "qcow2", "-o", "backing_file=base.qcow2"},
        {"-O", "raw"},
    };
    // One corpus for every pair (no sections: building it once keeps the test fast).
    for (const auto& src : sources) {
        for (const auto& target : targets) {
            INFO(command_line(target) << " " << command_line(src));
            {
                const argv_t args = cat(cat({"--output=json"}, target), src);
                const argv_t qargv = cat({"qemu-img", "measure"}, args), margv = cat({QCOW2_TEST_CLI, "measure"}, args);
                const auto q = qcow2_test::run(qargv, d), m = qcow2_test::run(margv, d);
                INFO(describe(qargv, q));
                INFO(describe(margv, m));
                REQUIRE(q.status == 0);
                CHECK(m.status == 0);
                CHECK(m.out == q.out);
                if (m.status == 0) CHECK(json::parse(m.out) == json::parse(q.out));
            }
        }
    }
    // The bitmaps figure is there, and not zero, for the image with bitmaps (a check that
    // the corpus reaches it); the human form prints it last.
    const auto j = json::parse(must_run({QCOW2_TEST_CLI, "measure", "-O", "qcow2", "--output=json", "bitmaps.qcow2"}, d).out);
    CHECK(j.find("bitmaps")->as_uint() > 0);
    const auto q = must_run({"qemu-img", "measure", "-O", "qcow2", "bitmaps.qcow2"}, d);
    const auto m = must_run({QCOW2_TEST_CLI, "measure", "-O", "qcow2", "bitmaps.qcow2"}, d);
    CHECK(m.out == q.out);
    CHECK(m.out.find("bitmaps size: ") != std::string::npos);
}

TEST_CASE("cli measure: messages and exit status as qemu-img's", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-measure-");
    const std::string d = dir.path();
    build(d, {create("img.qcow2", "16M")});
    write_raw(d + "/disk.raw", 1024 * 1024, {}, 'x');
    const std::vector<argv_t> cases{
        {},
        {"-O", "qcow2"},
        {"-O", "qcow2", "--size", "1G", "img.qcow2"},
        {"-O", "qcow2", "-f", "qcow2", "--size", "1G"},
        {"-O", "qcow2", "img.qcow2", "disk.raw"},
        {"-O", "qcow2", "--size", "1x"},
        {"-O", "qcow2", "--size", "-1"},
        {"-O", "qcow2", "--size", "8E"},
        {"-O", "qcow2", "--size", "99999999999999999999"},
        {"--output=foo", "--size", "1G"},
        {"-O", "vmdk", "--size", "1G"},
        {"-O", "foo", "--size", "1G"},
        {"-O", "qcow2", "nonexistent.qcow2"},
        {"-O", "qcow2", "-f", "qcow2", "disk.raw"},
        {"-O", "qcow2", "-f", "foo", "img.qcow2"},
        {"-O", "qcow2", "-o", "help", "--size", "1G"},
        {"-O", "qcow2", "-o", ",,", "--size", "1G"},
        {"-O", "qcow2", "-o", "foo=bar", "--size", "1G"},
        {"-O", "qcow2", "-o", "size=1x", "img.qcow2"},
        {"-O", "qcow2", "-o", "size=1G"},
        {"-O", "qcow2", "-o", "compat=v3", "--size", "1G"},
        {"-O", "qcow2", "-o", "compat=0.10,refcount_bits=8", "--size", "1G"},
        {"-O", "qcow2", "-o", "cluster_size=3k", "--size", "1G"},
        {"-O", "qcow2", "-o", "cluster_size=4k,extended_l2=on", "--size", "1G"},
        {"-O", "qcow2", "-o", "refcount_bits=3", "--size", "1G"},
        {"-O", "qcow2", "-o", "preallocation=foo", "--size", "1G"},
        {"-O", "qcow2", "-o", "cluster_size=512", "--size", "128G", "-o", "refcount_bits=16"},
        {"-O", "qcow2", "-o", "cluster_size=512", "--size", "129G"},
        {"-O", "qcow2", "-o", "cluster_size=2M", "--size", "7E"},
        {"-O", "qcow2", "-o", "cluster_size=512,size=129G", "img.qcow2"}, // the -o size is what is checked
        {"-O", "raw", "-o", "cluster_size=4k", "--size", "1G"},
    };
    for (const auto& args : cases) {
        DYNAMIC_SECTION(command_line(args)) {
            const argv_t qargv = cat({"qemu-img", "measure"}, args), margv = cat({QCOW2_TEST_CLI, "measure"}, args);
            const auto q = qcow2_test::run(qargv, d), m = qcow2_test::run(margv, d);
            INFO(describe(qargv, q));
            INFO(describe(margv, m));
            CHECK(m.status == q.status);
            CHECK(m.out == q.out);
            CHECK(m.err == qemu_words(q.err));
        }
    }
}

// ------------------------------------------------------------------------------- commit

namespace {

/// A chain to commit, built the same way in q/ and m/: `steps`, then commit `top`, whose
/// backing file is `base` (format `base_format`).
struct commit_case {
    std::string name;
    std::vector<argv_t> steps;
    std::string top = "top.qcow2";
    std::string base = "base.qcow2";
    std::string base_format = "qcow2";
    argv_t options{}; ///< commit options
    std::string untouched{}; ///< a deeper image that must not change
};

} // namespace

TEST_CASE("cli commit: the backing file takes the image's data, as with qemu-img commit", "[interop]") {
    require_qemu();
    const argv_t top_writes{"write -P 2 1M 2M", "write -z 8M 1M", "write -c -P 3 20M 64k", "write -z 10M 64k",
                            "discard 11M 64k", "write -P 4 30M 4k", "write -P 5 63M 1M"};
    const std::vector<commit_case> cases{
        {"qcow2 backing file",
         {create("base.qcow2", "64M"), io("base.qcow2", {"write -P 1 0 2M", "write -P 9 10M 2M"}),
          create("top.qcow2", "64M", {"-b", "base.qcow2", "-F", "qcow2"}), io("top.qcow2", top_writes)}},
        {"-q",
         {create("base.qcow2", "64M"), io("base.qcow2", {"write -P 1 0 2M"}),
          create("top.qcow2", "64M", {"-b", "base.qcow2", "-F", "qcow2"}), io("top.qcow2", top_writes)},
         "top.qcow2", "base.qcow2", "qcow2", {"-q"}},
        {"-d: the image is kept",
         {create("base.qcow2", "64M"), io("base.qcow2", {"write -P 1 0 2M"}),
          create("top.qcow2", "64M", {"-b", "base.qcow2", "-F", "qcow2"}), io("top.qcow2", top_writes)},
         "top.qcow2", "base.qcow2", "qcow2", {"-d"}},
        {"raw backing file of an odd size",
         {{"qemu-img", "create", "-q", "-f", "raw", "base.raw", "1000000"}, io("base.raw", {"write -P 1 0 64k"}, "raw"),
          create("top.qcow2", "1000448", {"-b", "base.raw", "-F", "raw"}),
          io("top.qcow2", {"write -P 2 32k 64k", "write -z 500k 64k", "write -P 3 983040 17408"})},
         "top.qcow2", "base.raw", "raw"},
        {"a backing file smaller than the image grows",
         {create("base.qcow2", "1M"), io("base.qcow2", {"write -P 1 0 1M"}),
          create("top.qcow2", "5M", {"-b", "base.qcow2", "-F", "qcow2"}), io("top.qcow2", {"write -P 2 512k 1M", "write -P 3 4M 64k"})}},
        {"three images: into the middle one",
         {create("bottom.qcow2", "16M"), io("bottom.qcow2", {"write -P 1 0 8M"}),
          create("base.qcow2", "16M", {"-b", "bottom.qcow2", "-F", "qcow2"}), io("base.qcow2", {"write -P 2 1M 1M", "write -z 3M 1M"}),
          create("top.qcow2", "16M", {"-b", "base.qcow2", "-F", "qcow2"}),
          io("top.qcow2", {"write -P 3 1536k 1M", "write -z 5M 64k", "write -c -P 4 7M 64k"})},
         "top.qcow2", "base.qcow2", "qcow2", {}, "bottom.qcow2"},
        {"extended L2 subclusters",
         {create("base.qcow2", "16M", {"-o", "extended_l2=on"}), io("base.qcow2", {"write -P 1 0 4M"}),
          create("top.qcow2", "16M", {"-o", "extended_l2=on", "-b", "base.qcow2", "-F", "qcow2"}),
          io("top.qcow2", {"write -P 2 2k 2k", "write -P 3 66k 10k", "write -z 1M 8k", "write -P 4 8M 100k"})}},
        {"version 2",
         {create("base.qcow2", "16M", {"-o", "compat=0.10"}), io("base.qcow2", {"write -P 1 0 4M"}),
          create("top.qcow2", "16M", {"-o", "compat=0.10", "-b", "base.qcow2", "-F", "qcow2"}),
          io("top.qcow2", {"write -P 2 1M 1M", "write -z 2M 64k", "write -c -P 3 6M 64k"})}},
    };
    for (const auto& c : cases) {
        DYNAMIC_SECTION(c.name) {
            qcow2_test::temp_dir dir("qcow2-cli-commit-");
            const std::string d = dir.path(), q = dir / "q", m = dir / "m";
            for (const auto& side : {q, m}) {
                fs::create_directories(side);
                build(side, c.steps);
            }
            must_run({"qemu-img", "convert", "-O", "raw", c.top, "pre.raw"}, m);
            if (!c.untouched.empty()) must_run({"qemu-img", "convert", "-O", "raw", c.untouched, "untouched.raw"}, m);
            const argv_t qargv = cat(cat({"qemu-img", "commit"}, c.options), {c.top});
            const argv_t margv = cat(cat({QCOW2_TEST_CLI, "commit"}, c.options), {c.top});
            const auto qr = qcow2_test::run(qargv, q), mr = qcow2_test::run(margv, m);
            INFO(describe(qargv, qr));
            INFO(describe(margv, mr));
            REQUIRE(qr.status == 0);
            REQUIRE(mr.status == 0);
            CHECK(mr.out == qr.out);
            CHECK(mr.err.empty());
            const argv_t base_fmt{"-f", "raw", "-F", c.base_format};
            // The backing file reads as the image did; the image reads as its backing file.
            require_identical(m, "pre.raw", c.base, base_fmt);
            require_identical(m, "pre.raw", c.top, {"-f", "raw", "-F", "qcow2"});
            qemu_check_clean(m, c.top);
            if (c.base_format == "qcow2") qemu_check_clean(m, c.base);
            if (!c.untouched.empty()) require_identical(m, "untouched.raw", c.untouched, {"-f", "raw", "-F", "qcow2"});
            // Emptied: nothing allocated, the all-zero bit, as small as qemu-img leaves it.
            const bool kept = c.options == argv_t{"-d"};
            const auto mi = json::parse(must_run({QCOW2_TEST_CLI, "info", "--output=json", c.top}, m).out);
            const auto* zero = mi.find("format-specific")->find("data")->find("all-zero");
            if (info_json(m, c.top).find("format-specific")->find("data")->find("compat")->as_string() == "1.1") {
                REQUIRE(zero);
                CHECK(zero->as_bool() == !kept);
            }
            if (!kept) {
                const auto mc = json::parse(must_run({"qemu-img", "check", "--output=json", c.top}, m).out);
                CHECK(mc.find("allocated-clusters") == nullptr);
                // qemu-img truncates a version 3 image to its four metadata clusters (a
                // version 2 one it only discards): ours is never larger.
                CHECK(fs::file_size(m + "/" + c.top) <= fs::file_size(q + "/" + c.top));
            }
            // The same as qemu-img's results.
            require_identical(d, "q/" + c.base, "m/" + c.base, {"-f", c.base_format, "-F", c.base_format});
            require_identical(d, "q/" + c.top, "m/" + c.top, {"-f", "qcow2", "-F", "qcow2"});
            CHECK(member(info_json(m, c.base), "virtual-size") == member(info_json(q, c.base), "virtual-size"));
        }
    }
}

TEST_CASE("cli commit: messages and exit status as qemu-img's", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-commit-");
    const std::string d = dir.path();
    build(d, {create("alone.qcow2", "1M"), {"qemu-img", "create", "-q", "-f", "raw", "disk.raw", "1M"}});
    const std::vector<argv_t> cases{
        {},
        {"alone.qcow2", "disk.raw"},
        {"alone.qcow2"},
        {"-f", "raw", "alone.qcow2"},
        {"disk.raw"},
        {"nonexistent.qcow2"},
        {"-q", "alone.qcow2"},
    };
    for (const auto& args : cases) {
        DYNAMIC_SECTION(command_line(args)) {
            const argv_t qargv = cat({"qemu-img", "commit"}, args), margv = cat({QCOW2_TEST_CLI, "commit"}, args);
            const auto q = qcow2_test::run(qargv, d), m = qcow2_test::run(margv, d);
            INFO(describe(qargv, q));
            INFO(describe(margv, m));
            CHECK(m.status == q.status);
            CHECK(m.out == q.out);
            CHECK(m.err == qemu_words(q.err));
        }
    }
}

// ------------------------------------------------------------------------------- rebase

namespace {

struct rebase_case {
    std::string name;
    std::vector<argv_t> steps; ///< builds the images (in q/ and m/)
    argv_t options;            ///< rebase options, before the file name
    std::string file = "top.qcow2";
    std::string backing;        ///< the backing name info must show (empty: none)
    std::string backing_format; ///< its format (empty: none)
    std::vector<std::pair<std::string, std::string>> renames{}; ///< moved after the raw copy, before the rebase
    bool same_allocation = true; ///< qemu-img allocates what we do (not with extended L2 subclusters)
};

} // namespace

TEST_CASE("cli rebase: the guest disk is kept, the header names the new backing file, as with qemu-img rebase",
          "[interop]") {
    require_qemu();
    const auto old_chain = [](const argv_t& top_options = {}) {
        return std::vector<argv_t>{
            create("old.qcow2", "64M"),
            io("old.qcow2", {"write -P 1 0 2M", "write -P 9 10M 1M", "write -c -P 8 12M 64k", "write -P 7 40M 64k"}),
            create("top.qcow2", "64M", cat(top_options, {"-b", "old.qcow2", "-F", "qcow2"})),
            io("top.qcow2", {"write -P 2 1M 64k", "write -z 10M 64k", "write -c -P 3 20M 64k"}),
        };
    };
    const auto with = [](std::vector<argv_t> a, const std::vector<argv_t>& b) {
        a.insert(a.end(), b.begin(), b.end());
        return a;
    };
    const std::vector<argv_t> new_smaller{create("new.qcow2", "32M"),
                                          io("new.qcow2", {"write -P 1 0 1M", "write -P 5 4M 1M", "write -P 9 10M 1M"})};
    const std::vector<rebase_case> cases{
        {"safe, onto a smaller backing file", with(old_chain(), new_smaller), {"-b", "new.qcow2", "-F", "qcow2"}, "top.qcow2",
         "new.qcow2", "qcow2"},
        {"safe, onto a larger backing file",
         with(old_chain(), {create("new.qcow2", "128M"), io("new.qcow2", {"write -P 1 0 4M", "write -P 6 63M 2M"})}),
         {"-b", "new.qcow2", "-F", "qcow2"}, "top.qcow2", "new.qcow2", "qcow2"},
        {"safe, onto no backing file", old_chain(), {"-b", ""}, "top.qcow2", "", ""},
        {"safe, onto a raw file of an odd size",
         with(old_chain(), {{"qemu-img", "create", "-q", "-f", "raw", "new.raw", "3000000"}, io("new.raw", {"write -P 1 0 2M"}, "raw")}),
         {"-b", "new.raw", "-F", "raw"}, "top.qcow2", "new.raw", "raw"},
        {"safe, onto an image deeper in the chain",
         {create("base.qcow2", "16M"), io("base.qcow2", {"write -P 1 0 8M"}),
          create("mid.qcow2", "16M", {"-b", "base.qcow2", "-F", "qcow2"}), io("mid.qcow2", {"write -P 2 1M 2M", "write -z 6M 1M"}),
          create("top.qcow2", "16M", {"-b", "mid.qcow2", "-F", "qcow2"}), io("top.qcow2", {"write -P 3 2M 64k"})},
         {"-b", "base.qcow2", "-F", "qcow2"}, "top.qcow2", "base.qcow2", "qcow2"},
        {"safe, from a raw backing file",
         {{"qemu-img", "create", "-q", "-f", "raw", "old.raw", "8M"}, io("old.raw", {"write -P 1 0 3M"}, "raw"),
          create("top.qcow2", "8M", {"-b", "old.raw", "-F", "raw"}), io("top.qcow2", {"write -P 2 1M 64k"}),
          create("new.qcow2", "8M"), io("new.qcow2", {"write -P 1 0 1M"})},
         {"-b", "new.qcow2", "-F", "qcow2"}, "top.qcow2", "new.qcow2", "qcow2"},
        {"safe, an image in a subdirectory (names relative to it)",
         {{"mkdir", "sub"}, create("old.qcow2", "8M"), io("old.qcow2", {"write -P 1 0 4M"}),
          create("sub/top.qcow2", "8M", {"-b", "../old.qcow2", "-F", "qcow2"}), io("sub/top.qcow2", {"write -P 2 1M 64k"}),
          create("new.qcow2", "8M"), io("new.qcow2", {"write -P 1 0 2M"})},
         {"-b", "../new.qcow2", "-F", "qcow2"}, "sub/top.qcow2", "../new.qcow2", "qcow2"},
        {"safe, version 2", with(old_chain({"-o", "compat=0.10"}), new_smaller), {"-b", "new.qcow2", "-F", "qcow2"},
         "top.qcow2", "new.qcow2", "qcow2"},
        {"safe, version 2, onto no backing file", old_chain({"-o", "compat=0.10"}), {"-b", ""}, "top.qcow2", "", ""},
        {"safe, extended L2", with(old_chain({"-o", "extended_l2=on"}), new_smaller), {"-b", "new.qcow2", "-F", "qcow2"},
         "top.qcow2", "new.qcow2", "qcow2", {}, false},
        {"safe, -p -q", with(old_chain(), new_smaller), {"-p", "-q", "-b", "new.qcow2", "-F", "qcow2"}, "top.qcow2",
         "new.qcow2", "qcow2"},
        {"unsafe, the backing file renamed", old_chain(), {"-u", "-b", "renamed.qcow2", "-F", "qcow2"}, "top.qcow2",
         "renamed.qcow2", "qcow2", {{"old.qcow2", "renamed.qcow2"}}},
        {"unsafe, a new format name", old_chain(), {"-u", "-b", "old.qcow2", "-F", "raw"}, "top.qcow2", "old.qcow2", "raw"},
        {"unsafe, the backing file removed (no -b)", with(old_chain(), {create("plain.qcow2", "64M")}), {"-u"}, "plain.qcow2",
         "", ""},
        {"unsafe, -b \"\"", with(old_chain(), {create("plain.qcow2", "64M")}), {"-u", "-b", ""}, "plain.qcow2", "", ""},
    };
    for (const auto& c : cases) {
        DYNAMIC_SECTION(c.name) {
            qcow2_test::temp_dir dir("qcow2-cli-rebase-");
            const std::string d = dir.path(), q = dir / "q", m = dir / "m";
            for (const auto& side : {q, m}) {
                fs::create_directories(side);
                build(side, c.steps);
            }
            must_run({"qemu-img", "convert", "-O", "raw", c.file, "pre.raw"}, m);
            for (const auto& [from, to] : c.renames)
                for (const auto& side : {q, m}) fs::rename(side + "/" + from, side + "/" + to);
            const argv_t qargv = cat(cat({"qemu-img", "rebase"}, c.options), {c.file});
            const argv_t margv = cat(cat({QCOW2_TEST_CLI, "rebase"}, c.options), {c.file});
            const auto qr = qcow2_test::run(qargv, q), mr = qcow2_test::run(margv, m);
            INFO(describe(qargv, qr));
            INFO(describe(margv, mr));
            REQUIRE(qr.status == 0);
            REQUIRE(mr.status == 0);
            CHECK(mr.out == qr.out);
            CHECK(mr.err.empty());
            // The guest disk as it was, the image clean, the header as asked.
            if (c.backing_format != "raw" || c.backing == "new.raw")
                require_identical(m, "pre.raw", c.file, {"-f", "raw", "-F", "qcow2"});
            qemu_check_clean(m, c.file);
            const auto mi = info_json(m, c.file), qi = info_json(q, c.file);
            if (c.backing.empty()) {
                CHECK(mi.find("backing-filename") == nullptr);
                CHECK(mi.find("backing-filename-format") == nullptr);
            } else {
                REQUIRE(mi.find("backing-filename"));
                CHECK(mi.find("backing-filename")->as_string() == c.backing);
                REQUIRE(mi.find("backing-filename-format"));
                CHECK(mi.find("backing-filename-format")->as_string() == c.backing_format);
            }
            for (const char* key : {"backing-filename", "backing-filename-format", "full-backing-filename", "virtual-size"}) {
                INFO(key);
                CHECK(member(mi, key) == member(qi, key));
            }
            // The same as qemu-img's: the same guest disk, the same clusters allocated.
            if (c.backing_format != "raw" || c.backing == "new.raw") {
                require_identical(d, "q/" + c.file, "m/" + c.file, {"-f", "qcow2", "-F", "qcow2"});
                if (c.same_allocation) {
                    const auto mm = map_without_offsets(m, c.file), qm = map_without_offsets(q, c.file);
                    INFO("ours: " << mm.dump() << "\nqemu-img's: " << qm.dump());
                    CHECK(mm == qm);
                }
            }
        }
    }
}

TEST_CASE("cli rebase: messages and exit status as qemu-img's", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-rebase-");
    const std::string d = dir.path();
    build(d, {create("base.qcow2", "1M"), create("top.qcow2", "1M", {"-b", "base.qcow2", "-F", "qcow2"}),
              create("small.qcow2", "1M", {"-o", "cluster_size=512"}),
              {"qemu-img", "create", "-q", "-f", "raw", "disk.raw", "1M"},
              create("raw-data.qcow2", "1M", {"-o", "data_file=raw-data.img,data_file_raw=on"})});
    const std::string long_name(600, 'n'), too_long(1100, 'n');
    const std::vector<argv_t> cases{
        {},
        {"top.qcow2"},
        {"-b", "base.qcow2", "-F", "qcow2", "top.qcow2", "base.qcow2"},
        {"-b", "base.qcow2", "-F", "foo", "top.qcow2"},
        {"-u", "-b", "base.qcow2", "-F", "foo", "top.qcow2"},
        {"-b", "nonexistent.qcow2", "-F", "qcow2", "top.qcow2"},
        {"-b", "base.qcow2", "top.qcow2"},
        {"-u", "-b", "base.qcow2", "top.qcow2"},
        {"-b", "base.qcow2", "-F", "qcow2", "nonexistent.qcow2"},
        {"-u", "-b", "base.qcow2", "-F", "qcow2", "-f", "raw", "disk.raw"},
        {"-b", "base.qcow2", "-F", "qcow2", "-f", "raw", "disk.raw"},
        {"-u", "-f", "raw", "disk.raw"},
        {"-u", "-b", long_name, "-F", "qcow2", "small.qcow2"},
        {"-u", "-b", too_long, "-F", "qcow2", "top.qcow2"},
        {"-u", "-b", "base.qcow2", "-F", "qcow2", "raw-data.qcow2"},
        {"-t", "bogus", "-u", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"},
        {"-T", "bogus", "-u", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"},
    };
    for (std::size_t i = 0; i < cases.size(); ++i) {
        const argv_t& args = cases[i];
        DYNAMIC_SECTION(i << ": " << command_line(args).substr(0, 100)) {
            const argv_t qargv = cat({"qemu-img", "rebase"}, args), margv = cat({QCOW2_TEST_CLI, "rebase"}, args);
            const auto before = info_json(d, "top.qcow2");
            const auto q = qcow2_test::run(qargv, d);
            const auto after_q = info_json(d, "top.qcow2");
            const auto m = qcow2_test::run(margv, d);
            INFO(describe(qargv, q));
            INFO(describe(margv, m));
            CHECK(m.status == q.status);
            CHECK(m.out == q.out);
            CHECK(m.err == qemu_words(q.err));
            CHECK(info_json(d, "top.qcow2") == after_q);
            CHECK(after_q == before); // no case changes top.qcow2
        }
    }
}
