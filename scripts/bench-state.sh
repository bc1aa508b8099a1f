#!/usr/bin/env bash
# Benchmarks for the state store (content hashing and the no-op re-run).
#
# 1. sha256 throughput of `isc-transcode hash` against `sha256sum` on the same 1 GiB file, both
#    from the page cache, best of 3.
# 2. Wall time and peak memory of a re-run over 1,000 finished files: the first run transcodes
#    them (copy preset, local backend to save time: the skip path does not depend on the backend),
#    then the re-run is timed 5 times (median) and measured with /usr/bin/time for peak RSS.
#
# Usage: scripts/bench-state.sh [WORKDIR]     (default: a temp folder, removed afterwards)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { apt-get install -y time >/dev/null 2>&1 || true; }
cargo build --release --locked -q
bin=$PWD/target/release/isc-transcode

work=${1:-$(mktemp -d /var/tmp/isc-bench-state.XXXXXX)}
[ -n "${1:-}" ] || trap 'rm -rf "$work"' EXIT
mkdir -p "$work"

secs() { python3 -c 'import sys,time; print(time.time())'; }
best_of() { # best_of N cmd... -> best wall seconds
    local n=$1; shift; local best=
    for _ in $(seq "$n"); do
        local t0 t1; t0=$(secs); "$@" >/dev/null; t1=$(secs)
        best=$(python3 -c "b='$best'; d=$t1-$t0; print(d if b=='' or d<float(b) else b)")
    done
    echo "$best"
}

echo "== sha256 of 1 GiB (page cache warm, best of 3)"
big=$work/1g.bin
[ -f "$big" ] || head -c 1073741824 /dev/urandom >"$big"
cat "$big" >/dev/null
a=$("$bin" hash "$big" | cut -d' ' -f1); b=$(sha256sum "$big" | cut -d' ' -f1)
[ "$a" = "$b" ] || { echo "hash mismatch: $a vs $b" >&2; exit 1; }
t_ours=$(best_of 3 "$bin" hash "$big")
t_sum=$(best_of 3 sha256sum "$big")
python3 -c "
g=1073741824/1e9
print(f'isc-transcode hash: {$t_ours:.3f} s  {g/$t_ours:.2f} GB/s')
print(f'sha256sum:          {$t_sum:.3f} s  {g/$t_sum:.2f} GB/s')
print(f'ratio: {$t_sum/$t_ours:.2f}x')"

echo "== no-op re-run over 1,000 finished files"
in=$work/in; out=$work/out
if [ ! -d "$out" ]; then
    mkdir -p "$in"
    # 1,000 distinct, valid MP4s: the faststart sample plus a trailing `free` box carrying the
    # file's number (ISO BMFF readers skip free boxes).
    python3 - "$in" samples/faststart.mp4 <<'PY'
import struct, sys
folder, sample = sys.argv[1], open(sys.argv[2], "rb").read()
for i in range(1000):
    payload = f"isc-bench {i:04d}".encode()
    box = struct.pack(">I4s", 8 + len(payload), b"free") + payload
    with open(f"{folder}/clip{i:04d}.mp4", "wb") as f:
        f.write(sample + box)
PY
    t0=$(secs)
    "$bin" "$in" -o "$out" -p copy --backend local -q >/dev/null
    t1=$(secs)
    python3 -c "print(f'first run (1,000 transcodes, local copy preset): {$t1-$t0:.1f} s')"
fi
times=()
for _ in 1 2 3 4 5; do
    t0=$(secs); "$bin" "$in" -o "$out" -p copy --backend docker >/dev/null 2>&1; t1=$(secs)
    times+=("$(python3 -c "print($t1-$t0)")")
done
python3 -c "
import statistics; t=[float(x) for x in '${times[*]}'.split()]
print(f'no-op re-run wall time: median {statistics.median(t):.3f} s (min {min(t):.3f}, max {max(t):.3f}) over 5 runs')"
/usr/bin/time -v "$bin" "$in" -o "$out" -p copy --backend docker >/dev/null 2>"$work/time.txt" || true
grep -E "Maximum resident set size" "$work/time.txt" | awk '{printf "no-op re-run peak memory: %.1f MB\n", $NF/1024}'
"$bin" "$in" -o "$out" -p copy | tail -n 1
