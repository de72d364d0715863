//! Sequences, KV cache, sampler and the generation loop.
