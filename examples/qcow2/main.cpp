// SPDX-License-Identifier: MIT
// qcow2: a qemu-img-style command-line tool built only on the library's public API.
//
// Each subcommand lives in its own header; this file only dispatches.
#include <qcow2/qcow2.hpp>

#include "bench.hpp"
#include "bitmap.hpp"
#include "check.hpp"
#include "amend.hpp"
#include "commit.hpp"
#include "compare.hpp"
#include "convert.hpp"
#include "create.hpp"
#include "info.hpp"
#include "io.hpp"
#include "map.hpp"
#include "measure.hpp"
#include "rebase.hpp"
#include "resize.hpp"
#include "snapshot.hpp"

#include <cstdio>
#include <string>
#include <vector>

namespace {

/// One subcommand: its name, the function that runs it, its synopsis and what it does.
struct command {
    const char* name;
    int (*run)(const std::vector<std::string>&);
    const char* synopsis; // the arguments, after "qcow2 NAME"
    const char* summary;  // one or more lines, each indented by 8 spaces
};

const command commands[] = {
    {"info", cli::info_command, "[--output=human|json] [--backing-chain] [-f FMT] FILE",
     "        what qemu-img info reports, plus the all-zero bit\n"},
    {"map", cli::map_command, "[--output=human|json] [-f FMT] [--start-offset=OFFSET] [--max-length=LEN] FILE",
     "        where each guest range of the chain comes from, as qemu-img map reports it\n"},
    {"create", cli::create_command, "[-f qcow2] [-o OPTIONS] [-b BACKING -F FMT] [-q] FILE [SIZE]",
     "        makes a qcow2 image with qemu-img create's options (-o help lists them)\n"},
    {"convert", cli::convert_command, "[-f FMT] [-O raw|qcow2] [-o OPTIONS] [-c] [-n] [-m THREADS] [-p] [-q] SRC DST|-",
     "        writes the guest disk as a sparse raw file (or to a pipe or device), or as a qcow2 image\n"
     "        (-c: compressed clusters; -n: write over the existing DST; -p: progress on a terminal;\n"
     "        DST \"-\", a pipe: a qcow2 image streamed)\n"},
    {"resize", cli::resize_command, "[-f FMT] [--shrink] [-q] FILE [+|-]SIZE",
     "        changes the virtual size (shrinking needs --shrink)\n"},
    {"io", cli::io_command, "[-f FMT] -c CMD [-c CMD...] FILE",
     "        qemu-io's read [-q] [-P pattern [-s off] [-l len]], write [-cquz] [-P pattern],\n"
     "        discard [-q] (each: off len) and flush; exit 1 when a command or a verification failed\n"},
    {"check", cli::check_command, "[--output=human|json] [-f FMT] [-r leaks|all] [-q] FILE",
     "        refcount consistency as qemu-img check reports it (exit 0 clean, 1 check errors, 2 corruptions, 3 "
     "leaks)\n"},
    {"compare", cli::compare_command, "[-f FMT] [-F FMT] [-s] [-p] [-q] A B",
     "        exit 0 identical, 1 different, 2 open error, 3 allocation query error, 4 read error\n"},
    {"snapshot", cli::snapshot_command, "[-l | -c SNAPSHOT | -a SNAPSHOT | -d SNAPSHOT] [-q] [-f FMT] FILE",
     "        lists, creates (dated now), applies or deletes internal snapshots, as qemu-img snapshot does\n"},
    {"measure", cli::measure_command, "[--output=human|json] [-O qcow2|raw] [-o OPTIONS] [-f FMT] (SRC | --size SIZE)",
     "        the file size a new image needs for SRC (or an empty disk of SIZE), as qemu-img measure reports it\n"},
    {"bitmap", cli::bitmap_command,
     "(--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]]\n"
     "        [-g GRANULARITY] [-f FMT] FILE BITMAP",
     "        changes the persistent dirty bitmaps, as qemu-img bitmap does, actions in the order given\n"
     "        (--add: enabled, -g from 512 to 2G, by default the cluster size within 4k to 64k;\n"
     "        --merge SOURCE: SOURCE of FILE, or of SOURCE_FILE given with -b)\n"},
    {"amend", cli::amend_command, "[-f qcow2] [-p] [-q] -o OPTIONS FILE",
     "        changes compat, refcount_bits, lazy_refcounts, data_file_raw (off) or size, as qemu-img amend\n"},
    {"commit", cli::commit_command, "[-f FMT] [-q] [-p] [-d] FILE",
     "        writes what FILE holds into its backing file, then empties FILE (not with -d)\n"},
    {"rebase", cli::rebase_command, "[-f FMT] [-u] -b BACKING [-F FMT] [-p] [-q] FILE",
     "        changes the backing file; without -u first copies into FILE what the old and new backing\n"
     "        files read differently (-b \"\": no backing file)\n"},
    {"bench", cli::bench_command,
     "[-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=N] [-i AIO] [-n] [--no-drain] [-o OFFSET]\n"
     "        [--pattern=N] [-q] [-s BUFFER_SIZE] [-S STEP_SIZE] [-t CACHE] [-w] [-U] FILE",
     "        qemu-img bench's requests and report, sent one at a time (-d, -t, -i, -n, --no-drain\n"
     "        are checked and otherwise ignored); -w writes, then flushes inside the timed run\n"},
};

constexpr const char* notes =
    "FMT is qcow2 or raw (probed when not given). Sizes and offsets take QEMU's suffixes (k, M, G, "
    "T, P, E).\n"
    "-p prints progress as qemu-img does (\"    (42.00/100%)\"), on stderr and only when it is a "
    "terminal.\n";

void usage(std::FILE* to) {
    std::fprintf(to,
                 "qcow2 %s: a qemu-img-style tool for qcow2 images\n"
                 "usage: qcow2 COMMAND [ARGS...]    (qcow2 COMMAND --help: that command's usage)\n\n"
                 "commands:\n",
                 QCOW2_VERSION_STRING);
    for (const command& c : commands) std::fprintf(to, "  %s %s\n%s", c.name, c.synopsis, c.summary);
    std::fprintf(to, "\n%s", notes);
}

/// `qcow2 NAME --help`: the command's usage on stdout.
int command_usage(const command& c) {
    std::printf("usage: qcow2 %s %s\n%s\n%s", c.name, c.synopsis, c.summary, notes);
    return 0;
}

/// Whether the arguments ask for help (-h or --help before any "--"), as qemu-img's commands take it.
bool wants_help(const std::vector<std::string>& args) {
    for (const std::string& a : args) {
        if (a == "--") return false;
        if (a == "-h" || a == "--help") return true;
    }
    return false;
}

const command* find_command(const std::string& name) {
    for (const command& c : commands)
        if (name == c.name) return &c;
    return nullptr;
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
    if (cmd == "-h" || cmd == "--help" || (cmd == "help" && args.empty())) {
        usage(stdout);
        return 0;
    }
    if (cmd == "-V" || cmd == "--version") {
        std::printf("qcow2 version %s\n", QCOW2_VERSION_STRING);
        return 0;
    }
    // qcow2 help COMMAND is qcow2 COMMAND --help.
    const std::string& name = cmd == "help" ? args.front() : cmd;
    const command* c = find_command(name);
    if (!c) {
        cli::fail("Command not found: " + name + "\nTry 'qcow2 --help' for the list of commands");
        return 1;
    }
    if (cmd == "help") return command_usage(*c);
    if (wants_help(args)) return command_usage(*c);
    return c->run(args);
}
