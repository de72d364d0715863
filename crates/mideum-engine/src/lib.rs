//! The engine over a loaded model: the sampler, the generation loop with stop conditions and
//! streaming text, prompt scoring (log-probabilities, perplexity), and a chat session that
//! reuses the KV cache of the conversation so far.

pub mod generate;
pub mod sampler;

pub use generate::{generate, score, FinishReason, GenerateOutput, GenerateRequest, Session};
pub use sampler::{Sampler, SamplingParams};
