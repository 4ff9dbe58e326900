//! Multi-head Latent Attention (MLA), the attention of DeepSeek-V2/V3/R1, with the compressed
//! latent KV cache.
//!
//! Standard attention caches a key and a value per head per token. MLA compresses keys and
//! values jointly into one low-rank latent `c_kv` of `R = kv_lora_rank` values per token, plus
//! one small rotary key `k_pe` shared by all heads, and caches only those: 576 values per token
//! per layer for V3 instead of 40,960 (see [`accounting`]). For a token with input `x`:
//!
//! ```text
//! q           = q_b_proj(rms(q_a_proj(x)))   (or q_proj(x))      per head [q_nope | q_pe]
//! [c_kv|k_pe] = kv_a_proj_with_mqa(x);  c_kv = rms(c_kv);  q_pe, k_pe = RoPE(q_pe), RoPE(k_pe)
//! [k_nope|v]  = kv_b_proj(c_kv)        per head: k_nope = W_UK c_kv,  v = W_UV c_kv
//! score_hs    = (q_nope_h · W_UK_h c_kv_s + q_pe_h · k_pe_s) · softmax_scale
//! o_h         = Σ_s softmax(score_h)_s · W_UV_h c_kv_s
//! out         = o_proj([o_1 | ... | o_H])
//! ```
//!
//! The two products can be regrouped. The **expanded** path ([`AttentionPath::Expanded`],
//! HF's) computes `W_UK c_kv` and `W_UV c_kv` for every cached token and every head at every
//! step. The **absorbed** path ([`AttentionPath::Absorbed`], DeepSeek's `attn_impl="absorb"`,
//! the default) folds `W_UK` into the query, `q_lat_h = W_UKᵀ q_nope_h` (`R` values), and
//! applies `W_UV` once after the weighted sum, `o_h = W_UV_h (Σ_s p_hs c_kv_s)`, so attention
//! runs directly over the cached latent, shared by all heads like MQA. A decode step then reads
//! the `(R + r)`-value cache once instead of materialising `H·(n + r + v)` values per token.
//! Both paths are always available and tested against each other and against HF fixtures.
//! In a packed step ([`Mla::forward_packed`]) the decode rows of every sequence go through
//! `W_UK` and `W_UV` together, on `linear`'s matrix-vector kernel per head (a row's bits do not
//! depend on the other rows), so a step reads the per-head weights once, not once per sequence.
//! The per-head blocks are `kv_b_proj`'s own values in its own format where that is exact: an
//! FP8 `kv_b_proj` gives FP8 blocks (`W_UKᵀ_h` is the key rows transposed with their block
//! scales, which DeepSeek's 128 x 128 blocks allow), a bf16 one bf16 blocks.
//!
//! Both also materialise the `[B, H, T, S]` f32 scores of `T` new tokens over `S` keys: 64 GiB
//! for a single 32K-token prompt on V2-Lite's 16 heads. The **flash** path
//! ([`AttentionPath::Flash`]) never does: it visits the keys in blocks of
//! [`FLASH_KEY_BLOCK`] (queries in tiles of [`FLASH_QUERY_BLOCK`]) with an online softmax,
//! keeping per query row a running max `m`, sum `l` and weighted sum `acc` in f32. For the
//! scaled, causally masked scores `s_j` of block `j` and its values `V_j`:
//!
//! ```text
//! m_j   = max(m_{j-1}, rowmax(s_j))
//! p_j   = exp(s_j - m_j)
//! l_j   = l_{j-1} · exp(m_{j-1} - m_j) + rowsum(p_j)
//! acc_j = acc_{j-1} · exp(m_{j-1} - m_j) + p_j · V_j
//! o     = acc_last / l_last  (= softmax(s) · V)
//! ```
//!
//! Blocks run in order from the one holding key 0 (visible to every query, so `m` is finite
//! from the start); blocks in a query tile's future are skipped. Inside the blocks each call
//! takes the cheaper regrouping by a FLOP count calibrated on the CPU
//! ([`Mla::flash_formulation`]): absorbed for decode steps and chunks up to ~500 tokens on
//! V2/V3 shapes, expanded (each key block through `kv_b_proj`) for longer chunks and long
//! single-pass prompts. Its peak scratch is one `[B, H, tile, block]` piece plus the
//! `[B, H, T, ·]` accumulator, so long prompts prefill in chunks through the cache (or in one
//! call) at a memory cost linear in `T`. It is tested against both oracles (and so against
//! the HF fixtures) on every path, across block boundaries, and in bf16.
//!
//! Pieces: [`MlaConfig`] (dimensions, validated by a builder that names the HF field),
//! [`MlaWeights`] (loaded from a `VarBuilder` under the HF names, or handed in as tensors, e.g.
//! dequantised FP8), [`Mla`] (the layer), [`LayerCache`] / [`LatentKvCache`] (the latent
//! cache, paged in [`CACHE_PAGE`]-token pages that never move once written, with truncation
//! for speculative decoding), [`SparsePattern`] with [`Mla::forward_sparse`] (sparse attention:
//! local / block / random / top-k patterns, each query attending only to the latent rows it
//! selects, gathered from the cache pages; [`Mla::forward_masked`] is its dense oracle),
//! [`Indexer`] / [`DsaCache`] with [`Mla::forward_dsa`] (DeepSeek-V3.2's sparse attention: the
//! lightning indexer's top-k keys fed into the sparse forward), [`LatentKeys`] (the cached keys as page views: the absorbed and
//! flash paths read them in place, the expanded oracle joins them), [`KvLayout`] (cache
//! accounting). Softmax
//! always runs in f32; f32, bf16 and f16 are supported on CPU, and on CUDA with the `cuda`
//! feature.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use mla::{AttentionPath, Mla, MlaConfig, MlaWeights, QueryWeights};
//! use rope_yarn::RopeCache;
//!
//! let cfg = MlaConfig::builder()
//!     .hidden_size(64).num_attention_heads(4).q_lora_rank(None).kv_lora_rank(32)
//!     .qk_nope_head_dim(16).qk_rope_head_dim(8).v_head_dim(16)
//!     .build()?;
//! let dev = Device::Cpu;
//! let w = |o: usize, i: usize| Tensor::randn(0f32, 0.1, (o, i), &dev);
//! let weights = MlaWeights {
//!     query: QueryWeights::Direct { q_proj: w(4 * 24, 64)?.into() },
//!     kv_a_proj_with_mqa: w(32 + 8, 64)?.into(),
//!     kv_a_layernorm: Tensor::ones(32, DType::F32, &dev)?,
//!     kv_b_proj: w(4 * (16 + 16), 32)?.into(),
//!     o_proj: w(64, 4 * 16)?.into(),
//! };
//! let mla = Mla::new(cfg.clone(), weights)?;
//! let mut rope = RopeCache::new(cfg.rope);
//! let mut cache = mla.new_cache(1)?;
//!
//! // Prefill 5 tokens, then decode one, over the latent cache.
//! let prompt = Tensor::randn(0f32, 1.0, (1, 5, 64), &dev)?;
//! let y = mla.forward(&prompt, 0, &mut rope, Some(&mut cache), AttentionPath::Absorbed)?;
//! assert_eq!(y.dims(), &[1, 5, 64]);
//! let next = Tensor::randn(0f32, 1.0, (1, 1, 64), &dev)?;
//! let y = mla.forward(&next, 5, &mut rope, Some(&mut cache), AttentionPath::default())?;
//! assert_eq!(y.dims(), &[1, 1, 64]);
//! assert_eq!(cache.lens(), &[6]);
//! assert_eq!(cache.bytes_per_token(), (32 + 8) * 4); // only c_kv and k_pe
//! # Ok::<(), mla::MlaError>(())
//! ```
#![deny(missing_docs)]

pub mod accounting;
mod attention;
mod cache;
mod config;
mod error;
pub mod indexer;
pub mod sparse;
mod weights;

pub use accounting::KvLayout;
pub use attention::{
    AttentionPath, FlashFormulation, Mla, PackedPart, FLASH_KEY_BLOCK, FLASH_QUERY_BLOCK,
};
pub use cache::{LatentKeys, LatentKvCache, LayerCache, SharedPage, CACHE_PAGE};
pub use config::{MlaConfig, MlaConfigBuilder};
pub use error::{MlaError, Result};
pub use indexer::{
    top_k, DsaCache, Indexer, IndexerCache, IndexerConfig, IndexerWeights, INDEXER_QUERY_TILE,
};
pub use sparse::{BlockPattern, SparsePattern};
pub use weights::{MlaWeights, QueryWeights};
// Types of the public API from the crates below, so a user needs no second dependency.
pub use linear::WeightSpec;
pub use rope_yarn;
