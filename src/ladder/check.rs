//! The checks a ladder passes before it counts, on the folder as it landed here.
//!
//! The playlists are parsed with the `m3u8-rs` crate and the media with `mp4-atom` (the fMP4
//! and CMAF segments both packagings write), on this machine, from descriptors opened in the
//! job's folder without following a link:
//! - `master.m3u8` parses as a master playlist and lists exactly the renditions the ladder
//!   makes of this input (tallest first), each with a media playlist that parses;
//! - every segment, and every initialisation segment, a playlist names is a file of the folder
//!   (plain relative names only), and its size is the size that file has;
//! - each rendition's initialisation segment holds the preset's video codec at the expected
//!   size (the rendition's height, never above the source, even dimensions) and pixel format,
//!   and AAC audio whenever the input has audio;
//! - the renditions' segments line up: as many in each, of the same lengths (within a frame),
//!   so that a player switches between renditions at any segment boundary;
//! - each rendition's duration, summed from its segments' own sample tables (`moof`/`trun`),
//!   matches the input's within [`DURATION_TOLERANCE`], and so does what its playlist states
//!   (`#EXTINF`);
//! - the master playlist's `CODECS` and `RESOLUTION` are what the initialisation segments hold
//!   (RFC 6381 codec strings from `avcC`/`hvcC` and the AAC object type), and its `BANDWIDTH` is
//!   at least the peak bit rate measured from the segments' sizes and durations. ffmpeg states
//!   `BANDWIDTH` from the nominal bitrates, which a segment can exceed; where it does, the
//!   master playlist is rewritten with the measured peak (and `AVERAGE-BANDWIDTH`), so what
//!   players read is true. A wrong `CODECS` or `RESOLUTION` fails the job;
//! - a `dash` ladder also has its `manifest.mpd`, and a poster is a JPEG when the preset makes one.

use super::unpack::FileEntry;
use crate::preset::{Check, Ladder, ladder};
use crate::verify::DURATION_TOLERANCE;
use m3u8_rs::{MasterPlaylist, MediaPlaylist};
use mp4_atom::{Codec, Decode, Moof, Moov};
use rustix::fs::{Mode, OFlags};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

/// Largest playlist read: a ten-hour rendition in 1 s segments is about 1.5 MB.
const MAX_PLAYLIST: u64 = 16 << 20;

/// Largest segment read back (the 1 s segments of an 8K rendition are far smaller).
const MAX_SEGMENT: u64 = 1 << 30;

/// How far the segments of two renditions may differ in length (seconds): less than a frame at
/// 24 fps, so only segments cut at the same keyframes pass.
const SEGMENT_SLACK: f64 = 0.04;

/// What the checks measured, per rendition, tallest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendition {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub codecs: String,
    /// Seconds of video, from the segments' sample tables.
    pub duration: f64,
    /// Peak and average bits per second, audio included.
    pub peak: u64,
    pub average: u64,
    pub segments: usize,
}

/// What a checked ladder holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub renditions: Vec<Rendition>,
    /// The master playlist was rewritten with measured bandwidths.
    pub rewrote_master: bool,
}

/// The job's folder, open, and the files taken into it.
pub struct Folder<'a> {
    pub fd: &'a OwnedFd,
    pub files: &'a [FileEntry],
}

impl Folder<'_> {
    fn size_of(&self, rel: &Path) -> Option<u64> {
        self.files.iter().find(|f| f.path == rel).map(|f| f.size)
    }

    /// The bytes of `rel`, at most `max`: opened from the folder one name at a time without
    /// following a link, and only a regular file the archive brought.
    pub(crate) fn read(&self, rel: &Path, max: u64) -> Result<Vec<u8>, String> {
        let size = self
            .size_of(rel)
            .ok_or_else(|| format!("{} is named but not in the folder", rel.display()))?;
        if size > max {
            return Err(format!(
                "{} is {size} bytes, more than read back",
                rel.display()
            ));
        }
        let file = open_in(self.fd, rel).map_err(|e| format!("{}: {e}", rel.display()))?;
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(max + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", rel.display()))?;
        if bytes.len() as u64 != size {
            return Err(format!(
                "{} holds {} bytes, {size} were taken",
                rel.display(),
                bytes.len()
            ));
        }
        Ok(bytes)
    }
}

/// Open `rel` below `root` for reading, never through a link, only a regular file.
pub(crate) fn open_in(root: &OwnedFd, rel: &Path) -> std::io::Result<std::fs::File> {
    let names: Vec<_> = rel.components().collect();
    let dflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir: Option<OwnedFd> = None;
    for (i, c) in names.iter().enumerate() {
        let Component::Normal(name) = c else {
            return Err(std::io::Error::other("not a plain relative path"));
        };
        let at = dir.as_ref().unwrap_or(root);
        if i + 1 < names.len() {
            dir = Some(rustix::fs::openat(at, *name, dflags, Mode::empty())?);
        } else {
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
            let fd = rustix::fs::openat(at, *name, flags, Mode::empty())?;
            let st = rustix::fs::fstat(&fd)?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
            {
                return Err(std::io::Error::other("not a regular file"));
            }
            return Ok(std::fs::File::from(fd));
        }
    }
    Err(std::io::Error::other("an empty path"))
}

/// A URI of a playlist, as a path relative to the folder `base` (the playlist's own folder):
/// plain names only, no scheme, no query, nothing that leaves the folder.
fn local_path(base: &Path, uri: &str) -> Result<PathBuf, String> {
    let plain = !uri.is_empty()
        && uri
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
        && !uri.starts_with('/');
    let path = base.join(uri);
    if !plain
        || path
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "a playlist names {uri:?}, which is not a file of the ladder"
        ));
    }
    Ok(path)
}

/// Facts of one initialisation segment's tracks.
#[derive(Debug, Default)]
struct Init {
    /// (codec as the check names it, RFC 6381 string, width, height, pix_fmt)
    video: Option<(String, String, u32, u32, Option<String>)>,
    /// RFC 6381 string of the audio track.
    audio: Option<String>,
    /// track id -> (timescale, default sample duration, is video)
    tracks: HashMap<u32, (u32, u32, bool)>,
}

fn read_init(bytes: &[u8], name: &Path) -> Result<Init, String> {
    let bad = |why: String| format!("{}: {why}", name.display());
    let probe = crate::readback::read_mp4_bytes(bytes)
        .0
        .map_err(|e| bad(e.to_string()))?;
    let moov = moov_of(bytes).map_err(bad)?;
    let mut init = Init::default();
    let defaults: HashMap<u32, u32> = moov
        .mvex
        .as_ref()
        .map(|m| {
            m.trex
                .iter()
                .map(|t| (t.track_id, t.default_sample_duration))
                .collect()
        })
        .unwrap_or_default();
    for (i, trak) in moov.trak.iter().enumerate() {
        let id = trak.tkhd.track_id;
        let handler = trak.mdia.hdlr.handler.to_string();
        let stream = probe.streams.get(i);
        init.tracks.insert(
            id,
            (
                trak.mdia.mdhd.timescale,
                defaults.get(&id).copied().unwrap_or(0),
                handler == "vide",
            ),
        );
        let Some(codec) = trak.mdia.minf.stbl.stsd.codecs.first() else {
            continue;
        };
        match codec {
            Codec::Avc1(c) => {
                let a = &c.avcc;
                init.video = Some((
                    "h264".into(),
                    format!(
                        "avc1.{:02x}{:02x}{:02x}",
                        a.avc_profile_indication, a.profile_compatibility, a.avc_level_indication
                    ),
                    u32::from(c.visual.width),
                    u32::from(c.visual.height),
                    stream.and_then(|s| s.pix_fmt.clone()),
                ));
            }
            Codec::Hvc1(c) => {
                init.video = Some((
                    "hevc".into(),
                    format!(
                        "hvc1.{}.L{}",
                        c.hvcc.general_profile_idc, c.hvcc.general_level_idc
                    ),
                    u32::from(c.visual.width),
                    u32::from(c.visual.height),
                    stream.and_then(|s| s.pix_fmt.clone()),
                ));
            }
            Codec::Mp4a(c) => {
                let dc = &c.esds.es_desc.dec_config;
                let aot = dc.dec_specific.as_ref().map_or(2, |d| d.profile);
                init.audio = Some(format!("mp4a.{:02x}.{aot}", dc.object_type_indication));
            }
            _ => {}
        }
    }
    Ok(init)
}

/// The one `moov` box of `bytes`, decoded.
fn moov_of(bytes: &[u8]) -> Result<Moov, String> {
    for b in boxes(bytes)? {
        if &b.kind == b"moov" {
            let body = &bytes[b.offset as usize..(b.offset + b.size) as usize];
            return Moov::decode(&mut &body[..]).map_err(|e| format!("its index: {e}"));
        }
    }
    Err("it has no index (moov)".into())
}

fn boxes(bytes: &[u8]) -> Result<Vec<crate::media::BoxHeader>, String> {
    match crate::media::walk_boxes(std::io::Cursor::new(bytes)) {
        Ok(crate::media::Walk::Complete(b)) => Ok(b),
        Ok(_) => Err("not a complete ISO base media file".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Seconds of media per track id in one media segment, from its `moof` boxes.
fn segment_durations(bytes: &[u8], init: &Init, name: &Path) -> Result<HashMap<u32, f64>, String> {
    let bad = |why: String| format!("{}: {why}", name.display());
    let mut ticks: HashMap<u32, u64> = HashMap::new();
    let mut moofs = 0;
    for b in boxes(bytes).map_err(bad)? {
        if &b.kind != b"moof" {
            continue;
        }
        moofs += 1;
        let body = &bytes[b.offset as usize..(b.offset + b.size) as usize];
        let moof = Moof::decode(&mut &body[..]).map_err(|e| bad(format!("a moof: {e}")))?;
        for traf in &moof.traf {
            let id = traf.tfhd.track_id;
            let Some(&(_, default, _)) = init.tracks.get(&id) else {
                return Err(bad(format!(
                    "a fragment of track {id}, which its init segment lacks"
                )));
            };
            let default = traf.tfhd.default_sample_duration.unwrap_or(default);
            let total = ticks.entry(id).or_default();
            for trun in &traf.trun {
                for s in trun.samples.iter() {
                    *total = total.saturating_add(u64::from(s.duration.unwrap_or(default)));
                }
            }
        }
    }
    if moofs == 0 {
        return Err(bad("no media fragment (moof)".into()));
    }
    Ok(ticks
        .into_iter()
        .filter_map(|(id, t)| {
            let (scale, _, _) = init.tracks.get(&id)?;
            (*scale > 0).then(|| (id, t as f64 / f64::from(*scale)))
        })
        .collect())
}

/// One media playlist's rendition, measured.
struct Measured {
    init: Init,
    video_seconds: f64,
    audio_seconds: f64,
    stated_seconds: f64,
    /// (bytes, seconds) per segment, init excluded.
    segments: Vec<(u64, f64)>,
    target: u64,
}

fn media_playlist(folder: &Folder<'_>, rel: &Path) -> Result<Measured, String> {
    let text = folder.read(rel, MAX_PLAYLIST)?;
    let pl: MediaPlaylist = m3u8_rs::parse_media_playlist_res(&text)
        .map_err(|_| format!("{} does not parse as a media playlist", rel.display()))?;
    if !pl.end_list {
        return Err(format!("{} has no end (#EXT-X-ENDLIST)", rel.display()));
    }
    if pl.segments.is_empty() {
        return Err(format!("{} lists no segment", rel.display()));
    }
    let base = rel.parent().unwrap_or(Path::new(""));
    let map = pl
        .segments
        .iter()
        .find_map(|s| s.map.as_ref())
        .ok_or_else(|| format!("{} names no initialisation segment", rel.display()))?;
    let init_path = local_path(base, &map.uri)?;
    let init = read_init(&folder.read(&init_path, MAX_PLAYLIST)?, &init_path)?;
    let (mut video_seconds, mut audio_seconds, mut stated_seconds) = (0.0, 0.0, 0.0);
    let mut segments = Vec::new();
    for s in &pl.segments {
        if s.byte_range.is_some() {
            return Err(format!(
                "{} uses byte ranges, which a ladder does not",
                rel.display()
            ));
        }
        let path = local_path(base, &s.uri)?;
        let bytes = folder.read(&path, MAX_SEGMENT)?;
        let seconds = segment_durations(&bytes, &init, &path)?;
        for (id, secs) in seconds {
            match init.tracks.get(&id) {
                Some((_, _, true)) => video_seconds += secs,
                Some(_) => audio_seconds += secs,
                None => {}
            }
        }
        let stated = f64::from(s.duration);
        stated_seconds += stated;
        segments.push((bytes.len() as u64, stated));
    }
    Ok(Measured {
        init,
        video_seconds,
        audio_seconds,
        stated_seconds,
        segments,
        target: pl.target_duration,
    })
}

/// Peak and average bits per second of `segments` (bytes, seconds): a segment shorter than half
/// the target duration counts together with the one before it, as HLS measures the peak over
/// spans of 0.5 to 1.5 target durations.
fn rates(segments: &[(u64, f64)], target: u64) -> (u64, u64) {
    let mut spans: Vec<(u64, f64)> = Vec::new();
    for &(bytes, secs) in segments {
        match spans.last_mut() {
            Some(last) if secs < target as f64 / 2.0 => {
                last.0 += bytes;
                last.1 += secs;
            }
            _ => spans.push((bytes, secs)),
        }
    }
    let peak = spans
        .iter()
        .filter(|(_, s)| *s > 0.0)
        .map(|(b, s)| (*b as f64 * 8.0 / s).ceil() as u64)
        .max()
        .unwrap_or(0);
    let (bytes, secs) = segments
        .iter()
        .fold((0u64, 0.0), |(b, s), (bb, ss)| (b + bb, s + ss));
    let average = if secs > 0.0 {
        (bytes as f64 * 8.0 / secs).ceil() as u64
    } else {
        0
    };
    (peak, average)
}

/// Check the ladder in `folder` against the preset (`ladder`, with its source, and `check`) and
/// the input's `duration`. Returns what it measured, or why the ladder does not count. The
/// master playlist may be rewritten ([`Checked::rewrote_master`]); the caller takes its new
/// size and hash from the folder.
pub fn check(
    folder: &Folder<'_>,
    ladder: &Ladder,
    check: &Check,
    duration: Option<f64>,
) -> Result<Checked, String> {
    let master_path = Path::new(ladder::MASTER);
    let text = folder.read(master_path, MAX_PLAYLIST)?;
    let mut master: MasterPlaylist = m3u8_rs::parse_master_playlist_res(&text)
        .map_err(|_| format!("{} does not parse as a master playlist", ladder::MASTER))?;
    let expected = ladder.renditions_for();
    let variants: Vec<usize> = (0..master.variants.len())
        .filter(|i| !master.variants[*i].is_i_frame)
        .collect();
    if variants.len() != expected.len() {
        return Err(format!(
            "{} lists {} renditions, the ladder makes {} of this input",
            ladder::MASTER,
            variants.len(),
            expected.len()
        ));
    }
    let audio_group: Option<Measured> = match master
        .alternatives
        .iter()
        .find(|a| a.media_type == m3u8_rs::AlternativeMediaType::Audio)
        .and_then(|a| a.uri.clone())
    {
        Some(uri) => Some(media_playlist(folder, &local_path(Path::new(""), &uri)?)?),
        None => None,
    };
    let mut renditions = Vec::new();
    let mut rewrite = false;
    let mut first_cuts: Option<(String, Vec<f64>)> = None;
    for (&vi, want) in variants.iter().zip(&expected) {
        let variant = &master.variants[vi];
        let name = want.name();
        let at = |why: String| format!("rendition {name} ({}): {why}", variant.uri);
        let m = media_playlist(folder, &local_path(Path::new(""), &variant.uri)?)?;
        let Some((codec, video_codecs, width, height, pix_fmt)) = m.init.video.clone() else {
            return Err(at("no video track".into()));
        };
        if Some(codec.as_str()) != check.video.as_deref() {
            return Err(at(format!(
                "video is {codec}, the preset makes {}",
                check.video.as_deref().unwrap_or("none")
            )));
        }
        let want_height = ladder.made_height(want.height);
        if want_height.is_some_and(|h| h != height) || height > want.height {
            return Err(at(format!(
                "{width}x{height}, the ladder makes it {} pixels high",
                want_height.unwrap_or(want.height)
            )));
        }
        if width % 2 != 0 || height % 2 != 0 {
            return Err(at(format!("{width}x{height} is not of even dimensions")));
        }
        if let (Some(want_fmt), Some(got)) = (&check.pix_fmt, &pix_fmt)
            && want_fmt != got
        {
            return Err(at(format!(
                "pixel format {got}, the preset makes {want_fmt}"
            )));
        }
        let audio = m.init.audio.clone().or_else(|| {
            audio_group
                .as_ref()
                .and_then(|g| g.init.audio.clone())
                .filter(|_| variant.audio.is_some())
        });
        if ladder.audio() && check.audio.is_some() && audio.is_none() {
            return Err(at("no audio, although the input has some".into()));
        }
        if let Some(d) = duration {
            if (m.video_seconds - d).abs() > DURATION_TOLERANCE {
                return Err(at(format!(
                    "its segments hold {:.2} s of video, the input lasts {d:.2} s",
                    m.video_seconds
                )));
            }
            let audio_seconds = if m.init.audio.is_some() {
                Some(m.audio_seconds)
            } else {
                audio_group.as_ref().map(|g| g.audio_seconds)
            };
            if let Some(a) = audio_seconds.filter(|_| audio.is_some())
                && (a - d).abs() > DURATION_TOLERANCE
            {
                return Err(at(format!(
                    "its segments hold {a:.2} s of audio, the input lasts {d:.2} s"
                )));
            }
        }
        if (m.stated_seconds - m.video_seconds).abs() > DURATION_TOLERANCE {
            return Err(at(format!(
                "its playlist states {:.2} s, its segments hold {:.2} s",
                m.stated_seconds, m.video_seconds
            )));
        }
        let codecs: Vec<String> = std::iter::once(video_codecs).chain(audio).collect();
        let stated: Vec<String> = variant
            .codecs
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|c| c.trim().to_ascii_lowercase())
            .filter(|c| !c.is_empty())
            .collect();
        let same = codecs.len() == stated.len()
            && codecs.iter().all(|c| {
                stated
                    .iter()
                    .any(|s| s == c || (c.starts_with("hvc1.") && s.starts_with(c.as_str())))
            });
        if !same {
            return Err(at(format!(
                "{} says CODECS=\"{}\", the segments hold {}",
                ladder::MASTER,
                stated.join(","),
                codecs.join(",")
            )));
        }
        match &variant.resolution {
            Some(r) if r.width == u64::from(width) && r.height == u64::from(height) => {}
            other => {
                return Err(at(format!(
                    "{} says RESOLUTION={}, the segments hold {width}x{height}",
                    ladder::MASTER,
                    other.map_or("(none)".to_string(), |r| format!(
                        "{}x{}",
                        r.width, r.height
                    ))
                )));
            }
        }
        let cuts: Vec<f64> = m.segments.iter().map(|(_, secs)| *secs).collect();
        match &first_cuts {
            None => first_cuts = Some((name.clone(), cuts)),
            Some((tallest, theirs)) => {
                let aligned = theirs.len() == cuts.len()
                    && theirs
                        .iter()
                        .zip(&cuts)
                        .all(|(a, b)| (a - b).abs() <= SEGMENT_SLACK);
                if !aligned {
                    return Err(at(format!(
                        "its segments do not line up with {tallest}'s ({} against {}), so a \
                         player cannot switch between them cleanly",
                        cuts.len(),
                        theirs.len()
                    )));
                }
            }
        }
        let (mut peak, mut average) = rates(&m.segments, m.target);
        if let Some(g) = audio_group.as_ref().filter(|_| variant.audio.is_some()) {
            let (p, a) = rates(&g.segments, g.target);
            peak += p;
            average += a;
        }
        let variant = &mut master.variants[vi];
        if variant.bandwidth < peak {
            variant.bandwidth = peak;
            rewrite = true;
        }
        if variant.average_bandwidth.is_none_or(|a| a < average) {
            variant.average_bandwidth = Some(average);
            rewrite = true;
        }
        renditions.push(Rendition {
            name,
            width,
            height,
            codecs: codecs.join(","),
            duration: m.video_seconds,
            peak,
            average,
            segments: m.segments.len(),
        });
    }
    if ladder.format == "dash" {
        let mpd = folder.read(Path::new(ladder::MANIFEST), MAX_PLAYLIST)?;
        let text = String::from_utf8_lossy(&mpd);
        if !text.contains("<MPD") || !text.contains("</MPD>") {
            return Err(format!("{} is not a DASH manifest", ladder::MANIFEST));
        }
    }
    if ladder.poster {
        let jpeg = folder.read(Path::new(ladder::POSTER), 64 << 20)?;
        if !jpeg.starts_with(&[0xff, 0xd8, 0xff]) || !jpeg.ends_with(&[0xff, 0xd9]) {
            return Err(format!("{} is not a JPEG", ladder::POSTER));
        }
    }
    if rewrite {
        let mut bytes = Vec::new();
        master
            .write_to(&mut bytes)
            .map_err(|e| format!("cannot write {}: {e}", ladder::MASTER))?;
        replace_file(folder.fd, ladder::MASTER, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", ladder::MASTER))?;
    }
    Ok(Checked {
        renditions,
        rewrote_master: rewrite,
    })
}

/// Put `bytes` at `name` in `dir` whole: a new file, synced, renamed over the old one.
fn replace_file(dir: &OwnedFd, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temp = format!("{name}.new");
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, temp.as_str(), flags, Mode::from_raw_mode(0o666))?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, bytes)?;
    file.sync_all()?;
    rustix::fs::renameat(dir, temp.as_str(), dir, name)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real two-rendition ladder of a 2 s 320x240 clip, made by host ffmpeg with the
    /// ladder's own arguments, in `dir/out.d`; the ladder, with its source set.
    fn made(dir: &Path) -> Ladder {
        let preset = crate::preset::parse(
            "t",
            "description = \"x\"\nformat = \"hls\"\nargs = [\"-preset\", \"ultrafast\"]\n\
             [ladder]\nsegment_seconds = 1\nkeyframe_seconds = 1\n\
             [[ladder.rendition]]\nheight = 240\nbitrate = \"300k\"\n\
             [[ladder.rendition]]\nheight = 144\nbitrate = \"150k\"\n\
             [check]\nvideo = \"h264\"\naudio = \"aac\"\n",
            crate::preset::Source::Builtin,
        )
        .expect("preset");
        let mut ladder = preset.ladder.clone().expect("a ladder");
        ladder.source = Some(ladder::Source {
            height: 240,
            audio: true,
        });
        std::fs::create_dir(dir.join("out.d")).expect("mkdir");
        let ok = std::process::Command::new("ffmpeg")
            .current_dir(dir)
            .args(["-v", "error", "-f", "lavfi", "-t", "2"])
            .args([
                "-i",
                "testsrc2=size=320x240:rate=25[out0];sine=sample_rate=48000[out1]",
            ])
            .args(ladder.output_args(&preset.args, "out.d"))
            .status()
            .expect("ffmpeg (scripts/setup.sh installs it)");
        assert!(ok.success());
        ladder
    }

    /// Check the folder `dir/out.d` as the dispatcher would.
    fn checked(dir: &Path, ladder: &Ladder, duration: f64) -> Result<Checked, String> {
        let root = dir.join("out.d");
        let manifest = crate::ladder::Manifest::of_folder(&root, true).expect("files");
        let files: Vec<FileEntry> = manifest
            .0
            .into_iter()
            .map(|(path, size, sha256)| FileEntry { path, size, sha256 })
            .collect();
        let fd = rustix::fs::open(&root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .expect("open");
        let want = Check {
            video: Some("h264".into()),
            audio: Some("aac".into()),
            pix_fmt: Some("yuv420p".into()),
            ..Check::default()
        };
        check(
            &Folder {
                fd: &fd,
                files: &files,
            },
            ladder,
            &want,
            Some(duration),
        )
    }

    #[test]
    fn a_real_ladder_passes_and_each_lie_or_gap_in_it_fails() {
        let t = tempfile::tempdir().expect("tempdir");
        let ladder = made(t.path());
        let ok = checked(t.path(), &ladder, 2.0).expect("a sound ladder");
        let sizes: Vec<(u32, u32)> = ok.renditions.iter().map(|r| (r.width, r.height)).collect();
        assert_eq!(sizes, [(320, 240), (192, 144)]);
        assert!(ok.renditions.iter().all(|r| (r.duration - 2.0).abs() < 0.1));
        assert!(
            ok.renditions[0].codecs.starts_with("avc1.")
                && ok.renditions[0].codecs.ends_with(",mp4a.40.2")
        );
        let master = t.path().join("out.d").join(ladder::MASTER);
        let text = std::fs::read_to_string(&master).expect("master");
        assert!(
            text.contains("AVERAGE-BANDWIDTH="),
            "measured and written: {text}"
        );

        let e = checked(t.path(), &ladder, 5.0).expect_err("too short");
        assert!(e.contains("the input lasts 5.00 s"), "{e}");

        let lied = text.replacen("RESOLUTION=320x240", "RESOLUTION=1920x1080", 1);
        std::fs::write(&master, &lied).expect("w");
        let e = checked(t.path(), &ladder, 2.0).expect_err("a false resolution");
        assert!(e.contains("RESOLUTION=1920x1080"), "{e}");

        let codecs = text
            .split("CODECS=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("codecs");
        let lied = text.replacen(codecs, "avc1.42e01e,mp4a.40.2", 1);
        std::fs::write(&master, &lied).expect("w");
        let e = checked(t.path(), &ladder, 2.0).expect_err("false codecs");
        assert!(e.contains("CODECS=\"avc1.42e01e,mp4a.40.2\""), "{e}");
        std::fs::write(&master, &text).expect("w");

        std::fs::remove_file(t.path().join("out.d/144p/seg_00001.m4s")).expect("rm");
        let e = checked(t.path(), &ladder, 2.0).expect_err("a segment gone");
        assert!(
            e.contains("144p/seg_00001.m4s is named but not in the folder"),
            "{e}"
        );

        let mut taller = ladder.clone();
        taller.source = Some(ladder::Source {
            height: 480,
            audio: true,
        });
        taller.renditions.insert(
            0,
            ladder::Rendition {
                height: 480,
                bitrate: "1M".into(),
                codec: "libx264".into(),
            },
        );
        let e = checked(t.path(), &taller, 2.0).expect_err("a rendition missing");
        assert!(e.contains("lists 2 renditions, the ladder makes 3"), "{e}");
    }

    #[test]
    fn a_short_last_segment_counts_with_the_one_before() {
        let (peak, avg) = rates(&[(1_000_000, 4.0), (500_000, 4.0), (400_000, 0.5)], 4);
        assert_eq!(peak, 2_000_000);
        assert_eq!(avg, (1_900_000.0f64 * 8.0 / 8.5).ceil() as u64);
    }

    #[test]
    fn playlist_uris_stay_in_the_folder() {
        assert_eq!(
            local_path(Path::new("720p"), "seg_00001.m4s").expect("plain"),
            Path::new("720p/seg_00001.m4s")
        );
        for bad in [
            "../x.m4s",
            "/etc/passwd",
            "http://x/y.m4s",
            "a/../../b",
            "",
            "a?b",
        ] {
            assert!(local_path(Path::new(""), bad).is_err(), "{bad}");
        }
    }
}
