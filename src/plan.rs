//! Planning: which inputs need work, keyed on content, not on names or times.
//!
//! For each scanned input:
//! 1. Its identity (device, inode, size, mtime ns) is looked up in the stat cache. A hit gives
//!    its sha256 without opening the file, which is what makes a re-run over a finished batch
//!    cost a `stat` per file.
//! 2. On a miss, the file is hashed now only if the answer could change the decision: when some
//!    finished output has an input of the same size, or another input of this batch has the same
//!    size. Otherwise its content cannot have been done before, so it runs, and is hashed while
//!    it streams to the engine: one read instead of two.
//! 3. With a hash, the job key (content + preset fingerprint) decides:
//!    - recorded for this output path, and the output is still there with its recorded size
//!      (and sha256 under `--verify`): skip;
//!    - recorded for another output path whose file is intact (a renamed or copied input): copy
//!      that output (reflink, else hard link, else a copy), no transcode;
//!    - the same key as an earlier input of this batch: wait for it and copy its output;
//!    - otherwise: run.
//! 4. Whatever is to be written, a file already at the output path that the store does not
//!    record as this tool's output (or anything there but a regular file) makes the input a
//!    conflict instead: reported as failed, never overwritten, unless `--overwrite`. The rename
//!    that finishes each output checks again ([`crate::place`]).
//!
//! A hash goes into the stat cache only with the identity the file had before its bytes were
//! read, and only if that identity is the same after ([`hash::file_stable`]).

use crate::hash;
use crate::place::TEMP_PREFIX;
use crate::place::{self, Replace};
use crate::preset::Preset;
use crate::scan::{Planned, ScanProblem};
use crate::state::{FileStat, OutputRecord, StateError, Store};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// What to do with one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Done before, and the output is intact.
    Skip,
    /// The same content was done under another output path: copy that output.
    Copy {
        from: PathBuf,
        record: Box<OutputRecord>,
    },
    /// The same content as an earlier item of this plan: copy its output once it exists.
    Follow { primary: usize },
    /// Transcode.
    Run,
    /// Something not made by this tool stands at the output path: fail, write nothing.
    Conflict,
}

/// One input with its decision.
#[derive(Debug, Clone)]
pub struct Item {
    pub planned: Planned,
    pub stat: FileStat,
    /// Known before running (stat cache or hashed now); `None` means "hash while streaming".
    pub sha256: Option<String>,
    pub key: Option<String>,
    pub action: Action,
    /// Why, in a few words (for `--dry-run` and logs).
    pub why: String,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Ignore records: run everything.
    pub force: bool,
    /// Re-hash outputs before trusting them.
    pub verify: bool,
    /// Write nothing to the store (`--dry-run`).
    pub read_only: bool,
    /// Replace whatever stands at an output path (`--overwrite`).
    pub overwrite: bool,
    /// The store was just started afresh (`--rebuild-state`): a file at an output path that
    /// it does not know may be kept as the output if it holds the very same bytes.
    pub adopt: bool,
}

impl Action {
    /// The word `--dry-run` and `-v` show for it: a duplicate is a copy, a conflict a failure.
    pub fn word(&self) -> &'static str {
        match self {
            Action::Skip => "skip",
            Action::Copy { .. } | Action::Follow { .. } => "copy",
            Action::Run => "run",
            Action::Conflict => "fail",
        }
    }
}

/// Progress of the hashing phase.
#[derive(Debug, Clone)]
pub enum HashEvent {
    Start { path: PathBuf, size: u64 },
    Bytes { path: PathBuf, done: u64 },
    End { path: PathBuf },
}

/// Decide what to do with each input.
pub fn plan(
    scanned: Vec<Planned>,
    preset: &Preset,
    out_dir: &Path,
    store: &Store,
    opts: PlanOptions,
    on_hash: &mut dyn FnMut(HashEvent),
) -> Result<(Vec<Item>, Vec<ScanProblem>), StateError> {
    let fingerprint = preset.fingerprint();
    let mut problems = Vec::new();
    let mut items = Vec::with_capacity(scanned.len());
    for planned in scanned {
        match std::fs::metadata(&planned.input) {
            Ok(meta) => {
                let stat = FileStat::of(&meta);
                let sha256 = store.cached_hash(&stat)?;
                items.push(Item {
                    planned,
                    stat,
                    sha256,
                    key: None,
                    action: Action::Run,
                    why: String::new(),
                });
            }
            Err(e) => problems.push(ScanProblem {
                path: planned.input,
                reason: format!("cannot stat: {e}"),
            }),
        }
    }

    let done_sizes = if opts.force {
        HashSet::new()
    } else {
        store.done_input_sizes(&fingerprint)?
    };
    let mut batch_sizes: HashMap<u64, usize> = HashMap::new();
    for it in &items {
        *batch_sizes.entry(it.stat.size).or_default() += 1;
    }
    for it in items.iter_mut().filter(|it| it.sha256.is_none()) {
        let size = it.stat.size;
        let could_match =
            done_sizes.contains(&size) || batch_sizes.get(&size).is_some_and(|n| *n > 1);
        if !could_match || size == 0 {
            continue;
        }
        let path = it.planned.input.clone();
        on_hash(HashEvent::Start {
            path: path.clone(),
            size,
        });
        let result = hash::file_stable(&path, |done| {
            on_hash(HashEvent::Bytes {
                path: path.clone(),
                done,
            })
        });
        on_hash(HashEvent::End { path: path.clone() });
        match result {
            Ok((sha, Some(st))) if st == it.stat => {
                if !opts.read_only {
                    store.put_hash(&it.stat, &sha)?;
                }
                it.sha256 = Some(sha);
            }
            Ok(_) => {
                // Written while it was read: the hash describes neither version. Plan it with
                // what it is now, and hash it as it streams.
                if let Ok(meta) = std::fs::metadata(&path) {
                    it.stat = FileStat::of(&meta);
                }
            }
            Err(e) => {
                problems.push(ScanProblem {
                    path,
                    reason: format!("cannot read: {e}"),
                });
                it.action = Action::Skip;
                it.why = "unreadable".into();
            }
        }
    }
    items.retain(|it| it.why != "unreadable");

    let mut first_with_key: HashMap<String, usize> = HashMap::new();
    for i in 0..items.len() {
        let Some(sha) = items[i].sha256.clone() else {
            items[i].why = "new content".into();
            continue;
        };
        let key = hash::job_key(&sha, &fingerprint);
        items[i].key = Some(key.clone());
        if opts.force {
            items[i].action = Action::Run;
            items[i].why = "--force".into();
            continue;
        }
        let rel = relative(out_dir, &items[i].planned.output);
        let records = store.outputs_for_key(&key)?;
        let mine = records.iter().find(|r| r.output_path == rel);
        if let Some(r) = mine {
            match output_state(out_dir, r, opts.verify) {
                OutputState::Intact => {
                    items[i].action = Action::Skip;
                    items[i].why = "done before".into();
                    continue;
                }
                OutputState::Missing => items[i].why = "output missing".into(),
                OutputState::Altered => items[i].why = "output altered".into(),
            }
        }
        // A folder output (a ladder) is made again rather than copied from another one.
        let folders = preset.is_ladder();
        if let Some(src) = records
            .iter()
            .filter(|_| !folders)
            .filter(|r| r.output_path != rel)
            .find(|r| output_state(out_dir, r, opts.verify) == OutputState::Intact)
        {
            items[i].action = Action::Copy {
                from: out_dir.join(&src.output_path),
                record: Box::new(src.clone()),
            };
            items[i].why = format!("same content as {}", src.input_path.display());
            continue;
        }
        if let Some(&primary) = first_with_key.get(&key).filter(|_| !folders) {
            items[i].action = Action::Follow { primary };
            items[i].why = format!("same content as {}", items[primary].planned.input.display());
            continue;
        }
        first_with_key.insert(key, i);
        items[i].action = Action::Run;
        if items[i].why.is_empty() {
            items[i].why = if records.is_empty() {
                "new content".into()
            } else {
                "outputs gone".into()
            };
        }
    }
    refuse_conflicts(&mut items, out_dir, store, opts)?;
    Ok((items, problems))
}

/// What may stand at `output` for this run to put an output there (of `opts`, `overwrite` and
/// `adopt` count).
pub fn replaceable(
    store: &Store,
    out_dir: &Path,
    output: &Path,
    opts: PlanOptions,
) -> Result<Replace, StateError> {
    if opts.overwrite {
        return Ok(Replace::Anything);
    }
    let rel = relative(out_dir, output);
    Ok(match store.output_at(&rel)? {
        Some(_) => Replace::Ours,
        // Put in place by a run killed before it could record it: this tool's own, as long as
        // it still holds exactly the bytes that run claimed. Any other file stays untouchable.
        None if store
            .claim_at(&rel)?
            .is_some_and(|sha| content_sha256(output).is_some_and(|h| h == sha)) =>
        {
            Replace::Ours
        }
        None if opts.adopt => Replace::Identical,
        None => Replace::Nothing,
    })
}

/// Turn every item that would write over a file this tool did not make into a conflict. The
/// first item that was to copy a conflicting item's output runs in its place, and the others
/// follow that one.
fn refuse_conflicts(
    items: &mut [Item],
    out_dir: &Path,
    store: &Store,
    opts: PlanOptions,
) -> Result<(), StateError> {
    let mut stand_in: HashMap<usize, usize> = HashMap::new();
    for i in 0..items.len() {
        if let Action::Follow { primary } = items[i].action
            && let Some(&s) = stand_in.get(&primary)
        {
            items[i].action = Action::Follow { primary: s };
        }
        if items[i].action == Action::Skip {
            continue;
        }
        let output = items[i].planned.output.clone();
        let replace = replaceable(store, out_dir, &output, opts)?;
        if let Some(message) = place::conflict(&output, replace) {
            items[i].action = Action::Conflict;
            items[i].why = message;
        } else if let Action::Follow { primary } = items[i].action
            && items[primary].action == Action::Conflict
        {
            items[i].action = Action::Run;
            stand_in.insert(primary, i);
        }
    }
    Ok(())
}

/// An output path as recorded: relative to the output folder.
pub fn relative(out_dir: &Path, output: &Path) -> PathBuf {
    output
        .strip_prefix(out_dir)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| output.to_path_buf())
}

#[derive(Debug, PartialEq, Eq)]
enum OutputState {
    Intact,
    Missing,
    Altered,
}

/// The sha256 of what stands at `path`, as the state store records it: a file's own, or a
/// folder's manifest ([`crate::ladder::Manifest`]).
fn content_sha256(path: &Path) -> Option<String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => crate::ladder::Manifest::of_folder(path, true).map(|m| m.sha256()),
        Ok(m) if m.is_file() => hash::file(path, |_| {}).ok(),
        _ => None,
    }
}

/// Whether a recorded output still stands as recorded: a file at its recorded size, or a
/// ladder's folder with its files at their recorded total (under `verify`, their bytes hashed
/// too). The batch's plan and the watch daemon's scan judge outputs the same way.
pub fn output_intact(out_dir: &Path, rec: &OutputRecord, verify: bool) -> bool {
    output_state(out_dir, rec, verify) == OutputState::Intact
}

fn output_state(out_dir: &Path, rec: &OutputRecord, verify: bool) -> OutputState {
    let path = out_dir.join(&rec.output_path);
    match std::fs::symlink_metadata(&path) {
        // A folder output: its files, at their recorded total size (under --verify, their
        // manifest, with every file's bytes); a link in it is an alteration.
        Ok(m) if m.is_dir() => match crate::ladder::Manifest::of_folder(&path, verify) {
            Some(found)
                if found.bytes() == rec.output_size
                    && (!verify || found.sha256() == rec.output_sha256) =>
            {
                OutputState::Intact
            }
            _ => OutputState::Altered,
        },
        Ok(m) if m.is_file() && m.len() == rec.output_size => {
            if verify && hash::file(&path, |_| {}).ok().as_deref() != Some(&rec.output_sha256) {
                OutputState::Altered
            } else {
                OutputState::Intact
            }
        }
        Ok(_) => OutputState::Altered,
        Err(_) => OutputState::Missing,
    }
}

/// Put a copy of `from` at `to` atomically: a reflink where the filesystem can, else a hard link,
/// else a byte copy, under a temporary name that is then renamed into place. Both must lie in
/// the output folder `out_dir` and are reached through no link below it ([`place::open_dir`]);
/// `replace` says what may stand at `to`.
pub fn copy_output(
    from: &Path,
    to: &Path,
    out_dir: &Path,
    replace: Replace,
) -> std::io::Result<()> {
    let outside = |what: String| std::io::Error::other(place::PlaceError::Outside(what));
    if !std::fs::symlink_metadata(from)?.file_type().is_file() {
        return Err(outside(format!("{} is not a regular file", from.display())));
    }
    let (root, source) = (out_dir.canonicalize()?, from.canonicalize()?);
    if !source.starts_with(&root) {
        return Err(outside(format!(
            "{} resolves to {}",
            from.display(),
            source.display()
        )));
    }
    let dir = place::open_dir(out_dir, to.parent().unwrap_or(out_dir))?;
    let name = place::file_name(to)?;
    if let Some(conflict) = place::conflict(to, replace) {
        return Err(std::io::Error::other(conflict));
    }
    let linked = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .make_in(dir.path(), |p| {
            reflink_copy::reflink(from, p).or_else(|_| std::fs::hard_link(from, p))
        });
    let temp = match linked {
        Ok(t) => t.into_temp_path(),
        Err(_) => {
            let t = tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .tempfile_in(dir.path())?;
            std::fs::copy(from, t.path())?;
            t.as_file().sync_all()?;
            t.into_temp_path()
        }
    };
    let temp_name = place::file_name(&temp)?;
    if !dir.holds_file(&temp_name) {
        return Err(outside(format!(
            "{} was replaced while in use",
            dir.path().display()
        )));
    }
    dir.install(&temp_name, &name, replace)?;
    let _ = temp.keep();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(dir: &Path, name: &str, bytes: &[u8]) -> Planned {
        let input = dir.join("in").join(name);
        std::fs::create_dir_all(input.parent().expect("p")).expect("mkdir");
        std::fs::write(&input, bytes).expect("w");
        Planned {
            output: dir.join("out").join(name),
            input,
            root: None,
            size: bytes.len() as u64,
        }
    }

    fn record(store: &Store, out: &Path, item: &Item, output_bytes: &[u8]) {
        std::fs::create_dir_all(out).expect("mkdir");
        std::fs::write(&item.planned.output, output_bytes).expect("w");
        let sha = item
            .sha256
            .clone()
            .unwrap_or_else(|| hash::file(&item.planned.input, |_| {}).expect("h"));
        store
            .record(&OutputRecord {
                output_path: relative(out, &item.planned.output),
                key: hash::job_key(&sha, &crate::preset::load("copy").expect("p").fingerprint()),
                input_path: item.planned.input.clone(),
                input_sha256: sha.clone(),
                input_size: item.stat.size,
                output_size: output_bytes.len() as u64,
                output_sha256: hash::file(&item.planned.output, |_| {}).expect("h"),
                preset_name: "copy".into(),
                preset_fingerprint: crate::preset::load("copy").expect("p").fingerprint(),
                image: None,
                image_id: None,
                ffmpeg_version: None,
                host: "test".into(),
                seconds: 0.1,
                transcoded: true,
            })
            .expect("record");
        store.put_hash(&item.stat, &sha).expect("cache");
    }

    fn actions(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|i| match &i.action {
                Action::Skip => "skip".to_string(),
                Action::Run => "run".to_string(),
                Action::Copy { .. } => "copy".to_string(),
                Action::Follow { primary } => format!("follow {primary}"),
                Action::Conflict => "conflict".to_string(),
            })
            .collect()
    }

    #[test]
    fn decisions_follow_content() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        let store = Store::open(&out, false).expect("store");
        let preset = crate::preset::load("copy").expect("preset");
        let a = planned(t.path(), "a.mp4", b"aaaa");
        let b = planned(t.path(), "b.mp4", b"bbbbb");
        let mut hashed = Vec::new();
        let (items, _) = plan(
            vec![a.clone(), b.clone()],
            &preset,
            &out,
            &store,
            PlanOptions::default(),
            &mut |e| hashed.push(e),
        )
        .expect("plan");
        assert_eq!(actions(&items), ["run", "run"]);
        assert!(hashed.is_empty(), "new sizes need no hash before running");
        for it in &items {
            record(&store, &out, it, b"output");
        }

        let (items, _) = plan(
            vec![a.clone(), b.clone()],
            &preset,
            &out,
            &store,
            PlanOptions::default(),
            &mut |e| hashed.push(e),
        )
        .expect("plan");
        assert_eq!(actions(&items), ["skip", "skip"]);
        assert!(hashed.is_empty(), "stat cache answers");

        // A renamed input (same inode), a deleted output, and an altered output.
        let renamed_input = t.path().join("in/renamed.mp4");
        std::fs::rename(&a.input, &renamed_input).expect("mv");
        let renamed = Planned {
            input: renamed_input,
            output: out.join("renamed.mp4"),
            ..a.clone()
        };
        std::fs::remove_file(&b.output).expect("rm");
        let (items, _) = plan(
            vec![renamed, b.clone()],
            &preset,
            &out,
            &store,
            PlanOptions::default(),
            &mut |_| {},
        )
        .expect("plan");
        assert_eq!(actions(&items), ["copy", "run"]);
        assert_eq!(items[1].why, "output missing");
    }

    #[test]
    fn duplicates_in_one_batch_run_once_and_changed_bytes_run_again() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        let store = Store::open(&out, false).expect("store");
        let preset = crate::preset::load("copy").expect("preset");
        let a = planned(t.path(), "a.mp4", b"same bytes");
        let b = planned(t.path(), "b.mp4", b"same bytes");
        let c = planned(t.path(), "c.mp4", b"diff bytes");
        let mut starts = 0;
        let (items, _) = plan(
            vec![a, b, c.clone()],
            &preset,
            &out,
            &store,
            PlanOptions::default(),
            &mut |e| starts += usize::from(matches!(e, HashEvent::Start { .. })),
        )
        .expect("plan");
        assert_eq!(actions(&items), ["run", "follow 0", "run"]);
        assert_eq!(starts, 3, "equal sizes must be hashed to tell them apart");
        record(&store, &out, &items[2], b"out");

        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&c.input, b"diff byteZ").expect("w");
        let (items, _) = plan(
            vec![c],
            &preset,
            &out,
            &store,
            PlanOptions::default(),
            &mut |_| {},
        )
        .expect("plan");
        assert_eq!(actions(&items), ["run"]);
        assert_ne!(
            items[0].key, None,
            "same size as a done input: hashed up front"
        );
    }

    #[test]
    fn verify_catches_same_size_alteration_and_force_runs_all() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        let store = Store::open(&out, false).expect("store");
        let preset = crate::preset::load("copy").expect("preset");
        let a = planned(t.path(), "a.mp4", b"aaaa");
        let (items, _) = plan(
            vec![a.clone()],
            &preset,
            &out,
            &store,
            PlanOptions::default(),
            &mut |_| {},
        )
        .expect("plan");
        record(&store, &out, &items[0], b"output");
        std::fs::write(&a.output, b"OUTPUT").expect("alter");
        let plain = plan(
            vec![a.clone()],
            &preset,
            &out,
            &store,
            PlanOptions::default(),
            &mut |_| {},
        )
        .expect("plan")
        .0;
        assert_eq!(actions(&plain), ["skip"], "size alone cannot see it");
        let verified = plan(
            vec![a.clone()],
            &preset,
            &out,
            &store,
            PlanOptions {
                verify: true,
                ..Default::default()
            },
            &mut |_| {},
        )
        .expect("plan")
        .0;
        assert_eq!(actions(&verified), ["run"]);
        assert_eq!(verified[0].why, "output altered");
        let forced = plan(
            vec![a],
            &preset,
            &out,
            &store,
            PlanOptions {
                force: true,
                ..Default::default()
            },
            &mut |_| {},
        )
        .expect("plan")
        .0;
        assert_eq!(actions(&forced), ["run"]);
    }

    // Regression: a file at an output path that no record names was overwritten.
    #[test]
    fn a_file_the_tool_did_not_write_makes_a_conflict_unless_overwrite() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        let store = Store::open(&out, false).expect("store");
        let preset = crate::preset::load("copy").expect("preset");
        let a = planned(t.path(), "a.mp4", b"aaaa");
        let b = planned(t.path(), "b.mp4", b"bbbbb");
        std::fs::write(&a.output, b"someone else's").expect("w");
        std::os::unix::fs::symlink("/etc/hostname", &b.output).expect("ln");
        let run = |opts| {
            plan(
                vec![a.clone(), b.clone()],
                &preset,
                &out,
                &store,
                opts,
                &mut |_| {},
            )
            .expect("plan")
            .0
        };
        let items = run(PlanOptions::default());
        assert_eq!(actions(&items), ["conflict", "conflict"]);
        assert!(
            items[0]
                .why
                .contains("output exists and was not made by isc-transcode")
                && items[0].why.contains("a.mp4"),
            "{}",
            items[0].why
        );
        let forced = run(PlanOptions {
            overwrite: true,
            ..Default::default()
        });
        assert_eq!(actions(&forced), ["run", "run"]);

        // Recorded as this tool's output (for older content of the input): replaced.
        std::fs::remove_file(&b.output).expect("rm");
        record(&store, &out, &items[0], b"made here");
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&a.input, b"AAAA").expect("edit");
        let items = plan(
            vec![a.clone()],
            &preset,
            &out,
            &store,
            PlanOptions::default(),
            &mut |_| {},
        )
        .expect("plan")
        .0;
        assert_eq!(actions(&items), ["run"]);
    }

    // A duplicate whose primary cannot write its output runs in its place.
    #[test]
    fn a_follower_of_a_conflict_runs_instead() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        let store = Store::open(&out, false).expect("store");
        let preset = crate::preset::load("copy").expect("preset");
        let a = planned(t.path(), "a.mp4", b"same");
        let b = planned(t.path(), "b.mp4", b"same");
        let c = planned(t.path(), "c.mp4", b"same");
        std::fs::create_dir_all(&out).expect("mkdir");
        std::fs::write(&a.output, b"theirs").expect("w");
        let items = plan(
            vec![a, b, c],
            &preset,
            &out,
            &store,
            PlanOptions::default(),
            &mut |_| {},
        )
        .expect("plan")
        .0;
        assert_eq!(actions(&items), ["conflict", "run", "follow 1"]);
    }

    // Regression: a hash taken while the file was being written went into the stat cache.
    #[test]
    fn a_hash_of_a_file_written_meanwhile_is_not_cached() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        let store = Store::open(&out, false).expect("store");
        let preset = crate::preset::load("copy").expect("preset");
        let big = vec![7u8; 3 << 20];
        let a = planned(t.path(), "a.mp4", &big);
        let b = planned(t.path(), "b.mp4", &big);
        let mut edited = false;
        let input = a.input.clone();
        let items = plan(
            vec![a, b],
            &preset,
            &out,
            &store,
            PlanOptions::default(),
            &mut |e| {
                if let HashEvent::Bytes { path, done } = e
                    && path == input
                    && done >= 1 << 20
                    && !edited
                {
                    edited = true;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    std::fs::write(&input, vec![8u8; 3 << 20]).expect("edit in place");
                }
            },
        )
        .expect("plan")
        .0;
        assert!(edited);
        let now = FileStat::of(&std::fs::metadata(&items[0].planned.input).expect("m"));
        assert_eq!(items[0].sha256, None, "hashed again while it streams");
        assert_eq!(items[0].stat, now, "planned with what it is now");
        assert_eq!(store.cached_hash(&now).expect("q"), None);
        assert!(items[1].sha256.is_some());
    }

    #[test]
    fn copy_output_is_atomic_and_equal() {
        let t = tempfile::tempdir().expect("tempdir");
        let from = t.path().join("a.mp4");
        std::fs::write(&from, b"payload").expect("w");
        let to = t.path().join("sub/b.mp4");
        copy_output(&from, &to, t.path(), Replace::Nothing).expect("copy");
        assert_eq!(std::fs::read(&to).expect("r"), b"payload");
        let err = copy_output(&from, &to, t.path(), Replace::Nothing).expect_err("taken");
        assert!(
            err.to_string().contains("was not made by isc-transcode"),
            "{err}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(t.path().join("sub"))
            .expect("ls")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty());
    }

    // Regression: a copy went through a symlinked sub-folder of out/ to wherever it pointed.
    #[test]
    fn copy_output_writes_through_no_link() {
        let t = tempfile::tempdir().expect("tempdir");
        let out = t.path().join("out");
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir_all(&out).expect("mkdir");
        std::fs::create_dir_all(&elsewhere).expect("mkdir");
        let from = out.join("a.mp4");
        std::fs::write(&from, b"payload").expect("w");
        std::os::unix::fs::symlink(&elsewhere, out.join("sub")).expect("ln");
        let err = copy_output(&from, &out.join("sub/b.mp4"), &out, Replace::Anything)
            .expect_err("refused");
        assert!(
            err.to_string().contains("outside the output folder"),
            "{err}"
        );
        std::fs::write(elsewhere.join("secret.mp4"), b"secret").expect("w");
        let err = copy_output(
            &out.join("sub/secret.mp4"),
            &out.join("c.mp4"),
            &out,
            Replace::Nothing,
        )
        .expect_err("refused");
        assert!(
            err.to_string().contains("outside the output folder"),
            "{err}"
        );
        assert!(!out.join("c.mp4").exists());
        assert_eq!(std::fs::read_dir(&elsewhere).expect("ls").count(), 1);
    }

    #[test]
    fn an_output_a_killed_run_put_in_place_but_never_recorded_is_ours_only_with_its_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).expect("mkdir");
        let store = Store::open(&out, false).expect("store");
        let opts = PlanOptions::default();
        let made = out.join("made.mp4");
        std::fs::write(&made, b"the output bytes").expect("write");
        let sha = hash::file(&made, |_| {}).expect("hash");
        // No record, no claim: someone else's file.
        assert_eq!(
            replaceable(&store, &out, &made, opts).expect("q"),
            Replace::Nothing
        );
        store.claim(Path::new("made.mp4"), &sha).expect("claim");
        assert_eq!(
            replaceable(&store, &out, &made, opts).expect("q"),
            Replace::Ours
        );
        // The user put other bytes there since: theirs again.
        std::fs::write(&made, b"the user's own file").expect("write");
        assert_eq!(
            replaceable(&store, &out, &made, opts).expect("q"),
            Replace::Nothing
        );
        // Recording an output at that path ends its claim.
        std::fs::write(&made, b"the output bytes").expect("write");
        store
            .record(&crate::state::OutputRecord {
                output_path: "made.mp4".into(),
                key: "k".into(),
                input_path: dir.path().join("in.mp4"),
                input_sha256: "i".into(),
                input_size: 1,
                output_size: 16,
                output_sha256: sha.clone(),
                preset_name: "copy".into(),
                preset_fingerprint: "f".into(),
                image: None,
                image_id: None,
                ffmpeg_version: None,
                host: "local".into(),
                seconds: 0.0,
                transcoded: true,
            })
            .expect("record");
        assert_eq!(store.claim_at(Path::new("made.mp4")).expect("q"), None);
        assert_eq!(
            replaceable(&store, &out, &made, opts).expect("q"),
            Replace::Ours
        );
    }
}
