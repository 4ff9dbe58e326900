//! The crate's error type.

/// Everything that can go wrong in this crate. Bad input is reported, never a panic: each
/// variant names the argument at fault.
#[derive(Debug, thiserror::Error)]
pub enum GrpoError {
    /// A tensor argument has the wrong shape (or rank).
    #[error("`{name}` has shape {got:?}, expected {expected}")]
    Shape {
        /// The argument.
        name: &'static str,
        /// The expected shape, in words (`[batch, T]`, `same as logp`, ...).
        expected: String,
        /// The shape received.
        got: Vec<usize>,
    },
    /// A tensor argument has the wrong dtype.
    #[error("`{name}` has dtype {got:?}, expected {expected}")]
    DType {
        /// The argument.
        name: &'static str,
        /// The expected dtype family, in words.
        expected: &'static str,
        /// The dtype received.
        got: candle_core::DType,
    },
    /// A scalar or slice argument is out of its domain.
    #[error("invalid `{name}`: {reason}")]
    Argument {
        /// The argument.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An error from candle itself.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, GrpoError>;

pub(crate) fn arg(name: &'static str, reason: impl Into<String>) -> GrpoError {
    GrpoError::Argument {
        name,
        reason: reason.into(),
    }
}

pub(crate) fn shape(name: &'static str, expected: impl Into<String>, got: &[usize]) -> GrpoError {
    GrpoError::Shape {
        name,
        expected: expected.into(),
        got: got.to_vec(),
    }
}
