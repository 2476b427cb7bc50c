// SPDX-License-Identifier: MIT
// Interop with QEMU for guest reads: a corpus made at test time by qemu-img and qemu-io
// (every cluster size, extended L2, zlib and zstd compression, backing chains of mixed
// cluster sizes and sizes, a raw backing file, external data files, every preallocation
// mode, resized, version 2, snapshot, dirty and empty images, raw files), and for every
// image:
//   (a) `qcow2 convert -O raw` writes the same bytes as `qemu-img convert -O raw`, to a
//       regular file (sparse: no more blocks than qemu-img's; by several threads) and to a pipe;
//   (b) `qcow2 compare` finds the image identical to qemu-img's raw file, and finds a copy
//       with one byte changed different at the offset qemu-img names, with the same
//       messages and exit codes as `qemu-img compare`;
//   (c) `qcow2 map --output=json` prints the same text as `qemu-img map --output=json`
//       (and the same JSON), and the human table is the same too.
// The corpus is built once per process, in a fresh temporary directory; each image is a
// section, so a failure names the image and the check.
#include "qcow2/qcow2.hpp"

#include "support/json.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef QCOW2_TEST_CLI
#error "QCOW2_TEST_CLI must give the path of the qcow2 CLI binary (tests/CMakeLists.txt)"
#endif

namespace {

namespace json = qcow2_test::json;
using qcow2_test::command_line;
using qcow2_test::process_result;

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB;

using argv_t = std::vector<std::string>;

/// One file of the corpus and the commands (run in the corpus directory) that make it.
struct read_spec {
    std::string name;
    std::vector<argv_t> steps;
    std::string format = "qcow2";
    /// A known difference of `map` output with qemu-img (tested apart, as may-fail).
    bool map_mismatch = false;
};

argv_t create(const std::string& name, const std::string& options, const std::string& size,
              const argv_t& extra = {}) {
    argv_t a{"qemu-img", "create", "-q", "-f", "qcow2"};
    if (!options.empty()) a.insert(a.end(), {"-o", options});
    a.insert(a.end(), extra.begin(), extra.end());
    a.push_back(name);
    if (!size.empty()) a.push_back(size);
    return a;
}

argv_t qemu_io(const std::string& name, const std::vector<std::string>& commands, const std::string& format = "qcow2") {
    argv_t a{"qemu-io", "-f", format};
    for (const auto& c : commands) a.insert(a.end(), {"-c", c});
    a.push_back(name);
    return a;
}

/// Writes at several offsets of a 4 MiB disk: aligned and unaligned, partial clusters,
/// zero writes inside data and over unallocated ranges, discards, the last block.
const std::vector<std::string>& mixed_writes() {
    static const std::vector<std::string> w{
        "write -P 0x11 0 4k",           "write -P 0x22 100000 3000",   "write -P 0x33 1M 192k",
        "write -z 1100k 8k",            "discard 1040k 16k",           "write -P 0x44 3M 5000",
        "write -z 3200k 300k",          "write -P 0x55 4190208 4096",  "write -P 0x66 2M 256k",
        "discard 2M 64k",               "write -z 2200k 1000",         "write -P 0x67 2400k 512",
    };
    return w;
}

/// The name of the pseudo-random source file written before the corpus (see `write_random_source`).
constexpr const char* random_source = "random_source.raw";

/// 4 MiB, sparse: pseudo-random bytes in [0, 1M) and [3M, 3M + 4K), a compressible text in
/// [2M, 2M + 300K), holes elsewhere. Random clusters do not compress; text clusters do.
bool write_random_source(const std::string& path) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return false;
    std::vector<unsigned char> rnd(MiB);
    std::uint64_t x = 0x9E3779B97F4A7C15ull;
    for (auto& b : rnd) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b = static_cast<unsigned char>(x >> 24);
    }
    std::string text;
    for (int i = 0; text.size() < 300 * KiB; ++i) text += "line " + std::to_string(i) + " of a compressible text\n";
    text.resize(300 * KiB);
    bool ok = ::pwrite(fd, rnd.data(), rnd.size(), 0) == static_cast<ssize_t>(rnd.size()) &&
              ::pwrite(fd, text.data(), text.size(), 2 * MiB) == static_cast<ssize_t>(text.size()) &&
              ::pwrite(fd, rnd.data() + 12345, 4 * KiB, 3 * MiB) == static_cast<ssize_t>(4 * KiB) &&
              ::ftruncate(fd, 4 * MiB) == 0;
    ok = ::close(fd) == 0 && ok;
    return ok;
}

/// The corpus, in creation order (later files use earlier ones).
const std::vector<read_spec>& specs() {
    static const std::vector<read_spec> list = [] {
        std::vector<read_spec> s;
        const auto& w = mixed_writes();

        // Every cluster size, with the same writes.
        for (const std::string cs : {"512", "1K", "2K", "4K", "8K", "16K", "32K", "64K", "128K", "256K", "512K", "1M", "2M"}) {
            const std::string name = "cluster_size_" + cs + ".qcow2";
            s.push_back({name, {create(name, "cluster_size=" + cs, "4M"), qemu_io(name, w)}});
        }
        // Extended L2: partial subcluster writes, zero subclusters, discards.
        const std::vector<std::string> sub{"write -P 0x61 0 3k",       "write -P 0x62 70000 5000", "write -z 200k 8k",
                                           "write -P 0x63 1M 100k",    "discard 1M 64k",           "write -z -u 3M 64k",
                                           "write -P 0x64 3300k 700",  "write -z 1040k 1k"};
        for (const std::string cs : {"16K", "64K", "2M"}) {
            const std::string name = "extended_l2_" + cs + ".qcow2";
            s.push_back({name, {create(name, "extended_l2=on,cluster_size=" + cs, "4M"), qemu_io(name, sub)}});
        }
        // Extended L2 over a backing file: unallocated subclusters read the backing file.
        s.push_back({"extended_l2_base.qcow2",
                     {create("extended_l2_base.qcow2", "cluster_size=64K", "4M"),
                      qemu_io("extended_l2_base.qcow2", {"write -P 0x70 0 4M"})}});
        s.push_back({"extended_l2_over_backing.qcow2",
                     {create("extended_l2_over_backing.qcow2", "extended_l2=on,cluster_size=64K", "",
                             {"-b", "extended_l2_base.qcow2", "-F", "qcow2"}),
                      qemu_io("extended_l2_over_backing.qcow2",
                              {"write -P 0x71 1000 3000", "write -z 128k 4k", "discard 512k 64k", "write -P 0x72 1M 2k",
                               "write -z 2M 64k"})}});

        // Compression: zlib and zstd at 4K, 64K and 2M clusters (random clusters stay plain).
        s.push_back({random_source, {}, "raw"});
        for (const std::string type : {"zlib", "zstd"})
            for (const std::string cs : {"4K", "64K", "2M"}) {
                const std::string name = "compressed_" + type + "_" + cs + ".qcow2";
                std::vector<argv_t> steps{{"qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
                                           "cluster_size=" + cs + ",compression_type=" + type, random_source, name}};
                // Rewrite parts of compressed clusters (they become plain clusters), zero one.
                if (cs == "64K")
                    steps.push_back(qemu_io(name, {"write -P 0x5c 2100000 1000", "write -z 2200k 64k"}));
                s.push_back({name, std::move(steps)});
            }

        // Three-deep chain, mixed cluster sizes: the middle is larger than its backing file,
        // the top smaller than its backing file.
        s.push_back({"chain_0_4K_3M.qcow2",
                     {create("chain_0_4K_3M.qcow2", "cluster_size=4K", "3M"),
                      qemu_io("chain_0_4K_3M.qcow2", {"write -P 0xa0 0 1M", "write -P 0xa1 2M 512k", "write -z 2304k 64k"})}});
        s.push_back({"chain_1_64K_5M.qcow2",
                     {create("chain_1_64K_5M.qcow2", "cluster_size=64K", "5M", {"-b", "chain_0_4K_3M.qcow2", "-F", "qcow2"}),
                      qemu_io("chain_1_64K_5M.qcow2", {"write -P 0xa2 512k 128k", "write -z 100k 8k", "write -P 0xa3 4M 64k",
                                                       "discard 2M 64k", "write -z 1M 64k", "write -P 0xa5 3M 4k"})}});
        s.push_back({"chain_2_512_4M.qcow2",
                     {create("chain_2_512_4M.qcow2", "cluster_size=512", "4M", {"-b", "chain_1_64K_5M.qcow2", "-F", "qcow2"}),
                      qemu_io("chain_2_512_4M.qcow2", {"write -P 0xa4 3000 5000", "write -z 2100k 4k", "discard 512k 4k",
                                                       "write -P 0xa6 4190000 304"})}});
        // The same chain's top with 2M clusters, in version 2 (zero writes become data).
        s.push_back({"chain_2_2M_v2.qcow2",
                     {create("chain_2_2M_v2.qcow2", "cluster_size=2M,compat=0.10", "",
                             {"-b", "chain_1_64K_5M.qcow2", "-F", "qcow2"}),
                      qemu_io("chain_2_2M_v2.qcow2", {"write -P 0xa7 1M 4k", "write -z 4M 8k"})}});
        // Raw backing file (a whole number of sectors), the top larger than it.
        s.push_back({"raw_base.raw",
                     {{"qemu-img", "create", "-q", "-f", "raw", "raw_base.raw", "3M"},
                      qemu_io("raw_base.raw", {"write -P 0xb0 0 1M", "write -P 0xb1 2M 4k", "write -P 0xb2 3144704 1024"}, "raw")},
                     "raw"});
        s.push_back({"raw_backing.qcow2",
                     {create("raw_backing.qcow2", "", "4M", {"-b", "raw_base.raw", "-F", "raw"}),
                      qemu_io("raw_backing.qcow2", {"write -P 0xb3 64k 4k", "write -z 512k 64k", "write -P 0xb4 3M 4k"})}});
        // Raw backing file whose size is not a whole number of sectors: QEMU rounds it up.
        s.push_back({"raw_base_odd.raw",
                     {{"qemu-img", "create", "-q", "-f", "raw", "raw_base_odd.raw", "3M"},
                      qemu_io("raw_base_odd.raw", {"write -P 0xb5 0 1M", "write -P 0xb6 3144704 1024"}, "raw"),
                      {"truncate", "-s", "3146001", "raw_base_odd.raw"}},
                     "raw"});
        s.push_back({"raw_backing_odd.qcow2",
                     {create("raw_backing_odd.qcow2", "", "4M", {"-b", "raw_base_odd.raw", "-F", "raw"}),
                      qemu_io("raw_backing_odd.qcow2", {"write -P 0xb7 64k 4k"})},
                     "qcow2",
                     true});

        // External data files.
        s.push_back({"data_file.qcow2",
                     {create("data_file.qcow2", "data_file=data_file.data", "4M"), qemu_io("data_file.qcow2", w)}});
        s.push_back({"data_file_raw.qcow2",
                     {create("data_file_raw.qcow2", "data_file=data_file_raw.data,data_file_raw=on", "4M"),
                      qemu_io("data_file_raw.qcow2", w)}});
        s.push_back({"data_file_extended_l2.qcow2",
                     {create("data_file_extended_l2.qcow2", "data_file=data_file_extended_l2.data,extended_l2=on", "4M"),
                      qemu_io("data_file_extended_l2.qcow2", sub)}});

        // Every preallocation mode.
        for (const std::string mode : {"off", "metadata", "falloc", "full"}) {
            const std::string name = "preallocation_" + mode + ".qcow2";
            s.push_back({name, {create(name, "preallocation=" + mode, "4M"), qemu_io(name, w)}});
        }
        s.push_back({"preallocation_metadata_extended_l2.qcow2",
                     {create("preallocation_metadata_extended_l2.qcow2", "preallocation=metadata,extended_l2=on", "4M"),
                      qemu_io("preallocation_metadata_extended_l2.qcow2", sub)}});

        // Resized: grown (data on both sides of the old end), and shrunk.
        s.push_back({"resized_grown.qcow2",
                     {create("resized_grown.qcow2", "", "2M"),
                      qemu_io("resized_grown.qcow2", {"write -P 0xc1 1M 1M", "write -P 0xc2 2096640 512"}),
                      {"qemu-img", "resize", "-q", "resized_grown.qcow2", "5M"},
                      qemu_io("resized_grown.qcow2", {"write -P 0xc3 4M 4k"})}});
        s.push_back({"resized_shrunk.qcow2",
                     {create("resized_shrunk.qcow2", "", "6M"),
                      qemu_io("resized_shrunk.qcow2", {"write -P 0xc4 0 64k", "write -P 0xc5 5M 64k"}),
                      {"qemu-img", "resize", "-q", "--shrink", "resized_shrunk.qcow2", "3M"}}});

        // Version 2 (no zero clusters), alone and on a version 3 backing file.
        s.push_back({"compat_0.10.qcow2", {create("compat_0.10.qcow2", "compat=0.10", "4M"), qemu_io("compat_0.10.qcow2", w)}});
        s.push_back({"compat_0.10_backing.qcow2",
                     {create("compat_0.10_backing.qcow2", "compat=0.10", "", {"-b", "extended_l2_base.qcow2", "-F", "qcow2"}),
                      qemu_io("compat_0.10_backing.qcow2", {"write -z 64k 64k", "discard 1M 128k", "write -P 0xd1 2M 1000"})}});
        // Zero clusters written back as data by a downgrade.
        s.push_back({"amend_compat_0.10.qcow2",
                     {create("amend_compat_0.10.qcow2", "", "4M"), qemu_io("amend_compat_0.10.qcow2", w),
                      {"qemu-img", "amend", "-f", "qcow2", "-o", "compat=0.10", "amend_compat_0.10.qcow2"}}});
        // Internal snapshots (the active L2 tables are shared, then copied on write).
        s.push_back({"snapshots.qcow2",
                     {create("snapshots.qcow2", "", "4M"), qemu_io("snapshots.qcow2", {"write -P 0xe1 0 1M"}),
                      {"qemu-img", "snapshot", "-c", "one", "snapshots.qcow2"},
                      qemu_io("snapshots.qcow2", {"write -P 0xe2 256k 64k", "write -z 512k 64k", "discard 768k 64k"})}});
        // Killed before clearing the dirty bit (lazy refcounts).
        s.push_back({"dirty.qcow2",
                     {create("dirty.qcow2", "lazy_refcounts=on", "4M"),
                      qemu_io("dirty.qcow2", {"write -P 0xf1 0 64k", "write -P 0xf2 1M 3000", "sigraise 9"})}});
        // A larger sparse disk: data in three L2 tables of 4K clusters, far apart.
        s.push_back({"sparse_16M_4K.qcow2",
                     {create("sparse_16M_4K.qcow2", "cluster_size=4K", "16M"),
                      qemu_io("sparse_16M_4K.qcow2", {"write -P 0x31 0 4k", "write -P 0x32 7M 12k", "write -P 0x33 15M 1M"})}});
        // Empty images.
        s.push_back({"size_0.qcow2", {create("size_0.qcow2", "", "0")}});
        s.push_back({"unwritten.qcow2", {create("unwritten.qcow2", "", "4M")}});
        // Raw files as sources.
        s.push_back({"raw_odd_size.raw",
                     {{"qemu-img", "create", "-q", "-f", "raw", "raw_odd_size.raw", "64k"},
                      qemu_io("raw_odd_size.raw", {"write -P 0x99 1000 5000"}, "raw"),
                      {"truncate", "-s", "60001", "raw_odd_size.raw"}},
                     "raw"});
        return s;
    }();
    return list;
}

struct corpus {
    std::unique_ptr<qcow2_test::temp_dir> dir;
    std::string error;
    std::string path(const std::string& name) const { return dir->path() + "/" + name; }
};

const corpus& get_corpus() {
    static const corpus c = [] {
        corpus r;
        for (const char* tool : {"qemu-img", "qemu-io", "truncate"})
            if (!qcow2_test::find_program(tool)) {
                r.error = std::string(tool) + " is not on PATH: the interop tests need QEMU's tools (qemu-utils)";
                return r;
            }
        r.dir = std::make_unique<qcow2_test::temp_dir>("qcow2-interop-read-");
        if (!write_random_source(r.path(random_source))) {
            r.error = "cannot write " + r.path(random_source);
            return r;
        }
        std::filesystem::create_directory(r.path("out"));
        for (const auto& spec : specs())
            for (const auto& argv : spec.steps) {
                const process_result p = qcow2_test::run(argv, r.dir->path());
                // qemu-io's sigraise 9 kills it on purpose.
                const int expected = std::find(argv.begin(), argv.end(), "sigraise 9") != argv.end() ? 128 + 9 : 0;
                if (p.status != expected) {
                    r.error = "making " + spec.name + ": `" + command_line(argv) + "` exited with " +
                              std::to_string(p.status) + "\n" + p.err;
                    return r;
                }
            }
        return r;
    }();
    return c;
}

const corpus& require_corpus() {
    const corpus& c = get_corpus();
    INFO(c.error);
    REQUIRE(c.error.empty());
    return c;
}

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    std::string data(static_cast<std::size_t>(std::max<std::streamoff>(in.tellg(), 0)), '\0');
    in.seekg(0);
    in.read(data.data(), static_cast<std::streamsize>(data.size()));
    return data;
}

void spit(const std::string& path, const std::string& data) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
    REQUIRE(out.good());
}

/// Where two byte strings first differ, for messages.
std::string first_difference(const std::string& a, const std::string& b) {
    if (a == b) return "equal";
    const auto m = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
    return "sizes " + std::to_string(a.size()) + " and " + std::to_string(b.size()) + ", first difference at byte " +
           std::to_string(m.first - a.begin());
}

/// Runs `argv` in the corpus directory.
process_result run_in(const corpus& c, const argv_t& argv) { return qcow2_test::run(argv, c.dir->path()); }

/// The raw file `qemu-img convert` makes of `spec` (made once per image and process).
std::string reference_raw(const corpus& c, const read_spec& spec) {
    const std::string out = "out/" + spec.name + ".qemu.raw";
    if (!std::filesystem::exists(c.path(out))) {
        const argv_t argv{"qemu-img", "convert", "-f", spec.format, "-O", "raw", spec.name, out};
        const process_result p = run_in(c, argv);
        INFO(command_line(argv) << "\n" << p.err);
        REQUIRE(p.status == 0);
    }
    return out;
}

std::uint64_t allocated_bytes(const std::string& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return static_cast<std::uint64_t>(st.st_blocks) * 512;
}

/// The first extent of qemu-img's map holding data, and the first reading as zeroes.
struct probe_offsets {
    std::optional<std::uint64_t> in_data, in_zero;
};

probe_offsets probes(const corpus& c, const read_spec& spec) {
    const process_result p = run_in(c, {"qemu-img", "map", "--output=json", "-f", spec.format, spec.name});
    REQUIRE(p.status == 0);
    probe_offsets r;
    const json::value map = json::parse(p.out);
    for (const auto& e : map.as_array()) {
        const std::uint64_t start = e.find("start")->as_uint(), length = e.find("length")->as_uint();
        if (length == 0) continue;
        // An unaligned offset in the middle of the extent.
        const std::uint64_t at = start + length / 2 + (length > 1000 ? 333 : 0);
        if (e.find("data")->as_bool() && !r.in_data) r.in_data = std::min(at, start + length - 1);
        if (e.find("zero")->as_bool() && !r.in_zero) r.in_zero = std::min(at, start + length - 1);
    }
    return r;
}

/// The qcow2 CLI's stderr with its prefix replaced by qemu-img's.
std::string as_qemu_err(std::string err) {
    for (std::size_t at = 0; (at = err.find("qcow2: ", at)) != std::string::npos; at += 10) err.replace(at, 7, "qemu-img: ");
    return err;
}

} // namespace

TEST_CASE("read interop: the corpus builds", "[interop]") {
    const corpus& c = require_corpus();
    CHECK(specs().size() >= 50);
    std::uint64_t total = 0;
    for (const auto& spec : specs()) {
        INFO(spec.name);
        // 2 MiB clusters take 8 MiB of metadata and data clusters alone.
        const auto size = std::filesystem::file_size(c.path(spec.name));
        CHECK(size <= 16 * MiB);
        total += allocated_bytes(c.path(spec.name));
    }
    // The corpus stays small.
    CHECK(total <= 160 * MiB);
}

TEST_CASE("read interop: qcow2 convert -O raw writes what qemu-img convert writes", "[interop]") {
    const corpus& c = require_corpus();
    for (const auto& spec : specs()) {
        DYNAMIC_SECTION(spec.name) {
            const std::string ref = reference_raw(c, spec);
            const std::string ours = "out/" + spec.name + ".qcow2.raw";
            // Three threads (each converts 4 MiB units of the guest disk), whatever the CPU count.
            const argv_t argv{QCOW2_TEST_CLI, "convert", "-m", "3", "-f", spec.format, "-O", "raw", spec.name, ours};
            const process_result p = run_in(c, argv);
            INFO(command_line(argv) << "\nstderr: " << p.err);
            REQUIRE(p.status == 0);
            CHECK(p.out.empty());
            const std::string expected = slurp(c.path(ref));
            const std::string got = slurp(c.path(ours));
            INFO(first_difference(got, expected));
            CHECK(got == expected);
            // As sparse as qemu-img's output.
            CHECK(allocated_bytes(c.path(ours)) <= allocated_bytes(c.path(ref)));

            // Probed format, and a pipe: every byte, in order.
            const argv_t to_pipe{QCOW2_TEST_CLI, "convert", "-O", "raw", spec.name, "/dev/stdout"};
            const process_result q = run_in(c, to_pipe);
            INFO(command_line(to_pipe) << "\nstderr: " << q.err);
            REQUIRE(q.status == 0);
            INFO(first_difference(q.out, expected));
            CHECK(q.out == expected);
            std::filesystem::remove(c.path(ours));
        }
    }
}

TEST_CASE("read interop: qcow2 compare agrees with qemu-img compare", "[interop]") {
    const corpus& c = require_corpus();
    for (const auto& spec : specs()) {
        DYNAMIC_SECTION(spec.name) {
            const std::string ref = reference_raw(c, spec);
            const auto compare_both = [&](const argv_t& args) {
                argv_t ours{QCOW2_TEST_CLI, "compare"}, theirs{"qemu-img", "compare"};
                ours.insert(ours.end(), args.begin(), args.end());
                theirs.insert(theirs.end(), args.begin(), args.end());
                const process_result o = run_in(c, ours), t = run_in(c, theirs);
                INFO(command_line(ours) << "\nqcow2:    " << o.status << " " << o.out << o.err << "\nqemu-img: " << t.status
                                        << " " << t.out << t.err);
                CHECK(o.status == t.status);
                CHECK(o.out == t.out);
                return o;
            };

            // Identical, both ways round, probed and named formats.
            auto o = compare_both({spec.name, ref});
            CHECK(o.status == 0);
            CHECK(o.out == "Images are identical.\n");
            CHECK(compare_both({"-f", "raw", "-F", spec.format, ref, spec.name}).status == 0);
            CHECK(compare_both({"-q", spec.name, ref}).out.empty());
            // Against itself, strict: same sizes and block status.
            o = compare_both({"-s", spec.name, spec.name});
            CHECK(o.status == 0);
            // Strict against the raw file: the block status differs where qemu-img says.
            compare_both({"-s", spec.name, ref});

            // One byte changed in data, then in a range reading as zeroes.
            const std::string expected = slurp(c.path(ref));
            const probe_offsets at = probes(c, spec);
            for (const auto& where : {at.in_data, at.in_zero}) {
                if (!where) continue;
                std::string changed = expected;
                changed[static_cast<std::size_t>(*where)] = static_cast<char>(changed[static_cast<std::size_t>(*where)] ^ 0x5a);
                const std::string mod = "out/" + spec.name + ".changed.raw";
                spit(c.path(mod), changed);
                INFO("byte " << *where << " changed");
                o = compare_both({spec.name, mod});
                CHECK(o.status == 1);
                CHECK(o.out == "Content mismatch at offset " + std::to_string(*where / 512 * 512) + "!\n");
                o = compare_both({"-q", mod, spec.name});
                CHECK(o.status == 1);
                CHECK(o.out.empty());
                std::filesystem::remove(c.path(mod));
            }

            // A larger copy: equal while the extra part reads as zeroes (not in strict mode).
            std::string longer = expected + std::string(64 * KiB, '\0');
            const std::string big = "out/" + spec.name + ".longer.raw";
            spit(c.path(big), longer);
            o = compare_both({spec.name, big});
            CHECK(o.status == 0);
            CHECK(o.out == "Warning: Image size mismatch!\nImages are identical.\n");
            o = compare_both({"-s", spec.name, big});
            CHECK(o.status == 1);
            CHECK(o.out == "Strict mode: Image size mismatch!\n");
            longer[expected.size() + 5000] = '\x01';
            spit(c.path(big), longer);
            o = compare_both({big, spec.name});
            CHECK(o.status == 1);
            CHECK(o.out == "Warning: Image size mismatch!\nContent mismatch at offset " +
                               std::to_string((expected.size() + 5000) / 512 * 512) + "!\n");
            std::filesystem::remove(c.path(big));
        }
    }
}

TEST_CASE("read interop: qcow2 compare of the same disk in other layouts agrees with qemu-img", "[interop]") {
    // The same writes in images of other cluster sizes, formats and preallocation (content
    // differs only where a discard is smaller than a cluster, which then keeps its data):
    // the first differing sector, and (strict) the first offset where the block status differs.
    const corpus& c = require_corpus();
    const std::vector<std::string> same{"cluster_size_512.qcow2",       "cluster_size_64K.qcow2",  "cluster_size_2M.qcow2",
                                        "data_file.qcow2",              "data_file_raw.qcow2",     "preallocation_metadata.qcow2",
                                        "preallocation_full.qcow2",     "compat_0.10.qcow2",       "amend_compat_0.10.qcow2"};
    for (const auto& a : same)
        for (const auto& b : same) {
            if (a == b) continue;
            for (const bool strict : {false, true}) {
                argv_t args;
                if (strict) args.push_back("-s");
                args.insert(args.end(), {a, b});
                argv_t ours{QCOW2_TEST_CLI, "compare"}, theirs{"qemu-img", "compare"};
                ours.insert(ours.end(), args.begin(), args.end());
                theirs.insert(theirs.end(), args.begin(), args.end());
                const process_result o = run_in(c, ours), t = run_in(c, theirs);
                INFO(command_line(ours) << "\nqcow2:    " << o.status << " " << o.out << o.err << "\nqemu-img: " << t.status
                                        << " " << t.out << t.err);
                CHECK(o.status == t.status);
                CHECK(o.out == t.out);
            }
        }
}

TEST_CASE("read interop: qcow2 map prints what qemu-img map prints", "[interop]") {
    const corpus& c = require_corpus();
    for (const auto& spec : specs()) {
        if (spec.map_mismatch) continue;
        DYNAMIC_SECTION(spec.name) {
            for (const std::string output : {"json", "human"}) {
                const argv_t ours{QCOW2_TEST_CLI, "map", "--output=" + output, spec.name};
                const argv_t theirs{"qemu-img", "map", "--output=" + output, spec.name};
                const process_result o = run_in(c, ours), t = run_in(c, theirs);
                INFO(command_line(ours) << "\nqcow2 (" << o.status << "):\n" << o.out << o.err << "\nqemu-img (" << t.status
                                        << "):\n" << t.out << t.err);
                CHECK(o.status == t.status);
                CHECK(o.out == t.out);
                CHECK(as_qemu_err(o.err) == t.err);
                if (output == "json" && o.status == 0 && t.status == 0) {
                    json::value a, b;
                    REQUIRE_NOTHROW(a = json::parse(o.out));
                    REQUIRE_NOTHROW(b = json::parse(t.out));
                    CHECK(json::differences(a, b).empty());
                }
            }
            // A window of the disk, unaligned.
            const argv_t window{"map", "--output=json", "--start-offset=1000", "--max-length=1500000", spec.name};
            argv_t ours{QCOW2_TEST_CLI}, theirs{"qemu-img"};
            ours.insert(ours.end(), window.begin(), window.end());
            theirs.insert(theirs.end(), window.begin(), window.end());
            const process_result o = run_in(c, ours), t = run_in(c, theirs);
            INFO(command_line(ours) << "\nqcow2:\n" << o.out << o.err << "\nqemu-img:\n" << t.out << t.err);
            CHECK(o.status == t.status);
            CHECK(o.out == t.out);
        }
    }
}

TEST_CASE("read interop: qcow2 map of a raw backing file of an odd size", "[interop]") {
    // QEMU sees every file in whole sectors (bdrv_getlength): a 3146001-byte raw backing file
    // is 3146240 bytes long to it, so the zeroes read past its end up to the sector boundary
    // belong to the backing file (depth 1, present) in qemu-img map.
    const corpus& c = require_corpus();
    for (const auto& spec : specs()) {
        if (!spec.map_mismatch) continue;
        DYNAMIC_SECTION(spec.name) {
            const process_result o = run_in(c, {QCOW2_TEST_CLI, "map", "--output=json", spec.name});
            const process_result t = run_in(c, {"qemu-img", "map", "--output=json", spec.name});
            INFO("qcow2:\n" << o.out << o.err << "\nqemu-img:\n" << t.out);
            CHECK(o.status == t.status);
            CHECK(o.out == t.out);
        }
    }
}

TEST_CASE("read interop: convert and compare refuse what qemu-img refuses", "[interop]") {
    const corpus& c = require_corpus();
    process_result p = run_in(c, {QCOW2_TEST_CLI, "convert", "-O", "foo", "cluster_size_64K.qcow2", "out/x.foo"});
    const process_result q = run_in(c, {"qemu-img", "convert", "-O", "foo", "cluster_size_64K.qcow2", "out/x.foo"});
    CHECK(p.status == q.status);
    CHECK(p.err == "qcow2: Unknown file format 'foo'\n");
    CHECK(q.err == "qemu-img: Unknown file format 'foo'\n");
    p = run_in(c, {QCOW2_TEST_CLI, "convert", "-O", "raw", "missing.qcow2", "out/x.raw"});
    CHECK(p.status == 1);
    CHECK_THAT(p.err, Catch::Matchers::StartsWith("qcow2: Could not open 'missing.qcow2': "));
    p = run_in(c, {QCOW2_TEST_CLI, "convert", "-f", "qcow2", "-O", "raw", "raw_base.raw", "out/x.raw"});
    CHECK(p.status == 1);
    CHECK(p.err == "qcow2: Could not open 'raw_base.raw': Image is not in qcow2 format\n");
    p = run_in(c, {QCOW2_TEST_CLI, "convert", "-O", "raw", "cluster_size_64K.qcow2", "no/such/dir/x.raw"});
    CHECK(p.status == 1);
    CHECK_THAT(p.err, Catch::Matchers::Contains("Could not create 'no/such/dir/x.raw'"));
    // -p draws nothing when stderr is not a terminal.
    p = run_in(c, {QCOW2_TEST_CLI, "convert", "-p", "-O", "raw", "cluster_size_64K.qcow2", "out/x.raw"});
    CHECK(p.status == 0);
    CHECK(p.err.empty());
    CHECK(p.out.empty());

    // compare: exit 2 when an image cannot be opened, as qemu-img.
    for (const argv_t& args : {argv_t{"missing.qcow2", "cluster_size_64K.qcow2"}, argv_t{"cluster_size_64K.qcow2", "missing.qcow2"},
                               argv_t{"-F", "qcow2", "cluster_size_64K.qcow2", "raw_base.raw"}}) {
        argv_t ours{QCOW2_TEST_CLI, "compare"}, theirs{"qemu-img", "compare"};
        ours.insert(ours.end(), args.begin(), args.end());
        theirs.insert(theirs.end(), args.begin(), args.end());
        const process_result o = run_in(c, ours), t = run_in(c, theirs);
        INFO(command_line(ours) << "\n" << o.err << t.err);
        CHECK(o.status == 2);
        CHECK(t.status == 2);
    }
    // Images of different sizes and content.
    const process_result o = run_in(c, {QCOW2_TEST_CLI, "compare", "chain_1_64K_5M.qcow2", "chain_0_4K_3M.qcow2"});
    const process_result t = run_in(c, {"qemu-img", "compare", "chain_1_64K_5M.qcow2", "chain_0_4K_3M.qcow2"});
    CHECK(o.status == 1);
    CHECK(o.status == t.status);
    CHECK(o.out == t.out);
}
