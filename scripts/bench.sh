#!/usr/bin/env bash
# Throughput benchmark: isc-transcode against the shell pipeline users compare it with
# (`docker run -i ... ffmpeg` fed through a pipe) and against plain local ffmpeg.
#
# Three workloads. In each, every contender runs once per round, in an order that rotates from
# round to round; after one untimed warm-up run of each contender (the page cache is warm for all
# of them: inputs fit in memory, and nothing drops the cache). Every timed run writes into a fresh,
# empty output folder (isc-transcode would otherwise SKIP what its state store says is done), its
# outputs are checked (present, non-empty, the right duration; remuxes of the big file must be
# faststart: moov before mdat) and then deleted at once. Every timed run starts after an untimed
# `sync`, so that none inherits the disk's write-back of what the one before it wrote (the shell
# pipeline leaves gigabytes of dirty pages behind, and isc-transcode syncs its outputs before it
# counts them done, while the shell pipeline and local ffmpeg leave theirs in the page cache).
#
#   1. Many small files: 60 two-second 320x240 H.264+AAC clips (faststart, all different), remuxed
#      2 at a time by
#        - the shell pipeline, `ls *.mp4 | xargs -P 2 -I{} sh -c 'cat {} | docker run -i --rm
#          --network none [--log-driver none] IMAGE ffmpeg -i pipe:0 ... pipe:1 > out/{}'`,
#          once with the log driver off and once with the engine's default log driver (what a
#          naive user runs: every output byte is also written to the container's log);
#        - local ffmpeg under `xargs -P 2`;
#        - `isc-transcode DIR -p copy -j 2 --backend docker`.
#   2. One big remux: a ~1.7 GB MJPEG 1080p MP4 with moov at the END (ffmpeg's default layout, the
#      usual camera case) remuxed to a faststart MP4 by the shell pipeline (fed a faststart copy of
#      the same file, because ffmpeg cannot read moov-at-end from a pipe), local ffmpeg, and
#      isc-transcode; plus isc-transcode's peak RSS (/usr/bin/time -v) on this file and on one a
#      quarter its size, to show memory does not grow with the input.
#   3. Encode-bound: `-p h264` on one 20-second 1280x720 clip, isc-transcode with
#      `--backend docker` against `--backend local`.
#
# Each run is also charged the CPU time the whole machine spent meanwhile (engine included), a
# steadier figure than wall time on shared cores.
#
# It prints a table per workload (median and every round), the ratios against the targets, and at
# the end a Markdown summary with the machine facts for the README's Performance section.
#
# Usage:
#   scripts/bench.sh [WORKDIR]          # default WORKDIR: /var/tmp/isc-bench
#   ROUNDS=5 scripts/bench.sh           # rounds per workload (default 3; the encode takes at
#                                       # least ENCODE_ROUNDS, default 9)
#   SLOW=0 scripts/bench.sh             # skip the big remux through the shell pipeline with the
#                                       # engine's default log driver (about 90 s; timed once, no
#                                       # warm-up; the 5x target is measured against it)
#   WORKLOADS="small big" scripts/bench.sh  # which workloads to time (default: small big encode)
#   INPUTS_ONLY=1 scripts/bench.sh      # make the inputs and stop
#   scripts/bench.sh --clean [WORKDIR]  # remove the work folder
#
# WORKDIR is kept between runs so the inputs (about 3.9 GB; the big file takes ~5 minutes to
# generate) are made once. Timed outputs go to WORKDIR/run and are deleted as soon as they are
# checked; a run needs roughly 8 GB free besides the inputs. The script builds the release binary
# (`cargo build --release --locked`) and times a snapshot copy of it, so a rebuild in the tree
# during the run changes nothing. ISC_BIN=/path/to/isc-transcode skips the build and times that
# binary instead. ISC_IMAGE overrides the worker image (default isc-ffmpeg:latest); it is never
# pulled, it must be present.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${ISC_IMAGE:-isc-ffmpeg:latest}
ROUNDS=${ROUNDS:-3}
ENCODE_ROUNDS=${ENCODE_ROUNDS:-9}
SLOW=${SLOW:-1}
WORKLOADS=${WORKLOADS:-small big encode}
wants() { [[ " $WORKLOADS " == *" $1 "* ]]; }
JOBS=2
SMALL_COUNT=60
BIG_TARGET_BYTES=1700000000
MARKER=.isc-bench

log() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }

case "${1:-}" in
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0 ;;
    --clean)
        work=${2:-/var/tmp/isc-bench}
        if [ -d "$work" ]; then
            [ -f "$work/$MARKER" ] || die "$work has no $MARKER marker: not a bench folder, not removing it"
            rm -rf -- "$work"
            log "removed $work"
        else
            log "$work does not exist: nothing to remove"
        fi
        exit 0 ;;
    -*) die "unknown option $1 (usage: scripts/bench.sh [--clean] [WORKDIR])" ;;
esac

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$ROUNDS'"
WORK=${1:-/var/tmp/isc-bench}
if [ -e "$WORK" ] && [ ! -f "$WORK/$MARKER" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
    die "$WORK exists, is not empty and is not a bench folder (no $MARKER): pick another WORKDIR"
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
touch "$WORK/$MARKER"
RUN=$WORK/run     # timed outputs, emptied after every run
LOGS=$WORK/logs   # the last run of each contender: its stdout/stderr and /usr/bin/time -v
rm -rf "$RUN"
mkdir -p "$RUN" "$LOGS" "$WORK/bin"
trap 'rm -rf "$RUN"' EXIT

# ---------------------------------------------------------------------------------------------
# Preflight: tools, engine, image, disk.

for tool in ffmpeg ffprobe docker python3 awk xargs; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup.sh installs ffmpeg and docker)"
done
if [ ! -x /usr/bin/time ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "/usr/bin/time is missing: apt-get install -y time"
    fi
    log "installing GNU time"
    DEBIAN_FRONTEND=noninteractive apt-get install -y time >/dev/null 2>&1 \
        || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y time >/dev/null; }
fi
timeout 20 docker info >/dev/null 2>&1 || die "no Docker engine answers (scripts/setup.sh starts one)"
docker image inspect "$IMAGE" >/dev/null 2>&1 \
    || die "worker image $IMAGE is missing; build it with scripts/build-image.sh (it is never pulled)"
free_gb=$(df -P -B1G "$WORK" | awk 'NR==2 {print $4}')
need_gb=8
[ -s "$WORK/big.mp4" ] || need_gb=12
[ "$free_gb" -ge "$need_gb" ] || die "only ${free_gb} GB free under $WORK; this needs about ${need_gb} GB"

# ---------------------------------------------------------------------------------------------
# The binary: build it, then time a snapshot copy so that others rebuilding the tree meanwhile do
# not swap it under a running benchmark.

if [ "${INPUTS_ONLY:-0}" != 1 ]; then
    if [ -n "${ISC_BIN:-}" ]; then
        [ -x "$ISC_BIN" ] || die "ISC_BIN=$ISC_BIN is not an executable"
        src_bin=$ISC_BIN
        log "using ISC_BIN=$ISC_BIN (no build)"
    else
        log "building: cargo build --release --locked (several minutes the first time)"
        if ! (cd "$REPO" && cargo build --release --locked) >"$LOGS/build.log" 2>&1; then
            tail -n 30 "$LOGS/build.log" >&2
            die "cargo build --release --locked failed (full log: $LOGS/build.log)"
        fi
        src_bin=$REPO/target/release/isc-transcode
    fi
    BIN=$WORK/bin/isc-transcode
    cp -f "$src_bin" "$BIN.tmp" && mv -f "$BIN.tmp" "$BIN"
    BIN_SHA=$(sha256sum "$BIN" | cut -c1-12)
    GIT_REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
    log "timing isc-transcode from commit $GIT_REV (binary sha256 $BIN_SHA...)"
fi

# ---------------------------------------------------------------------------------------------
# Helpers.

now() { date +%s.%N; }
# CPU time the whole machine spent busy, in seconds (user, nice, system, irq, softirq from
# /proc/stat; not idle, iowait or steal): contenders are charged for the engine's work too
# (dockerd, containerd, runc, the FUSE daemon), which a wall clock on shared cores hides.
busy() { awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {printf "%.3f", ($2 + $3 + $4 + $7 + $8) / hz; exit}' /proc/stat; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b - a}'; }
median() { python3 -c 'import statistics, sys; print(f"{statistics.median(map(float, sys.argv[1:])):.3f}")' "$@"; }
med() { local -a ts; read -ra ts <<<"${TIMES[$1]}"; median "${ts[@]}"; }          # med ID
med_cpu() { local -a cs; read -ra cs <<<"${CPUS[$1]}"; median "${cs[@]}"; }      # med_cpu ID
all_rounds() { local -a ts; read -ra ts <<<"${TIMES[$1]}"; printf '%.2f ' "${ts[@]}"; } # all_rounds ID
# paired A B: the median over rounds of A's time divided by B's in the same round. The two run
# back to back in each round, so a machine that drifts from minute to minute (a VM) cancels out.
paired() {
    local -a a b
    read -ra a <<<"${TIMES[$1]}"
    read -ra b <<<"${TIMES[$2]}"
    python3 -c 'import statistics, sys; n = len(sys.argv) // 2; a, b = sys.argv[1:n + 1], sys.argv[n + 1:]
print(f"{statistics.median(float(x) / float(y) for x, y in zip(a, b)):.4f}")' "${a[@]}" "${b[@]}"
}
fsize() { stat -c %s "$1"; }
gb() { awk -v b="$1" 'BEGIN {printf "%.2f GB", b / 1e9}'; }
duration() { ffprobe -v error -show_entries format=duration -of csv=p=0 "$1"; }

# Top-level ISO BMFF boxes of a file, in order ("ftyp moov mdat" for a faststart MP4).
boxes() {
    python3 - "$1" <<'PY'
import struct, sys
order = []
with open(sys.argv[1], "rb") as f:
    while True:
        head = f.read(8)
        if len(head) < 8:
            break
        size, kind = struct.unpack(">I4s", head)
        used = 8
        if size == 1:
            size = struct.unpack(">Q", f.read(8))[0]
            used = 16
        order.append(kind.decode("latin-1"))
        if size == 0 or size < used:
            break
        f.seek(size - used, 1)
print(" ".join(order))
PY
}
is_faststart() {
    boxes "$1" | awk '{m = d = 0; for (i = 1; i <= NF; i++) { if ($i == "moov" && !m) m = i; if ($i == "mdat" && !d) d = i }
                      exit !(m && d && m < d)}'
}

# check_media FILE EXPECTED_SECONDS [faststart]: exists, non-empty, ffprobe reads it, duration
# within 0.5 s, and optionally moov before mdat.
check_media() {
    local f=$1 want=$2 got
    [ -s "$f" ] || die "output $f is missing or empty"
    got=$(duration "$f") || die "ffprobe cannot read output $f"
    awk -v a="$got" -v b="$want" 'BEGIN {d = a - b; exit !(d < 0.5 && d > -0.5)}' \
        || die "output $f lasts ${got} s, expected ${want} s"
    if [ "${3:-}" = faststart ]; then
        is_faststart "$f" || die "output $f is not faststart (top-level boxes: $(boxes "$f"))"
    fi
}

declare -A LABEL TIMES CPUS RSS
MD_RESULTS=()
MD_RATIOS=()

# run_contender ID ROUND_TEXT: fresh empty output folder, run, time, check, delete. ROUND_TEXT
# "warm-up" runs it untimed. The contender is the function run_ID taking the output folder; its
# check is check_ID. isc-transcode contenders run under /usr/bin/time -v -o $LOGS/ID.time.
run_contender() {
    local id=$1 round=$2 out=$RUN/$1 t0 t1 t rss c0 c
    rm -rf "$out" && mkdir -p "$out"
    rm -f "$LOGS/$id.time"
    sync
    c0=$(busy)
    t0=$(now)
    if ! "run_$id" "$out" >"$LOGS/$id.log" 2>&1; then
        tail -n 20 "$LOGS/$id.log" >&2
        die "${LABEL[$id]} failed ($round; full log: $LOGS/$id.log)"
    fi
    t1=$(now)
    c=$(elapsed "$c0" "$(busy)")
    t=$(elapsed "$t0" "$t1")
    "check_$id" "$out"
    rm -rf "$out"
    rss=
    if [ -f "$LOGS/$id.time" ]; then
        rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$LOGS/$id.time")
        if [ -z "${RSS[$id]:-}" ] || [ "$rss" -gt "${RSS[$id]}" ]; then RSS[$id]=$rss; fi
        rss=" (peak RSS $(awk -v k="$rss" 'BEGIN {printf "%.1f", k / 1024}') MB)"
    fi
    if [ "$round" != warm-up ]; then TIMES[$id]+="$t "; CPUS[$id]+="$c "; fi
    log "  $round  $(printf '%-58s' "${LABEL[$id]}") $(printf '%8.2f' "$t") s  $(printf '%6.2f' "$c") CPU-s$rss"
}

# rounds ID...: one warm-up of each, then ROUNDS rounds, the order rotating by one each round.
rounds() {
    local ids=("$@") n=$# r k id
    for id in "${ids[@]}"; do run_contender "$id" warm-up; done
    for r in $(seq 1 "$ROUNDS"); do
        for k in $(seq 0 $((n - 1))); do
            run_contender "${ids[$(((k + r - 1) % n))]}" "round $r/$ROUNDS"
        done
    done
}
# with_rounds N CMD...: run CMD with ROUNDS raised to at least N.
with_rounds() {
    local saved=$ROUNDS
    [ "$ROUNDS" -ge "$1" ] || ROUNDS=$1
    "${@:2}"
    ROUNDS=$saved
}

# table TITLE ID...: contender, median, every round.
table() {
    local title=$1 id m c; shift
    echo
    echo "== $title ($ROUNDS rounds, after one warm-up each)"
    printf '%-60s %10s %12s   %s\n' contender "median s" "median CPU-s" "rounds (s)"
    for id in "$@"; do
        m=$(med "$id")
        c=$(med_cpu "$id")
        printf '%-60s %10.2f %12.2f   %s\n' "${LABEL[$id]}" "$m" "$c" "$(all_rounds "$id")"
        MD_RESULTS+=("| $title | ${LABEL[$id]} | $(printf '%.2f' "$m") | $(printf '%.2f' "$c") | $(all_rounds "$id" | sed 's/ $//') |")
    done
}

# faster ISC_ID BASE_ID TARGET_OR_EMPTY: "isc-transcode vs X: 3.1x faster (target >= 2.5x)".
faster() {
    local isc=$1 base=$2 target=$3 r verdict='' tgt=''
    r=$(awk -v a="$(med "$base")" -v b="$(med "$isc")" 'BEGIN {printf "%.2f", a / b}')
    if [ -n "$target" ]; then
        tgt=" (target >= ${target}x)"
        if awk -v r="$r" -v t="$target" 'BEGIN {exit !(r >= t)}'; then verdict=" met"; else verdict=" MISSED"; fi
    fi
    echo "${LABEL[$isc]%% (*} vs ${LABEL[$base]}: ${r}x faster$tgt$verdict"
    MD_RATIOS+=("| ${LABEL[$isc]%% (*} vs ${LABEL[$base]} | ${r}x faster | ${target:+>= ${target}x} | ${verdict# } |")
}

# the_time ISC_ID BASE_ID TARGET STRETCH: "isc-transcode vs local ffmpeg: 1.4x the time (target
# <= 2.5x, stretch <= 1.5x)". TARGET or STRETCH may be empty.
the_time() {
    local isc=$1 base=$2 target=$3 stretch=$4 r verdict='' tgt=''
    r=$(awk -v a="$(med "$isc")" -v b="$(med "$base")" 'BEGIN {printf "%.2f", a / b}')
    if [ -n "$target" ] && [ -n "$stretch" ]; then tgt=" (target <= ${target}x, stretch <= ${stretch}x)"
    elif [ -n "$target" ]; then tgt=" (target <= ${target}x)"
    elif [ -n "$stretch" ]; then tgt=" (stretch target <= ${stretch}x)"; fi
    if [ -n "$stretch" ] && awk -v r="$r" -v t="$stretch" 'BEGIN {exit !(r <= t)}'; then verdict=" met, stretch met"
    elif [ -n "$target" ] && awk -v r="$r" -v t="$target" 'BEGIN {exit !(r <= t)}'; then verdict=" met${stretch:+, stretch missed}"
    elif [ -n "$target" ] || [ -n "$stretch" ]; then verdict=" MISSED"; fi
    echo "${LABEL[$isc]%% (*} vs ${LABEL[$base]}: ${r}x the time$tgt$verdict"
    MD_RATIOS+=("| ${LABEL[$isc]%% (*} vs ${LABEL[$base]} | ${r}x the time | ${target:+<= ${target}x}${stretch:+ (stretch <= ${stretch}x)} | ${verdict# } |")
}

mb_of_kb() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# ---------------------------------------------------------------------------------------------
# Inputs, made once and kept in WORK. Each is written under a temporary name and renamed when
# complete, so an interrupted generation is redone, not reused. gen-times.txt keeps how long each
# took.

GEN_REPORT=()
gen_note() { # gen_note NAME SECONDS: record and report a generation time
    echo "$1 $2 $(date -Is)" >>"$WORK/gen-times.txt"
    GEN_REPORT+=("$1: generated in $2 s")
}
gen_reused() { # gen_reused NAME
    local line
    line=$(awk -v n="$1" '$1 == n {l = $0} END {print l}' "$WORK/gen-times.txt" 2>/dev/null || true)
    if [ -n "$line" ]; then
        GEN_REPORT+=("$1: reused (generated in $(echo "$line" | awk '{print $2}') s on $(echo "$line" | awk '{print $3}'))")
    else
        GEN_REPORT+=("$1: reused")
    fi
}

# 1. The small clips: testsrc2 with a different hue and a sine of a different pitch each, so all
# 60 are distinct; +faststart (moov first) so the shell pipeline can read them from a pipe.
SMALL=$WORK/small
if [ ! -f "$SMALL/.complete" ]; then
    log "generating $SMALL_COUNT small clips"
    rm -rf "$SMALL" && mkdir -p "$SMALL"
    t0=$(now)
    for i in $(seq 1 "$SMALL_COUNT"); do
        name=$(printf 'clip%02d.mp4' "$i")
        ffmpeg -nostdin -v error -y \
            -f lavfi -i "testsrc2=size=320x240:rate=25" \
            -f lavfi -i "sine=frequency=$((200 + i * 10)):sample_rate=48000" \
            -t 2 -vf "hue=h=$((i * 6))" \
            -c:v libx264 -preset veryfast -pix_fmt yuv420p -c:a aac -b:a 96k \
            -movflags +faststart "$SMALL/.tmp-$name"
        mv "$SMALL/.tmp-$name" "$SMALL/$name"
    done
    is_faststart "$SMALL/clip01.mp4" || die "generated clips are not faststart"
    touch "$SMALL/.complete"
    gen_note small-clips "$(elapsed "$t0" "$(now)")"
else
    gen_reused small-clips
fi
SMALL_NAMES=()
for i in $(seq 1 "$SMALL_COUNT"); do SMALL_NAMES+=("$(printf 'clip%02d.mp4' "$i")"); done

# 2. The big file (only when the big workload is timed: it takes minutes to make).
if wants big; then
    # 2. The big file: MJPEG 1080p at -q:v 2, no audio, ffmpeg's default layout (moov at the end).
    # Its length comes from a 4-second calibration encode so the file lands near 1.7 GB.
    BIG=$WORK/big.mp4
    BIGFS=$WORK/big-faststart.mp4
    QUARTER=$WORK/quarter.mp4
    if [ ! -s "$BIG" ]; then
        cal=$WORK/.calibrate.mp4
        ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=1920x1080:rate=25 -t 4 -c:v mjpeg -q:v 2 -an "$cal"
        big_secs=$(awk -v b="$(fsize "$cal")" -v t="$BIG_TARGET_BYTES" 'BEGIN {printf "%d", t / (b / 4) + 0.5}')
        rm -f "$cal"
        log "generating the big file: $big_secs s of MJPEG 1080p (about 1.7 GB; takes minutes)"
        rm -f "$BIGFS" "$QUARTER"
        t0=$(now)
        ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=1920x1080:rate=25 -t "$big_secs" \
            -c:v mjpeg -q:v 2 -an -f mp4 "$BIG.tmp"
        mv "$BIG.tmp" "$BIG"
        gen_note big.mp4 "$(elapsed "$t0" "$(now)")"
    else
        gen_reused big.mp4
    fi
    BIG_BYTES=$(fsize "$BIG")
    awk -v b="$BIG_BYTES" 'BEGIN {exit !(b > 1.5e9 && b < 1.9e9)}' \
        || die "$BIG is $(gb "$BIG_BYTES"), not about 1.7 GB; remove it to have it made again"
    is_faststart "$BIG" && die "$BIG has moov first; it should have ffmpeg's default layout (moov at the end)"
    BIG_DUR=$(duration "$BIG")

    # The shell pipeline cannot read moov-at-end from a pipe, so it gets a faststart copy (same
    # streams, same bytes of media).
    if [ ! -s "$BIGFS" ]; then
        log "making the faststart copy of the big file for the shell pipeline"
        t0=$(now)
        ffmpeg -nostdin -v error -y -i "$BIG" -c copy -movflags +faststart -f mp4 "$BIGFS.tmp"
        mv "$BIGFS.tmp" "$BIGFS"
        gen_note big-faststart.mp4 "$(elapsed "$t0" "$(now)")"
    else
        gen_reused big-faststart.mp4
    fi
    is_faststart "$BIGFS" || die "$BIGFS is not faststart"

    # A quarter of the big file (same layout: moov at the end), for the peak-memory comparison.
    if [ ! -s "$QUARTER" ]; then
        log "making the quarter-size file"
        t0=$(now)
        ffmpeg -nostdin -v error -y -i "$BIG" -t "$(awk -v d="$BIG_DUR" 'BEGIN {printf "%.2f", d / 4}')" \
            -c copy -f mp4 "$QUARTER.tmp"
        mv "$QUARTER.tmp" "$QUARTER"
        gen_note quarter.mp4 "$(elapsed "$t0" "$(now)")"
    else
        gen_reused quarter.mp4
    fi
    QUARTER_DUR=$(duration "$QUARTER")
fi

# 3. The encode-bound clip: 20 s of 1280x720 testsrc2 + sine, H.264 (high quality) + AAC.
CLIP=$WORK/clip720.mp4
if [ ! -s "$CLIP" ]; then
    log "generating the 20-second 720p clip"
    t0=$(now)
    ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=1280x720:rate=25 \
        -f lavfi -i sine=frequency=440:sample_rate=48000 -t 20 \
        -c:v libx264 -preset veryfast -crf 18 -pix_fmt yuv420p -c:a aac -b:a 160k \
        -movflags +faststart -f mp4 "$CLIP.tmp"
    mv "$CLIP.tmp" "$CLIP"
    gen_note clip720.mp4 "$(elapsed "$t0" "$(now)")"
else
    gen_reused clip720.mp4
fi
CLIP_DUR=$(duration "$CLIP")

# 4. A tiny clip for the fixed cost per run: 1 s of 320x240, H.264 + AAC.
TINY=$WORK/tiny.mp4
if [ ! -s "$TINY" ]; then
    ffmpeg -nostdin -v error -y -f lavfi -i testsrc2=size=320x240:rate=25 \
        -f lavfi -i sine=frequency=440:sample_rate=48000 -t 1 \
        -c:v libx264 -preset veryfast -pix_fmt yuv420p -c:a aac -movflags +faststart -f mp4 "$TINY.tmp"
    mv "$TINY.tmp" "$TINY"
fi
TINY_DUR=$(duration "$TINY")
[ "${INPUTS_ONLY:-0}" = 1 ] && { log "inputs ready in $WORK"; exit 0; }

if wants big; then
    log "inputs: $SMALL_COUNT small clips; big.mp4 $(gb "$BIG_BYTES"), ${BIG_DUR} s;" \
        "big-faststart.mp4 $(gb "$(fsize "$BIGFS")"); quarter.mp4 $(gb "$(fsize "$QUARTER")"); clip720.mp4 ${CLIP_DUR} s"
else
    log "inputs: $SMALL_COUNT small clips; clip720.mp4 ${CLIP_DUR} s"
fi

# ---------------------------------------------------------------------------------------------
# Workload 1: many small files.

# The shell pipeline users compare against. A pipe cannot be seeked back into, so ffmpeg cannot
# write a faststart MP4 to one: the output is a fragmented MP4 (empty moov first, then moof+mdat
# fragments), which is what `-movflags frag_keyframe+empty_moov+default_base_moof` asks for.
# shellcheck disable=SC2011,SC2035,SC2016 # `ls *.mp4 | xargs` is the users' idiom; $OUT expands in the inner sh
run_s_shell_none() {
    (cd "$SMALL" && ls *.mp4 | OUT=$1 xargs -P "$JOBS" -I{} sh -c 'cat {} | docker run -i --rm --network none --log-driver none '"$IMAGE"' ffmpeg -v error -i pipe:0 -c copy -f mp4 -movflags frag_keyframe+empty_moov+default_base_moof pipe:1 > "$OUT/{}"')
}
# The same with the engine's default log driver (json-file here): what a naive user runs.
# shellcheck disable=SC2011,SC2035,SC2016
run_s_shell_default() {
    (cd "$SMALL" && ls *.mp4 | OUT=$1 xargs -P "$JOBS" -I{} sh -c 'cat {} | docker run -i --rm --network none '"$IMAGE"' ffmpeg -v error -i pipe:0 -c copy -f mp4 -movflags frag_keyframe+empty_moov+default_base_moof pipe:1 > "$OUT/{}"')
}
# shellcheck disable=SC2011,SC2035
run_s_local() {
    (cd "$SMALL" && ls *.mp4 | xargs -P "$JOBS" -I{} ffmpeg -nostdin -v error -i {} -c copy -movflags +faststart "$1/{}")
}
run_s_isc() {
    /usr/bin/time -v -o "$LOGS/s_isc.time" "$BIN" "$SMALL" -o "$1" -p copy -j "$JOBS" --backend docker
}
check_small() { # every output present and non-empty; the first one read back by ffprobe
    local out=$1 name
    for name in "${SMALL_NAMES[@]}"; do
        [ -s "$out/$name" ] || die "output $out/$name is missing or empty"
    done
    check_media "$out/${SMALL_NAMES[0]}" 2 "${2:-}"
}
check_s_shell_none() { check_small "$1"; }
check_s_shell_default() { check_small "$1"; }
check_s_local() { check_small "$1" faststart; }
check_s_isc() { check_small "$1" faststart; }

LABEL[s_shell_none]="shell pipeline: docker run per file, --log-driver none"
LABEL[s_shell_default]="shell pipeline: docker run per file, default log driver"
LABEL[s_local]="local ffmpeg (xargs -P $JOBS)"
LABEL[s_isc]="isc-transcode (-p copy -j $JOBS --backend docker)"

if wants small; then
    log "workload 1: $SMALL_COUNT small files, remux, $JOBS at a time"
    rounds s_shell_none s_shell_default s_local s_isc
fi

# ---------------------------------------------------------------------------------------------
# Workload 2: one big remux.

# A shell pipeline gets a faststart output only by landing the input inside the container first:
# ffmpeg must seek in its input (to find moov when it is at the end) and in its output (to move
# moov to the front), so the container copies stdin to its writable layer, remuxes there, then
# streams the result back. Fed the faststart copy of the file, since that is what a pipe-reading
# variant would need anyway.
# shellcheck disable=SC2002 # `cat file | docker run -i` is the users' idiom
run_b_shell_none() {
    cat "$BIGFS" | docker run -i --rm --network none --log-driver none "$IMAGE" sh -c 'cat > /work/in.mp4 && ffmpeg -v error -i /work/in.mp4 -c copy -movflags +faststart -f mp4 /work/out.mp4 && cat /work/out.mp4' >"$1/big.mp4"
}
# shellcheck disable=SC2002
run_b_shell_default() {
    cat "$BIGFS" | docker run -i --rm --network none "$IMAGE" sh -c 'cat > /work/in.mp4 && ffmpeg -v error -i /work/in.mp4 -c copy -movflags +faststart -f mp4 /work/out.mp4 && cat /work/out.mp4' >"$1/big.mp4"
}
run_b_local() {
    ffmpeg -nostdin -v error -i "$BIG" -c copy -movflags +faststart "$1/big.mp4"
}
run_b_isc() {
    /usr/bin/time -v -o "$LOGS/b_isc.time" "$BIN" "$BIG" -o "$1" -p copy -j "$JOBS" --backend docker
}
run_b_isc_quarter() {
    /usr/bin/time -v -o "$LOGS/b_isc_quarter.time" "$BIN" "$QUARTER" -o "$1" -p copy -j "$JOBS" --backend docker
}
check_b_shell_none() { check_media "$1/big.mp4" "$BIG_DUR" faststart; }
check_b_shell_default() { check_media "$1/big.mp4" "$BIG_DUR" faststart; }
check_b_local() { check_media "$1/big.mp4" "$BIG_DUR" faststart; }
check_b_isc() { check_media "$1/big.mp4" "$BIG_DUR" faststart; }
check_b_isc_quarter() { check_media "$1/quarter.mp4" "$QUARTER_DUR" faststart; }

LABEL[b_shell_none]="shell pipeline: faststart copy in, --log-driver none"
LABEL[b_shell_default]="shell pipeline: faststart copy in, default log driver"
LABEL[b_local]="local ffmpeg"
LABEL[b_isc]="isc-transcode (-p copy --backend docker)"
LABEL[b_isc_quarter]="isc-transcode (-p copy --backend docker), 1/4-size file"

big_ids=(b_shell_none b_local b_isc b_isc_quarter)
if wants big; then
    log "workload 2: one big remux ($(gb "$BIG_BYTES"))"
    rounds "${big_ids[@]}"
    if [ "$SLOW" = 1 ]; then
        run_contender b_shell_default "once"
        big_ids=(b_shell_none b_shell_default b_local b_isc b_isc_quarter)
    fi
fi

# ---------------------------------------------------------------------------------------------
# Workload 3: encode-bound.

run_e_docker() {
    /usr/bin/time -v -o "$LOGS/e_docker.time" "$BIN" "$CLIP" -o "$1" -p h264 -j "$JOBS" --backend docker
}
run_e_local() {
    /usr/bin/time -v -o "$LOGS/e_local.time" "$BIN" "$CLIP" -o "$1" -p h264 -j "$JOBS" --backend local
}
check_e_docker() { check_media "$1/clip720.mp4" "$CLIP_DUR" faststart; }
check_e_local() { check_media "$1/clip720.mp4" "$CLIP_DUR" faststart; }
# The same command on a clip that takes a fraction of a second to encode: what is left of the
# difference is the Docker backend's fixed cost per run (engine setup, starting the worker and
# its job server, ending it), the part of the encode's difference that is not noise.
run_f_docker() { "$BIN" "$TINY" -o "$1" -p h264 -j "$JOBS" --backend docker; }
run_f_local() { "$BIN" "$TINY" -o "$1" -p h264 -j "$JOBS" --backend local; }
check_f_docker() { check_media "$1/tiny.mp4" "$TINY_DUR" faststart; }
check_f_local() { check_media "$1/tiny.mp4" "$TINY_DUR" faststart; }

LABEL[e_docker]="isc-transcode (-p h264 --backend docker)"
LABEL[e_local]="isc-transcode (-p h264 --backend local)"
LABEL[f_docker]="isc-transcode (-p h264 --backend docker, 1 s 320x240)"
LABEL[f_local]="isc-transcode (-p h264 --backend local, 1 s 320x240)"

if wants encode; then
    log "workload 3: encode-bound, -p h264 on a 20 s 720p clip"
    # A 5 % target on a VM whose speed drifts by 10-20 %: at least ENCODE_ROUNDS rounds.
    with_rounds "$ENCODE_ROUNDS" rounds e_docker e_local
    log "workload 3b: the same on a 1 s 320x240 clip (the fixed cost per run)"
    with_rounds "$ENCODE_ROUNDS" rounds f_docker f_local
fi

# ---------------------------------------------------------------------------------------------
# Report.

echo
echo "isc-transcode benchmark  $(date -Is)  commit $GIT_REV  binary sha256 $BIN_SHA...  image $IMAGE"
echo
echo "Inputs (made once, kept in $WORK):"
for line in "${GEN_REPORT[@]}"; do echo "  $line"; done

if wants small; then
    table "1. Many small files: $SMALL_COUNT x 2 s 320x240 H.264+AAC, remux, $JOBS at a time" \
        s_shell_none s_shell_default s_local s_isc
    echo "(the shell pipeline writes fragmented MP4s: a pipe cannot be faststart; the others write faststart MP4s)"
    echo
    faster s_isc s_shell_none 2.5
    faster s_isc s_shell_default ""
    the_time s_isc s_local "" 1.5
fi

if wants big; then
    table "2. One big remux: $(gb "$BIG_BYTES") MJPEG 1080p, moov at end, to faststart MP4" "${big_ids[@]}"
    echo "(the shell pipeline is fed a faststart copy of the file: it cannot read moov-at-end from a pipe;"
    echo " it lands the file in the container's writable layer, remuxes there and streams the result back)"
    if [ "$SLOW" = 1 ]; then
        echo "(the shell pipeline with the default log driver is timed once, without a warm-up: ~90 s a run)"
        echo
        faster b_isc b_shell_default 5
        faster b_isc b_shell_none ""
    else
        echo "(shell pipeline with the default log driver not timed: SLOW=0; the 5x target is against it)"
        echo
        faster b_isc b_shell_none ""
    fi
    the_time b_isc b_local 2.5 1.5
    for id in b_local b_isc; do
        awk -v b="$BIG_BYTES" -v t="$(med "$id")" -v l="${LABEL[$id]}" \
            'BEGIN {printf "%s: %.0f MB/s of input\n", l, b / 1e6 / t}'
    done
    rss_big=$(mb_of_kb "${RSS[b_isc]}")
    rss_quarter=$(mb_of_kb "${RSS[b_isc_quarter]}")
    verdict=MISSED
    awk -v m="$rss_big" 'BEGIN {exit !(m < 64)}' && verdict=met
    echo "isc-transcode peak RSS, $(gb "$BIG_BYTES") file: $rss_big MB (target < 64 MB) $verdict"
    echo "isc-transcode peak RSS, $(gb "$(fsize "$QUARTER")") file: $rss_quarter MB (max over the runs, /usr/bin/time -v)"
    MD_RATIOS+=("| isc-transcode peak RSS, big remux ($(gb "$BIG_BYTES")) | $rss_big MB | < 64 MB | $verdict |")
    MD_RATIOS+=("| isc-transcode peak RSS, 1/4-size remux ($(gb "$(fsize "$QUARTER")")) | $rss_quarter MB | | |")
fi

if wants encode; then
    with_rounds "$ENCODE_ROUNDS" table "3. Encode-bound: -p h264, one 20 s 1280x720 clip" e_docker e_local
    with_rounds "$ENCODE_ROUNDS" table "3b. Fixed cost per run: -p h264, one 1 s 320x240 clip" f_docker f_local
    echo
    pct=$(awk -v a="$(med e_docker)" -v b="$(med e_local)" 'BEGIN {printf "%+.1f", (a / b - 1) * 100}')
    verdict=MISSED
    awk -v p="$pct" 'BEGIN {exit !(p <= 5)}' && verdict=met
    echo "isc-transcode --backend docker vs --backend local: ${pct}% time (target <= +5%) $verdict"
    MD_RATIOS+=("| isc-transcode -p h264, docker vs local backend (ratio of medians) | ${pct}% time | <= +5% | $verdict |")
    ppct=$(awk -v r="$(paired e_docker e_local)" 'BEGIN {printf "%+.1f", (r - 1) * 100}')
    verdict=MISSED
    awk -v p="$ppct" 'BEGIN {exit !(p <= 5)}' && verdict=met
    echo "  the same, median of each round's docker/local ratio: ${ppct}% (target <= +5%) $verdict"
    MD_RATIOS+=("| the same, median of the rounds' docker/local ratios | ${ppct}% time | <= +5% | $verdict |")
    fixed=$(awk -v a="$(med f_docker)" -v b="$(med f_local)" 'BEGIN {printf "%.3f", a - b}')
    fpct=$(awk -v f="$fixed" -v b="$(med e_local)" 'BEGIN {printf "%+.1f", f / b * 100}')
    echo "  the Docker backend's fixed cost per run: ${fixed} s, ${fpct}% of this encode"
    MD_RATIOS+=("| Docker backend's fixed cost per run (1 s clip, docker - local) | ${fixed} s = ${fpct}% of the encode | | |")
fi

# Machine facts and the Markdown summary for the README.
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
ffm_host=$(ffmpeg -version | awk 'NR==1 {print $3}')
ffm_image=$(docker run --rm --network none --log-driver none "$IMAGE" ffmpeg -version 2>/dev/null | awk 'NR==1 {print $3}')
echo
echo "---- Markdown (README, Performance) ----"
echo
echo "| machine | |"
echo "|---|---|"
echo "| CPUs (\`nproc\`) | $(nproc) ($cpu) |"
echo "| memory | $mem |"
echo "| kernel | $(uname -r) |"
echo "| Docker engine | $(docker version --format '{{.Server.Version}}') |"
echo "| storage driver | $(docker info --format '{{.Driver}}') |"
echo "| ffmpeg (host / image) | $ffm_host / $ffm_image |"
echo "| isc-transcode | commit $GIT_REV, release build |"
echo "| rounds | $ROUNDS, median reported, one warm-up each, page cache warm |"
echo
echo "| workload | contender | median s | median CPU-s (whole machine) | rounds (s) |"
echo "|---|---|---:|---:|---|"
for line in "${MD_RESULTS[@]}"; do echo "$line"; done
echo
echo "| comparison | result | target | |"
echo "|---|---|---|---|"
for line in "${MD_RATIOS[@]}"; do echo "$line"; done
