#!/usr/bin/env bash
# Build the ffmpeg worker image without a container registry.
#
# debootstrap a minimal Debian with ffmpeg from the apt mirror this machine is
# already configured to use, then `docker import` the root filesystem. The result
# is equivalent to docker/Dockerfile and is tagged the same way.
#
# Usage: scripts/build-image.sh [TAG]      (default: $ISC_IMAGE or isc-ffmpeg:latest)
# Env:   ISC_MIRROR  override the Debian mirror
#        ISC_SUITE   override the Debian suite (default: the host's, else bookworm)
set -euo pipefail

tag=${1:-${ISC_IMAGE:-isc-ffmpeg:latest}}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need debootstrap; then
    echo "build-image: installing debootstrap" >&2
    apt-get install -y debootstrap >/dev/null || { apt-get update >/dev/null && apt-get install -y debootstrap >/dev/null; }
fi

mirror=${ISC_MIRROR:-}
if [ -z "$mirror" ]; then
    # deb822 sources first, then the classic one-line format.
    mirror=$(grep -hs '^URIs:' /etc/apt/sources.list.d/debian.sources | awk '{print $2}' | grep -v security | head -n1 || true)
    [ -n "$mirror" ] || mirror=$(grep -hsE '^deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | grep -E 'debian/?\s' | grep -v security | awk '{print $2}' | head -n1 || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
fi
suite=${ISC_SUITE:-}
if [ -z "$suite" ]; then
    suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    [ -n "$suite" ] || suite=bookworm
fi

work=$(mktemp -d /var/tmp/isc-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

echo "build-image: debootstrap $suite from $mirror" >&2
debootstrap --variant=minbase --include=ffmpeg,ca-certificates \
    "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    echo "build-image: debootstrap failed" >&2
    exit 1
}

# Trim what a worker never needs; keep the image small and the attack surface low.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
       "$root"/usr/share/locale/* "$root"/var/cache/debconf/*-old "$root"/var/log/*
# The worker runs as nobody; give it a private, writable scratch folder.
mkdir -p "$root/work"
chown 65534:65534 "$root/work"
chmod 0700 "$root/work"

echo "build-image: importing as $tag" >&2
tar --numeric-owner -C "$root" -c . | docker import \
    -c 'USER 65534:65534' \
    -c 'WORKDIR /work' \
    -c 'ENV LANG=C.UTF-8' \
    -c 'LABEL org.opencontainers.image.title=isc-ffmpeg' \
    -c 'LABEL io.isc-transcode.worker=1' \
    - "$tag" >/dev/null

docker run --rm --network none "$tag" ffmpeg -hide_banner -version | head -n1 >&2
echo "build-image: done: $tag" >&2
