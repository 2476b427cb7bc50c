// SPDX-License-Identifier: MIT
// Tutorial 5: gives an image its own memory (a fixed arena, through std::pmr) and counts
// what opening and reading an image allocate, then does the same with an allocator class.
//
// Everything an image allocates (the L1 table, the L2 table cache, cluster buffers) goes
// through its Allocator template parameter. A std::pmr::polymorphic_allocator picks the
// memory at run time: here a counting resource on top of a monotonic arena. Any standard
// Allocator works too, picked at compile time: here one that counts, on top of operator new.
#include <qcow2/qcow2.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory_resource>
#include <vector>

namespace {

// A memory_resource that counts, then passes every request to another resource.
class counting_resource : public std::pmr::memory_resource {
public:
    explicit counting_resource(std::pmr::memory_resource* upstream) : upstream_(upstream) {}
    std::size_t bytes = 0;              // allocated so far
    std::size_t allocations = 0;        // how many times
    std::size_t freed = 0;              // bytes given back
    std::array<std::size_t, 8> sizes{}; // the first few requests, to see what they are

private:
    void* do_allocate(std::size_t n, std::size_t align) override {
        if (allocations < sizes.size()) sizes[allocations] = n;
        bytes += n;
        ++allocations;
        return upstream_->allocate(n, align);
    }
    void do_deallocate(void* p, std::size_t n, std::size_t align) override {
        freed += n;
        upstream_->deallocate(p, n, align);
    }
    bool do_is_equal(const std::pmr::memory_resource& o) const noexcept override { return this == &o; }
    std::pmr::memory_resource* upstream_;
};

// An Allocator of our own: what std::allocator does, plus a count. The image rebinds it to
// the element types it needs (std::allocator_traits), so it must convert between them.
struct tally {
    std::size_t allocations = 0, bytes = 0, freed = 0;
};
template <class T>
struct counting_allocator {
    using value_type = T;
    tally* counts;
    explicit counting_allocator(tally* t) noexcept : counts(t) {}
    template <class U>
    counting_allocator(const counting_allocator<U>& o) noexcept : counts(o.counts) {}
    T* allocate(std::size_t n) {
        ++counts->allocations;
        counts->bytes += n * sizeof(T);
        return std::allocator<T>().allocate(n);
    }
    void deallocate(T* p, std::size_t n) noexcept {
        counts->freed += n * sizeof(T);
        std::allocator<T>().deallocate(p, n);
    }
    template <class U>
    bool operator==(const counting_allocator<U>& o) const noexcept {
        return counts == o.counts;
    }
};

// The image type: the in-memory backend, the default features, and a polymorphic allocator.
using pmr_image =
    qcow2::basic_image<qcow2::io::memory, qcow2::maintained_features, std::pmr::polymorphic_allocator<std::byte>>;

int fail(const char* what, const qcow2::error& e) {
    std::fprintf(stderr, "%s: %s\n", what, e.what().c_str());
    return 1;
}

// A small image with some data, made with the default allocator.
qcow2::result<qcow2::io::memory> make_file() {
    qcow2::create_options opts;
    opts.size = 256 << 20;
    auto created = qcow2::memory_image::create(qcow2::io::memory{}, opts);
    if (!created) return created.error();
    qcow2::memory_image img = std::move(*created).release();
    const std::vector<std::byte> data(64 * 1024, std::byte{0x42});
    if (auto r = img.write(0, data); !r) return r.error();
    if (auto r = img.close(); !r) return r.error();
    return std::move(img.backend());
}

} // namespace

int main() {
    auto file = make_file();
    if (!file) return fail("making the image", file.error());

    // The arena: a fixed 2 MiB buffer, and nothing else. Its upstream is the null
    // resource, so going past the arena fails instead of quietly calling operator new.
    alignas(std::max_align_t) static std::array<std::byte, 2 << 20> arena_bytes;
    std::pmr::monotonic_buffer_resource arena(arena_bytes.data(), arena_bytes.size(), std::pmr::null_memory_resource());
    counting_resource counter(&arena);
    const std::pmr::polymorphic_allocator<std::byte> alloc(&counter);

    {
        // The L2 cache is the big allocation, made once at open, sized by cache_bytes (it never
        // grows with the image): room for four tables of 64 KiB here. An image opened read-only
        // never needs more slots than its L1 table has entries (at least two are kept), and
        // this 256 MiB image has one, so two tables: 131072 bytes.
        qcow2::open_options opts;
        opts.cache_bytes = 4 * 65536;
        auto img = pmr_image::open(std::move(*file), opts, qcow2::deny_files{}, alloc);
        if (!img) return fail("open", img.error());
        std::printf("open: %zu bytes in %zu allocations:", counter.bytes, counter.allocations);
        for (std::size_t i = 0; i < counter.allocations && i < counter.sizes.size(); ++i)
            std::printf(" %zu", counter.sizes[i]);
        std::printf("\n");

        // Reading allocates nothing more: the L2 table goes into the cache made at open.
        const std::size_t before = counter.bytes;
        std::vector<std::byte> sector(512);
        if (auto r = img->read(0, sector); !r) return fail("read", r.error());
        std::printf("read at 0: 0x%02x\n", static_cast<unsigned>(sector[0]));
        if (auto r = img->read(100 << 20, sector); !r) return fail("read", r.error());
        std::printf("two reads: %zu more bytes\n", counter.bytes - before);
    } // the image is destroyed here, and gives its memory back to the resource

    std::printf("freed when the image was destroyed: %s\n", counter.freed == counter.bytes ? "everything" : "NOT all");
    // A monotonic arena ignores deallocation: the memory comes back when `arena` goes away.
    std::printf("arena used: %zu of %zu bytes\n", counter.bytes, arena_bytes.size());

    // The same image type with the allocator class: nothing to set up but the tally. The
    // default open_options allow a 1 MiB L2 cache; read-only, this image takes two tables again.
    auto file2 = make_file();
    if (!file2) return fail("making the image", file2.error());
    tally t;
    {
        using counted_image =
            qcow2::basic_image<qcow2::io::memory, qcow2::maintained_features, counting_allocator<std::byte>>;
        auto img = counted_image::open(std::move(*file2), {}, qcow2::deny_files{}, counting_allocator<std::byte>(&t));
        if (!img) return fail("open", img.error());
        std::vector<std::byte> sector(512);
        if (auto r = img->read(0, sector); !r) return fail("read", r.error());
        std::printf("counting_allocator: %zu bytes in %zu allocations while open, read 0x%02x\n", t.bytes,
                    t.allocations, static_cast<unsigned>(sector[0]));
    }
    std::printf("counting_allocator freed: %s\n", t.freed == t.bytes && t.bytes > 0 ? "everything" : "NOT all");
    return counter.freed == counter.bytes && t.freed == t.bytes ? 0 : 1;
}
