// SPDX-License-Identifier: MIT
/// @file
/// @brief How an image reaches other files (backing files, external data files): resolvers.
///
/// The library never opens a file by itself. When an image names a backing file or an
/// external data file, it asks the resolver the caller supplied. The default,
/// `deny_files`, refuses everything; `posix_resolver` opens local files relative to the
/// directory of the image that names them, the way qemu-img does, with limits on what a
/// name may reach.
#pragma once

#include "qcow2/detail/strings.hpp"
#include "qcow2/io/posix_file.hpp"
#include "qcow2/result.hpp"

#include <climits>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace qcow2 {

/// Which kind of file an image asks for.
enum class file_role { backing, data_file };

/// What an image asks a resolver to open.
struct file_request {
    std::string_view name;   ///< the name as stored in the image (or given in open_options)
    file_role role;          ///< backing file or external data file
    std::size_t depth;       ///< depth of the image that names the file (0 = the image opened first)
    bool writable;           ///< whether write access is needed
};

/// A resolver for backend `B`: `operator()(const file_request&)` returns `result<B>` (or an `error`).
template <class R, class B>
concept file_resolver = requires(R& r, const file_request& q) {
    { r(q) } -> std::convertible_to<result<B>>;
};

/// The default resolver: refuses every file (an image with a backing file then fails to open
/// unless it is opened metadata-only).
struct deny_files {
    /// Refuses `q` with `errc::backing_file_refused`, naming the file.
    error operator()(const file_request& q) const {
        return error{errc::backing_file_refused,
                     detail::cat(q.role == file_role::backing ? "backing file '" : "data file '", q.name,
                                 "' refused: no resolver was given to open other files")};
    }
};

/// True for names QEMU would read as a protocol or a JSON description ("json:{...}", "nbd:...",
/// "http://..."): a colon before any slash.
constexpr bool is_protocol_name(std::string_view name) noexcept {
    const auto p = name.find_first_of(":/\\");
    return p != std::string_view::npos && name[p] == ':';
}

/// What a `posix_resolver` lets names reach beyond the image's own directory.
struct posix_resolver_options {
    bool allow_absolute = false; ///< accept absolute names (qemu-img does)
    bool allow_outside = false;  ///< accept names that resolve outside the first image's directory
};

/**
 * @brief Opens local files named by images, relative to the directory of the image naming them.
 *
 * Refuses protocol and `json:` names and names holding a NUL byte always; absolute names
 * and names that leave the directory of the first image (through `..` or symbolic links)
 * unless allowed; a file that is already part of the chain (a loop). The file is opened by
 * the name composed (as qemu-img names it), after its resolved path was checked. Construct it with the path of the image you open.
 */
class posix_resolver {
public:
    /// What names may reach.
    using options = posix_resolver_options;

    /// A resolver for the chain of the image at `top_path` (the path it was opened with).
    explicit posix_resolver(std::string top_path, options o = {}) : opts_(o) { paths_.push_back(std::move(top_path)); }

    /// Opens the file `q` names (read-only unless `q.writable`), or refuses it saying why.
    result<io::posix_file> operator()(const file_request& q) {
        auto refuse = [&](std::string_view why) {
            return error{errc::backing_file_refused,
                         detail::cat(q.role == file_role::backing ? "backing file '" : "data file '", q.name, "' refused: ", why)};
        };
        if (q.name.empty()) return refuse("empty name");
        // The system would see only the part before the NUL: refuse rather than open another name.
        if (q.name.find('\0') != std::string_view::npos) return refuse("names holding a NUL byte are not opened");
        if (is_protocol_name(q.name)) return refuse("protocol and json: names are not opened");
        if (q.name.front() == '/' && !opts_.allow_absolute) return refuse("absolute names are not allowed");
        if (q.depth >= paths_.size()) return refuse("internal: unknown referring image");
        const std::string& referrer = paths_[q.depth];
        std::string path(q.name);
        if (path.front() != '/') {
            const auto slash = referrer.rfind('/');
            if (slash != std::string::npos) path = referrer.substr(0, slash + 1) + path;
        }
        const std::string real = canonical(path);
        if (real.empty()) {
            auto f = io::posix_file::open(path, io::open_mode::read_only); // for the system's error
            if (!f) return f.error();
            return refuse("its path cannot be resolved");
        }
        if (!opts_.allow_outside) {
            const std::string top_dir = directory_of(canonical(paths_.front()));
            // An empty top_dir (the first image's path does not resolve) would let every name through.
            if (top_dir.empty()) return refuse(detail::cat("the directory of '", paths_.front(), "' cannot be resolved"));
            if (real.compare(0, top_dir.size(), top_dir) != 0) return refuse("it lies outside the image's directory");
        }
        if (q.role == file_role::backing) {
            for (std::size_t d = 0; d <= q.depth && d < paths_.size(); ++d)
                if (canonical(paths_[d]) == real) return refuse("the backing chain loops back to it");
            paths_.resize(q.depth + 1);
            paths_.push_back(path);
        }
        return io::posix_file::open(path, q.writable ? io::open_mode::read_write : io::open_mode::read_only);
    }

private:
    static std::string canonical(const std::string& p) {
        char buf[PATH_MAX];
        if (!::realpath(p.c_str(), buf)) return {};
        return buf;
    }
    static std::string directory_of(const std::string& p) {
        const auto slash = p.rfind('/');
        return slash == std::string::npos ? std::string() : p.substr(0, slash + 1);
    }

    options opts_;
    std::vector<std::string> paths_; // paths_[d]: the image at depth d
};

} // namespace qcow2
