//! Reading an MP4 output back on this machine, from the bytes that landed here.
//!
//! An output counts as done only once something other than the ffmpeg that wrote it has read it
//! back and found the streams the preset promises. ffprobe does that well, but every ffprobe run
//! starts a process that loads Debian's 215 ffmpeg libraries: about 90 ms of CPU before it reads
//! a byte, as much as the whole remux of a small clip. For the MP4 family (every preset but
//! `vp9`, `mp3` and `thumbnail`) the index (`moov`) says everything the checks need, so this
//! module decodes it with the `mp4-atom` crate, in microseconds, from the file the caller is
//! about to rename into place.
//!
//! The read-back is independent of the writer and checks more than a stream list:
//! - the index decodes as ISO base media, with a known codec for every audio and video track;
//! - every track's sample tables agree (as many durations as sizes), every chunk offset points
//!   inside the file, and the samples fit in the file's `mdat` boxes;
//! - duration, codec, codec tag and frame size come from the index, as ffprobe reports them;
//! - the pixel format of H.264 in 8-bit 4:2:0 (what the `h264`, `720p` and `copy` presets
//!   usually produce) comes from the sequence parameter set stored in the index.
//!
//! What the index cannot tell without decoding more of the codec's own headers (any other pixel
//! format), or a codec this module does not name, is left unknown; [`verify::needs_ffprobe`]
//! then asks for ffprobe, in the worker or on this machine, so no check is ever skipped.

use crate::ffmpeg::{InputInfo, Probe, ProbeFormat, ProbeStream};
use crate::media::{self, Walk};
use crate::preset::Preset;
use crate::verify;
use h264_reader::nal::sps::{ChromaFormat, SeqParameterSet, VideoSignalType};
use mp4_atom::{Any, Codec, Colr, Decode, DecodeMaybe, Esds, Moov, StszSamples, Visual};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Largest `moov` read into memory here, whoever wrote it: ten hours of 60 fps video with its
/// audio index in about 30 MB, so 64 MiB takes every real file, and a bigger index (from a
/// worker that pads it to make this machine allocate) is left to ffprobe in the worker.
pub const MAX_MOOV: u64 = 64 << 20;

/// Why the file could not be read back here. None of these condemns the output: the caller falls
/// back to ffprobe, which has the last word.
#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    #[error("cannot read the output: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ISO base media file with a complete index")]
    NotMp4,
    #[error("its index is {0} bytes, more than this reader takes")]
    TooBig(u64),
    #[error("its index does not decode: {0}")]
    Decode(String),
    #[error("its index is inconsistent: {0}")]
    Inconsistent(String),
}

/// Read the MP4 at `path` back and describe it the way ffprobe's `-show_format -show_streams`
/// does, as far as the index tells. `pix_fmt` is stated only where [`pix_fmt`] can settle it; a
/// codec this reader does not know leaves `codec_name` empty.
pub fn read_mp4(path: &Path) -> Result<Probe, ReadbackError> {
    read_mp4_file(&File::open(path)?)
}

/// [`read_mp4`] of a file already open: a mounted job's output is opened without following
/// links ([`crate::exec`]), and read back from that descriptor.
pub fn read_mp4_file(file: &File) -> Result<Probe, ReadbackError> {
    let index = load_index_from(file)?;
    describe(&index.moov, index.file_len, index.mdat_bytes)
}

/// An MP4's decoded index and the facts about the file it is checked against.
struct Index {
    moov: Moov,
    /// The `moov` box's size in the file.
    moov_bytes: u64,
    file_len: u64,
    /// The bytes of the file's `mdat` boxes.
    mdat_bytes: u64,
}

/// The one `moov` of the MP4 open as `file`, decoded.
fn load_index_from(mut file: &File) -> Result<Index, ReadbackError> {
    let len = file.metadata()?.len();
    index_of(&mut file, len)
}

/// The one `moov` of the `len` bytes of MP4 in `file`, decoded.
fn index_of<R: Read + Seek>(mut file: R, len: u64) -> Result<Index, ReadbackError> {
    let boxes = match media::walk_boxes(&mut file)? {
        Walk::Complete(boxes) => boxes,
        Walk::Truncated(_) | Walk::NotIsoBmff => return Err(ReadbackError::NotMp4),
    };
    let mut moovs = boxes.iter().filter(|b| &b.kind == b"moov");
    let (Some(moov), None) = (moovs.next(), moovs.next()) else {
        return Err(ReadbackError::NotMp4);
    };
    if moov.size > MAX_MOOV {
        return Err(ReadbackError::TooBig(moov.size));
    }
    let mdat_bytes: u64 = boxes
        .iter()
        .filter(|b| &b.kind == b"mdat")
        .map(|b| b.size)
        .sum();
    let mut bytes = vec![0u8; moov.size as usize];
    file.seek(SeekFrom::Start(moov.offset))?;
    file.read_exact(&mut bytes)?;
    let moov_bytes = moov.size;
    skip_unbounded(&mut bytes);
    let moov =
        Moov::decode(&mut bytes.as_slice()).map_err(|e| ReadbackError::Decode(e.to_string()))?;
    Ok(Index {
        moov,
        moov_bytes,
        file_len: len,
        mdat_bytes,
    })
}

/// Boxes whose decoding in `mp4-atom` 0.17 is not bounded by their size: an `sgpd` (sample
/// group description) of version 0 and an unknown grouping type has entries of no bytes each,
/// so one of 2.5 KB that claims 4 billion entries took all the memory there was (found by the
/// fuzz target `mp4_readback`). The read-back needs none of them.
const UNBOUNDED_BOXES: &[&[u8; 4]] = &[b"sgpd"];

/// Turn every box of [`UNBOUNDED_BOXES`] in the index's bytes into a `free` box, which the
/// decoder skips whatever it holds. Any four bytes of such a type after a size that fits count as
/// a box, wherever they sit: these bytes are only read, and a rename that hits something else
/// at worst leaves a fact unknown, for ffprobe to settle.
fn skip_unbounded(bytes: &mut [u8]) {
    for at in 4..bytes.len().saturating_sub(3) {
        let kind = &bytes[at..at + 4];
        if !UNBOUNDED_BOXES.iter().any(|k| &k[..] == kind) {
            continue;
        }
        let size = u32::from_be_bytes([bytes[at - 4], bytes[at - 3], bytes[at - 2], bytes[at - 1]]);
        if size >= 8 && (size as usize) <= bytes.len() - (at - 4) {
            bytes[at..at + 4].copy_from_slice(b"free");
        }
    }
}

/// Room enough for the index of an MP4 that ffmpeg makes by copying the samples of the MP4 at
/// `input` ([`Preset::ffmpeg_args_reserving`]), or `None` when `input` is no complete MP4, or
/// when the room would be more than 1 % of the file: the unused part stays in the output as
/// padding, and the second pass is the better price for a file that small for its samples.
///
/// An upper bound, not an estimate: the output lists at most the input's samples, so its
/// index is the input's plus, for every sample (or chunk, for tracks of identical samples), a
/// chunk of its own with a 12-byte `stsc` entry and an 8-byte `co64` offset, which is more
/// chunking than ffmpeg's muxer ever does, plus 64 KiB for the headers ffmpeg writes. For the
/// 1.72 GB benchmark file (13,850 frames, a 63 KB index) that is 0.4 MB: 0.02 % of the file.
pub fn index_reserve(input: &Path) -> Option<u64> {
    let mut file = File::open(input).ok()?;
    let len = file.metadata().ok()?.len();
    reserve_for(&mut file, len)
}

fn reserve_for<R: Read + Seek>(file: R, len: u64) -> Option<u64> {
    let index = index_of(file, len).ok()?;
    let per_sample: u64 = index
        .moov
        .trak
        .iter()
        .map(|trak| {
            let stbl = &trak.mdia.minf.stbl;
            let samples = match &stbl.stsz.samples {
                StszSamples::Identical { .. } => match (&stbl.stco, &stbl.co64) {
                    (Some(stco), _) => stco.entries.len() as u64,
                    (None, Some(co64)) => co64.entries.len() as u64,
                    (None, None) => 0,
                },
                StszSamples::Different { sizes } => sizes.len() as u64,
            };
            samples * 20
        })
        .sum();
    let reserve = index.moov_bytes + per_sample + (64 << 10);
    (reserve <= index.file_len / 100).then_some(reserve)
}

/// [`read_mp4`] and [`index_reserve`] on a file's bytes in memory, for the fuzz targets in
/// `fuzz/`: the same code as on a file, without a file per run.
#[doc(hidden)]
pub fn read_mp4_bytes(bytes: &[u8]) -> (Result<Probe, ReadbackError>, Option<u64>) {
    let len = bytes.len() as u64;
    let probe = index_of(std::io::Cursor::new(bytes), len)
        .and_then(|index| describe(&index.moov, index.file_len, index.mdat_bytes));
    (probe, reserve_for(std::io::Cursor::new(bytes), len))
}

/// What the read-back of an output settled.
#[derive(Debug)]
pub enum Readback {
    /// The index says everything the preset's check needs: no ffprobe is needed.
    Settled(Probe),
    /// The output is broken: its index contradicts the file.
    Broken(String),
    /// Ask ffprobe, for this reason.
    AskFfprobe(String),
}

/// Read back the output in `file`, already open, as far as the preset's check needs.
pub fn for_check_file(preset: &Preset, input: &InputInfo, file: &File) -> Readback {
    if !preset.is_mp4_family() {
        return Readback::AskFfprobe(format!("{} is not an MP4-family output", preset.format));
    }
    match read_mp4_file(file) {
        Ok(probe) => match verify::needs_ffprobe(&preset.check, input, &probe) {
            None => Readback::Settled(probe),
            Some(what) => Readback::AskFfprobe(format!("the index does not state {what}")),
        },
        Err(ReadbackError::Inconsistent(why)) => Readback::Broken(why),
        Err(e) => Readback::AskFfprobe(e.to_string()),
    }
}

fn describe(moov: &Moov, file_len: u64, mdat_bytes: u64) -> Result<Probe, ReadbackError> {
    let mut streams = Vec::new();
    let mut sample_bytes = 0u64;
    for (index, trak) in moov.trak.iter().enumerate() {
        let stbl = &trak.mdia.minf.stbl;
        let (count, bytes) = match &stbl.stsz.samples {
            StszSamples::Identical { count, size } => {
                (u64::from(*count), u64::from(*count) * u64::from(*size))
            }
            StszSamples::Different { sizes } => (
                sizes.len() as u64,
                sizes.iter().map(|s| u64::from(*s)).sum(),
            ),
        };
        let timed: u64 = stbl
            .stts
            .entries
            .iter()
            .map(|e| u64::from(e.sample_count))
            .sum();
        if timed != count {
            return Err(ReadbackError::Inconsistent(format!(
                "track {index} has {count} samples but {timed} durations"
            )));
        }
        let offsets: Vec<u64> = match (&stbl.stco, &stbl.co64) {
            (Some(stco), _) => stco.entries.iter().map(|o| u64::from(*o)).collect(),
            (None, Some(co64)) => co64.entries.clone(),
            (None, None) => Vec::new(),
        };
        if count > 0 && offsets.is_empty() {
            return Err(ReadbackError::Inconsistent(format!(
                "track {index} has samples but no chunk offsets"
            )));
        }
        if let Some(bad) = offsets.iter().find(|o| **o >= file_len) {
            return Err(ReadbackError::Inconsistent(format!(
                "track {index} points at byte {bad} of a {file_len}-byte file"
            )));
        }
        sample_bytes = sample_bytes.saturating_add(bytes);

        let mdhd = &trak.mdia.mdhd;
        let seconds =
            (mdhd.timescale > 0).then(|| mdhd.duration as f64 / f64::from(mdhd.timescale));
        let mut stream = ProbeStream {
            codec_type: codec_type(&trak.mdia.hdlr.handler.to_string()).to_string(),
            duration: seconds.map(|s| format!("{s:.6}")),
            ..Default::default()
        };
        if let Some(codec) = stbl.stsd.codecs.first() {
            let (name, tag, visual) = identify(codec);
            stream.codec_name = name.unwrap_or_default();
            stream.codec_tag_string = tag;
            if let Some(v) = visual {
                stream.width = Some(u32::from(v.width));
                stream.height = Some(u32::from(v.height));
            }
            stream.pix_fmt = pix_fmt(codec);
        }
        streams.push(stream);
    }
    if sample_bytes > mdat_bytes {
        return Err(ReadbackError::Inconsistent(format!(
            "the index lists {sample_bytes} bytes of samples, the media boxes hold {mdat_bytes}"
        )));
    }
    let mvhd = &moov.mvhd;
    let duration = (mvhd.timescale > 0 && mvhd.duration > 0)
        .then(|| format!("{:.6}", mvhd.duration as f64 / f64::from(mvhd.timescale)));
    Ok(Probe {
        streams,
        format: Some(ProbeFormat {
            format_name: "mov,mp4,m4a,3gp,3g2,mj2".to_string(),
            duration,
            size: Some(file_len.to_string()),
        }),
    })
}

/// ffprobe's `codec_type` for a track handler.
fn codec_type(handler: &str) -> &'static str {
    match handler {
        "vide" => "video",
        "soun" => "audio",
        "text" | "sbtl" | "subt" | "clcp" => "subtitle",
        _ => "data",
    }
}

/// ffprobe's codec name (when this reader knows it), the sample entry's four-character code,
/// and the visual sample entry (for the frame size).
fn identify(codec: &Codec) -> (Option<String>, String, Option<Visual>) {
    let named = |name: &str, tag: &str, visual: Option<&Visual>| {
        (Some(name.to_string()), tag.to_string(), visual.cloned())
    };
    match codec {
        Codec::Avc1(c) => named("h264", "avc1", Some(&c.visual)),
        Codec::Avc3(c) => named("h264", "avc3", Some(&c.visual)),
        Codec::Hvc1(c) => named("hevc", "hvc1", Some(&c.visual)),
        Codec::Hev1(c) => named("hevc", "hev1", Some(&c.visual)),
        Codec::Vp08(c) => named("vp8", "vp08", Some(&c.visual)),
        Codec::Vp09(c) => named("vp9", "vp09", Some(&c.visual)),
        Codec::Av01(c) => named("av1", "av01", Some(&c.visual)),
        Codec::Jpeg(c) => named("mjpeg", "jpeg", Some(&c.visual)),
        Codec::Mp3(_) => named("mp3", ".mp3", None),
        Codec::Opus(_) => named("opus", "Opus", None),
        Codec::Flac(_) => named("flac", "fLaC", None),
        Codec::Ac3(_) => named("ac3", "ac-3", None),
        Codec::Eac3(_) => named("eac3", "ec-3", None),
        Codec::Tx3g(_) => named("mov_text", "tx3g", None),
        Codec::Mp4a(c) => (
            mpeg4_object(c.esds.es_desc.dec_config.object_type_indication, false),
            "mp4a".to_string(),
            None,
        ),
        Codec::Unknown(kind, _) if kind.to_string() == "alac" => named("alac", "alac", None),
        Codec::Unknown(kind, body) if kind.to_string() == "mp4v" => {
            let (name, visual) = mp4v(body);
            (name, "mp4v".to_string(), visual)
        }
        other => (None, fourcc(other), None),
    }
}

/// The pixel format ffmpeg decodes a track to, where the track's own headers settle it: H.264
/// in 8-bit 4:2:0, read from the sequence parameter set in `avcC` with the `h264-reader` crate.
/// `None` for anything else (other codecs, 4:2:2, 4:4:4, monochrome, more than 8 bits, RGB or
/// YCgCo matrices, disagreeing parameter sets), which leaves the question to ffprobe.
///
/// ffmpeg names 8-bit 4:2:0 `yuvj420p` when the range is full and `yuv420p` otherwise; the
/// range comes from the SPS's video signal type when it has one, else from the sample entry's
/// `colr` box, as the MP4 demuxer hands it to the decoder.
fn pix_fmt(codec: &Codec) -> Option<String> {
    let (avcc, colr) = match codec {
        Codec::Avc1(c) => (&c.avcc, c.colr.as_ref()),
        Codec::Avc3(c) => (&c.avcc, c.colr.as_ref()),
        _ => return None,
    };
    let mut formats = avcc.sequence_parameter_sets.iter().map(|nal| {
        let rbsp = h264_reader::rbsp::decode_nal(nal).ok()?;
        let sps = SeqParameterSet::from_bits(h264_reader::rbsp::BitReader::new(&rbsp[..])).ok()?;
        let chroma = &sps.chroma_info;
        if chroma.chroma_format != ChromaFormat::YUV420
            || chroma.separate_colour_plane_flag
            || chroma.bit_depth_luma_minus8 != 0
            || chroma.bit_depth_chroma_minus8 != 0
        {
            return None;
        }
        let signal = sps.vui_parameters.and_then(|v| v.video_signal_type);
        let matrix = match (&signal, colr) {
            (
                Some(VideoSignalType {
                    colour_description: Some(c),
                    ..
                }),
                _,
            ) => Some(u16::from(c.matrix_coefficients)),
            (
                _,
                Some(
                    Colr::Nclx {
                        matrix_coefficients,
                        ..
                    }
                    | Colr::Nclc {
                        matrix_coefficients,
                        ..
                    },
                ),
            ) => Some(*matrix_coefficients),
            _ => None,
        };
        // 0: RGB, 8: YCgCo; ffmpeg treats those apart.
        if matches!(matrix, Some(0 | 8)) {
            return None;
        }
        let full = match (&signal, colr) {
            (Some(signal), _) => signal.video_full_range_flag,
            (
                None,
                Some(Colr::Nclx {
                    full_range_flag, ..
                }),
            ) => *full_range_flag,
            (None, _) => false,
        };
        Some(if full { "yuvj420p" } else { "yuv420p" })
    });
    let first = formats.next()??;
    formats.all(|f| f == Some(first)).then(|| first.to_string())
}

/// An `mp4v` sample entry, which mp4-atom leaves undecoded: a visual sample entry, then boxes,
/// of which `esds` names the codec.
fn mp4v(body: &[u8]) -> (Option<String>, Option<Visual>) {
    let mut buf = body;
    let Ok(visual) = Visual::decode(&mut buf) else {
        return (None, None);
    };
    while let Ok(Some(atom)) = Any::decode_maybe(&mut buf) {
        if let Any::Esds(Esds { es_desc }) = atom {
            return (
                mpeg4_object(es_desc.dec_config.object_type_indication, true),
                Some(visual),
            );
        }
    }
    (None, Some(visual))
}

/// ffprobe's codec name for an MPEG-4 systems object type (ISO/IEC 14496-1, as registered at
/// mp4ra.org), for the types ffmpeg writes.
fn mpeg4_object(oti: u8, video: bool) -> Option<String> {
    let name = match (oti, video) {
        (0x40 | 0x66 | 0x67 | 0x68, false) => "aac",
        (0x69 | 0x6B, false) => "mp3",
        (0xA5, false) => "ac3",
        (0xA6, false) => "eac3",
        (0xAD, false) => "opus",
        (0xDD, false) => "vorbis",
        (0x20, true) => "mpeg4",
        (0x21, true) => "h264",
        (0x60..=0x65, true) => "mpeg2video",
        (0x6A, true) => "mpeg1video",
        (0x6C, true) => "mjpeg",
        _ => return None,
    };
    Some(name.to_string())
}

fn fourcc(codec: &Codec) -> String {
    use mp4_atom::Encode;
    // mp4-atom keeps a sample entry it does not know with its type, and refuses to encode it.
    if let Codec::Unknown(kind, _) = codec {
        return kind.to_string();
    }
    let mut bytes = Vec::new();
    match codec.encode(&mut bytes) {
        Ok(()) if bytes.len() >= 8 => String::from_utf8_lossy(&bytes[4..8]).into_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("samples")
            .join(name)
    }

    #[test]
    fn no_reserve_for_small_files_or_files_without_an_index() {
        // 64 KiB of room alone is more than 1 % of a sample clip.
        assert_eq!(index_reserve(&sample("faststart.mp4")), None);
        assert_eq!(index_reserve(&sample("two-audio.mkv")), None);
        assert_eq!(index_reserve(Path::new("/nonexistent.mp4")), None);
    }

    #[test]
    fn faststart_sample_reads_back_with_its_streams() {
        let p = read_mp4(&sample("faststart.mp4")).expect("read back");
        let video: Vec<_> = p.video().collect();
        let audio: Vec<_> = p.audio().collect();
        assert_eq!(video.len(), 1, "{p:?}");
        assert_eq!(video[0].codec_name, "h264");
        assert_eq!(video[0].codec_tag_string, "avc1");
        assert!(video[0].width.unwrap_or(0) > 0 && video[0].height.unwrap_or(0) > 0);
        assert_eq!(
            video[0].pix_fmt.as_deref(),
            Some("yuv420p"),
            "make-samples.sh encodes it 8-bit 4:2:0, limited range"
        );
        assert_eq!(audio.len(), 1);
        assert_eq!(audio[0].codec_name, "aac");
        let d = p.duration().expect("duration");
        assert!(d > 0.5, "duration {d}");
    }

    #[test]
    fn a_pixel_format_is_claimed_only_for_8_bit_420_h264() {
        // odd-size.mp4 is H.264 4:4:4 (make-samples.sh): ffprobe must answer for it.
        let p = read_mp4(&sample("odd-size.mp4")).expect("read back");
        let v = p.video().next().expect("video");
        assert_eq!(v.codec_name, "h264");
        assert_eq!(v.pix_fmt, None, "{v:?}");
        assert!(
            verify::needs_ffprobe(
                &crate::preset::Check {
                    video: Some("h264".into()),
                    pix_fmt: Some("yuv420p".into()),
                    ..Default::default()
                },
                &InputInfo {
                    video: vec!["h264".into()],
                    ..Default::default()
                },
                &p
            )
            .is_some()
        );
    }

    #[test]
    fn alac_and_tracks_of_unknown_entries_keep_their_type() {
        // mp4-atom leaves `alac` undecoded: named here, with the tag ffprobe reports.
        let p = read_mp4(&sample("tone-alac.m4a")).expect("read back");
        let a = p.audio().next().expect("audio");
        assert_eq!(
            (a.codec_name.as_str(), a.codec_tag_string.as_str()),
            ("alac", "alac")
        );
        // A timecode track (make-samples.sh writes one into timecode.mov): data, tagged tmcd.
        let p = read_mp4(&sample("timecode.mov")).expect("read back");
        let tmcd = p
            .streams
            .iter()
            .find(|s| s.codec_type == "data")
            .expect("data track");
        assert_eq!(tmcd.codec_tag_string, "tmcd");
    }

    #[test]
    fn moov_at_end_reads_back_too() {
        let p = read_mp4(&sample("moov-at-end.mp4")).expect("read back");
        assert!(p.video().count() == 1 && p.duration().is_some(), "{p:?}");
    }

    #[test]
    fn not_mp4_and_truncated_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.mp4");
        std::fs::write(&junk, b"this is not a movie").expect("write");
        assert!(matches!(read_mp4(&junk), Err(ReadbackError::NotMp4)));

        let whole = std::fs::read(sample("faststart.mp4")).expect("read");
        let cut = dir.path().join("cut.mp4");
        std::fs::write(&cut, &whole[..whole.len() / 2]).expect("write");
        assert!(read_mp4(&cut).is_err(), "a cut file must not read back");
    }

    // Regression (found writing the fuzz target mp4_readback): the tracks' sample bytes were
    // added without a bound, so tracks that together list 2^64 + 1 bytes of samples wrapped
    // around to 1 byte and passed as fitting in the file (and panicked in a debug build).
    #[test]
    fn sample_bytes_that_overflow_are_inconsistent() {
        use mp4_atom::SttsEntry;
        let whole = std::fs::read(sample("faststart.mp4")).expect("read");
        let index = index_of(std::io::Cursor::new(&whole), whole.len() as u64).expect("index");
        let mut moov = index.moov;
        assert!(moov.trak.len() >= 2, "faststart.mp4 has video and audio");
        for (trak, count, size) in [(0, u32::MAX, u32::MAX), (1, 4, 1 << 31)] {
            let stbl = &mut moov.trak[trak].mdia.minf.stbl;
            stbl.stsz.samples = StszSamples::Identical { count, size };
            stbl.stts.entries = vec![SttsEntry {
                sample_count: count,
                sample_delta: 1,
            }];
        }
        let err = describe(&moov, index.file_len, index.mdat_bytes).expect_err("cannot fit");
        assert!(
            matches!(&err, ReadbackError::Inconsistent(why) if why.contains("bytes of samples")),
            "{err}"
        );
    }

    // Regression (fuzz target mp4_readback): an `sgpd` box of version 0 and an unknown
    // grouping type claiming 2^32 - 1 entries, each of no bytes, made the decoder fill all the
    // memory there was; from an output or from any input of a stream copy.
    #[test]
    fn a_sample_group_box_of_endless_empty_entries_is_skipped() {
        let whole = std::fs::read(sample("faststart.mp4")).expect("read");
        let boxes = match media::walk_boxes(std::io::Cursor::new(&whole)).expect("walk") {
            Walk::Complete(b) => b,
            other => panic!("sample does not tile: {other:?}"),
        };
        let moov = boxes.iter().find(|b| &b.kind == b"moov").expect("moov");
        let (start, end) = (moov.offset as usize, (moov.offset + moov.size) as usize);
        let mut sgpd = 24u32.to_be_bytes().to_vec();
        sgpd.extend_from_slice(b"sgpd");
        sgpd.extend_from_slice(&[0, 0, 0, 0]);
        sgpd.extend_from_slice(b"zzzz");
        sgpd.extend_from_slice(&u32::MAX.to_be_bytes());
        sgpd.extend_from_slice(b"abcd");
        let mut file = whole[..end].to_vec();
        file.extend_from_slice(&sgpd);
        file.extend_from_slice(&whole[end..]);
        let grown = (moov.size as u32 + sgpd.len() as u32).to_be_bytes();
        file[start..start + 4].copy_from_slice(&grown);
        let probe = read_mp4_bytes(&file).0.expect("the index still reads back");
        assert_eq!(probe.video().count(), 1, "{probe:?}");
    }

    #[test]
    fn an_index_pointing_past_the_end_is_inconsistent() {
        // Keep the boxes tiling the file but drop most of mdat's payload: the index still lists
        // the samples, which no longer fit.
        let whole = std::fs::read(sample("faststart.mp4")).expect("read");
        let boxes = match media::walk_boxes(std::io::Cursor::new(&whole)).expect("walk") {
            Walk::Complete(b) => b,
            other => panic!("sample does not tile: {other:?}"),
        };
        let mdat = boxes.iter().find(|b| &b.kind == b"mdat").expect("mdat");
        assert_eq!(mdat.offset + mdat.size, whole.len() as u64, "mdat is last");
        let keep = 64usize;
        let mut shrunk = whole[..mdat.offset as usize + 8 + keep].to_vec();
        let new_size = (8 + keep) as u32;
        shrunk[mdat.offset as usize..mdat.offset as usize + 4]
            .copy_from_slice(&new_size.to_be_bytes());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shrunk.mp4");
        std::fs::write(&path, &shrunk).expect("write");
        let err = read_mp4(&path).expect_err("samples cannot fit");
        assert!(matches!(err, ReadbackError::Inconsistent(_)), "{err}");
    }
}
