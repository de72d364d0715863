#!/usr/bin/env bash
# llama.cpp's llama-server and `mideum serve` on the same GGUF, measured by the same load
# generator (bench/loadgen.py), one server after the other, both on loopback with the same
# number of threads. llama-server is restarted for each concurrency level with -np equal to it
# (its slots are its batch); mideum runs once for all levels (continuous batching).
#
#   bench/compare_llama_server.sh GGUF [OUT_DIR]
#
# Environment (defaults):
#   LLAMA_SERVER   /work/peers/llama.cpp/build/bin/llama-server  (built outside this repo)
#   MIDEUM_BIN     target/release/mideum (built with `cargo build --release -p mideum` if absent)
#   MIDEUM_ARGS    extra `mideum serve` arguments
#   LLAMA_ARGS     extra llama-server arguments (its Jinja engine cannot parse the test
#                  tokenizer's template: use "--no-jinja --chat-template llama3" for chat)
#   LOADGEN_ARGS   extra loadgen arguments, e.g. "--endpoint completions" (the same prompt text
#                  on both servers, no chat template involved)
#   THREADS=2  CONCURRENCY="1 4 8 16"  MAX_TOKENS=64  PREFIX_TOKENS=1000
#   ROUNDS=2       requests per level = ROUNDS x concurrency (REQUESTS: a fixed number instead)
#   SLOT_CTX=2048  llama-server context per slot (-c = SLOT_CTX x -np)
#   ONLY           "llama" or "mideum" to run one side
#   LOADGEN_PY     python with aiohttp (default: target/loadgen-venv/bin/python, created from
#                  bench/requirements-loadgen.txt)
# Writes OUT_DIR (default target/bench-compare/<time>)/{llama,mideum}-*.json, the servers' logs
# and a summary; prints the loadgen tables and the mideum/llama-server ratios.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

GGUF="${1:?usage: bench/compare_llama_server.sh GGUF [OUT_DIR]}"
OUT="${2:-$ROOT/target/bench-compare/$(date +%Y%m%d-%H%M%S)}"
LLAMA_SERVER="${LLAMA_SERVER:-/work/peers/llama.cpp/build/bin/llama-server}"
MIDEUM_BIN="${MIDEUM_BIN:-$ROOT/target/release/mideum}"
THREADS="${THREADS:-2}"
CONCURRENCY="${CONCURRENCY:-1 4 8 16}"
MAX_TOKENS="${MAX_TOKENS:-64}"
PREFIX_TOKENS="${PREFIX_TOKENS:-1000}"
SLOT_CTX="${SLOT_CTX:-2048}"
ONLY="${ONLY:-}"
LOAD_TIMEOUT_S=600       # model load + /health
LEVEL_TIMEOUT_S=3600     # one loadgen run
mkdir -p "$OUT"
[ -f "$GGUF" ] || { echo "no GGUF at $GGUF" >&2; exit 2; }

if [ -z "${LOADGEN_PY:-}" ]; then
    VENV="$ROOT/target/loadgen-venv"
    if [ ! -x "$VENV/bin/python" ] || ! cmp -s bench/requirements-loadgen.txt "$VENV/.requirements.txt"; then
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r bench/requirements-loadgen.txt
        cp bench/requirements-loadgen.txt "$VENV/.requirements.txt"
    fi
    LOADGEN_PY="$VENV/bin/python"
fi

free_port() { "$LOADGEN_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
trap stop_server EXIT INT TERM

# wait_ready URL PATH LOG: until PATH answers 200, the server dies, or LOAD_TIMEOUT_S passes.
wait_ready() {
    local url="$1" path="$2" log="$3" i
    for i in $(seq 1 $((LOAD_TIMEOUT_S * 2))); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "server exited while loading; log tail:" >&2; tail -20 "$log" >&2; return 1
        fi
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "$url$path")" = 200 ]; then return 0; fi
        sleep 0.5
    done
    echo "server not ready after ${LOAD_TIMEOUT_S}s" >&2; return 1
}

# loadgen URL JSON CONC PROBE [--model M]
loadgen() {
    local url="$1" json="$2" conc="$3" probe="$4"; shift 4
    local req="${REQUESTS:-}"
    local reqargs=(--rounds "${ROUNDS:-2}")
    [ -n "$req" ] && reqargs=(--requests-per-level "$req")
    timeout "$LEVEL_TIMEOUT_S" "$LOADGEN_PY" bench/loadgen.py --url "$url" --concurrency "$conc" \
        --max-tokens "$MAX_TOKENS" --prefix-tokens "$PREFIX_TOKENS" --prefix-probe "$probe" \
        "${reqargs[@]}" --json "$json" ${LOADGEN_ARGS:-} "$@"
}

if [ "$ONLY" != "mideum" ]; then
    [ -x "$LLAMA_SERVER" ] || { echo "no llama-server at $LLAMA_SERVER (set LLAMA_SERVER)" >&2; exit 2; }
    first=1
    for c in $CONCURRENCY; do
        port="$(free_port)"
        log="$OUT/llama-server-np$c.log"
        echo "== llama-server -np $c -t $THREADS on 127.0.0.1:$port" >&2
        "$LLAMA_SERVER" -m "$GGUF" --host 127.0.0.1 --port "$port" -t "$THREADS" -tb "$THREADS" \
            -np "$c" -c $((SLOT_CTX * c)) --no-webui ${LLAMA_ARGS:-} >"$log" 2>&1 &
        SERVER_PID=$!
        wait_ready "http://127.0.0.1:$port" /health "$log"
        probe=0; [ "$first" = 1 ] && [ "$PREFIX_TOKENS" -gt 0 ] && probe=3
        loadgen "http://127.0.0.1:$port" "$OUT/llama-c$c.json" "$c" "$probe" \
            | tee "$OUT/llama-c$c.txt"
        stop_server
        first=0
    done
fi

if [ "$ONLY" != "llama" ]; then
    if [ ! -x "$MIDEUM_BIN" ]; then
        cargo build --release --locked -p mideum
        MIDEUM_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/mideum"
    fi
    port="$(free_port)"
    log="$OUT/mideum.log"
    # shellcheck disable=SC2086
    echo "== mideum serve -t $THREADS on 127.0.0.1:$port" >&2
    "$MIDEUM_BIN" serve --model "$GGUF" --host 127.0.0.1 --port "$port" -t "$THREADS" ${MIDEUM_ARGS:-} >"$log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$port" /ready "$log"
    probe=0; [ "$PREFIX_TOKENS" -gt 0 ] && probe=3
    loadgen "http://127.0.0.1:$port" "$OUT/mideum.json" "$(echo $CONCURRENCY | tr ' ' ,)" "$probe" | tee "$OUT/mideum.txt"
    stop_server
fi

"$LOADGEN_PY" - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import glob, json, os, sys
out = sys.argv[1]
def load(p):
    with open(p, encoding="utf-8") as f:
        return json.load(f)
llama = {}
probe_l = None
for p in sorted(glob.glob(os.path.join(out, "llama-c*.json"))):
    r = load(p)
    probe_l = probe_l or r.get("prefix_probe")
    for l in r["levels"]:
        llama[l["concurrency"]] = l
mid, probe_m = {}, None
if os.path.exists(os.path.join(out, "mideum.json")):
    r = load(os.path.join(out, "mideum.json"))
    probe_m = r.get("prefix_probe")
    mid = {l["concurrency"]: l for l in r["levels"]}
def f(x, s=1.0, nd=2):
    return "-" if x is None else f"{x * s:.{nd}f}"
def ratio(a, b):
    return "-" if not a or not b else f"{a / b:.2f}x"
print("\n| conc | llama tok/s | mideum tok/s | ratio | llama TTFT p50 | mideum TTFT p50 | llama ITL p50 ms | mideum ITL p50 ms |")
print("|---|---|---|---|---|---|---|---|")
for c in sorted(set(llama) | set(mid)):
    a, b = llama.get(c, {}), mid.get(c, {})
    print(f"| {c} | {f(a.get('agg_tok_s'))} | {f(b.get('agg_tok_s'))} | {ratio(b.get('agg_tok_s'), a.get('agg_tok_s'))} "
          f"| {f(a.get('ttft_p50_s'))} | {f(b.get('ttft_p50_s'))} | {f(a.get('itl_p50_s'), 1000, 1)} | {f(b.get('itl_p50_s'), 1000, 1)} |")
def pr(name, p):
    if p:
        print(f"{name}: cold TTFT {f(p.get('cold_ttft_s'))} s, warm TTFT median {f(p.get('warm_ttft_median_s'))} s "
              f"({p.get('prompt_tokens')} prompt tokens)")
print()
pr("llama-server prefix probe (-np 1)", probe_l)
pr("mideum prefix probe", probe_m)
if probe_l and probe_m and probe_m.get("cold_ttft_s") and probe_l.get("cold_ttft_s"):
    print(f"cold TTFT: llama-server / mideum = {probe_l['cold_ttft_s'] / probe_m['cold_ttft_s']:.2f}x")
EOF
echo "results in $OUT" >&2
