// SPDX-License-Identifier: MIT
// The strict JSON parser the interop tests compare qemu-img's output with (support/json.hpp).
#include "support/json.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace json = qcow2_test::json;

TEST_CASE("json: scalars and their kinds", "[json]") {
    CHECK(json::parse("null").is_null());
    CHECK(json::parse(" true ").as_bool());
    CHECK_FALSE(json::parse("false").as_bool());
    CHECK(json::parse("0").as_uint() == 0);
    CHECK(json::parse("-0") == json::value(0)); // an integer zero either way
    CHECK(json::parse("18446744073709551615").as_uint() == UINT64_MAX);
    CHECK(json::parse("-9223372036854775808").as_int() == INT64_MIN);
    CHECK(json::parse("-12").as_int() == -12);
    CHECK(json::parse("12").as_int() == 12);
    CHECK(json::parse("1.5").as_double() == 1.5);
    CHECK(json::parse("-2.5e3").as_double() == -2500.0);
    CHECK(json::parse("1E2").as_double() == 100.0);
    // Beyond 64 bits an integer becomes a double.
    CHECK(json::parse("18446744073709551616").type() == json::value::kind::floating);
    // Integers and doubles are different values; signedness of the C++ type is not.
    CHECK(json::parse("1") != json::parse("1.0"));
    CHECK(json::parse("65536") == json::value(std::int64_t{65536}));
    CHECK(json::parse("65536") == json::value(65536u));
    CHECK(json::parse("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"").as_string() == "a\"b\\c/d\b\f\n\r\t");
    CHECK(json::parse("\"\\u00e9\\u20AC\\ud83d\\ude00\"").as_string() == "\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
    CHECK(json::parse("\"h\xC3\xA9\"").as_string() == "h\xC3\xA9");
}

TEST_CASE("json: objects compare unordered, arrays in order", "[json]") {
    const auto a = json::parse(R"({"x": 1, "y": [1, 2, {"z": null}], "w": "s"})");
    const auto b = json::parse(R"({"w":"s","y":[1,2,{"z":null}],"x":1})");
    CHECK(a == b);
    CHECK(json::differences(a, b).empty());
    CHECK(json::parse("[1,2]") != json::parse("[2,1]"));
    CHECK(json::parse("{}") == json::value::object_of({}));
    CHECK(json::parse("[]") == json::value::array_of({}));
    CHECK(json::parse(R"({"a":1})") != json::parse(R"({"a":1,"b":2})"));
    CHECK(json::parse(R"({"a":1,"b":2})") != json::parse(R"({"a":1,"c":2})"));
    CHECK(a ==
          json::value::object_of(
              {{"w", "s"}, {"x", 1}, {"y", json::value::array_of({1, 2, json::value::object_of({{"z", nullptr}})})}}));
    CHECK_THROWS_AS(json::value::object_of({{"k", 1}, {"k", 2}}), std::invalid_argument);

    auto c = json::parse(R"({"data": {"compat": "1.1", "all-zero": false}, "list": [1, 2, 3]})");
    REQUIRE(c.find("data"));
    CHECK(c.find("data")->find("all-zero")->is_bool());
    CHECK(c.find("data")->erase("all-zero"));
    CHECK_FALSE(c.find("data")->erase("all-zero"));
    CHECK(c.find("nope") == nullptr);
    CHECK(json::parse("1").find("x") == nullptr);
    CHECK(c.dump() == R"({"data":{"compat":"1.1"},"list":[1,2,3]})");
    CHECK(json::parse(c.dump()) == c);
    CHECK(json::value("a\n\x01").dump() == "\"a\\n\\u0001\"");

    const auto d = json::parse(R"({"data": {"compat": "0.10", "x": 1}, "list": [1, 2], "only": true})");
    CHECK(json::differences(c, d) == std::vector<std::string>{"$.data.compat: \"1.1\" != \"0.10\"",
                                                              "$.data.x: only on the right: 1",
                                                              "$.list: 3 elements on the left, 2 on the right",
                                                              "$.only: only on the right: true"});
}

TEST_CASE("json: strictness", "[json]") {
    // clang-format off
    const std::vector<std::string> bad = {
        "", " ", "nul", "True", "1 2", "[1,]", "[,1]", "{\"a\":1,}", "{a:1}", "{\"a\" 1}", "{\"a\":1 \"b\":2}",
        "01", "-", "+1", "1.", ".5", "1e", "1e+", "0x10", "NaN", "Infinity", "1e999",
        "\"abc", "\"a\nb\"", "\"\\x\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"",
        "\"\xFF\"", "\"\xC0\x80\"", "\"\xED\xA0\x80\"", "\"\xC3\"", "\"\xF4\x90\x80\x80\"",
        "{\"k\":1,\"k\":2}", "[1]]", "[", "{", "'a'", "\xEF\xBB\xBF{}", "[1]\x01"};
    // clang-format on
    for (const auto& text : bad) {
        INFO("input: " << text);
        CHECK_THROWS_AS(json::parse(text), json::parse_error);
    }
    // Nesting: 256 levels are fine, 257 are not.
    CHECK_NOTHROW(json::parse(std::string(256, '[') + std::string(256, ']')));
    CHECK_THROWS_AS(json::parse(std::string(257, '[') + std::string(257, ']')), json::parse_error);
    try {
        json::parse("[1, 2,, 3]");
        FAIL("no exception");
    } catch (const json::parse_error& e) {
        CHECK(e.offset() == 6);
    }
    CHECK_THROWS_AS(json::parse("1").as_string(), std::logic_error);
    CHECK_THROWS_AS(json::parse("-1").as_uint(), std::logic_error);
}
