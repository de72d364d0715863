//! The Llama / Mi:dm 2.0 forward pass on the CPU, in f32 over weights that stay in their stored
//! type. One function per step, buffers sized once per call:
//! embed → per layer (RMSNorm → Q/K/V → RoPE → causal GQA attention → O → residual →
//! RMSNorm → gate/up → SwiGLU → down → residual) → final RMSNorm → LM head.

use crate::config::{ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::kv::{KvPool, SeqKv, BLOCK_TOKENS};
use crate::tensor::Tensor;
use mideum_kernels::ops::{add_assign, rmsnorm, rope, silu_mul, softmax};
use mideum_kernels::par::DisjointSlice;
use mideum_kernels::{matmul, DotKernel, RopeLayout, ThreadPool};
use std::collections::HashMap;

/// Which tensor names a checkpoint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameScheme {
    HuggingFace,
    Gguf,
}

struct LayerWeights {
    attn_norm: Vec<f32>,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    ffn_norm: Vec<f32>,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
}

pub struct Llama {
    pub config: ModelConfig,
    embed: Tensor,
    layers: Vec<LayerWeights>,
    final_norm: Vec<f32>,
    lm_head: Tensor,
    /// The LM head is the embedding matrix (counted once in `weight_bytes`).
    tied: bool,
    rope_layout: RopeLayout,
    pool: ThreadPool,
    kern: DotKernel,
}

/// A private cache for one sequence (the CLI, scoring, tests): its own block pool sized to
/// the context window, allocated as it fills.
pub struct KvCache {
    pool: KvPool,
    seq: SeqKv,
    max_len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Forgets positions from `len` on (e.g. to rerun from a fixed context).
    pub fn truncate(&mut self, len: usize) {
        // A private pool never shares blocks, so no copy is needed and this cannot fail.
        let _ = self.pool.truncate(&mut self.seq, len);
    }

    /// Bytes of KV storage allocated.
    pub fn bytes(&self) -> usize {
        self.pool.allocated_bytes()
    }
}

/// One sequence's share of a batched forward pass.
pub struct BatchItem<'a> {
    /// New tokens, at the positions after those already in `seq`.
    pub tokens: &'a [u32],
    pub seq: &'a mut SeqKv,
    pub logits: Logits,
}

/// Which positions' logits `forward` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (a prefill chunk that does not end the prompt).
    None,
    Last,
    All,
}

fn take(t: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor> {
    t.remove(name)
        .ok_or_else(|| ModelError::tensor(name, "missing from the checkpoint"))
}

fn take_shaped(t: &mut HashMap<String, Tensor>, name: &str, shape: &[usize]) -> Result<Tensor> {
    let x = take(t, name)?;
    x.expect_shape(shape)?;
    Ok(x)
}

fn norm(t: &mut HashMap<String, Tensor>, name: &str, n: usize) -> Result<Vec<f32>> {
    let x = take_shaped(t, name, &[n])?;
    Ok(x.to_f32_vec())
}

impl Llama {
    /// Builds the model from a checkpoint's tensors, checking every shape against the config.
    pub fn new(
        config: ModelConfig,
        mut t: HashMap<String, Tensor>,
        scheme: NameScheme,
        n_threads: usize,
    ) -> Result<Llama> {
        let c = &config;
        let (h, q, kv, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let hf = scheme == NameScheme::HuggingFace;
        let embed_name = if hf {
            "model.embed_tokens.weight"
        } else {
            "token_embd.weight"
        };
        let embed = take_shaped(&mut t, embed_name, &[c.vocab_size, h])?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let n = |hf_name: &str, gg_name: &str| {
                if hf {
                    format!("model.layers.{i}.{hf_name}.weight")
                } else {
                    format!("blk.{i}.{gg_name}.weight")
                }
            };
            layers.push(LayerWeights {
                attn_norm: norm(&mut t, &n("input_layernorm", "attn_norm"), h)?,
                wq: take_shaped(&mut t, &n("self_attn.q_proj", "attn_q"), &[q, h])?,
                wk: take_shaped(&mut t, &n("self_attn.k_proj", "attn_k"), &[kv, h])?,
                wv: take_shaped(&mut t, &n("self_attn.v_proj", "attn_v"), &[kv, h])?,
                wo: take_shaped(&mut t, &n("self_attn.o_proj", "attn_output"), &[h, q])?,
                ffn_norm: norm(&mut t, &n("post_attention_layernorm", "ffn_norm"), h)?,
                w_gate: take_shaped(&mut t, &n("mlp.gate_proj", "ffn_gate"), &[ff, h])?,
                w_up: take_shaped(&mut t, &n("mlp.up_proj", "ffn_up"), &[ff, h])?,
                w_down: take_shaped(&mut t, &n("mlp.down_proj", "ffn_down"), &[h, ff])?,
            });
        }
        let final_norm = norm(
            &mut t,
            if hf {
                "model.norm.weight"
            } else {
                "output_norm.weight"
            },
            h,
        )?;
        let head_name = if hf {
            "lm_head.weight"
        } else {
            "output.weight"
        };
        let tied = !t.contains_key(head_name);
        let lm_head = match t.remove(head_name) {
            Some(x) => {
                x.expect_shape(&[c.vocab_size, h])?;
                x
            }
            // GGUF omits `output.weight` when embeddings are tied.
            None if c.tie_word_embeddings || !hf => embed.clone(),
            None => {
                return Err(ModelError::tensor(
                    head_name,
                    "missing (and tie_word_embeddings is false)",
                ))
            }
        };
        let rope_layout = if hf {
            RopeLayout::HalfSplit
        } else {
            RopeLayout::Interleaved
        };
        Ok(Llama {
            config,
            embed,
            layers,
            final_norm,
            lm_head,
            tied,
            rope_layout,
            pool: ThreadPool::new(n_threads),
            kern: DotKernel::detect(),
        })
    }

    pub fn new_cache(&self, max_len: usize) -> KvCache {
        KvCache {
            pool: self.new_pool(max_len.div_ceil(BLOCK_TOKENS)),
            seq: SeqKv::default(),
            max_len,
        }
    }

    /// A shared block pool of at most `max_blocks` blocks.
    pub fn new_pool(&self, max_blocks: usize) -> KvPool {
        KvPool::new(self.config.num_layers, self.config.kv_dim(), max_blocks)
    }

    /// Bytes of one KV block for this model.
    pub fn kv_block_bytes(&self) -> usize {
        KvPool::block_bytes(self.config.num_layers, self.config.kv_dim())
    }

    /// Bytes of weights (mapped or owned) the model reads.
    pub fn weight_bytes(&self) -> usize {
        let sz = |t: &Tensor| t.nbytes();
        let mut s = sz(&self.embed);
        if !self.tied {
            s += sz(&self.lm_head);
        }
        for l in &self.layers {
            s += [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                .iter()
                .map(|t| sz(t))
                .sum::<usize>();
        }
        s
    }

    /// Inverse frequencies and the cos/sin multiplier for a forward pass ending at `seq_len`.
    fn rope_freqs(&self, seq_len: usize) -> (Vec<f32>, f32) {
        let c = &self.config;
        let dim = c.head_dim;
        let base_freqs = |base: f64| -> Vec<f64> {
            (0..dim / 2)
                .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
                .collect()
        };
        let (inv, att): (Vec<f64>, f64) = match &c.rope_scaling {
            RopeScaling::None => (base_freqs(c.rope_theta), 1.0),
            RopeScaling::Linear { factor } => (
                base_freqs(c.rope_theta)
                    .iter()
                    .map(|f| f / factor)
                    .collect(),
                1.0,
            ),
            RopeScaling::Factors(fs) => (
                base_freqs(c.rope_theta)
                    .iter()
                    .zip(fs)
                    .map(|(f, &d)| f / d as f64)
                    .collect(),
                1.0,
            ),
            RopeScaling::Dynamic {
                factor,
                original_max,
            } => {
                let base = if seq_len > *original_max {
                    let s = seq_len as f64;
                    c.rope_theta
                        * ((factor * s / *original_max as f64) - (factor - 1.0))
                            .powf(dim as f64 / (dim as f64 - 2.0))
                } else {
                    c.rope_theta
                };
                (base_freqs(base), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max,
            } => {
                let old = *original_max as f64;
                let low_wl = old / low_freq_factor;
                let high_wl = old / high_freq_factor;
                let inv = base_freqs(c.rope_theta)
                    .into_iter()
                    .map(|f| {
                        let wl = 2.0 * std::f64::consts::PI / f;
                        if wl < high_wl {
                            f
                        } else if wl > low_wl {
                            f / factor
                        } else {
                            let smooth =
                                (old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (inv, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                attention_factor,
                truncate,
            } => {
                let get_mscale = |scale: f64, m: f64| {
                    if scale <= 1.0 {
                        1.0
                    } else {
                        0.1 * m * scale.ln() + 1.0
                    }
                };
                let att = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    (None, Some(m), Some(ma)) if *m != 0.0 && *ma != 0.0 => {
                        get_mscale(*factor, *m) / get_mscale(*factor, *ma)
                    }
                    _ => get_mscale(*factor, 1.0),
                };
                let base = c.rope_theta;
                let d = dim as f64;
                let corr = |rot: f64| {
                    d * (*original_max as f64 / (rot * 2.0 * std::f64::consts::PI)).ln()
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (corr(*beta_fast), corr(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let mut high = high.min(d - 1.0);
                if low == high {
                    high += 0.001;
                }
                let inv = (0..dim / 2)
                    .map(|i| {
                        let pos = base.powf((2 * i) as f64 / d);
                        let extra = 1.0 / pos;
                        let inter = 1.0 / (factor * pos);
                        let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                        let extra_factor = 1.0 - ramp;
                        inter * (1.0 - extra_factor) + extra * extra_factor
                    })
                    .collect();
                (inv, att)
            }
        };
        (inv.into_iter().map(|f| f as f32).collect(), att as f32)
    }

    /// Runs `tokens` at the positions after those already in `cache`, appends their keys and
    /// values, and returns logits (`vocab_size` floats per returned position).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        if cache.seq.len() + tokens.len() > cache.max_len {
            return Err(ModelError::ContextOverflow {
                tokens: cache.seq.len() + tokens.len(),
                context: cache.max_len,
            });
        }
        let mut items = [BatchItem {
            tokens,
            seq: &mut cache.seq,
            logits: which,
        }];
        let mut out = self.forward_batch(&mut cache.pool, &mut items)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// One forward pass over several sequences at once: every weight matrix is read once for
    /// all their tokens; attention runs per sequence over its own blocks. Returns the requested
    /// logits per item (empty for `Logits::None`).
    pub fn forward_batch(
        &self,
        pool: &mut KvPool,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Vec<f32>>> {
        let c = &self.config;
        for it in items.iter() {
            if let Some(&bad) = it.tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(ModelError::Input(format!(
                    "token id {bad} is outside the model's vocabulary (size {})",
                    c.vocab_size
                )));
            }
        }
        // Reserve every block first so that a full cache fails before any work is done.
        let need: usize = items
            .iter()
            .map(|it| KvPool::blocks_needed(it.seq, it.tokens.len()))
            .sum();
        if need > pool.available_blocks() {
            return Err(ModelError::KvCacheFull {
                blocks: pool.max_blocks(),
                tokens: pool.max_tokens(),
            });
        }
        for it in items.iter_mut() {
            pool.reserve(it.seq, it.tokens.len())?;
        }
        // Row r of the flattened batch belongs to item `row_item[r]` at position `row_pos[r]`.
        let mut row_item = Vec::new();
        let mut row_pos = Vec::new();
        for (ii, it) in items.iter().enumerate() {
            let p0 = it.seq.len();
            for i in 0..it.tokens.len() {
                row_item.push(ii);
                row_pos.push(p0 + i);
            }
        }
        let t = row_item.len();
        if t == 0 {
            return Ok(items.iter().map(|_| Vec::new()).collect());
        }
        let (h, qd, kvd, ff, hd) = (
            c.hidden_size,
            c.q_dim(),
            c.kv_dim(),
            c.intermediate_size,
            c.head_dim,
        );
        let (tp, kern) = (&self.pool, self.kern);

        let mut x = vec![0f32; t * h];
        for (r, &id) in items.iter().flat_map(|it| it.tokens.iter()).enumerate() {
            self.embed
                .view()
                .row_f32(id as usize, h, &mut x[r * h..(r + 1) * h]);
        }
        // cos/sin per row; frequencies can depend on each sequence's length (dynamic NTK).
        let half = hd / 2;
        let mut cos = vec![0f32; t * half];
        let mut sin = vec![0f32; t * half];
        let mut r = 0;
        for it in items.iter() {
            let (inv_freq, att_scale) = self.rope_freqs(it.seq.len() + it.tokens.len());
            for i in 0..it.tokens.len() {
                let pos = (it.seq.len() + i) as f32;
                for (j, &f) in inv_freq.iter().enumerate() {
                    let a = pos * f;
                    cos[r * half + j] = a.cos() * att_scale;
                    sin[r * half + j] = a.sin() * att_scale;
                }
                r += 1;
            }
        }

        let mut hbuf = vec![0f32; t * h];
        let mut q = vec![0f32; t * qd];
        let mut k = vec![0f32; t * kvd];
        let mut v = vec![0f32; t * kvd];
        let mut attn = vec![0f32; t * qd];
        let mut o = vec![0f32; t * h];
        let mut gate = vec![0f32; t * ff];
        let mut up = vec![0f32; t * ff];
        let scale = 1.0 / (hd as f32).sqrt();
        let group = c.num_heads / c.num_kv_heads;
        let max_ctx = row_pos.iter().max().copied().unwrap_or(0) + 1;

        for (li, l) in self.layers.iter().enumerate() {
            for i in 0..t {
                rmsnorm(
                    &x[i * h..(i + 1) * h],
                    &l.attn_norm,
                    c.rms_norm_eps,
                    &mut hbuf[i * h..(i + 1) * h],
                );
            }
            matmul(tp, kern, &hbuf, t, h, l.wq.view(), qd, &mut q);
            matmul(tp, kern, &hbuf, t, h, l.wk.view(), kvd, &mut k);
            matmul(tp, kern, &hbuf, t, h, l.wv.view(), kvd, &mut v);
            for i in 0..t {
                let (cs, sn) = (
                    &cos[i * half..(i + 1) * half],
                    &sin[i * half..(i + 1) * half],
                );
                for hh in 0..c.num_heads {
                    rope(
                        &mut q[i * qd + hh * hd..i * qd + (hh + 1) * hd],
                        cs,
                        sn,
                        self.rope_layout,
                    );
                }
                for hh in 0..c.num_kv_heads {
                    rope(
                        &mut k[i * kvd + hh * hd..i * kvd + (hh + 1) * hd],
                        cs,
                        sn,
                        self.rope_layout,
                    );
                }
                pool.write(
                    items[row_item[i]].seq,
                    li,
                    row_pos[i],
                    &k[i * kvd..(i + 1) * kvd],
                    &v[i * kvd..(i + 1) * kvd],
                );
            }

            let dst = DisjointSlice::new(&mut attn);
            let (qr, pool_r, items_r, row_item_r, row_pos_r) =
                (&q, &*pool, &*items, &row_item, &row_pos);
            // One task per (row, head): rows of different sequences read different blocks.
            tp.for_each(t * c.num_heads, &|task| {
                let (i, hh) = (task / c.num_heads, task % c.num_heads);
                let seq = &*items_r[row_item_r[i]].seq;
                let n_ctx = row_pos_r[i] + 1;
                let kvh = hh / group;
                let mut scores = Vec::with_capacity(max_ctx);
                let qv = &qr[i * qd + hh * hd..i * qd + (hh + 1) * hd];
                for j in 0..n_ctx {
                    let kv = &pool_r.key(seq, li, j)[kvh * hd..(kvh + 1) * hd];
                    scores.push(kern.dot_f32(qv, kv) * scale);
                }
                softmax(&mut scores);
                // SAFETY: task (i, hh) owns row i's columns hh*hd..(hh+1)*hd; tasks are distinct.
                let out = unsafe { dst.range(i * qd + hh * hd, i * qd + (hh + 1) * hd) };
                out.iter_mut().for_each(|o| *o = 0.0);
                for (j, &p) in scores.iter().enumerate() {
                    let vv = &pool_r.value(seq, li, j)[kvh * hd..(kvh + 1) * hd];
                    for (o, &vx) in out.iter_mut().zip(vv) {
                        *o += p * vx;
                    }
                }
            });
            matmul(tp, kern, &attn, t, qd, l.wo.view(), h, &mut o);
            add_assign(&mut x, &o);

            for i in 0..t {
                rmsnorm(
                    &x[i * h..(i + 1) * h],
                    &l.ffn_norm,
                    c.rms_norm_eps,
                    &mut hbuf[i * h..(i + 1) * h],
                );
            }
            matmul(tp, kern, &hbuf, t, h, l.w_gate.view(), ff, &mut gate);
            matmul(tp, kern, &hbuf, t, h, l.w_up.view(), ff, &mut up);
            silu_mul(&mut gate, &up);
            matmul(tp, kern, &gate, t, ff, l.w_down.view(), h, &mut o);
            add_assign(&mut x, &o);
        }
        for it in items.iter_mut() {
            pool.commit(it.seq, it.tokens);
        }

        // Rows whose logits are wanted, then one LM-head product for all of them.
        let mut rows = Vec::new();
        let mut r0 = 0;
        for it in items.iter() {
            let n = it.tokens.len();
            match it.logits {
                Logits::None => {}
                Logits::Last if n > 0 => rows.push(r0 + n - 1),
                Logits::Last => {}
                Logits::All => rows.extend(r0..r0 + n),
            }
            r0 += n;
        }
        let mut normed = vec![0f32; rows.len() * h];
        for (ri, &i) in rows.iter().enumerate() {
            rmsnorm(
                &x[i * h..(i + 1) * h],
                &self.final_norm,
                c.rms_norm_eps,
                &mut normed[ri * h..(ri + 1) * h],
            );
        }
        let vocab = c.vocab_size;
        let mut logits = vec![0f32; rows.len() * vocab];
        matmul(
            tp,
            kern,
            &normed,
            rows.len(),
            h,
            self.lm_head.view(),
            vocab,
            &mut logits,
        );
        let mut out = Vec::with_capacity(items.len());
        let mut taken = 0;
        for it in items.iter() {
            let n = match it.logits {
                Logits::None => 0,
                Logits::Last => usize::from(!it.tokens.is_empty()),
                Logits::All => it.tokens.len(),
            };
            out.push(logits[taken * vocab..(taken + n) * vocab].to_vec());
            taken += n;
        }
        Ok(out)
    }
}
