//! The job server's marks as the client reads them from the worker's stderr
//! (`exec::jobserver::read_mark` over `ffmpeg::StderrParser::marks`): `@isc:send=NONCE N` and
//! `@isc:end=NONCE CODE`. Whatever the worker writes, reading does not panic, a mark without
//! this job's nonce never moves the job on or fails it, and a mark that does moves it only with
//! the number written.
#![no_main]

use isc_transcode::ffmpeg::StderrParser;
use isc_transcode::fuzzing::jobserver_mark;
use libfuzzer_sys::fuzz_target;

const NONCE: &str = "18c0ffee2";

fuzz_target!(|data: &[u8]| {
    let mut p = StderrParser::new();
    p.feed(data);
    p.finish();
    for (key, value) in &p.marks {
        let said = jobserver_mark(NONCE, key, value);
        let ours = value.split_once(' ').is_some_and(|(n, _)| n == NONCE);
        if !ours {
            assert!(
                matches!(said, Ok(None)),
                "{key}={value:?} is not this job's mark, yet read as {said:?}"
            );
            continue;
        }
        if let Ok(Some((kind, n))) = said {
            assert_eq!(kind, key.as_str());
            let written: i128 = value[NONCE.len() + 1..]
                .trim()
                .parse()
                .expect("a mark read as a number holds one");
            let expect = if kind == "send" {
                written.max(0)
            } else {
                written
            };
            assert_eq!(n, expect, "{key}={value:?}");
        }
    }
});
