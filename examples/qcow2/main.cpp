// SPDX-License-Identifier: MIT
// qcow2: a qemu-img-style command-line tool built only on the library's public API.
//
// Each subcommand lives in its own header; this file only dispatches.
#include <qcow2/qcow2.hpp>

#include "info.hpp"

#include <cstdio>
#include <string>
#include <vector>

namespace {

void usage(std::FILE* to) {
    std::fprintf(to,
                 "qcow2 %s: a qemu-img-style tool for qcow2 images\n"
                 "usage: qcow2 COMMAND [ARGS...]\n\n"
                 "commands:\n"
                 "  info [--output=human|json] [--backing-chain] [-f FMT] FILE\n"
                 "        what qemu-img info reports, plus the all-zero bit\n\n"
                 "Not built yet (see README): create, map, check, convert, compare, resize, io.\n",
                 QCOW2_VERSION_STRING);
}

} // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) {
        usage(stderr);
        return 1;
    }
    const std::string cmd = args.front();
    args.erase(args.begin());
    if (cmd == "-h" || cmd == "--help" || cmd == "help") {
        usage(stdout);
        return 0;
    }
    if (cmd == "-V" || cmd == "--version") {
        std::printf("qcow2 version %s\n", QCOW2_VERSION_STRING);
        return 0;
    }
    if (cmd == "info") return cli::info_command(args);
    cli::fail("Command not found: " + cmd);
    return 1;
}
