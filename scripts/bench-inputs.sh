#!/usr/bin/env bash
# Scale of the inputs: a tree of N files (default 1,000,000, of which 1 in 10,000 are media) is
# scanned, the media done once, and re-run; wall time and peak memory of both runs are printed.
# Then a sparse file of 8 GiB + 1 byte is hashed with `isc-transcode hash` (from the page cache:
# a hole reads as zeros), to show the hash rate past the 32-bit sizes.
#
# The integration test `inputs::a_tree_of_100000_files_...` keeps 100,000 files and a 4 GiB file
# fast enough for CI; this script is the slower measurement.
#
# Usage: scripts/bench-inputs.sh [N] [WORKDIR]   (default WORKDIR: a temp folder, removed after)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)"; exit 2; }
cargo build --release --locked -q
bin=$PWD/target/release/isc-transcode
n=${1:-1000000}
work=${2:-$(mktemp -d /var/tmp/isc-bench-inputs.XXXXXX)}
[ -n "${2:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work/in"

echo "making $n files in $work/in ..."
python3 - "$work/in" "$n" "$PWD/samples/faststart.mp4" <<'PY'
import os, sys
root, n, sample = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], 'rb').read()
per = 1000
for i in range(n):
    d = os.path.join(root, f"d{i // per:05d}")
    if i % per == 0:
        os.makedirs(d, exist_ok=True)
    if i % 10000 == 0:
        # A distinct valid MP4: the sample plus a free box naming it.
        tag = f"bench {i}".encode()
        open(os.path.join(d, f"clip{i}.mp4"), 'wb').write(
            sample + (8 + len(tag)).to_bytes(4, 'big') + b"free" + tag)
    else:
        open(os.path.join(d, f"f{i}.txt"), 'wb').close()
PY
for pass in first re-run; do
    /usr/bin/time -f "$pass: %e s wall, %M KiB peak" \
        "$bin" "$work/in" -o "$work/out" -p copy 2>&1 | grep -E "wall|^summary" || true
done

truncate -s $((8 * 1024 * 1024 * 1024 + 1)) "$work/huge.bin"
/usr/bin/time -f "hash of 8 GiB + 1 (sparse): %e s wall" "$bin" hash "$work/huge.bin"
