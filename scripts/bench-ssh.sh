#!/usr/bin/env bash
# What reaching an engine over ssh costs against reaching the same engine over TLS: a private
# TLS engine on loopback (scripts/tls-engine.sh), and a private sshd on loopback whose sessions
# point `docker system dial-stdio` at that engine. For each transport, RUNS one-file batches
# (`-p copy`, one job, so one worker) measure, as medians:
#   connect  from the start of the process to the plan's "N file(s) to transcode" line: the first
#            connection (for ssh, the key exchange and login), the engine's preparation
#   worker   from that line to "started": one worker created, attached and started (the attach
#            is a new connection: for ssh a new channel and a `docker system dial-stdio`)
#   total    the whole run
# and `doctor`'s RTT (the median of 3 pings over a connection already open).
#
# Usage: scripts/bench-ssh.sh [RUNS]   (default 5; BIN the binary, default a release build made
#        here; ISC_BENCH_PORT and ISC_BENCH_SSH_PORT the loopback ports, default 23853 and 23854)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
port=${ISC_BENCH_PORT:-23853}
ssh_port=${ISC_BENCH_SSH_PORT:-23854}
bin=${BIN:-}
if [ -z "$bin" ]; then
    cargo build --release --locked --quiet
    bin=target/release/isc-transcode
fi
[ -x /usr/sbin/sshd ] || { echo "no sshd: run scripts/setup.sh" >&2; exit 1; }
mkdir -p /run/sshd

dir=$(mktemp -d /var/tmp/isc-bench-ssh.XXXXXX)
sshd_pid=
cleanup() {
    [ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null
    scripts/tls-engine.sh stop "$dir/engine"
    rm -rf "$dir"
}
trap cleanup EXIT
mkdir -p "$dir/engine" "$dir/ssh"
scripts/tls-engine.sh start "$dir/engine" "$port" >/dev/null
certs=$dir/engine/certs

s=$dir/ssh
for k in host_key client_key; do ssh-keygen -q -t ed25519 -N '' -f "$s/$k"; done
cp "$s/client_key.pub" "$s/authorized_keys"
cat >"$s/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $s/host_key
PidFile $s/sshd.pid
AuthorizedKeysFile $s/authorized_keys
AuthenticationMethods publickey
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
SetEnv DOCKER_HOST=tcp://127.0.0.1:$port DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$certs
EOF
echo "[127.0.0.1]:$ssh_port $(cat "$s/host_key.pub")" >"$s/known_hosts"
/usr/sbin/sshd -D -E "$s/sshd.log" -f "$s/sshd_config" &
sshd_pid=$!
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$ssh_port") 2>/dev/null && break; sleep 0.1; done

user=$(id -un)
cat >"$dir/tls.toml" <<EOF
[[engine]]
url = "tcp://127.0.0.1:$port"
tls = { ca = "$certs/ca.pem", cert = "$certs/cert.pem", key = "$certs/key.pem" }
EOF
cat >"$dir/ssh.toml" <<EOF
[[engine]]
url = "ssh://$user@127.0.0.1:$ssh_port"
ssh_key = "$s/client_key"
known_hosts = "$s/known_hosts"
EOF

median() { sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

# One batch; prints "connect worker total" in seconds.
one() {
    local out=$dir/out-$1-$2 t0
    t0=$(date +%s.%N)
    "$bin" samples/faststart.mp4 -o "$out" -p copy -j 1 -v --hosts "$dir/$1.toml" 2>&1 >/dev/null |
        while IFS= read -r line; do echo "$(date +%s.%N) $line"; done |
        awk -v t0="$t0" '
            / file\(s\) to transcode / { plan = $1 }
            / started / { started = $1 }
            { last = $1 }
            END { printf "%.3f %.3f %.3f\n", plan - t0, started - plan, last - t0 }'
    rm -rf "$out"
}

printf '%-9s %9s %9s %9s %9s   (medians of %d runs, seconds; RTT in ms)\n' \
    transport connect worker total rtt "$runs"
for t in tls ssh; do
    rows=$(for i in $(seq 1 "$runs"); do one "$t" "$i"; done)
    rtt=$("$bin" doctor --hosts "$dir/$t.toml" -p copy 2>/dev/null |
        awk 'NR > 2 && / ms / { for (i = 1; i < NF; i++) if ($(i + 1) == "ms") print $i }' |
        head -1)
    printf '%-9s %9s %9s %9s %9s\n' "$t" \
        "$(cut -d' ' -f1 <<<"$rows" | median)" \
        "$(cut -d' ' -f2 <<<"$rows" | median)" \
        "$(cut -d' ' -f3 <<<"$rows" | median)" \
        "${rtt:--}"
done
echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
