//! Helpers shared by the model crate's integration tests.

use candle_core::Tensor;
use model::DeepSeek;

/// Logits `[T, V]` of feeding `ids` one token at a time through a fresh session (decode
/// steps over the growing cache).
#[allow(dead_code)] // not every test binary uses every helper
pub fn decode_each(model: &DeepSeek, ids: &[u32]) -> Tensor {
    let mut session = model.new_session().unwrap();
    let rows: Vec<Tensor> = ids
        .iter()
        .map(|&t| model.forward(&[t], &mut session).unwrap().logits)
        .collect();
    Tensor::cat(&rows, 0).unwrap()
}
