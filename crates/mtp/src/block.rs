//! What the MTP crate needs from a model, as traits the model crate implements: the decoder
//! block inside each MTP module ([`DecoderBlock`]) and the main model ([`MainModel`]). This
//! keeps `mtp` free of any dependency on attention, MoE or checkpoint code.
//!
//! Dimension legend: `T` tokens, `C` hidden size, `V` vocabulary.

use candle_core::Tensor;

use crate::error::Result;

/// One transformer block with its own incremental cache (for DeepSeek: MLA + MoE with a
/// latent KV cache).
///
/// Positions: a block call appends `T` tokens after the `cache_len` tokens the cache holds,
/// at rotary positions `cache_len..cache_len + T`. HF places the depth-`k` module's entry for
/// main position `i` at rotary position `i + k`; RoPE attention scores depend only on position
/// *differences*, so indexing by the cache slot instead (a constant shift of every query and
/// key) gives the same outputs (checked against HF in the model crate's tests).
pub trait DecoderBlock {
    /// Per-sequence incremental state.
    type Cache;

    /// An empty cache.
    fn new_cache(&self) -> Result<Self::Cache>;

    /// `x` `[1, T, C]` appended after the cached tokens (causal over cache + `x`);
    /// returns `[1, T, C]`.
    fn forward(&self, x: &Tensor, cache: &mut Self::Cache) -> Result<Tensor>;

    /// Tokens the cache holds.
    fn cache_len(cache: &Self::Cache) -> usize;

    /// Rolls the cache back to at most `len` tokens; later entries are never read again.
    fn truncate(cache: &mut Self::Cache, len: usize);
}

/// The main model as speculative decoding sees it: incremental forward, and the shared
/// embedding and output head the MTP modules reuse (shared, not copied).
pub trait MainModel {
    /// Per-sequence state (KV cache).
    type Session;

    /// An empty session.
    fn new_session(&self) -> Result<Self::Session>;

    /// Runs `tokens` after the session's cached tokens, appending them. Returns f32 logits
    /// `[T, V]` and the hidden states after the final norm `[T, C]` (what depth-1 MTP takes).
    fn forward(&self, tokens: &[u32], session: &mut Self::Session) -> Result<(Tensor, Tensor)>;

    /// Token embeddings `[1, T, C]`.
    fn embed(&self, tokens: &[u32]) -> Result<Tensor>;

    /// The output head on normed hidden states `[T, C]` -> f32 logits `[T, V]`.
    fn head(&self, hidden: &Tensor) -> Result<Tensor>;

    /// Tokens the session holds.
    fn session_len(session: &Self::Session) -> usize;

    /// Rolls the session back to `len` tokens (rejected draft tokens).
    fn truncate(session: &mut Self::Session, len: usize);
}
