//! One MTP module: `h' = eh_proj([enorm(emb) | hnorm(h_prev)])`, a decoder block, then
//! `shared_head.norm`. The main model's embedding and head are passed in, never copied.

use candle_core::{Tensor, D};
use candle_nn::{Module, RmsNorm, VarBuilder};
use linear::WeightSpec;

use crate::block::DecoderBlock;
use crate::error::{MtpError, Result};

/// The weights [`MtpModule::load`] reads around the block, relative to the module's prefix
/// (`model.layers.{num_hidden_layers + k - 1}`): `enorm`, `hnorm`, `eh_proj` `[C, 2C]` (kept in
/// high precision by DeepSeek's FP8 releases) and `shared_head.norm`.
pub fn module_weights(hidden_size: usize) -> Vec<WeightSpec> {
    let c = hidden_size;
    vec![
        WeightSpec::plain("enorm.weight", vec![c]),
        WeightSpec::plain("hnorm.weight", vec![c]),
        WeightSpec::plain("eh_proj.weight", vec![c, 2 * c]),
        WeightSpec::plain("shared_head.norm.weight", vec![c]),
    ]
}

/// Per-module copies of the embedding `[V, C]` and head that V3 releases store beside each
/// module and that neither HF nor this crate reads (the main model's are shared).
pub fn unused_release_weights(vocab_size: usize, hidden_size: usize) -> Vec<WeightSpec> {
    let shape = vec![vocab_size, hidden_size];
    vec![
        WeightSpec::plain("embed_tokens.weight", shape.clone()),
        WeightSpec::plain("shared_head.head.weight", shape),
    ]
}

/// MTP module `k` (weights at `model.layers.{num_hidden_layers + k - 1}`), generic over its
/// decoder block `B`. Field names follow the checkpoint keys.
pub struct MtpModule<B> {
    enorm: RmsNorm,
    hnorm: RmsNorm,
    /// `eh_proj.weight` `[C, 2C]`, possibly narrower than the activations (see `linear`).
    eh_proj: Tensor,
    block: B,
    shared_head_norm: RmsNorm,
    hidden_size: usize,
}

impl<B: DecoderBlock> MtpModule<B> {
    /// Assembles a module from its parts. `eh_proj` is the `[C, 2C]` weight mapping `2C -> C`
    /// with the embedding half first (`[enorm(emb) | hnorm(h)]`); it may be stored narrower
    /// than the activations (bf16 weights, f32 activations).
    pub fn new(
        enorm: RmsNorm,
        hnorm: RmsNorm,
        eh_proj: Tensor,
        block: B,
        shared_head_norm: RmsNorm,
    ) -> Result<Self> {
        let w = eh_proj.dims().to_vec();
        match w[..] {
            [c, c2] if c2 == 2 * c => Ok(Self {
                enorm,
                hnorm,
                eh_proj,
                block,
                shared_head_norm,
                hidden_size: c,
            }),
            _ => Err(MtpError::Input(format!(
                "eh_proj: expected [C, 2C], found {w:?}"
            ))),
        }
    }

    /// Loads `enorm`, `hnorm`, `eh_proj` and `shared_head.norm` from `vb` (the module's
    /// prefix, e.g. `model.layers.61`) around an already loaded `block`.
    pub fn load(vb: VarBuilder, hidden_size: usize, rms_norm_eps: f64, block: B) -> Result<Self> {
        let c = hidden_size;
        Self::new(
            candle_nn::rms_norm(c, rms_norm_eps, vb.pp("enorm"))?,
            candle_nn::rms_norm(c, rms_norm_eps, vb.pp("hnorm"))?,
            vb.pp("eh_proj").get((c, 2 * c), "weight")?,
            block,
            candle_nn::rms_norm(c, rms_norm_eps, vb.pp("shared_head").pp("norm"))?,
        )
    }

    /// The decoder block.
    pub fn block(&self) -> &B {
        &self.block
    }

    /// Hidden size `C`.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// An empty cache for this module's block.
    pub fn new_cache(&self) -> Result<B::Cache> {
        self.block.new_cache()
    }

    /// `emb` `[1, T, C]` (embeddings of tokens `t_{i+k}`) and `prev` `[1, T, C]` (`h_i` of the
    /// previous depth: the main model's final-normed hidden state for depth 1) for entries
    /// appended after the cache; returns the `shared_head.norm`-ed output `[1, T, C]`, which
    /// the main head turns into logits for `t_{i+k+1}` and the next depth takes as `prev`.
    pub fn forward(&self, emb: &Tensor, prev: &Tensor, cache: &mut B::Cache) -> Result<Tensor> {
        if emb.dims() != prev.dims() || emb.rank() != 3 || emb.dim(2)? != self.hidden_size {
            return Err(MtpError::Input(format!(
                "MTP module: emb {:?} and prev {:?} must both be [1, T, {}]",
                emb.dims(),
                prev.dims(),
                self.hidden_size
            )));
        }
        // [1, T, 2C]: embedding first, as DeepSeek and HF (without mtp_hidden_states_first).
        let x = Tensor::cat(
            &[self.enorm.forward(emb)?, self.hnorm.forward(prev)?],
            D::Minus1,
        )?;
        let x = linear::linear(&x, &self.eh_proj)?; // [1, T, C]
        let h = self.block.forward(&x, cache)?;
        Ok(self.shared_head_norm.forward(&h)?)
    }
}
