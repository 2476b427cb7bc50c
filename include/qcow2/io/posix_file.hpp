// SPDX-License-Identifier: MIT
/// @file
/// @brief `qcow2::io::posix_file`: a backend over a POSIX file descriptor.
///
/// Reads and writes go through `pread`/`pwrite` (no file position is used). On Linux the
/// optional capabilities use `fallocate`, `lseek(SEEK_DATA/SEEK_HOLE)` and
/// `copy_file_range`, each with a portable fallback when the filesystem refuses.
#pragma once

#include "qcow2/error.hpp"
#include "qcow2/io/backend.hpp"
#include "qcow2/result.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

namespace qcow2::io {

/// How `posix_file::open` opens a file.
enum class open_mode {
    read_only,  ///< existing file, reads only
    read_write, ///< existing file, reads and writes
    create,     ///< created if missing, truncated if present; reads and writes
    create_new, ///< created; fails with `file_exists` if present; reads and writes
};

namespace detail {

/// The calling thread's `errno` as a `std::error_code`.
inline std::error_code last_errno() noexcept { return {errno, std::system_category()}; }

/// Largest single transfer handed to one system call (Linux caps at about 2 GiB anyway).
inline constexpr std::size_t max_transfer = std::size_t{1} << 30;

/// Zeroes written by the zero-fill fallbacks, 64 KiB at a time.
inline constexpr std::array<std::byte, 64 * 1024> zero_block{};

/// Largest byte offset representable in `off_t`.
inline constexpr std::uint64_t max_off = static_cast<std::uint64_t>(std::numeric_limits<off_t>::max());

/// True when `[offset, offset + length)` lies within `off_t`.
inline bool range_fits_off_t(std::uint64_t offset, std::uint64_t length) noexcept {
    return offset <= max_off && length <= max_off - offset;
}

/// True for the errno values meaning "this filesystem or kernel cannot do that".
inline bool is_unsupported(int e) noexcept {
    return e == EOPNOTSUPP || e == ENOSYS
#if defined(ENOTSUP) && ENOTSUP != EOPNOTSUPP
           || e == ENOTSUP
#endif
        ;
}

} // namespace detail

/**
 * @brief A file on a POSIX system, owned through its descriptor (move-only RAII).
 *
 * Satisfies `backend` and every optional capability: `supports_discard`,
 * `supports_write_zeroes`, `supports_preallocate`, `supports_block_status`,
 * `supports_copy_range<posix_file, posix_file>` and `supports_allocated_size`.
 * Backend members are `noexcept` and report `std::error_code(errno, std::system_category())`
 * for system failures, or a `qcow2::errc` for the conditions documented on each member.
 * A moved-from or default-constructed object has no descriptor; its calls fail with `EBADF`.
 */
class posix_file {
public:
    /// A closed file (no descriptor).
    posix_file() noexcept = default;

    /**
     * @brief Opens `path` as `mode` says, always with `O_CLOEXEC`.
     * @param path the file to open (kept, see `path()`)
     * @param mode `read_only`, `read_write`, `create` (`O_CREAT|O_TRUNC`) or `create_new` (`O_CREAT|O_EXCL`)
     * @param permissions mode bits for a created file, before the umask
     * @return the open file, or an error carrying the errno and a message naming `path`;
     *         a directory is refused with `EISDIR`.
     * @par Exception safety
     * Throws only `std::bad_alloc` while building an error message.
     */
    static result<posix_file> open(std::string path, open_mode mode, mode_t permissions = 0666) {
        int flags = O_CLOEXEC;
        switch (mode) {
        case open_mode::read_only: flags |= O_RDONLY; break;
        case open_mode::read_write: flags |= O_RDWR; break;
        case open_mode::create: flags |= O_RDWR | O_CREAT | O_TRUNC; break;
        case open_mode::create_new: flags |= O_RDWR | O_CREAT | O_EXCL; break;
        }
        int fd;
        do {
            fd = ::open(path.c_str(), flags, permissions);
        } while (fd < 0 && errno == EINTR);
        if (fd < 0) {
            std::error_code ec = detail::last_errno();
            return error(ec, "opening '" + path + "'");
        }
        posix_file f(fd, std::move(path), mode == open_mode::read_only);
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            std::error_code ec = detail::last_errno();
            return error(ec, "opening '" + f.path_ + "'");
        }
        if (S_ISDIR(st.st_mode)) return error(std::make_error_code(std::errc::is_a_directory), "opening '" + f.path_ + "'");
        return f;
    }

    posix_file(const posix_file&) = delete;
    posix_file& operator=(const posix_file&) = delete;
    /// Takes the descriptor; `o` is left closed.
    posix_file(posix_file&& o) noexcept
        : fd_(std::exchange(o.fd_, -1)), read_only_(o.read_only_), path_(std::move(o.path_)) {}
    /// Closes this file and takes `o`'s descriptor; `o` is left closed.
    posix_file& operator=(posix_file&& o) noexcept {
        if (this != &o) {
            (void)close();
            fd_ = std::exchange(o.fd_, -1);
            read_only_ = o.read_only_;
            path_ = std::move(o.path_);
        }
        return *this;
    }
    /// Closes the descriptor (errors are ignored; call `close()` to see them).
    ~posix_file() { (void)close(); }

    /// Closes the descriptor now; the file is closed afterwards even on error.
    std::error_code close() noexcept {
        if (fd_ < 0) return {};
        const int fd = std::exchange(fd_, -1);
        // Never retry close on EINTR: the descriptor is gone on Linux either way.
        if (::close(fd) != 0 && errno != EINTR) return detail::last_errno();
        return {};
    }

    /**
     * @brief Fills all of `out` from `offset` (`pread` loop; retries `EINTR`, continues partial reads).
     * @par Errors
     * `errc::short_read` when the end of the file comes first (part of `out` may have been filled);
     * errno codes from `pread`.
     */
    std::error_code read_at(std::uint64_t offset, std::span<std::byte> out) noexcept {
        std::byte* p = out.data();
        std::size_t left = out.size();
        while (left > 0) {
            if (offset > detail::max_off) return make_error_code(errc::short_read);
            const std::size_t chunk = std::min(left, detail::max_transfer);
            const ssize_t r = ::pread(fd_, p, chunk, static_cast<off_t>(offset));
            if (r < 0) {
                if (errno == EINTR) continue;
                return detail::last_errno();
            }
            if (r == 0) return make_error_code(errc::short_read);
            const auto got = static_cast<std::size_t>(r);
            p += got;
            left -= got;
            offset += got;
        }
        return {};
    }

    /**
     * @brief Writes all of `in` at `offset` (`pwrite` loop), growing the file.
     * @par Errors
     * `errc::read_only` (no system call made); `errc::file_too_large` when the range passes
     * the largest `off_t`; errno codes from `pwrite` (`ENOSPC`, `EIO`, ...).
     */
    std::error_code write_at(std::uint64_t offset, std::span<const std::byte> in) noexcept {
        forget_extent();
        if (read_only_) return make_error_code(errc::read_only);
        if (!detail::range_fits_off_t(offset, in.size())) return make_error_code(errc::file_too_large);
        return write_all(offset, in.data(), in.size());
    }

    /// The file's length (`fstat` `st_size`).
    std::error_code size(std::uint64_t& out) const noexcept {
        struct stat st {};
        if (::fstat(fd_, &st) != 0) return detail::last_errno();
        out = static_cast<std::uint64_t>(st.st_size);
        return {};
    }

    /**
     * @brief Truncates or extends to `n` bytes (`ftruncate`; the extension reads as zeroes).
     * @par Errors
     * `errc::read_only`, `errc::file_too_large` past the largest `off_t`, errno codes.
     */
    std::error_code resize(std::uint64_t n) noexcept {
        forget_extent();
        if (read_only_) return make_error_code(errc::read_only);
        if (n > detail::max_off) return make_error_code(errc::file_too_large);
        return truncate_to(n);
    }

    /// Makes completed writes durable (`fdatasync`; `fsync` where that is missing). A no-op when read-only.
    std::error_code flush() noexcept {
        if (read_only_) return {};
        int r;
        do {
#if defined(__linux__)
            r = ::fdatasync(fd_);
#else
            r = ::fsync(fd_);
#endif
        } while (r != 0 && errno == EINTR);
        return r != 0 ? detail::last_errno() : std::error_code{};
    }

    /**
     * @brief Makes `[offset, offset + length)` read as zeroes, keeping the size (punch hole).
     *
     * The range is clamped to the end of the file. Uses
     * `fallocate(PUNCH_HOLE|KEEP_SIZE)`; when the filesystem refuses (`EOPNOTSUPP`/`ENOSYS`),
     * or off Linux, writes zeroes instead, 64 KiB at a time.
     * @par Errors
     * `errc::read_only`, errno codes.
     */
    std::error_code discard(std::uint64_t offset, std::uint64_t length) noexcept {
        forget_extent();
        if (read_only_) return make_error_code(errc::read_only);
        std::uint64_t n = 0;
        if (auto ec = size(n)) return ec;
        if (offset >= n || length == 0) return {};
        length = std::min(length, n - offset);
        return zero_inside(offset, length);
    }

    /**
     * @brief Makes `[offset, offset + length)` read as zeroes, growing the file if the range ends past it.
     *
     * Tries `fallocate(ZERO_RANGE)`, then `ftruncate` (to grow) plus punching a hole, then
     * writing zeroes 64 KiB at a time.
     * @par Errors
     * `errc::read_only`, `errc::file_too_large` past the largest `off_t`, errno codes.
     */
    std::error_code write_zeroes(std::uint64_t offset, std::uint64_t length) noexcept {
        forget_extent();
        if (read_only_) return make_error_code(errc::read_only);
        if (length == 0) return {};
        if (!detail::range_fits_off_t(offset, length)) return make_error_code(errc::file_too_large);
#if defined(__linux__) && defined(FALLOC_FL_ZERO_RANGE)
        if (auto ec = fallocate_retry(FALLOC_FL_ZERO_RANGE, offset, length); !ec) return {};
        else if (!detail::is_unsupported(ec.value())) return ec;
#endif
        std::uint64_t n = 0;
        if (auto ec = size(n)) return ec;
        const std::uint64_t end = offset + length;
        if (end > n) {
            if (auto ec = truncate_to(end)) return ec; // the new tail reads as zeroes
        }
        if (offset >= n) return {};
        return zero_inside(offset, std::min(end, n) - offset);
    }

    /**
     * @brief Reserves storage for `[offset, offset + length)`, growing the file with zeroes if needed.
     *
     * `fallocate(0)`, falling back to `posix_fallocate`; where neither can reserve, the
     * file is only grown (`ftruncate`) so that the size contract still holds.
     * @par Errors
     * `errc::read_only`, `errc::file_too_large`, errno codes (`ENOSPC`, ...).
     */
    std::error_code preallocate(std::uint64_t offset, std::uint64_t length) noexcept {
        forget_extent();
        if (read_only_) return make_error_code(errc::read_only);
        if (length == 0) return {};
        if (!detail::range_fits_off_t(offset, length)) return make_error_code(errc::file_too_large);
#if defined(__linux__)
        if (auto ec = fallocate_retry(0, offset, length); !ec) return {};
        else if (!detail::is_unsupported(ec.value())) return ec;
#endif
#if !defined(__APPLE__)
        int r;
        do {
            r = ::posix_fallocate(fd_, static_cast<off_t>(offset), static_cast<off_t>(length));
        } while (r == EINTR);
        if (r == 0) return {};
        // EINVAL: some filesystems (and glibc's emulation on them) cannot preallocate at all.
        if (!detail::is_unsupported(r) && r != EINVAL) return {r, std::system_category()};
#endif
        std::uint64_t n = 0;
        if (auto ec = size(n)) return ec;
        if (offset + length > n) return truncate_to(offset + length);
        return {};
    }

    /**
     * @brief Describes the run starting at `offset`: data or hole, and its length.
     *
     * Uses `lseek(SEEK_DATA/SEEK_HOLE)`. The run is clamped to `max_length` and to the end
     * of the file. A filesystem that cannot report holes reports everything as data.
     * @par Errors
     * `errc::invalid_argument` when `offset` is at or past the end, or `max_length` is 0;
     * errno codes.
     */
    std::error_code block_status(std::uint64_t offset, std::uint64_t max_length, extent_status& out) const noexcept {
        std::uint64_t n = 0;
        if (auto ec = size(n)) return ec;
        if (offset >= n || max_length == 0) return make_error_code(errc::invalid_argument);
        const std::uint64_t limit = std::min(max_length, n - offset);
        // The last extent found answers again until the file changes: SEEK_HOLE costs time
        // in proportion to the data it walks over, and callers ask piece by piece.
        if (offset >= known_.lo && offset < known_.hi) {
            out = {known_.data, std::min(known_.hi - offset, limit)};
            return {};
        }
        out = {true, limit};
#if defined(SEEK_DATA) && defined(SEEK_HOLE)
        const off_t data = ::lseek(fd_, static_cast<off_t>(offset), SEEK_DATA);
        if (data < 0) {
            const int e = errno;
            if (e == ENXIO) out = {false, limit}; // no data from here to the end
            else if (e != EINVAL && !detail::is_unsupported(e)) return {e, std::system_category()};
            return {};
        }
        const auto d = static_cast<std::uint64_t>(data);
        if (d > offset) {
            out = {false, std::min(d - offset, limit)};
            known_ = {offset, d, false};
            return {};
        }
        const off_t hole = ::lseek(fd_, static_cast<off_t>(offset), SEEK_HOLE);
        if (hole < 0) {
            const int e = errno;
            // ENXIO: the file shrank under us; report the data we saw.
            if (e != ENXIO && e != EINVAL && !detail::is_unsupported(e)) return {e, std::system_category()};
            return {};
        }
        const auto h = static_cast<std::uint64_t>(hole);
        if (h > offset) {
            out = {true, std::min(h - offset, limit)};
            known_ = {offset, h, true};
        }
#endif
        return {};
    }

    /**
     * @brief Copies `length` bytes from `src_offset` in this file to `dst_offset` in `dst`.
     *
     * Uses `copy_file_range` (data may be shared by the filesystem); on `EXDEV`, `ENOSYS`,
     * `EOPNOTSUPP` or `EINVAL` (or off Linux) copies the rest with `pread`/`pwrite` in
     * 1 MiB chunks. Overlapping ranges in the same file are copied as by `memmove`.
     * @par Errors
     * `errc::read_only` when `dst` is read-only; `errc::short_read` when the source ends
     * first; `errc::file_too_large`; `errc::no_memory` when the 1 MiB buffer cannot be
     * allocated; errno codes.
     */
    std::error_code copy_range_to(std::uint64_t src_offset, posix_file& dst, std::uint64_t dst_offset,
                                  std::uint64_t length) noexcept {
        dst.forget_extent();
        if (dst.read_only_) return make_error_code(errc::read_only);
        if (length == 0) return {};
        if (!detail::range_fits_off_t(src_offset, length)) return make_error_code(errc::short_read);
        if (!detail::range_fits_off_t(dst_offset, length)) return make_error_code(errc::file_too_large);
#if defined(__linux__)
        while (length > 0) {
            loff_t in = static_cast<loff_t>(src_offset);
            loff_t out = static_cast<loff_t>(dst_offset);
            const auto chunk = static_cast<std::size_t>(std::min<std::uint64_t>(length, detail::max_transfer));
            const ssize_t r = ::copy_file_range(fd_, &in, dst.fd_, &out, chunk, 0);
            if (r < 0) {
                const int e = errno;
                if (e == EINTR) continue;
                if (e == EXDEV || e == EINVAL || detail::is_unsupported(e)) break;
                return {e, std::system_category()};
            }
            if (r == 0) return make_error_code(errc::short_read);
            const auto done = static_cast<std::uint64_t>(r);
            src_offset += done;
            dst_offset += done;
            length -= done;
        }
        if (length == 0) return {};
#endif
        return copy_by_buffer(src_offset, dst, dst_offset, length);
    }

    /// The bytes the file occupies on its storage (`st_blocks * 512`).
    std::error_code allocated_size(std::uint64_t& out) const noexcept {
        struct stat st {};
        if (::fstat(fd_, &st) != 0) return detail::last_errno();
        out = static_cast<std::uint64_t>(st.st_blocks) * 512u;
        return {};
    }

    /// The descriptor (-1 when closed); still owned by this object.
    int native_handle() const noexcept { return fd_; }
    /// True when a descriptor is open.
    bool is_open() const noexcept { return fd_ >= 0; }
    /// True when opened with `open_mode::read_only`.
    bool is_read_only() const noexcept { return read_only_; }
    /// The path given to `open`.
    const std::string& path() const noexcept { return path_; }

private:
    posix_file(int fd, std::string path, bool read_only) noexcept
        : fd_(fd), read_only_(read_only), path_(std::move(path)) {}

    std::error_code write_all(std::uint64_t offset, const std::byte* p, std::size_t left) noexcept {
        while (left > 0) {
            const std::size_t chunk = std::min(left, detail::max_transfer);
            const ssize_t r = ::pwrite(fd_, p, chunk, static_cast<off_t>(offset));
            if (r < 0) {
                if (errno == EINTR) continue;
                return detail::last_errno();
            }
            if (r == 0) return std::make_error_code(std::errc::io_error); // no progress: never loop forever
            const auto put = static_cast<std::size_t>(r);
            p += put;
            left -= put;
            offset += put;
        }
        return {};
    }

    std::error_code truncate_to(std::uint64_t n) noexcept {
        int r;
        do {
            r = ::ftruncate(fd_, static_cast<off_t>(n));
        } while (r != 0 && errno == EINTR);
        return r != 0 ? detail::last_errno() : std::error_code{};
    }

#if defined(__linux__)
    std::error_code fallocate_retry(int mode, std::uint64_t offset, std::uint64_t length) noexcept {
        int r;
        do {
            r = ::fallocate(fd_, mode, static_cast<off_t>(offset), static_cast<off_t>(length));
        } while (r != 0 && errno == EINTR);
        return r != 0 ? detail::last_errno() : std::error_code{};
    }
#endif

    // Zeroes a range inside the file: punch a hole, or write zeroes.
    std::error_code zero_inside(std::uint64_t offset, std::uint64_t length) noexcept {
#if defined(__linux__) && defined(FALLOC_FL_PUNCH_HOLE)
        if (auto ec = fallocate_retry(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length); !ec) return {};
        else if (!detail::is_unsupported(ec.value())) return ec;
#endif
        while (length > 0) {
            const auto chunk = static_cast<std::size_t>(std::min<std::uint64_t>(length, detail::zero_block.size()));
            if (auto ec = write_all(offset, detail::zero_block.data(), chunk)) return ec;
            offset += chunk;
            length -= chunk;
        }
        return {};
    }

    std::error_code copy_by_buffer(std::uint64_t src, posix_file& dst, std::uint64_t to, std::uint64_t length) noexcept {
        constexpr std::uint64_t buffer_size = 1u << 20;
        const std::size_t cap = static_cast<std::size_t>(std::min(length, buffer_size));
        std::unique_ptr<std::byte[]> buf(new (std::nothrow) std::byte[cap]);
        if (!buf) return make_error_code(errc::no_memory);
        // Copy back to front when the destination overlaps the source from above.
        bool backwards = false;
        if (to > src && to < src + length) {
            struct stat a {}, b {};
            if (::fstat(fd_, &a) != 0 || ::fstat(dst.fd_, &b) != 0) return detail::last_errno();
            backwards = a.st_dev == b.st_dev && a.st_ino == b.st_ino;
        }
        std::uint64_t done = 0;
        while (done < length) {
            const auto chunk = static_cast<std::size_t>(std::min<std::uint64_t>(length - done, cap));
            const std::uint64_t at = backwards ? length - done - chunk : done;
            if (auto ec = read_at(src + at, {buf.get(), chunk})) return ec;
            if (auto ec = dst.write_all(to + at, buf.get(), chunk)) return ec;
            done += chunk;
        }
        return {};
    }

    /// Forgets the extent `block_status` found (the file changed).
    void forget_extent() const noexcept { known_ = {}; }

    /// The last extent `block_status` found: `[lo, hi)` is data (`data`) or a hole.
    struct extent_memo {
        std::uint64_t lo = 0, hi = 0;
        bool data = false;
    };

    int fd_ = -1;
    bool read_only_ = false;
    std::string path_;
    mutable extent_memo known_{};
};

static_assert(backend<posix_file> && supports_discard<posix_file> && supports_write_zeroes<posix_file> &&
              supports_preallocate<posix_file> && supports_block_status<posix_file> &&
              supports_copy_range<posix_file, posix_file> && supports_allocated_size<posix_file>);

} // namespace qcow2::io
