//! Writes GGUF v3 files and converts checkpoints (Hugging Face directories or GGUF files) into
//! quantized GGUFs that llama.cpp loads: llama.cpp's tensor names, Q/K rows permuted into its
//! interleaved RoPE layout, norms in F32, and the tokenizer and chat template in the metadata
//! keys its converter writes.
//!
//! Tensors are quantized and written one at a time, so converting needs memory for one tensor,
//! not for the model.

use crate::config::{ModelConfig, RopeScaling};
use crate::error::{read_json, ModelError, Result};
use crate::gguf::{GgufFile, GgufValue};
use crate::tensor::{DType, Tensor};
use mideum_kernels::quant::{quantize_row, QuantType};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

const ALIGN: usize = 32;

/// One tensor of the output: name, shape (outermost first) and GGML type.
#[derive(Clone, Debug)]
pub struct TensorOut {
    pub name: String,
    pub shape: Vec<usize>,
    pub ggml_type: u32,
}

impl TensorOut {
    pub fn nbytes(&self) -> usize {
        let numel: usize = self.shape.iter().product();
        match self.ggml_type {
            0 => numel * 4,
            1 | 30 => numel * 2,
            t => match QuantType::from_ggml_type(t) {
                Some(q) => q.row_bytes(numel),
                None => 0,
            },
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.push(*x as u8),
        GgufValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(*x as u8),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(a) => {
            let et = a.first().map(value_type).unwrap_or(4);
            out.extend_from_slice(&et.to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                put_value(out, x);
            }
        }
        GgufValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Writes a GGUF v3 file: `data(i, buf)` must fill `buf` with exactly `tensors[i].nbytes()`
/// bytes; it is called once per tensor, in order.
pub fn write_gguf(
    path: &Path,
    kv: &[(String, GgufValue)],
    tensors: &[TensorOut],
    mut data: impl FnMut(usize, &mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    let io = |error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut head = Vec::new();
    head.extend_from_slice(b"GGUF");
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut head, k);
        head.extend_from_slice(&value_type(v).to_le_bytes());
        put_value(&mut head, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        put_str(&mut head, &t.name);
        head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            head.extend_from_slice(&(d as u64).to_le_bytes());
        }
        head.extend_from_slice(&t.ggml_type.to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += t.nbytes().div_ceil(ALIGN) * ALIGN;
    }
    head.resize(head.len().div_ceil(ALIGN) * ALIGN, 0);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(&head).map_err(io)?;
    let mut buf = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        buf.clear();
        data(i, &mut buf)?;
        if buf.len() != t.nbytes() {
            return Err(ModelError::tensor(
                &t.name,
                format!(
                    "writer produced {} bytes, expected {}",
                    buf.len(),
                    t.nbytes()
                ),
            ));
        }
        let pad = t.nbytes().div_ceil(ALIGN) * ALIGN - buf.len();
        buf.resize(buf.len() + pad, 0);
        w.write_all(&buf).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

/// What `mideum quantize --type` accepts: one block type for every matrix, or llama.cpp's
/// Q4_K_M / Q5_K_M mixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantPlan {
    Uniform(QuantType),
    /// Q4_K, with Q6_K for the output (or tied embedding) and for `attn_v`/`ffn_down` of the
    /// first and last eighth of the layers and every third layer in between.
    Q4KM,
    /// As Q4_K_M with Q5_K as the base type.
    Q5KM,
}

impl QuantPlan {
    pub fn parse(s: &str) -> Option<QuantPlan> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "Q4_K_M" => Some(QuantPlan::Q4KM),
            "Q5_K_M" => Some(QuantPlan::Q5KM),
            _ => QuantType::parse(s).map(QuantPlan::Uniform),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            QuantPlan::Uniform(q) => q.name(),
            QuantPlan::Q4KM => "Q4_K_M",
            QuantPlan::Q5KM => "Q5_K_M",
        }
    }

    /// llama.cpp's `general.file_type` number.
    pub fn file_type(self) -> u32 {
        match self {
            QuantPlan::Uniform(QuantType::Q8_0) => 7,
            QuantPlan::Uniform(QuantType::Q4_0) => 2,
            QuantPlan::Uniform(QuantType::Q4K) => 14,
            QuantPlan::Uniform(QuantType::Q5K) => 16,
            QuantPlan::Uniform(QuantType::Q6K) => 18,
            QuantPlan::Q4KM => 15,
            QuantPlan::Q5KM => 17,
        }
    }

    /// The type for a GGUF-named matrix of `k`-element rows, given the layer count and whether
    /// the token embedding doubles as the output.
    pub fn type_for(self, gguf_name: &str, k: usize, n_layers: usize, tied: bool) -> QuantType {
        let more_bits = |i: usize| {
            let n = n_layers;
            i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
        };
        let layer = gguf_name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        let is_output = gguf_name == "output.weight" || (tied && gguf_name == "token_embd.weight");
        let want = match self {
            // As llama.cpp: the output matrix gets Q6_K unless everything is Q8_0.
            QuantPlan::Uniform(q) if is_output && q != QuantType::Q8_0 => QuantType::Q6K,
            QuantPlan::Uniform(q) => q,
            QuantPlan::Q4KM | QuantPlan::Q5KM => {
                let base = if self == QuantPlan::Q4KM {
                    QuantType::Q4K
                } else {
                    QuantType::Q5K
                };
                let promoted = (gguf_name.ends_with(".attn_v.weight")
                    || gguf_name.ends_with(".ffn_down.weight"))
                    && layer.is_some_and(more_bits);
                if is_output || promoted {
                    QuantType::Q6K
                } else {
                    base
                }
            }
        };
        if want.fits(k) {
            want
        } else {
            QuantType::Q8_0
        }
    }
}

/// Progress of a conversion, reported after each tensor.
pub struct Progress<'a> {
    pub done_bytes: usize,
    pub total_bytes: usize,
    pub tensor: &'a str,
    pub index: usize,
    pub count: usize,
}

/// A summary of a finished conversion.
#[derive(Debug)]
pub struct QuantizeReport {
    pub tensors: usize,
    pub bytes_written: u64,
    pub types: HashMap<String, usize>,
}

struct Source {
    kv: Vec<(String, GgufValue)>,
    /// (GGUF name, tensor, permute rows for this many heads)
    tensors: Vec<(String, Tensor, Option<usize>)>,
    n_layers: usize,
    tied: bool,
}

fn s(v: &str) -> GgufValue {
    GgufValue::String(v.to_string())
}

fn hf_to_gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, rest) = rest.split_once('.')?;
    let mid = rest.strip_suffix(".weight")?;
    let g = match mid {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{i}.{g}.weight"))
}

/// Metadata llama.cpp's converter writes for a `LlamaForCausalLM` directory.
fn hf_metadata(dir: &Path, c: &ModelConfig) -> Result<Vec<(String, GgufValue)>> {
    let mut kv: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), s("llama")),
        ("general.type".into(), s("model")),
        (
            "general.name".into(),
            s(dir.file_name().and_then(|n| n.to_str()).unwrap_or("model")),
        ),
        (
            "llama.block_count".into(),
            GgufValue::U32(c.num_layers as u32),
        ),
        (
            "llama.context_length".into(),
            GgufValue::U32(c.max_position_embeddings as u32),
        ),
        (
            "llama.embedding_length".into(),
            GgufValue::U32(c.hidden_size as u32),
        ),
        (
            "llama.feed_forward_length".into(),
            GgufValue::U32(c.intermediate_size as u32),
        ),
        (
            "llama.attention.head_count".into(),
            GgufValue::U32(c.num_heads as u32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            GgufValue::U32(c.num_kv_heads as u32),
        ),
        (
            "llama.attention.key_length".into(),
            GgufValue::U32(c.head_dim as u32),
        ),
        (
            "llama.attention.value_length".into(),
            GgufValue::U32(c.head_dim as u32),
        ),
        (
            "llama.rope.freq_base".into(),
            GgufValue::F32(c.rope_theta as f32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            GgufValue::F32(c.rms_norm_eps),
        ),
        (
            "llama.vocab_size".into(),
            GgufValue::U32(c.vocab_size as u32),
        ),
        (
            "llama.rope.dimension_count".into(),
            GgufValue::U32(c.head_dim as u32),
        ),
    ];
    if let RopeScaling::Linear { factor } = c.rope_scaling {
        kv.push(("llama.rope.scaling.type".into(), s("linear")));
        kv.push((
            "llama.rope.scaling.factor".into(),
            GgufValue::F32(factor as f32),
        ));
    } else if !matches!(c.rope_scaling, RopeScaling::None) {
        return Err(ModelError::Input(
            "converting checkpoints with this RoPE scaling to GGUF is not supported yet (none and linear are)".into(),
        ));
    }

    // Byte-level BPE vocabulary, as llama.cpp's converter lays it out.
    let tj = read_json(&dir.join("tokenizer.json"))?;
    let bad = |m: &str| ModelError::Tokenizer(format!("tokenizer.json: {m}"));
    let model = tj.get("model").ok_or_else(|| bad("no model"))?;
    if model.get("type").and_then(|t| t.as_str()) != Some("BPE") {
        return Err(bad("only BPE tokenizers can be written to GGUF"));
    }
    let vocab = model
        .get("vocab")
        .and_then(|v| v.as_object())
        .ok_or_else(|| bad("no vocab"))?;
    let mut id_to_tok: HashMap<u64, (String, i32)> = HashMap::new();
    for (t, id) in vocab {
        if let Some(id) = id.as_u64() {
            id_to_tok.insert(id, (t.clone(), 1));
        }
    }
    let mut special_ids: HashMap<String, u64> = HashMap::new();
    for a in tj
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
    {
        let (Some(id), Some(content)) = (
            a.get("id").and_then(|v| v.as_u64()),
            a.get("content").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        let special = a.get("special").and_then(|v| v.as_bool()).unwrap_or(false);
        id_to_tok.insert(id, (content.to_string(), if special { 3 } else { 4 }));
        special_ids.insert(content.to_string(), id);
    }
    let n_vocab = c.vocab_size.max(id_to_tok.len());
    let mut tokens = Vec::with_capacity(n_vocab);
    let mut types = Vec::with_capacity(n_vocab);
    for i in 0..n_vocab as u64 {
        match id_to_tok.get(&i) {
            Some((t, ty)) => {
                tokens.push(s(t));
                types.push(GgufValue::I32(*ty));
            }
            None => {
                tokens.push(GgufValue::String(format!("[PAD{i}]")));
                types.push(GgufValue::I32(5));
            }
        }
    }
    let merges: Vec<GgufValue> = model
        .get("merges")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            serde_json::Value::String(x) => Some(s(x)),
            serde_json::Value::Array(p) => {
                let parts: Vec<&str> = p.iter().filter_map(|x| x.as_str()).collect();
                Some(GgufValue::String(parts.join(" ")))
            }
            _ => None,
        })
        .collect();
    kv.push(("tokenizer.ggml.model".into(), s("gpt2")));
    kv.push(("tokenizer.ggml.pre".into(), s("llama-bpe")));
    kv.push(("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens)));
    kv.push(("tokenizer.ggml.token_type".into(), GgufValue::Array(types)));
    if !merges.is_empty() {
        kv.push(("tokenizer.ggml.merges".into(), GgufValue::Array(merges)));
    }
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.exists() {
        read_json(&tc_path)?
    } else {
        serde_json::Value::Null
    };
    let token_id = |key: &str| -> Option<u64> {
        let v = tc.get(key)?;
        let name = v
            .as_str()
            .or_else(|| v.get("content").and_then(|c| c.as_str()))?;
        special_ids.get(name).copied()
    };
    let bos = c
        .bos_token_id
        .map(u64::from)
        .or_else(|| token_id("bos_token"));
    let eos = c
        .eos_token_ids
        .first()
        .map(|&e| e as u64)
        .or_else(|| token_id("eos_token"));
    if let Some(b) = bos {
        kv.push((
            "tokenizer.ggml.bos_token_id".into(),
            GgufValue::U32(b as u32),
        ));
    }
    if let Some(e) = eos {
        kv.push((
            "tokenizer.ggml.eos_token_id".into(),
            GgufValue::U32(e as u32),
        ));
    }
    if let Some(e) = special_ids.get("<|eot_id|>") {
        kv.push((
            "tokenizer.ggml.eot_token_id".into(),
            GgufValue::U32(*e as u32),
        ));
    }
    if let Some(p) = token_id("pad_token") {
        kv.push((
            "tokenizer.ggml.padding_token_id".into(),
            GgufValue::U32(p as u32),
        ));
    }
    let add_bos = tc
        .get("add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let add_eos = tc
        .get("add_eos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    kv.push((
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(add_bos),
    ));
    kv.push((
        "tokenizer.ggml.add_eos_token".into(),
        GgufValue::Bool(add_eos),
    ));
    if let Some(t) = tc.get("chat_template").and_then(|v| v.as_str()) {
        kv.push(("tokenizer.chat_template".into(), s(t)));
    }
    Ok(kv)
}

fn source_from_hf(dir: &Path) -> Result<Source> {
    let c = ModelConfig::from_json(&read_json(&dir.join("config.json"))?)?;
    let kv = hf_metadata(dir, &c)?;
    let mut map = crate::safetensors::load_dir(dir)?;
    let tied = !map.contains_key("lm_head.weight");
    let mut order = vec!["model.embed_tokens.weight".to_string()];
    for i in 0..c.num_layers {
        for mid in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            order.push(format!("model.layers.{i}.{mid}.weight"));
        }
    }
    order.push("model.norm.weight".into());
    if !tied {
        order.push("lm_head.weight".into());
    }
    let mut tensors = Vec::with_capacity(order.len());
    for name in order {
        let t = map
            .remove(&name)
            .ok_or_else(|| ModelError::tensor(&name, "missing from the checkpoint"))?;
        let g = hf_to_gguf_name(&name)
            .ok_or_else(|| ModelError::tensor(&name, "no GGUF name for this tensor"))?;
        let permute = if name.ends_with("q_proj.weight") {
            Some(c.num_heads)
        } else if name.ends_with("k_proj.weight") {
            Some(c.num_kv_heads)
        } else {
            None
        };
        tensors.push((g, t, permute));
    }
    Ok(Source {
        kv,
        tensors,
        n_layers: c.num_layers,
        tied,
    })
}

fn source_from_gguf(path: &Path) -> Result<Source> {
    let g = GgufFile::open(path)?;
    let mut map = g.tensors()?;
    let mut kv: Vec<(String, GgufValue)> = g
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Keep the original key order stable for reproducible files.
    kv.sort_by(|a, b| a.0.cmp(&b.0));
    let n_layers = g
        .get("llama.block_count")
        .and_then(|v| v.as_u64())
        .unwrap_or(0) as usize;
    let tied = !map.contains_key("output.weight");
    let mut tensors = Vec::with_capacity(g.tensor_infos.len());
    for info in &g.tensor_infos {
        if let Some(t) = map.remove(&info.name) {
            tensors.push((info.name.clone(), t, None));
        }
    }
    Ok(Source {
        kv,
        tensors,
        n_layers,
        tied,
    })
}

/// Rows of `t` in llama.cpp's order: within each of `n_head` heads, row `2i + j` of the
/// output is row `j·(d/2) + i` of the input (rotate-half pairs made adjacent).
fn permuted_row(r: usize, rows: usize, n_head: usize) -> usize {
    let hd = rows / n_head;
    let (h, within) = (r / hd, r % hd);
    let (i, j) = (within / 2, within % 2);
    h * hd + j * (hd / 2) + i
}

/// Converts `input` (HF directory or GGUF) to a GGUF at `output` quantized by `plan`,
/// quantizing rows on `threads` threads and calling `progress` after every tensor.
pub fn quantize_model(
    input: &Path,
    output: &Path,
    plan: QuantPlan,
    threads: usize,
    mut progress: impl FnMut(&Progress<'_>),
) -> Result<QuantizeReport> {
    let src = if input.is_dir() {
        source_from_hf(input)?
    } else {
        source_from_gguf(input)?
    };
    let mut kv: Vec<(String, GgufValue)> = src
        .kv
        .into_iter()
        .filter(|(k, _)| k != "general.file_type" && k != "general.quantization_version")
        .collect();
    kv.push(("general.file_type".into(), GgufValue::U32(plan.file_type())));
    kv.push(("general.quantization_version".into(), GgufValue::U32(2)));

    let mut outs = Vec::with_capacity(src.tensors.len());
    for (name, t, _) in &src.tensors {
        let ggml_type = if t.shape.len() == 2 && name.ends_with(".weight") {
            let k = t.shape[1];
            let q = plan.type_for(name, k, src.n_layers, src.tied);
            if q.fits(k) {
                q.ggml_type()
            } else {
                0
            }
        } else {
            0 // 1-D tensors (norms, RoPE factors) are F32 in llama.cpp GGUFs
        };
        outs.push(TensorOut {
            name: name.clone(),
            shape: t.shape.clone(),
            ggml_type,
        });
    }
    let total_bytes: usize = outs.iter().map(|o| o.nbytes()).sum();
    let mut done_bytes = 0usize;
    let mut types: HashMap<String, usize> = HashMap::new();
    let count = outs.len();
    write_gguf(output, &kv, &outs, |i, buf| {
        let (name, t, permute) = &src.tensors[i];
        let o = &outs[i];
        encode_tensor(t, o.ggml_type, *permute, threads, buf)?;
        done_bytes += o.nbytes();
        *types.entry(ggml_name(o.ggml_type).to_string()).or_insert(0) += 1;
        progress(&Progress {
            done_bytes,
            total_bytes,
            tensor: name,
            index: i + 1,
            count,
        });
        Ok(())
    })?;
    let bytes_written = std::fs::metadata(output)
        .map_err(|error| ModelError::Io {
            path: output.to_path_buf(),
            error,
        })?
        .len();
    Ok(QuantizeReport {
        tensors: count,
        bytes_written,
        types,
    })
}

fn ggml_name(t: u32) -> &'static str {
    match t {
        0 => "F32",
        1 => "F16",
        30 => "BF16",
        t => QuantType::from_ggml_type(t)
            .map(|q| q.name())
            .unwrap_or("?"),
    }
}

/// Appends `t`'s data as GGML type `ggml_type` (F32 or a block type) to `buf`.
fn encode_tensor(
    t: &Tensor,
    ggml_type: u32,
    permute: Option<usize>,
    threads: usize,
    buf: &mut Vec<u8>,
) -> Result<()> {
    let numel = t.numel();
    let k = *t.shape.last().unwrap_or(&1);
    let rows = numel.checked_div(k).unwrap_or(0);
    let view = t.view();
    let src_row = |r: usize| match permute {
        Some(nh) => permuted_row(r, rows, nh),
        None => r,
    };
    // Same type, no permutation: copy the bytes.
    if permute.is_none()
        && ((ggml_type == 0 && t.dtype == DType::F32)
            || QuantType::from_ggml_type(ggml_type).is_some_and(|q| t.dtype == DType::Quant(q)))
    {
        buf.extend_from_slice(&t.raw_bytes());
        return Ok(());
    }
    if ggml_type == 0 {
        let mut row = vec![0f32; k];
        for r in 0..rows {
            view.row_f32(src_row(r), k, &mut row);
            for v in &row {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        return Ok(());
    }
    let q = QuantType::from_ggml_type(ggml_type).ok_or_else(|| {
        ModelError::tensor(&t.name, format!("cannot write GGML type {ggml_type}"))
    })?;
    let rb = q.row_bytes(k);
    let start = buf.len();
    buf.resize(start + rows * rb, 0);
    let out = &mut buf[start..];
    let threads = threads.max(1);
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|sc| {
        for (ci, chunk) in out.chunks_mut(per * rb).enumerate() {
            let view = &view;
            let src_row = &src_row;
            sc.spawn(move || {
                let mut row = vec![0f32; k];
                for (ri, dst) in chunk.chunks_exact_mut(rb).enumerate() {
                    view.row_f32(src_row(ci * per + ri), k, &mut row);
                    quantize_row(q, &row, dst);
                }
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_llama_cpp_converter() {
        // numpy: w.reshape(n_head, 2, hd/2, ...).swapaxes(1, 2).reshape(...), for 2 heads of 4.
        let got: Vec<usize> = (0..8).map(|r| permuted_row(r, 8, 2)).collect();
        assert_eq!(got, vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }

    #[test]
    fn q4_k_m_mix() {
        let p = QuantPlan::Q4KM;
        assert_eq!(
            p.type_for("token_embd.weight", 1792, 48, true),
            QuantType::Q6K
        );
        assert_eq!(
            p.type_for("token_embd.weight", 1792, 48, false),
            QuantType::Q4K
        );
        assert_eq!(
            p.type_for("blk.0.attn_v.weight", 1792, 48, true),
            QuantType::Q6K
        );
        assert_eq!(
            p.type_for("blk.6.ffn_down.weight", 4608, 48, true),
            QuantType::Q4K
        );
        assert_eq!(
            p.type_for("blk.8.ffn_down.weight", 4608, 48, true),
            QuantType::Q6K
        );
        assert_eq!(
            p.type_for("blk.7.attn_q.weight", 1792, 48, true),
            QuantType::Q4K
        );
        assert_eq!(
            p.type_for("blk.7.attn_q.weight", 64, 48, true),
            QuantType::Q8_0
        );
        assert_eq!(QuantPlan::parse("q4_k_m"), Some(QuantPlan::Q4KM));
        assert_eq!(
            QuantPlan::parse("Q8_0"),
            Some(QuantPlan::Uniform(QuantType::Q8_0))
        );
    }
}
