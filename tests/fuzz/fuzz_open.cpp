// SPDX-License-Identifier: MIT
// Fuzz target: arbitrary bytes as an image in memory (other files refused): open, map every
// extent, read every byte, check. Errors are fine; crashes, leaks and hangs are not.
#include "fuzz_open.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    qcow2_fuzz::run_open({data, size});
    return 0;
}
