//! The MTP training loss with the `mtp` crate alone.
#![allow(clippy::disallowed_methods)] // host reads are this crate's work, not a device round trip

use candle_core::{Device, Tensor};

fn run() {
    let dev = Device::Cpu;
    // Uniform logits over 4 tokens: cross-entropy is ln 4 at every depth.
    let tokens = [0u32, 1, 2, 3, 0];
    let depth1 = Tensor::zeros((3, 4), candle_core::DType::F32, &dev).unwrap();
    let loss = mtp::mtp_loss(&[depth1], &tokens, 0.3).unwrap();
    let value: f32 = loss.to_scalar().unwrap();
    assert!((value - 0.3 * 4f32.ln()).abs() < 1e-5, "{value}");
    println!("mtp: lambda * mean CE = {value}");
}

fn main() {
    run();
}

#[cfg(test)]
mod tests {
    #[test]
    fn loss() {
        super::run();
    }
}
