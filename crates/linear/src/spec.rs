//! [`WeightSpec`]: how a layer describes the weights it expects in a checkpoint.

/// One weight a layer expects: its name under the layer's prefix, its shape, and whether
/// DeepSeek's FP8 releases store it block-quantised (e4m3 plus a `weight_scale_inv` per 128x128
/// block: the projections inside the layers, never norms, biases or routers).
///
/// Each component crate lists its own weights from its configuration (e.g. `mla`'s
/// `MlaConfig::weights`); a model adds prefixes and layer numbers with [`WeightSpec::under`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSpec {
    /// Checkpoint key, relative to the layer (`q_proj.weight`) until prefixed.
    pub name: String,
    /// Shape (`[out, in]` for a projection).
    pub shape: Vec<usize>,
    /// Stored as FP8 blocks in DeepSeek's FP8 releases.
    pub fp8_in_releases: bool,
}

impl WeightSpec {
    /// A projection `[out, in]` that FP8 releases block-quantise.
    pub fn projection(name: impl Into<String>, out: usize, inp: usize) -> Self {
        Self {
            name: name.into(),
            shape: vec![out, inp],
            fp8_in_releases: true,
        }
    }

    /// A weight kept in the release's high precision (norms, biases, routers, embeddings).
    pub fn plain(name: impl Into<String>, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            shape,
            fp8_in_releases: false,
        }
    }

    /// The same weight under `prefix` (`"model.layers.3.self_attn"` + `.` + name).
    pub fn under(mut self, prefix: &str) -> Self {
        self.name = format!("{prefix}.{}", self.name);
        self
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_compose_and_count() {
        let w = WeightSpec::projection("q_proj.weight", 6, 4)
            .under("self_attn")
            .under("model.layers.2");
        assert_eq!(w.name, "model.layers.2.self_attn.q_proj.weight");
        assert_eq!((w.numel(), w.fp8_in_releases), (24, true));
        assert!(!WeightSpec::plain("norm.weight", vec![4]).fp8_in_releases);
    }
}
