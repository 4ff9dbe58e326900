//! DeepSeekMoE for DeepSeek-V2 / V3 / R1: the router (V2 softmax and V3 sigmoid gates with
//! greedy, group-limited and auxiliary-loss-free `noaux_tc` selection), SwiGLU routed and
//! shared experts, fast grouped dispatch, and the load-balancing tools used to train and
//! serve such models.
//!
//! # Design
//!
//! Routing is where public implementations go wrong, so it is written once, in f32, as a
//! ~40-line function over plain CPU rows ([`gate::route`]) that reads like the papers; the gate
//! matmul runs on the tensor's device. Numerics follow HF transformers 5.23, which generated
//! the parity fixtures. Experts run by **grouped dispatch**: the T·k (token, slot) pairs are
//! sorted by expert once, each active expert runs one matmul over its tokens, and results are
//! scatter-added back ([`dispatch`]); a one-token decode path reads only the k chosen experts'
//! weights; the naive per-token loop lives beside them as the test oracle.
//!
//! # Routing equations
//!
//! For a token x, logits `l = W_gate x` (f32), E routed experts, top-k, groups of E/n_group.
//!
//! **V2** (`scoring_func = softmax`; HF `DeepseekV2TopkRouter`):
//! ```text
//! s = softmax(l)
//! greedy:               I = topk(s, k)
//! group_limited_greedy: g_j = max_{i in group j} s_i;  keep topk(g, topk_group) groups;
//!                       I = topk(s masked to kept groups, k)
//! w_i = s_i * routed_scaling_factor              (norm_topk_prob is ignored by HF 5.23)
//! ```
//! **V3** (`scoring_func = sigmoid`, `topk_method = noaux_tc`; HF `DeepseekV3TopkRouter`):
//! ```text
//! s = sigmoid(l);  c = s + e_score_correction_bias          (c is for SELECTION only)
//! g_j = sum of the top-2 c_i in group j;  keep topk(g, topk_group) groups
//! c_i = -inf for i in dropped groups                         (not 0.0: biases can be < 0)
//! I = topk(c, k)
//! w_i = s_i  (unbiased);  if norm_topk_prob: w_i /= (sum_{j in I} s_j + 1e-20)
//! w_i *= routed_scaling_factor
//! ```
//! Layer output: `y = sum_{i in I} w_i * expert_i(x) + shared_experts(x)`, every expert a
//! SwiGLU `down(silu(gate(x)) * up(x))`; the shared experts form one MLP of width
//! `moe_intermediate_size * n_shared_experts`.
//!
//! # Example
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use moe::{Dispatch, Experts, Gate, GateConfig, Mlp, Moe, MoeConfig, Scoring, TopkMethod};
//!
//! # fn main() -> moe::Result<()> {
//! let dev = Device::Cpu;
//! let (h, e, i) = (16, 8, 12);
//! let gate_cfg = GateConfig::builder(h, e, 2)
//!     .scoring(Scoring::Sigmoid)
//!     .topk_method(TopkMethod::NoauxTc)
//!     .groups(4, 2)
//!     .normalize(true)
//!     .routed_scaling_factor(2.5)
//!     .build()?;
//! let cfg = MoeConfig::new(gate_cfg.clone(), i, 1)?;
//! let rand = |r: usize, c: usize| Tensor::randn(0f32, 0.2, (r, c), &dev);
//! let mlp = |i: usize| -> moe::Result<Mlp> { Mlp::new(rand(i, h)?, rand(i, h)?, rand(h, i)?) };
//! let gate = Gate::new(gate_cfg, rand(e, h)?, Some(Tensor::zeros(e, candle_core::DType::F32, &dev)?))?;
//! let experts = Experts::new((0..e).map(|_| mlp(i)).collect::<moe::Result<_>>()?)?;
//! let layer = Moe::new(cfg, gate, experts, Some(mlp(i)?))?;
//!
//! let x = rand(5, h)?; // [T, H]
//! let y = layer.forward(&x)?; // grouped dispatch
//! let oracle = layer.forward_with(&x, Dispatch::Naive)?; // per-token loop
//! let diff = (y - oracle)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(diff < 1e-5);
//!
//! let routing = layer.route(&x)?;
//! let w: f32 = routing.token(0).1.iter().sum();
//! assert!((w - 2.5).abs() < 1e-5); // normalised, then scaled
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod balance;
pub mod config;
pub mod device;
pub mod dispatch;
pub mod error;
pub mod gate;
#[cfg(feature = "hf")]
pub mod hf;
pub mod mlp;
pub mod moe;
pub mod placement;

pub use balance::{sequence_balance_loss, update_bias, LoadStats};
pub use config::{GateConfig, GateConfigBuilder, MoeConfig, Scoring, TopkMethod};
pub use device::{route_tensors, DeviceRouting, StackedExperts};
pub use dispatch::{DispatchPlan, Experts};
pub use error::{MoeError, Result};
pub use gate::{route, Gate, Routing};
pub use linear::WeightSpec;
pub use mlp::Mlp;
pub use moe::{Dispatch, Moe};
pub use placement::{
    contiguous_placement, plan_placement, NodeGrouping, Placement, PlacementOptions,
};
