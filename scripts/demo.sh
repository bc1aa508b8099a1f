#!/usr/bin/env bash
# Set up this machine, then transcode the shipped samples to H.264 MP4s in ./out.
# Extra arguments go to isc-transcode, e.g. `scripts/demo.sh --preset vp9`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked
exec target/release/isc-transcode samples --out out --preset h264 "$@"
