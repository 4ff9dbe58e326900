//! FP8 (e4m3, block scales) products against an f64 oracle, on every kernel path this machine
//! runs, both regimes (matrix-vector and GEMM), with partial edge blocks and every e4m3 value.
#![allow(clippy::disallowed_methods)] // tests read results on the host

use candle_core::{DType, Device, Tensor};
use float8::F8E4M3;
use std::sync::Arc;

use linear::{ByteOwner, Fp8Matrix, Isa, SharedBytes};

mod common;
use common::max_diff;

/// e4m3fn by its definition, in f64: `(-1)^s · 2^(e-7) · (1 + m/8)`, subnormals
/// `(-1)^s · 2^-6 · m/8`, `S.1111.111` NaN.
fn e4m3_f64(b: u8) -> f64 {
    let s = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (((b >> 3) & 0xf) as i32, (b & 7) as f64);
    if e == 15 && m == 7.0 {
        return f64::NAN;
    }
    s * if e == 0 {
        2f64.powi(-6) * m / 8.0
    } else {
        2f64.powi(e - 7) * (1.0 + m / 8.0)
    }
}

#[test]
fn candle_decodes_every_e4m3_value_exactly() {
    // The dequantising oracle (`Fp8Matrix::dequantize`) goes through candle's F8E4M3 -> f32.
    let bytes: Vec<F8E4M3> = (0..=255u8).map(F8E4M3::from_bits).collect();
    let t = Tensor::from_vec(bytes, 256, &Device::Cpu).unwrap();
    let v: Vec<f32> = t.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    for (b, got) in v.into_iter().enumerate() {
        let want = e4m3_f64(b as u8);
        assert!(
            (want.is_nan() && got.is_nan()) || got as f64 == want,
            "byte {b:#04x}: {got} vs {want}"
        );
    }
    assert_eq!(e4m3_f64(0x7e), 448.0);
    assert_eq!(e4m3_f64(0xfe), -448.0);
    assert_eq!(e4m3_f64(0x01), 2f64.powi(-9));
    assert_eq!(e4m3_f64(0x80), 0.0);
}

/// Pseudo-random finite e4m3 bytes (NaN encodings avoided; every other byte appears).
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let b = (s >> 24) as u8;
            if b & 0x7f == 0x7f {
                b ^ 1
            } else {
                b
            }
        })
        .collect()
}

struct Case {
    w: Fp8Matrix,
    /// The same matrix over the bytes in place ([`Fp8Matrix::from_shared`]).
    shared: Fp8Matrix,
    q: Vec<u8>,
    scale: Vec<f32>,
    n: usize,
    k: usize,
    block: (usize, usize),
}

fn case(n: usize, k: usize, block: (usize, usize), seed: u64) -> Case {
    let dev = Device::Cpu;
    let q = bytes(n * k, seed);
    let (sn, sk) = (n.div_ceil(block.0), k.div_ceil(block.1));
    // Scales of the magnitude DeepSeek's have (e4m3 max 448 over the block's max |w|).
    let scale: Vec<f32> = (0..sn * sk)
        .map(|i| 1e-4 * (1.0 + (i as f32 * 0.37).sin().abs()))
        .collect();
    let qt = Tensor::from_vec(
        q.iter().map(|&b| F8E4M3::from_bits(b)).collect::<Vec<_>>(),
        (n, k),
        &dev,
    )
    .unwrap();
    let st = Tensor::from_vec(scale.clone(), (sn, sk), &dev).unwrap();
    Case {
        w: Fp8Matrix::new(qt, &st, block).unwrap(),
        shared: shared(q.clone(), (n, k), &st, block),
        q,
        scale,
        n,
        k,
        block,
    }
}

/// An [`Fp8Matrix`] over `q` held elsewhere (as a memory-mapped checkpoint's bytes are).
fn shared(q: Vec<u8>, dims: (usize, usize), scale: &Tensor, block: (usize, usize)) -> Fp8Matrix {
    let len = q.len();
    let owner: Arc<ByteOwner> = Arc::new(q);
    let w = Fp8Matrix::from_shared(SharedBytes::new(owner, 0..len).unwrap(), dims, scale, block)
        .unwrap();
    assert!(w.is_shared());
    w
}

/// `Σ_c x[j, c] · e4m3(q[r, c]) · scale[r / bn, c / bk]` in f64, and `Σ |terms|` (the scale
/// of the f32 rounding error).
fn oracle(c: &Case, xs: &[f32], m: usize) -> Vec<(f64, f64)> {
    let sk = c.k.div_ceil(c.block.1);
    let mut out = vec![(0.0, 0.0); m * c.n];
    for j in 0..m {
        for r in 0..c.n {
            let (mut sum, mut abs) = (0f64, 0f64);
            for col in 0..c.k {
                let s = c.scale[(r / c.block.0) * sk + col / c.block.1] as f64;
                let term = xs[j * c.k + col] as f64 * e4m3_f64(c.q[r * c.k + col]) * s;
                sum += term;
                abs += term.abs();
            }
            out[j * c.n + r] = (sum, abs);
        }
    }
    out
}

fn check(c: &Case, m: usize) {
    check_at(c, m, 3.0)
}

/// [`check`] with activations of magnitude up to `size`.
fn check_at(c: &Case, m: usize, size: f32) {
    let dev = Device::Cpu;
    let xs: Vec<f32> = (0..m * c.k)
        .map(|i| (i as f32 * 0.613).sin() * size)
        .collect();
    let x = Tensor::from_vec(xs.clone(), (m, c.k), &dev).unwrap();
    let want = oracle(c, &xs, m);
    for isa in Isa::supported() {
        let product = |w| -> Vec<f32> {
            let y = linear::linear_fp8_with(isa, &x, w).unwrap();
            y.flatten_all().unwrap().to_vec1().unwrap()
        };
        let y = product(&c.w);
        // The bytes in place are the same bytes: the same kernel, the same result.
        assert_eq!(y, product(&c.shared), "{isa}: shared bytes (m {m})");
        for (i, (g, (e, abs))) in y.iter().zip(&want).enumerate() {
            // f32 summation: error within a few ulps of the sum of |terms|.
            assert!(
                (*g as f64 - e).abs() <= 1e-6 * abs,
                "{isa}: [{}, {}] {g} vs {e} (n {}, k {}, block {:?}, m {m}, size {size})",
                i / c.n,
                i % c.n,
                c.n,
                c.k,
                c.block
            );
        }
    }
}

#[test]
fn deepseek_blocks_with_partial_edges_in_both_regimes() {
    // 128 x 128 blocks; N and K not multiples of 128 (partial last row and column blocks).
    let c = case(300, 333, (128, 128), 1);
    for m in [1, 3, 8, 9, 20] {
        check(&c, m);
    }
}

#[test]
fn small_odd_blocks_in_both_regimes() {
    // Blocks that do not divide the SIMD widths, tiles or tasks: every boundary misaligned.
    for (n, k, block, seed) in [
        (37, 53, (5, 7), 2),
        (9, 200, (3, 33), 3),
        (64, 17, (64, 17), 4),
    ] {
        let c = case(n, k, block, seed);
        for m in [1, 2, 7, 12] {
            check(&c, m);
        }
    }
}

#[test]
fn tiny_and_huge_activations_keep_the_products_precision() {
    // The AVX2 kernel of NaN-free bytes multiplies the activations by 2⁹⁰ and widens the
    // weights to their values over 2¹²⁰: 1e-25 keeps the products normal, 1e12 and 1e30
    // overflow the scaled activations and must be summed again at their own scale.
    let c = case(40, 300, (128, 128), 5);
    for size in [1e-25, 1e12, 1e30] {
        for m in [1, 9] {
            check_at(&c, m, size);
        }
    }
}

#[test]
fn nan_encodings_propagate_on_every_path() {
    let dev = Device::Cpu;
    for nan in [0x7fu8, 0xff] {
        let (n, k) = (8, 40);
        let mut q = vec![0x38u8; n * k]; // 1.0
        q[3 * k + 17] = nan; // row 3 holds one NaN
        let qt = Tensor::from_vec(
            q.iter().map(|&b| F8E4M3::from_bits(b)).collect::<Vec<_>>(),
            (n, k),
            &dev,
        )
        .unwrap();
        let one = Tensor::ones((1, 1), DType::F32, &dev).unwrap();
        let w = Fp8Matrix::new(qt, &one, (128, 128)).unwrap();
        let in_place = shared(q.clone(), (n, k), &one, (128, 128));
        for m in [1, 10] {
            let x = Tensor::ones((m, k), DType::F32, &dev).unwrap();
            for isa in Isa::supported() {
                for w in [&w, &in_place] {
                    let y: Vec<Vec<f32>> = linear::linear_fp8_with(isa, &x, w)
                        .unwrap()
                        .to_vec2()
                        .unwrap();
                    for row in &y {
                        assert!(row[3].is_nan(), "{isa} m {m}: {row:?}");
                        assert!(row.iter().enumerate().all(|(r, v)| r == 3 || *v == 40.0));
                    }
                }
            }
        }
        // Parts and transposes: the part holding the NaN code still propagates it (its
        // kernels keep the checked widening), the part without one computes as usual.
        let ones = Tensor::ones((2, 5), DType::F32, &dev).unwrap();
        let blocked = [
            Fp8Matrix::new(w.weight().unwrap(), &ones, (4, 8)).unwrap(),
            shared(q, (n, k), &ones, (4, 8)),
        ];
        for w in &blocked {
            let product = |part: &Fp8Matrix, width: usize| -> Vec<f32> {
                let x = Tensor::ones((1, width), DType::F32, &dev).unwrap();
                let y = linear::linear_fp8(&x, part).unwrap();
                y.flatten_all().unwrap().to_vec1().unwrap()
            };
            let with = product(&w.rows(0, 4).unwrap(), k);
            assert!(
                with[3].is_nan() && with[..3].iter().all(|&v| v == 40.0),
                "{with:?}"
            );
            let without = product(&w.rows(4, 4).unwrap(), k);
            assert!(without.iter().all(|&v| v == 40.0), "{without:?}");
            let t = product(&w.transpose().unwrap(), n);
            assert!(t[17].is_nan(), "{t:?}");
            assert!(
                t.iter().enumerate().all(|(c, &v)| c == 17 || v == 8.0),
                "{t:?}"
            );
        }
    }
}

#[test]
fn matches_the_dequantised_matmul_and_rejects_bad_shapes() {
    let dev = Device::Cpu;
    let c = case(130, 257, (128, 128), 9);
    let x = Tensor::randn(0f32, 1.0, (2, 5, 257), &dev).unwrap();
    let y = linear::linear_fp8(&x, &c.w).unwrap();
    assert_eq!(y.dims(), &[2, 5, 130]);
    let want = x
        .broadcast_matmul(&c.w.dequantize().unwrap().t().unwrap())
        .unwrap();
    let d = max_diff(&y, &want);
    assert!(d < 1e-4, "{d}");
    assert_eq!(c.w.bytes(), 130 * 257 + 4 * 2 * 3);

    assert_eq!(
        c.shared.dequantize().unwrap().to_vec2::<f32>().unwrap(),
        c.w.dequantize().unwrap().to_vec2::<f32>().unwrap()
    );
    let q = c.w.weight().unwrap();
    let bad = Tensor::ones((1, 3), DType::F32, &dev).unwrap();
    let owner: Arc<ByteOwner> = Arc::new(vec![0u8; 10]);
    let ten = SharedBytes::new(owner, 0..10).unwrap();
    let err = Fp8Matrix::from_shared(ten, (3, 4), &bad, (128, 128)).unwrap_err();
    assert!(
        err.to_string().contains("10 bytes for a [3, 4] matrix"),
        "{err}"
    );
    let err = Fp8Matrix::new(q.clone(), &bad, (128, 128)).unwrap_err();
    assert!(
        err.to_string()
            .contains("weight_scale_inv: expected [2, 3]"),
        "{err}"
    );
    let err = Fp8Matrix::new(q.to_dtype(DType::F32).unwrap(), &bad, (128, 128)).unwrap_err();
    assert!(err.to_string().contains("F8E4M3"), "{err}");
    let err =
        linear::linear_fp8(&Tensor::ones((1, 3), DType::F32, &dev).unwrap(), &c.w).unwrap_err();
    assert!(err.to_string().contains("in-features 257"), "{err}");
}

#[test]
fn row_parts_and_the_transpose_hold_the_same_values() {
    // Partial edge blocks both ways, small odd blocks, and DeepSeek's; bytes in a tensor and
    // in place.
    for (n, k, block, seed) in [
        (300, 257, (128, 128), 3),
        (40, 23, (16, 8), 4),
        (8, 8, (8, 8), 5),
    ] {
        let c = case(n, k, block, seed);
        for w in [&c.w, &c.shared] {
            let full = w.dequantize().unwrap();
            let t = w.transpose().unwrap();
            assert_eq!(t.dims(), (k, n));
            assert_eq!(t.block(), (block.1, block.0));
            assert_eq!(
                t.dequantize().unwrap().to_vec2::<f32>().unwrap(),
                full.t().unwrap().to_vec2::<f32>().unwrap(),
                "transpose of [{n}, {k}] in {block:?} blocks"
            );
            for start in (0..n).step_by(block.0) {
                for len in [1, block.0, n - start] {
                    let len = len.min(n - start);
                    let part = w.rows(start, len).unwrap();
                    assert_eq!(part.is_shared(), w.is_shared());
                    assert_eq!(
                        part.dequantize().unwrap().to_vec2::<f32>().unwrap(),
                        full.narrow(0, start, len)
                            .unwrap()
                            .to_vec2::<f32>()
                            .unwrap(),
                        "rows {start}..{} of [{n}, {k}]",
                        start + len
                    );
                }
            }
        }
        // A part that would split a block row's scale, or leave the matrix, is refused.
        if block.0 > 1 {
            let err = c.w.rows(1, 2).unwrap_err();
            assert!(err.to_string().contains("start on a block row"), "{err}");
        }
        assert!(c.shared.rows(0, n + 1).is_err());
        assert!(c.w.rows(0, usize::MAX).is_err());
        assert!(c.w.rows(0, 0).is_err());
    }
}
