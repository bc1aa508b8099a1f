//! The job server's marks as the client reads them from the worker's stderr:
//! `ffmpeg::StderrParser::for_job` takes `@isc:NONCE:key=value` lines apart (a mark without this
//! job's nonce is a violation, never a mark) and `exec::jobserver::read_mark` reads `send` and
//! `end`. Whatever the worker writes, reading does not panic, every mark the parser keeps came
//! from a line with this job's nonce, and a `send` or `end` moves the job on only with the number
//! written (a `send` never negative).
#![no_main]

use isc_transcode::ffmpeg::StderrParser;
use isc_transcode::fuzzing::jobserver_mark;
use libfuzzer_sys::fuzz_target;

const NONCE: &str = "0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    let mut p = StderrParser::for_job(NONCE);
    p.feed(data);
    p.finish();
    let text = String::from_utf8_lossy(data);
    for (key, value) in &p.marks {
        let line = format!("@isc:{NONCE}:{key}=");
        assert!(
            text.contains(&line),
            "{key}={value:?} kept, but no line carries {line:?}"
        );
        match jobserver_mark(key, value) {
            Ok(Some((kind, n))) => {
                assert_eq!(kind, key.as_str());
                let written: i128 = value
                    .trim()
                    .parse()
                    .expect("a mark read as a number holds one");
                assert_eq!(n, written, "{key}={value:?}");
                assert!(kind != "send" || n >= 0, "a negative send: {value:?}");
            }
            Ok(None) => assert!(key != "send" && key != "end", "{key}={value:?} ignored"),
            Err(e) => assert!(key == "send" || key == "end", "{key}: {e}"),
        }
    }
});
