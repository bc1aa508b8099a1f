//! Thumbnail sprites and their WebVTT track, for players that show a picture of the spot the
//! pointer hovers over on the timeline.
//!
//! ffmpeg makes the sheets in the ladder's run (`fps=1/N,scale,tile`, [`crate::preset::ladder`]):
//! `sprite_001.jpg`, `sprite_002.jpg` ..., each [`SPRITE_COLUMNS`] x [`SPRITE_ROWS`] tiles, one
//! tile every `sprite_seconds`, left to right, top to bottom. The track that says which tile
//! shows which span is written here, once the ladder is checked, into the job's folder: one cue
//! per tile, `sprite_001.jpg#xywh=X,Y,W,H` (the media fragment players take), up to the
//! video's duration. The tile's size is read from the first sheet's own JPEG header, since
//! ffmpeg rounds the height.

use super::check::Folder;
use super::unpack::FileEntry;
use crate::hash::Hasher;
use crate::preset::ladder::{SPRITE_COLUMNS, SPRITE_ROWS, THUMBNAILS};
use rustix::fs::{Mode, OFlags};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The name of sheet `n` (from 1).
fn sheet(n: usize) -> String {
    format!("sprite_{n:03}.jpg")
}

/// Width and height from a JPEG's start-of-frame header.
pub(crate) fn jpeg_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if !bytes.starts_with(&[0xff, 0xd8]) {
        return None;
    }
    let mut at = 2;
    while at + 4 <= bytes.len() {
        if bytes[at] != 0xff {
            return None;
        }
        let marker = bytes[at + 1];
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        // SOF0..SOF15, less DHT (c4), JPG (c8) and DAC (cc).
        if (0xc0..=0xcf).contains(&marker) && !matches!(marker, 0xc4 | 0xc8 | 0xcc) {
            let h = bytes.get(at + 5..at + 7)?;
            let w = bytes.get(at + 7..at + 9)?;
            return Some((
                u32::from(u16::from_be_bytes([w[0], w[1]])),
                u32::from(u16::from_be_bytes([h[0], h[1]])),
            ));
        }
        at += 2 + len;
    }
    None
}

/// `HH:MM:SS.mmm`.
fn clock(seconds: f64) -> String {
    let ms = (seconds.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The WebVTT track for `sheets` sheets of tiles `(w, h)`, one every `every` seconds of a video
/// of `duration` seconds.
pub(crate) fn track(sheets: usize, (w, h): (u32, u32), every: u32, duration: f64) -> String {
    let per_sheet = (SPRITE_COLUMNS * SPRITE_ROWS) as usize;
    let tiles = ((duration / f64::from(every)).ceil().max(1.0) as usize).min(sheets * per_sheet);
    let mut vtt = String::from("WEBVTT\n");
    for i in 0..tiles {
        let start = i as f64 * f64::from(every);
        let end = (start + f64::from(every)).min(duration.max(start));
        let in_sheet = (i % per_sheet) as u32;
        let (x, y) = (in_sheet % SPRITE_COLUMNS * w, in_sheet / SPRITE_COLUMNS * h);
        let _ = write!(
            vtt,
            "\n{} --> {}\n{}#xywh={x},{y},{w},{h}\n",
            clock(start),
            clock(end),
            sheet(i / per_sheet + 1)
        );
    }
    vtt
}

/// Check the sheets in `folder` and write their track there, for a video of `duration`
/// seconds with a tile every `every` seconds. Gives the track's file entry.
pub(crate) fn write_track(
    folder: &Folder<'_>,
    every: u32,
    duration: f64,
) -> Result<FileEntry, String> {
    let sheets = (1..)
        .take_while(|n| folder.files.iter().any(|f| f.path == Path::new(&sheet(*n))))
        .count();
    if sheets == 0 {
        return Err("the ladder makes thumbnail sprites, and there is none".into());
    }
    let first = folder.read(Path::new(&sheet(1)), 64 << 20)?;
    let (w, h) = jpeg_size(&first).ok_or_else(|| format!("{} is not a JPEG", sheet(1)))?;
    let tile = (w / SPRITE_COLUMNS, h / SPRITE_ROWS);
    if tile.0 == 0 || tile.1 == 0 {
        return Err(format!("{} is {w}x{h}, too small for its tiles", sheet(1)));
    }
    let vtt = track(sheets, tile, every, duration);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let write = || -> std::io::Result<()> {
        let fd = rustix::fs::openat(folder.fd, THUMBNAILS, flags, Mode::from_raw_mode(0o666))?;
        let mut file = std::fs::File::from(fd);
        std::io::Write::write_all(&mut file, vtt.as_bytes())?;
        file.sync_all()
    };
    write().map_err(|e| format!("cannot write {THUMBNAILS}: {e}"))?;
    let mut h = Hasher::new();
    h.update(vtt.as_bytes());
    Ok(FileEntry {
        path: PathBuf::from(THUMBNAILS),
        size: vtt.len() as u64,
        sha256: h.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cues_walk_the_tiles_sheet_by_sheet_and_stop_at_the_end() {
        let vtt = track(2, (160, 90), 5, 131.0);
        assert!(vtt.starts_with("WEBVTT\n"));
        let cues: Vec<&str> = vtt.lines().filter(|l| l.contains("#xywh=")).collect();
        assert_eq!(cues.len(), 27, "ceil(131 / 5)");
        assert_eq!(cues[0], "sprite_001.jpg#xywh=0,0,160,90");
        assert_eq!(cues[6], "sprite_001.jpg#xywh=160,90,160,90");
        assert_eq!(cues[24], "sprite_001.jpg#xywh=640,360,160,90");
        assert_eq!(cues[25], "sprite_002.jpg#xywh=0,0,160,90");
        assert!(vtt.contains("00:02:10.000 --> 00:02:11.000\nsprite_002.jpg#xywh=160,0,160,90"));
        assert_eq!(
            track(1, (160, 90), 5, 1000.0)
                .lines()
                .filter(|l| l.contains("#xywh="))
                .count(),
            25,
            "never past the tiles there are"
        );
    }

    #[test]
    fn a_jpeg_says_its_size() {
        let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0, 0, 4, 0, 0];
        jpeg.extend_from_slice(&[0xff, 0xc0, 0, 11, 8, 0x01, 0xc2, 0x03, 0x20, 3, 0, 0, 0]);
        assert_eq!(jpeg_size(&jpeg), Some((800, 450)));
        assert_eq!(jpeg_size(b"not a jpeg"), None);
        assert_eq!(jpeg_size(&[0xff, 0xd8, 0xff]), None);
    }
}
