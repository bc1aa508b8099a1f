//! Ladder presets: one input, several renditions, packaged for adaptive streaming.
//!
//! A ladder preset has a `[ladder]` table instead of an output extension. It lists renditions
//! (height, bitrate, optionally the encoder), and the executor turns them into one ffmpeg run:
//! the input's first video stream is split (`-filter_complex split`), each branch scaled to its
//! rendition's height (even width, aspect kept, never above the source), encoded with keyframes
//! forced at the same instants in every rendition (`-force_key_frames` every `keyframe_seconds`,
//! scene cuts off), so that segments of `segment_seconds` line up across renditions and a
//! player can switch between them at any segment boundary. The renditions are packaged by
//! ffmpeg's `hls` muxer (fMP4 segments, one folder per rendition, `master.m3u8` from
//! `-master_pl_name` and `-var_stream_map`) or its `dash` muxer (CMAF segments, `manifest.mpd`,
//! and with `-hls_playlist` the same HLS playlists, so one ladder plays in both worlds). A
//! poster frame (`poster.jpg`) is an optional extra output of the same run, and so are
//! thumbnail sprites (`sprite_001.jpg` ..., one tile every `sprite_seconds`, 5x5 tiles of 160
//! pixels wide a sheet) with their WebVTT track (`thumbnails.vtt`), which this machine writes
//! once the ladder is checked ([`crate::ladder`]).
//!
//! Nothing in the ffmpeg command comes from the preset as text except what passes the same
//! allow-list as any preset ([`super::args`]): the shared `args` (with the options the ladder
//! owns refused), the optional `filter` run before the split (a plain chain of allowed filters:
//! no labels, no second chain), and each bitrate. Heights are numbers, encoders one of
//! [`VIDEO_CODECS`], and the graph the executor builds is checked once more as a whole.
//!
//! Which renditions an input gets depends on the input: those above its height are dropped,
//! the smallest is always kept (scaled to the source's height if even that one is taller). The
//! dispatcher learns the source's height and audio before the job and hands the ladder a
//! [`Source`]; without one every rendition is made, each clamped to the source's height, and
//! audio is assumed.

use super::args::{self, Place};
use serde::Deserialize;

/// The packagings a ladder preset may name as its `format`.
pub const FORMATS: &[&str] = &["hls", "dash"];

/// Video encoders a rendition may use: the encoder, the codec it makes (as the check names it),
/// and the sample entry HLS players expect.
pub const VIDEO_CODECS: &[(&str, &str, &str)] =
    &[("libx264", "h264", "avc1"), ("libx265", "hevc", "hvc1")];

/// Options a ladder's shared `args` may not set: the executor sets them per rendition, or they
/// would break the graph, the alignment or the packaging.
const OWNED: &[&str] = &[
    "map",
    "vf",
    "af",
    "filter",
    "c",
    "codec",
    "vcodec",
    "acodec",
    "b",
    "maxrate",
    "minrate",
    "bufsize",
    "g",
    "keyint_min",
    "sc_threshold",
    "frames",
    "vframes",
    "aframes",
    "update",
    "an",
    "vn",
    "sn",
    "dn",
    "s",
    "movflags",
    "tag",
    "shortest",
];

/// Most renditions in one ladder.
pub const MAX_RENDITIONS: usize = 8;

/// The `[ladder]` table of a preset file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LadderFile {
    #[serde(default = "default_segment")]
    segment_seconds: u32,
    #[serde(default = "default_keyframes")]
    keyframe_seconds: u32,
    #[serde(default = "default_video_codec")]
    video_codec: String,
    #[serde(default = "default_audio_bitrate")]
    audio_bitrate: String,
    filter: Option<String>,
    #[serde(default)]
    poster: bool,
    sprite_seconds: Option<u32>,
    rendition: Vec<RenditionFile>,
}

fn default_segment() -> u32 {
    4
}
fn default_keyframes() -> u32 {
    2
}
fn default_video_codec() -> String {
    "libx264".into()
}
fn default_audio_bitrate() -> String {
    "128k".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenditionFile {
    height: u32,
    bitrate: String,
    codec: Option<String>,
}

/// One rendition of a ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendition {
    /// The height it is scaled to (never above the source's).
    pub height: u32,
    /// Its video bitrate, as ffmpeg takes it (`2800k`): the target, and the peak rate
    /// (`-maxrate`) over a one-second buffer.
    pub bitrate: String,
    /// Its encoder, one of [`VIDEO_CODECS`].
    pub codec: String,
}

impl Rendition {
    /// Its name: its folder in the output, and its `NAME` in the playlists (`720p`).
    pub fn name(&self) -> String {
        format!("{}p", self.height)
    }

    /// The codec its encoder makes, as the check names it (`h264`).
    pub fn codec_name(&self) -> &'static str {
        VIDEO_CODECS
            .iter()
            .find(|(e, _, _)| *e == self.codec)
            .map_or("h264", |(_, c, _)| c)
    }

    /// Its bitrate in bits per second.
    pub fn bits_per_second(&self) -> u64 {
        bitrate_bps(&self.bitrate)
    }
}

/// What the dispatcher learned about an input before its ladder was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// Height of the first video stream (cover art aside).
    pub height: u32,
    pub audio: bool,
}

/// A validated ladder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    /// `hls` or `dash`.
    pub format: String,
    pub segment_seconds: u32,
    pub keyframe_seconds: u32,
    pub audio_bitrate: String,
    /// A chain of allowed filters run before the split.
    pub filter: Option<String>,
    pub poster: bool,
    /// Thumbnail sprites: one tile every this many seconds ([`SPRITE_COLUMNS`] x
    /// [`SPRITE_ROWS`] tiles of [`SPRITE_WIDTH`] pixels a sheet), and their WebVTT track.
    pub sprite_seconds: Option<u32>,
    /// Every rendition the preset lists, tallest first.
    pub renditions: Vec<Rendition>,
    /// The input this ladder is for, once known: it chooses the renditions
    /// ([`Ladder::renditions_for`]). Not part of the preset's fingerprint.
    pub source: Option<Source>,
}

/// The name of the master playlist in every ladder.
pub const MASTER: &str = "master.m3u8";
/// The DASH manifest's name in a `dash` ladder.
pub const MANIFEST: &str = "manifest.mpd";
/// The poster's name, when the ladder makes one.
pub const POSTER: &str = "poster.jpg";

/// The sprite sheets' names: `sprite_001.jpg`, `sprite_002.jpg` ...
pub const SPRITE_PATTERN: &str = "sprite_%03d.jpg";
/// The WebVTT track that points at each tile of the sprite sheets.
pub const THUMBNAILS: &str = "thumbnails.vtt";
/// Width of a sprite tile, in pixels (the height follows the aspect ratio).
pub const SPRITE_WIDTH: u32 = 160;
/// Tiles across a sprite sheet.
pub const SPRITE_COLUMNS: u32 = 5;
/// Tiles down a sprite sheet.
pub const SPRITE_ROWS: u32 = 5;

/// Seconds of the poster's `thumbnail` window, in frames.
const POSTER_FRAMES: u32 = 50;

impl Ladder {
    /// Read and check the `[ladder]` table, for a preset whose muxer is `format`; `args` are
    /// the preset's shared output options. An error is a message for the `ladder` field.
    pub(super) fn from_file(
        file: LadderFile,
        format: &str,
        args: &[String],
    ) -> Result<Ladder, String> {
        if !FORMATS.contains(&format) {
            return Err(format!(
                "format {format:?}: a ladder is packaged as one of {}",
                FORMATS.join(", ")
            ));
        }
        if !(1..=30).contains(&file.keyframe_seconds) {
            return Err("keyframe_seconds must be between 1 and 30".into());
        }
        if file.segment_seconds == 0
            || file.segment_seconds > 60
            || !file.segment_seconds.is_multiple_of(file.keyframe_seconds)
        {
            return Err(format!(
                "segment_seconds {} must be a multiple of keyframe_seconds {} (at most 60), so \
                 that every segment starts on a keyframe in every rendition",
                file.segment_seconds, file.keyframe_seconds
            ));
        }
        if file.sprite_seconds.is_some_and(|s| !(1..=600).contains(&s)) {
            return Err("sprite_seconds must be between 1 and 600".into());
        }
        if file.rendition.is_empty() || file.rendition.len() > MAX_RENDITIONS {
            return Err(format!(
                "needs 1 to {MAX_RENDITIONS} [[ladder.rendition]] entries, not {}",
                file.rendition.len()
            ));
        }
        let bitrate = |what: &str, value: &str| {
            args::check(&["-b:v".to_string(), value.to_string()], Place::Output)
                .ok()
                .filter(|()| bitrate_bps(value) > 0)
                .ok_or_else(|| format!("{what} {value:?} is not a bitrate such as 2800k"))
        };
        bitrate("audio_bitrate", &file.audio_bitrate)?;
        let mut renditions = Vec::new();
        for (i, r) in file.rendition.into_iter().enumerate() {
            if r.height < 64 || r.height > 4320 || r.height % 2 != 0 {
                return Err(format!(
                    "rendition {}: height {} must be even, from 64 to 4320",
                    i + 1,
                    r.height
                ));
            }
            bitrate(&format!("rendition {}: bitrate", i + 1), &r.bitrate)?;
            let codec = r.codec.unwrap_or_else(|| file.video_codec.clone());
            if !VIDEO_CODECS.iter().any(|(e, _, _)| *e == codec) {
                return Err(format!(
                    "rendition {}: codec {codec:?} is not one a ladder may use ({})",
                    i + 1,
                    VIDEO_CODECS
                        .iter()
                        .map(|(e, _, _)| *e)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if renditions.iter().any(|o: &Rendition| o.height == r.height) {
                return Err(format!(
                    "rendition {}: height {} is listed twice",
                    i + 1,
                    r.height
                ));
            }
            renditions.push(Rendition {
                height: r.height,
                bitrate: r.bitrate,
                codec,
            });
        }
        renditions.sort_by_key(|r| std::cmp::Reverse(r.height));
        if let Some(f) = &file.filter {
            if f.contains([';', '[', ']']) {
                return Err(format!(
                    "filter {f:?} must be one chain of filters, without labels or a second chain"
                ));
            }
            args::check_filtergraph(f).map_err(|why| format!("filter {f:?}: {why}"))?;
        }
        let mut i = 0;
        while i < args.len() {
            let name = args[i].trim_start_matches('-');
            let name = name.split_once(':').map_or(name, |(n, _)| n);
            if OWNED.contains(&name) {
                return Err(format!(
                    "args: {:?} is set by the ladder for each rendition and may not appear in a \
                     ladder preset's args",
                    args[i]
                ));
            }
            i += 1;
        }
        let ladder = Ladder {
            format: format.to_string(),
            segment_seconds: file.segment_seconds,
            keyframe_seconds: file.keyframe_seconds,
            audio_bitrate: file.audio_bitrate,
            filter: file.filter,
            poster: file.poster,
            sprite_seconds: file.sprite_seconds,
            renditions,
            source: None,
        };
        args::check_ladder_graph(&ladder.graph(&ladder.renditions))
            .map_err(|why| format!("the filter graph it makes: {why}"))?;
        Ok(ladder)
    }

    /// The renditions this ladder makes of its [`Source`]: every one no taller than the source,
    /// and at least the smallest. Without a source, every one.
    pub fn renditions_for(&self) -> Vec<Rendition> {
        let Some(source) = self.source else {
            return self.renditions.clone();
        };
        let mut kept: Vec<Rendition> = self
            .renditions
            .iter()
            .filter(|r| r.height <= source.height)
            .cloned()
            .collect();
        if kept.is_empty()
            && let Some(smallest) = self.renditions.last()
        {
            kept.push(smallest.clone());
        }
        kept
    }

    /// Whether the ladder carries audio: the source has some, or is not known.
    pub fn audio(&self) -> bool {
        self.source.is_none_or(|s| s.audio)
    }

    /// The height a rendition of `height` gets from this ladder's source (even, never above
    /// it), when the source is known.
    pub fn made_height(&self, height: u32) -> Option<u32> {
        self.source.map(|s| height.min(s.height & !1))
    }

    /// The filter graph: the optional filter, the split, one scaled branch per rendition
    /// (`[v0]`, `[v1]` ...), the poster's branch (`[poster]`) and the sprites' (`[sprite]`).
    pub fn graph(&self, renditions: &[Rendition]) -> String {
        let branches = renditions.len()
            + usize::from(self.poster)
            + usize::from(self.sprite_seconds.is_some());
        let mut g = String::from("[0:V:0]");
        if let Some(f) = &self.filter {
            g.push_str(f);
            g.push(',');
        }
        g.push_str(&format!("split={branches}"));
        for i in 0..branches {
            g.push_str(&format!("[s{i}]"));
        }
        for (i, r) in renditions.iter().enumerate() {
            g.push_str(&format!(
                ";[s{i}]scale=w=-2:h='min({},trunc(ih/2)*2)'[v{i}]",
                r.height
            ));
        }
        if self.poster {
            g.push_str(&format!(
                ";[s{}]thumbnail=n={POSTER_FRAMES},scale=w='min(1280,iw)':h=-2[poster]",
                renditions.len()
            ));
        }
        if let Some(every) = self.sprite_seconds {
            g.push_str(&format!(
                ";[s{}]fps=1/{every},scale=w={SPRITE_WIDTH}:h=-2,tile={SPRITE_COLUMNS}x{SPRITE_ROWS}[sprite]",
                branches - 1
            ));
        }
        g
    }

    /// The whole ffmpeg argument list after the input: the graph, each rendition's streams and
    /// encoder settings, the packaging into the folder `dir`, and the poster. `shared` are the
    /// preset's `args`, given to every rendition.
    pub fn output_args(&self, shared: &[String], dir: &str) -> Vec<String> {
        let renditions = self.renditions_for();
        let audio = self.audio();
        let mut v: Vec<String> = vec!["-filter_complex".into(), self.graph(&renditions)];
        let s = |x: &str| x.to_string();
        let dash = self.format == "dash";
        for i in 0..renditions.len() {
            v.extend([s("-map"), format!("[v{i}]")]);
        }
        // HLS muxes the audio into every rendition; DASH keeps it as one adaptation set.
        let audio_tracks = match (audio, dash) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => renditions.len(),
        };
        for _ in 0..audio_tracks {
            v.extend([s("-map"), s("0:a:0")]);
        }
        v.extend(shared.iter().cloned());
        for (i, r) in renditions.iter().enumerate() {
            v.extend([
                format!("-c:v:{i}"),
                r.codec.clone(),
                format!("-b:v:{i}"),
                r.bitrate.clone(),
                format!("-maxrate:v:{i}"),
                r.bitrate.clone(),
                format!("-bufsize:v:{i}"),
                r.bitrate.clone(),
            ]);
            if let Some((_, _, tag)) = VIDEO_CODECS.iter().find(|(e, _, _)| *e == r.codec)
                && *tag == "hvc1"
            {
                v.extend([format!("-tag:v:{i}"), s("hvc1")]);
            }
        }
        v.extend([
            s("-force_key_frames:v"),
            format!("expr:gte(t,n_forced*{})", self.keyframe_seconds),
            s("-sc_threshold:v"),
            s("0"),
        ]);
        if audio_tracks > 0 {
            v.extend([s("-c:a"), s("aac"), s("-b:a"), self.audio_bitrate.clone()]);
        }
        if dash {
            let sets = if audio {
                "id=0,streams=v id=1,streams=a"
            } else {
                "id=0,streams=v"
            };
            v.extend([
                s("-f"),
                s("dash"),
                s("-seg_duration"),
                self.segment_seconds.to_string(),
                s("-use_template"),
                s("1"),
                s("-use_timeline"),
                s("1"),
                s("-adaptation_sets"),
                s(sets),
                s("-hls_playlist"),
                s("1"),
                s("-init_seg_name"),
                s("init-$RepresentationID$.m4s"),
                s("-media_seg_name"),
                s("chunk-$RepresentationID$-$Number%05d$.m4s"),
                format!("{dir}/{MANIFEST}"),
            ]);
        } else {
            let map: Vec<String> = renditions
                .iter()
                .enumerate()
                .map(|(i, r)| match audio {
                    true => format!("v:{i},a:{i},name:{}", r.name()),
                    false => format!("v:{i},name:{}", r.name()),
                })
                .collect();
            v.extend([
                s("-f"),
                s("hls"),
                s("-hls_time"),
                self.segment_seconds.to_string(),
                s("-hls_playlist_type"),
                s("vod"),
                s("-hls_segment_type"),
                s("fmp4"),
                s("-hls_fmp4_init_filename"),
                s("init.mp4"),
                s("-hls_segment_filename"),
                format!("{dir}/%v/seg_%05d.m4s"),
                s("-master_pl_name"),
                s(MASTER),
                s("-var_stream_map"),
                map.join(" "),
                format!("{dir}/%v/index.m3u8"),
            ]);
        }
        if self.poster {
            v.extend([
                s("-map"),
                s("[poster]"),
                s("-frames:v"),
                s("1"),
                s("-update"),
                s("1"),
                s("-c:v"),
                s("mjpeg"),
                s("-q:v"),
                s("3"),
                s("-f"),
                s("image2"),
                format!("{dir}/{POSTER}"),
            ]);
        }
        if self.sprite_seconds.is_some() {
            v.extend([
                s("-map"),
                s("[sprite]"),
                s("-c:v"),
                s("mjpeg"),
                s("-q:v"),
                s("4"),
                s("-f"),
                s("image2"),
                format!("{dir}/{SPRITE_PATTERN}"),
            ]);
        }
        v
    }

    /// The words that make up the ladder, for the preset's fingerprint: a change to any of
    /// them changes what is made. The source is not among them.
    pub fn fingerprint_words(&self) -> Vec<String> {
        let mut w = vec![
            "ladder".to_string(),
            self.format.clone(),
            self.segment_seconds.to_string(),
            self.keyframe_seconds.to_string(),
            self.audio_bitrate.clone(),
            self.filter.clone().unwrap_or_default(),
            self.poster.to_string(),
            self.sprite_seconds
                .map(|n| n.to_string())
                .unwrap_or_default(),
        ];
        for r in &self.renditions {
            w.extend([r.height.to_string(), r.bitrate.clone(), r.codec.clone()]);
        }
        w
    }
}

/// The folder a ladder is written to beside its archive `output` (`out.tar` -> `out.d`).
pub fn folder_for(output: &str) -> String {
    let stem = output.strip_suffix(".tar").unwrap_or(output);
    format!("{stem}.d")
}

/// A bitrate as ffmpeg reads it (`128k`, `2.5M`), in bits per second; 0 when it does not read.
pub fn bitrate_bps(value: &str) -> u64 {
    let (digits, scale) = match value.as_bytes().last() {
        Some(b'k' | b'K') => (&value[..value.len() - 1], 1e3),
        Some(b'm' | b'M') => (&value[..value.len() - 1], 1e6),
        Some(b'g' | b'G') => (&value[..value.len() - 1], 1e9),
        _ => (value, 1.0),
    };
    digits
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map_or(0, |n| (n * scale) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder(text: &str) -> Result<Ladder, String> {
        let file: LadderFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Ladder::from_file(file, "hls", &[])
    }

    const FOUR: &str = r#"
        poster = true
        [[rendition]]
        height = 360
        bitrate = "800k"
        [[rendition]]
        height = 1080
        bitrate = "5000k"
        [[rendition]]
        height = 720
        bitrate = "2800k"
        [[rendition]]
        height = 480
        bitrate = "1400k"
    "#;

    #[test]
    fn renditions_above_the_source_are_dropped_and_one_is_always_kept() {
        let mut l = ladder(FOUR).expect("ladder");
        let heights =
            |l: &Ladder| -> Vec<u32> { l.renditions_for().iter().map(|r| r.height).collect() };
        assert_eq!(
            heights(&l),
            [1080, 720, 480, 360],
            "tallest first, all without a source"
        );
        l.source = Some(Source {
            height: 720,
            audio: true,
        });
        assert_eq!(heights(&l), [720, 480, 360]);
        l.source = Some(Source {
            height: 240,
            audio: false,
        });
        assert_eq!(
            heights(&l),
            [360],
            "the smallest, scaled down to the source"
        );
        assert_eq!(l.made_height(360), Some(240));
        l.source = Some(Source {
            height: 601,
            audio: true,
        });
        assert_eq!(l.made_height(720), Some(600), "even");
    }

    #[test]
    fn the_command_aligns_keyframes_and_maps_every_rendition() {
        let mut l = ladder(FOUR).expect("ladder");
        l.source = Some(Source {
            height: 1080,
            audio: true,
        });
        let args = l.output_args(&["-preset".into(), "veryfast".into()], "out.d");
        let joined = args.join(" ");
        assert!(joined.contains("split=5[s0][s1][s2][s3][s4]"), "{joined}");
        assert!(joined.contains("-force_key_frames:v expr:gte(t,n_forced*2)"));
        assert!(joined.contains("-sc_threshold:v 0"));
        assert!(joined.contains(
            "-var_stream_map v:0,a:0,name:1080p v:1,a:1,name:720p v:2,a:2,name:480p v:3,a:3,name:360p"
        ));
        assert!(joined.contains("-b:v:1 2800k -maxrate:v:1 2800k"));
        assert_eq!(args.iter().filter(|a| *a == "0:a:0").count(), 4);
        assert!(args.ends_with(&["-f".into(), "image2".into(), "out.d/poster.jpg".into()]));
        l.source = Some(Source {
            height: 1080,
            audio: false,
        });
        let args = l.output_args(&[], "out.d");
        assert!(
            !args.iter().any(|a| a == "0:a:0" || a == "-c:a"),
            "{args:?}"
        );
        assert!(args.join(" ").contains("v:0,name:1080p v:1,name:720p"));
    }

    #[test]
    fn a_ladder_refuses_what_could_break_it() {
        for (text, needle) in [
            (
                "[[rendition]]\nheight = 721\nbitrate = \"1M\"",
                "must be even",
            ),
            (
                "[[rendition]]\nheight = 720\nbitrate = \"/etc\"",
                "not a bitrate",
            ),
            (
                "[[rendition]]\nheight = 720\nbitrate = \"1M\"\ncodec = \"../x.so\"",
                "not one a ladder may use",
            ),
            (
                "filter = \"movie=/etc/passwd\"\n[[rendition]]\nheight = 720\nbitrate = \"1M\"",
                "reads a file",
            ),
            (
                "filter = \"null[x];[x]null\"\n[[rendition]]\nheight = 720\nbitrate = \"1M\"",
                "one chain",
            ),
            (
                "segment_seconds = 5\n[[rendition]]\nheight = 720\nbitrate = \"1M\"",
                "multiple of keyframe_seconds",
            ),
            ("rendition = []", "needs 1 to"),
        ] {
            let e = ladder(text).expect_err(text);
            assert!(e.contains(needle), "{text}: {e}");
        }
        let file: LadderFile =
            toml::from_str("[[rendition]]\nheight = 720\nbitrate = \"1M\"").expect("toml");
        let e = Ladder::from_file(file, "hls", &["-map".into(), "0:a".into()]).expect_err("map");
        assert!(e.contains("set by the ladder"), "{e}");
        let file: LadderFile =
            toml::from_str("[[rendition]]\nheight = 720\nbitrate = \"1M\"").expect("toml");
        assert!(Ladder::from_file(file, "mp4", &[]).is_err());
    }

    #[test]
    fn bitrates_read_as_ffmpeg_reads_them() {
        assert_eq!(bitrate_bps("128k"), 128_000);
        assert_eq!(bitrate_bps("2.5M"), 2_500_000);
        assert_eq!(bitrate_bps("800000"), 800_000);
        assert_eq!(bitrate_bps("x"), 0);
        assert_eq!(folder_for("/out/out.tar"), "/out/out.d");
    }
}
