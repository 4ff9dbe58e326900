//! Simulates a skewed routing stream through a V3-style noaux_tc gate and shows what the two
//! balancing tools do: the auxiliary-loss-free bias update (training side) and EPLB-like
//! expert placement (serving side).
//!
//! Run: `cargo run --release -p moe --example balance_sim`

use moe::balance::load_summary;
use moe::gate::affinity_scores;
use moe::{
    contiguous_placement, plan_placement, route, sequence_balance_loss, update_bias, GateConfig,
    LoadStats, NodeGrouping, PlacementOptions, Scoring, TopkMethod,
};

const E: usize = 64;
const N_GROUP: usize = 8;
const TOKENS: usize = 4096;
const STEPS: usize = 200;
const GAMMA: f32 = 0.01;
const ZIPF: f32 = 1.0;

/// splitmix64 + Box-Muller: standard normals without dependencies.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// One batch of logits: expert popularity falls off like Zipf (rank r → -ZIPF * ln(r + 1)),
/// experts ranked in a fixed shuffled order, plus per-token noise.
fn batch(rng: &mut Rng, rank_of: &[usize]) -> Vec<f32> {
    (0..TOKENS * E)
        .map(|i| -ZIPF * ((rank_of[i % E] + 1) as f32).ln() + rng.normal())
        .collect()
}

fn main() -> moe::Result<()> {
    let cfg = GateConfig::builder(1, E, 8)
        .scoring(Scoring::Sigmoid)
        .topk_method(TopkMethod::NoauxTc)
        .groups(N_GROUP, 4)
        .normalize(true)
        .routed_scaling_factor(2.5)
        .build()?;
    let mut rng = Rng(7);
    // A fixed pseudo-random ranking so hot experts are spread over groups.
    let rank_of: Vec<usize> = (0..E).map(|e| (e * 37 + 11) % E).collect();

    println!("# Auxiliary-loss-free bias balancing: {E} experts, {N_GROUP} groups (top-4), top-8,");
    println!("# {TOKENS} tokens/step, Zipf-skewed logits (s = {ZIPF}), gamma = {GAMMA}\n");
    println!("| step | max/mean load, bias frozen | max/mean load, bias updated | min/mean (updated) | balance loss (alpha = 1), frozen | updated |");
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut bias = vec![0f32; E];
    let zero = vec![0f32; E];
    let mut first_loads = Vec::new();
    let mut last_loads = Vec::new();
    let mut s = Vec::new();
    for step in 0..STEPS {
        let logits = batch(&mut rng, &rank_of);
        let frozen = route(&cfg, &logits, Some(&zero));
        let balanced = route(&cfg, &logits, Some(&bias));
        let (fs, bs) = (
            LoadStats::from_routing(&frozen, E),
            LoadStats::from_routing(&balanced, E),
        );
        let mut scores = Vec::with_capacity(logits.len());
        for row in logits.chunks_exact(E) {
            affinity_scores(cfg.scoring, row, &mut s);
            scores.extend_from_slice(&s);
        }
        let lf = sequence_balance_loss(&scores, &frozen, E, 1.0);
        let lb = sequence_balance_loss(&scores, &balanced, E, 1.0);
        if step % 20 == 0 || step == STEPS - 1 {
            println!(
                "| {step} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} |",
                fs.max_over_mean, bs.max_over_mean, bs.min_over_mean, lf, lb
            );
        }
        if step == 0 {
            first_loads = fs.counts.clone();
        }
        last_loads = bs.counts.clone();
        update_bias(&mut bias, &bs.counts, GAMMA);
    }
    let (lo, hi) = bias
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    println!(
        "\nfinal bias range [{lo:.3}, {hi:.3}]; a balance loss of 1.0 means perfectly balanced\n"
    );

    println!("# Expert placement (EPLB-like): 8 devices, 8 redundant slots (9 slots/device)\n");
    println!("| loads | placement | device max/mean | device min/mean |");
    println!("|---|---|---:|---:|");
    for (label, counts) in [
        ("skewed (bias frozen)", &first_loads),
        ("after bias balancing", &last_loads),
    ] {
        let loads: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
        let rows = [
            ("contiguous, no replicas", contiguous_placement(&loads, 8)?),
            (
                "replicate + LPT pack",
                plan_placement(
                    &loads,
                    &PlacementOptions {
                        redundant_slots: 8,
                        devices: 8,
                        nodes: None,
                    },
                )?,
            ),
            (
                "hierarchical, 2 nodes",
                plan_placement(
                    &loads,
                    &PlacementOptions {
                        redundant_slots: 8,
                        devices: 8,
                        nodes: Some(NodeGrouping {
                            nodes: 2,
                            n_group: N_GROUP,
                        }),
                    },
                )?,
            ),
        ];
        for (name, p) in rows {
            let sm = load_summary(&p.device_loads);
            println!(
                "| {label} | {name} | {:.3} | {:.3} |",
                sm.max_over_mean, sm.min_over_mean
            );
        }
    }
    Ok(())
}
