// SPDX-License-Identifier: MIT
// What the interop tests share: running a command that must succeed, describing a run for a
// failure message, and `qemu-img check` finding an image clean.
#pragma once

#include "support/json.hpp"
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

namespace qcow2_test {

/// What a run did, for failure messages (`binary_out`: stdout is counted, not printed).
inline std::string describe(const std::vector<std::string>& argv, const process_result& r, bool binary_out = false) {
    return command_line(argv) + "\n  status " + std::to_string(r.status) +
           "\n  stdout: " + (binary_out ? std::to_string(r.out.size()) + " bytes" : r.out) + "\n  stderr: " + r.err;
}

/// Runs `argv` in `dir`; the status must be 0.
inline process_result must_run(const std::vector<std::string>& argv, const std::string& dir) {
    auto r = run(argv, dir);
    INFO(describe(argv, r));
    REQUIRE(r.status == 0);
    return r;
}

/// The member `key` of `j`, or null when it has none.
inline json::value member(const json::value& j, const char* key) {
    const json::value* v = j.find(key);
    return v ? *v : json::value();
}

/// `qemu-img check --output=json` of `file` in `dir` finds it clean (status 0, no corruption,
/// no leak, no check error); its JSON. `after` names what was done to it, for the message.
inline json::value qemu_check_clean(const std::string& dir, const std::string& file, const std::string& after = {}) {
    const std::vector<std::string> argv{"qemu-img", "check", "--output=json", file};
    auto r = run(argv, dir);
    INFO((after.empty() ? std::string() : "after " + after + ": ") << describe(argv, r));
    REQUIRE(r.status == 0);
    auto j = json::parse(r.out);
    CHECK(j.find("corruptions") == nullptr);
    CHECK(j.find("leaks") == nullptr);
    CHECK(j.find("check-errors")->as_uint() == 0);
    return j;
}

} // namespace qcow2_test
