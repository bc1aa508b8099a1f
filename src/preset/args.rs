//! The allow-list that every ffmpeg argument of a preset must pass.
//!
//! A preset file may come from anyone (`--preset FILE`), and its arguments go to ffmpeg as they
//! are: in a worker container, or on this machine with `--backend local`. ffmpeg's command line
//! can do far more than transcode one input into one output: a bare argument is one more output
//! file, anywhere; `movie=`/`amovie=` and other filters read files (subtitles, LUTs, fonts,
//! command scripts, models) or load plugins; a protocol prefix (`file:`, `http:`, `pipe:` ...)
//! reads or writes where it likes; encoder parameter strings name stats and analysis files. So
//! nothing is taken on trust: every option must be one of [`OPTIONS`], with a value of the shape
//! that option takes, and every filter of a filtergraph must be one of [`FILTERS`], parsed the way
//! ffmpeg's own graph parser reads it (quotes and backslash escapes included), so that nothing can
//! hide inside an argument that looks harmless here. Options and filters that a built-in preset
//! does not use are allowed only when they cannot name a file or a network address.
//!
//! [`check`] says which argument is refused and why; [`super::parse`] turns that into a message
//! naming the preset file and the line.

/// Where a list of arguments goes on ffmpeg's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// `input_args`: before `-i`.
    Input,
    /// `args`: between the input and the output.
    Output,
}

/// An argument that is not allowed: its index in the list and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    pub message: String,
}

/// The shape of an option's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No value.
    Flag,
    /// A stream of the one input: `0`, `0:V:0?`, `-0:s`.
    Map,
    /// `-1`, `0` or `0:...`: metadata or chapters from the one input, or none.
    MapFrom,
    /// A codec, encoder or decoder name.
    Codec,
    /// A plain word: letters, digits, `_`, `.`, `-` (a preset name, a pixel format).
    Word,
    /// A word or a signed integer (`-strict -2`, `-strict experimental`).
    WordOrInt,
    Int,
    Number,
    /// `128k`, `2.5M`, `0`.
    Bitrate,
    /// A filtergraph of allowed filters.
    Filters,
    /// `key=value:key=value` for an encoder's own parameter string.
    CodecParams,
    /// A four-character code.
    FourCc,
    /// `+flag-flag` lists (`-movflags`, `-fflags`, `-disposition`).
    FlagList,
    /// `30`, `29.97`, `30000/1001`, `ntsc`.
    Rate,
    /// `1280x720`, `hd720`.
    Size,
    /// `16:9`, `1.777`.
    Aspect,
    /// `10`, `00:01:30.5`, `1500ms`.
    Time,
    /// `stereo`, `5.1(side)`, `7.1|5.1|stereo`.
    Layout,
    /// `key=value` metadata.
    Metadata,
}

/// One allowed option: its name (without the dash), whether it takes a stream specifier
/// (`-c:v`), the shape of its value, and whether it may stand before `-i`.
struct Opt {
    name: &'static str,
    spec: bool,
    kind: Kind,
    input: bool,
}

const fn opt(name: &'static str, spec: bool, kind: Kind, input: bool) -> Opt {
    Opt {
        name,
        spec,
        kind,
        input,
    }
}

/// Every option a preset may use. The built-in presets need only some of them.
const OPTIONS: &[Opt] = &[
    opt("map", false, Kind::Map, false),
    opt("map_metadata", true, Kind::MapFrom, false),
    opt("map_chapters", false, Kind::MapFrom, false),
    opt("sn", false, Kind::Flag, false),
    opt("dn", false, Kind::Flag, false),
    opt("vn", false, Kind::Flag, false),
    opt("an", false, Kind::Flag, false),
    opt("shortest", false, Kind::Flag, false),
    opt("c", true, Kind::Codec, true),
    opt("codec", true, Kind::Codec, true),
    opt("vcodec", false, Kind::Codec, true),
    opt("acodec", false, Kind::Codec, true),
    opt("preset", true, Kind::Word, false),
    opt("tune", true, Kind::Word, false),
    opt("profile", true, Kind::Word, false),
    opt("level", true, Kind::Number, false),
    opt("crf", true, Kind::Number, false),
    opt("qp", true, Kind::Number, false),
    opt("q", true, Kind::Number, false),
    opt("qscale", true, Kind::Number, false),
    opt("b", true, Kind::Bitrate, false),
    opt("maxrate", true, Kind::Bitrate, false),
    opt("minrate", true, Kind::Bitrate, false),
    opt("bufsize", true, Kind::Bitrate, false),
    opt("pix_fmt", true, Kind::Word, false),
    opt("vf", false, Kind::Filters, false),
    opt("af", false, Kind::Filters, false),
    opt("filter", true, Kind::Filters, false),
    opt("x264-params", true, Kind::CodecParams, false),
    opt("x265-params", true, Kind::CodecParams, false),
    opt("svtav1-params", true, Kind::CodecParams, false),
    opt("tag", true, Kind::FourCc, false),
    opt("movflags", false, Kind::FlagList, false),
    opt("fflags", false, Kind::FlagList, true),
    opt("err_detect", false, Kind::FlagList, true),
    opt("disposition", true, Kind::FlagList, false),
    opt("deadline", true, Kind::Word, false),
    opt("cpu-used", true, Kind::Int, false),
    opt("row-mt", true, Kind::Int, false),
    opt("tile-columns", true, Kind::Int, false),
    opt("tile-rows", true, Kind::Int, false),
    opt("lag-in-frames", true, Kind::Int, false),
    opt("auto-alt-ref", true, Kind::Int, false),
    opt("threads", true, Kind::Int, true),
    opt("g", true, Kind::Int, false),
    opt("bf", true, Kind::Int, false),
    opt("keyint_min", true, Kind::Int, false),
    opt("sc_threshold", true, Kind::Int, false),
    opt("frames", true, Kind::Int, false),
    opt("vframes", false, Kind::Int, false),
    opt("aframes", false, Kind::Int, false),
    opt("update", false, Kind::Int, false),
    opt("compression_level", true, Kind::Int, false),
    opt("vbr", true, Kind::Word, false),
    opt("application", true, Kind::Word, false),
    opt("r", true, Kind::Rate, true),
    opt("s", true, Kind::Size, false),
    opt("aspect", true, Kind::Aspect, false),
    opt("ac", true, Kind::Int, true),
    opt("ar", true, Kind::Int, true),
    opt("sample_fmt", true, Kind::Word, false),
    opt("ch_layout", true, Kind::Layout, false),
    opt("channel_layout", true, Kind::Layout, false),
    opt("metadata", true, Kind::Metadata, false),
    opt("strict", true, Kind::WordOrInt, false),
    opt("fps_mode", true, Kind::Word, false),
    opt("vsync", false, Kind::WordOrInt, false),
    opt("color_primaries", true, Kind::Word, false),
    opt("color_trc", true, Kind::Word, false),
    opt("colorspace", true, Kind::Word, false),
    opt("color_range", true, Kind::Word, false),
    opt("max_muxing_queue_size", false, Kind::Int, false),
    opt("avoid_negative_ts", false, Kind::WordOrInt, false),
    opt("t", false, Kind::Time, true),
    opt("to", false, Kind::Time, true),
    opt("ss", false, Kind::Time, true),
    opt("itsoffset", false, Kind::Time, true),
    opt("analyzeduration", false, Kind::Int, true),
    opt("probesize", false, Kind::Int, true),
    opt("thread_queue_size", false, Kind::Int, true),
    // Read the input at its native frame rate: for presets that pace a job in real time (the
    // fleet benchmark's latency-bound jobs).
    opt("re", false, Kind::Flag, true),
];

/// Every filter a filtergraph of a preset may use: none of them reads or writes a file, opens a
/// connection, loads code, or adds a stream that is not the input's.
const FILTERS: &[&str] = &[
    // video
    "scale",
    "crop",
    "pad",
    "fps",
    "format",
    "setsar",
    "setdar",
    "setpts",
    "yadif",
    "bwdif",
    "transpose",
    "hflip",
    "vflip",
    "rotate",
    "thumbnail",
    "select",
    "trim",
    "fade",
    "hqdn3d",
    "nlmeans",
    "unsharp",
    "eq",
    "hue",
    "colorspace",
    "zscale",
    "tonemap",
    "deband",
    "deblock",
    "gblur",
    "boxblur",
    "null",
    "copy",
    "framerate",
    "tpad",
    "fieldorder",
    "setfield",
    "idet",
    "noise",
    "removegrain",
    "deflicker",
    "lutyuv",
    "lutrgb",
    "lut",
    "negate",
    "colorchannelmixer",
    "setparams",
    "colormatrix",
    "tblend",
    "minterpolate",
    "mpdecimate",
    "decimate",
    "fieldmatch",
    // audio
    "aformat",
    "aresample",
    "volume",
    "loudnorm",
    "pan",
    "atempo",
    "asetpts",
    "atrim",
    "afade",
    "apad",
    "highpass",
    "lowpass",
    "acompressor",
    "alimiter",
    "dynaudnorm",
    "channelmap",
    "anull",
    "silenceremove",
    "equalizer",
    "bass",
    "treble",
    "asetrate",
    "compand",
    "agate",
    "aecho",
];

/// Filters that are refused with a reason of their own, because they are the ones a hostile
/// preset would reach for.
const FILTER_REASONS: &[(&str, &str)] = &[
    ("movie", "reads a file"),
    ("amovie", "reads a file"),
    ("ass", "reads a subtitle file"),
    ("subtitles", "reads a subtitle file"),
    ("lut3d", "reads a LUT file"),
    ("lut1d", "reads a LUT file"),
    ("sendcmd", "reads commands from a file"),
    ("asendcmd", "reads commands from a file"),
    ("drawtext", "reads font and text files"),
    ("curves", "reads a curves file"),
    ("removelogo", "reads an image file"),
    ("cover_rect", "reads an image file"),
    ("find_rect", "reads an image file"),
    ("frei0r", "loads a plugin library"),
    ("frei0r_src", "loads a plugin library"),
    ("ladspa", "loads a plugin library"),
    ("lv2", "loads a plugin library"),
    ("zmq", "opens a network socket"),
    ("azmq", "opens a network socket"),
    ("metadata", "can write a file"),
    ("ametadata", "can write a file"),
    ("psnr", "can write a file"),
    ("ssim", "can write a file"),
    ("vidstabdetect", "writes a file"),
    ("vidstabtransform", "reads a file"),
    ("libvmaf", "reads and writes files"),
    ("signature", "can write a file"),
    ("arnndn", "reads a model file"),
    ("sr", "reads a model file"),
    ("dnn_processing", "reads a model file"),
    ("sofalizer", "reads a SOFA file"),
    ("openclsrc", "reads an OpenCL program file"),
    ("program_opencl", "reads an OpenCL program file"),
    ("lensfun", "reads a lens database"),
];

/// Encoder parameters (`-x264-params`, `-x265-params`, `-svtav1-params`) that tune the encoder
/// and name no file (unlike `stats`, `csv`, `qpfile`, `analysis-save`, `zonefile` ...).
const CODEC_PARAMS: &[&str] = &[
    "log-level",
    "aq-mode",
    "aq-strength",
    "psy-rd",
    "psy-rdoq",
    "bframes",
    "ref",
    "keyint",
    "min-keyint",
    "scenecut",
    "no-scenecut",
    "rc-lookahead",
    "deblock",
    "sao",
    "no-sao",
    "strong-intra-smoothing",
    "vbv-maxrate",
    "vbv-bufsize",
    "profile",
    "level-idc",
    "tune",
    "preset",
    "colorprim",
    "transfer",
    "colormatrix",
    "chromaloc",
    "range",
    "hdr-opt",
    "hdr10-opt",
    "repeat-headers",
    "open-gop",
    "no-open-gop",
    "b-adapt",
    "weightb",
    "weightp",
    "qcomp",
    "ipratio",
    "pbratio",
    "me",
    "subme",
    "merange",
    "frame-threads",
    "pools",
    "lookahead-slices",
    "limit-sao",
    "crf",
    "qp",
    "fast-decode",
    "film-grain",
    "enable-overlays",
    "scd",
    "tile-columns",
    "tile-rows",
    "lp",
    "enable-tf",
    "enable-qm",
    "qm-min",
    "qm-max",
    "8x8dct",
    "trellis",
    "mbtree",
    "no-mbtree",
    "b-pyramid",
    "direct",
    "nal-hrd",
    "threads",
];

/// Check a preset's argument list for its place on the command line.
pub fn check(args: &[String], place: Place) -> Result<(), Refusal> {
    let mut i = 0;
    while i < args.len() {
        let refuse = |index: usize, message: String| Refusal { index, message };
        let arg = &args[i];
        if let Some(scheme) = protocol(arg) {
            return Err(refuse(i, protocol_reason(arg, scheme)));
        }
        let Some(option) = arg.strip_prefix('-').filter(|o| !o.is_empty()) else {
            return Err(refuse(
                i,
                format!("{arg:?} is not an option: ffmpeg would take it as one more output file"),
            ));
        };
        let (name, spec) = match option.split_once(':') {
            Some((n, s)) => (n, Some(s)),
            None => (option, None),
        };
        let Some(known) = OPTIONS.iter().find(|o| o.name == name) else {
            return Err(refuse(
                i,
                format!("{arg:?} is not an option a preset may use (the README lists them)"),
            ));
        };
        if let Some(spec) = spec
            && (!known.spec || !is_stream_spec(spec))
        {
            return Err(refuse(
                i,
                format!("{arg:?}: -{name} takes no stream specifier {spec:?}"),
            ));
        }
        if place == Place::Input && !known.input {
            return Err(refuse(
                i,
                format!("{arg:?} is an output option; it may not stand in input_args"),
            ));
        }
        if known.kind == Kind::Flag {
            i += 1;
            continue;
        }
        let Some(value) = args.get(i + 1) else {
            return Err(refuse(i, format!("{arg:?} needs a value")));
        };
        if let Some(scheme) = protocol(value) {
            return Err(refuse(
                i + 1,
                format!("{arg} {}", protocol_reason(value, scheme)),
            ));
        }
        if let Err(why) = check_value(known.kind, value) {
            return Err(refuse(i + 1, format!("{arg} {value:?}: {why}")));
        }
        i += 2;
    }
    Ok(())
}

/// The scheme of a `scheme:` prefix (two letters or more, as ffmpeg's protocols are), if the
/// argument starts with one.
fn protocol(arg: &str) -> Option<&str> {
    let (scheme, _) = arg.split_once(':')?;
    let mut bytes = scheme.bytes();
    let first = bytes.next()?;
    (scheme.len() >= 2
        && first.is_ascii_alphabetic()
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"+.-_".contains(&b)))
    .then_some(scheme)
}

fn protocol_reason(arg: &str, scheme: &str) -> String {
    format!(
        "{arg:?}: the protocol prefix \"{scheme}:\" would make ffmpeg read or write somewhere \
         else; a preset may name no file or address"
    )
}

fn is_stream_spec(spec: &str) -> bool {
    !spec.is_empty()
        && spec
            .split(':')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn all(s: &str, ok: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.bytes().all(ok)
}

fn is_int(s: &str) -> bool {
    all(s.strip_prefix('-').unwrap_or(s), |b| b.is_ascii_digit())
}

fn is_number(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    match s.split_once('.') {
        Some((a, b)) => all(a, |c| c.is_ascii_digit()) && all(b, |c| c.is_ascii_digit()),
        None => all(s, |c| c.is_ascii_digit()),
    }
}

fn is_word(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && all(s, |b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn is_flag_list(s: &str) -> bool {
    s == "0"
        || (all(s, |b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
            && s.split(['+', '-']).any(|f| !f.is_empty()))
}

fn is_map(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let s = s.strip_suffix('?').unwrap_or(s);
    let mut parts = s.split(':');
    parts.next() == Some("0") && parts.all(|p| all(p, |b| b.is_ascii_alphanumeric() || b == b'_'))
}

fn check_value(kind: Kind, v: &str) -> Result<(), String> {
    let ok = match kind {
        Kind::Flag => true,
        Kind::Map => is_map(v),
        Kind::MapFrom => v == "-1" || is_map(v),
        Kind::Codec => is_word(v),
        Kind::Word => is_word(v),
        Kind::WordOrInt => is_word(v) || is_int(v),
        Kind::Int => is_int(v),
        Kind::Number => is_number(v),
        Kind::Bitrate => {
            let digits = v.strip_suffix(['k', 'K', 'm', 'M', 'g', 'G']).unwrap_or(v);
            !digits.starts_with('-') && is_number(digits)
        }
        Kind::Filters => return check_filtergraph(v),
        Kind::CodecParams => return check_codec_params(v),
        Kind::FourCc => v.len() == 4 && all(v, |b| b.is_ascii_alphanumeric()),
        Kind::FlagList => is_flag_list(v),
        Kind::Rate => {
            all(v, |b| b.is_ascii_lowercase())
                || match v.split_once('/') {
                    Some((a, b)) => is_number(a) && is_int(b) && !b.starts_with('-'),
                    None => is_number(v),
                }
        }
        Kind::Size => {
            all(v, |b| b.is_ascii_alphanumeric())
                && (v
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        }
        Kind::Aspect => match v.split_once(':') {
            Some((a, b)) => is_int(a) && is_int(b),
            None => is_number(v),
        },
        Kind::Time => {
            let t = v
                .strip_suffix("ms")
                .or_else(|| v.strip_suffix("us"))
                .or_else(|| v.strip_suffix('s'))
                .unwrap_or(v);
            let t = t.strip_prefix('-').unwrap_or(t);
            all(t, |b| b.is_ascii_digit() || b == b':' || b == b'.')
        }
        Kind::Layout => all(v, |b| b.is_ascii_alphanumeric() || b"._()|+-".contains(&b)),
        Kind::Metadata => v
            .split_once('=')
            .is_some_and(|(k, _)| all(k, |b| b.is_ascii_alphanumeric() || b"_-".contains(&b))),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "not a value of the shape this option takes ({kind:?})"
        ))
    }
}

fn check_codec_params(v: &str) -> Result<(), String> {
    for pair in v.split(':') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !CODEC_PARAMS.contains(&key) {
            return Err(format!(
                "encoder parameter {key:?} is not one a preset may set (some name files)"
            ));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._,+-".contains(&b))
        {
            return Err(format!(
                "encoder parameter {key}={value:?} is not a plain value"
            ));
        }
    }
    Ok(())
}

const WHITESPACE: &[char] = &[' ', '\n', '\t', '\r'];

/// One token, read the way ffmpeg's `av_get_token` reads it: leading whitespace skipped, `\x`
/// taken as `x`, `'...'` taken as it is, up to a character of `term`; trailing unescaped
/// whitespace dropped. `s` is left at the terminator.
fn get_token(s: &mut &str, term: &[char]) -> String {
    let mut rest = s.trim_start_matches(WHITESPACE).chars();
    let mut out = String::new();
    let mut keep = 0;
    loop {
        let before = rest.as_str();
        let Some(c) = rest.next() else { break };
        if term.contains(&c) {
            rest = before.chars();
            break;
        }
        match c {
            '\\' => match rest.next() {
                Some(n) => {
                    out.push(n);
                    keep = out.len();
                }
                None => out.push('\\'),
            },
            '\'' => {
                let mut closed = false;
                for q in rest.by_ref() {
                    if q == '\'' {
                        closed = true;
                        break;
                    }
                    out.push(q);
                }
                if closed {
                    keep = out.len();
                }
            }
            c => out.push(c),
        }
    }
    *s = rest.as_str();
    let trimmed = out.trim_end_matches(WHITESPACE).len().max(keep);
    out.truncate(trimmed);
    out
}

/// `[label]`s at the front of `s`.
fn labels(s: &mut &str) -> Result<(), String> {
    loop {
        *s = s.trim_start_matches(WHITESPACE);
        let Some(after) = s.strip_prefix('[') else {
            return Ok(());
        };
        let mut rest = after;
        let name = get_token(&mut rest, &[']']);
        if name.is_empty() || !all(&name, |b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("link label [{name}] is not a plain name"));
        }
        *s = rest
            .strip_prefix(']')
            .ok_or_else(|| format!("link label [{name} is not closed"))?;
    }
}

/// Check a filtergraph: every filter allowed, and no option of theirs loading its value from a
/// file (ffmpeg 7.1 reads `/option=path` that way).
pub fn check_filtergraph(graph: &str) -> Result<(), String> {
    check_graph(graph, &[])
}

/// Check the graph a ladder preset makes ([`super::ladder`]): it reads the input's first video
/// stream (`[0:V:0]`) and may `split` it, which adds streams no other preset may add, and `tile`
/// the sprites' thumbnails; every
/// other filter passes the same rules as [`check_filtergraph`].
pub fn check_ladder_graph(graph: &str) -> Result<(), String> {
    let rest = graph
        .strip_prefix("[0:V:0]")
        .ok_or_else(|| "a ladder's graph reads the input's first video stream".to_string())?;
    check_graph(rest, &["split", "tile"])
}

fn check_graph(graph: &str, extra: &[&str]) -> Result<(), String> {
    let mut s = graph;
    loop {
        labels(&mut s)?;
        let name = get_token(&mut s, &['=', ',', ';', '[']);
        let opts = match s.strip_prefix('=') {
            Some(after) => {
                s = after;
                get_token(&mut s, &['[', ']', ',', ';'])
            }
            None => String::new(),
        };
        check_filter(&name, &opts, extra)?;
        labels(&mut s)?;
        s = s.trim_start_matches(WHITESPACE);
        let mut chars = s.chars();
        match chars.next() {
            None => return Ok(()),
            Some(',' | ';') => s = chars.as_str(),
            Some(c) => return Err(format!("unexpected {c:?} in the filtergraph")),
        }
    }
}

fn check_filter(name: &str, opts: &str, extra: &[&str]) -> Result<(), String> {
    let base = name.split_once('@').map_or(name, |(b, _)| b);
    if let Some((_, why)) = FILTER_REASONS.iter().find(|(f, _)| *f == base) {
        return Err(format!("filter {base:?} {why}, which a preset may not do"));
    }
    if !FILTERS.contains(&base) && !extra.contains(&base) {
        return Err(format!(
            "filter {base:?} is not one a preset may use (the README lists them)"
        ));
    }
    let mut rest = opts;
    while !rest.is_empty() {
        let pair = get_token(&mut rest, &[':']);
        if pair.starts_with('/') {
            return Err(format!(
                "filter {base:?}: option {pair:?} would load its value from a file"
            ));
        }
        rest = rest.strip_prefix(':').unwrap_or(rest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn refused(a: &[&str]) -> Refusal {
        check(&strings(a), Place::Output).expect_err(&format!("{a:?} must be refused"))
    }

    #[test]
    fn tokens_read_as_ffmpeg_reads_them() {
        let mut s = " scale=w='min(1280,iw)':h=-2 ,next";
        assert_eq!(get_token(&mut s, &['=', ',']), "scale");
        s = &s[1..];
        assert_eq!(get_token(&mut s, &[',']), "w=min(1280,iw):h=-2");
        assert_eq!(s, ",next");
        let mut s = r"a\,b\ ,c";
        assert_eq!(get_token(&mut s, &[',']), "a,b ");
        let mut s = "'x;y' ;z";
        assert_eq!(get_token(&mut s, &[';']), "x;y");
    }

    #[test]
    fn shapes_of_the_builtin_presets_pass() {
        check(
            &strings(&[
                "-map",
                "0:V:0?",
                "-map",
                "0:a?",
                "-sn",
                "-dn",
                "-c:v",
                "libx264",
                "-preset",
                "medium",
                "-crf",
                "23",
                "-pix_fmt",
                "yuv420p",
                "-vf",
                "scale=w='min(1280,iw)':h='min(720,ih)':force_original_aspect_ratio=decrease",
                "-c:a",
                "aac",
                "-b:a",
                "128k",
                "-movflags",
                "+faststart",
                "-x265-params",
                "log-level=error",
                "-tag:v",
                "hvc1",
                "-af",
                "aformat=channel_layouts=7.1|5.1|stereo|mono",
                "-frames:v",
                "1",
                "-update",
                "1",
                "-q:v",
                "3",
                "-cpu-used",
                "4",
                "-b:v",
                "0",
            ]),
            Place::Output,
        )
        .expect("allowed");
        check(
            &strings(&["-ss", "00:00:05.5", "-c:v", "h264"]),
            Place::Input,
        )
        .expect("input");
        check(&strings(&["-re", "-ss", "1"]), Place::Input).expect("-re is a flag");
    }

    #[test]
    fn a_bare_argument_is_an_extra_output() {
        let r = refused(&["-c", "copy", "/home/u/.bashrc"]);
        assert_eq!(r.index, 2);
        assert_eq!(
            r.message,
            "\"/home/u/.bashrc\" is not an option: ffmpeg would take it as one more output file"
        );
        assert_eq!(refused(&["-"]).index, 0);
        assert_eq!(refused(&["out.mkv"]).index, 0);
        // A value where an option is expected, after a flag.
        assert_eq!(refused(&["-sn", "x.mp4"]).index, 1);
    }

    #[test]
    fn protocol_prefixes_are_refused_anywhere() {
        for a in [
            "file:/etc/passwd",
            "http://evil/x",
            "pipe:1",
            "tcp://1.2.3.4:5",
            "concat:a|b",
        ] {
            let r = refused(&[a]);
            assert!(r.message.contains("protocol prefix"), "{a}: {}", r.message);
        }
        let r = refused(&["-c:v", "libx264", "-metadata", "file:x"]);
        assert_eq!(r.index, 3);
        assert!(
            r.message
                .starts_with("-metadata \"file:x\": the protocol prefix \"file:\"")
        );
        let r = refused(&["-vf", "pipe:0"]);
        assert!(r.message.contains("\"pipe:\""), "{}", r.message);
    }

    #[test]
    fn unknown_and_misplaced_options_are_refused() {
        for a in [
            ["-filter_complex", "null"],
            ["-lavfi", "null"],
            ["-/vf", "f.txt"],
            ["-stream_loop", "-1"],
            ["-pass", "1"],
            ["-loglevel", "quiet"],
        ] {
            let r = refused(&a);
            assert_eq!(r.index, 0, "{a:?}");
            assert!(
                r.message.contains("not an option a preset may use"),
                "{}",
                r.message
            );
        }
        let r = check(&strings(&["-crf", "23"]), Place::Input).expect_err("output option");
        assert!(r.message.contains("input_args"), "{}", r.message);
        assert!(refused(&["-sn:v"]).message.contains("stream specifier"));
        assert!(refused(&["-crf"]).message.contains("needs a value"));
    }

    #[test]
    fn values_must_have_their_shape() {
        for (a, at) in [
            (["-c:v", "../lib.so"], 1),
            (["-map", "1:v"], 1),
            (["-map", "[out]"], 1),
            (["-crf", "x"], 1),
            (["-preset", "/etc/x"], 1),
            (["-movflags", "+faststart /x"], 1),
            (["-tag:v", "hvc1x"], 1),
            (["-x265-params", "csv=/tmp/log.csv"], 1),
            (["-x264-params", "stats=/root/x"], 1),
            (["-x265-params", "log-level=/x"], 1),
            (["-metadata", "no-equals"], 1),
        ] {
            let r = refused(&a);
            assert_eq!(r.index, at, "{a:?}: {}", r.message);
        }
    }

    #[test]
    fn filters_that_read_files_are_refused() {
        for (graph, needle) in [
            (
                "movie=/etc/passwd[wm];[in][wm]overlay",
                "filter \"movie\" reads a file",
            ),
            ("amovie=/etc/passwd", "filter \"amovie\" reads a file"),
            (
                "scale=2:2,subtitles=/etc/passwd",
                "\"subtitles\" reads a subtitle file",
            ),
            ("ass=x.ass", "\"ass\" reads a subtitle file"),
            ("lut3d=file=/x.cube", "\"lut3d\" reads a LUT file"),
            (
                "sendcmd=f=/x.cmd,scale",
                "\"sendcmd\" reads commands from a file",
            ),
            (
                "drawtext=textfile=/etc/passwd",
                "\"drawtext\" reads font and text files",
            ),
            ("null@x,movie@y=/x", "filter \"movie\" reads a file"),
            ("overlay", "not one a preset may use"),
            ("testsrc", "not one a preset may use"),
            ("scale=/w=/etc/passwd", "would load its value from a file"),
            (
                "scale=w=1:/h=/etc/passwd",
                "would load its value from a file",
            ),
            // Hidden behind escapes and quotes, as ffmpeg's parser unhides them.
            ("scale='1:1',movie=/x", "filter \"movie\" reads a file"),
            ("scale=1:1 ; movie=/x", "filter \"movie\" reads a file"),
            (
                "[in]scale=2:2[a];[a]movie=/x",
                "filter \"movie\" reads a file",
            ),
        ] {
            let r = refused(&["-vf", graph]);
            assert_eq!(r.index, 1);
            assert!(r.message.contains(needle), "{graph}: {}", r.message);
        }
        // The escaped comma stays inside scale's options: no hidden filter, and its value is
        // checked as an option of scale.
        assert!(check_filtergraph(r"scale=w=1\,2:h=2").is_ok());
        assert!(check_filtergraph(r"scale=1:1\,movie=/x").is_ok());
        assert!(check_filtergraph("thumbnail=n=50,scale=w='min(1280,iw)':h=-2").is_ok());
        assert!(check_filtergraph("[in]scale=2:2[out]").is_ok());
    }

    #[test]
    fn odd_graphs_are_refused_or_passed_never_a_panic() {
        for g in [
            "",
            "[",
            "]",
            "[]",
            "[a",
            "=",
            ",",
            ";;",
            "'",
            "scale='",
            "scale=\\",
            "\\",
            "scale=w=1:",
            "scale@",
            "é=ü",
            "scale=w='é',null",
            "[a][b]",
            "scale[a]x",
            "scale=1 [a] , null",
        ] {
            let _ = check_filtergraph(g);
        }
        assert!(check_filtergraph("").is_err());
        assert!(check_filtergraph("scale[a]x").is_err());
        assert!(check_filtergraph("scale=1 [a] , null").is_ok());
    }
}
