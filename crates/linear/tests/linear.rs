//! `linear` against candle's matmul in every regime and dtype combination, on every kernel
//! path this machine runs (`Isa::supported`: the detected one down to the portable one).
#![allow(clippy::disallowed_methods)] // tests read results on the host

use candle_core::{DType, Device, Tensor};
use linear::Isa;

mod common;
use common::max_diff;

#[test]
fn matches_matmul_for_every_dtype_and_row_count() {
    let dev = Device::Cpu;
    let w32 = Tensor::randn(0f32, 1.0, (96, 200), &dev).unwrap();
    for wdt in [DType::F32, DType::BF16, DType::F16] {
        let w = w32.to_dtype(wdt).unwrap();
        // The reference: f32 matmul on the exactly widened weights.
        let w_ref = w.to_dtype(DType::F32).unwrap();
        // x holds 2 x rows rows: 2 to 32 take the matrix-vector kernel, 34 and 80 the GEMM.
        for rows in [1usize, 3, 8, 16, 17, 40] {
            let x = Tensor::randn(0f32, 1.0, (2, rows, 200), &dev).unwrap();
            let want = x.broadcast_matmul(&w_ref.t().unwrap()).unwrap();
            for isa in Isa::supported() {
                let y = linear::linear_with(isa, &x, &w).unwrap();
                assert_eq!(y.dims(), &[2, rows, 96]);
                assert_eq!(y.dtype(), DType::F32);
                let d = max_diff(&y, &want);
                assert!(d < 1e-4, "{isa} {wdt:?} rows {rows}: {d}");
            }
        }
    }
}

#[test]
fn half_activations_come_back_in_their_dtype() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (16, 64), &dev).unwrap();
    for dt in [DType::BF16, DType::F16] {
        let x = Tensor::randn(0f32, 1.0, (1, 64), &dev)
            .unwrap()
            .to_dtype(dt)
            .unwrap();
        let want = x
            .to_dtype(DType::F32)
            .unwrap()
            .matmul(
                &w.to_dtype(dt)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .t()
                    .unwrap(),
            )
            .unwrap();
        for isa in Isa::supported() {
            let y = linear::linear_with(isa, &x, &w.to_dtype(dt).unwrap()).unwrap();
            assert_eq!(y.dtype(), dt);
            assert!(max_diff(&y, &want) < 0.1, "{isa} {dt:?}");
        }
    }
}

#[test]
fn non_contiguous_weights_fall_back_to_matmul() {
    let dev = Device::Cpu;
    let wt = Tensor::randn(0f32, 1.0, (64, 16), &dev).unwrap();
    let w = wt.t().unwrap(); // [16, 64], strided
    let x = Tensor::randn(0f32, 1.0, (1, 64), &dev).unwrap();
    assert!(linear::matmul_rows_with(Isa::portable(), &w, &[0.0; 64], 1).is_none());
    let want = x.matmul(&wt).unwrap();
    for isa in Isa::supported() {
        let y = linear::linear_with(isa, &x, &w).unwrap();
        assert!(max_diff(&y, &want) < 1e-5, "{isa}");
    }
}

#[test]
fn shape_mismatch_is_an_error_naming_both_shapes() {
    let dev = Device::Cpu;
    let w = Tensor::zeros((8, 32), DType::F32, &dev).unwrap();
    let x = Tensor::zeros((1, 31), DType::F32, &dev).unwrap();
    let err = linear::linear(&x, &w).unwrap_err().to_string();
    assert!(err.contains("[1, 31]") && err.contains("[8, 32]"), "{err}");
}

#[test]
fn default_entry_points_use_the_detected_path() {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (40, 100), &dev)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 100), &dev).unwrap();
    let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    // Same path, same summation order: bit-identical.
    assert_eq!(
        linear::matmul_rows(&w, &xs, 2),
        linear::matmul_rows_with(Isa::detect(), &w, &xs, 2)
    );
    let (a, b) = (
        linear::linear(&x, &w).unwrap(),
        linear::linear_with(Isa::detect(), &x, &w).unwrap(),
    );
    assert_eq!(max_diff(&a, &b), 0.0);
    println!(
        "detected: {}, supported: {:?}",
        Isa::detect(),
        Isa::supported()
    );
}

#[test]
fn each_row_is_computed_the_same_whatever_the_other_rows() {
    // Up to `Matrix::batch_invariant_rows` (at least GEMV_MAX_ROWS; unbounded for quantised
    // matrices in panels on AVX512-VNNI CPUs) rows, a row's result must
    // not depend on the rows batched with it (a serving engine relies on it for batch
    // invariance): bit for bit the 1-row result, on every path and weight dtype, for odd and
    // even row counts (rows go two at a time).
    let dev = Device::Cpu;
    let w32 = Tensor::randn(0f32, 1.0, (37, 204), &dev).unwrap();
    let mut formats: Vec<linear::Matrix> = [DType::F32, DType::BF16, DType::F16]
        .into_iter()
        .map(|d| w32.to_dtype(d).unwrap().into())
        .collect();
    let dense = linear::Matrix::from(w32.clone());
    formats.push(dense.quantize(linear::QuantFormat::Q8).unwrap());
    formats.push(dense.quantize(linear::QuantFormat::Q4).unwrap());
    // FP8 blocks (e4m3 of the values, unit scales; no NaN code, so the fast widening).
    let q = w32.to_dtype(DType::F8E4M3).unwrap();
    let ones = Tensor::ones((1, 2), DType::F32, &dev).unwrap();
    formats.push(linear::Fp8Matrix::new(q, &ones, (128, 128)).unwrap().into());
    // bf16 weights against bf16-rounded activations (`vdpbf16ps` where the CPU has it).
    formats.push(linear::Matrix::from(w32.to_dtype(DType::BF16).unwrap()).with_bf16_activations());
    for w in &formats {
        for isa in Isa::supported() {
            let limit = w.batch_invariant_rows(isa);
            assert!(limit >= linear::GEMV_MAX_ROWS);
            // (An unbounded limit, quantised matrices in panels, checked at 95 rows.)
            for rows in [2usize, 5, linear::GEMV_MAX_ROWS, limit.min(95)] {
                let x = Tensor::randn(0f32, 1.0, (rows, 204), &dev).unwrap();
                let all = w.forward_with(isa, &x).unwrap();
                for i in 0..rows {
                    let one = w.forward_with(isa, &x.narrow(0, i, 1).unwrap()).unwrap();
                    let d = max_diff(&all.narrow(0, i, 1).unwrap(), &one);
                    assert_eq!(d, 0.0, "{isa} {} {rows} rows, row {i}", w.format());
                }
            }
        }
    }
}

#[test]
fn row_invariant_products_keep_every_row_past_gemv_max_rows() {
    // `linear_row_invariant` (MoE routers): 100 rows, each bit for bit its 1-row result, and
    // the same product as `linear` up to summation order.
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (100, 204), &dev).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let w = Tensor::randn(0f32, 1.0, (37, 204), &dev)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        let all = linear::linear_row_invariant(&x, &w).unwrap();
        for i in 0..100 {
            let one = linear::linear_row_invariant(&x.narrow(0, i, 1).unwrap(), &w).unwrap();
            assert_eq!(
                max_diff(&all.narrow(0, i, 1).unwrap(), &one),
                0.0,
                "{dtype:?} row {i}"
            );
        }
        let gemm = linear::linear(&x, &w).unwrap();
        assert!(max_diff(&all, &gemm) < 1e-3, "{dtype:?}");
    }
}

#[test]
fn row_invariant_blocks_are_each_blocks_product_bit_for_bit() {
    // `linear_row_invariant_blocks` (MLA's absorbed per-head products): each block's rows the
    // same bits as `linear_row_invariant` on that block alone, for every weight dtype, one row
    // and several, contiguous or not, and the f64 product up to f32 summation error.
    let dev = Device::Cpu;
    let (b, n, k) = (5, 37, 130);
    let w32 = Tensor::randn(0f32, 1.0, (b, n, k), &dev).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let w = w32.to_dtype(dtype).unwrap();
        // A strided view of the same blocks takes the per-block route.
        let wide = Tensor::cat(&[&w, &w], 2).unwrap();
        let strided = wide.narrow(2, 0, k).unwrap();
        assert!(!strided.is_contiguous());
        for m in [1usize, 3] {
            let x = Tensor::randn(0f32, 1.0, (b, m, k), &dev).unwrap();
            let want = Tensor::stack(
                &(0..b)
                    .map(|i| {
                        let (x, w) = (x.get(i).unwrap(), w.get(i).unwrap());
                        linear::linear_row_invariant(&x, &w).unwrap()
                    })
                    .collect::<Vec<_>>(),
                0,
            )
            .unwrap();
            for w in [&w, &strided] {
                let y = linear::linear_row_invariant_blocks(&x, w).unwrap();
                assert_eq!(y.dims(), &[b, m, n]);
                assert_eq!(max_diff(&y, &want), 0.0, "{dtype:?} {m} rows");
            }
            let oracle = x
                .to_dtype(DType::F64)
                .unwrap()
                .matmul(&w.to_dtype(DType::F64).unwrap().transpose(1, 2).unwrap())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            assert!(max_diff(&want, &oracle) < 1e-4, "{dtype:?} {m} rows");
        }
    }
    // Activations that are not contiguous f32 are read as f32 first; the result takes their
    // dtype.
    let x = Tensor::randn(0f32, 1.0, (b, k, 2), &dev).unwrap();
    let x = x.transpose(1, 2).unwrap();
    let y = linear::linear_row_invariant_blocks(&x, &w32).unwrap();
    let want = linear::linear_row_invariant_blocks(&x.contiguous().unwrap(), &w32).unwrap();
    assert_eq!(max_diff(&y, &want), 0.0);
    let half = x.to_dtype(DType::BF16).unwrap();
    let y = linear::linear_row_invariant_blocks(&half, &w32).unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    // Mismatched blocks or inner sizes are errors naming the shapes, not panics.
    let bad = Tensor::zeros((b + 1, 2, k), DType::F32, &dev).unwrap();
    let err = linear::linear_row_invariant_blocks(&bad, &w32).unwrap_err();
    assert!(err.to_string().contains("[6, 2, 130]"), "{err}");
    let bad = Tensor::zeros((b, 2, k - 1), DType::F32, &dev).unwrap();
    assert!(linear::linear_row_invariant_blocks(&bad, &w32).is_err());
    // No rows: an empty result of the right shape.
    let empty = Tensor::zeros((b, 0, k), DType::F32, &dev).unwrap();
    let y = linear::linear_row_invariant_blocks(&empty, &w32).unwrap();
    assert_eq!(y.dims(), &[b, 0, n]);
}
