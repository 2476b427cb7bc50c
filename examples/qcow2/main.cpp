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

void usage(std::FILE* to) {
    std::fprintf(to,
                 "qcow2 %s: a qemu-img-style tool for qcow2 images\n"
                 "usage: qcow2 COMMAND [ARGS...]\n\n"
                 "commands:\n"
                 "  info [--output=human|json] [--backing-chain] [-f FMT] FILE\n"
                 "        what qemu-img info reports, plus the all-zero bit\n"
                 "  map [--output=human|json] [-f FMT] [--start-offset=OFFSET] [--max-length=LEN] FILE\n"
                 "        where each guest range of the chain comes from, as qemu-img map reports it\n"
                 "  create [-f qcow2] [-o OPTIONS] [-b BACKING -F FMT] [-q] FILE [SIZE]\n"
                 "        makes a qcow2 image with qemu-img create's options (-o help lists them)\n"
                 "  convert [-f FMT] [-O raw|qcow2] [-o OPTIONS] [-c] [-n] [-m THREADS] [-p] [-q] SRC DST|-\n"
                 "        writes the guest disk as a sparse raw file (or to a pipe or device), or as a qcow2 image\n"
                 "        (-c: compressed clusters; -n: write over the existing DST; DST \"-\", a pipe: streamed)\n"
                 "  resize [-f FMT] [--shrink] [-q] FILE [+|-]SIZE\n"
                 "        changes the virtual size (shrinking needs --shrink)\n"
                 "  io [-f FMT] -c CMD [-c CMD...] FILE\n"
                 "        qemu-io's read [-q] [-P pattern [-s off] [-l len]], write [-cquz] [-P pattern],\n"
                 "        discard [-q] (each: off len) and flush; exit 1 when a command or a verification failed\n"
                 "  check [--output=human|json] [-f FMT] [-r leaks|all] [-q] FILE\n"
                 "        refcount consistency as qemu-img check reports it (exit 0 clean, 1 check errors, 2 corruptions, 3 leaks)\n"
                 "  compare [-f FMT] [-F FMT] [-s] [-q] A B\n"
                 "        exit 0 identical, 1 different, 2 open error, 3 allocation query error, 4 read error\n"
                 "  snapshot [-l | -c SNAPSHOT | -a SNAPSHOT | -d SNAPSHOT] [-q] [-f FMT] FILE\n"
                 "        lists, creates (dated now), applies or deletes internal snapshots, as qemu-img snapshot does\n"
                 "  measure [--output=human|json] [-O qcow2|raw] [-o OPTIONS] [-f FMT] (SRC | --size SIZE)\n"
                 "        the file size a new image needs for SRC (or an empty disk of SIZE), as qemu-img measure reports it\n"
                 "  bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b SOURCE_FILE [-F SOURCE_FMT]]\n"
                 "        [-g GRANULARITY] [-f FMT] FILE BITMAP\n"
                 "        changes the persistent dirty bitmaps, as qemu-img bitmap does (actions in the order given)\n"
                 "  amend [-f qcow2] [-q] -o OPTIONS FILE\n"
                 "        changes compat, refcount_bits, lazy_refcounts, data_file_raw (off) or size, as qemu-img amend\n"
                 "  commit [-f FMT] [-q] [-p] [-d] FILE\n"
                 "        writes what FILE holds into its backing file, then empties FILE (not with -d)\n"
                 "  rebase [-f FMT] [-u] -b BACKING [-F FMT] [-p] [-q] FILE\n"
                 "        changes the backing file; without -u first copies into FILE what the old and new backing\n"
                 "        files read differently (-b \"\": no backing file)\n"
                 "  bench [-c COUNT] [-d DEPTH] [-f FMT] [--flush-interval=N] [-i AIO] [-n] [--no-drain] [-o OFFSET]\n"
                 "        [--pattern=N] [-q] [-s BUFFER_SIZE] [-S STEP_SIZE] [-t CACHE] [-w] [-U] FILE\n"
                 "        qemu-img bench's requests and report, sent one at a time (-d, -t, -i, -n, --no-drain\n"
                 "        are checked and otherwise ignored); -w writes, then flushes inside the timed run\n\n"
                 "FMT is qcow2 or raw (probed when not given). Sizes and offsets take QEMU's suffixes (k, M, G, T, P, E).\n",
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
    if (cmd == "map") return cli::map_command(args);
    if (cmd == "create") return cli::create_command(args);
    if (cmd == "convert") return cli::convert_command(args);
    if (cmd == "resize") return cli::resize_command(args);
    if (cmd == "io") return cli::io_command(args);
    if (cmd == "compare") return cli::compare_command(args);
    if (cmd == "check") return cli::check_command(args);
    if (cmd == "bench") return cli::bench_command(args);
    if (cmd == "snapshot") return cli::snapshot_command(args);
    if (cmd == "measure") return cli::measure_command(args);
    if (cmd == "amend") return cli::amend_command(args);
    if (cmd == "bitmap") return cli::bitmap_command(args);
    if (cmd == "commit") return cli::commit_command(args);
    if (cmd == "rebase") return cli::rebase_command(args);
    cli::fail("Command not found: " + cmd);
    return 1;
}
