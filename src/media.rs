//! Container layout: just enough of a file's structure to choose a transfer and to check an
//! output's shape.
//!
//! ffmpeg can read most formats from a pipe, but not an MP4 whose `moov` box (the index) sits after
//! `mdat` (the media). That layout is ffmpeg's own default and what most cameras write, and read
//! from a pipe ffmpeg prints "partial file" and still exits 0 with an almost empty output. So
//! before a job starts we look at the top-level boxes: they are length-prefixed, so finding the
//! order of `moov` and `mdat` means reading a few headers and seeking past the payloads, never
//! the media itself.
//!
//! The same walk checks MP4 outputs: the boxes must tile the file exactly (a truncated or padded
//! stream does not) and `moov` must precede `mdat` (faststart). Other outputs get a signature
//! check, so that garbage from a container is never mistaken for a result.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// What the first bytes of a file say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// ISO base media (MP4, MOV, M4A, 3GP) with the index before the media: streams from a pipe.
    Mp4Faststart,
    /// ISO base media with the index after the media, or no index found: needs a seekable file.
    Mp4IndexLast,
    /// Matroska or WebM: designed to be streamed.
    Matroska,
    /// Anything else: a seekable file is the safe choice.
    Other,
}

impl Layout {
    /// Whether ffmpeg can read this layout from a non-seekable pipe without losing anything.
    pub fn streams_from_pipe(self) -> bool {
        matches!(self, Layout::Mp4Faststart | Layout::Matroska)
    }
}

/// A top-level box: its four-character type, offset and total size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxHeader {
    pub kind: [u8; 4],
    pub offset: u64,
    pub size: u64,
}

impl BoxHeader {
    pub fn kind_str(&self) -> String {
        String::from_utf8_lossy(&self.kind).into_owned()
    }
}

/// How a top-level box walk ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Walk {
    /// The boxes tile the file exactly.
    Complete(Vec<BoxHeader>),
    /// A box claims to extend past the end, or a header is cut short.
    Truncated(Vec<BoxHeader>),
    /// Not an ISO base media file at all.
    NotIsoBmff,
}

const MAX_BOXES: usize = 10_000;

/// Walk the top-level boxes of an ISO base media file.
pub fn walk_boxes<R: Read + Seek>(mut r: R) -> io::Result<Walk> {
    let len = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let mut boxes = Vec::new();
    let mut offset = 0u64;
    while offset < len {
        if boxes.len() >= MAX_BOXES {
            return Ok(Walk::NotIsoBmff);
        }
        r.seek(SeekFrom::Start(offset))?;
        let mut head = [0u8; 8];
        if len - offset < 8 {
            return Ok(if boxes.is_empty() {
                Walk::NotIsoBmff
            } else {
                Walk::Truncated(boxes)
            });
        }
        r.read_exact(&mut head)?;
        let kind = [head[4], head[5], head[6], head[7]];
        if !kind.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            return Ok(if boxes.is_empty() {
                Walk::NotIsoBmff
            } else {
                Walk::Truncated(boxes)
            });
        }
        let mut size = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        let mut header_len = 8;
        if size == 1 {
            let mut large = [0u8; 8];
            if len - offset < 16 {
                return Ok(if boxes.is_empty() {
                    Walk::NotIsoBmff
                } else {
                    Walk::Truncated(boxes)
                });
            }
            r.read_exact(&mut large)?;
            size = u64::from_be_bytes(large);
            header_len = 16;
        } else if size == 0 {
            size = len - offset;
        }
        if boxes.is_empty()
            && !matches!(
                &kind,
                b"ftyp" | b"styp" | b"moov" | b"free" | b"skip" | b"wide" | b"mdat"
            )
        {
            return Ok(Walk::NotIsoBmff);
        }
        if size < header_len {
            return Ok(if boxes.is_empty() {
                Walk::NotIsoBmff
            } else {
                Walk::Truncated(boxes)
            });
        }
        let end = offset.saturating_add(size);
        boxes.push(BoxHeader { kind, offset, size });
        if end > len {
            return Ok(Walk::Truncated(boxes));
        }
        offset = end;
    }
    if boxes.is_empty() {
        return Ok(Walk::NotIsoBmff);
    }
    Ok(Walk::Complete(boxes))
}

fn position(boxes: &[BoxHeader], kind: &[u8; 4]) -> Option<usize> {
    boxes.iter().position(|b| &b.kind == kind)
}

/// Classify a file by its first bytes and, for MP4, by its top-level boxes.
pub fn sniff(path: &Path) -> io::Result<Layout> {
    let mut f = crate::fsopen::open_regular(path)?;
    let mut head = [0u8; 12];
    let n = read_up_to(&mut f, &mut head)?;
    if n >= 4 && head[..4] == [0x1A, 0x45, 0xDF, 0xA3] {
        return Ok(Layout::Matroska);
    }
    if n < 8 {
        return Ok(Layout::Other);
    }
    Ok(match walk_boxes(&mut f)? {
        Walk::NotIsoBmff => Layout::Other,
        Walk::Complete(b) | Walk::Truncated(b) => {
            match (position(&b, b"moov"), position(&b, b"mdat")) {
                (Some(m), Some(d)) if m < d => Layout::Mp4Faststart,
                (Some(_), None) => Layout::Mp4Faststart,
                _ => Layout::Mp4IndexLast,
            }
        }
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Check the shape of a finished output file, open at offset 0, for a given muxer. Returns a
/// reason on failure.
pub fn check_output_shape(f: &mut File, format: &str, mp4_family: bool) -> Result<(), String> {
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot stat output: {e}"))?;
    if !meta.file_type().is_file() {
        return Err("output is not a regular file".into());
    }
    if meta.len() == 0 {
        return Err("output is empty".into());
    }
    if mp4_family {
        let walk = walk_boxes(f).map_err(|e| format!("cannot read output: {e}"))?;
        return match walk {
            Walk::NotIsoBmff => Err("output is not an MP4 file".into()),
            Walk::Truncated(b) => Err(format!(
                "output MP4 is truncated: box `{}` at offset {} runs past the end",
                b.last().map(BoxHeader::kind_str).unwrap_or_default(),
                b.last().map(|b| b.offset).unwrap_or(0)
            )),
            Walk::Complete(b) => match (position(&b, b"moov"), position(&b, b"mdat")) {
                (None, _) => Err("output MP4 has no moov box".into()),
                (Some(m), Some(d)) if d < m => {
                    Err("output MP4 has moov after mdat (not faststart)".into())
                }
                _ => Ok(()),
            },
        };
    }
    let mut head = [0u8; 12];
    let n = read_up_to(f, &mut head).map_err(|e| format!("cannot read output: {e}"))?;
    let head = &head[..n];
    let ok = match format {
        "webm" | "matroska" => head.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]),
        "image2" | "mjpeg" | "singlejpeg" => head.starts_with(&[0xFF, 0xD8, 0xFF]),
        "mp3" => {
            head.starts_with(b"ID3")
                || (head.len() >= 2 && head[0] == 0xFF && head[1] & 0xE0 == 0xE0)
        }
        "ogg" | "opus" => head.starts_with(b"OggS"),
        "flac" => head.starts_with(b"fLaC"),
        "wav" => head.starts_with(b"RIFF") && head.get(8..12) == Some(b"WAVE"),
        "mpegts" => head.first() == Some(&0x47),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("output does not start like a {format} file"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn mp4(boxes: &[(&[u8; 4], usize)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (kind, payload) in boxes {
            v.extend_from_slice(&((payload + 8) as u32).to_be_bytes());
            v.extend_from_slice(*kind);
            v.extend(std::iter::repeat_n(0u8, *payload));
        }
        v
    }

    #[test]
    fn walk_finds_order_and_tiling() {
        let data = mp4(&[(b"ftyp", 16), (b"free", 0), (b"mdat", 1000), (b"moov", 50)]);
        match walk_boxes(Cursor::new(&data)).expect("walk") {
            Walk::Complete(b) => {
                let kinds: Vec<_> = b.iter().map(BoxHeader::kind_str).collect();
                assert_eq!(kinds, ["ftyp", "free", "mdat", "moov"]);
                assert_eq!(b[3].offset, 24 + 8 + 1008);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn truncated_file_is_detected() {
        let mut data = mp4(&[(b"ftyp", 16), (b"moov", 50), (b"mdat", 1000)]);
        data.truncate(data.len() - 10);
        assert!(matches!(
            walk_boxes(Cursor::new(&data)).expect("walk"),
            Walk::Truncated(_)
        ));
    }

    #[test]
    fn random_bytes_are_not_mp4() {
        let data: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(
            walk_boxes(Cursor::new(&data)).expect("walk"),
            Walk::NotIsoBmff
        );
    }

    #[test]
    fn largesize_box_is_followed() {
        let mut data = mp4(&[(b"ftyp", 16)]);
        data.extend_from_slice(&1u32.to_be_bytes());
        data.extend_from_slice(b"mdat");
        data.extend_from_slice(&(16u64 + 100).to_be_bytes());
        data.extend(std::iter::repeat_n(0u8, 100));
        data.extend(mp4(&[(b"moov", 10)]));
        match walk_boxes(Cursor::new(&data)).expect("walk") {
            Walk::Complete(b) => assert_eq!(b.len(), 3),
            other => panic!("unexpected {other:?}"),
        }
    }

    // Regression (fuzz target mp4_walk): a file of one cut-short 64-bit box header was
    // "truncated" with no box at all, and an output check named box `` at offset 0.
    #[test]
    fn a_lone_cut_short_largesize_header_is_not_mp4() {
        let mut data = 1u32.to_be_bytes().to_vec();
        data.extend_from_slice(b"skip");
        assert_eq!(
            walk_boxes(Cursor::new(&data)).expect("walk"),
            Walk::NotIsoBmff
        );
        data.extend_from_slice(&[0, 0, 0]);
        assert_eq!(
            walk_boxes(Cursor::new(&data)).expect("walk"),
            Walk::NotIsoBmff
        );
        let mut after_ftyp = mp4(&[(b"ftyp", 16)]);
        after_ftyp.extend_from_slice(&data);
        match walk_boxes(Cursor::new(&after_ftyp)).expect("walk") {
            Walk::Truncated(b) => assert_eq!(b.len(), 1),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn sniff_tells_index_position() {
        let dir = tempfile::tempdir().expect("tempdir");
        let last = dir.path().join("last.mp4");
        std::fs::write(&last, mp4(&[(b"ftyp", 16), (b"mdat", 100), (b"moov", 20)])).expect("w");
        let first = dir.path().join("first.mp4");
        std::fs::write(&first, mp4(&[(b"ftyp", 16), (b"moov", 20), (b"mdat", 100)])).expect("w");
        let mkv = dir.path().join("a.mkv");
        std::fs::write(&mkv, [0x1A, 0x45, 0xDF, 0xA3, 0, 0, 0, 0]).expect("w");
        let text = dir.path().join("t.mp4");
        std::fs::write(&text, "hello, this is not a video at all").expect("w");
        assert_eq!(sniff(&last).expect("sniff"), Layout::Mp4IndexLast);
        assert_eq!(sniff(&first).expect("sniff"), Layout::Mp4Faststart);
        assert_eq!(sniff(&mkv).expect("sniff"), Layout::Matroska);
        assert_eq!(sniff(&text).expect("sniff"), Layout::Other);
        assert!(!Layout::Mp4IndexLast.streams_from_pipe());
        assert!(Layout::Mp4Faststart.streams_from_pipe());
    }

    fn shape(path: &Path, format: &str, mp4_family: bool) -> Result<(), String> {
        check_output_shape(&mut File::open(path).expect("open"), format, mp4_family)
    }

    #[test]
    fn output_shape_rejects_index_last_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let last = dir.path().join("last.mp4");
        std::fs::write(&last, mp4(&[(b"ftyp", 16), (b"mdat", 100), (b"moov", 20)])).expect("w");
        let err = shape(&last, "mp4", true).expect_err("index last");
        assert!(err.contains("moov after mdat"), "{err}");
        let good = dir.path().join("good.mp4");
        std::fs::write(&good, mp4(&[(b"ftyp", 16), (b"moov", 20), (b"mdat", 100)])).expect("w");
        shape(&good, "mp4", true).expect("good");
        let junk = dir.path().join("junk.webm");
        std::fs::write(&junk, b"garbage garbage").expect("w");
        assert!(shape(&junk, "webm", false).is_err());
        let empty = dir.path().join("empty.mp4");
        std::fs::write(&empty, b"").expect("w");
        assert_eq!(shape(&empty, "mp4", true), Err("output is empty".into()));
    }
}
