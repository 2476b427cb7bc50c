// SPDX-License-Identifier: MIT
// A minimal JSON value with ordered keys, printed the way qemu-img prints (4-space indent).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace cli::json {

struct value;
using object = std::vector<std::pair<std::string, value>>;
using array = std::vector<value>;

struct value {
    std::variant<std::nullptr_t, bool, std::int64_t, std::uint64_t, std::string, std::shared_ptr<object>,
                 std::shared_ptr<array>>
        v;
    value() : v(nullptr) {}
    value(bool b) : v(b) {}
    value(int i) : v(static_cast<std::int64_t>(i)) {}
    value(std::int64_t i) : v(i) {}
    value(std::uint64_t u) : v(u) {}
    value(unsigned u) : v(static_cast<std::uint64_t>(u)) {}
    value(std::string s) : v(std::move(s)) {}
    value(const char* s) : v(std::string(s)) {}
    value(object o) : v(std::make_shared<object>(std::move(o))) {}
    value(array a) : v(std::make_shared<array>(std::move(a))) {}
};

inline void escape(std::string& out, std::string_view s) {
    out += '"';
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\t': out += "\\t"; break;
        case '\r': out += "\\r"; break;
        default:
            if (c < 0x20) {
                static const char* hexd = "0123456789abcdef";
                out += "\\u00";
                out += hexd[c >> 4];
                out += hexd[c & 15];
            } else {
                out += static_cast<char>(c);
            }
        }
    }
    out += '"';
}

inline void write(std::string& out, const value& x, int indent) {
    const std::string pad(static_cast<std::size_t>(indent) * 4, ' ');
    const std::string inner(static_cast<std::size_t>(indent + 1) * 4, ' ');
    if (std::holds_alternative<std::nullptr_t>(x.v)) out += "null";
    else if (auto b = std::get_if<bool>(&x.v)) out += *b ? "true" : "false";
    else if (auto i = std::get_if<std::int64_t>(&x.v)) out += std::to_string(*i);
    else if (auto u = std::get_if<std::uint64_t>(&x.v)) out += std::to_string(*u);
    else if (auto s = std::get_if<std::string>(&x.v)) escape(out, *s);
    else if (auto o = std::get_if<std::shared_ptr<object>>(&x.v)) {
        if ((*o)->empty()) { out += "{}"; return; }
        out += "{\n";
        for (std::size_t k = 0; k < (*o)->size(); ++k) {
            out += inner;
            escape(out, (**o)[k].first);
            out += ": ";
            write(out, (**o)[k].second, indent + 1);
            out += k + 1 < (*o)->size() ? ",\n" : "\n";
        }
        out += pad + "}";
    } else if (auto a = std::get_if<std::shared_ptr<array>>(&x.v)) {
        if ((*a)->empty()) { out += "[]"; return; }
        out += "[\n";
        for (std::size_t k = 0; k < (*a)->size(); ++k) {
            out += inner;
            write(out, (**a)[k], indent + 1);
            out += k + 1 < (*a)->size() ? ",\n" : "\n";
        }
        out += pad + "]";
    }
}

/// The pretty-printed text of `x`, without a trailing newline.
inline std::string dump(const value& x) {
    std::string out;
    write(out, x, 0);
    return out;
}

} // namespace cli::json
