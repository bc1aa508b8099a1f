# Shared by scripts/tls-engine.sh and scripts/ns-engine.sh: a private dockerd kept entirely under
# one folder DIR (data root, exec root, pid file, socket, log, config). Source it; it defines
# functions only.

# engine_config DIR: its own config file, so that the machine's /etc/docker/daemon.json does not
# clash; the same storage driver as the default engine.
engine_config() {
    local driver
    driver=$(docker info --format '{{.Driver}}' 2>/dev/null || echo overlay2)
    printf '{"storage-driver": "%s"}\n' "$driver" >"$1/daemon.json"
}

# engine_args DIR: the dockerd arguments every private engine takes.
engine_args() {
    printf '%s\n' --config-file "$1/daemon.json" --data-root "$1/data" --exec-root "$1/exec" \
        --pidfile "$1/docker.pid" -H "unix://$1/docker.sock" \
        --bridge=none --iptables=false --ip-masq=false
}

# engine_wait DIR: wait until the engine answers on DIR/docker.sock; on failure show its log,
# stop it and fail.
engine_wait() {
    local sock="unix://$1/docker.sock"
    for _ in $(seq 1 60); do
        docker -H "$sock" info >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    tail -n 30 "$1/dockerd.log" >&2
    engine_stop "$1"
    return 1
}

# engine_load_image DIR IMAGE: copy the worker image from the default engine.
engine_load_image() {
    docker save "$2" | docker -H "unix://$1/docker.sock" load >/dev/null
}

# engine_stop DIR: stop the engine and release mounts its containers may still hold under DIR.
engine_stop() {
    local pid m
    if [ -f "$1/docker.pid" ]; then
        pid=$(cat "$1/docker.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    grep -o " $1/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done || true
}
