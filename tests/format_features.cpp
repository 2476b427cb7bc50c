// SPDX-License-Identifier: MIT
#include "qcow2/format/features.hpp"

#include "qcow2/format/extensions.hpp"
#include "qcow2/image.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

using namespace qcow2;
using Catch::Matchers::Contains;
using Catch::Matchers::Equals;

// ---- The tags and the sets generated from them ----

static_assert(features::dirty::mask == 0x1 && features::corrupt::mask == 0x2 && features::external_data_file::mask == 0x4 &&
              features::compression_type::mask == 0x8 && features::extended_l2::mask == 0x10);
static_assert(features::lazy_refcounts::klass == feature_class::compatible && features::lazy_refcounts::bit == 0);
static_assert(features::all_zero::klass == feature_class::autoclear && features::all_zero::bit == 2 &&
              features::all_zero::needs_name_table && features::all_zero::name == "all zero");
static_assert(!features::bitmaps::needs_name_table && !features::dirty::needs_name_table);
static_assert(feature<features::raw_external_data> && !feature<int>);

// QEMU's known masks (block/qcow2.h): incompatible 0x1f, compatible 0x1, autoclear 0x3.
static_assert(qemu_features::mask(feature_class::incompatible) == 0x1f);
static_assert(qemu_features::mask(feature_class::compatible) == 0x1);
static_assert(qemu_features::mask(feature_class::autoclear) == 0x3);
// This library adds autoclear bit 2 and nothing else.
static_assert(known_features::mask(feature_class::incompatible) == 0x1f);
static_assert(known_features::mask(feature_class::compatible) == 0x1);
static_assert(known_features::mask(feature_class::autoclear) == 0x7);
// The image maintains everything it knows; the other image type all but persistent bitmaps.
static_assert(maintained_features::mask(feature_class::incompatible) == 0x1f);
static_assert(maintained_features::mask(feature_class::autoclear) == 0x7);
static_assert(maintained_features_without_bitmaps::mask(feature_class::incompatible) == 0x1f);
static_assert(maintained_features_without_bitmaps::mask(feature_class::autoclear) == 0x6);
static_assert(feature_set<>::size == 0);

static_assert(known_features::contains<features::all_zero>);
static_assert(!qemu_features::contains<features::all_zero>);
static_assert(qemu_features::contains<features::dirty> && qemu_features::contains<features::raw_external_data>);
static_assert(maintained_features::contains<features::bitmaps>);
static_assert(!maintained_features_without_bitmaps::contains<features::bitmaps>);
static_assert(maintained_features::contains<features::all_zero> && maintained_features::contains<features::lazy_refcounts>);
static_assert(!feature_set<features::dirty>::contains<features::corrupt>);
static_assert(qemu_features::size == 8 && known_features::size == 9);

static_assert(known_features::infos[8] == feature_info{feature_class::autoclear, 2, "all zero", true});

// (Run time: GCC's -fsanitize=undefined makes pointer comparisons non-constant.)
TEST_CASE("find_feature looks bits up in the registry", "[features]") {
    const auto* all_zero = find_feature(feature_class::autoclear, 2);
    REQUIRE(all_zero != nullptr);
    CHECK(*all_zero == known_features::infos[8]);
    CHECK(all_zero->needs_name_table);
    REQUIRE(find_feature(feature_class::incompatible, 4) != nullptr);
    CHECK(find_feature(feature_class::incompatible, 4)->name == "extended L2 entries");
    REQUIRE(find_feature(feature_class::autoclear, 0) != nullptr);
    CHECK(find_feature(feature_class::autoclear, 0)->name == "bitmaps");
    CHECK(find_feature(feature_class::incompatible, 5) == nullptr);
    CHECK(find_feature(feature_class::compatible, 2) == nullptr);
    CHECK(find_feature(feature_class::autoclear, 3) == nullptr);
}

TEST_CASE("the feature name table generated from the tags is QEMU's", "[features]") {
    const std::vector<feature_name_entry> expected{
        {feature_class::incompatible, 0, "dirty bit"},
        {feature_class::incompatible, 1, "corrupt bit"},
        {feature_class::incompatible, 2, "external data file"},
        {feature_class::incompatible, 3, "compression type"},
        {feature_class::incompatible, 4, "extended L2 entries"},
        {feature_class::compatible, 0, "lazy refcounts"},
        {feature_class::autoclear, 0, "bitmaps"},
        {feature_class::autoclear, 1, "raw external data"},
    };
    CHECK(qemu_features::name_table() == expected);
    auto mine = known_features::name_table();
    REQUIRE(mine.size() == 9);
    CHECK(mine.back() == feature_name_entry{feature_class::autoclear, 2, "all zero"});

    const auto enc = encode_feature_names(expected);
    REQUIRE(enc.size() == 8 * 48);
    CHECK(enc[48 * 5] == std::byte{1}); // class of "lazy refcounts"
    CHECK(enc[48 * 7 + 1] == std::byte{1}); // bit of "raw external data"
    CHECK(enc[48 * 7 + 2] == std::byte{'r'});
    CHECK(enc[48 * 7 + 2 + 17] == std::byte{0}); // zero padded
    CHECK(decode_feature_names(enc) == expected);

    // Names longer than 46 bytes are cut; a trailing partial entry is ignored.
    const std::vector<feature_name_entry> longer{{feature_class::compatible, 9, std::string(50, 'x')}};
    auto cut = encode_feature_names(longer);
    CHECK(cut.size() == 48);
    cut.resize(48 + 47, std::byte{7});
    const auto back = decode_feature_names(cut);
    REQUIRE(back.size() == 1);
    CHECK(back[0].name == std::string(46, 'x'));
    CHECK(back[0].bit == 9);
}

TEST_CASE("describe_features names bits from the image's table first, then the registry", "[features]") {
    CHECK(describe_features(0, feature_class::incompatible).empty());
    CHECK_THAT(describe_features(0x3, feature_class::incompatible), Equals("\"dirty bit\" (bit 0), \"corrupt bit\" (bit 1)"));
    CHECK_THAT(describe_features(1ull << 5, feature_class::incompatible), Equals("unknown incompatible feature bit 5"));
    CHECK_THAT(describe_features(1ull << 63, feature_class::compatible), Equals("unknown compatible feature bit 63"));
    CHECK_THAT(describe_features(0x24, feature_class::autoclear),
               Equals("\"all zero\" (bit 2), unknown autoclear feature bit 5"));

    const std::vector<feature_name_entry> table{
        {feature_class::incompatible, 0, "my own dirty flag"}, // the image's name wins over the registry
        {feature_class::incompatible, 7, "frobnication"},
        {feature_class::autoclear, 7, "an autoclear seven"}, // same bit, other class
    };
    CHECK_THAT(describe_features(0x81, feature_class::incompatible, table),
               Equals("\"my own dirty flag\" (bit 0), \"frobnication\" (bit 7)"));
    CHECK_THAT(describe_features(0x82, feature_class::autoclear, table),
               Equals("\"raw external data\" (bit 1), \"an autoclear seven\" (bit 7)"));
    CHECK_THAT(describe_features(0x80, feature_class::compatible, table), Equals("unknown compatible feature bit 7"));
    // An empty name in the table falls back to the registry.
    const std::vector<feature_name_entry> empty_name{{feature_class::incompatible, 1, ""}};
    CHECK_THAT(describe_features(0x2, feature_class::incompatible, empty_name), Equals("\"corrupt bit\" (bit 1)"));

    CHECK(table_name(table, feature_class::autoclear, 7) == "an autoclear seven");
    CHECK(table_name(table, feature_class::compatible, 7).empty());
}

TEST_CASE("check_incompatible refuses unsupported bits, naming them", "[features]") {
    const auto supported = qemu_features::mask(feature_class::incompatible);
    CHECK(check_incompatible(0, supported));
    CHECK(check_incompatible(0x1f, supported));

    const auto unnamed = check_incompatible((1ull << 9) | 1, supported);
    REQUIRE_FALSE(unnamed);
    CHECK(unnamed.error().is(errc::unknown_incompatible_feature));
    CHECK_THAT(unnamed.error().message(), Equals("unsupported incompatible feature(s): unknown incompatible feature bit 9"));

    const std::vector<feature_name_entry> table{{feature_class::incompatible, 9, "frobnication"},
                                                {feature_class::compatible, 10, "not this one"}};
    const auto named = check_incompatible((1ull << 9) | (1ull << 10), supported, table);
    REQUIRE_FALSE(named);
    CHECK(named.error().is(errc::unknown_incompatible_feature));
    CHECK_THAT(named.error().message(),
               Equals("unsupported incompatible feature(s): \"frobnication\" (bit 9), unknown incompatible feature bit 10"));

    // A reader that supports fewer bits names the known ones from the registry.
    const auto partial = check_incompatible(features::extended_l2::mask, feature_set<features::dirty>::mask(feature_class::incompatible));
    REQUIRE_FALSE(partial);
    CHECK_THAT(partial.error().message(), Contains("\"extended L2 entries\" (bit 4)"));
}

TEST_CASE("autoclear_to_keep drops unknown bits and an all-zero bit the table does not vouch for", "[features]") {
    const std::uint64_t bitmaps = features::bitmaps::mask, raw = features::raw_external_data::mask,
                        all_zero = features::all_zero::mask, bit5 = 1ull << 5, bit63 = 1ull << 63;
    const std::vector<feature_name_entry> none;
    const std::vector<feature_name_entry> named{{feature_class::autoclear, 2, "all zero"}};
    const std::vector<feature_name_entry> other_name{{feature_class::autoclear, 2, "all zeroes"}};
    const std::vector<feature_name_entry> other_class{{feature_class::compatible, 2, "all zero"}};
    const auto qemu_table = [] {
        auto t = qemu_features::name_table();
        t.push_back({feature_class::autoclear, 2, "all zero"});
        return t;
    }();

    // QEMU's rule for a writer that knows bits 0 and 1: everything else goes.
    CHECK(autoclear_to_keep<qemu_features>(bitmaps | raw | all_zero | bit5 | bit63, named) == (bitmaps | raw));
    // The image type maintains bitmaps, raw external data and all-zero; the other type not bitmaps.
    CHECK(autoclear_to_keep<maintained_features>(bitmaps | raw | bit5, none) == (bitmaps | raw));
    CHECK(autoclear_to_keep<maintained_features_without_bitmaps>(bitmaps | raw | bit5, none) == raw);
    CHECK(autoclear_to_keep<maintained_features>(all_zero | bit5, none) == 0);
    CHECK(autoclear_to_keep<maintained_features>(all_zero | bit5, named) == all_zero);
    CHECK(autoclear_to_keep<maintained_features>(all_zero | bit5, qemu_table) == all_zero);
    CHECK(autoclear_to_keep<maintained_features>(all_zero, other_name) == 0);
    CHECK(autoclear_to_keep<maintained_features>(all_zero, other_class) == 0);
    CHECK(autoclear_to_keep<known_features>(bitmaps | all_zero, named) == (bitmaps | all_zero));
    // Bits that are not set are never added.
    CHECK(autoclear_to_keep<known_features>(0, named) == 0);
    CHECK(autoclear_to_keep<feature_set<>>(~0ull, named) == 0);

    static_assert(autoclear_to_keep<known_features>(0x7, {}) == 0x3);
}

TEST_CASE("trusted_bit believes a set bit, and a needs-name bit only when the table names it", "[features]") {
    const std::vector<feature_name_entry> named{{feature_class::autoclear, 2, "all zero"}};
    const std::vector<feature_name_entry> misnamed{{feature_class::autoclear, 2, "zeroed"}};
    CHECK(trusted_bit<features::dirty>(0x1, {}));
    CHECK_FALSE(trusted_bit<features::dirty>(0x2, {}));
    CHECK(trusted_bit<features::bitmaps>(0x1, {}));
    CHECK_FALSE(trusted_bit<features::all_zero>(0x4, {}));
    CHECK(trusted_bit<features::all_zero>(0x4, named));
    CHECK_FALSE(trusted_bit<features::all_zero>(0x4, misnamed));
    CHECK_FALSE(trusted_bit<features::all_zero>(0x0, named));
    static_assert(trusted_bit<features::lazy_refcounts>(0x1, {}));
    static_assert(!trusted_bit<features::all_zero>(0x4, {}));
}
static_assert(qcow2::feature_set<>::mask(qcow2::feature_class::autoclear) == 0 && qcow2::feature_set<>::size == 0);
