//! Counts heap allocations (on every thread, the pool's workers included) during decode steps
//! of a quantized model once its workspace is warm: the forward pass must allocate nothing.
//!
//! What is allowed to allocate, and therefore kept out of the measured steps: the first pass
//! (workspace, per-thread scratch), a sequence's first write into a new KV block (its storage
//! and block-table entry), and the step that fills a block (one prefix-cache registration per
//! 16 tokens). Float (f32/bf16/f16) weight matrices go through a matmul path that still builds
//! a small `Vec` per task; quantized weights, what Mideum serves, do not.

use mideum_model::{BatchItem, KvType, LoadOptions, LoadedModel, Logits, SeqKv};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs_during(f: impl FnOnce()) -> usize {
    let before = ALLOCS.load(Ordering::SeqCst);
    f();
    ALLOCS.load(Ordering::SeqCst) - before
}

// One test function: the harness runs tests on parallel threads, which would be counted too.
#[test]
fn warm_decode_steps_allocate_nothing() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/models/tiny-mini-q8_0.gguf");
    for kv_type in [KvType::F16, KvType::F32, KvType::Q8] {
        let lm = LoadedModel::load(
            &path,
            &LoadOptions {
                threads: 2,
                ctx_size: Some(128),
                kv_type,
                ..Default::default()
            },
        )
        .expect("load");
        let m = &lm.model;
        let vocab = m.config.vocab_size as u32;
        // One sequence through `forward_cached` (the CLI and bench path). Prompt of 17 tokens:
        // blocks 0 and 1 exist; decode positions 17..=24 stay in block 1.
        let prompt: Vec<u32> = (0..17).map(|i| (i * 7 + 3) % vocab).collect();
        let mut cache = m.new_cache(128);
        let mut next = {
            let lg = m
                .forward_cached(&prompt, &mut cache, Logits::Last)
                .expect("prefill");
            argmax(lg.get(0))
        };
        // Enough warm-up steps that each pool thread has run every kind of task at least once
        // (thread-local scratch grows on a thread's first use; which thread takes which task
        // varies with load).
        for _ in 0..16 {
            let lg = m
                .forward_cached(&[next], &mut cache, Logits::Last)
                .expect("warm-up");
            next = argmax(lg.get(0));
        }
        let n = allocs_during(|| {
            for _ in 0..6 {
                let lg = m
                    .forward_cached(&[next], &mut cache, Logits::Last)
                    .expect("step");
                next = argmax(lg.get(0));
            }
        });
        assert_eq!(
            n, 0,
            "{kv_type:?}: allocations in 6 warm single-sequence decode steps"
        );

        // Four sequences in one shared pool through `run_batch` (the server's path).
        let mut pool = m.new_pool(64);
        let mut seqs: Vec<SeqKv> = (0..4).map(|_| SeqKv::with_capacity(64)).collect();
        let prompts: Vec<Vec<u32>> = (0..4u32)
            .map(|s| (0..17).map(|i| (i * 11 + s * 5 + 1) % vocab).collect())
            .collect();
        let mut nexts = vec![0u32; 4];
        let mut step = |seqs: &mut [SeqKv], toks: &[Vec<u32>], nexts: &mut [u32]| {
            let mut items: Vec<BatchItem> = Vec::with_capacity(4);
            for (seq, t) in seqs.iter_mut().zip(toks) {
                items.push(BatchItem {
                    tokens: t,
                    seq,
                    logits: Logits::Last,
                });
            }
            let out = m.run_batch(&mut pool, &mut items).expect("batch");
            for (i, n) in nexts.iter_mut().enumerate() {
                *n = argmax(out.get(i));
            }
        };
        step(&mut seqs, &prompts, &mut nexts);
        let mut toks: Vec<Vec<u32>> = nexts.iter().map(|&n| vec![n]).collect();
        for _ in 0..16 {
            step(&mut seqs, &toks, &mut nexts);
            for (t, &n) in toks.iter_mut().zip(&nexts) {
                t[0] = n;
            }
        }
        // The `items` vector of the step is the caller's (one small allocation per step, as
        // in the scheduler); everything inside `run_batch` must be free of allocations.
        let n = allocs_during(|| {
            for _ in 0..6 {
                step(&mut seqs, &toks, &mut nexts);
                for (t, &n) in toks.iter_mut().zip(&nexts) {
                    t[0] = n;
                }
            }
        });
        assert_eq!(
            n, 6,
            "{kv_type:?}: allocations in 6 warm 4-sequence decode steps (6 are the callers' item lists)"
        );
    }
}

fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |a, (i, &x)| if x > a.1 { (i, x) } else { a },
        )
        .0 as u32
}
