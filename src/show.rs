//! What the one-shot commands print: the preset list and a preset's detail, the state table of
//! `status`, the lines of `hash`, the counts of `gc`, and the plan of `--dry-run`.
//!
//! [`crate::app`] works out what to show and this module only lays it out, so the command layer
//! prints nothing itself and each output's format is in one place. A batch's own output (bars,
//! per-file lines, the summary) is the reporter's, in [`crate::report`].

use crate::preset::Preset;
use crate::report::{escape, human_bytes};
use crate::state::StatusReport;
use serde::Serialize;
use std::fmt::Display;
use std::io::Write;
use std::path::Path;

/// Print to stdout, as `print!` does, but a reader that went away (`isc-transcode presets |
/// head -1`) ends the process quietly with status 0, as ripgrep does, instead of the panic
/// `print!` gives: what is left to print has nobody to read it. Any other write error is
/// reported once on stderr, and the command goes on.
pub fn out(args: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
    }
}

/// `println!` through [`out`].
macro_rules! outln {
    () => { $crate::show::out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::show::out(format_args!("{}\n", format_args!($($arg)*))) };
}
pub(crate) use outln;

/// The built-in presets, one a line, and how to see one or bring one's own.
pub fn presets(list: &[Preset]) {
    for p in list {
        let ext = match p.is_ladder() {
            true => "/".to_string(),
            false => format!(".{}", p.extension),
        };
        outln!("{:<10} {:<6} {}", p.name, ext, p.description);
    }
    outln!("\nShow one: isc-transcode presets NAME. Use your own: --preset FILE.toml");
}

/// Everything about one preset, down to the ffmpeg command it runs.
pub fn preset(p: &Preset) {
    outln!("name:        {}", p.name);
    outln!("source:      {}", p.source);
    outln!("description: {}", p.description);
    match &p.ladder {
        Some(l) => outln!(
            "output:      a folder <stem>/ ({}; renditions {}; segments of {} s, keyframes every \
             {} s{})",
            p.format,
            l.renditions
                .iter()
                .map(|r| format!("{} at {} ({})", r.name(), r.bitrate, r.codec))
                .collect::<Vec<_>>()
                .join(", "),
            l.segment_seconds,
            l.keyframe_seconds,
            match (l.poster, l.sprite_seconds) {
                (true, Some(_)) => "; poster.jpg; sprites and thumbnails.vtt",
                (true, None) => "; poster.jpg",
                (false, Some(_)) => "; sprites and thumbnails.vtt",
                (false, None) => "",
            }
        ),
        None => outln!("output:      .{} ({})", p.extension, p.format),
    }
    outln!("transfer:    {:?}", p.transfer);
    outln!("fingerprint: {}", p.fingerprint());
    outln!("command:     {}", p.command_line());
}

/// `status` on an output folder that has no state store.
pub fn no_state(out: &Path) {
    outln!("no state recorded in {}", out.display());
}

/// `status`: outputs and bytes by preset with a total row, then the last failures.
pub fn status(store_path: &Path, st: &StatusReport) {
    outln!("state: {}", store_path.display());
    outln!(
        "{:<12} {:>8} {:>11} {:>10} {:>10} {:>10}",
        "preset",
        "outputs",
        "transcoded",
        "in",
        "out",
        "saved"
    );
    let (mut n, mut t, mut bin, mut bout) = (0, 0, 0, 0);
    for (preset, count, transcoded, bytes_in, bytes_out) in &st.by_preset {
        outln!(
            "{preset:<12} {count:>8} {transcoded:>11} {:>10} {:>10} {:>10}",
            human_bytes(*bytes_in),
            human_bytes(*bytes_out),
            human_bytes(bytes_in.saturating_sub(*bytes_out))
        );
        (n, t, bin, bout) = (n + count, t + transcoded, bin + bytes_in, bout + bytes_out);
    }
    outln!(
        "{:<12} {n:>8} {t:>11} {:>10} {:>10} {:>10}",
        "total",
        human_bytes(bin),
        human_bytes(bout),
        human_bytes(bin.saturating_sub(bout))
    );
    if st.failures.is_empty() {
        outln!("\nno failures recorded");
    } else {
        outln!("\nlast failures, newest first:");
        for (input, preset, error, at) in &st.failures {
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs((*at).max(0) as u64);
            outln!(
                "  {} {input} ({preset}): {error}",
                humantime::format_rfc3339_seconds(when)
            );
        }
    }
}

/// One line of `hash`, as `sha256sum` writes it.
pub fn hash(sha: &str, file: &Path) {
    outln!("{sha}  {}", file.display());
}

/// A file `hash` could not read.
pub fn hash_failed(file: &Path, error: &dyn Display) {
    eprintln!("error: cannot hash {}: {error}", file.display());
}

/// What `gc` removed from an engine; volumes only with `--all`.
pub fn gc(host: &str, containers: usize, volumes: Option<usize>) {
    outln!("removed {containers} container(s) from {host}");
    if let Some(v) = volumes {
        outln!("removed {v} library volume(s) from {host}");
    }
}

/// `gc --swarm`: the worker services removed from the swarm.
pub fn gc_services(manager: &str, services: usize) {
    outln!("removed {services} worker service(s) from the swarm at {manager}");
}

/// `gc --swarm`: a node whose engine is not known, so it was not cleaned.
pub fn gc_skipped(what: &str, why: &str) {
    eprintln!("isc-transcode: not cleaning {what}: it {why}");
}

/// `gc` on one engine of several that could not be cleaned.
pub fn gc_failed(host: &str, e: &dyn std::fmt::Display) {
    eprintln!("isc-transcode: cannot clean {host}: {e}");
}

/// One input of a dry run's plan.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub input: String,
    /// `None` for an input that could not be planned.
    pub output: Option<String>,
    /// `run`, `copy`, `skip` or `fail`.
    pub action: &'static str,
    pub reason: String,
}

/// The plan of `--dry-run`: one JSON document with `--json`, else a line per input and a
/// count of each action.
pub fn plan(steps: &[Step], json: bool) {
    if json {
        #[derive(Serialize)]
        struct Plan<'a> {
            plan: &'a [Step],
        }
        match serde_json::to_string_pretty(&Plan { plan: steps }) {
            Ok(t) => outln!("{t}"),
            Err(e) => eprintln!("error: cannot write the JSON plan: {e}"),
        }
    } else {
        for s in steps {
            outln!("{}", plan_line(s));
        }
        outln!("{}", plan_summary(steps));
    }
}

fn plan_line(s: &Step) -> String {
    match &s.output {
        Some(o) => format!(
            "{:<5} {} -> {}  ({})",
            s.action,
            escape(&s.input),
            escape(o),
            escape(&s.reason)
        ),
        None => format!(
            "{:<5} {}  ({})",
            s.action,
            escape(&s.input),
            escape(&s.reason)
        ),
    }
}

fn plan_summary(steps: &[Step]) -> String {
    let count = |a: &str| steps.iter().filter(|s| s.action == a).count();
    format!(
        "plan: {} to run, {} to copy, {} to skip, {} unusable (dry run: nothing was done)",
        count("run"),
        count("copy"),
        count("skip"),
        count("fail")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(input: &str, output: Option<&str>, action: &'static str, reason: &str) -> Step {
        Step {
            input: input.into(),
            output: output.map(Into::into),
            action,
            reason: reason.into(),
        }
    }

    #[test]
    fn plan_lines_align_the_action_and_escape_names() {
        assert_eq!(
            plan_line(&step("in/a.mp4", Some("out/a.mp4"), "run", "new content")),
            "run   in/a.mp4 -> out/a.mp4  (new content)"
        );
        assert_eq!(
            plan_line(&step("in/x\n.mp4", None, "fail", "cannot read")),
            "fail  in/x\\n.mp4  (cannot read)"
        );
    }

    #[test]
    fn the_plan_counts_each_action() {
        let steps = [
            step("a", Some("o/a"), "run", "new content"),
            step("b", Some("o/b"), "copy", "same content as a"),
            step("c", Some("o/c"), "skip", "done before"),
            step("d", Some("o/d"), "skip", "done before"),
            step("e", None, "fail", "gone"),
        ];
        assert_eq!(
            plan_summary(&steps),
            "plan: 1 to run, 1 to copy, 2 to skip, 1 unusable (dry run: nothing was done)"
        );
    }
}
