//! The crate's error type.

/// Errors from building a rotary configuration or applying it to tensors.
#[derive(Debug, thiserror::Error)]
pub enum RopeError {
    /// A configuration field is missing, of the wrong type or out of range.
    #[error("{field}: {reason}")]
    InvalidConfig {
        /// The field as spelled in the HF `config.json` (e.g. `rope_scaling.factor`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor handed in does not have the shape the rotation needs.
    #[error("{what}: expected {expected}, found {found:?}")]
    Shape {
        /// Which argument.
        what: &'static str,
        /// The shape that was expected, in words.
        expected: String,
        /// The shape that was found.
        found: Vec<usize>,
    },
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl RopeError {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, RopeError>;
