//! Reading what ffmpeg and ffprobe say.
//!
//! ffmpeg's stderr carries three things at once, and all of them are read in one pass while the
//! job runs (a stderr that is not drained stalls the process):
//! - the input dump (`Input #0 ... Duration: ... Stream #0:1: Audio: ...`), which gives the input's
//!   duration and streams without a separate probe of the input;
//! - the machine-readable progress blocks of `-progress pipe:2` (`key=value` lines ending in
//!   `progress=continue|end`);
//! - error messages, of which the last few meaningful lines are kept for the failure report.
//!
//! The container-side job server adds lines of its own, `@isc:NONCE:...`, to pass back its
//! stage, the output's size and, when asked, its ffprobe JSON over the same channel. The nonce is
//! the job's ([`StderrParser::for_job`]): ffmpeg never sees it, so nothing an input makes ffmpeg
//! print can pass for the server, and a line that starts like a mark without it is refused.
//!
//! Everything here comes from a worker, which is not trusted: every buffer has a limit, named
//! below, and going past one is a [`StderrParser::violation`] that fails the job, never memory
//! that grows with what the worker sends.
//!
//! ffprobe's JSON (`-of json -show_format -show_streams`) is parsed with serde.

use serde::Deserialize;
use std::collections::VecDeque;

/// Prefix of the lines that the container-side job server writes to stderr.
pub const MARK: &str = "@isc:";

/// Longest line kept for a failure report or echoed with `-vv`: ffmpeg's own messages are far
/// shorter (a long one names a path and a codec, under 300 bytes); a longer line is cut.
pub const MAX_LINE: usize = 4 << 10;

/// Longest run of bytes without a line break that is held while waiting for its end; longer
/// runs are read as a line of their own (and cut to [`MAX_LINE`] where kept).
pub const MAX_PARTIAL: usize = 64 << 10;

/// Most lines held for `-vv` between two reads of [`StderrParser::fresh`].
pub const MAX_FRESH: usize = 1000;

/// Most marks one job may send. The job server sends about five (its stages, the size, the
/// end), so 64 leaves room for every stage and still bounds a worker that sends them in a loop.
pub const MAX_MARKS: usize = 64;

/// Most bytes of ffprobe JSON taken from a worker: ffprobe describes a file of a few streams in
/// about 3 KB and one of 100 streams in about 150 KB.
pub const MAX_PROBE_JSON: usize = 1 << 20;

/// Most input streams taken from ffmpeg's input dump: more than any real file has (an MPEG-TS
/// of a whole multiplex has a few dozen), few enough to hold.
pub const MAX_STREAMS: usize = 1024;

/// What the input dump told about the input.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InputInfo {
    /// Seconds, when the container states it.
    pub duration: Option<f64>,
    /// Codec of each video stream, excluding attached pictures (cover art).
    pub video: Vec<String>,
    /// Codec of each audio stream.
    pub audio: Vec<String>,
    /// The other streams, in order, as (kind, codec): `subtitle`, `data`, `attachment`, and
    /// `cover art` for attached pictures. A timecode or other data track whose codec ffmpeg
    /// calls `none` is named by its tag (`tmcd`).
    pub other: Vec<(String, String)>,
}

/// One `-progress` block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Position in the output, in microseconds.
    pub out_time_us: Option<u64>,
    pub fps: Option<f64>,
    /// Encode speed as a multiple of realtime.
    pub speed: Option<f64>,
    pub total_size: Option<u64>,
    /// `progress=end` was seen.
    pub end: bool,
}

/// Incremental parser for ffmpeg's stderr.
#[derive(Debug, Default)]
pub struct StderrParser {
    section: Section,
    pub input: InputInfo,
    block: Progress,
    pub last_progress: Option<Progress>,
    tail: VecDeque<String>,
    probe_json: String,
    pub marks: Vec<(String, String)>,
    partial: Vec<u8>,
    /// Meaningful lines not yet taken by the caller (for echoing with `-vv`).
    pub fresh: Vec<String>,
    /// The version from ffmpeg's banner (`ffmpeg version 5.1.9-0+deb12u1 Copyright ...`).
    pub ffmpeg_version: Option<String>,
    /// Why ffmpeg could not finish its output, when it said so ([`StderrParser::unfinished`]).
    unfinished: Option<String>,
    /// Why the input does not fit the preset, when ffmpeg said so ([`StderrParser::refusal`]).
    refusal: Option<String>,
    /// The nonce that every mark of this job carries ([`StderrParser::for_job`]).
    nonce: Option<String>,
    /// What the worker sent that no job server sends ([`StderrParser::violation`]).
    violation: Option<String>,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum Section {
    #[default]
    None,
    /// ffmpeg's banner: version, build configuration, library versions.
    Banner,
    Input,
    Output,
    Mapping,
}

const TAIL_LINES: usize = 12;

/// What a chunk of stderr produced.
#[derive(Debug, Default)]
pub struct Feed {
    /// Completed progress blocks, in order.
    pub progress: Vec<Progress>,
}

impl StderrParser {
    /// A parser for ffmpeg run here: no marks are expected, `@isc:` lines are plain lines.
    pub fn new() -> Self {
        Self::default()
    }

    /// A parser for one job of the job server, whose marks carry `nonce`.
    pub fn for_job(nonce: &str) -> Self {
        StderrParser {
            nonce: Some(nonce.to_string()),
            ..Self::default()
        }
    }

    /// What the worker sent that breaks the job server's protocol or one of this module's
    /// limits: a mark without the job's nonce, too many marks, too much probe JSON, too many
    /// streams. The job must fail with it: nothing the worker says after it is believed.
    pub fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    fn violate(&mut self, why: String) {
        if self.violation.is_none() {
            self.violation = Some(why);
        }
    }

    /// Feed raw bytes (any chunking); complete lines are parsed.
    pub fn feed(&mut self, bytes: &[u8]) -> Feed {
        let mut feed = Feed::default();
        self.partial.extend_from_slice(bytes);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if let Some(p) = self.line(&line) {
                feed.progress.push(p);
            }
        }
        if self.partial.len() > MAX_PARTIAL {
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            self.line(&line);
        }
        feed
    }

    /// Flush a trailing line without a newline.
    pub fn finish(&mut self) -> Feed {
        let mut feed = Feed::default();
        if !self.partial.is_empty() {
            let line = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial.clear();
            if let Some(p) = self.line(&line) {
                feed.progress.push(p);
            }
        }
        feed
    }

    fn line(&mut self, line: &str) -> Option<Progress> {
        if line.is_empty() {
            return None;
        }
        if let Some(nonce) = &self.nonce
            && let Some(rest) = line.strip_prefix(MARK)
        {
            let Some(rest) = rest
                .strip_prefix(nonce.as_str())
                .and_then(|r| r.strip_prefix(':'))
            else {
                let shown: String = line.chars().take(80).collect();
                self.violate(format!(
                    "a message that does not carry this job's nonce: {shown:?}"
                ));
                return None;
            };
            if let Some(json) = rest.strip_prefix("probe:") {
                if self.probe_json.len() + json.len() >= MAX_PROBE_JSON {
                    self.violate(format!(
                        "more than {} KiB of probe JSON",
                        MAX_PROBE_JSON >> 10
                    ));
                    return None;
                }
                self.probe_json.push_str(json);
                self.probe_json.push('\n');
            } else if let Some((k, v)) = rest.split_once('=') {
                if self.marks.len() >= MAX_MARKS {
                    self.violate(format!("more than {MAX_MARKS} marks in one job"));
                    return None;
                }
                self.marks.push((k.to_string(), cut(v)));
            }
            return None;
        }
        if let Some((key, value)) = progress_pair(line) {
            return self.progress_line(key, value);
        }
        let trimmed = line.trim_start();
        if let Some(rest) = line.strip_prefix("ffmpeg version ") {
            self.ffmpeg_version = rest.split_whitespace().next().map(str::to_string);
            self.section = Section::Banner;
            return None;
        }
        if line.starts_with("Input #") {
            self.section = Section::Input;
            return None;
        }
        if line.starts_with("Output #") {
            self.section = Section::Output;
            return None;
        }
        if line.starts_with("Stream mapping:") {
            self.section = Section::Mapping;
            return None;
        }
        let indented = line.starts_with(' ');
        if indented && self.section == Section::Input {
            if let Some(rest) = trimmed.strip_prefix("Duration: ") {
                self.input.duration = parse_clock(rest.split(',').next().unwrap_or(""));
            } else if trimmed.starts_with("Stream #") {
                let streams =
                    self.input.video.len() + self.input.audio.len() + self.input.other.len();
                if streams >= MAX_STREAMS {
                    self.violate(format!(
                        "ffmpeg described more than {MAX_STREAMS} input streams"
                    ));
                    return None;
                }
                if let Some(codec) = stream_codec(trimmed, "Video: ") {
                    if trimmed.contains("(attached pic)") {
                        self.input.other.push(("cover art".into(), codec));
                    } else {
                        self.input.video.push(codec);
                    }
                } else if let Some(codec) = stream_codec(trimmed, "Audio: ") {
                    self.input.audio.push(codec);
                } else {
                    for (kind, label) in [
                        ("subtitle", "Subtitle: "),
                        ("data", "Data: "),
                        ("attachment", "Attachment: "),
                    ] {
                        if let Some(codec) = stream_codec(trimmed, label) {
                            let codec = match codec.as_str() {
                                "none" => stream_tag(trimmed, label).unwrap_or(codec),
                                _ => codec,
                            };
                            self.input.other.push((kind.into(), codec));
                            break;
                        }
                    }
                }
            }
            return None;
        }
        if indented && self.section != Section::None {
            return None;
        }
        if is_noise(trimmed) {
            return None;
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        let line = cut(&neutral_names(trimmed.trim_end()));
        if self.unfinished.is_none()
            && (line.starts_with("Error writing trailer") || line.starts_with("Error closing file"))
        {
            let cause = line.rsplit_once(": ").map_or(line.as_str(), |(_, c)| c);
            self.unfinished = Some(cause.to_string());
        }
        if self.refusal.is_none() {
            self.refusal = refusal(&line);
        }
        if self.fresh.len() < MAX_FRESH {
            self.fresh.push(line.clone());
        }
        self.tail.push_back(line);
        None
    }

    fn progress_line(&mut self, key: &str, value: &str) -> Option<Progress> {
        let num = |v: &str| v.trim().parse::<f64>().ok().filter(|x| x.is_finite());
        match key {
            "out_time_us" => self.block.out_time_us = value.trim().parse::<u64>().ok(),
            "fps" => self.block.fps = num(value),
            "speed" => self.block.speed = num(value.trim().trim_end_matches('x')),
            "total_size" => self.block.total_size = value.trim().parse().ok(),
            "progress" => {
                self.block.end = value.trim() == "end";
                let done = std::mem::take(&mut self.block);
                self.last_progress = Some(done.clone());
                return Some(done);
            }
            _ => {}
        }
        None
    }

    /// Why the output was left unfinished, when ffmpeg said it could not write its end or close
    /// it ("No space left on device"). ffmpeg 5.1 reports those errors and still exits 0: the
    /// output is cut short, and without this its read-back would fail for a reason that hides
    /// the real one.
    pub fn unfinished(&self) -> Option<&str> {
        self.unfinished.as_deref()
    }

    /// Why the input cannot be made into what the preset makes, when ffmpeg's failure says so:
    /// the stream the preset needs is missing, or the output format cannot hold a stream the
    /// preset copies. These are deliberate refusals, stated in the README's preset table, and
    /// the message says what to do instead.
    pub fn refusal(&self) -> Option<&str> {
        self.refusal.as_deref()
    }

    /// The last meaningful lines, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().cloned().collect()
    }

    /// The output probe passed back by the container-side script, if any.
    pub fn probe(&self) -> Option<Result<Probe, String>> {
        if self.probe_json.is_empty() {
            return None;
        }
        Some(Probe::from_json(&self.probe_json))
    }

    /// A value the container-side script reported with `@isc:key=value`.
    pub fn mark(&self, key: &str) -> Option<&str> {
        self.marks
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `line`, cut to [`MAX_LINE`] bytes (on a character boundary) with `...` when it was longer.
fn cut(line: &str) -> String {
    if line.len() <= MAX_LINE {
        return line.to_string();
    }
    let mut end = MAX_LINE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

/// The refusal ffmpeg's message `line` states, if any ([`StderrParser::refusal`]).
fn refusal(line: &str) -> Option<String> {
    let line = line
        .strip_prefix('[')
        .and_then(|l| l.split_once("] "))
        .map_or(line, |(_, rest)| rest);
    // `-map` names the stream; a ladder's graph (`-filter_complex [0:V:0]...`) names it too.
    let named = line.strip_prefix("Stream map '").or_else(|| {
        line.strip_prefix("Stream specifier '")
            .filter(|r| r.contains("in filtergraph description"))
    });
    if let Some(rest) = named {
        let spec = rest.split('\'').next().unwrap_or("");
        let kind = spec.split(':').nth(1).unwrap_or("");
        if rest.contains("matches no streams") {
            return Some(match kind {
                "a" => "the input has no audio stream, and this preset makes audio".to_string(),
                "V" => "the input has no video stream (cover art does not count), and this \
                        preset makes pictures"
                    .to_string(),
                "v" => "the input has no video stream, and this preset makes pictures".to_string(),
                _ => format!("the input has no stream that matches {spec}"),
            });
        }
    }
    let cannot_hold = |codec: &str| {
        format!(
            "the output format cannot hold {codec}, which this preset copies as it is; \
             choose a preset that converts it (h264 makes H.264 + AAC)"
        )
    };
    if let Some(rest) = line.strip_prefix("Could not find tag for codec ")
        && line.contains("not currently supported in container")
    {
        return Some(cannot_hold(rest.split_whitespace().next().unwrap_or("it")));
    }
    if let Some((codec, _)) = line.split_once(" in MP4 support is experimental") {
        let codec = codec.rsplit(' ').next().unwrap_or(codec);
        return Some(cannot_hold(codec));
    }
    None
}

const PROGRESS_KEYS: &[&str] = &[
    "frame",
    "fps",
    "stream_0_0_q",
    "bitrate",
    "total_size",
    "out_time_us",
    "out_time_ms",
    "out_time",
    "dup_frames",
    "drop_frames",
    "speed",
    "progress",
];

fn progress_pair(line: &str) -> Option<(&str, &str)> {
    let (k, v) = line.split_once('=')?;
    (PROGRESS_KEYS.contains(&k) || k.starts_with("stream_")).then_some((k, v))
}

/// Lines that never help explain a failure.
fn is_noise(line: &str) -> bool {
    line.starts_with("Press [q]")
        || line.starts_with("video:")
        || line.starts_with("[libx264 @")
        || line.starts_with("[aac @") && line.contains("Qavg")
        || line.starts_with("frame=")
        || line.starts_with("size=")
        || line.starts_with("Metadata:")
        || line.starts_with("Side data:")
        || line.starts_with("Input stream #")
        || line.starts_with("Output stream #")
        || line.starts_with("Total:")
}

/// Replace the executor's own names for the input and output (`pipe:0`, `in.mp4`,
/// `file:/dev/stdin`, ...) with plain words, and drop ffmpeg's context addresses, so that a
/// message reads the same whichever backend ran it.
fn neutral_names(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for (i, word) in line.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let (core, colon) = match word.strip_suffix(':') {
            Some(c) => (c, ":"),
            None => (word, ""),
        };
        let bare = core.trim_matches('\'');
        let is_in = bare == "pipe:0"
            || bare == "file:/dev/stdin"
            || (bare.starts_with("in.") && bare.len() <= 11 && !bare[3..].contains(['/', '.']));
        let is_out = bare == "file:/dev/stdout"
            || (bare.starts_with("out.") && bare.len() <= 12 && !bare[4..].contains(['/', '.']));
        if is_in {
            out.push_str("input");
            out.push_str(colon);
        } else if is_out {
            out.push_str("output");
            out.push_str(colon);
        } else if word.starts_with("0x") && word.ends_with(']') {
            out.pop();
            out.push(']');
        } else if word == "@" {
            out.pop();
        } else {
            out.push_str(word);
        }
    }
    out.replace(" ]", "]")
}

/// What follows `label` (`Video: `, `Data: `) in a stream line.
fn after<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    Some(&line[line.find(label)? + label.len()..])
}

/// The tag in `Data: none (tmcd / 0x64636D74)`.
fn stream_tag(line: &str, kind: &str) -> Option<String> {
    let inner = after(line, kind)?.split_once('(')?.1;
    let tag: String = inner
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!tag.is_empty()).then_some(tag)
}

fn stream_codec(line: &str, kind: &str) -> Option<String> {
    let codec: String = after(line, kind)?
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    (!codec.is_empty()).then_some(codec)
}

/// Parse `HH:MM:SS.frac`; `N/A` gives `None`, and so does anything that is not a time from 0 on
/// (`inf`, `NaN`, negative parts), which Rust's float parser takes but ffmpeg never prints.
pub fn parse_clock(s: &str) -> Option<f64> {
    let s = s.trim();
    let mut parts = s.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || [h, m, sec].iter().any(|v| !v.is_finite() || *v < 0.0) {
        return None;
    }
    Some(h * 3600.0 + m * 60.0 + sec)
}

/// ffprobe's view of a file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Probe {
    #[serde(default)]
    pub streams: Vec<ProbeStream>,
    pub format: Option<ProbeFormat>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ProbeStream {
    #[serde(default)]
    pub codec_type: String,
    #[serde(default)]
    pub codec_name: String,
    #[serde(default)]
    pub codec_tag_string: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub pix_fmt: Option<String>,
    pub duration: Option<String>,
    #[serde(default)]
    pub disposition: Disposition,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Disposition {
    #[serde(default)]
    pub attached_pic: u8,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ProbeFormat {
    #[serde(default)]
    pub format_name: String,
    pub duration: Option<String>,
    pub size: Option<String>,
}

impl Probe {
    pub fn from_json(text: &str) -> Result<Probe, String> {
        serde_json::from_str(text).map_err(|e| format!("unreadable ffprobe output: {e}"))
    }

    /// Video streams that are real video, not cover art.
    pub fn video(&self) -> impl Iterator<Item = &ProbeStream> {
        self.streams
            .iter()
            .filter(|s| s.codec_type == "video" && s.disposition.attached_pic == 0)
    }

    pub fn audio(&self) -> impl Iterator<Item = &ProbeStream> {
        self.streams.iter().filter(|s| s.codec_type == "audio")
    }

    /// Duration in seconds: the container's, else the longest stream's. Only a finite number of
    /// seconds from 0 on counts: `inf`, `NaN` and negatives are no duration.
    pub fn duration(&self) -> Option<f64> {
        let parse = |s: &Option<String>| {
            s.as_deref()
                .and_then(|d| d.parse::<f64>().ok())
                .filter(|d| d.is_finite() && *d >= 0.0)
        };
        self.format
            .as_ref()
            .and_then(|f| parse(&f.duration))
            .or_else(|| {
                self.streams
                    .iter()
                    .filter_map(|s| parse(&s.duration))
                    .reduce(f64::max)
            })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn banner_gives_the_version_and_stays_out_of_messages() {
        let mut p = StderrParser::new();
        p.feed(
            b"ffmpeg version 5.1.9-0+deb12u1 Copyright (c) 2000-2026 the FFmpeg developers\n  \
              built with gcc 12 (Debian 12.2.0-14)\n  configuration: --prefix=/usr --enable-gpl\n  \
              libavutil      57. 28.100 / 57. 28.100\nin.mp4: Invalid data found when processing input\n",
        );
        assert_eq!(p.ffmpeg_version.as_deref(), Some("5.1.9-0+deb12u1"));
        assert_eq!(
            p.tail(),
            ["input: Invalid data found when processing input"]
        );
    }

    use super::*;

    /// Captured from ffmpeg 5.1 remuxing onto a full disk (`-movflags +faststart`); it exited 0.
    #[test]
    fn an_output_ffmpeg_could_not_finish_is_named_with_its_cause() {
        let mut p = StderrParser::new();
        p.feed(b"[mp4 @ 0x55d0c8e0] Starting second pass: moving the moov atom to the beginning of the file\n");
        assert_eq!(p.unfinished(), None);
        p.feed(
            b"Error writing trailer of /out/out.mp4: No space left on device\n\
              Error closing file /out/out.mp4: Input/output error\n",
        );
        assert_eq!(p.unfinished(), Some("No space left on device"));
        let mut p = StderrParser::new();
        p.feed(b"Error closing file out.mp4: Disk quota exceeded\n");
        assert_eq!(p.unfinished(), Some("Disk quota exceeded"));
    }

    /// Captured from `ffmpeg -nostats -progress pipe:2` in the worker image (ffmpeg 5.1).
    const STDERR: &str = "\
Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'pipe:0':
  Metadata:
    major_brand     : isom
  Duration: 00:00:02.00, start: 0.000000, bitrate: N/A
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 320x240, 25 fps
    Metadata:
      handler_name    : VideoHandler
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, mono, fltp, 69 kb/s
  Stream #0:2[0x0]: Video: mjpeg (Baseline), yuvj420p, 300x300, 90k tbr, 90k tbn (attached pic)
Stream mapping:
  Stream #0:0 -> #0:0 (h264 (native) -> h264 (libx264))
Output #0, mp4, to '/work/j/out.mp4':
  Stream #0:0: Video: h264, yuv420p(progressive), 320x240, q=2-31, 25 fps
frame=25
fps=0.00
stream_0_0_q=28.0
bitrate=N/A
total_size=48
out_time_us=1000000
out_time_ms=1000000
out_time=00:00:01.000000
dup_frames=0
drop_frames=0
speed=1.95x
progress=continue
frame=50
fps=48.3
total_size=90000
out_time_us=2000000
speed=N/A
progress=end
[aac @ 0x55] Qavg: 123.4
video:58kB audio:18kB subtitle:0kB other streams:0kB global headers:0kB muxing overhead: 3.06%
";

    #[test]
    fn input_dump_gives_duration_and_streams() {
        let mut p = StderrParser::new();
        p.feed(STDERR.as_bytes());
        assert_eq!(p.input.duration, Some(2.0));
        assert_eq!(p.input.video, ["h264"]);
        assert_eq!(p.input.audio, ["aac"]);
    }

    #[test]
    fn progress_blocks_in_any_chunking() {
        let mut whole = StderrParser::new();
        let a = whole.feed(STDERR.as_bytes()).progress;
        let mut bytewise = StderrParser::new();
        let mut b = Vec::new();
        for byte in STDERR.as_bytes() {
            b.extend(bytewise.feed(std::slice::from_ref(byte)).progress);
        }
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].out_time_us, Some(1_000_000));
        assert_eq!(a[0].speed, Some(1.95));
        assert!(!a[0].end);
        assert_eq!(a[1].fps, Some(48.3));
        assert_eq!(a[1].speed, None, "N/A is no speed");
        assert!(a[1].end);
    }

    #[test]
    fn tail_keeps_errors_not_noise() {
        let mut p = StderrParser::new();
        p.feed(STDERR.as_bytes());
        p.feed(b"[mov,mp4 @ 0x1] moov atom not found\npipe:0: Invalid data found when processing input\n");
        let tail = p.tail();
        assert_eq!(
            tail,
            [
                "[mov,mp4] moov atom not found",
                "input: Invalid data found when processing input"
            ]
        );
    }

    #[test]
    fn marks_and_probe_are_collected() {
        let mut p = StderrParser::for_job("n1");
        p.feed(b"@isc:n1:probe:{\"streams\":[{\"codec_type\":\"video\",\n@isc:n1:probe:\"codec_name\":\"h264\",\"width\":2}],\n@isc:n1:probe:\"format\":{\"duration\":\"2.5\"}}\n@isc:n1:size=1234\n");
        assert_eq!(p.mark("size"), Some("1234"));
        let probe = p.probe().expect("some").expect("json");
        assert_eq!(probe.duration(), Some(2.5));
        assert_eq!(probe.video().count(), 1);
        assert!(p.tail().is_empty());
        assert_eq!(p.violation(), None);
    }

    // Regression: marks were taken from any line that began `@isc:`, so a line ffmpeg printed
    // (or a hostile ffmpeg wrote) could pass for the job server's stage, size or probe.
    #[test]
    fn a_mark_without_the_jobs_nonce_is_refused() {
        for forged in [
            "@isc:stage=probe",
            "@isc:probe:{\"streams\":[]}",
            "@isc:n2:send=n1 0",
            "@isc:n1x:end=0",
        ] {
            let mut p = StderrParser::for_job("n1");
            p.feed(format!("{forged}\n").as_bytes());
            assert!(p.marks.is_empty() && p.probe().is_none(), "{forged} taken");
            let why = p.violation().expect("refused");
            assert!(why.contains("does not carry this job's nonce"), "{why}");
        }
        let mut local = StderrParser::new();
        local.feed(b"@isc:stage=probe\n");
        assert!(local.marks.is_empty() && local.violation().is_none());
    }

    #[test]
    fn what_a_worker_sends_is_bounded() {
        let mut p = StderrParser::for_job("n");
        for i in 0..MAX_MARKS + 5 {
            p.feed(format!("@isc:n:stage=s{i}\n").as_bytes());
        }
        assert_eq!(p.marks.len(), MAX_MARKS);
        assert!(p.violation().expect("too many").contains("marks"));

        let mut p = StderrParser::for_job("n");
        let line = format!("@isc:n:probe:{}\n", "x".repeat(64 << 10));
        for _ in 0..20 {
            p.feed(line.as_bytes());
        }
        assert!(p.probe_json.len() < MAX_PROBE_JSON);
        assert!(p.violation().expect("too much").contains("probe JSON"));

        let mut p = StderrParser::new();
        for _ in 0..100 {
            p.feed("é".repeat(MAX_PARTIAL).as_bytes());
            p.feed(b"\n");
        }
        assert!(p.tail().iter().all(|l| l.len() <= MAX_LINE + 3));
        assert_eq!(p.tail().len(), TAIL_LINES);

        let mut p = StderrParser::new();
        p.feed(b"Input #0, mpegts, from 'pipe:0':\n");
        for _ in 0..MAX_STREAMS + 1 {
            p.feed(b"  Stream #0:0: Audio: mp2, 48000 Hz\n");
        }
        assert_eq!(p.input.audio.len(), MAX_STREAMS);
        assert!(p.violation().expect("too many").contains("input streams"));
    }

    #[test]
    fn internal_names_are_neutral() {
        assert_eq!(
            neutral_names("[mov,mp4,m4a,3gp,3g2,mj2 @ 0x556ed667f3c0] moov atom not found"),
            "[mov,mp4,m4a,3gp,3g2,mj2] moov atom not found"
        );
        assert_eq!(
            neutral_names("in.mp4: Invalid data found when processing input"),
            "input: Invalid data found when processing input"
        );
        assert_eq!(
            neutral_names("file:/dev/stdin: Invalid data found"),
            "input: Invalid data found"
        );
        assert_eq!(
            neutral_names("Could not write header for output file #0"),
            "Could not write header for output file #0"
        );
    }

    // Regression: each of these failed as "ffmpeg failed with exit code 1" and left the user to
    // read ffmpeg's lines to learn that the input simply does not fit the preset.
    #[test]
    fn refusals_name_the_missing_stream_or_the_codec_the_format_cannot_hold() {
        let said = |line: &str| {
            let mut p = StderrParser::new();
            p.feed(format!("{line}\n").as_bytes());
            p.refusal().map(str::to_string)
        };
        let no_audio = said("Stream map '0:a:0' matches no streams.").expect("refusal");
        assert!(no_audio.contains("no audio stream"), "{no_audio}");
        let no_video = said("Stream map '0:V:0' matches no streams.").expect("refusal");
        assert!(no_video.contains("no video stream") && no_video.contains("cover art"));
        let pcm = said(
            "[mp4 @ 0x5581] Could not find tag for codec pcm_s16le in stream #1, codec not \
             currently supported in container",
        )
        .expect("refusal");
        assert!(pcm.contains("cannot hold pcm_s16le"), "{pcm}");
        let flac = said(
            "[mp4 @ 0x5581] flac in MP4 support is experimental, add '-strict -2' if you want to use it.",
        )
        .expect("refusal");
        assert!(flac.contains("cannot hold flac"), "{flac}");
        assert_eq!(said("Conversion failed!"), None);
        assert_eq!(said("[libx264 @ 0x1] width not divisible by 2"), None);
    }

    #[test]
    fn input_dump_names_subtitles_data_attachments_and_cover_art() {
        let mut p = StderrParser::new();
        p.feed(
            b"Input #0, matroska,webm, from 'pipe:0':\n  Duration: 00:00:02.02, start: 0.0, bitrate: N/A\n  \
              Stream #0:0: Video: h264 (High), yuv420p, 320x240\n  \
              Stream #0:1(eng): Audio: aac (LC), 44100 Hz, mono\n  \
              Stream #0:2(eng): Subtitle: subrip\n  \
              Stream #0:3[0x4](eng): Data: none (tmcd / 0x64636D74)\n  \
              Stream #0:4[0x102]: Data: bin_data ([6][0][0][0] / 0x0006)\n  \
              Stream #0:5: Attachment: ttf\n  \
              Stream #0:6: Video: png, rgb24(pc), 64x64, 90k tbn (attached pic)\n",
        );
        assert_eq!(p.input.video, ["h264"]);
        assert_eq!(p.input.audio, ["aac"]);
        let other: Vec<(&str, &str)> = p
            .input
            .other
            .iter()
            .map(|(k, c)| (k.as_str(), c.as_str()))
            .collect();
        assert_eq!(
            other,
            [
                ("subtitle", "subrip"),
                ("data", "tmcd"),
                ("data", "bin_data"),
                ("attachment", "ttf"),
                ("cover art", "png"),
            ]
        );
    }

    #[test]
    fn clock_parsing() {
        assert_eq!(parse_clock("00:01:02.50"), Some(62.5));
        assert_eq!(parse_clock("N/A"), None);
    }

    // Regression (fuzz target ffmpeg_stderr): `inf`, `NaN` and negative numbers read as
    // durations, from the worker's stderr and from its probe JSON; an infinite input duration
    // made every output "last as long as the input" and cannot be turned into a time limit.
    #[test]
    fn durations_are_finite_and_not_negative() {
        for clock in [
            "00:00:inf",
            "NaN:00:00",
            "00:-1:00",
            "00:00:-2.5",
            "inf:00:00",
        ] {
            assert_eq!(parse_clock(clock), None, "{clock}");
            let mut p = StderrParser::new();
            p.feed(
                format!("Input #0, mov, from 'pipe:0':\n  Duration: {clock}, start: 0\n")
                    .as_bytes(),
            );
            assert_eq!(p.input.duration, None, "{clock}");
        }
        assert_eq!(parse_clock("00:00:00.00"), Some(0.0));
        for d in ["-5", "inf", "NaN", "-inf"] {
            let probe = Probe::from_json(&format!(
                r#"{{"streams":[{{"codec_type":"video","duration":"{d}"}}],"format":{{"duration":"{d}"}}}}"#
            ))
            .expect("json");
            assert_eq!(probe.duration(), None, "{d}");
        }
    }

    #[test]
    fn unknown_input_duration_stays_unknown() {
        let mut p = StderrParser::new();
        p.feed(b"Input #0, mpegts, from 'pipe:0':\n  Duration: N/A, start: 1.4, bitrate: N/A\n");
        assert_eq!(p.input.duration, None);
    }
}
