//! The one error type of the model crate. Every variant names what was expected and what was
//! found, so the CLI can print it as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path}: invalid JSON: {error}")]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },

    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    #[error("config.json: {0}")]
    Config(String),

    #[error("unsupported architecture {0:?}: Mideum runs LlamaForCausalLM checkpoints (Mi:dm 2.0 Mini/Base)")]
    UnsupportedArchitecture(String),

    #[error("tensor {name}: {msg}")]
    Tensor { name: String, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error("the prompt has {tokens} tokens but the context window holds {context} (use a shorter prompt or a larger --ctx-size if the model supports it)")]
    ContextOverflow { tokens: usize, context: usize },

    #[error("the KV cache is full ({blocks} blocks, {tokens} tokens): raise --kv-cache-mb or shorten the request")]
    KvCacheFull { blocks: usize, tokens: usize },

    #[error("{0}")]
    Input(String),
}

impl ModelError {
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub(crate) fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        ModelError::Tensor {
            name: name.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;

pub(crate) fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(|error| ModelError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    serde_json::from_slice(&bytes).map_err(|error| ModelError::Json {
        path: path.to_path_buf(),
        error,
    })
}
