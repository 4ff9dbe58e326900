//! KV-cache accounting: bytes per token for MHA, GQA, MQA and MLA.
//!
//! Per token and per layer a cache stores:
//!
//! | layout | values per token per layer |
//! |---|---|
//! | MHA (every head its own K and V) | `H · (d_k + d_v)` |
//! | GQA with `g` KV groups | `g · (d_k + d_v)` |
//! | MQA (one shared K/V head) | `d_k + d_v` |
//! | MLA (latent + shared RoPE key) | `R + d_rope` |
//!
//! DeepSeek-V3 (61 layers, 128 heads, `d_k` = 128 + 64 = 192, `d_v` = 128, `R` = 512,
//! `d_rope` = 64) in bf16:
//!
//! - MLA: (512 + 64) values · 2 bytes · 61 layers = **70,272 bytes/token** (68.6 KiB);
//! - MHA over the expanded keys/values: 128 · (192 + 128) · 2 · 61 = **4,997,120 bytes/token**
//!   (~4.77 MiB), 71x more.
//!
//! ```
//! use mla::{KvLayout, MlaConfig};
//! let v3 = MlaConfig::deepseek_v3();
//! let bf16 = candle_core::DType::BF16;
//! assert_eq!(KvLayout::mla(&v3).bytes_per_token(61, bf16), 70_272);
//! assert_eq!(KvLayout::mha(&v3).bytes_per_token(61, bf16), 4_997_120);
//! ```

use candle_core::DType;

use crate::config::MlaConfig;

/// What a KV cache stores per token per layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// Multi-head attention: `heads` keys of `k_head_dim` and values of `v_head_dim`.
    Mha {
        /// Attention heads.
        heads: usize,
        /// Key size per head.
        k_head_dim: usize,
        /// Value size per head.
        v_head_dim: usize,
    },
    /// Grouped-query attention with `groups` key/value heads.
    Gqa {
        /// Key/value heads (groups).
        groups: usize,
        /// Key size per head.
        k_head_dim: usize,
        /// Value size per head.
        v_head_dim: usize,
    },
    /// Multi-query attention: one key/value head.
    Mqa {
        /// Key size.
        k_head_dim: usize,
        /// Value size.
        v_head_dim: usize,
    },
    /// Multi-head latent attention: the latent and the shared rotary key.
    Mla {
        /// `kv_lora_rank`.
        kv_lora_rank: usize,
        /// `qk_rope_head_dim`.
        rope_head_dim: usize,
    },
}

impl KvLayout {
    /// The MLA cache of `config` (what [`LatentKvCache`](crate::LatentKvCache) stores).
    pub fn mla(config: &MlaConfig) -> Self {
        Self::Mla {
            kv_lora_rank: config.kv_lora_rank,
            rope_head_dim: config.qk_rope_head_dim,
        }
    }

    /// The cache of the same attention with expanded per-head keys (`nope + rope`) and values.
    pub fn mha(config: &MlaConfig) -> Self {
        Self::Mha {
            heads: config.num_heads,
            k_head_dim: config.qk_head_dim(),
            v_head_dim: config.v_head_dim,
        }
    }

    /// The same head sizes with `groups` key/value heads.
    pub fn gqa(config: &MlaConfig, groups: usize) -> Self {
        Self::Gqa {
            groups,
            k_head_dim: config.qk_head_dim(),
            v_head_dim: config.v_head_dim,
        }
    }

    /// The same head sizes with one key/value head.
    pub fn mqa(config: &MlaConfig) -> Self {
        Self::Mqa {
            k_head_dim: config.qk_head_dim(),
            v_head_dim: config.v_head_dim,
        }
    }

    /// Values stored per token in one layer.
    pub fn values_per_token_per_layer(&self) -> usize {
        match *self {
            Self::Mha {
                heads,
                k_head_dim,
                v_head_dim,
            } => heads * (k_head_dim + v_head_dim),
            Self::Gqa {
                groups,
                k_head_dim,
                v_head_dim,
            } => groups * (k_head_dim + v_head_dim),
            Self::Mqa {
                k_head_dim,
                v_head_dim,
            } => k_head_dim + v_head_dim,
            Self::Mla {
                kv_lora_rank,
                rope_head_dim,
            } => kv_lora_rank + rope_head_dim,
        }
    }

    /// Bytes per token over `num_layers` layers stored as `dtype`.
    pub fn bytes_per_token(&self, num_layers: usize, dtype: DType) -> usize {
        self.values_per_token_per_layer() * num_layers * dtype.size_in_bytes()
    }

    /// Bytes for `tokens` tokens over `num_layers` layers stored as `dtype`.
    pub fn bytes(&self, tokens: usize, num_layers: usize, dtype: DType) -> usize {
        tokens * self.bytes_per_token(num_layers, dtype)
    }
}
