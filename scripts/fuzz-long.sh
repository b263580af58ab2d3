#!/usr/bin/env bash
# Long fuzzing campaigns. Runs each target (default: all) for SECONDS (default 3600) with
# JOBS parallel libFuzzer processes (default 1), on a corpus that persists between
# campaigns in FUZZ_LONG_DIR (default ~/.cache/snapheap-fuzz/<target>, seeded from
# fuzz/corpus/<target>). Findings go to fuzz/artifacts/<target>/.
#
# With MERGE=1, afterwards merges the inputs that add coverage back into fuzz/corpus/<target>
# (minimised by libFuzzer's -merge=1) so they can be committed as new seeds.
#
# Usage: [JOBS=4] [MERGE=1] scripts/fuzz-long.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3600}"
shift || true
targets="${*:-$(cargo fuzz list --fuzz-dir fuzz)}"
jobs="${JOBS:-1}"
store="${FUZZ_LONG_DIR:-$HOME/.cache/snapheap-fuzz}"

fuzz="$(pwd)/fuzz"
# Heap directories written by the recovery target: on tmpfs when there is one.
scratch="$(mktemp -d /dev/shm/snapheap-fuzz-long.XXXXXX 2>/dev/null || mktemp -d "${TMPDIR:-/tmp}/snapheap-fuzz-scratch.XXXXXX")"
export SNAPHEAP_FUZZ_SCRATCH="$scratch"
trap 'rm -rf "$scratch"' EXIT

cargo fuzz build --fuzz-dir "$fuzz" --sanitizer none
status=0
for t in $targets; do
  corpus="$store/$t"
  logs="$store/logs/$t"
  mkdir -p "$corpus" "$logs" "$fuzz/artifacts/$t"
  [ -d "$fuzz/corpus/$t" ] && cp -Rn "$fuzz/corpus/$t/." "$corpus/"
  echo "== $t: ${secs} s, $jobs job(s), corpus $corpus ($(find "$corpus" -type f | wc -l) inputs), logs $logs"
  parallel=()
  if [ "$jobs" -gt 1 ]; then
    parallel=(-jobs="$jobs" -workers="$jobs")
  fi
  # From the log directory: with -jobs, libFuzzer writes fuzz-<n>.log into the current one.
  (cd "$logs" && cargo fuzz run --fuzz-dir "$fuzz" --sanitizer none "$t" "$corpus" -- \
    -max_total_time="$secs" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 "${parallel[@]}" \
    -artifact_prefix="$fuzz/artifacts/$t/") || status=1
  if [ "${MERGE:-0}" = 1 ]; then
    (cd "$logs" && cargo fuzz run --fuzz-dir "$fuzz" --sanitizer none "$t" "$fuzz/corpus/$t" "$corpus" -- -merge=1) ||
      status=1
  fi
done
if [ "$status" -ne 0 ] || [ -n "$(find "$fuzz/artifacts" -type f 2>/dev/null)" ]; then
  echo "findings (or failures): see fuzz/artifacts/"
  exit 1
fi
echo "no findings"
