//! Reading OpenAI request bodies field by field, so that every bad value gets a 400 that names
//! the parameter and what was expected.

use crate::error::{ApiError, ApiResult};
use mideum_engine::SamplingParams;
use mideum_model::GenerationDefaults;
use serde_json::Value;

pub fn opt_f32(v: &Value, key: &str, lo: f32, hi: f32) -> ApiResult<Option<f32>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => match x.as_f64() {
            Some(f) if (lo as f64..=hi as f64).contains(&f) => Ok(Some(f as f32)),
            _ => Err(ApiError::bad_request(
                format!("`{key}` must be a number between {lo} and {hi}, got {x}"),
                Some(key),
            )),
        },
    }
}

pub fn opt_i64(v: &Value, key: &str) -> ApiResult<Option<i64>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_i64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("`{key}` must be an integer, got {x}"), Some(key))
        }),
    }
}

pub fn opt_bool(v: &Value, key: &str) -> ApiResult<Option<bool>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(x) => Err(ApiError::bad_request(
            format!("`{key}` must be true or false, got {x}"),
            Some(key),
        )),
    }
}

/// Everything about generation that chat and completions requests share.
#[derive(Clone, Debug)]
pub struct GenParams {
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

impl GenParams {
    /// The `n` engine requests for one prompt; choice `i` samples with seed `seed + i`.
    pub fn requests(
        &self,
        prompt_ids: &[u32],
        max_tokens: usize,
        logprobs: Option<usize>,
        deadline: Option<std::time::Instant>,
    ) -> Vec<mideum_engine::Request> {
        (0..self.n)
            .map(|i| {
                let mut sampling = self.sampling.clone();
                sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
                mideum_engine::Request {
                    prompt_ids: prompt_ids.to_vec(),
                    max_tokens,
                    sampling,
                    stop: self.stop.clone(),
                    ignore_eos: self.ignore_eos,
                    logprobs,
                    deadline,
                }
            })
            .collect()
    }
}

pub fn parse_common(
    v: &Value,
    defaults: &GenerationDefaults,
    max_tokens_keys: &[&str],
) -> ApiResult<GenParams> {
    let mut max_tokens = None;
    for key in max_tokens_keys {
        if let Some(m) = opt_i64(v, key)? {
            if m < 1 {
                return Err(ApiError::bad_request(
                    format!("`{key}` must be at least 1, got {m}"),
                    Some(key),
                ));
            }
            max_tokens = Some(m as usize);
        }
    }
    let mut s = SamplingParams::from_defaults(defaults);
    if let Some(t) = opt_f32(v, "temperature", 0.0, 2.0)? {
        s.temperature = t;
        if t > 0.0 && defaults.do_sample != Some(true) {
            s.top_k = 0;
            s.top_p = 1.0;
        }
    }
    if let Some(p) = opt_f32(v, "top_p", 0.0, 1.0)? {
        if p <= 0.0 {
            return Err(ApiError::bad_request(
                "`top_p` must be greater than 0",
                Some("top_p"),
            ));
        }
        s.top_p = p;
    }
    if let Some(k) = opt_i64(v, "top_k")? {
        if k < -1 {
            return Err(ApiError::bad_request(
                "`top_k` must be -1 (off), 0 (off) or positive",
                Some("top_k"),
            ));
        }
        s.top_k = k.max(0) as usize;
    }
    if let Some(p) = opt_f32(v, "min_p", 0.0, 1.0)? {
        s.min_p = p;
    }
    if let Some(p) = opt_f32(v, "presence_penalty", -2.0, 2.0)? {
        s.presence_penalty = p;
    }
    if let Some(p) = opt_f32(v, "frequency_penalty", -2.0, 2.0)? {
        s.frequency_penalty = p;
    }
    if let Some(p) = opt_f32(v, "repetition_penalty", 0.01, 10.0)? {
        s.repetition_penalty = p;
    }
    if let Some(seed) = opt_i64(v, "seed")? {
        s.seed = Some(seed as u64);
    }
    let stop = match v.get("stop") {
        None | Some(Value::Null) => vec![],
        Some(Value::String(x)) => vec![x.clone()],
        Some(Value::Array(a)) => {
            let stops: Option<Vec<String>> =
                a.iter().map(|x| x.as_str().map(str::to_string)).collect();
            match stops {
                Some(st) if st.len() <= 16 => st,
                _ => {
                    return Err(ApiError::bad_request(
                        "`stop` must be a string or a list of at most 16 strings",
                        Some("stop"),
                    ))
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "`stop` must be a string or a list of strings",
                Some("stop"),
            ))
        }
    };
    let n = match opt_i64(v, "n")? {
        None => 1,
        Some(n) if (1..=16).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad_request(
                format!("`n` must be between 1 and 16, got {n}"),
                Some("n"),
            ))
        }
    };
    let stream = opt_bool(v, "stream")?.unwrap_or(false);
    let include_usage = match v.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(o) if o.is_object() => opt_bool(o, "include_usage")?.unwrap_or(false),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`stream_options` must be an object",
                Some("stream_options"),
            ))
        }
    };
    Ok(GenParams {
        max_tokens,
        sampling: s,
        stop,
        n,
        stream,
        include_usage,
        ignore_eos: opt_bool(v, "ignore_eos")?.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rejects_bad_values_naming_the_parameter() {
        let d = GenerationDefaults::default();
        for (body, param) in [
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_tokens": -5}), "max_tokens"),
            (json!({"max_tokens": "ten"}), "max_tokens"),
            (json!({"temperature": 3}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"n": 0}), "n"),
            (json!({"stop": 5}), "stop"),
            (json!({"stream": "yes"}), "stream"),
        ] {
            let e = parse_common(&body, &d, &["max_tokens"]).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        let p = parse_common(
            &json!({"max_tokens": 7, "temperature": 0.5, "stop": ["a", "b"], "n": 2, "seed": 3}),
            &d,
            &["max_tokens"],
        )
        .unwrap();
        assert_eq!(
            (p.max_tokens, p.n, p.stop.len(), p.sampling.seed),
            (Some(7), 2, 2, Some(3))
        );
    }
}
