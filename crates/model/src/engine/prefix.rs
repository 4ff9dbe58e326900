//! Automatic prefix caching: full pages of prompts already prefilled, kept by the token chain
//! that produced them, so a later request with the same prefix (another sample of a problem,
//! a repeated system prompt) adopts the pages instead of prefilling them again.
//!
//! An entry is page `i` of some prompt, keyed by a hash of tokens `0..(i + 1)·page` (each
//! page's key chains the previous one) and holding those tokens to rule out collisions. A
//! lookup walks the chain from page 0. Entries are dropped least recently used first when the
//! engine needs their room.
//!
//! Matches are rounded down to a multiple of `align` tokens, and pages are offered only when
//! computed by whole chunks of `align`: under batch invariance `align` is the prefill chunk, so
//! a request resuming after a match prefills exactly the chunks it would have prefilled alone
//! and every page it adopts holds the values its own prefill would have written.
//!
//! **Scores.** A page prefilled by a scoring request (`prompt_logprobs`) also keeps the scores
//! its positions gave: position `p`'s is the log-probability of prompt token `p + 1` with the
//! `top` alternatives. So a later scoring request with the same prefix (the choices of one
//! multiple-choice question, as lm-evaluation-harness sends them) adopts the scores with the
//! pages. The score at a page's last position is of the token after the page, so the page
//! serves only a prompt that continues with that token, and only for `top` at most the kept
//! one (the alternatives are kept most likely first, ties by token id, so the first `k` of
//! them are what `k` would have given).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use mla::{LatentKvCache, SharedPage};

use super::TokenLogprob;
use crate::error::Result;

/// What a scoring request's prefill of a page gave (see the module's docs).
struct Scores {
    /// Alternatives kept per position.
    top: usize,
    /// The prompt token after the page, which the last position scored.
    next: u32,
    /// One per position of the page.
    logprobs: Vec<TokenLogprob>,
}

struct Entry {
    /// The page's tokens (its prefix is checked through the chain of keys).
    tokens: Vec<u32>,
    /// Key of the previous page (0 for page 0).
    parent: u64,
    /// Page `i` of every layer.
    layers: Vec<SharedPage>,
    /// Set when a scoring request prefilled (or met) the page.
    scores: Option<Scores>,
    last_used: u64,
}

pub(super) struct PrefixCache {
    page: usize,
    align: usize,
    entries: HashMap<u64, Entry>,
    clock: u64,
}

/// The pages a lookup found: per layer, the pages holding the first `tokens` tokens.
pub(super) struct Hit {
    pub tokens: usize,
    pub layers: Vec<Vec<SharedPage>>,
    /// For a scoring lookup, the scores of positions `0..tokens`, cut to its `top`.
    pub scores: Vec<TokenLogprob>,
}

impl PrefixCache {
    pub(super) fn new(page: usize, align: usize) -> Self {
        Self {
            page,
            align: align.max(1),
            entries: HashMap::new(),
            clock: 0,
        }
    }

    /// Pages held (each counted once; a running sequence may share them).
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Identities of the pages held (layer 0's, as the engine counts pages).
    pub(super) fn page_ids(&self) -> impl Iterator<Item = usize> + '_ {
        self.entries
            .values()
            .filter_map(|e| e.layers.first().map(SharedPage::id))
    }

    fn key(parent: u64, tokens: &[u32]) -> u64 {
        let mut h = DefaultHasher::new();
        parent.hash(&mut h);
        tokens.hash(&mut h);
        // 0 marks "no parent"; keep it out of the key space.
        h.finish().max(1)
    }

    /// Keys of the full pages of `prompt`, in order.
    fn keys(&self, prompt: &[u32]) -> Vec<u64> {
        let mut parent = 0;
        prompt
            .chunks_exact(self.page)
            .map(|tokens| {
                parent = Self::key(parent, tokens);
                parent
            })
            .collect()
    }

    /// The longest cached prefix of `prompt` that leaves at least one token to prefill (its
    /// logits are needed), rounded down to the alignment. With `scoring` (a request's
    /// `prompt_logprobs`), only pages whose scores it can take, and those scores.
    pub(super) fn lookup(&mut self, prompt: &[u32], scoring: Option<usize>) -> Option<Hit> {
        let mut found: Vec<u64> = Vec::new();
        // Tokens the found pages hold (for scores: whose scores are of this prompt's tokens).
        let mut common = 0;
        let mut parent = 0;
        for (key, tokens) in self
            .keys(prompt)
            .into_iter()
            .zip(prompt.chunks_exact(self.page))
        {
            let Some(e) = self
                .entries
                .get(&key)
                .filter(|e| e.parent == parent && e.tokens == tokens)
            else {
                break;
            };
            if let Some(k) = scoring {
                let Some(s) = e.scores.as_ref().filter(|s| s.top >= k) else {
                    break;
                };
                if prompt.get(common + self.page) != Some(&s.next) {
                    // The page's last score is of another prompt's next token; the rest serve.
                    found.push(key);
                    common += self.page - 1;
                    break;
                }
            }
            found.push(key);
            common += self.page;
            parent = key;
        }
        let tokens = self.reusable(common, prompt.len());
        if tokens == 0 {
            return None;
        }
        let pages = tokens.div_ceil(self.page);
        self.clock += 1;
        let mut layers: Vec<Vec<SharedPage>> = Vec::new();
        let mut scores = Vec::new();
        for key in &found[..pages] {
            let e = self.entries.get_mut(key).expect("found above");
            e.last_used = self.clock;
            if layers.is_empty() {
                layers = vec![Vec::with_capacity(pages); e.layers.len()];
            }
            for (l, p) in layers.iter_mut().zip(&e.layers) {
                l.push(p.clone());
            }
            if let (Some(k), Some(s)) = (scoring, &e.scores) {
                scores.extend(s.logprobs.iter().map(|t| TokenLogprob {
                    logprob: t.logprob,
                    rank: t.rank,
                    top: t.top[..k.min(t.top.len())].to_vec(),
                }));
            }
        }
        scores.truncate(tokens);
        Some(Hit {
            tokens,
            layers,
            scores,
        })
    }

    /// Of `common` tokens shared with a prompt of `prompt_len`, how many a lookup can reuse:
    /// whole pages, rounded down to the alignment, leaving at least one token to prefill.
    pub(super) fn reusable(&self, common: usize, prompt_len: usize) -> usize {
        let pages = common.min(prompt_len.saturating_sub(1)) / self.page * self.page;
        pages / self.align * self.align
    }

    /// Offers the pages of `prompt` that `cache` holds within its first `exact` tokens (those
    /// computed by whole aligned chunks), with `scores` (`top`, and the scores of positions
    /// `0..`) where a scoring request gave them for a page's every position.
    pub(super) fn insert(
        &mut self,
        prompt: &[u32],
        cache: &LatentKvCache,
        exact: usize,
        scores: Option<(usize, &[TokenLogprob])>,
    ) {
        let full = exact.min(prompt.len()) / self.page;
        self.clock += 1;
        let mut parent = 0;
        for (i, key) in self
            .keys(&prompt[..full * self.page])
            .into_iter()
            .enumerate()
        {
            let end = (i + 1) * self.page;
            // The page's scores, when every position has one (copied only where kept).
            let page_scores = || {
                scores.and_then(|(top, all)| {
                    Some(Scores {
                        top,
                        next: *prompt.get(end)?,
                        logprobs: all.get(end - self.page..end)?.to_vec(),
                    })
                })
            };
            if let Some(e) = self.entries.get_mut(&key) {
                e.last_used = self.clock;
                // Keep what serves the most lookups: scores over none, more alternatives over
                // fewer.
                let better = scores
                    .is_some_and(|(top, _)| e.scores.as_ref().is_none_or(|old| old.top < top));
                if better {
                    if let Some(s) = page_scores() {
                        e.scores = Some(s);
                    }
                }
            } else {
                let layers: Option<Vec<SharedPage>> = (0..cache.num_layers())
                    .map(|l| cache.layer(l).ok().and_then(|c| c.share_page(i)))
                    .collect();
                let Some(layers) = layers else {
                    return;
                };
                self.entries.insert(
                    key,
                    Entry {
                        tokens: prompt[i * self.page..end].to_vec(),
                        parent,
                        layers,
                        scores: page_scores(),
                        last_used: self.clock,
                    },
                );
            }
            parent = key;
        }
    }

    /// Drops the least recently used entry; false when empty.
    pub(super) fn evict(&mut self) -> bool {
        let Some((&key, _)) = self.entries.iter().min_by_key(|(_, e)| e.last_used) else {
            return false;
        };
        self.entries.remove(&key);
        true
    }
}

/// A fresh cache (from `empty`) holding `hit`'s pages.
pub(super) fn adopt(mut empty: LatentKvCache, hit: Hit) -> Result<LatentKvCache> {
    for (l, pages) in hit.layers.into_iter().enumerate() {
        empty.layer_mut(l)?.adopt_pages(pages, hit.tokens)?;
    }
    Ok(empty)
}
