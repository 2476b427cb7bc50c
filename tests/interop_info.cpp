// SPDX-License-Identifier: MIT
// Interop with QEMU, the oracle: a corpus of images made at test time by qemu-img and
// qemu-io (one per creation option, plus backing chains, data files, snapshots, bitmaps,
// resized and written images) in a fresh temporary directory; for every image
//   (a) the header decodes and re-encodes to the same bytes of cluster 0,
//   (b) `qcow2 info --output=json` equals `qemu-img info --output=json` as JSON (after
//       removing our extra "all-zero" key), and so does `--backing-chain`,
//   (c) `qcow2::image::open` (read-only) succeeds and `describe()` agrees with the header
//       and with what qemu-img reports.
// Each test case builds the corpus once per process (about a second) and names the image
// in a section, so a failure says which image and which check.
#include "qcow2/qcow2.hpp"

#include "support/json.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#ifndef QCOW2_TEST_CLI
#error "QCOW2_TEST_CLI must give the path of the qcow2 CLI binary (tests/CMakeLists.txt)"
#endif

namespace {

namespace json = qcow2_test::json;
using qcow2_test::command_line;
using qcow2_test::process_result;

constexpr std::uint64_t KiB = 1024, MiB = 1024 * KiB;

/// One command of a recipe and the exit status it must end with.
struct step {
    std::vector<std::string> argv;
    int status = 0;
};

/// One image of the corpus: how QEMU makes it and what its header must say.
struct image_spec {
    std::string name;        ///< path relative to the corpus directory, named after its options
    std::vector<step> steps; ///< run in the corpus directory; "@DIR@" in an argument becomes its path
    unsigned chain = 1;      ///< images in its backing chain, itself included
    /// Checks that the options took effect (the decoded header; the corpus directory).
    std::function<void(const qcow2::header&, const std::string&)> expect;
};

std::vector<std::string> create_argv(const std::string& name, const std::string& options, const std::string& size,
                                     const std::vector<std::string>& extra = {}) {
    std::vector<std::string> a{"qemu-img", "create", "-q", "-f", "qcow2"};
    if (!options.empty()) a.insert(a.end(), {"-o", options});
    a.insert(a.end(), extra.begin(), extra.end());
    a.push_back(name);
    if (!size.empty()) a.push_back(size);
    return a;
}

std::vector<std::string> qemu_io(const std::string& name, const std::vector<std::string>& commands,
                                 const std::string& format = "qcow2") {
    std::vector<std::string> a{"qemu-io", "-f", format};
    for (const auto& c : commands) a.insert(a.end(), {"-c", c});
    a.push_back(name);
    return a;
}

/// The corpus, in creation order (later images use earlier ones as backing files).
const std::vector<image_spec>& specs() {
    static const std::vector<image_spec> list = [] {
        namespace f = qcow2::features;
        std::vector<image_spec> s;
        const auto v3_defaults = [](const qcow2::header& h) {
            CHECK(h.version == 3);
            CHECK(h.header_length == qcow2::v3_qemu_header_length);
            CHECK(h.cluster_bits == 16);
            CHECK(h.refcount_order == 4);
            CHECK(h.compression_type == 0);
            CHECK(h.find_extension(qcow2::extension_type::feature_names) != nullptr);
        };

        // compat
        s.push_back({"compat_0.10.qcow2",
                     {{create_argv("compat_0.10.qcow2", "compat=0.10", "8M")}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.version == 2);
                         CHECK(h.header_length == qcow2::v2_header_length);
                         CHECK(h.refcount_order == 4);
                         CHECK(h.size == 8 * MiB);
                     }});
        s.push_back({"compat_1.1.qcow2",
                     {{create_argv("compat_1.1.qcow2", "compat=1.1", "8M")}},
                     1,
                     [v3_defaults](const qcow2::header& h, const std::string&) {
                         v3_defaults(h);
                         CHECK(h.incompatible_features == 0);
                         CHECK(h.compatible_features == 0);
                         CHECK(h.autoclear_features == 0);
                     }});
        // cluster_size
        // clang-format off
        for (const auto& [label, bits] : std::vector<std::pair<std::string, std::uint32_t>>{
                 {"512", 9}, {"1K", 10}, {"2K", 11}, {"4K", 12}, {"8K", 13}, {"16K", 14}, {"32K", 15}, {"64K", 16},
                 {"128K", 17}, {"256K", 18}, {"512K", 19}, {"1M", 20}, {"2M", 21}}) {
            // clang-format on
            const std::string name = "cluster_size_" + label + ".qcow2";
            s.push_back({name,
                         {{create_argv(name, "cluster_size=" + label, "8M")}},
                         1,
                         [b = bits](const qcow2::header& h, const std::string&) { CHECK(h.cluster_bits == b); }});
        }
        // refcount_bits
        for (std::uint32_t order = 0; order <= 6; ++order) {
            const std::string bits = std::to_string(1u << order);
            const std::string name = "refcount_bits_" + bits + ".qcow2";
            s.push_back({name,
                         {{create_argv(name, "refcount_bits=" + bits, "8M")}},
                         1,
                         [order](const qcow2::header& h, const std::string&) { CHECK(h.refcount_order == order); }});
        }
        // extended_l2
        for (const auto& [label, bits] :
             std::vector<std::pair<std::string, std::uint32_t>>{{"16K", 14}, {"64K", 16}, {"2M", 21}}) {
            const std::string name = "extended_l2_on_cluster_size_" + label + ".qcow2";
            std::vector<step> steps{{create_argv(name, "extended_l2=on,cluster_size=" + label, "8M")}};
            // Subcluster writes (but not in 2M clusters: each would take 2M of disk).
            if (bits < 21) steps.push_back({qemu_io(name, {"write -P 0x33 0 4k", "write -P 0x34 100k 3k"})});
            s.push_back({name, std::move(steps), 1, [b = bits](const qcow2::header& h, const std::string&) {
                             CHECK(h.cluster_bits == b);
                             CHECK(h.extended_l2());
                             CHECK(h.incompatible_features == f::extended_l2::mask);
                         }});
        }
        // compression_type
        s.push_back({"compression_type_zlib.qcow2",
                     {{create_argv("compression_type_zlib.qcow2", "compression_type=zlib", "8M")}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.compression_type == 0);
                         CHECK_FALSE(h.has(f::compression_type::mask));
                     }});
        s.push_back({"compression_type_zstd.qcow2",
                     {{create_argv("compression_type_zstd.qcow2", "compression_type=zstd", "8M")}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.compression_type == 1);
                         CHECK(h.incompatible_features == f::compression_type::mask);
                     }});
        const std::vector<std::string> source_data{"write -P 0x11 0 256k", "write -P 0x22 1M 64k",
                                                   "write -P 0x23 3M 5k"};
        s.push_back({"compression_type_zstd_compressed_data.qcow2",
                     {{{"qemu-img", "create", "-q", "-f", "raw", "compressed_source.raw", "4M"}},
                      {qemu_io("compressed_source.raw", source_data, "raw")},
                      {{"qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "-o", "compression_type=zstd",
                        "compressed_source.raw", "compression_type_zstd_compressed_data.qcow2"}}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.compression_type == 1);
                         CHECK(h.size == 4 * MiB);
                     }});
        s.push_back({"compression_type_zlib_compressed_data.qcow2",
                     {{{"qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "compressed_source.raw",
                        "compression_type_zlib_compressed_data.qcow2"}}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.compression_type == 0);
                         CHECK(h.size == 4 * MiB);
                     }});
        // lazy_refcounts
        s.push_back({"lazy_refcounts_on.qcow2",
                     {{create_argv("lazy_refcounts_on.qcow2", "lazy_refcounts=on", "8M")}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.compatible_features == f::lazy_refcounts::mask);
                         CHECK(h.incompatible_features == 0);
                     }});
        s.push_back({"lazy_refcounts_on_dirty.qcow2",
                     {{create_argv("lazy_refcounts_on_dirty.qcow2", "lazy_refcounts=on", "8M")},
                      // Killed before it could clear the dirty bit.
                      {qemu_io("lazy_refcounts_on_dirty.qcow2", {"write -P 0x44 0 64k", "sigraise 9"}), 128 + 9}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.incompatible_features == f::dirty::mask);
                         CHECK(h.compatible_features == f::lazy_refcounts::mask);
                     }});
        // preallocation
        for (const std::string mode : {"off", "metadata", "falloc", "full"}) {
            const std::string name = "preallocation_" + mode + ".qcow2";
            s.push_back({name,
                         {{create_argv(name, "preallocation=" + mode, "4M")}},
                         1,
                         [](const qcow2::header& h, const std::string&) { CHECK(h.size == 4 * MiB); }});
        }
        // backing files
        s.push_back({"backing_base.qcow2",
                     {{create_argv("backing_base.qcow2", "", "8M")},
                      {qemu_io("backing_base.qcow2", {"write -P 0x61 0 128k", "write -P 0x62 7M 64k"})}},
                     1,
                     [](const qcow2::header& h, const std::string&) { CHECK(h.backing_file_offset == 0); }});
        s.push_back({"backing_fmt_qcow2.qcow2",
                     {{create_argv("backing_fmt_qcow2.qcow2", "", "", {"-b", "backing_base.qcow2", "-F", "qcow2"})},
                      {qemu_io("backing_fmt_qcow2.qcow2", {"write -P 0x63 64k 64k"})}},
                     2,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.backing_file == "backing_base.qcow2");
                         CHECK(h.backing_format() == "qcow2");
                         CHECK(h.size == 8 * MiB);
                     }});
        s.push_back({"backing_fmt_raw.qcow2",
                     {{{"qemu-img", "create", "-q", "-f", "raw", "backing_raw_base.raw", "8M"}},
                      {qemu_io("backing_raw_base.raw", {"write -P 0x71 0 64k"}, "raw")},
                      {create_argv("backing_fmt_raw.qcow2", "", "", {"-b", "backing_raw_base.raw", "-F", "raw"})}},
                     2,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.backing_file == "backing_raw_base.raw");
                         CHECK(h.backing_format() == "raw");
                     }});
        s.push_back({"chain_0_cluster_size_4K.qcow2",
                     {{create_argv("chain_0_cluster_size_4K.qcow2", "cluster_size=4K", "16M")},
                      {qemu_io("chain_0_cluster_size_4K.qcow2", {"write -P 0x01 0 1M"})}},
                     1,
                     [](const qcow2::header& h, const std::string&) { CHECK(h.cluster_bits == 12); }});
        s.push_back({"chain_1_cluster_size_64K.qcow2",
                     {{create_argv("chain_1_cluster_size_64K.qcow2", "cluster_size=64K", "",
                                   {"-b", "chain_0_cluster_size_4K.qcow2", "-F", "qcow2"})},
                      {qemu_io("chain_1_cluster_size_64K.qcow2", {"write -P 0x02 512k 1M"})}},
                     2,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.cluster_bits == 16);
                         CHECK(h.backing_file == "chain_0_cluster_size_4K.qcow2");
                         CHECK(h.size == 16 * MiB);
                     }});
        s.push_back({"chain_2_cluster_size_1M.qcow2",
                     {{create_argv("chain_2_cluster_size_1M.qcow2", "cluster_size=1M", "",
                                   {"-b", "chain_1_cluster_size_64K.qcow2", "-F", "qcow2"})},
                      {qemu_io("chain_2_cluster_size_1M.qcow2", {"write -P 0x03 1M 4k"})}},
                     3,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.cluster_bits == 20);
                         CHECK(h.backing_file == "chain_1_cluster_size_64K.qcow2");
                     }});
        s.push_back({"subdir/backing_relative_base.qcow2",
                     {{{"mkdir", "-p", "subdir"}}, {create_argv("subdir/backing_relative_base.qcow2", "", "8M")}},
                     1,
                     nullptr});
        s.push_back({"subdir/backing_relative.qcow2",
                     // Relative to the directory of the new image, not to the working directory.
                     {{create_argv("subdir/backing_relative.qcow2", "", "",
                                   {"-b", "backing_relative_base.qcow2", "-F", "qcow2"})}},
                     2,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.backing_file == "backing_relative_base.qcow2");
                     }});
        s.push_back(
            {"backing_absolute.qcow2",
             {{create_argv("backing_absolute.qcow2", "", "", {"-b", "@DIR@/backing_base.qcow2", "-F", "qcow2"})}},
             2,
             [](const qcow2::header& h, const std::string& dir) {
                 CHECK(h.backing_file == dir + "/backing_base.qcow2");
             }});
        s.push_back({"compat_0.10_backing_fmt_qcow2.qcow2",
                     {{create_argv("compat_0.10_backing_fmt_qcow2.qcow2", "compat=0.10", "",
                                   {"-b", "backing_base.qcow2", "-F", "qcow2"})}},
                     2,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.version == 2);
                         CHECK(h.backing_file == "backing_base.qcow2");
                         CHECK(h.backing_format() == "qcow2");
                     }});
        // external data files
        s.push_back({"data_file.qcow2",
                     {{create_argv("data_file.qcow2", "data_file=data_file.raw", "8M")},
                      {qemu_io("data_file.qcow2", {"write -P 0x81 0 64k", "write -P 0x82 4M 8k"})}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.incompatible_features == f::external_data_file::mask);
                         CHECK(h.data_file() == "data_file.raw");
                         CHECK(h.autoclear_features == 0);
                     }});
        s.push_back({"data_file_raw_on.qcow2",
                     {{create_argv("data_file_raw_on.qcow2", "data_file=data_file_raw_on.raw,data_file_raw=on", "8M")},
                      {qemu_io("data_file_raw_on.qcow2", {"write -P 0x83 0 64k"})}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.incompatible_features == f::external_data_file::mask);
                         CHECK(h.data_file() == "data_file_raw_on.raw");
                         CHECK(h.autoclear_features == f::raw_external_data::mask);
                     }});
        // snapshots
        for (const std::string compat : {"1.1", "0.10"}) {
            const std::string name = "snapshots_compat_" + compat + ".qcow2";
            s.push_back({name,
                         {{create_argv(name, "compat=" + compat, "8M")},
                          {qemu_io(name, {"write -P 0x5a 0 64k"})},
                          {{"qemu-img", "snapshot", "-c", "first", name}},
                          {qemu_io(name, {"write -P 0x5b 32k 64k"})},
                          {{"qemu-img", "snapshot", "-c", "second snapshot", name}}},
                         1,
                         [v = compat == "1.1" ? 3u : 2u](const qcow2::header& h, const std::string&) {
                             CHECK(h.version == v);
                             CHECK(h.nb_snapshots == 2);
                         }});
        }
        // bitmaps
        s.push_back({"bitmaps.qcow2",
                     {{create_argv("bitmaps.qcow2", "", "8M")},
                      {qemu_io("bitmaps.qcow2", {"write -P 0x91 0 64k"})},
                      {{"qemu-img", "bitmap", "--add", "bitmaps.qcow2", "default"}},
                      {{"qemu-img", "bitmap", "--add", "--granularity", "128K", "bitmaps.qcow2", "granularity_128K"}},
                      {{"qemu-img", "bitmap", "--add", "--disable", "bitmaps.qcow2", "disabled"}}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.autoclear_features == f::bitmaps::mask);
                         const auto b = h.bitmaps();
                         REQUIRE(b);
                         CHECK(b->nb_bitmaps == 3);
                     }});
        // resize
        s.push_back({"resize_4M_to_12M.qcow2",
                     {{create_argv("resize_4M_to_12M.qcow2", "", "4M")},
                      {qemu_io("resize_4M_to_12M.qcow2", {"write -P 0xa1 3M 1M"})},
                      {{"qemu-img", "resize", "-q", "resize_4M_to_12M.qcow2", "12M"}}},
                     1,
                     [](const qcow2::header& h, const std::string&) { CHECK(h.size == 12 * MiB); }});
        s.push_back({"resize_shrink_16M_to_4M.qcow2",
                     {{create_argv("resize_shrink_16M_to_4M.qcow2", "", "16M")},
                      {{"qemu-img", "resize", "-q", "--shrink", "resize_shrink_16M_to_4M.qcow2", "4M"}}},
                     1,
                     [](const qcow2::header& h, const std::string&) { CHECK(h.size == 4 * MiB); }});
        // amend
        s.push_back({"amend_refcount_bits_4.qcow2",
                     {{create_argv("amend_refcount_bits_4.qcow2", "", "8M")},
                      {qemu_io("amend_refcount_bits_4.qcow2", {"write -P 0xb1 0 192k"})},
                      {{"qemu-img", "amend", "-f", "qcow2", "-o", "refcount_bits=4", "amend_refcount_bits_4.qcow2"}}},
                     1,
                     [](const qcow2::header& h, const std::string&) { CHECK(h.refcount_order == 2); }});
        s.push_back({"amend_compat_0.10.qcow2",
                     {{create_argv("amend_compat_0.10.qcow2", "", "8M")},
                      {qemu_io("amend_compat_0.10.qcow2", {"write -P 0xb2 0 64k"})},
                      {{"qemu-img", "amend", "-f", "qcow2", "-o", "compat=0.10", "amend_compat_0.10.qcow2"}}},
                     1,
                     [](const qcow2::header& h, const std::string&) { CHECK(h.version == 2); }});
        // data written at several offsets (unaligned, zeroes, the last cluster)
        s.push_back({"written_several_offsets.qcow2",
                     {{create_argv("written_several_offsets.qcow2", "", "16M")},
                      {qemu_io("written_several_offsets.qcow2",
                               {"write -P 0x01 0 4k", "write -P 0x02 1M 64k", "write -P 0x03 5M 100k",
                                "write -P 0x04 7340544 1536", "write -z 8M 1M", "write -P 0x05 16773120 4k"})}},
                     1,
                     [](const qcow2::header& h, const std::string&) { CHECK(h.size == 16 * MiB); }});
        // zero size
        s.push_back({"size_0.qcow2",
                     {{create_argv("size_0.qcow2", "", "0")}},
                     1,
                     [](const qcow2::header& h, const std::string&) {
                         CHECK(h.size == 0);
                         CHECK(h.l1_size == 0);
                     }});
        return s;
    }();
    return list;
}

/// The corpus, built once per process in a fresh temporary directory.
struct corpus {
    std::unique_ptr<qcow2_test::temp_dir> dir;
    std::string qemu_img;
    std::string error; ///< why it could not be built; empty on success
};

constexpr const char* install_hint = " is not on PATH: the interop tests need QEMU's tools, install qemu-utils "
                                     "(Debian/Ubuntu: apt-get install qemu-utils)";

const corpus& get_corpus() {
    static const corpus c = [] {
        corpus r;
        const auto qemu_img = qcow2_test::find_program("qemu-img");
        if (!qemu_img) {
            r.error = std::string("qemu-img") + install_hint;
            return r;
        }
        if (!qcow2_test::find_program("qemu-io")) {
            r.error = std::string("qemu-io") + install_hint;
            return r;
        }
        r.qemu_img = *qemu_img;
        r.dir = std::make_unique<qcow2_test::temp_dir>("qcow2-interop-");
        for (const auto& spec : specs())
            for (const auto& st : spec.steps) {
                std::vector<std::string> argv = st.argv;
                for (auto& a : argv)
                    for (std::size_t at; (at = a.find("@DIR@")) != std::string::npos;) a.replace(at, 5, r.dir->path());
                const process_result p = qcow2_test::run(argv, r.dir->path());
                if (p.status != st.status) {
                    r.error = "making " + spec.name + ": `" + command_line(argv) + "` exited with " +
                              std::to_string(p.status) + " (expected " + std::to_string(st.status) + ")\n" + p.err;
                    return r;
                }
            }
        return r;
    }();
    return c;
}

/// The built corpus, or the test case fails saying why.
const corpus& require_corpus() {
    const corpus& c = get_corpus();
    INFO(c.error);
    REQUIRE(c.error.empty());
    return c;
}

std::vector<std::byte> read_prefix(const std::string& path, std::size_t max) {
    std::ifstream in(path, std::ios::binary);
    std::vector<std::byte> out(max);
    in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(max));
    out.resize(static_cast<std::size_t>(in.gcount()));
    return out;
}

/// Cluster 0: min(file size, cluster size) bytes; empty when the cluster size is unreadable.
std::vector<std::byte> read_cluster0(const std::string& path) {
    auto b = read_prefix(path, 24);
    if (b.size() < 24) return {};
    const std::uint32_t bits = qcow2::detail::load_be32(b, 20);
    if (bits < qcow2::limits::min_cluster_bits || bits > qcow2::limits::max_cluster_bits) return {};
    return read_prefix(path, std::size_t{1} << bits);
}

std::string hex_byte(std::byte b) {
    static constexpr char digits[] = "0123456789abcdef";
    const auto u = std::to_integer<unsigned>(b);
    return std::string("0x") + digits[u >> 4] + digits[u & 15];
}

/// Empty when equal, else how many bytes differ and the first few offsets.
std::string compare_bytes(const std::vector<std::byte>& file, const std::vector<std::byte>& encoded) {
    if (file.size() != encoded.size())
        return "sizes differ: " + std::to_string(file.size()) + " vs " + std::to_string(encoded.size());
    std::string s;
    std::size_t n = 0;
    for (std::size_t i = 0; i < file.size(); ++i)
        if (file[i] != encoded[i]) {
            if (++n <= 8)
                s += "\n  offset " + std::to_string(i) + ": file " + hex_byte(file[i]) + ", encoded " +
                     hex_byte(encoded[i]);
        }
    if (n == 0) return {};
    return std::to_string(n) + " bytes differ" + s;
}

std::string join(const std::vector<std::string>& lines) {
    std::string s;
    for (const auto& l : lines) s += "\n  " + l;
    return s;
}

/// Runs a tool's `info --output=json ARGS... FILE` in `cwd` and parses its output.
json::value info(const std::string& tool, const std::vector<std::string>& options, const std::string& file,
                 const std::string& cwd) {
    std::vector<std::string> argv{tool, "info", "--output=json"};
    argv.insert(argv.end(), options.begin(), options.end());
    argv.push_back(file);
    const process_result p = qcow2_test::run(argv, cwd);
    INFO("`" << command_line(argv) << "` in " << cwd << " exited with " << p.status << "\nstderr: " << p.err);
    REQUIRE(p.status == 0);
    INFO("stdout: " << p.out);
    json::value v;
    REQUIRE_NOTHROW(v = json::parse(p.out));
    return v;
}

/// Checks and removes our "all-zero" key from every qcow2 node; the problems found.
std::vector<std::string> strip_all_zero(json::value& v) {
    std::vector<std::string> problems;
    const auto strip_node = [&](json::value& node, const std::string& where) {
        const json::value* fmt = node.find("format");
        if (!fmt || !fmt->is_string() || fmt->as_string() != "qcow2") return;
        json::value* fs = node.find("format-specific");
        json::value* data = fs ? fs->find("data") : nullptr;
        json::value* az = data ? data->find("all-zero") : nullptr;
        if (!az) return problems.push_back(where + ": no format-specific.data.all-zero");
        if (!az->is_bool()) return problems.push_back(where + ": all-zero is not a bool: " + az->dump());
        // QEMU does not know the bit, so none of its images can carry it.
        if (az->as_bool()) problems.push_back(where + ": all-zero is true in an image QEMU wrote");
        data->erase("all-zero");
    };
    if (v.is_array()) {
        for (std::size_t i = 0; i < v.as_array().size(); ++i)
            strip_node(v.as_array()[i], "$[" + std::to_string(i) + "]");
    } else {
        strip_node(v, "$");
    }
    return problems;
}

/// `qcow2 info` against `qemu-img info` for one image, one set of options, one spelling of its path.
void compare_info(const corpus& c, const std::vector<std::string>& options, const std::string& file,
                  const std::string& cwd, std::size_t expected_nodes) {
    INFO("qcow2 info --output=json " << command_line(options) << " " << file << " (in " << cwd << ")");
    const json::value theirs = info(c.qemu_img, options, file, cwd);
    json::value ours = info(QCOW2_TEST_CLI, options, file, cwd);
    const auto problems = strip_all_zero(ours);
    INFO("all-zero problems:" << join(problems));
    CHECK(problems.empty());
    if (expected_nodes > 0) {
        REQUIRE(theirs.is_array());
        CHECK(theirs.as_array().size() == expected_nodes);
    }
    const auto diffs = json::differences(ours, theirs);
    INFO("differences (left: qcow2, right: qemu-img):" << join(diffs) << "\nqcow2:    " << ours.dump()
                                                       << "\nqemu-img: " << theirs.dump());
    CHECK(diffs.empty());
}

const json::value& member_of(const json::value& v, std::string_view key) {
    const json::value* m = v.find(key);
    INFO("key \"" << key << "\" in " << v.dump());
    REQUIRE(m);
    return *m;
}

} // namespace

TEST_CASE("qemu-img and qemu-io are installed", "[interop]") {
    const auto img = qcow2_test::find_program("qemu-img");
    INFO("qemu-img" << install_hint);
    REQUIRE(img);
    const auto io = qcow2_test::find_program("qemu-io");
    INFO("qemu-io" << install_hint);
    REQUIRE(io);
    const auto v = qcow2_test::run({*img, "--version"});
    CHECK(v.status == 0);
    CHECK(v.out.find("qemu-img version") != std::string::npos);
    require_corpus();
}

TEST_CASE("qemu-img images: the header decodes and re-encodes byte for byte", "[interop]") {
    const corpus& c = require_corpus();
    for (const auto& spec : specs()) {
        DYNAMIC_SECTION(spec.name) {
            const std::string path = c.dir->path() + "/" + spec.name;
            const auto cluster0 = read_cluster0(path);
            REQUIRE(cluster0.size() >= qcow2::header_probe_size);
            const auto h = qcow2::decode_header(cluster0);
            INFO((h ? std::string() : h.error().what()));
            REQUIRE(h);
            CHECK(cluster0.size() == std::min<std::uint64_t>(h->cluster_size(), std::filesystem::file_size(path)));
            std::vector<std::byte> encoded(cluster0.size(), std::byte{0xEE});
            const auto r = qcow2::encode_header(*h, encoded);
            INFO((r ? std::string() : r.error().what()));
            REQUIRE(r);
            const std::string diff = compare_bytes(cluster0, encoded);
            INFO(diff);
            CHECK(diff.empty());
            const auto again = qcow2::decode_header(encoded);
            REQUIRE(again);
            CHECK(*again == *h);
            CHECK(qcow2::encoded_header_size(*h) <= cluster0.size());
            if (spec.expect) spec.expect(*h, c.dir->path());
        }
    }
}

TEST_CASE("qemu-img images: qcow2 info --output=json equals qemu-img info", "[interop]") {
    const corpus& c = require_corpus();
    for (const auto& spec : specs()) {
        DYNAMIC_SECTION(spec.name) {
            compare_info(c, {}, spec.name, c.dir->path(), 0);
            compare_info(c, {"-f", "qcow2"}, c.dir->path() + "/" + spec.name, "/", 0);
        }
    }
}

TEST_CASE("qemu-img images: qcow2 info --backing-chain equals qemu-img info --backing-chain", "[interop]") {
    const corpus& c = require_corpus();
    for (const auto& spec : specs()) {
        DYNAMIC_SECTION(spec.name) {
            compare_info(c, {"--backing-chain"}, spec.name, c.dir->path(), spec.chain);
            if (spec.chain > 1) {
                // Relative names resolve against the image's directory, wherever we run from.
                compare_info(c, {"--backing-chain"}, c.dir->path() + "/" + spec.name, "/", spec.chain);
                const auto slash = spec.name.rfind('/');
                if (slash != std::string::npos)
                    compare_info(c, {"--backing-chain"}, spec.name.substr(slash + 1),
                                 c.dir->path() + "/" + spec.name.substr(0, slash), spec.chain);
            }
        }
    }
}

TEST_CASE("qemu-img images: image::open read-only and describe() agree with the header and qemu-img", "[interop]") {
    const corpus& c = require_corpus();
    for (const auto& spec : specs()) {
        DYNAMIC_SECTION(spec.name) {
            const std::string path = c.dir->path() + "/" + spec.name;
            const auto cluster0 = read_cluster0(path);
            const auto decoded = qcow2::decode_header(cluster0);
            REQUIRE(decoded);
            const qcow2::header& h = *decoded;

            auto file = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_only);
            INFO((file ? std::string() : file.error().what()));
            REQUIRE(file);
            qcow2::open_options metadata;
            metadata.metadata_only = true; // what info reads; backing and data files are not opened
            auto img = qcow2::image::open(std::move(*file), metadata);
            INFO((img ? std::string() : img.error().what()));
            REQUIRE(img);
            CHECK(img->read_only());
            CHECK(img->header() == h);
            CHECK(img->size() == h.size);
            CHECK(img->cluster_size() == h.cluster_size());
            CHECK(img->snapshots().size() == h.nb_snapshots);
            const auto bitmaps_ext = h.bitmaps();
            CHECK(img->bitmaps().size() == (bitmaps_ext ? bitmaps_ext->nb_bitmaps : 0u));

            const qcow2::image_info d = qcow2::describe(*img);
            // Against the header.
            CHECK(d.virtual_size == h.size);
            CHECK(d.cluster_size == h.cluster_size());
            CHECK(d.dirty_flag == ((h.incompatible_features & qcow2::features::dirty::mask) != 0));
            CHECK(d.encrypted == (h.crypt_method != 0));
            CHECK(d.backing_filename ==
                  (h.backing_file_offset ? std::optional<std::string>(h.backing_file) : std::nullopt));
            CHECK(d.backing_format == h.backing_format());
            CHECK(d.version == h.version);
            CHECK(d.compression_type == (h.compression_type == 1 ? "zstd" : "zlib"));
            CHECK(d.lazy_refcounts == ((h.compatible_features & qcow2::features::lazy_refcounts::mask) != 0));
            CHECK(d.corrupt == ((h.incompatible_features & qcow2::features::corrupt::mask) != 0));
            CHECK(d.extended_l2 == h.extended_l2());
            CHECK(d.refcount_bits == h.refcount_bits());
            CHECK(d.has_data_file == ((h.incompatible_features & qcow2::features::external_data_file::mask) != 0));
            CHECK(d.data_file == h.data_file());
            CHECK(d.data_file_raw == ((h.autoclear_features & qcow2::features::raw_external_data::mask) != 0));
            CHECK(d.snapshots == img->snapshots());
            CHECK(d.bitmaps.size() == img->bitmaps().size());
            CHECK_FALSE(d.all_zero);

            // Against qemu-img.
            const json::value q = info(c.qemu_img, {}, path, "/");
            CHECK(member_of(q, "virtual-size").as_uint() == d.virtual_size);
            CHECK(member_of(q, "cluster-size").as_uint() == d.cluster_size);
            REQUIRE(d.actual_size);
            CHECK(member_of(q, "actual-size").as_uint() == *d.actual_size);
            CHECK(member_of(q, "dirty-flag").as_bool() == d.dirty_flag);
            CHECK((q.find("encrypted") && q.find("encrypted")->as_bool()) == d.encrypted);
            if (const auto* bf = q.find("backing-filename")) {
                CHECK(d.backing_filename == bf->as_string());
            } else {
                CHECK_FALSE(d.backing_filename);
            }
            if (const auto* bf = q.find("backing-filename-format")) {
                CHECK(d.backing_format == bf->as_string());
            } else {
                CHECK_FALSE(d.backing_format);
            }
            const json::value* snaps = q.find("snapshots");
            const std::size_t nb_snaps = snaps ? snaps->as_array().size() : 0;
            REQUIRE(d.snapshots.size() == nb_snaps);
            for (std::size_t i = 0; i < nb_snaps; ++i) {
                const auto& js = snaps->as_array()[i];
                const auto& s = d.snapshots[i];
                CHECK(member_of(js, "id").as_string() == s.id);
                CHECK(member_of(js, "name").as_string() == s.name);
                CHECK(member_of(js, "date-sec").as_uint() == s.date_sec);
                CHECK(member_of(js, "date-nsec").as_uint() == s.date_nsec);
                CHECK(member_of(js, "vm-clock-sec").as_uint() * 1000000000u +
                          member_of(js, "vm-clock-nsec").as_uint() ==
                      s.vm_clock_nsec);
                CHECK(member_of(js, "vm-state-size").as_uint() == s.vm_state_size());
                const json::value* icount = js.find("icount");
                CHECK((icount ? std::optional<std::uint64_t>(icount->as_uint()) : std::nullopt) == s.icount());
            }
            const json::value& data = member_of(member_of(q, "format-specific"), "data");
            CHECK(member_of(data, "compat").as_string() == (d.version == 2 ? "0.10" : "1.1"));
            CHECK(member_of(data, "compression-type").as_string() == d.compression_type);
            CHECK(member_of(data, "refcount-bits").as_uint() == d.refcount_bits);
            if (d.version >= 3) {
                CHECK(member_of(data, "lazy-refcounts").as_bool() == d.lazy_refcounts);
                CHECK(member_of(data, "corrupt").as_bool() == d.corrupt);
                CHECK(member_of(data, "extended-l2").as_bool() == d.extended_l2);
            }
            if (const auto* df = data.find("data-file")) {
                CHECK(d.data_file == df->as_string());
            } else {
                CHECK_FALSE(d.data_file);
            }
            if (const auto* raw = data.find("data-file-raw")) {
                CHECK(d.has_data_file);
                CHECK(d.data_file_raw == raw->as_bool());
            } else {
                CHECK_FALSE(d.has_data_file);
            }
            const json::value* bms = data.find("bitmaps");
            const std::size_t nb_bms = bms ? bms->as_array().size() : 0;
            REQUIRE(d.bitmaps.size() == nb_bms);
            for (std::size_t i = 0; i < nb_bms; ++i) {
                const auto& jb = bms->as_array()[i];
                const auto& b = d.bitmaps[i];
                CHECK(member_of(jb, "name").as_string() == b.name);
                CHECK(member_of(jb, "granularity").as_uint() == b.granularity);
                std::vector<std::string> flags;
                for (const auto& fl : member_of(jb, "flags").as_array()) flags.push_back(fl.as_string());
                std::vector<std::string> expected_flags;
                if (b.in_use) expected_flags.push_back("in-use");
                if (b.auto_) expected_flags.push_back("auto");
                CHECK(flags == expected_flags);
            }

            // A read-only open writes nothing.
            CHECK(read_cluster0(path) == cluster0);
        }
    }
}

TEST_CASE("qemu-img images: the corpus is what the options asked for", "[interop]") {
    // Whole-image facts the per-option expectations do not cover, and the corpus stays small.
    const corpus& c = require_corpus();
    CHECK(specs().size() >= 50);
    const auto size_of = [&](const std::string& name) {
        return std::filesystem::file_size(c.dir->path() + "/" + name);
    };
    CHECK(size_of("preallocation_full.qcow2") > 4 * MiB);
    CHECK(size_of("preallocation_falloc.qcow2") > 4 * MiB);
    CHECK(size_of("preallocation_metadata.qcow2") > 4 * MiB);
    CHECK(size_of("preallocation_off.qcow2") < 1 * MiB);
    CHECK(size_of("data_file.raw") == 8 * MiB);
    for (const auto& spec : specs()) {
        INFO(spec.name);
        CHECK(size_of(spec.name) <= 16 * MiB);
        const auto h = qcow2::decode_header(read_cluster0(c.dir->path() + "/" + spec.name));
        REQUIRE(h);
        CHECK(h->size <= 64 * MiB);
    }
}
