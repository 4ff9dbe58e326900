//! Multi-token prediction (MTP) for DeepSeek-V3/R1: the MTP modules, their training loss and
//! exact speculative decoding with MTP drafts.
//!
//! DeepSeek-V3 trains `D` sequential modules after the main model. Module `k` combines the
//! previous depth's hidden state at position `i` with the embedding of token `t_{i+k}` and
//! predicts `t_{i+k+1}`:
//!
//! ```text
//! h'_i^k  = eh_proj([ enorm(emb(t_{i+k})) | hnorm(h_i^{k-1}) ])     embedding first, [2C] -> [C]
//! h_i^k   = shared_head.norm( Block_k(h'^k)_i )                        one MLA + MoE decoder block
//! P^k_i   = softmax(lm_head(h_i^k))                                    predicts t_{i+k+1}
//! L_MTP   = (lambda / D) * sum_k CE(P^k, t_{k+1..})
//! ```
//!
//! `h^0` is the main model's hidden state **after its final norm** (as HF transformers 5.23's
//! `MtpLayer`); the embedding and `lm_head` are the main model's, shared rather than copied.
//! Each module has its own latent KV cache. Weights live at
//! `model.layers.{num_hidden_layers + k - 1}.*`.
//!
//! At inference the modules draft tokens that the main model verifies in one forward pass
//! ([`speculative`]): greedy output is identical to plain greedy decoding, sampled output has
//! exactly the main model's distribution (the standard accept-with-`min(1, p/q)` rule with
//! residual resampling), and both the main and the MTP caches roll back past the first
//! rejection.
//!
//! The crate knows nothing about attention, MoE or checkpoints: it is generic over the block
//! inside a module ([`DecoderBlock`]) and the main model ([`MainModel`]), which the model crate
//! implements; any sampler plugs in through [`TokenSampler`].
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::RmsNorm;
//! use mtp::{DecoderBlock, MtpModule, Result};
//!
//! /// A stand-in block: identity, with a cache that only counts tokens.
//! struct Identity;
//! impl DecoderBlock for Identity {
//!     type Cache = usize;
//!     fn new_cache(&self) -> Result<usize> { Ok(0) }
//!     fn forward(&self, x: &Tensor, cache: &mut usize) -> Result<Tensor> {
//!         *cache += x.dim(1)?;
//!         Ok(x.clone())
//!     }
//!     fn cache_len(cache: &usize) -> usize { *cache }
//!     fn truncate(cache: &mut usize, len: usize) { *cache = (*cache).min(len) }
//! }
//!
//! let (c, dev) = (8, Device::Cpu);
//! let norm = || RmsNorm::new(Tensor::ones(c, DType::F32, &dev).unwrap(), 1e-6);
//! let eh_proj = Tensor::randn(0f32, 0.3, (c, 2 * c), &dev)?;
//! let module = MtpModule::new(norm(), norm(), eh_proj, Identity, norm())?;
//!
//! let emb = Tensor::randn(0f32, 1.0, (1, 5, c), &dev)?; // emb(t_{i+1}), i = 0..5
//! let h = Tensor::randn(0f32, 1.0, (1, 5, c), &dev)?;   // main final-normed h_i
//! let mut cache = module.new_cache()?;
//! let out = module.forward(&emb, &h, &mut cache)?;
//! assert_eq!(out.dims(), &[1, 5, c]);
//! assert_eq!(cache, 5);
//!
//! // The training loss on depth-1 logits [T - 2, V] of a 5-token sequence (V = 8 here).
//! let logits = Tensor::zeros((3, 8), DType::F32, &dev)?;
//! let loss = mtp::mtp_loss(&[logits], &[1, 2, 3, 4, 5], 0.3)?;
//! let want = 0.3 * (8f32).ln(); // uniform logits: CE = ln V
//! assert!((loss.to_scalar::<f32>()? - want).abs() < 1e-5);
//! # Ok::<(), mtp::MtpError>(())
//! ```
#![deny(missing_docs)]

pub mod block;
mod error;
pub mod loss;
pub mod module;
pub mod sampling;
pub mod speculative;

pub use block::{DecoderBlock, MainModel};
pub use error::{MtpError, Result};
pub use linear::WeightSpec;
pub use loss::{cross_entropy, mtp_loss};
pub use module::{module_weights, unused_release_weights, MtpModule};
pub use sampling::{Greedy, TokenSampler};
pub use speculative::{
    plain_generate, speculative_generate, AcceptanceStats, SpecOptions, SpecOutput, Speculator,
};
