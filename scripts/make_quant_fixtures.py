#!/usr/bin/env python3
"""Quantized test models and llama.cpp's answers on them (the goldens for
crates/mideum-model/tests/llamacpp_golden.rs; CI cannot build llama.cpp, so they are committed).

Needs: numpy, gguf, llama-cpp-python (pinned in bench/compare_llamacpp.sh) and a release build of
mideum (`cargo build --release`; pass its path with --mideum).

Writes:
  testdata/models/tiny-mini-q8_0.gguf   `mideum quantize testdata/models/tiny-mini --type q8_0`
                                        (our writer from an HF directory: also proves llama.cpp loads it)
  testdata/models/tiny256-q4_k_m.gguf   a random hidden-256 model (K-quants need rows of 256)
                                        quantized to Q4_K_M by llama.cpp's own quantizer
  testdata/models/tiny256-q4_0.gguf     the same model, `mideum quantize --type q4_0` from its F32 GGUF
  testdata/golden/llamacpp.json         per file: llama.cpp's perplexity over fixed ids and its greedy
                                        continuation (16 tokens) of a fixed prompt
"""
import argparse
import json
import math
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import gguf

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "testdata" / "models"


def tiny256_f32(path: Path):
    """hidden 256, intermediate 512, 2 layers, 4 heads x 64, 2 KV heads, the tiny tokenizer."""
    src = gguf.GGUFReader(str(MODELS / "tiny-mini.gguf"))
    rng = np.random.default_rng(7)
    h, ff, nl, nh, nkv, hd = 256, 512, 2, 4, 2, 64
    vocab = int(src.fields["llama.vocab_size"].parts[-1][0])
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny256")
    w.add_context_length(512)
    w.add_embedding_length(h)
    w.add_block_count(nl)
    w.add_feed_forward_length(ff)
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hd)
    for key, field in src.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vt = field.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            et = field.types[-1]
            vals = [field.parts[i] for i in field.data]
            if et == gguf.GGUFValueType.STRING:
                vals = [bytes(v).decode("utf-8") for v in vals]
            else:
                vals = [v.tolist()[0] for v in vals]
            w.add_key_value(key, vals, vt, sub_type=et)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_key_value(key, bytes(field.parts[-1]).decode("utf-8"), vt)
        else:
            w.add_key_value(key, field.parts[-1].tolist()[0], vt)

    def mat(n, k, std):
        return (rng.standard_normal((n, k)) * std).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(vocab, h, 0.15))
    for i in range(nl):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(h)).astype(np.float32))
        w.add_tensor(p + "attn_q.weight", mat(nh * hd, h, 0.08))
        w.add_tensor(p + "attn_k.weight", mat(nkv * hd, h, 0.08))
        w.add_tensor(p + "attn_v.weight", mat(nkv * hd, h, 0.08))
        w.add_tensor(p + "attn_output.weight", mat(h, nh * hd, 0.08))
        w.add_tensor(p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(h)).astype(np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(ff, h, 0.08))
        w.add_tensor(p + "ffn_up.weight", mat(ff, h, 0.08))
        w.add_tensor(p + "ffn_down.weight", mat(h, ff, 0.06))
    w.add_tensor("output_norm.weight", np.ones(h, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_quantize(src: Path, dst: Path, ftype: int):
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    assert rc == 0, f"llama_model_quantize failed: {rc}"


def llamacpp_answers(path: Path, ppl_ids, prompt_ids, n_gen=16):
    from llama_cpp import Llama
    llm = Llama(model_path=str(path), n_ctx=256, n_batch=256, logits_all=True, n_threads=2,
                verbose=False, flash_attn=False)
    llm.eval(ppl_ids)
    scores = np.array(llm.scores[: len(ppl_ids)], dtype=np.float64)
    nll = 0.0
    for i in range(len(ppl_ids) - 1):
        row = scores[i]
        m = row.max()
        lse = m + math.log(np.exp(row - m).sum())
        nll += lse - row[ppl_ids[i + 1]]
    ppl = math.exp(nll / (len(ppl_ids) - 1))
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    for _ in range(n_gen):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return ppl, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mideum", default=str(ROOT / "target" / "release" / "mideum"))
    a = ap.parse_args()
    rng = np.random.default_rng(3)
    ppl_ids = [0] + [int(x) for x in rng.integers(3, 2000, 95)]
    prompt_ids = [0] + [int(x) for x in rng.integers(3, 2000, 11)]
    with tempfile.TemporaryDirectory() as td:
        f32 = Path(td) / "tiny256-f32.gguf"
        tiny256_f32(f32)
        llama_quantize(f32, MODELS / "tiny256-q4_k_m.gguf", 15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
        subprocess.run([a.mideum, "quantize", str(f32), str(MODELS / "tiny256-q4_0.gguf"), "--type", "q4_0"], check=True)
    subprocess.run([a.mideum, "quantize", str(MODELS / "tiny-mini"), str(MODELS / "tiny-mini-q8_0.gguf"), "--type", "q8_0"], check=True)
    golden = {"ppl_ids": ppl_ids, "prompt_ids": prompt_ids, "models": {}}
    for name in ["tiny-mini-q8_0.gguf", "tiny256-q4_k_m.gguf", "tiny256-q4_0.gguf"]:
        ppl, greedy = llamacpp_answers(MODELS / name, ppl_ids, prompt_ids)
        golden["models"][name] = {"perplexity": ppl, "greedy": greedy}
        print(name, ppl, greedy)
    import llama_cpp
    golden["llama_cpp_python"] = llama_cpp.__version__
    (ROOT / "testdata" / "golden" / "llamacpp.json").write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    main()
