#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for SECONDS (default 60) on a copy of the
# committed seed corpus (fuzz/corpus/<target>/), so a CI run never grows the repository.
# Prints the executions per second of each target (from libFuzzer's final stats) and fails
# if any target finds a crash, a panic, a timeout or an out-of-memory input; the offending
# inputs are copied to fuzz/artifacts/<target>/ (git-ignored) for reproduction with
#   cargo fuzz run --sanitizer none <target> fuzz/artifacts/<target>/<file>
#
# Runs on a stable toolchain: `--sanitizer none` needs no nightly-only flags.
# Usage: scripts/fuzz-ci.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/snapheap-fuzz-ci.XXXXXX")"
# Heap directories written by the recovery target: on tmpfs when there is one.
scratch="$(mktemp -d /dev/shm/snapheap-fuzz-ci.XXXXXX 2>/dev/null || mktemp -d "${TMPDIR:-/tmp}/snapheap-fuzz-scratch.XXXXXX")"
export SNAPHEAP_FUZZ_SCRATCH="$scratch"
trap 'rm -rf "$work" "$scratch"' EXIT

targets="$(cargo fuzz list --fuzz-dir fuzz)"
echo "== building fuzz targets (sanitizer none): $(echo $targets)"
cargo fuzz build --fuzz-dir fuzz --sanitizer none

failed=()
summary=()
for t in $targets; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  if [ -d "fuzz/corpus/$t" ]; then
    cp -R "fuzz/corpus/$t/." "$work/corpus/$t/"
  fi
  seeds="$(find "$work/corpus/$t" -type f | wc -l)"
  log="$work/$t.log"
  echo "== $t: ${secs} s on $seeds seed(s)"
  status=0
  cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "$work/corpus/$t" -- \
    -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/$t/" >"$log" 2>&1 || status=$?
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  eps="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  cov="$(grep -E '^#[0-9]+.*(DONE|cov:)' "$log" | tail -1 | sed -n 's/.*\(cov: [0-9]*\).*/\1/p')"
  corpus="$(find "$work/corpus/$t" -type f | wc -l)"
  found="$(find "$work/artifacts/$t" -type f | wc -l)"
  line="$(printf '%-16s %10s exec/s %12s runs  %-10s corpus %4s -> %-5s findings %s' \
    "$t" "${eps:-?}" "${runs:-?}" "${cov:-}" "$seeds" "$corpus" "$found")"
  summary+=("$line")
  if [ "$status" -ne 0 ] || [ "$found" -ne 0 ] || [ -z "$runs" ]; then
    failed+=("$t")
    echo "!! $t failed (exit $status, $found finding(s)); last lines of its log:"
    tail -n 60 "$log"
    mkdir -p "fuzz/artifacts/$t"
    cp -R "$work/artifacts/$t/." "fuzz/artifacts/$t/" 2>/dev/null || true
  fi
done

echo "== fuzz summary (${secs} s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "FUZZING FOUND PROBLEMS in: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "no findings"
