//! Error types of the crate.

use thiserror::Error;

/// Why a math answer could not be parsed into an expression tree.
///
/// A parse error is never fatal to a verdict: the comparator then falls back to
/// comparing normalised strings.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The input has more tokens than [`crate::math::lexer::MAX_TOKENS`].
    #[error("expression too long")]
    TooLong,
    /// Nesting deeper than [`crate::math::parser::MAX_DEPTH`].
    #[error("expression nested too deeply")]
    TooDeep,
    /// A brace, bracket or environment is not closed.
    #[error("unbalanced braces or brackets")]
    Unbalanced,
    /// A token the grammar does not accept here.
    #[error("unexpected `{0}`")]
    Unexpected(String),
    /// The input ended where more was needed.
    #[error("unexpected end of expression")]
    UnexpectedEnd,
    /// A word that is neither a known function, constant, unit nor a short variable name.
    #[error("unknown word `{0}`")]
    UnknownWord(String),
}

/// Errors of the judge's API.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JudgeError {
    /// The name of a [`crate::Kind`] is not one of `math`, `mc`, `gsm8k`, `factual`.
    #[error("unknown kind `{0}` (expected math, mc, gsm8k or factual)")]
    UnknownKind(String),
    /// The name of an [`crate::AnswerPolicy`] is not `careful` or `strict`.
    #[error("unknown answer policy `{0}` (expected careful or strict)")]
    UnknownPolicy(String),
    /// The name of a [`crate::reward::Language`] is not `english` (`en`) or `chinese` (`zh`).
    #[error("unknown language `{0}` (expected english or chinese)")]
    UnknownLanguage(String),
}
