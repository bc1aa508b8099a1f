#!/usr/bin/env bash
# Throughput of `isc-transcode image sync` against `docker save | docker load`, each copying the
# worker image from the default engine into a private TLS engine on loopback that starts
# without it (scripts/tls-engine.sh with ISC_NO_IMAGE=1). The two alternate, ROUNDS times each,
# the image removed from the target before every copy; the figures are MiB of the image's size
# (`docker image inspect --format '{{.Size}}'`) per second of wall time.
#
# Usage: scripts/bench-image-sync.sh [ROUNDS]   (default 3; ISC_IMAGE picks the image,
#        ISC_BENCH_PORT the loopback port, default 23791; BIN the binary, default a release
#        build made here)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
image=${ISC_IMAGE:-isc-ffmpeg:latest}
port=${ISC_BENCH_PORT:-23791}
bin=${BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --locked --quiet
    bin=target/release/isc-transcode
fi
source_host=unix:///var/run/docker.sock
size=$(docker -H "$source_host" image inspect --format '{{.Size}}' "$image")

dir=$(mktemp -d /var/tmp/isc-bench-image.XXXXXX)
trap 'scripts/tls-engine.sh stop "$dir"; rm -rf "$dir"' EXIT
ISC_NO_IMAGE=1 scripts/tls-engine.sh start "$dir" "$port" >/dev/null
target=tcp://127.0.0.1:$port
tls=(--tlsverify --tlscacert "$dir/certs/ca.pem" --tlscert "$dir/certs/cert.pem"
    --tlskey "$dir/certs/key.pem")
on_target() { docker -H "$target" "${tls[@]}" "$@"; }
empty_target() { on_target image rm -f "$image" >/dev/null 2>&1 || true; }

# Seconds (float) that the command takes.
timed() {
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}
sync_once() {
    DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH="$dir/certs" \
        "$bin" image sync -H "$source_host" -H "$target" --image "$image" 2>/dev/null
}
save_load_once() { docker -H "$source_host" save "$image" | on_target load; }
rate() { echo "$size / 1048576 / $1" | bc -l; }

printf 'image %s, %.0f MiB, from %s to %s, %d rounds\n' \
    "$image" "$(echo "$size / 1048576" | bc -l)" "$source_host" "$target" "$rounds"
sync_total=0
save_total=0
for r in $(seq 1 "$rounds"); do
    empty_target
    s=$(timed sync_once)
    on_target image inspect "$image" >/dev/null
    empty_target
    d=$(timed save_load_once)
    on_target image inspect "$image" >/dev/null
    printf 'round %d: image sync %6.2f s %6.1f MiB/s   docker save | docker load %6.2f s %6.1f MiB/s\n' \
        "$r" "$s" "$(rate "$s")" "$d" "$(rate "$d")"
    sync_total=$(echo "$sync_total + $s" | bc -l)
    save_total=$(echo "$save_total + $d" | bc -l)
done
printf 'mean: image sync %.1f MiB/s, docker save | docker load %.1f MiB/s\n' \
    "$(rate "$(echo "$sync_total / $rounds" | bc -l)")" \
    "$(rate "$(echo "$save_total / $rounds" | bc -l)")"
