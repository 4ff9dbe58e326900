//! DeepSeek-V2 / V2-Lite / V2.5 / V3 / R1 / V3.2 inference from HF checkpoints.
//!
//! Point [`DeepSeek::load`] at a downloaded checkpoint directory (`config.json`, sharded
//! safetensors with `model.safetensors.index.json`, bf16/f32 or FP8 e4m3 with 128x128
//! `weight_scale_inv` blocks) and get HF-exact logits and fast generation. The crate composes
//! the component crates and re-implements none of their maths:
//!
//! ```text
//! x_0     = embed_tokens[t]
//! h_l     = x_l + MLA_l(RMSNorm(x_l))                         (mla, rope-yarn)
//! x_{l+1} = h_l + FFN_l(RMSNorm(h_l))   FFN = SwiGLU for l < first_k_dense_replace,
//!                                             DeepSeekMoE after  (moe)
//! logits  = lm_head(RMSNorm(x_L))
//! ```
//!
//! - [`config`]: the one reader of `config.json`: a typed mirror (model fields here, rotary
//!   fields from `rope_yarn::hf`, routing fields from `moe::hf`, every default set once)
//!   resolved through the component builders, errors naming the field; V2 vs V3 semantics
//!   come from `model_type`, as in HF 5.23; [`ModelConfig::ffn_kind`] is the one rule for
//!   which layers are MoE.
//! - [`checkpoint`]: memory-mapped shards, one error listing every missing / unexpected /
//!   mis-shaped tensor, FP8 dequantised at load (partial edge blocks handled), and a candle
//!   `VarBuilder` over it so the component crates load their own weights.
//! - [`model`]: the network and its per-sequence [`Session`] (latent KV cache, V3.2's indexer
//!   key caches, RoPE table); V3.2 layers run DeepSeek Sparse Attention (`mla::Indexer` +
//!   `Mla::forward_dsa_split`), which the engine refuses for now;
//!   decode steps and MTP verification blocks run MLA's absorbed path, prefill chunks its
//!   flash-style path, both over the paged latent cache in place ([`PathPolicy`]).
//! - [`generate`], [`sampling`], [`tokenizer`]: the one generation path, plain or MTP
//!   speculative ([`generate::Decoding`]), with greedy/top-k/top-p sampling, EOS and stop
//!   strings, a token budget, streaming and timing; `tokenizer.json` and the chat template (R1:
//!   one BOS, optional `<think>\n` prefill).
//! - [`plan`], [`random`]: the tensors a config implies, assembled from the weights each
//!   component crate lists for itself (validation, parameter counts), and random checkpoints
//!   of any config in the release layout.
//!
//! The `model` command-line tool is behind the default `cli` feature; library users depend on
//! this crate with `default-features = false`.
//!
//! ```
//! use candle_core::{DType, Device};
//! use model::DeepSeek;
//!
//! let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/v3_noaux");
//! let model = DeepSeek::load(&dir, DType::F32, &Device::Cpu)?;
//! let mut session = model.new_session()?;
//! let prompt = model.forward(&[5, 17, 42], &mut session)?; // prefill: logits [3, vocab]
//! let next = *DeepSeek::argmax_rows(&prompt.logits)?.last().unwrap();
//! let step = model.forward(&[next], &mut session)?; // one decode step over the latent cache
//! assert_eq!(step.logits.dims(), &[1, model.config().vocab_size]);
//! # Ok::<(), model::ModelError>(())
//! ```
#![deny(missing_docs)]

pub mod chat_template;
pub mod checkpoint;
pub mod config;
pub mod engine;
mod error;
pub mod generate;
pub mod gguf;
mod gguf_tokenizer;
pub mod host_memory;
pub mod model;
pub mod mtp;
pub mod penalties;
pub mod plan;
pub mod precision;
pub mod random;
pub mod sampling;
#[cfg(feature = "server")]
pub mod server;
pub mod structured;
pub mod tokenizer;

pub use checkpoint::{dequantize_fp8, Checkpoint, CheckpointMatrices};
pub use config::{Arch, ModelConfig};
pub use engine::{Engine, EngineConfig, Request, RequestParams};
pub use error::{ModelError, Result};
pub use model::{DeepSeek, Output, PathPolicy, Session, DEFAULT_PREFILL_CHUNK};
pub use penalties::Penalties;
pub use precision::{MatrixFormat, Precision};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{ChatExtras, ChatOptions, FunctionCall, Message, Tokenizer, ToolCall};
