// SPDX-License-Identifier: MIT
// Interop with QEMU for `qcow2 convert -O qcow2 SRC -`: a qcow2 image streamed front to back
// into a pipe (qemu-img cannot do this: its qcow2 driver seeks). Everything is made at test
// time in temporary directories:
//
// - for sparse and data-filled raw sources (sizes that are not whole clusters, one not even
//   whole sectors) and a qcow2 chain that qemu-img and qemu-io wrote (compressed clusters,
//   zero clusters, a backing file), over compat=0.10 and 1.1, cluster sizes from 512 bytes
//   to 2 MiB, 1-bit refcounts, extended L2 entries, uncompressed and compressed with zlib
//   and zstd: the image the CLI writes into the pipe of its stdout passes `qemu-img check`
//   (no errors, no leaks, its end offset the file's size), `qemu-img compare` finds it
//   identical to its source, it allocates and compresses the clusters `qemu-img convert`'s
//   output does, with the same format-specific data, and a second run gives the same bytes;
// - the same bytes through `| cat > FILE`, a FIFO named as DST, and /dev/stdout on a pipe;
// - options that cannot stream are refused with a clear message, nothing written.
#include "qcow2/qcow2.hpp"

#include "support/json.hpp"
#include "support/interop.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <tuple>
#include <vector>

#include <sys/stat.h>

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

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB;

/// Interop tests run, never skip: without qemu-utils they fail.
void require_qemu() {
    REQUIRE(qcow2_test::find_program("qemu-img"));
    REQUIRE(qcow2_test::find_program("qemu-io"));
}

argv_t cat(argv_t head, const argv_t& tail) {
    head.insert(head.end(), tail.begin(), tail.end());
    return head;
}

/// Runs the CLI with stdout on a pipe (that of `qcow2_test::run`); what it wrote there.
std::string must_stream(const argv_t& args, const std::string& dir) {
    const argv_t argv = cat({QCOW2_TEST_CLI}, args);
    auto r = qcow2_test::run(argv, dir);
    INFO(describe(argv, r, true));
    REQUIRE(r.status == 0);
    CHECK(r.err.empty());
    return std::move(r.out);
}

void put_file(const std::string& path, const std::string& bytes) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(f.good());
}

std::string get_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    REQUIRE(f.good());
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

constexpr int random_bytes = -1, text_bytes = 256;

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
        if (byte == random_bytes) {
            std::uint64_t x = 0x9E3779B97F4A7C15ull ^ off;
            for (char& c : data) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c = static_cast<char>(x >> 24);
            }
        } else if (byte == text_bytes) {
            std::string text;
            for (int i = 0; text.size() < len; ++i) text += "line " + std::to_string(i) + " of a compressible text\n";
            data = text.substr(0, static_cast<std::size_t>(len));
        }
        f.seekp(static_cast<std::streamoff>(off));
        f.write(data.data(), static_cast<std::streamsize>(data.size()));
    }
    REQUIRE(f.good());
}

/// The sources, made in `dir`: sparse.raw (16 MiB less 1536 bytes, a few small pieces of
/// data among holes), data.raw (6 MiB less 1000 bytes, not whole sectors, nearly all data:
/// random, text, a run of one byte, a hole of 64 KiB), top.qcow2 (4k clusters, data of
/// its own and a zero write, over base.qcow2: data.raw converted by qemu-img, then with a
/// zero cluster, compressed clusters and a discard).
void make_sources(const std::string& dir) {
    write_file(dir + "/sparse.raw", 16 * MiB - 1536,
               {{0, 4 * KiB, random_bytes},
                {3 * MiB + 512, 1000, text_bytes},
                {9 * MiB, 64 * KiB, 0x5a},
                {13 * MiB + 300, 70 * KiB, random_bytes},
                {16 * MiB - 4 * KiB, 2 * KiB, random_bytes}});
    write_file(dir + "/data.raw", 6 * MiB - 1000,
               {{0, 2 * MiB, random_bytes},
                {2 * MiB, 2 * MiB, text_bytes},
                {4 * MiB, 512 * KiB, 0x33},
                {4 * MiB + 576 * KiB, 6 * MiB - 1000 - (4 * MiB + 576 * KiB), random_bytes}});
    must_run({"qemu-img", "convert", "-f", "raw", "-O", "qcow2", "data.raw", "base.qcow2"}, dir);
    must_run({"qemu-io", "-f", "qcow2", "-c", "write -z 1M 64k", "-c", "write -c -P 4 4608k 64k", "-c", "discard 5M 64k",
              "base.qcow2"},
             dir);
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", "-b", "base.qcow2", "-F", "qcow2",
              "top.qcow2"},
             dir);
    must_run({"qemu-io", "-f", "qcow2", "-c", "write -P 0x61 100k 20k", "-c", "write -z 2100k 8k", "top.qcow2"}, dir);
}

/// A count of `qemu-img check --output=json`, which leaves out the counts that are 0.
std::uint64_t count(const json::value& j, const char* key) {
    const json::value* v = j.find(key);
    return v ? v->as_uint() : 0;
}

/// `qemu-img compare` finds `a` (format `fa`) and the qcow2 image `b` identical (a larger B's
/// part past A's end reading as zeroes).
void require_identical(const std::string& dir, const std::string& a, const std::string& fa, const std::string& b) {
    const argv_t argv{"qemu-img", "compare", "-f", fa, "-F", "qcow2", a, b};
    auto r = qcow2_test::run(argv, dir);
    INFO(describe(argv, r));
    CHECK(r.status == 0);
    CHECK_THAT(r.out, Catch::Matchers::EndsWith("Images are identical.\n"));
}

} // namespace

TEST_CASE("stream convert: images written into a pipe check clean, compare equal, and repeat byte for byte",
          "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-stream-");
    const std::string d = dir.path();
    make_sources(d);
    struct source {
        std::string file, format;
    };
    const source sources[] = {{"sparse.raw", "raw"}, {"data.raw", "raw"}, {"top.qcow2", "qcow2"}};
    const argv_t variants[] = {
        {"-o", "compat=0.10"},
        {"-c", "-o", "compat=0.10,cluster_size=4k"},
        {"-o", "compat=0.10,cluster_size=2M"},
        {"-o", "cluster_size=4k"},
        {"-o", "cluster_size=512"},
        {"-c"},
        {"-c", "-o", "compression_type=zstd"},
        {"-c", "-o", "compression_type=zstd,cluster_size=2M"},
        {"-c", "-o", "cluster_size=4k,refcount_bits=1"},
        {"-o", "cluster_size=16k,extended_l2=on"},
        {"-c", "-o", "cluster_size=32k,extended_l2=on,refcount_bits=64,lazy_refcounts=on"},
    };
    for (const source& s : sources) {
        for (const argv_t& v : variants) {
            const bool compressed = std::find(v.begin(), v.end(), "-c") != v.end();
            const argv_t args = cat(cat({"convert", "-O", "qcow2"}, v), {s.file, "-"});
            {
                INFO(command_line(args));
                const std::string bytes = must_stream(args, d);
                REQUIRE(!bytes.empty());
                put_file(d + "/s.qcow2", bytes);
                const auto c = qemu_check_clean(d, "s.qcow2");
                CHECK(member(c, "image-end-offset").as_uint() == bytes.size());
                require_identical(d, s.file, s.format, "s.qcow2");
                // The same source and options: the same bytes.
                CHECK(must_stream(args, d) == bytes);

                // What qemu-img convert's output allocates and compresses, with its format data
                // (-S 512: qemu-img finds zeroes in 512-byte blocks, as the CLI does in clusters,
                // instead of its default 4 KiB, which allocates more at 512-byte clusters).
                const argv_t qargs =
                    cat(cat({"qemu-img", "convert", "-S", "512", "-f", s.format, "-O", "qcow2"}, v), {s.file, "q.qcow2"});
                must_run(qargs, d);
                const auto qc = qemu_check_clean(d, "q.qcow2");
                INFO("ours: " << c.dump() << "\nqemu-img's: " << qc.dump());
                for (const char* key : {"total-clusters", "allocated-clusters", "compressed-clusters"}) {
                    INFO(key);
                    CHECK(member(c, key) == member(qc, key));
                }
                if (compressed) CHECK(count(c, "compressed-clusters") > 0);
                else CHECK(count(c, "compressed-clusters") == 0);
                const auto mi = json::parse(must_run({"qemu-img", "info", "--output=json", "s.qcow2"}, d).out);
                const auto qi = json::parse(must_run({"qemu-img", "info", "--output=json", "q.qcow2"}, d).out);
                CHECK(member(mi, "virtual-size") == member(qi, "virtual-size"));
                CHECK(member(mi, "cluster-size") == member(qi, "cluster-size"));
                CHECK(member(mi, "format-specific") == member(qi, "format-specific"));
            }
        }
    }
}

TEST_CASE("stream convert: an empty disk and a disk of holes", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-stream-");
    const std::string d = dir.path();
    write_file(d + "/empty.raw", 0, {});
    write_file(d + "/holes.raw", 40 * MiB, {});
    for (const char* src : {"empty.raw", "holes.raw"}) {
        for (const argv_t& v : {argv_t{}, argv_t{"-c", "-o", "compat=0.10"}, argv_t{"-c", "-o", "cluster_size=512"}}) {
            const argv_t args = cat(cat({"convert", "-O", "qcow2"}, v), {src, "-"});
            INFO(command_line(args));
            const std::string bytes = must_stream(args, d);
            put_file(d + "/s.qcow2", bytes);
            const auto c = qemu_check_clean(d, "s.qcow2");
            CHECK(count(c, "allocated-clusters") == 0);
            CHECK(member(c, "image-end-offset").as_uint() == bytes.size());
            require_identical(d, src, "raw", "s.qcow2");
            // Metadata only: header, refcount table, refcount block, L1 table (none for an empty disk).
            const std::uint64_t cs = v.size() == 3 && v[2] == "cluster_size=512" ? 512 : 65536;
            const std::uint64_t size = std::string(src) == "empty.raw" ? 0 : 40 * MiB;
            const std::uint64_t l1_entries = (size + cs / 8 * cs - 1) / (cs / 8 * cs);
            CHECK(bytes.size() == (3 + (l1_entries * 8 + cs - 1) / cs) * cs);
        }
    }
}

TEST_CASE("stream convert: the same bytes through cat, a FIFO and /dev/stdout", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-stream-");
    const std::string d = dir.path();
    make_sources(d);
    const std::string cli = QCOW2_TEST_CLI;
    for (const argv_t& v : {argv_t{}, argv_t{"-c", "-o", "compression_type=zstd"}}) {
        const argv_t args = cat(cat({"convert", "-O", "qcow2"}, v), {"top.qcow2"});
        INFO(command_line(args));
        const std::string direct = must_stream(cat(args, {"-"}), d);
        put_file(d + "/direct.qcow2", direct);
        qemu_check_clean(d, "direct.qcow2");
        require_identical(d, "top.qcow2", "qcow2", "direct.qcow2");

        // qcow2 convert ... - | cat > piped.qcow2 (the shell's exit status is the last command's:
        // the CLI's is taken out through a file).
        const std::string line = command_line(cat({cli}, cat(args, {"-"})));
        must_run({"/bin/sh", "-c", "{ " + line + "; echo $? > status; } | cat > piped.qcow2"}, d);
        CHECK(get_file(d + "/status") == "0\n");
        CHECK(get_file(d + "/piped.qcow2") == direct);

        // A FIFO named as DST, read by cat.
        fs::remove(d + "/fifo");
        REQUIRE(::mkfifo((d + "/fifo").c_str(), 0600) == 0);
        must_run({"/bin/sh", "-c",
                  "cat fifo > fifo.qcow2 & " + command_line(cat({cli}, cat(args, {"fifo"}))) + "; s=$?; wait; exit $s"},
                 d);
        CHECK(get_file(d + "/fifo.qcow2") == direct);

        // /dev/stdout when it is a pipe.
        CHECK(must_stream(cat(args, {"/dev/stdout"}), d) == direct);
    }
}

TEST_CASE("stream convert: what cannot stream is refused, with nothing written", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-stream-");
    const std::string d = dir.path();
    write_file(d + "/src.raw", MiB, {{0, 4 * KiB, random_bytes}});
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "1M"}, d);
    struct refusal {
        argv_t options;
        std::string message;
    };
    const refusal refusals[] = {
        {{"-n"}, "qcow2: convert: -n cannot write over a stream ('-')\n"},
        {{"-o", "backing_file=base.qcow2"},
         "qcow2: -: error while converting qcow2: a streamed image cannot have a backing file (-o backing_file)\n"},
        {{"-B", "base.qcow2"}, "qcow2: convert: backing files for the output (-B) are not built\n"},
        {{"-o", "preallocation=metadata"},
         "qcow2: -: error while converting qcow2: a streamed image cannot be preallocated (preallocation must be off): "
         "operation not supported\n"},
        {{"-o", "preallocation=full"},
         "qcow2: -: error while converting qcow2: a streamed image cannot be preallocated (preallocation must be off): "
         "operation not supported\n"},
        {{"-o", "data_file=data.raw"},
         "qcow2: -: error while converting qcow2: a streamed image cannot have an external data file: operation not "
         "supported\n"},
        {{"-c", "-o", "preallocation=falloc"}, "qcow2: Compression and preallocation not supported at the same time\n"},
    };
    for (const refusal& k : refusals) {
        const argv_t argv = cat(cat({QCOW2_TEST_CLI, "convert", "-O", "qcow2"}, k.options), {"src.raw", "-"});
        const auto r = qcow2_test::run(argv, d);
        INFO(describe(argv, r, true));
        CHECK(r.status == 1);
        CHECK(r.out.empty());
        CHECK(r.err == k.message);
    }
    CHECK(!fs::exists(d + "/data.raw"));

    // A terminal as stdout (script(1) gives the CLI one): refused before anything is written.
    REQUIRE(qcow2_test::find_program("script"));
    const std::string line = command_line({QCOW2_TEST_CLI, "convert", "-O", "qcow2", "src.raw", "-"});
    const auto r = qcow2_test::run({"script", "-qec", line, "/dev/null"}, d);
    INFO(describe({"script", "-qec", line, "/dev/null"}, r, true));
    CHECK(r.status == 1);
    CHECK(r.out.find("refusing to write a qcow2 image to a terminal") != std::string::npos);
    CHECK(r.out.find("QFI") == std::string::npos);
}
