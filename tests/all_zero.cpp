// SPDX-License-Identifier: MIT
// The all-zero bit end to end over in-memory files (all_zero.hpp, image.hpp): who sets it,
// which operations keep it and which clear it, that it is gone from the file before any
// data lands (every prefix of the writes of a first data write), the proofs (`create`,
// `make_empty`, `verify_zeroes`, `trust_zeroes`), `known_zeroes`, an image type that does
// not maintain the bit, a table that names bit 2 otherwise, and `check` of a false bit.
#include "qcow2/all_zero.hpp"

#include "qcow2/image.hpp"
#include "qcow2/io/memory.hpp"
#include "qcow2/ops/check.hpp"

#include <catch2/catch.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

using qcow2::errc;
namespace features = qcow2::features;

namespace {

using mem_image = qcow2::basic_image<qcow2::io::memory>;

std::vector<std::byte> bytes_of(const qcow2::io::memory& m) { return {m.bytes().begin(), m.bytes().end()}; }

mem_image create(const qcow2::create_options& o) {
    auto z = mem_image::create(qcow2::io::memory{}, o);
    if (!z) FAIL("create: " << z.error().what());
    return std::move(*z).release();
}

template <class Image = mem_image>
Image open_bytes(std::vector<std::byte> bytes, bool writable) {
    auto img = Image::open(qcow2::io::memory(std::move(bytes)), qcow2::open_options{.writable = writable});
    if (!img) FAIL("open: " << img.error().what());
    return std::move(*img);
}

bool bit_in_file(const std::vector<std::byte>& bytes) { return (std::to_integer<unsigned>(bytes[95]) & 4) != 0; }

bool reads_zero(mem_image& img) {
    std::vector<std::byte> all(static_cast<std::size_t>(img.size()));
    REQUIRE(img.read(0, all));
    for (auto b : all)
        if (b != std::byte{0}) return false;
    return true;
}

/// A memory backend that records every write and flush, in order.
class recording {
public:
    struct event {
        bool flush = false;
        std::uint64_t offset = 0;
        std::vector<std::byte> data;
    };
    explicit recording(qcow2::io::memory m) : m_(std::move(m)) {}
    std::error_code read_at(std::uint64_t off, std::span<std::byte> out) noexcept { return m_.read_at(off, out); }
    std::error_code write_at(std::uint64_t off, std::span<const std::byte> in) noexcept {
        log_.push_back({false, off, std::vector<std::byte>(in.begin(), in.end())});
        return m_.write_at(off, in);
    }
    std::error_code size(std::uint64_t& n) const noexcept { return m_.size(n); }
    std::error_code resize(std::uint64_t n) noexcept { return m_.resize(n); }
    std::error_code flush() noexcept {
        log_.push_back({true, 0, {}});
        return m_.flush();
    }
    std::vector<event>& log() noexcept { return log_; }

private:
    qcow2::io::memory m_;
    std::vector<event> log_;
};
static_assert(qcow2::io::backend<recording>);

} // namespace

TEST_CASE("all-zero: create sets the bit, named in the feature name table", "[all_zero]") {
    for (const auto pre : {qcow2::preallocation::off, qcow2::preallocation::metadata, qcow2::preallocation::full}) {
        for (const std::uint64_t cs : {512u, 4096u, 65536u}) {
            CAPTURE(static_cast<int>(pre), cs);
            qcow2::create_options o;
            o.size = 1 << 20;
            o.cluster_size = cs;
            o.prealloc = pre;
            mem_image img = create(o);
            CHECK(img.has<features::all_zero>());
            CHECK(qcow2::known_zeroes(img));
            CHECK(qcow2::table_name(img.header().feature_names(), qcow2::feature_class::autoclear, 2) == "all zero");
            CHECK(reads_zero(img));
        }
    }
    // Version 2 has no autoclear bits.
    qcow2::create_options v2;
    v2.size = 1 << 20;
    v2.version = 2;
    mem_image old = create(v2);
    CHECK_FALSE(old.has<features::all_zero>());
    CHECK_FALSE(qcow2::known_zeroes(old));
}

TEST_CASE("all-zero: what keeps the bit and what clears it", "[all_zero]") {
    qcow2::create_options o;
    o.size = 4 << 20;
    const std::vector<std::byte> data(1000, std::byte{7});
    const std::vector<std::byte> cluster(65536, std::byte{9});
    SECTION("kept: reads, flushes, zero writes (both modes), discards, resizes, close and reopen") {
        mem_image img = create(o);
        std::vector<std::byte> out(5000);
        REQUIRE(img.read(100, out));
        REQUIRE(img.flush());
        REQUIRE(img.write_zeroes(0, 70000));
        REQUIRE(img.write_zeroes(100000, 300000, qcow2::zero_mode::unmap));
        REQUIRE(img.discard(0, 4 << 20));
        REQUIRE(img.resize(8 << 20));
        REQUIRE(img.resize(2 << 20));
        REQUIRE(img.close());
        CHECK(img.has<features::all_zero>());
        mem_image again = open_bytes(bytes_of(img.backend()), true);
        CHECK(again.has<features::all_zero>());
        REQUIRE(again.write_zeroes(4096, 10));
        REQUIRE(again.close());
        CHECK(bit_in_file(bytes_of(again.backend())));
        CHECK(reads_zero(again));
    }
    SECTION("cleared: a data write") {
        mem_image img = create(o);
        REQUIRE(img.write(12345, data));
        CHECK_FALSE(img.has<features::all_zero>());
        CHECK_FALSE(bit_in_file(bytes_of(img.backend())));
    }
    SECTION("cleared: a compressed write") {
        mem_image img = create(o);
        REQUIRE(img.write_compressed(65536, cluster));
        CHECK_FALSE(img.has<features::all_zero>());
        CHECK_FALSE(bit_in_file(bytes_of(img.backend())));
    }
    SECTION("not cleared by refused writes") {
        mem_image img = create(o);
        CHECK_FALSE(img.write(o.size, data));
        CHECK(img.has<features::all_zero>());
    }
}

TEST_CASE("all-zero: the bit is off the disk before a first data write lands", "[all_zero]") {
    for (const bool compressed : {false, true}) {
        CAPTURE(compressed);
        qcow2::create_options o;
        o.size = 2 << 20;
        mem_image made = create(o);
        REQUIRE(made.close());
        const std::vector<std::byte> start = bytes_of(made.backend());
        auto img = qcow2::basic_image<recording>::open(recording(qcow2::io::memory(start)), qcow2::open_options{.writable = true});
        REQUIRE(img);
        const std::vector<std::byte> cluster(65536, std::byte{0x42});
        if (compressed) REQUIRE(img->write_compressed(0, cluster));
        else REQUIRE(img->write(0, cluster));
        REQUIRE(img->flush());
        const auto log = img->backend().log();
        REQUIRE(log.size() >= 3);
        // Replay every prefix of the writes (a crash after each): whenever the file still
        // says all zero, it reads all zero.
        std::vector<std::byte> file = start;
        std::size_t checked = 0;
        for (std::size_t n = 0; n <= log.size(); ++n) {
            if (n > 0 && !log[n - 1].flush) {
                const auto& e = log[n - 1];
                if (file.size() < e.offset + e.data.size()) file.resize(static_cast<std::size_t>(e.offset + e.data.size()));
                std::copy(e.data.begin(), e.data.end(), file.begin() + static_cast<std::ptrdiff_t>(e.offset));
            }
            mem_image crashed = open_bytes(file, false);
            if (crashed.has<features::all_zero>()) {
                CHECK(reads_zero(crashed));
                ++checked;
            }
        }
        CHECK(checked >= 1);
        // The header write clearing the bit is flushed before the first write outside cluster 0.
        std::size_t header_at = log.size(), flush_after = log.size(), first_other = log.size();
        for (std::size_t i = 0; i < log.size(); ++i) {
            if (!log[i].flush && log[i].offset < 65536 && header_at == log.size()) header_at = i;
            else if (log[i].flush && header_at < i && flush_after == log.size()) flush_after = i;
            else if (!log[i].flush && log[i].offset >= 65536 && first_other == log.size()) first_other = i;
        }
        CHECK(header_at < flush_after);
        CHECK(flush_after < first_other);
    }
}

TEST_CASE("all-zero: make_empty empties the image and gives the proof", "[all_zero]") {
    qcow2::create_options o;
    o.size = 8 << 20;
    mem_image img = create(o);
    for (std::uint64_t k = 0; k < 8; ++k) REQUIRE(img.write(k << 20, std::vector<std::byte>(300000, std::byte{1})));
    REQUIRE(img.write_compressed(7 << 20, std::vector<std::byte>(65536, std::byte{3})));
    REQUIRE(img.flush());
    CHECK_FALSE(img.has<features::all_zero>());
    std::uint64_t full = 0;
    REQUIRE(!img.backend().size(full));
    auto z = qcow2::make_empty(img);
    REQUIRE(z);
    CHECK((*z)->has<features::all_zero>());
    CHECK(qcow2::known_zeroes(**z));
    std::vector<std::byte> out(static_cast<std::size_t>(o.size));
    REQUIRE(z->read(0, out));
    CHECK(std::all_of(out.begin(), out.end(), [](std::byte b) { return b == std::byte{0}; }));
    mem_image back = std::move(*z).release();
    REQUIRE(back.close());
    std::uint64_t emptied = 0;
    REQUIRE(!back.backend().size(emptied));
    CHECK(emptied < full / 4);
    auto rep = qcow2::check(back);
    REQUIRE(rep);
    CHECK(rep->corruptions == 0);
    CHECK(rep->leaks == 0);
    CHECK(bit_in_file(bytes_of(back.backend())));
}

TEST_CASE("all-zero: verify_zeroes scans, trust_zeroes reads the bit", "[all_zero]") {
    qcow2::create_options o;
    o.size = 2 << 20;
    SECTION("a zero image without the bit verifies; one byte set is found") {
        mem_image img = create(o);
        REQUIRE(img.write((1 << 20) + 5, std::vector<std::byte>(1, std::byte{1})));
        CHECK_FALSE(qcow2::trust_zeroes(img));
        auto bad = qcow2::verify_zeroes(img);
        REQUIRE_FALSE(bad);
        CHECK_THAT(bad.error().message(), Catch::Contains("guest offset 1048581"));
        REQUIRE(img.write((1 << 20) + 5, std::vector<std::byte>(1, std::byte{0}))); // data, but zero
        auto good = qcow2::verify_zeroes(img);
        REQUIRE(good);
        CHECK((*good)->size() == o.size);
    }
    SECTION("trust_zeroes takes the image only with the bit") {
        mem_image img = create(o);
        auto z = qcow2::trust_zeroes(img);
        REQUIRE(z);
        auto c = std::move(*z).write(0, std::vector<std::byte>(4, std::byte{5}));
        REQUIRE(c.status);
        CHECK_FALSE(qcow2::trust_zeroes(c.image));
        CHECK(c.image.size() == o.size); // still there, not taken
    }
}

TEST_CASE("all-zero: an image type that does not maintain the bit clears it on a writable open", "[all_zero]") {
    using plain = qcow2::basic_image<qcow2::io::memory, qcow2::feature_set<features::dirty, features::corrupt, features::lazy_refcounts>>;
    qcow2::create_options o;
    o.size = 1 << 20;
    mem_image img = create(o);
    REQUIRE(img.close());
    const auto bytes = bytes_of(img.backend());
    REQUIRE(bit_in_file(bytes));
    plain ro = open_bytes<plain>(bytes, false);
    CHECK(bit_in_file(bytes_of(ro.backend())));
    plain rw = open_bytes<plain>(bytes, true);
    CHECK_FALSE(bit_in_file(bytes_of(rw.backend())));
}

TEST_CASE("all-zero: a bit 2 the table names otherwise is never trusted", "[all_zero]") {
    qcow2::create_options o;
    o.size = 1 << 20;
    mem_image img = create(o);
    REQUIRE(img.close());
    qcow2::header h = img.header();
    std::vector<qcow2::feature_name_entry> t = h.feature_names();
    for (auto& e : t)
        if (e.klass == qcow2::feature_class::autoclear && e.bit == 2) e.name = "private snapshot hint";
    h.set_extension(qcow2::extension_type::feature_names, qcow2::encode_feature_names(t));
    std::vector<std::byte> bytes = bytes_of(img.backend());
    REQUIRE(qcow2::encode_header(h, std::span(bytes).first(65536)));
    REQUIRE(bit_in_file(bytes));
    mem_image ro = open_bytes(bytes, false);
    CHECK_FALSE(ro.has<features::all_zero>());
    CHECK_FALSE(qcow2::known_zeroes(ro));
    CHECK_FALSE(qcow2::trust_zeroes(ro));
    mem_image rw = open_bytes(bytes, true);
    CHECK_FALSE(bit_in_file(bytes_of(rw.backend()))); // not ours: cleared like any unknown autoclear bit
}

TEST_CASE("all-zero: check finds a false bit, and -r all clears it", "[all_zero]") {
    qcow2::create_options o;
    o.size = 1 << 20;
    mem_image img = create(o);
    REQUIRE(img.write(70000, std::vector<std::byte>(10, std::byte{1})));
    REQUIRE(img.close());
    std::vector<std::byte> bytes = bytes_of(img.backend());
    bytes[95] |= std::byte{4}; // set the bit behind the image's back
    {
        mem_image ro = open_bytes(bytes, false);
        std::vector<std::string> said;
        qcow2::check_options co;
        co.on_problem = [&](std::string_view s) { said.emplace_back(s); };
        auto rep = qcow2::check(ro, co);
        REQUIRE(rep);
        CHECK(rep->corruptions == 1);
        CHECK(rep->exit_code() == 2);
        REQUIRE(said.size() == 1);
        CHECK_THAT(said[0], Catch::Contains("all-zero bit") && Catch::Contains("70000"));
    }
    auto rw = mem_image::open(qcow2::io::memory(bytes), qcow2::open_options{.writable = true, .repair = true});
    REQUIRE(rw);
    qcow2::check_options fix;
    fix.repair = qcow2::check_repair::all;
    auto rep = qcow2::check(*rw, fix);
    REQUIRE(rep);
    CHECK(rep->corruptions == 0);
    CHECK(rep->corruptions_fixed == 1);
    CHECK_FALSE(bit_in_file(bytes_of(rw->backend())));
    // A true bit is no problem at all.
    mem_image fresh = create(o);
    auto clean = qcow2::check(fresh);
    REQUIRE(clean);
    CHECK(clean->exit_code() == 0);
}
