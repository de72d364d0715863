//! `POST /v1/completions`: raw completion of a prompt given as text, token ids, or a list of
//! either; `echo` and legacy `logprobs`.

use crate::chat::template_error;
use crate::error::{ApiError, ApiResult};
use crate::params::{opt_bool, opt_i64, parse_common};
use crate::stream::{collect, finish_name, merge, sse, submit_all, token_text};
use crate::{model_field, now_secs, parse_body, AppState, ServedModel};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mideum_engine::{Event, TokenLogprob};
use serde_json::{json, Map, Value};
use std::sync::Arc;

fn prompts(v: &Value, model: &ServedModel) -> ApiResult<Vec<Vec<u32>>> {
    let tok = &model.engine.model.tokenizer;
    let enc = |s: &str| -> ApiResult<Vec<u32>> {
        let mut ids = tok.encode(s, tok.adds_bos).map_err(template_error)?;
        if ids.is_empty() {
            ids.extend(tok.bos_id());
        }
        Ok(ids)
    };
    let ids_of = |a: &[Value]| -> Option<Vec<u32>> {
        a.iter()
            .map(|x| {
                x.as_u64()
                    .filter(|&t| t <= u32::MAX as u64)
                    .map(|t| t as u32)
            })
            .collect()
    };
    let bad = || {
        ApiError::bad_request(
            "`prompt` must be a string, a list of token ids, or a list of those",
            Some("prompt"),
        )
    };
    let out = match v.get("prompt") {
        Some(Value::String(s)) => vec![enc(s)?],
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::bad_request(
                "`prompt` must not be empty",
                Some("prompt"),
            ))
        }
        Some(Value::Array(a)) if a[0].is_number() => vec![ids_of(a).ok_or_else(bad)?],
        Some(Value::Array(a)) => a
            .iter()
            .map(|p| match p {
                Value::String(s) => enc(s),
                Value::Array(ids) => ids_of(ids).ok_or_else(bad),
                _ => Err(bad()),
            })
            .collect::<ApiResult<_>>()?,
        _ => {
            return Err(ApiError::bad_request(
                "`prompt` is required",
                Some("prompt"),
            ))
        }
    };
    if out.len() > 16 {
        return Err(ApiError::bad_request(
            "at most 16 prompts per request",
            Some("prompt"),
        ));
    }
    if out.iter().any(|p| p.is_empty()) {
        return Err(ApiError::bad_request(
            "`prompt` must not be empty",
            Some("prompt"),
        ));
    }
    Ok(out)
}

/// Log-probabilities of every prompt token after the first (the first has none), computed with
/// one forward pass over the prompt on a private cache.
async fn prompt_logprobs(
    model: &Arc<ServedModel>,
    prompt: &[u32],
    k: usize,
) -> ApiResult<Vec<Option<TokenLogprob>>> {
    let m = model.clone();
    let ids = prompt.to_vec();
    tokio::task::spawn_blocking(move || -> ApiResult<Vec<Option<TokenLogprob>>> {
        let lm = &m.engine.model;
        let vocab = lm.model.config.vocab_size;
        let mut cache = lm.new_cache();
        let logits = lm
            .model
            .forward(&ids, &mut cache, mideum_model::Logits::All)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let mut out = vec![None];
        for i in 1..ids.len() {
            out.push(Some(mideum_engine::logprob_of(
                &logits[(i - 1) * vocab..i * vocab],
                ids[i],
                k,
            )));
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

/// The legacy logprobs object: tokens, their log-probabilities, the top alternatives, and each
/// token's offset in characters into the returned text (special tokens such as BOS take none).
fn legacy_logprobs(
    model: &ServedModel,
    ids: &[u32],
    lps: &[Option<TokenLogprob>],
    offset0: usize,
) -> Value {
    let tok = &model.engine.model.tokenizer;
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top = Vec::new();
    let mut offsets = Vec::new();
    let mut off = offset0;
    // Offsets follow the streamed decoding of the whole sequence, so that tokens holding parts
    // of one character share its offset and the offsets add up to the returned text.
    let mut dec = mideum_model::StreamDecoder::new(true);
    for (&id, lp) in ids.iter().zip(lps) {
        offsets.push(off);
        off += dec.push(tok, id).map(|t| t.chars().count()).unwrap_or(0);
        tokens.push(Value::String(token_text(model, id)));
        match lp {
            Some(lp) => {
                token_logprobs.push(json!(lp.logprob));
                let mut m = Map::new();
                for &(alt, l) in &lp.top {
                    m.insert(token_text(model, alt), json!(l));
                }
                top.push(Value::Object(m));
            }
            None => {
                token_logprobs.push(Value::Null);
                top.push(Value::Null);
            }
        }
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

pub async fn completions(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    match run(st, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The prompt as sent (token-id prompts decoded), for `echo`.
fn prompt_text_of(v: &Value, prompts: &[Vec<u32>], i: usize, model: &ServedModel) -> String {
    let given = match v.get("prompt") {
        Some(Value::String(s)) if i == 0 => Some(s.clone()),
        Some(Value::Array(a)) if !a.is_empty() && !a[0].is_number() => {
            a.get(i).and_then(|p| p.as_str()).map(str::to_string)
        }
        _ => None,
    };
    given.unwrap_or_else(|| {
        model
            .engine
            .model
            .tokenizer
            .decode_lenient(&prompts[i], true)
            .unwrap_or_default()
    })
}

async fn run(st: Arc<AppState>, body: &[u8]) -> ApiResult<Response> {
    let v = parse_body(body)?;
    let model = st.model(model_field(&v)?)?;
    let lm = &model.engine.model;
    let prompts = prompts(&v, &model)?;
    let echo = opt_bool(&v, "echo")?.unwrap_or(false);
    // `echo` with `max_tokens: 0` scores the prompt without generating (as evaluation
    // harnesses use it).
    let score_only = echo && v.get("max_tokens").and_then(|m| m.as_i64()) == Some(0);
    let mut v = v;
    if score_only {
        v.as_object_mut().map(|o| o.remove("max_tokens"));
    }
    let mut gp = parse_common(&v, &lm.generation, &["max_tokens"])?;
    if gp.max_tokens.is_none() {
        gp.max_tokens = Some(16); // OpenAI's default for this endpoint
    }
    let logprobs = match opt_i64(&v, "logprobs")? {
        None => None,
        Some(k) if (0..=20).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::bad_request(
                format!("`logprobs` must be between 0 and 20, got {k}"),
                Some("logprobs"),
            ))
        }
    };
    let ctx = lm.ctx_size;
    let mut reqs = Vec::new();
    for p in &prompts {
        if p.len() >= ctx {
            return Err(
                crate::submit_error(mideum_engine::SubmitError::PromptTooLong {
                    tokens: p.len(),
                    context: ctx,
                })
                .with_param("prompt"),
            );
        }
        let max_tokens = gp.max_tokens.unwrap_or(16).min(ctx - p.len());
        reqs.extend(gp.requests(p, max_tokens, logprobs, st.deadline()));
    }
    let prompt_of: Vec<usize> = (0..reqs.len()).map(|k| k / gp.n).collect();
    let mut prompt_lps: Vec<Vec<Option<TokenLogprob>>> = Vec::new();
    if echo {
        if let Some(k) = logprobs {
            for p in &prompts {
                prompt_lps.push(prompt_logprobs(&model, p, k).await?);
            }
        }
    }
    let echo_lp = |pi: usize| -> Value {
        match prompt_lps.get(pi) {
            Some(lps) => legacy_logprobs(&model, &prompts[pi], lps, 0),
            None => Value::Null,
        }
    };
    if score_only {
        let choices: Vec<Value> = (0..prompt_of.len())
            .map(|i| json!({"text": prompt_text_of(&v, &prompts, prompt_of[i], &model), "index": i, "logprobs": echo_lp(prompt_of[i]), "finish_reason": "length"}))
            .collect();
        let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
        return Ok(Json(json!({"id": st.new_id("cmpl"), "object": "text_completion", "created": now_secs(), "model": model.name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 0, "total_tokens": prompt_tokens}})).into_response());
    }
    let rxs = submit_all(&model, reqs)?;
    let id = st.new_id("cmpl");
    let created = now_secs();
    let prompt_text: Vec<String> = (0..prompts.len())
        .map(|i| prompt_text_of(&v, &prompts, i, &model))
        .collect();
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    if !gp.stream {
        let mut choices = Vec::new();
        let mut completion_tokens = 0;
        let mut cached = 0;
        for (i, rx) in rxs.into_iter().enumerate() {
            let c = collect(rx).await?;
            completion_tokens += c.usage.completion_tokens;
            cached += c.usage.cached_tokens;
            let pi = prompt_of[i];
            let text = if echo {
                format!("{}{}", prompt_text[pi], c.text)
            } else {
                c.text.clone()
            };
            let lp = logprobs.map(|_| {
                let mut all_ids: Vec<u32> = Vec::new();
                let mut all_lps: Vec<Option<TokenLogprob>> = Vec::new();
                if echo {
                    all_ids.extend(&prompts[pi]);
                    all_lps.extend(
                        prompt_lps
                            .get(pi)
                            .cloned()
                            .unwrap_or_else(|| vec![None; prompts[pi].len()]),
                    );
                }
                all_ids.extend(&c.ids);
                all_lps.extend(c.logprobs.iter().cloned());
                legacy_logprobs(&model, &all_ids, &all_lps, 0)
            });
            choices.push(json!({"text": text, "index": i, "logprobs": lp, "finish_reason": finish_name(c.finish)}));
        }
        return Ok(Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model.name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": cached}},
        }))
        .into_response());
    }
    let include_usage = gp.include_usage;
    let name = model.name.clone();
    let chunk = move |choices: Value, usage: Value| -> String {
        let mut c = json!({"id": id, "object": "text_completion", "created": created, "model": name, "choices": choices});
        if include_usage {
            c["usage"] = usage;
        }
        c.to_string()
    };
    let mut started = vec![false; prompt_of.len()];
    let mut completion_tokens = 0;
    let mut cached = 0;
    let model2 = model.clone();
    let echo_lps: Vec<Value> = (0..prompts.len()).map(echo_lp).collect();
    let echo_lp2 = move |pi: usize| echo_lps.get(pi).cloned().unwrap_or(Value::Null);
    let on_event = move |ev: Option<(usize, Event)>| -> Vec<String> {
        let mut out = Vec::new();
        let Some((i, ev)) = ev else {
            if include_usage {
                out.push(chunk(json!([]), json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens, "prompt_tokens_details": {"cached_tokens": cached}})));
            }
            return out;
        };
        let one = |text: String, lp: Value, finish: Value| {
            chunk(
                json!([{"text": text, "index": i, "logprobs": lp, "finish_reason": finish}]),
                Value::Null,
            )
        };
        if !started[i] {
            started[i] = true;
            if echo {
                let pi = prompt_of[i];
                let lp = if logprobs.is_some() {
                    echo_lp2(pi)
                } else {
                    Value::Null
                };
                out.push(one(prompt_text[pi].clone(), lp, Value::Null));
            }
        }
        match ev {
            Event::Token {
                id: tid,
                text,
                logprob,
            } => {
                let lp = if logprobs.is_some() {
                    // In a stream, offsets count from the start of this chunk's text.
                    legacy_logprobs(&model2, &[tid], &[logprob], 0)
                } else {
                    Value::Null
                };
                // One chunk per generated token, also when its text is still held back (the
                // first bytes of a multi-byte character, a possible stop-string start), as
                // llama-server and vLLM stream: a client sees the first token when it is made.
                out.push(one(text, lp, Value::Null));
            }
            Event::Done {
                text,
                finish_reason,
                usage,
            } => {
                completion_tokens += usage.completion_tokens;
                cached += usage.cached_tokens;
                out.push(one(text, Value::Null, json!(finish_name(finish_reason))));
            }
            Event::Error(e) => out.push(
                ApiError::internal(format!("generation failed: {e}"))
                    .body()
                    .to_string(),
            ),
        }
        out
    };
    Ok(sse(merge(rxs), on_event))
}
