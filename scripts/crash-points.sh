#!/usr/bin/env bash
# Long simulated-power-loss campaign: seeded random workloads on the simulated disk, crashed at
# every sync boundary (each crash mode) and at random write points, every recovery checked
# against the model (tests/crash_points.rs). Also runs every sequence of up to 3 operations in
# all three crash modes, and the fault loops.
# Usage: scripts/crash-points.sh [crash points, default 100000] [first seed, default 1]
set -euo pipefail
cd "$(dirname "$0")/.."
SNAPHEAP_CRASH_POINTS="${1:-100000}" SNAPHEAP_CRASH_SEED="${2:-1}" SNAPHEAP_SEQ_ALL_MODES=1 \
  cargo test --release --test crash_points --test fault_loops -- --nocapture --test-threads=2
