// SPDX-License-Identifier: MIT
// Test helpers for driving other programs (qemu-img, qemu-io, the qcow2 CLI):
//
// - `run(argv, cwd)`: runs a program found on PATH with `posix_spawnp` (no shell, so
//   arguments need no quoting), stdin from /dev/null, and returns its exit status and
//   everything it wrote to stdout and stderr.
// - `find_program(name)`: the PATH entry that would run, if any.
// - `temp_dir`: a fresh directory (mkdtemp under $TMPDIR, else /tmp) removed with its
//   contents on destruction, unless the environment variable QCOW2_KEEP_TEST_FILES is set.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace qcow2_test {

/// What a finished program did.
struct process_result {
    /// The exit code; 128 + the signal number when killed by a signal; -1 when it could not start.
    int status = -1;
    std::string out; ///< everything written to stdout
    std::string err; ///< everything written to stderr (or why the program could not start)
    bool ok() const noexcept { return status == 0; }
};

/// The command line, shell-quoted where needed, for messages.
inline std::string command_line(const std::vector<std::string>& argv) {
    std::string s;
    for (const auto& a : argv) {
        if (!s.empty()) s += ' ';
        const bool plain = !a.empty() && a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                             "0123456789-_=+,./:@%") == std::string::npos;
        if (plain) {
            s += a;
            continue;
        }
        s += '\'';
        for (const char c : a) {
            if (c == '\'') s += "'\\''";
            else s += c;
        }
        s += '\'';
    }
    return s;
}

namespace detail {

/// Closes a file descriptor on scope exit.
struct fd_guard {
    int fd = -1;
    fd_guard() = default;
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() { reset(); }
    void reset() {
        if (fd >= 0) ::close(fd);
        fd = -1;
    }
};

inline std::string errno_text(const char* what, int e) { return std::string(what) + ": " + std::strerror(e); }

} // namespace detail

/**
 * Runs `argv[0]` (searched on PATH) with arguments `argv[1..]`, in directory `cwd` when it
 * is not empty, and waits for it.
 */
inline process_result run(const std::vector<std::string>& argv, const std::string& cwd = {}) {
    process_result r;
    if (argv.empty()) {
        r.err = "empty command line";
        return r;
    }
    // A working directory without the non-portable posix_spawn_file_actions_addchdir_np:
    // let /bin/sh change into it and exec the program (arguments stay separate words).
    std::vector<std::string> args;
    if (!cwd.empty()) args = {"/bin/sh", "-c", "cd -- \"$0\" && exec \"$@\"", cwd};
    args.insert(args.end(), argv.begin(), argv.end());
    std::vector<char*> cargs;
    for (auto& a : args) cargs.push_back(a.data());
    cargs.push_back(nullptr);

    int out_pipe[2], err_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
        r.err = detail::errno_text("pipe2", errno);
        return r;
    }
    detail::fd_guard out_read, out_write;
    out_read.fd = out_pipe[0];
    out_write.fd = out_pipe[1];
    if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
        r.err = detail::errno_text("pipe2", errno);
        return r;
    }
    detail::fd_guard err_read, err_write;
    err_read.fd = err_pipe[0];
    err_write.fd = err_pipe[1];

    posix_spawn_file_actions_t actions;
    if (int e = ::posix_spawn_file_actions_init(&actions); e != 0) {
        r.err = detail::errno_text("posix_spawn_file_actions_init", e);
        return r;
    }
    int e = ::posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    if (e == 0) e = ::posix_spawn_file_actions_adddup2(&actions, out_write.fd, 1);
    if (e == 0) e = ::posix_spawn_file_actions_adddup2(&actions, err_write.fd, 2);
    pid_t pid = -1;
    if (e == 0) e = ::posix_spawnp(&pid, cargs[0], &actions, nullptr, cargs.data(), environ);
    ::posix_spawn_file_actions_destroy(&actions);
    if (e != 0) {
        r.err = detail::errno_text(("cannot run " + command_line(argv)).c_str(), e);
        return r;
    }
    out_write.reset();
    err_write.reset();

    // Drain both pipes together so that neither can fill up and block the child.
    pollfd fds[2] = {{out_read.fd, POLLIN, 0}, {err_read.fd, POLLIN, 0}};
    std::string* sinks[2] = {&r.out, &r.err};
    int open_fds = 2;
    while (open_fds > 0) {
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            r.err += detail::errno_text("poll", errno);
            break;
        }
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || fds[i].revents == 0) continue;
            char buf[65536];
            const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
            if (n > 0) {
                sinks[i]->append(buf, static_cast<std::size_t>(n));
            } else if (n == 0 || errno != EINTR) {
                fds[i].fd = -1; // closed by the guards
                --open_fds;
            }
        }
    }

    int wstatus = 0;
    while (::waitpid(pid, &wstatus, 0) < 0) {
        if (errno != EINTR) {
            r.err += detail::errno_text("waitpid", errno);
            return r;
        }
    }
    if (WIFEXITED(wstatus)) r.status = WEXITSTATUS(wstatus);
    else if (WIFSIGNALED(wstatus)) r.status = 128 + WTERMSIG(wstatus);
    return r;
}

/// The executable `name` would run from PATH (or `name` itself when it holds a '/').
inline std::optional<std::string> find_program(const std::string& name) {
    const auto executable = [](const std::string& p) {
        struct stat st {};
        return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
    };
    if (name.find('/') != std::string::npos) return executable(name) ? std::optional<std::string>(name) : std::nullopt;
    const char* path = std::getenv("PATH");
    std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
    std::size_t start = 0;
    for (;;) {
        const std::size_t end = dirs.find(':', start);
        std::string dir = dirs.substr(start, end == std::string::npos ? std::string::npos : end - start);
        if (dir.empty()) dir = ".";
        const std::string candidate = dir + "/" + name;
        if (executable(candidate)) return candidate;
        if (end == std::string::npos) return std::nullopt;
        start = end + 1;
    }
}

/// A fresh temporary directory, removed with its contents on destruction unless
/// QCOW2_KEEP_TEST_FILES is set in the environment (then its path is printed instead).
class temp_dir {
public:
    /// Creates `<base>/<prefix>XXXXXX`, where base defaults to $TMPDIR (or /tmp); throws
    /// std::system_error on failure.
    explicit temp_dir(const std::string& prefix = "qcow2-test-", const char* base_dir = nullptr) {
        const char* tmp = base_dir ? base_dir : std::getenv("TMPDIR");
        std::string base = tmp && *tmp ? tmp : "/tmp";
        while (base.size() > 1 && base.back() == '/') base.pop_back();
        std::string tmpl = base + "/" + prefix + "XXXXXX";
        if (!::mkdtemp(tmpl.data())) throw std::system_error(errno, std::generic_category(), "mkdtemp " + tmpl);
        path_ = std::move(tmpl);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir() {
        if (path_.empty()) return;
        if (std::getenv("QCOW2_KEEP_TEST_FILES")) {
            std::fprintf(stderr, "QCOW2_KEEP_TEST_FILES is set: keeping %s\n", path_.c_str());
            return;
        }
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }

    /// The directory's absolute (when $TMPDIR is absolute) path, without a trailing slash.
    const std::string& path() const noexcept { return path_; }
    /// `path() + "/" + name`.
    std::string operator/(const std::string& name) const { return path_ + "/" + name; }

private:
    std::string path_;
};

} // namespace qcow2_test
