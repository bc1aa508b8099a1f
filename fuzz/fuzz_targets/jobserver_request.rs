//! The job the client sends the job server (`exec::jobserver::encode`), read back the way the
//! server's shell reads it (`IFS=' ' read -r verb nonce mode in_ext out_name token size nargs`,
//! then `IFS= read -r` once per argument; dash drops NUL bytes). Whatever the names and the
//! arguments hold, a request that is sent is read as exactly that request: no argument can end
//! early, add an argument, or spill into the header or the input bytes after it.
#![no_main]

use arbitrary::Arbitrary;
use isc_transcode::fuzzing::{jobserver_mode, jobserver_request};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Job {
    nonce: u64,
    mode: u8,
    in_ext: String,
    out_name: String,
    token: String,
    args: Vec<String>,
    size: u64,
}

/// One line as dash's `read -r` gives it, and the rest of the stream.
fn read_line(bytes: &[u8]) -> (String, &[u8]) {
    let (line, rest) = match bytes.iter().position(|b| *b == b'\n') {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &bytes[bytes.len()..]),
    };
    let line: Vec<u8> = line.iter().copied().filter(|b| *b != 0).collect();
    (String::from_utf8(line).expect("the request is text"), rest)
}

/// Field splitting with `IFS=' '` into `n` variables, the last taking the rest of the line.
fn split(line: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line.trim_matches(' ');
    while out.len() + 1 < n {
        match rest.split_once(' ') {
            Some((word, more)) => {
                out.push(word.to_string());
                rest = more.trim_start_matches(' ');
            }
            None => {
                out.push(rest.to_string());
                rest = "";
            }
        }
    }
    out.push(rest.to_string());
    out
}

fuzz_target!(|job: Job| {
    let nonce = format!("{:x}", job.nonce);
    let Ok(bytes) = jobserver_request(
        &nonce,
        job.mode,
        &job.in_ext,
        &job.out_name,
        &job.token,
        job.args.clone(),
        job.size,
    ) else {
        return;
    };
    let (header, mut rest) = read_line(&bytes);
    let fields = split(&header, 8);
    let expect = [
        "job",
        &nonce,
        jobserver_mode(job.mode),
        &job.in_ext,
        &job.out_name,
        &job.token,
        &job.size.to_string(),
        &job.args.len().to_string(),
    ];
    assert_eq!(fields, expect, "header {header:?}");
    for (i, want) in job.args.iter().enumerate() {
        assert!(!rest.is_empty(), "argument {i} is missing");
        let (line, more) = read_line(rest);
        assert_eq!(&line, want, "argument {i} reads differently");
        rest = more;
    }
    assert!(
        rest.is_empty(),
        "{} bytes after the last argument",
        rest.len()
    );
});
