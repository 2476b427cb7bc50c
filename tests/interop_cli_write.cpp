// SPDX-License-Identifier: MIT
// Interop with QEMU for the CLI commands that write: create, resize, io, convert -O qcow2.
// Everything is made at test time, in temporary directories, by both tools side by side:
//
// - create: for every qemu-img 7.2 qcow2 option (and backing files, data files, sizes with
//   suffixes), our image has the virtual size, cluster size, format-specific data, backing
//   names and allocation `qemu-img info`/`check` report for qemu-img's, checks clean, reads
//   like it, and our "Formatting ..." line is qemu-img's; errors have qemu-img's words and
//   exit status;
// - resize: grown and shrunk images check clean and compare equal to a raw copy resized by
//   qemu-img; shrinking without --shrink is refused as qemu-img refuses it;
// - io: what `qcow2 io` writes (patterns, compressed zlib and zstd clusters, zeroes,
//   discards) qemu-io reads back, and the reverse; the report lines, verification failures,
//   errors and exit status are qemu-io's;
// - convert: raw -> qcow2, qcow2 -> qcow2, chain -> qcow2, qcow2 -> raw, compressed (zlib,
//   zstd), -n into images full of other data: each output checks clean and compares equal
//   to its source, and a new output allocates what qemu-img convert's allocates.
#include "qcow2/qcow2.hpp"

#include "support/json.hpp"
#include "support/interop.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
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

constexpr std::uint64_t MiB = 1024 * 1024;

/// Interop tests run, never skip: without qemu-utils they fail.
void require_qemu() {
    REQUIRE(qcow2_test::find_program("qemu-img"));
    REQUIRE(qcow2_test::find_program("qemu-io"));
}

/// `argv` after `head`.
argv_t cat(argv_t head, const argv_t& tail) {
    head.insert(head.end(), tail.begin(), tail.end());
    return head;
}

/// qemu's stderr in our words: "qemu-img: " and "qemu-io: " at line starts become "qcow2: ",
/// qemu-img's "Try 'qemu-img --help'" lines go, and the text ends with a newline.
std::string qemu_words(const std::string& err) {
    std::istringstream in(err);
    std::string line, out;
    while (std::getline(in, line)) {
        if (line.rfind("Try 'qemu-img --help'", 0) == 0) continue;
        for (const char* p : {"qemu-img: ", "qemu-io: "})
            if (line.rfind(p, 0) == 0) line = "qcow2: " + line.substr(std::string(p).size());
        out += line + "\n";
    }
    return out;
}

/// The lines of `text` without qemu-io's timing lines ("4 KiB, 1 ops; 00.00 sec (...)"), and
/// without lines starting with `drop_prefix` when it is given.
std::string without_timing(const std::string& text, const std::string& drop_prefix = {}) {
    std::istringstream in(text);
    std::string line, out;
    while (std::getline(in, line)) {
        if (line.find(" ops; ") != std::string::npos) continue;
        if (!drop_prefix.empty() && line.rfind(drop_prefix, 0) == 0) continue;
        out += line + "\n";
    }
    return out;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

json::value info_json(const std::string& dir, const std::string& file) {
    return json::parse(must_run({"qemu-img", "info", "--output=json", file}, dir).out);
}

/// `qemu-img compare` of `a` and `b` (in `dir`, optional formats) finds them identical (the
/// part of a larger one past the other's end reading as zeroes).
void require_identical(const std::string& dir, const std::string& a, const std::string& b, const argv_t& formats = {}) {
    const argv_t argv = cat(cat({"qemu-img", "compare"}, formats), {a, b});
    auto r = qcow2_test::run(argv, dir);
    INFO(describe(argv, r));
    CHECK(r.status == 0);
    // A larger B may have "Warning: Image size mismatch!" first (its extra part reads as zeroes).
    CHECK_THAT(r.out, Catch::Matchers::EndsWith("Images are identical.\n"));
}

/// `qemu-img compare` finds the guest disks of `q/file` and `m/file` (under `dir`) identical.
/// QEMU opens an external data file relative to its working directory (the library, relative
/// to the image's): images with one are converted to raw in their own directory first.
void require_same_guest(const std::string& dir, const std::string& file, const std::string& format) {
    if (format == "qcow2" && member(info_json(dir + "/q", file), "format-specific").find("data")->find("data-file")) {
        for (const char* side : {"/q", "/m"})
            must_run({"qemu-img", "convert", "-O", "raw", file, "guest.raw"}, dir + side);
        require_identical(dir, "q/guest.raw", "m/guest.raw", {"-f", "raw", "-F", "raw"});
        return;
    }
    require_identical(dir, "q/" + file, "m/" + file, {"-f", format, "-F", format});
}

/// A file of `size` bytes: `fill` at the ranges given as (offset, length, byte), holes elsewhere.
void write_file(const std::string& path, std::uint64_t size,
                const std::vector<std::tuple<std::uint64_t, std::uint64_t, int>>& fill) {
    {
        std::ofstream f(path, std::ios::binary | std::ios::trunc);
        REQUIRE(f.good());
    }
    fs::resize_file(path, size);
    std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
    for (const auto& [off, len, byte] : fill) {
        std::string data(static_cast<std::size_t>(len), static_cast<char>(byte));
        if (byte < 0) { // pseudo-random bytes
            std::uint64_t x = 0x9E3779B97F4A7C15ull ^ off;
            for (char& c : data) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c = static_cast<char>(x >> 24);
            }
        } else if (byte == 256) { // compressible text
            std::string text;
            for (int i = 0; text.size() < len; ++i) text += "line " + std::to_string(i) + " of a compressible text\n";
            data = text.substr(0, static_cast<std::size_t>(len));
        }
        f.seekp(static_cast<std::streamoff>(off));
        f.write(data.data(), static_cast<std::streamsize>(data.size()));
    }
    REQUIRE(f.good());
}

constexpr int random_bytes = -1, text_bytes = 256;

/// Files the create and convert cases refer to, made in `dir`: base.qcow2 (5 MiB with
/// data), base.raw (1000000 bytes, not a whole number of sectors), "a,b.raw", sub/.
void make_bases(const std::string& dir) {
    fs::create_directories(dir + "/sub");
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "5M"}, dir);
    must_run({"qemu-io", "-f", "qcow2", "-c", "write -P 0x42 0 1M", "base.qcow2"}, dir);
    write_file(dir + "/base.raw", 1000000, {{0, 4096, 0x17}});
    write_file(dir + "/a,b.raw", MiB, {});
}

} // namespace

TEST_CASE("cli create: images equal qemu-img's for every option", "[interop]") {
    require_qemu();
    struct create_case {
        std::string name;
        argv_t options;   ///< between "create -f qcow2" and the file name
        std::string size; ///< empty: none given
        std::string file = "img.qcow2";
    };
    const std::vector<create_case> cases{
        {"defaults", {}, "1G"},
        {"compat=0.10", {"-o", "compat=0.10"}, "1.5G"},
        {"compat=v2 and 4k clusters", {"-o", "compat=v2,cluster_size=4k"}, "100M"},
        {"compat=v3, 512 bytes", {"-o", "compat=v3"}, "512"},
        {"compat=1.1, size not a whole sector", {"-o", "compat=1.1"}, "1000"},
        {"512-byte clusters", {"-o", "cluster_size=512"}, "64M"},
        {"2M clusters, 64-bit refcounts", {"-o", "cluster_size=2M,refcount_bits=64"}, "10G"},
        {"1-bit refcounts", {"-o", "refcount_bits=1"}, "1T"},
        {"8-bit refcounts, 16k clusters", {"-o", "refcount_bits=8,cluster_size=16k"}, "3M"},
        {"extended_l2", {"-o", "extended_l2=on"}, "1G"},
        {"zstd", {"-o", "compression_type=zstd"}, "1G"},
        {"lazy_refcounts", {"-o", "lazy_refcounts=on"}, "1G"},
        {"preallocation=metadata", {"-o", "preallocation=metadata,cluster_size=4k"}, "8M"},
        {"preallocation=falloc", {"-o", "preallocation=falloc"}, "8M"},
        {"preallocation=full, extended_l2", {"-o", "preallocation=full,extended_l2=on"}, "4M"},
        {"preallocation=off", {"-o", "preallocation=off"}, "4M"},
        {"data_file", {"-o", "data_file=img.data"}, "16M"},
        {"data_file, data_file_raw", {"-o", "data_file=img.data,data_file_raw=on"}, "16M"},
        {"-b, -F qcow2: the backing size", {"-b", "base.qcow2", "-F", "qcow2"}, ""},
        {"backing_file, backing_fmt raw of an odd size", {"-o", "backing_file=base.raw,backing_fmt=raw"}, ""},
        {"backing file and -o size", {"-b", "base.qcow2", "-F", "qcow2", "-o", "size=2G"}, ""},
        {"backing file, extended_l2, preallocation",
         {"-b", "base.raw", "-F", "raw", "-o", "extended_l2=on,preallocation=metadata"},
         "5M"},
        {"backing file relative to the image's directory", {"-b", "../base.qcow2", "-F", "qcow2"}, "", "sub/img.qcow2"},
        {"a comma in the backing name", {"-b", "a,b.raw", "-F", "raw"}, ""},
        {"a comma escaped in -o", {"-o", "backing_file=a,,b.raw,backing_fmt=raw"}, ""},
        {"everything at once",
         {"-o", "compat=1.1,cluster_size=32k,refcount_bits=32,extended_l2=on,compression_type=zstd,lazy_refcounts=on,"
                "preallocation=metadata"},
         "300M"},
        {"flags and words for booleans", {"-o", "lazy_refcounts,noextended_l2,data_file_raw=off"}, "1M"},
        {"-o twice, size in -o", {"-o", "cluster_size=65536", "-o", "cluster_size=8k,size=3M"}, ""},
        {"size 1.5k", {}, "1.5k"},
        {"size 1.1k rounds", {}, "1.1k"},
        {"size in hex", {}, "0x100000"},
        {"size with b", {}, "4096b"},
        {"size 1T", {"-o", "cluster_size=4k"}, "1T"},
        {"size 0", {}, "0"},
    };
    for (const auto& k : cases) {
        DYNAMIC_SECTION(k.name) {
            qcow2_test::temp_dir dir("qcow2-cli-create-");
            const std::string q = dir / "q", m = dir / "m";
            make_bases(q);
            make_bases(m);
            argv_t args = cat(k.options, {k.file});
            if (!k.size.empty()) args.push_back(k.size);
            const argv_t qargv = cat({"qemu-img", "create", "-f", "qcow2"}, args);
            const argv_t margv = cat({QCOW2_TEST_CLI, "create", "-f", "qcow2"}, args);
            const auto qr = qcow2_test::run(qargv, q);
            const auto mr = qcow2_test::run(margv, m);
            INFO(describe(qargv, qr));
            INFO(describe(margv, mr));
            REQUIRE(qr.status == 0);
            REQUIRE(mr.status == 0);
            CHECK(mr.out == qr.out); // the "Formatting 'img.qcow2', fmt=qcow2 ..." line
            CHECK(mr.err.empty());

            const auto qi = info_json(q, k.file), mi = info_json(m, k.file);
            INFO("qemu-img info of qemu-img's image: " << qi.dump());
            INFO("qemu-img info of ours: " << mi.dump());
            for (const char* key : {"virtual-size", "cluster-size", "format-specific", "backing-filename",
                                    "backing-filename-format", "full-backing-filename"}) {
                INFO(key);
                CHECK(member(mi, key) == member(qi, key));
            }
            // Allocation as qemu-img's (preallocation included); the layout may differ.
            auto qc = qemu_check_clean(q, k.file), mc = qemu_check_clean(m, k.file);
            for (const char* key :
                 {"total-clusters", "allocated-clusters", "compressed-clusters", "image-end-offset"}) {
                INFO(key);
                CHECK(member(mc, key) == member(qc, key));
            }
            require_same_guest(dir.path(), k.file, "qcow2");
            if (fs::exists(q + "/img.data")) CHECK(fs::file_size(m + "/img.data") == fs::file_size(q + "/img.data"));

            // -q: nothing on stdout, the same image.
            const argv_t quiet = cat({QCOW2_TEST_CLI, "create", "-q", "-f", "qcow2"}, args);
            const auto qq = qcow2_test::run(quiet, m);
            INFO(describe(quiet, qq));
            CHECK(qq.status == 0);
            CHECK(qq.out.empty());
            CHECK(member(info_json(m, k.file), "format-specific") == member(qi, "format-specific"));
        }
    }
}

TEST_CASE("cli create: messages and exit status as qemu-img's", "[interop]") {
    require_qemu();
    const std::vector<argv_t> cases{
        {"x.qcow2", "1x"},
        {"x.qcow2", "1.5"},
        {"x.qcow2", "-o", "size=-1"},
        {"x.qcow2"},
        {"x.qcow2", "1G", "2"},
        {"x.qcow2", "9223372036854775808"},
        {"x.qcow2", "1E"},
        {"x.qcow2", "0x10k"}, // a suffix on a hex number: taken, with QEMU 7.2's warning
        {"-o", "foo=bar", "x.qcow2", "1M"},
        {"-o", ",cluster_size=4k", "x.qcow2", "1M"},
        {"-o", "cluster_size=4k,", "x.qcow2", "1M"},
        {"-o", "cluster_size=4x", "x.qcow2", "1M"},
        {"-o", "cluster_size=1000", "x.qcow2", "1M"},
        {"-o", "cluster_size=4M", "x.qcow2", "1M"},
        {"-o", "refcount_bits=3", "x.qcow2", "1M"},
        {"-o", "refcount_bits=1k", "x.qcow2", "1M"},
        {"-o", "refcount_bits=-1", "x.qcow2", "1M"},
        {"-o", "lazy_refcounts=1", "x.qcow2", "1M"},
        {"-o", "compat=0.9", "x.qcow2", "1M"},
        {"-o", "compat=0.10,refcount_bits=8", "x.qcow2", "1M"},
        {"-o", "compat=0.10,lazy_refcounts=on", "x.qcow2", "1M"},
        {"-o", "compat=0.10,extended_l2=on", "x.qcow2", "1M"},
        {"-o", "compat=0.10,compression_type=zstd", "x.qcow2", "1M"},
        {"-o", "compat=0.10,data_file=d.raw", "x.qcow2", "1M"},
        {"-o", "extended_l2=on,cluster_size=8k", "x.qcow2", "1M"},
        {"-o", "compression_type=lz4", "x.qcow2", "1M"},
        {"-o", "preallocation=foo", "x.qcow2", "1M"},
        {"-o", "data_file_raw=on", "x.qcow2", "1M"},
        {"-o", "data_file=", "x.qcow2", "1M"},
        {"-o", "backing_fmt=raw", "x.qcow2", "1M"},
        {"-o", "backing_file=", "x.qcow2", "1M"},
        {"-o", "size=1M", "x.qcow2", "2M"},
        {"-b", "base.raw", "x.qcow2"},
        {"-b", "nonexistent.qcow2", "-F", "qcow2", "x.qcow2", "1M"},
        {"-b", "base.qcow2", "-F", "qcow2", "sub/x.qcow2"}, // relative to sub/: not there
        {"-b", "base.raw", "-F", "qcow2", "x.qcow2"},
        {"-b", "x.qcow2", "-F", "raw", "x.qcow2"},
        {"-b", "base.raw", "-F", "raw", "-o", "preallocation=full", "x.qcow2", "1M"},
        {"-b", "base.raw", "-F", "raw", "-o", "data_file=d.raw,data_file_raw=on", "x.qcow2", "1M"},
        {"-o", "cluster_size=512", "x.qcow2", "129G"},
        {"-q", "-o", "compat=0.9", "x.qcow2", "1M"},
    };
    for (const auto& args : cases) {
        DYNAMIC_SECTION(command_line(args)) {
            qcow2_test::temp_dir dir("qcow2-cli-create-");
            const std::string q = dir / "q", m = dir / "m";
            make_bases(q);
            make_bases(m);
            const argv_t qargv = cat({"qemu-img", "create", "-f", "qcow2"}, args);
            const argv_t margv = cat({QCOW2_TEST_CLI, "create", "-f", "qcow2"}, args);
            const auto qr = qcow2_test::run(qargv, q);
            const auto mr = qcow2_test::run(margv, m);
            INFO(describe(qargv, qr));
            INFO(describe(margv, mr));
            CHECK(mr.status == qr.status);
            CHECK(mr.out == qr.out);
            CHECK(mr.err == qemu_words(qr.err));
        }
    }
}

TEST_CASE("cli create: -o help lists the options", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-create-");
    const auto m = must_run({QCOW2_TEST_CLI, "create", "-f", "qcow2", "-o", "help", "x.qcow2"}, dir.path());
    const auto q = must_run({"qemu-img", "create", "-f", "qcow2", "-o", "help", "x.qcow2"}, dir.path());
    // Our lines are qemu-img's lines for the options we take (not encryption, nocow).
    std::istringstream lines(m.out);
    std::string line;
    int n = 0;
    while (std::getline(lines, line)) {
        INFO(line);
        CHECK(q.out.find(line + "\n") != std::string::npos);
        ++n;
    }
    CHECK(n == 13);
    CHECK(!fs::exists(dir / "x.qcow2"));
}

TEST_CASE("cli resize: grown and shrunk images compare equal to a raw copy resized by qemu-img", "[interop]") {
    require_qemu();
    const std::vector<std::pair<std::string, std::string>> kinds{
        {"defaults", ""},
        {"compat=0.10, 512-byte clusters", "compat=0.10,cluster_size=512"},
        {"extended_l2, lazy_refcounts", "extended_l2=on,lazy_refcounts=on"}};
    // Each step is given to both, in order: ours on the image, qemu-img on the raw copy.
    const std::vector<argv_t> steps{{"+1M"}, {"--shrink", "-2.5M"}, {"20M"}, {"--shrink", "4M"}, {"+1k"}, {"-q", "6M"}};
    for (const auto& [name, options] : kinds) {
        DYNAMIC_SECTION(name) {
            qcow2_test::temp_dir dir("qcow2-cli-resize-");
            const std::string d = dir.path();
            argv_t create{QCOW2_TEST_CLI, "create", "-q"};
            if (!options.empty()) create.insert(create.end(), {"-o", options});
            must_run(cat(create, {"img.qcow2", "6M"}), d);
            must_run({"qemu-io", "-f", "qcow2", "-c", "write -P 1 0 1M", "-c", "write -P 2 3M 1M", "-c",
                      "write -c -P 3 5M 64k", "-c", "write -P 4 6225920 65536", "img.qcow2"},
                     d);
            must_run({"qemu-img", "convert", "-O", "raw", "img.qcow2", "copy.raw"}, d);
            for (const auto& step : steps) {
                INFO("resize " << command_line(step));
                const argv_t flags(step.begin(), step.end() - 1);
                const auto m = must_run(cat(cat({QCOW2_TEST_CLI, "resize"}, flags), {"img.qcow2", step.back()}), d);
                must_run(cat(cat({"qemu-img", "resize", "-f", "raw"}, flags), {"copy.raw", step.back()}), d);
                CHECK(m.out == (flags == argv_t{"-q"} ? "" : "Image resized.\n"));
                qemu_check_clean(d, "img.qcow2");
                CHECK(member(info_json(d, "img.qcow2"), "virtual-size").as_uint() == fs::file_size(dir / "copy.raw"));
                require_identical(d, "img.qcow2", "copy.raw", {"-f", "qcow2", "-F", "raw"});
            }
        }
    }
}

TEST_CASE("cli resize: refusals as qemu-img's", "[interop]") {
    require_qemu();
    const std::vector<argv_t> cases{
        {"img.qcow2", "-1M"},
        {"img.qcow2", "1000"},
        {"img.qcow2", "+1000"},
        {"--shrink", "img.qcow2", "10000000"},
        {"--shrink", "img.qcow2", "-8M"},
        {"img.qcow2", "0"},
        {"img.qcow2", "1x"},
        {"img.qcow2"},
        {"img.qcow2", "20M", "30M"},
        {"v2snap.qcow2", "+1M"},
    };
    for (const auto& args : cases) {
        DYNAMIC_SECTION(command_line(args)) {
            qcow2_test::temp_dir dir("qcow2-cli-resize-");
            const std::string q = dir / "q", m = dir / "m";
            for (const auto& d : {q, m}) {
                fs::create_directories(d);
                must_run({"qemu-img", "create", "-q", "-f", "qcow2", "img.qcow2", "4M"}, d);
                must_run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2snap.qcow2", "4M"}, d);
                must_run({"qemu-img", "snapshot", "-c", "s1", "v2snap.qcow2"}, d);
            }
            const auto qr = qcow2_test::run(cat({"qemu-img", "resize"}, args), q);
            const auto mr = qcow2_test::run(cat({QCOW2_TEST_CLI, "resize"}, args), m);
            INFO(describe(cat({"qemu-img", "resize"}, args), qr));
            INFO(describe(cat({QCOW2_TEST_CLI, "resize"}, args), mr));
            CHECK(qr.status == 1);
            CHECK(mr.status == 1);
            CHECK(mr.out == qr.out);
            CHECK(mr.err == qemu_words(qr.err));
            CHECK(member(info_json(m, "img.qcow2"), "virtual-size").as_uint() == 4 * MiB);
        }
    }
}

namespace {

/// Writes of every kind, as qemu-io commands, and what each range reads afterwards.
struct io_plan {
    std::vector<std::string> writes;
    std::vector<std::tuple<std::uint64_t, std::uint64_t, int>> expect; ///< offset, length, byte
};

/// For a 4 MiB image with clusters of at most 64 KiB: data at unaligned offsets,
/// compressed clusters, zeroes over part of a compressed cluster, zeroes with -u over data,
/// a discard of data, the last block of the disk.
io_plan mixed_plan() {
    return {{"write -P 0xab 0 64k", "write -P 0xac 100000 3000", "write -c -P 0x5c 1M 128k", "write -z 1040k 8k",
             "write -P 0x11 2M 128k", "write -z -u 2M 64k", "write -P 0x22 3M 128k", "discard 3M 64k",
             "write -P 0x33 4190208 4096", "flush"},
            {{0, 65536, 0xab},
             {65536, 100000 - 65536, 0},
             {100000, 3000, 0xac},
             {1 * MiB, 16384, 0x5c},
             {1040 * 1024, 8192, 0},
             {1048 * 1024, 1 * MiB + 131072 - 1048 * 1024, 0x5c},
             {2 * MiB, 65536, 0},
             {2 * MiB + 65536, 65536, 0x11},
             {3 * MiB, 65536, 0},
             {3 * MiB + 65536, 65536, 0x22},
             {4190208, 4096, 0x33}}};
}

argv_t io_argv(const argv_t& tool, const std::vector<std::string>& cmds, const std::string& file) {
    argv_t a = tool;
    for (const auto& c : cmds) a.insert(a.end(), {"-c", c});
    a.push_back(file);
    return a;
}

std::string read_cmd(const std::tuple<std::uint64_t, std::uint64_t, int>& e, int pattern_delta = 0) {
    const auto& [off, len, byte] = e;
    return "read -P " + std::to_string(byte + pattern_delta) + " " + std::to_string(off) + " " + std::to_string(len);
}

const std::vector<std::pair<std::string, std::string>>& io_kinds() {
    static const std::vector<std::pair<std::string, std::string>> k{
        {"zlib", ""},
        {"zstd", "compression_type=zstd"},
        {"extended_l2", "extended_l2=on"},
        {"compat=0.10, 4k clusters", "compat=0.10,cluster_size=4k"}};
    return k;
}

} // namespace

TEST_CASE("cli io: what our io writes, qemu-io reads back", "[interop]") {
    require_qemu();
    const io_plan plan = mixed_plan();
    for (const auto& [name, options] : io_kinds()) {
        DYNAMIC_SECTION(name) {
            qcow2_test::temp_dir dir("qcow2-cli-io-");
            const std::string d = dir.path();
            argv_t opts;
            if (!options.empty()) opts = {"-o", options};
            must_run(cat(cat({QCOW2_TEST_CLI, "create", "-q"}, opts), {"ours.qcow2", "4M"}), d);
            must_run(cat(cat({"qemu-img", "create", "-q", "-f", "qcow2"}, opts), {"twin.qcow2", "4M"}), d);
            for (const auto& w : plan.writes) {
                const auto m = must_run(io_argv({QCOW2_TEST_CLI, "io"}, {w}, "ours.qcow2"), d);
                const auto q = must_run(io_argv({"qemu-io", "-f", "qcow2"}, {w}, "twin.qcow2"), d);
                INFO(w << "\nours: " << m.out << "qemu-io: " << q.out);
                CHECK(first_line(m.out) == first_line(q.out)); // "wrote 65536/65536 bytes at offset 0"
                CHECK(without_timing(m.out) == without_timing(q.out));
                CHECK(m.err.empty());
            }
            for (const auto& e : plan.expect) {
                const auto argv = io_argv({"qemu-io", "-f", "qcow2"}, {read_cmd(e)}, "ours.qcow2");
                const auto r = qcow2_test::run(argv, d);
                INFO(describe(argv, r));
                CHECK(r.status == 0);
                CHECK(r.out.find("Pattern verification failed") == std::string::npos);
            }
            require_identical(d, "ours.qcow2", "twin.qcow2");
            const auto mc = qemu_check_clean(d, "ours.qcow2"), qc = qemu_check_clean(d, "twin.qcow2");
            CHECK(member(mc, "compressed-clusters") == member(qc, "compressed-clusters"));
            CHECK(member(mc, "compressed-clusters").as_uint() > 0);
            CHECK(member(mc, "allocated-clusters") == member(qc, "allocated-clusters"));
        }
    }
}

TEST_CASE("cli io: what qemu-io writes, our io reads back", "[interop]") {
    require_qemu();
    const io_plan plan = mixed_plan();
    for (const auto& [name, options] : io_kinds()) {
        DYNAMIC_SECTION(name) {
            qcow2_test::temp_dir dir("qcow2-cli-io-");
            const std::string d = dir.path();
            argv_t create{QCOW2_TEST_CLI, "create", "-q"};
            if (!options.empty()) create.insert(create.end(), {"-o", options});
            must_run(cat(create, {"img.qcow2", "4M"}), d);
            must_run(io_argv({"qemu-io", "-f", "qcow2"}, plan.writes, "img.qcow2"), d);
            for (const auto& e : plan.expect) {
                const auto argv = io_argv({QCOW2_TEST_CLI, "io"}, {read_cmd(e)}, "img.qcow2");
                const auto r = qcow2_test::run(argv, d);
                INFO(describe(argv, r));
                CHECK(r.status == 0);
                CHECK(first_line(r.out) == "read " + std::to_string(std::get<1>(e)) + "/" +
                                               std::to_string(std::get<1>(e)) + " bytes at offset " +
                                               std::to_string(std::get<0>(e)));
            }
            // A wrong pattern: qemu-io's message, the report still printed, exit status 1; the
            // next command still runs.
            const std::vector<std::string> wrong{read_cmd(plan.expect[2], 1), read_cmd(plan.expect[2])};
            const auto m = qcow2_test::run(io_argv({QCOW2_TEST_CLI, "io"}, wrong, "img.qcow2"), d);
            const auto q = qcow2_test::run(io_argv({"qemu-io", "-f", "qcow2"}, wrong, "img.qcow2"), d);
            INFO("ours: " << m.out << "qemu-io: " << q.out);
            CHECK(first_line(m.out) == "Pattern verification failed at offset 100000, 3000 bytes");
            CHECK(without_timing(m.out) == without_timing(q.out));
            CHECK(m.status == 1);
            CHECK(q.status == 1);
            qemu_check_clean(d, "img.qcow2");
        }
    }
}

TEST_CASE("cli io: errors, reports and exit status as qemu-io's", "[interop]") {
    require_qemu();
    struct io_case {
        std::vector<std::string> cmds;
        bool same_stdout = true; ///< false where qemu-io prints its usage line (ours lists our options)
    };
    const std::vector<io_case> cases{
        {{"read 0 5M"}},
        {{"write 4M 1"}},
        {{"discard 4M 64k"}},
        {{"write -z 4M 512"}},
        {{"read 0 1x"}},
        {{"read 0 9999999999999999999"}},
        {{"read 0 99999999999999999999"}},
        {{"read 0 3G"}},
        {{"read -P 0x1ff 0 1"}},
        {{"write -P x 0 1"}},
        {{"write -u 0 64k"}},
        {{"write -z -P 1 0 64k"}},
        {{"write -c 0 1000"}},
        {{"write -c 512 512"}},
        {{"write -c 0 4k"}},
        {{"write -P 1 0 64k", "write -c 0 64k"}}, // qemu-io never compresses over an allocated cluster
        {{"write -z 64k 64k", "write -c 64k 64k", "read -P 0xcd 64k 64k"}},
        {{"write -c -P 7 0 192k", "read -P 7 0 192k", "read -P 7 -s 4k -l 4k 0 64k", "read -P 7 -s 64k 0 64k"}},
        {{"read -P 0 -s 1 -l 2 0 2", "read -s 1 0 1"}, false},
        {{"read 0"}},
        {{"flush x"}},
        {{"foo 0 1"}},
        {{""}},
        {{"read -x 0 1"}, false},
        {{"read 0 1 -P"}, false},
        {{"read -P 0xab 0 4k extra"}, false},
        {{"  read   0  1  ", "r 1k 1k", "w -P 010 0 1", "read -P 8 0 1", "d 0 0", "f", "read -qP 0 1k 1k",
          "read 1.5k 1.5k -q"}},
        {{"read 1 1", "read 0x100 1", "read 0 0", "write 0 0", "write -P 0xab 1 1", "read -P 171 1 1"}},
    };
    for (const auto& k : cases) {
        DYNAMIC_SECTION(command_line(k.cmds)) {
            qcow2_test::temp_dir dir("qcow2-cli-io-");
            const std::string d = dir.path();
            must_run({"qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "4M"}, d);
            must_run({"qemu-img", "create", "-q", "-f", "qcow2", "m.qcow2", "4M"}, d);
            const auto qargv = io_argv({"qemu-io", "-f", "qcow2"}, k.cmds, "q.qcow2");
            const auto margv = io_argv({QCOW2_TEST_CLI, "io", "-f", "qcow2"}, k.cmds, "m.qcow2");
            const auto q = qcow2_test::run(qargv, d);
            const auto m = qcow2_test::run(margv, d);
            INFO(describe(qargv, q));
            INFO(describe(margv, m));
            CHECK(m.status == q.status);
            if (k.same_stdout) CHECK(without_timing(m.out) == without_timing(q.out));
            // Our stderr adds the library's account of a failed request, on lines of its own.
            CHECK(without_timing(m.err, "qcow2: ") == q.err);
            require_identical(d, "q.qcow2", "m.qcow2");
            qemu_check_clean(d, "m.qcow2");
        }
    }
}

TEST_CASE("cli io: raw files", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-io-");
    const std::string d = dir.path();
    write_file(dir / "q.raw", 2047, {});
    write_file(dir / "m.raw", 2047, {});
    const std::vector<std::string> cmds{"write -P 5 1k 1k", "read -P 5 1k 1k",  "read -P 0 0 1k",
                                        "write -z 0 512",   "discard 1k 512",   "write -c 0 512",
                                        "write 0 4k",       "read -P 0 2040 8", "flush"};
    const auto q = qcow2_test::run(io_argv({"qemu-io", "-f", "raw"}, cmds, "q.raw"), d);
    const auto m = qcow2_test::run(io_argv({QCOW2_TEST_CLI, "io", "-f", "raw"}, cmds, "m.raw"), d);
    INFO("qemu-io: " << q.out << q.err << "\nours: " << m.out << m.err);
    CHECK(m.status == q.status);
    CHECK(without_timing(m.out) == without_timing(q.out));
    CHECK(fs::file_size(dir / "m.raw") == fs::file_size(dir / "q.raw"));
    require_identical(d, "q.raw", "m.raw", {"-f", "raw", "-F", "raw"});
}

namespace {

/// The sources of the convert cases, made in `dir`: src.raw (8 MiB: random, text and
/// holes, a size that is not a whole number of clusters), src.qcow2 (it, converted by
/// qemu-img, then with a zero cluster, compressed clusters and a discard), top.qcow2 (4k
/// clusters over src.qcow2, with data of its own).
void make_sources(const std::string& dir) {
    write_file(dir + "/src.raw", 8 * MiB - 4096,
               {{0, MiB, random_bytes},
                {2 * MiB, 300 * 1024, text_bytes},
                {5 * MiB, 4096, random_bytes},
                {6 * MiB, 64 * 1024, 0x5a},
                {8 * MiB - 8192, 4096, random_bytes}});
    must_run({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", "src.raw", "src.qcow2"}, dir);
    must_run({"qemu-io", "-f", "qcow2", "-c", "write -z 5M 64k", "-c", "write -c -P 4 7M 128k", "-c", "discard 6M 64k",
              "src.qcow2"},
             dir);
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "src.qcow2", "-F", "qcow2",
              "top.qcow2"},
             dir);
    must_run({"qemu-io", "-f", "qcow2", "-c", "write -P 0x61 100k 20k", "-c", "write -z 2100k 8k", "top.qcow2"}, dir);
}

} // namespace

TEST_CASE("cli convert: every output checks clean and compares equal to its source", "[interop]") {
    require_qemu();
    struct convert_case {
        std::string name;
        std::string src;
        argv_t options;
        std::string dst;
        argv_t prepare = {};      ///< a command making the existing DST (for -n), run in the directory
        argv_t prepare_more = {}; ///< and one more
        bool qemu_fails = false;  ///< qemu-img cannot do it (then ours is only checked against SRC)
    };
    const std::vector<convert_case> cases{
        {"raw to qcow2", "src.raw", {"-O", "qcow2"}, "out.qcow2"},
        {"qcow2 to qcow2", "src.qcow2", {"-O", "qcow2"}, "out.qcow2"},
        {"qcow2 to qcow2 with 4k clusters, extended L2",
         "src.qcow2",
         {"-O", "qcow2", "-o", "cluster_size=16k,extended_l2=on"},
         "out.qcow2"},
        {"chain to qcow2 compat=0.10", "top.qcow2", {"-O", "qcow2", "-o", "compat=0.10"}, "out.qcow2"},
        {"qcow2 to raw", "src.qcow2", {"-O", "raw"}, "out.raw"},
        {"chain to raw", "top.qcow2", {}, "out.raw"},
        {"-c zlib from raw", "src.raw", {"-O", "qcow2", "-c"}, "out.qcow2"},
        {"-c zlib from qcow2, 512-byte clusters",
         "src.qcow2",
         {"-O", "qcow2", "-c", "-o", "cluster_size=512"},
         "out.qcow2"},
        {"-c zstd from qcow2", "src.qcow2", {"-O", "qcow2", "-c", "-o", "compression_type=zstd"}, "out.qcow2"},
        {"-c zstd from a chain, 32k clusters",
         "top.qcow2",
         {"-O", "qcow2", "-c", "-o", "compression_type=zstd,cluster_size=32k"},
         "out.qcow2"},
        {"preallocation=metadata", "src.qcow2", {"-O", "qcow2", "-o", "preallocation=metadata"}, "out.qcow2"},
        {"data_file", "src.qcow2", {"-O", "qcow2", "-o", "data_file=out.data"}, "out.qcow2"},
        {"-n into a qcow2 image full of data",
         "src.qcow2",
         {"-O", "qcow2", "-n"},
         "full.qcow2",
         {"qemu-img", "create", "-q", "-f", "qcow2", "full.qcow2", "8188k"},
         {"qemu-io", "-c", "write -P 0x77 0 8188k", "full.qcow2"}},
        {"-n from raw into a qcow2 image with 4k clusters",
         "src.raw",
         {"-O", "qcow2", "-n"},
         "full.qcow2",
         {"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "full.qcow2", "8188k"},
         {"qemu-io", "-c", "write -P 0x77 0 8188k", "full.qcow2"}},
        {"-n into a compat=0.10 image of compressed clusters",
         "top.qcow2",
         {"-O", "qcow2", "-n"},
         "full.qcow2",
         {"qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "full.qcow2", "8188k"},
         {"qemu-io", "-c", "write -c -P 0x77 0 8188k", "full.qcow2"}},
        {"-n into a zstd image, compressed",
         "src.qcow2",
         {"-O", "qcow2", "-n", "-c"},
         "full.qcow2",
         {"qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "full.qcow2", "8188k"},
         {"qemu-io", "-c", "write -P 0x77 0 8188k", "full.qcow2"},
         true},
        {"-n -c into a larger empty image: the last cluster of SRC is partial",
         "src.raw",
         {"-O", "qcow2", "-n", "-c"},
         "large.qcow2",
         {"qemu-img", "create", "-q", "-f", "qcow2", "large.qcow2", "9M"},
         {},
         true},
        {"-n into a raw file full of data",
         "top.qcow2",
         {"-n"},
         "full.raw",
         {"qemu-img", "create", "-q", "-f", "raw", "full.raw", "8188k"},
         {"qemu-io", "-f", "raw", "-c", "write -P 0x77 0 8188k", "full.raw"}},
    };
    for (const auto& k : cases) {
        DYNAMIC_SECTION(k.name) {
            qcow2_test::temp_dir dir("qcow2-cli-convert-");
            const std::string q = dir / "q", m = dir / "m";
            for (const auto& d : {q, m}) {
                fs::create_directories(d);
                make_sources(d);
                if (!k.prepare.empty()) must_run(k.prepare, d);
                if (!k.prepare_more.empty()) must_run(k.prepare_more, d);
            }
            const argv_t margv = cat(cat({QCOW2_TEST_CLI, "convert"}, k.options), {k.src, k.dst});
            const auto mr = qcow2_test::run(margv, m);
            INFO(describe(margv, mr));
            REQUIRE(mr.status == 0);
            CHECK(mr.out.empty());
            CHECK(mr.err.empty());
            const bool qcow2_out = k.dst.find(".qcow2") != std::string::npos;
            const argv_t formats{"-F", qcow2_out ? "qcow2" : "raw"};
            require_identical(m, k.src, k.dst, formats);

            const argv_t qargv = cat(cat({"qemu-img", "convert"}, k.options), {k.src, k.dst});
            const auto qr = qcow2_test::run(qargv, q);
            INFO(describe(qargv, qr));
            if (k.qemu_fails) {
                CHECK(qr.status == 1);
                CHECK(qr.err.find("error while writing") != std::string::npos);
            } else {
                REQUIRE(qr.status == 0);
                require_same_guest(dir.path(), k.dst, formats[1]);
            }
            if (!qcow2_out) continue;
            const auto mc = qemu_check_clean(m, k.dst);
            const auto mi = info_json(m, k.dst);
            if (k.qemu_fails) {
                CHECK(member(mc, "compressed-clusters").as_uint() > 0);
                continue;
            }
            // What qemu-img's output allocates (zero regions skipped, compressed clusters).
            const auto qc = qemu_check_clean(q, k.dst);
            const auto qi = info_json(q, k.dst);
            INFO("ours: " << mc.dump() << "\nqemu-img's: " << qc.dump());
            for (const char* key : {"total-clusters", "allocated-clusters", "compressed-clusters"}) {
                INFO(key);
                CHECK(member(mc, key) == member(qc, key));
            }
            CHECK(member(mi, "virtual-size") == member(qi, "virtual-size"));
            CHECK(member(mi, "cluster-size") == member(qi, "cluster-size"));
            CHECK(member(mi, "format-specific") == member(qi, "format-specific"));
            if (std::find(k.options.begin(), k.options.end(), "-c") != k.options.end())
                CHECK(member(mc, "compressed-clusters").as_uint() > 0);
        }
    }
}

TEST_CASE("cli convert: refusals as qemu-img's", "[interop]") {
    require_qemu();
    const std::vector<argv_t> cases{
        {"-O", "qcow2", "-c", "-o", "preallocation=metadata", "src.qcow2", "out.qcow2"},
        {"-O", "qcow2", "-n", "-o", "cluster_size=4k", "src.qcow2", "small.qcow2"},
        {"-O", "qcow2", "-n", "src.qcow2", "small.qcow2"},
        {"-n", "src.qcow2", "small.raw"},
        {"-O", "raw", "-c", "src.qcow2", "out.raw"},
        {"-O", "qcow2", "-o", "compat=0.10,compression_type=zstd", "src.qcow2", "out.qcow2"},
        {"-O", "qcow2", "-o", "cluster_size=3k", "src.qcow2", "out.qcow2"},
        {"-O", "qcow2", "-o", "foo=bar", "src.qcow2", "out.qcow2"},
        {"-O", "qcow2", "-o", "cluster_size=4k,", "src.qcow2", "out.qcow2"},
        {"-O", "qcow2", "src.qcow2"},
        {"-O", "vpc", "src.qcow2", "out.vpc"},
    };
    for (const auto& args : cases) {
        DYNAMIC_SECTION(command_line(args)) {
            qcow2_test::temp_dir dir("qcow2-cli-convert-");
            const std::string q = dir / "q", m = dir / "m";
            for (const auto& d : {q, m}) {
                fs::create_directories(d);
                must_run({"qemu-img", "create", "-q", "-f", "qcow2", "src.qcow2", "4M"}, d);
                must_run({"qemu-io", "-c", "write -P 1 0 1M", "src.qcow2"}, d);
                must_run({"qemu-img", "create", "-q", "-f", "qcow2", "small.qcow2", "1M"}, d);
                write_file(d + "/small.raw", MiB, {});
            }
            const auto qr = qcow2_test::run(cat({"qemu-img", "convert"}, args), q);
            const auto mr = qcow2_test::run(cat({QCOW2_TEST_CLI, "convert"}, args), m);
            INFO(describe(cat({"qemu-img", "convert"}, args), qr));
            INFO(describe(cat({QCOW2_TEST_CLI, "convert"}, args), mr));
            CHECK(mr.status == 1);
            CHECK(mr.out == qr.out);
            // vpc is a format qemu-img knows and we do not: only our refusal is checked.
            if (args[1] != "vpc") {
                CHECK(qr.status == 1);
                CHECK(mr.err == qemu_words(qr.err));
            }
        }
    }
}
