// SPDX-License-Identifier: MIT
// Tutorial 4: writes a custom I/O backend (a file inside a buffer the caller owns, which logs
// every write and flush) and prints the log of one small guest write, in the order it happened.
//
// A backend is anything with five noexcept calls at explicit offsets (no file position):
// read_at, write_at, size, resize, flush, each reporting failure as a std::error_code. The
// concept qcow2::io::backend checks them at compile time; the image does the rest.
#include <qcow2/qcow2.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <system_error>
#include <vector>

namespace {

// One line of the log. The backend must not throw (every call is noexcept), so the log is a
// fixed array the caller owns: nothing allocates while logging.
struct log_entry {
    const char* op;
    std::uint64_t offset;
    std::uint64_t length;
};
struct write_log {
    std::array<log_entry, 64> entries{};
    std::size_t count = 0;
    void add(const char* op, std::uint64_t offset, std::uint64_t length) noexcept {
        if (count < entries.size()) entries[count++] = {op, offset, length};
    }
};

// A file of at most storage.size() bytes, kept in the caller's buffer. It holds only a view of
// the buffer and a pointer to the log, so moving it (the image owns its backend) is cheap.
class buffer_file {
public:
    buffer_file(std::span<std::byte> storage, write_log* log) noexcept : storage_(storage), log_(log) {}

    // Reads must be whole: a byte past the end is an error, not a short read.
    std::error_code read_at(std::uint64_t offset, std::span<std::byte> out) noexcept {
        if (offset > size_ || out.size() > size_ - offset) return qcow2::make_error_code(qcow2::errc::short_read);
        if (!out.empty()) std::memcpy(out.data(), storage_.data() + offset, out.size());
        return {};
    }
    // Writes past the end grow the file; a gap reads as zeroes.
    std::error_code write_at(std::uint64_t offset, std::span<const std::byte> in) noexcept {
        if (in.empty()) return {};
        if (offset > storage_.size() || in.size() > storage_.size() - offset)
            return std::make_error_code(std::errc::no_space_on_device);
        if (auto ec = resize(std::max(size_, offset + in.size()))) return ec;
        std::memcpy(storage_.data() + offset, in.data(), in.size());
        log_->add("write", offset, in.size());
        return {};
    }
    std::error_code size(std::uint64_t& out) const noexcept {
        out = size_;
        return {};
    }
    std::error_code resize(std::uint64_t n) noexcept {
        if (n > storage_.size()) return std::make_error_code(std::errc::no_space_on_device);
        if (n > size_) std::memset(storage_.data() + size_, 0, static_cast<std::size_t>(n - size_));
        size_ = n;
        return {};
    }
    // Nothing to make durable in memory, but the log shows where the image asks for it: every
    // write before a flush must be durable before any write after it.
    std::error_code flush() noexcept {
        log_->add("flush", 0, 0);
        return {};
    }

private:
    std::span<std::byte> storage_;
    std::uint64_t size_ = 0;
    write_log* log_;
};

// The whole contract, checked here rather than in a long error from deep inside the library.
static_assert(qcow2::io::backend<buffer_file>);

// Reads a big-endian table entry straight from the caller's buffer: the buffer is the file.
std::uint64_t be64(std::span<const std::byte> file, std::uint64_t offset) {
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < 8; ++i) v = (v << 8) | static_cast<std::uint64_t>(file[offset + i]);
    return v;
}

// Names the structure a write landed in, from the header and the first entries of the tables.
const char* what_is_at(const qcow2::header& h, std::span<const std::byte> file, std::uint64_t offset) {
    const std::uint64_t cs = h.cluster_size();
    const std::uint64_t refcount_block = be64(file, h.refcount_table_offset) & qcow2::reftable_bits::offset_mask;
    const std::uint64_t l2_table = be64(file, h.l1_table_offset) & qcow2::l2_bits::l1_offset_mask;
    const std::uint64_t data = be64(file, l2_table) & qcow2::l2_bits::offset_mask;
    auto in = [&](std::uint64_t start) { return start != 0 && offset >= start && offset < start + cs; };
    if (offset < cs) return "header (cluster 0)";
    if (in(h.refcount_table_offset)) return "refcount table";
    if (in(refcount_block)) return "refcount block";
    if (in(h.l1_table_offset)) return "L1 table";
    if (in(l2_table)) return "L2 table";
    if (in(data)) return "guest data";
    return "?";
}

int fail(const char* what, const qcow2::error& e) {
    std::fprintf(stderr, "%s: %s\n", what, e.what().c_str());
    return 1;
}

} // namespace

int main() {
    // The caller's buffer: the image lives in it and can never grow past it.
    std::vector<std::byte> storage(1 << 20);
    write_log log;

    qcow2::create_options opts;
    opts.size = 64 << 20;
    using image = qcow2::basic_image<buffer_file>;
    auto created = image::create(buffer_file(storage, &log), opts);
    if (!created) return fail("create", created.error());
    image img = std::move(*created).release();
    std::printf("create: %zu writes and flushes\n", log.count);
    log.count = 0;

    // One 4 KiB guest write, then close() to commit the metadata it changed.
    const std::vector<std::byte> data(4096, std::byte{0x5A});
    if (auto r = img.write(0, data); !r) return fail("write", r.error());
    if (auto r = img.close(); !r) return fail("close", r.error());

    std::printf("a 4 KiB write at guest offset 0, then close():\n");
    for (std::size_t i = 0; i < log.count; ++i) {
        const log_entry& e = log.entries[i];
        if (std::strcmp(e.op, "flush") == 0) {
            std::printf("  %2zu flush\n", i + 1);
            continue;
        }
        std::printf("  %2zu write %6llu bytes at 0x%06llx  %s\n", i + 1, static_cast<unsigned long long>(e.length),
                    static_cast<unsigned long long>(e.offset), what_is_at(img.header(), storage, e.offset));
    }
    // Read the order top to bottom: the header loses its all-zero bit and is flushed before the
    // data; the data is flushed before the L2 entry that points at it; refcounts go up before
    // anything references the new clusters. A crash between any two lines leaves a consistent
    // image (at worst a leaked cluster, which `check` repairs).
    return 0;
}
