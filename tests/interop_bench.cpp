// SPDX-License-Identifier: MIT
// Interop with QEMU for `qcow2 bench` (examples/qcow2/bench.hpp), the CLI's qemu-img bench:
//
// - for the same flags, our lines are qemu-img bench's ("Sending N read requests, ...",
//   "Sending flush every N requests"), but for the time in "Run completed in X.XXX seconds.",
//   and so are our error messages and exit status;
// - what `qcow2 bench -w --pattern=N` writes (to a qcow2 image or a raw file) qemu-io reads
//   back with `read -P N`, and the image checks clean in qemu-img.
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#ifndef QCOW2_TEST_CLI
#error "QCOW2_TEST_CLI must give the path of the qcow2 CLI binary (tests/CMakeLists.txt)"
#endif

namespace {

using argv_t = std::vector<std::string>;
using qcow2_test::process_result;

void require_qemu() {
    REQUIRE(qcow2_test::find_program("qemu-img"));
    REQUIRE(qcow2_test::find_program("qemu-io"));
}

std::string describe(const argv_t& argv, const process_result& r) {
    return qcow2_test::command_line(argv) + "\n  status " + std::to_string(r.status) + "\n  stdout: " + r.out +
           "\n  stderr: " + r.err;
}

process_result must_run(const argv_t& argv, const std::string& dir) {
    auto r = qcow2_test::run(argv, dir);
    INFO(describe(argv, r));
    REQUIRE(r.status == 0);
    return r;
}

argv_t cat(argv_t head, const argv_t& tail) {
    head.insert(head.end(), tail.begin(), tail.end());
    return head;
}

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

/// `text` with the time of "Run completed in X.XXX seconds." taken out (the line must have that form).
std::string without_time(const std::string& text) {
    static const std::regex completed(R"(^Run completed in [0-9]+\.[0-9]{3} seconds\.$)");
    std::istringstream in(text);
    std::string line, out;
    while (std::getline(in, line)) {
        if (line.rfind("Run completed in ", 0) == 0) {
            CHECK(std::regex_match(line, completed));
            line = "Run completed in (time) seconds.";
        }
        out += line + "\n";
    }
    return out;
}

/// qemu-img's stderr in our words ("qemu-img: " becomes "qcow2: ").
std::string qemu_words(const std::string& err) {
    std::istringstream in(err);
    std::string line, out;
    while (std::getline(in, line)) {
        if (line.rfind("qemu-img: ", 0) == 0) line = "qcow2: " + line.substr(10);
        out += line + "\n";
    }
    return out;
}

} // namespace

TEST_CASE("cli bench: the lines, errors and exit status of qemu-img bench", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-bench-");
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "img.qcow2", "64M"}, dir.path());
    must_run({"qemu-img", "create", "-q", "-f", "raw", "img.raw", "8M"}, dir.path());
    const std::vector<argv_t> cases = {
        {"-c", "1000"},
        {"-c", "500", "-s", "4096"},
        {"-c", "100", "-s", "64k", "-S", "128k", "-o", "1M"},
        {"-c", "0x20", "-s", "3000", "-o", "1.5k"},
        {"-c", "50", "-d", "1"},
        {"-c", "50", "-d", "8", "-q", "-t", "none", "-i", "threads"},
        {"-c", "50", "-t", "none", "-n"},
        {"-c", "50", "-U"},
        {"-c", "200", "-w", "--pattern=0x5a"},
        {"-wq", "-c200", "-S", "8k", "--pattern", "17"},
        {"-c", "200", "-w", "-d", "4", "--flush-interval=100"},
        {"-c", "200", "-w", "-d", "1", "--flush-interval=16", "--no-drain"},
        {"-c", "10", "-f", "raw"},
        {"-c", "1000", "-w", "-s", "512", "-S", "1M"}, // wraps around at the end of the disk
        // Errors.
        {"-c", "x"},
        {"-c", "-1"},
        {"-d", "3000000000"},
        {"-o", "x"},
        {"-s", "3G"},
        {"-S", "y"},
        {"--pattern=256"},
        {"-t", "sometimes"},
        {"-i", "magic"},
        {"-n"},
        {"--flush-interval=100"},
        {"-w", "--flush-interval=10"},
        {"-w", "-U"},
        {"-f", "qcow2", "-c", "1", "img.raw"},
        {"-c", "10", "-o", "64M"}, // past the end of the disk: EIO
    };
    for (const auto& options : cases) {
        for (const char* file : {"img.qcow2", "img.raw"}) {
            // A case naming its own file runs once, with it.
            const bool own_file = !options.empty() && options.back().find('.') != std::string::npos &&
                                  options.back().rfind("img.", 0) == 0;
            if (own_file && std::string(file) != "img.raw") continue;
            argv_t tail = options;
            // qemu-img warns about writes to a raw file whose format it probed: name it.
            const bool names_format = std::find(tail.begin(), tail.end(), "-f") != tail.end();
            if (!own_file && !names_format && std::string(file) == "img.raw") tail.insert(tail.begin(), {"-f", "raw"});
            if (!own_file) tail.push_back(file);
            const argv_t ours = cat({QCOW2_TEST_CLI, "bench"}, tail);
            const argv_t theirs = cat({"qemu-img", "bench"}, tail);
            const auto a = qcow2_test::run(ours, dir.path());
            const auto b = qcow2_test::run(theirs, dir.path());
            INFO(describe(ours, a));
            INFO(describe(theirs, b));
            CHECK(first_line(a.out) == first_line(b.out));
            CHECK(without_time(a.out) == without_time(b.out));
            CHECK(a.err == qemu_words(b.err));
            CHECK(a.status == b.status);
        }
    }
}

TEST_CASE("cli bench: qemu-io reads what bench -w wrote, and qemu-img check finds the image clean", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-bench-");
    const std::string d = dir.path();

    SECTION("a qcow2 image") {
        must_run({"qemu-img", "create", "-q", "-f", "qcow2", "img.qcow2", "64M"}, d);
        const auto r = must_run({QCOW2_TEST_CLI, "bench", "-w", "--pattern=0x5a", "-c", "100", "-s", "4096", "img.qcow2"}, d);
        const auto q = must_run({"qemu-img", "bench", "-w", "--pattern=0x5a", "-c", "100", "-s", "4096", "img.qcow2"}, d);
        CHECK(first_line(r.out) == first_line(q.out));
        must_run({"qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 409600", "-c", "read -P 0 409600 1M", "img.qcow2"}, d);
        must_run({"qemu-img", "check", "img.qcow2"}, d);
    }

    SECTION("a zstd image, sparse requests over compressed clusters, unaligned, wrapping at the end") {
        must_run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "img.qcow2", "4M"}, d);
        must_run({"qemu-io", "-f", "qcow2", "-c", "write -c -P 0x33 0 4M", "img.qcow2"}, d);
        // 24 requests of 1000 bytes, 192 KiB apart from 100 bytes in: the last three wrap to the start.
        must_run({QCOW2_TEST_CLI, "bench", "-w", "--pattern=0xa7", "-c", "24", "-s", "1000", "-S", "192k", "-o", "100",
                  "img.qcow2"},
                 d);
        argv_t io{"qemu-io", "-f", "qcow2"};
        for (std::uint64_t i = 0; i < 24; ++i) {
            const std::uint64_t at = (100 + i * 192 * 1024) % (4 * 1024 * 1024);
            io.push_back("-c");
            io.push_back("read -P 0xa7 " + std::to_string(at) + " 1000");
        }
        io.push_back("-c");
        io.push_back("read -P 0x33 1100 130072"); // from the end of the first request to the first wrapped one
        io.push_back("img.qcow2");
        must_run(io, d);
        must_run({"qemu-img", "check", "img.qcow2"}, d);
    }

    SECTION("a raw file") {
        must_run({"qemu-img", "create", "-q", "-f", "raw", "img.raw", "8M"}, d);
        must_run({QCOW2_TEST_CLI, "bench", "-w", "--pattern=0x5a", "-c", "100", "-s", "4096", "img.raw"}, d);
        must_run({"qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 409600", "-c", "read -P 0 409600 1M", "img.raw"}, d);
    }
}
