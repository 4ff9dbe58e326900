//! V3 routing (sigmoid, noaux_tc, group-limited) with the `moe` crate alone.

use moe::{route, GateConfig, Scoring, TopkMethod};

fn run() {
    let cfg = GateConfig::builder(8, 8, 2)
        .scoring(Scoring::Sigmoid)
        .topk_method(TopkMethod::NoauxTc)
        .groups(4, 1)
        .normalize(true)
        .routed_scaling_factor(2.5)
        .build()
        .unwrap();
    // One token; experts 6 and 7 (group 3) have the best pair score.
    let logits = [0.0, 0.1, 3.0, -5.0, 0.2, 0.3, 2.0, 1.9];
    let routing = route(&cfg, &logits, None);
    let (experts, weights) = routing.token(0);
    let mut chosen = experts.to_vec();
    chosen.sort_unstable();
    assert_eq!(
        chosen,
        [6, 7],
        "group-limited: expert 2's group has a bad partner"
    );
    let sum: f32 = weights.iter().sum();
    assert!((sum - 2.5).abs() < 1e-5, "normalised then scaled: {sum}");
    println!("moe: token routed to {experts:?} with weights {weights:?}");
}

fn main() {
    run();
}

#[cfg(test)]
mod tests {
    #[test]
    fn routes() {
        super::run();
    }
}
