#!/usr/bin/env bash
# Run every fuzz target in fuzz/ for a bounded time; fail if any of them finds a crash, a
# panic, a hang or a runaway allocation (exit 1); a target that cannot be built or started is
# reported as such, not as a finding (exit 2).
#
#   scripts/fuzz.sh                 every target, 60 s each
#   scripts/fuzz.sh 300             every target, 300 s each
#   scripts/fuzz.sh 60 mp4_walk ... only the targets named
#
# Env: FUZZ_SECONDS    seconds per target when no argument gives them (default 60)
#      FUZZ_SANITIZER  none (default) or address; the crate has no unsafe code, so a sanitizer
#                      only watches its dependencies, at about a third of the speed
#
# Needs cargo-fuzz (installed here with `cargo install cargo-fuzz --locked` when missing) and a
# C++ compiler for libFuzzer. cargo-fuzz needs nightly compiler flags; on a stable toolchain
# RUSTC_BOOTSTRAP=1 allows them. Each target starts from its committed corpus (fuzz/corpus/T)
# and writes what it finds to a scratch folder, so a run never changes the repository; a
# crashing input is kept in fuzz/artifacts/T/ and the command that replays it is printed.
# Not part of .ci/run: the regression tests of what it found are unit tests, which CI runs.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-${FUZZ_SECONDS:-60}}
[ $# -gt 0 ] && shift
case $secs in '' | *[!0-9]*) echo "fuzz: seconds must be a whole number, not '$secs'" >&2; exit 2 ;; esac
all=(mp4_walk mp4_readback ffmpeg_stderr jobserver_marks jobserver_request preset_toml cli_values)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
build=(--sanitizer "${FUZZ_SANITIZER:-none}" --codegen-units 16)
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked >&2
fi
for t in "${targets[@]}"; do
    [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz: no target $t (known: ${all[*]})" >&2; exit 2; }
done
only=()
[ ${#targets[@]} -eq 1 ] && only=("${targets[0]}")
cargo fuzz build "${build[@]}" "${only[@]}"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=()
broken=()
printf '%-18s %8s %14s  %s\n' target seconds executions result
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "artifacts/$t" "corpus/$t"
    case $t in mp4_*) max_len=(-max_len=262144) ;; *) max_len=() ;; esac
    start=$SECONDS
    rc=0
    cargo fuzz run "${build[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" "${max_len[@]}" > "$scratch/$t.log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log" | tail -n1)
    if [ "$rc" -eq 0 ]; then
        result=ok
    elif ! grep -q '^INFO: Seed:' "$scratch/$t.log"; then
        # libFuzzer never started: a build or setup failure, not something the target found.
        result="DID NOT RUN (exit $rc)"
        broken+=("$t")
    else
        result="FAILED (exit $rc)"
        failed+=("$t")
    fi
    printf '%-18s %8s %14s  %s\n' "$t" "$((SECONDS - start))" "${execs:-?}" "$result"
    if [ "$rc" -ne 0 ]; then
        grep -E -A12 "panicked at|ERROR: libFuzzer|SUMMARY" "$scratch/$t.log" | head -n 40 >&2 || tail -n 40 "$scratch/$t.log" >&2
        for a in "artifacts/$t"/*; do
            [ -e "$a" ] && echo "fuzz: replay with: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${build[*]} $t $a)" >&2
        done
    fi
done
if [ ${#broken[@]} -gt 0 ]; then
    echo "fuzz: ${#broken[@]} target(s) did not run (see the log above): ${broken[*]}" >&2
fi
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: ${#failed[@]} target(s) found a crash: ${failed[*]}" >&2
    exit 1
fi
[ ${#broken[@]} -eq 0 ] || exit 2
echo "fuzz: ${#targets[@]} target(s), ${secs} s each: no crash"
