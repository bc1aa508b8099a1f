#!/usr/bin/env bash
# Test hosts for a fleet: N network namespaces, each a "machine" with an address of its own on a
# private bridge, running its own dockerd that listens only with TLS (client certificates
# required) on that address. The client, in the root namespace, reaches them over TCP+TLS as it
# would reach other machines.
#
# Addresses are TEST-NET-2 (198.51.100.0/24, documentation only, never routed; not TEST-NET-1,
# which this machine's own uplink may use). K (0..7, `--net K`) chooses one /27 of it, so that
# several sets can be up at once; `up` refuses a /27 that any route of this machine already
# covers, so the bridge can never shadow a real network:
#   bridge isc-flK          198.51.100.(32K+1)/27 in the root namespace; it has only the hosts' veths
#   host I (1..9) netns     isc-flK-I, veth isc-flK-I (root end, on the bridge) / eth0 (ns end)
#                           198.51.100.(32K+10+I) and a second address 198.51.100.(32K+20+I) that its
#                           certificate does NOT name (for the wrong-name test)
# The namespaces have no default route: nothing in them can reach any address but the bridge's
# /27. The engines have no bridge network (--bridge=none) and touch no iptables; containers run
# with network none.
#
# Swarm (`swarm`), measured on engine 20.10 (API 1.41): it works with --bridge=none and
# --iptables=false; the overlay driver's vxlan is built into this kernel, IPVS is not (so the
# `ingress` network is removed). The hosts must reach each other through the bridge: see
# fwd_open. A service task attached to no network gets NetworkMode "default", i.e. the default
# bridge, which these engines lack: loopback only, every connect fails "Network is unreachable".
# `--network none` is refused for services ("network none not found"); an --internal overlay
# still gives the task an eth0. swarm init makes docker_gwbridge (172.17.0.1/16, down, inside
# host 1's namespace only); an overlay puts its vxlan device in a sandbox namespace bound under
# the host's exec root. `down` deletes the namespaces and unmounts, which takes them along.
#
# Usage:
#   scripts/fleet-hosts.sh up DIR N [--no-image] [--net K]
#       -> HOST<I>=tcp://ADDR:2376, ALIAS<I>=tcp://ADDR2:2376, SOCKET<I>=unix://..., NETNS<I>=...,
#          PID<I>=..., CERTS=DIR/client (ca.pem cert.pem key.pem), OTHERCA=DIR/other-ca (a client
#          cert and ca.pem from another CA), NET=K, N=N. With --no-image only host 1 gets the
#          worker image (copied from the default engine); hosts 2..N start without it.
#   scripts/fleet-hosts.sh kill DIR I      SIGKILL host I's dockerd (its containerd, shims and
#                                          containers go on, as after a crash of dockerd alone)
#   scripts/fleet-hosts.sh cut DIR I       take host I's link down (root end of its veth)
#   scripts/fleet-hosts.sh mend DIR I      bring it back up
#   scripts/fleet-hosts.sh restart DIR I   stop host I's engine (whatever is left of it) and
#                                          start it again on the same data
#   scripts/fleet-hosts.sh swarm DIR       after `up`: make the hosts one Docker Swarm. Host 1 is
#                                          the manager (init through its unix socket, advertising
#                                          and listening on ADDR1:2377), hosts 2..N join as
#                                          workers; every node gets the label
#                                          io.isc-transcode.engine=tcp://ADDR_I:2376 (its own
#                                          engine, where a task's bytes must go: the manager API
#                                          cannot attach to a task). The routing-mesh network
#                                          `ingress` is removed (no IPVS in this kernel, and a job
#                                          publishes no port).
#       -> MANAGER=tcp://ADDR1:2376, MANAGER_SOCKET=unix://..., NODE<I>=node id
#   scripts/fleet-hosts.sh drain DIR I     set host I's node to availability drain (its running
#                                          tasks are shut down, it gets no new ones)
#   scripts/fleet-hosts.sh activate DIR I  set it back to active
#   scripts/fleet-hosts.sh down DIR        stop everything, delete netns, veths, bridge, mounts,
#                                          and the hosts' swarm state (a later `up` on the same
#                                          DIR starts outside any swarm); idempotent, safe after a
#                                          failed `up`
#   scripts/fleet-hosts.sh check DIR       exit 1 and say what is left over (links, netns,
#                                          mounts, processes, the swarm iptables rule) after `down`
#
# DIR should be short (unix socket paths are limited to 108 bytes), e.g. under /var/tmp.
set -euo pipefail

cmd=${1:?up, swarm, drain, activate, kill, cut, mend, restart, down or check}
dir=${2:?DIR}
image=${ISC_IMAGE:-isc-ffmpeg:latest}
port=2376

# shellcheck source=scripts/lib/engine.sh
. "$(dirname "$0")/lib/engine.sh"

dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
net() { cat "$dir/net" 2>/dev/null || echo 0; }
count() { cat "$dir/count" 2>/dev/null || echo 0; }
bridge() { echo "isc-fl$(net)"; }
ns_of() { echo "isc-fl$(net)-$1"; }
addr_of() { echo "198.51.100.$(($(net) * 32 + 10 + $1))"; }
alias_of() { echo "198.51.100.$(($(net) * 32 + 20 + $1))"; }
hdir() { echo "$dir/h$1"; }
sock_of() { echo "unix://$(hdir "$1")/docker.sock"; }

ssl() { openssl "$@" >/dev/null 2>&1; }

# make_ca D CN: a CA (D/ca.pem, D/ca-key.pem).
make_ca() {
    mkdir -p "$1"
    ssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$2" -keyout "$1/ca-key.pem" \
        -out "$1/ca.pem"
}

# make_cert CADIR OUTDIR CN EXT: OUTDIR/cert.pem, OUTDIR/key.pem signed by CADIR's CA.
make_cert() {
    mkdir -p "$2"
    ssl req -newkey rsa:2048 -nodes -subj "/CN=$3" -keyout "$2/key.pem" -out "$2/req.csr"
    printf '%b' "$4" >"$2/ext.cnf"
    ssl x509 -req -in "$2/req.csr" -CA "$1/ca.pem" -CAkey "$1/ca-key.pem" -CAcreateserial \
        -days 2 -extfile "$2/ext.cnf" -out "$2/cert.pem"
    rm -f "$2/req.csr"
}

# Every process in host I's namespace (dockerd, containerd, shims, fuse-overlayfs) and all
# their descendants (the containers' processes, which live in network namespaces of their own).
host_pids() {
    local ns roots
    ns=$(ns_of "$1")
    [ -e "/var/run/netns/$ns" ] || return 0
    roots=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -n "$roots" ] || return 0
    # ppid table, then a breadth-first walk from the roots.
    ps -e -o pid=,ppid= | awk -v roots="$roots" '
        { parent[$1] = $2; pids[NR] = $1 }
        END {
            n = split(roots, q, /[ \n]+/)
            for (i = 1; i <= n; i++) if (q[i] != "") seen[q[i]] = 1
            changed = 1
            while (changed) {
                changed = 0
                for (j in pids) { p = pids[j]; if (!(p in seen) && (parent[p] in seen)) { seen[p] = 1; changed = 1 } }
            }
            for (p in seen) print p
        }'
}

# launch I: start host I's dockerd in its namespace (no wait).
launch() {
    local h ns a b
    h=$(hdir "$1")
    ns=$(ns_of "$1")
    a=$(addr_of "$1")
    b=$(alias_of "$1")
    mkdir -p "$h"
    engine_config "$h"
    mapfile -t common < <(engine_args "$h")
    # nsenter, not `ip netns exec`: that also mounts a sysfs of its own, which hides the cgroup
    # hierarchy dockerd needs.
    nohup nsenter --net="/var/run/netns/$ns" dockerd "${common[@]}" \
        -H "tcp://$a:$port" -H "tcp://$b:$port" \
        --tlsverify --tlscacert "$dir/ca/ca.pem" \
        --tlscert "$h/server/cert.pem" --tlskey "$h/server/key.pem" \
        >>"$h/dockerd.log" 2>&1 </dev/null &
}

# stop_host I: TERM dockerd, then KILL whatever is left in the namespace (a containerd or shims
# orphaned by a SIGKILLed dockerd, the containers under them), then release mounts.
stop_host() {
    local h pids
    h=$(hdir "$1")
    engine_stop "$h"
    pids=$(host_pids "$1")
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086 # a list of pids
        kill -9 $pids 2>/dev/null || true
        for _ in $(seq 1 50); do
            [ -z "$(host_pids "$1")" ] && break
            sleep 0.1
        done
    fi
    grep -o " $h/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done || true
    rm -f "$h/docker.pid" "$h/exec/containerd/containerd.pid" 2>/dev/null || true
}

down() {
    local n i
    n=$(count)
    for i in $(seq 1 "$n"); do stop_host "$i" & done
    wait
    # Swarm state (raft log, node certificates): without this a later `up` on the same DIR
    # would bring the engines back as members of a swarm that is gone.
    for i in $(seq 1 "$n"); do rm -rf "$(hdir "$i")/data/swarm" "$dir/node$i"; done
    for i in $(seq 1 "$n"); do
        ip link del "$(ns_of "$i")" 2>/dev/null || true
        ip netns del "$(ns_of "$i")" 2>/dev/null || true
    done
    # Only a bridge this set made (no net file: `up` failed before making one).
    [ -f "$dir/net" ] && { ip link del "$(bridge)" 2>/dev/null || true; fwd_close; }
    # Cgroups of the hosts' containers (cgroupfs driver: /sys/fs/cgroup/*/docker/<id>).
    for i in $(seq 1 "$n"); do
        for c in "$(hdir "$i")"/data/containers/*/; do
            [ -d "$c" ] || continue
            id=$(basename "$c")
            find /sys/fs/cgroup -maxdepth 4 -type d -name "$id" 2>/dev/null |
                xargs -r rmdir 2>/dev/null || true
        done
    done
}

check() {
    local n i left=0
    n=$(count)
    if ip link show "$(bridge)" >/dev/null 2>&1; then echo "left: bridge $(bridge)"; left=1; fi
    # shellcheck disable=SC2046
    if iptables -C $(fwd_rule) 2>/dev/null; then echo "left: iptables rule for $(bridge)"; left=1; fi
    for i in $(seq 1 "$n"); do
        ip link show "$(ns_of "$i")" >/dev/null 2>&1 && { echo "left: link $(ns_of "$i")"; left=1; }
        [ -e "/var/run/netns/$(ns_of "$i")" ] && { echo "left: netns $(ns_of "$i")"; left=1; }
    done
    if grep -q " $dir/" /proc/mounts; then echo "left: mounts under $dir"; left=1; fi
    if pgrep -f -- "$dir/" >/dev/null; then
        echo "left: processes $(pgrep -f -- "$dir/" | tr '\n' ' ')"
        left=1
    fi
    return $left
}

# wait_host I: until host I's engine answers on its unix socket.
wait_host() {
    engine_wait "$(hdir "$1")"
}

# The hosts talk to each other only for swarm (2377 control, 7946 gossip, 4789/udp vxlan). Their
# frames cross the bridge in the root namespace, and with br_netfilter loaded (the default
# engine loads it: net.bridge.bridge-nf-call-iptables=1) bridged frames go through the root
# namespace's FORWARD chain, whose policy the default engine sets to DROP. One rule, for this
# bridge to itself only, lets them through; `down` removes it.
fwd_rule() { echo FORWARD -i "$(bridge)" -o "$(bridge)" -m comment --comment isc-fleet-hosts -j ACCEPT; }
fwd_open() {
    # shellcheck disable=SC2046 # the rule's words
    iptables -C $(fwd_rule) 2>/dev/null || iptables -I $(fwd_rule)
}
fwd_close() {
    # shellcheck disable=SC2046
    while iptables -C $(fwd_rule) 2>/dev/null; do iptables -D $(fwd_rule); done
}

# swarm: host 1 inits, 2..N join as workers, every node labelled with its engine endpoint.
swarm() {
    local n i m tok id
    n=$(count)
    [ "$n" -ge 1 ] || { echo "no hosts in $dir: run up first" >&2; return 1; }
    m=$(sock_of 1)
    fwd_open
    docker -H "$m" swarm init --advertise-addr "$(addr_of 1)" \
        --listen-addr "$(addr_of 1):2377" >/dev/null
    tok=$(docker -H "$m" swarm join-token -q worker)
    for i in $(seq 2 "$n"); do
        docker -H "$(sock_of "$i")" swarm join --token "$tok" --advertise-addr "$(addr_of "$i")" \
            --listen-addr "$(addr_of "$i"):2377" "$(addr_of 1):2377" >/dev/null
    done
    for i in $(seq 1 "$n"); do
        id=$(docker -H "$(sock_of "$i")" info --format '{{.Swarm.NodeID}}')
        [ -n "$id" ] || { echo "host $i has no swarm node id" >&2; return 1; }
        echo "$id" >"$dir/node$i"
        docker -H "$m" node update --label-add \
            "io.isc-transcode.engine=tcp://$(addr_of "$i"):$port" "$id" >/dev/null
    done
    # The routing mesh needs IPVS, which this kernel lacks, and jobs publish no port.
    docker -H "$m" network rm ingress >/dev/null 2>&1 <<<y || true
    echo "MANAGER=tcp://$(addr_of 1):$port"
    echo "MANAGER_SOCKET=$m"
    for i in $(seq 1 "$n"); do echo "NODE$i=$(cat "$dir/node$i")"; done
}

case "$cmd" in
up) ;;
swarm)
    swarm
    exit $?
    ;;
drain | activate)
    i=${3:?I}
    avail=drain
    [ "$cmd" = activate ] && avail=active
    docker -H "$(sock_of 1)" node update --availability "$avail" "$(cat "$dir/node$i")" >/dev/null
    exit 0
    ;;
kill)
    i=${3:?I}
    pidfile=$(hdir "$i")/docker.pid
    kill -9 "$(cat "$pidfile")"
    # Its pid file stays behind; nothing must later signal that pid, which may be reused.
    mv "$pidfile" "$pidfile.killed"
    exit 0
    ;;
cut | mend)
    i=${3:?I}
    state=down
    [ "$cmd" = mend ] && state=up
    ip link set "$(ns_of "$i")" "$state"
    exit 0
    ;;
restart)
    i=${3:?I}
    stop_host "$i"
    launch "$i"
    wait_host "$i"
    echo "PID$i=$(cat "$(hdir "$i")/docker.pid")"
    exit 0
    ;;
down)
    down
    exit 0
    ;;
check)
    check
    exit $?
    ;;
*)
    echo "usage: $0 up DIR N [--no-image] [--net K] | swarm DIR" \
        "| drain|activate|kill|cut|mend|restart DIR I | down DIR | check DIR" >&2
    exit 2
    ;;
esac

n=${3:?N}
shift 3
with_image=all
k=0
while [ $# -gt 0 ]; do
    case "$1" in
    --no-image) with_image=first ;;
    --net)
        k=${2:?K}
        shift
        ;;
    *)
        echo "unknown option $1" >&2
        exit 2
        ;;
    esac
    shift
done
case "$n" in [1-9]) ;; *) echo "N must be 1..9" >&2; exit 2 ;; esac
case "$k" in [0-7]) ;; *) echo "K must be 0..7" >&2; exit 2 ;; esac
base=$((k * 32))
# Before anything is made (and before `down` may run on failure): the /27 must be free, which
# also means no other set is up on it.
if ip -4 route show to match "198.51.100.$((base + 1))" | grep -qv '^default'; then
    echo "198.51.100.$base/27 is already routed on this machine: choose another --net" >&2
    exit 2
fi
echo "$k" >"$dir/net"
echo "$n" >"$dir/count"
trap 'down; exit 1' ERR
br=$(bridge)
ip link add "$br" type bridge
ip addr add "198.51.100.$((base + 1))/27" dev "$br"
ip link set "$br" up

make_ca "$dir/ca" isc-fleet-test-ca
make_cert "$dir/ca" "$dir/client" isc-fleet-client 'extendedKeyUsage=clientAuth\n'
cp "$dir/ca/ca.pem" "$dir/client/ca.pem"
# A client certificate from another CA (with its own ca.pem): the engines must refuse it, and a
# client that trusts only that CA must refuse the engines.
make_ca "$dir/other-ca-key" isc-other-ca
make_cert "$dir/other-ca-key" "$dir/other-ca" isc-other-client 'extendedKeyUsage=clientAuth\n'
cp "$dir/other-ca-key/ca.pem" "$dir/other-ca/ca.pem"

for i in $(seq 1 "$n"); do
    ns=$(ns_of "$i")
    ip netns add "$ns"
    ip link add "$ns" type veth peer name eth0 netns "$ns"
    ip link set "$ns" master "$br" up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$(addr_of "$i")/27" dev eth0
    ip -n "$ns" addr add "$(alias_of "$i")/27" dev eth0
    ip -n "$ns" link set eth0 up
    # The certificate names this host's first address only.
    make_cert "$dir/ca" "$(hdir "$i")/server" "isc-fleet-host$i" \
        "subjectAltName=IP:$(addr_of "$i")\nextendedKeyUsage=serverAuth\n"
    launch "$i"
done

# Start in parallel: every dockerd was launched above; wait for them, then copy the image in.
for i in $(seq 1 "$n"); do wait_host "$i" || { down; exit 1; }; done
if [ "$with_image" != none ]; then
    docker save "$image" >"$dir/image.tar"
    last=$n
    [ "$with_image" = first ] && last=1
    pids=()
    for i in $(seq 1 "$last"); do
        docker -H "unix://$(hdir "$i")/docker.sock" load -i "$dir/image.tar" >/dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { echo "cannot load $image" >&2; down; exit 1; }; done
    rm -f "$dir/image.tar"
fi
trap - ERR

echo "N=$n"
echo "NET=$k"
echo "CERTS=$dir/client"
echo "OTHERCA=$dir/other-ca"
for i in $(seq 1 "$n"); do
    echo "HOST$i=tcp://$(addr_of "$i"):$port"
    echo "ALIAS$i=tcp://$(alias_of "$i"):$port"
    echo "SOCKET$i=unix://$(hdir "$i")/docker.sock"
    echo "NETNS$i=$(ns_of "$i")"
    echo "PID$i=$(cat "$(hdir "$i")/docker.pid")"
done
