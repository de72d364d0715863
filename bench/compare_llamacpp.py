#!/usr/bin/env python3
"""Runs `mideum bench` and llama.cpp (through llama-cpp-python, timed around llama_decode) on
the same GGUF files, interleaved round by round, and prints medians and ratios.

Each engine runs in its own process per measurement, so neither keeps the other's pages warm
in its address space. llama.cpp is timed like llama-bench: random tokens, one warm-up, prompt
as one batch (n_batch = n_ubatch = prompt length), generation one token per decode.

`--kv-type q8_0` stores both engines' KV caches as q8_0 (llama.cpp: `-ctk q8_0 -ctv q8_0`, which
needs its flash-attention path, so that is switched on for it); the default is f16 for both.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time


def llamacpp_worker(path, threads, n_prompt, n_gen, reps, depth=0, kv_type="f16"):
    import random
    import llama_cpp

    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.use_mmap = True
    model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = depth + max(n_prompt, n_gen) + 16
    cp.n_batch = max(n_prompt, 512 if depth else 1)
    cp.n_ubatch = max(n_prompt, 512 if depth else 1)
    cp.n_threads = threads
    cp.n_threads_batch = threads
    if kv_type == "q8_0":
        cp.type_k = cp.type_v = llama_cpp.GGML_TYPE_Q8_0
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = llama_cpp.llama_init_from_model(model, cp)
    assert ctx, "llama.cpp refused the context parameters"
    rnd = random.Random(42)

    def decode(toks):
        arr = (llama_cpp.llama_token * len(toks))(*toks)
        batch = llama_cpp.llama_batch_get_one(arr, len(toks))
        rc = llama_cpp.llama_decode(ctx, batch)
        assert rc == 0, rc

    mem = llama_cpp.llama_get_memory(ctx)
    llama_cpp.llama_memory_clear(mem, True)
    # Context depth like llama-bench's -d: filled once, kept across repetitions.
    ctx_toks = [rnd.randrange(n_vocab) for _ in range(depth)]
    for i in range(0, depth, 512):
        decode(ctx_toks[i:i + 512])
    samples = []
    for rep in range(reps + 1):
        if depth:
            llama_cpp.llama_memory_seq_rm(mem, 0, depth, -1)
        else:
            llama_cpp.llama_memory_clear(mem, True)
        if n_prompt:
            toks = [rnd.randrange(n_vocab) for _ in range(n_prompt)]
            t0 = time.perf_counter()
            decode(toks)
            llama_cpp.llama_synchronize(ctx)
        else:
            toks = [rnd.randrange(n_vocab) for _ in range(n_gen)]
            t0 = time.perf_counter()
            for tk in toks:
                decode([tk])
            llama_cpp.llama_synchronize(ctx)
        dt = time.perf_counter() - t0
        if rep > 0:
            samples.append((n_prompt + n_gen) / dt)
    rss = None
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) * 1024
    print(json.dumps({"n_prompt": n_prompt, "n_gen": n_gen, "n_threads": threads, "n_depth": depth,
                      "avg_ts": statistics.mean(samples),
                      "stddev_ts": statistics.stdev(samples) if len(samples) > 1 else 0.0,
                      "peak_rss_bytes": rss}))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument("--mideum", default="target/release/mideum")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tests", default="tg64@1,tg64@2,pp512@2", help="testN@threads[:dDEPTH], comma-separated")
    ap.add_argument("--inner-reps", type=int, default=2, help="timed repetitions per process (after one warm-up)")
    ap.add_argument("--kv-type", default="f16", choices=["f16", "q8_0"], help="KV cache type of both engines")
    ap.add_argument("--worker", nargs="+", metavar="FILE T P N R [DEPTH [KV_TYPE]]")
    a = ap.parse_args()
    if a.worker:
        f, t, p, n, r = a.worker[:5]
        d = int(a.worker[5]) if len(a.worker) > 5 else 0
        kv = a.worker[6] if len(a.worker) > 6 else "f16"
        llamacpp_worker(f, int(t), int(p), int(n), int(r), d, kv)
        return
    tests = []
    for spec in a.tests.split(","):
        # testN@threads, optionally :dDEPTH for generation at a context depth (tg64@1:d4096).
        spec, _, dspec = spec.partition(":d")
        name, t = spec.split("@")
        p, n = (int(name[2:]), 0) if name.startswith("pp") else (0, int(name[2:]))
        tests.append((name + (f"@d{dspec}" if dspec else ""), int(t), p, n, int(dspec or 0)))
    res = {}
    for rnd in range(a.reps):
        for f in a.files:
            for name, t, p, n, d in tests:
                key = (f, name, t)
                # Alternate which engine goes first.
                order = ["mideum", "llama.cpp"] if rnd % 2 == 0 else ["llama.cpp", "mideum"]
                for eng in order:
                    if eng == "mideum":
                        rows = run_json([a.mideum, "bench", "-m", f, "-p", str(p), "-n", str(n), "-t", str(t), "-r", str(a.inner_reps), "--json",
                                         "--kv-type", a.kv_type]
                                        + (["-d", str(d), "--depth-fill", "synthetic"] if d else []))
                    else:
                        rows = run_json([sys.executable, __file__, "--worker", f, str(t), str(p), str(n), str(a.inner_reps), str(d), a.kv_type])
                    res.setdefault(key, {}).setdefault(eng, []).append(rows[0])
                    r0 = rows[0]
                    print(f"round {rnd + 1}/{a.reps} {f.split('/')[-1]} {name} t={t} {eng}: {r0['avg_ts']:.2f} t/s"
                          + (f" (bw {r0['bw_gbs_before']:.1f}/{r0['bw_gbs_after']:.1f} GB/s, bound {r0['bound_ts']:.1f})" if 'bound_ts' in r0 else ""),
                          file=sys.stderr, flush=True)
    print("| file | test | threads | mideum t/s | llama.cpp t/s | ratio | bound t/s | mideum % of bound | mideum RSS after test | llama.cpp peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (f, name, t), d in res.items():
        m = statistics.median(r["avg_ts"] for r in d["mideum"])
        l = statistics.median(r["avg_ts"] for r in d["llama.cpp"])
        bound = statistics.median(r["bound_ts"] for r in d["mideum"])
        mr = max(r.get("rss_bytes") or 0 for r in d["mideum"]) / 1e9
        lr = max(r.get("peak_rss_bytes") or 0 for r in d["llama.cpp"]) / 1e9
        print(f"| {f.split('/')[-1]} | {name} | {t} | {m:.2f} | {l:.2f} | {m / l:.2f}x | {bound:.1f} | "
              f"{100 * m / bound:.0f}% | {mr:.2f} GB | {lr:.2f} GB |")


if __name__ == "__main__":
    main()
