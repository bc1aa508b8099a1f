//! Presets: what ffmpeg should make of an input, and how to tell that it did.
//!
//! A preset is a TOML file. The shipped ones live in `presets/` and are compiled into the binary
//! (`include_str!`), so the tool works from any folder and any install. A user can pass the path of
//! their own file to `--preset`.
//!
//! The ffmpeg arguments are an array, never a shell string: they are handed to ffmpeg as argv
//! items, so no quoting rules apply and nothing in a preset can turn into a shell command. The
//! input and output are not part of the preset; the executor adds them (`-i <input> ... -f
//! <format> <output>`), with names of its own choosing, so no user file name ever reaches a
//! command line.
//!
//! The `[check]` table says what a correct output looks like (codecs, pixel format, size limits,
//! whether the duration must match the input). The verifier enforces it before an output counts
//! as done.
//!
//! A preset with a `[ladder]` table ([`ladder`]) makes a folder instead of a file: several
//! renditions of the input, packaged for adaptive streaming (HLS or DASH), in one ffmpeg run.

mod args;
pub mod ladder;

pub use args::{Place, Refusal, check as check_args, check_filtergraph};
pub use ladder::Ladder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// The presets compiled into the binary, by name.
const BUILTIN: &[(&str, &str)] = &[
    ("h264", include_str!("../presets/h264.toml")),
    ("h265", include_str!("../presets/h265.toml")),
    ("vp9", include_str!("../presets/vp9.toml")),
    ("av1", include_str!("../presets/av1.toml")),
    ("copy", include_str!("../presets/copy.toml")),
    ("720p", include_str!("../presets/720p.toml")),
    ("aac", include_str!("../presets/aac.toml")),
    ("mp3", include_str!("../presets/mp3.toml")),
    ("thumbnail", include_str!("../presets/thumbnail.toml")),
    ("hls", include_str!("../presets/hls.toml")),
    ("dash", include_str!("../presets/dash.toml")),
];

/// Options that the executor owns. A preset that sets them would fight the executor over where
/// the input comes from, where the output goes, or how progress is reported.
const RESERVED: &[&str] = &[
    "-i",
    "-f",
    "-y",
    "-n",
    "-progress",
    "-nostdin",
    "-stdin",
    "-nostats",
    "-stats",
    "-hide_banner",
    "-report",
    "-filter_script",
    "-filter_complex_script",
    "-attach",
    "-dump_attachment",
    "-vstats_file",
    "-passlogfile",
];

/// Muxers that produce ISO base media files (MP4 and relatives), which must be faststart.
const MP4_FAMILY: &[&str] = &["mp4", "mov", "ipod", "3gp", "3g2", "f4v", "psp", "ismv"];

/// How the input reaches ffmpeg when the backend has a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transfer {
    /// Stream through a pipe when the input's layout allows it, else spool to a file first.
    #[default]
    Auto,
    /// Always give ffmpeg a seekable file (for presets that seek in their input).
    Spool,
}

/// What a correct output looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Codec of the first video stream (`ffprobe`'s `codec_name`), or `copy` for "the same as the
    /// input". Absent: the output must have no video stream.
    pub video: Option<String>,
    /// Codec tag of the video stream, e.g. `hvc1`.
    pub video_tag: Option<String>,
    /// Codec of every audio stream, or `copy`. Absent: the output must have no audio stream.
    /// Present: audio is expected whenever the input has some.
    pub audio: Option<String>,
    /// The input must have audio (audio-only presets).
    #[serde(default)]
    pub require_audio: bool,
    /// Pixel format of the video stream.
    pub pix_fmt: Option<String>,
    /// Width and height must both be even.
    #[serde(default)]
    pub even_dimensions: bool,
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
    /// A single still image: no duration to compare.
    #[serde(default)]
    pub image: bool,
}

/// The on-disk form of a preset file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetFile {
    description: String,
    /// Absent for a ladder, whose output is a folder.
    #[serde(default)]
    extension: String,
    format: String,
    #[serde(default)]
    args: Vec<toml::Spanned<String>>,
    #[serde(default)]
    input_args: Vec<toml::Spanned<String>>,
    #[serde(default)]
    transfer: Transfer,
    #[serde(default)]
    check: Check,
    ladder: Option<ladder::LadderFile>,
}

/// Where a preset came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Builtin,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin => f.write_str("built in"),
            Source::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A validated preset.
#[derive(Debug, Clone)]
pub struct Preset {
    pub name: String,
    pub description: String,
    /// Output file extension, without the dot.
    pub extension: String,
    /// ffmpeg muxer name (`-f`).
    pub format: String,
    /// Options placed before `-i`.
    pub input_args: Vec<String>,
    /// Options placed between the input and the output.
    pub args: Vec<String>,
    pub transfer: Transfer,
    pub check: Check,
    pub source: Source,
    /// For a ladder preset: its renditions and packaging. Its output is a folder, made from the
    /// archive ([`Preset::output_file_ext`]) the executor sends back.
    pub ladder: Option<Ladder>,
}

#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    #[error(
        "unknown preset {name:?}: not a built-in preset ({}) and no such file",
        builtin_names().join(", ")
    )]
    Unknown { name: String },
    #[error("cannot read preset file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid preset {origin}: {message}")]
    Parse { origin: String, message: String },
    /// An ffmpeg argument outside the allow-list ([`args`]), with the line it is on.
    #[error("invalid preset {origin}, line {line}: field `{field}`: {message}")]
    Arg {
        origin: String,
        line: usize,
        field: &'static str,
        message: String,
    },
    #[error("invalid preset {origin}: field `{field}`: {message}")]
    Field {
        origin: String,
        field: &'static str,
        message: String,
    },
}

/// The names of the built-in presets, in the order `presets` lists them.
pub fn builtin_names() -> Vec<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).collect()
}

/// All built-in presets, parsed.
pub fn builtins() -> Result<Vec<Preset>, PresetError> {
    BUILTIN
        .iter()
        .map(|(name, text)| parse(name, text, Source::Builtin))
        .collect()
}

/// Resolve `--preset`: a built-in name, or the path of a preset file.
///
/// A value that names an existing file wins over a built-in of the same name only when it looks
/// like a path (contains a `/` or ends in `.toml`), so that a stray file called `h264` in the
/// working folder cannot silently replace the built-in preset.
pub fn load(spec: &str) -> Result<Preset, PresetError> {
    let looks_like_path = spec.contains('/') || spec.ends_with(".toml");
    if !looks_like_path && let Some((name, text)) = BUILTIN.iter().find(|(n, _)| *n == spec) {
        return parse(name, text, Source::Builtin);
    }
    let path = Path::new(spec);
    if !looks_like_path && !path.exists() {
        return Err(PresetError::Unknown {
            name: spec.to_string(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| PresetError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| spec.to_string());
    parse(&name, &text, Source::File(path.to_path_buf()))
}

/// Parse and validate preset text.
pub fn parse(name: &str, text: &str, source: Source) -> Result<Preset, PresetError> {
    let origin = match &source {
        Source::Builtin => format!("{name:?}"),
        Source::File(p) => p.display().to_string(),
    };
    let file: PresetFile = toml::from_str(text).map_err(|e| PresetError::Parse {
        origin: origin.clone(),
        message: e.message().to_string()
            + &e.span()
                .map(|s| format!(" (at line {})", line_of(text, s.start)))
                .unwrap_or_default(),
    })?;
    let field = |field: &'static str, message: String| PresetError::Field {
        origin: origin.clone(),
        field,
        message,
    };

    if file.description.trim().is_empty() {
        return Err(field("description", "must not be empty".into()));
    }
    if file.ladder.is_some() && !file.extension.is_empty() {
        return Err(field(
            "extension",
            "a ladder preset makes a folder named after the input, without an extension".into(),
        ));
    }
    if file.ladder.is_none() && file.extension.is_empty()
        || !file
            .extension
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(field(
            "extension",
            format!(
                "{:?} must be lowercase letters and digits, without a dot",
                file.extension
            ),
        ));
    }
    if file.format.is_empty()
        || !file
            .format
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(field(
            "format",
            format!("{:?} is not an ffmpeg muxer name", file.format),
        ));
    }
    if file.args.is_empty() && file.ladder.is_none() {
        return Err(field("args", "must list at least one ffmpeg option".into()));
    }
    let plain = |list: &[toml::Spanned<String>]| -> Vec<String> {
        list.iter().map(|a| a.get_ref().clone()).collect()
    };
    let (args, input_args) = (plain(&file.args), plain(&file.input_args));
    for (fname, spanned, list, place) in [
        ("args", &file.args, &args, Place::Output),
        ("input_args", &file.input_args, &input_args, Place::Input),
    ] {
        let at = |index: usize, message: String| PresetError::Arg {
            origin: origin.clone(),
            line: spanned
                .get(index)
                .map_or(1, |a| line_of(text, a.span().start)),
            field: fname,
            message,
        };
        if let Some(i) = list.iter().position(|a| RESERVED.contains(&a.as_str())) {
            return Err(at(
                i,
                format!(
                    "{:?} is set by isc-transcode itself and may not appear in a preset",
                    list[i]
                ),
            ));
        }
        if let Some(i) = list.iter().position(|a| a.contains('\0')) {
            return Err(at(i, format!("{:?} contains a NUL byte", list[i])));
        }
        args::check(list, place).map_err(|r| at(r.index, r.message))?;
    }
    if MP4_FAMILY.contains(&file.format.as_str()) && !has_faststart(&args) {
        return Err(field(
            "args",
            format!(
                "format {:?} needs \"-movflags\", \"+faststart\" so that moov comes before mdat",
                file.format
            ),
        ));
    }
    if file.check.image && file.check.video.is_none() {
        return Err(field(
            "check.image",
            "an image check also needs check.video".into(),
        ));
    }
    if file.check.video.is_none() && file.check.audio.is_none() {
        return Err(field(
            "check",
            "must name at least one of video or audio".into(),
        ));
    }
    let ladder = match file.ladder {
        Some(l) => Some(
            Ladder::from_file(l, &file.format, &args)
                .map_err(|message| field("ladder", message))?,
        ),
        None => None,
    };
    if let Some(l) = &ladder {
        let video = l.renditions.first().map(|r| r.codec_name());
        if file.check.video.as_deref() != video
            || l.renditions.iter().any(|r| Some(r.codec_name()) != video)
            || file.check.audio.as_deref().is_some_and(|a| a != "aac")
        {
            return Err(field(
                "check",
                "a ladder's check names the codec of its renditions (one for all) and aac".into(),
            ));
        }
    }

    Ok(Preset {
        name: name.to_string(),
        description: file.description,
        extension: file.extension,
        format: file.format,
        input_args,
        args,
        transfer: file.transfer,
        check: file.check,
        source,
        ladder,
    })
}

fn has_faststart(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| w[0] == "-movflags" && w[1].split('+').any(|f| f == "faststart"))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|s| s.bytes().filter(|&b| b == b'\n').count() + 1)
        .unwrap_or(1)
}

/// Where `args` say `-movflags +faststart`, with nothing else in that flag value.
fn faststart_at(args: &[String]) -> Option<usize> {
    args.windows(2)
        .position(|w| w[0] == "-movflags" && matches!(w[1].as_str(), "+faststart" | "faststart"))
}

impl Preset {
    /// The complete ffmpeg argument list (without the program name) for one job.
    ///
    /// `input` and `output` are names chosen by the executor, never a user's file name.
    ///
    /// For a ladder, `output` names the archive the folder is sent back as (`out.tar`): ffmpeg
    /// writes the folder beside it ([`ladder::folder_for`]), and the job server packs it.
    pub fn ffmpeg_args(&self, input: &str, output: &str) -> Vec<String> {
        // No -hide_banner: the banner's first line names the ffmpeg version for provenance,
        // which saves asking with a process of its own; the parser keeps it out of messages.
        let mut v: Vec<String> = ["-nostdin", "-nostats", "-progress", "pipe:2", "-y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(self.input_args.iter().cloned());
        v.push("-i".into());
        v.push(input.into());
        if let Some(l) = &self.ladder {
            v.extend(l.output_args(&self.args, &ladder::folder_for(output)));
            return v;
        }
        v.extend(self.args.iter().cloned());
        v.push("-f".into());
        v.push(self.format.clone());
        v.push(output.into());
        v
    }

    /// The argument list for an output whose index gets `reserve` bytes of room at the front
    /// (ffmpeg's `-moov_size`) instead of being moved there at the end (`-movflags +faststart`).
    ///
    /// `+faststart` writes the whole file with the index at the end, then reads and rewrites
    /// every byte to put the index first: for a 1.72 GB remux that second pass took 1.6-1.8 s of
    /// ffmpeg's time instead of 1.4 s with the room reserved, and it re-dirties every page, so
    /// nothing of the output can be made durable while ffmpeg works. With the room reserved the
    /// output is written once, front to back, and ends up just as faststart, with the unused
    /// room as a `free` box after the index. ffmpeg fails the job if the room is too small
    /// ([`Preset::RESERVE_TOO_SMALL`]); the caller then runs it the usual way. Presets whose
    /// `-movflags` is anything but `+faststart` are left as they are.
    pub fn ffmpeg_args_reserving(
        &self,
        input: &str,
        output: &str,
        reserve: Option<u64>,
    ) -> Vec<String> {
        let mut v = self.ffmpeg_args(input, output);
        let Some(reserve) = reserve else {
            return v;
        };
        if let Some(at) = faststart_at(&v)
            && !v.iter().any(|a| a == "-moov_size")
        {
            v.splice(at..at + 2, ["-moov_size".to_string(), reserve.to_string()]);
        }
        v
    }

    /// What ffmpeg says when the room reserved for the index was too small.
    pub const RESERVE_TOO_SMALL: &'static str = "reserved_moov_size is too small";

    /// Whether every stream of the output is a copy of an input stream (`copy` in the check),
    /// so that its index lists the input's own samples, and the output moves its index to the
    /// front with `+faststart`: then the index's size can be bounded from the input's.
    pub fn copies_into_faststart(&self) -> bool {
        let copied = |c: &Option<String>| c.as_deref().is_none_or(|c| c == "copy");
        self.is_mp4_family()
            && copied(&self.check.video)
            && copied(&self.check.audio)
            && (self.check.video.is_some() || self.check.audio.is_some())
            && faststart_at(&self.args).is_some()
    }

    /// Whether the output is a folder of renditions ([`ladder`]).
    pub fn is_ladder(&self) -> bool {
        self.ladder.is_some()
    }

    /// The extension of the one file a backend hands back: the output's own, or `tar` for a
    /// ladder, whose folder travels as an archive.
    pub fn output_file_ext(&self) -> &str {
        if self.is_ladder() {
            "tar"
        } else {
            &self.extension
        }
    }

    /// Whether the output is an ISO base media file (MP4 family), which must be faststart.
    pub fn is_mp4_family(&self) -> bool {
        MP4_FAMILY.contains(&self.format.as_str())
    }

    /// A stable fingerprint of everything that determines the output bytes: the arguments and
    /// the output format. Cosmetic fields (description, comments, check) do not change it.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            &["format".to_string(), self.format.clone()][..],
            &["extension".to_string(), self.extension.clone()][..],
            &self.input_args,
            &["--".to_string()][..],
            &self.args,
            &self
                .ladder
                .as_ref()
                .map(Ladder::fingerprint_words)
                .unwrap_or_default(),
        ] {
            for s in part {
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
        let digest = h.finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The ffmpeg command line for display, with placeholders for input and output.
    ///
    /// A ladder's folder shows as `<folder>`, with every rendition the preset lists.
    pub fn command_line(&self) -> String {
        let args = match self.is_ladder() {
            true => self
                .ffmpeg_args("<input>", "out.tar")
                .into_iter()
                .map(|a| a.replace("out.d/", "<folder>/"))
                .collect(),
            false => self.ffmpeg_args("<input>", "<output>"),
        };
        std::iter::once("ffmpeg".to_string())
            .chain(args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Quote for display only; nothing here is ever passed to a shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,:+=/<>@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        description = "test"
        extension = "mkv"
        format = "matroska"
        args = ["-c", "copy"]
        [check]
        video = "copy"
    "#;

    #[test]
    fn a_reserve_replaces_faststart_and_only_faststart() {
        let copy = load("copy").expect("copy");
        let plain = copy.ffmpeg_args("in", "out");
        assert_eq!(copy.ffmpeg_args_reserving("in", "out", None), plain);
        let reserving = copy.ffmpeg_args_reserving("in", "out", Some(4096));
        let at = plain
            .iter()
            .position(|a| a == "-movflags")
            .expect("copy has -movflags");
        assert_eq!(&plain[at..at + 2], ["-movflags", "+faststart"]);
        assert_eq!(&reserving[at..at + 2], ["-moov_size", "4096"]);
        assert_eq!(reserving.len(), plain.len());
        assert!(!reserving.iter().any(|a| a.contains("faststart")));
        assert_eq!(reserving.last(), plain.last(), "the output stays last");

        let mut frag = copy.clone();
        let flags = frag
            .args
            .iter()
            .position(|a| a == "+faststart")
            .expect("flag");
        frag.args[flags] = "+faststart+frag_keyframe".into();
        assert_eq!(
            frag.ffmpeg_args_reserving("in", "out", Some(4096)),
            frag.ffmpeg_args("in", "out"),
            "other movflags: left as they are"
        );
    }

    #[test]
    fn only_stream_copies_into_faststart_mp4_get_a_reserve() {
        assert!(load("copy").expect("copy").copies_into_faststart());
        for name in ["h264", "720p", "h265", "aac", "vp9", "thumbnail", "mp3"] {
            let p = load(name).expect(name);
            assert!(!p.copies_into_faststart(), "{name}");
        }
    }

    #[test]
    fn every_builtin_parses_and_is_named_after_its_file() {
        let all = builtins().expect("builtins parse");
        assert_eq!(all.len(), BUILTIN.len());
        for p in &all {
            assert_eq!(p.source, Source::Builtin);
            assert!(!p.description.is_empty(), "{}", p.name);
        }
        for name in [
            "h264",
            "h265",
            "vp9",
            "av1",
            "copy",
            "720p",
            "aac",
            "mp3",
            "thumbnail",
        ] {
            assert!(builtin_names().contains(&name), "missing {name}");
        }
    }

    #[test]
    fn builtin_mp4_presets_are_faststart() {
        for p in builtins().expect("builtins") {
            if p.is_mp4_family() {
                assert!(has_faststart(&p.args), "{} lacks faststart", p.name);
            }
        }
    }

    #[test]
    fn h264_fixes_odd_dimensions_and_uses_8bit_420() {
        let p = load("h264").expect("h264");
        assert_eq!(p.extension, "mp4");
        let joined = p.args.join(" ");
        assert!(joined.contains("-c:v libx264"));
        assert!(joined.contains("-crf 23"));
        assert!(joined.contains("-pix_fmt yuv420p"));
        assert!(joined.contains("trunc(iw/2)*2:trunc(ih/2)*2"));
        assert!(p.check.even_dimensions);
    }

    #[test]
    fn args_put_input_and_output_where_the_executor_wants_them() {
        let p = parse("t", MINIMAL, Source::Builtin).expect("parse");
        let args = p.ffmpeg_args("pipe:0", "/work/j/out.mkv");
        let i = args.iter().position(|a| a == "-i").expect("-i");
        assert_eq!(args[i + 1], "pipe:0");
        assert_eq!(
            args[args.len() - 3..],
            ["-f", "matroska", "/work/j/out.mkv"]
        );
        assert!(args.contains(&"-nostdin".to_string()));
        assert!(
            args.windows(2)
                .any(|w| w[0] == "-progress" && w[1] == "pipe:2"),
            "progress goes to stderr"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let text = MINIMAL.replace("format =", "formt = \"x\"\nformat =");
        let err = parse("t", &text, Source::File("my.toml".into())).expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("my.toml"), "{msg}");
        assert!(msg.contains("formt"), "{msg}");
    }

    #[test]
    fn reserved_option_is_refused_with_its_field() {
        let text = MINIMAL.replace(
            r#"args = ["-c", "copy"]"#,
            r#"args = ["-i", "/etc/passwd"]"#,
        );
        let msg = parse("t", &text, Source::File("p.toml".into()))
            .expect_err("must fail")
            .to_string();
        assert!(msg.contains("field `args`"), "{msg}");
        assert!(msg.contains("\"-i\""), "{msg}");
    }

    // Regression: a preset could add outputs and read host files (a bare path, `movie=`, a
    // protocol prefix) through its ffmpeg arguments.
    #[test]
    fn a_hostile_argument_is_refused_naming_file_and_line() {
        let text = "description = \"x\"\nextension = \"mkv\"\nformat = \"matroska\"\n\
                    args = [\n    \"-c\", \"copy\",\n    \"-vf\", \"movie=/etc/passwd[m];[in][m]overlay\",\n]\n\
                    [check]\nvideo = \"copy\"\n";
        let msg = parse("t", text, Source::File("evil.toml".into()))
            .expect_err("refused")
            .to_string();
        assert_eq!(
            msg,
            "invalid preset evil.toml, line 6: field `args`: -vf \"movie=/etc/passwd[m];[in][m]overlay\": \
             filter \"movie\" reads a file, which a preset may not do"
        );
        for (args, line, needle) in [
            (
                r#"args = ["-c", "copy",
                "/root/.ssh/authorized_keys"]"#,
                2,
                "one more output file",
            ),
            (
                r#"args = ["-c", "copy", "file:/x.mkv"]"#,
                1,
                "protocol prefix \"file:\"",
            ),
            (
                r#"args = ["-c", "copy"]
                input_args = ["-i", "http://x/y"]"#,
                2,
                "set by isc-transcode itself",
            ),
            (
                r#"args = ["-c", "copy"]
                input_args = ["-ss", "1",
                  "-crf", "2"]"#,
                3,
                "output option",
            ),
        ] {
            let text = MINIMAL.replace(r#"args = ["-c", "copy"]"#, args);
            let first = text.find("args").expect("args");
            let base = text[..first].lines().count();
            let msg = parse("t", &text, Source::File("p.toml".into()))
                .expect_err(args)
                .to_string();
            assert!(
                msg.starts_with(&format!(
                    "invalid preset p.toml, line {}: ",
                    base + line - 1
                )),
                "{args}: {msg}"
            );
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn mp4_without_faststart_is_refused() {
        let text = MINIMAL.replace("\"matroska\"", "\"mp4\"");
        let msg = parse("t", &text, Source::Builtin)
            .expect_err("must fail")
            .to_string();
        assert!(msg.contains("faststart"), "{msg}");
    }

    #[test]
    fn bad_extension_is_refused() {
        let text = MINIMAL.replace("\"mkv\"", "\".mkv\"");
        let msg = parse("t", &text, Source::Builtin)
            .expect_err("must fail")
            .to_string();
        assert!(msg.contains("field `extension`"), "{msg}");
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let msg = parse("t", "description = \n", Source::File("x/y.toml".into()))
            .expect_err("must fail")
            .to_string();
        assert!(msg.contains("x/y.toml"), "{msg}");
        assert!(msg.contains("line"), "{msg}");
    }

    #[test]
    fn unknown_name_lists_builtins() {
        let msg = load("nope").expect_err("unknown").to_string();
        assert!(msg.contains("h264") && msg.contains("nope"), "{msg}");
    }

    #[test]
    fn file_preset_loads_by_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mine.toml");
        std::fs::write(&path, MINIMAL).expect("write");
        let p = load(path.to_str().expect("utf8")).expect("load");
        assert_eq!(p.name, "mine");
        assert_eq!(p.source, Source::File(path));
    }

    #[test]
    fn fingerprint_tracks_args_not_description() {
        let a = parse("t", MINIMAL, Source::Builtin).expect("a");
        let b = parse(
            "t",
            &MINIMAL.replace("\"test\"", "\"other words\""),
            Source::Builtin,
        )
        .expect("b");
        let c = parse(
            "t",
            &MINIMAL.replace(r#"["-c", "copy"]"#, r#"["-c", "copy", "-an"]"#),
            Source::Builtin,
        )
        .expect("c");
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
    }

    #[test]
    fn command_line_quotes_for_display() {
        let p = load("720p").expect("720p");
        let line = p.command_line();
        assert!(line.starts_with("ffmpeg "));
        assert!(line.contains("'scale=w="), "{line}");
    }
}
