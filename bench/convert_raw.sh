#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# qcow2 convert -O raw against qemu-img convert -O raw, on a real filesystem image.
#
#   bench/convert_raw.sh [QCOW2_CLI]
#
# QCOW2_CLI: the qcow2 CLI to time (a Release build; default: build-release/bin/qcow2,
# then build/bin/qcow2). Needs qemu-img, hyperfine, mke2fs, python3, GNU time.
#
# In /dev/shm (or /tmp when /dev/shm is missing or short of space; BENCH_DIR overrides):
#   fs.raw          a 2 GiB ext4 filesystem holding /usr/share (mke2fs -d), sparse
#   fs.qcow2        qemu-img convert -O qcow2 fs.raw
#   fs-zlib.qcow2   qemu-img convert -c -O qcow2 fs.raw
#   fs-zstd.qcow2   qemu-img convert -c -O qcow2 -o compression_type=zstd fs.raw
# For each form, one hyperfine run (--warmup 1 --runs 5) times both converters writing
# out.raw (removed before every run); each output must equal fs.raw (cmp). Peak RSS is
# GNU time's %M of one more run of each. `cp --sparse=always fs.raw` is a reference line.
# Prints a table of medians, the ratio qemu-img / qcow2 and peak RSS; keeps the hyperfine
# JSON exports in the work directory. KEEP=1 keeps the images for another run.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
qcow2=${1:-}
if [[ -z $qcow2 ]]; then
    for c in "$here/../build-release/bin/qcow2" "$here/../build/bin/qcow2"; do
        [[ -x $c ]] && { qcow2=$c; break; }
    done
fi
[[ -n $qcow2 && -x $qcow2 ]] || { echo "usage: $0 path/to/qcow2 (a Release build of the CLI)" >&2; exit 2; }
qcow2=$(cd "$(dirname "$qcow2")" && pwd)/$(basename "$qcow2")

for tool in qemu-img hyperfine mke2fs python3 cmp; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is not installed" >&2; exit 2; }
done
timer=/usr/bin/time
if ! "$timer" -f %M true >/dev/null 2>&1; then
    echo "$0: GNU time is missing (apt-get install time)" >&2
    exit 2
fi

# The work directory: 2 GiB image + 3 conversions + outputs need about 6 GiB at most.
need_kib=$((6 * 1024 * 1024))
dir=${BENCH_DIR:-}
if [[ -z $dir ]]; then
    for base in /dev/shm /tmp; do
        if [[ -d $base ]] && (($(df -Pk "$base" | awk 'NR==2 {print $4}') > need_kib)); then
            dir=$base/qcow2-bench
            break
        fi
    done
fi
[[ -n $dir ]] || { echo "$0: no directory with 6 GiB free (set BENCH_DIR)" >&2; exit 2; }
mkdir -p "$dir"
cd "$dir"
cleanup() {
    rm -f out.raw cp.raw
    [[ -n ${KEEP:-} ]] || rm -f fs.raw fs.qcow2 fs-zlib.qcow2 fs-zstd.qcow2
}
trap cleanup EXIT

# The filesystem: all of /usr/share when it fits in 2 GiB with room to spare, else a subset.
if [[ ! -f fs.raw ]]; then
    share_kib=$(du -sk /usr/share 2>/dev/null | awk '{print $1}')
    if ((share_kib < 1600 * 1024)); then
        src=/usr/share
    else
        src=$dir/share-subset
        rm -rf "$src"
        mkdir -p "$src"
        cp -a /usr/share/doc /usr/share/locale "$src"/ 2>/dev/null || true
    fi
    echo "making fs.raw: mke2fs -t ext4 -d $src fs.raw 2G" >&2
    mke2fs -q -F -t ext4 -d "$src" fs.raw 2G
    [[ $src == /usr/share ]] || rm -rf "$src"
fi
[[ -f fs.qcow2 ]] || qemu-img convert -f raw -O qcow2 fs.raw fs.qcow2
[[ -f fs-zlib.qcow2 ]] || qemu-img convert -c -f raw -O qcow2 fs.raw fs-zlib.qcow2
[[ -f fs-zstd.qcow2 ]] || qemu-img convert -c -f raw -O qcow2 -o compression_type=zstd fs.raw fs-zstd.qcow2

size() { du -h --apparent-size "$1" | cut -f1; }
used() { du -h "$1" | cut -f1; }
{
    echo "work directory: $dir"
    echo "qcow2 CLI:      $qcow2"
    echo "$(qemu-img --version | head -1), $(hyperfine --version), $(nproc) CPUs"
    echo "fs.raw $(size fs.raw) ($(used fs.raw) allocated); fs.qcow2 $(used fs.qcow2); fs-zlib.qcow2 $(used fs-zlib.qcow2); fs-zstd.qcow2 $(used fs-zstd.qcow2)"
    echo
} >&2

# Peak RSS (KiB) of one run, and a check of its output.
peak_rss() {
    local out
    rm -f out.raw
    out=$("$timer" -f %M "$@" 2>&1 >/dev/null | tail -1)
    cmp -s out.raw fs.raw || { echo "$0: '$*' wrote an out.raw different from fs.raw" >&2; exit 1; }
    echo "$out"
}

forms=(fs.qcow2 fs-zlib.qcow2 fs-zstd.qcow2)
labels=("qcow2" "qcow2 -c zlib" "qcow2 -c zstd")
rows=()
for i in "${!forms[@]}"; do
    f=${forms[$i]}
    echo "== ${labels[$i]} ($f)" >&2
    hyperfine --warmup 1 --runs 5 --export-json "convert-$i.json" --prepare "rm -f out.raw" \
        -n qemu-img "qemu-img convert -O raw $f out.raw" \
        -n qcow2 "$qcow2 convert -O raw $f out.raw" >&2
    # Both converters' outputs are checked here, with their peak RSS.
    rss_qemu=$(peak_rss qemu-img convert -O raw "$f" out.raw)
    rss_ours=$(peak_rss "$qcow2" convert -O raw "$f" out.raw)
    rows+=("${labels[$i]}|convert-$i.json|$rss_qemu|$rss_ours")
done

echo "== reference: cp --sparse=always fs.raw" >&2
hyperfine --warmup 1 --runs 5 --export-json cp.json --prepare "rm -f cp.raw" -n cp "cp --sparse=always fs.raw cp.raw" >&2
cp_rss=$("$timer" -f %M cp --sparse=always fs.raw cp.raw 2>&1 >/dev/null | tail -1)
cmp -s cp.raw fs.raw || { echo "$0: cp.raw differs from fs.raw" >&2; exit 1; }

python3 - "$cp_rss" "${rows[@]}" <<'EOF'
import json, sys
cp_rss, rows = sys.argv[1], sys.argv[2:]
def medians(path):
    return {r["command"]: r["median"] for r in json.load(open(path))["results"]}
print()
print(f"{'source':<16}{'qemu-img (s)':>14}{'qcow2 (s)':>12}{'qemu-img/qcow2':>16}{'RSS qemu-img':>15}{'RSS qcow2':>12}")
for row in rows:
    label, path, rss_qemu, rss_ours = row.split("|")
    m = medians(path)
    print(f"{label:<16}{m['qemu-img']:>14.3f}{m['qcow2']:>12.3f}{m['qemu-img'] / m['qcow2']:>16.2f}"
          f"{int(rss_qemu) / 1024:>12.1f} MiB{int(rss_ours) / 1024:>8.1f} MiB")
cp = medians("cp.json")["cp"]
print(f"{'cp --sparse':<16}{cp:>14.3f}{'':>12}{'':>16}{int(cp_rss) / 1024:>12.1f} MiB")
print("(medians of 5 runs after 1 warm-up; outputs checked equal to fs.raw with cmp)")
EOF
