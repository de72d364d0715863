#!/usr/bin/env python3
"""Writes testdata/golden/quant_blocks.bin: random GGML blocks of every quantized type Mideum
reads, with their dequantization by the `gguf` Python package (the reference numpy port of
GGML's dequantize_row_*), plus Q8_0/Q4_0 quantizations of random floats by the same package.

Layout, repeated per record: u32 ggml_type, u32 kind (0 = dequant, 1 = quant), u32 n_blocks,
then for kind 0: block bytes, then n_blocks*block_elems f32 values;
for kind 1: n_blocks*block_elems f32 inputs, then block bytes.
"""
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "golden" / "quant_blocks.bin"
TYPES = {T.Q8_0: (32, 34), T.Q4_0: (32, 18), T.Q4_K: (256, 144), T.Q5_K: (256, 176), T.Q6_K: (256, 210)}

rng = np.random.default_rng(1234)
out = bytearray()
for t, (elems, size) in TYPES.items():
    nb = 6
    raw = rng.integers(0, 256, size=(nb, size), dtype=np.uint8)
    # finite, moderately sized f16 scales where the format keeps them
    def put(col, vals):
        raw[:, col:col + 2] = np.frombuffer(vals.astype(np.float16).tobytes(), dtype=np.uint8).reshape(nb, 2)
    if t in (T.Q8_0, T.Q4_0):
        put(0, rng.normal(0, 0.05, nb))
    elif t in (T.Q4_K, T.Q5_K):
        put(0, np.abs(rng.normal(0, 0.01, nb)))
        put(2, np.abs(rng.normal(0, 0.01, nb)))
    else:
        put(208, rng.normal(0, 0.01, nb))
    deq = dequantize(raw.reshape(-1), t).astype(np.float32).reshape(-1)
    assert deq.size == nb * elems
    out += struct.pack("<III", int(t), 0, nb) + raw.tobytes() + deq.tobytes()
for t in (T.Q8_0, T.Q4_0):
    nb = 8
    x = rng.normal(0, 1, nb * 32).astype(np.float32)
    x[5] = 0.0
    x[40:72] = 0.0  # an all-zero block
    q = quantize(x.reshape(1, -1), t).reshape(-1)
    out += struct.pack("<III", int(t), 1, nb) + x.tobytes() + q.tobytes()
OUT.write_bytes(bytes(out))
print(f"wrote {OUT} ({len(out)} bytes)", file=sys.stderr)
