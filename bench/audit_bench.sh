#!/usr/bin/env bash
# Audit write throughput and the latency one record adds per request at a fixed rate, on
# SQLite (a temp file) and PostgreSQL (a throwaway local server from scripts/pg-test-server.sh,
# or $MIDEUM_BENCH_PG_URL). Usage: bash bench/audit_bench.sh [RATE] [SECONDS] [RECORDS]
# Run at normal priority on an otherwise idle machine; figures go to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE="${1:-500}"; SECS="${2:-10}"; RECORDS="${3:-20000}"
BIN="${MIDEUM_BIN:-target/release/mideum}"
[ -x "$BIN" ] || cargo build --release -p mideum
tmp="$(mktemp -d)"
# On exit: stop the throwaway PostgreSQL server if this script started one, remove the temp dir.
cleanup() {
  if [ -s "$tmp/pgdir" ]; then bash scripts/pg-test-server.sh stop "$(cat "$tmp/pgdir")" || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
echo "== SQLite ($tmp/audit.db; fsync per batch)"
"$BIN" audit bench --store "sqlite:$tmp/audit.db" --rate "$RATE" --seconds "$SECS" --records "$RECORDS"
PG="${MIDEUM_BENCH_PG_URL:-$(PG_TEST_DIR_FILE="$tmp/pgdir" bash scripts/pg-test-server.sh 55499)}"
echo "== PostgreSQL"
"$BIN" audit bench --store "$PG" --rate "$RATE" --seconds "$SECS" --records "$RECORDS"
