#!/usr/bin/env bash
# Regenerate the sample media in this folder with the host's ffmpeg, then check them.
#
#   samples/make-samples.sh        (from anywhere; writes next to this script)
#
# Each sample is exactly 2 seconds of testsrc2 video (320x240, 25 fps) and/or a sine tone, small
# enough to commit, and each exercises one thing a transcoder must get right (see README.md here).
# Every output stem is unique, so transcoding the whole folder never makes two outputs collide.
# The bit-exact flags keep re-runs byte-identical for a given ffmpeg build. Needs ffmpeg, ffprobe,
# od and awk; nothing else.
set -euo pipefail
cd "$(dirname "$0")"

for tool in ffmpeg ffprobe od awk; do
    command -v "$tool" >/dev/null 2>&1 || { echo "make-samples: $tool not found" >&2; exit 1; }
done

samples=(moov-at-end.mp4 faststart.mp4 quicktime.mov two-audio.mkv vp9-opus.webm mpeg-ts.ts
    mpeg4-mp3.avi odd-size.mp4 10bit.mkv no-audio.mp4 tone-mp3.mp3 tone-wav.wav
    dvb-mp2.ts mpeg2-ps.mpg ac3-surround.mkv eac3-audio.mp4 flac-audio.mkv tone-alac.m4a
    opus-audio.mp4 hevc-8bit.mp4 hevc-10bit.mkv av1-video.mkv vp8-vorbis.webm mjpeg-pcm.avi
    subs-srt.mkv subs-ass.mkv subs-mov-text.mp4 timecode.mov data-track.ts tone-cover.mp3)
# Names earlier versions of this script wrote; removed so a re-run leaves exactly the set above.
legacy=(clip.mov clip.webm clip.ts clip.avi tone.mp3 tone.wav tone.flac)
rm -f -- "${samples[@]}" "${legacy[@]}"

ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }
exact=(-map_metadata -1 -fflags +bitexact -flags:v +bitexact -flags:a +bitexact)
# -t 2 on each lavfi input: the sources are endless otherwise.
v=(-f lavfi -t 2 -i "testsrc2=size=320x240:rate=25")
a=(-f lavfi -t 2 -i "sine=frequency=440:sample_rate=44100")
b=(-f lavfi -t 2 -i "sine=frequency=880:sample_rate=48000")
# One thread: x264's output then does not depend on the machine's core count.
x264=(-c:v libx264 -preset veryfast -crf 30 -threads 1)
aac=(-c:a aac -b:a 64k)

# ffmpeg's default MP4 layout (and most cameras'): the moov index after the media. ffmpeg cannot
# read it from a pipe, but only once mdat outgrows what the demuxer can seek back over in its read
# buffer (about 64 KiB; a 56 KB file still worked). CRF 18 makes the mdat about 4 times that.
ff "${v[@]}" "${a[@]}" "${x264[@]}" -crf 18 -pix_fmt yuv420p "${aac[@]}" "${exact[@]}" moov-at-end.mp4
# The same streams with the index first: reads fine from a pipe.
ff "${v[@]}" "${a[@]}" "${x264[@]}" -crf 18 -pix_fmt yuv420p "${aac[@]}" -movflags +faststart \
    "${exact[@]}" faststart.mp4
ff "${v[@]}" "${a[@]}" "${x264[@]}" -pix_fmt yuv420p -c:a pcm_s16le "${exact[@]}" -f mov quicktime.mov
ff "${v[@]}" "${a[@]}" "${b[@]}" -map 0:v -map 1:a -map 2:a "${x264[@]}" -pix_fmt yuv420p \
    -c:a:0 aac -b:a:0 64k -c:a:1 libvorbis -q:a:1 2 \
    -metadata:s:a:0 language=eng -metadata:s:a:1 language=fra "${exact[@]}" two-audio.mkv
ff "${v[@]}" "${a[@]}" -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 200k -threads 1 \
    -pix_fmt yuv420p -c:a libopus -b:a 48k "${exact[@]}" vp9-opus.webm
ff "${v[@]}" "${a[@]}" "${x264[@]}" -pix_fmt yuv420p "${aac[@]}" "${exact[@]}" -f mpegts mpeg-ts.ts
ff "${v[@]}" "${a[@]}" -c:v mpeg4 -q:v 8 -c:a libmp3lame -b:a 64k "${exact[@]}" -f avi mpeg4-mp3.avi
# Odd width and height. libx264 and libx265 reject odd sizes in 4:2:0 ("width not divisible by 2";
# chroma is subsampled 2x2) but take them in 4:4:4 (High 4:4:4 Predictive), so the file really is
# 321x241 and the preset must fix it. Scale rather than ask testsrc2 for 321x241: it rounds to even.
ff "${v[@]}" "${a[@]}" -vf scale=321:241 "${x264[@]}" -pix_fmt yuv444p "${aac[@]}" "${exact[@]}" \
    odd-size.mp4
# 10-bit 4:2:0 (High 10): must come out 8-bit for players that only do 8-bit H.264.
ff "${v[@]}" "${a[@]}" "${x264[@]}" -pix_fmt yuv420p10le -profile:v high10 "${aac[@]}" "${exact[@]}" \
    10bit.mkv
ff "${v[@]}" "${x264[@]}" -pix_fmt yuv420p -movflags +faststart "${exact[@]}" no-audio.mp4
ff "${a[@]}" -c:a libmp3lame -b:a 96k "${exact[@]}" tone-mp3.mp3
ff "${a[@]}" -c:a pcm_s16le "${exact[@]}" tone-wav.wav

# The kinds of input the presets meet in the wild (see README.md here): broadcast and DVD audio,
# surround, lossless, every video codec the presets make, subtitles, data tracks, cover art.
st=(-f lavfi -t 2 -i "aevalsrc=sin(440*2*PI*t)|sin(660*2*PI*t):s=48000:c=stereo")
c51=(-f lavfi -t 2 -i "aevalsrc=sin(220*2*PI*t)|sin(330*2*PI*t)|sin(440*2*PI*t)|0.1*sin(55*2*PI*t)|sin(550*2*PI*t)|sin(660*2*PI*t):s=48000:c=5.1")
s48=(-f lavfi -t 2 -i "sine=frequency=440:sample_rate=48000")
x265=(-c:v libx265 -preset ultrafast -crf 32 -x265-params log-level=error:pools=1:frame-threads=1)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
ff "${v[@]}" "${st[@]}" "${x264[@]}" -pix_fmt yuv420p -c:a mp2 -b:a 128k "${exact[@]}" -f mpegts dvb-mp2.ts
ff "${v[@]}" "${st[@]}" -c:v mpeg2video -q:v 12 -c:a mp2 -b:a 96k "${exact[@]}" -f vob mpeg2-ps.mpg
ff "${v[@]}" "${c51[@]}" "${x264[@]}" -pix_fmt yuv420p -c:a ac3 -b:a 192k "${exact[@]}" ac3-surround.mkv
ff "${v[@]}" "${st[@]}" "${x264[@]}" -pix_fmt yuv420p -c:a eac3 -b:a 96k -movflags +faststart \
    "${exact[@]}" eac3-audio.mp4
ff "${v[@]}" "${a[@]}" "${x264[@]}" -pix_fmt yuv420p -c:a flac "${exact[@]}" flac-audio.mkv
ff "${a[@]}" -c:a alac "${exact[@]}" tone-alac.m4a
ff "${v[@]}" "${s48[@]}" "${x264[@]}" -pix_fmt yuv420p -c:a libopus -b:a 48k -movflags +faststart \
    "${exact[@]}" opus-audio.mp4
ff "${v[@]}" "${a[@]}" "${x265[@]}" -pix_fmt yuv420p "${aac[@]}" "${exact[@]}" hevc-8bit.mp4
ff "${v[@]}" "${x265[@]}" -pix_fmt yuv420p10le "${exact[@]}" hevc-10bit.mkv
ff "${v[@]}" "${s48[@]}" -c:v libsvtav1 -preset 12 -crf 50 -pix_fmt yuv420p -c:a libopus -b:a 48k \
    "${exact[@]}" av1-video.mkv 2>/dev/null
ff "${v[@]}" "${a[@]}" -c:v libvpx -deadline realtime -cpu-used 8 -b:v 150k -threads 1 \
    -c:a libvorbis -q:a 2 "${exact[@]}" vp8-vorbis.webm
ff "${v[@]}" "${a[@]}" -vf scale=160:120 -c:v mjpeg -q:v 20 -pix_fmt yuvj420p -c:a pcm_s16le \
    "${exact[@]}" -f avi mjpeg-pcm.avi
printf '1\n00:00:00,000 --> 00:00:01,000\nHello\n\n2\n00:00:01,000 --> 00:00:02,000\nWorld\n' \
    >"$scratch/subs.srt"
for kind in srt ass mov_text; do
    case $kind in mov_text) name=subs-mov-text.mp4 fast=(-movflags +faststart) ;; *) name=subs-$kind.mkv fast=() ;; esac
    ff "${v[@]}" "${a[@]}" -i "$scratch/subs.srt" -map 0 -map 1 -map 2 "${x264[@]}" -pix_fmt yuv420p \
        "${aac[@]}" -c:s "$kind" "${fast[@]}" "${exact[@]}" "$name"
done
ff "${v[@]}" "${a[@]}" "${x264[@]}" -pix_fmt yuv420p "${aac[@]}" -timecode 01:00:00:00 "${exact[@]}" \
    -f mov timecode.mov
# 2000 bytes of data as a private data stream of the TS, as KLV metadata travels.
head -c 2000 /dev/zero | tr '\0' 'k' >"$scratch/blob.bin"
ff "${v[@]}" "${a[@]}" -f data -i "$scratch/blob.bin" -map 0 -map 1 -map 2 "${x264[@]}" \
    -pix_fmt yuv420p "${aac[@]}" -c:d copy "${exact[@]}" -f mpegts data-track.ts
ff "${v[@]}" -frames:v 1 -vf scale=64:64 "${exact[@]}" "$scratch/cover.png"
ff "${a[@]}" -i "$scratch/cover.png" -map 0 -map 1 -c:a libmp3lame -b:a 64k -c:v png \
    -disposition:v attached_pic -id3v2_version 3 "${exact[@]}" tone-cover.mp3

# ---- checks ---------------------------------------------------------------------------------
status=0
fail() { echo "make-samples: $*" >&2; status=1; }

# One line per stream: "video h264 High 320x240 yuv420p" or "audio aac LC 44100Hz 1ch eng".
# (MPEG-TS lists its streams twice, once under the program: keep the first of each.)
streams() {
    ffprobe -v error -show_entries \
        stream=index,codec_type,codec_name,profile,width,height,pix_fmt,sample_rate,channels:stream_tags=language \
        -of compact=p=0 "$1" | awk -F'|' 'NF && !seen[$0]++ {
            delete k
            for (i = 1; i <= NF; i++) { split($i, kv, "="); k[kv[1]] = substr($i, length(kv[1]) + 2) }
            p = (k["profile"] == "unknown" ? "" : " " k["profile"])
            if (k["codec_type"] == "video")
                print "video " k["codec_name"] p " " k["width"] "x" k["height"] " " k["pix_fmt"]
            else if (k["codec_type"] == "audio")
                print "audio " k["codec_name"] p " " k["sample_rate"] "Hz " k["channels"] "ch" \
                    (k["tag:language"] != "" && k["tag:language"] != "und" ? " " k["tag:language"] : "")
            else print k["codec_type"] " " k["codec_name"]
        }'
}
count() { streams "$1" | grep -c "^$2 " || true; }

# Top-level MP4/MOV box types in file order, read with od so no other tool is needed.
boxes() {
    local f=$1 off=0 len size hdr type
    len=$(stat -c %s "$f")
    while (( off + 8 <= len )); do
        hdr=$(od -An -v -tx1 -j "$off" -N 8 "$f" | tr -d ' \n')
        size=$((16#${hdr:0:8}))
        type=$(printf '%b' "\\x${hdr:8:2}\\x${hdr:10:2}\\x${hdr:12:2}\\x${hdr:14:2}")
        if (( size == 1 )); then
            size=$((16#$(od -An -v -tx1 -j "$((off + 8))" -N 8 "$f" | tr -d ' \n')))
        elif (( size == 0 )); then
            size=$((len - off))
        fi
        (( size >= 8 )) || { echo "$type(bad-size)"; return; }
        printf '%s ' "$type"
        off=$((off + size))
    done
    echo
}

total=0
for f in "${samples[@]}"; do
    [ -s "$f" ] || { fail "$f was not written"; continue; }
    size=$(stat -c %s "$f")
    total=$((total + size))
    d=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$f")
    printf '%-16s %7d B  %8.3f s  %s\n' "$f" "$size" "$d" "$(streams "$f" | paste -sd, - | sed 's/,/, /g')"
    awk -v d="$d" 'BEGIN { exit !(d + 0 >= 1.9 && d + 0 <= 2.1) }' || fail "$f lasts $d s, not 2.0 +- 0.1"
done
printf '%-16s %7d B\n' total "$total"

layout=$(boxes moov-at-end.mp4)
[[ $layout =~ ^ftyp\ (free\ )?mdat\ moov\ $ ]] || fail "moov-at-end.mp4 boxes: $layout (want ftyp [free] mdat moov)"
layout=$(boxes faststart.mp4)
[[ $layout =~ ^ftyp\ moov\ (free\ )?mdat\ $ ]] || fail "faststart.mp4 boxes: $layout (want ftyp moov [free] mdat)"
# The reason moov-at-end.mp4 exists: reading it from a pipe must fail, and faststart.mp4 must not.
pipe_err=$(ffmpeg -nostdin -hide_banner -v error -i pipe:0 -map 0 -f null - <moov-at-end.mp4 2>&1 || true)
grep -q 'partial file' <<<"$pipe_err" || fail "moov-at-end.mp4 read from a pipe without 'partial file'"
pipe_err=$(ffmpeg -nostdin -hide_banner -v error -i pipe:0 -map 0 -f null - <faststart.mp4 2>&1) \
    && [ -z "$pipe_err" ] || fail "faststart.mp4 does not read cleanly from a pipe: $pipe_err"

wh=$(ffprobe -v error -select_streams v:0 -show_entries stream=width,height -of csv=p=0 odd-size.mp4)
w=${wh%,*} h=${wh#*,}
(( w % 2 == 1 && h % 2 == 1 )) || fail "odd-size.mp4 is ${w}x${h}, not odd by odd"
pf=$(ffprobe -v error -select_streams v:0 -show_entries stream=pix_fmt,profile -of csv=p=0 10bit.mkv)
[[ $pf == *yuv420p10le* && $pf == *"High 10"* ]] || fail "10bit.mkv is '$pf', not High 10 yuv420p10le"
[ "$(count two-audio.mkv audio)" = 2 ] || fail "two-audio.mkv does not have two audio streams"
[ "$(streams two-audio.mkv | awk '/^audio/ { print $NF }' | paste -sd, -)" = eng,fra ] \
    || fail "two-audio.mkv audio languages are not eng,fra"
[ "$(count no-audio.mp4 audio)" = 0 ] || fail "no-audio.mp4 has audio"
for f in tone-mp3.mp3 tone-wav.wav tone-alac.m4a; do
    [ "$(count "$f" video)" = 0 ] || fail "$f has video"
done
streams ac3-surround.mkv | grep -q '^audio ac3.* 6ch' || fail "ac3-surround.mkv has no 5.1 AC-3"
streams dvb-mp2.ts | grep -q '^audio mp2' || fail "dvb-mp2.ts has no MP2 audio"
for f in subs-srt.mkv subs-ass.mkv subs-mov-text.mp4; do
    [ "$(count "$f" subtitle)" = 1 ] || fail "$f has no subtitle stream"
done
[ "$(count timecode.mov data)" = 1 ] || fail "timecode.mov has no timecode track"
[ "$(count data-track.ts data)" = 1 ] || fail "data-track.ts has no data stream"
[ "$(count tone-cover.mp3 video)" = 1 ] || fail "tone-cover.mp3 has no cover art"
for f in "${samples[@]}"; do
    case $f in tone-*) ;; *) [ "$(count "$f" video)" = 1 ] || fail "$f does not have one video stream" ;; esac
done
(( total < 3 * 1024 * 1024 )) || fail "samples total $total bytes, over 3 MiB"

[ "$status" = 0 ] && echo "make-samples: all ${#samples[@]} samples OK" >&2
exit "$status"
