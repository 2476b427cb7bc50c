// SPDX-License-Identifier: MIT
// Interop with QEMU for persistent bitmaps (`qcow2 bitmap`, examples/qcow2/bitmap.hpp, and the
// bitmaps the library keeps up to date on writes). On twin images, one changed by qemu-img
// and qemu-io, the other by the qcow2 CLI:
//
// - actions: every `qemu-img bitmap` action (several in one call, merges across granularities
//   and from another file) gives the same `qemu-img info` format-specific data, the same bits
//   in every bitmap (read by the library from both files) and an image `qemu-img check` finds
//   clean; refusals have qemu-img's words and exit status;
// - maintenance: the same guest writes (data, unaligned, zeroes, discards, compressed) set the
//   same bits in every enabled bitmap, bit for bit, disabled bitmaps stay as they were, and
//   QEMU finds our bitmaps consistent (no "in-use") and reads them (it merges one into a new
//   bitmap of its own that then holds the same bits);
// - an image left open by a writer (in use on disk) is reported in use by qemu-img info.
#include "qcow2/qcow2.hpp"

#include "support/json.hpp"
#include "support/interop.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
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

/// qemu-img's stderr in our words ("qemu-img: " becomes "qcow2: "; its node names go).
std::string qemu_words(const std::string& err) {
    std::istringstream in(err);
    std::string line, out;
    while (std::getline(in, line)) {
        if (line.rfind("Try 'qemu-img --help'", 0) == 0) continue;
        if (line.rfind("qemu-img: ", 0) == 0) line = "qcow2: " + line.substr(10);
        out += line + "\n";
    }
    return out;
}

/// qemu-img info's format-specific data.
json::value format_data(const std::string& dir, const std::string& file) {
    const auto j = json::parse(must_run({"qemu-img", "info", "--output=json", file}, dir).out);
    const auto* fs = j.find("format-specific");
    REQUIRE(fs);
    return json::parse(fs->find("data")->dump());
}

/// `qcow2 info --output=json` lists the bitmaps of `file` as `qemu-img info` does.
void require_info_lists_bitmaps(const std::string& dir, const std::string& file) {
    const auto theirs = format_data(dir, file);
    const auto j = json::parse(must_run({QCOW2_TEST_CLI, "info", "--output=json", file}, dir).out);
    const auto* ours = j.find("format-specific")->find("data")->find("bitmaps");
    const auto* want = theirs.find("bitmaps");
    REQUIRE((ours == nullptr) == (want == nullptr));
    if (want) CHECK(json::differences(*want, *ours).empty());
}

/// The bitmaps of `file` as the library reads them: name, flags, granularity and bits.
struct read_bitmaps {
    std::vector<qcow2::bitmap_entry> entries;
    std::vector<qcow2::bitmap_bits> bits;
};

read_bitmaps read_all(const std::string& path) {
    auto f = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_only);
    REQUIRE(f);
    qcow2::open_options o;
    o.metadata_only = true;
    auto img = qcow2::image::open(std::move(*f), o);
    INFO(path << ": " << (img ? "" : img.error().what()));
    REQUIRE(img);
    read_bitmaps out;
    out.entries = img->bitmaps();
    for (const auto& e : out.entries) {
        auto b = img->read_bitmap(e.name);
        INFO(path << " bitmap " << e.name << ": " << (b ? "" : b.error().what()));
        REQUIRE(b);
        out.bits.push_back(std::move(*b));
    }
    return out;
}

/// The same bitmaps, flags and bits in both images.
void require_same_bitmaps(const std::string& dir, const std::string& theirs, const std::string& ours,
                          const std::string& after) {
    INFO("after " << after);
    CHECK(json::differences(format_data(dir, theirs), format_data(dir, ours)).empty());
    const auto q = read_all(dir + "/" + theirs), m = read_all(dir + "/" + ours);
    REQUIRE(q.entries.size() == m.entries.size());
    for (std::size_t i = 0; i < q.entries.size(); ++i) {
        INFO("bitmap " << q.entries[i].name);
        CHECK(m.entries[i].name == q.entries[i].name);
        CHECK(m.entries[i].flags == q.entries[i].flags);
        CHECK(m.bits[i].granularity == q.bits[i].granularity);
        CHECK(m.bits[i].dirty_bits() == q.bits[i].dirty_bits());
        CHECK(m.bits[i].bytes == q.bits[i].bytes);
    }
}

/// Runs a qemu-io command on `theirs` and the same `qcow2 io` command on `ours`.
void write_both(const std::string& dir, const std::string& theirs, const std::string& ours, const std::string& cmd) {
    must_run({"qemu-io", "-f", "qcow2", "-c", cmd, theirs}, dir);
    must_run({QCOW2_TEST_CLI, "io", "-f", "qcow2", "-c", cmd, ours}, dir);
}

/// `qemu-img bitmap ARGS` on `theirs` and `qcow2 bitmap ARGS` on `ours` (FILE and BITMAP last):
/// same exit status and, on failure, the same message.
void bitmap_both(const std::string& dir, const std::string& theirs, const std::string& ours, argv_t args,
                 const std::string& name) {
    argv_t q{"qemu-img", "bitmap"}, m{QCOW2_TEST_CLI, "bitmap"};
    q.insert(q.end(), args.begin(), args.end());
    m.insert(m.end(), args.begin(), args.end());
    q.insert(q.end(), {theirs, name});
    m.insert(m.end(), {ours, name});
    const auto rq = qcow2_test::run(q, dir), rm = qcow2_test::run(m, dir);
    INFO(describe(q, rq) << "\n" << describe(m, rm));
    REQUIRE(rm.status == rq.status);
    if (rq.status) {
        std::string want = qemu_words(rq.err);
        // QEMU names its block node where we name the file.
        if (const auto p = want.find("'#block"); p != std::string::npos)
            want.replace(p, want.find('\'', p + 1) - p + 1, "'" + ours + "'");
        CHECK(rm.err == want);
    }
    qemu_check_clean(dir, ours, command_line(m));
}

} // namespace

TEST_CASE("cli bitmap: every action as qemu-img bitmap's, the same bits, check clean", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-bitmap-");
    const std::string d = dir.path();
    for (const std::string create : {"cluster_size=65536", "cluster_size=4096", "extended_l2=on,cluster_size=65536"}) {
        DYNAMIC_SECTION(create) {
            must_run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", create, "q.qcow2", "20M"}, d);
            must_run({"qemu-io", "-c", "write -P 0x11 0 1M", "q.qcow2"}, d);
            must_run({"cp", "q.qcow2", "m.qcow2"}, d);
            must_run({"qemu-img", "create", "-q", "-f", "qcow2", "other.qcow2", "20M"}, d);
            must_run({"qemu-img", "bitmap", "--add", "-g", "4k", "other.qcow2", "src"}, d);
            must_run({"qemu-io", "-c", "write 3M 100k", "-c", "write 19M 1M", "other.qcow2"}, d);
            const std::vector<std::pair<argv_t, std::string>> steps{
                {{"--add"}, "b1"},
                {{"--add", "-g", "512", "--disable"}, "b2"},
                {{"--add", "--granularity", "2M"}, "b3"},
                {{"--add", "-g", "1G"}, "huge"},
                {{"--add"}, "b1"},                   // exists
                {{"--add", "-g", "1000"}, "b4"},     // not a power of two
                {{"--add", "-g", "256"}, "b4"},      // too small
                {{"--add", "-g", "abc"}, "b4"},      // not a size
                {{"--add"}, ""},                     // empty name
                {{"--add"}, std::string(1024, 'n')}, // name too long
                {{"--remove"}, "nope"},
                {{"--clear"}, "nope"},
                {{"--enable"}, "nope"},
                {{"--merge", "b1"}, "nope"},
                {{"--merge", "nope"}, "b1"},
                {{"-g", "512", "--remove"}, "b1"},         // -g without --add
                {{"-b", "other.qcow2", "--remove"}, "b1"}, // -b without --merge
                {{"-F", "qcow2", "--merge", "src"}, "b1"}, // -F without -b
                {{}, "b1"},                                // no action
            };
            for (const auto& [args, name] : steps) bitmap_both(d, "q.qcow2", "m.qcow2", args, name);
            require_same_bitmaps(d, "q.qcow2", "m.qcow2", "adding");
            // Guest writes set the enabled bitmaps' bits (QEMU's and ours).
            for (const std::string cmd :
                 {"write 100000 70000", "write -P 0x22 5M 1M", "write -z 9M 300k", "discard 12M 64k"})
                write_both(d, "q.qcow2", "m.qcow2", cmd);
            require_same_bitmaps(d, "q.qcow2", "m.qcow2", "writes");
            const std::vector<std::pair<argv_t, std::string>> more{
                {{"--merge", "b1"}, "b2"},              // 64k granules into 512-byte ones, into a disabled bitmap
                {{"--merge", "b3", "--disable"}, "b1"}, // several actions, in order
                {{"--merge", "src", "-b", "other.qcow2"}, "b3"}, // from another file
                {{"--merge", "src", "-b", "other.qcow2", "-F", "qcow2"}, "b2"},
                {{"--merge", "nope", "-b", "other.qcow2"}, "b2"},
                {{"--clear"}, "b3"},
                {{"--enable"}, "b2"},
                {{"--disable", "--enable", "--disable"}, "b2"},
                {{"--remove"}, "huge"},
                {{"--add", "--remove", "--add", "-g", "8k"}, "b5"},
            };
            for (const auto& [args, name] : more) bitmap_both(d, "q.qcow2", "m.qcow2", args, name);
            require_same_bitmaps(d, "q.qcow2", "m.qcow2", "merging, clearing, enabling and removing");
            for (const std::string cmd : {"write 15M 4k", "write -c 17M 64k"}) write_both(d, "q.qcow2", "m.qcow2", cmd);
            require_same_bitmaps(d, "q.qcow2", "m.qcow2", "more writes");
            // Removing every bitmap takes the extension and the autoclear bit with it.
            for (const std::string name : {"b1", "b2", "b3", "b5"})
                bitmap_both(d, "q.qcow2", "m.qcow2", {"--remove"}, name);
            require_same_bitmaps(d, "q.qcow2", "m.qcow2", "removing all");
            CHECK(format_data(d, "m.qcow2").find("bitmaps") == nullptr);
            must_run({"rm", "q.qcow2", "m.qcow2", "other.qcow2"}, d);
        }
    }
}

TEST_CASE("cli bitmap: refusals on other images as qemu-img's", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-bitmap-err-");
    const std::string d = dir.path();
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M"}, d);
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "small.qcow2", "1M"}, d);
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "big.qcow2", "2M"}, d);
    must_run({"qemu-img", "bitmap", "--add", "small.qcow2", "src"}, d);
    must_run({"qemu-img", "bitmap", "--add", "big.qcow2", "b"}, d);
    must_run({"cp", "big.qcow2", "big2.qcow2"}, d);
    // Version 2 images hold no bitmaps.
    must_run({"cp", "v2.qcow2", "v2m.qcow2"}, d);
    bitmap_both(d, "v2.qcow2", "v2m.qcow2", {"--add"}, "b");
    // A source of another size cannot be merged.
    bitmap_both(d, "big.qcow2", "big2.qcow2", {"--merge", "src", "-b", "small.qcow2"}, "b");
    // A missing image.
    const auto q = qcow2_test::run({"qemu-img", "bitmap", "--add", "none.qcow2", "b"}, d);
    const auto m = qcow2_test::run({QCOW2_TEST_CLI, "bitmap", "--add", "none.qcow2", "b"}, d);
    CHECK(m.status == q.status);
    CHECK(m.err == qemu_words(q.err));
}

TEST_CASE("bitmaps: the library's writes keep enabled bitmaps as QEMU keeps them", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-bitmap-writes-");
    const std::string d = dir.path();
    for (const std::string create :
         {"cluster_size=65536", "cluster_size=512", "cluster_size=65536,lazy_refcounts=on"}) {
        DYNAMIC_SECTION(create) {
            must_run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", create, "q.qcow2", "9M"}, d);
            must_run({"qemu-img", "bitmap", "--add", "-g", "512", "q.qcow2", "fine"}, d);
            must_run({"qemu-img", "bitmap", "--add", "q.qcow2", "default"}, d);
            must_run({"qemu-img", "bitmap", "--add", "-g", "1M", "q.qcow2", "coarse"}, d);
            must_run({"qemu-img", "bitmap", "--add", "-g", "4k", "--disable", "q.qcow2", "off"}, d);
            must_run({"qemu-io", "-c", "write 0 4k", "q.qcow2"}, d); // bits before the copy, kept by both
            must_run({"cp", "q.qcow2", "m.qcow2"}, d);
            // One qemu-io process against one library session each (the bits stay in memory
            // across the writes and are stored once, at close).
            const std::vector<std::string> cmds{
                "write -P 1 1 1", "write 65535 2",  "write -P 2 1M 1M", "write 3000000 123457", "write -z 4M 100k",
                "write -z 6M 1M", "discard 8M 512", "discard 7M 200k",  "write -c 5M 64k",      "write -P 3 9437183 1"};
            argv_t q{"qemu-io", "-f", "qcow2"};
            for (const auto& c : cmds) q.insert(q.end(), {"-c", c});
            q.push_back("q.qcow2");
            must_run(q, d);
            {
                auto f = qcow2::io::posix_file::open(d + "/m.qcow2", qcow2::io::open_mode::read_write);
                REQUIRE(f);
                qcow2::open_options o;
                o.writable = true;
                auto img = qcow2::image::open(std::move(*f), o);
                REQUIRE(img);
                std::vector<std::byte> data(1 << 20, std::byte{7});
                const auto w = [&](std::uint64_t off, std::uint64_t len) {
                    REQUIRE(img->write(off, std::span(data).first(len)));
                };
                w(1, 1);
                w(65535, 2);
                w(1 << 20, 1 << 20);
                w(3000000, 123457);
                REQUIRE(img->write_zeroes(4 << 20, 100 << 10));
                REQUIRE(img->write_zeroes(6 << 20, 1 << 20));
                REQUIRE(img->discard(8 << 20, 512));
                REQUIRE(img->discard(7 << 20, 200 << 10));
                for (std::uint64_t c = 0; c < 65536; c += img->cluster_size()) // one cluster per call
                    REQUIRE(img->write_compressed((5 << 20) + c, std::span(data).first(img->cluster_size())));
                w(9437183, 1);
                // While the image is open, QEMU sees the enabled bitmaps in use.
                const auto open_flags = format_data(d, "m.qcow2");
                const auto* bms = open_flags.find("bitmaps");
                REQUIRE(bms);
                std::size_t in_use = 0;
                for (const auto& b : bms->as_array())
                    for (const auto& fl : b.find("flags")->as_array()) in_use += fl.as_string() == "in-use";
                CHECK(in_use == 3);
                REQUIRE(img->close());
            }
            qemu_check_clean(d, "m.qcow2", "the writes");
            require_same_bitmaps(d, "q.qcow2", "m.qcow2", "the writes");
            const auto bits = read_all(d + "/m.qcow2");
            CHECK(bits.bits[0].dirty_bits() > 100);
            CHECK(bits.bits[3].dirty_bits() == 0); // the disabled one
            // QEMU reads our bits: merged into a new bitmap of its own, they are the same.
            must_run({"qemu-img", "bitmap", "--add", "-g", "512", "--merge", "fine", "--disable", "m.qcow2", "copy"},
                     d);
            const auto after = read_all(d + "/m.qcow2");
            REQUIRE(after.entries.size() == 5);
            CHECK(after.bits[4].bytes == after.bits[0].bytes);
            qemu_check_clean(d, "m.qcow2", "QEMU's merge");
            require_info_lists_bitmaps(d, "m.qcow2");
            must_run({"rm", "q.qcow2", "m.qcow2"}, d);
        }
    }
}

TEST_CASE("bitmaps: an image left open is reported in use, and can be removed", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-bitmap-open-");
    const std::string d = dir.path();
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "a.qcow2", "4M"}, d);
    must_run({"qemu-img", "bitmap", "--add", "a.qcow2", "b"}, d);
    {
        auto f = qcow2::io::posix_file::open(d + "/a.qcow2", qcow2::io::open_mode::read_write);
        REQUIRE(f);
        qcow2::open_options o;
        o.writable = true;
        auto img = qcow2::image::open(std::move(*f), o);
        REQUIRE(img);
        std::vector<std::byte> data(4096, std::byte{1});
        REQUIRE(img->write(0, data));
        REQUIRE(img->flush());
        std::filesystem::copy_file(d + "/a.qcow2", d + "/crashed.qcow2");
    }
    const auto data = format_data(d, "crashed.qcow2");
    const auto& flags = data.find("bitmaps")->as_array().at(0).find("flags")->as_array();
    REQUIRE(flags.size() == 2);
    CHECK(flags[0].as_string() == "in-use");
    CHECK(flags[1].as_string() == "auto");
    require_info_lists_bitmaps(d, "crashed.qcow2");
    // The library refuses to use it, as QEMU does; both may remove it.
    must_run({"cp", "crashed.qcow2", "crashed2.qcow2"}, d);
    const auto q = qcow2_test::run({"qemu-img", "bitmap", "--clear", "crashed.qcow2", "b"}, d);
    const auto m = qcow2_test::run({QCOW2_TEST_CLI, "bitmap", "--clear", "crashed2.qcow2", "b"}, d);
    CHECK(m.status == q.status);
    CHECK(m.status == 1);
    CHECK(m.err == "qcow2: Operation clear on bitmap b failed: Bitmap 'b' is inconsistent and cannot be used\n");
    must_run({QCOW2_TEST_CLI, "bitmap", "--remove", "crashed2.qcow2", "b"}, d);
    qemu_check_clean(d, "crashed2.qcow2", "removing the in-use bitmap");
    // The closed image holds the write.
    const auto closed = read_all(d + "/a.qcow2");
    REQUIRE(closed.bits.size() == 1);
    CHECK(closed.bits[0].dirty_bits() == 1);
    CHECK(closed.entries[0].flags == qcow2::bitmap_flags::auto_);
}

TEST_CASE("bitmaps: resize takes them along as qemu-img resize does", "[interop]") {
    require_qemu();
    qcow2_test::temp_dir dir("qcow2-bitmap-resize-");
    const std::string d = dir.path();
    must_run({"qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "20M"}, d);
    must_run({"qemu-img", "bitmap", "--add", "-g", "4k", "q.qcow2", "fine"}, d);
    must_run({"qemu-img", "bitmap", "--add", "-g", "2M", "q.qcow2", "coarse"}, d);
    must_run({"qemu-img", "bitmap", "--add", "--disable", "q.qcow2", "off"}, d);
    must_run({"qemu-io", "-c", "write 0 64k", "-c", "write 19M 1M", "-c", "write 7M 5000", "q.qcow2"}, d);
    must_run({"cp", "q.qcow2", "m.qcow2"}, d);
    const std::vector<argv_t> resizes{{"30M"}, {"--shrink", "7341568"}, {"+1000k"}}; // 7M + 512, then grown
    for (const auto& args : resizes) {
        argv_t q{"qemu-img", "resize", "-q"}, m{QCOW2_TEST_CLI, "resize", "-q"};
        q.insert(q.end(), args.begin(), args.end() - 1);
        m.insert(m.end(), args.begin(), args.end() - 1);
        q.insert(q.end(), {"q.qcow2", args.back()});
        m.insert(m.end(), {"m.qcow2", args.back()});
        must_run(q, d);
        must_run(m, d);
        qemu_check_clean(d, "m.qcow2", command_line(m));
        require_same_bitmaps(d, "q.qcow2", "m.qcow2", command_line(m));
        write_both(d, "q.qcow2", "m.qcow2", "write 6M 1000000");
        require_same_bitmaps(d, "q.qcow2", "m.qcow2", "a write after " + command_line(m));
    }
}
