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
cargo test --locked --lib --bins -- --test-threads="${ISC_TEST_THREADS:-2}"

# The integration tests are two binaries: `cluster` (several engines on test hosts, one test at
# a time, mostly waiting on those engines) runs beside `integration` (the rest, two at a time),
# rather than after it. Both always run to the end; the run fails if either failed, and the
# cluster tests' output follows the others'.
bins=$(cargo test --locked --no-run --test integration --test cluster 2>&1 |
    sed -n 's/.*Executable tests\/\([a-z]*\)\/main.rs (\(.*\))$/\1 \2/p')
bin_of() { awk -v n="$1" '$1 == n {print $2}' <<<"$bins"; }
integration=$(bin_of integration)
cluster=$(bin_of cluster)
[ -x "$integration" ] && [ -x "$cluster" ] || { echo "test binaries not found: $bins" >&2; exit 1; }
cluster_log=$(mktemp /tmp/isc-cluster-tests.XXXXXX)
trap 'rm -f "$cluster_log"' EXIT
"$cluster" --test-threads=1 >"$cluster_log" 2>&1 &
cluster_pid=$!
status=0
"$integration" --test-threads="${ISC_TEST_THREADS:-2}" || status=$?
cluster_status=0
wait "$cluster_pid" || cluster_status=$?
echo "--- the cluster tests (tests/cluster), run beside the above:"
cat "$cluster_log"
[ "$status" = 0 ] || { echo "integration tests failed" >&2; exit "$status"; }
[ "$cluster_status" = 0 ] || { echo "cluster tests failed" >&2; exit "$cluster_status"; }
