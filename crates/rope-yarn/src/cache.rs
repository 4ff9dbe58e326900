//! A growable cos/sin table shared by every layer of a model.

use candle_core::{Device, Tensor};

use crate::apply::{apply_rotary, RopeLayout};
use crate::config::RopeConfig;
use crate::error::{Result, RopeError};

/// cos/sin rows for positions `0..len`, computed once and extended on demand.
///
/// Row `p` holds `cos(p · θ'_i) · a` and `sin(p · θ'_i) · a` for the `dim / 2` pairs, where
/// `a` is [`RopeConfig::attention_factor`]. The angle is the f32 product `p · θ'_i` and the
/// trigonometry runs in f32, as in HF. Growing appends rows (amortised doubling of the
/// backing vectors), never recomputing the ones that exist.
#[derive(Debug, Clone)]
pub struct RopeCache {
    config: RopeConfig,
    inv_freq: Vec<f32>,
    attention_factor: f32,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeCache {
    /// An empty table for `config`.
    pub fn new(config: RopeConfig) -> Self {
        Self {
            inv_freq: config.inv_freq(),
            attention_factor: config.attention_factor() as f32,
            config,
            cos: Vec::new(),
            sin: Vec::new(),
        }
    }

    /// The configuration the table was built from.
    pub fn config(&self) -> &RopeConfig {
        &self.config
    }

    /// The inverse frequencies of the pairs.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Number of positions computed so far.
    pub fn len(&self) -> usize {
        self.cos.len() / self.half()
    }

    /// True when no position has been computed yet.
    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }

    fn half(&self) -> usize {
        self.config.dim / 2
    }

    /// Makes sure positions `0..len` are in the table.
    pub fn ensure(&mut self, len: usize) {
        let have = self.len();
        if len <= have {
            return;
        }
        let half = self.half();
        // Reserve at least double so a token-by-token decode grows in O(log n) steps.
        let extra = (len.max(2 * have) - have) * half;
        self.cos.reserve(extra);
        self.sin.reserve(extra);
        for p in have..len {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                self.cos.push(angle.cos() * self.attention_factor);
                self.sin.push(angle.sin() * self.attention_factor);
            }
        }
    }

    /// cos and sin for positions `start..start + len`, each `[len, dim / 2]` f32 on `device`,
    /// growing the table if needed.
    pub fn cos_sin(
        &mut self,
        start: usize,
        len: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        self.ensure(start + len);
        let half = self.half();
        let range = start * half..(start + len) * half;
        let cos = Tensor::from_slice(&self.cos[range.clone()], (len, half), device)?;
        let sin = Tensor::from_slice(&self.sin[range], (len, half), device)?;
        Ok((cos, sin))
    }

    /// cos and sin for arbitrary positions (one row each), `[positions.len(), dim / 2]`.
    pub fn cos_sin_at(&mut self, positions: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let Some(&max) = positions.iter().max() else {
            return Err(RopeError::Shape {
                what: "positions",
                expected: "at least one position".into(),
                found: vec![0],
            });
        };
        self.ensure(max + 1);
        let half = self.half();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            cos.extend_from_slice(&self.cos[p * half..(p + 1) * half]);
            sin.extend_from_slice(&self.sin[p * half..(p + 1) * half]);
        }
        let shape = (positions.len(), half);
        Ok((
            Tensor::from_vec(cos, shape, device)?,
            Tensor::from_vec(sin, shape, device)?,
        ))
    }

    /// Rotates `x` (`[batch, heads, seq, dim]`) whose tokens sit at positions
    /// `start..start + seq`.
    pub fn apply(&mut self, x: &Tensor, start: usize, layout: RopeLayout) -> Result<Tensor> {
        let seq = x.dims().get(2).copied().unwrap_or(0);
        let (cos, sin) = self.cos_sin(start, seq, x.device())?;
        apply_rotary(x, &cos, &sin, layout)
    }
}
