//! ffmpeg's stderr as the worker sends it (`ffmpeg::StderrParser`): the input dump, the
//! `-progress` blocks, error lines, the job server's `@isc:` marks and the probe JSON they carry.
//! Whatever the bytes, the parser does not panic, reads the same whatever the chunking of the
//! stream, keeps a bounded tail, and states only finite, non-negative durations and rates.
#![no_main]

use isc_transcode::ffmpeg::{Progress, StderrParser};
use isc_transcode::report;
use libfuzzer_sys::fuzz_target;

/// Longest line the parser keeps whole; longer ones are cut where the chunking falls.
const LINE_LIMIT: usize = 64 * 1024;

#[derive(Debug, PartialEq)]
struct Read {
    progress: Vec<Progress>,
    input: isc_transcode::ffmpeg::InputInfo,
    tail: Vec<String>,
    marks: Vec<(String, String)>,
    version: Option<String>,
    unfinished: Option<String>,
    refusal: Option<String>,
    probe: Option<Result<isc_transcode::ffmpeg::Probe, String>>,
}

fn read(bytes: &[u8], chunk: usize) -> Read {
    let mut p = StderrParser::new();
    let mut progress = Vec::new();
    for c in bytes.chunks(chunk) {
        progress.extend(p.feed(c).progress);
    }
    progress.extend(p.finish().progress);
    Read {
        progress,
        input: p.input.clone(),
        tail: p.tail(),
        marks: p.marks.clone(),
        version: p.ffmpeg_version.clone(),
        unfinished: p.unfinished().map(str::to_string),
        refusal: p.refusal().map(str::to_string),
        probe: p.probe(),
    }
}

fn finite(what: &str, v: Option<f64>) {
    if let Some(v) = v {
        assert!(v.is_finite() && v >= 0.0, "{what} {v}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, stream)) = data.split_first() else {
        return;
    };
    let whole = read(stream, stream.len().max(1));
    assert!(whole.tail.len() <= 12, "tail of {} lines", whole.tail.len());
    finite("input duration", whole.input.duration);
    for p in &whole.progress {
        finite("speed", p.speed);
        finite("fps", p.fps);
        let _ = report::progress_line(p, whole.input.duration);
    }
    if let Some(Ok(probe)) = &whole.probe {
        finite("probe duration", probe.duration());
    }
    let longest = stream
        .split(|b| *b == b'\n' || *b == b'\r')
        .map(<[u8]>::len)
        .max()
        .unwrap_or(0);
    if longest <= LINE_LIMIT {
        let chunked = read(stream, usize::from(k) % 97 + 1);
        assert_eq!(whole, chunked, "the chunking changed what was read");
    }
});
