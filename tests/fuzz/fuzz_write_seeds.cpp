// SPDX-License-Identifier: MIT
// Writes the seed inputs of fuzz_write (qcow2_fuzz::write_seeds, in fuzz_write.hpp) into the
// folder given, one file per seed. make-seeds runs it.
#include "fuzz_write.hpp"

#include <cstdio>
#include <fstream>
#include <string>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: fuzz_write_seeds DIR\n");
        return 2;
    }
    for (const auto& [name, bytes] : qcow2_fuzz::write_seeds()) {
        const std::string path = std::string(argv[1]) + "/" + name;
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
        if (!out) {
            std::fprintf(stderr, "fuzz_write_seeds: cannot write %s\n", path.c_str());
            return 1;
        }
    }
    return 0;
}
