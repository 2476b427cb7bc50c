// SPDX-License-Identifier: MIT
// Fuzz target: create options and a sequence of guest operations (writes, zeroes, discards,
// compressed writes, resizes, flushes, reopens, snapshots, make_empty) on a fresh image in
// memory, against a raw shadow of the guest disk; `check` must find the image clean at the
// end. A mismatch or a check failure traps. The format is in fuzz_write.hpp.
#include "fuzz_write.hpp"

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string failure = qcow2_fuzz::run_write({data, size});
    if (!failure.empty()) {
        std::fprintf(stderr, "fuzz_write: %s\n", failure.c_str());
        __builtin_trap();
    }
    return 0;
}
