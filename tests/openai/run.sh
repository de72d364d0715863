#!/usr/bin/env bash
# The OpenAI-compatibility suite: the official `openai` Python client against `mideum serve`
# on the tiny test checkpoints. Creates target/openai-venv from requirements.txt (PyPI), builds
# the debug binary unless MIDEUM_BIN names one, and runs pytest; extra arguments go to pytest.
# Exit status: pytest's (non-zero on any failure).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"

VENV="$ROOT/target/openai-venv"
REQ="$ROOT/tests/openai/requirements.txt"
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQ" "$VENV/.requirements.txt"; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
    cp "$REQ" "$VENV/.requirements.txt"
fi

if [ -z "${MIDEUM_BIN:-}" ]; then
    cargo build --quiet --locked -p mideum
    export MIDEUM_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/mideum"
fi

exec "$VENV/bin/python" -m pytest -c "$ROOT/tests/openai/pytest.ini" --rootdir "$ROOT/tests/openai" "$ROOT/tests/openai" "$@"
