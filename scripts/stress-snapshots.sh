#!/usr/bin/env bash
# Forked snapshots under allocator contention (tests/stress.rs), default 10,000 of them, on
# real files; a watchdog aborts if a snapshot writer ever hangs.
# Usage: scripts/stress-snapshots.sh [snapshots, default 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
SNAPHEAP_STRESS_SNAPSHOTS="${1:-10000}" \
  cargo test --release --test stress -- --nocapture
