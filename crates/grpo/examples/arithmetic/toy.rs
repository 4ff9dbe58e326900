//! A toy R1-Zero run: a tiny policy learns single-digit addition (`3+4=` answered as
//! `…</think>\boxed{7}`) by GRPO, with the `judge` crate's accuracy and format rewards.
//!
//! Shared by the `arithmetic` example and the `arithmetic` integration test.
//!
//! # The policy
//!
//! An autoregressive MLP over a 16-token vocabulary: the ten digits, `+`, `=`, `}`, end of
//! sequence, and two multi-character tokens, `\boxed{` and `</think>` (as a BPE merge
//! would make them; spelling them letter by letter is an exploration problem that has
//! nothing to do with GRPO). The next-token distribution at completion position `t` is
//!
//! ```text
//! h = relu(W2 relu(W1 [E_a[a]; E_b[b]; E_pos[t]; E_prev[prev]] + b1) + b2)
//! p(· | a, b, t, prev) = softmax(W3 h + b3)
//! ```
//!
//! i.e. an embedding bag of the prompt's two operands (the prompt is always `a+b=`), the
//! position and the previous token. It conditions on the whole prompt and, through the
//! position and the previous token, on enough of the completion for this task's short
//! fixed-shape answers; and the log-probabilities of a whole batch of completions are one
//! batched forward pass (no attention, no cache), so a GRPO step takes milliseconds on a
//! CPU. The losses of the `grpo` crate only see logits, so nothing here is specific to
//! this model.
//!
//! The response text is the concatenation of the completion's tokens; the R1 chat template
//! pre-fills `<think>`, so `7</think>\boxed{7}` is a well-formed response.
#![allow(clippy::disallowed_methods)] // tests read results on the host

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use grpo::{
    clip_grad_norm, group_advantages, policy_loss, token_log_probs, AdvantageScaling,
    PolicyLossConfig,
};
use judge::{Judge, Kind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The vocabulary; id 0 ends the completion.
pub const VOCAB: [&str; 16] = [
    "", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "+", "=", "\\boxed{", "}", "</think>",
];
const EOS: u32 = 0;
/// The "previous token" id at position 0.
const BOS: u32 = VOCAB.len() as u32;

/// Everything that defines a run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Seed of the initial weights, the training samples and (offset) the evaluation.
    pub seed: u64,
    /// Policy-gradient steps.
    pub steps: usize,
    /// Prompts per step.
    pub prompts_per_step: usize,
    /// Completions per prompt (the GRPO group).
    pub group_size: usize,
    /// Largest sum asked: 9 keeps answers single-digit (55 prompts), 18 asks all 100.
    pub max_sum: u32,
    /// Completion budget in tokens.
    pub max_len: usize,
    /// Embedding width (each of the four embeddings).
    pub embed: usize,
    /// Hidden width of the MLP.
    pub hidden: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// Initial logit bias of the end-of-sequence token (the untrained policy's length).
    pub eos_bias: f32,
    /// Global gradient-norm clip of each update (TRL's default: 1.0).
    pub max_grad_norm: f64,
    /// Policy updates per batch of samples (GRPO's μ); above 1 the ratio and clip act.
    pub iterations: usize,
    /// The loss (clip, β, aggregation).
    pub loss: PolicyLossConfig,
    /// The advantage scaling.
    pub scaling: AdvantageScaling,
    /// Evaluate every this many steps.
    pub eval_every: usize,
    /// Completions per prompt in an evaluation (over all the task's prompts).
    pub eval_samples: usize,
}

impl Config {
    /// The example's default run.
    pub fn full() -> Self {
        Self {
            seed: 17,
            steps: 1000,
            prompts_per_step: 16,
            group_size: 8,
            max_sum: 9,
            max_len: 4,
            embed: 16,
            hidden: 128,
            lr: 3e-3,
            eos_bias: 2.0,
            iterations: 1,
            max_grad_norm: 1.0,
            loss: PolicyLossConfig::grpo(),
            scaling: AdvantageScaling::GRPO,
            eval_every: 50,
            eval_samples: 4,
        }
    }

    /// A short run for the integration test.
    pub fn quick() -> Self {
        Self {
            steps: 600,
            eval_every: 100,
            eval_samples: 2,
            ..Self::full()
        }
    }
}

/// The policy's parameters.
pub struct Policy {
    emb_a: Var,
    emb_b: Var,
    emb_pos: Var,
    emb_prev: Var,
    w1: Var,
    b1: Var,
    w2: Var,
    b2: Var,
    w3: Var,
    b3: Var,
}

fn uniform(rng: &mut StdRng, shape: (usize, usize), bound: f32) -> candle_core::Result<Var> {
    let data: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| rng.random_range(-bound..bound))
        .collect();
    Var::from_tensor(&Tensor::from_vec(data, shape, &Device::Cpu)?)
}

impl Policy {
    /// Seeded initialisation (candle's CPU RNG cannot be seeded): N(0,1)-like embeddings
    /// and fan-in-scaled uniform matrices, a zero-ish output layer so the untrained policy
    /// is close to uniform.
    pub fn new(cfg: &Config, rng: &mut StdRng) -> candle_core::Result<Self> {
        let (e, h, v) = (cfg.embed, cfg.hidden, VOCAB.len());
        let fan = |n: usize| (1.0 / n as f32).sqrt();
        Ok(Self {
            emb_a: uniform(rng, (10, e), 1.7)?,
            emb_b: uniform(rng, (10, e), 1.7)?,
            emb_pos: uniform(rng, (cfg.max_len, e), 1.7)?,
            emb_prev: uniform(rng, (v + 1, e), 1.7)?,
            w1: uniform(rng, (4 * e, h), fan(4 * e))?,
            b1: Var::zeros((1, h), DType::F32, &Device::Cpu)?,
            w2: uniform(rng, (h, h), fan(h))?,
            b2: Var::zeros((1, h), DType::F32, &Device::Cpu)?,
            w3: uniform(rng, (h, v), 0.1 * fan(h))?,
            b3: {
                let mut bias = vec![0f32; v];
                bias[EOS as usize] = cfg.eos_bias;
                Var::from_tensor(&Tensor::from_vec(bias, (1, v), &Device::Cpu)?)?
            },
        })
    }

    /// A frozen copy (the reference policy and the baseline).
    pub fn snapshot(&self) -> candle_core::Result<Self> {
        let c = |v: &Var| Var::from_tensor(&v.as_tensor().copy()?);
        Ok(Self {
            emb_a: c(&self.emb_a)?,
            emb_b: c(&self.emb_b)?,
            emb_pos: c(&self.emb_pos)?,
            emb_prev: c(&self.emb_prev)?,
            w1: c(&self.w1)?,
            b1: c(&self.b1)?,
            w2: c(&self.w2)?,
            b2: c(&self.b2)?,
            w3: c(&self.w3)?,
            b3: c(&self.b3)?,
        })
    }

    fn vars(&self) -> Vec<Var> {
        [
            &self.emb_a,
            &self.emb_b,
            &self.emb_pos,
            &self.emb_prev,
            &self.w1,
            &self.b1,
            &self.w2,
            &self.b2,
            &self.w3,
            &self.b3,
        ]
        .into_iter()
        .cloned()
        .collect()
    }

    /// Logits `[N, V]` for rows of (a, b, position, previous token), each `[N]` u32.
    fn logits(
        &self,
        a: &Tensor,
        b: &Tensor,
        pos: &Tensor,
        prev: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let x = Tensor::cat(
            &[
                self.emb_a.as_tensor().index_select(a, 0)?,
                self.emb_b.as_tensor().index_select(b, 0)?,
                self.emb_pos.as_tensor().index_select(pos, 0)?,
                self.emb_prev.as_tensor().index_select(prev, 0)?,
            ],
            1,
        )?;
        let h = x
            .matmul(self.w1.as_tensor())?
            .broadcast_add(self.b1.as_tensor())?
            .relu()?;
        let h = h
            .matmul(self.w2.as_tensor())?
            .broadcast_add(self.b2.as_tensor())?
            .relu()?;
        h.matmul(self.w3.as_tensor())?
            .broadcast_add(self.b3.as_tensor())
    }
}

/// A batch of sampled completions.
struct Rollouts {
    /// (a, b) per completion.
    prompts: Vec<(u32, u32)>,
    /// Token ids `[N][max_len]`, padded with EOS.
    tokens: Vec<Vec<u32>>,
    /// Completion lengths including the EOS when one was sampled.
    lens: Vec<usize>,
}

impl Rollouts {
    fn text(&self, i: usize) -> String {
        self.tokens[i][..self.lens[i]]
            .iter()
            .map(|&t| VOCAB[t as usize])
            .collect()
    }
}

fn u32s(v: impl IntoIterator<Item = u32>) -> candle_core::Result<Tensor> {
    let v: Vec<u32> = v.into_iter().collect();
    let n = v.len();
    Tensor::from_vec(v, n, &Device::Cpu)
}

fn sample(
    policy: &Policy,
    prompts: Vec<(u32, u32)>,
    max_len: usize,
    rng: &mut StdRng,
) -> candle_core::Result<Rollouts> {
    let n = prompts.len();
    let a = u32s(prompts.iter().map(|p| p.0))?;
    let b = u32s(prompts.iter().map(|p| p.1))?;
    let mut tokens = vec![vec![EOS; max_len]; n];
    let mut lens = vec![max_len; n];
    let mut prev = vec![BOS; n];
    let mut done = vec![false; n];
    for t in 0..max_len {
        if done.iter().all(|&d| d) {
            break;
        }
        let pos = u32s(std::iter::repeat_n(t as u32, n))?;
        let logits = policy.logits(&a, &b, &pos, &u32s(prev.iter().copied())?)?;
        let probs = candle_nn::ops::softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
        let rows = tokens
            .iter_mut()
            .zip(&mut lens)
            .zip(&mut prev)
            .zip(&mut done);
        for ((((row, len), prev), done), probs) in rows.zip(&probs) {
            if *done {
                continue;
            }
            let u: f32 = rng.random();
            let mut acc = 0.0;
            let mut tok = probs.len() - 1;
            for (j, p) in probs.iter().enumerate() {
                acc += p;
                if u < acc {
                    tok = j;
                    break;
                }
            }
            let tok = tok as u32;
            row[t] = tok;
            *prev = tok;
            if tok == EOS {
                *done = true;
                *len = t + 1;
            }
        }
    }
    Ok(Rollouts {
        prompts,
        tokens,
        lens,
    })
}

/// Per-token log-probabilities `[N, max_len]` of the rollouts' tokens, and their mask.
fn log_probs(
    policy: &Policy,
    r: &Rollouts,
    max_len: usize,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = r.prompts.len();
    let rows = n * max_len;
    let mut a = Vec::with_capacity(rows);
    let mut b = Vec::with_capacity(rows);
    let mut pos = Vec::with_capacity(rows);
    let mut prev = Vec::with_capacity(rows);
    let mut mask = Vec::with_capacity(rows);
    for i in 0..n {
        for t in 0..max_len {
            a.push(r.prompts[i].0);
            b.push(r.prompts[i].1);
            pos.push(t as u32);
            prev.push(if t == 0 { BOS } else { r.tokens[i][t - 1] });
            mask.push(u8::from(t < r.lens[i]));
        }
    }
    let logits = policy
        .logits(&u32s(a)?, &u32s(b)?, &u32s(pos)?, &u32s(prev)?)?
        .reshape((n, max_len, VOCAB.len()))?;
    let ids = Tensor::from_vec(r.tokens.concat(), (n, max_len), &Device::Cpu)?;
    let lp = token_log_probs(&logits, &ids).map_err(candle_core::Error::wrap)?;
    Ok((lp, Tensor::from_vec(mask, (n, max_len), &Device::Cpu)?))
}

/// Rewards of one response: (accuracy, format), each 0 or 1, from the judge.
pub fn rewards(judge: &Judge, a: u32, b: u32, response: &str) -> (f32, f32) {
    let gold = (a + b).to_string();
    (
        judge.accuracy_reward(Kind::Math, &gold.into(), response),
        judge.format_reward(response),
    )
}

/// Mean rewards of an evaluation: every prompt of the task ([`all_prompts`]),
/// `eval_samples` completions each, sampled from a fixed seed so evaluations are paired.
#[derive(Debug, Clone, Copy, Default)]
pub struct Eval {
    /// Mean accuracy reward.
    pub accuracy: f32,
    /// Mean format reward.
    pub format: f32,
}

impl Eval {
    /// The reward optimised: accuracy + format (as R1-Zero), in [0, 2].
    pub fn total(&self) -> f32 {
        self.accuracy + self.format
    }
}

/// Every prompt `a+b=` of the task: a, b in 0..=9 with a + b <= `max_sum`.
pub fn all_prompts(cfg: &Config) -> Vec<(u32, u32)> {
    (0..10)
        .flat_map(|a| (0..10).map(move |b| (a, b)))
        .filter(|&(a, b)| a + b <= cfg.max_sum)
        .collect()
}

/// Evaluates `policy` on all the task's prompts.
pub fn evaluate(policy: &Policy, cfg: &Config, judge: &Judge) -> candle_core::Result<Eval> {
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0xe7a1);
    let prompts: Vec<(u32, u32)> = all_prompts(cfg)
        .into_iter()
        .flat_map(|p| std::iter::repeat_n(p, cfg.eval_samples))
        .collect();
    let r = sample(policy, prompts, cfg.max_len, &mut rng)?;
    let n = r.prompts.len() as f32;
    let mut e = Eval::default();
    for i in 0..r.prompts.len() {
        let (acc, fmt) = rewards(judge, r.prompts[i].0, r.prompts[i].1, &r.text(i));
        e.accuracy += acc / n;
        e.format += fmt / n;
    }
    Ok(e)
}

/// One logged step.
#[derive(Debug, Clone)]
pub struct StepLog {
    /// Step index (0-based).
    pub step: usize,
    /// Mean training reward (accuracy + format) of the step's samples.
    pub train_reward: f32,
    /// The evaluation after this step, on evaluation steps.
    pub eval: Option<Eval>,
    /// The untrained baseline's evaluation reward (constant over the run).
    pub baseline: f32,
    /// Prompts in an evaluation.
    pub eval_prompts: usize,
    /// The masked mean k3 KL to the reference.
    pub kl: f32,
    /// The largest gradient norm of the step's updates, before clipping.
    pub grad_norm: f64,
    /// An example completion of the step (the first prompt's first sample).
    pub example: String,
}

/// The outcome of a run.
pub struct Run {
    /// The untrained policy, evaluated like the trained one.
    pub baseline: Eval,
    /// Per-step logs.
    pub steps: Vec<StepLog>,
    /// The final evaluation.
    pub last: Eval,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Trains with GRPO and logs each step through `on_step`.
pub fn train(cfg: &Config, mut on_step: impl FnMut(&StepLog)) -> candle_core::Result<Run> {
    let start = Instant::now();
    let judge = Judge::default();
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let policy = Policy::new(cfg, &mut rng)?;
    let reference = policy.snapshot()?;
    let baseline = evaluate(&reference, cfg, &judge)?;
    let vars = policy.vars();
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let wrap = candle_core::Error::wrap;
    let mut steps = Vec::with_capacity(cfg.steps);
    let mut last = baseline;
    let task = all_prompts(cfg);
    for step in 0..cfg.steps {
        let prompts: Vec<(u32, u32)> = (0..cfg.prompts_per_step)
            .map(|_| task[rng.random_range(0..task.len())])
            .flat_map(|p| std::iter::repeat_n(p, cfg.group_size))
            .collect();
        let r = sample(&policy, prompts, cfg.max_len, &mut rng)?;
        let mut reward = Vec::with_capacity(r.prompts.len());
        for i in 0..r.prompts.len() {
            let (acc, fmt) = rewards(&judge, r.prompts[i].0, r.prompts[i].1, &r.text(i));
            reward.push(acc + fmt);
        }
        let train_reward = reward.iter().sum::<f32>() / reward.len() as f32;
        let adv = group_advantages(&reward, cfg.group_size, cfg.scaling).map_err(wrap)?;
        let adv = Tensor::new(adv.as_slice(), &Device::Cpu)?;
        let (ref_lp, _) = log_probs(&reference, &r, cfg.max_len)?;
        let ref_lp = ref_lp.detach();
        let old = if cfg.iterations > 1 {
            Some(log_probs(&policy, &r, cfg.max_len)?.0.detach())
        } else {
            None
        };
        let mut kl = 0.0;
        let mut max_norm = 0.0f64;
        for _ in 0..cfg.iterations.max(1) {
            let (lp, mask) = log_probs(&policy, &r, cfg.max_len)?;
            let out = policy_loss(&cfg.loss, &lp, old.as_ref(), Some(&ref_lp), &adv, &mask)
                .map_err(wrap)?;
            let mut grads = out.loss.backward()?;
            let norm = clip_grad_norm(&mut grads, &vars, cfg.max_grad_norm).map_err(wrap)?;
            max_norm = max_norm.max(norm);
            if norm.is_finite() {
                opt.step(&grads)?;
            }
            if let Some(k) = &out.kl {
                kl = k.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            }
        }
        let eval = if (step + 1) % cfg.eval_every == 0 || step + 1 == cfg.steps {
            let e = evaluate(&policy, cfg, &judge)?;
            last = e;
            Some(e)
        } else {
            None
        };
        let log = StepLog {
            step,
            train_reward,
            eval,
            baseline: baseline.total(),
            eval_prompts: task.len(),
            kl,
            grad_norm: max_norm,
            example: format!("{}+{}= {}", r.prompts[0].0, r.prompts[0].1, r.text(0)),
        };
        on_step(&log);
        steps.push(log);
    }
    Ok(Run {
        baseline,
        steps,
        last,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A hand-written SVG of the reward curves on a 0..2 reward axis: training reward per step
/// (thin), evaluation reward and evaluation accuracy (dots; step 0 is the untrained policy)
/// and the frozen untrained baseline's reward (dashed).
pub fn svg(run: &Run, title: &str) -> String {
    let (w, h) = (720.0f64, 400.0f64);
    let (l, r, t, b) = (60.0, 20.0, 40.0, 50.0);
    let n = run.steps.len().max(1) as f64;
    let x = |s: f64| l + (w - l - r) * s / n;
    let y = |v: f64| t + (h - t - b) * (1.0 - v / 2.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        w / 2.0
    );
    for i in 0..=4 {
        let v = i as f64 * 0.5;
        s += &format!(
            "<line x1=\"{l}\" x2=\"{}\" y1=\"{y0:.1}\" y2=\"{y0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n",
            w - r,
            l - 6.0,
            y(v) + 4.0,
            y0 = y(v)
        );
    }
    let ticks = 5;
    for i in 0..=ticks {
        let st = (n * i as f64 / ticks as f64).round();
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{st}</text>\n",
            x(st),
            h - b + 18.0
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">\
         mean reward (accuracy + format)</text>\n\
         <rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n",
        (l + w - r) / 2.0,
        h - 12.0,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0,
        w - l - r,
        h - t - b
    );
    let train: Vec<String> = run
        .steps
        .iter()
        .map(|st| {
            format!(
                "{:.1},{:.1}",
                x(st.step as f64 + 1.0),
                y(st.train_reward as f64)
            )
        })
        .collect();
    s += &format!(
        "<polyline fill=\"none\" stroke=\"#9ecae1\" stroke-width=\"1\" points=\"{}\"/>\n",
        train.join(" ")
    );
    // Evaluation series, starting from the baseline (the same policy at step 0).
    let series = |f: &dyn Fn(&Eval) -> f32| -> Vec<(f64, f64)> {
        std::iter::once((x(0.0), y(f(&run.baseline) as f64)))
            .chain(
                run.steps
                    .iter()
                    .filter_map(|st| st.eval.map(|e| (x(st.step as f64 + 1.0), y(f(&e) as f64)))),
            )
            .collect()
    };
    for (points, colour, dash) in [
        (series(&|e| e.total()), "#08519c", ""),
        (
            series(&|e| e.accuracy),
            "#2ca02c",
            " stroke-dasharray=\"2 3\"",
        ),
    ] {
        let joined: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{a:.1},{b:.1}"))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
            joined.join(" ")
        );
        for (px, py) in points {
            s += &format!("<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3\" fill=\"{colour}\"/>\n");
        }
    }
    let yb = y(run.baseline.total() as f64);
    s += &format!(
        "<line x1=\"{l}\" x2=\"{}\" y1=\"{yb:.1}\" y2=\"{yb:.1}\" stroke=\"#d62728\" \
         stroke-dasharray=\"6 4\" stroke-width=\"1.5\"/>\n",
        w - r
    );
    let n_prompts = run.steps.first().map_or(String::new(), |st| {
        format!(" ({} prompts)", st.eval_prompts)
    });
    let legend = [
        (
            "#9ecae1",
            "",
            "training reward (the step's samples)".to_string(),
        ),
        ("#08519c", "", format!("evaluation reward{n_prompts}")),
        (
            "#2ca02c",
            " stroke-dasharray=\"2 3\"",
            "evaluation accuracy alone".to_string(),
        ),
        (
            "#d62728",
            " stroke-dasharray=\"6 4\"",
            "untrained baseline (reward)".to_string(),
        ),
    ];
    let (lx, ly0) = (w - r - 250.0, h - b - 18.0 * legend.len() as f64 - 4.0);
    for (i, (colour, dash, label)) in legend.iter().enumerate() {
        let ly = ly0 + 18.0 * i as f64;
        s += &format!(
            "<line x1=\"{lx}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" \
             stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{label}</text>\n",
            lx + 24.0,
            lx + 30.0,
            ly + 4.0
        );
    }
    s += "</svg>\n";
    s
}
