//! [`MlaConfig`]: the dimensions of one MLA layer, validated once by a builder.

use rope_yarn::{RopeConfig, RopeLayout, RopeScaling, YarnParams};

use crate::error::{MlaError, Result};

/// The dimensions of one Multi-head Latent Attention layer.
///
/// Field names follow HF `config.json`. Build it with [`MlaConfig::builder`] (which validates
/// every field and names the offending one in its error) or take a preset
/// ([`MlaConfig::deepseek_v3`], [`MlaConfig::deepseek_v2_lite`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MlaConfig {
    /// Model width `C` (`hidden_size`).
    pub hidden_size: usize,
    /// Attention heads `H` (`num_attention_heads`).
    pub num_heads: usize,
    /// Rank of the query compression (`q_lora_rank`); `None` means a plain `q_proj`.
    pub q_lora_rank: Option<usize>,
    /// Rank `R` of the joint key/value latent (`kv_lora_rank`).
    pub kv_lora_rank: usize,
    /// Per-head query/key dimensions without position (`qk_nope_head_dim`).
    pub qk_nope_head_dim: usize,
    /// Per-head rotary dimensions, shared key for all heads (`qk_rope_head_dim`).
    pub qk_rope_head_dim: usize,
    /// Per-head value dimensions (`v_head_dim`).
    pub v_head_dim: usize,
    /// Epsilon of `q_a_layernorm` and `kv_a_layernorm` (`rms_norm_eps`). HF 5.23 builds these
    /// two norms with its default 1e-6 whatever the config says; every released config uses
    /// 1e-6 too.
    pub rms_norm_eps: f64,
    /// Rotary settings of the `qk_rope_head_dim` part (built by `rope-yarn`).
    pub rope: RopeConfig,
    /// Which rotary dimensions of `q_pe` / `k_pe` form a rotated pair: interleaved
    /// `(2i, 2i + 1)` in every DeepSeek release (HF's V2, and V3 with its default
    /// `rope_interleave: true`), half-split `(i, i + r/2)` for a V3 config with
    /// `rope_interleave: false` (weights stored for HF's `rotate_half`).
    pub rope_layout: RopeLayout,
}

impl MlaConfig {
    /// A builder with no field set; `rms_norm_eps` defaults to 1e-6 and `rope` to plain RoPE
    /// with base 10000 over `qk_rope_head_dim`.
    pub fn builder() -> MlaConfigBuilder {
        MlaConfigBuilder::default()
    }

    /// DeepSeek-V3 / R1: 7168 wide, 128 heads, q_lora 1536, kv_lora 512, nope 128, rope 64,
    /// v 128, YaRN x40 over 4096 positions.
    pub fn deepseek_v3() -> Self {
        let yarn = YarnParams {
            mscale: Some(1.0),
            mscale_all_dim: Some(1.0),
            ..YarnParams::new(40.0, 4096)
        };
        Self::builder()
            .hidden_size(7168)
            .num_attention_heads(128)
            .q_lora_rank(Some(1536))
            .kv_lora_rank(512)
            .qk_nope_head_dim(128)
            .qk_rope_head_dim(64)
            .v_head_dim(128)
            .rope(RopeConfig::with_scaling(64, 10000.0, RopeScaling::Yarn(yarn)).expect("valid"))
            .build()
            .expect("valid preset")
    }

    /// DeepSeek-V2-Lite: 2048 wide, 16 heads, plain `q_proj`, kv_lora 512, nope 128, rope 64,
    /// v 128, YaRN x40 with mscale 0.707.
    pub fn deepseek_v2_lite() -> Self {
        let yarn = YarnParams {
            mscale: Some(0.707),
            mscale_all_dim: Some(0.707),
            ..YarnParams::new(40.0, 4096)
        };
        Self::builder()
            .hidden_size(2048)
            .num_attention_heads(16)
            .q_lora_rank(None)
            .kv_lora_rank(512)
            .qk_nope_head_dim(128)
            .qk_rope_head_dim(64)
            .v_head_dim(128)
            .rope(RopeConfig::with_scaling(64, 10000.0, RopeScaling::Yarn(yarn)).expect("valid"))
            .build()
            .expect("valid preset")
    }

    /// Query/key head size `qk_nope_head_dim + qk_rope_head_dim`.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Values cached per token per layer: `kv_lora_rank + qk_rope_head_dim` (576 for V3).
    pub fn latent_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// The softmax scale: `qk_head_dim^-0.5`, times `mscale(s, mscale_all_dim)²` under YaRN.
    pub fn softmax_scale(&self) -> f64 {
        self.rope.softmax_scale(self.qk_head_dim())
    }
}

/// Builder for [`MlaConfig`]; every setter is named after its HF `config.json` field.
#[derive(Debug, Clone, Default)]
pub struct MlaConfigBuilder {
    hidden_size: Option<usize>,
    num_heads: Option<usize>,
    q_lora_rank: Option<Option<usize>>,
    kv_lora_rank: Option<usize>,
    qk_nope_head_dim: Option<usize>,
    qk_rope_head_dim: Option<usize>,
    v_head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope: Option<RopeConfig>,
    rope_layout: Option<RopeLayout>,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident, $field:ident, $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, v: $ty) -> Self {
            self.$field = Some(v);
            self
        }
    };
}

impl MlaConfigBuilder {
    setter!(
        /// `hidden_size` (required).
        hidden_size, hidden_size, usize
    );
    setter!(
        /// `num_attention_heads` (required).
        num_attention_heads, num_heads, usize
    );
    setter!(
        /// `q_lora_rank`, `None` for a plain `q_proj` (required: JSON `null` is a value).
        q_lora_rank, q_lora_rank, Option<usize>
    );
    setter!(
        /// `kv_lora_rank` (required).
        kv_lora_rank, kv_lora_rank, usize
    );
    setter!(
        /// `qk_nope_head_dim` (required).
        qk_nope_head_dim, qk_nope_head_dim, usize
    );
    setter!(
        /// `qk_rope_head_dim` (required, even).
        qk_rope_head_dim, qk_rope_head_dim, usize
    );
    setter!(
        /// `v_head_dim` (required).
        v_head_dim, v_head_dim, usize
    );
    setter!(
        /// `rms_norm_eps` (default 1e-6).
        rms_norm_eps, rms_norm_eps, f64
    );
    setter!(
        /// Rotary settings, e.g. `RopeConfig::from_hf_config(qk_rope_head_dim, &json)` (rope-yarn feature `hf`)
        /// (default: plain RoPE, base 10000). Its `dim` must equal `qk_rope_head_dim`.
        rope, rope, RopeConfig
    );
    setter!(
        /// Pairing of the rotary dimensions (default [`RopeLayout::Interleaved`], DeepSeek's);
        /// HF V3's `rope_interleave: false` is [`RopeLayout::HalfSplit`].
        rope_layout, rope_layout, RopeLayout
    );

    /// Validates every field and returns the configuration.
    pub fn build(self) -> Result<MlaConfig> {
        fn required(field: &'static str, v: Option<usize>) -> Result<usize> {
            match v {
                None => Err(MlaError::config(field, "missing")),
                Some(0) => Err(MlaError::config(field, "must be > 0")),
                Some(v) => Ok(v),
            }
        }
        let hidden_size = required("hidden_size", self.hidden_size)?;
        let num_heads = required("num_attention_heads", self.num_heads)?;
        let q_lora_rank = match self.q_lora_rank {
            None => {
                return Err(MlaError::config(
                    "q_lora_rank",
                    "missing (use None for null)",
                ))
            }
            Some(Some(0)) => return Err(MlaError::config("q_lora_rank", "must be > 0 or null")),
            Some(v) => v,
        };
        let kv_lora_rank = required("kv_lora_rank", self.kv_lora_rank)?;
        let qk_nope_head_dim = required("qk_nope_head_dim", self.qk_nope_head_dim)?;
        let qk_rope_head_dim = required("qk_rope_head_dim", self.qk_rope_head_dim)?;
        if qk_rope_head_dim % 2 != 0 {
            return Err(MlaError::config(
                "qk_rope_head_dim",
                format!("must be even, found {qk_rope_head_dim}"),
            ));
        }
        let v_head_dim = required("v_head_dim", self.v_head_dim)?;
        let rms_norm_eps = self.rms_norm_eps.unwrap_or(1e-6);
        if !(rms_norm_eps > 0.0 && rms_norm_eps.is_finite()) {
            return Err(MlaError::config(
                "rms_norm_eps",
                format!("must be a positive number, found {rms_norm_eps}"),
            ));
        }
        let rope = match self.rope {
            Some(r) => r,
            None => RopeConfig::new(qk_rope_head_dim, 10000.0)?,
        };
        if rope.dim != qk_rope_head_dim {
            return Err(MlaError::config(
                "qk_rope_head_dim",
                format!(
                    "is {qk_rope_head_dim} but the rope config rotates {} dims",
                    rope.dim
                ),
            ));
        }
        Ok(MlaConfig {
            hidden_size,
            num_heads,
            q_lora_rank,
            kv_lora_rank,
            qk_nope_head_dim,
            qk_rope_head_dim,
            v_head_dim,
            rms_norm_eps,
            rope,
            rope_layout: self.rope_layout.unwrap_or(RopeLayout::Interleaved),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> MlaConfigBuilder {
        MlaConfig::builder()
            .hidden_size(64)
            .num_attention_heads(4)
            .q_lora_rank(None)
            .kv_lora_rank(32)
            .qk_nope_head_dim(16)
            .qk_rope_head_dim(8)
            .v_head_dim(16)
    }

    #[test]
    fn errors_name_the_field() {
        let e = base().kv_lora_rank(0).build().unwrap_err().to_string();
        assert_eq!(e, "kv_lora_rank: must be > 0");
        let e = base().qk_rope_head_dim(7).build().unwrap_err().to_string();
        assert!(e.starts_with("qk_rope_head_dim: must be even"), "{e}");
        let e = MlaConfig::builder().build().unwrap_err().to_string();
        assert_eq!(e, "hidden_size: missing");
        let e = base().q_lora_rank(Some(0)).build().unwrap_err().to_string();
        assert!(e.starts_with("q_lora_rank"), "{e}");
        let e = base().rms_norm_eps(-1.0).build().unwrap_err().to_string();
        assert!(e.starts_with("rms_norm_eps"), "{e}");
        let rope = RopeConfig::new(16, 10000.0).unwrap();
        let e = base().rope(rope).build().unwrap_err().to_string();
        assert!(e.starts_with("qk_rope_head_dim: is 8"), "{e}");
    }

    #[test]
    fn presets_have_the_golden_softmax_scales() {
        assert!((MlaConfig::deepseek_v3().softmax_scale() - 0.135_233_778_86).abs() < 1e-10);
        assert!((MlaConfig::deepseek_v2_lite().softmax_scale() - 0.114_721_386_79).abs() < 1e-10);
        assert_eq!(MlaConfig::deepseek_v3().latent_dim(), 576);
    }
}
