// SPDX-License-Identifier: MIT
// What the all-zero bit buys: `known_zeroes` (the bits of the chain, O(chain length))
// against the crawl that answers the same question without the bit (every L2 entry of the
// image, and every data run checked for holes or read), on one image.
//
//   qcow2_bench_known_zeroes IMAGE [CRAWLS]
//
// IMAGE should carry the bit (made by `qcow2 create`, e.g. with preallocation=metadata, so
// that every cluster is mapped and the crawl has all of its L2 tables to read). Prints both
// times and their ratio, one line each, and exits 1 when the two answers disagree.
#include <qcow2/qcow2.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s IMAGE [CRAWLS]\n", argv[0]);
        return 2;
    }
    const int crawls = argc > 2 ? std::max(1, std::atoi(argv[2])) : 3;
    auto file = qcow2::io::posix_file::open(argv[1], qcow2::io::open_mode::read_only);
    if (!file) {
        std::fprintf(stderr, "%s\n", file.error().what().c_str());
        return 2;
    }
    auto img = qcow2::image::open(std::move(*file), {}, qcow2::posix_resolver(argv[1]));
    if (!img) {
        std::fprintf(stderr, "%s\n", img.error().what().c_str());
        return 2;
    }
    using clock = std::chrono::steady_clock;

    // The bits: many calls, the time of one.
    constexpr int calls = 1000000;
    bool bits = false;
    const auto t0 = clock::now();
    for (int i = 0; i < calls; ++i) {
        bits ^= qcow2::known_zeroes(*img);
        asm volatile("" : : "g"(&bits) : "memory"); // keep every call
    }
    const double bit_s = std::chrono::duration<double>(clock::now() - t0).count() / calls;
    bits = qcow2::known_zeroes(*img);

    // The crawl: what a reader without the bit must do.
    double crawl_s = 1e300;
    bool crawled = false;
    for (int i = 0; i < crawls; ++i) {
        const auto c0 = clock::now();
        auto nz = qcow2::detail::first_nonzero(*img);
        if (!nz) {
            std::fprintf(stderr, "crawl: %s\n", nz.error().what().c_str());
            return 2;
        }
        crawl_s = std::min(crawl_s, std::chrono::duration<double>(clock::now() - c0).count());
        crawled = !*nz && !img->has_backing();
    }
    std::printf("known_zeroes: %s in %.1f ns\n", bits ? "zero" : "not known", bit_s * 1e9);
    std::printf("crawl of %llu L1 entries: %s in %.3f s (best of %d)\n", static_cast<unsigned long long>(img->header().l1_size),
                crawled ? "zero" : "not zero", crawl_s, crawls);
    std::printf("ratio: %.0f\n", crawl_s / bit_s);
    return bits && !crawled ? 1 : 0;
}
