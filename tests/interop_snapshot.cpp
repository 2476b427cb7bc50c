// SPDX-License-Identifier: MIT
// Interop with QEMU for `qcow2 snapshot` (examples/qcow2/snapshot.hpp) and the snapshot
// listing of `qcow2 info`. Everything is made at test time, in temporary directories:
//
// - listing: on images holding snapshots made by qemu-img and by us, `qcow2 snapshot -l`
//   prints what `qemu-img snapshot -l` prints, byte for byte (long and empty names
//   included), and `qcow2 info` (text and JSON) lists the snapshots as `qemu-img info`
//   does; a snapshot we take is listed by qemu-img with the id, name, sizes and clock that
//   qemu-img gives its own, dated the second it was taken;
// - data: in sequences of snapshots, writes (qemu-io: data, compressed, zeroes, discards),
//   applies (by name and by id), deletes and a resize, with the snapshots taken by one tool
//   and applied by the other (and by ours alone), every apply gives the guest disk a raw
//   copy took when the snapshot was made (`qemu-img compare`, virtual size included), and
//   `qemu-img check` finds no corruption and no leak after each of our operations; for the
//   default layout, a version 2 image, 4 KiB clusters with 4-bit refcounts, extended L2
//   entries, zstd, lazy refcounts, many snapshots;
// - errors: mixed actions, missing or extra file names, unknown snapshots, raw files, images
//   with an external data file or 1-bit refcounts: qemu-img's message and exit status.
#include "support/json.hpp"
#include "support/interop.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <ctime>
#include <iomanip>
#include <sstream>
#include <string>
#include <vector>

#ifndef QCOW2_TEST_CLI
#error "QCOW2_TEST_CLI must give the path of the qcow2 CLI binary (tests/CMakeLists.txt)"
#endif

namespace {

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

/// qemu's stderr in our words: "qemu-img: " at line starts becomes "qcow2: "; qemu-img's
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

/// `qemu-img compare` finds the qcow2 image and the raw file identical, of the same size.
void require_reads_as(const std::string& dir, const std::string& img, const std::string& raw, const std::string& after) {
    const argv_t argv{"qemu-img", "compare", "-f", "qcow2", "-F", "raw", img, raw};
    auto r = qcow2_test::run(argv, dir);
    INFO("after " << after << ": " << describe(argv, r));
    CHECK(r.status == 0);
    const auto size = info_json(dir, img).find("virtual-size")->as_uint();
    const auto raw_size = info_json(dir, raw).find("virtual-size")->as_uint();
    CHECK(size == raw_size);
}

/// One row of a `snapshot -l` table.
struct snapshot_row {
    std::string id, tag, vm_size, date, clock, icount;
};

std::string trim(std::string s) {
    while (!s.empty() && s.back() == ' ') s.pop_back();
    while (!s.empty() && s.front() == ' ') s.erase(s.begin());
    return s;
}

/// Parses the table of `qemu-img snapshot -l` ("%-9s %-16s %8s%20s%13s%11s" rows): the
/// last 52 columns are fixed, the id is the first word (ids have no blanks), the tag the rest.
std::vector<snapshot_row> parse_table(const std::string& text) {
    std::istringstream in(text);
    std::string line;
    std::vector<snapshot_row> rows;
    REQUIRE(std::getline(in, line));
    CHECK(line == "Snapshot list:");
    REQUIRE(std::getline(in, line));
    CHECK(line == "ID        TAG               VM SIZE                DATE     VM CLOCK     ICOUNT");
    while (std::getline(in, line)) {
        REQUIRE(line.size() >= 52 + 11);
        const std::string right = line.substr(line.size() - 52), left = line.substr(0, line.size() - 52);
        snapshot_row r;
        r.id = left.substr(0, left.find(' '));
        r.tag = left.size() > 10 ? trim(left.substr(10)) : "";
        r.vm_size = trim(right.substr(0, 8));
        r.date = trim(right.substr(8, 20));
        r.clock = trim(right.substr(28, 13));
        r.icount = trim(right.substr(41, 11));
        rows.push_back(r);
    }
    return rows;
}

/// Seconds since the epoch of a table date (local time, as QEMU prints it).
std::time_t parse_date(const std::string& date) {
    std::tm tm{};
    std::istringstream in(date);
    in >> std::get_time(&tm, "%Y-%m-%d %H:%M:%S");
    REQUIRE_FALSE(in.fail());
    tm.tm_isdst = -1;
    return std::mktime(&tm);
}

/// Runs `tool snapshot ARGS FILE` ("qemu" or "ours") in `dir`; the status must be 0.
void snapshot(const std::string& tool, const argv_t& args, const std::string& file, const std::string& dir) {
    argv_t argv{tool == "qemu" ? "qemu-img" : QCOW2_TEST_CLI, "snapshot"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back(file);
    must_run(argv, dir);
}

void qemu_io(const std::string& dir, const std::string& file, const argv_t& cmds) {
    argv_t argv{"qemu-io", "-f", "qcow2"};
    for (const auto& c : cmds) {
        argv.push_back("-c");
        argv.push_back(c);
    }
    argv.push_back(file);
    must_run(argv, dir);
}

void raw_copy(const std::string& dir, const std::string& img, const std::string& raw) {
    must_run({"qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, raw}, dir);
}

} // namespace

TEST_CASE("cli snapshot: -l prints qemu-img snapshot -l's table, info lists snapshots as qemu-img info", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-snapshot-");
    const std::string d = dir.path();
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "img.qcow2", "16M"}, d);
    qemu_io(d, "img.qcow2", {"write -P 1 0 1M"});
    // An image without snapshots: nothing, -q or not.
    for (const argv_t& argv : {argv_t{QCOW2_TEST_CLI, "snapshot", "-l", "img.qcow2"},
                               argv_t{QCOW2_TEST_CLI, "snapshot", "-l", "-q", "img.qcow2"}}) {
        auto r = must_run(argv, d);
        CHECK(r.out.empty());
        CHECK(r.err.empty());
    }
    snapshot("qemu", {"-c", "first"}, "img.qcow2", d);
    snapshot("ours", {"-c", "second"}, "img.qcow2", d);
    snapshot("qemu", {"-c", "a-snapshot-name-longer-than-sixteen-columns"}, "img.qcow2", d);
    snapshot("ours", {"-c", ""}, "img.qcow2", d);
    snapshot("ours", {"-c", "x"}, "img.qcow2", d);
    snapshot("qemu", {"-d", "first"}, "img.qcow2", d); // ids need not start at 1
    qemu_io(d, "img.qcow2", {"write -P 2 0 64k"});

    const auto q = must_run({"qemu-img", "snapshot", "-l", "img.qcow2"}, d);
    const auto m = must_run({QCOW2_TEST_CLI, "snapshot", "-l", "img.qcow2"}, d);
    CHECK(m.out == q.out);
    CHECK(must_run({QCOW2_TEST_CLI, "snapshot", "-q", "-l", "img.qcow2"}, d).out == q.out);
    const auto rows = parse_table(m.out);
    REQUIRE(rows.size() == 4);
    CHECK(rows[0].id == "2");
    CHECK(rows[1].tag == "a-snapshot-name-longer-than-sixteen-columns");
    CHECK(rows[2].tag.empty());
    CHECK(rows[3].id == "5");

    // qcow2 info: the same "Snapshot list" block and the same JSON snapshots as qemu-img info.
    const auto qi = must_run({"qemu-img", "info", "img.qcow2"}, d).out;
    const auto mi = must_run({QCOW2_TEST_CLI, "info", "img.qcow2"}, d).out;
    const auto block = [](const std::string& text) {
        const auto begin = text.find("Snapshot list:");
        const auto end = text.find("Format specific information:");
        REQUIRE(begin != std::string::npos);
        REQUIRE(end != std::string::npos);
        return text.substr(begin, end - begin);
    };
    CHECK(block(mi) == block(qi));
    CHECK(block(mi) == q.out);
    const auto qj = info_json(d, "img.qcow2");
    const auto mj = json::parse(must_run({QCOW2_TEST_CLI, "info", "--output=json", "img.qcow2"}, d).out);
    REQUIRE(qj.find("snapshots"));
    REQUIRE(mj.find("snapshots"));
    INFO(qj.find("snapshots")->dump() << "\n" << mj.find("snapshots")->dump());
    CHECK(*mj.find("snapshots") == *qj.find("snapshots"));
}

TEST_CASE("cli snapshot: qemu-img lists our snapshots as its own, dated when they were taken", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-snapshot-");
    const std::string d = dir.path();
    for (const char* f : {"q.qcow2", "m.qcow2"}) {
        must_run({"qemu-img", "create", "-q", "-f", "qcow2", f, "8M"}, d);
        qemu_io(d, f, {"write -P 1 0 1M"});
    }
    const std::time_t before = std::time(nullptr);
    for (const char* name : {"one", "two", "three"}) {
        snapshot("qemu", {"-c", name}, "q.qcow2", d);
        snapshot("ours", {"-c", name}, "m.qcow2", d);
    }
    snapshot("qemu", {"-d", "two"}, "q.qcow2", d);
    snapshot("ours", {"-d", "two"}, "m.qcow2", d);
    snapshot("qemu", {"-c", "four"}, "q.qcow2", d);
    snapshot("ours", {"-c", "four"}, "m.qcow2", d);
    const std::time_t after = std::time(nullptr);

    const auto q = parse_table(must_run({"qemu-img", "snapshot", "-l", "q.qcow2"}, d).out);
    const auto m = parse_table(must_run({"qemu-img", "snapshot", "-l", "m.qcow2"}, d).out);
    REQUIRE(m.size() == q.size());
    REQUIRE(m.size() == 3);
    for (std::size_t i = 0; i < m.size(); ++i) {
        INFO("row " << i);
        CHECK(m[i].id == q[i].id);
        CHECK(m[i].tag == q[i].tag);
        CHECK(m[i].vm_size == q[i].vm_size);
        CHECK(m[i].clock == q[i].clock);
        const std::time_t t = parse_date(m[i].date);
        CHECK(t >= before);
        CHECK(t <= after);
    }
    CHECK(m[2].id == "4"); // one more than the largest id, as QEMU numbers them
    // The JSON: the same keys, sizes and clocks; the date of the second it was taken, with
    // microseconds (gettimeofday, as qemu-img takes it).
    const auto qj = info_json(d, "q.qcow2").find("snapshots")->as_array();
    const auto mj = info_json(d, "m.qcow2").find("snapshots")->as_array();
    REQUIRE(mj.size() == qj.size());
    for (std::size_t i = 0; i < mj.size(); ++i) {
        for (const char* key : {"id", "name", "vm-state-size", "vm-clock-sec", "vm-clock-nsec"}) {
            INFO(key);
            CHECK(*mj[i].find(key) == *qj[i].find(key));
        }
        const auto sec = static_cast<std::time_t>(mj[i].find("date-sec")->as_uint());
        CHECK(sec >= before);
        CHECK(sec <= after);
        CHECK(mj[i].find("date-nsec")->as_uint() < 1000000000u);
        CHECK(mj[i].find("date-nsec")->as_uint() % 1000 == 0);
    }
}

TEST_CASE("cli snapshot: icount 0 and names taken twice, as qemu-img's", "[interop]") {
    // qemu-img snapshot -c stores icount 0 (its QEMUSnapshotInfo is zeroed), and names may
    // repeat (only ids are unique): -a takes the first of a name, -d deletes the first.
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-snapshot-");
    const std::string d = dir.path();
    for (const char* f : {"q.qcow2", "m.qcow2"}) must_run({"qemu-img", "create", "-q", "-f", "qcow2", f, "1M"}, d);
    snapshot("qemu", {"-c", "s"}, "q.qcow2", d);
    snapshot("ours", {"-c", "s"}, "m.qcow2", d);
    const auto q = parse_table(must_run({"qemu-img", "snapshot", "-l", "q.qcow2"}, d).out);
    const auto m = parse_table(must_run({"qemu-img", "snapshot", "-l", "m.qcow2"}, d).out);
    REQUIRE(q.size() == 1);
    REQUIRE(m.size() == 1);
    CHECK(m[0].icount == q[0].icount);
    const argv_t again{QCOW2_TEST_CLI, "snapshot", "-c", "s", "m.qcow2"};
    const auto r = qcow2_test::run(again, d);
    INFO(describe(again, r));
    CHECK(r.status == 0);
    must_run({"qemu-img", "snapshot", "-c", "s", "q.qcow2"}, d);
    const auto q2 = parse_table(must_run({"qemu-img", "snapshot", "-l", "q.qcow2"}, d).out);
    const auto m2 = parse_table(must_run({"qemu-img", "snapshot", "-l", "m.qcow2"}, d).out);
    REQUIRE(m2.size() == 2);
    REQUIRE(q2.size() == 2);
    for (std::size_t i = 0; i < 2; ++i) {
        CHECK(m2[i].id == q2[i].id);
        CHECK(m2[i].tag == "s");
        CHECK(m2[i].icount == "0");
    }
    // -d s deletes the first one (id 1) with either tool.
    must_run({"qemu-img", "snapshot", "-d", "s", "q.qcow2"}, d);
    must_run({QCOW2_TEST_CLI, "snapshot", "-d", "s", "m.qcow2"}, d);
    const auto q3 = parse_table(must_run({"qemu-img", "snapshot", "-l", "q.qcow2"}, d).out);
    const auto m3 = parse_table(must_run({"qemu-img", "snapshot", "-l", "m.qcow2"}, d).out);
    REQUIRE(m3.size() == 1);
    REQUIRE(q3.size() == 1);
    CHECK(m3[0].id == "2");
    CHECK(q3[0].id == "2");
    qemu_check_clean(d, "m.qcow2", "-d s");
}

TEST_CASE("cli snapshot: applying gives the same guest data with either tool; qemu-img check clean after each operation",
          "[interop]") {
    require_qemu();
    struct config {
        std::string name;
        std::string options; ///< qemu-img create -o
        bool compressed = true;
    };
    const std::vector<config> configs{
        {"defaults", "", true},
        {"version 2", "compat=0.10", true},
        {"4k clusters, 8-bit refcounts", "cluster_size=4k,refcount_bits=8", true},
        {"extended L2", "extended_l2=on", true},
        {"zstd, 64-bit refcounts", "compression_type=zstd,refcount_bits=64", true},
        {"lazy refcounts", "lazy_refcounts=on", false},
    };
    // Who takes the snapshots and who applies them.
    const std::vector<std::pair<std::string, std::string>> roles{{"qemu", "ours"}, {"ours", "qemu"}, {"ours", "ours"}};
    for (const auto& c : configs) {
        for (const auto& [taker, applier] : roles) {
            if (c.name != "defaults" && taker == applier) continue; // ours alone: once is enough here
            DYNAMIC_SECTION(c.name << ": taken by " << taker << ", applied by " << applier) {
                qcow2_test::temp_dir dir("qcow2-cli-snapshot-");
                const std::string d = dir.path();
                argv_t create{"qemu-img", "create", "-q", "-f", "qcow2"};
                if (!c.options.empty()) create.insert(create.end(), {"-o", c.options});
                create.insert(create.end(), {"img.qcow2", "8M"});
                must_run(create, d);
                // After each of our operations qemu-img finds the image clean.
                const auto step = [&](const std::string& tool, const argv_t& args) {
                    snapshot(tool, args, "img.qcow2", d);
                    if (tool == "ours") qemu_check_clean(d, "img.qcow2", command_line(args));
                };
                qemu_io(d, "img.qcow2", {"write -P 1 0 1M", "write -P 7 3M 128k"});
                if (c.compressed) qemu_io(d, "img.qcow2", {"write -c -P 2 2M 64k", "write -c -P 3 5M 64k"});
                step(taker, {"-c", "s1"});
                raw_copy(d, "img.qcow2", "s1.raw");
                qemu_io(d, "img.qcow2", {"write -P 3 512k 1M", "write -z 2M 64k", "discard 3M 64k", "write -P 4 6M 8k"});
                step(taker, {"-c", "s2"});
                raw_copy(d, "img.qcow2", "s2.raw");
                qemu_io(d, "img.qcow2", {"write -P 5 0 3M", "write -z 5M 64k"});
                step(applier, {"-a", "s1"});
                qemu_check_clean(d, "img.qcow2", "-a s1");
                require_reads_as(d, "img.qcow2", "s1.raw", "-a s1");
                qemu_io(d, "img.qcow2", {"write -P 6 1M 64k"});
                step(applier, {"-a", "s2"});
                require_reads_as(d, "img.qcow2", "s2.raw", "-a s2");
                step(taker, {"-d", "s1"});
                require_reads_as(d, "img.qcow2", "s2.raw", "-d s1");
                qemu_io(d, "img.qcow2", {"write -P 8 0 2M"});
                step(applier, {"-a", "2"}); // by id
                require_reads_as(d, "img.qcow2", "s2.raw", "-a 2");
                step(applier, {"-d", "s2"}); // by name only (qemu-img 7.2 deletes no snapshot by id)
                qemu_check_clean(d, "img.qcow2", "-d s2");
                CHECK(must_run({"qemu-img", "snapshot", "-l", "img.qcow2"}, d).out.empty());
                require_reads_as(d, "img.qcow2", "s2.raw", "the last delete");
            }
        }
    }
}

TEST_CASE("cli snapshot: a snapshot of a smaller disk, applied after a resize, gives the old size back", "[interop]") {
    require_qemu();
    for (const char* applier : {"ours", "qemu"}) {
        DYNAMIC_SECTION("applied by " << applier) {
            qcow2_test::temp_dir dir("qcow2-cli-snapshot-");
            const std::string d = dir.path();
            must_run({"qemu-img", "create", "-q", "-f", "qcow2", "img.qcow2", "8M"}, d);
            qemu_io(d, "img.qcow2", {"write -P 1 0 1M", "write -P 2 7M 1M"});
            snapshot("ours", {"-c", "small"}, "img.qcow2", d);
            qemu_check_clean(d, "img.qcow2", "-c small");
            raw_copy(d, "img.qcow2", "small.raw");
            must_run({QCOW2_TEST_CLI, "resize", "-q", "img.qcow2", "24M"}, d);
            qemu_io(d, "img.qcow2", {"write -P 3 6M 4M", "write -P 4 20M 1M"});
            snapshot("ours", {"-c", "large"}, "img.qcow2", d);
            qemu_check_clean(d, "img.qcow2", "-c large");
            raw_copy(d, "img.qcow2", "large.raw");
            qemu_io(d, "img.qcow2", {"write -P 5 0 24M"});
            snapshot(applier, {"-a", "small"}, "img.qcow2", d);
            qemu_check_clean(d, "img.qcow2", "-a small");
            require_reads_as(d, "img.qcow2", "small.raw", "-a small");
            snapshot(applier, {"-a", "large"}, "img.qcow2", d);
            qemu_check_clean(d, "img.qcow2", "-a large");
            require_reads_as(d, "img.qcow2", "large.raw", "-a large");
            snapshot("ours", {"-d", "small"}, "img.qcow2", d);
            qemu_check_clean(d, "img.qcow2", "-d small");
            require_reads_as(d, "img.qcow2", "large.raw", "-d small");
        }
    }
}

TEST_CASE("cli snapshot: many snapshots, applied and deleted out of order, check clean", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-snapshot-");
    const std::string d = dir.path();
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=16k", "img.qcow2", "4M"}, d);
    constexpr int count = 8;
    for (int i = 0; i < count; ++i) {
        const std::string k = std::to_string(i);
        qemu_io(d, "img.qcow2",
                {"write -P " + std::to_string(i + 1) + " " + std::to_string(i * 256) + "k 300k",
                 (i % 2 ? "write -c -P 9 " : "write -z ") + std::to_string(3 * 1024 - i * 128) + "k 16k"});
        snapshot("ours", {"-c", "s" + k}, "img.qcow2", d);
        raw_copy(d, "img.qcow2", "s" + k + ".raw");
    }
    qemu_check_clean(d, "img.qcow2", "creating the snapshots");
    for (int i : {5, 0, 7, 2}) {
        const std::string k = std::to_string(i);
        snapshot("ours", {"-a", "s" + k}, "img.qcow2", d);
        qemu_check_clean(d, "img.qcow2", "-a s" + k);
        require_reads_as(d, "img.qcow2", "s" + k + ".raw", "-a s" + k);
        qemu_io(d, "img.qcow2", {"write -P 10 1M 64k"});
    }
    for (int i : {3, 0, 7, 1}) {
        snapshot("ours", {"-d", "s" + std::to_string(i)}, "img.qcow2", d);
        qemu_check_clean(d, "img.qcow2", "-d s" + std::to_string(i));
    }
    for (int i : {2, 4, 5, 6}) {
        const std::string k = std::to_string(i);
        snapshot("qemu", {"-a", "s" + k}, "img.qcow2", d);
        require_reads_as(d, "img.qcow2", "s" + k + ".raw", "qemu-img snapshot -a s" + k);
    }
    CHECK(parse_table(must_run({"qemu-img", "snapshot", "-l", "img.qcow2"}, d).out).size() == 4);
}

TEST_CASE("cli snapshot: messages and exit status as qemu-img's", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-cli-snapshot-");
    const std::string d = dir.path();
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "img.qcow2", "1M"}, d);
    must_run({"qemu-img", "snapshot", "-c", "s", "img.qcow2"}, d);
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=img.data", "df.qcow2", "1M"}, d);
    must_run({"qemu-img", "create", "-q", "-f", "raw", "disk.raw", "1M"}, d);
    const std::vector<argv_t> cases{
        {"-l", "-c", "x", "img.qcow2"},
        {"-l", "-l", "img.qcow2"},
        {"-c", "x", "-d", "y", "img.qcow2"},
        {"-a", "x", "-l", "img.qcow2"},
        {},
        {"-l"},
        {"-l", "img.qcow2", "disk.raw"},
        {"-l", "nonexistent.qcow2"},
        {"-c", "x", "nonexistent.qcow2"},
        {"-a", "nope", "img.qcow2"},
        {"-d", "nope", "img.qcow2"},
        {"-d", "1", "img.qcow2"}, // qemu-img 7.2 deletes by name only
        {"-a", "1", "img.qcow2"}, // but applies by id
        {"-a", "s", "img.qcow2"},
        {"-c", "x", "disk.raw"},
        {"-a", "x", "disk.raw"},
        {"-d", "x", "disk.raw"},
        {"-l", "disk.raw"},
        {"-c", "x", "df.qcow2"},
        {"-a", "x", "df.qcow2"},
        {"-d", "x", "df.qcow2"},
        {"-l", "df.qcow2"},
        {"img.qcow2"}, // no action: opened, nothing done
    };
    for (const auto& args : cases) {
        DYNAMIC_SECTION(command_line(args)) {
            argv_t qargv{"qemu-img", "snapshot"}, margv{QCOW2_TEST_CLI, "snapshot"};
            qargv.insert(qargv.end(), args.begin(), args.end());
            margv.insert(margv.end(), args.begin(), args.end());
            const auto before = must_run({"qemu-img", "snapshot", "-l", "img.qcow2"}, d).out;
            const auto q = qcow2_test::run(qargv, d);
            const auto m = qcow2_test::run(margv, d);
            INFO(describe(qargv, q));
            INFO(describe(margv, m));
            CHECK(m.status == q.status);
            CHECK(m.out == q.out);
            CHECK(m.err == qemu_words(q.err));
            CHECK(must_run({"qemu-img", "snapshot", "-l", "img.qcow2"}, d).out == before);
        }
    }
    // Refcounts that would overflow: 1-bit refcounts hold no second reference, and 4-bit ones
    // no reference more to a host cluster packed with 15 compressed clusters. qemu-img fails
    // (leaving leaks, or worse); we fail with its message and leave the image clean.
    struct overflow {
        const char* options;
        argv_t writes;
    };
    const std::vector<overflow> overflows{{"refcount_bits=1", {"write -P 1 0 64k"}},
                                          {"refcount_bits=4,cluster_size=4k", {"write -c -P 2 0 64k"}}};
    for (const auto& o : overflows) {
        DYNAMIC_SECTION(o.options) {
            for (const char* f : {"q1.qcow2", "m1.qcow2"}) {
                must_run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", o.options, f, "1M"}, d);
                qemu_io(d, f, o.writes);
            }
            const auto q = qcow2_test::run({"qemu-img", "snapshot", "-c", "s", "q1.qcow2"}, d);
            const auto m = qcow2_test::run({QCOW2_TEST_CLI, "snapshot", "-c", "s", "m1.qcow2"}, d);
            INFO(q.err << m.err);
            CHECK(q.status == 1);
            CHECK(m.status == 1);
            CHECK(m.err == qemu_words(q.err));
            qemu_check_clean(d, "m1.qcow2", "a refused snapshot");
            CHECK(must_run({"qemu-img", "snapshot", "-l", "m1.qcow2"}, d).out.empty());
        }
    }
}
