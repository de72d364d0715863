//! Mideum's model layer: reads Mi:dm 2.0 / Llama checkpoints (Hugging Face safetensors
//! directories and GGUF files) through memory maps, loads their tokenizer and chat template with
//! Hugging Face semantics, and runs the forward pass.

pub mod chat;
pub mod config;
pub mod error;
pub mod gguf;
pub mod gguf_write;
pub mod kv;
pub mod llama;
pub mod loader;
pub mod safetensors;
pub mod template;
pub mod tensor;
pub mod tokenizer;

pub use config::{GenerationDefaults, ModelConfig, RopeScaling};
pub use error::{ModelError, Result};
pub use kv::{KvPool, KvStats, KvType, SeqKv, BLOCK_TOKENS};
pub use llama::{BatchItem, BatchLogits, KvCache, Llama, Logits};
pub use loader::{CheckpointFormat, LoadOptions, LoadedModel, TextAssets};
pub use mideum_kernels::QuantType;
pub use template::{ChatTemplate, DateTime};
pub use tokenizer::{StreamDecoder, Tokenizer};
