#!/usr/bin/env bash
# Prepare this machine for isc-transcode: a running Docker engine, the ffmpeg worker image,
# host ffmpeg/ffprobe (for the local backend and for the tests that check outputs), and
# OpenSSH's client and server (for ssh:// engines and their tests).
#
# Safe to run again: every step checks first and does nothing when it is already done.
# Exits non-zero, saying why, when a step cannot be done.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${ISC_IMAGE:-isc-ffmpeg:latest}
log() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

apt_install() {
    command -v apt-get >/dev/null || die "cannot install $*: no apt-get; install it by hand"
    [ "$(id -u)" = 0 ] || die "cannot install $*: run as root or install it by hand"
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 || {
        apt-get update >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null
    }
}

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
    apt_install ffmpeg
fi

# ssh:// engines run the system's ssh; their tests start an sshd of their own on loopback and
# never use the system's service (on a machine that runs services, installing the package
# starts it: stop it if you do not want it).
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null; then
    apt_install openssh-server openssh-client
fi

engine_up() { timeout 10 docker info >/dev/null 2>&1; }
if ! command -v docker >/dev/null || ! engine_up; then
    command -v dockerd >/dev/null && command -v docker >/dev/null || apt_install docker.io
    if ! engine_up; then
        if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST#unix://}" = "$DOCKER_HOST" ]; then
            die "the Docker engine at DOCKER_HOST=$DOCKER_HOST does not answer"
        fi
        [ "$(id -u)" = 0 ] || die "no Docker engine answers and starting one needs root"
        log "no Docker engine answers; starting dockerd (log: /var/log/isc-dockerd.log)"
        nohup dockerd >/var/log/isc-dockerd.log 2>&1 </dev/null &
        for _ in $(seq 1 60); do engine_up && break; sleep 1; done
        engine_up || { tail -n 20 /var/log/isc-dockerd.log >&2; die "dockerd did not come up within 60 s"; }
    fi
fi
log "docker engine $(docker version --format '{{.Server.Version}}' 2>/dev/null) answers"

if ! docker image inspect "$image" >/dev/null 2>&1; then
    log "worker image $image is missing; building it (about a minute)"
    scripts/build-image.sh "$image"
fi
log "worker image $image is present"
