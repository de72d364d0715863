//! The generation loop against the transformers goldens: greedy output, stopping on a list of
//! EOS ids, stop strings, seeds, and reuse of a session's cache across turns.

use mideum_engine::{generate, FinishReason, GenerateRequest, SamplingParams, Session};
use mideum_model::{LoadOptions, LoadedModel};
use serde_json::Value;
use std::path::PathBuf;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn load(rel: &str) -> LoadedModel {
    LoadedModel::load(
        &testdata().join("models").join(rel),
        &LoadOptions {
            threads: 2,
            ctx_size: Some(512),
            ..Default::default()
        },
    )
    .unwrap()
}

fn golden(name: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(testdata().join("golden").join(format!("{name}.json"))).unwrap(),
    )
    .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn greedy_req(prompt: Vec<u32>, n: usize) -> GenerateRequest {
    GenerateRequest {
        prompt_ids: prompt,
        max_tokens: n,
        sampling: SamplingParams::default(),
        stop: vec![],
        ignore_eos: true,
    }
}

#[test]
fn greedy_and_eos_list_match_transformers() {
    for (name, rel) in [("tiny-mini", "tiny-mini"), ("tiny-bf16", "tiny-bf16.gguf")] {
        let g = golden(name);
        let mut m = load(rel);
        for case in g["greedy"].as_array().unwrap() {
            let prompt = ids(&case["prompt_ids"]);
            let n = case["max_new_tokens"].as_u64().unwrap() as usize;
            let out = generate(
                &m,
                &mut Session::new(&m),
                &greedy_req(prompt.clone(), n),
                &mut |_| true,
            )
            .unwrap();
            assert_eq!(out.ids, ids(&case["ids"]), "{rel}");
            assert_eq!(out.finish_reason, FinishReason::Length);

            let stop = &case["stops_at_eos"];
            m.eos_ids = ids(&stop["eos_token_id"]);
            let mut req = greedy_req(prompt, n);
            req.ignore_eos = false;
            let out = generate(&m, &mut Session::new(&m), &req, &mut |_| true).unwrap();
            assert_eq!(
                out.ids,
                ids(&stop["ids"]),
                "{rel}: stop at any of {:?}",
                m.eos_ids
            );
            assert_eq!(out.finish_reason, FinishReason::Stop);
        }
    }
}

#[test]
fn session_reuses_the_common_prefix_without_changing_results() {
    let m = load("tiny-mini");
    let g = golden("tiny-mini");
    let prompt = ids(&g["greedy"][0]["prompt_ids"]);
    let mut session = Session::new(&m);
    let first = generate(
        &m,
        &mut session,
        &greedy_req(prompt.clone(), 8),
        &mut |_| true,
    )
    .unwrap();
    // Next turn: the old prompt, the answer, and more text.
    let mut next = prompt.clone();
    next.extend(&first.ids);
    next.extend(&prompt[1..4]);
    let reused = generate(&m, &mut session, &greedy_req(next.clone(), 8), &mut |_| {
        true
    })
    .unwrap();
    assert!(
        reused.cached_tokens >= prompt.len(),
        "cached {} of {}",
        reused.cached_tokens,
        next.len()
    );
    let fresh = generate(&m, &mut Session::new(&m), &greedy_req(next, 8), &mut |_| {
        true
    })
    .unwrap();
    assert_eq!(reused.ids, fresh.ids);
    assert_eq!(fresh.cached_tokens, 0);
    // The identical prompt again: every position before the last token comes from the cache
    // (whole blocks, then a copy of the start of the block the previous turn filled).
    let again = generate(
        &m,
        &mut session,
        &greedy_req(prompt.clone(), 8),
        &mut |_| true,
    )
    .unwrap();
    assert_eq!(again.ids, first.ids);
    assert!(prompt.len() % mideum_model::BLOCK_TOKENS != 1);
    assert_eq!(again.cached_tokens, prompt.len() - 1);
}

#[test]
fn stop_strings_cut_the_text_and_streaming_matches() {
    let m = load("tiny-mini");
    let prompt = m.tokenizer.encode("고객 센터에 문의하세요", true).unwrap();
    let full = generate(
        &m,
        &mut Session::new(&m),
        &greedy_req(prompt.clone(), 24),
        &mut |_| true,
    )
    .unwrap();
    let chars: Vec<char> = full.text.chars().collect();
    assert!(chars.len() > 6, "text too short to cut: {:?}", full.text);
    let stop: String = chars[4..6].iter().collect();
    let cut = full.text.find(&stop).unwrap();
    let mut req = greedy_req(prompt, 24);
    req.stop = vec![stop.clone()];
    let mut streamed = String::new();
    let out = generate(&m, &mut Session::new(&m), &req, &mut |p| {
        streamed.push_str(p);
        true
    })
    .unwrap();
    assert_eq!(out.text, full.text[..cut]);
    assert_eq!(
        streamed, out.text,
        "streamed pieces must add up to the final text"
    );
    assert_eq!(out.finish_reason, FinishReason::Stop);
}

#[test]
fn seeds_reproduce_and_cancel_stops() {
    let m = load("tiny-f16-linear");
    let prompt = m.tokenizer.encode("안녕하세요", true).unwrap();
    let req = |seed| GenerateRequest {
        prompt_ids: prompt.clone(),
        max_tokens: 16,
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        },
        stop: vec![],
        ignore_eos: true,
    };
    let a = generate(&m, &mut Session::new(&m), &req(42), &mut |_| true).unwrap();
    let b = generate(&m, &mut Session::new(&m), &req(42), &mut |_| true).unwrap();
    let c = generate(&m, &mut Session::new(&m), &req(7), &mut |_| true).unwrap();
    assert_eq!(a.ids, b.ids);
    assert_ne!(
        a.ids, c.ids,
        "different seeds should differ on a 2139-token vocabulary"
    );
    let mut n = 0;
    let out = generate(&m, &mut Session::new(&m), &req(42), &mut |_| {
        n += 1;
        n < 3
    })
    .unwrap();
    assert_eq!(out.finish_reason, FinishReason::Cancelled);
    assert!(out.ids.len() < 16);
}

#[test]
fn prompt_over_the_context_window_is_an_error() {
    let m = LoadedModel::load(
        &testdata().join("models/tiny-mini"),
        &LoadOptions {
            threads: 1,
            ctx_size: Some(8),
            ..Default::default()
        },
    )
    .unwrap();
    let err = generate(
        &m,
        &mut Session::new(&m),
        &greedy_req(vec![5; 9], 4),
        &mut |_| true,
    )
    .unwrap_err();
    assert!(err.to_string().contains("context window"), "{err}");
    // Exactly full: allowed, but no room to generate.
    let out = generate(
        &m,
        &mut Session::new(&m),
        &greedy_req(vec![5; 8], 4),
        &mut |_| true,
    )
    .unwrap();
    assert!(out.ids.is_empty() && out.finish_reason == FinishReason::Length);
}
