//! Opens a model reference (a Hugging Face directory or a `.gguf` file) into everything needed
//! to run it: config, weights, tokenizer, chat template and generation defaults.

use crate::config::{GenerationDefaults, ModelConfig, RopeScaling};
use crate::error::{read_json, ModelError, Result};
use crate::gguf::GgufFile;
use crate::llama::{Llama, NameScheme};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Threads for the forward pass (0 = all available cores).
    pub threads: usize,
    /// Context window; `None` uses the model's `max_position_embeddings`.
    pub ctx_size: Option<usize>,
    /// Quantize every weight matrix to this GGML block type while loading (`None` keeps the
    /// stored types).
    pub quant: Option<mideum_kernels::QuantType>,
    /// Element type of the KV cache (f16 by default; f32 for bit-closer comparisons).
    pub kv_type: crate::kv::KvType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFormat {
    HuggingFace,
    Gguf,
}

pub struct LoadedModel {
    pub path: PathBuf,
    pub format: CheckpointFormat,
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub generation: GenerationDefaults,
    /// Every token id that ends generation.
    pub eos_ids: Vec<u32>,
    pub ctx_size: usize,
}

fn threads(n: usize) -> usize {
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

impl LoadedModel {
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
        let meta = std::fs::metadata(path).map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        if meta.is_dir() {
            Self::load_hf(path, opts)
        } else {
            Self::load_gguf(path, opts)
        }
    }

    fn load_hf(dir: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(ModelError::format(
                dir,
                "no config.json: expected a Hugging Face model directory or a .gguf file",
            ));
        }
        let config = ModelConfig::from_json(&read_json(&cfg_path)?)?;
        let gen_path = dir.join("generation_config.json");
        let generation = if gen_path.exists() {
            GenerationDefaults::from_json(&read_json(&gen_path)?)
                .map_err(|e| ModelError::format(&gen_path, e.to_string()))?
        } else {
            GenerationDefaults::default()
        };
        let tokenizer = Tokenizer::from_hf_dir(dir)?;
        let template_src = chat_template_from_hf(dir)?;
        let mut tensors = crate::safetensors::load_dir(dir)?;
        if let Some(q) = opts.quant {
            crate::tensor::quantize_all(&mut tensors, q, threads(opts.threads))?;
            crate::tensor::move_to_arena(
                &mut tensors,
                crate::tensor::repack_enabled(),
                threads(opts.threads),
            )?;
        }
        let mut model = Llama::new(
            config,
            tensors,
            NameScheme::HuggingFace,
            threads(opts.threads),
        )?;
        model.set_kv_type(opts.kv_type);
        Self::finish(
            dir,
            CheckpointFormat::HuggingFace,
            model,
            tokenizer,
            template_src,
            generation,
            vec![],
            opts,
        )
    }

    fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
        let g = GgufFile::open(path)?;
        let mut config = config_from_gguf(&g)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        let mut tensors = g.tensors()?;
        if let Some(f) = tensors.remove("rope_freqs.weight") {
            f.expect_shape(&[config.head_dim / 2])?;
            config.rope_scaling = RopeScaling::Factors(f.to_f32_vec());
        }
        let template_src = g
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let mut extra_eos = vec![];
        for key in [
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        ] {
            if let Some(id) = g.get(key).and_then(|v| v.as_u64()) {
                extra_eos.push(id as u32);
            }
        }
        let generation = GenerationDefaults::default();
        if let Some(q) = opts.quant {
            crate::tensor::quantize_all(&mut tensors, q, threads(opts.threads))?;
        }
        let repack = crate::tensor::repack_enabled();
        if repack || std::env::var("MIDEUM_HUGEPAGES").is_ok_and(|v| v == "1") {
            crate::tensor::move_to_arena(&mut tensors, repack, threads(opts.threads))?;
        }
        let mut model = Llama::new(config, tensors, NameScheme::Gguf, threads(opts.threads))?;
        model.set_kv_type(opts.kv_type);
        Self::finish(
            path,
            CheckpointFormat::Gguf,
            model,
            tokenizer,
            template_src,
            generation,
            extra_eos,
            opts,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        path: &Path,
        format: CheckpointFormat,
        model: Llama,
        tokenizer: Tokenizer,
        template_src: Option<String>,
        generation: GenerationDefaults,
        extra_eos: Vec<u32>,
        opts: &LoadOptions,
    ) -> Result<LoadedModel> {
        let template = template_src
            .map(|src| template_for(&src, &tokenizer))
            .transpose()?;
        // Stop on every end marker the checkpoint declares anywhere, plus Llama-3 style
        // end-of-turn markers: Mi:dm's chat turns end with <|eot_id|> (id 131301).
        let mut eos_ids: Vec<u32> = model.config.eos_token_ids.clone();
        eos_ids.extend(&generation.eos_token_ids);
        eos_ids.extend(extra_eos);
        for name in ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"] {
            if let Some(id) = tokenizer.token_to_id(name) {
                eos_ids.push(id);
            }
        }
        if let Some(e) = tokenizer
            .eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
        {
            eos_ids.push(e);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        // Dynamic NTK scaling exists to stretch the trained window by its factor.
        let native = match model.config.rope_scaling {
            RopeScaling::Dynamic {
                factor,
                original_max,
            } => (original_max as f64 * factor) as usize,
            _ => model.config.max_position_embeddings,
        };
        let ctx_size = opts.ctx_size.unwrap_or(native).max(1);
        // Loading leaves tens of MB of freed temporaries (GGUF metadata, the tokenizer's JSON)
        // scattered between the tokenizer's live allocations, where the allocator keeps them
        // resident; hand those pages back.
        crate::tensor::release_free_heap();
        Ok(LoadedModel {
            path: path.to_path_buf(),
            format,
            model,
            tokenizer,
            template,
            generation,
            eos_ids,
            ctx_size,
        })
    }

    /// Renders a chat with the model's template.
    pub fn render_chat(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = self.template.as_ref().ok_or_else(|| {
            ModelError::Template(
                "this model has no chat template (use `generate` for raw completion)".into(),
            )
        })?;
        t.render(messages, tools, add_generation_prompt)
    }

    /// Renders and tokenizes a chat so that only the template's markup becomes control tokens
    /// (see `chat::encode_chat`). Returns the prompt text and its ids.
    pub fn encode_chat(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<u32>)> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| ModelError::Template("this model has no chat template".into()))?;
        crate::chat::encode_chat(&self.tokenizer, t, messages, tools, add_generation_prompt)
    }

    /// Token ids of a rendered chat prompt. The template already writes BOS and control tokens,
    /// so nothing is added here (no doubled BOS).
    pub fn encode_prompt(&self, rendered: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(rendered, false)
    }

    pub fn new_cache(&self) -> crate::llama::KvCache {
        self.model.new_cache(self.ctx_size)
    }
}

fn chat_template_from_hf(dir: &Path) -> Result<Option<String>> {
    let p = dir.join("tokenizer_config.json");
    if p.exists() {
        let v = read_json(&p)?;
        match v.get("chat_template") {
            Some(serde_json::Value::String(s)) => return Ok(Some(s.clone())),
            // A list of named templates: use "default".
            Some(serde_json::Value::Array(a)) => {
                for t in a {
                    if t.get("name").and_then(|n| n.as_str()) == Some("default") {
                        return Ok(t
                            .get("template")
                            .and_then(|s| s.as_str())
                            .map(str::to_string));
                    }
                }
            }
            _ => {}
        }
    }
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|error| ModelError::Io { path: jinja, error });
    }
    Ok(None)
}

fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch = g
        .architecture()
        .ok_or_else(|| ModelError::format(&g.path, "missing general.architecture"))?
        .to_string();
    if arch != "llama" {
        return Err(ModelError::UnsupportedArchitecture(arch));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let req = |k: &str| -> Result<usize> {
        g.get(&key(k))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| {
                ModelError::format(&g.path, format!("missing or invalid metadata {}", key(k)))
            })
    };
    let opt = |k: &str| g.get(&key(k)).and_then(|v| v.as_u64()).map(|v| v as usize);
    let hidden = req("embedding_length")?;
    let heads = req("attention.head_count")?;
    let kv_heads = opt("attention.head_count_kv").unwrap_or(heads);
    let head_dim = opt("attention.key_length")
        .or_else(|| opt("rope.dimension_count"))
        .unwrap_or(hidden / heads.max(1));
    let n_vocab = match opt("vocab_size") {
        Some(v) => v,
        None => g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
            .unwrap_or(0),
    };
    let ctx = opt("context_length").unwrap_or(2048);
    let scaling_type = g
        .get(&key("rope.scaling.type"))
        .and_then(|v| v.as_str())
        .unwrap_or("none");
    let factor = g
        .get(&key("rope.scaling.factor"))
        .and_then(|v| v.as_f64())
        .unwrap_or(1.0);
    let orig = opt("rope.scaling.original_context_length").unwrap_or(ctx);
    let rope_scaling = match scaling_type {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor },
        "yarn" => RopeScaling::Yarn {
            factor,
            original_max: orig,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true,
        },
        other => {
            return Err(ModelError::format(
                &g.path,
                format!("rope scaling type {other:?} is not supported"),
            ))
        }
    };
    let mut cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "head_dim": head_dim, "intermediate_size": req("feed_forward_length")?,
        "num_hidden_layers": req("block_count")?, "vocab_size": n_vocab, "max_position_embeddings": ctx,
        "rms_norm_eps": g.get(&key("attention.layer_norm_rms_epsilon")).and_then(|v| v.as_f64()).unwrap_or(1e-5),
        "rope_theta": g.get(&key("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10000.0),
    });
    if let Some(b) = g
        .get("tokenizer.ggml.bos_token_id")
        .and_then(|v| v.as_u64())
    {
        cfg["bos_token_id"] = b.into();
    }
    let mut c = ModelConfig::from_json(&cfg)?;
    // f32 metadata widened to f64 (e.g. 1e-5 → 9.99999974e-6) must round back to the f32 the
    // converter wrote, which is what transformers computes with.
    c.rms_norm_eps = g
        .get(&key("attention.layer_norm_rms_epsilon"))
        .and_then(|v| v.as_f64())
        .unwrap_or(1e-5) as f32;
    c.rope_scaling = rope_scaling;
    c.tie_word_embeddings = !g.tensor_infos.iter().any(|t| t.name == "output.weight");
    Ok(c)
}

/// The text side of a checkpoint (tokenizer and chat template) without its weights, for
/// commands that only tokenize or render.
pub struct TextAssets {
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
}

impl TextAssets {
    pub fn load(path: &Path) -> Result<TextAssets> {
        let meta = std::fs::metadata(path).map_err(|error| ModelError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let (tokenizer, src) = if meta.is_dir() {
            (Tokenizer::from_hf_dir(path)?, chat_template_from_hf(path)?)
        } else {
            let g = GgufFile::open(path)?;
            let src = g
                .get("tokenizer.chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            (Tokenizer::from_gguf(&g)?, src)
        };
        let template = src.map(|src| template_for(&src, &tokenizer)).transpose()?;
        Ok(TextAssets {
            tokenizer,
            template,
        })
    }

    pub fn render_chat(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = self
            .template
            .as_ref()
            .ok_or_else(|| ModelError::Template("this model has no chat template".into()))?;
        t.render(messages, tools, add_generation_prompt)
    }
}

/// Compiles a chat template with the special-token strings of its tokenizer.
fn template_for(src: &str, t: &Tokenizer) -> Result<ChatTemplate> {
    ChatTemplate::new(
        src,
        t.bos_token.clone(),
        t.eos_token.clone(),
        t.pad_token.clone(),
        t.unk_token.clone(),
    )
}
