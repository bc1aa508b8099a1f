#!/usr/bin/env bash
# Regenerate the sample media in this folder with the host's ffmpeg.
#
# Each sample is 2 seconds of testsrc2 video (320x240, 25 fps) and/or a sine tone, small enough to
# commit, and each exercises one thing a transcoder must get right (see README.md here).
# Bit-exact flags keep re-runs reproducible for a given ffmpeg version.
set -euo pipefail
cd "$(dirname "$0")"

ff() { ffmpeg -hide_banner -loglevel error -y "$@"; }
exact=(-map_metadata -1 -fflags +bitexact -flags:v +bitexact -flags:a +bitexact)
v=(-f lavfi -i "testsrc2=size=320x240:rate=25")
a=(-f lavfi -i "sine=frequency=440:sample_rate=44100")
b=(-f lavfi -i "sine=frequency=880:sample_rate=48000")
t=(-t 2)
x264=(-c:v libx264 -preset veryfast -crf 30 -pix_fmt yuv420p -threads 1)

rm -f moov-at-end.mp4 faststart.mp4 quicktime.mov two-audio.mkv vp9-opus.webm mpeg-ts.ts mpeg4-mp3.avi \
    odd-size.mp4 10bit.mkv no-audio.mp4 tone-mp3.mp3 tone-wav.wav

# ffmpeg's default MP4 layout: the moov index after the media. Cannot be read from a pipe.
ff "${v[@]}" "${a[@]}" "${t[@]}" "${x264[@]}" -c:a aac -b:a 64k "${exact[@]}" moov-at-end.mp4
# The index first: streams from a pipe.
ff "${v[@]}" "${a[@]}" "${t[@]}" "${x264[@]}" -c:a aac -b:a 64k -movflags +faststart "${exact[@]}" faststart.mp4
ff "${v[@]}" "${a[@]}" "${t[@]}" "${x264[@]}" -c:a pcm_s16le "${exact[@]}" -f mov quicktime.mov
ff "${v[@]}" "${a[@]}" "${b[@]}" "${t[@]}" -map 0:v -map 1:a -map 2:a "${x264[@]}" \
    -c:a:0 aac -b:a:0 64k -c:a:1 libvorbis -q:a:1 2 \
    -metadata:s:a:0 language=eng -metadata:s:a:1 language=fra "${exact[@]}" two-audio.mkv
ff "${v[@]}" "${a[@]}" "${t[@]}" -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 200k \
    -c:a libopus -b:a 48k "${exact[@]}" vp9-opus.webm
ff "${v[@]}" "${a[@]}" "${t[@]}" "${x264[@]}" -c:a aac -b:a 64k "${exact[@]}" -f mpegts mpeg-ts.ts
ff "${v[@]}" "${a[@]}" "${t[@]}" -c:v mpeg4 -q:v 8 -c:a libmp3lame -b:a 64k "${exact[@]}" mpeg4-mp3.avi
# Odd width and height: 4:2:0 encoders need even ones, so the preset must fix them.
ff "${v[@]}" "${a[@]}" "${t[@]}" -vf scale=321:241 -c:v libx264 -preset veryfast \
    -crf 30 -pix_fmt yuv444p -threads 1 -c:a aac -b:a 64k "${exact[@]}" odd-size.mp4
# 10-bit 4:2:0 (High 10): must come out 8-bit.
ff "${v[@]}" "${a[@]}" "${t[@]}" -c:v libx264 -preset veryfast -crf 30 -pix_fmt yuv420p10le \
    -threads 1 -c:a aac -b:a 64k "${exact[@]}" 10bit.mkv
ff "${v[@]}" "${t[@]}" "${x264[@]}" -movflags +faststart "${exact[@]}" no-audio.mp4
ff "${a[@]}" "${t[@]}" -c:a libmp3lame -b:a 96k "${exact[@]}" tone-mp3.mp3
ff "${a[@]}" "${t[@]}" -c:a pcm_s16le "${exact[@]}" tone-wav.wav

status=0
for f in moov-at-end.mp4 faststart.mp4 quicktime.mov two-audio.mkv vp9-opus.webm mpeg-ts.ts mpeg4-mp3.avi \
    odd-size.mp4 10bit.mkv no-audio.mp4 tone-mp3.mp3 tone-wav.wav; do
    d=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$f")
    s=$(ffprobe -v error -show_entries stream=codec_name,width,height,pix_fmt -of csv=p=0 "$f" | sort -u | tr '\n' ' ')
    printf '%-16s %7s bytes  %ss  %s\n' "$f" "$(stat -c %s "$f")" "$d" "$s"
    awk -v d="$d" 'BEGIN { exit !(d > 1.9 && d < 2.1) }' || { echo "  duration $d is not 2 s" >&2; status=1; }
done
# The whole point of two of them: check the layouts.
boxes() { python3 -c 'import struct,sys
d=open(sys.argv[1],"rb").read(); o=0; r=[]
while o+8<=len(d):
    s,t=struct.unpack(">I4s",d[o:o+8]); r.append(t.decode()); o+=s
print(" ".join(r))' "$1"; }
case "$(boxes moov-at-end.mp4)" in *mdat*moov*) ;; *) echo "moov-at-end.mp4 has moov first" >&2; status=1 ;; esac
case "$(boxes faststart.mp4)" in *moov*mdat*) ;; *) echo "faststart.mp4 has moov last" >&2; status=1 ;; esac
[ "$(ffprobe -v error -show_entries stream=width -of csv=p=0 odd-size.mp4)" = 321 ] || { echo "odd-size.mp4 is not 321 wide" >&2; status=1; }
exit $status
