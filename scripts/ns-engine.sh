#!/usr/bin/env bash
# Start a private Docker engine that does not see one folder of this machine: it runs in a mount
# namespace of its own where FOLDER is covered by an empty tmpfs. To it, files under FOLDER do
# not exist, as they would not for an engine in a VM or on another host that is still reached
# through a unix socket. Tests use it to check that bind-mounting falls back to streaming.
#
# Usage: scripts/ns-engine.sh start DIR FOLDER   -> prints DOCKER_HOST=unix://DIR/docker.sock
#        scripts/ns-engine.sh stop DIR
#
# DIR holds the engine's data root, exec root, pid file, socket and log; it must not lie under
# FOLDER. The worker image is copied from the default engine (`docker save | docker load`).
# The engine has no bridge network and touches no iptables.
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?DIR}
image=${ISC_IMAGE:-isc-ffmpeg:latest}

# shellcheck source=scripts/lib/engine.sh
. "$(dirname "$0")/lib/engine.sh"
stop() { engine_stop "$dir"; }

case "$cmd" in
stop)
    stop
    exit 0
    ;;
start) ;;
*)
    echo "usage: $0 start DIR FOLDER | stop DIR" >&2
    exit 2
    ;;
esac

hide=${3:?FOLDER}
[ -d "$hide" ] || { echo "$hide is not a folder" >&2; exit 2; }
case "$dir/" in "$hide"/*) echo "DIR must not lie under FOLDER" >&2; exit 2 ;; esac
mkdir -p "$dir"
engine_config "$dir"
sock="unix://$dir/docker.sock"
mapfile -t common < <(engine_args "$dir")
# shellcheck disable=SC2016 # expanded by the inner shell
nohup unshare --mount --propagation private sh -c '
    mount -t tmpfs -o size=1m,mode=0755 isc-hidden "$0" || exit 1
    exec dockerd "$@"
' "$hide" "${common[@]}" >"$dir/dockerd.log" 2>&1 </dev/null &
engine_wait "$dir" || exit 1
engine_load_image "$dir" "$image"
echo "DOCKER_HOST=$sock"
