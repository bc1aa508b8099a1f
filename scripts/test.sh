#!/usr/bin/env bash
# Check formatting and lints (either failing fails the run), set up everything the tests need,
# then run every test: unit tests and the integration tests, which use the real Docker engine and
# the real worker image. Nothing is skipped: a test that needs the engine fails when the engine is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
scripts/setup.sh
if [ ! -f samples/moov-at-end.mp4 ]; then
    samples/make-samples.sh
fi
export ISC_REQUIRE_ENGINE=1
cargo build --locked --all-targets
cargo test --locked --all-targets -- --test-threads="${ISC_TEST_THREADS:-2}"
