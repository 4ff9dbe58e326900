//! The SwiGLU MLP: `down(silu(gate(x)) * up(x))`, used for dense layers, the shared experts
//! and every routed expert.

use candle_core::{Shape, Tensor};
use candle_nn::VarBuilder;
use linear::{MapMatrix, Matrix, MatrixLoader, QuantFormat, ThroughVarBuilder, WeightSpec};

use crate::error::{MoeError, Result};

/// Loads `name` under `vb`, turning absence and shape mismatches into errors that name the
/// full tensor path (`model.layers.3.mlp.experts.7.up_proj.weight: missing`).
pub(crate) fn load_weight(vb: &VarBuilder, name: &str, shape: impl Into<Shape>) -> Result<Tensor> {
    checked(
        vb,
        name,
        shape,
        |vb, name| Ok(vb.get_unchecked(name)?),
        |t| t.dims(),
    )
}

/// [`load_weight`] of a projection, in whatever format the builder keeps it
/// from `matrices` ([`Matrix::load`] for [`ThroughVarBuilder`]: FP8 blocks stay FP8 when the
/// builder keeps them).
fn load_matrix(
    vb: &VarBuilder,
    name: &str,
    shape: impl Into<Shape>,
    matrices: &dyn MatrixLoader,
) -> Result<Matrix> {
    checked(
        vb,
        name,
        shape,
        |vb, name| Ok(matrices.load(vb, name)?),
        Matrix::dims,
    )
}

/// `get` of `name` under `vb` with its presence and shape checked.
fn checked<T>(
    vb: &VarBuilder,
    name: &str,
    shape: impl Into<Shape>,
    get: impl Fn(&VarBuilder, &str) -> Result<T>,
    dims: impl Fn(&T) -> &[usize],
) -> Result<T> {
    let shape: Shape = shape.into();
    let full = if vb.prefix().is_empty() {
        name.to_string()
    } else {
        format!("{}.{name}", vb.prefix())
    };
    if !vb.contains_tensor(name) {
        return Err(MoeError::MissingTensor { name: full });
    }
    let t = get(vb, name)?;
    if dims(&t) != shape.dims() {
        return Err(MoeError::Shape {
            name: full,
            expected: shape.dims().to_vec(),
            found: dims(&t).to_vec(),
        });
    }
    Ok(t)
}

/// A SwiGLU feed-forward block with HF names `gate_proj`, `up_proj` (`[I, H]`) and `down_proj`
/// (`[H, I]`), no biases.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Matrix,
    up_proj: Matrix,
    down_proj: Matrix,
}

impl Mlp {
    /// Builds from weights in any [`Matrix`] format (a `Tensor` converts into a dense one):
    /// `gate_proj`, `up_proj` `[I, H]`, `down_proj` `[H, I]`.
    pub fn new(
        gate_proj: impl Into<Matrix>,
        up_proj: impl Into<Matrix>,
        down_proj: impl Into<Matrix>,
    ) -> Result<Self> {
        let (gate_proj, up_proj, down_proj) = (gate_proj.into(), up_proj.into(), down_proj.into());
        let &[i, h] = gate_proj.dims() else {
            return Err(MoeError::Shape {
                name: "gate_proj.weight".into(),
                expected: vec![0, 0],
                found: gate_proj.dims().to_vec(),
            });
        };
        for (name, t, expected) in [
            ("up_proj.weight", &up_proj, [i, h]),
            ("down_proj.weight", &down_proj, [h, i]),
        ] {
            if t.dims() != expected {
                return Err(MoeError::Shape {
                    name: name.into(),
                    expected: expected.to_vec(),
                    found: t.dims().to_vec(),
                });
            }
        }
        Ok(Self {
            gate_proj,
            up_proj,
            down_proj,
        })
    }

    /// The weights [`Mlp::load`] reads (relative to its prefix): `gate_proj`, `up_proj`
    /// `[I, H]` and `down_proj` `[H, I]`.
    pub fn expected(hidden_size: usize, intermediate_size: usize) -> Vec<WeightSpec> {
        let (h, i) = (hidden_size, intermediate_size);
        vec![
            WeightSpec::projection("gate_proj.weight", i, h),
            WeightSpec::projection("up_proj.weight", i, h),
            WeightSpec::projection("down_proj.weight", h, i),
        ]
    }

    /// Loads `{gate,up,down}_proj.weight` under `vb` (e.g. `model.layers.0.mlp` or
    /// `model.layers.3.mlp.experts.7`).
    pub fn load(vb: VarBuilder, hidden_size: usize, intermediate_size: usize) -> Result<Self> {
        Self::load_with(vb, hidden_size, intermediate_size, &ThroughVarBuilder)
    }

    /// [`Mlp::load`] with the projections obtained from `matrices` (e.g. a checkpoint loader
    /// that uses memory-mapped FP8 bytes in place).
    pub fn load_with(
        vb: VarBuilder,
        hidden_size: usize,
        intermediate_size: usize,
        matrices: &dyn MatrixLoader,
    ) -> Result<Self> {
        let (h, i) = (hidden_size, intermediate_size);
        Self::new(
            load_matrix(&vb.pp("gate_proj"), "weight", (i, h), matrices)?,
            load_matrix(&vb.pp("up_proj"), "weight", (i, h), matrices)?,
            load_matrix(&vb.pp("down_proj"), "weight", (h, i), matrices)?,
        )
    }

    /// Model width H.
    pub fn hidden_size(&self) -> usize {
        self.gate_proj.dims()[1]
    }

    /// Inner width I.
    pub fn intermediate_size(&self) -> usize {
        self.gate_proj.dims()[0]
    }

    /// Bytes of weights one forward pass reads (3 matrices).
    pub fn weight_bytes(&self) -> usize {
        self.matrices().iter().map(|m| m.bytes()).sum()
    }

    /// `gate_proj`, `up_proj`, `down_proj`.
    pub fn matrices(&self) -> [&Matrix; 3] {
        [&self.gate_proj, &self.up_proj, &self.down_proj]
    }

    /// Converts the three matrices to `format`.
    pub fn quantize(&mut self, format: QuantFormat) -> Result<()> {
        self.map_matrices(&|m| m.quantize(format))
    }

    /// Replaces each of the three matrices by `f` of it (a format conversion).
    pub fn map_matrices(&mut self, f: &MapMatrix<'_>) -> Result<()> {
        for m in [&mut self.gate_proj, &mut self.up_proj, &mut self.down_proj] {
            *m = f(m)?;
        }
        Ok(())
    }

    /// `x` `[..., H]` → `[..., H]` in `x`'s dtype. The weights may be narrower than `x` (bf16
    /// weights with f32 activations); up to [`linear::GEMV_MAX_ROWS`] tokens on the CPU each
    /// weight row is read once by `linear`'s matrix-vector kernel (decode, sparse experts).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let h = self.hidden_size();
        let x2 = x.reshape(((), h))?; // [T, H]
        let gate = self.gate_proj.forward(&x2)?; // [T, I]
        let up = self.up_proj.forward(&x2)?; // [T, I]
        let act = linear::elementwise::swiglu(&gate, &up)?;
        let y = self.down_proj.forward(&act)?; // [T, H]
        Ok(y.reshape(dims)?)
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests read results on the host
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn narrow_weights_with_f32_activations_match_f32_weights() {
        let dev = Device::Cpu;
        let (h, i) = (37, 70);
        let w = |r, c, seed: f32| {
            let v: Vec<f32> = (0..r * c)
                .map(|k| ((k as f32 * 0.37 + seed).sin()) * 0.2)
                .collect();
            Tensor::from_vec(v, (r, c), &dev).unwrap()
        };
        let (g, u, d) = (w(i, h, 1.0), w(i, h, 2.0), w(h, i, 3.0));
        let x: Vec<f32> = (0..12 * h).map(|k| (k as f32 * 0.11).cos()).collect();
        let x = Tensor::from_vec(x, (12, h), &dev).unwrap();
        for dt in [DType::BF16, DType::F16] {
            let narrow = |t: &Tensor| t.to_dtype(dt).unwrap();
            // The reference: f32 weights holding exactly the rounded values.
            let widen = |t: &Tensor| narrow(t).to_dtype(DType::F32).unwrap();
            let mixed = Mlp::new(narrow(&g), narrow(&u), narrow(&d)).unwrap();
            let exact = Mlp::new(widen(&g), widen(&u), widen(&d)).unwrap();
            // 2 tokens take the matrix-vector kernel, 12 the GEMM.
            for rows in [2, 12] {
                let xs = x.narrow(0, 0, rows).unwrap();
                let a = mixed.forward(&xs).unwrap();
                let b = exact.forward(&xs).unwrap();
                assert_eq!(a.dtype(), DType::F32);
                let diff: f32 = (a - b)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(diff < 1e-5, "{dt:?}, {rows} rows: {diff}");
            }
        }
    }
}
