//! Helpers shared by the integration tests.
#![allow(clippy::disallowed_methods)] // tests read results on the host

use candle_core::{DType, Tensor};

/// `max |a - b|` over all elements, compared in f32.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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
