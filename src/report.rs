//! The reporter: the only code that writes to the terminal.
//!
//! Jobs and the dispatcher send [`Event`]s; one task turns them into output, for two audiences.
//! It lives for the whole run, so the batch's early phases (scanning, hashing, waiting for
//! another run's lock) are shown the same way as its jobs: a spinner and hashing bars in a
//! terminal, plain lines elsewhere. The end-of-run report (summary line, JSON document) belongs
//! to a planned batch: a run that stops before its plan is known ([`Event::Planned`]), or a dry
//! run, which prints its own plan, has none.
//!
//! **A person at a terminal** (stderr is a TTY, no `--quiet`): indicatif bars. One overall bar
//! counts the bytes of the inputs that must be transcoded, so its ETA weighs a 4 GB file more
//! than a 4 MB one; running jobs move it by their own percent. Skipped files do not move it (they
//! cost nothing), they are counted in its message. Below it, one line per running job: name,
//! percent, speed (x realtime), fps, host. Percent comes from ffmpeg's `-progress` against the
//! input's duration; without a known duration the line shows time and bytes, never a made-up
//! percent. Messages print above the bars, so bars never garble them. Colour only when
//! `NO_COLOR` is unset.
//!
//! **cron, pipes, log files**: no bars, no escape codes; one plain line per file (`done`,
//! `skipped` or `failed`, with input, output, duration, sizes, speed and host) and a summary
//! line. With `--json`, stdout carries exactly one JSON document at the end (schema in the
//! README) and the plain lines go to stderr.
//!
//! Failures always go to stderr: one line naming the input and the cause, then ffmpeg's last
//! meaningful lines, each prefixed with the input's path.
//!
//! **Names are escaped** ([`shown`], [`escape`]) wherever they reach a terminal or a log: a file
//! name is chosen by whoever put the file there, and a newline in it could forge a `done` line
//! for a file that failed, an ESC sequence could recolour or rewrite the screen, a carriage
//! return overwrite what came before, a bidi override reverse what the eye reads. Control
//! characters show as `\n`, `\x1b`, `\u{202e}`; bytes that are not UTF-8 as `\xe9`, so two
//! names never look alike on screen when they differ on disk. The same goes for everything
//! that may carry such a name or other bytes the tool did not write: error texts, notes,
//! ffmpeg's own lines. The JSON report keeps the real name: serde escapes it.

pub mod daemon;

use crate::ffmpeg::Progress;
use crate::job::{JobEvent, JobResult, Status};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

pub use crate::job::Event;

/// What the reporter knows about the batch once it is planned ([`Event::Planned`]).
#[derive(Debug, Clone, Default)]
pub struct BatchInfo {
    pub total: usize,
    /// Input path of each job, by id.
    pub names: HashMap<usize, PathBuf>,
    /// Size of each job that will be transcoded, by id (skips and copies are absent).
    pub work: HashMap<usize, u64>,
}

/// Output settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportOptions {
    /// Draw bars (stderr is a terminal and not `--quiet`).
    pub bars: bool,
    pub quiet: bool,
    pub json: bool,
    pub verbose: u8,
    pub color: bool,
}

impl ReportOptions {
    pub fn detect(quiet: bool, json: bool, verbose: u8) -> Self {
        let tty = std::io::stderr().is_terminal();
        ReportOptions {
            bars: !quiet && tty,
            quiet,
            json,
            verbose,
            color: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

/// Totals at the end of a batch.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub total: usize,
    pub done: usize,
    pub skipped: usize,
    pub failed: usize,
    pub not_started: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub wall_seconds: f64,
}

/// One entry of the JSON report.
#[derive(Debug, Clone, Serialize)]
pub struct FileEntry {
    pub input: String,
    pub output: Option<String>,
    /// `done`, `skipped`, `failed`, or `not_started` (the batch was stopped first).
    pub status: &'static str,
    pub error: Option<String>,
    pub key: Option<String>,
    pub host: Option<String>,
    /// The worker image's ID on that engine (`sha256:...`), for outputs made in a container.
    pub image_id: Option<String>,
    pub seconds: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// What read the output back before it counted: `index` or `ffprobe`.
    pub checked_by: Option<&'static str>,
    /// Input streams the preset did not carry into the output, e.g. `subtitle (subrip)`.
    pub dropped: Vec<String>,
}

#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    files: &'a [FileEntry],
    summary: &'a Summary,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    jobs: HashMap<usize, ProgressBar>,
    /// Fraction done of each running job, to move the overall bar by.
    fraction: HashMap<usize, f64>,
    finished_bytes: u64,
}

impl Bars {
    fn new(info: &BatchInfo) -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let work: u64 = info.work.values().sum();
        let overall = multi.add(ProgressBar::new(work.max(1)));
        overall.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes}  {msg}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.enable_steady_tick(Duration::from_millis(250));
        Bars {
            multi,
            overall,
            jobs: HashMap::new(),
            fraction: HashMap::new(),
            finished_bytes: 0,
        }
    }

    fn update_overall(&self, info: &BatchInfo) {
        let running: f64 = self
            .fraction
            .iter()
            .map(|(id, f)| f * info.work.get(id).copied().unwrap_or(0) as f64)
            .sum();
        self.overall
            .set_position(self.finished_bytes + running as u64);
    }
}

/// Inputs smaller than this hash too fast to be worth a bar or a line.
const HASH_SHOWN_FROM: u64 = 64 << 20;

/// The plain lines an event of the batch's early phases prints (stderr), given the output
/// settings. In a terminal, hashing draws a bar instead of its line.
fn phase_lines(event: &Event, opts: ReportOptions) -> Vec<String> {
    match event {
        Event::Scanned {
            found,
            unusable,
            skipped,
        } if !opts.quiet => {
            let mut lines = vec![format!(
                "found {found} media file(s){}",
                if *unusable == 0 {
                    String::new()
                } else {
                    format!(", {unusable} unusable")
                }
            )];
            lines.extend(
                skipped
                    .iter()
                    .map(|s| format!("skipped {}", escape(&s.to_string()))),
            );
            lines
        }
        Event::Hashing { path, size } if shows_hashing(*size, opts) && !opts.bars => {
            vec![format!("hashing {} ({})", shown(path), human_bytes(*size))]
        }
        // Said even with `--quiet`: a run that seems to hang must say why.
        Event::WaitingForLock { holder, out } => vec![format!(
            "waiting for another isc-transcode run{} to finish with {}",
            holder
                .as_ref()
                .map(|h| format!(" (pid {})", escape(h)))
                .unwrap_or_default(),
            shown(out)
        )],
        Event::StaleTemps(n) if *n > 0 && !opts.quiet => vec![format!(
            "removed {n} temporary file(s) left by an interrupted run"
        )],
        _ => Vec::new(),
    }
}

fn shows_hashing(size: u64, opts: ReportOptions) -> bool {
    size > HASH_SHOWN_FROM && !opts.quiet
}

fn scan_spinner() -> ProgressBar {
    let s = ProgressBar::new_spinner();
    s.set_message("scanning inputs");
    s.enable_steady_tick(Duration::from_millis(120));
    s
}

fn hash_bar(path: &Path, size: u64) -> ProgressBar {
    let b = ProgressBar::new(size);
    b.set_style(
        ProgressStyle::with_template(
            "hashing {msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_message(shown(path));
    b
}

/// Consume events until the channel closes; print the end-of-run report if a batch was
/// planned.
pub async fn run(mut rx: UnboundedReceiver<Event>, opts: ReportOptions) -> Summary {
    let mut started = Instant::now();
    let mut info = BatchInfo::default();
    let mut planned = false;
    let mut summary = Summary::default();
    let mut entries: Vec<(usize, FileEntry)> = Vec::new();
    let mut bars: Option<Bars> = None;
    let mut spinner: Option<ProgressBar> = None;
    let mut hashing: Option<ProgressBar> = None;
    let job_style = ProgressStyle::with_template("  {prefix:32!} {bar:20} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("##-");
    let mut hosts: HashMap<usize, String> = HashMap::new();
    let mut last_pct: HashMap<usize, u64> = HashMap::new();

    while let Some(event) = rx.recv().await {
        // Printed once the event has cleared the spinner or bar it ends.
        let lines = phase_lines(&event, opts);
        match event {
            Event::Scanning => {
                if opts.bars {
                    spinner = Some(scan_spinner());
                }
            }
            Event::Scanned { .. } => {
                if let Some(s) = spinner.take() {
                    s.finish_and_clear();
                }
            }
            Event::Hashing { path, size } => {
                if opts.bars && shows_hashing(size, opts) {
                    hashing = Some(hash_bar(&path, size));
                }
            }
            Event::Hashed { done } => {
                if let Some(b) = &hashing {
                    b.set_position(done);
                }
            }
            Event::HashEnd => {
                if let Some(b) = hashing.take() {
                    b.finish_and_clear();
                }
            }
            Event::WaitingForLock { .. } | Event::StaleTemps(_) => {}
            Event::Planned { total, names, work } => {
                info = BatchInfo { total, names, work };
                summary.total = total;
                planned = true;
                started = Instant::now();
                if opts.bars {
                    bars = Some(Bars::new(&info));
                }
            }
            Event::Note(text) => note(&bars, &escape(&text)),
            Event::Detail(text) => {
                if opts.verbose >= 1 {
                    note(&bars, &escape(&text))
                }
            }
            Event::JobLog { id, line } => {
                if opts.verbose >= 2 {
                    let name = info.names.get(&id).map(|p| shown(p));
                    note(
                        &bars,
                        &format!("  {}: {}", name.unwrap_or_default(), escape(&line)),
                    );
                }
            }
            Event::Problem(p) => {
                summary.failed += 1;
                with_bars_hidden(&bars, || {
                    let _ = writeln!(
                        std::io::stderr(),
                        "{}  {}: {}",
                        paint(opts, "failed", 31),
                        shown(&p.path),
                        escape(&p.reason)
                    );
                });
                entries.push((
                    usize::MAX,
                    FileEntry {
                        input: p.path.display().to_string(),
                        output: None,
                        status: "failed",
                        error: Some(p.reason.clone()),
                        key: None,
                        host: None,
                        image_id: None,
                        seconds: 0.0,
                        bytes_in: 0,
                        bytes_out: 0,
                        checked_by: None,
                        dropped: vec![],
                    },
                ));
            }
            Event::Job(JobEvent::Started { id, host, transfer }) => {
                if opts.verbose >= 1 {
                    let name = info.names.get(&id).map(|p| shown(p));
                    note(
                        &bars,
                        &format!(
                            "started {} on {} ({})",
                            name.unwrap_or_default(),
                            escape(&host),
                            transfer.as_str()
                        ),
                    );
                }
                hosts.insert(id, host.clone());
                if let Some(b) = bars.as_mut() {
                    let bar = b.multi.insert_before(&b.overall, ProgressBar::new(1000));
                    bar.set_style(job_style.clone());
                    bar.set_prefix(short_name(info.names.get(&id)));
                    bar.set_message(format!(
                        "starting  {} ({})",
                        escape(&host),
                        transfer.as_str()
                    ));
                    b.jobs.insert(id, bar);
                }
            }
            Event::Job(JobEvent::Progress {
                id,
                progress,
                duration,
            }) => {
                let (pos, msg) = progress_line(&progress, duration);
                if let Some(pos) = pos {
                    // Never let a job's percent go backwards on screen.
                    let prev = last_pct.entry(id).or_insert(0);
                    *prev = (*prev).max(pos);
                }
                if let Some(b) = bars.as_mut() {
                    if let Some(bar) = b.jobs.get(&id) {
                        if let Some(p) = last_pct.get(&id) {
                            bar.set_position(*p);
                        }
                        let host = hosts.get(&id).map(String::as_str).unwrap_or("");
                        bar.set_message(format!("{msg}  {}", escape(host)));
                    }
                    if let Some(p) = last_pct.get(&id) {
                        b.fraction.insert(id, *p as f64 / 1000.0);
                        b.update_overall(&info);
                    }
                }
            }
            Event::Finished(result) => {
                match result.status {
                    Status::Done => summary.done += 1,
                    Status::Skipped => summary.skipped += 1,
                    Status::Failed | Status::Interrupted => summary.failed += 1,
                    Status::NotStarted => summary.not_started += 1,
                }
                if result.status == Status::Done {
                    summary.bytes_in += result.bytes_in;
                    summary.bytes_out += result.bytes_out;
                }
                if let Some(b) = bars.as_mut() {
                    if let Some(bar) = b.jobs.remove(&result.id) {
                        bar.finish_and_clear();
                        b.multi.remove(&bar);
                    }
                    b.fraction.remove(&result.id);
                    b.finished_bytes += info.work.get(&result.id).copied().unwrap_or(0);
                    b.update_overall(&info);
                    b.overall.set_message(format!(
                        "{}/{} files: {} done, {} skipped, {} failed",
                        summary.done + summary.skipped + summary.failed + summary.not_started,
                        info.total,
                        summary.done,
                        summary.skipped,
                        summary.failed
                    ));
                }
                print_result(&bars, &result, opts);
                entries.push((result.id, entry(&result)));
            }
        }
        for line in lines {
            note(&bars, &line);
        }
    }
    for b in [spinner, hashing].into_iter().flatten() {
        b.finish_and_clear();
    }
    if let Some(b) = bars.take() {
        b.overall.finish_and_clear();
        let _ = b.multi.clear();
    }
    if !planned {
        return summary;
    }
    summary.wall_seconds = started.elapsed().as_secs_f64();
    let line = summary_line(&summary);
    if opts.json {
        entries.sort_by_key(|(id, _)| *id);
        let files: Vec<FileEntry> = entries.into_iter().map(|(_, e)| e).collect();
        if !opts.quiet {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
        let doc = JsonReport {
            files: &files,
            summary: &summary,
        };
        match serde_json::to_string_pretty(&doc) {
            Ok(text) => {
                let _ = writeln!(std::io::stdout(), "{text}");
            }
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: cannot write the JSON report: {e}"
                );
            }
        }
    } else if !opts.quiet || summary.failed > 0 {
        let _ = writeln!(std::io::stdout(), "{line}");
    }
    summary
}

fn entry(r: &JobResult) -> FileEntry {
    FileEntry {
        input: r.input.display().to_string(),
        output: Some(r.output.display().to_string()),
        status: match r.status {
            Status::Done => "done",
            Status::Skipped => "skipped",
            Status::Failed | Status::Interrupted => "failed",
            Status::NotStarted => "not_started",
        },
        error: r.error.clone(),
        key: r.key.clone(),
        host: Some(r.host.clone()).filter(|h| !h.is_empty()),
        image_id: r.image_id.clone(),
        seconds: r.seconds,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        checked_by: r.checked_by.map(|c| c.as_str()),
        dropped: r.dropped.clone(),
    }
}

fn paint(opts: ReportOptions, word: &str, color: u8) -> String {
    let padded = format!("{word:<7}");
    if opts.color {
        format!("\x1b[{color}m{padded}\x1b[0m")
    } else {
        padded
    }
}

fn note(bars: &Option<Bars>, text: &str) {
    match bars {
        Some(b) => {
            let _ = b.multi.println(text);
        }
        None => {
            let _ = writeln!(std::io::stderr(), "{text}");
        }
    }
}

fn with_bars_hidden(bars: &Option<Bars>, f: impl FnOnce()) {
    match bars {
        Some(b) => b.multi.suspend(f),
        None => f(),
    }
}

/// Where the per-file lines go: stdout, except under `--json`, which owns stdout.
fn line_out(opts: ReportOptions, line: &str) {
    if opts.json {
        let _ = writeln!(std::io::stderr(), "{line}");
    } else {
        let _ = writeln!(std::io::stdout(), "{line}");
    }
}

fn print_result(bars: &Option<Bars>, r: &JobResult, opts: ReportOptions) {
    with_bars_hidden(bars, || match r.status {
        Status::Done => {
            if !opts.quiet {
                line_out(opts, &done_line(r, &paint(opts, "done", 32)));
            }
        }
        Status::Skipped => {
            // In a terminal a no-op re-run would scroll thousands of lines: the bar counts them.
            if !opts.quiet && (bars.is_none() || opts.verbose >= 1) {
                line_out(
                    opts,
                    &format!(
                        "{} {} -> {}  ({})",
                        paint(opts, "skipped", 2),
                        shown(&r.input),
                        shown(&r.output),
                        escape(r.note.as_deref().unwrap_or("done before"))
                    ),
                );
            }
        }
        Status::Failed | Status::Interrupted => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "{} {}: {}",
                paint(opts, "failed", 31),
                shown(&r.input),
                escape(r.error.as_deref().unwrap_or("unknown error"))
            );
            for line in &r.tail {
                let _ = writeln!(err, "  {}: {}", shown(&r.input), escape(line));
            }
        }
        Status::NotStarted => {
            if !opts.quiet {
                let _ = writeln!(std::io::stderr(), "not started  {}", shown(&r.input));
            }
        }
    });
}

/// The plain line for a finished file.
pub fn done_line(r: &JobResult, word: &str) -> String {
    if let Some(note) = &r.note {
        return format!(
            "{word} {} -> {}  ({}, no transcode)",
            shown(&r.input),
            shown(&r.output),
            escape(note)
        );
    }
    let speed = r
        .media_seconds
        .filter(|_| r.seconds > 0.0)
        .map(|m| format!("  {:.1}x", m / r.seconds))
        .unwrap_or_default();
    let dropped = if r.dropped.is_empty() {
        String::new()
    } else {
        format!("  dropped: {}", escape(&r.dropped.join(", ")))
    };
    format!(
        "{word} {} -> {}  {:.1} s  {} -> {}{speed}  {}{}{}{dropped}",
        shown(&r.input),
        shown(&r.output),
        r.seconds,
        human_bytes(r.bytes_in),
        human_bytes(r.bytes_out),
        escape(&r.host),
        // The image that made it: with several engines, the proof that one image ran them all.
        short_image(r.image_id.as_deref())
            .map(|id| format!(" image {id}"))
            .unwrap_or_default(),
        r.transfer
            .map(|t| format!(" ({})", t.as_str()))
            .unwrap_or_default()
    )
}

/// An image ID as `docker images` shows it: 12 hex digits, without `sha256:`.
fn short_image(id: Option<&str>) -> Option<String> {
    let id = id?;
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    Some(hex.chars().take(12).collect()).filter(|h: &String| !h.is_empty())
}

pub fn summary_line(s: &Summary) -> String {
    let mut parts = vec![
        format!("{} done", s.done),
        format!("{} skipped", s.skipped),
        format!("{} failed", s.failed),
    ];
    if s.not_started > 0 {
        parts.push(format!("{} not started", s.not_started));
    }
    format!(
        "summary: {} in {:.1} s ({} in, {} out)",
        parts.join(", "),
        s.wall_seconds,
        human_bytes(s.bytes_in),
        human_bytes(s.bytes_out)
    )
}

/// Bar position (per mille) and message for a progress block. Without a known duration there is
/// no honest percentage, so the message shows time and bytes instead.
pub fn progress_line(p: &Progress, duration: Option<f64>) -> (Option<u64>, String) {
    let t = p.out_time_us.map(|us| us as f64 / 1e6);
    let mut parts = Vec::new();
    let pos = match (t, duration) {
        (Some(t), Some(d)) if d > 0.0 => {
            let frac = if p.end { 1.0 } else { (t / d).clamp(0.0, 1.0) };
            parts.push(format!("{:>5.1}%", frac * 100.0));
            Some((frac * 1000.0) as u64)
        }
        _ => {
            if let Some(t) = t {
                parts.push(format!("{t:.1} s"));
            }
            if let Some(size) = p.total_size {
                parts.push(human_bytes(size));
            }
            None
        }
    };
    if let Some(speed) = p.speed {
        parts.push(format!("{speed:.2}x"));
    }
    if let Some(fps) = p.fps.filter(|f| *f > 0.0) {
        parts.push(format!("{fps:.0} fps"));
    }
    (pos, parts.join("  "))
}

fn short_name(p: Option<&PathBuf>) -> String {
    p.map(|p| shown(p.file_name().map(Path::new).unwrap_or(p)))
        .unwrap_or_default()
}

/// Whether a character must not reach a terminal as itself: C0 and C1 controls and DEL (line
/// breaks, ESC, CSI, BEL, backspace) and the invisible marks that reorder or hide text
/// (bidi overrides and isolates, zero-width joiners, the BOM).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

fn push_escaped(out: &mut String, c: char) {
    let _ = match c {
        '\n' => write!(out, "\\n"),
        '\r' => write!(out, "\\r"),
        '\t' => write!(out, "\\t"),
        c if (c as u32) < 0x80 => write!(out, "\\x{:02x}", c as u32),
        c => write!(out, "\\u{{{:x}}}", c as u32),
    };
}

/// Text made safe for one line of a terminal or a log: every control character and invisible
/// reordering mark shown as an escape (`\n`, `\x1b`, `\u{202e}`), the rest as it is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A path as shown on a terminal or in a log: like [`escape`], and bytes that are not UTF-8
/// shown as `\xNN` rather than all as the same replacement character.
pub fn shown(path: &Path) -> String {
    let mut out = String::with_capacity(path.as_os_str().len());
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        out.push_str(&escape(chunk.valid()));
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A size for people, in decimal units with one decimal place (`999 B`, `48.1 MB`), as `ls
/// --si` and file managers show sizes.
pub fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().si().to_string()
}

/// Fields of the daemon's text log, escaped like everything else that reaches a terminal: the
/// log names files that others named, and a newline or ESC in one must not forge a log line or
/// a colour. (The JSON log needs none of this: the encoder escapes.) Same layout as the
/// default: the message, then `name=value` pairs.
pub struct LogFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for LogFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: tracing_subscriber::fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut v = LogVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct LogVisitor<'w> {
    writer: tracing_subscriber::fmt::format::Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl tracing::field::Visit for LogVisitor<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let text = format!("{value:?}");
        self.result = if field.name() == "message" {
            write!(self.writer, "{sep}{}", escape(&text))
        } else {
            write!(self.writer, "{sep}{}={}", field.name(), escape(&text))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffmpeg::StderrParser;

    #[test]
    fn percent_needs_a_duration() {
        let p = Progress {
            out_time_us: Some(1_000_000),
            total_size: Some(2_000_000),
            speed: Some(2.0),
            ..Default::default()
        };
        let (pos, msg) = progress_line(&p, Some(4.0));
        assert_eq!(pos, Some(250));
        assert!(msg.contains("25.0%"), "{msg}");
        let (pos, msg) = progress_line(&p, None);
        assert_eq!(pos, None);
        assert!(!msg.contains('%'), "{msg}");
        assert!(msg.contains("2.0 MB") && msg.contains("1.0 s"), "{msg}");
    }

    /// Real stderr of `ffmpeg -nostats -progress pipe:2`, captured from the worker image
    /// (ffmpeg 5.1, libx264 on a 12 s 640x360 clip).
    const CAPTURED: &str = include_str!("testdata/ffmpeg-progress-h264.txt");

    #[test]
    fn captured_progress_is_monotonic_and_ends_at_one_hundred() {
        let mut parser = StderrParser::new();
        let mut percents = Vec::new();
        // Feed in odd-sized chunks, as a pipe delivers them.
        for chunk in CAPTURED.as_bytes().chunks(37) {
            for p in parser.feed(chunk).progress {
                let (pos, msg) = progress_line(&p, parser.input.duration);
                percents.push(pos.expect("duration known, so a percent"));
                assert!(msg.contains('%'), "{msg}");
            }
        }
        for p in parser.finish().progress {
            percents.push(progress_line(&p, parser.input.duration).0.expect("pos"));
        }
        assert!(
            parser
                .input
                .duration
                .is_some_and(|d| (d - 12.0).abs() < 0.1)
        );
        assert!(percents.len() >= 5, "{percents:?}");
        assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
        assert_eq!(percents.last(), Some(&1000), "{percents:?}");
        assert!(percents[0] < 500);
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        assert_eq!(human_bytes(115_400), "115.4 kB");
        assert_eq!(human_bytes(1_720_000_000), "1.7 GB");
        assert_eq!(human_bytes(u64::MAX), "18.4 EB");
    }

    #[test]
    fn json_entry_maps_statuses() {
        let job = crate::job::JobSpec {
            id: 0,
            input: "a.mp4".into(),
            output: "out/a.mp4".into(),
            preset: std::sync::Arc::new(crate::preset::load("copy").expect("p")),
            size: 10,
            input_sha256: None,
            index_reserve: None,
        };
        let mut r = JobResult::without_run(&job, Status::Interrupted);
        r.error = Some("interrupted".into());
        let e = entry(&r);
        assert_eq!(e.status, "failed");
        assert_eq!(e.host, None);
        let r = JobResult::without_run(&job, Status::NotStarted);
        assert_eq!(entry(&r).status, "not_started");
        let text = serde_json::to_string(&entry(&r)).expect("json");
        for field in [
            "\"input\"",
            "\"output\"",
            "\"status\"",
            "\"error\"",
            "\"key\"",
            "\"host\"",
            "\"seconds\"",
            "\"bytes_in\"",
            "\"bytes_out\"",
        ] {
            assert!(text.contains(field), "{field} in {text}");
        }
    }

    #[test]
    fn the_done_line_and_the_json_entry_name_the_engine_and_its_image() {
        let job = crate::job::JobSpec {
            id: 0,
            input: "in/a.mp4".into(),
            output: "out/a.mp4".into(),
            preset: std::sync::Arc::new(crate::preset::load("h264").expect("h264")),
            size: 1000,
            input_sha256: None,
            index_reserve: None,
        };
        let mut r = JobResult::without_run(&job, Status::Done);
        r.host = "docker tcp://10.0.0.5:2376".into();
        r.transfer = Some(crate::job::Transfer::Pipe);
        assert!(done_line(&r, "done").ends_with("docker tcp://10.0.0.5:2376 (pipe)"));
        r.image_id = Some(format!("sha256:{}", "0123456789abcdef".repeat(4)));
        let line = done_line(&r, "done");
        assert!(
            line.ends_with("docker tcp://10.0.0.5:2376 image 0123456789ab (pipe)"),
            "{line}"
        );
        let e = entry(&r);
        assert_eq!(e.host.as_deref(), Some("docker tcp://10.0.0.5:2376"));
        assert_eq!(e.image_id, r.image_id);
    }

    #[test]
    fn the_done_line_names_what_was_dropped_and_only_then() {
        let job = crate::job::JobSpec {
            id: 0,
            input: "in/subs.mkv".into(),
            output: "out/subs.mp4".into(),
            preset: std::sync::Arc::new(crate::preset::load("h264").expect("h264")),
            size: 1000,
            input_sha256: None,
            index_reserve: None,
        };
        let mut r = JobResult::without_run(&job, Status::Done);
        assert!(!done_line(&r, "done").contains("dropped"));
        r.dropped = vec!["subtitle (subrip)".into(), "data (tmcd)".into()];
        let line = done_line(&r, "done");
        assert!(
            line.ends_with("  dropped: subtitle (subrip), data (tmcd)"),
            "{line}"
        );
        assert_eq!(entry(&r).dropped, r.dropped, "the JSON report says it too");
    }

    fn plain() -> ReportOptions {
        ReportOptions::default()
    }

    fn quiet() -> ReportOptions {
        ReportOptions {
            quiet: true,
            ..ReportOptions::default()
        }
    }

    fn scanned(unusable: usize) -> Event {
        Event::Scanned {
            found: 3,
            unusable,
            skipped: vec![crate::scan::ScanProblem {
                path: "in/link\n.mp4".into(),
                reason: "symlink to \"/etc/x\", outside the input folder \"in\"".into(),
            }],
        }
    }

    #[test]
    fn the_scan_says_what_it_found_and_what_it_left_out() {
        assert_eq!(
            phase_lines(&scanned(0), plain()),
            [
                "found 3 media file(s)",
                r#"skipped "in/link\n.mp4": symlink to "/etc/x", outside the input folder "in""#
            ]
        );
        assert_eq!(
            phase_lines(&scanned(2), plain())[0],
            "found 3 media file(s), 2 unusable"
        );
        assert!(phase_lines(&scanned(2), quiet()).is_empty());
        assert!(phase_lines(&Event::Scanning, plain()).is_empty());
    }

    #[test]
    fn only_big_inputs_say_they_are_hashed_and_a_terminal_draws_a_bar_instead() {
        let big = Event::Hashing {
            path: "in/big\x1b.mp4".into(),
            size: 70_000_000,
        };
        assert_eq!(
            phase_lines(&big, plain()),
            ["hashing in/big\\x1b.mp4 (70.0 MB)"]
        );
        let small = Event::Hashing {
            path: "in/small.mp4".into(),
            size: HASH_SHOWN_FROM,
        };
        assert!(phase_lines(&small, plain()).is_empty());
        assert!(phase_lines(&big, quiet()).is_empty());
        let tty = ReportOptions {
            bars: true,
            ..plain()
        };
        assert!(phase_lines(&big, tty).is_empty());
        assert!(shows_hashing(70_000_000, tty), "the bar is drawn instead");
        assert!(phase_lines(&Event::Hashed { done: 1 }, plain()).is_empty());
        assert!(phase_lines(&Event::HashEnd, plain()).is_empty());
    }

    #[test]
    fn waiting_for_the_lock_is_said_even_when_quiet() {
        let wait = |holder: Option<&str>| Event::WaitingForLock {
            holder: holder.map(Into::into),
            out: "web\nout".into(),
        };
        assert_eq!(
            phase_lines(&wait(Some("4242")), quiet()),
            ["waiting for another isc-transcode run (pid 4242) to finish with web\\nout"]
        );
        assert_eq!(
            phase_lines(&wait(None), plain()),
            ["waiting for another isc-transcode run to finish with web\\nout"]
        );
    }

    #[test]
    fn removed_temporary_files_are_counted_unless_there_are_none() {
        assert_eq!(
            phase_lines(&Event::StaleTemps(2), plain()),
            ["removed 2 temporary file(s) left by an interrupted run"]
        );
        assert!(phase_lines(&Event::StaleTemps(0), plain()).is_empty());
        assert!(phase_lines(&Event::StaleTemps(2), quiet()).is_empty());
    }

    #[tokio::test]
    async fn the_batch_is_known_from_its_plan_and_only_a_planned_batch_is_summed_up() {
        let job = crate::job::JobSpec {
            id: 1,
            input: "in/b.mp4".into(),
            output: "out/b.mp4".into(),
            preset: std::sync::Arc::new(crate::preset::load("copy").expect("p")),
            size: 10,
            input_sha256: None,
            index_reserve: None,
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for e in [
            Event::Scanning,
            scanned(0),
            Event::StaleTemps(0),
            Event::Planned {
                total: 2,
                names: HashMap::from([(0, "in/a.mp4".into()), (1, "in/b.mp4".into())]),
                work: HashMap::from([(0, 10)]),
            },
            Event::Finished(JobResult::without_run(&job, Status::Skipped)),
        ] {
            tx.send(e).expect("send");
        }
        drop(tx);
        let s = run(rx, quiet()).await;
        assert_eq!((s.total, s.skipped, s.done, s.failed), (2, 1, 0, 0));
        assert!(s.wall_seconds > 0.0, "timed from the plan");

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Event::Scanning).expect("send");
        drop(tx);
        let s = run(rx, quiet()).await;
        assert_eq!(s.total, 0);
        assert_eq!(s.wall_seconds, 0.0, "no plan, no end report");
    }

    #[test]
    fn names_cannot_forge_lines_or_colours() {
        use std::ffi::OsStr;
        let evil = Path::new("in/a\ndone    x.mp4 -> out/x.mp4\x1b[32m\r\u{202e}4pm.exe");
        let s = shown(evil);
        assert!(!s.chars().any(|c| c.is_control()), "{s}");
        assert_eq!(
            s,
            "in/a\\ndone    x.mp4 -> out/x.mp4\\x1b[32m\\r\\u{202e}4pm.exe"
        );
        let odd = Path::new(OsStr::from_bytes(b"caf\xe9 \xff.mp4"));
        assert_eq!(shown(odd), "caf\\xe9 \\xff.mp4");
        assert_eq!(shown(Path::new("plain/é clip.mp4")), "plain/é clip.mp4");
        assert!(matches!(escape("nothing odd"), Cow::Borrowed(_)));
        assert_eq!(escape("tab\there\u{9b}"), "tab\\there\\u{9b}");
    }

    #[test]
    fn every_plain_line_escapes_the_name_and_the_error() {
        let job = crate::job::JobSpec {
            id: 0,
            input: "in/a\nfailed  b.mp4\x1b[2J.mp4".into(),
            output: "out/a\n.mp4".into(),
            preset: std::sync::Arc::new(crate::preset::load("copy").expect("p")),
            size: 10,
            input_sha256: None,
            index_reserve: None,
        };
        let r = JobResult::without_run(&job, Status::Done);
        let line = done_line(&r, "done");
        assert_eq!(line.lines().count(), 1, "{line}");
        assert!(!line.contains('\x1b'), "{line}");
        assert!(line.contains("in/a\\nfailed  b.mp4\\x1b[2J.mp4"), "{line}");
        // The JSON report keeps the real name, escaped by serde.
        let text = serde_json::to_string(&entry(&r)).expect("json");
        let back: serde_json::Value = serde_json::from_str(&text).expect("valid json");
        assert_eq!(back["input"], "in/a\nfailed  b.mp4\x1b[2J.mp4");
    }
}
