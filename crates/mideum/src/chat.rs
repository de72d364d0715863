//! `mideum run`: a terminal chat. Each turn re-renders the whole conversation with the model's
//! chat template; the session's KV cache already holds the earlier turns, so only the new
//! message is computed.

use crate::{load_model, SamplingArgs};
use anyhow::Result;
use mideum_engine::{generate, GenerateRequest, Session};
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::Path;

pub fn run(
    path: &Path,
    threads: usize,
    ctx_size: Option<usize>,
    prompt: Option<&str>,
    system: Option<&str>,
    sampling: &SamplingArgs,
    as_json: bool,
) -> Result<()> {
    let m = load_model(path, threads, ctx_size)?;
    if m.template.is_none() {
        anyhow::bail!(
            "{} has no chat template; use `mideum generate` for raw completion",
            path.display()
        );
    }
    let params = sampling.params(&m)?;
    let mut session = Session::new(&m);
    let mut messages: Vec<serde_json::Value> = Vec::new();
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    let interactive = prompt.is_none();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut one = prompt.map(str::to_string);
    loop {
        let user = match one.take() {
            Some(p) => p,
            None if interactive => {
                eprint!(">>> ");
                std::io::stderr().flush()?;
                match lines.next() {
                    Some(l) => l?,
                    None => break,
                }
            }
            None => break,
        };
        let trimmed = user.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed == "/bye" || trimmed == "/exit" {
            break;
        }
        messages.push(json!({"role": "user", "content": user}));
        let (_, prompt_ids) =
            m.encode_chat(&serde_json::Value::Array(messages.clone()), None, true)?;
        let req = GenerateRequest {
            prompt_ids: prompt_ids.clone(),
            max_tokens: sampling.max_tokens,
            sampling: params.clone(),
            stop: sampling.stop.clone(),
            ignore_eos: false,
        };
        let mut stdout = std::io::stdout();
        let out = generate(&m, &mut session, &req, &mut |piece| {
            if !as_json {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
            true
        })?;
        if as_json {
            let v = json!({"prompt_ids": prompt_ids, "ids": out.ids, "text": out.text, "finish_reason": out.finish_reason,
                           "cached_prompt_tokens": out.cached_tokens});
            println!("{v}");
        } else {
            println!();
        }
        messages.push(json!({"role": "assistant", "content": out.text}));
        if !interactive {
            break;
        }
    }
    Ok(())
}
