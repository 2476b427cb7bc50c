// SPDX-License-Identifier: MIT
// A small, strict JSON parser (RFC 8259) for the tests: enough to compare what
// `qemu-img ... --output=json` prints with what the qcow2 CLI prints.
//
// - `parse` accepts exactly one JSON value surrounded by optional whitespace and throws
//   `parse_error` (with the byte offset) on anything else: trailing commas, leading zeros,
//   control characters or invalid UTF-8 in strings, lone surrogates, duplicate object
//   keys, nesting deeper than 256 levels.
// - Numbers: non-negative integers are kept as uint64, negative ones as int64, and
//   numbers with a fraction or an exponent (or out of the 64-bit ranges) as double.
//   Integers and doubles never compare equal (`1` != `1.0`).
// - Objects keep their members in document order for printing, but compare as unordered
//   maps; arrays compare in order.
// - `differences(a, b)` lists where two values differ, by path ("$.format-specific.data").
#pragma once

#include <charconv>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace qcow2_test::json {

/// Thrown by `parse`: what is wrong and the byte offset where it was found.
class parse_error : public std::runtime_error {
public:
    parse_error(const std::string& what, std::size_t offset)
        : std::runtime_error("JSON parse error at offset " + std::to_string(offset) + ": " + what), offset_(offset) {}
    std::size_t offset() const noexcept { return offset_; }

private:
    std::size_t offset_;
};

struct member;

/// A JSON value: null, boolean, number (int64, uint64 or double), string, array or object.
class value {
public:
    enum class kind { null, boolean, integer, unsigned_integer, floating, string, array, object };

    value() noexcept;
    value(std::nullptr_t) noexcept;
    value(bool b) noexcept;
    // clang-format off
    template <std::integral T>
        requires(!std::same_as<T, bool> && !std::same_as<T, char>)
    value(T v) noexcept;
    // clang-format on
    value(double d) noexcept;
    value(std::string s) noexcept;
    value(std::string_view s);
    value(const char* s);

    /// An array of `items`.
    static value array_of(std::vector<value> items);
    /// An object with `members` (in this order); throws std::invalid_argument on a duplicate key.
    static value object_of(std::vector<member> members);
    static value object_of(std::initializer_list<member> members);

    kind type() const noexcept { return kind_; }
    bool is_null() const noexcept { return kind_ == kind::null; }
    bool is_bool() const noexcept { return kind_ == kind::boolean; }
    bool is_number() const noexcept {
        return kind_ == kind::integer || kind_ == kind::unsigned_integer || kind_ == kind::floating;
    }
    bool is_string() const noexcept { return kind_ == kind::string; }
    bool is_array() const noexcept { return kind_ == kind::array; }
    bool is_object() const noexcept { return kind_ == kind::object; }

    bool as_bool() const {
        expect(kind::boolean);
        return bool_;
    }
    /// The value of a non-negative integer.
    std::uint64_t as_uint() const {
        expect(kind::unsigned_integer);
        return uint_;
    }
    /// The value of an integer that fits int64.
    std::int64_t as_int() const {
        if (kind_ == kind::unsigned_integer && uint_ <= static_cast<std::uint64_t>(INT64_MAX))
            return static_cast<std::int64_t>(uint_);
        expect(kind::integer);
        return int_;
    }
    double as_double() const {
        expect(kind::floating);
        return double_;
    }
    const std::string& as_string() const {
        expect(kind::string);
        return string_;
    }
    const std::vector<value>& as_array() const {
        expect(kind::array);
        return array_;
    }
    std::vector<value>& as_array() {
        expect(kind::array);
        return array_;
    }
    const std::vector<member>& as_object() const {
        expect(kind::object);
        return object_;
    }

    /// The member `key` of an object, or nullptr (also when this is not an object).
    const value* find(std::string_view key) const;
    value* find(std::string_view key) { return const_cast<value*>(static_cast<const value&>(*this).find(key)); }
    /// Removes member `key` of an object; false when there is none.
    bool erase(std::string_view key);

    /// Compact JSON text; object members in their stored order.
    std::string dump() const;

    friend bool operator==(const value& a, const value& b);

private:
    void expect(kind k) const {
        if (kind_ != k) throw std::logic_error("JSON value has another type: " + dump());
    }

    kind kind_ = kind::null;
    bool bool_ = false;
    std::int64_t int_ = 0;
    std::uint64_t uint_ = 0;
    double double_ = 0;
    std::string string_;
    std::vector<value> array_;
    std::vector<member> object_;
};

/// One member of an object.
struct member {
    std::string key;
    value val;
};

// Defined here, where `member` is complete (a vector of it is a member of every value).
inline value::value() noexcept = default;
inline value::value(std::nullptr_t) noexcept {}
inline value::value(bool b) noexcept : kind_(kind::boolean), bool_(b) {}
template <std::integral T>
    requires(!std::same_as<T, bool> && !std::same_as<T, char>)
inline value::value(T v) noexcept {
    if constexpr (std::is_signed_v<T>) {
        if (v < 0) {
            kind_ = kind::integer;
            int_ = v;
            return;
        }
    }
    kind_ = kind::unsigned_integer;
    uint_ = static_cast<std::uint64_t>(v);
}
inline value::value(double d) noexcept : kind_(kind::floating), double_(d) {}
inline value::value(std::string s) noexcept : kind_(kind::string), string_(std::move(s)) {}
inline value::value(std::string_view s) : value(std::string(s)) {}
inline value::value(const char* s) : value(std::string(s)) {}

inline value value::array_of(std::vector<value> items) {
    value v;
    v.kind_ = kind::array;
    v.array_ = std::move(items);
    return v;
}

inline value value::object_of(std::vector<member> members) {
    for (std::size_t i = 0; i < members.size(); ++i)
        for (std::size_t j = 0; j < i; ++j)
            if (members[i].key == members[j].key)
                throw std::invalid_argument("duplicate JSON key \"" + members[i].key + "\"");
    value v;
    v.kind_ = kind::object;
    v.object_ = std::move(members);
    return v;
}

inline value value::object_of(std::initializer_list<member> members) { return object_of(std::vector<member>(members)); }

inline const value* value::find(std::string_view key) const {
    if (kind_ != kind::object) return nullptr;
    for (const auto& m : object_)
        if (m.key == key) return &m.val;
    return nullptr;
}

inline bool value::erase(std::string_view key) {
    if (kind_ != kind::object) return false;
    for (auto it = object_.begin(); it != object_.end(); ++it)
        if (it->key == key) {
            object_.erase(it);
            return true;
        }
    return false;
}

inline bool operator==(const value& a, const value& b) {
    if (a.kind_ != b.kind_) return false;
    switch (a.kind_) {
    case value::kind::null: return true;
    case value::kind::boolean: return a.bool_ == b.bool_;
    case value::kind::integer: return a.int_ == b.int_;
    case value::kind::unsigned_integer: return a.uint_ == b.uint_;
    case value::kind::floating: return a.double_ == b.double_;
    case value::kind::string: return a.string_ == b.string_;
    case value::kind::array: return a.array_ == b.array_;
    case value::kind::object:
        if (a.object_.size() != b.object_.size()) return false;
        for (const auto& m : a.object_) {
            const value* other = b.find(m.key);
            if (!other || !(*other == m.val)) return false;
        }
        return true;
    }
    return false;
}

namespace detail {

inline void dump_string(std::string& out, std::string_view s) {
    out += '"';
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\b': out += "\\b"; break;
        case '\f': out += "\\f"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (u < 0x20) {
                static constexpr char digits[] = "0123456789abcdef";
                out += "\\u00";
                out += digits[u >> 4];
                out += digits[u & 15];
            } else {
                out += c;
            }
        }
    }
    out += '"';
}

inline void dump_value(std::string& out, const value& v) {
    switch (v.type()) {
    case value::kind::null: out += "null"; break;
    case value::kind::boolean: out += v.as_bool() ? "true" : "false"; break;
    case value::kind::integer: out += std::to_string(v.as_int()); break;
    case value::kind::unsigned_integer: out += std::to_string(v.as_uint()); break;
    case value::kind::floating: {
        char buf[64];
        const auto r = std::to_chars(buf, buf + sizeof buf, v.as_double());
        out.append(buf, r.ptr);
        break;
    }
    case value::kind::string: dump_string(out, v.as_string()); break;
    case value::kind::array: {
        out += '[';
        bool first = true;
        for (const auto& e : v.as_array()) {
            if (!first) out += ',';
            first = false;
            dump_value(out, e);
        }
        out += ']';
        break;
    }
    case value::kind::object: {
        out += '{';
        bool first = true;
        for (const auto& m : v.as_object()) {
            if (!first) out += ',';
            first = false;
            dump_string(out, m.key);
            out += ':';
            dump_value(out, m.val);
        }
        out += '}';
        break;
    }
    }
}

/// Recursive-descent parser over the whole input.
class parser {
public:
    explicit parser(std::string_view text) : s_(text) {}

    value parse_document() {
        skip_ws();
        value v = parse_value(0);
        skip_ws();
        if (pos_ != s_.size()) fail("unexpected text after the value");
        return v;
    }

private:
    static constexpr int max_depth = 256;

    [[noreturn]] void fail(const std::string& what) const { throw parse_error(what, pos_); }

    bool at_end() const { return pos_ >= s_.size(); }
    char peek() const { return at_end() ? '\0' : s_[pos_]; }

    void skip_ws() {
        while (!at_end() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
    }

    void expect_literal(std::string_view word) {
        if (s_.substr(pos_, word.size()) != word) fail("invalid literal");
        pos_ += word.size();
    }

    value parse_value(int depth) {
        if (at_end()) fail("unexpected end of input, expected a value");
        switch (peek()) {
        case '{': return parse_object(depth + 1);
        case '[': return parse_array(depth + 1);
        case '"': return value(parse_string());
        case 't': expect_literal("true"); return value(true);
        case 'f': expect_literal("false"); return value(false);
        case 'n': expect_literal("null"); return value(nullptr);
        default:
            if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number();
            fail(std::string("unexpected character '") + peek() + "'");
        }
    }

    value parse_object(int depth) {
        if (depth > max_depth) fail("nesting deeper than 256 levels");
        ++pos_; // '{'
        std::vector<member> members;
        skip_ws();
        if (peek() == '}') {
            ++pos_;
            return value::object_of(std::move(members));
        }
        for (;;) {
            skip_ws();
            if (peek() != '"') fail("expected a string key");
            const std::size_t key_at = pos_;
            std::string key = parse_string();
            for (const auto& m : members)
                if (m.key == key) {
                    pos_ = key_at;
                    fail("duplicate key \"" + key + "\"");
                }
            skip_ws();
            if (peek() != ':') fail("expected ':' after an object key");
            ++pos_;
            skip_ws();
            value v = parse_value(depth);
            members.push_back({std::move(key), std::move(v)});
            skip_ws();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            if (peek() == '}') {
                ++pos_;
                return value::object_of(std::move(members));
            }
            fail("expected ',' or '}' in an object");
        }
    }

    value parse_array(int depth) {
        if (depth > max_depth) fail("nesting deeper than 256 levels");
        ++pos_; // '['
        std::vector<value> items;
        skip_ws();
        if (peek() == ']') {
            ++pos_;
            return value::array_of(std::move(items));
        }
        for (;;) {
            skip_ws();
            items.push_back(parse_value(depth));
            skip_ws();
            if (peek() == ',') {
                ++pos_;
                continue;
            }
            if (peek() == ']') {
                ++pos_;
                return value::array_of(std::move(items));
            }
            fail("expected ',' or ']' in an array");
        }
    }

    value parse_number() {
        const std::size_t start = pos_;
        const bool negative = peek() == '-';
        if (negative) ++pos_;
        if (peek() == '0') {
            ++pos_;
        } else if (peek() >= '1' && peek() <= '9') {
            while (peek() >= '0' && peek() <= '9') ++pos_;
        } else {
            fail("expected a digit");
        }
        bool integral = true;
        if (peek() == '.') {
            integral = false;
            ++pos_;
            if (!(peek() >= '0' && peek() <= '9')) fail("expected a digit after '.'");
            while (peek() >= '0' && peek() <= '9') ++pos_;
        }
        if (peek() == 'e' || peek() == 'E') {
            integral = false;
            ++pos_;
            if (peek() == '+' || peek() == '-') ++pos_;
            if (!(peek() >= '0' && peek() <= '9')) fail("expected a digit in the exponent");
            while (peek() >= '0' && peek() <= '9') ++pos_;
        }
        const char* first = s_.data() + start;
        const char* last = s_.data() + pos_;
        if (integral) {
            if (negative) {
                std::int64_t i = 0;
                const auto r = std::from_chars(first, last, i);
                if (r.ec == std::errc() && r.ptr == last) return value(i); // "-0" becomes unsigned 0
            } else {
                std::uint64_t u = 0;
                const auto r = std::from_chars(first, last, u);
                if (r.ec == std::errc() && r.ptr == last) return value(u);
            }
            // Out of the 64-bit range: keep it as a double.
        }
        double d = 0;
        const auto r = std::from_chars(first, last, d);
        if (r.ptr != last || (r.ec != std::errc() && r.ec != std::errc::result_out_of_range)) {
            pos_ = start;
            fail("invalid number");
        }
        if (r.ec == std::errc::result_out_of_range) {
            pos_ = start;
            fail("number out of the range of a double");
        }
        return value(d);
    }

    unsigned parse_hex4() {
        if (s_.size() - pos_ < 4) fail("truncated \\u escape");
        unsigned v = 0;
        for (int i = 0; i < 4; ++i) {
            const char c = s_[pos_++];
            v <<= 4;
            if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
            else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
            else fail("invalid hex digit in a \\u escape");
        }
        return v;
    }

    static void append_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }

    /// Copies one UTF-8 encoded character (well formed, shortest form, no surrogates).
    void copy_utf8(std::string& out) {
        const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s_[i]); };
        const unsigned b0 = byte(pos_);
        std::size_t len = 0;
        unsigned cp = 0, min = 0;
        if (b0 >= 0xC2 && b0 <= 0xDF) len = 2, cp = b0 & 0x1F, min = 0x80;
        else if (b0 >= 0xE0 && b0 <= 0xEF) len = 3, cp = b0 & 0x0F, min = 0x800;
        else if (b0 >= 0xF0 && b0 <= 0xF4) len = 4, cp = b0 & 0x07, min = 0x10000;
        else fail("invalid UTF-8 lead byte in a string");
        if (s_.size() - pos_ < len) fail("truncated UTF-8 sequence in a string");
        for (std::size_t i = 1; i < len; ++i) {
            const unsigned b = byte(pos_ + i);
            if ((b & 0xC0) != 0x80) fail("invalid UTF-8 continuation byte in a string");
            cp = (cp << 6) | (b & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("invalid UTF-8 sequence in a string");
        out.append(s_.substr(pos_, len));
        pos_ += len;
    }

    std::string parse_string() {
        ++pos_; // '"'
        std::string out;
        for (;;) {
            if (at_end()) fail("unterminated string");
            const char c = s_[pos_];
            const auto u = static_cast<unsigned char>(c);
            if (c == '"') {
                ++pos_;
                return out;
            }
            if (u < 0x20) fail("control character in a string");
            if (u >= 0x80) {
                copy_utf8(out);
                continue;
            }
            if (c != '\\') {
                out += c;
                ++pos_;
                continue;
            }
            ++pos_;
            if (at_end()) fail("unterminated escape");
            const char e = s_[pos_++];
            switch (e) {
            case '"': out += '"'; break;
            case '\\': out += '\\'; break;
            case '/': out += '/'; break;
            case 'b': out += '\b'; break;
            case 'f': out += '\f'; break;
            case 'n': out += '\n'; break;
            case 'r': out += '\r'; break;
            case 't': out += '\t'; break;
            case 'u': {
                unsigned cp = parse_hex4();
                if (cp >= 0xDC00 && cp <= 0xDFFF) fail("lone low surrogate in a \\u escape");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    if (s_.substr(pos_, 2) != "\\u") fail("high surrogate without a low surrogate");
                    pos_ += 2;
                    const unsigned lo = parse_hex4();
                    if (lo < 0xDC00 || lo > 0xDFFF) fail("high surrogate without a low surrogate");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                append_utf8(out, cp);
                break;
            }
            default: --pos_; fail("invalid escape");
            }
        }
    }

    std::string_view s_;
    std::size_t pos_ = 0;
};

inline void differences(const value& a, const value& b, const std::string& path, std::vector<std::string>& out) {
    if (a.is_object() && b.is_object()) {
        for (const auto& m : a.as_object()) {
            const value* other = b.find(m.key);
            if (!other) out.push_back(path + "." + m.key + ": only on the left: " + m.val.dump());
            else differences(m.val, *other, path + "." + m.key, out);
        }
        for (const auto& m : b.as_object())
            if (!a.find(m.key)) out.push_back(path + "." + m.key + ": only on the right: " + m.val.dump());
        return;
    }
    if (a.is_array() && b.is_array()) {
        const auto& x = a.as_array();
        const auto& y = b.as_array();
        if (x.size() != y.size())
            out.push_back(path + ": " + std::to_string(x.size()) + " elements on the left, " +
                          std::to_string(y.size()) + " on the right");
        for (std::size_t i = 0; i < x.size() && i < y.size(); ++i)
            differences(x[i], y[i], path + "[" + std::to_string(i) + "]", out);
        return;
    }
    if (!(a == b)) out.push_back(path + ": " + a.dump() + " != " + b.dump());
}

} // namespace detail

inline std::string value::dump() const {
    std::string out;
    detail::dump_value(out, *this);
    return out;
}

/// Parses one JSON document; throws `parse_error`.
inline value parse(std::string_view text) { return detail::parser(text).parse_document(); }

/// Where `a` and `b` differ, one line per difference ("$.key[1]: 1 != 2"); empty when equal.
inline std::vector<std::string> differences(const value& a, const value& b) {
    std::vector<std::string> out;
    detail::differences(a, b, "$", out);
    return out;
}

} // namespace qcow2_test::json
