//! The job server: one long-lived shell in each worker container that runs job after job.
//!
//! Starting a process in a container through the engine (an `exec`) costs about 60 ms and a good
//! deal of CPU in dockerd, containerd, its shim and runc, every time. A batch of small files
//! would pay that per file, and even one exec per worker delays its first job by about 50 ms. So
//! the job server, [`SERVER_SCRIPT`], is the worker container's main process ([`WORKER_MAIN`]),
//! started with the container, and every job travels over the container's attached stdin,
//! stdout and stderr:
//!
//! ```text
//! client -> server   job NONCE MODE IN_EXT OUT_NAME TOKEN SIZE NARGS\n
//!                    NARGS lines: ffmpeg's arguments, one per line
//!                    SIZE bytes: the input (pipe and spool modes)
//! server -> client   stderr: ffmpeg's messages and progress; @isc:NONCE:stage=... marks
//!                    stderr: @isc:NONCE:send=N once ffmpeg succeeded; stdout: the N output
//!                            bytes (in mount mode N is 0: the output lies in the mounted
//!                            folder, where the client reads it itself)
//! client -> server   done NONCE\n    the output is checked here: next job
//!                    probe NONCE\n   run ffprobe on the output; stderr: @isc:NONCE:probe:...
//! server -> client   stderr: @isc:NONCE:end=CODE  after a failure (the server then exits) or
//!                            after a probe
//! ```
//!
//! A ladder preset's output is a folder ([`crate::preset::ladder`]). Its job names an output
//! ending in `.tar` (`out.tar`): the server gives ffmpeg an empty folder beside it (`out.d`),
//! and once ffmpeg succeeded packs the folder into that one file (`tar -cf`), which then
//! travels like any output, framed by its announced size. This machine never trusts what it
//! holds: [`crate::ladder::unpack`] takes the archive apart, confined to the job's folder.
//!
//! Lengths, not delimiters, frame the binary parts: the server reads exactly SIZE input bytes
//! (`head -c`, which never reads ahead), and the client takes exactly N output bytes. stdout and
//! stderr reach the client as separate streams whose relative order the engine does not keep,
//! so a job is complete when both the announced size has arrived and the marks say so.
//!
//! Every message in either direction carries the job's nonce: 128 random bits from the
//! operating system, new for each job, which ffmpeg never sees (it is in no argument and no
//! environment variable). A mark without it, whatever ffmpeg or the input made ffmpeg print, is
//! refused and fails the job ([`crate::ffmpeg::StderrParser::violation`]); an answer without it
//! ends the server. What a worker sends is bounded: [`MAX_UNANNOUNCED`] output bytes before the
//! size is announced, and the parser's limits on everything it holds.
//!
//! The server stays in step whatever ffmpeg does: an ffmpeg that stops reading early (`-t`, a
//! thumbnail) has the rest of its input drained, and anything else going wrong (ffmpeg failing,
//! a short input, a broken stream) ends the server, and the dispatcher removes the worker. A
//! worker never serves a job after a failure.
//!
//! Every process the server starts costs about 5 ms in a container (twice what it costs on the
//! host), so the server starts as few as it can: its scratch folder is the container's own
//! working folder (`/work`, private to that container; else its `/tmp`), so nothing is made or
//! removed per worker or per job; each job's files there (`in.<ext>`, `out.<ext>`) are emptied
//! by the shell itself when the job is over. Every job writes its own files afresh (`head -c >`,
//! `ffmpeg -y`), so nothing of one job is read by the next. A mounted job's output size is read
//! on this machine, not by a `wc` in the worker.

use super::{Checker, IO_BUFFER, JobCtx, JobError, decoded_seconds, finish_stderr, pump_stderr};
use crate::ffmpeg::{Probe, StderrParser};
use crate::hash::Hasher;
use crate::place::Temp;
use crate::preset::Preset;
use bytes::{Bytes, BytesMut};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::task::AbortOnDropHandle;

/// The job server, run as `sh -c SERVER_SCRIPT isc-worker`. Every process it starts that must
/// not read the job channel gets `/dev/null` as stdin; ffmpeg's stdout goes to stderr, so that
/// stdout carries nothing but output bytes.
pub(crate) const SERVER_SCRIPT: &str = r#"
set -u
base=/work; [ -d "$base" ] && [ -w "$base" ] || base=${TMPDIR:-/tmp}
d=
fail() { echo "@isc:$nonce:end=$1" >&2; exit "$1"; }
while IFS=' ' read -r verb nonce mode in_ext out_name token size nargs; do
  [ "$verb" = job ] || exit 64
  set --
  while [ "$nargs" -gt 0 ]; do
    IFS= read -r a || exit 64
    set -- "$@" "$a"
    nargs=$((nargs - 1))
  done
  if [ "$mode" = mount ]; then
    t=; read -r t < /out/.isc-probe 2>/dev/null
    [ "$t" = "${token%%/*}" ] && [ -w /out ] && [ -f "/in/input.$in_ext" ] &&
      [ "$(stat -c %d:%i "/in/input.$in_ext")" = "${token#*/}" ] ||
      { echo "@isc:$nonce:stage=mount" >&2; fail 75; }
  fi
  if [ -z "$d" ]; then
    cd "$base" || { echo "@isc:$nonce:stage=scratch" >&2; fail 70; }
    d=$base
  fi
  case $out_name in
    *.tar) pack=${out_name%.tar}.d; rm -rf "$pack" && mkdir "$pack" ||
      { echo "@isc:$nonce:stage=scratch" >&2; fail 70; } ;;
    *) pack= ;;
  esac
  case $mode in
    spool)
      echo "@isc:$nonce:stage=store" >&2
      head -c "$size" > "in.$in_ext" || fail 71
      echo "@isc:$nonce:stage=ffmpeg" >&2
      ffmpeg "$@" </dev/null >&2 ;;
    pipe)
      echo "@isc:$nonce:stage=ffmpeg" >&2
      head -c "$size" | { ffmpeg "$@" >&2; r=$?; cat >/dev/null; exit $r; } ;;
    *)
      echo "@isc:$nonce:stage=ffmpeg" >&2
      ffmpeg "$@" </dev/null >&2 ;;
  esac
  rc=$?
  [ $rc -eq 0 ] || fail $rc
  if [ -n "$pack" ]; then
    echo "@isc:$nonce:stage=pack" >&2
    tar -cf "$out_name" -C "$pack" . </dev/null >&2 || fail 74
    rm -rf "$pack"
  fi
  echo "@isc:$nonce:stage=send" >&2
  if [ "$mode" = mount ]; then
    [ -f "$out_name" ] || fail 73
    echo "@isc:$nonce:send=0" >&2
  else
    n=$(wc -c < "$out_name") || fail 73
    echo "@isc:$nonce:send=$n" >&2
    cat "$out_name" </dev/null || fail 73
  fi
  IFS= read -r answer || exit 0
  case $answer in
    "done $nonce") ;;
    "probe $nonce")
      echo "@isc:$nonce:stage=probe" >&2
      if ffprobe -v error -of json -show_format -show_streams "$out_name" > probe.json 2>&1 </dev/null; then
        while IFS= read -r l; do printf '@isc:%s:probe:%s\n' "$nonce" "$l"; done < probe.json >&2
        echo "@isc:$nonce:end=0" >&2
      else
        while IFS= read -r l; do printf '@isc:%s:probe-error=%s\n' "$nonce" "$l"; done < probe.json >&2
        fail 72
      fi ;;
    *) exit 64 ;;
  esac
  [ "$mode" = mount ] || : > "$out_name"
  [ "$mode" = spool ] && : > "in.$in_ext"
  : > probe.json
done
"#;

/// Most output bytes taken before the worker has announced the output's size. The engine
/// forwards a container's stdout and stderr as they come, in no order between the two, so the
/// first output bytes may overtake the announcement: by at most what the engine reads from the
/// stdout pipe before it forwards the stderr line written before them (pipe buffers of 64 KiB,
/// the engine's of 32 KiB). 64 MiB is far past that, and bounds a worker that floods stdout
/// without ever announcing anything. The bytes go to the temporary output on disk, not memory.
pub const MAX_UNANNOUNCED: u64 = 64 << 20;

/// Exit code of a job whose mount proof failed.
pub(crate) const EXIT_NO_MOUNT: i64 = 75;

/// The worker container's main process: `sh -c WORKER_MAIN isc-worker SERVER_SCRIPT`.
///
/// `cat` hands the container's attached stdin on to the job server. When that stdin ends (the
/// client closed it, or died, even by SIGKILL, and the engine closed it), `cat` kills every
/// process of the container (`kill -1` reaches only this PID namespace, and spares its pid 1),
/// ffmpeg included; when the job server ends (after a failure), it does the same. Either way
/// pid 1 returns, the container stops and the engine removes it (`auto_remove`).
pub(crate) const WORKER_MAIN: &str =
    r#"{ cat; kill -s KILL -- -1; } | { sh -c "$1" isc-worker; kill -s KILL -- -1; }"#;

/// How the input reaches ffmpeg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// ffmpeg reads the streamed input as its stdin.
    Pipe,
    /// The streamed input is stored as `in.EXT` first.
    Spool,
    /// The input is mounted at `/in`, the output folder at `/out`.
    Mount,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Pipe => "pipe",
            Mode::Spool => "spool",
            Mode::Mount => "mount",
        }
    }
}

/// One job, as the client sends it.
pub(crate) struct Request<'a> {
    pub mode: Mode,
    pub in_ext: &'a str,
    pub out_name: &'a str,
    /// Mount mode: `PROOF/DEV:INO`, the random proof written into the private output folder
    /// (`.isc-probe`) and the device and inode of the input as this machine opened it; the
    /// server runs the job only if its `/out` holds the proof and its `/in/input.EXT` is a
    /// regular file with that identity, so a path swapped between this machine's check and the
    /// engine's bind mount (for another file, a FIFO, a link) is refused. Else `-`.
    pub token: &'a str,
    /// The file to stream in (pipe and spool modes) and its size.
    pub input: Option<(&'a Path, u64)>,
    /// Where the streamed output goes (pipe and spool modes): written through its descriptor,
    /// read back through a fresh one ([`Temp::reopen`]).
    pub sink: Option<&'a Temp>,
    /// Mount mode: the private output folder, open, and the output's name in it: the output is
    /// only ever opened from there, never by path ([`open_result`]).
    pub mounted: Option<(&'a OwnedFd, &'a str)>,
    pub args: Vec<String>,
    pub preset: &'a Arc<Preset>,
    /// Hash the input while it streams.
    pub hash_input: bool,
    pub job_id: usize,
}

/// What a successful job handed back.
pub(crate) struct Served {
    pub parser: StderrParser,
    pub probe: Probe,
    pub checked_by: Checker,
    /// The output bytes the worker announced and sent: 0 in mount mode, where the output stays
    /// in the mounted folder.
    pub bytes_out: u64,
    /// The output's sha256 as it streamed in (not in mount mode).
    pub output_sha256: Option<String>,
    /// The input's sha256 as it streamed out, when asked for.
    pub input_sha256: Option<String>,
}

impl Served {
    pub fn decoded(&self) -> Option<f64> {
        decoded_seconds(&self.parser)
    }
}

/// The header of one frame of a worker's output: the stream (1 stdout, 2 stderr), three zero
/// bytes, and the payload's length, big-endian. It is the engine's own framing of a container's
/// attached output when it has no terminal, so one byte stream carries both of the worker's
/// streams and keeps each one's bytes in order.
pub(crate) const FRAME_HEADER: usize = 8;

/// The stream byte of a frame of stdout ([`FRAME_HEADER`]).
pub(crate) const FRAME_STDOUT: u8 = 1;

/// The stream byte of a frame of stderr ([`FRAME_HEADER`]).
pub(crate) const FRAME_STDERR: u8 = 2;

/// The header of a frame of `len` payload bytes on `stream` ([`FRAME_HEADER`]); `None` when
/// `len` does not fit the header's four bytes.
pub(crate) fn frame_header(stream: u8, len: usize) -> Option<[u8; FRAME_HEADER]> {
    let len = u32::try_from(len).ok()?.to_be_bytes();
    Some([stream, 0, 0, 0, len[0], len[1], len[2], len[3]])
}

/// Part of a frame of the worker's output.
#[derive(Debug)]
enum Frame {
    StdOut(Bytes),
    StdErr(Bytes),
}

/// Reads the worker's framed output ([`FRAME_HEADER`]) one piece of a frame at a time. Its
/// state lives here, not in the future that reads, so that a read dropped by a `select!` loses
/// nothing.
struct Frames<R> {
    reader: R,
    header: [u8; FRAME_HEADER],
    filled: usize,
    stream: u8,
    left: u64,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    fn new(reader: R) -> Frames<R> {
        Frames {
            reader,
            header: [0; FRAME_HEADER],
            filled: 0,
            stream: 0,
            left: 0,
            buf: BytesMut::new(),
        }
    }

    /// The next piece of stdout or stderr, at most [`IO_BUFFER`] bytes; frames of other streams
    /// are skipped. `None` at the end of the output between frames; an end inside a frame is an
    /// error. Cancel safe.
    async fn next(&mut self) -> Option<std::io::Result<Frame>> {
        loop {
            if self.left == 0 {
                let n = match self.reader.read(&mut self.header[self.filled..]).await {
                    Ok(n) => n,
                    Err(e) => return Some(Err(e)),
                };
                if n == 0 {
                    return (self.filled > 0).then(|| Err(cut_short("a frame header")));
                }
                self.filled += n;
                if self.filled == FRAME_HEADER {
                    self.filled = 0;
                    self.stream = self.header[0];
                    let len = [
                        self.header[4],
                        self.header[5],
                        self.header[6],
                        self.header[7],
                    ];
                    self.left = u64::from(u32::from_be_bytes(len));
                }
                continue;
            }
            let want = self.left.min(IO_BUFFER as u64);
            self.buf.reserve(want as usize);
            let n = match (&mut self.reader).take(want).read_buf(&mut self.buf).await {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            if n == 0 {
                return Some(Err(cut_short("a frame")));
            }
            self.left -= n as u64;
            let piece = self.buf.split().freeze();
            match self.stream {
                FRAME_STDOUT => return Some(Ok(Frame::StdOut(piece))),
                FRAME_STDERR => return Some(Ok(Frame::StdErr(piece))),
                _ => {}
            }
        }
    }
}

fn cut_short(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the output ended inside {what}"),
    )
}

/// A job server running in a worker: what it says (`R`, framed: [`FRAME_HEADER`]) and its
/// stdin (`W`). The engine's attached streams in production, anything in a test.
pub(crate) struct Session<R, W> {
    output: Option<Frames<R>>,
    input: Option<W>,
    jobs: u64,
}

/// What the feeder task hands back: the worker's stdin, and the input's hash or why it failed.
type Fed<W> = (W, Result<Option<String>, Feed>);

enum Feed {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl<R, W> Session<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// The job server of a worker whose main process it is ([`WORKER_MAIN`]), over the
    /// worker's framed output and its stdin.
    pub fn attached(output: R, input: W) -> Session<R, W> {
        Session {
            output: Some(Frames::new(output)),
            input: Some(input),
            jobs: 0,
        }
    }

    /// Close both of the worker's streams. The engine's copy of a container's output into an
    /// attach connection that nobody reads blocks, and so does the removal of that container:
    /// a worker that flooded its stdout held a force-remove, and the run, for the engine API's
    /// whole request timeout (120 s), deaf to SIGINT. Hanging up first lets the removal go on.
    pub fn hang_up(&mut self) {
        self.input = None;
        self.output = None;
    }

    /// Run one job. Any error leaves the server out of step or gone: the caller must remove
    /// the worker.
    pub async fn serve(&mut self, req: Request<'_>, ctx: &JobCtx) -> Result<Served, JobError> {
        self.jobs += 1;
        let nonce = super::random_hex(16).map_err(|e| JobError::Worker {
            stage: format!("making the job's nonce ({e})"),
            code: -1,
            tail: vec![],
        })?;
        let size = req.input.map_or(0, |(_, n)| n);
        let header = encode(&nonce, &req, size).map_err(|e| JobError::Worker {
            stage: format!("sending the job ({e})"),
            code: -1,
            tail: vec![],
        })?;
        let mut input = self.input.take().ok_or_else(|| lost("its stdin is gone"))?;
        input
            .write_all(&header)
            .await
            .map_err(|e| lost(&format!("cannot send the job: {e}")))?;
        input
            .flush()
            .await
            .map_err(|e| lost(&format!("cannot send the job: {e}")))?;

        let mut feeder = match req.input {
            Some((path, size)) => Some(AbortOnDropHandle::new(tokio::spawn(feed(
                input,
                path.to_path_buf(),
                size,
                req.hash_input,
                ctx.clone(),
            )))),
            None => {
                self.input = Some(input);
                None
            }
        };
        let mut input_sha256 = None;

        let mut sink = match req.sink {
            Some(temp) => Some(tokio::io::BufWriter::with_capacity(
                IO_BUFFER,
                tokio::fs::File::from_std(temp.file().try_clone().map_err(JobError::Output)?),
            )),
            None => None,
        };
        let mut output_hash = req.sink.map(|_| Hasher::new());
        let mut parser = StderrParser::for_job(&nonce);
        let mut seen_marks = 0;
        let mut bytes_out = 0u64;
        let mut announced: Option<u64> = None;
        let mut ended: Option<i64> = None;
        let mut asked_probe = false;
        let streamed = req.sink.is_some();
        loop {
            let transferred = announced.is_some_and(|n| !streamed || n == bytes_out);
            if let Some(code) = ended {
                if code != 0 {
                    return Err(outcome_error(code, &parser));
                }
                if asked_probe && transferred {
                    break;
                }
            }
            if transferred && feeder.is_none() && !asked_probe {
                if let Some(mut s) = sink.take() {
                    s.flush().await.map_err(JobError::Output)?;
                }
                let file = match (req.mounted, req.sink) {
                    (Some((dir, name)), _) => open_result(dir, name)?,
                    (None, Some(temp)) => temp.reopen().map_err(JobError::Output)?,
                    (None, None) => {
                        return Err(JobError::Output(std::io::Error::other(
                            "a job with neither a mounted folder nor a sink",
                        )));
                    }
                };
                let settled = super::read_back_file(req.preset, &parser, Arc::new(file)).await?;
                let answer = match settled {
                    Some(probe) => {
                        self.answer(format!("done {nonce}\n").as_bytes()).await?;
                        finish_stderr(&mut parser, req.job_id, ctx);
                        return Ok(Served {
                            parser,
                            probe,
                            checked_by: Checker::Index,
                            bytes_out: announced.unwrap_or(bytes_out),
                            output_sha256: output_hash.map(Hasher::finish),
                            input_sha256,
                        });
                    }
                    None => format!("probe {nonce}\n"),
                };
                self.answer(answer.as_bytes()).await?;
                asked_probe = true;
                continue;
            }
            tokio::select! {
                frame = next_frame(self.output.as_mut()) => match frame {
                    Some(Ok(Frame::StdOut(message))) => {
                        bytes_out += message.len() as u64;
                        let (Some(s), Some(h)) = (sink.as_mut(), output_hash.as_mut()) else {
                            return Err(JobError::Verify {
                                reason: "the worker sent output bytes it was not asked for".into(),
                                tail: parser.tail(),
                            });
                        };
                        if announced.is_none() && bytes_out > MAX_UNANNOUNCED {
                            return Err(JobError::Untrusted(format!(
                                "more than {} MiB of output before it announced its size",
                                MAX_UNANNOUNCED >> 20
                            )));
                        }
                        if let Some(n) = announced.filter(|n| bytes_out > *n) {
                            return Err(JobError::Verify {
                                reason: format!("the worker sent more than the {n} bytes it announced"),
                                tail: parser.tail(),
                            });
                        }
                        h.update(&message);
                        ctx.touch();
                        s.write_all(&message).await.map_err(JobError::Output)?;
                    }
                    Some(Ok(Frame::StdErr(message))) => {
                        pump_stderr(&mut parser, &message, req.job_id, ctx);
                        if let Some(why) = parser.violation() {
                            return Err(JobError::Untrusted(why.to_string()));
                        }
                        for (key, value) in &parser.marks[seen_marks..] {
                            let said = read_mark(key, value).map_err(JobError::Untrusted)?;
                            match said {
                                Some(Said::Send(n)) => announced = Some(n),
                                Some(Said::End(code)) => ended = Some(code),
                                None => {}
                            }
                        }
                        seen_marks = parser.marks.len();
                    }
                    Some(Err(e)) => match e.downcast::<bollard::errors::Error>() {
                        Ok(e) => return Err(e.into()),
                        Err(e) => return Err(lost(&format!("cannot read from it: {e}"))),
                    },
                    None => {
                        finish_stderr(&mut parser, req.job_id, ctx);
                        return Err(if parser.marks.is_empty() {
                            lost("the connection to it closed")
                        } else {
                            JobError::Worker {
                                stage: parser.mark("stage").unwrap_or("the job").to_string(),
                                code: -1,
                                tail: parser.tail(),
                            }
                        });
                    }
                },
                done = async {
                    match feeder.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if feeder.is_some() => {
                    feeder = None;
                    let (stdin, result) = done.map_err(|e| JobError::Input(std::io::Error::other(e)))?;
                    match result {
                        Ok(sha) => {
                            input_sha256 = sha;
                            self.input = Some(stdin);
                        }
                        Err(Feed::Read(e)) => return Err(JobError::Input(e)),
                        Err(Feed::Write(e)) if parser.marks.is_empty() => {
                            return Err(lost(&format!("it took no input: {e}")));
                        }
                        Err(Feed::Write(e)) => {
                            return Err(JobError::Worker {
                                stage: format!("streaming the input ({e})"),
                                code: -1,
                                tail: parser.tail(),
                            });
                        }
                    }
                }
            }
        }
        finish_stderr(&mut parser, req.job_id, ctx);
        let probe = match parser.probe() {
            Some(Ok(p)) => p,
            Some(Err(reason)) => {
                return Err(JobError::Verify {
                    reason,
                    tail: parser.tail(),
                });
            }
            None => {
                return Err(JobError::Verify {
                    reason: "the worker sent no probe of the output".into(),
                    tail: parser.tail(),
                });
            }
        };
        Ok(Served {
            parser,
            probe,
            checked_by: Checker::Ffprobe,
            bytes_out: announced.unwrap_or(bytes_out),
            output_sha256: output_hash.map(Hasher::finish),
            input_sha256,
        })
    }

    async fn answer(&mut self, line: &[u8]) -> Result<(), JobError> {
        let input = self
            .input
            .as_mut()
            .ok_or_else(|| lost("its stdin is gone"))?;
        input
            .write_all(line)
            .await
            .map_err(|e| lost(&format!("cannot answer it: {e}")))?;
        input
            .flush()
            .await
            .map_err(|e| lost(&format!("cannot answer it: {e}")))
    }
}

/// The next piece of the worker's output; none once hung up ([`Session::hang_up`]).
async fn next_frame<R: AsyncRead + Unpin>(
    frames: Option<&mut Frames<R>>,
) -> Option<std::io::Result<Frame>> {
    match frames {
        Some(frames) => frames.next().await,
        None => None,
    }
}

fn lost(why: &str) -> JobError {
    JobError::WorkerLost(why.to_string())
}

/// Why a job failed, from the code in the job server's end mark and its `@isc:stage` marks.
pub(crate) fn outcome_error(code: i64, parser: &StderrParser) -> JobError {
    let tail = parser.tail();
    let stage = parser.mark("stage").unwrap_or("ffmpeg").to_string();
    match stage.as_str() {
        "ffmpeg" => JobError::ffmpeg(code, parser),
        "store" => JobError::Worker {
            stage: "storing the input".into(),
            code,
            tail,
        },
        "probe" => JobError::Verify {
            reason: format!(
                "ffprobe cannot read the output: {}",
                parser.mark("probe-error").unwrap_or("no details")
            ),
            tail,
        },
        other => JobError::Worker {
            stage: other.to_string(),
            code,
            tail,
        },
    }
}

/// What a mark of the job server says about one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Said {
    /// `@isc:send=NONCE N`: ffmpeg succeeded and N output bytes follow on stdout.
    Send(u64),
    /// `@isc:end=NONCE CODE`: the job, or its probe, ended with CODE.
    End(i64),
}

/// Read a mark of this job (`@isc:NONCE:key=value`, the nonce already checked and taken off by
/// [`StderrParser::for_job`]): `send` with the byte count that follows, `end` with the exit
/// code; other marks (stages, probe lines) say nothing here. A `send` or `end` whose number does
/// not read, or a negative `send`, is an error naming the mark: a worker that says it is
/// hostile or broken.
pub(crate) fn read_mark(key: &str, value: &str) -> Result<Option<Said>, String> {
    if key != "send" && key != "end" {
        return Ok(None);
    }
    let number = value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|n| key == "end" || *n >= 0)
        .ok_or_else(|| format!("a {key} mark of {value:?}"))?;
    Ok(Some(match key {
        "send" => Said::Send(number as u64),
        _ => Said::End(number),
    }))
}

/// The request's header and arguments, as the server reads them.
pub(crate) fn encode(nonce: &str, req: &Request<'_>, size: u64) -> Result<Vec<u8>, String> {
    let word = |what: &str, s: &str| {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err(format!("{what} {s:?} is not one word"))
        } else {
            Ok(())
        }
    };
    word("input extension", req.in_ext)?;
    word("output name", req.out_name)?;
    word("token", req.token)?;
    let mut out = format!(
        "job {nonce} {} {} {} {} {size} {}\n",
        req.mode.as_str(),
        req.in_ext,
        req.out_name,
        req.token,
        req.args.len()
    );
    for (i, a) in req.args.iter().enumerate() {
        if a.contains('\n') {
            return Err(format!("ffmpeg argument {i} contains a line break"));
        }
        // The server's shell drops NUL bytes: the argument would not be the one sent.
        if a.contains('\0') {
            return Err(format!("ffmpeg argument {i} contains a NUL byte"));
        }
        out.push_str(a);
        out.push('\n');
    }
    Ok(out.into_bytes())
}

/// Stream exactly `size` bytes of `path` into the server, hashing them when asked. The input
/// is read once, whatever it is for.
async fn feed<W: AsyncWrite + Unpin>(
    mut stdin: W,
    path: PathBuf,
    size: u64,
    hash: bool,
    ctx: JobCtx,
) -> Fed<W> {
    let result = async {
        let file = crate::fsopen::open_regular_async(&path)
            .await
            .map_err(Feed::Read)?;
        let mut file = file.take(size);
        let mut hasher = hash.then(Hasher::new);
        let mut buf = vec![0u8; IO_BUFFER];
        let mut sent = 0u64;
        loop {
            let n = file.read(&mut buf).await.map_err(Feed::Read)?;
            if n == 0 {
                break;
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&buf[..n]);
            }
            stdin.write_all(&buf[..n]).await.map_err(Feed::Write)?;
            sent += n as u64;
            ctx.touch();
        }
        if sent != size {
            return Err(Feed::Read(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file shrank while it was read: {sent} of {size} bytes"),
            )));
        }
        stdin.flush().await.map_err(Feed::Write)?;
        Ok(hasher.map(Hasher::finish))
    }
    .await;
    (stdin, result)
}

/// Writes an output back to disk while ffmpeg is still writing it, so that the fsync that makes
/// it durable at the end ([`settle_file`]) has little left to do: a 1.72 GB output took about
/// 2.7-2.9 s to sync after ffmpeg had finished, longer than the remux itself. Only for outputs that
/// ffmpeg writes once, front to back (the index's room reserved at the front,
/// [`crate::preset::Preset::ffmpeg_args_reserving`]): `+faststart` rewrites every byte at the
/// end, which would make every early write wasted. Stops when dropped.
pub(crate) struct EarlyWriteback {
    _stop: std::sync::mpsc::Sender<()>,
}

impl EarlyWriteback {
    /// How often the file's dirty pages are sent to disk.
    const EVERY: std::time::Duration = std::time::Duration::from_millis(250);

    /// Start writing the file `name` in the folder `dir` back as it grows; it need not exist
    /// yet.
    pub fn start(dir: OwnedFd, name: String) -> EarlyWriteback {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        // A thread of its own, not the runtime's blocking pool: a run that ends must not wait
        // for it, and a dropped guard ends it at once.
        let spawned = std::thread::Builder::new()
            .name("isc-writeback".into())
            .spawn(move || {
                let mut file = None;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(Self::EVERY)
                {
                    if file.is_none() {
                        // What the worker made is never opened through a link, nor as a FIFO.
                        file = open_result(&dir, &name).ok();
                    }
                    if let Some(f) = &file {
                        let _ = f.sync_data();
                    }
                }
            });
        // Without the thread the output is still synced at the end, only later.
        drop(spawned);
        EarlyWriteback { _stop: stop }
    }
}

/// Open a mounted job's output `name` in its private folder `dir` the one way the host ever
/// opens what a worker made: from the folder's descriptor, without following a link
/// (`O_NOFOLLOW`), without waiting on a FIFO (`O_NONBLOCK`), and only if what is there is a
/// regular file, judged on the descriptor itself.
pub(crate) fn open_result(dir: &OwnedFd, name: &str) -> Result<std::fs::File, JobError> {
    use rustix::fs::{FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::LOOP) => {
            return Err(JobError::Untrusted(format!(
                "it left its output {name} as a symbolic link, not a regular file"
            )));
        }
        Err(e) => return Err(JobError::Output(e.into())),
    };
    let kind = rustix::fs::fstat(&fd)
        .map(|st| FileType::from_raw_mode(st.st_mode))
        .map_err(|e| JobError::Output(e.into()))?;
    if kind != FileType::RegularFile {
        return Err(JobError::Untrusted(format!(
            "it left its output {name} as {}, not a regular file",
            crate::fsopen::type_name(kind)
        )));
    }
    Ok(std::fs::File::from(fd))
}

/// Hash a finished output from its descriptor and make it durable, on blocking threads:
/// write-back and hashing overlap, one waits on the disk, the other on a core. Gives its size
/// and sha256.
pub(crate) fn settle_file(
    file: Arc<std::fs::File>,
    ctx: JobCtx,
) -> tokio::task::JoinHandle<std::io::Result<(u64, String)>> {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let bytes = file.metadata()?.len();
        // The read-back has read the same descriptor: hash from the first byte.
        (&*file).seek(std::io::SeekFrom::Start(0))?;
        std::thread::scope(|scope| {
            let synced = scope.spawn(|| file.sync_all());
            let mut reader = &*file;
            let mut buf = crate::hash::Block::new(IO_BUFFER);
            let mut h = Hasher::new();
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                h.update(&buf[..n]);
                ctx.touch();
            }
            synced
                .join()
                .map_err(|_| std::io::Error::other("fsync thread panicked"))??;
            Ok((bytes, h.finish()))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, DuplexStream};

    fn request<'a>(preset: &'a Arc<Preset>, args: Vec<String>) -> Request<'a> {
        Request {
            mode: Mode::Pipe,
            in_ext: "mp4",
            out_name: "out.mp4",
            token: "-",
            input: None,
            sink: None,
            mounted: None,
            args,
            preset,
            hash_input: false,
            job_id: 0,
        }
    }

    #[test]
    fn header_carries_every_argument_on_its_own_line() {
        let preset = Arc::new(crate::preset::load("copy").expect("copy preset"));
        let args = preset.ffmpeg_args("pipe:0", "out.mp4");
        let bytes = encode("n1", &request(&preset, args.clone()), 1234).expect("encode");
        let text = String::from_utf8(bytes).expect("utf8");
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(format!("job n1 pipe mp4 out.mp4 - 1234 {}", args.len()).as_str())
        );
        assert_eq!(lines.collect::<Vec<_>>(), args);
    }

    #[test]
    fn a_line_break_in_an_argument_is_refused() {
        let preset = Arc::new(crate::preset::load("copy").expect("copy preset"));
        let err = encode("n1", &request(&preset, vec!["a\nb".into()]), 0).expect_err("refused");
        assert!(err.contains("line break"), "{err}");
    }

    // Regression: the nonce was the clock and a counter, and only two of the server's marks
    // carried it; the answers carried none.
    #[test]
    fn every_message_of_the_server_carries_the_nonce() {
        for (i, _) in SERVER_SCRIPT.match_indices("@isc:") {
            let rest = &SERVER_SCRIPT[i + 5..];
            assert!(
                rest.starts_with("$nonce:") || rest.starts_with("%s:"),
                "a mark without the nonce: {}",
                &SERVER_SCRIPT[i..i + 40]
            );
        }
        assert!(SERVER_SCRIPT.contains(r#""done $nonce")"#));
        assert!(SERVER_SCRIPT.contains(r#""probe $nonce")"#));
        let a = super::super::random_hex(16).expect("random");
        let b = super::super::random_hex(16).expect("random");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    // Regression (fuzz target jobserver_request): an argument holding a NUL byte was sent, and
    // the server's shell read it without the NUL, as another argument than the one sent.
    #[test]
    fn a_nul_byte_in_an_argument_is_refused() {
        let preset = Arc::new(crate::preset::load("copy").expect("copy preset"));
        let err = encode("n1", &request(&preset, vec!["a\0b".into()]), 0).expect_err("refused");
        assert!(err.contains("argument 0 contains a NUL byte"), "{err}");
    }

    // Regression: a mounted job's output was opened by path, following links and blocking on
    // a FIFO.
    #[test]
    fn a_result_is_opened_only_as_a_regular_file_never_through_a_link() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = rustix::fs::open(
            tmp.path(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .expect("dir");
        std::fs::write(tmp.path().join("file"), b"x").expect("file");
        std::os::unix::fs::symlink("file", tmp.path().join("link")).expect("link");
        rustix::fs::mknodat(
            &dir,
            "fifo",
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("fifo");
        std::fs::create_dir(tmp.path().join("folder")).expect("folder");
        assert!(open_result(&dir, "file").is_ok());
        let refused = |name: &str| match open_result(&dir, name) {
            Err(JobError::Untrusted(why)) => why,
            other => panic!("{name}: {other:?}"),
        };
        assert!(refused("link").contains("as a symbolic link"));
        assert!(refused("fifo").contains("as a named pipe"));
        assert!(refused("folder").contains("as a folder"));
    }

    #[test]
    fn header_words_must_be_single_words() {
        let preset = Arc::new(crate::preset::load("copy").expect("copy preset"));
        let mut req = request(&preset, vec![]);
        req.in_ext = "m p4";
        assert!(encode("n1", &req, 0).is_err());
    }

    /// A job server in a test: it reads jobs the way [`SERVER_SCRIPT`] does and answers the
    /// way it does, with `stderr` in place of its own marks when given.
    struct FakeWorker {
        from_client: tokio::io::BufReader<DuplexStream>,
        to_client: DuplexStream,
    }

    impl FakeWorker {
        async fn frame(&mut self, stream: u8, bytes: &[u8]) {
            let header = frame_header(stream, bytes.len()).expect("short frame");
            self.to_client.write_all(&header).await.expect("header");
            self.to_client.write_all(bytes).await.expect("payload");
        }

        async fn line(&mut self) -> String {
            let mut line = String::new();
            self.from_client.read_line(&mut line).await.expect("line");
            line.trim_end_matches('\n').to_string()
        }

        /// Take one streamed job, answer `marks(nonce)` on stderr and, after a `send`, the
        /// input with `out:` in front on stdout; answer a probe. Gives the header's words,
        /// the arguments and the input received.
        async fn serve(
            &mut self,
            marks: impl Fn(&str) -> Vec<String>,
        ) -> (Vec<String>, Vec<String>, Vec<u8>) {
            let header: Vec<String> = self.line().await.split(' ').map(String::from).collect();
            let nargs: usize = header[7].parse().expect("nargs");
            let mut args = Vec::new();
            for _ in 0..nargs {
                args.push(self.line().await);
            }
            let size: usize = header[6].parse().expect("size");
            let mut input = vec![0u8; size];
            self.from_client
                .read_exact(&mut input)
                .await
                .expect("input");
            let nonce = header[1].clone();
            let output = [b"out:".as_slice(), &input].concat();
            for mark in marks(&nonce) {
                let mark = mark.replace("{len}", &output.len().to_string());
                self.frame(FRAME_STDERR, format!("{mark}\n").as_bytes())
                    .await;
                if mark.contains(":send=") {
                    for piece in output.chunks(10_000) {
                        self.frame(FRAME_STDOUT, piece).await;
                    }
                }
            }
            if self.line().await == format!("probe {nonce}") {
                let json = r#"{"streams":[{"codec_type":"audio","codec_name":"mp3"}],"format":{"duration":"1.0"}}"#;
                self.frame(
                    FRAME_STDERR,
                    format!("@isc:{nonce}:stage=probe\n").as_bytes(),
                )
                .await;
                self.frame(
                    FRAME_STDERR,
                    format!("@isc:{nonce}:probe:{json}\n").as_bytes(),
                )
                .await;
                self.frame(FRAME_STDERR, format!("@isc:{nonce}:end=0\n").as_bytes())
                    .await;
            }
            (header, args, input)
        }
    }

    /// A session and the fake worker at its other end. The worker's output pipe is a few bytes
    /// wide, so that headers and payloads arrive cut at every place.
    fn session_with_fake_worker() -> (Session<DuplexStream, DuplexStream>, FakeWorker) {
        let (client_out, worker_out) = tokio::io::duplex(5);
        let (client_in, worker_in) = tokio::io::duplex(64 << 10);
        (
            Session::attached(client_out, client_in),
            FakeWorker {
                from_client: tokio::io::BufReader::new(worker_in),
                to_client: worker_out,
            },
        )
    }

    fn streamed_marks(nonce: &str) -> Vec<String> {
        vec![
            format!("@isc:{nonce}:stage=ffmpeg"),
            "size=       1kB time=00:00:01.00 bitrate=   8.0kbits/s speed=1x".to_string(),
            format!("@isc:{nonce}:stage=send"),
            format!("@isc:{nonce}:send={{len}}"),
        ]
    }

    struct Job {
        _tmp: tempfile::TempDir,
        input: PathBuf,
        size: u64,
        sink: Temp,
        preset: Arc<Preset>,
        ctx: JobCtx,
        _events: tokio::sync::mpsc::UnboundedReceiver<crate::report::Event>,
    }

    fn streamed_job(bytes: &[u8]) -> Job {
        let tmp = tempfile::tempdir().expect("tempdir");
        let input = tmp.path().join("in.wav");
        std::fs::write(&input, bytes).expect("input");
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).expect("out");
        let sink = crate::place::open_dir(&out, &out)
            .expect("out dir")
            .create_temp("mp3")
            .expect("temp");
        let (events, _events) = tokio::sync::mpsc::unbounded_channel();
        let ctx = JobCtx::new(events, tokio_util::sync::CancellationToken::new(), false);
        Job {
            _tmp: tmp,
            input,
            size: bytes.len() as u64,
            sink,
            preset: Arc::new(crate::preset::load("mp3").expect("mp3 preset")),
            ctx,
            _events,
        }
    }

    fn piped<'a>(job: &'a Job, args: Vec<String>) -> Request<'a> {
        Request {
            input: Some((&job.input, job.size)),
            sink: Some(&job.sink),
            hash_input: true,
            ..request(&job.preset, args)
        }
    }

    fn sha256(bytes: &[u8]) -> String {
        let mut h = Hasher::new();
        h.update(bytes);
        h.finish()
    }

    #[tokio::test]
    async fn a_streamed_job_runs_over_any_pair_of_pipes() {
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let job = streamed_job(&bytes);
        let (mut session, mut worker) = session_with_fake_worker();
        let args = vec![
            "-i".to_string(),
            "pipe:0".to_string(),
            "out.mp3".to_string(),
        ];
        let (served, (header, sent_args, received)) = tokio::join!(
            session.serve(piped(&job, args.clone()), &job.ctx),
            worker.serve(streamed_marks),
        );
        let served = served.expect("served");
        assert_eq!(header[0], "job");
        assert_eq!(header[2..7], ["pipe", "mp4", "out.mp4", "-", "100000"]);
        assert_eq!(sent_args, args);
        assert_eq!(received, bytes, "the input arrived whole");
        let expected = [b"out:".as_slice(), &bytes].concat();
        let mut written = Vec::new();
        std::io::Read::read_to_end(&mut job.sink.reopen().expect("reopen"), &mut written)
            .expect("read");
        assert_eq!(written, expected, "the output arrived whole");
        assert_eq!(served.bytes_out, expected.len() as u64);
        assert_eq!(
            served.output_sha256.as_deref(),
            Some(sha256(&expected).as_str())
        );
        assert_eq!(
            served.input_sha256.as_deref(),
            Some(sha256(&bytes).as_str())
        );
        assert_eq!(served.checked_by, Checker::Ffprobe);
        assert_eq!(served.probe.audio().count(), 1);
    }

    #[tokio::test]
    async fn a_mark_without_the_jobs_nonce_is_refused() {
        let job = streamed_job(b"input bytes");
        let (mut session, mut worker) = session_with_fake_worker();
        let worker = tokio::spawn(async move {
            worker
                .serve(|nonce| {
                    vec![
                        format!("@isc:{nonce}:stage=ffmpeg"),
                        "@isc:0123456789abcdef0123456789abcdef:send=3".to_string(),
                    ]
                })
                .await;
        });
        let served = session.serve(piped(&job, vec![]), &job.ctx).await;
        match served {
            Err(JobError::Untrusted(why)) => assert!(why.contains("nonce"), "{why}"),
            other => panic!("{:?}", other.map(|s| s.bytes_out)),
        }
        session.hang_up();
        worker.abort();
    }

    #[tokio::test]
    async fn output_cut_inside_a_frame_is_an_error_not_an_end() {
        let (mut reader, mut writer) = tokio::io::duplex(64);
        let mut frames = Frames::new(&mut reader);
        let header = frame_header(FRAME_STDERR, 10).expect("header");
        writer.write_all(&header).await.expect("write");
        writer.write_all(b"abc").await.expect("write");
        drop(writer);
        match frames.next().await {
            Some(Ok(Frame::StdErr(b))) => assert_eq!(&b[..], b"abc"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(frames.next().await, Some(Err(_))));
    }
}
