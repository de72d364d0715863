//! `POST /v1/chat/completions`: messages (string or content-part arrays), tools and tool
//! results rendered with the model's chat template, answers streamed or whole, Mi:dm's
//! `<tool_call>` blocks returned as OpenAI `tool_calls`.

use crate::error::{ApiError, ApiResult};
use crate::params::{opt_bool, opt_i64, parse_common};
use crate::stream::{collect, finish_name, merge, sse, submit_all, token_text};
use crate::tools::{Delta, ToolCallParser};
use crate::{model_field, now_secs, parse_body, AppState, ServedModel};
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mideum_engine::{Event, FinishReason, TokenLogprob};
use mideum_model::ModelError;
use serde_json::{json, Value};
use std::sync::Arc;

/// Converts OpenAI messages into what chat templates expect: string contents, `developer`
/// as `system`, tool calls kept for the template to render.
fn normalize_messages(v: &Value) -> ApiResult<Value> {
    let msgs = match v.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(ApiError::bad_request(
                "`messages` must not be empty",
                Some("messages"),
            ))
        }
        _ => {
            return Err(ApiError::bad_request(
                "`messages` is required and must be an array",
                Some("messages"),
            ))
        }
    };
    let mut out = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let param = format!("messages[{i}]");
        let obj = m.as_object().ok_or_else(|| {
            ApiError::bad_request(format!("{param} must be an object"), Some(&param))
        })?;
        let role = match obj.get("role").and_then(|r| r.as_str()) {
            Some("developer") => "system",
            Some(r @ ("system" | "user" | "assistant" | "tool")) => r,
            Some(r) => {
                return Err(ApiError::bad_request(
                    format!(
                        "{param}.role {r:?} is not one of system, developer, user, assistant, tool"
                    ),
                    Some(&param),
                ))
            }
            None => {
                return Err(ApiError::bad_request(
                    format!("{param}.role is required"),
                    Some(&param),
                ))
            }
        };
        let content = match obj.get("content") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.get("type").and_then(|t| t.as_str()), p.get("text").and_then(|t| t.as_str())) {
                        (Some("text"), Some(t)) => s.push_str(t),
                        (Some(t), _) => {
                            return Err(ApiError::bad_request(format!("{param}: content parts of type {t:?} are not supported by this model (text only)"), Some(&param)))
                        }
                        _ => return Err(ApiError::bad_request(format!("{param}: each content part needs `type` and `text`"), Some(&param))),
                    }
                }
                s
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    format!("{param}.content must be a string or an array of content parts"),
                    Some(&param),
                ))
            }
        };
        let mut n = json!({"role": role, "content": content});
        if let Some(tc) = obj.get("tool_calls").filter(|t| !t.is_null()) {
            if !tc.is_array() {
                return Err(ApiError::bad_request(
                    format!("{param}.tool_calls must be an array"),
                    Some(&param),
                ));
            }
            n["tool_calls"] = tc.clone();
        }
        for k in ["tool_call_id", "name"] {
            if let Some(x) = obj.get(k).filter(|x| x.is_string()) {
                n[k] = x.clone();
            }
        }
        out.push(n);
    }
    Ok(Value::Array(out))
}

fn tools_field(v: &Value) -> ApiResult<Option<Value>> {
    let tools = match v.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) if a.is_empty() => return Ok(None),
        Some(t @ Value::Array(_)) => t.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`tools` must be an array",
                Some("tools"),
            ))
        }
    };
    match v.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => Ok(None),
        None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Object(_)) => {
            Ok(Some(tools))
        }
        Some(_) => Err(ApiError::bad_request(
            "`tool_choice` must be \"none\", \"auto\", \"required\" or an object",
            Some("tool_choice"),
        )),
    }
}

pub(crate) fn template_error(e: ModelError) -> ApiError {
    match e {
        ModelError::Template(m) => ApiError::bad_request(
            format!("The chat template rejected these messages: {m}"),
            Some("messages"),
        ),
        ModelError::Input(m) => ApiError::bad_request(m, Some("messages")),
        other => ApiError::internal(other.to_string()),
    }
}

fn logprobs_json(model: &ServedModel, ids: &[u32], lps: &[Option<TokenLogprob>]) -> Value {
    let entry = |id: u32, lp: f32| {
        let t = token_text(model, id);
        json!({"token": t, "logprob": lp, "bytes": t.as_bytes()})
    };
    let content: Vec<Value> = ids
        .iter()
        .zip(lps)
        .filter_map(|(&id, lp)| lp.as_ref().map(|lp| (id, lp)))
        .map(|(id, lp)| {
            let mut e = entry(id, lp.logprob);
            e["top_logprobs"] = Value::Array(lp.top.iter().map(|&(t, l)| entry(t, l)).collect());
            e
        })
        .collect();
    json!({ "content": content })
}

fn tool_call_json(i: usize, c: &crate::tools::ToolCall, id: &str) -> Value {
    json!({"index": i, "id": id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
}

pub async fn chat_completions(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    match run(st, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(st: Arc<AppState>, body: &[u8]) -> ApiResult<Response> {
    let v = parse_body(body)?;
    let model = st.model(model_field(&v)?)?;
    let messages = normalize_messages(&v)?;
    let tools = tools_field(&v)?;
    let lm = &model.engine.model;
    let (_, prompt_ids) = lm
        .encode_chat(&messages, tools.as_ref(), true)
        .map_err(template_error)?;
    let gp = parse_common(&v, &lm.generation, &["max_tokens", "max_completion_tokens"])?;
    let want_logprobs = opt_bool(&v, "logprobs")?.unwrap_or(false);
    let top = match opt_i64(&v, "top_logprobs")? {
        None => 0,
        Some(k) if (0..=20).contains(&k) => k as usize,
        Some(k) => {
            return Err(ApiError::bad_request(
                format!("`top_logprobs` must be between 0 and 20, got {k}"),
                Some("top_logprobs"),
            ))
        }
    };
    let ctx = lm.ctx_size;
    if prompt_ids.len() >= ctx {
        return Err(crate::submit_error(
            mideum_engine::SubmitError::PromptTooLong {
                tokens: prompt_ids.len(),
                context: ctx,
            },
        ));
    }
    let room = ctx - prompt_ids.len();
    let max_tokens = match gp.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::bad_request(
                format!("This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({} in the messages, {m} in the completion).", prompt_ids.len() + m, prompt_ids.len()),
                Some("max_tokens"),
            )
            .with_code("context_length_exceeded"))
        }
        Some(m) => m,
        None => room,
    };
    let reqs = gp.requests(
        &prompt_ids,
        max_tokens,
        want_logprobs.then_some(top),
        st.deadline(),
    );
    let rxs = submit_all(&model, reqs)?;
    let id = st.new_id("chatcmpl");
    let created = now_secs();
    let parse_tools = tools.is_some();
    if !gp.stream {
        let mut choices = Vec::new();
        let mut usage = mideum_engine::Usage::default();
        for (i, rx) in rxs.into_iter().enumerate() {
            let c = collect(rx).await?;
            usage.prompt_tokens = c.usage.prompt_tokens;
            usage.cached_tokens = c.usage.cached_tokens;
            usage.completion_tokens += c.usage.completion_tokens;
            let (content, calls) = if parse_tools {
                ToolCallParser::parse_all(&c.text)
            } else {
                (c.text.clone(), vec![])
            };
            let mut message = json!({"role": "assistant", "content": content});
            let mut finish = finish_name(c.finish);
            if !calls.is_empty() {
                let trimmed = content.trim();
                message["content"] = if trimmed.is_empty() {
                    Value::Null
                } else {
                    Value::String(trimmed.to_string())
                };
                message["tool_calls"] = Value::Array(
                    calls
                        .iter()
                        .enumerate()
                        .map(|(k, tc)| {
                            let mut j = tool_call_json(k, tc, &st.new_id("call"));
                            j.as_object_mut().map(|o| o.remove("index"));
                            j
                        })
                        .collect(),
                );
                if c.finish == FinishReason::Stop {
                    finish = "tool_calls";
                }
            }
            choices.push(json!({"index": i, "message": message,
                "logprobs": if want_logprobs { logprobs_json(&model, &c.ids, &c.logprobs) } else { Value::Null },
                "finish_reason": finish}));
        }
        return Ok(Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model.name,
            "choices": choices,
            "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                      "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}},
        }))
        .into_response());
    }

    // Streaming.
    let n = gp.n;
    let include_usage = gp.include_usage;
    let name = model.name.clone();
    let chunk = move |choices: Value, usage: Value| -> String {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": name, "choices": choices});
        if include_usage {
            c["usage"] = usage;
        }
        c.to_string()
    };
    let mut parsers: Vec<ToolCallParser> = (0..n).map(|_| ToolCallParser::default()).collect();
    let mut n_calls = vec![0usize; n];
    let mut started = vec![false; n];
    let mut usage = mideum_engine::Usage::default();
    let st2 = st.clone();
    let model2 = model.clone();
    let on_event = move |ev: Option<(usize, Event)>| -> Vec<String> {
        let mut out = Vec::new();
        let Some((i, ev)) = ev else {
            if include_usage {
                out.push(chunk(json!([]), json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                    "total_tokens": usage.prompt_tokens + usage.completion_tokens, "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}})));
            }
            return out;
        };
        let delta_chunk = |delta: Value, logprobs: Value, finish: Value| {
            chunk(
                json!([{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]),
                Value::Null,
            )
        };
        if !started[i] {
            started[i] = true;
            out.push(delta_chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                Value::Null,
            ));
        }
        let mut emit_text = |text: &str, out: &mut Vec<String>, lp: Value| {
            let deltas = if parse_tools {
                parsers[i].push(text)
            } else if text.is_empty() {
                vec![]
            } else {
                vec![Delta::Content(text.to_string())]
            };
            let mut lp = Some(lp);
            for d in deltas {
                match d {
                    Delta::Content(c) => out.push(delta_chunk(
                        json!({"content": c}),
                        lp.take().unwrap_or(Value::Null),
                        Value::Null,
                    )),
                    Delta::Call(c) => {
                        let k = n_calls[i];
                        n_calls[i] += 1;
                        let call_id = st2.new_id("call");
                        out.push(delta_chunk(json!({"tool_calls": [{"index": k, "id": call_id, "type": "function", "function": {"name": c.name, "arguments": ""}}]}), Value::Null, Value::Null));
                        // Arguments arrive as deltas, as OpenAI streams them.
                        let chars: Vec<char> = c.arguments.chars().collect();
                        for piece in chars.chunks(16) {
                            let s: String = piece.iter().collect();
                            out.push(delta_chunk(
                                json!({"tool_calls": [{"index": k, "function": {"arguments": s}}]}),
                                Value::Null,
                                Value::Null,
                            ));
                        }
                    }
                }
            }
            if let Some(Value::Object(o)) = lp {
                // A token whose text is held back still reports its logprob.
                out.push(delta_chunk(json!({}), Value::Object(o), Value::Null));
            }
        };
        match ev {
            Event::Token { id, text, logprob } => {
                let lp = match &logprob {
                    Some(l) => logprobs_json(&model2, &[id], &[Some(l.clone())]),
                    None => Value::Null,
                };
                emit_text(&text, &mut out, lp);
            }
            Event::Done {
                text,
                finish_reason,
                usage: u,
            } => {
                emit_text(&text, &mut out, Value::Null);
                if parse_tools {
                    for d in parsers[i].finish() {
                        match d {
                            Delta::Content(c) => out.push(delta_chunk(
                                json!({"content": c}),
                                Value::Null,
                                Value::Null,
                            )),
                            Delta::Call(c) => {
                                let k = n_calls[i];
                                n_calls[i] += 1;
                                out.push(delta_chunk(json!({"tool_calls": [tool_call_json(k, &c, &st2.new_id("call"))]}), Value::Null, Value::Null));
                            }
                        }
                    }
                }
                usage.prompt_tokens = u.prompt_tokens;
                usage.cached_tokens = u.cached_tokens;
                usage.completion_tokens += u.completion_tokens;
                let finish = if n_calls[i] > 0 && finish_reason == FinishReason::Stop {
                    "tool_calls"
                } else {
                    finish_name(finish_reason)
                };
                out.push(delta_chunk(json!({}), Value::Null, json!(finish)));
            }
            Event::Error(e) => {
                out.push(
                    ApiError::internal(format!("generation failed: {e}"))
                        .body()
                        .to_string(),
                );
            }
        }
        out
    };
    Ok(sse(merge(rxs), on_event))
}
