//! Properties of the rotation that hold for any configuration.
#![allow(clippy::disallowed_methods)] // tests read results on the host

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use rope_yarn::{
    apply_rotary, deinterleave, RopeCache, RopeConfig, RopeLayout, RopeScaling, YarnParams,
};

fn yarn(dim: usize, factor: f64) -> RopeConfig {
    // Without mscale the attention factor is mscale(s, 1) != 1; pin it to 1 so that norms and
    // relative-position invariance are exact properties.
    let y = YarnParams {
        attention_factor: Some(1.0),
        ..YarnParams::new(factor, 4096)
    };
    RopeConfig::with_scaling(dim, 10000.0, RopeScaling::Yarn(y)).unwrap()
}

fn vec_tensor(v: &[f32], dim: usize) -> Tensor {
    Tensor::from_slice(v, (1, 1, 1, dim), &Device::Cpu).unwrap()
}

fn dot(a: &Tensor, b: &Tensor) -> f32 {
    (a * b).unwrap().sum_all().unwrap().to_scalar().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn rotation_preserves_norms(
        v in prop::collection::vec(-3f32..3.0, 32),
        pos in 0usize..200_000,
        factor in 1.0f64..64.0,
        half_split in any::<bool>(),
    ) {
        let layout = if half_split { RopeLayout::HalfSplit } else { RopeLayout::Interleaved };
        let mut cache = RopeCache::new(yarn(32, factor));
        let x = vec_tensor(&v, 32);
        let r = cache.apply(&x, pos, layout).unwrap();
        let (n0, n1) = (dot(&x, &x), dot(&r, &r));
        prop_assert!((n0 - n1).abs() <= 1e-4 * n0.max(1.0), "{} vs {}", n0, n1);
    }

    #[test]
    fn dot_product_depends_only_on_relative_position(
        q in prop::collection::vec(-2f32..2.0, 16),
        k in prop::collection::vec(-2f32..2.0, 16),
        m in 0usize..5000,
        n in 0usize..5000,
        shift in 0usize..5000,
    ) {
        let mut cache = RopeCache::new(yarn(16, 40.0));
        let (q, k) = (vec_tensor(&q, 16), vec_tensor(&k, 16));
        let at = |c: &mut RopeCache, x: &Tensor, p| c.apply(x, p, RopeLayout::Interleaved).unwrap();
        let a = dot(&at(&mut cache, &q, m), &at(&mut cache, &k, n));
        let b = dot(&at(&mut cache, &q, m + shift), &at(&mut cache, &k, n + shift));
        // f32 angles at positions up to 10^4 carry ~1e-3 rad of rounding.
        prop_assert!((a - b).abs() <= 2e-2 * (1.0 + a.abs()), "{} vs {}", a, b);
    }
}

#[test]
fn layouts_agree_up_to_the_pair_permutation() {
    let mut cache = RopeCache::new(yarn(16, 40.0));
    let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 16), &Device::Cpu).unwrap();
    let inter = cache.apply(&x, 7, RopeLayout::Interleaved).unwrap();
    let half = cache
        .apply(&deinterleave(&x).unwrap(), 7, RopeLayout::HalfSplit)
        .unwrap();
    let diff = (deinterleave(&inter).unwrap() - half)
        .unwrap()
        .abs()
        .unwrap();
    assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
}

#[test]
fn growing_the_table_keeps_existing_rows() {
    let mut grown = RopeCache::new(yarn(16, 40.0));
    for len in [1, 2, 3, 10, 100, 1000] {
        grown.ensure(len);
    }
    let mut once = RopeCache::new(yarn(16, 40.0));
    once.ensure(1000);
    let a = grown.cos_sin(0, 1000, &Device::Cpu).unwrap();
    let b = once.cos_sin(0, 1000, &Device::Cpu).unwrap();
    assert_eq!(a.0.to_vec2::<f32>().unwrap(), b.0.to_vec2::<f32>().unwrap());
    assert_eq!(grown.len(), 1000);
}

#[test]
fn half_precision_inputs_rotate_in_f32() {
    let mut cache = RopeCache::new(yarn(16, 40.0));
    let x = Tensor::randn(0f32, 1.0, (1, 2, 4, 16), &Device::Cpu).unwrap();
    let exact = cache.apply(&x, 3000, RopeLayout::Interleaved).unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let r = cache
            .apply(&x.to_dtype(dtype).unwrap(), 3000, RopeLayout::Interleaved)
            .unwrap();
        assert_eq!(r.dtype(), dtype);
        let diff = (r.to_dtype(DType::F32).unwrap() - &exact)
            .unwrap()
            .abs()
            .unwrap();
        // Only the input and output roundings: <= 2 half-precision ulps of |x| <~ 4.
        let tol = if dtype == DType::BF16 { 6e-2 } else { 8e-3 };
        assert!(
            diff.max_all().unwrap().to_scalar::<f32>().unwrap() < tol,
            "{dtype:?}"
        );
    }
}

#[test]
fn per_sequence_positions_and_bad_shapes() {
    let mut cache = RopeCache::new(yarn(16, 40.0));
    let x = Tensor::randn(0f32, 1.0, (2, 1, 1, 16), &Device::Cpu).unwrap();
    // Batch of two sequences at different positions: [batch, seq, dim/2] tables.
    let (c, s) = cache.cos_sin_at(&[5, 900], &Device::Cpu).unwrap();
    let (c, s) = (c.reshape((2, 1, 8)).unwrap(), s.reshape((2, 1, 8)).unwrap());
    let both = apply_rotary(&x, &c, &s, RopeLayout::Interleaved).unwrap();
    let second = cache
        .apply(&x.narrow(0, 1, 1).unwrap(), 900, RopeLayout::Interleaved)
        .unwrap();
    let diff = (both.narrow(0, 1, 1).unwrap() - second)
        .unwrap()
        .abs()
        .unwrap();
    assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);

    let (c, s) = cache.cos_sin(0, 3, &Device::Cpu).unwrap();
    let err = apply_rotary(&x, &c, &s, RopeLayout::Interleaved)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cos: expected"), "{err}");
    let err = apply_rotary(
        &x.reshape((2, 1, 16)).unwrap(),
        &c,
        &s,
        RopeLayout::Interleaved,
    )
    .unwrap_err();
    assert!(err.to_string().starts_with("x: expected"), "{err}");
}
