#!/usr/bin/env bash
# Start a second, private Docker engine that only speaks TLS with client certificates on
# 127.0.0.1, for testing remote-engine support the way the docker CLI would use it.
#
# Usage: scripts/tls-engine.sh start DIR PORT   -> prints DOCKER_HOST and DOCKER_CERT_PATH lines
#        scripts/tls-engine.sh restart DIR PORT   -> the same engine back after `stop`
#        scripts/tls-engine.sh stop DIR
#
# DIR holds everything: certificates (DIR/certs: ca.pem cert.pem key.pem for the client), the
# engine's data root, exec root, pid file and log. The worker image is copied from the default
# engine with `docker save | docker load`, unless ISC_NO_IMAGE=1: then the engine starts without
# it, as an engine of an air-gapped fleet that has not been given it yet. Nothing listens
# anywhere but loopback.
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?DIR}
image=${ISC_IMAGE:-isc-ffmpeg:latest}

# shellcheck source=scripts/lib/engine.sh
. "$(dirname "$0")/lib/engine.sh"
stop() { engine_stop "$dir"; }

# Start dockerd on the certificates and data already in DIR, and wait until it answers.
launch() {
    cd "$dir"
    engine_config "$dir"
    mapfile -t common < <(engine_args "$dir")
    nohup dockerd "${common[@]}" -H "tcp://127.0.0.1:$port" \
        --tlsverify --tlscacert certs/ca.pem --tlscert server/cert.pem --tlskey server/key.pem \
        >"$dir/dockerd.log" 2>&1 </dev/null &
    engine_wait "$dir"
}

case "$cmd" in
stop)
    stop
    exit 0
    ;;
restart)
    # The same engine (certificates, data, images) back after an outage.
    port=${3:?PORT}
    stop
    launch
    exit 0
    ;;
start) ;;
*)
    echo "usage: $0 start DIR PORT | restart DIR PORT | stop DIR" >&2
    exit 2
    ;;
esac

port=${3:?PORT}
mkdir -p "$dir/certs" "$dir/server"
cd "$dir"
ssl() { openssl "$@" >/dev/null 2>&1; }
ssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=isc-test-ca" \
    -keyout server/ca-key.pem -out certs/ca.pem
ssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server/key.pem -out server/req.csr
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server/ext.cnf
ssl x509 -req -in server/req.csr -CA certs/ca.pem -CAkey server/ca-key.pem -CAcreateserial \
    -days 2 -extfile server/ext.cnf -out server/cert.pem
ssl req -newkey rsa:2048 -nodes -subj "/CN=client" -keyout certs/key.pem -out server/client.csr
printf 'extendedKeyUsage=clientAuth\n' >server/client-ext.cnf
ssl x509 -req -in server/client.csr -CA certs/ca.pem -CAkey server/ca-key.pem -CAcreateserial \
    -days 2 -extfile server/client-ext.cnf -out certs/cert.pem

launch
if [ "${ISC_NO_IMAGE:-}" != 1 ]; then
    engine_load_image "$dir" "$image"
fi
echo "DOCKER_HOST=tcp://127.0.0.1:$port"
echo "DOCKER_CERT_PATH=$dir/certs"
