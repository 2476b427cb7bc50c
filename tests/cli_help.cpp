// SPDX-License-Identifier: MIT
// The qcow2 CLI's usage and progress, without QEMU:
//
// - every subcommand answers `--help`, `-h` and `qcow2 help NAME` with its usage on stdout and
//   exit status 0, and `qcow2 --help` lists every subcommand;
// - an unknown option or command says what was wrong and where to look (exit status 1);
// - `-p` (convert, compare, commit, rebase, amend) prints qemu-img's "(NN.NN/100%)" progress
//   when stderr is a terminal (a pseudo-terminal here) and nothing when it is a pipe.
#include "support/process.hpp"

#include <catch2/catch.hpp>

#include <cerrno>
#include <functional>
#include <string>
#include <vector>

#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef QCOW2_TEST_CLI
#error "QCOW2_TEST_CLI must give the path of the qcow2 CLI binary (tests/CMakeLists.txt)"
#endif

namespace {

using argv_t = std::vector<std::string>;
using qcow2_test::process_result;

const std::string cli = QCOW2_TEST_CLI;

const std::vector<std::string> subcommands = {"info",    "map",      "create",  "convert", "resize", "io",     "check",
                                              "compare", "snapshot", "measure", "amend",   "commit", "rebase", "bench",
                                              "bitmap"};

process_result qcow2(argv_t args, const std::string& cwd = {}) {
    args.insert(args.begin(), cli);
    return qcow2_test::run(args, cwd);
}

/// Runs the CLI with stdin, stdout and stderr on a new pseudo-terminal, in `cwd`; returns
/// the exit status and everything the terminal received (stdout and stderr together).
process_result qcow2_on_terminal(const argv_t& args, const std::string& cwd) {
    process_result r;
    std::vector<std::string> argv = {cli};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargs;
    for (auto& a : argv) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    int master = -1;
    const pid_t pid = ::forkpty(&master, nullptr, nullptr, nullptr);
    if (pid < 0) {
        r.err = "forkpty failed";
        return r;
    }
    if (pid == 0) {
        if (::chdir(cwd.c_str()) != 0) ::_exit(126);
        ::execv(cargs[0], cargs.data());
        ::_exit(127);
    }
    char buf[4096];
    for (;;) {
        const ssize_t n = ::read(master, buf, sizeof buf);
        if (n > 0) r.out.append(buf, static_cast<std::size_t>(n));
        else if (n < 0 && errno == EINTR) continue;
        else break; // EIO once the child has closed its side
    }
    ::close(master);
    int wstatus = 0;
    while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {}
    r.status = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
    return r;
}

std::string show(const process_result& r) {
    return "exit " + std::to_string(r.status) + "\n--- stdout:\n" + r.out + "--- stderr:\n" + r.err;
}

} // namespace

TEST_CASE("every subcommand prints its usage for --help, -h and help NAME", "[cli]") {
    for (const std::string& name : subcommands) {
        for (const argv_t& args :
             {argv_t{name, "--help"}, argv_t{name, "-h"}, argv_t{"help", name}, argv_t{name, "some-file", "--help"}}) {
            INFO(qcow2_test::command_line(args));
            const process_result r = qcow2(args);
            INFO(show(r));
            CHECK(r.status == 0);
            CHECK(r.out.rfind("usage: qcow2 " + name + " ", 0) == 0);
            CHECK(r.err.empty());
        }
    }
}

TEST_CASE("qcow2 --help lists every subcommand", "[cli]") {
    for (const argv_t& args : {argv_t{"--help"}, argv_t{"-h"}, argv_t{"help"}}) {
        const process_result r = qcow2(args);
        INFO(show(r));
        REQUIRE(r.status == 0);
        CHECK(r.out.find("usage: qcow2 COMMAND") != std::string::npos);
        for (const std::string& name : subcommands) CHECK(r.out.find("\n  " + name + " ") != std::string::npos);
    }
    // Without a command, the same text goes to stderr and the exit status says it is an error.
    const process_result none = qcow2({});
    CHECK(none.status == 1);
    CHECK(none.err.find("usage: qcow2 COMMAND") != std::string::npos);
}

TEST_CASE("unknown options and commands say what is wrong and where to look", "[cli]") {
    for (const std::string& name : subcommands) {
        const process_result r = qcow2({name, "--no-such-option", "file"});
        INFO(show(r));
        CHECK(r.status == 1);
        CHECK(r.err.find("qcow2: " + name + ": unknown option '--no-such-option'") != std::string::npos);
        CHECK(r.err.find("Try 'qcow2 " + name + " --help'") != std::string::npos);
    }
    for (const argv_t& args : {argv_t{"frobnicate"}, argv_t{"help", "frobnicate"}}) {
        const process_result r = qcow2(args);
        INFO(show(r));
        CHECK(r.status == 1);
        CHECK(r.err.find("Command not found: frobnicate") != std::string::npos);
        CHECK(r.err.find("Try 'qcow2 --help'") != std::string::npos);
    }
    // "--" ends the options: a file may be called --help.
    const process_result file = qcow2({"info", "--", "--help"});
    CHECK(file.status == 1);
    CHECK(file.out.empty());
    CHECK(file.err.find("--help") != std::string::npos);
}

TEST_CASE("progress (-p) shows on a terminal and nothing through a pipe", "[cli]") {
    qcow2_test::temp_dir dir("qcow2-cli-help-");
    const std::string d = dir.path();
    // A 4 MiB image with 1 MiB of data, and a fresh overlay on it for each commit and rebase.
    REQUIRE(qcow2({"create", "-q", "-f", "qcow2", "base.qcow2", "4M"}, d).ok());
    REQUIRE(qcow2({"io", "-c", "write -q -P 0x11 0 1M", "base.qcow2"}, d).ok());
    int overlays = 0;
    const auto overlay = [&] {
        const std::string name = "top" + std::to_string(++overlays) + ".qcow2";
        REQUIRE(qcow2({"create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", name}, d).ok());
        REQUIRE(qcow2({"io", "-c", "write -q -P 0x22 1M 64k", name}, d).ok());
        return name;
    };

    struct job {
        const char* what;
        std::function<argv_t()> args;
        std::string piped_stdout; // what stdout must be when it is a pipe
    };
    int outputs = 0;
    const std::vector<job> jobs = {
        {"convert",
         [&] { return argv_t{"convert", "-p", "-O", "raw", "base.qcow2", "out" + std::to_string(++outputs)}; }, ""},
        {"compare",
         [&] {
             return argv_t{"compare", "-p", "base.qcow2", "base.qcow2"};
         },
         "Images are identical.\n"},
        {"commit",
         [&] {
             return argv_t{"commit", "-p", overlay()};
         },
         "Image committed.\n"},
        {"rebase",
         [&] {
             return argv_t{"rebase", "-p", "-b", "", overlay()};
         },
         ""},
        {"amend",
         [&] {
             return argv_t{"amend", "-p", "-o", "lazy_refcounts=on", "base.qcow2"};
         },
         ""},
    };
    for (const job& j : jobs) {
        INFO(j.what);
        const process_result piped = qcow2(j.args(), d);
        INFO(show(piped));
        CHECK(piped.status == 0);
        CHECK(piped.out == j.piped_stdout);
        CHECK(piped.err.empty());

        const process_result tty = qcow2_on_terminal(j.args(), d);
        INFO("on a terminal: " + show(tty));
        CHECK(tty.status == 0);
        CHECK(tty.out.find("(0.00/100%)\r") != std::string::npos);
        CHECK(tty.out.find("(100.00/100%)\r") != std::string::npos);

        // -q wins over -p, as in qemu-img.
        argv_t quiet = j.args();
        quiet.insert(quiet.begin() + 1, "-q");
        const process_result q = qcow2_on_terminal(quiet, d);
        INFO("-q on a terminal: " + show(q));
        CHECK(q.status == 0);
        CHECK(q.out.find("/100%") == std::string::npos);
    }
}
