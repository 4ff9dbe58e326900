//! Rotary configuration: the numbers, validated once.

use crate::error::{Result, RopeError};
use crate::yarn::{correction_range, get_mscale, linear_ramp};

/// YaRN parameters (`rope_scaling` with `type: yarn`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YarnParams {
    /// Context extension factor `s` (`factor`).
    pub factor: f64,
    /// Pretrained context length `L` (`original_max_position_embeddings`).
    pub original_max_position_embeddings: usize,
    /// Turns over `L` above which pairs are left unscaled (`beta_fast`, default 32).
    pub beta_fast: f64,
    /// Turns over `L` below which pairs are fully interpolated (`beta_slow`, default 1).
    pub beta_slow: f64,
    /// Numerator magnitude of the cos/sin factor (`mscale`), if given.
    pub mscale: Option<f64>,
    /// Denominator magnitude of the cos/sin factor and the softmax-scale factor
    /// (`mscale_all_dim`), if given.
    pub mscale_all_dim: Option<f64>,
    /// An explicit cos/sin factor (`attention_factor`), overriding the mscales.
    pub attention_factor: Option<f64>,
    /// Floor/ceil the correction range (`truncate`, default true).
    pub truncate: bool,
}

impl YarnParams {
    /// YaRN with the paper's defaults (β_fast 32, β_slow 1, truncation) and no mscales.
    pub fn new(factor: f64, original_max_position_embeddings: usize) -> Self {
        Self {
            factor,
            original_max_position_embeddings,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: None,
            mscale_all_dim: None,
            attention_factor: None,
            truncate: true,
        }
    }
}

/// How positions are scaled beyond the pretrained context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE (`rope_type: default`, or no `rope_scaling`).
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// YaRN.
    Yarn(YarnParams),
}

/// Everything needed to build rotary tables for one rotary head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    /// Rotary dimensions per head (`qk_rope_head_dim` for DeepSeek); must be even.
    pub dim: usize,
    /// The base `b` (`rope_theta`).
    pub theta: f64,
    /// Context extension.
    pub scaling: RopeScaling,
}

impl RopeConfig {
    /// Plain RoPE over `dim` dimensions with base `theta`.
    pub fn new(dim: usize, theta: f64) -> Result<Self> {
        Self::with_scaling(dim, theta, RopeScaling::None)
    }

    /// A validated configuration.
    pub fn with_scaling(dim: usize, theta: f64, scaling: RopeScaling) -> Result<Self> {
        if dim == 0 || !dim.is_multiple_of(2) {
            return Err(RopeError::config(
                "dim",
                format!("must be even and > 0, found {dim}"),
            ));
        }
        if !(theta > 1.0 && theta.is_finite()) {
            return Err(RopeError::config(
                "rope_theta",
                format!("must be > 1, found {theta}"),
            ));
        }
        match scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => check_positive("rope_scaling.factor", factor)?,
            RopeScaling::Yarn(y) => {
                check_positive("rope_scaling.factor", y.factor)?;
                check_positive("rope_scaling.beta_fast", y.beta_fast)?;
                check_positive("rope_scaling.beta_slow", y.beta_slow)?;
                if y.original_max_position_embeddings == 0 {
                    return Err(RopeError::config(
                        "rope_scaling.original_max_position_embeddings",
                        "must be > 0",
                    ));
                }
            }
        }
        Ok(Self {
            dim,
            theta,
            scaling,
        })
    }

    /// The inverse frequencies `θ'_i` of the `dim / 2` rotary pairs, in f32 exactly as HF
    /// computes them (`1 / b^(2i/d)`, then the scaling rule).
    pub fn inv_freq(&self) -> Vec<f32> {
        let theta = self.theta as f32;
        let pos_freqs: Vec<f32> = (0..self.dim)
            .step_by(2)
            .map(|i| theta.powf(i as f32 / self.dim as f32))
            .collect();
        match self.scaling {
            RopeScaling::None => pos_freqs.iter().map(|p| 1.0 / p).collect(),
            RopeScaling::Linear { factor } => {
                pos_freqs.iter().map(|p| 1.0 / p / factor as f32).collect()
            }
            RopeScaling::Yarn(y) => {
                let (low, high) = self.yarn_correction_range().expect("yarn");
                let ramp = linear_ramp(low, high, self.dim / 2);
                pos_freqs
                    .iter()
                    .zip(ramp)
                    .map(|(&p, r)| {
                        let extrapolation = 1.0 / p;
                        let interpolation = 1.0 / (y.factor as f32 * p);
                        let extrapolation_factor = 1.0 - r;
                        interpolation * (1.0 - extrapolation_factor)
                            + extrapolation * extrapolation_factor
                    })
                    .collect()
            }
        }
    }

    /// YaRN's `[low, high]` blend band over the pairs, or `None` without YaRN.
    pub fn yarn_correction_range(&self) -> Option<(f64, f64)> {
        match self.scaling {
            RopeScaling::Yarn(y) => Some(correction_range(
                y.beta_fast,
                y.beta_slow,
                self.dim,
                self.theta,
                y.original_max_position_embeddings,
                y.truncate,
            )),
            _ => None,
        }
    }

    /// The factor cos and sin are multiplied by (HF's `attention_scaling`): 1 without YaRN;
    /// with YaRN `attention_factor` if given, else `mscale(s, mscale) / mscale(s, mscale_all_dim)`
    /// when both are non-zero, else `mscale(s, 1)`.
    pub fn attention_factor(&self) -> f64 {
        match self.scaling {
            RopeScaling::Yarn(y) => match (y.attention_factor, y.mscale, y.mscale_all_dim) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(m_all)) if m != 0.0 && m_all != 0.0 => {
                    get_mscale(y.factor, m) / get_mscale(y.factor, m_all)
                }
                _ => get_mscale(y.factor, 1.0),
            },
            _ => 1.0,
        }
    }

    /// The attention softmax scale DeepSeek uses for query/key heads of `qk_head_dim`
    /// dimensions: `qk_head_dim^-0.5`, times `mscale(s, mscale_all_dim)²` under YaRN when
    /// `mscale_all_dim` is non-zero.
    ///
    /// Golden values: V3 (`qk_head_dim` 192, factor 40, `mscale_all_dim` 1) 0.13523377886;
    /// V2-Lite (`mscale_all_dim` 0.707) 0.11472138679.
    pub fn softmax_scale(&self, qk_head_dim: usize) -> f64 {
        let base = (qk_head_dim as f64).powf(-0.5);
        match self.scaling {
            RopeScaling::Yarn(YarnParams {
                factor,
                mscale_all_dim: Some(m),
                ..
            }) if m != 0.0 => {
                let mscale = get_mscale(factor, m);
                base * mscale * mscale
            }
            _ => base,
        }
    }
}

fn check_positive(field: &str, v: f64) -> Result<()> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(RopeError::config(
            field,
            format!("must be a positive number, found {v}"),
        ))
    }
}
