//! Continuous batching. One scheduler thread owns the KV block pool; requests join between
//! forward passes and leave as soon as they finish. Every step runs one batched forward pass
//! over all running sequences: one token for each sequence that is generating, plus chunks of
//! the prompts still being prefilled (chunked prefill, so a long prompt never stalls the
//! others). The waiting queue is bounded (callers get `QueueFull` instead of memory growth), a
//! request whose receiver is dropped (client gone) is cancelled and its blocks freed at the next
//! step, and when the cache runs out the newest sequence is preempted and later resumed from
//! the prefix cache.
//!
//! A shared prefix is computed once even when several requests bring it at the same time: a
//! prefilling sequence whose next tokens another running sequence (further ahead) is about to
//! compute waits for it, then takes those positions from the cache (whole blocks) and from
//! the other sequence's block in progress (a copy), and computes only its own tail.

use crate::generate::{FinishReason, OutputText};
use crate::metrics::Metrics;
use crate::sampler::{Sampler, SamplingParams};
use mideum_model::{BatchItem, KvPool, LoadedModel, Logits, SeqKv, BLOCK_TOKENS};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most sequences generating at once.
    pub max_running: usize,
    /// Most requests waiting to start; more are refused.
    pub max_queue: usize,
    /// Tokens per forward pass (decode tokens plus prefill chunks).
    pub step_tokens: usize,
    /// KV cache budget in blocks of `BLOCK_TOKENS` positions.
    pub kv_blocks: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_running: 16,
            max_queue: 64,
            step_tokens: 256,
            kv_blocks: 1024,
        }
    }
}

/// One generation request, already tokenized.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Return the chosen token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    pub deadline: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    /// The most likely tokens at this position with their log-probabilities.
    pub top: Vec<(u32, f32)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token and the text it made final (possibly empty: part of a character or
    /// of a possible stop string is held back).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The end: any text still held back, why it ended, and the token counts.
    Done {
        text: String,
        finish_reason: FinishReason,
        usage: Usage,
    },
    /// The request failed after it was accepted.
    Error(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the server is busy: {0} requests are already waiting")]
    QueueFull(usize),
    #[error("the prompt has {tokens} tokens but the context window holds {context}")]
    PromptTooLong { tokens: usize, context: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("the engine has stopped")]
    Stopped,
}

struct Submitted {
    req: Request,
    events: UnboundedSender<Event>,
    arrived: Instant,
    /// The engine's own warm-up, kept out of the latency histograms.
    internal: bool,
}

/// A prompt prefix an engine computes as soon as it starts (Mi:dm's default system prompt, in
/// front of every conversation that brings no system message of its own), so that the first
/// user does not wait for it; optionally kept in a file across restarts.
#[derive(Clone, Debug)]
pub struct WarmPrefix {
    pub tokens: Vec<u32>,
    /// Where the prefix's KV blocks are kept: restored from it at start when it holds them for
    /// this model, KV type and prefix, otherwise written once they are computed.
    pub file: Option<PathBuf>,
}

/// A warm-up in progress.
struct Warm {
    tokens: Vec<u32>,
    file: Option<PathBuf>,
    model_id: u64,
    events: UnboundedReceiver<Event>,
}

/// A handle to a running scheduler; cheap to share between request handlers.
pub struct Engine {
    tx: mpsc::Sender<Submitted>,
    pub metrics: Arc<Metrics>,
    pub model: Arc<LoadedModel>,
    pub config: EngineConfig,
}

impl Engine {
    /// Starts the scheduler thread for `model`.
    pub fn start(model: Arc<LoadedModel>, name: &str, config: EngineConfig) -> Engine {
        Self::start_warm(model, name, config, None)
    }

    /// As [`Engine::start`], and the scheduler first restores or computes `warm` (see
    /// [`WarmPrefix`]); requests that arrive meanwhile are served as usual and share what it
    /// has computed.
    pub fn start_warm(
        model: Arc<LoadedModel>,
        name: &str,
        config: EngineConfig,
        warm: Option<WarmPrefix>,
    ) -> Engine {
        let metrics = Arc::new(Metrics::new(name));
        metrics
            .kv_blocks_total
            .store(config.kv_blocks as u64, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let (m, met, cfg) = (model.clone(), metrics.clone(), config.clone());
        std::thread::Builder::new()
            .name(format!("mideum-sched-{name}"))
            .spawn(move || {
                let mut sched = Scheduler::new(m, met, cfg);
                if let Some(w) = warm {
                    sched.start_warm(w);
                    sched.publish();
                }
                sched.run(rx)
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!("cannot start the scheduler thread: {e}"));
        Engine {
            tx,
            metrics,
            model,
            config,
        }
    }

    /// Queues a request; events arrive on the returned receiver. Dropping the receiver cancels
    /// the request.
    pub fn submit(&self, req: Request) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let ctx = self.model.ctx_size;
        if req.prompt_ids.is_empty() {
            return Err(SubmitError::Invalid("the prompt is empty".into()));
        }
        let pool_tokens = self.config.kv_blocks * mideum_model::BLOCK_TOKENS;
        if req.prompt_ids.len() >= ctx.min(pool_tokens) {
            return Err(SubmitError::PromptTooLong {
                tokens: req.prompt_ids.len(),
                context: ctx.min(pool_tokens),
            });
        }
        if let Some(&bad) = req
            .prompt_ids
            .iter()
            .find(|&&t| t as usize >= self.model.model.config.vocab_size)
        {
            return Err(SubmitError::Invalid(format!(
                "token id {bad} is outside the vocabulary"
            )));
        }
        req.sampling.validate().map_err(SubmitError::Invalid)?;
        let waiting = self.metrics.queue_depth.load(Ordering::Relaxed) as usize;
        if waiting >= self.config.max_queue {
            self.metrics
                .requests_rejected_total
                .fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::QueueFull(waiting));
        }
        let (etx, erx) = unbounded_channel();
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        self.metrics.requests_total.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Submitted {
                req,
                events: etx,
                arrived: Instant::now(),
                internal: false,
            })
            .map_err(|_| SubmitError::Stopped)?;
        Ok(erx)
    }
}

struct Seq {
    req: Request,
    events: UnboundedSender<Event>,
    arrived: Instant,
    kv: SeqKv,
    /// Prompt plus generated tokens: everything that must end up in the cache.
    tokens: Vec<u32>,
    generated: Vec<u32>,
    sampler: Sampler,
    out: OutputText,
    cached_tokens: usize,
    last_token_at: Option<Instant>,
    internal: bool,
}

struct Scheduler {
    model: Arc<LoadedModel>,
    metrics: Arc<Metrics>,
    cfg: EngineConfig,
    pool: KvPool,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    warm: Option<Warm>,
}

impl Scheduler {
    fn new(model: Arc<LoadedModel>, metrics: Arc<Metrics>, cfg: EngineConfig) -> Scheduler {
        let pool = model.model.new_pool(cfg.kv_blocks);
        Scheduler {
            model,
            metrics,
            cfg,
            pool,
            waiting: VecDeque::new(),
            running: Vec::new(),
            warm: None,
        }
    }

    /// Restores the warm prefix's blocks from its file, or queues its computation (a one-token
    /// request of the engine's own) when the cache does not hold all its whole blocks.
    fn start_warm(&mut self, w: WarmPrefix) {
        let whole = w.tokens.len() / BLOCK_TOKENS * BLOCK_TOKENS;
        if whole == 0
            || w.tokens.len() >= self.pool.max_tokens()
            || w.tokens.len() >= self.model.ctx_size
        {
            return;
        }
        let model_id = self.model.model.fingerprint();
        if let Some(f) = w.file.as_deref().filter(|f| f.exists()) {
            let t0 = Instant::now();
            match self.pool.load_prefix(f, model_id) {
                Ok(n) => tracing::info!(
                    "restored {n} cached positions from {} in {:.0} ms; {} of the {whole} \
                     warm-prefix positions are cached",
                    f.display(),
                    t0.elapsed().as_secs_f64() * 1e3,
                    self.pool.cached_prefix_len(&w.tokens)
                ),
                Err(e) => tracing::warn!("not restoring the prefix cache: {e}"),
            }
        }
        if self.pool.cached_prefix_len(&w.tokens) >= whole {
            return;
        }
        let (tx, rx) = unbounded_channel();
        self.enqueue(Submitted {
            req: Request {
                prompt_ids: w.tokens.clone(),
                max_tokens: 1,
                sampling: SamplingParams::default(),
                stop: Vec::new(),
                ignore_eos: true,
                logprobs: None,
                deadline: None,
            },
            events: tx,
            arrived: Instant::now(),
            internal: true,
        });
        self.warm = Some(Warm {
            tokens: w.tokens,
            file: w.file,
            model_id,
            events: rx,
        });
    }

    /// Once the warm-up request has ended, writes its blocks to the file (if any).
    fn check_warm(&mut self) {
        let Some(w) = self.warm.as_mut() else { return };
        let ended = loop {
            match w.events.try_recv() {
                Ok(Event::Done { .. }) | Ok(Event::Error(_)) => break true,
                Ok(Event::Token { .. }) => continue,
                Err(_) => break false,
            }
        };
        if !ended {
            return;
        }
        let Some(w) = self.warm.take() else { return };
        let Some(f) = w.file else { return };
        match self.pool.save_prefix(&w.tokens, w.model_id, &f) {
            Ok(n) => tracing::info!("saved {n} prompt-prefix positions to {}", f.display()),
            Err(e) => tracing::warn!("cannot save the prefix cache: {e}"),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Submitted>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(s) => self.enqueue(s),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(s) => self.enqueue(s),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected)
                        if self.running.is_empty() && self.waiting.is_empty() =>
                    {
                        return
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break,
                }
            }
            self.drop_cancelled();
            self.admit();
            if !self.running.is_empty() {
                self.step();
            } else if !self.waiting.is_empty() {
                // Nothing can run (the cache is held elsewhere): wait briefly for a change.
                std::thread::sleep(Duration::from_millis(5));
            }
            self.check_warm();
            self.publish();
        }
    }

    fn enqueue(&mut self, s: Submitted) {
        let tokens = s.req.prompt_ids.clone();
        let sampler = Sampler::new(s.req.sampling.clone());
        let out = OutputText::new(&s.req.stop);
        self.waiting.push_back(Seq {
            req: s.req,
            events: s.events,
            arrived: s.arrived,
            kv: SeqKv::default(),
            tokens,
            generated: Vec::new(),
            sampler,
            out,
            cached_tokens: 0,
            last_token_at: None,
            internal: s.internal,
        });
    }

    fn publish(&self) {
        let st = self.pool.stats();
        let m = &self.metrics;
        m.queue_depth
            .store(self.waiting.len() as u64, Ordering::Relaxed);
        m.running
            .store(self.running.len() as u64, Ordering::Relaxed);
        m.kv_blocks_used
            .store(st.blocks_in_use as u64, Ordering::Relaxed);
        m.kv_blocks_cached
            .store(st.blocks_cached as u64, Ordering::Relaxed);
        m.prefix_lookup_tokens
            .store(st.prefix_lookup_tokens, Ordering::Relaxed);
        m.prefix_hit_tokens
            .store(st.prefix_hit_tokens, Ordering::Relaxed);
    }

    fn finish(&mut self, mut s: Seq, reason: FinishReason) {
        let tail = s
            .out
            .finish(&self.model.tokenizer, reason == FinishReason::Stop)
            .unwrap_or_default();
        let usage = Usage {
            prompt_tokens: s.req.prompt_ids.len(),
            completion_tokens: s.generated.len(),
            cached_tokens: s.cached_tokens,
        };
        if reason == FinishReason::Cancelled {
            self.metrics
                .requests_cancelled_total
                .fetch_add(1, Ordering::Relaxed);
        }
        let _ = s.events.send(Event::Done {
            text: tail,
            finish_reason: reason,
            usage,
        });
        self.pool.release(&mut s.kv);
    }

    fn fail(&mut self, mut s: Seq, msg: String) {
        let _ = s.events.send(Event::Error(msg));
        self.pool.release(&mut s.kv);
    }

    fn drop_cancelled(&mut self) {
        let now = Instant::now();
        let expired = |s: &Seq| s.events.is_closed() || s.req.deadline.is_some_and(|d| now >= d);
        let mut i = 0;
        while i < self.running.len() {
            if expired(&self.running[i]) {
                let s = self.running.swap_remove(i);
                let reason = if s.events.is_closed() {
                    FinishReason::Cancelled
                } else {
                    FinishReason::Deadline
                };
                self.finish(s, reason);
            } else {
                i += 1;
            }
        }
        let mut keep = VecDeque::with_capacity(self.waiting.len());
        while let Some(s) = self.waiting.pop_front() {
            if expired(&s) {
                let reason = if s.events.is_closed() {
                    FinishReason::Cancelled
                } else {
                    FinishReason::Deadline
                };
                self.finish(s, reason);
            } else {
                keep.push_back(s);
            }
        }
        self.waiting = keep;
    }

    /// Moves waiting requests into the batch while sequences and cache blocks allow, keeping
    /// one spare block per running sequence for its next tokens.
    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_running {
            let Some(mut s) = self.waiting.pop_front() else {
                break;
            };
            let reused = self.pool.attach_prefix(&mut s.kv, &s.tokens);
            if s.generated.is_empty() {
                s.cached_tokens = reused;
            }
            let need = KvPool::blocks_needed(&s.kv, s.tokens.len() - reused) + 1;
            let headroom = self.running.len();
            if self.pool.available_blocks() < need + headroom {
                self.pool.release(&mut s.kv);
                if self.running.is_empty() && need > self.pool.max_blocks() {
                    self.fail(
                        s,
                        "the request does not fit in the KV cache: raise --kv-cache-mb".into(),
                    );
                    continue;
                }
                self.waiting.push_front(s);
                break;
            }
            self.running.push(s);
        }
    }

    /// Brings every prefilling sequence that stands on a block boundary up to date with what
    /// the others have computed since: cached whole blocks along its prompt, then a copy of
    /// the partial block of the running sequence that shares the most of its next tokens.
    fn catch_up(&mut self) {
        for i in 0..self.running.len() {
            let s = &mut self.running[i];
            if s.tokens.len() - s.kv.len() <= 1 || !s.kv.len().is_multiple_of(BLOCK_TOKENS) {
                continue;
            }
            let mut added = self.pool.extend_prefix(&mut s.kv, &s.tokens);
            let pos = s.kv.len();
            // A copy of part of a block ends the sequence off a block boundary, where it can
            // no longer take whole blocks from the cache: not while a leader is still
            // computing a block or more of its prompt.
            if pos.is_multiple_of(BLOCK_TOKENS) && !self.waits_for_leader(i) {
                let best = (0..self.running.len())
                    .filter(|&j| j != i && self.running[j].kv.len() > pos)
                    .map(|j| {
                        let shared =
                            common_prefix(self.running[j].kv.tokens(), &self.running[i].tokens);
                        (shared, j)
                    })
                    .max();
                if let Some((_, j)) = best.filter(|&(shared, _)| shared > pos) {
                    let mut kv = std::mem::take(&mut self.running[i].kv);
                    added += self.pool.share_partial(
                        &self.running[j].kv,
                        &mut kv,
                        &self.running[i].tokens,
                    );
                    self.running[i].kv = kv;
                }
            }
            let s = &mut self.running[i];
            if s.generated.is_empty() {
                s.cached_tokens += added;
            }
        }
    }

    /// Whether sequence `i` should skip this step because another running sequence ahead of
    /// it is about to compute at least a block of the tokens `i` needs next; `i` then takes
    /// them from the cache instead of computing them a second time. "Ahead" (more positions
    /// computed, ties to the lower index) is a strict order, so the first sequence in it never
    /// waits and waiting cannot go round in a circle; a leader that finishes, fails, is
    /// cancelled or preempted stops being waited for at the next step.
    fn waits_for_leader(&self, i: usize) -> bool {
        let s = &self.running[i];
        let pos = s.kv.len();
        if !pos.is_multiple_of(BLOCK_TOKENS) {
            return false;
        }
        self.running.iter().enumerate().any(|(j, o)| {
            let done = o.kv.len();
            if j == i || done < pos || (done == pos && j > i) {
                return false;
            }
            let shared = common_prefix(&o.tokens, &s.tokens);
            done < shared && shared >= pos + BLOCK_TOKENS
        })
    }

    fn step(&mut self) {
        self.catch_up();
        // Plan: every sequence feeds its pending tokens; prefill chunks share the step budget.
        let mut budget = self.cfg.step_tokens.max(self.running.len());
        let mut plan: Vec<(usize, usize)> = Vec::with_capacity(self.running.len()); // (index, n tokens)
        let decoding: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].tokens.len() - self.running[i].kv.len() == 1)
            .collect();
        for &i in &decoding {
            plan.push((i, 1));
            budget -= 1;
        }
        for i in 0..self.running.len() {
            let pending = self.running[i].tokens.len() - self.running[i].kv.len();
            if pending > 1 && budget > 0 && !self.waits_for_leader(i) {
                let n = pending.min(budget);
                plan.push((i, n));
                budget -= n;
            }
        }
        // Preempt the newest sequences while the plan does not fit in the cache.
        loop {
            let need: usize = plan
                .iter()
                .map(|&(i, n)| KvPool::blocks_needed(&self.running[i].kv, n))
                .sum();
            if need <= self.pool.available_blocks() || self.running.len() <= 1 {
                break;
            }
            let victim = self.running.len() - 1;
            let mut s = self.running.remove(victim);
            self.pool.release(&mut s.kv);
            tracing::debug!(
                "KV cache full: preempting a sequence of {} tokens",
                s.tokens.len()
            );
            self.waiting.push_front(s);
            plan.retain(|&(i, _)| i != victim);
        }
        if plan.is_empty() {
            return;
        }
        plan.sort_unstable_by_key(|&(i, _)| i);
        self.metrics
            .last_batch_size
            .store(plan.len() as u64, Ordering::Relaxed);

        // The logits stay in the model's workspace (no copy of vocab-sized rows per step);
        // `logits` must be dropped before the next forward pass.
        let model = Arc::clone(&self.model);
        let started = Instant::now();
        let result = {
            let mut items: Vec<BatchItem> = Vec::with_capacity(plan.len());
            let mut rest: &mut [Seq] = &mut self.running;
            let mut offset = 0;
            for &(i, n) in &plan {
                let (_, tail) = rest.split_at_mut(i - offset);
                let (s, tail) = tail.split_first_mut().expect("plan indices are in range");
                let start = s.kv.len();
                let ends_prompt = start + n == s.tokens.len();
                items.push(BatchItem {
                    tokens: &s.tokens[start..start + n],
                    seq: &mut s.kv,
                    logits: if ends_prompt {
                        Logits::Last
                    } else {
                        Logits::None
                    },
                });
                rest = tail;
                offset = i + 1;
            }
            model.model.run_batch(&mut self.pool, &mut items)
        };
        tracing::debug!(
            "step: {} tokens of {} sequences in {:.1} ms",
            plan.iter().map(|&(_, n)| n).sum::<usize>(),
            plan.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
        let mut logits = match result {
            Ok(l) => l,
            Err(e) => {
                // A failed pass leaves no partial state behind in the sequences' token lists;
                // report it to everyone in this batch.
                let msg = e.to_string();
                tracing::error!("forward pass failed: {msg}");
                for (i, _) in plan.iter().rev() {
                    let s = self.running.remove(*i);
                    self.fail(s, msg.clone());
                }
                return;
            }
        };
        self.metrics.prompt_tokens_total.fetch_add(
            plan.iter()
                .filter(|&&(i, _)| self.running[i].generated.is_empty())
                .map(|&(_, n)| n as u64)
                .sum(),
            Ordering::Relaxed,
        );

        let mut done: Vec<(usize, FinishReason)> = Vec::new();
        for (pi, &(i, _)) in plan.iter().enumerate() {
            let lg = logits.get_mut(pi);
            if lg.is_empty() {
                continue;
            }
            let s = &mut self.running[i];
            let logprob = s.req.logprobs.map(|k| token_logprobs(lg, k));
            let id = s.sampler.sample(lg, &s.tokens, &s.generated);
            let logprob = logprob.map(|(lse, top)| TokenLogprob {
                logprob: lg_raw(&lse, id),
                top,
            });
            s.generated.push(id);
            s.tokens.push(id);
            let now = Instant::now();
            match s.last_token_at {
                _ if s.internal => {}
                None => self
                    .metrics
                    .ttft
                    .observe(now.duration_since(s.arrived).as_secs_f64()),
                Some(t) => self
                    .metrics
                    .inter_token
                    .observe(now.duration_since(t).as_secs_f64()),
            }
            s.last_token_at = Some(now);
            if !s.internal {
                self.metrics
                    .generation_tokens_total
                    .fetch_add(1, Ordering::Relaxed);
            }
            if !s.req.ignore_eos && self.model.eos_ids.contains(&id) {
                let _ = s.events.send(Event::Token {
                    id,
                    text: String::new(),
                    logprob,
                });
                done.push((i, FinishReason::Stop));
                continue;
            }
            let (piece, stopped) = match s.out.push(&self.model.tokenizer, id) {
                Ok(x) => x,
                Err(e) => {
                    let _ = s.events.send(Event::Error(e.to_string()));
                    done.push((i, FinishReason::Cancelled));
                    continue;
                }
            };
            let _ = s.events.send(Event::Token {
                id,
                text: piece,
                logprob,
            });
            if stopped {
                done.push((i, FinishReason::Stop));
            } else if s.generated.len() >= s.req.max_tokens || s.tokens.len() >= self.model.ctx_size
            {
                done.push((i, FinishReason::Length));
            }
        }
        drop(logits);
        done.sort_unstable_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, reason) in done {
            let s = self.running.remove(i);
            self.finish(s, reason);
        }
    }
}

/// Length of the common start of `a` and `b`.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    let n = a.len().min(b.len());
    // Whole runs compare as memory first; a long shared system prompt is the common case.
    const RUN: usize = 64;
    let mut i = 0;
    while i + RUN <= n && a[i..i + RUN] == b[i..i + RUN] {
        i += RUN;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// The log-probability of `id` under `logits` and the `k` most likely tokens.
pub fn logprob_of(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let (lse, top) = token_logprobs(logits, k);
    TokenLogprob {
        logprob: lg_raw(&lse, id),
        top,
    }
}

/// Log-sum-exp of the raw logits and the `k` most likely tokens with their log-probabilities.
fn token_logprobs(logits: &[f32], k: usize) -> (LogSumExp, Vec<(u32, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    let lse = LogSumExp {
        max,
        ln_sum: sum.ln() as f32,
        logits: logits.to_vec(),
    };
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    if k > 0 {
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            logits[b as usize].total_cmp(&logits[a as usize])
        });
        idx.truncate(k);
        idx.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
    } else {
        idx.clear();
    }
    let top = idx
        .iter()
        .map(|&i| (i, logits[i as usize] - max - lse.ln_sum))
        .collect();
    (lse, top)
}

struct LogSumExp {
    max: f32,
    ln_sum: f32,
    logits: Vec<f32>,
}

fn lg_raw(l: &LogSumExp, id: u32) -> f32 {
    l.logits
        .get(id as usize)
        .map(|&v| v - l.max - l.ln_sum)
        .unwrap_or(f32::NEG_INFINITY)
}
