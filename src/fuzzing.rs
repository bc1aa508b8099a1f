//! Entry points for the fuzz targets in `fuzz/` into code that is private to the crate.
//!
//! Everything here calls the code the tool runs, unchanged; it only makes it reachable from the
//! fuzz crate (and the integration tests), which link this library like any other user. The parsers that are public
//! already ([`crate::media::walk_boxes`], [`crate::ffmpeg::StderrParser`],
//! [`crate::preset::parse`], [`crate::cli::parse_size`], ...) are called directly.

use crate::exec::jobserver::{self, Mode, Request, Said};

/// The job server's script ([`jobserver::SERVER_SCRIPT`]), for the integration tests that run it
/// in a real worker and speak its protocol by hand.
pub const JOB_SERVER: &str = jobserver::SERVER_SCRIPT;

use std::sync::Arc;

/// What a mark of this job says ([`jobserver::read_mark`]): `send` with the announced byte
/// count, `end` with the exit code, or nothing.
pub fn jobserver_mark(key: &str, value: &str) -> Result<Option<(&'static str, i128)>, String> {
    Ok(jobserver::read_mark(key, value)?.map(|said| match said {
        Said::Send(n) => ("send", i128::from(n)),
        Said::End(code) => ("end", i128::from(code)),
    }))
}

/// The bytes the client sends the job server for one job ([`jobserver::encode`]). `mode` picks
/// pipe, spool or mount.
pub fn jobserver_request(
    nonce: &str,
    mode: u8,
    in_ext: &str,
    out_name: &str,
    token: &str,
    args: Vec<String>,
    size: u64,
) -> Result<Vec<u8>, String> {
    let preset = Arc::new(crate::preset::load("copy").map_err(|e| e.to_string())?);
    let req = Request {
        mode: pick(mode),
        in_ext,
        out_name,
        token,
        input: None,
        sink: None,
        mounted: None,
        args,
        preset: &preset,
        hash_input: false,
        job_id: 0,
    };
    jobserver::encode(nonce, &req, size)
}

/// The word the job server reads for `mode` ([`jobserver_request`]).
pub fn jobserver_mode(mode: u8) -> &'static str {
    pick(mode).as_str()
}

fn pick(mode: u8) -> Mode {
    match mode % 3 {
        0 => Mode::Pipe,
        1 => Mode::Spool,
        _ => Mode::Mount,
    }
}
