// SPDX-License-Identifier: MIT
// Proves that qcow2::io::size_of rejects a type that does not satisfy readable_backend.
#include "qcow2/io/backend.hpp"

#include <cstdint>

// Has a size() member, but not the backend's: no read_at, no error_code, not noexcept.
struct not_a_backend {
    std::uint64_t size() const { return 0; }
};

int main() {
    not_a_backend x;
    auto r = qcow2::io::size_of(x);
    return r ? 0 : 1;
}
