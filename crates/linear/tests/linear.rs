//! `linear` against candle's matmul in every regime and dtype combination.

use candle_core::{DType, Device, Tensor};

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn matches_matmul_for_every_dtype_and_row_count() {
    let dev = Device::Cpu;
    let w32 = Tensor::randn(0f32, 1.0, (96, 200), &dev).unwrap();
    for wdt in [DType::F32, DType::BF16, DType::F16] {
        let w = w32.to_dtype(wdt).unwrap();
        // The reference: f32 matmul on the exactly widened weights.
        let w_ref = w.to_dtype(DType::F32).unwrap();
        for rows in [1usize, 3, 8, 9, 40] {
            let x = Tensor::randn(0f32, 1.0, (2, rows, 200), &dev).unwrap();
            let y = linear::linear(&x, &w).unwrap();
            assert_eq!(y.dims(), &[2, rows, 96]);
            assert_eq!(y.dtype(), DType::F32);
            let want = x.broadcast_matmul(&w_ref.t().unwrap()).unwrap();
            let d = max_diff(&y, &want);
            assert!(d < 1e-4, "{wdt:?} rows {rows}: {d}");
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
        let y = linear::linear(&x, &w.to_dtype(dt).unwrap()).unwrap();
        assert_eq!(y.dtype(), dt);
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
        assert!(max_diff(&y, &want) < 0.1);
    }
}

#[test]
fn non_contiguous_weights_fall_back_to_matmul() {
    let dev = Device::Cpu;
    let wt = Tensor::randn(0f32, 1.0, (64, 16), &dev).unwrap();
    let w = wt.t().unwrap(); // [16, 64], strided
    let x = Tensor::randn(0f32, 1.0, (1, 64), &dev).unwrap();
    let y = linear::linear(&x, &w).unwrap();
    let want = x.matmul(&wt).unwrap();
    assert!(max_diff(&y, &want) < 1e-5);
}

#[test]
fn shape_mismatch_is_an_error_naming_both_shapes() {
    let dev = Device::Cpu;
    let w = Tensor::zeros((8, 32), DType::F32, &dev).unwrap();
    let x = Tensor::zeros((1, 31), DType::F32, &dev).unwrap();
    let err = linear::linear(&x, &w).unwrap_err().to_string();
    assert!(err.contains("[1, 31]") && err.contains("[8, 32]"), "{err}");
}
