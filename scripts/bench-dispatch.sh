#!/usr/bin/env bash
# The dispatcher alone, with the fake backend (no engine, an instant "ffmpeg"): the time per job
# and the memory for 1,000, 10,000 and 100,000 queued files, on one backend and on a fleet of
# three fakes with two slots each. Each job still makes its temporary file, is checked, renamed
# and recorded, on a tmpfs (/dev/shm) where there is one. Flat means: the time per job and the
# memory do not grow with the queue.
#
# Usage: scripts/bench-dispatch.sh            (ISC_BENCH_SIZES=1000,10000,100000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
export ISC_BENCH_SIZES=${ISC_BENCH_SIZES:-1000,10000,100000}
cargo test --release --locked --lib bench_dispatch_overhead -- --ignored --nocapture 2>&1 |
    grep -E '^bench-dispatch|panicked|FAILED'
