#!/usr/bin/env bash
# Side-by-side decode/prefill speed of Mideum and llama.cpp on the same GGUF files.
#
#   bench/compare_llamacpp.sh [MODELS_DIR] [REPS]
#
# 1. installs llama-cpp-python (pinned; it compiles llama.cpp for this CPU) into a venv outside
#    the repo ($VENV, default /work/venv-llamacpp or ~/.cache/mideum-llamacpp-venv),
# 2. builds mideum (release),
# 3. creates the Mi:dm-Mini-shaped random checkpoint (scripts/make_mini_shaped.py) if missing
#    and its GGUF quantizations Q8_0, Q4_K_M, Q4_0 with `mideum quantize`,
# 4. runs both engines on the same files, interleaved, REPS rounds (default 5), and prints the
#    medians, the ratios and the measured bandwidth bound (bench/compare_llamacpp.py).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
MODELS="${1:-/work/models}"
REPS="${2:-5}"
LLAMA_CPP_PYTHON_VERSION="0.3.36"
if [ -z "${VENV:-}" ]; then
  if [ -d /work ]; then VENV=/work/venv-llamacpp; else VENV="$HOME/.cache/mideum-llamacpp-venv"; fi
fi

if ! "$VENV/bin/python" -c "import llama_cpp, numpy" 2>/dev/null; then
  echo "installing llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION into $VENV (compiles llama.cpp; slow on 2 cores)" >&2
  python3 -m venv "$VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$VENV/bin/pip" install --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" numpy
fi

(cd "$ROOT" && cargo build --release -p mideum)
MIDEUM="${CARGO_TARGET_DIR:-$ROOT/target}/release/mideum"

mkdir -p "$MODELS"
if [ ! -f "$MODELS/mini-bf16/model.safetensors" ]; then
  python3 "$ROOT/scripts/make_mini_shaped.py" "$MODELS/mini-bf16"
fi
for t in Q8_0 Q4_K_M Q4_0; do
  f="$MODELS/mini-$t.gguf"
  [ -f "$f" ] || "$MIDEUM" quantize "$MODELS/mini-bf16" "$f" --type "$t"
done

"$VENV/bin/python" "$HERE/compare_llamacpp.py" --mideum "$MIDEUM" --reps "$REPS" \
  "$MODELS/mini-Q8_0.gguf" "$MODELS/mini-Q4_K_M.gguf" "$MODELS/mini-Q4_0.gguf"
