//! Cascade attention: sequences decoding together behind the same cached prefix blocks read
//! those blocks once per layer for all of them. Their logits must equal those of each sequence
//! decoded alone (where nothing is shared and the plain attention path runs).

use mideum_model::{BatchItem, KvType, LoadOptions, LoadedModel, Logits, SeqKv};
use std::path::PathBuf;

fn load() -> LoadedModel {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/models/tiny-mini");
    LoadedModel::load(
        &p,
        &LoadOptions {
            threads: 2,
            ctx_size: Some(512),
            kv_type: KvType::F32,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", p.display()))
}

/// Prompt `i`: a shared 40-token prefix (two full blocks and a partial one), then its own tail.
fn prompt(i: usize) -> Vec<u32> {
    let mut p: Vec<u32> = (0..40).map(|j| 100 + (j * 37) % 900).collect();
    p.extend((0..5 + 7 * i).map(|j| (1000 + i * 211 + j * 13) as u32 % 2000 + 5));
    p
}

/// Tokens fed during decode step `s` to sequence `i` (fixed, so both runs see the same input).
fn step_token(i: usize, s: usize) -> u32 {
    (300 + 17 * i + 29 * s) as u32
}

const SEQS: usize = 3;
const STEPS: usize = 20;

#[test]
fn decoding_behind_a_shared_prefix_equals_decoding_alone() {
    let m = load();
    let lm = &m.model;
    // Together: the first prompt fills the cache, the others attach its full blocks.
    let mut pool = lm.new_pool(64);
    let mut seqs: Vec<SeqKv> = (0..SEQS).map(|_| SeqKv::with_capacity(128)).collect();
    for (i, seq) in seqs.iter_mut().enumerate() {
        let p = prompt(i);
        let reused = pool.attach_prefix(seq, &p);
        if i > 0 {
            assert!(reused >= 32, "sequence {i} reused {reused} positions");
        }
        let mut items = [BatchItem {
            tokens: &p[reused..],
            seq,
            logits: Logits::None,
        }];
        lm.run_batch(&mut pool, &mut items).unwrap();
    }
    let mut together = vec![Vec::new(); SEQS];
    for s in 0..STEPS {
        let toks: Vec<[u32; 1]> = (0..SEQS).map(|i| [step_token(i, s)]).collect();
        let mut items: Vec<BatchItem> = seqs
            .iter_mut()
            .zip(&toks)
            .map(|(seq, t)| BatchItem {
                tokens: t,
                seq,
                logits: Logits::Last,
            })
            .collect();
        let out = lm.run_batch(&mut pool, &mut items).unwrap();
        for (i, row) in together.iter_mut().enumerate() {
            row.push(out.get(i).to_vec());
        }
    }
    // Alone: each sequence in its own pool, nothing shared.
    for (i, want_steps) in together.iter().enumerate() {
        let mut pool = lm.new_pool(64);
        let mut seq = SeqKv::with_capacity(128);
        let p = prompt(i);
        lm.run_batch(
            &mut pool,
            &mut [BatchItem {
                tokens: &p,
                seq: &mut seq,
                logits: Logits::None,
            }],
        )
        .unwrap();
        for (s, want) in want_steps.iter().enumerate() {
            let t = [step_token(i, s)];
            let mut items = [BatchItem {
                tokens: &t,
                seq: &mut seq,
                logits: Logits::Last,
            }];
            let out = lm.run_batch(&mut pool, &mut items).unwrap();
            let got = out.get(0);
            let scale = want.iter().fold(1f32, |a, &x| a.max(x.abs()));
            let worst = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-4 * scale,
                "sequence {i} step {s}: logits differ by {worst} (scale {scale})"
            );
        }
    }
}
