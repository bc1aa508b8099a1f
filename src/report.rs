//! The reporter: the only code that writes to the terminal.
//!
//! Jobs and the dispatcher send [`Event`]s; one task turns them into output. In a terminal that
//! means indicatif bars (an overall bar and one line per running job) with messages printed
//! above them, so bars never garble log lines. Anywhere else (cron, pipes, log files) it means
//! one plain line per finished file on stdout, with no escape codes, and a summary line.
//!
//! Failures go to stderr: one line naming the input and the cause, then ffmpeg's last meaningful
//! lines, each prefixed with the input's path so that interleaved batches stay readable.

use crate::exec::JobEvent;
use crate::ffmpeg::Progress;
use crate::schedule::{JobResult, Status};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// Everything the reporter is told.
#[derive(Debug, Clone)]
pub enum Event {
    Job(JobEvent),
    Finished(JobResult),
    /// A message for the user (goes above the bars, or to stderr).
    Note(String),
}

impl From<JobEvent> for Event {
    fn from(e: JobEvent) -> Self {
        Event::Job(e)
    }
}

/// What the reporter knows about the batch before it starts.
#[derive(Debug, Clone)]
pub struct BatchInfo {
    pub total: usize,
    pub total_bytes: u64,
    /// Display name (the input path) of each job, by id.
    pub names: HashMap<usize, PathBuf>,
}

/// Output settings.
#[derive(Debug, Clone, Copy)]
pub struct ReportOptions {
    /// Draw bars (stderr is a terminal and not `--quiet`).
    pub bars: bool,
    pub quiet: bool,
}

impl ReportOptions {
    pub fn detect(quiet: bool) -> Self {
        let bars = !quiet && std::io::stderr().is_terminal();
        ReportOptions { bars, quiet }
    }
}

/// Totals at the end of a batch.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub done: usize,
    pub skipped: usize,
    pub failed: usize,
    pub interrupted: usize,
    pub not_started: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    jobs: HashMap<usize, ProgressBar>,
}

/// Consume events until the channel closes.
pub async fn run(
    mut rx: UnboundedReceiver<Event>,
    info: BatchInfo,
    opts: ReportOptions,
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut bars = opts.bars.then(|| {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let overall = multi.add(ProgressBar::new(info.total as u64));
        overall.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {pos}/{len} files  {msg}  eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        overall.enable_steady_tick(Duration::from_millis(200));
        Bars {
            multi,
            overall,
            jobs: HashMap::new(),
        }
    });
    let job_style = ProgressStyle::with_template("  {prefix:30!} {bar:20} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("##-");

    while let Some(event) = rx.recv().await {
        match event {
            Event::Note(text) => note(&bars, &text),
            Event::Job(JobEvent::Started { id, host, transfer }) => {
                if let Some(b) = bars.as_mut() {
                    let bar = b.multi.insert_before(&b.overall, ProgressBar::new(1000));
                    bar.set_style(job_style.clone());
                    bar.set_prefix(short_name(info.names.get(&id)));
                    bar.set_message(format!("starting ({}, {host})", transfer.as_str()));
                    b.jobs.insert(id, bar);
                }
            }
            Event::Job(JobEvent::Progress {
                id,
                progress,
                duration,
            }) => {
                if let Some(bar) = bars.as_ref().and_then(|b| b.jobs.get(&id)) {
                    let (pos, msg) = progress_line(&progress, duration);
                    if let Some(pos) = pos {
                        bar.set_position(pos);
                    }
                    bar.set_message(msg);
                }
            }
            Event::Finished(result) => {
                match result.status {
                    Status::Done => summary.done += 1,
                    Status::Skipped => summary.skipped += 1,
                    Status::Failed => summary.failed += 1,
                    Status::Interrupted => summary.interrupted += 1,
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
                    b.overall.inc(1);
                    b.overall
                        .set_message(format!("{} done, {} failed", summary.done, summary.failed));
                }
                print_result(&bars, &result, opts);
            }
        }
    }
    if let Some(b) = bars.take() {
        b.overall.finish_and_clear();
        let _ = b.multi.clear();
    }
    if !opts.quiet || summary.failed > 0 {
        let line = summary_line(&summary, started.elapsed());
        let _ = writeln!(std::io::stdout(), "{line}");
    }
    summary
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

fn print_result(bars: &Option<Bars>, r: &JobResult, opts: ReportOptions) {
    with_bars_hidden(bars, || match r.status {
        Status::Done => {
            if !opts.quiet {
                let _ = writeln!(std::io::stdout(), "{}", done_line(r));
            }
        }
        Status::Skipped => {
            if !opts.quiet && bars.is_none() {
                let _ = writeln!(
                    std::io::stdout(),
                    "skipped {} -> {}  ({})",
                    r.input.display(),
                    r.output.display(),
                    r.note.as_deref().unwrap_or("done before")
                );
            }
        }
        Status::Failed => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "failed  {}: {}",
                r.input.display(),
                r.error.as_deref().unwrap_or("unknown error")
            );
            for line in &r.tail {
                let _ = writeln!(err, "  {}: {line}", r.input.display());
            }
        }
        Status::Interrupted | Status::NotStarted => {
            if !opts.quiet {
                let _ = writeln!(
                    std::io::stderr(),
                    "{}  {}",
                    r.status.as_str(),
                    r.input.display()
                );
            }
        }
    });
}

/// The plain line for a finished file.
pub fn done_line(r: &JobResult) -> String {
    if let Some(note) = &r.note {
        return format!(
            "done    {} -> {}  ({note}, no transcode)",
            r.input.display(),
            r.output.display()
        );
    }
    let speed = r
        .media_seconds
        .filter(|_| r.seconds > 0.0)
        .map(|m| format!("  {:.1}x", m / r.seconds))
        .unwrap_or_default();
    format!(
        "done    {} -> {}  {:.1} s  {} -> {}{speed}  {}{}",
        r.input.display(),
        r.output.display(),
        r.seconds,
        human_bytes(r.bytes_in),
        human_bytes(r.bytes_out),
        r.host,
        r.transfer
            .map(|t| format!(" ({})", t.as_str()))
            .unwrap_or_default()
    )
}

pub fn summary_line(s: &Summary, wall: Duration) -> String {
    let mut parts = vec![
        format!("{} done", s.done),
        format!("{} skipped", s.skipped),
        format!("{} failed", s.failed),
    ];
    if s.interrupted > 0 {
        parts.push(format!("{} interrupted", s.interrupted));
    }
    if s.not_started > 0 {
        parts.push(format!("{} not started", s.not_started));
    }
    format!(
        "summary: {} in {:.1} s ({} in, {} out)",
        parts.join(", "),
        wall.as_secs_f64(),
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
    p.map(|p| {
        p.file_name()
            .unwrap_or(p.as_os_str())
            .to_string_lossy()
            .into_owned()
    })
    .unwrap_or_default()
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Display a path relative to the working folder when it is under it.
pub fn display_path(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn end_block_is_one_hundred_percent() {
        let p = Progress {
            out_time_us: Some(1_960_000),
            end: true,
            ..Default::default()
        };
        assert_eq!(progress_line(&p, Some(2.0)).0, Some(1000));
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
