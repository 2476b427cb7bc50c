// SPDX-License-Identifier: MIT
// Fuzz target: header decode -> encode -> decode must give the same header, and never crash.
#include "fuzz_header.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string failure = qcow2_fuzz::run_header({data, size});
    if (!failure.empty()) {
        std::fprintf(stderr, "fuzz_header: %s\n", failure.c_str());
        __builtin_trap();
    }
    return 0;
}
