//! Log-probabilities in the two API shapes: chat's `logprobs.content[]` entries and the
//! legacy completions object of parallel arrays.
//!
//! A token's text is its decoding alone; a byte-level token that is part of a multi-byte
//! character decodes to U+FFFD (the tokenizer API gives no raw bytes), and `bytes` are those
//! of that text. Without a tokenizer tokens are named `token_id:<id>` (vLLM's spelling).

use std::collections::BTreeMap;

use super::generation::Scored;
use super::openai::{
    ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs, PromptLogprob, PromptLogprobs,
};
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
        out.push(tokenizer, s.token, Some(&s.logprob), s.offset, usize::MAX);
    }
    out
}

/// The completions `logprobs` entries of an echoed prompt (`tokens`, and `scores` for those
/// after the first): the first token has no log-probability (`null`, as in OpenAI's and
/// vLLM's echo), and each token's `text_offset` is where it starts in the concatenation of
/// the tokens' texts (vLLM's offsets).
pub(crate) fn echoed_prompt(
    tokenizer: Option<&Tokenizer>,
    tokens: &[u32],
    scores: &[TokenLogprob],
    top: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = 0;
    let scores = std::iter::once(None).chain(scores.iter().map(Some));
    for (&token, score) in tokens.iter().zip(scores) {
        // Scores may hold more alternatives than the echo asked for (`prompt_logprobs` too).
        let text = out.push(tokenizer, token, score, offset, top);
        offset += text;
    }
    out
}

/// vLLM's `prompt_logprobs` of a prompt's `tokens` from their `scores` (one per token after
/// the first), with `top` alternatives each.
pub(crate) fn prompt_logprobs(
    tokenizer: Option<&Tokenizer>,
    tokens: &[u32],
    scores: &[TokenLogprob],
    top: usize,
) -> PromptLogprobs {
    let entry = |id: u32, logprob: f32, rank: usize| {
        let decoded_token = token_text(tokenizer, id);
        let lp = PromptLogprob {
            logprob,
            rank,
            decoded_token,
        };
        (id.to_string(), lp)
    };
    let scored = tokens.iter().skip(1).zip(scores).map(|(&token, s)| {
        let mut m: BTreeMap<String, PromptLogprob> = BTreeMap::new();
        let (key, own) = entry(token, s.logprob, s.rank);
        m.insert(key, own);
        for (i, &(id, logprob)) in s.top.iter().take(top).enumerate() {
            let (key, alt) = entry(id, logprob, i + 1);
            m.entry(key).or_insert(alt);
        }
        Some(m)
    });
    std::iter::once(None).chain(scored).collect()
}

impl CompletionLogprobs {
    /// Appends one token's entries, with at most `top` alternatives; returns the length of
    /// its text.
    fn push(
        &mut self,
        tokenizer: Option<&Tokenizer>,
        token: u32,
        lp: Option<&TokenLogprob>,
        offset: usize,
        top: usize,
    ) -> usize {
        let text = token_text(tokenizer, token);
        let len = text.len();
        self.tokens.push(text);
        self.token_logprobs.push(lp.map(|lp| lp.logprob));
        self.top_logprobs.push(lp.map(|lp| {
            lp.top
                .iter()
                .take(top)
                .map(|&(id, l)| (token_text(tokenizer, id), l))
                .collect()
        }));
        self.text_offset.push(offset);
        len
    }

    /// `self` followed by `next`, whose offsets move by `shift` bytes (the echoed prompt's
    /// text before a sample's).
    pub(crate) fn then(mut self, next: CompletionLogprobs, shift: usize) -> Self {
        self.tokens.extend(next.tokens);
        self.token_logprobs.extend(next.token_logprobs);
        self.top_logprobs.extend(next.top_logprobs);
        self.text_offset
            .extend(next.text_offset.into_iter().map(|o| o + shift));
        self
    }
}
