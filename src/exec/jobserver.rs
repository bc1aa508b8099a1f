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
use bollard::container::LogOutput;
use futures_util::StreamExt;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

type WorkerOutput = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>,
>;
type WorkerInput = std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// A job server running in a worker: the container's attached output stream and its stdin.
pub(crate) struct Session {
    output: WorkerOutput,
    input: Option<WorkerInput>,
    jobs: u64,
}

/// What the feeder task hands back: the worker's stdin, and the input's hash or why it failed.
type Fed = (WorkerInput, Result<Option<String>, Feed>);

enum Feed {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl Session {
    /// The job server of a worker whose main process it is ([`WORKER_MAIN`]), over the
    /// container's attached streams.
    pub fn attached(output: WorkerOutput, input: WorkerInput) -> Session {
        Session {
            output,
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
        self.output = Box::pin(futures_util::stream::empty());
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
                frame = self.output.next() => match frame {
                    Some(Ok(LogOutput::StdOut { message })) => {
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
                    Some(Ok(LogOutput::StdErr { message })) => {
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
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
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

fn lost(why: &str) -> JobError {
    JobError::WorkerLost(why.to_string())
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
async fn feed(mut stdin: WorkerInput, path: PathBuf, size: u64, hash: bool, ctx: JobCtx) -> Fed {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
