//! `isc-transcode`: transcode media batches in locked-down ffmpeg containers on any Docker
//! engine, local or remote, as if ffmpeg ran here.
//!
//! The path a file takes through the modules:
//!
//! 1. [`cli`] mirrors the flags; [`config`] resolves them (preset loaded, engine named, defaults
//!    applied); [`app`] wires the run. Only the binary uses [`app`]: the services it shares with
//!    the daemon sit below both.
//! 2. [`preset`] loads what to make (ffmpeg arguments as an array, plus the checks an output
//!    must pass).
//! 3. [`scan`] finds the inputs (walking folders, never the output folder) and maps each to its
//!    output path, refusing collisions before any work starts.
//! 4. [`job`] holds the job's nouns, at the bottom of the graph so that everything else may use
//!    them: what a job is ([`job::JobSpec`]), what it reports while it runs ([`job::JobEvent`],
//!    [`job::Event`]), how it ended ([`job::JobResult`]) and why it failed ([`job::JobError`],
//!    with the [`job::ErrorKind`] that says whether another engine would do better).
//!    [`plan`] decides per input (skip, copy, follow, run). [`schedule`] is the dispatcher and
//!    the one producer of results: it settles skips and copies, owns the running jobs, the
//!    checks an output must pass, and signals. [`place`] holds the output folder's rules (lock,
//!    state folder, temporary names, publish = fsync + rename + folder fsync): inside the output
//!    folder, through no link, over nothing this tool did not write.
//! 5. [`exec`] holds the backends behind one small, object-safe trait: [`exec::docker`] streams
//!    each input into a container on a Docker engine and the output back; [`exec::local`] runs
//!    local ffmpeg; [`exec::fleet`] uses several engines as one backend (free slots, a job
//!    failed by its engine retried on another), the nodes of a Docker Swarm among them
//!    (`--swarm`: each worker a service, [`exec::connect`]); [`exec::transport`] decides how an engine may be
//!    reached (plain TCP only to loopback, TLS trusting only the given CA). [`media`] reads
//!    container layouts (where an MP4's index sits) to choose how the input travels.
//! 6. [`ffmpeg`] reads ffmpeg's stderr (input facts, progress, errors) and ffprobe's JSON;
//!    [`readback`] reads MP4 outputs back here from their index; [`verify`] decides whether an
//!    output is good enough to count.
//! 7. [`report`] is the one reporter, with three outputs: bars in a terminal, plain lines or a
//!    JSON document elsewhere, for the whole batch from the scan on; and, for the daemon
//!    ([`report::daemon`]), log records and metrics. [`show`] lays out what the one-shot
//!    commands print (presets, status, hashes, gc, the dry-run plan).
//!
//! Shared by the batch command and the daemon: [`exec::connect`] makes a backend ready from
//! [`exec::connect::EngineConfig`]s (connect, prepare each engine or find local ffmpeg, how
//! many jobs it runs at once) and hands it over as `Arc<dyn Backend>`; [`record`] records
//! finished outputs, each with the engine, image and ffmpeg that made it, in the [`state`]
//! store; [`copy`] gives a job a copy of an output that already exists for the same content.
//!
//! [`watch`] is the daemon (`isc-transcode watch`): it follows folders, takes each file once it
//! has stopped changing, keeps its queue in the [`state`] store, and runs the same
//! [`schedule`] job path one file at a time; [`metrics`] serves what it does to Prometheus.
//!
//! [`ladder`] makes a ladder preset's output, a folder of renditions for adaptive streaming:
//! the backend's archive taken apart confined to the job's folder, its playlists and segments
//! checked, the folder put in place as a whole.
//!
//! [`codec`] says what a stream is, whatever its container calls it, for [`verify`].
//!
//! [`fsopen`] is the one way an input is opened: never blocking, only a regular file.
//!
//! [`doctor`] checks the engines a run would use, and whether each is ready for a preset.
//!
//! [`error`] maps what can stop a run to the documented exit codes; [`backoff`] is the one rule
//! for pauses between retries.
//!
//! `fuzzing` lets the fuzz targets in `fuzz/` reach the crate's private parsers.

// The module docs are written for the people who work on the crate and read them with
// `cargo doc --document-private-items`: a public item may point at the private one that does
// the work.
#![allow(rustdoc::private_intra_doc_links)]

pub mod app;
pub mod backoff;
pub mod cli;
pub mod codec;
pub mod config;
pub mod copy;
pub mod doctor;
pub mod error;
pub mod exec;
pub mod ffmpeg;
pub mod fsopen;
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod image_sync;
pub mod job;
pub mod ladder;
pub mod media;
pub mod metrics;
pub mod place;
pub mod plan;
pub mod preset;
pub mod random;
pub mod readback;
pub mod record;
pub mod report;
pub mod scan;
pub mod schedule;
pub mod show;
pub mod state;
pub mod verify;
pub mod watch;
