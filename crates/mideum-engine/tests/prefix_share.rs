//! The prefix cache never computes the same prefix twice: a prompt that shares a prefix ending
//! mid-block with an earlier one computes only its tail, requests that arrive together with
//! the same uncached prefix let one of them compute it and take it from the cache, and a
//! leader that goes away does not leave the others waiting. Outputs always equal each request
//! run alone at temperature 0.

mod common;

use common::{load, request};
use mideum_engine::{
    generate, Engine, EngineConfig, Event, FinishReason, GenerateRequest, SamplingParams, Session,
    Usage,
};
use mideum_model::LoadedModel;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::UnboundedReceiver;

/// Greedy output of `prompt` computed alone, in a fresh session (no cache to reuse).
fn alone(m: &LoadedModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let req = GenerateRequest {
        prompt_ids: prompt.to_vec(),
        max_tokens: n,
        sampling: SamplingParams::default(),
        stop: vec![],
        ignore_eos: true,
    };
    generate(m, &mut Session::new(m), &req, &mut |_| true)
        .unwrap()
        .ids
}

/// A request's tokens and usage; fails instead of hanging if it does not end within a minute.
fn collect(rx: &mut UnboundedReceiver<Event>) -> (Vec<u32>, Usage) {
    let t0 = Instant::now();
    let mut ids = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(Event::Token { id, .. }) => ids.push(id),
            Ok(Event::Done {
                finish_reason,
                usage,
                ..
            }) => {
                assert_eq!(finish_reason, FinishReason::Length);
                return (ids, usage);
            }
            Ok(Event::Error(e)) => panic!("request failed: {e}"),
            Err(TryRecvError::Empty) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "request never ended"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TryRecvError::Disconnected) => panic!("channel closed without Done"),
        }
    }
}

/// `n` tokens of a Korean "system prompt".
fn system_prompt(m: &LoadedModel, n: usize) -> Vec<u32> {
    let mut ids = m
        .tokenizer
        .encode(
            &"당신은 친절한 은행 상담원입니다. 고객의 질문에 답하세요. ".repeat(60),
            true,
        )
        .unwrap();
    assert!(ids.len() >= n);
    ids.truncate(n);
    ids
}

/// Distinct conversation tails: each starts with its own token, so no two share a position.
fn tails(m: &LoadedModel, n: usize) -> Vec<Vec<u32>> {
    let texts = [
        "계좌 이체 한도를 알려주세요",
        "고객 센터 운영 시간은 언제인가요",
        "Hello, how are you today",
        "회의록을 요약해 줘",
        "서울 날씨는 어때",
        "주문 번호 확인 부탁합니다",
        "배송 조회를 하고 싶어요",
        "카드 분실 신고 방법",
    ];
    let tails: Vec<Vec<u32>> = texts[..n]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut ids = vec![1000 + i as u32 * 7];
            ids.extend(m.tokenizer.encode(t, false).unwrap());
            ids
        })
        .collect();
    tails
}

fn engine(m: &Arc<LoadedModel>, step_tokens: usize) -> Engine {
    Engine::start(
        m.clone(),
        "tiny",
        EngineConfig {
            max_running: 8,
            max_queue: 16,
            step_tokens,
            kv_blocks: 512,
        },
    )
}

fn computed(e: &Engine) -> u64 {
    e.metrics.prompt_tokens_total.load(Ordering::Relaxed)
}

#[test]
fn a_prefix_ending_mid_block_is_not_recomputed() {
    let m = load("tiny-mini", 1024);
    let e = engine(&m, 64);
    // 70 tokens: four whole blocks and 6 positions of the fifth.
    let sys = system_prompt(&m, 70);
    let ts = tails(&m, 2);
    let a: Vec<u32> = [sys.clone(), ts[0].clone()].concat();
    let b: Vec<u32> = [sys.clone(), ts[1].clone()].concat();
    assert!(a.len() >= 80, "the first request fills the block it shares");
    let (_, ua) = collect(&mut e.submit(request(a.clone(), 4)).unwrap());
    assert_eq!(ua.cached_tokens, 0);
    let before = computed(&e);
    let (ids, ub) = collect(&mut e.submit(request(b.clone(), 6)).unwrap());
    assert_eq!(
        ub.cached_tokens, 70,
        "the whole shared prefix comes from the cache"
    );
    assert_eq!(
        computed(&e) - before,
        (b.len() - 70) as u64,
        "only the tail"
    );
    assert_eq!(ids, alone(&m, &b, 6));

    // A prompt that is exactly the prefix plus one token ending a block: all but that token.
    let c: Vec<u32> = [sys[..63].to_vec(), vec![ts[1][0]]].concat();
    let before = computed(&e);
    let (ids, uc) = collect(&mut e.submit(request(c.clone(), 3)).unwrap());
    assert_eq!(uc.cached_tokens, 63);
    assert_eq!(computed(&e) - before, 1);
    assert_eq!(ids, alone(&m, &c, 3));
}

#[test]
fn concurrent_requests_compute_a_shared_cold_prefix_once() {
    let m = load("tiny-mini", 1024);
    // The server's default step budget: enough for the first request's whole prompt and the
    // start of the next, which would then compute the prefix a second time.
    let e = engine(&m, 256);
    // 211 tokens: 13 whole blocks and 3 positions of the 14th.
    let sys = system_prompt(&m, 211);
    let prompts: Vec<Vec<u32>> = tails(&m, 8)
        .into_iter()
        .map(|t| [sys.clone(), t].concat())
        .collect();
    let solo: Vec<Vec<u32>> = prompts.iter().map(|p| alone(&m, p, 5)).collect();
    let mut rxs: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(request(p.clone(), 5)).unwrap())
        .collect();
    let mut cached = 0;
    for (rx, want) in rxs.iter_mut().zip(&solo) {
        let (ids, usage) = collect(rx);
        assert_eq!(&ids, want);
        cached += usage.cached_tokens;
    }
    let tails_total: usize = prompts.iter().map(|p| p.len() - sys.len()).sum();
    let once = (sys.len() + tails_total) as u64;
    let got = computed(&e);
    // Without waiting for the leader, every request computes the prefix: 8 × 211 + tails.
    assert!(
        got >= once && got < once + 16,
        "computed {got} prompt tokens; one prefix and eight tails are {once}"
    );
    assert!(cached >= 7 * sys.len() - 16, "cached {cached}");
}

#[test]
fn followers_finish_when_the_leader_is_cancelled_mid_prefill() {
    let m = load("tiny-mini", 1024);
    // Small steps: the leader needs ~100 of them for its prefix, so it is cancelled midway.
    let e = engine(&m, 4);
    let sys = system_prompt(&m, 400);
    let prompts: Vec<Vec<u32>> = tails(&m, 4)
        .into_iter()
        .map(|t| [sys.clone(), t].concat())
        .collect();
    let solo: Vec<Vec<u32>> = prompts[1..].iter().map(|p| alone(&m, p, 4)).collect();
    let leader = e.submit(request(prompts[0].clone(), 4)).unwrap();
    let mut rxs: Vec<_> = prompts[1..]
        .iter()
        .map(|p| e.submit(request(p.clone(), 4)).unwrap())
        .collect();
    let t0 = Instant::now();
    while computed(&e) < 32 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the leader never started"
        );
        std::thread::yield_now();
    }
    drop(leader);
    let at_cancel = computed(&e);
    for (rx, want) in rxs.iter_mut().zip(&solo) {
        assert_eq!(&collect(rx).0, want);
    }
    assert_eq!(
        e.metrics.requests_cancelled_total.load(Ordering::Relaxed),
        1
    );
    assert!(
        at_cancel < sys.len() as u64,
        "the leader was cancelled before it finished the prefix ({at_cancel} tokens computed)"
    );
    // The prefix is still computed about once: the new leader continues from the cache.
    let tails_total: usize = prompts[1..].iter().map(|p| p.len() - sys.len()).sum();
    let got = computed(&e);
    assert!(
        got < (sys.len() + tails_total + 64) as u64,
        "computed {got} prompt tokens"
    );
}
