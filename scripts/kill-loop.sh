#!/usr/bin/env bash
# Runs the process-kill crash test with many kills (default 10,000).
# Usage: scripts/kill-loop.sh [kills] [seed]
set -euo pipefail
cd "$(dirname "$0")/.."
SNAPHEAP_KILLS="${1:-10000}" SNAPHEAP_SEED="${2:-$RANDOM}" \
  cargo test --release --test crash_kill -- --nocapture
