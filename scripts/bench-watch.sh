#!/usr/bin/env bash
# Benchmark the watch daemon (`isc-transcode watch`) on the real engine:
#
# 1. Latency from a file settling to its job starting. Files are copied into a watched folder
#    one at a time (far enough apart that no job waits for a free slot); for each, the latency is
#    the "job started" log record's timestamp minus (the file's last write + --settle). Both
#    come from the daemon's JSON log: the record carries the file's mtime. Median and max.
# 2. CPU used by an idle daemon watching 10,000 files over 60 s, after its initial scan is done:
#    utime+stime from /proc/PID/stat before and after. The 10,000 files are tiny distinct
#    `.mp4` files in 100 folders that the state store records as done (rows written as a
#    finished run writes them, with their outputs in place), so the daemon keeps them as known
#    files exactly as it would after transcoding them. The CPU of the initial scan itself is
#    printed too.
# 3. CPU used over the same idle time by a daemon whose engine is away, so that it probes with
#    backoff instead of working: utime+stime as in 2, and how many probes it made.
#    a. Away from the start: `--backend docker -H unix://<tmp>/nothing.sock`, a socket path
#       with nothing listening. Measured from its first "does not answer" record on.
#    b. Gone after the start (if socat is installed): the engine is reached through a socat
#       proxy (UNIX-LISTEN to /var/run/docker.sock) that is killed once the initial scan is
#       done; a file dropped in then makes the daemon find the engine gone (an idle daemon
#       only learns it from a job). Measured from its "files stay queued" record on, with that
#       file queued.
# The integration tests assert what these runs do, never how long they take or what CPU they
# use: those figures are this script's.
#
# Usage: scripts/bench-watch.sh            (debug build; ISC_BENCH_PROFILE=release for release)
# Env:   ISC_BENCH_FILES   latency samples (default 8)
#        ISC_BENCH_IDLE    idle seconds, for 2 and 3 each (default 60)
#        ISC_BENCH_SETTLE  --settle for the latency part (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${ISC_BENCH_PROFILE:-debug}
n_files=${ISC_BENCH_FILES:-8}
idle=${ISC_BENCH_IDLE:-60}
settle=${ISC_BENCH_SETTLE:-2}
target=${CARGO_TARGET_DIR:-target}
if [ "$profile" = release ]; then
    cargo build --locked --release >&2
    bin="$target/release/isc-transcode"
else
    cargo build --locked >&2
    bin="$target/debug/isc-transcode"
fi
command -v python3 >/dev/null || { echo "bench-watch: needs python3" >&2; exit 1; }
docker image inspect "${ISC_IMAGE:-isc-ffmpeg:latest}" >/dev/null || { echo "bench-watch: run scripts/setup.sh first" >&2; exit 1; }

work=$(mktemp -d /var/tmp/isc-bench-watch.XXXXXX)
pid=
proxy=
# Stop the socat proxy: its forked children (one per connection) first, then itself.
stop_proxy() {
    [ -n "$proxy" ] || return 0
    pkill -KILL -P "$proxy" 2>/dev/null || true
    kill -KILL "$proxy" 2>/dev/null || true
    wait "$proxy" 2>/dev/null || true
    proxy=
}
cleanup() {
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    stop_proxy
    rm -rf "$work"
}
trap cleanup EXIT

# Wait until the daemon's log has a record with this message (the log may not exist yet: the
# daemon was just started in the background).
wait_log() {
    local log=$1 msg=$2 deadline=$((SECONDS + ${3:-120}))
    until grep -qs "\"message\":\"$msg\"" "$log"; do
        [ $SECONDS -lt $deadline ] || { echo "bench-watch: timed out waiting for '$msg'" >&2; cat "$log" >&2; exit 1; }
        sleep 0.2
    done
}

# utime+stime of a process, in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# --- 1. latency ---------------------------------------------------------------------------
mkdir -p "$work/lat/in"
log="$work/lat/log.json"
"$bin" watch "$work/lat/in" -o "$work/lat/out" -p copy --backend docker -j 2 \
    --settle "$settle" --log-format json 2>"$log" &
pid=$!
wait_log "$log" "initial scan done"
for i in $(seq 1 "$n_files"); do
    # Distinct content (a trailing `free` box), so each file is new work, not a copy.
    { cat samples/faststart.mp4; printf '\000\000\000\020free%08d' "$i"; } >"$work/lat/in/clip-$i.mp4"
    sleep $(( settle + 2 ))
done
deadline=$((SECONDS + 60))
until [ "$(grep -c '"message":"job done"' "$log")" -ge "$n_files" ]; do
    [ $SECONDS -lt $deadline ] || { echo "bench-watch: jobs did not finish" >&2; cat "$log" >&2; exit 1; }
    sleep 0.2
done
kill -TERM "$pid"; wait "$pid" || true; pid=
latency=$(python3 - "$log" "$settle" <<'EOF'
import json, sys, statistics
from datetime import datetime
log, settle = sys.argv[1], float(sys.argv[2])
lat = []
for line in open(log):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    if r.get("message") != "job started":
        continue
    ts = datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).timestamp()
    lat.append(ts - r["mtime_unix"] - settle)
print(f"{len(lat)} files: median {statistics.median(lat)*1000:.0f} ms, "
      f"max {max(lat)*1000:.0f} ms, min {min(lat)*1000:.0f} ms")
EOF
)

# --- 2. idle CPU with 10,000 known files ----------------------------------------------------
idle_dir="$work/idle"
mkdir -p "$idle_dir/in" "$idle_dir/out"
# Create the state database (schema and migrations) with a short first start.
"$bin" watch "$idle_dir/in" -o "$idle_dir/out" -p copy --backend docker --log-format json \
    2>"$idle_dir/first.log" &
pid=$!
wait_log "$idle_dir/first.log" "initial scan done"
kill -TERM "$pid"; wait "$pid" || true; pid=
fingerprint=$("$bin" presets copy | awk '/^fingerprint:/ { print $2 }')
python3 - "$idle_dir" "$fingerprint" <<'EOF'
import hashlib, os, sqlite3, sys, time
root, fp = sys.argv[1], sys.argv[2]
inp, out = os.path.join(root, "in"), os.path.join(root, "out")
db = sqlite3.connect(os.path.join(out, ".isc-transcode", "state.db"))
now = int(time.time())
rows_cache, rows_out = [], []
for d in range(100):
    os.makedirs(os.path.join(inp, f"d{d:03}"), exist_ok=True)
    os.makedirs(os.path.join(out, f"d{d:03}"), exist_ok=True)
    for f in range(100):
        rel = f"d{d:03}/f{f:03}.mp4"
        data = f"clip {rel}\n".encode()
        path = os.path.join(inp, rel)
        with open(path, "wb") as fh:
            fh.write(data)
        with open(os.path.join(out, rel), "wb") as fh:
            fh.write(b"out " + data)
        st = os.stat(path)
        sha = hashlib.sha256(data).hexdigest()
        key = hashlib.sha256(b"isc-transcode job v1\0" + sha.encode() + b"\0" + fp.encode()).hexdigest()
        rows_cache.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha))
        rows_out.append((rel, key, path, sha, len(data), len(data) + 4, "0" * 64, "copy", fp,
                         "isc-ffmpeg:latest", None, None, "bench", 0.1, now, 1))
db.executemany("INSERT INTO stat_cache VALUES (?,?,?,?,?)", rows_cache)
db.executemany("INSERT INTO outputs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows_out)
db.commit()
EOF
log="$idle_dir/log.json"
"$bin" watch "$idle_dir/in" -o "$idle_dir/out" -p copy --backend docker --log-format json 2>"$log" &
pid=$!
wait_log "$log" "initial scan done"
scan_ticks=$(ticks "$pid")
done_before=$(grep '"message":"initial scan done"' "$log" | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["done_before"])')
sleep 1
t0=$(ticks "$pid")
sleep "$idle"
t1=$(ticks "$pid")
started=$(grep -c '"message":"job started"' "$log" || true)
kill -TERM "$pid"; wait "$pid" || true; pid=
hz=$(getconf CLK_TCK)

# --- 3a. idle CPU, the engine away from the start ------------------------------------------
away_dir="$work/away"
mkdir -p "$away_dir/in"
log="$away_dir/log.json"
"$bin" watch "$away_dir/in" -o "$away_dir/out" -p copy --backend docker \
    -H "unix://$work/nothing.sock" --log-format json -v 2>"$log" &
pid=$!
wait_log "$log" "the Docker engine does not answer; retrying" 30
sleep 1
a0=$(ticks "$pid")
probes0=$(grep -c '"message":"the Docker engine does not answer; retrying"' "$log" || true)
sleep "$idle"
a1=$(ticks "$pid")
probes1=$(grep -c '"message":"the Docker engine does not answer; retrying"' "$log" || true)
kill -TERM "$pid"; wait "$pid" || true; pid=

# --- 3b. idle CPU, the engine gone after the start ------------------------------------------
gone=
if command -v socat >/dev/null; then
    gone_dir="$work/gone"
    mkdir -p "$gone_dir/in"
    sock="$work/proxy.sock"
    socat "UNIX-LISTEN:$sock,fork" UNIX-CONNECT:/var/run/docker.sock &
    proxy=$!
    deadline=$((SECONDS + 10))
    until [ -S "$sock" ]; do
        [ $SECONDS -lt $deadline ] || { echo "bench-watch: socat did not listen" >&2; exit 1; }
        sleep 0.1
    done
    log="$gone_dir/log.json"
    "$bin" watch "$gone_dir/in" -o "$gone_dir/out" -p copy --backend docker \
        -H "unix://$sock" --settle 1 --log-format json -v 2>"$log" &
    pid=$!
    wait_log "$log" "initial scan done"
    stop_proxy
    cp samples/faststart.mp4 "$gone_dir/in/queued.mp4"
    wait_log "$log" "the engine does not answer; files stay queued; reconnecting" 60
    sleep 1
    g0=$(ticks "$pid")
    gprobes0=$(grep -c '"message":"the engine still does not answer"' "$log" || true)
    sleep "$idle"
    g1=$(ticks "$pid")
    gprobes1=$(grep -c '"message":"the engine still does not answer"' "$log" || true)
    kill -TERM "$pid"; wait "$pid" || true; pid=
    gone="$g0 $g1 $((gprobes1 - gprobes0))"
fi

echo "bench-watch ($profile build, $(nproc) cores, engine $(docker version --format '{{.Server.Version}}'))"
echo "settle -> job started, beyond --settle $settle s: $latency"
python3 - "$scan_ticks" "$t0" "$t1" "$hz" "$idle" "$done_before" "$started" <<'EOF'
import sys
scan, t0, t1, hz, idle, done, started = (float(x) for x in sys.argv[1:])
print(f"start-up (connect, scan of 10,000 files, {int(done)} found done): "
      f"{scan / hz * 1000:.0f} ms CPU; jobs started: {int(started)}")
print(f"idle for {idle:.0f} s watching 10,000 files: {(t1 - t0) / hz * 1000:.0f} ms CPU "
      f"({(t1 - t0) / hz / idle * 100:.3f} % of one core)")
EOF
python3 - "$a0" "$a1" "$hz" "$idle" "$((probes1 - probes0))" "${gone:-}" <<'EOF'
import sys
a0, a1, hz, idle, probes = (float(x) for x in sys.argv[1:6])
def line(what, t0, t1, probes):
    print(f"idle for {idle:.0f} s, {what}: {(t1 - t0) / hz * 1000:.0f} ms CPU "
          f"({(t1 - t0) / hz / idle * 100:.3f} % of one core); probes: {int(probes)}")
line("engine away from the start", a0, a1, probes)
if sys.argv[6]:
    g0, g1, gprobes = (float(x) for x in sys.argv[6].split())
    line("engine gone after the start, one file queued", g0, g1, gprobes)
else:
    print("engine gone after the start: not measured (needs socat)")
EOF
