//! The Llama / Mi:dm 2.0 forward pass on the CPU, in f32 over weights that stay in their stored
//! type. One function per step, buffers sized once per call:
//! embed → per layer (RMSNorm → Q/K/V → RoPE → causal GQA attention → O → residual →
//! RMSNorm → gate/up → SwiGLU → down → residual) → final RMSNorm → LM head.
//!
//! Every intermediate buffer lives in a grow-only [`Workspace`] kept by the model and reused
//! from one forward pass to the next, so a decode step allocates nothing once warmed up (see
//! `tests/no_alloc.rs` for what is measured). RMSNorm is fused into the quantization of the
//! Q/K/V and gate/up inputs, and each of those groups is one pool dispatch (`matmul_multi`).

use crate::config::{ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::kv::{KvPool, KvType, SeqKv, BLOCK_TOKENS};
use crate::tensor::Tensor;
use mideum_kernels::attn::{attend, attend_lse, merge_lse, AttnKernel, AttnShape};
use mideum_kernels::ops::{add_assign, rmsnorm, rope, silu_mul_par, PAR_ROWS};
use mideum_kernels::par::DisjointSlice;
use mideum_kernels::{matmul, matmul_multi_rmsnorm, DotKernel, RopeLayout, ThreadPool};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

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
    attn_kern: AttnKernel,
    kv_type: KvType,
    /// Scratch of the forward pass; the lock also serializes concurrent callers.
    ws: Mutex<Workspace>,
}

/// One attention task: `rows` consecutive rows (from flattened row `row0`) of one sequence,
/// for one KV head and the query heads of its group.
#[derive(Clone, Copy, Debug)]
struct AttnTask {
    item: u32,
    row0: u32,
    rows: u32,
    kvh: u32,
    /// Cascade member (see [`Cascade`]): index into `Workspace::casc_rows`, or `u32::MAX`.
    member: u32,
}

/// Decode rows of sequences that begin with the same cached blocks (a shared system prompt):
/// each layer reads those blocks once for all of them (`shared` blocks of `lead`'s table, every
/// member's queries in one `attend_lse` call per KV head), then each member attends its own
/// blocks and the two parts are merged by their log-denominators.
#[derive(Clone, Copy, Default)]
struct Cascade {
    lead: u32,
    shared: u32,
    /// Members: `casc_rows[first..first + n]`.
    first: u32,
    n: u32,
}

/// Fewest sequences sharing a prefix for the cascade to be used: with one, it is the plain path.
const CASCADE_MIN: usize = 2;

/// Most query rows per prefill attention task. Each task widens every K/V block it reads to
/// f32 once for all its queries, so larger tasks amortize that better: one thread over 1,008
/// cached positions (`kvbench hot rows=N`) scores 22 GMAC/s with 4 rows, 29 with 10, 32 with
/// 16 and 36 with 64. A chunk is split into equal parts of at most this many rows, so 20 rows
/// make one task per KV head rather than 16 + 4.
const ATTN_ROWS: usize = 64;

/// Buffers of the forward pass, grown to the largest batch seen and never shrunk.
#[derive(Default)]
struct Workspace {
    row_item: Vec<u32>,
    row_pos: Vec<u32>,
    x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
    inv_freq: Vec<f32>,
    tasks: Vec<AttnTask>,
    /// The last layer's attention tasks: only the rows whose logits are wanted.
    last_tasks: Vec<AttnTask>,
    /// Cascade groups, their members' batch rows, the items sorted by first block (scratch),
    /// and per (group, KV head) the members' gathered queries, shared-part outputs and
    /// log-denominators.
    cascades: Vec<Cascade>,
    casc_rows: Vec<u32>,
    casc_order: Vec<u32>,
    /// Per item: its first batch row, and its cascade member index (`u32::MAX`: none).
    item_row0: Vec<u32>,
    item_member: Vec<u32>,
    casc_q: Vec<f32>,
    casc_out: Vec<f32>,
    casc_lse: Vec<f32>,
    out_rows: Vec<usize>,
    normed: Vec<f32>,
    logits: Vec<f32>,
    /// Per item: first logits row and number of rows.
    spans: Vec<(usize, usize)>,
}

/// `v[..n]`, growing `v` first if it is shorter (contents are unspecified: callers overwrite).
fn grown<T: Clone + Default>(v: &mut Vec<T>, n: usize) -> &mut [T] {
    if v.len() < n {
        v.resize(n, T::default());
    }
    &mut v[..n]
}

/// The logits of one batched forward pass, borrowed from the model's workspace (no copy).
/// The model runs no other forward pass while this is alive: drop it before the next one.
pub struct BatchLogits<'m> {
    ws: MutexGuard<'m, Workspace>,
    vocab: usize,
}

impl BatchLogits<'_> {
    /// Number of batch items.
    pub fn len(&self) -> usize {
        self.ws.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ws.spans.is_empty()
    }

    /// Item `i`'s logits, `vocab_size` per returned position (empty for `Logits::None`).
    pub fn get(&self, i: usize) -> &[f32] {
        let (r0, n) = self.ws.spans[i];
        &self.ws.logits[r0 * self.vocab..(r0 + n) * self.vocab]
    }

    pub fn get_mut(&mut self, i: usize) -> &mut [f32] {
        let (r0, n) = self.ws.spans[i];
        let v = self.vocab;
        &mut self.ws.logits[r0 * v..(r0 + n) * v]
    }
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

    /// Appends `tokens` with pseudo-random keys and values instead of computing them: for
    /// timing decode at a context depth without paying the prefill (attention reads the same
    /// bytes whatever they hold). The logits that follow are meaningless.
    pub fn fill_synthetic(&mut self, tokens: &[u32], seed: u64) -> Result<()> {
        if self.seq.len() + tokens.len() > self.max_len {
            return Err(ModelError::ContextOverflow {
                tokens: self.seq.len() + tokens.len(),
                context: self.max_len,
            });
        }
        self.pool.reserve(&mut self.seq, tokens.len())?;
        let (layers, kv_dim) = (self.pool.layers(), self.pool.kv_dim());
        let mut s = seed | 1;
        let mut k = vec![0f32; kv_dim];
        let mut v = vec![0f32; kv_dim];
        for i in 0..tokens.len() {
            let pos = self.seq.len() + i;
            for li in 0..layers {
                for x in k.iter_mut().chain(v.iter_mut()) {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    *x = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                }
                self.pool.write(&self.seq, li, pos, &k, &v);
            }
        }
        self.pool.commit(&mut self.seq, tokens);
        Ok(())
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
            attn_kern: AttnKernel::detect(),
            kv_type: KvType::default(),
            ws: Mutex::new(Workspace::default()),
        })
    }

    /// The element type of KV caches made by `new_cache`/`new_pool` from now on.
    pub fn set_kv_type(&mut self, t: KvType) {
        self.kv_type = t;
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    pub fn new_cache(&self, max_len: usize) -> KvCache {
        KvCache {
            pool: self.new_pool(max_len.div_ceil(BLOCK_TOKENS)),
            seq: SeqKv::with_capacity(max_len),
            max_len,
        }
    }

    /// A shared block pool of at most `max_blocks` blocks.
    pub fn new_pool(&self, max_blocks: usize) -> KvPool {
        let c = &self.config;
        KvPool::new(
            c.num_layers,
            c.num_kv_heads,
            c.head_dim,
            max_blocks,
            self.kv_type,
        )
    }

    /// Names these weights in a saved prefix cache ([`KvPool::save_prefix`]): a hash of the
    /// shape, the KV element type, every norm weight and the first and last layers' query and
    /// down projections as stored (so a requantized or different checkpoint differs).
    pub fn fingerprint(&self) -> u64 {
        let c = &self.config;
        let shape: Vec<u8> = [
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.vocab_size,
        ]
        .iter()
        .flat_map(|&x| (x as u64).to_le_bytes())
        .chain(self.kv_type.name().bytes())
        .collect();
        let f32s = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let mut norms = f32s(&self.final_norm);
        for l in &self.layers {
            norms.extend(f32s(&l.attn_norm));
            norms.extend(f32s(&l.ffn_norm));
        }
        let mut parts: Vec<std::borrow::Cow<'_, [u8]>> = vec![shape.into(), norms.into()];
        if let (Some(first), Some(last)) = (self.layers.first(), self.layers.last()) {
            for t in [&first.wq, &first.w_down, &last.wq, &last.w_down] {
                parts.push(t.dtype.name().as_bytes().into());
                parts.push(t.raw_bytes());
            }
        }
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_ref()).collect();
        crate::kv::fingerprint(&refs)
    }

    /// Bytes of one KV block for this model.
    pub fn kv_block_bytes(&self) -> usize {
        KvPool::block_bytes(
            self.config.num_layers,
            self.config.num_kv_heads,
            self.config.head_dim,
            self.kv_type,
        )
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

    /// Fills `out` (`head_dim / 2` floats) with the inverse frequencies for a forward pass
    /// ending at `seq_len` and returns the cos/sin multiplier. Allocates nothing.
    fn rope_freqs(&self, seq_len: usize, out: &mut [f32]) -> f32 {
        let c = &self.config;
        let dim = c.head_dim;
        let base_at = |base: f64, i: usize| 1.0 / base.powf((2 * i) as f64 / dim as f64);
        let mut att = 1.0f64;
        match &c.rope_scaling {
            RopeScaling::None => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = base_at(c.rope_theta, i) as f32;
                }
            }
            RopeScaling::Linear { factor } => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = (base_at(c.rope_theta, i) / factor) as f32;
                }
            }
            RopeScaling::Factors(fs) => {
                for (i, o) in out.iter_mut().enumerate() {
                    let d = fs.get(i).copied().unwrap_or(1.0);
                    *o = (base_at(c.rope_theta, i) / d as f64) as f32;
                }
            }
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
                for (i, o) in out.iter_mut().enumerate() {
                    *o = base_at(base, i) as f32;
                }
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
                for (i, o) in out.iter_mut().enumerate() {
                    let f = base_at(c.rope_theta, i);
                    let wl = 2.0 * std::f64::consts::PI / f;
                    let v = if wl < high_wl {
                        f
                    } else if wl > low_wl {
                        f / factor
                    } else {
                        let smooth =
                            (old / wl - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    };
                    *o = v as f32;
                }
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
                att = match (attention_factor, mscale, mscale_all_dim) {
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
                for (i, o) in out.iter_mut().enumerate() {
                    let pos = base.powf((2 * i) as f64 / d);
                    let extra = 1.0 / pos;
                    let inter = 1.0 / (factor * pos);
                    let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                    let extra_factor = 1.0 - ramp;
                    *o = (inter * (1.0 - extra_factor) + extra * extra_factor) as f32;
                }
            }
        }
        att as f32
    }

    /// Runs `tokens` at the positions after those already in `cache`, appends their keys and
    /// values, and returns logits (`vocab_size` floats per returned position).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        Ok(self.forward_cached(tokens, cache, which)?.get(0).to_vec())
    }

    /// [`Llama::forward`] without copying the logits out of the workspace.
    pub fn forward_cached(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
    ) -> Result<BatchLogits<'_>> {
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
        self.run_batch(&mut cache.pool, &mut items)
    }

    /// One forward pass over several sequences at once: every weight matrix is read once for
    /// all their tokens; attention runs per sequence over its own blocks. Returns the requested
    /// logits per item (empty for `Logits::None`), copied out; [`Llama::run_batch`] lends them
    /// instead.
    pub fn forward_batch(
        &self,
        pool: &mut KvPool,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Vec<f32>>> {
        let out = self.run_batch(pool, items)?;
        Ok((0..out.len()).map(|i| out.get(i).to_vec()).collect())
    }

    /// [`Llama::forward_batch`] with the logits left in the model's workspace.
    pub fn run_batch(
        &self,
        pool: &mut KvPool,
        items: &mut [BatchItem<'_>],
    ) -> Result<BatchLogits<'_>> {
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
        let mut guard = self.ws.lock().unwrap_or_else(|e| e.into_inner());
        let ws = &mut *guard;
        // Row r of the flattened batch belongs to item `row_item[r]` at position `row_pos[r]`.
        let t: usize = items.iter().map(|it| it.tokens.len()).sum();
        {
            let (ri, rp) = (grown(&mut ws.row_item, t), grown(&mut ws.row_pos, t));
            let mut r = 0;
            for (ii, it) in items.iter().enumerate() {
                let p0 = it.seq.len();
                for i in 0..it.tokens.len() {
                    ri[r] = ii as u32;
                    rp[r] = (p0 + i) as u32;
                    r += 1;
                }
            }
        }
        ws.spans.clear();
        if t == 0 {
            ws.spans.extend(items.iter().map(|_| (0, 0)));
            return Ok(BatchLogits {
                ws: guard,
                vocab: c.vocab_size,
            });
        }
        let (h, qd, kvd, ff, hd) = (
            c.hidden_size,
            c.q_dim(),
            c.kv_dim(),
            c.intermediate_size,
            c.head_dim,
        );
        let (tp, kern) = (&self.pool, self.kern);
        let eps = c.rms_norm_eps;

        let x = grown(&mut ws.x, t * h);
        for (r, &id) in items.iter().flat_map(|it| it.tokens.iter()).enumerate() {
            self.embed
                .view()
                .row_f32(id as usize, h, &mut x[r * h..(r + 1) * h]);
        }
        // cos/sin per row; frequencies can depend on each sequence's length (dynamic NTK).
        let half = hd / 2;
        let cos = grown(&mut ws.cos, t * half);
        let sin = grown(&mut ws.sin, t * half);
        let inv_freq = grown(&mut ws.inv_freq, half);
        let mut r = 0;
        for it in items.iter() {
            let att_scale = self.rope_freqs(it.seq.len() + it.tokens.len(), inv_freq);
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

        let q = grown(&mut ws.q, t * qd);
        let k = grown(&mut ws.k, t * kvd);
        let v = grown(&mut ws.v, t * kvd);
        let attn = grown(&mut ws.attn, t * qd);
        let o = grown(&mut ws.o, t * h);
        let gate = grown(&mut ws.gate, t * ff);
        let up = grown(&mut ws.up, t * ff);
        let (row_item, row_pos) = (&ws.row_item[..t], &ws.row_pos[..t]);
        let scale = 1.0 / (hd as f32).sqrt();
        let group = c.num_heads / c.num_kv_heads;

        // Cascades: decode rows (one new token) grouped by the first block of their sequence;
        // a group of CASCADE_MIN or more shares the blocks its members' tables have in common,
        // up to each member's last full block before its new position.
        ws.cascades.clear();
        ws.casc_rows.clear();
        ws.casc_order.clear();
        ws.item_row0.clear();
        ws.item_member.clear();
        let mut rows_before = 0;
        for it in items.iter() {
            ws.item_row0.push(rows_before as u32);
            ws.item_member.push(u32::MAX);
            rows_before += it.tokens.len();
        }
        for (ii, it) in items.iter().enumerate() {
            if it.tokens.len() == 1 && it.seq.len() >= BLOCK_TOKENS {
                ws.casc_order.push(ii as u32);
            }
        }
        ws.casc_order
            .sort_unstable_by_key(|&ii| items[ii as usize].seq.blocks()[0]);
        let mut i = 0;
        while i < ws.casc_order.len() {
            let first = items[ws.casc_order[i] as usize].seq.blocks()[0];
            let mut j = i + 1;
            while j < ws.casc_order.len()
                && items[ws.casc_order[j] as usize].seq.blocks()[0] == first
            {
                j += 1;
            }
            if j - i >= CASCADE_MIN {
                let lead = ws.casc_order[i] as usize;
                let lb = items[lead].seq.blocks();
                let shared = ws.casc_order[i..j]
                    .iter()
                    .map(|&m| {
                        let s = &items[m as usize].seq;
                        let own = s.blocks();
                        let common = own.iter().zip(lb).take_while(|(a, b)| a == b).count();
                        common.min(s.len() / BLOCK_TOKENS)
                    })
                    .min()
                    .unwrap_or(0);
                if shared > 0 {
                    let first_member = ws.casc_rows.len();
                    for &m in &ws.casc_order[i..j] {
                        ws.item_member[m as usize] = ws.casc_rows.len() as u32;
                        ws.casc_rows.push(ws.item_row0[m as usize]);
                    }
                    ws.cascades.push(Cascade {
                        lead: lead as u32,
                        shared: shared as u32,
                        first: first_member as u32,
                        n: (j - i) as u32,
                    });
                }
            }
            i = j;
        }
        let n_members = ws.casc_rows.len();

        // Attention tasks: (sequence, KV head, chunk of query rows). A decode row is one task
        // per KV head; a prefill chunk is split into equal parts of at most ATTN_ROWS rows.
        ws.tasks.clear();
        let mut row0 = 0;
        for (ii, it) in items.iter().enumerate() {
            let n = it.tokens.len();
            let member = ws.item_member[ii];
            let mut r = 0;
            let per = n.div_ceil(n.div_ceil(ATTN_ROWS).max(1));
            while r < n {
                let rows = per.min(n - r);
                for kvh in 0..c.num_kv_heads {
                    ws.tasks.push(AttnTask {
                        item: ii as u32,
                        row0: (row0 + r) as u32,
                        rows: rows as u32,
                        kvh: kvh as u32,
                        member,
                    });
                }
                r += rows;
            }
            row0 += n;
        }

        // Rows whose logits are wanted (in batch order). Past its keys and values, the last
        // layer only matters for these rows: it attends, projects and runs the MLP for them
        // alone (a prompt chunk without logits skips all of that; a prompt needs one row).
        ws.out_rows.clear();
        let mut r0 = 0;
        for it in items.iter() {
            let n = it.tokens.len();
            let first = ws.out_rows.len();
            match it.logits {
                Logits::None => {}
                Logits::Last if n > 0 => ws.out_rows.push(r0 + n - 1),
                Logits::Last => {}
                Logits::All => ws.out_rows.extend(r0..r0 + n),
            }
            ws.spans.push((first, ws.out_rows.len() - first));
            r0 += n;
        }
        let n_out = ws.out_rows.len();
        let out_rows = &ws.out_rows[..];
        // Whether the last layer keeps only the `out_rows` rows (moved to the front of `x`).
        let pruned = n_out < t && !self.layers.is_empty();
        ws.last_tasks.clear();
        if pruned {
            for tk in ws.tasks.iter() {
                let (a, b) = (tk.row0 as usize, (tk.row0 + tk.rows) as usize);
                // The wanted rows in a..b (out_rows is increasing).
                let lo = out_rows.partition_point(|&r| r < a);
                let hi = out_rows.partition_point(|&r| r < b);
                if hi - lo == b - a {
                    ws.last_tasks.push(*tk);
                } else {
                    for &r in &out_rows[lo..hi] {
                        ws.last_tasks.push(AttnTask {
                            row0: r as u32,
                            rows: 1,
                            ..*tk
                        });
                    }
                }
            }
        }
        let last_tasks = &ws.last_tasks[..];
        let tasks = &ws.tasks[..];
        let (cascades, casc_rows) = (&ws.cascades[..], &ws.casc_rows[..]);
        let casc_q = grown(&mut ws.casc_q, n_members * qd);
        let casc_out = grown(&mut ws.casc_out, n_members * qd);
        let casc_lse = grown(&mut ws.casc_lse, n_members * c.num_heads);

        for (li, l) in self.layers.iter().enumerate() {
            let prune = pruned && li + 1 == self.layers.len();
            let tasks = if prune { last_tasks } else { tasks };
            matmul_multi_rmsnorm(
                tp,
                kern,
                x,
                &l.attn_norm,
                eps,
                t,
                h,
                &mut [
                    (l.wq.view(), qd, &mut *q),
                    (l.wk.view(), kvd, &mut *k),
                    (l.wv.view(), kvd, &mut *v),
                ],
            );
            // Rotary embeddings of every row's query and key heads (on the pool for prefill).
            let rope_rows = |q: &mut [f32], k: &mut [f32], r0: usize| {
                for (j, (qr, kr)) in q
                    .chunks_exact_mut(qd)
                    .zip(k.chunks_exact_mut(kvd))
                    .enumerate()
                {
                    let i = r0 + j;
                    let (cs, sn) = (
                        &cos[i * half..(i + 1) * half],
                        &sin[i * half..(i + 1) * half],
                    );
                    for x in qr.chunks_exact_mut(hd).chain(kr.chunks_exact_mut(hd)) {
                        rope(x, cs, sn, self.rope_layout);
                    }
                }
            };
            if t >= PAR_ROWS && tp.n_threads() > 1 {
                let chunk = t.div_ceil(tp.n_threads() * 2);
                let (qs, ks) = (DisjointSlice::new(&mut *q), DisjointSlice::new(&mut *k));
                tp.for_each(t.div_ceil(chunk), &|ci| {
                    let (r0, r1) = (ci * chunk, ((ci + 1) * chunk).min(t));
                    // SAFETY: task `ci` owns rows r0..r1 of both buffers; tasks never overlap.
                    let (qc, kc) =
                        unsafe { (qs.range(r0 * qd, r1 * qd), ks.range(r0 * kvd, r1 * kvd)) };
                    rope_rows(qc, kc, r0);
                });
            } else {
                rope_rows(&mut q[..t * qd], &mut k[..t * kvd], 0);
            }
            for i in 0..t {
                pool.write(
                    items[row_item[i] as usize].seq,
                    li,
                    row_pos[i] as usize,
                    &k[i * kvd..(i + 1) * kvd],
                    &v[i * kvd..(i + 1) * kvd],
                );
            }

            let (qr, pool_r, items_r) = (&*q, &*pool, &*items);
            let akern = self.attn_kern;
            let nkv = c.num_kv_heads;
            if !cascades.is_empty() {
                // The members' queries, per (cascade, KV head) side by side as one wide group.
                for cg in cascades {
                    let (first, n) = (cg.first as usize, cg.n as usize);
                    for (mi, &row) in casc_rows[first..first + n].iter().enumerate() {
                        for kvh in 0..nkv {
                            let at = ((first * nkv + kvh * n + mi) * group) * hd;
                            let from = row as usize * qd + kvh * group * hd;
                            casc_q[at..at + group * hd]
                                .copy_from_slice(&qr[from..from + group * hd]);
                        }
                    }
                }
                let (outs, lses) = (
                    DisjointSlice::new(&mut *casc_out),
                    DisjointSlice::new(&mut *casc_lse),
                );
                let cq = &*casc_q;
                tp.for_each(cascades.len() * nkv, &|ti| {
                    let (cg, kvh) = (cascades[ti / nkv], ti % nkv);
                    let (first, n) = (cg.first as usize, cg.n as usize);
                    let lead = &*items_r[cg.lead as usize].seq;
                    let wide = n * group;
                    let shape = AttnShape {
                        head_dim: hd,
                        group: wide,
                        rows: 1,
                        pos0: cg.shared as usize * BLOCK_TOKENS - 1,
                        block: BLOCK_TOKENS,
                        scale,
                    };
                    let at = (first * nkv + kvh * n) * group;
                    attend_lse(
                        akern,
                        &shape,
                        &cq[at * hd..(at + wide) * hd],
                        wide * hd,
                        &|b| pool_r.head_rows(lead, li, b, kvh),
                        &mut |_, out, lse| {
                            // SAFETY: task (cascade, KV head) owns this region of both buffers.
                            unsafe { outs.range(at * hd, (at + wide) * hd) }.copy_from_slice(out);
                            unsafe { lses.range(at, at + wide) }.copy_from_slice(lse);
                        },
                    );
                });
            }
            let (c_out, c_lse) = (&*casc_out, &*casc_lse);
            let dst = DisjointSlice::new(&mut *attn);
            tp.for_each(tasks.len(), &|ti| {
                let tk = tasks[ti];
                let (row0, kvh) = (tk.row0 as usize, tk.kvh as usize);
                let seq = &*items_r[tk.item as usize].seq;
                let col = kvh * group * hd;
                if tk.member != u32::MAX {
                    // A cascade member: its own blocks past the shared ones, merged with the
                    // shared part computed above.
                    let m = tk.member as usize;
                    let Some(cg) = cascades
                        .iter()
                        .find(|g| (g.first as usize..(g.first + g.n) as usize).contains(&m))
                    else {
                        return;
                    };
                    let (first, n, skip) = (cg.first as usize, cg.n as usize, cg.shared as usize);
                    let at = (first * nkv + kvh * n + (m - first)) * group;
                    let shape = AttnShape {
                        head_dim: hd,
                        group,
                        rows: 1,
                        pos0: row_pos[row0] as usize - skip * BLOCK_TOKENS,
                        block: BLOCK_TOKENS,
                        scale,
                    };
                    attend_lse(
                        akern,
                        &shape,
                        &qr[row0 * qd + col..],
                        qd,
                        &|b| pool_r.head_rows(seq, li, skip + b, kvh),
                        &mut |_, out, lse| {
                            let o = row0 * qd + col;
                            // SAFETY: as below: (row, KV head) belongs to this task alone.
                            let d = unsafe { dst.range(o, o + group * hd) };
                            d.copy_from_slice(&c_out[at * hd..(at + group) * hd]);
                            for g in 0..group {
                                let mut la = c_lse[at + g];
                                merge_lse(
                                    &mut d[g * hd..(g + 1) * hd],
                                    &mut la,
                                    &out[g * hd..(g + 1) * hd],
                                    lse[g],
                                );
                            }
                        },
                    );
                    return;
                }
                let shape = AttnShape {
                    head_dim: hd,
                    group,
                    rows: tk.rows as usize,
                    pos0: row_pos[row0] as usize,
                    block: BLOCK_TOKENS,
                    scale,
                };
                attend(
                    akern,
                    &shape,
                    &qr[row0 * qd + col..],
                    qd,
                    &|b| pool_r.head_rows(seq, li, b, kvh),
                    &mut |r, out| {
                        let at = (row0 + r) * qd + col;
                        // SAFETY: task (rows row0.., head kvh) owns columns col..col+group*hd
                        // of its rows; tasks never share a (row, KV head).
                        let d = unsafe { dst.range(at, at + group * hd) };
                        d.copy_from_slice(out);
                    },
                );
            });
            // Rows the rest of the layer runs for.
            let tl = if prune {
                // Forward moves (out_rows[j] >= j, increasing) keep every source intact.
                for (j, &i) in out_rows.iter().enumerate() {
                    if i != j {
                        attn.copy_within(i * qd..(i + 1) * qd, j * qd);
                        x.copy_within(i * h..(i + 1) * h, j * h);
                    }
                }
                n_out
            } else {
                t
            };
            if tl == 0 {
                continue;
            }
            let (xl, ol) = (&mut x[..tl * h], &mut o[..tl * h]);
            matmul(tp, kern, &attn[..tl * qd], tl, qd, l.wo.view(), h, ol);
            add_assign(xl, ol);

            let (gl, ul) = (&mut gate[..tl * ff], &mut up[..tl * ff]);
            matmul_multi_rmsnorm(
                tp,
                kern,
                xl,
                &l.ffn_norm,
                eps,
                tl,
                h,
                &mut [
                    (l.w_gate.view(), ff, &mut *gl),
                    (l.w_up.view(), ff, &mut *ul),
                ],
            );
            silu_mul_par(tp, gl, ul, tl, ff);
            matmul(tp, kern, gl, tl, ff, l.w_down.view(), h, ol);
            add_assign(xl, ol);
        }
        for it in items.iter_mut() {
            pool.commit(it.seq, it.tokens);
        }

        // One LM-head product for the wanted rows (at the front of `x` if the last layer was
        // pruned).
        let normed = grown(&mut ws.normed, n_out * h);
        let x = &ws.x[..t * h];
        for (ri, &i) in ws.out_rows.iter().enumerate() {
            let i = if pruned { ri } else { i };
            rmsnorm(
                &x[i * h..(i + 1) * h],
                &self.final_norm,
                eps,
                &mut normed[ri * h..(ri + 1) * h],
            );
        }
        let vocab = c.vocab_size;
        let logits = grown(&mut ws.logits, n_out * vocab);
        matmul(
            tp,
            kern,
            normed,
            n_out,
            h,
            self.lm_head.view(),
            vocab,
            logits,
        );
        Ok(BatchLogits { ws: guard, vocab })
    }
}
