//! `config.json` and `generation_config.json` of a Llama-architecture checkpoint, in both the
//! transformers-4 style (`rope_theta`, `rope_scaling`, `torch_dtype`) and the transformers-5
//! style (`rope_parameters`, `dtype`), validated once into typed structs.

use crate::error::{ModelError, Result};
use serde_json::Value;

/// How RoPE frequencies are adjusted for longer contexts.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (equivalently, frequencies divided).
    Linear {
        factor: f64,
    },
    /// NTK-aware base growth once the sequence exceeds `original_max`.
    Dynamic {
        factor: f64,
        original_max: usize,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max: usize,
    },
    /// YaRN (NTK-by-parts with attention temperature).
    Yarn {
        factor: f64,
        original_max: usize,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: bool,
    },
    /// Per-frequency divisors stored in a GGUF `rope_freqs.weight` tensor.
    Factors(Vec<f32>),
}

#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint declares (`torch_dtype` or `dtype`), informational.
    pub dtype: Option<String>,
}

fn get_usize(v: &Value, key: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            ModelError::Config(format!("`{key}` must be a non-negative integer, found {x}"))
        }),
    }
}

fn get_f64(v: &Value, key: &str) -> Result<Option<f64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_f64()
            .map(Some)
            .ok_or_else(|| ModelError::Config(format!("`{key}` must be a number, found {x}"))),
    }
}

fn require_usize(v: &Value, key: &str) -> Result<usize> {
    get_usize(v, key)?.ok_or_else(|| ModelError::Config(format!("missing required key `{key}`")))
}

/// `eos_token_id` may be an integer or a list of integers.
pub(crate) fn token_id_list(v: Option<&Value>, key: &str) -> Result<Vec<u32>> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(|x| vec![x as u32])
            .ok_or_else(|| ModelError::Config(format!("`{key}` must be a token id, found {n}"))),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64().map(|x| x as u32).ok_or_else(|| {
                    ModelError::Config(format!("`{key}` must list token ids, found {x}"))
                })
            })
            .collect(),
        Some(x) => Err(ModelError::Config(format!(
            "`{key}` must be a token id or a list of them, found {x}"
        ))),
    }
}

impl ModelConfig {
    /// Parses and validates a `config.json` value.
    pub fn from_json(v: &Value) -> Result<ModelConfig> {
        if !v.is_object() {
            return Err(ModelError::Config("expected a JSON object".into()));
        }
        let architecture = match v
            .get("architectures")
            .and_then(|a| a.as_array())
            .and_then(|a| a.first())
        {
            Some(Value::String(s)) => s.clone(),
            _ => match v.get("model_type").and_then(|m| m.as_str()) {
                Some("llama") => "LlamaForCausalLM".to_string(),
                Some(other) => other.to_string(),
                None => {
                    return Err(ModelError::Config(
                        "missing `architectures` (expected [\"LlamaForCausalLM\"])".into(),
                    ))
                }
            },
        };
        if architecture != "LlamaForCausalLM" {
            return Err(ModelError::UnsupportedArchitecture(architecture));
        }
        let hidden_size = require_usize(v, "hidden_size")?;
        let num_heads = require_usize(v, "num_attention_heads")?;
        let num_kv_heads = get_usize(v, "num_key_value_heads")?.unwrap_or(num_heads);
        if num_heads == 0 || hidden_size == 0 {
            return Err(ModelError::Config(
                "`hidden_size` and `num_attention_heads` must be positive".into(),
            ));
        }
        let head_dim = match get_usize(v, "head_dim")? {
            Some(h) => h,
            None => {
                if hidden_size % num_heads != 0 {
                    return Err(ModelError::Config(format!(
                        "no `head_dim` and hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads}"
                    )));
                }
                hidden_size / num_heads
            }
        };
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(ModelError::Config(format!(
                "num_attention_heads {num_heads} must be a multiple of num_key_value_heads {num_kv_heads}"
            )));
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ModelError::Config(format!(
                "head_dim must be even and positive, found {head_dim}"
            )));
        }
        if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str()) {
            if act != "silu" {
                return Err(ModelError::Config(format!(
                    "hidden_act {act:?} is not supported (expected \"silu\")"
                )));
            }
        }
        for flag in ["attention_bias", "mlp_bias"] {
            if v.get(flag).and_then(|b| b.as_bool()) == Some(true) {
                return Err(ModelError::Config(format!(
                    "`{flag}: true` is not supported by the Llama forward pass"
                )));
            }
        }
        let max_position_embeddings = get_usize(v, "max_position_embeddings")?.unwrap_or(2048);
        // transformers 5 folds rope_theta and the scaling into `rope_parameters`.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_theta = match rope_params.and_then(|p| get_f64(p, "rope_theta").transpose()) {
            Some(t) => t?,
            None => get_f64(v, "rope_theta")?.unwrap_or(10000.0),
        };
        let scaling_obj = match v.get("rope_scaling") {
            Some(s) if s.is_object() => Some(s),
            _ => rope_params,
        };
        let rope_scaling = match scaling_obj {
            Some(s) => parse_rope_scaling(s, max_position_embeddings)?,
            None => RopeScaling::None,
        };
        let vocab_size = require_usize(v, "vocab_size")?;
        let cfg = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: require_usize(v, "intermediate_size")?,
            num_layers: require_usize(v, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: get_f64(v, "rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(|b| b.as_bool())
                .unwrap_or(false),
            bos_token_id: get_usize(v, "bos_token_id")?.map(|x| x as u32),
            eos_token_ids: token_id_list(v.get("eos_token_id"), "eos_token_id")?,
            dtype: v
                .get("dtype")
                .or_else(|| v.get("torch_dtype"))
                .and_then(|d| d.as_str())
                .map(str::to_string),
        };
        Ok(cfg)
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

fn parse_rope_scaling(s: &Value, max_pos: usize) -> Result<RopeScaling> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(|t| t.as_str())
        .unwrap_or("default");
    let factor = || -> Result<f64> {
        let f = get_f64(s, "factor")?
            .ok_or_else(|| ModelError::Config(format!("rope scaling `{kind}` needs `factor`")))?;
        if f < 1.0 {
            return Err(ModelError::Config(format!(
                "rope scaling factor must be >= 1, found {f}"
            )));
        }
        Ok(f)
    };
    let original = get_usize(s, "original_max_position_embeddings")?;
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "dynamic" => RopeScaling::Dynamic {
            factor: factor()?,
            original_max: original.unwrap_or(max_pos),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: get_f64(s, "low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: get_f64(s, "high_freq_factor")?.unwrap_or(4.0),
            original_max: original.ok_or_else(|| {
                ModelError::Config(
                    "llama3 rope scaling needs `original_max_position_embeddings`".into(),
                )
            })?,
        },
        "yarn" => RopeScaling::Yarn {
            factor: factor()?,
            original_max: original.unwrap_or(max_pos),
            beta_fast: get_f64(s, "beta_fast")?.unwrap_or(32.0),
            beta_slow: get_f64(s, "beta_slow")?.unwrap_or(1.0),
            mscale: get_f64(s, "mscale")?,
            mscale_all_dim: get_f64(s, "mscale_all_dim")?,
            attention_factor: get_f64(s, "attention_factor")?,
            truncate: s.get("truncate").and_then(|b| b.as_bool()).unwrap_or(true),
        },
        other => {
            return Err(ModelError::Config(format!(
            "unsupported rope scaling type {other:?} (supported: linear, dynamic, llama3, yarn)"
        )))
        }
    })
}

/// Default sampling settings from `generation_config.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

impl GenerationDefaults {
    pub fn from_json(v: &Value) -> Result<GenerationDefaults> {
        let f = |k: &str| -> Result<Option<f32>> { Ok(get_f64(v, k)?.map(|x| x as f32)) };
        Ok(GenerationDefaults {
            do_sample: v.get("do_sample").and_then(|b| b.as_bool()),
            temperature: f("temperature")?,
            top_k: get_usize(v, "top_k")?,
            top_p: f("top_p")?,
            min_p: f("min_p")?,
            repetition_penalty: f("repetition_penalty")?,
            max_new_tokens: get_usize(v, "max_new_tokens")?,
            eos_token_ids: token_id_list(v.get("eos_token_id"), "eos_token_id")?,
            bos_token_id: get_usize(v, "bos_token_id")?.map(|x| x as u32),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn midm_mini() -> Value {
        json!({"architectures": ["LlamaForCausalLM"], "hidden_size": 1792, "intermediate_size": 4608,
               "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
               "rms_norm_eps": 1e-5, "rope_theta": 8000000, "rope_scaling": null, "tie_word_embeddings": true,
               "vocab_size": 131392, "bos_token_id": 0, "eos_token_id": 2, "max_position_embeddings": 32768,
               "torch_dtype": "bfloat16", "hidden_act": "silu"})
    }

    #[test]
    fn parses_midm_mini() {
        let c = ModelConfig::from_json(&midm_mini()).unwrap();
        assert_eq!((c.head_dim, c.q_dim(), c.kv_dim()), (128, 4096, 1024));
        assert_eq!(c.rope_theta, 8e6);
        assert_eq!(c.rope_scaling, RopeScaling::None);
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn transformers5_rope_parameters() {
        let mut v = midm_mini();
        let o = v.as_object_mut().unwrap();
        o.remove("rope_theta");
        o.remove("rope_scaling");
        o.insert("rope_parameters".into(), json!({"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}));
        o.insert("eos_token_id".into(), json!([2, 131301]));
        let c = ModelConfig::from_json(&v).unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(matches!(
            c.rope_scaling,
            RopeScaling::Llama3 {
                original_max: 8192,
                ..
            }
        ));
        assert_eq!(c.eos_token_ids, vec![2, 131301]);
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        let mut v = midm_mini();
        v["architectures"] = json!(["MistralForCausalLM"]);
        assert!(matches!(
            ModelConfig::from_json(&v),
            Err(ModelError::UnsupportedArchitecture(_))
        ));
        let mut v = midm_mini();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(ModelConfig::from_json(&v)
            .unwrap_err()
            .to_string()
            .contains("hidden_size"));
        let mut v = midm_mini();
        v["num_key_value_heads"] = json!(5);
        assert!(ModelConfig::from_json(&v).is_err());
        let mut v = midm_mini();
        v["rope_scaling"] = json!({"type": "weird", "factor": 2.0});
        assert!(ModelConfig::from_json(&v)
            .unwrap_err()
            .to_string()
            .contains("weird"));
        assert!(ModelConfig::from_json(&json!([1, 2])).is_err());
        let mut v = midm_mini();
        v["hidden_size"] = json!("big");
        assert!(ModelConfig::from_json(&v).is_err());
    }
}
