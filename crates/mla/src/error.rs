//! The crate's error type.

use candle_core::DType;

/// Errors from building, loading or running Multi-head Latent Attention.
///
/// Every message names what it is about: the HF config field, the checkpoint tensor, or the
/// argument, and for a mismatch both sides.
#[derive(Debug, thiserror::Error)]
pub enum MlaError {
    /// A configuration field is missing or out of range (named as in HF `config.json`).
    #[error("{field}: {reason}")]
    InvalidConfig {
        /// The field, e.g. `kv_lora_rank`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A weight tensor has the wrong shape.
    #[error("{tensor}: expected {expected:?}, found {found:?}")]
    WeightShape {
        /// The tensor, named as in the checkpoint (e.g. `kv_b_proj`).
        tensor: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape handed in.
        found: Vec<usize>,
    },
    /// A weight could not be read from the `VarBuilder`.
    #[error("{tensor}: {source}")]
    MissingWeight {
        /// The tensor, named as in the checkpoint.
        tensor: String,
        /// The error from candle.
        source: candle_core::Error,
    },
    /// An input tensor has the wrong shape.
    #[error("{what}: expected {expected}, found {found:?}")]
    InputShape {
        /// Which argument (`x`, `c_kv`...).
        what: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The shape handed in.
        found: Vec<usize>,
    },
    /// Two tensors that must share a dtype do not.
    #[error("{what}: dtype {found:?} does not match {expected:?}")]
    DTypeMismatch {
        /// Which argument.
        what: &'static str,
        /// The dtype required (the weights' or the cache's).
        expected: DType,
        /// The dtype handed in.
        found: DType,
    },
    /// A sparse attention pattern is out of range (the field of the pattern is named), or a
    /// query selects no key.
    #[error("sparse pattern {field}: {reason}")]
    InvalidPattern {
        /// The pattern field (`window`, `size`, `keys`, `top_k`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A position or cache does not fit the request (a position beyond what the cache holds,
    /// a cache built for another shape, a sequence index out of range).
    #[error("cache: {0}")]
    Cache(String),
    /// An error from the rotary crate.
    #[error(transparent)]
    Rope(#[from] rope_yarn::RopeError),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl MlaError {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, MlaError>;
