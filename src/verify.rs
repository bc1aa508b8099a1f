//! Deciding whether an output is good enough to count as done.
//!
//! ffmpeg's exit code alone proves little: fed an MP4 whose index sits at the end through a pipe,
//! it exits 0 with an almost empty file. So an output counts only when it is read back as media
//! with the streams the preset promises, and its duration matches the input's within
//! [`DURATION_TOLERANCE`] seconds. The read-back is the output's own index
//! ([`crate::readback`]) when that states everything the check needs ([`needs_ffprobe`]), and
//! ffprobe otherwise. The file's top-level structure is checked separately
//! ([`crate::media::check_output_shape`]). Codecs are compared by what a stream is
//! ([`crate::codec`]), not by the name one reader gives it.
//!
//! Streams a preset does not carry (subtitles into MP4, data and timecode tracks, cover art,
//! extra tracks a preset maps away) are dropped on purpose; [`dropped`] names them for the
//! result line.

use crate::codec::same_codec;
use crate::ffmpeg::{InputInfo, Probe};
use crate::preset::Check;

/// How far the output's duration may drift from the input's, in seconds.
pub const DURATION_TOLERANCE: f64 = 0.5;

/// Check a probed output against the preset's promises and the input.
///
/// `decoded` is the output position ffmpeg last reported (`out_time_us`), used only when the
/// input's duration is unknown, to catch an output that lost part of what ffmpeg produced.
pub fn check(
    check: &Check,
    input: &InputInfo,
    probe: &Probe,
    decoded: Option<f64>,
) -> Result<(), String> {
    let video: Vec<_> = probe.video().collect();
    let audio: Vec<_> = probe.audio().collect();
    if video.is_empty() && audio.is_empty() {
        return Err("output has no audio or video stream".into());
    }

    match &check.video {
        Some(codec) if !input.video.is_empty() || check.image => {
            let Some(v) = video.first() else {
                return Err("output has no video stream".into());
            };
            let want = if codec == "copy" {
                input.video.first().map(String::as_str).unwrap_or("")
            } else {
                codec.as_str()
            };
            if !want.is_empty() && !same_codec(want, &v.codec_name) {
                return Err(format!("output video is {}, expected {want}", v.codec_name));
            }
            if let Some(tag) = &check.video_tag
                && &v.codec_tag_string != tag
            {
                return Err(format!(
                    "output video tag is {}, expected {tag}",
                    v.codec_tag_string
                ));
            }
            if let Some(pf) = &check.pix_fmt
                && v.pix_fmt.as_deref() != Some(pf.as_str())
            {
                return Err(format!(
                    "output pixel format is {}, expected {pf}",
                    v.pix_fmt.as_deref().unwrap_or("unknown")
                ));
            }
            let (w, h) = (v.width.unwrap_or(0), v.height.unwrap_or(0));
            if w == 0 || h == 0 {
                return Err("output video has no dimensions".into());
            }
            if check.even_dimensions && (w % 2 != 0 || h % 2 != 0) {
                return Err(format!("output size {w}x{h} is not even"));
            }
            if check.max_width.is_some_and(|m| w > m) || check.max_height.is_some_and(|m| h > m) {
                return Err(format!("output size {w}x{h} exceeds the preset's limit"));
            }
        }
        Some(_) => {}
        None => {
            if !video.is_empty() {
                return Err("output has a video stream, but the preset makes audio only".into());
            }
        }
    }

    match &check.audio {
        Some(codec) if !input.audio.is_empty() => {
            if audio.is_empty() {
                return Err("output has no audio stream, but the input has audio".into());
            }
            for (i, a) in audio.iter().enumerate() {
                let want = if codec == "copy" {
                    input.audio.get(i).map(String::as_str).unwrap_or("")
                } else {
                    codec.as_str()
                };
                if !want.is_empty() && !same_codec(want, &a.codec_name) {
                    return Err(format!("output audio is {}, expected {want}", a.codec_name));
                }
            }
        }
        Some(_) => {}
        None => {
            if !audio.is_empty() && !check.image {
                return Err("output has an audio stream, but the preset makes video only".into());
            }
        }
    }

    if check.image {
        return Ok(());
    }
    let Some(out) = probe.duration() else {
        return Err("output has no duration".into());
    };
    let (reference, what) = match (input.duration, decoded) {
        (Some(d), _) => (d, "input"),
        (None, Some(d)) => (d, "encoded stream"),
        (None, None) => return Ok(()),
    };
    if (out - reference).abs() > DURATION_TOLERANCE {
        return Err(format!(
            "output lasts {out:.2} s but the {what} lasts {reference:.2} s"
        ));
    }
    Ok(())
}

/// The input streams that did not reach the output, for the result line: `subtitle (subrip)`,
/// `data (tmcd)`, `cover art (png)`, `audio (vorbis)`. Empty when everything was carried.
///
/// Streams are matched per kind and in order: an output with one video stream from an input
/// with two dropped the second. That is what the presets' `-map` lines do (`0:V:0`, `0:a:0`).
///
/// The kinds a preset does not make at all (video for an audio preset, audio for a picture) are
/// not listed: leaving them out is what the preset is for.
pub fn dropped(check: &Check, input: &InputInfo, probe: &Probe) -> Vec<String> {
    let mut out = Vec::new();
    let makes_video = check.video.is_some();
    let makes_audio = check.audio.is_some() && !check.image;
    let kept_video = probe.video().count();
    let kept_audio = probe.audio().count();
    for codec in input.video.iter().skip(kept_video).filter(|_| makes_video) {
        out.push(format!("video ({codec})"));
    }
    for codec in input.audio.iter().skip(kept_audio).filter(|_| makes_audio) {
        out.push(format!("audio ({codec})"));
    }
    for (i, (kind, codec)) in input.other.iter().enumerate() {
        let earlier = input.other[..i].iter().filter(|(k, _)| k == kind).count();
        let kept = probe
            .streams
            .iter()
            .filter(|s| match kind.as_str() {
                "cover art" => s.codec_type == "video" && s.disposition.attached_pic != 0,
                k => s.codec_type == k,
            })
            .count();
        if earlier >= kept {
            out.push(format!("{kind} ({codec})"));
        }
    }
    out
}

/// Why `probe` cannot settle `check` on its own, when it cannot: a stream of unknown codec, or a
/// property the check needs that the probe does not state. A read-back of the index
/// ([`crate::readback`]) states no pixel format, for one; ffprobe then has to answer.
pub fn needs_ffprobe(check: &Check, input: &InputInfo, probe: &Probe) -> Option<&'static str> {
    let media: Vec<_> = probe.video().chain(probe.audio()).collect();
    if media.iter().any(|s| s.codec_name.is_empty()) {
        return Some("a stream of a codec the read-back does not name");
    }
    if media.is_empty() {
        return Some("no audio or video stream in the index");
    }
    let video_checked = check.video.is_some() && (!input.video.is_empty() || check.image);
    if video_checked {
        let Some(v) = probe.video().next() else {
            return Some("no video stream in the index");
        };
        if check.pix_fmt.is_some() && v.pix_fmt.is_none() {
            return Some("the pixel format");
        }
        if v.width.is_none() || v.height.is_none() {
            return Some("the frame size");
        }
    }
    if !check.image && probe.duration().is_none() {
        return Some("the duration");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffmpeg::{ProbeFormat, ProbeStream};

    fn stream(kind: &str, codec: &str, w: u32, h: u32) -> ProbeStream {
        ProbeStream {
            codec_type: kind.into(),
            codec_name: codec.into(),
            width: (w > 0).then_some(w),
            height: (h > 0).then_some(h),
            pix_fmt: (w > 0).then(|| "yuv420p".into()),
            ..Default::default()
        }
    }

    fn probe(streams: Vec<ProbeStream>, duration: f64) -> Probe {
        Probe {
            streams,
            format: Some(ProbeFormat {
                format_name: "mov,mp4".into(),
                duration: Some(duration.to_string()),
                size: None,
            }),
        }
    }

    fn h264() -> Check {
        crate::preset::load("h264").expect("h264").check
    }

    fn av_input(d: Option<f64>) -> InputInfo {
        InputInfo {
            duration: d,
            video: vec!["mpeg4".into()],
            audio: vec!["mp3".into()],
            other: vec![],
        }
    }

    #[test]
    fn good_output_passes() {
        let p = probe(
            vec![
                stream("video", "h264", 320, 240),
                stream("audio", "aac", 0, 0),
            ],
            2.02,
        );
        check(&h264(), &av_input(Some(2.0)), &p, None).expect("ok");
    }

    #[test]
    fn short_output_fails_with_both_durations() {
        let p = probe(
            vec![
                stream("video", "h264", 320, 240),
                stream("audio", "aac", 0, 0),
            ],
            1.2,
        );
        let err = check(&h264(), &av_input(Some(2.0)), &p, None).expect_err("short");
        assert!(err.contains("1.20") && err.contains("2.00"), "{err}");
    }

    #[test]
    fn missing_audio_fails_when_input_had_audio() {
        let p = probe(vec![stream("video", "h264", 320, 240)], 2.0);
        let err = check(&h264(), &av_input(Some(2.0)), &p, None).expect_err("no audio");
        assert!(err.contains("audio"), "{err}");
        let silent = InputInfo {
            audio: vec![],
            ..av_input(Some(2.0))
        };
        check(&h264(), &silent, &p, None).expect("video-only input gives video-only output");
    }

    #[test]
    fn odd_size_and_wrong_codec_fail() {
        let odd = probe(
            vec![
                stream("video", "h264", 321, 240),
                stream("audio", "aac", 0, 0),
            ],
            2.0,
        );
        assert!(check(&h264(), &av_input(Some(2.0)), &odd, None).is_err());
        let wrong = probe(
            vec![
                stream("video", "mpeg4", 320, 240),
                stream("audio", "aac", 0, 0),
            ],
            2.0,
        );
        let err = check(&h264(), &av_input(Some(2.0)), &wrong, None).expect_err("codec");
        assert!(err.contains("expected h264"), "{err}");
    }

    #[test]
    fn copy_means_same_codec_as_input() {
        let c = crate::preset::load("copy").expect("copy").check;
        let same = probe(
            vec![
                stream("video", "mpeg4", 320, 240),
                stream("audio", "mp3", 0, 0),
            ],
            2.0,
        );
        check(&c, &av_input(Some(2.0)), &same, None).expect("copy ok");
        let changed = probe(
            vec![
                stream("video", "h264", 320, 240),
                stream("audio", "mp3", 0, 0),
            ],
            2.0,
        );
        assert!(check(&c, &av_input(Some(2.0)), &changed, None).is_err());
    }

    #[test]
    fn unknown_input_duration_falls_back_to_encoded_position() {
        let p = probe(
            vec![
                stream("video", "h264", 320, 240),
                stream("audio", "aac", 0, 0),
            ],
            0.4,
        );
        assert!(check(&h264(), &av_input(None), &p, Some(2.0)).is_err());
        check(&h264(), &av_input(None), &p, Some(0.4)).expect("consistent");
    }

    #[test]
    fn image_needs_no_duration() {
        let c = crate::preset::load("thumbnail").expect("thumbnail").check;
        let jpeg = Probe {
            streams: vec![stream("video", "mjpeg", 320, 240)],
            format: None,
        };
        let mut jpeg = jpeg;
        jpeg.streams[0].pix_fmt = Some("yuvj420p".into());
        check(&c, &av_input(Some(60.0)), &jpeg, None).expect("image ok");
    }

    // Regression: a stream copy of MPEG-TS MP2 audio into MP4 was rejected as "output audio is
    // mp3, expected mp2"; MP4 readers name layers I-III mp3.
    #[test]
    fn copy_of_mp2_into_mp4_passes() {
        let c = crate::preset::load("copy").expect("copy").check;
        let input = InputInfo {
            duration: Some(2.0),
            video: vec!["h264".into()],
            audio: vec!["mp2".into()],
            other: vec![],
        };
        let p = probe(
            vec![
                stream("video", "h264", 320, 240),
                stream("audio", "mp3", 0, 0),
            ],
            2.0,
        );
        check(&c, &input, &p, None).expect("the same stream");
        let p = probe(
            vec![
                stream("video", "h264", 320, 240),
                stream("audio", "aac", 0, 0),
            ],
            2.0,
        );
        assert!(check(&c, &input, &p, None).is_err(), "another codec");
    }

    #[test]
    fn dropped_names_what_the_preset_left_out_and_not_what_it_never_makes() {
        let input = InputInfo {
            duration: Some(2.0),
            video: vec!["h264".into()],
            audio: vec!["aac".into(), "vorbis".into()],
            other: vec![
                ("subtitle".into(), "subrip".into()),
                ("data".into(), "tmcd".into()),
                ("cover art".into(), "png".into()),
            ],
        };
        let mut p = probe(
            vec![
                stream("video", "h264", 320, 240),
                stream("audio", "aac", 0, 0),
                stream("data", "", 0, 0),
            ],
            2.0,
        );
        assert_eq!(
            dropped(&h264(), &input, &p),
            ["audio (vorbis)", "subtitle (subrip)", "cover art (png)"]
        );
        let aac = crate::preset::load("aac").expect("aac").check;
        p.streams.remove(0);
        assert_eq!(
            dropped(&aac, &input, &p),
            ["audio (vorbis)", "subtitle (subrip)", "cover art (png)"],
            "an audio preset does not report the video it never makes"
        );
        let thumb = crate::preset::load("thumbnail").expect("thumbnail").check;
        let jpeg = probe(vec![stream("video", "mjpeg", 320, 240)], 0.0);
        assert_eq!(
            dropped(&thumb, &input, &jpeg),
            ["subtitle (subrip)", "data (tmcd)", "cover art (png)"]
        );
    }

    #[test]
    fn audio_only_preset_rejects_video() {
        let c = crate::preset::load("mp3").expect("mp3").check;
        let p = probe(
            vec![
                stream("video", "h264", 320, 240),
                stream("audio", "mp3", 0, 0),
            ],
            2.0,
        );
        assert!(check(&c, &av_input(Some(2.0)), &p, None).is_err());
    }
}
