//! Continuous batching: concurrent requests give exactly what each gives alone, clients that go
//! away free their sequences, a full queue refuses instead of growing, and a small cache
//! preempts and resumes without changing results.

mod common;

use common::{load, request};
use mideum_engine::{
    generate, Engine, EngineConfig, Event, FinishReason, GenerateRequest, SamplingParams, Session,
    SubmitError,
};
use mideum_model::LoadedModel;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Collects a request's tokens and how it ended.
fn collect(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
) -> (Vec<u32>, String, FinishReason) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Token { id, text: t, .. } => {
                ids.push(id);
                text.push_str(&t);
            }
            Event::Done {
                text: t,
                finish_reason,
                ..
            } => {
                text.push_str(&t);
                return (ids, text, finish_reason);
            }
            Event::Error(e) => panic!("request failed: {e}"),
        }
    }
    panic!("channel closed without Done");
}

fn prompts(m: &LoadedModel, n: usize) -> Vec<Vec<u32>> {
    let texts = [
        "안녕하세요",
        "고객 센터 운영 시간",
        "계좌 이체 한도를 알려주세요",
        "Hello, world",
        "회의록을 요약해 줘",
        "서울 날씨",
        "주문 번호 확인",
        "배송 조회",
    ];
    (0..n)
        .map(|i| {
            let mut ids = m.tokenizer.encode(texts[i % texts.len()], true).unwrap();
            ids.extend(std::iter::repeat_n(ids[1], i)); // make every prompt distinct
            ids
        })
        .collect()
}

#[test]
fn sixteen_concurrent_requests_match_running_alone() {
    let m = load("tiny-mini", 256);
    let ps = prompts(&m, 16);
    let alone: Vec<Vec<u32>> = ps
        .iter()
        .map(|p| {
            let req = GenerateRequest {
                prompt_ids: p.clone(),
                max_tokens: 12,
                sampling: SamplingParams::default(),
                stop: vec![],
                ignore_eos: true,
            };
            generate(&m, &mut Session::new(&m), &req, &mut |_| true)
                .unwrap()
                .ids
        })
        .collect();
    let engine = Engine::start(
        m.clone(),
        "tiny",
        EngineConfig {
            max_running: 16,
            max_queue: 32,
            step_tokens: 64,
            kv_blocks: 256,
        },
    );
    let mut rxs: Vec<_> = ps
        .iter()
        .map(|p| engine.submit(request(p.clone(), 12)).unwrap())
        .collect();
    for (rx, want) in rxs.iter_mut().zip(&alone) {
        let (ids, _, reason) = collect(rx);
        assert_eq!(&ids, want);
        assert_eq!(reason, FinishReason::Length);
    }
    assert!(
        engine
            .metrics
            .generation_tokens_total
            .load(Ordering::Relaxed)
            >= 16 * 12
    );
}

#[test]
fn a_small_cache_preempts_and_resumes_with_the_same_output() {
    let m = load("tiny-mini", 256);
    let ps = prompts(&m, 6);
    let engine = Engine::start(
        m.clone(),
        "tiny",
        EngineConfig {
            max_running: 6,
            max_queue: 32,
            step_tokens: 32,
            kv_blocks: 8,
        },
    );
    let big = Engine::start(
        m.clone(),
        "tiny",
        EngineConfig {
            max_running: 6,
            max_queue: 32,
            step_tokens: 32,
            kv_blocks: 256,
        },
    );
    let mut small_rx: Vec<_> = ps
        .iter()
        .map(|p| engine.submit(request(p.clone(), 30)).unwrap())
        .collect();
    let mut big_rx: Vec<_> = ps
        .iter()
        .map(|p| big.submit(request(p.clone(), 30)).unwrap())
        .collect();
    for (a, b) in small_rx.iter_mut().zip(big_rx.iter_mut()) {
        assert_eq!(collect(a).0, collect(b).0);
    }
}

#[test]
fn dropped_receivers_cancel_and_free_blocks() {
    let m = load("tiny-mini", 256);
    let engine = Engine::start(
        m.clone(),
        "tiny",
        EngineConfig {
            max_running: 4,
            max_queue: 8,
            step_tokens: 64,
            kv_blocks: 64,
        },
    );
    let p = prompts(&m, 1).remove(0);
    let mut rx = engine.submit(request(p.clone(), 200)).unwrap();
    // Read a couple of tokens, then go away.
    for _ in 0..2 {
        rx.blocking_recv().unwrap();
    }
    drop(rx);
    let t0 = Instant::now();
    while engine.metrics.running.load(Ordering::Relaxed) != 0
        || engine.metrics.kv_blocks_used.load(Ordering::Relaxed) != 0
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "sequence not freed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        engine
            .metrics
            .requests_cancelled_total
            .load(Ordering::Relaxed),
        1
    );
}

#[test]
fn full_queue_refuses_and_bad_requests_are_rejected() {
    let m = load("tiny-mini", 256);
    let engine = Engine::start(
        m.clone(),
        "tiny",
        EngineConfig {
            max_running: 1,
            max_queue: 2,
            step_tokens: 64,
            kv_blocks: 64,
        },
    );
    let p = prompts(&m, 1).remove(0);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        match engine.submit(request(p.clone(), 100)) {
            Ok(rx) => accepted.push(rx),
            Err(SubmitError::QueueFull(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "a queue of 2 must refuse some of 12 requests");
    assert!(accepted.len() <= 4);
    assert!(matches!(
        engine.submit(request(vec![], 4)),
        Err(SubmitError::Invalid(_))
    ));
    assert!(matches!(
        engine.submit(request(vec![1; 300], 4)),
        Err(SubmitError::PromptTooLong { .. })
    ));
    assert!(matches!(
        engine.submit(request(vec![999_999], 4)),
        Err(SubmitError::Invalid(_))
    ));
}

#[test]
fn shared_prefix_is_computed_once_and_stop_strings_and_deadlines_work() {
    let m = load("tiny-mini", 256);
    let engine = Engine::start(m.clone(), "tiny", EngineConfig::default());
    let mut sys: Vec<u32> = m
        .tokenizer
        .encode(&"당신은 친절한 상담원입니다. ".repeat(8), true)
        .unwrap();
    sys.truncate(64);
    let mut a = sys.clone();
    a.extend(m.tokenizer.encode("첫 번째 질문", false).unwrap());
    let mut b = sys.clone();
    b.extend(m.tokenizer.encode("두 번째 질문", false).unwrap());
    collect(&mut engine.submit(request(a, 4)).unwrap());
    let mut rx = engine.submit(request(b.clone(), 4)).unwrap();
    let mut cached = 0;
    while let Some(ev) = rx.blocking_recv() {
        if let Event::Done { usage, .. } = ev {
            cached = usage.cached_tokens;
            break;
        }
    }
    assert_eq!(
        cached, 64,
        "the 64-token shared prefix comes from the cache"
    );
    assert!(engine.metrics.prefix_hit_tokens.load(Ordering::Relaxed) >= 64);

    // Stop string: cut where greedy text would contain it.
    let (_, text, _) = collect(&mut engine.submit(request(b.clone(), 16)).unwrap());
    let chars: Vec<char> = text.chars().collect();
    if chars.len() > 4 {
        let stop: String = chars[2..4].iter().collect();
        let mut r = request(b.clone(), 16);
        r.stop = vec![stop.clone()];
        let (_, cut, reason) = collect(&mut engine.submit(r).unwrap());
        assert_eq!(cut, text[..text.find(&stop).unwrap()]);
        assert_eq!(reason, FinishReason::Stop);
    }
    let mut r = request(b, 100_000);
    r.deadline = Some(Instant::now());
    let (_, _, reason) = collect(&mut engine.submit(r).unwrap());
    assert_eq!(reason, FinishReason::Deadline);
}
