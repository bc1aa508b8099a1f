#!/usr/bin/env bash
# Start a private Docker engine that does not see one folder of this machine: it runs in a mount
# namespace of its own where FOLDER is covered by an empty tmpfs. To it, files under FOLDER do
# not exist, as they would not for an engine in a VM or on another host that is still reached
# through a unix socket. Tests use it to check that bind-mounting falls back to streaming.
#
# Or (start-tcp) a private engine that is a "remote host" on plain TCP without TLS: it runs in a
# network namespace of its own, with no link to anything, where ADDR (not a loopback address;
# use a documentation address such as 192.0.2.1) is put on the namespace's own loopback device.
# It listens on tcp://ADDR:PORT and, inside the namespace, on tcp://127.0.0.1:PORT. A client run
# in the namespace (`nsenter --net=/var/run/netns/NETNS ...`) reaches it there; nothing can leave the namespace,
# so no traffic goes to any real address.
#
# Usage: scripts/ns-engine.sh start DIR FOLDER   -> prints DOCKER_HOST=unix://DIR/docker.sock
#        scripts/ns-engine.sh start-tcp DIR ADDR PORT
#             -> prints DOCKER_HOST=tcp://ADDR:PORT, NETNS=<name>, SOCKET=unix://DIR/docker.sock
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
stop() {
    engine_stop "$dir"
    if [ -f "$dir/netns" ]; then
        ip netns del "$(cat "$dir/netns")" 2>/dev/null || true
        rm -f "$dir/netns"
    fi
}

case "$cmd" in
stop)
    stop
    exit 0
    ;;
start) ;;
start-tcp)
    addr=${3:?ADDR}
    port=${4:?PORT}
    case "$addr" in 127.*) echo "ADDR must not be a loopback address" >&2; exit 2 ;; esac
    mkdir -p "$dir"
    ns="isc-$(basename "$dir")"
    ip netns add "$ns"
    echo "$ns" >"$dir/netns"
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$addr/32" dev lo
    engine_config "$dir"
    mapfile -t common < <(engine_args "$dir")
    # nsenter, not `ip netns exec`: that also mounts a sysfs of its own, which hides the cgroup
    # hierarchy dockerd needs. `--tls=false` says that plain TCP is meant, which spares the 15 s
    # that dockerd otherwise waits to show its warning.
    nohup nsenter --net="/var/run/netns/$ns" dockerd "${common[@]}" \
        -H "tcp://$addr:$port" -H "tcp://127.0.0.1:$port" --tls=false \
        >"$dir/dockerd.log" 2>&1 </dev/null &
    engine_wait "$dir" || { stop; exit 1; }
    engine_load_image "$dir" "$image"
    echo "DOCKER_HOST=tcp://$addr:$port"
    echo "NETNS=$ns"
    echo "SOCKET=unix://$dir/docker.sock"
    exit 0
    ;;
*)
    echo "usage: $0 start DIR FOLDER | start-tcp DIR ADDR PORT | stop DIR" >&2
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
