#!/usr/bin/env bash
# Records a session of the `snapheap` tool on a heap made by `examples/counter.rs` (and one
# `info` of a `GlobalHeap` heap made by `examples/global_counter.rs`) into cli/TRANSCRIPT.md,
# the transcript the README's "Tools" section shows. Every command shown is the command run,
# in a scratch directory, with `counter`, `global_counter` and `snapheap` the release builds.
# Run from anywhere: bash scripts/cli-transcript.sh [OUT]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$repo/cli/TRANSCRIPT.md}"
cargo build -q --release --manifest-path "$repo/Cargo.toml" -p snapheap-cli
cargo build -q --release --manifest-path "$repo/Cargo.toml" -p snapheap --example counter --example global_counter
work="$(mktemp -d /tmp/snapheap-transcript.XXXXXX)"
mkdir "$work/bin"
ln -s "$repo/target/release/snapheap" "$work/bin/snapheap"
ln -s "$repo/target/release/examples/counter" "$work/bin/counter"
ln -s "$repo/target/release/examples/global_counter" "$work/bin/global_counter"
export PATH="$work/bin:$PATH"
cd "$work"
log="$work/transcript.txt"
: >"$log"
# Shows `$ CMD` and its output (stdout and stderr), then the exit code when asked.
run() {
  printf '$ %s\n' "$*" >>"$log"
  set +e
  bash -c "$*" >>"$log" 2>&1
  set -e
  return 0
}
run counter
run counter
run SNAPHEAP_EXAMPLE_KEEP_JOURNAL=1 counter
run SNAPHEAP_EXAMPLE_KEEP_JOURNAL=1 counter
run SNAPHEAP_EXAMPLE_KEEP_JOURNAL=1 counter
run snapheap info data/counter.heap
run 'snapheap check data/counter.heap; echo "exit $?"'
run snapheap journal data/counter.heap
run snapheap journal data/counter.heap --pages --from 6
run snapheap info data/counter.heap --json
# A byte inside the second commit group's first record payload, in a copy.
journal="$(ls data/counter.heap | grep '^journal-' | tail -1)"
off="$(snapheap journal data/counter.heap --json | python3 -c 'import json,sys; g=json.load(sys.stdin)["groups"]; print(g[1]["offset"] + 60)')"
run cp -a data/counter.heap damaged.heap
run "printf '\\xff' | dd of=damaged.heap/$journal bs=1 seek=$off conv=notrunc status=none"
run 'snapheap check damaged.heap; echo "exit $?"'
run 'snapheap check damaged.heap --json; echo "exit $?"'
run snapheap info damaged.heap
run 'snapheap compact data/counter.heap; echo "exit $?"'
run snapheap info data/counter.heap
run 'snapheap check data/counter.heap; echo "exit $?"'
run counter
run 'SNAPHEAP_DIR=global.heap global_counter hello >/dev/null; SNAPHEAP_DIR=global.heap global_counter world >/dev/null'
run 'snapheap info global.heap | head -9'
{
  echo '# `snapheap` transcript'
  echo
  echo "Recorded by \`scripts/cli-transcript.sh\` on $(date -u +%Y-%m-%d) in a scratch directory:"
  echo '`counter` and `global_counter` are `examples/counter.rs` and `examples/global_counter.rs`'
  echo '(release builds), `snapheap` is `target/release/snapheap`. `SNAPHEAP_EXAMPLE_KEEP_JOURNAL=1`'
  echo 'makes the example close without a snapshot, so its commits stay in the journal (here the'
  echo 'journal stays below `close_snapshot_min_bytes`, so the first two runs took none either). The'
  echo 'journal is format 2: the base cache turns most page writes into `DELTA` records.'
  echo
  echo '```text'
  cat "$log"
  echo '```'
} >"$out"
rm -rf "$work"
echo "wrote $out"
