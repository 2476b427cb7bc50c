// SPDX-License-Identifier: MIT
// A guest disk to read, for the commands that read guest data (convert, compare, map):
// a qcow2 image with its whole backing chain, or a raw file.
//
// Files named by an image (backing files, external data files) are opened relative to
// the directory of the image naming them, absolute names and names outside that directory
// allowed: qemu-img's rule for backing files. (qemu-img opens a relative data file name
// from its working directory instead; the two agree when the image is named without a
// directory.)
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include "common.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace cli {

/// The block status bits QEMU reports for a run (BDRV_BLOCK_*: what `compare -s` compares).
namespace block {
inline constexpr unsigned data = 0x01;         ///< read from a file
inline constexpr unsigned zero = 0x02;         ///< reads as zeroes
inline constexpr unsigned offset_valid = 0x04; ///< a host offset maps it
inline constexpr unsigned allocated = 0x10;    ///< some layer of the chain answers for it
inline constexpr unsigned eof = 0x20;          ///< the run reaches the end of the image
} // namespace block

/// A run of the guest disk, as far as the metadata tells without reading data.
struct disk_run {
    std::uint64_t length = 0;
    unsigned flags = 0; ///< `block::` bits
    /// Known to read as zeroes (zero clusters, holes, nothing allocated in the chain).
    bool zero() const noexcept { return (flags & block::zero) != 0; }
};

/// QEMU sees every image in whole 512-byte sectors: a raw file's size rounds up.
inline constexpr std::uint64_t sector_size = 512;

/// A guest disk: a qcow2 image (through its backing chain) or a raw file.
class disk {
public:
    /// Opens `path` as `format` ("qcow2", "raw", or "" to probe); prints qemu-img's message and
    /// returns nothing on failure.
    static std::optional<disk> open(const std::string& path, std::string format) {
        auto file = qcow2::io::posix_file::open(path, qcow2::io::open_mode::read_only);
        if (!file) {
            open_failed(path, file.error());
            return std::nullopt;
        }
        if (format.empty()) format = probe_format(*file);
        disk d;
        d.path_ = path;
        d.format_ = format;
        if (format == "raw") {
            std::uint64_t n = 0;
            if (auto ec = file->size(n)) {
                open_failed(path, qcow2::error(ec, "querying the file size"));
                return std::nullopt;
            }
            d.file_size_ = n;
            d.size_ = (n + sector_size - 1) / sector_size * sector_size;
            d.raw_.emplace(std::move(*file));
            return d;
        }
        if (format != "qcow2") {
            fail("Unknown file format '" + format + "'");
            return std::nullopt;
        }
        if (probe_format(*file) != "qcow2") {
            fail("Could not open '" + path + "': Image is not in qcow2 format");
            return std::nullopt;
        }
        auto img = qcow2::image::open(std::move(*file), qcow2::open_options{},
                                      qcow2::posix_resolver(path, {.allow_absolute = true, .allow_outside = true}));
        if (!img) {
            open_failed(path, img.error());
            return std::nullopt;
        }
        d.size_ = img->size();
        d.image_.emplace(std::move(*img));
        d.map_file();
        return d;
    }

    disk(disk&& o) noexcept
        : path_(std::move(o.path_)), format_(std::move(o.format_)), size_(o.size_), file_size_(o.file_size_),
          image_(std::move(o.image_)), raw_(std::move(o.raw_)), map_(std::exchange(o.map_, {})) {}
    disk& operator=(disk&& o) noexcept {
        if (this != &o) {
            this->~disk();
            new (this) disk(std::move(o));
        }
        return *this;
    }
    ~disk() {
        if (!map_.empty()) ::munmap(const_cast<std::byte*>(map_.data()), map_.size());
    }

    const std::string& path() const noexcept { return path_; }
    const std::string& format() const noexcept { return format_; }
    /// The virtual size (a raw file's size rounded up to whole sectors).
    std::uint64_t size() const noexcept { return size_; }
    /// The qcow2 image, or nullptr for a raw file.
    qcow2::image* image() noexcept { return image_ ? &*image_ : nullptr; }
    /// The raw file, or nullptr for a qcow2 image.
    qcow2::io::posix_file* raw() noexcept { return raw_ ? &*raw_ : nullptr; }

    /**
     * Guest bytes from `offset` (at most `max_length`) where they lie in the image file, mapped
     * into memory: the longest prefix that is a data run of the image itself (not of a
     * backing file, not in an external data file, not compressed or encrypted), contiguous in
     * the file. Empty when there is none: read them instead.
     */
    std::span<const std::byte> view(std::uint64_t offset, std::uint64_t max_length) {
        if (!image_ || map_.empty() || image_->data_file() || image_->header().crypt_method != 0) return {};
        auto m = image_->map_range(offset, max_length);
        if (!m || m->state != qcow2::cluster_state::data || !m->has_host) return {};
        if (m->host_offset >= map_.size()) return {};
        const std::uint64_t n = std::min(m->length, map_.size() - m->host_offset);
        return map_.subspan(static_cast<std::size_t>(m->host_offset), static_cast<std::size_t>(n));
    }

    /// Gives back the memory of a span `view` returned (the file stays as it is): mapped pages
    /// would otherwise count in the process's resident size until the end.
    static void release(std::span<const std::byte> v) noexcept { drop_pages(v); }

    /// Drops the page tables of the whole pages inside `v`, a span of a shared file mapping.
    static void drop_pages(std::span<const std::byte> v) noexcept {
        const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
        const auto lo = (reinterpret_cast<std::uintptr_t>(v.data()) + page - 1) & ~(page - 1);
        const auto hi = (reinterpret_cast<std::uintptr_t>(v.data()) + v.size()) & ~(page - 1);
        if (hi > lo) (void)::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
    }

    /// Reads guest bytes `[offset, offset + out.size())`.
    qcow2::result<void> read(std::uint64_t offset, std::span<std::byte> out) {
        if (image_) return image_->read(offset, out);
        return read_clamped(*raw_, file_size_, offset, out);
    }

    /// The run at `offset` (at most `max_length` bytes, not past the virtual size).
    qcow2::result<disk_run> status(std::uint64_t offset, std::uint64_t max_length) {
        max_length = std::min(max_length, size_ - offset);
        if (image_) return chain_status(*image_, offset, max_length);
        return file_status(*raw_, file_size_, offset, max_length);
    }

    /// Reads `out` at `offset` from a file of `file_size` bytes: bytes past its end read as zeroes.
    template <class File>
    static qcow2::result<void> read_clamped(File& f, std::uint64_t file_size, std::uint64_t offset, std::span<std::byte> out) {
        const std::uint64_t avail = offset >= file_size ? 0 : std::min<std::uint64_t>(out.size(), file_size - offset);
        if (avail)
            if (auto r = qcow2::io::read_exact(f, offset, out.first(static_cast<std::size_t>(avail)), "reading the raw file"); !r)
                return r;
        std::memset(out.data() + avail, 0, out.size() - static_cast<std::size_t>(avail));
        return {};
    }

    /// Holes and data of a file; past its end, zeroes.
    template <class File>
    static qcow2::result<disk_run> file_status(const File& f, std::uint64_t file_size, std::uint64_t offset,
                                               std::uint64_t max_length) {
        constexpr unsigned base = block::offset_valid | block::allocated;
        if (offset >= file_size) return disk_run{max_length, base | block::zero};
        qcow2::io::extent_status st;
        if (auto ec = f.block_status(offset, std::min(max_length, file_size - offset), st))
            return qcow2::error(ec, "querying holes in the raw file");
        std::uint64_t length = std::max<std::uint64_t>(st.length, 1);
        // A run reaching the end of the file takes the rest of its last sector along.
        if (offset + length == file_size) length = max_length;
        return disk_run{length, base | (st.data ? block::data : block::zero)};
    }

    /// The run at `offset` through the chain: which ranges read as zeroes without reading.
    static qcow2::result<disk_run> chain_status(qcow2::image& img, std::uint64_t offset, std::uint64_t max_length) {
        auto m = img.map_range(offset, max_length);
        if (!m) return m.error();
        const unsigned host = m->has_host ? block::offset_valid : 0;
        switch (m->state) {
        case qcow2::cluster_state::zero: return disk_run{m->length, block::zero | block::allocated | host};
        case qcow2::cluster_state::data: return disk_run{m->length, block::data | block::allocated | host};
        case qcow2::cluster_state::compressed: return disk_run{m->length, block::data | block::allocated};
        case qcow2::cluster_state::unallocated:
        case qcow2::cluster_state::invalid: break;
        }
        // Nothing below: zeroes, which no layer answers for.
        if (!img.has_backing()) return disk_run{m->length, block::zero | host};
        // Past the end of the backing image: zeroes that the backing image answers for.
        if (offset >= img.backing_size()) return disk_run{m->length, block::zero | block::allocated};
        const std::uint64_t len = std::min(m->length, img.backing_size() - offset);
        if (auto* b = img.backing_image()) return chain_status(*b, offset, len);
        if (const auto* raw = img.backing_raw()) {
            // backing_size() is whole sectors; the file itself may end inside the last one.
            auto file_size = qcow2::io::size_of(*raw);
            if (!file_size) return file_size.error();
            return file_status(*raw, *file_size, offset, len);
        }
        return qcow2::error(qcow2::errc::not_supported, "the backing file is not open");
    }

private:
    disk() = default;

    /// Maps the image file read-only, for `view` (nothing when mmap refuses: reads then).
    void map_file() {
        std::uint64_t n = 0;
        if (image_->backend().size(n) || n == 0 || n > std::numeric_limits<std::size_t>::max()) return;
        void* p = ::mmap(nullptr, static_cast<std::size_t>(n), PROT_READ, MAP_SHARED, image_->backend().native_handle(), 0);
        if (p != MAP_FAILED) map_ = {static_cast<const std::byte*>(p), static_cast<std::size_t>(n)};
    }

    std::string path_;
    std::string format_;
    std::uint64_t size_ = 0;
    std::uint64_t file_size_ = 0;
    std::optional<qcow2::image> image_;
    std::optional<qcow2::io::posix_file> raw_;
    std::span<const std::byte> map_; ///< the image file, mapped (see `view`)
};

/// True when all of `b` is zero bytes.
inline bool is_zero(std::span<const std::byte> b) {
    static constexpr std::byte zeroes[4096] = {};
    while (b.size() >= sizeof zeroes) {
        if (std::memcmp(b.data(), zeroes, sizeof zeroes) != 0) return false;
        b = b.subspan(sizeof zeroes);
    }
    return b.empty() || std::memcmp(b.data(), zeroes, b.size()) == 0;
}

/// Option values as getopt takes them: "-xVALUE", "-x VALUE", "--name=VALUE", "--name VALUE".
/// True when `args[k]` is option `opt` (then `k` moves past its value); `out` is left empty
/// when the value is missing.
inline bool take_value(const std::vector<std::string>& args, std::size_t& k, const char* opt, std::string& out) {
    const std::string& a = args[k];
    const std::size_t n = std::strlen(opt);
    if (a.compare(0, n, opt) != 0) return false;
    out.clear();
    if (a.size() > n) {
        const bool long_opt = opt[1] == '-';
        if (long_opt && a[n] != '=') return false;
        out = a.substr(long_opt ? n + 1 : n);
        return true;
    }
    if (k + 1 < args.size()) out = args[++k];
    return true;
}

} // namespace cli
