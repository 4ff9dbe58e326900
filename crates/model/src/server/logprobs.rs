//! Log-probabilities in the two API shapes: chat's `logprobs.content[]` entries and the
//! legacy completions object of parallel arrays.
//!
//! A token's text is its decoding alone; a byte-level token that is part of a multi-byte
//! character decodes to U+FFFD (the tokenizer API gives no raw bytes), and `bytes` are those
//! of that text. Without a tokenizer tokens are named `token_id:<id>` (vLLM's spelling).

use super::generation::Scored;
use super::openai::{ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};
use crate::engine::TokenLogprob;
use crate::tokenizer::Tokenizer;

/// The text of token `id`.
pub(crate) fn token_text(tokenizer: Option<&Tokenizer>, id: u32) -> String {
    tokenizer
        .and_then(|t| t.decode(&[id]).ok())
        .unwrap_or_else(|| format!("token_id:{id}"))
}

/// One chat `logprobs.content` entry.
pub(crate) fn chat_entry(
    tokenizer: Option<&Tokenizer>,
    token: u32,
    lp: &TokenLogprob,
) -> ChatTokenLogprob {
    let text = token_text(tokenizer, token);
    ChatTokenLogprob {
        bytes: text.as_bytes().to_vec(),
        token: text,
        logprob: lp.logprob,
        top_logprobs: lp
            .top
            .iter()
            .map(|&(id, logprob)| {
                let token = token_text(tokenizer, id);
                ChatTopLogprob {
                    bytes: token.as_bytes().to_vec(),
                    token,
                    logprob,
                }
            })
            .collect(),
    }
}

/// The completions `logprobs` object for `scored` tokens.
pub(crate) fn completion(tokenizer: Option<&Tokenizer>, scored: &[Scored]) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    for s in scored {
        out.tokens.push(token_text(tokenizer, s.token));
        out.token_logprobs.push(s.logprob.logprob);
        out.top_logprobs.push(
            s.logprob
                .top
                .iter()
                .map(|&(id, lp)| (token_text(tokenizer, id), lp))
                .collect(),
        );
        out.text_offset.push(s.offset);
    }
    out
}
