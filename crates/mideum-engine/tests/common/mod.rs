//! Helpers shared by the scheduler integration tests.

use mideum_engine::{Request, SamplingParams};
use mideum_model::{LoadOptions, LoadedModel};
use std::path::PathBuf;
use std::sync::Arc;

/// A checkpoint under `testdata/models`, on 2 threads with a `ctx`-token context.
pub fn load(rel: &str, ctx: usize) -> Arc<LoadedModel> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/models")
        .join(rel);
    Arc::new(
        LoadedModel::load(
            &p,
            &LoadOptions {
                threads: 2,
                ctx_size: Some(ctx),
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

/// A greedy request for `n` tokens that ignores end-of-sequence.
pub fn request(prompt: Vec<u32>, n: usize) -> Request {
    Request {
        prompt_ids: prompt,
        max_tokens: n,
        sampling: SamplingParams::default(),
        stop: vec![],
        ignore_eos: true,
        logprobs: None,
        deadline: None,
    }
}
