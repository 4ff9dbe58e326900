//! Rotary position embeddings (RoPE) and YaRN context extension with the exact numerics of
//! HF transformers and DeepSeek's checkpoints.
//!
//! RoPE rotates each pair of dimensions of a query/key head by an angle proportional to the
//! token's position `p`:
//!
//! ```text
//! θ_i   = b^(-2i/d)                     i = 0 .. d/2 - 1, base b = rope_theta
//! x'_a  = x_a cos(p θ_i) - x_b sin(p θ_i)
//! x'_b  = x_b cos(p θ_i) + x_a sin(p θ_i)
//! ```
//!
//! so `q(m) · k(n)` depends on `m - n` only. YaRN ([`yarn`]) stretches the slow frequencies by
//! the extension factor `s` while leaving the fast ones alone, blends linearly in between, and
//! rescales magnitudes with `mscale`. DeepSeek multiplies cos/sin by
//! `mscale(s, mscale) / mscale(s, mscale_all_dim)` and the softmax scale by
//! `mscale(s, mscale_all_dim)²` ([`RopeConfig::softmax_scale`]).
//!
//! The design keeps three concerns apart:
//! - [`RopeConfig`]: the numbers (inverse frequencies, attention factor, softmax scale), built
//!   directly, or (feature `hf`, see [`hf`]) from an HF `config.json` in either spelling
//!   (`rope_scaling` of the releases, `rope_parameters` of transformers 5.x), with errors that
//!   name the field;
//! - [`RopeCache`]: the cos/sin table, grown on demand and shared by all layers;
//! - [`apply_rotary`]: the rotation of candle tensors, in the interleaved layout of DeepSeek
//!   ([`RopeLayout::Interleaved`]) or the half-split one, always computed in f32.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rope_yarn::{RopeCache, RopeConfig, RopeLayout, RopeScaling, YarnParams};
//!
//! // DeepSeek-V3's rotary head: 64 dims, base 10000, YaRN x40 over a 4096 pretrained context.
//! let yarn = YarnParams { mscale: Some(1.0), mscale_all_dim: Some(1.0), ..YarnParams::new(40.0, 4096) };
//! let config = RopeConfig::with_scaling(64, 10000.0, RopeScaling::Yarn(yarn))?;
//! assert_eq!(config.yarn_correction_range(), Some((10.0, 23.0)));
//! assert!((config.softmax_scale(192) - 0.135_233_778_86).abs() < 1e-10);
//!
//! let mut rope = RopeCache::new(config);
//! let q = Tensor::randn(0f32, 1.0, (1, 128, 5, 64), &Device::Cpu)?; // [batch, heads, seq, dim]
//! let q_rot = rope.apply(&q, 100, RopeLayout::Interleaved)?; // tokens at positions 100..105
//! assert_eq!(q_rot.dims(), q.dims());
//! # Ok::<(), rope_yarn::RopeError>(())
//! ```
#![deny(missing_docs)]

mod apply;
mod cache;
mod config;
mod error;
#[cfg(feature = "hf")]
pub mod hf;
pub mod yarn;

pub use apply::{apply_rotary, deinterleave, RopeLayout};
pub use cache::RopeCache;
pub use config::{RopeConfig, RopeScaling, YarnParams};
pub use error::{Result, RopeError};
pub use yarn::get_mscale;
