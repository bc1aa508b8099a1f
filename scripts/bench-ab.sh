#!/usr/bin/env bash
# A/B of two isc-transcode binaries on the same inputs, alternating run by run, so that the
# machine's drift (a VM's speed varies by 10-20 % from minute to minute) falls on both alike.
# For "did this change cost anything": build the old commit's binary, then
#
#   scripts/bench-ab.sh OLD_BIN NEW_BIN [ROUNDS]       (default 7 rounds)
#
# Inputs come from scripts/bench.sh's work folder (WORKDIR, default /var/tmp/isc-bench; make them
# with `WORKLOADS="small encode" INPUTS_ONLY=1 scripts/bench.sh`). Per round, in alternating
# order: the 1 s 320x240 clip with `-p h264` (the fixed cost per run), the 20 s 720p clip with
# `-p h264` (encode-bound), and the 60 small clips with `-p copy -j 2` (per-job overhead), each
# into a fresh output folder after an untimed `sync`, on `--backend docker`. Prints every
# round's wall time and the median per binary and workload, and the median of the rounds'
# new/old ratios.
set -euo pipefail

old=${1:?OLD_BIN}
new=${2:?NEW_BIN}
rounds=${3:-7}
work=${WORKDIR:-/var/tmp/isc-bench}
for f in "$work/tiny.mp4" "$work/clip720.mp4" "$work/small/clip01.mp4"; do
    [ -s "$f" ] || { echo "bench-ab: $f missing: WORKLOADS=\"small encode\" INPUTS_ONLY=1 scripts/bench.sh" >&2; exit 1; }
done
run_dir=$(mktemp -d "$work/ab.XXXXXX")
trap 'rm -rf "$run_dir"' EXIT

# One timed run: prints the wall seconds.
timed() {
    local bin=$1 out=$run_dir/out
    shift
    rm -rf "$out"
    sync
    local t0 t1
    t0=$(date +%s.%N)
    "$bin" "$@" -o "$out" --backend docker -q >/dev/null 2>&1 || { echo "bench-ab: $bin $* failed" >&2; exit 1; }
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}'
}

declare -A times
workloads=(tiny encode small)
args_tiny=("$work/tiny.mp4" -p h264)
args_encode=("$work/clip720.mp4" -p h264)
args_small=("$work/small" -p copy -j 2)
for w in "${workloads[@]}"; do
    # Untimed warm-up of both.
    declare -n a="args_$w"
    timed "$old" "${a[@]}" >/dev/null
    timed "$new" "${a[@]}" >/dev/null
done
for r in $(seq 1 "$rounds"); do
    for w in "${workloads[@]}"; do
        declare -n a="args_$w"
        if [ $((r % 2)) = 1 ]; then order=(old new); else order=(new old); fi
        for which in "${order[@]}"; do
            bin=$old
            [ "$which" = new ] && bin=$new
            t=$(timed "$bin" "${a[@]}")
            times[$w.$which]="${times[$w.$which]:-} $t"
        done
        echo "round $r/$rounds $w: old ${times[$w.old]##* } s, new ${times[$w.new]##* } s"
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
echo
printf '%-8s %10s %10s %10s %18s\n' workload "old (s)" "new (s)" "new/old" "median round ratio"
for w in "${workloads[@]}"; do
    o=$(echo "${times[$w.old]}" | median)
    n=$(echo "${times[$w.new]}" | median)
    ratios=$(paste <(echo "${times[$w.old]}" | tr ' ' '\n' | grep -v '^$') \
        <(echo "${times[$w.new]}" | tr ' ' '\n' | grep -v '^$') | awk '{printf "%s ", $2 / $1}')
    rm=$(echo "$ratios" | median)
    printf '%-8s %10.3f %10.3f %10.3f %18.3f\n' "$w" "$o" "$n" "$(awk -v a="$o" -v b="$n" 'BEGIN {print b / a}')" "$rm"
done
