//! Command-line flags, as clap sees them.
//!
//! These structs only mirror the flags; they do no I/O. [`crate::app`] turns them into a
//! validated plan.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const EXAMPLES: &str = "\
Examples:
  isc-transcode *.mp4                          H.264 MP4s of every MP4 here, into ./out
  isc-transcode ~/Videos -o /srv/web -p vp9    every media file under ~/Videos, as WebM
  isc-transcode clips/ -p copy --include '*.mov'
                                               remux only the .mov files to faststart MP4
  isc-transcode -H tcp://build1:2376 raw/      run the containers on another engine (TLS
                                               from DOCKER_TLS_VERIFY and DOCKER_CERT_PATH)
  isc-transcode --backend local a.mkv          use this machine's ffmpeg, no Docker
  isc-transcode talks/ -p hls -o /srv/web      an HLS ladder per file (1080p..360p, never
                                               upscaled): /srv/web/<stem>/master.m3u8
  isc-transcode presets                        list the presets
  isc-transcode presets h264                   show one, with its ffmpeg command line

Exit codes: 0 all done, 1 some files failed, 2 usage or configuration error,
3 another run holds the output folder (--no-wait), 4 --max-runtime left files undone,
130 interrupted.";

/// Transcode media in locked-down ffmpeg containers on any Docker engine, local or remote.
///
/// Inputs stream into an ffmpeg container and the result streams back into the output folder.
/// An output is written under a temporary name and only renamed into place after ffprobe
/// confirms it has the expected streams and the input's duration.
#[derive(Debug, Parser)]
#[command(
    name = "isc-transcode",
    version,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub run: RunArgs,
}

const WATCH_EXAMPLES: &str = "\
Examples:
  isc-transcode watch /srv/incoming -o /srv/web
        transcode every media file that lands in /srv/incoming (and its sub-folders) to H.264
        MP4 under /srv/web, each once it has stopped changing for 5 s
  isc-transcode watch /srv/cams /srv/phones -o /srv/web --settle 30 --on-success move:/srv/done
        slow network copies: wait 30 s of quiet; move each input to /srv/done once its output
        is checked and recorded (never overwriting anything there)
  isc-transcode watch ~/Downloads -p vp9 --on-success delete --metrics 127.0.0.1:9464 \\
        --log-format json
        delete inputs once done; Prometheus metrics at http://127.0.0.1:9464/metrics and a
        liveness check at /healthz; one JSON object per log line on stderr

What is taken: files with a media extension, once their size and mtime have not changed for
--settle. Temporary names (.part, .partial, .tmp, .crdownload, .download, a trailing ~) and
hidden files wait until they are renamed. The output folder is never watched.
On start every folder is scanned and unfinished files are queued; finished work (recorded in
OUT/.isc-transcode/state.db, keyed on content) is never done again, across restarts too.
Failed files are retried --retries times with growing pauses, then left alone until they change.

Stopping: SIGTERM or Ctrl-C stops taking work and gives running jobs --grace to finish, then
stops them and removes their containers; exit 0. A second signal leaves at once (exit 130),
still removing the containers. Configuration errors exit 2, a busy output folder with
--no-wait 3.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch folders and transcode every media file that lands in them, once it is complete.
    ///
    /// A daemon for folders that cameras, download tools, recorders or people copy into. A file
    /// is taken only once its size and mtime have stayed the same for --settle seconds, so
    /// nothing half-copied is ever processed; the queue lives in the state store, so a restart
    /// loses nothing and transcodes nothing twice. Logs go to stderr (--log-format json for log
    /// shippers). Takes every option of a plain run (preset, output folder, jobs, engine, ...).
    #[command(after_help = WATCH_EXAMPLES)]
    Watch(Box<WatchArgs>),
    /// List the presets, or show one with its resolved ffmpeg arguments.
    ///
    /// Example: `isc-transcode presets h264`, or `isc-transcode presets ./mine.toml` to check
    /// a preset file of your own.
    Presets {
        /// A built-in preset name or the path of a preset file.
        name: Option<String>,
    },
    /// Show what the state store of an output folder records: outputs by preset, the disk
    /// space they saved, and the last failures.
    ///
    /// Example: `isc-transcode status --out /srv/web`
    Status {
        /// The output folder.
        #[arg(short, long, value_name = "DIR", default_value = "out")]
        out: PathBuf,
        /// How many recent failures to list.
        #[arg(long, value_name = "N", default_value_t = 10)]
        failures: usize,
    },
    /// Print the sha256 of files the way `sha256sum` does: the content hash that job keys are
    /// made of. Example: `isc-transcode hash clip.mp4`
    Hash {
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove containers left on engines by isc-transcode runs that are no longer alive.
    ///
    /// Every run does this on the engines it uses; `gc` does it on demand, on each engine of
    /// -H and --hosts (else DOCKER_HOST, else the local socket). Exit 1 when an engine could
    /// not be cleaned while others were. Example: `isc-transcode gc -H tcp://build1:2376`,
    /// `isc-transcode gc --hosts engines.toml`
    Gc {
        #[command(flatten)]
        engine: EngineArgs,
        /// Remove every isc-transcode container on the engines, including those of live runs,
        /// and the library volumes.
        #[arg(long)]
        all: bool,
    },
    /// Check every engine a run would use, and whether each is ready for a preset.
    ///
    /// Each engine (-H, --hosts, else DOCKER_HOST, else the local socket) is checked at once
    /// with the others, a down one for at most a few seconds. It is pinged, asked for its
    /// version and the worker image, and, when it has the image, runs one short container (no
    /// network, the jobs' confinement) with `ffmpeg -encoders`. Nothing is pulled or left behind.
    #[command(after_help = DOCTOR_HELP)]
    Doctor {
        #[command(flatten)]
        engine: EngineArgs,
        /// The preset whose encoders each engine's image must have: a built-in name or a preset
        /// file. Example: `-p vp9`
        #[arg(short, long, value_name = "NAME|FILE", default_value = "h264")]
        preset: String,
        /// Jobs at once per engine, as a run would take it: shown as the slots of engines whose
        /// hosts-file entry names none [default: the engine's CPU count].
        #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        jobs: Option<u16>,
        /// Print one JSON document instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The worker image on the engines: `image sync` gives every engine the same image ID.
    Image {
        #[command(subcommand)]
        what: ImageCommand,
    },
}

const IMAGE_SYNC_EXAMPLES: &str = "\
Examples:
  isc-transcode image sync -H unix:///var/run/docker.sock -H tcp://build2:2376
        copy the local engine's worker image to build2 (TLS from DOCKER_TLS_VERIFY and
        DOCKER_CERT_PATH), unless build2 already has the same image ID
  isc-transcode image sync --hosts engines.toml --from tcp://build1:2376
        make every engine of the hosts file hold build1's image

The image streams from one engine's image export straight into the other's image load
(`docker save | docker load`: no registry, and no file on this machine), and the target
must then hold the very image ID of the source. Exit 0 when every engine has it, 1 when one
could not get it, 2 on a usage or configuration error.";

/// What `isc-transcode image` does.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Give every engine the worker image with the same image ID, copying it from the engine of
    /// --from, else the first engine that has it.
    ///
    /// A run over several engines does this by itself before work starts; this does it on
    /// demand, for example after rebuilding the image on one engine of an air-gapped fleet.
    #[command(after_help = IMAGE_SYNC_EXAMPLES)]
    Sync {
        #[command(flatten)]
        engine: EngineArgs,
        /// The engine to copy the image from (one of -H/--hosts, or another one, reached with
        /// the docker CLI's TLS environment) [default: the first engine that has the image].
        /// Example: `--from tcp://build1:2376`
        #[arg(long, value_name = "URL")]
        from: Option<String>,
    },
}

const DOCTOR_HELP: &str = "\
Columns:
  ENGINE     the engine's URL, as -H or the hosts file names it
  REACHABLE  yes when it answered a ping within 5 s
  API        the API version it answers at
  TLS        unix: a local socket; verified: TLS, the engine's certificate checked against your
             ca.pem only; tls: TLS configured, no handshake completed; loopback: plain TCP to
             this machine; insecure: plain TCP to another machine (--insecure); ssh: through
             ssh, the host key checked against known_hosts (refused when unknown)
  IMAGE      the worker image's short ID, or missing
  FFMPEG     the version of ffmpeg in the image
  ENCODERS   ok when the image's ffmpeg lists every encoder the preset names (-c:v libx264,
             -c:a aac, ...; copy needs none), else the missing ones
  SLOTS      jobs at once there: the hosts file's slots, else --jobs, else the engine's CPUs
  RTT        the median of 3 pings, in ms
  VERDICT    ready, or why not: down, refused, no image, missing encoder NAME, error
Each engine that is not ready gets a line under the table saying why.

Examples:
  isc-transcode doctor                             the default engine, for preset h264
  isc-transcode doctor --hosts engines.toml -p vp9 every engine of a fleet, for VP9
  isc-transcode doctor -H tcp://build1:2376 --json

Exit codes: 0 every engine is ready for the preset, 1 some engine is not, 2 usage or
configuration error (an unknown preset, a bad hosts file).";

/// How inputs reach a Docker engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransferChoice {
    /// Mount big files, and lone jobs', when the engine can see them; stream the rest.
    Auto,
    /// Always stream through the engine's API (works with any engine, near or far).
    Stream,
    /// Always bind-mount (the engine must run on this machine).
    Mount,
}

/// Where ffmpeg runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// A Docker engine; with none, exit (code 2) saying how to start one. Never this
    /// machine's ffmpeg: that is only ever chosen by name.
    Auto,
    /// Always a Docker engine; fail if none answers.
    Docker,
    /// This machine's ffmpeg and ffprobe, no containers.
    Local,
}

/// `--memory`'s default, 4 GiB (the flag's `default_value`, in bytes).
pub const DEFAULT_MEMORY: i64 = 4 << 30;

/// `--pids-limit`'s default.
pub const DEFAULT_PIDS: i64 = 512;

/// The engines a command talks to, and the worker image: shared by a run, the daemon, `doctor`
/// and `image sync`.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// ffmpeg worker image. Build it with `scripts/build-image.sh` (no registry needed) or
    /// `docker build -t isc-ffmpeg:latest docker/`.
    #[arg(
        long,
        value_name = "IMAGE",
        env = "ISC_IMAGE",
        default_value = "isc-ffmpeg:latest"
    )]
    pub image: String,

    /// Docker engine: unix:///path/to/docker.sock, tcp://host:port or `ssh://[user@]host[:port]`;
    /// repeat it to spread the batch over several engines. For TLS set DOCKER_TLS_VERIFY=1 (any
    /// value but empty) and DOCKER_CERT_PATH (ca.pem, cert.pem, key.pem), as for the docker CLI;
    /// the engine's certificate must chain to ca.pem, and the system's CAs are not trusted for
    /// it. Without TLS only loopback is reached, unless --insecure. ssh:// runs the system ssh
    /// and `docker system dial-stdio` on the far side (which needs the docker CLI, and a user
    /// that may use the engine); the host's key must already be in known_hosts: an unknown or
    /// changed key is refused, never added [default: DOCKER_HOST when neither -H nor --hosts is
    /// given, else unix:///var/run/docker.sock]. Example: `-H tcp://10.0.0.5:2376`, `-H
    /// ssh://deploy@build1`
    #[arg(short = 'H', long, value_name = "URL")]
    pub host: Vec<String>,

    /// A TOML file listing engines to spread the batch over, each an `[[engine]]` table with
    /// `url`, and optionally `slots` (jobs at once there), `tls = { ca, cert, key }`, for an
    /// ssh:// engine `ssh_key` (the only key it logs in with) and `known_hosts` (the file its
    /// host key must be in) (paths relative to the file), `labels` and `weight`. Engines of -H
    /// come first. Example: `--hosts engines.toml`
    #[arg(long, value_name = "FILE")]
    pub hosts: Option<PathBuf>,

    /// Allow a `tcp://` engine that is not on loopback without TLS. Off by default: the engine
    /// API runs containers as root, and without TLS anyone on the network path can read and
    /// rewrite it, so such an address is refused before anything is sent. Prefer TLS
    /// (DOCKER_TLS_VERIFY=1, DOCKER_CERT_PATH). Example: `-H tcp://10.0.0.5:2375 --insecure`
    #[arg(long)]
    pub insecure: bool,

    /// A docker CLI context (`docker context create`) whose engine joins the others, with its
    /// TLS files; `default` adds none. DOCKER_CONTEXT is used when no engine is named and
    /// DOCKER_HOST is unset. Example: `--context build2`
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,

    /// A Docker Swarm manager (unix://, tcp:// with TLS as for -H): the swarm's nodes are the
    /// engines. Each worker is a swarm service pinned to a node, with CPU and memory
    /// reservations, so the swarm admits it only where there is room; drained and down nodes
    /// get none. The bytes go through each node's own engine, named by the node label
    /// `io.isc-transcode.engine` (`docker node update --label-add
    /// io.isc-transcode.engine=tcp://10.0.0.5:2376 NODE`), with the same TLS files as the
    /// manager. Nodes' engines must run with `--bridge=none`: a swarm service cannot have
    /// network `none`. Example: `--swarm tcp://manager:2376`
    #[arg(long, value_name = "URL", conflicts_with_all = ["host", "hosts", "context"])]
    pub swarm: Option<String>,

    /// A swarm placement constraint every worker must meet, as `docker service create
    /// --constraint` takes it; repeat it for several (all must hold). Example:
    /// `--constraint node.labels.gpu!=true`
    #[arg(long, value_name = "EXPR", requires = "swarm")]
    pub constraint: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Files and/or folders to transcode. Folders are walked recursively; files in them are
    /// taken by media extension (mp4, mov, mkv, webm, avi, ts, mp3, wav, ...). Files named
    /// directly are taken whatever their extension. Example: `isc-transcode a.mp4 clips/`
    #[arg(value_name = "INPUT", required = true)]
    pub inputs: Vec<PathBuf>,

    /// Preset: a built-in name (h264, h265, vp9, av1, copy, 720p, aac, mp3, thumbnail; hls and
    /// dash make a streaming ladder, a folder OUT/STEM/ with master.m3u8) or the path of a
    /// preset TOML file. Example: `-p vp9`, `-p hls`, `-p ./presets/mine.toml`
    #[arg(short, long, value_name = "NAME|FILE", default_value = "h264")]
    pub preset: String,

    /// Output folder. A file found under an input folder D goes to
    /// `OUT/<path relative to D>/<stem>.<ext>`; a file named directly goes to `OUT/<stem>.<ext>`.
    /// The output folder is never scanned for inputs. Example: `-o /srv/media/web`
    #[arg(short, long, value_name = "DIR", default_value = "out")]
    pub out: PathBuf,

    /// Jobs at once per engine [default: the engine's CPU count]. Example: `-j 2`
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,

    #[command(flatten)]
    pub engine: EngineArgs,

    /// Where ffmpeg runs. `auto` (the default) and `docker` run it in containers on the engine
    /// of -H; with no engine answering, they stop (exit 2) and say how to start one. `local`
    /// runs this machine's ffmpeg and ffprobe on the inputs, with no container around them:
    /// choose it only for media you trust. Example: `--backend local`
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,

    /// Only take files matching this glob (repeatable). A glob without `/` matches the file
    /// name, one with `/` the path relative to the input folder. Example: `--include '*.mov'`
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,

    /// Skip files matching this glob (repeatable), same rules as --include.
    /// Example: `--exclude 'raw/**'`
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Follow symlinks found in input folders that lead outside the folder. Without it such a
    /// link is skipped with a message naming it and its target, so that whoever can write into
    /// an input folder cannot make a run read files elsewhere. Links named on the command line
    /// are always followed. [default: off] Example: `--follow` for media linked in from other
    /// disks
    #[arg(long)]
    pub follow: bool,

    /// Memory limit of each job container (memory and swap together), from 6m up, in binary
    /// units: k, m, g, t. Example: `--memory 2g`
    #[arg(long, value_name = "SIZE", default_value = "4g", value_parser = parse_memory)]
    pub memory: i64,

    /// Process limit of each job container, from 16 up: ffmpeg's threads count. Example:
    /// `--pids-limit 256`
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PIDS, value_parser = parse_pids)]
    pub pids_limit: i64,

    /// CPUs each job container may use, fractions allowed, at most 1024 [default: one job's
    /// share of the engine: its CPU count divided by the jobs at once]. Example: `--cpus 1.5`
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    pub cpus: Option<f64>,

    /// Stop a job that has run this long, however busy it looks, remove its container and count
    /// it failed [default: 10m plus 20 times the input's duration, as this machine reads it from
    /// an MP4's header or ffmpeg states it, and 10m when neither knows it; never more than 48h].
    /// `--stall-timeout` catches a job that stops; this one catches a job that never ends.
    /// Example: `--job-timeout 2h`
    #[arg(long, value_name = "DURATION", value_parser = parse_job_timeout)]
    pub job_timeout: Option<std::time::Duration>,

    /// How inputs reach a Docker engine. `auto` streams small files through the engine's API
    /// into warm worker containers, and bind-mounts (read-only, with a private output folder)
    /// files of 64 MiB or more, and any file whose job would otherwise start a worker that no
    /// later job could use (a lone file, the last ones of a batch), when the engine shares this
    /// machine's files: that saves moving every byte through the API twice. `stream` always
    /// streams; `mount` always mounts and fails a job the engine cannot mount for. An ssh://
    /// engine is on another machine and always streams (`mount` is refused with one).
    #[arg(long, value_enum, value_name = "HOW", default_value_t = TransferChoice::Auto)]
    pub transfer: TransferChoice,

    /// Print only failures and the summary.
    #[arg(short, long)]
    pub quiet: bool,

    /// More detail: -v shows each decision and job start, -vv also ffmpeg's own messages.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Write one JSON report to stdout at the end, and nothing else to stdout (per-file lines
    /// go to stderr). The schema is in the README. Example: `--json > report.json`
    #[arg(long)]
    pub json: bool,

    /// Show the plan (what would run, what would be skipped and why, where each output would go)
    /// and stop: no container is started and nothing is written.
    #[arg(long)]
    pub dry_run: bool,

    /// Start no new job after this long (e.g. 6h, 45m, 1h30m); running jobs finish, what is left
    /// is reported, and the exit code is 4. For night windows in cron.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_runtime: Option<std::time::Duration>,

    /// Stop a job that shows no progress for this long (no ffmpeg progress, no bytes moving),
    /// remove its container and count it as failed. Example: `--stall-timeout 10m`
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub stall_timeout: std::time::Duration,

    /// With several engines: how many other engines a file is tried on after the engine
    /// running it failed it or went away (its partial output is discarded each time; a file
    /// that fails the same way on two engines is not tried further). Not the daemon's
    /// `--retries`, which retries a failed file later: there this is `--engine-retries`.
    #[arg(long = "retries", value_name = "N", default_value_t = crate::exec::fleet::RETRIES)]
    pub engine_retries: usize,

    /// With several engines: when every one is down, how long files wait for one to answer
    /// before they fail. Example: `--engine-timeout 15m`
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub engine_timeout: std::time::Duration,

    /// Transcode even what the state store says is done.
    #[arg(long)]
    pub force: bool,

    /// Replace files already at output paths that this tool did not write. By default such a
    /// file (one the state store does not record as an output, or anything there that is not a
    /// regular file, such as a link) is never touched: its input is reported as failed with
    /// "output exists and was not made by isc-transcode", the others go on, and the exit code
    /// is 1; --dry-run lists it. A link at an output path is replaced, never followed.
    /// Example: `isc-transcode in/ -o web --overwrite` to redo a folder of older encodes.
    #[arg(long)]
    pub overwrite: bool,

    /// Re-hash recorded outputs before trusting them (slower; catches same-size corruption).
    #[arg(long)]
    pub verify: bool,

    /// If another run holds the output folder, exit at once (code 3) instead of waiting.
    /// Example for cron: `isc-transcode --no-wait /srv/in -o /srv/out`
    #[arg(long)]
    pub no_wait: bool,

    /// Move an unreadable state database aside (`state.db.old-*`) and start a new one.
    /// Outputs are kept; the new database learns them again as inputs are re-hashed.
    #[arg(long)]
    pub rebuild_state: bool,
}

/// What to do with an input once its output is checked and recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnSuccess {
    /// Leave it where it is.
    Keep,
    /// Delete it.
    Delete,
    /// Move it under this folder, keeping its path relative to the watched folder.
    Move(PathBuf),
}

/// Log line format of the watch daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

const WATCH_DIRS: &str = "Folders to watch, recursively. A file under DIR goes to \
    OUT/<path relative to DIR>/<stem>.<ext>. Example: `isc-transcode watch /srv/incoming`";
const WATCH_VERBOSE: &str = "More detail in the log: -v each decision, -vv also ffmpeg's own \
    messages. RUST_LOG overrides, e.g. RUST_LOG=isc_transcode=debug";
const WATCH_BACKEND: &str = "Where ffmpeg runs. `docker` waits at start, retrying with backoff, \
    until the engine answers; `auto` (the default) exits (code 2) when no engine answers at start, \
    saying how to start one. Both keep files queued through a later outage. Neither ever falls \
    back to this machine's ffmpeg: `local` runs it, with no container, on media you trust";

const WATCH_ENGINE_RETRIES: &str = "With several engines: how many other engines a file is \
    tried on at once after the engine running it failed it or went away (`run --retries`); a \
    file that still fails counts as one failure for --retries";

/// A run option whose meaning is different for the daemon: say so in both help forms.
fn retell(arg: clap::Arg, text: &'static str) -> clap::Arg {
    arg.help(text).long_help(text)
}

/// `isc-transcode watch`: the run options plus the daemon's own.
#[derive(Debug, Args)]
#[command(
    mut_arg("inputs", |a| retell(a, WATCH_DIRS).value_name("DIR")),
    mut_arg("quiet", |a| retell(a, "Log only warnings and errors")),
    mut_arg("verbose", |a| retell(a, WATCH_VERBOSE)),
    mut_arg("backend", |a| retell(a, WATCH_BACKEND)),
    mut_arg("json", |a| a.hide(true)),
    mut_arg("engine_retries", |a| retell(a, WATCH_ENGINE_RETRIES).long("engine-retries")),
    mut_arg("dry_run", |a| a.hide(true)),
    mut_arg("max_runtime", |a| a.hide(true)),
    mut_arg("follow", |a| a.hide(true)),
)]
pub struct WatchArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// A file is taken once its size and mtime have not changed for this long, in seconds
    /// (fractions allowed) or as a duration. Raise it for slow network copies that pause.
    /// Example: `--settle 30`
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub settle: Duration,

    /// What to do with an input once its output is checked and recorded: keep it, delete it,
    /// or move it to DIR (keeping its path below the watched folder, never overwriting a file
    /// there: a clash gets a " (1)" suffix). Never done after a failure.
    /// Example: `--on-success move:/srv/done`
    #[arg(long, value_name = "keep|delete|move:DIR", default_value = "keep", value_parser = parse_on_success)]
    pub on_success: OnSuccess,

    /// Serve Prometheus metrics at http://ADDR/metrics and a liveness check at /healthz
    /// (503 while the engine is down). A port alone listens on loopback only; give an address
    /// to listen elsewhere (`0.0.0.0:9464`: every interface, for a scraper on another host). At
    /// most 64 connections are served at once and idle ones are closed after 10 s.
    /// [default: off] Example: `--metrics 9464` (http://127.0.0.1:9464/metrics)
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = crate::metrics::parse_listen_addr)]
    pub metrics: Option<SocketAddr>,

    /// Scan the folders again this often, to catch files whose events were lost (inotify queue
    /// overflow, network filesystems). Example: `--rescan 1m`
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub rescan: Duration,

    /// Retry a failed file this many times, with growing pauses (10 s, 20 s, 40 s, ... at most
    /// 10 min); after that it stays failed until it changes.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,

    /// On SIGTERM or Ctrl-C, give running jobs this long to finish before stopping them. Match
    /// systemd's TimeoutStopSec to it (plus a little). Example: `--grace 2m`
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Parse `keep`, `delete` or `move:DIR`.
pub fn parse_on_success(s: &str) -> Result<OnSuccess, String> {
    match s {
        "keep" => Ok(OnSuccess::Keep),
        "delete" => Ok(OnSuccess::Delete),
        _ => match s.strip_prefix("move:") {
            Some(dir) if !dir.is_empty() => Ok(OnSuccess::Move(PathBuf::from(dir))),
            _ => Err(format!("{s:?} is not keep, delete or move:DIR")),
        },
    }
}

/// Parse seconds (`5`, `0.5`) or a duration (`30s`, `2m`).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) => Duration::try_from_secs_f64(v)
            .map_err(|_| format!("{s:?} is not a number of seconds >= 0")),
        Err(_) => parse_duration(s),
    }
}

/// Parse a duration such as `90s`, `45m` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 90s, 45m or 1h30m: {e}"))
}

/// Parse a size such as `512m` or `4g` (binary units), refusing what does not fit in 64 bits.
///
/// Not `bytesize`'s parser: it reads `4g` as 4 × 10^9, saturates instead of refusing sizes past
/// 64 bits, and takes fractions through a float.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (digits, unit) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        Some('t') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a size like 512m or 4g"));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{s:?} is too big to be a size"))
}

/// The smallest `--memory` the engine accepts.
pub const MIN_MEMORY: u64 = 6 << 20;

/// Parse `--memory`: a size of at least [`MIN_MEMORY`] that the engine's signed 64-bit field
/// holds.
pub fn parse_memory(s: &str) -> Result<i64, String> {
    let bytes = parse_size(s)?;
    if bytes < MIN_MEMORY {
        return Err(format!("{s:?} is too small: at least 6m"));
    }
    i64::try_from(bytes).map_err(|_| format!("{s:?} is too big to be a memory limit"))
}

/// The fewest processes `--pids-limit` allows: below that, ffmpeg's threads alone fail.
pub const MIN_PIDS: i64 = 16;

/// Parse `--pids-limit`: a whole number of at least [`MIN_PIDS`].
pub fn parse_pids(s: &str) -> Result<i64, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= MIN_PIDS => Ok(n),
        Ok(_) => Err(format!("{s:?} is too small: at least {MIN_PIDS}")),
        Err(_) => Err(format!("{s:?} is not a whole number of processes")),
    }
}

/// Most CPUs `--cpus` takes: more than any engine has, small enough to stay exact in the
/// engine's nano-CPU count.
pub const MAX_CPUS: f64 = 1024.0;

/// Parse `--cpus`: a number above 0 (at least a thousandth) and at most [`MAX_CPUS`].
pub fn parse_cpus(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && (0.001..=MAX_CPUS).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{s:?} is out of range: from 0.001 to {MAX_CPUS}")),
        Err(_) => Err(format!("{s:?} is not a number of CPUs like 1 or 1.5")),
    }
}

/// Parse `--job-timeout`: a duration of at least a second.
pub fn parse_job_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("{s:?} is too short: at least 1s"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_memory_default_is_the_flag_s_default() {
        let cli = Cli::try_parse_from(["isc-transcode", "a.mp4"]).expect("parse");
        assert_eq!(cli.run.memory, DEFAULT_MEMORY);
        assert_eq!(cli.run.pids_limit, DEFAULT_PIDS);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("12"), Ok(12));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("g").is_err());
        assert!(parse_size("+4g").is_err());
    }

    // Regression: `--memory 17179869185g` wrapped around to 1 GiB (2^34 + 1 shifted by 30).
    #[test]
    fn limits_refuse_zero_negatives_and_overflow() {
        assert_eq!(parse_memory("4g"), Ok(4 << 30));
        assert_eq!(parse_memory("6m"), Ok(6 << 20));
        for bad in ["0", "-1g", "5m", "17179869185g", "8589934592g", "16777216t"] {
            assert!(parse_memory(bad).is_err(), "{bad} accepted");
        }
        assert!(
            parse_memory("17179869185g")
                .expect_err("overflow")
                .contains("too big")
        );
        assert_eq!(parse_pids("512"), Ok(512));
        for bad in ["0", "-1", "15", "9223372036854775808", "ten"] {
            assert!(parse_pids(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(parse_cpus("1.5"), Ok(1.5));
        for bad in ["0", "-1", "NaN", "inf", "1025", "1e300"] {
            assert!(parse_cpus(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_job_timeout("500ms").is_err());
        assert_eq!(parse_job_timeout("2h"), Ok(Duration::from_secs(7200)));
        let cli = Cli::try_parse_from(["isc-transcode", "a.mp4", "--memory", "17179869185g"]);
        assert!(cli.is_err(), "the flag takes the parser");
        // Regression (fuzz target cli_values): sizes past 16 EiB wrapped around instead of
        // failing; 17179869185g was 1 GiB.
        assert!(parse_size("17179869185g").is_err());
        assert!(parse_size("1222222222222222m").is_err());
        assert_eq!(parse_size("17179869183g"), Ok(17179869183 << 30));
    }

    #[test]
    fn inputs_and_subcommand() {
        let cli =
            Cli::try_parse_from(["isc-transcode", "a.mp4", "-p", "vp9", "-j", "2"]).expect("parse");
        assert_eq!(cli.run.inputs, [PathBuf::from("a.mp4")]);
        assert_eq!(cli.run.preset, "vp9");
        assert_eq!(cli.run.jobs, Some(2));
        let cli = Cli::try_parse_from(["isc-transcode", "presets", "h264"]).expect("parse");
        assert!(matches!(cli.command, Some(Command::Presets { name: Some(n) }) if n == "h264"));
        assert!(Cli::try_parse_from(["isc-transcode"]).is_err());
        assert!(Cli::try_parse_from(["isc-transcode", "a.mp4", "-j", "0"]).is_err());
    }

    #[test]
    fn watch_takes_run_options_and_its_own() {
        let cli = Cli::try_parse_from([
            "isc-transcode",
            "watch",
            "in",
            "-o",
            "web",
            "-p",
            "copy",
            "--settle",
            "1.5",
            "--on-success",
            "move:/srv/done",
            "--metrics",
            "127.0.0.1:9464",
        ])
        .expect("parse");
        let Some(Command::Watch(w)) = cli.command else {
            panic!("not watch");
        };
        assert_eq!(w.run.inputs, [PathBuf::from("in")]);
        assert_eq!(w.run.out, PathBuf::from("web"));
        assert_eq!(w.settle, Duration::from_millis(1500));
        assert_eq!(w.on_success, OnSuccess::Move(PathBuf::from("/srv/done")));
        assert_eq!(w.grace, Duration::from_secs(30));
        assert_eq!(w.retries, 3);
        assert!(parse_on_success("move:").is_err());
        assert!(parse_on_success("trash").is_err());
        assert_eq!(parse_seconds("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_seconds("-1").is_err());
    }

    #[test]
    fn metrics_take_a_port_on_loopback_or_an_address() {
        let parse = |a: &str| {
            let cli = Cli::try_parse_from(["isc-transcode", "watch", "in", "--metrics", a])
                .map_err(|e| e.to_string())?;
            match cli.command {
                Some(Command::Watch(w)) => Ok(w.metrics),
                _ => Err("not watch".to_string()),
            }
        };
        let addr = |s: &str| Some(s.parse::<SocketAddr>().expect("addr"));
        assert_eq!(parse("9464"), Ok(addr("127.0.0.1:9464")));
        assert_eq!(parse("0.0.0.0:9464"), Ok(addr("0.0.0.0:9464")));
        assert_eq!(parse("[::1]:9464"), Ok(addr("[::1]:9464")));
        let err = parse("everywhere").expect_err("refused");
        assert!(err.contains("is not a port (9464, on loopback)"), "{err}");
        assert!(parse("70000").is_err());
    }
}
