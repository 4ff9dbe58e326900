//! The crate's error type.

/// Errors from MTP modules and speculative decoding.
#[derive(Debug, thiserror::Error)]
pub enum MtpError {
    /// Bad input (empty prompt, mismatched shapes, no MTP module, ...).
    #[error("mtp: {0}")]
    Input(String),
    /// An error from the implementor of [`crate::MainModel`] or [`crate::DecoderBlock`]
    /// (the model crate's own error, boxed).
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl MtpError {
    /// Wraps an implementor's error.
    pub fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, MtpError>;
