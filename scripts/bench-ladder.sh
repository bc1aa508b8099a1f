#!/usr/bin/env bash
# Ladder benchmark: `isc-transcode -p hls` on a 60 s 1080p clip (4 renditions, 1080p to 360p,
# and a poster) against the very same ffmpeg command run here by host ffmpeg.
#
# The local command is the one `isc-transcode presets hls` prints, with the input and the
# folder filled in, so both make the same ladder; isc-transcode adds what it always adds: the
# input streamed or mounted into a locked-down worker on the default engine, the folder sent
# back as an archive, taken apart, checked (playlists, every segment's samples, codecs,
# resolutions, durations), hashed, synced and recorded. The two alternate, round by round,
# after one untimed warm-up of each; every run writes into a fresh folder after an untimed
# `sync`, and each run is also charged the CPU time the whole machine spent meanwhile (engine
# included). It prints every round, the medians, the overhead (isc-transcode against local,
# ratio of the medians and median of the rounds' paired ratios; the target is at most +5 %),
# the same ratio for the CPU time, and the load average before and after.
#
# Usage:
#   scripts/bench-ladder.sh [WORKDIR]     # default WORKDIR: /var/tmp/isc-bench-ladder
#   ROUNDS=5 scripts/bench-ladder.sh      # rounds (default 3)
#   ISC_BIN=/path/to/isc-transcode scripts/bench-ladder.sh   # time that binary, no build
#
# WORKDIR keeps the clip (about 40 MB) between runs. ISC_IMAGE overrides the worker image
# (default isc-ffmpeg:latest); it is never pulled, it must be present.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/var/tmp/isc-bench-ladder}
ROUNDS=${ROUNDS:-3}
export ISC_IMAGE=${ISC_IMAGE:-isc-ffmpeg:latest}
mkdir -p "$WORK"

if [ -z "${ISC_BIN:-}" ]; then
    (cd "$REPO" && cargo build --release --locked --quiet)
    cp "$REPO/target/release/isc-transcode" "$WORK/isc-transcode"
    ISC_BIN=$WORK/isc-transcode
fi

CLIP=$WORK/clip.mp4
if [ ! -s "$CLIP" ]; then
    echo "making a 60 s 1080p clip ..."
    ffmpeg -v error -y -f lavfi -i testsrc2=size=1920x1080:rate=30 \
        -f lavfi -i sine=frequency=440:sample_rate=48000 -t 60 \
        -c:v libx264 -preset veryfast -crf 20 -pix_fmt yuv420p -c:a aac -b:a 160k \
        -shortest -movflags +faststart "$CLIP.tmp.mp4"
    mv "$CLIP.tmp.mp4" "$CLIP"
fi

# The command isc-transcode runs, as it prints it, for host ffmpeg.
CMD=$("$ISC_BIN" presets hls | sed -n 's/^command: *//p')
[ -n "$CMD" ] || { echo "no command from 'isc-transcode presets hls'" >&2; exit 1; }

busy() { awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {printf "%.3f", ($2 + $3 + $4 + $7 + $8) / hz; exit}' /proc/stat; }
median() { python3 -c 'import statistics, sys; print(f"{statistics.median(map(float, sys.argv[1:])):.3f}")' "$@"; }
now() { date +%s.%N; }

run_local() {   # run_local DIR
    mkdir -p "$1/clip"
    local cmd=${CMD//<input>/$CLIP}
    cmd=${cmd//<folder>/$1/clip}
    (cd "$1" && eval "$cmd" 2>/dev/null)
}

run_isc() {     # run_isc DIR
    "$ISC_BIN" "$CLIP" -o "$1" -p hls -q >/dev/null
}

check() {       # check DIR: the ladder has its four renditions and plays
    local m=$1/clip/master.m3u8
    [ "$(grep -c '^#EXT-X-STREAM-INF' "$m")" = 4 ] || { echo "bad ladder in $1" >&2; exit 1; }
    ffprobe -v error -show_entries format=duration -of csv=p=0 "$1/clip/1080p/index.m3u8" >/dev/null
}

timed() {       # timed NAME: one run of NAME into a fresh folder; prints "seconds cpu-seconds"
    local dir=$WORK/run-$1
    rm -rf "$dir"; mkdir -p "$dir"; sync
    local t0 c0 t1 c1
    t0=$(now); c0=$(busy)
    "run_$1" "$dir"
    t1=$(now); c1=$(busy)
    check "$dir"
    rm -rf "$dir"
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f} {float(sys.argv[4]) - float(sys.argv[3]):.3f}')" "$t0" "$t1" "$c0" "$c1"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "warm-up ..."
timed local >/dev/null
timed isc >/dev/null

declare -a LT LC IT IC
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order="local isc"; else order="isc local"; fi
    for who in $order; do
        read -r t c < <(timed "$who")
        if [ "$who" = local ]; then LT+=("$t"); LC+=("$c"); else IT+=("$t"); IC+=("$c"); fi
        echo "round $r: $who ${t} s, ${c} CPU-s"
    done
done

lt=$(median "${LT[@]}"); it=$(median "${IT[@]}")
lc=$(median "${LC[@]}"); ic=$(median "${IC[@]}")
pct=$(python3 -c "import sys; print(f'{(float(sys.argv[2]) / float(sys.argv[1]) - 1) * 100:+.1f}')" "$lt" "$it")
paired=$(python3 -c '
import statistics, sys
n = len(sys.argv) // 2
a, b = sys.argv[1:1 + n], sys.argv[1 + n:]
print(f"{(statistics.median(float(y) / float(x) for x, y in zip(a, b)) - 1) * 100:+.1f}")' "${LT[@]}" "${IT[@]}")
echo
echo "| contender | median s | median CPU-s (whole machine) | rounds (s) |"
echo "|---|---:|---:|---|"
echo "| host ffmpeg, the same command | $lt | $lc | ${LT[*]} |"
echo "| isc-transcode -p hls (default engine) | $it | $ic | ${IT[*]} |"
echo
cpct=$(python3 -c "import sys; print(f'{(float(sys.argv[2]) / float(sys.argv[1]) - 1) * 100:+.1f}')" "$lc" "$ic")
echo "overhead: ${pct}% (ratio of medians), ${paired}% (median of the rounds' paired ratios); target <= +5%"
echo "CPU time: ${cpct}% (ratio of the medians of the whole machine's CPU-s)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
