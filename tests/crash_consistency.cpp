// SPDX-License-Identifier: MIT
// Crash consistency of the write path (image.hpp, metadata/refcounts.hpp): every file a
// crash can leave behind opens, checks without corruption and reads back what was durable.
//
// Each workload runs through `basic_image<recording>`, a memory backend that logs every
// write, resize, hole punch and flush in order (an external data file logs into the same
// log as file 1). The test adds two marks to the log: where each guest operation began, and
// where each call that promises durability (`flush`, `close`, `resize`) returned. The crash
// model: a flush makes durable every change its file logged before it; a crash keeps any
// subset of the changes logged since each file's last flush, applied in order. At each
// flush (and at the end of the log) the test rebuilds the files for every prefix of the
// pending changes and for subsets of them (all of them when there are at most 7, else each
// change lost alone, the last six in every combination, and a fixed-seed random sample), and
// checks each distinct result:
// - it opens read-only, and writable (which repairs a dirty, lazy-refcounts image);
// - `check` reports no corruption and no check error (leaks are allowed: a crash may leak).
//   A dirty image is exempt on the read-only open, where its refcounts are untrusted by
//   definition, but not once the writable open has repaired it (and its data must survive
//   the repair);
// - the guest disk reads as it did at the last durability promise made before that point,
//   except where an operation issued since may have landed: there each byte reads its
//   durable value or one an operation in flight wrote (never another offset's data, never
//   stale bytes), and the virtual size is the durable one or that of a resize in flight
//   (tests/support/guest_model.hpp);
// - when the header carries the all-zero bit (byte 95 & 4), every cluster the image itself
//   provides reads zero (the whole disk, without a backing file);
// - on one file in eight, the recovered image takes a new write, flushes, checks clean and
//   reads the write back.
// Workloads: allocating writes, partial-cluster copy-on-write, zero writes and discards that
// free clusters, compressed writes, refcount block creation and refcount table growth (512-byte
// clusters, 64-bit refcounts), L1 growth, shrinking, make_empty, lazy refcounts, a backing
// file (versions 3 and 2), extended L2 entries, version 2, an internal snapshot made by
// `qemu-img snapshot -c`, small caches, an external data file (plain and raw), persistent
// bitmaps (their in-use mark, their storing at close, bitmap operations), and random
// operations on five layouts.
//
// Environment:
//   QCOW2_CRASH_SCALE=N  (default 1) lengthens the random workloads N times and samples more
//                        subsets (all of them up to 10 pending changes); N = 4 takes minutes.
//   QCOW2_CRASH_TORN=1   tears writes in every workload (the allocating-writes and make_empty
//                        workloads always do): every write longer than a sector becomes one
//                        change per 512-byte sector (sectors stay atomic); several times slower.
//   QCOW2_CRASH_TRACE=1  prints each workload's log, changes numbered as failures name them.
//   QCOW2_CRASH_DUMP=DIR writes the first failing file of each workload (with its backing and
//                        data files) to DIR, to look at it with qemu-img or the qcow2 CLI.
#include "qcow2/image.hpp"

#include "qcow2/all_zero.hpp"
#include "qcow2/backing.hpp"
#include "qcow2/io/memory.hpp"
#include "qcow2/io/posix_file.hpp"
#include "qcow2/ops/check.hpp"
#include "support/guest_model.hpp"
#include "support/process.hpp"
#include "support/qemu_snapshot.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

namespace {

using qcow2::test::all_zero;
using qcow2::test::apply_op;
using qcow2::test::bytes;
using qcow2::test::cat;
using qcow2::test::compressible;
using qcow2::test::guest_op;
using qcow2::test::pattern;
using qcow2::test::verify_guest;
using mem_image = qcow2::basic_image<qcow2::io::memory>;

unsigned crash_scale() {
    static const unsigned s = [] {
        const char* e = std::getenv("QCOW2_CRASH_SCALE");
        const long v = e ? std::strtol(e, nullptr, 10) : 1;
        return v >= 1 ? static_cast<unsigned>(v) : 1u;
    }();
    return s;
}

void require_ok(const qcow2::result<void>& r, std::string_view what) {
    if (!r) FAIL(what << ": " << r.error().what());
}

// ------------------------------------------------------------------ the recording backend

/// What the log holds, in the order it happened.
enum class ev : std::uint8_t {
    write,    ///< `offset`, `data`
    resize,   ///< `offset` is the new file size
    discard,  ///< `offset`, `length`: a punched hole, which reads as zeroes
    flush,    ///< everything before it is durable
    begin_op, ///< guest operation number `offset` begins (test mark, not I/O)
    durable,  ///< the first `offset` guest operations are promised durable (test mark)
};

struct event {
    ev kind = ev::write;
    std::uint64_t offset = 0;
    std::uint64_t length = 0;
    bytes data;
    unsigned file = 0; ///< 0: the image file, 1: its external data file
};

using journal = std::vector<event>;

/**
 * A memory backend that appends every successful write, resize, discard and flush to a
 * shared log, tagged with `id` (the image file and its data file share one log: a flush
 * makes only its own file's writes durable). Logging allocates inside `noexcept` calls:
 * running out of memory there ends the test program, which is what a test may do. Reads are
 * not logged (they change nothing).
 */
class recording {
public:
    recording(qcow2::io::memory file, std::shared_ptr<journal> log, unsigned id = 0) noexcept
        : file_(std::move(file)), log_(std::move(log)), id_(id) {}

    std::error_code read_at(std::uint64_t off, std::span<std::byte> out) noexcept { return file_.read_at(off, out); }
    std::error_code write_at(std::uint64_t off, std::span<const std::byte> in) noexcept {
        const auto ec = file_.write_at(off, in);
        if (!ec && log_ && !in.empty()) log_->push_back({ev::write, off, 0, bytes(in.begin(), in.end()), id_});
        return ec;
    }
    std::error_code size(std::uint64_t& n) const noexcept { return file_.size(n); }
    std::error_code resize(std::uint64_t n) noexcept {
        const auto ec = file_.resize(n);
        if (!ec && log_) log_->push_back({ev::resize, n, 0, {}, id_});
        return ec;
    }
    std::error_code flush() noexcept {
        const auto ec = file_.flush();
        if (!ec && log_) log_->push_back({ev::flush, 0, 0, {}, id_});
        return ec;
    }
    // Offered so that the library punches freed clusters as it does on a real file: a punch
    // is one more unordered change a crash may keep or lose.
    std::error_code discard(std::uint64_t off, std::uint64_t len) noexcept {
        const auto ec = file_.discard(off, len);
        if (!ec && log_ && len) log_->push_back({ev::discard, off, len, {}, id_});
        return ec;
    }

    const qcow2::io::memory& file() const noexcept { return file_; }

private:
    qcow2::io::memory file_;
    std::shared_ptr<journal> log_;
    unsigned id_;
};
static_assert(qcow2::io::backend<recording> && qcow2::io::supports_discard<recording>);

using rec_image = qcow2::basic_image<recording>;

/// Applies one logged change to a file's bytes, as the memory backend did.
void apply_event(bytes& f, const event& e) {
    switch (e.kind) {
    case ev::write:
        if (f.size() < e.offset + e.data.size()) f.resize(static_cast<std::size_t>(e.offset + e.data.size()));
        std::memcpy(f.data() + e.offset, e.data.data(), e.data.size());
        break;
    case ev::resize: f.resize(static_cast<std::size_t>(e.offset)); break;
    case ev::discard:
        if (e.offset < f.size())
            std::memset(f.data() + e.offset, 0,
                        static_cast<std::size_t>(std::min<std::uint64_t>(e.length, f.size() - e.offset)));
        break;
    case ev::flush:
    case ev::begin_op:
    case ev::durable: break;
    }
}

bool is_file_change(ev k) noexcept { return k == ev::write || k == ev::resize || k == ev::discard; }

/// True when applying `e` leaves `f` as it is (a write of the bytes already there, a punch of zeroes).
bool changes_nothing(const bytes& f, const event& e) {
    switch (e.kind) {
    case ev::write:
        return e.offset + e.data.size() <= f.size() &&
               std::memcmp(f.data() + e.offset, e.data.data(), e.data.size()) == 0;
    case ev::resize: return e.offset == f.size();
    case ev::discard:
        return e.offset >= f.size() ||
               qcow2::test::all_zero(f.data() + e.offset,
                                     static_cast<std::size_t>(std::min<std::uint64_t>(e.length, f.size() - e.offset)));
    default: return true;
    }
}

// ------------------------------------------------------------------ backing files

/// Opens the backing file and the external data file of these tests from memory (a copy
/// each time); recorded images log their data file's changes as file 1.
template <class Backend>
struct memory_resolver {
    std::shared_ptr<const bytes> base; ///< the backing file, if any
    const bytes* data = nullptr;       ///< the external data file, if any
    std::shared_ptr<journal> log{};    ///< for `recording`: the log the data file writes to
    qcow2::result<Backend> operator()(const qcow2::file_request& q) const {
        const bytes* src = q.role == qcow2::file_role::backing ? base.get() : data;
        if (!src) return qcow2::error{qcow2::errc::backing_file_refused, cat("no file '", q.name, "' in memory")};
        if constexpr (std::is_same_v<Backend, qcow2::io::memory>) return qcow2::io::memory(bytes(*src));
        else return Backend(qcow2::io::memory(bytes(*src)), q.role == qcow2::file_role::data_file ? log : nullptr, 1);
    }
};

// ------------------------------------------------------------------ the guest model

/// A finished workload: everything needed to rebuild and judge its crash states.
struct crash_model {
    std::string name;
    bytes initial_file;
    bytes initial_data; ///< the external data file (empty without one)
    bool has_data_file = false;
    bytes initial_guest;
    journal log;
    std::vector<guest_op> ops;
    std::shared_ptr<const bytes> backing;
    bool torn = false; ///< tear writes at sector boundaries (see QCOW2_CRASH_TORN)
};

/// Creates an image in memory, runs `prefix` on it (not recorded), closes it: the starting file.
bytes prepare(const qcow2::create_options& o, const std::function<void(mem_image&)>& prefix = {},
              std::shared_ptr<const bytes> backing = {}) {
    auto z = mem_image::create(qcow2::io::memory{}, o, memory_resolver<qcow2::io::memory>{std::move(backing)});
    if (!z) FAIL("create: " << z.error().what());
    mem_image img = std::move(*z).release();
    if (prefix) prefix(img);
    require_ok(img.close(), "close");
    return {img.backend().bytes().begin(), img.backend().bytes().end()};
}

/// Creates an image with an external data file (`o.data_file` names it) on disk, where the
/// library can reopen the data file it created, and returns both files' bytes.
std::pair<bytes, bytes> prepare_with_data_file(const qcow2::create_options& o) {
    qcow2_test::temp_dir dir("qcow2-crash-");
    const std::string path = dir / "image.qcow2";
    REQUIRE(qcow2::io::posix_file::open(dir / o.data_file, qcow2::io::open_mode::create));
    auto f = qcow2::io::posix_file::open(path, qcow2::io::open_mode::create);
    REQUIRE(f);
    qcow2::posix_resolver resolver(path);
    auto z = qcow2::basic_image<qcow2::io::posix_file>::create(std::move(*f), o, resolver);
    if (!z) FAIL("create: " << z.error().what());
    {
        auto img = std::move(*z).release();
        require_ok(img.close(), "close");
    }
    return {qcow2::test::read_whole_file(path), qcow2::test::read_whole_file(dir / o.data_file)};
}

/// Runs guest operations on a recorded image and keeps the shadow of its disk.
class workload {
public:
    workload(std::string name, bytes file, std::shared_ptr<const bytes> backing = {}, qcow2::open_options opts = {},
             std::optional<bytes> data_file = std::nullopt)
        : name_(std::move(name)), log_(std::make_shared<journal>()), initial_(file), backing_(backing),
          data_(std::move(data_file)), img_(open(std::move(file), log_, backing, opts, data_ ? &*data_ : nullptr)) {
        guest_.resize(static_cast<std::size_t>(img_.size()));
        require_ok(img_.read(0, guest_), "reading the initial disk");
        initial_guest_ = guest_;
    }

    rec_image& image() noexcept { return img_; }
    std::uint64_t cluster_size() const noexcept { return img_.cluster_size(); }
    std::uint64_t size() const noexcept { return guest_.size(); }
    const bytes& guest() const noexcept { return guest_; }
    std::uint64_t next_tag() noexcept { return tag_++; }

    void write(std::uint64_t off, std::uint64_t len) { write_bytes(off, pattern(next_tag(), off, len)); }
    void write_bytes(std::uint64_t off, bytes data) {
        begin({off, data, {}});
        require_ok(img_.write(off, data), cat("write of ", data.size(), " bytes at ", off));
    }
    void zero(std::uint64_t off, std::uint64_t len, qcow2::zero_mode mode = qcow2::zero_mode::keep_allocation) {
        begin({off, bytes(static_cast<std::size_t>(len)), {}});
        require_ok(img_.write_zeroes(off, len, mode), cat("write_zeroes of ", len, " bytes at ", off));
    }
    void discard(std::uint64_t off, std::uint64_t len) {
        // A version 2 image with a backing file cannot say "zero": there a discard does nothing.
        const bool nothing = img_.header().version == 2 && img_.has_backing();
        begin(qcow2::test::discard_op(off, len, size(), cluster_size(), nothing));
        require_ok(img_.discard(off, len), cat("discard of ", len, " bytes at ", off));
    }
    void compressed(std::uint64_t off, bool shrinks = true) {
        const std::uint64_t n = std::min(cluster_size(), size() - off);
        bytes data = shrinks ? compressible(next_tag(), n) : pattern(next_tag(), off, n);
        begin({off, data, {}});
        require_ok(img_.write_compressed(off, data), cat("write_compressed at ", off));
    }
    void resize(std::uint64_t n) {
        begin(qcow2::test::resize_op(size(), n));
        require_ok(img_.resize(n), cat("resize to ", n));
        durable(); // "The new size is durable when the call returns."
    }
    void make_empty() {
        begin({0, bytes(guest_.size()), {}});
        require_ok(img_.make_empty(), "make_empty");
    }
    void flush() {
        require_ok(img_.flush(), "flush");
        durable();
    }
    void close() {
        require_ok(img_.close(), "close");
        durable();
    }
    /// `check` with repair; afterwards the image must check clean (no guest change).
    void repair(qcow2::check_repair mode) {
        qcow2::check_options co;
        co.repair = mode;
        auto rep = qcow2::check(img_, co);
        if (!rep) FAIL("check with repair: " << rep.error().what());
        CHECK(rep->corruptions == 0);
        CHECK(rep->leaks == 0);
        CHECK(rep->leaks_fixed + rep->corruptions_fixed > 0); // there was something to repair
        durable();                                            // check flushes before it returns
    }

    /// Random writes, zero writes, discards, compressed writes and resizes, with flushes between.
    void random_steps(std::uint64_t seed, unsigned count) {
        std::mt19937_64 rng(seed);
        const std::uint64_t cs = cluster_size();
        for (unsigned i = 0; i < count; ++i) {
            const std::uint64_t off = rng() % size();
            const std::uint64_t len = 1 + rng() % std::min<std::uint64_t>(size() - off, 3 * cs + 700);
            switch (rng() % 9) {
            case 0:
            case 1:
            case 2: write(off, len); break;
            case 3: zero(off, len, rng() % 2 ? qcow2::zero_mode::unmap : qcow2::zero_mode::keep_allocation); break;
            case 4: discard(off, len); break;
            case 5:
                if (img_.header().incompatible_features & qcow2::features::external_data_file::mask) write(off, len);
                else compressed(off / cs * cs, rng() % 4 != 0);
                break;
            case 6: { // grow or shrink by up to eight clusters (multiples of 512)
                const std::uint64_t delta = (1 + rng() % (8 * cs / 512)) * 512;
                resize(rng() % 2 || size() <= delta + cs ? size() + delta : size() - delta);
                break;
            }
            default: flush(); break;
            }
        }
        flush();
    }

    /// The model; with `torn`, writes may also tear at sector boundaries.
    crash_model finish(bool torn_writes = false) const {
        return {name_,    initial_,   data_ ? *data_ : bytes(), data_.has_value(), initial_guest_, *log_, ops_,
                backing_, torn_writes};
    }

private:
    static rec_image open(bytes file, std::shared_ptr<journal> log, std::shared_ptr<const bytes> backing,
                          qcow2::open_options opts, const bytes* data) {
        opts.writable = true;
        auto img = rec_image::open(recording(qcow2::io::memory(std::move(file)), log), opts,
                                   memory_resolver<recording>{std::move(backing), data, log});
        if (!img) FAIL("open: " << img.error().what());
        return std::move(*img);
    }

    void begin(guest_op op) {
        log_->push_back({ev::begin_op, ops_.size(), 0, {}});
        apply_op(guest_, op);
        ops_.push_back(std::move(op));
    }
    void durable() { log_->push_back({ev::durable, ops_.size(), 0, {}}); }

    std::string name_;
    std::shared_ptr<journal> log_;
    bytes initial_;
    std::shared_ptr<const bytes> backing_;
    std::optional<bytes> data_;
    rec_image img_;
    bytes guest_;
    bytes initial_guest_;
    std::vector<guest_op> ops_;
    std::uint64_t tag_ = 1;
};

// ------------------------------------------------------------------ judging one crash state

/// Empty when every cluster `img` provides itself (data and compressed runs) reads zero in
/// `got`: what the all-zero bit claims (clusters it leaves unallocated show the backing file).
template <class Image>
std::string layer_reads_zero(Image& img, const bytes& got) {
    for (std::uint64_t pos = 0; pos < img.size();) {
        auto m = img.map_range(pos, img.size() - pos);
        if (!m) return "map_range: " + m.error().what();
        const bool provided = m->state == qcow2::cluster_state::data || m->state == qcow2::cluster_state::compressed;
        if (provided && !all_zero(got.data() + pos, static_cast<std::size_t>(m->length)))
            return cat("the all-zero bit is set, but guest range [", pos, ", ", pos + m->length,
                       ") does not read zero");
        pos += m->length;
    }
    return {};
}

struct crash_stats {
    std::uint64_t intervals = 0; ///< flush intervals explored
    std::uint64_t states = 0;    ///< distinct files checked
    std::uint64_t dirty = 0;     ///< of them, with the dirty bit (repaired on the writable open)
    std::uint64_t all_zero = 0;  ///< of them, with the all-zero bit
    std::uint64_t rewritten = 0; ///< of them, written to after recovery
};

/// Subsets (as masks) of `k` unordered changes to rebuild crash states from, besides the
/// prefixes (which `crash_explorer` builds change by change): all of them for a few changes;
/// else each change lost alone (at most 48, evenly spread), the last six in every
/// combination, and a fixed-seed random sample.
std::vector<std::vector<bool>> choose_subsets(std::size_t k, std::mt19937_64& rng) {
    const std::size_t full_bits = crash_scale() > 1 ? 10 : 7;
    std::set<std::vector<bool>> out;
    if (k <= full_bits) {
        for (std::uint64_t m = 0; m < (std::uint64_t{1} << k); ++m) {
            std::vector<bool> v(k);
            for (std::size_t j = 0; j < k; ++j) v[j] = (m >> j) & 1;
            out.insert(std::move(v));
        }
        return {out.begin(), out.end()};
    }
    const std::size_t spread = 48 * crash_scale();
    for (std::size_t i = 0; i < std::min(k, spread); ++i) {
        std::vector<bool> all_but(k, true);
        all_but[k <= spread ? i : i * k / spread] = false;
        out.insert(std::move(all_but));
    }
    for (std::uint64_t m = 0; m < 64; ++m) {
        std::vector<bool> v(k, true);
        for (std::size_t j = 0; j < 6; ++j) v[k - 6 + j] = (m >> j) & 1;
        out.insert(std::move(v));
    }
    for (unsigned r = 0; r < 24 * crash_scale(); ++r) {
        std::vector<bool> v(k);
        for (std::size_t j = 0; j < k; ++j) v[j] = rng() & 1;
        out.insert(std::move(v));
    }
    return {out.begin(), out.end()};
}

/// The log with every write cut at 512-byte sector boundaries, each piece a change of its
/// own: a crash may then also tear a write (QCOW2_CRASH_TORN; sectors stay atomic).
journal torn(const journal& log) {
    journal out;
    for (const event& e : log) {
        if (e.kind != ev::write || e.data.size() <= 512) {
            out.push_back(e);
            continue;
        }
        for (std::uint64_t at = e.offset; at < e.offset + e.data.size();) {
            const std::uint64_t end = std::min<std::uint64_t>(e.offset + e.data.size(), (at / 512 + 1) * 512);
            const auto from = e.data.begin() + static_cast<std::ptrdiff_t>(at - e.offset);
            out.push_back({ev::write, at, 0, bytes(from, from + static_cast<std::ptrdiff_t>(end - at)), e.file});
            at = end;
        }
    }
    return out;
}

class crash_explorer {
public:
    explicit crash_explorer(const crash_model& m) : m_(m) {}

    void run() {
        const journal log = m_.torn || std::getenv("QCOW2_CRASH_TORN") ? torn(m_.log) : m_.log;
        number_.assign(log.size(), 0);
        for (std::size_t k = 0, n = 0; k < log.size(); ++k)
            if (is_file_change(log[k].kind)) number_[k] = n++;
        // Per file (0 the image, 1 the data file): its bytes as of its last flush, and the
        // changes logged since, which a crash may keep or lose.
        bytes base[2] = {m_.initial_file, m_.initial_data};
        std::vector<std::size_t> pending[2];
        bytes durable = m_.initial_guest;
        std::size_t durable_ops = 0, begun = 0, promised = 0;
        std::mt19937_64 rng(0x5EED);
        // The files a crash just before log entry `at` (a flush, or the end) may leave.
        auto explore_interval = [&] {
            // A durability promise made before this point holds for every file of the
            // interval: the call returned, so nothing it wrote may be lost.
            for (; durable_ops < promised; ++durable_ops) apply_op(durable, m_.ops[durable_ops]);
            const std::span<const guest_op> inflight(m_.ops.data() + durable_ops, begun - durable_ops);
            std::vector<std::size_t> changes(pending[0]);
            changes.insert(changes.end(), pending[1].begin(), pending[1].end());
            std::sort(changes.begin(), changes.end());
            ++stats_.intervals;
            std::unordered_set<std::size_t> seen;
            auto consider = [&](const bytes(&f)[2], const std::vector<bool>& mask) {
                auto hash = [](const bytes& b) {
                    return std::hash<std::string_view>{}(
                        std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
                };
                if (!seen.insert(hash(f[0]) * 31 + hash(f[1])).second) return;
                ++stats_.states;
                if (std::string why = check_state(f[0], f[1], durable, inflight); !why.empty()) {
                    std::string lost;
                    for (std::size_t j = 0; j < changes.size(); ++j)
                        if (!mask[j]) lost += cat(" #", number_[changes[j]]);
                    fail(f[0], f[1], cat("changes lost:", lost.empty() ? " none" : lost, ": ", why));
                }
            };
            // Every prefix (a crash at each point in time), built change by change; a change
            // that leaves the files as they were (zeroes over zeroes) gives no new state.
            {
                bytes f[2] = {base[0], base[1]};
                std::vector<bool> mask(changes.size(), false);
                for (std::size_t j = 0;; ++j) {
                    consider(f, mask);
                    while (j < changes.size() && changes_nothing(f[log[changes[j]].file], log[changes[j]]))
                        mask[j++] = true;
                    if (j == changes.size()) break;
                    apply_event(f[log[changes[j]].file], log[changes[j]]);
                    mask[j] = true;
                }
            }
            for (const auto& mask : choose_subsets(changes.size(), rng)) {
                bytes f[2] = {base[0], base[1]};
                for (std::size_t j = 0; j < changes.size(); ++j)
                    if (mask[j]) apply_event(f[log[changes[j]].file], log[changes[j]]);
                consider(f, mask);
            }
        };
        for (std::size_t k = 0; k < log.size(); ++k) {
            const event& e = log[k];
            if (is_file_change(e.kind)) {
                pending[e.file].push_back(k);
            } else if (e.kind == ev::begin_op) {
                begun = static_cast<std::size_t>(e.offset) + 1;
            } else if (e.kind == ev::durable) {
                promised = static_cast<std::size_t>(e.offset);
            } else if (e.kind == ev::flush) {
                explore_interval();
                for (const std::size_t j : pending[e.file]) apply_event(base[e.file], log[j]);
                pending[e.file].clear();
            }
        }
        explore_interval();
    }

    const std::vector<std::string>& failures() const noexcept { return failures_; }
    const crash_stats& stats() const noexcept { return stats_; }

private:
    std::string check_state(const bytes& file, const bytes& data, const bytes& durable,
                            std::span<const guest_op> inflight) {
        const bool v3 = file.size() >= 104 && std::to_integer<unsigned>(file[7]) == 3;
        const bool dirty = v3 && (std::to_integer<unsigned>(file[79]) & 1);
        const bool zero_bit = v3 && (std::to_integer<unsigned>(file[95]) & 4);
        stats_.dirty += dirty;
        stats_.all_zero += zero_bit;
        memory_resolver<qcow2::io::memory> resolve{m_.backing, m_.has_data_file ? &data : nullptr, {}};
        bytes got;
        {
            auto ro = mem_image::open(qcow2::io::memory(bytes(file)), qcow2::open_options{}, resolve);
            if (!ro) return "read-only open: " + ro.error().what();
            if (auto d = verify_guest(*ro, durable, inflight, got); !d.empty()) return "read-only: " + d;
            if (zero_bit)
                if (auto d = layer_reads_zero(*ro, got); !d.empty()) return d;
            // "Raw external data": the data file alone reads as the guest disk.
            if (m_.has_data_file && (std::to_integer<unsigned>(file[95]) & 2)) {
                bytes raw(data);
                raw.resize(static_cast<std::size_t>(ro->size()));
                if (auto d = qcow2::test::compare_guest(raw, durable, inflight); !d.empty())
                    return "the raw data file: " + d;
            }
            if (auto d = qcow2::test::check_no_corruption(*ro, dirty, "read-only"); !d.empty()) return d;
            // A bitmap not marked in use was stored whole: it must read.
            for (const auto& b : ro->bitmaps())
                if (!(b.flags & qcow2::bitmap_flags::in_use))
                    if (auto bits = ro->read_bitmap(b.name); !bits) return "bitmap '" + b.name + "': " + bits.error().what();
        }
        auto rw = mem_image::open(qcow2::io::memory(bytes(file)), qcow2::open_options{.writable = true}, resolve);
        if (!rw) return "writable open: " + rw.error().what();
        if (rw->header().incompatible_features & qcow2::features::dirty::mask)
            return "still dirty after the writable open";
        if (dirty) { // the open repaired the refcounts: all clean now, and no data lost
            if (auto d = qcow2::test::check_no_corruption(*rw, false, "after the repairing open"); !d.empty()) return d;
            if (auto d = verify_guest(*rw, durable, inflight, got); !d.empty()) return "after the repairing open: " + d;
        }
        if (stats_.states % 8 == 1) { // a sample: the recovered image is usable
            ++stats_.rewritten;
            const std::uint64_t len = std::min<std::uint64_t>(rw->cluster_size() + 1000, rw->size());
            const std::uint64_t off = (rw->size() - len) / 2;
            const bytes more = pattern(0xFFFF, off, len);
            if (auto r = rw->write(off, more); !r) return "a write after recovery: " + r.error().what();
            if (auto r = rw->flush(); !r) return "a flush after recovery: " + r.error().what();
            if (auto d = qcow2::test::check_no_corruption(*rw, false, "after a write after recovery"); !d.empty())
                return d;
            bytes back(more.size());
            if (auto r = rw->read(off, back); !r || back != more) return "a write after recovery does not read back";
        }
        return {};
    }

    void fail(const bytes& f, const bytes& data, const std::string& why) {
        if (failures_.size() < 12)
            failures_.push_back(cat(m_.name, ": crash before the end of interval ", stats_.intervals, ", ", why));
        if (dumped_) return;
        dumped_ = true;
        if (const char* dir = std::getenv("QCOW2_CRASH_DUMP")) {
            std::string stem = m_.name;
            for (char& c : stem)
                if (!std::isalnum(static_cast<unsigned char>(c))) c = '-';
            auto put = [&](const std::string& path, const bytes& b) {
                std::ofstream o(path, std::ios::binary);
                o.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
            };
            put(cat(dir, "/", stem, ".qcow2"), f);
            if (m_.backing) put(cat(dir, "/", stem, "-base.qcow2"), *m_.backing);
            if (m_.has_data_file) put(cat(dir, "/", stem, "-data.raw"), data);
        }
    }

    const crash_model& m_;
    std::vector<std::size_t>
        number_; ///< per log entry: its number among the file changes (as QCOW2_CRASH_TRACE prints it)
    crash_stats stats_;
    std::vector<std::string> failures_;
    bool dumped_ = false;
};

/// Prints a workload's log, one line per event, flush intervals numbered as failures name them.
void print_log(const crash_model& m) {
    std::printf("%s:\n  interval 1\n", m.name.c_str());
    std::uint64_t interval = 1, change = 0; // changes are numbered as failure messages name them
    for (const event& e : m.log) {
        switch (e.kind) {
        case ev::write:
            std::printf("    [%llu] write %zu bytes at 0x%llx%s\n", static_cast<unsigned long long>(change++),
                        e.data.size(), static_cast<unsigned long long>(e.offset), e.file ? " of the data file" : "");
            break;
        case ev::resize:
            std::printf("    [%llu] resize to %llu%s\n", static_cast<unsigned long long>(change++),
                        static_cast<unsigned long long>(e.offset), e.file ? " (data file)" : "");
            break;
        case ev::discard:
            std::printf("    [%llu] punch %llu bytes at 0x%llx%s\n", static_cast<unsigned long long>(change++),
                        static_cast<unsigned long long>(e.length), static_cast<unsigned long long>(e.offset),
                        e.file ? " of the data file" : "");
            break;
        case ev::flush:
            std::printf("  flush%s\n  interval %llu\n", e.file ? " of the data file" : "",
                        static_cast<unsigned long long>(++interval));
            break;
        case ev::begin_op: {
            const guest_op& op = m.ops[static_cast<std::size_t>(e.offset)];
            std::printf("    guest operation %llu: %zu bytes at %llu%s\n", static_cast<unsigned long long>(e.offset),
                        op.data.size(), static_cast<unsigned long long>(op.offset), op.new_size ? " (resize)" : "");
            break;
        }
        case ev::durable:
            std::printf("    (operations before %llu durable)\n", static_cast<unsigned long long>(e.offset));
            break;
        }
    }
}

/// Explores every crash state of a workload and reports (WARN) how many were checked.
crash_stats explore(const crash_model& m) {
    if (std::getenv("QCOW2_CRASH_TRACE")) print_log(m);
    crash_explorer x(m);
    x.run();
    const crash_stats& s = x.stats();
    std::uint64_t writes = 0;
    for (const event& e : m.log) writes += is_file_change(e.kind);
    WARN(m.name << ": " << s.states << " crash states checked (" << s.intervals << " flush intervals, " << writes
                << " logged writes/resizes/punches, " << m.ops.size() << " guest operations; " << s.dirty << " dirty, "
                << s.all_zero << " with the all-zero bit, " << s.rewritten << " written after recovery)");
    for (const auto& f : x.failures()) UNSCOPED_INFO(f);
    CHECK(x.failures().empty());
    CHECK(s.states > 0);
    return s;
}

qcow2::create_options options(std::uint64_t size, std::uint64_t cluster_size) {
    qcow2::create_options o;
    o.size = size;
    o.cluster_size = cluster_size;
    return o;
}

constexpr std::uint64_t KiB = 1024, MiB = 1024 * 1024;

} // namespace

TEST_CASE("crash: allocating writes, partial-cluster COW, zero writes, discards, compressed writes", "[crash]") {
    const std::uint64_t cs = 4 * KiB, l2 = 2 * MiB; // an L2 table maps 2 MiB
    workload w("allocating writes", prepare(options(8 * MiB, cs)));
    REQUIRE(w.image().has<qcow2::features::all_zero>()); // a fresh image: the first write clears the bit
    w.write(3 * cs, 2 * cs);                             // aligned, allocating: the first L2 table
    w.write(l2 + 100, 10000); // a second L2 table; partial clusters at both ends (COW from zero)
    w.flush();
    w.write(3 * cs + 1000, 200);   // in place (COPIED)
    w.write(l2 + 5000, 3000);      // in place, across clusters
    w.write(5 * MiB + 4000, 9000); // a third L2 table
    w.flush();
    w.zero(3 * cs, 2 * cs, qcow2::zero_mode::unmap); // frees two clusters
    w.zero(l2, cs);                                  // keeps its allocation
    w.zero(l2 + cs + 10, 100);                       // inside a cluster: zero bytes written
    w.discard(5 * MiB, 4 * cs);                      // frees
    w.flush();
    // Into the preallocated zero cluster: written in place, and its L2 entry turns from
    // zero to data with no refcount change; its old bytes must never show again.
    w.write(l2 + 1000, 100);
    w.flush();
    w.compressed(6 * MiB);                 // a fourth L2 table
    w.compressed(6 * MiB + cs);            // packed after the first
    w.compressed(6 * MiB + 2 * cs, false); // does not shrink: stored plain
    w.flush();
    w.write(6 * MiB + 100, 50); // COW from a compressed cluster drops its reference
    w.write(3 * cs, cs);        // reallocates a freed cluster
    w.discard(6 * MiB, 3 * cs); // the rest of the compressed clusters
    w.write(7 * MiB - 7, 3 * cs + 14);
    w.close();
    if (crash_scale() > 1) w.random_steps(1, 40 * crash_scale());
    explore(w.finish(true)); // torn writes too: data, L2 ranges and header rewrites in pieces
}

TEST_CASE("crash: refcount blocks are created and the refcount table grows (512-byte clusters, 64-bit refcounts)",
          "[crash]") {
    // One refcount block covers 64 clusters (32 KiB of file) and the first refcount table
    // 64 blocks (2 MiB): fill the file to just below that unrecorded, then cross it.
    qcow2::create_options o = options(4 * MiB, 512);
    o.refcount_bits = 64;
    std::uint64_t table0 = 0, guest_end = 0;
    bytes start = prepare(o, [&](mem_image& img) {
        table0 = img.header().refcount_table_offset;
        for (std::uint64_t off = 0; img.backend().bytes().size() < 1900 * KiB; off += 16 * KiB) {
            require_ok(img.write(off, pattern(99, off, 16 * KiB)), "prefix write");
            guest_end = off + 16 * KiB;
        }
    });
    workload w("refcount growth", std::move(start));
    REQUIRE(w.image().header().refcount_table_clusters == 1);
    const unsigned n = 14 * crash_scale();
    for (unsigned k = 0; k < n && guest_end + 16 * KiB <= w.size(); ++k) {
        w.write(guest_end, 16 * KiB);
        guest_end += 16 * KiB;
        if (k % 4 == 3) w.flush();
    }
    w.discard(64 * KiB, 48 * KiB); // frees clusters under old blocks
    w.zero(200 * KiB, 20 * KiB, qcow2::zero_mode::unmap);
    w.write(70 * KiB, 30 * KiB); // reuses them
    w.compressed(guest_end);
    w.compressed(guest_end + 512);
    w.write(guest_end + 100, 1000);
    w.close();
    // The workload did what it is named for.
    CHECK(w.image().header().refcount_table_offset != table0);
    CHECK(w.image().header().refcount_table_clusters > 1);
    explore(w.finish());
}

TEST_CASE("crash: the L1 table grows and moves (resize to a much larger size), then shrinks", "[crash]") {
    // 512-byte clusters: an L1 entry maps 32 KiB, the first L1 cluster 2 MiB.
    const std::uint64_t cs = 512;
    bytes start = prepare(options(1 * MiB, cs), [&](mem_image& img) {
        require_ok(img.write(10 * KiB, pattern(98, 10 * KiB, 40 * KiB)), "prefix write");
    });
    workload w("L1 growth", std::move(start));
    const std::uint64_t l1_before = w.image().header().l1_table_offset;
    w.write(100, 3000);
    w.resize(16 * MiB); // L1: 32 entries in one cluster -> 512 entries in 8 new clusters
    CHECK(w.image().header().l1_table_offset != l1_before);
    w.write(12 * MiB + 300, 5000);
    w.write(16 * MiB - 700, 700);
    w.write(20 * KiB, 2 * cs); // an old L2 table, through the moved L1
    w.flush();
    w.zero(12 * MiB, 4 * KiB, qcow2::zero_mode::unmap);
    w.resize(6 * MiB); // drops the L2 tables past the new end; the L1 stays where it is
    w.write(6 * MiB - 1000, 1000);
    w.close();
    explore(w.finish());
}

TEST_CASE("crash: shrinking frees clusters and truncates the file; growing again reads zero", "[crash]") {
    const std::uint64_t cs = 4 * KiB;
    bytes start = prepare(options(4 * MiB, cs), [&](mem_image& img) {
        for (std::uint64_t off = 0; off < 4 * MiB; off += 512 * KiB)
            require_ok(img.write(off, pattern(97, off, 300 * KiB)), "prefix write");
        require_ok(img.write_compressed(3 * MiB + 400 * KiB, compressible(97, cs)), "prefix compressed write");
    });
    workload w("shrink", std::move(start));
    w.write(1 * MiB - 300, 600);
    w.resize(1 * MiB + 1536); // mid-cluster: the rest of that cluster stays allocated past the end
    w.write(1 * MiB, 1536);
    w.resize(3 * MiB); // the rest of the old last cluster must read zero again
    w.write(2 * MiB + 7, 5000);
    w.compressed(3 * MiB - cs);
    w.resize(2 * MiB + 512);
    w.close();
    explore(w.finish());
}

TEST_CASE("crash: make_empty frees everything and sets the all-zero bit only once that is durable", "[crash]") {
    const std::uint64_t cs = 4 * KiB;
    bytes start = prepare(options(2 * MiB, cs),
                          [&](mem_image& img) { require_ok(img.write(0, pattern(96, 0, 700 * KiB)), "prefix write"); });
    workload w("make_empty", std::move(start));
    w.write(1 * MiB, 3 * cs);
    w.compressed(1 * MiB + 4 * cs);
    w.flush();
    w.make_empty();
    CHECK(w.image().has<qcow2::features::all_zero>());
    w.flush();
    w.write(5000, 3 * cs); // clears the bit again
    w.compressed(2 * MiB - cs);
    w.zero(5000, 100);
    w.make_empty();
    w.close();
    explore(w.finish(true)); // torn writes too: the header rewrite that names and sets the bit
}

TEST_CASE("crash: lazy refcounts (the dirty bit protects unordered refcounts; a writable open repairs)", "[crash]") {
    const std::uint64_t cs = 4 * KiB;
    qcow2::create_options o = options(4 * MiB, cs);
    o.lazy_refcounts = true;
    bytes start =
        prepare(o, [&](mem_image& img) { require_ok(img.write(0, pattern(95, 0, 100 * KiB)), "prefix write"); });
    workload w("lazy refcounts", std::move(start));
    w.write(3 * MiB, 2 * cs); // sets the dirty bit first
    w.write(50 * KiB + 7, 3000);
    w.zero(0, 8 * KiB, qcow2::zero_mode::unmap);
    w.discard(16 * KiB, 16 * KiB);
    w.compressed(2 * MiB);
    w.flush();
    w.write(2 * MiB + 100, 100); // COW from the compressed cluster
    w.write(0, 5 * cs);          // reuses freed clusters
    w.close();                   // clears the dirty bit
    w.write(1 * MiB, 3 * cs);    // sets it again
    w.discard(3 * MiB, 2 * cs);
    w.flush(); // and the log ends dirty: the image was never closed
    explore(w.finish());
}

TEST_CASE("crash: a backing file shows through until written (COW from the backing file, zero clusters hide it)",
          "[crash]") {
    const std::uint64_t cs = 4 * KiB;
    auto base = std::make_shared<const bytes>(prepare(options(4 * MiB, 64 * KiB), [&](mem_image& img) {
        require_ok(img.write(0, pattern(94, 0, 4 * MiB)), "writing the backing image");
    }));
    // Version 2 has no zero clusters: zero writes write zeroes, discards do nothing.
    for (const unsigned version : {3u, 2u}) {
        qcow2::create_options o = options(4 * MiB, cs);
        o.version = version;
        o.backing_file = "base.qcow2";
        o.backing_format = "qcow2";
        workload w(version == 3 ? "backing file" : "backing file, version 2", prepare(o, {}, base), base);
        w.write(100, 200);             // a partial cluster: the rest comes from the backing file
        w.write(3 * cs - 10, cs + 20); // two partial clusters
        w.flush();
        w.zero(1 * MiB, 3 * cs);            // zero clusters hide the backing data
        w.zero(1 * MiB + 5 * cs + 3, 1000); // inside a cluster: zero bytes, COW around them
        w.discard(2 * MiB, 2 * cs);         // reads zero, not the backing data (version 3)
        w.compressed(3 * MiB);
        w.flush();
        w.write(1 * MiB + 100, 100); // a partial write into a zero cluster
        w.write(3 * MiB + 50, 50);   // into the compressed cluster
        w.zero(100, 100, qcow2::zero_mode::unmap);
        w.close();
        explore(w.finish());
    }
}

TEST_CASE("crash: extended L2 entries (subcluster allocation and zero bits)", "[crash]") {
    const std::uint64_t cs = 16 * KiB, sc = 512;
    qcow2::create_options o = options(4 * MiB, cs);
    o.extended_l2 = true;
    workload w("extended L2", prepare(o));
    w.write(300, 700); // two subclusters, partly
    w.write(cs + 1000, 5000);
    w.flush();
    w.write(3 * sc, 2 * sc);      // more subclusters of an allocated cluster
    w.zero(cs + 2 * sc, 4 * sc);  // zero bits
    w.zero(cs + 7 * sc + 5, 100); // inside a subcluster
    w.discard(0, cs);
    w.compressed(2 * cs);
    w.flush();
    w.write(cs + 3 * sc + 5, 10); // into a zeroed subcluster of an allocated cluster: in place
    w.flush();
    w.write(2 * cs + 600, 100); // into a compressed cluster: every subcluster allocated
    w.write(0, sc);
    w.zero(2 * cs, cs, qcow2::zero_mode::unmap);
    w.close();
    explore(w.finish());
}

TEST_CASE("crash: version 2 images (no zero clusters)", "[crash]") {
    const std::uint64_t cs = 4 * KiB;
    qcow2::create_options o = options(4 * MiB, cs);
    o.version = 2;
    workload w("version 2", prepare(o));
    w.write(1000, 3 * cs);
    w.write(2 * MiB + 5, 100);
    w.flush();
    w.zero(0, 2 * cs);        // freed (no backing file): unallocated reads zero
    w.zero(2 * MiB + 50, 10); // zero bytes
    w.discard(cs, 2 * cs);
    w.compressed(3 * MiB);
    w.flush();
    w.write(3 * MiB + 9, 9);
    w.resize(6 * MiB);
    w.write(5 * MiB, cs);
    w.close();
    explore(w.finish());
}

TEST_CASE("crash: an image with an internal snapshot (qemu-img snapshot -c): shared clusters are copied, never changed",
          "[crash]") {
    const std::uint64_t cs = 4 * KiB;
    bytes made = prepare(options(4 * MiB, cs), [&](mem_image& img) {
        require_ok(img.write(0, pattern(93, 0, 64 * KiB)), "prefix write");
        require_ok(img.write(2 * MiB, pattern(93, 2 * MiB, 64 * KiB)), "prefix write");
        require_ok(img.write_compressed(3 * MiB, compressible(93, cs)), "prefix compressed write");
    });
    // (qemu-img works on files; the workload then runs on the file's bytes in memory.)
    auto snapped = qcow2::test::with_qemu_snapshot(made);
    if (!snapped) {
        WARN("qemu-img not found: the snapshot workload is skipped");
        return;
    }
    workload w("internal snapshot", std::move(*snapped));
    REQUIRE(w.image().snapshots().size() == 1);
    w.write(100, 200);               // the shared L2 table is copied, and the shared data cluster
    w.write(2 * MiB + 5000, 3 * cs); // the second L2 table, partly over shared clusters
    w.flush();
    w.zero(cs, cs); // a shared cluster cannot keep its allocation
    w.zero(2 * cs, cs, qcow2::zero_mode::unmap);
    w.discard(2 * MiB, cs);
    w.compressed(4 * cs);      // over a shared cluster
    w.write(3 * MiB + 10, 10); // into the shared compressed cluster
    w.flush();
    w.write(0, 2 * cs); // now in clusters the image owns alone
    w.resize(6 * MiB);
    w.write(5 * MiB, cs);
    w.close();
    explore(w.finish());
}

TEST_CASE("crash: small caches (tables written in the middle of operations to make room)", "[crash]") {
    // 512-byte clusters: an L2 table maps 32 KiB; a cache of 2 KiB holds 4 tables, so long
    // operations commit in the middle, and refcount blocks are written back under pressure.
    const std::uint64_t cs = 512;
    bytes start = prepare(options(4 * MiB, cs),
                          [&](mem_image& img) { require_ok(img.write(0, pattern(92, 0, 300 * KiB)), "prefix write"); });
    workload w("small caches", std::move(start), {}, qcow2::open_options{.cache_bytes = 2048});
    w.write(1 * MiB + 100, 300 * KiB); // ten L2 tables in one call
    w.zero(0, 200 * KiB, qcow2::zero_mode::unmap);
    w.flush();
    w.write(50 * KiB, 200 * KiB); // reuses the freed clusters, across tables
    w.discard(1 * MiB, 150 * KiB);
    for (std::uint64_t k = 0; k < 6; ++k) w.compressed(2 * MiB + k * 40 * KiB);
    w.write(2 * MiB + 100, 40 * KiB * 5);
    w.close();
    explore(w.finish());
}

TEST_CASE("crash: an external data file (two files, each durable only through its own flush)", "[crash]") {
    for (const bool raw : {false, true}) {
        const std::uint64_t cs = 4 * KiB;
        qcow2::create_options o = options(4 * MiB, cs);
        o.data_file = "data.raw";
        o.data_file_raw = raw;
        auto [image_bytes, data_bytes] = prepare_with_data_file(o);
        workload w(raw ? "data file (raw)" : "data file", std::move(image_bytes), {}, {}, std::move(data_bytes));
        REQUIRE(w.image().data_file());
        w.write(1000, 3 * cs);
        w.write(2 * MiB + 5, 100); // a second L2 table
        w.flush();
        w.write(1500, 100); // in place
        w.zero(0, 2 * cs);  // zero clusters (and zeroes in a raw data file)
        w.zero(2 * MiB, cs, qcow2::zero_mode::unmap);
        w.discard(3 * cs, 2 * cs);
        w.flush();
        w.write(0, 100);   // into a zero cluster
        w.resize(6 * MiB); // the data file follows
        w.write(5 * MiB, 2 * cs);
        w.resize(3 * MiB);
        w.close();
        explore(w.finish());
    }
}

TEST_CASE("crash: random operations (fixed seeds) on several layouts", "[crash]") {
    struct layout {
        const char* name;
        qcow2::create_options o;
    };
    std::vector<layout> layouts;
    layouts.push_back({"random, 4 KiB clusters", options(3 * MiB, 4 * KiB)});
    layouts.push_back({"random, 512-byte clusters, 8-bit refcounts", options(1 * MiB, 512)});
    layouts.back().o.refcount_bits = 8;
    layouts.push_back({"random, 16 KiB clusters, extended L2", options(3 * MiB, 16 * KiB)});
    layouts.back().o.extended_l2 = true;
    layouts.push_back({"random, 4 KiB clusters, 2-bit refcounts", options(2 * MiB, 4 * KiB)});
    layouts.back().o.refcount_bits = 2; // compressed clusters share host clusters up to refcount 3
    layouts.push_back({"random, preallocation=metadata", options(2 * MiB, 4 * KiB)});
    layouts.back().o.prealloc = qcow2::preallocation::metadata; // writes land in place, zero writes keep clusters
    std::uint64_t seed = 11;
    for (const auto& l : layouts) {
        workload w(l.name, prepare(l.o, [&](mem_image& img) {
                       require_ok(img.write(0, pattern(91, 0, img.size() / 3)), "prefix write");
                   }));
        w.random_steps(seed++, 30 * crash_scale());
        w.close();
        explore(w.finish());
    }
}

TEST_CASE("crash: repairs are crash-safe (the writable open of a dirty image; check with repair of leaks)", "[crash]") {
    const std::uint64_t cs = 4 * KiB;
    qcow2::create_options o = options(4 * MiB, cs);
    o.lazy_refcounts = true;
    // A lazy-refcounts image left dirty: written, flushed, never closed.
    bytes dirty =
        prepare(o, [&](mem_image& img) { require_ok(img.write(0, pattern(90, 0, 64 * KiB)), "prefix write"); });
    {
        auto img = mem_image::open(qcow2::io::memory(bytes(dirty)), qcow2::open_options{.writable = true});
        REQUIRE(img);
        for (std::uint64_t k = 0; k < 12; ++k)
            require_ok(img->write(k * 300 * KiB + 1000, pattern(90 + k, k * 300 * KiB + 1000, 20 * KiB)), "write");
        require_ok(img->write_compressed(3 * MiB, compressible(90, cs)), "compressed write");
        require_ok(img->discard(0, 16 * KiB), "discard");
        require_ok(img->flush(), "flush");
        dirty.assign(img->backend().bytes().begin(), img->backend().bytes().end());
    } // (the destructor's close clears the bit in its own copy)
    REQUIRE((std::to_integer<unsigned>(dirty[79]) & 1) != 0);
    SECTION("the refcounts a lazy image left behind") {
        workload w("repairing open", dirty); // the repair is the first thing the log records
        w.write(5000, 3 * cs);               // and writes after it
        w.close();
        explore(w.finish());
    }
    SECTION("a refcount structure to rebuild (its first block zeroed)") {
        bytes broken = dirty;
        const std::uint64_t table = qcow2::detail::load_be64(broken, 48);
        const std::uint64_t block = qcow2::detail::load_be64(broken, static_cast<std::size_t>(table));
        std::fill(broken.begin() + static_cast<std::ptrdiff_t>(block),
                  broken.begin() + static_cast<std::ptrdiff_t>(block + cs), std::byte{0});
        workload w("rebuilding open", std::move(broken));
        w.write(5000, 3 * cs);
        w.close();
        explore(w.finish());
    }
    SECTION("leaks repaired by check") {
        // A clean image with leaked clusters: free clusters inside the file (freed by a
        // discard) given refcount 1 by hand, as a crash after an allocation leaves them.
        // (Raising the refcount of a cluster in use would be no mere leak: its COPIED flag
        // would then be wrong; past the end of the file, check looks at no refcount.)
        bytes leaky = prepare(options(4 * MiB, cs), [&](mem_image& img) {
            require_ok(img.write(0, pattern(89, 0, 200 * KiB)), "prefix write");
            require_ok(img.discard(64 * KiB, 64 * KiB), "prefix discard");
        });
        const std::uint64_t table = qcow2::detail::load_be64(leaky, 48);
        const std::uint64_t block = qcow2::detail::load_be64(leaky, static_cast<std::size_t>(table));
        const std::span<std::byte> b(leaky.data() + block, cs);
        unsigned leaked = 0;
        for (std::uint64_t k = 1; k < leaky.size() / cs; ++k)
            if (qcow2::get_refcount(b, k, 4) == 0) {
                qcow2::set_refcount(b, k, 4, 1);
                ++leaked;
            }
        REQUIRE(leaked >= 8);
        workload w("check -r leaks", std::move(leaky));
        w.repair(qcow2::check_repair::leaks);
        w.write(100, 5000);
        w.close();
        explore(w.finish());
    }
}

TEST_CASE("crash: persistent bitmaps (in use from the first write, stored at close; bitmap operations)", "[crash]") {
    const std::uint64_t cs = 4 * KiB;
    bytes start = prepare(options(4 * MiB, cs), [&](mem_image& img) {
        require_ok(img.add_bitmap("on", 512), "add_bitmap");
        require_ok(img.add_bitmap("off", 0, false), "add_bitmap");
    });
    workload w("bitmaps", std::move(start));
    w.write(1000, 3 * cs); // the enabled bitmap is marked in use first
    w.zero(64 * KiB, cs);
    w.flush();
    auto& img = w.image();
    require_ok(img.add_bitmap("new", 8 * KiB), "add_bitmap"); // stores 'on' (new table and directory) first
    w.write(2 * MiB, 5000);
    auto on = img.read_bitmap("on");
    REQUIRE(on);
    require_ok(img.merge_bitmap("off", *on), "merge_bitmap");
    require_ok(img.clear_bitmap("new"), "clear_bitmap");
    require_ok(img.enable_bitmap("off"), "enable_bitmap");
    w.discard(0, 64 * KiB);
    require_ok(img.remove_bitmap("on"), "remove_bitmap");
    w.write(3 * MiB, cs);
    w.close();
    explore(w.finish(true)); // torn writes too: directories, tables and header rewrites in pieces
}

TEST_CASE("crash: the explorer catches a writer whose flushes do nothing (negative control)", "[crash]") {
    // The same log with every flush taken out is what a writer that never orders its writes
    // would produce: some crash must then lose durable data or corrupt the image, or this
    // test proves nothing.
    const std::uint64_t cs = 4 * KiB;
    bytes start = prepare(options(2 * MiB, cs), [&](mem_image& img) {
        require_ok(img.write(0, pattern(88, 0, 64 * KiB)), "prefix write");
        require_ok(img.write_compressed(1 * MiB, compressible(88, cs)), "prefix compressed write");
    });
    workload w("unflushed", std::move(start));
    w.write(100, 200);          // COW into a new cluster
    w.write(1 * MiB + 10, 10);  // COW from the compressed cluster, which is freed
    w.write(512 * KiB, 2 * cs); // a new cluster (maybe the freed one)
    w.flush();
    crash_model m = w.finish();
    std::erase_if(m.log, [](const event& e) { return e.kind == ev::flush; });
    crash_explorer x(m);
    x.run();
    INFO(x.stats().states << " crash states checked");
    CHECK_FALSE(x.failures().empty());
}
