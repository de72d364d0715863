#!/usr/bin/env python3
"""Write a random-weight checkpoint shaped exactly like Mi:dm 2.0 Mini, the yardstick for speed
and memory (the real weights cannot be downloaded here).

Shape: LlamaForCausalLM, hidden 1792, intermediate 4608, 48 layers, 32 heads x head_dim 128,
8 KV heads, vocab 131,392, tied embeddings: 2,305,517,312 parameters. Weights are bf16 drawn
from N(0, 0.02) with a fixed seed (norm weights are 1). The tokenizer files are the small test
tokenizer from testdata/models/tokenizer (ids < 2139 are all that prompts will use).

Usage: python3 scripts/make_mini_shaped.py OUT_DIR [--dtype bf16|f16|f32] [--layers N]
Only numpy is needed. The file is written tensor by tensor (peak memory ~1 GB).
"""
import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_DIR = os.path.join(HERE, "..", "testdata", "models", "tokenizer")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1234)
    a = ap.parse_args()

    hidden, inter, heads, kv, hd, vocab = 1792, 4608, 32, 8, 128, 131392
    cfg = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 2, "head_dim": hd, "hidden_act": "silu",
        "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": inter,
        "max_position_embeddings": 32768, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": heads, "num_hidden_layers": a.layers, "num_key_value_heads": kv,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 8000000,
        "tie_word_embeddings": True,
        "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[a.dtype],
        "use_cache": True, "vocab_size": vocab,
    }
    gen = {"bos_token_id": 0, "do_sample": True, "eos_token_id": [2, 2131], "repetition_penalty": 1.0,
           "temperature": 0.8, "top_k": 20, "top_p": 0.75}

    tensors = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(a.layers):
        p = f"model.layers.{i}."
        tensors += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (heads * hd, hidden)),
            (p + "self_attn.k_proj.weight", (kv * hd, hidden)),
            (p + "self_attn.v_proj.weight", (kv * hd, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, heads * hd)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
        ]
    tensors.append(("model.norm.weight", (hidden,)))

    st_dtype, size = {"bf16": ("BF16", 2), "f16": ("F16", 2), "f32": ("F32", 4)}[a.dtype]
    header, off = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * size
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(a.out, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)
    for fn in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]:
        shutil.copy(os.path.join(TOKENIZER_DIR, fn), os.path.join(a.out, fn))

    rng = np.random.default_rng(a.seed)
    total = sum(int(np.prod(s)) for _, s in tensors)
    done = 0
    with open(os.path.join(a.out, "model.safetensors.partial"), "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for name, shape in tensors:
            if len(shape) == 1:
                x = np.ones(shape, dtype=np.float32)
            else:
                x = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            if a.dtype == "bf16":
                b = (x.view(np.uint32) >> 16).astype(np.uint16)
            elif a.dtype == "f16":
                b = x.astype(np.float16)
            else:
                b = x
            f.write(b.tobytes())
            done += x.size
            sys.stderr.write(f"\r{done / total * 100:5.1f}%  {done * size / 1e9:.2f} GB")
            sys.stderr.flush()
    os.replace(os.path.join(a.out, "model.safetensors.partial"), os.path.join(a.out, "model.safetensors"))
    sys.stderr.write(f"\nwrote {a.out}: {total:,} parameters\n")


if __name__ == "__main__":
    main()
