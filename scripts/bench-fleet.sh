#!/usr/bin/env bash
# Fleet benchmark on three test hosts (scripts/fleet-hosts.sh: network namespaces, each with its
# own dockerd on TLS), two slots each.
#
#   1. Scheduling efficiency. The jobs are latency-bound (scripts/bench-fleet-realtime.toml reads
#      its input at native frame rate, -re), so that the machine's two cores are not what limits
#      six jobs at once. FILES (default 18) clips of CLIP seconds (default 4), all different,
#      run as one batch over 3 engines x 2 slots. Total work is FILES x the median time of one
#      job run alone (SINGLES runs of one file, default 3, as the JSON report times a job); the
#      ideal batch time is total work / 6, and the efficiency is ideal / measured wall time
#      (the target: the batch takes at most 15 % longer than ideal, efficiency >= 0.87). The
#      batch's own sum of job times / 6 is shown too.
#   2. Failover. Three clips of FAIL_CLIP seconds (default 30) run one per engine; once ffmpeg
#      works on host 2 its dockerd is SIGKILLed. Measured from the kill: when the run says it
#      gave the job up there (its "-v" log, read as it comes) and when ffmpeg for it runs on
#      another host (polled with `docker top` over the hosts' unix sockets every 0.2 s). Target:
#      under 10 s with the default settings.
#   3. Cut link ("cut"): as 2, but host 2's link is taken down (its veth), its engine and ffmpeg
#      go on unseen; then the link returns and the containers the run left there are counted
#      before and after the next run on that engine (which removes them).
#
# With SWARM=1 the three hosts are made one Docker Swarm (fleet-hosts.sh swarm: host 1 the
# manager) and every run goes through `--swarm` with `-j 2` instead of a hosts file: the same
# workload and the same measures, on workers that are swarm services.
#
# Usage: scripts/bench-fleet.sh [WORKDIR]     (default /var/tmp/isc-bench-fleet; removed at the end)
#   ISC_BIN=path   the binary to time (default: cargo build --release --locked, then a copy)
#   NET=K          the /27 of the test range for the hosts (default 6; see fleet-hosts.sh)
#   WHAT="efficiency failover cut"   which parts to run
#   SWARM=1        the hosts as a swarm, the runs with --swarm
# Nothing is sent to any address but the test hosts and loopback.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/var/tmp/isc-bench-fleet}
FILES=${FILES:-18}
CLIP=${CLIP:-4}
SINGLES=${SINGLES:-3}
FAIL_CLIP=${FAIL_CLIP:-30}
NET=${NET:-6}
WHAT=${WHAT:-efficiency failover cut}
PRESET=$REPO/scripts/bench-fleet-realtime.toml
HOSTS=$WORK/hosts

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s.%N; }

mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
cleanup() {
    "$REPO/scripts/fleet-hosts.sh" down "$HOSTS" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "${ISC_BIN:-}" ]; then
    [ -x "$ISC_BIN" ] || die "ISC_BIN=$ISC_BIN is not an executable"
    cp "$ISC_BIN" "$WORK/isc-transcode"
else
    log "building: cargo build --release --locked"
    (cd "$REPO" && cargo build --release --locked) >"$WORK/build.log" 2>&1 ||
        die "the build failed: $WORK/build.log"
    cp "$REPO/target/release/isc-transcode" "$WORK/isc-transcode"
fi
BIN=$WORK/isc-transcode

log "bringing up 3 test hosts (net $NET)"
"$REPO/scripts/fleet-hosts.sh" up "$HOSTS" 3 --net "$NET" >"$WORK/hosts.env"
val() { sed -n "s/^$1=//p" "$WORK/hosts.env"; }
CERTS=$(val CERTS)
hosts_file() { # hosts_file SLOTS -> path
    local f=$WORK/engines-$1.toml i
    : >"$f"
    for i in 1 2 3; do
        printf '[[engine]]\nurl = "%s"\nslots = %s\ntls = { ca = "%s/ca.pem", cert = "%s/cert.pem", key = "%s/key.pem" }\n\n' \
            "$(val "HOST$i")" "$1" "$CERTS" "$CERTS" "$CERTS" >>"$f"
    done
    echo "$f"
}
FILE2=$(hosts_file 2)
SWARM=${SWARM:-}
if [ -n "$SWARM" ]; then
    log "making the hosts one swarm"
    "$REPO/scripts/fleet-hosts.sh" swarm "$HOSTS" >>"$WORK/hosts.env"
fi

# tool ARGS...: the binary, on the three engines with 2 slots each: through the hosts file, or
# the swarm's manager (over TLS with the test hosts' client certificate).
tool() {
    if [ -n "$SWARM" ]; then
        env -u DOCKER_HOST -u ISC_IMAGE DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH="$CERTS" \
            "$BIN" "$@" --swarm "$(val MANAGER)" -j 2
    else
        env -u DOCKER_HOST -u DOCKER_TLS_VERIFY -u DOCKER_CERT_PATH -u ISC_IMAGE \
            "$BIN" "$@" --hosts "$FILE2"
    fi
}

# make_clips DIR COUNT SECONDS FIRST: all different (a number in the picture's noise seed).
make_clips() {
    local i
    mkdir -p "$1"
    for i in $(seq "$4" $(($4 + $2 - 1))); do
        ffmpeg -v error -y -f lavfi -i "testsrc2=size=320x240:rate=25" -t "$3" \
            -metadata "comment=isc-bench $i" -c:v libx264 -preset ultrafast "$1/clip$i.mp4"
    done
}

# batch OUT FILES...: run with --json; the report goes to OUT.json.
batch() {
    local out=$1
    shift
    tool "$@" -o "$out" -p "$PRESET" --json >"$out.json" 2>"$out.log" ||
        die "the batch into $out failed: $(tail -5 "$out.log")"
}

py() { python3 -c "$@"; }

efficiency() {
    log "efficiency: $FILES clips of $CLIP s, 3 engines x 2 slots"
    make_clips "$WORK/in" "$FILES" "$CLIP" 0
    make_clips "$WORK/single" "$((SINGLES + 1))" "$CLIP" 1000
    # Warm-up (untimed): every engine's first worker.
    batch "$WORK/warm" "$WORK/single/clip1000.mp4"
    local singles=() i
    for i in $(seq 1 "$SINGLES"); do
        batch "$WORK/one$i" "$WORK/single/clip$((1000 + i)).mp4"
        singles+=("$(py "import json;print(json.load(open('$WORK/one$i.json'))['files'][0]['seconds'])")")
    done
    local t0 t1
    t0=$(now)
    batch "$WORK/out" "$WORK"/in/*.mp4
    t1=$(now)
    py "
import json, statistics
r = json.load(open('$WORK/out.json'))
files = r['files']
assert len(files) == $FILES and all(f['status'] == 'done' for f in files), r['summary']
singles = [float(s) for s in '${singles[*]}'.split()]
one = statistics.median(singles)
work = one * $FILES
ideal = work / 6
wall = $t1 - $t0
inner = sum(f['seconds'] for f in files)
hosts = {}
for f in files:
    hosts[f['host']] = hosts.get(f['host'], 0) + 1
print(f'single job (median of {len(singles)}): {one:.2f} s  ({\", \".join(f\"{s:.2f}\" for s in singles)})')
print(f'total work: {work:.1f} s; ideal batch time (work / 6): {ideal:.2f} s')
print(f'batch wall time: {wall:.2f} s (report: {r[\"summary\"][\"wall_seconds\"]:.2f} s); {wall / ideal - 1:+.1%} over ideal (target: within +15 %)')
print(f'efficiency: {ideal / wall:.3f}')
print(f'in-batch job time sum / 6: {inner / 6:.2f} s (efficiency against it: {inner / 6 / wall:.3f})')
print('files per engine: ' + ', '.join(f'{h}: {n}' for h, n in sorted(hosts.items())))
"
}

# ffmpeg processes running in this tool's containers on host I.
ffmpegs_on() {
    local sock id n=0
    sock=$(val "SOCKET$1")
    for id in $(docker -H "$sock" ps -q --filter label=io.isc-transcode 2>/dev/null); do
        if docker -H "$sock" top "$id" 2>/dev/null | grep -q ' ffmpeg -nostdin '; then
            n=$((n + 1))
        fi
    done
    echo "$n"
}

# failover FAULT (kill or cut): host 2's dockerd SIGKILLed, or its link taken down.
failover() {
    local fault=$1 what
    case "$fault" in
    kill) what="host 2's dockerd SIGKILLed" ;;
    cut) what="host 2's link cut (its engine goes on)" ;;
    esac
    log "failover: 3 clips of $FAIL_CLIP s, one per engine; $what"
    rm -rf "$WORK/fin" "$WORK/fout" "$WORK/fout.json" "$WORK/fout.log"
    make_clips "$WORK/fin" 3 "$FAIL_CLIP" 2000
    local out=$WORK/fout
    (
        tool "$WORK"/fin/*.mp4 -o "$out" -p "$PRESET" -v --json \
            2>&1 >"$out.json" | while IFS= read -r l; do printf '%s %s\n' "$(now)" "$l"; done
    ) >"$out.log" &
    local run=$!
    local waited=0
    until [ "$(ffmpegs_on 2)" -ge 1 ]; do
        sleep 0.2
        waited=$((waited + 1))
        [ $waited -lt 600 ] || die "no job ever ran on host 2"
    done
    # Every engine has its job running: the others have one slot free each.
    until [ $(($(ffmpegs_on 1) + $(ffmpegs_on 3))) -ge 2 ]; do sleep 0.2; done
    sleep 1
    local t0 t2=""
    t0=$(now)
    "$REPO/scripts/fleet-hosts.sh" "$fault" "$HOSTS" 2
    for _ in $(seq 1 600); do
        if [ $(($(ffmpegs_on 1) + $(ffmpegs_on 3))) -ge 3 ]; then
            t2=$(now)
            break
        fi
        sleep 0.2
    done
    wait "$run" || true
    local host2 t1
    host2=$(val HOST2)
    t1=$(grep -m1 "the engine $host2 failed the job" "$out.log" | cut -d' ' -f1 || true)
    py "
import json
r = json.load(open('$out.json'))
print('failover run: ' + ', '.join(f'{k} {v}' for k, v in r['summary'].items() if k in ('done', 'failed')))
t0 = $t0
t1 = '$t1'
t2 = '$t2'
print(f'$fault -> the run gives the job up on host 2: ' + (f'{float(t1) - t0:.2f} s' if t1 else 'never'))
print(f'$fault -> its ffmpeg runs on another host: ' + (f'{float(t2) - t0:.2f} s' if t2 else 'not within 120 s') + ' (target: under 10 s)')
"
    if [ "$fault" = cut ]; then
        # The link back: the engine rejoins, and the run's container left on it is removed
        # (by the next run on that engine; this run is over, so start a one-file run there).
        local left
        left=$(docker -H "$(val SOCKET2)" ps -aq --filter label=io.isc-transcode | wc -l)
        "$REPO/scripts/fleet-hosts.sh" mend "$HOSTS" 2
        batch "$WORK/after-mend" "$WORK/fin/clip2000.mp4"
        printf 'containers of the tool on host 2: %s while cut, %s after the link returned and a run\n' \
            "$left" "$(docker -H "$(val SOCKET2)" ps -aq --filter label=io.isc-transcode | wc -l)"
    else
        "$REPO/scripts/fleet-hosts.sh" restart "$HOSTS" 2
    fi
}

for w in $WHAT; do
    case "$w" in
    efficiency) efficiency ;;
    failover) failover kill ;;
    cut) failover cut ;;
    *) die "unknown part $w" ;;
    esac
done
