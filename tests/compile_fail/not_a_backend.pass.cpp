// SPDX-License-Identifier: MIT
// Proves that qcow2::io::size_of accepts a minimal type satisfying readable_backend (twin of the .fail file).
#include "qcow2/io/backend.hpp"

#include <cstddef>
#include <cstdint>
#include <span>
#include <system_error>

// The smallest readable backend: read_at and size, noexcept, reporting through error_code.
struct minimal_backend {
    std::error_code read_at(std::uint64_t, std::span<std::byte>) noexcept { return {}; }
    std::error_code size(std::uint64_t& n) const noexcept {
        n = 0;
        return {};
    }
};

int main() {
    minimal_backend x;
    auto r = qcow2::io::size_of(x);
    return r ? 0 : 1;
}
