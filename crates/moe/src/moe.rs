//! The MoE layer: `y = sum_k w_k * expert_{i_k}(x) + shared_experts(x)`.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use linear::{QuantFormat, WeightSpec};

use crate::config::MoeConfig;
use crate::dispatch::Experts;
use crate::error::{config_err, MoeError, Result};
use crate::gate::{Gate, Routing};
use crate::mlp::Mlp;

/// How the routed experts are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dispatch {
    /// Decode path for one token, grouped dispatch otherwise (the default).
    #[default]
    Auto,
    /// Grouped dispatch: one matmul per active expert.
    Grouped,
    /// Per-token loop (oracle / baseline).
    Naive,
    /// Routing and experts as device-generic tensor ops, no host copy ([`crate::device`]);
    /// what `Auto` picks once the experts are stacked ([`Moe::stack_experts`]).
    Device,
}

/// A DeepSeekMoE layer: gate, routed experts and the (optional) shared-expert MLP.
#[derive(Debug, Clone)]
pub struct Moe {
    cfg: MoeConfig,
    gate: Gate,
    experts: Experts,
    shared: Option<Mlp>,
}

impl Moe {
    /// Converts every expert's matrices (routed and shared) to `format`; the router stays as
    /// it is (it decides which experts run, and is small).
    pub fn quantize(&mut self, format: QuantFormat) -> Result<()> {
        self.map_matrices(&|m| m.quantize(format))
    }

    /// Replaces every expert's matrices (routed and shared) by `f` of them; the router stays
    /// as it is.
    pub fn map_matrices(&mut self, f: &linear::MapMatrix<'_>) -> Result<()> {
        self.experts.map_matrices(f)?;
        if let Some(shared) = &mut self.shared {
            shared.map_matrices(f)?;
        }
        Ok(())
    }

    /// Assembles a layer from parts (e.g. weights the model crate has dequantised).
    pub fn new(cfg: MoeConfig, gate: Gate, experts: Experts, shared: Option<Mlp>) -> Result<Self> {
        let g = &cfg.gate;
        if experts.len() != g.n_routed_experts {
            return Err(config_err(
                "n_routed_experts",
                format!(
                    "n_routed_experts is {}, but {} experts were given",
                    g.n_routed_experts,
                    experts.len()
                ),
            ));
        }
        let (h, i) = (g.hidden_size, cfg.moe_intermediate_size);
        let e0 = experts.expert(0);
        if (e0.hidden_size(), e0.intermediate_size()) != (h, i) {
            return Err(MoeError::Shape {
                name: "experts.0.gate_proj.weight".into(),
                expected: vec![i, h],
                found: vec![e0.intermediate_size(), e0.hidden_size()],
            });
        }
        match (&shared, cfg.n_shared_experts) {
            (None, 0) => {}
            (None, _) => {
                return Err(MoeError::MissingTensor {
                    name: "shared_experts".into(),
                })
            }
            (Some(s), _) => {
                let si = cfg.shared_intermediate_size();
                if (s.hidden_size(), s.intermediate_size()) != (h, si) {
                    return Err(MoeError::Shape {
                        name: "shared_experts.gate_proj.weight".into(),
                        expected: vec![si, h],
                        found: vec![s.intermediate_size(), s.hidden_size()],
                    });
                }
            }
        }
        Ok(Self {
            cfg,
            gate,
            experts,
            shared,
        })
    }

    /// The weights [`Moe::load`] reads, relative to the `mlp` prefix: the router (and its
    /// correction bias for `noaux_tc`), every routed expert and the shared-expert MLP.
    pub fn expected(cfg: &MoeConfig) -> Vec<WeightSpec> {
        let g = &cfg.gate;
        let (h, e) = (g.hidden_size, g.n_routed_experts);
        let mut out = vec![WeightSpec::plain("gate.weight", vec![e, h])];
        if g.uses_bias() {
            out.push(WeightSpec::plain("gate.e_score_correction_bias", vec![e]));
        }
        for i in 0..e {
            let prefix = format!("experts.{i}");
            out.extend(
                Mlp::expected(h, cfg.moe_intermediate_size)
                    .into_iter()
                    .map(|w| w.under(&prefix)),
            );
        }
        if cfg.n_shared_experts > 0 {
            out.extend(
                Mlp::expected(h, cfg.shared_intermediate_size())
                    .into_iter()
                    .map(|w| w.under("shared_experts")),
            );
        }
        out
    }

    /// Loads from HF names under `vb` (the `mlp` prefix, e.g. `model.layers.3.mlp`):
    /// `gate.weight`, `gate.e_score_correction_bias` (noaux_tc),
    /// `experts.{e}.{gate,up,down}_proj.weight`, `shared_experts.{gate,up,down}_proj.weight`.
    pub fn load(vb: VarBuilder, cfg: &MoeConfig) -> Result<Self> {
        Self::load_with(vb, cfg, &linear::ThroughVarBuilder)
    }

    /// [`Moe::load`] with the experts' projections obtained from `matrices` (e.g. a checkpoint
    /// loader that uses memory-mapped FP8 bytes in place).
    pub fn load_with(
        vb: VarBuilder,
        cfg: &MoeConfig,
        matrices: &dyn linear::MatrixLoader,
    ) -> Result<Self> {
        let g = &cfg.gate;
        let gate = Gate::load(vb.pp("gate"), g)?;
        let experts = Experts::load_with(
            vb.pp("experts"),
            g.n_routed_experts,
            g.hidden_size,
            cfg.moe_intermediate_size,
            matrices,
        )?;
        let shared = if cfg.n_shared_experts > 0 {
            Some(Mlp::load_with(
                vb.pp("shared_experts"),
                g.hidden_size,
                cfg.shared_intermediate_size(),
                matrices,
            )?)
        } else {
            None
        };
        Self::new(cfg.clone(), gate, experts, shared)
    }

    /// The configuration.
    pub fn config(&self) -> &MoeConfig {
        &self.cfg
    }

    /// The router.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The router, mutably (e.g. to update the correction bias).
    pub fn gate_mut(&mut self) -> &mut Gate {
        &mut self.gate
    }

    /// The routed experts.
    pub fn experts(&self) -> &Experts {
        &self.experts
    }

    /// The shared-expert MLP, if any.
    pub fn shared(&self) -> Option<&Mlp> {
        self.shared.as_ref()
    }

    /// Routes `x` `[..., H]` (flattened to tokens).
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        self.gate.route(&self.flat(x)?)
    }

    /// Forward with [`Dispatch::Auto`]: `x` `[..., H]` → `[..., H]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Dispatch::Auto)
    }

    /// Forward with an explicit dispatch strategy.
    pub fn forward_with(&self, x: &Tensor, dispatch: Dispatch) -> Result<Tensor> {
        let x2 = self.flat(x)?; // [T, H]
        let on_device = match dispatch {
            Dispatch::Device => true,
            Dispatch::Auto => self.experts.stacked().is_some(),
            Dispatch::Grouped | Dispatch::Naive => false,
        };
        let y = if on_device {
            let routing = self.gate.route_on_device(&x2)?;
            let routed = self.experts.forward_device(&x2, &routing)?;
            self.add_shared(&x2, routed)?
        } else {
            let routing = self.gate.route(&x2)?;
            self.forward_routed(&x2, &routing, dispatch)?
        };
        Ok(y.reshape(x.dims())?)
    }

    /// Stacks the routed experts for device dispatch ([`Experts::stack`]): from then on
    /// [`Dispatch::Auto`] routes and dispatches with device-generic tensor ops and no host
    /// copy (the GPU default; on the CPU the host path is faster).
    pub fn stack_experts(&mut self) -> Result<()> {
        self.experts.stack()
    }

    /// Routed experts (with a given routing) plus shared experts; `x` is `[T, H]`.
    pub fn forward_routed(
        &self,
        x: &Tensor,
        routing: &Routing,
        dispatch: Dispatch,
    ) -> Result<Tensor> {
        let routed = match dispatch {
            Dispatch::Auto if routing.n_tokens == 1 => self.experts.forward_decode(x, routing)?,
            Dispatch::Auto | Dispatch::Grouped | Dispatch::Device => {
                self.experts.forward_grouped(x, routing)?
            }
            Dispatch::Naive => self.experts.forward_naive(x, routing)?,
        };
        self.add_shared(x, routed)
    }

    /// `routed + shared_experts(x)`.
    fn add_shared(&self, x: &Tensor, routed: Tensor) -> Result<Tensor> {
        match &self.shared {
            Some(s) => Ok(linear::elementwise::add(&routed, &s.forward(x)?)?),
            None => Ok(routed),
        }
    }

    /// Bytes of expert weights one decode step reads: shared MLP + k routed experts.
    pub fn decode_weight_bytes(&self) -> usize {
        let k = self.cfg.gate.top_k;
        self.shared.as_ref().map_or(0, Mlp::weight_bytes)
            + k * self.experts.expert(0).weight_bytes()
    }

    fn flat(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.cfg.gate.hidden_size;
        if x.dims().last() != Some(&h) {
            return Err(MoeError::Shape {
                name: "input".into(),
                expected: vec![h],
                found: x.dims().to_vec(),
            });
        }
        Ok(x.reshape(((), h))?)
    }
}
