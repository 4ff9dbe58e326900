//! bf16 and f16 inputs give finite outputs close to f32 (softmax always runs in f32).
//!
//! Tolerance: relative to the output's max magnitude, 3e-2 for bf16 (8-bit mantissa through
//! six matmuls) and 5e-3 for f16.
#![allow(clippy::disallowed_methods)] // tests read results on the host

mod common;

use candle_core::{DType, Tensor};
use common::{random_layer, rope_for, run_every_path, PATHS};
use fixtures::max_abs_diff;
use mla::{Mla, MlaWeights, QueryWeights};

fn check(dtype: DType, rel_tol: f32) {
    for q_lora in [false, true] {
        let mla32 = random_layer(q_lora, 0.2);
        let mla = mla32.to_dtype(dtype).unwrap();
        let x32 = fixtures::seeded_randn(&[1, 7, 64], 1.0, 18);
        let x = x32.to_dtype(dtype).unwrap();
        let want = &run_every_path(&mla32, &x32, 1e-5)[0].1;
        let scale = common::max_abs(want);
        // Every path in the low precision, checked against f32 (and so against each other).
        for (name, y) in run_every_path(&mla, &x, f32::INFINITY) {
            assert_eq!(y.dtype(), dtype);
            let y = y.to_dtype(DType::F32).unwrap();
            let finite: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            assert!(finite.iter().all(|v| v.is_finite()), "{name}: non-finite");
            let d = max_abs_diff(&y, want) / scale;
            println!("{dtype:?} q_lora={q_lora} {name}: max |diff| / max |y| = {d:.2e}");
            assert!(
                d <= rel_tol,
                "{dtype:?} {name}: relative diff {d:e} > {rel_tol:e}"
            );
        }
    }
}

#[test]
fn bf16_close_to_f32() {
    check(DType::BF16, 3e-2);
}

#[test]
fn f16_close_to_f32() {
    check(DType::F16, 5e-3);
}

/// The weights with every projection matrix converted by `f` and the norms kept.
fn map_matrices(w: &MlaWeights, f: impl Fn(&Tensor) -> Tensor) -> MlaWeights {
    let f = |m: &linear::Matrix| -> linear::Matrix {
        f(m.as_dense().expect("the random layers are dense")).into()
    };
    MlaWeights {
        query: match &w.query {
            QueryWeights::Direct { q_proj } => QueryWeights::Direct { q_proj: f(q_proj) },
            QueryWeights::LowRank {
                q_a_proj,
                q_a_layernorm,
                q_b_proj,
            } => QueryWeights::LowRank {
                q_a_proj: f(q_a_proj),
                q_a_layernorm: q_a_layernorm.clone(),
                q_b_proj: f(q_b_proj),
            },
        },
        kv_a_proj_with_mqa: f(&w.kv_a_proj_with_mqa),
        kv_a_layernorm: w.kv_a_layernorm.clone(),
        kv_b_proj: f(&w.kv_b_proj),
        o_proj: f(&w.o_proj),
    }
}

/// bf16/f16 matrices with f32 norms compute in f32: equal (up to summation order) to an f32
/// layer holding the same rounded matrices, on every path, prefill and decode. `kv_b_proj`'s
/// absorbed blocks stay narrow too (half the bytes a decode step reads).
#[test]
fn narrow_matrices_with_f32_activations() {
    for dtype in [DType::BF16, DType::F16] {
        for q_lora in [false, true] {
            let mla32 = random_layer(q_lora, 0.2);
            let narrow = |t: &Tensor| t.to_dtype(dtype).unwrap();
            let rounded = |t: &Tensor| narrow(t).to_dtype(DType::F32).unwrap();
            let cfg = mla32.config().clone();
            let mixed = Mla::new(cfg.clone(), map_matrices(mla32.weights(), narrow)).unwrap();
            let exact = Mla::new(cfg, map_matrices(mla32.weights(), rounded)).unwrap();
            assert_eq!(mixed.dtype(), DType::F32);
            // A decode step reads kv_b_proj as its absorbed blocks: in the narrow dtype, they
            // save what the stored matrix saves.
            assert_eq!(
                exact.decode_weight_bytes() - mixed.decode_weight_bytes(),
                exact.weights().bytes() - mixed.weights().bytes(),
                "{dtype:?}: the absorbed blocks keep the narrow dtype"
            );
            let x = fixtures::seeded_randn(&[1, 7, 64], 1.0, 86);
            let want = &run_every_path(&exact, &x, 1e-5)[0].1;
            for (name, y) in run_every_path(&mixed, &x, 1e-4) {
                let d = max_abs_diff(&y, want);
                assert!(d < 1e-4, "{dtype:?} q_lora={q_lora} {name}: {d:e}");
            }
        }
    }
}

/// `‖a - b‖ / ‖b‖`.
fn rel_rms(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| -> f32 {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    norm(&(a - b).unwrap()) / norm(b)
}

/// A layer with 8-bit or 4-bit projections computes what the same layer holding the
/// dequantised values in f32 computes: up to summation order past the row kernels' rows
/// (`Isa::quant_row_kernel_rows`) where the CPU's GEMM takes f32 activations, up to the
/// activations' 8-bit rounding below that and where it rounds them too
/// (`Isa::rounds_quant_gemm_activations`), on every path.
#[test]
fn quantised_matrices_equal_their_dequantised_twin() {
    for format in [linear::QuantFormat::Q8, linear::QuantFormat::Q4] {
        for q_lora in [false, true] {
            let mut quant = random_layer(q_lora, 0.2);
            quant.quantize(format).unwrap();
            let dense = |m: &linear::Matrix| -> linear::Matrix { m.dequantize().unwrap().into() };
            let w = quant.weights();
            let twin = MlaWeights {
                query: match &w.query {
                    QueryWeights::Direct { q_proj } => QueryWeights::Direct {
                        q_proj: dense(q_proj),
                    },
                    QueryWeights::LowRank {
                        q_a_proj,
                        q_a_layernorm,
                        q_b_proj,
                    } => QueryWeights::LowRank {
                        q_a_proj: dense(q_a_proj),
                        q_a_layernorm: q_a_layernorm.clone(),
                        q_b_proj: dense(q_b_proj),
                    },
                },
                kv_a_proj_with_mqa: dense(&w.kv_a_proj_with_mqa),
                kv_a_layernorm: w.kv_a_layernorm.clone(),
                kv_b_proj: w.kv_b_proj.clone(),
                o_proj: dense(&w.o_proj),
            };
            assert_eq!(w.o_proj.format(), format.name());
            let exact = Mla::new(quant.config().clone(), twin).unwrap();
            // Rounded activations differ from the twin's product by a small relative amount.
            let bound = match format {
                linear::QuantFormat::Q8 | linear::QuantFormat::Q6K => 2e-2,
                linear::QuantFormat::Q4
                | linear::QuantFormat::Q4K
                | linear::QuantFormat::Q5
                | linear::QuantFormat::Q5K
                | linear::QuantFormat::Q3K
                | linear::QuantFormat::Q2K => 5e-2,
            };
            // More than the row kernels take: the GEMM (this CPU's path).
            let isa = linear::Isa::detect();
            let rows = isa.quant_row_kernel_rows() + 8;
            let x = fixtures::seeded_randn(&[1, rows, 64], 1.0, 145);
            let rounds = isa.rounds_quant_gemm_activations();
            for path in PATHS {
                let mut rope = rope_for(&exact);
                let want = exact.forward(&x, 0, &mut rope, None, path).unwrap();
                let y = quant.forward(&x, 0, &mut rope, None, path).unwrap();
                if rounds {
                    let rel = rel_rms(&y, &want);
                    assert!(
                        rel < bound,
                        "{format} q_lora={q_lora} {rows} rows {path:?}: relative RMS {rel:e}"
                    );
                } else {
                    let d = max_abs_diff(&y, &want);
                    assert!(
                        d < 1e-4,
                        "{format} q_lora={q_lora} {rows} rows {path:?}: {d:e}"
                    );
                }
            }
            // A few rows (decode, short prefill): the activations are rounded to 8 bits per
            // group on every path.
            let x = x.narrow(1, 0, 7).unwrap();
            let want = &run_every_path(&exact, &x, 1e-5)[0].1;
            for (name, y) in run_every_path(&quant, &x, f32::INFINITY) {
                let rel = rel_rms(&y, want);
                assert!(
                    rel < bound,
                    "{format} q_lora={q_lora} {name}: relative RMS {rel:e}"
                );
            }
        }
    }
}

/// `kv_b_proj` in FP8 blocks (as DeepSeek-V3 ships it) stays FP8 in the absorbed per-head
/// blocks (a quarter of the f32 bytes each decode step reads) and computes what the layer
/// holding its f32 dequantisation computes, on every path, with the fused CPU kernel and
/// with candle's ops.
#[test]
fn fp8_kv_b_proj_stays_fp8_and_equals_its_dequantised_twin() {
    use candle_core::Device;
    for q_lora in [false, true] {
        let mla32 = random_layer(q_lora, 0.2);
        let cfg = mla32.config().clone();
        let kv_b = mla32.weights().kv_b_proj.as_dense().unwrap().clone();
        let (rows, cols) = kv_b.dims2().unwrap();
        // Blocks of 16 x 16: each head's 16 key rows and 16 value rows are whole block rows,
        // as DeepSeek's 128 x 128 blocks are for its 128 + 128 rows per head.
        let block = (16, 16);
        let (sn, sk) = (rows / block.0, cols / block.1);
        let scales: Vec<f32> = (0..sn * sk)
            .map(|i| 0.01 * (1.0 + 0.1 * i as f32))
            .collect();
        let scales = Tensor::from_vec(scales, (sn, sk), &Device::Cpu).unwrap();
        let q = (kv_b * 100.0).unwrap().to_dtype(DType::F8E4M3).unwrap();
        let fp8 = linear::Fp8Matrix::new(q, &scales, block).unwrap();
        let twin_kv_b = fp8.dequantize().unwrap();
        let with_kv_b = |m: linear::Matrix| {
            let mut w = mla32.weights().clone();
            w.kv_b_proj = m;
            Mla::new(cfg.clone(), w).unwrap()
        };
        let mixed = with_kv_b(fp8.into());
        let exact = with_kv_b(twin_kv_b.into());
        let values = rows * cols;
        let saved = exact.decode_weight_bytes() - mixed.decode_weight_bytes();
        // The absorbed blocks hold every value once: f32 (4 bytes) against e4m3 (1) plus one
        // f32 scale per 256 values.
        assert_eq!(saved, 3 * values - 4 * sn * sk, "q_lora={q_lora}");
        let x = fixtures::seeded_randn(&[1, 7, 64], 1.0, 87);
        let want = &run_every_path(&exact, &x, 1e-5)[0].1;
        for fused in [true, false] {
            let mixed = mixed.clone().with_fused_cpu(fused);
            for (name, y) in run_every_path(&mixed, &x, 1e-4) {
                let d = max_abs_diff(&y, want);
                assert!(d < 1e-5, "q_lora={q_lora} fused={fused} {name}: {d:e}");
            }
        }
        // bf16 compute keeps the FP8 blocks (candle's ops around the FP8 kernels).
        let bf16 = mixed.to_dtype(DType::BF16).unwrap();
        assert_eq!(
            bf16.decode_weight_bytes(),
            mixed.decode_weight_bytes() - {
                let w = mla32.weights();
                // The other matrices and the norms at half their f32 bytes.
                (w.bytes() - w.kv_b_proj.bytes()) / 2
            }
        );
        let scale = common::max_abs(want);
        for (name, y) in run_every_path(&bf16, &x.to_dtype(DType::BF16).unwrap(), f32::INFINITY) {
            let d = max_abs_diff(&y.to_dtype(DType::F32).unwrap(), want) / scale;
            assert!(d < 3e-2, "q_lora={q_lora} bf16 {name}: {d:e}");
        }
    }
}

/// A `kv_b_proj` in 8/4-bit blocks (an older GGUF's whole `attn_kv_b`) computes what the
/// layer holding its dequantised values computes, on every path: it is dequantised once, so
/// the expanded path does not round its activations to 8 bits where the absorbed blocks
/// (which cannot keep the blocks) would not.
#[test]
fn block_quantised_kv_b_proj_equals_its_dequantised_twin() {
    for format in [linear::QuantFormat::Q8, linear::QuantFormat::Q4] {
        let mla32 = random_layer(false, 0.2);
        let quant = mla32.weights().kv_b_proj.quantize(format).unwrap();
        let with_kv_b = |m: linear::Matrix| {
            let mut w = mla32.weights().clone();
            w.kv_b_proj = m;
            Mla::new(mla32.config().clone(), w).unwrap()
        };
        let exact = with_kv_b(quant.dequantize().unwrap().into());
        let mixed = with_kv_b(quant);
        assert_eq!(mixed.weights().kv_b_proj.format(), "f32");
        let x = fixtures::seeded_randn(&[1, 7, 64], 1.0, 88);
        let want = &run_every_path(&exact, &x, 1e-5)[0].1;
        for (name, y) in run_every_path(&mixed, &x, 1e-5) {
            let d = max_abs_diff(&y, want);
            assert!(d < 1e-5, "{format:?} {name}: {d:e}");
        }
    }
}

/// The absorbed blocks as a GGUF file stores them apart (llama.cpp's `attn_k_b` / `attn_v_b`,
/// groups along each block's input), multiplied with f32 activations, compute what the layer
/// holding their dequantised values computes on every path, decode reads fewer bytes, and
/// blocks that do not fit are refused with nothing changed.
#[test]
fn absorbed_blocks_as_stored_equal_their_dequantised_twin() {
    use linear::{QuantFormat, QuantMatrix};
    let mla32 = random_layer(false, 0.2);
    let c = mla32.config().clone();
    let (h, n, v, r) = (
        c.num_heads,
        c.qk_nope_head_dim,
        c.v_head_dim,
        c.kv_lora_rank,
    );
    let dense = mla32
        .weights()
        .kv_b_proj
        .as_dense()
        .unwrap()
        .reshape((h, n + v, r))
        .unwrap();
    for format in [QuantFormat::Q8, QuantFormat::Q4] {
        // Each head's W_UKᵀ [R, n] and W_UV [v, R] in blocks, and kv_b_proj joined from
        // their dequantised values (what the GGUF loader serves).
        let blocks = |rows: Tensor| -> Vec<QuantMatrix> {
            (0..h)
                .map(|head| QuantMatrix::quantize(&rows.get(head).unwrap(), format).unwrap())
                .collect()
        };
        let uk = blocks(
            dense
                .narrow(1, 0, n)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap(),
        );
        let uv = blocks(dense.narrow(1, n, v).unwrap().contiguous().unwrap());
        let values = |b: &[QuantMatrix]| {
            Tensor::stack(
                &b.iter()
                    .map(|q| q.dequantize().unwrap())
                    .collect::<Vec<_>>(),
                0,
            )
            .unwrap()
        };
        let joined = Tensor::cat(&[values(&uk).transpose(1, 2).unwrap(), values(&uv)], 1)
            .unwrap()
            .reshape((h * (n + v), r))
            .unwrap();
        let mut w = mla32.weights().clone();
        w.kv_b_proj = joined.into();
        let exact = Mla::new(c.clone(), w).unwrap();
        let x = fixtures::seeded_randn(&[1, 7, 64], 1.0, 91);
        let want = &run_every_path(&exact, &x, 1e-5)[0].1;

        let mut stored = exact.clone();
        // Refused, and nothing changes: a head short, and blocks of other values.
        let short = stored.use_absorbed_blocks(Some(uk[1..].to_vec()), None);
        assert!(
            short.unwrap_err().to_string().contains("W_UK"),
            "{format:?}"
        );
        let other = blocks(fixtures::seeded_randn(&[h, v, r], 0.2, 5));
        let err = stored
            .use_absorbed_blocks(None, Some(other))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not hold kv_b_proj's values"),
            "{format:?}: {err}"
        );
        assert_eq!(stored.decode_weight_bytes(), exact.decode_weight_bytes());

        stored
            .use_absorbed_blocks(Some(uk.clone()), Some(uv.clone()))
            .unwrap();
        assert!(stored.decode_weight_bytes() < exact.decode_weight_bytes());
        for (name, y) in run_every_path(&stored, &x, 1e-5) {
            let d = max_abs_diff(&y, want);
            assert!(d < 1e-5, "{format:?} {name}: {d:e}");
        }
        // One half alone (a GGUF whose attn_k_b is f16 and attn_v_b Q8_0).
        let mut half = exact.clone();
        half.use_absorbed_blocks(None, Some(uv)).unwrap();
        for (name, y) in run_every_path(&half, &x, 1e-5) {
            assert!(max_abs_diff(&y, want) < 1e-5, "{format:?} half {name}");
        }
    }
}
