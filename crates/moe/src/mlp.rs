//! The SwiGLU MLP: `down(silu(gate(x)) * up(x))`, used for dense layers, the shared experts
//! and every routed expert.

use candle_core::{DType, Shape, Storage, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use crate::error::{MoeError, Result};

/// Loads `name` under `vb`, turning absence and shape mismatches into errors that name the
/// full tensor path (`model.layers.3.mlp.experts.7.up_proj.weight: missing`).
pub(crate) fn load_weight(vb: &VarBuilder, name: &str, shape: impl Into<Shape>) -> Result<Tensor> {
    let shape: Shape = shape.into();
    let full = if vb.prefix().is_empty() {
        name.to_string()
    } else {
        format!("{}.{name}", vb.prefix())
    };
    if !vb.contains_tensor(name) {
        return Err(MoeError::MissingTensor { name: full });
    }
    let t = vb.get_unchecked(name)?;
    if t.dims() != shape.dims() {
        return Err(MoeError::Shape {
            name: full,
            expected: shape.dims().to_vec(),
            found: t.dims().to_vec(),
        });
    }
    Ok(t)
}

/// A SwiGLU feed-forward block with HF names `gate_proj`, `up_proj` (`[I, H]`) and `down_proj`
/// (`[H, I]`), no biases.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate_proj: Tensor,
    up_proj: Tensor,
    down_proj: Tensor,
}

impl Mlp {
    /// Builds from (already dequantised) weights: `gate_proj`, `up_proj` `[I, H]`,
    /// `down_proj` `[H, I]`.
    pub fn new(gate_proj: Tensor, up_proj: Tensor, down_proj: Tensor) -> Result<Self> {
        let (i, h) = gate_proj.dims2()?;
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

    /// Loads `{gate,up,down}_proj.weight` under `vb` (e.g. `model.layers.0.mlp` or
    /// `model.layers.3.mlp.experts.7`).
    pub fn load(vb: VarBuilder, hidden_size: usize, intermediate_size: usize) -> Result<Self> {
        let (h, i) = (hidden_size, intermediate_size);
        Self::new(
            load_weight(&vb.pp("gate_proj"), "weight", (i, h))?,
            load_weight(&vb.pp("up_proj"), "weight", (i, h))?,
            load_weight(&vb.pp("down_proj"), "weight", (h, i))?,
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
        3 * self.hidden_size() * self.intermediate_size() * self.gate_proj.dtype().size_in_bytes()
    }

    /// `x` `[..., H]` → `[..., H]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let h = self.hidden_size();
        let x2 = x.reshape(((), h))?; // [T, H]
        let gate = x2.matmul(&self.gate_proj.t()?)?; // [T, I]
        let up = x2.matmul(&self.up_proj.t()?)?; // [T, I]
        let act = (candle_nn::ops::silu(&gate)? * up)?;
        let y = act.matmul(&self.down_proj.t()?)?; // [T, H]
        Ok(y.reshape(dims)?)
    }

    /// A few tokens on the CPU, straight from f32 weight memory: `xs` is `[n, H]` row-major;
    /// each weight row is read from memory once and dotted with all n tokens while it sits in
    /// L1, rows split over rayon threads. `None` when the weights are not contiguous CPU f32
    /// (the caller then uses [`Mlp::forward`]). Meant for small n (decode, sparse experts);
    /// large n belongs to the GEMM.
    pub(crate) fn forward_rows_f32(&self, xs: &[f32], n: usize) -> Option<Vec<f32>> {
        let (h, i) = (self.hidden_size(), self.intermediate_size());
        with_f32(&self.gate_proj, |g| {
            with_f32(&self.up_proj, |u| {
                with_f32(&self.down_proj, |d| {
                    // act_t [I, n]: silu(g_r . x_j) * (u_r . x_j)
                    let mut act_t = vec![0f32; i * n];
                    act_t
                        .par_chunks_mut(ROWS * n)
                        .enumerate()
                        .for_each(|(c, out)| {
                            for (r, o) in out.chunks_mut(n).enumerate() {
                                let row = (c * ROWS + r) * h;
                                let (gr, ur) = (&g[row..row + h], &u[row..row + h]);
                                for (j, o) in o.iter_mut().enumerate() {
                                    let xj = &xs[j * h..(j + 1) * h];
                                    let (gv, uv) = (dot(gr, xj), dot(ur, xj));
                                    *o = gv / (1.0 + (-gv).exp()) * uv;
                                }
                            }
                        });
                    let act = transpose(&act_t, i, n); // [n, I]
                                                       // y_t [H, n]: d_r . act_j
                    let mut y_t = vec![0f32; h * n];
                    y_t.par_chunks_mut(ROWS * n)
                        .enumerate()
                        .for_each(|(c, out)| {
                            for (r, o) in out.chunks_mut(n).enumerate() {
                                let row = (c * ROWS + r) * i;
                                for (j, o) in o.iter_mut().enumerate() {
                                    *o = dot(&d[row..row + i], &act[j * i..(j + 1) * i]);
                                }
                            }
                        });
                    transpose(&y_t, h, n) // [n, H]
                })
            })
        })
        .flatten()
        .flatten()
    }
}

/// `[r, c]` → `[c, r]`.
fn transpose(a: &[f32], r: usize, c: usize) -> Vec<f32> {
    if c == 1 || r == 1 {
        return a.to_vec();
    }
    let mut out = vec![0f32; r * c];
    for (ri, row) in a.chunks_exact(c).enumerate() {
        for (ci, &v) in row.iter().enumerate() {
            out[ci * r + ri] = v;
        }
    }
    out
}

/// Rows per rayon task in the matrix-vector kernel.
const ROWS: usize = 64;

/// Runs `f` on the tensor's memory if it is a contiguous f32 CPU tensor.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if t.dtype() != DType::F32 {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*storage {
        Storage::Cpu(cpu) => cpu.as_slice::<f32>().ok().map(|s| f(&s[start..end])),
        _ => None,
    }
}

/// Dot product with 16 independent accumulators (vectorises without fast-math).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(xa).zip(xb) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn row_kernel_matches_candle() {
        let dev = Device::Cpu;
        let (h, i) = (37, 70);
        let w = |r, c, seed: f32| {
            let v: Vec<f32> = (0..r * c)
                .map(|k| ((k as f32 * 0.37 + seed).sin()) * 0.2)
                .collect();
            Tensor::from_vec(v, (r, c), &dev).unwrap()
        };
        let mlp = Mlp::new(w(i, h, 1.0), w(i, h, 2.0), w(h, i, 3.0)).unwrap();
        let x: Vec<f32> = (0..3 * h).map(|k| (k as f32 * 0.11).cos()).collect();
        let fast = mlp.forward_rows_f32(&x, 3).unwrap();
        let slow: Vec<f32> = mlp
            .forward(&Tensor::from_vec(x, (3, h), &dev).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (a, b) in fast.iter().zip(&slow) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
