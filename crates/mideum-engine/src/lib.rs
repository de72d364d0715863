//! The engine over a loaded model: the sampler, the generation loop with stop conditions and
//! streaming text, prompt scoring (log-probabilities, perplexity), and a chat session that
//! reuses the KV cache of the conversation so far.

pub mod generate;
pub mod metrics;
pub mod sampler;
pub mod scheduler;

pub use generate::{generate, score, FinishReason, GenerateOutput, GenerateRequest, Session};
pub use metrics::{render_all, Metrics};
pub use sampler::{Sampler, SamplingParams};
pub use scheduler::{
    logprob_of, Engine, EngineConfig, Event, Request, SubmitError, TokenLogprob, Usage, WarmPrefix,
};
