//! The crate's error type: every message names the input at fault.

/// Errors from building, loading or running a MoE layer.
#[derive(Debug, thiserror::Error)]
pub enum MoeError {
    /// A configuration field is invalid; `field` names it (release spelling).
    #[error("{field}: {message}")]
    Config {
        /// The offending field, e.g. `n_group`.
        field: String,
        /// What is wrong, with the values involved.
        message: String,
    },
    /// A weight the layer needs is absent from the checkpoint.
    #[error("{name}: missing")]
    MissingTensor {
        /// The tensor's full name under the loader's prefix.
        name: String,
    },
    /// A weight or input has the wrong shape.
    #[error("{name}: expected {expected:?}, found {found:?}")]
    Shape {
        /// The tensor's name (or `input` for activations).
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape actually found.
        found: Vec<usize>,
    },
    /// The layer cannot run the way it was asked to (e.g. device dispatch over quantised
    /// experts); the message says what and why.
    #[error("{0}")]
    Unsupported(String),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, MoeError>;

pub(crate) fn config_err(field: impl Into<String>, message: impl Into<String>) -> MoeError {
    MoeError::Config {
        field: field.into(),
        message: message.into(),
    }
}
