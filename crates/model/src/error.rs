//! The crate's error type: every message names the file, field, tensor or layer at fault.

use std::path::{Path, PathBuf};

/// Errors from loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A `config.json` field is missing or invalid.
    #[error("{field}: {reason}")]
    Config {
        /// The field (or `config.json` for a whole-file problem).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause (displayed inline, not chained, so CLI errors stay one line).
        cause: std::io::Error,
    },
    /// The checkpoint's tensors do not match the configuration (all problems listed).
    #[error("{dir}: checkpoint does not match config.json: {}", problems.join("; "))]
    Weights {
        /// The checkpoint directory.
        dir: PathBuf,
        /// One line per missing, unexpected or mis-shaped tensor.
        problems: Vec<String>,
    },
    /// A safetensors file is malformed or truncated.
    #[error("{path}: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
    /// A GGUF file is malformed, truncated, of another architecture, or holds a tensor this
    /// reader does not map.
    #[error("{path}: {reason}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// The cause, naming the key or tensor.
        reason: String,
    },
    /// The problem happened inside a file.
    #[error("{path}: {inner}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        inner: Box<ModelError>,
    },
    /// Tokenizer or chat-template failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Bad input to generation (empty prompt, token id out of range, ...).
    #[error("{0}")]
    Input(String),
    /// From the attention crate.
    #[error(transparent)]
    Mla(#[from] mla::MlaError),
    /// From the MoE crate.
    #[error(transparent)]
    Moe(#[from] moe::MoeError),
    /// From the MTP crate.
    #[error(transparent)]
    Mtp(#[from] mtp::MtpError),
    /// From the RoPE crate.
    #[error(transparent)]
    Rope(#[from] rope_yarn::RopeError),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            cause: source,
        }
    }

    pub(crate) fn in_file(self, path: &Path) -> Self {
        Self::InFile {
            path: path.to_path_buf(),
            inner: Box::new(self),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, ModelError>;
