#!/usr/bin/env bash
# Rebuild the committed seed corpus of the fuzz targets (fuzz/corpus/TARGET), from scratch.
#
#   fuzz/make-corpus.sh
#
# Seeds come from samples/ (every sample for the MP4 targets), from tiny MP4s made here with
# the host's ffmpeg (one per codec the read-back names), from the job server's real stderr:
# SERVER_SCRIPT run in the worker image (isc-ffmpeg:latest, network none) on samples, through
# success, probe, refusal and failure, from the built-in presets, and from hand-made flag
# values. Each target's seeds are then minimised with `cargo fuzz cmin`, so only inputs that
# add coverage are kept. Needs docker with the worker image, ffmpeg, and cargo-fuzz (see
# scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd .. && pwd)
image=${ISC_IMAGE:-isc-ffmpeg:latest}
# The same build as scripts/fuzz.sh, so that cmin reuses it.
build=(--sanitizer "${FUZZ_SANITIZER:-none}" --codegen-units 16)
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
for t in mp4_walk mp4_readback ffmpeg_stderr jobserver_marks jobserver_request preset_toml cli_values; do
    mkdir -p "$raw/$t"
done

# MP4 targets: every sample, and tiny MP4s of each codec the read-back names.
cp "$root"/samples/*.{mp4,mov,m4a,mkv,webm,ts,avi,mpg,mp3,wav} "$raw/mp4_walk/"
cp "$root"/samples/*.{mp4,mov,m4a} "$raw/mp4_readback/"
ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }
v=(-f lavfi -t 0.2 -i "testsrc2=size=16x16:rate=10")
a=(-f lavfi -t 0.2 -i "sine=frequency=440:sample_rate=8000")
tiny() { local name=$1; shift; ff "$@" -movflags +faststart "$raw/mp4_readback/tiny-$name" || echo "make-corpus: no $name (this ffmpeg lacks it)" >&2; }
tiny h264.mp4 "${v[@]}" "${a[@]}" -c:v libx264 -preset ultrafast -c:a aac -b:a 16k
tiny h264-full.mp4 "${v[@]}" -c:v libx264 -preset ultrafast -pix_fmt yuvj420p
tiny h264-444.mp4 "${v[@]}" -c:v libx264 -preset ultrafast -pix_fmt yuv444p
tiny hevc.mp4 "${v[@]}" -c:v libx265 -preset ultrafast -tag:v hvc1 -x265-params log-level=none
tiny mpeg4.mp4 "${v[@]}" "${a[@]}" -c:v mpeg4 -c:a mp3 -ar 22050
tiny vp9-opus.mp4 "${v[@]}" "${a[@]}" -c:v libvpx-vp9 -deadline realtime -c:a libopus
tiny mjpeg-ac3.mov "${v[@]}" "${a[@]}" -c:v mjpeg -c:a ac3
tiny eac3-flac.mp4 "${a[@]}" -c:a eac3 -strict -2
tiny alac.m4a "${a[@]}" -c:a alac
tiny text.mp4 "${v[@]}" -f lavfi -i "anullsrc" -t 0.2 -c:v libx264 -preset ultrafast -an
ff -i "$root/samples/subs-mov-text.mp4" -t 0.2 -c copy -movflags +faststart "$raw/mp4_readback/tiny-mov-text.mp4"
ff -i "$root/samples/timecode.mov" -t 0.2 -c copy -movflags +faststart "$raw/mp4_readback/tiny-tmcd.mov"
ff "${v[@]}" -c:v libx264 -preset ultrafast "$raw/mp4_readback/tiny-moov-last.mp4"

# The job server's stderr, as the client reads it: SERVER_SCRIPT in the worker image, given a
# whole session on its stdin (job header, arguments, input, then the client's answer).
server=$(sed -n '/^pub(crate) const SERVER_SCRIPT: &str = r#"$/,/^"#;$/p' "$root/src/exec/jobserver.rs" | sed '1d;$d')
session() { # NAME MODE INPUT ANSWER ARGS...
    local name=$1 mode=$2 input=$3 answer=$4; shift 4
    local ext=${input##*.} args=(-nostdin -nostats -progress pipe:2 -y) req
    if [ "$mode" = spool ]; then args+=(-i "in.$ext"); else args+=(-i pipe:0); fi
    args+=("$@")
    req=$(mktemp)
    {
        printf 'job 18c0ffee2 %s %s %s - %s %s\n' "$mode" "$ext" "${args[-1]}" "$(stat -c %s "$input")" "${#args[@]}"
        printf '%s\n' "${args[@]}"
        cat "$input"
        printf '%s\n' "$answer"
    } > "$req"
    docker run --rm -i --network none --entrypoint sh "$image" -c "$server" isc-worker \
        < "$req" > /dev/null 2> "$raw/jobserver_marks/$name" || true
    rm -f "$req"
}
s=$root/samples
copy=(-map '0:V?' -map '0:a?' -sn -dn -c copy -movflags +faststart -f mp4 out.mp4)
session copy-probe pipe "$s/faststart.mp4" probe "${copy[@]}"
session copy-done pipe "$s/quicktime.mov" done "${copy[@]}"
session spool-h264 spool "$s/moov-at-end.mp4" probe -map '0:V:0?' -map '0:a?' -c:v libx264 \
    -preset ultrafast -pix_fmt yuv420p -c:a aac -movflags +faststart -f mp4 out.mp4
session no-audio pipe "$s/no-audio.mp4" done -map 0:a:0 -vn -c:a aac -movflags +faststart -f mp4 out.m4a
session flac-in-mp4 pipe "$s/flac-audio.mkv" done "${copy[@]}"
session pcm-in-mp4 pipe "$s/mjpeg-pcm.avi" done "${copy[@]}"
session streams pipe "$s/subs-ass.mkv" done -map 0 -c copy -f matroska out.mkv
session tmcd spool "$s/timecode.mov" done "${copy[@]}"
session data-ts pipe "$s/data-track.ts" done "${copy[@]}"
session cover pipe "$s/tone-cover.mp3" done -map '0:V:0' -frames:v 1 -f image2 out.jpg
head -c 3000 "$s/faststart.mp4" > "$raw/cut.mp4"
session cut-input pipe "$raw/cut.mp4" done "${copy[@]}"
rm -f "$raw/cut.mp4"
# Lines the unit tests captured that a session does not easily give (a full disk).
printf '%s\n' "Error writing trailer of /out/out.mp4: No space left on device" \
    "Error closing file /out/out.mp4: Input/output error" > "$raw/jobserver_marks/full-disk"
# Durations ffmpeg never prints, which once read as infinite and negative.
printf '%s\n' "Input #0, mov, from 'pipe:0':" "  Duration: 00:00:inf, start: 0.0" \
    '@isc:probe:{"streams":[],"format":{"duration":"-5"}}' > "$raw/jobserver_marks/odd-durations"
# ffmpeg_stderr takes one leading byte (the chunk size it feeds by) before the stream.
for f in "$raw"/jobserver_marks/*; do
    { printf '\x07'; cat "$f"; } > "$raw/ffmpeg_stderr/$(basename "$f")"
done

cp "$root"/presets/*.toml "$raw/preset_toml/"
i=0
for value in 4g 512M 6m 6291456 1kb 17179869184g " 8 G " 90s 45m 1h30m 2days 0.5 5 -1 \
    1e400 NaN keep delete move:/srv/done move:; do
    printf '%s' "$value" > "$raw/cli_values/$((i += 1))"
done

# jobserver_request takes structured input (names, arguments): its seeds are what a short run
# of the target itself finds from nothing.
RUSTC_BOOTSTRAP=1 cargo fuzz run "${build[@]}" jobserver_request "$raw/jobserver_request" -- \
    -max_total_time=30 > "$raw/run-jobserver_request.log" 2>&1

for t in mp4_walk mp4_readback ffmpeg_stderr jobserver_marks jobserver_request preset_toml cli_values; do
    rm -rf "corpus/$t"
    mkdir -p "corpus/$t"
    cp "$raw/$t"/* "corpus/$t/" 2>/dev/null || true
    if [ -n "$(ls -A "corpus/$t")" ]; then
        RUSTC_BOOTSTRAP=1 cargo fuzz cmin "${build[@]}" "$t" "corpus/$t" -- -max_len=262144 \
            > "$raw/cmin-$t.log" 2>&1 || { cat "$raw/cmin-$t.log" >&2; exit 1; }
    fi
    echo "make-corpus: $t: $(ls "corpus/$t" | wc -l) inputs, $(du -sh "corpus/$t" | cut -f1)"
done
