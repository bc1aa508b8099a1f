#!/usr/bin/env bash
# Check formatting, lints and doc links (any failing fails the run), set up everything the tests
# need, then run every test: unit tests and the integration tests, which use the real Docker engine and
# the real worker image. Nothing is skipped: a test that needs the engine fails when the engine is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# The docs link only to what exists.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --document-private-items
scripts/setup.sh
if [ ! -f samples/moov-at-end.mp4 ]; then
    samples/make-samples.sh
fi
export ISC_REQUIRE_ENGINE=1
cargo build --locked --all-targets
cargo test --locked --all-targets -- --test-threads="${ISC_TEST_THREADS:-2}"
