//! The single entry point: `check(kind, gold, response) -> Verdict`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::choice::{extract_choice, gold_letter, Choice};
use crate::error::JudgeError;
use crate::extract::{anchored, final_answer, last_boxed, tail, Extraction, Place, Wanted};
use crate::factual;
use crate::math::{self, Expr};
use crate::numeric::{gold_value, number_value};
use crate::response::{split_with, Split, SplitOptions, ThinkFormat};

/// Responses longer than this are cut to their last part before judging (the answer is
/// at the end); see also [`crate::extract::MAX_SECTION`].
pub const MAX_RESPONSE: usize = 1 << 20;

/// Which checker to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Math answers (MATH, AIME...): boxed answer, symbolic equivalence.
    #[default]
    Math,
    /// Multiple choice (GPQA, MMLU): one option letter.
    Mc,
    /// Grade-school math: a number, compared exactly.
    Gsm8k,
    /// Short factual answers with aliases (SimpleQA-style, TriviaQA).
    Factual,
}

impl FromStr for Kind {
    type Err = JudgeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "math" => Ok(Kind::Math),
            "mc" => Ok(Kind::Mc),
            "gsm8k" => Ok(Kind::Gsm8k),
            "factual" => Ok(Kind::Factual),
            other => Err(JudgeError::UnknownKind(other.to_string())),
        }
    }
}

/// The reference answer: one string, or a list of accepted aliases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Gold {
    /// A single reference.
    One(String),
    /// Accepted aliases; any one matching is correct.
    Aliases(Vec<String>),
}

impl Gold {
    /// The references as a slice-like list.
    pub fn all(&self) -> Vec<&str> {
        match self {
            Gold::One(s) => vec![s.as_str()],
            Gold::Aliases(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl From<&str> for Gold {
    fn from(s: &str) -> Self {
        Gold::One(s.to_string())
    }
}

impl From<String> for Gold {
    fn from(s: String) -> Self {
        Gold::One(s)
    }
}

impl From<Vec<String>> for Gold {
    fn from(v: Vec<String>) -> Self {
        Gold::Aliases(v)
    }
}

/// Which final answers count (math and GSM8K; multiple-choice and factual answers are
/// extracted the same way under both).
///
/// Under both policies nothing from unfinished reasoning counts: an unterminated
/// `<think>` / `<|begin_of_thought|>` (or, with [`JudgeConfig::think_prefilled`], a
/// response without `</think>`) has no answer, and in a response without tags the answer
/// must end the text (see [`crate::extract`]). The think-format verdict
/// ([`Verdict::format`]) is reported separately and never changes correctness.
///
/// ```
/// use judge::{AnswerPolicy, Judge, JudgeConfig, Kind};
/// let careful = Judge::default();
/// let strict = Judge::new(JudgeConfig { policy: AnswerPolicy::Strict, ..JudgeConfig::default() });
/// let unboxed = "<think>3 + 4 = 7</think>So, the mean of her quiz scores is 7.";
/// assert!(careful.check(Kind::Math, &"7".into(), unboxed).correct);
/// assert!(!strict.check(Kind::Math, &"7".into(), unboxed).correct);
/// let boxed = "<think>3 + 4 = 7</think>So the mean is $\\boxed{7}$.";
/// assert!(strict.check(Kind::Math, &"7".into(), boxed).correct);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerPolicy {
    /// The default: a clear final answer counts, boxed or not (`\\boxed{}`, `boxed{}` with
    /// the backslash lost, `**Answer:** X`, `The final answer is X`, a closing `So, the
    /// total is 7.`); when the summary after the reasoning gives no answer (cut off), a
    /// final answer that ends the reasoning (`**Final Answer** \\boxed{7}`) counts; a box
    /// followed by a different stated answer is no answer.
    #[default]
    Careful,
    /// R1's rule-based accuracy reward: only the last `\\boxed{}` of the answer section
    /// after the reasoning counts (in a response without tags, only a box that ends it).
    Strict,
}

impl FromStr for AnswerPolicy {
    type Err = JudgeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "careful" => Ok(AnswerPolicy::Careful),
            "strict" => Ok(AnswerPolicy::Strict),
            other => Err(JudgeError::UnknownPolicy(other.to_string())),
        }
    }
}

impl std::fmt::Display for AnswerPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnswerPolicy::Careful => "careful",
            AnswerPolicy::Strict => "strict",
        })
    }
}

/// Options of a [`Judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JudgeConfig {
    /// Give no answer to responses without a closing think tag (default `false`: a
    /// response with no tags at all is judged as text that may end in an answer).
    pub require_think: bool,
    /// Which final answers count (default [`AnswerPolicy::Careful`]).
    pub policy: AnswerPolicy,
    /// The prompt pre-filled `<think>` (R1 chat templates): text before `</think>` is
    /// reasoning, and a response without `</think>` is unfinished reasoning with no
    /// answer (default `false`).
    pub think_prefilled: bool,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Whether the final answer matches the reference.
    pub correct: bool,
    /// The extracted final answer, if any.
    pub extracted: Option<String>,
    /// How the response used the think tags.
    #[serde(skip)]
    pub format: ThinkFormat,
}

impl Verdict {
    fn none(format: ThinkFormat) -> Self {
        Verdict {
            correct: false,
            extracted: None,
            format,
        }
    }
}

/// Rule-based judge; cheap to construct, `Send + Sync`, usable as a GRPO reward.
#[derive(Debug, Clone, Copy, Default)]
pub struct Judge {
    config: JudgeConfig,
}

fn is_list_reference(gold: &str) -> bool {
    match math::parse(gold) {
        Ok(Expr::List(v) | Expr::Set(v) | Expr::Tuple(v)) => v.len() > 1,
        Ok(e) => {
            let mut pm = false;
            e.visit(&mut |x| pm |= matches!(x, Expr::PlusMinus(..)));
            pm
        }
        Err(_) => false,
    }
}

impl Judge {
    /// A judge with the given options.
    pub fn new(config: JudgeConfig) -> Self {
        Judge { config }
    }

    /// The judge's options.
    pub fn config(&self) -> JudgeConfig {
        self.config
    }

    /// The math/GSM8K final answer of a split response under the judge's policy.
    fn final_of(&self, parts: &Split<'_>, section: &str, place: Place, want: Wanted) -> Extraction {
        let ex = final_answer(section, want);
        let careful = self.config.policy == AnswerPolicy::Careful;
        let cut = parts.answer_cut || section.trim().is_empty();
        let reasoning = parts.reasoning;
        match ex {
            Extraction::Nothing | Extraction::Truncated
                if careful && cut && place == Place::Answer && !reasoning.trim().is_empty() =>
            {
                // The summary after the reasoning was cut off before its answer: a
                // final answer that ends the reasoning counts.
                let open = Wanted {
                    place: Place::Open,
                    short: false,
                    ..want
                };
                match final_answer(reasoning, open) {
                    Extraction::Answer(a) => Extraction::Answer(a),
                    _ => ex,
                }
            }
            _ => ex,
        }
    }

    /// Judges `response` against `gold` with the checker for `kind`.
    ///
    /// ```
    /// use judge::{Judge, Kind};
    /// let judge = Judge::default();
    /// let v = judge.check(Kind::Gsm8k, &"#### 1200".into(), "So she pays $1,200.00.</think>\\boxed{1,200}");
    /// assert!(v.correct);
    /// ```
    pub fn check(&self, kind: Kind, gold: &Gold, response: &str) -> Verdict {
        let response = if response.len() > MAX_RESPONSE {
            let mut start = response.len() - MAX_RESPONSE;
            while !response.is_char_boundary(start) {
                start += 1;
            }
            &response[start..]
        } else {
            response
        };
        let parts = split_with(
            response,
            SplitOptions {
                think_prefilled: self.config.think_prefilled,
            },
        );
        let Some(section) = parts.answer else {
            return Verdict::none(parts.format);
        };
        if self.config.require_think && parts.format == ThinkFormat::NoTags {
            return Verdict::none(parts.format);
        }
        let place = if parts.format == ThinkFormat::NoTags {
            Place::Open
        } else {
            Place::Answer
        };
        let strict = self.config.policy == AnswerPolicy::Strict;
        let golds = gold.all();
        let (correct, extracted) = match kind {
            Kind::Math => {
                let want = Wanted {
                    place,
                    boxed_only: strict,
                    list: golds.iter().any(|g| is_list_reference(g)),
                    gsm8k: false,
                    short: !strict,
                };
                match self.final_of(&parts, section, place, want).answer() {
                    Some(ans) => (
                        golds.iter().any(|g| math::answers_match(g, &ans)),
                        Some(ans),
                    ),
                    None => (false, None),
                }
            }
            Kind::Gsm8k => match self
                .final_of(
                    &parts,
                    section,
                    place,
                    Wanted {
                        place,
                        boxed_only: strict,
                        list: false,
                        gsm8k: true,
                        short: !strict,
                    },
                )
                .answer()
            {
                Some(ans) => {
                    let p = number_value(&ans);
                    let ok = p.is_some() && golds.iter().any(|g| gold_value(g) == p);
                    (ok, Some(ans))
                }
                None => (false, None),
            },
            Kind::Mc => match extract_choice(section) {
                Choice::One(c) => (
                    golds.iter().any(|g| gold_letter(g) == Some(c)),
                    Some(c.to_string()),
                ),
                Choice::Several => (false, Some("<several options>".to_string())),
                Choice::Nothing => (false, None),
            },
            Kind::Factual => {
                let section = tail(section);
                let ans = match last_boxed(section, false) {
                    Err(_) => None,
                    Ok(Some(b)) => Some(math::text_form(&b).replace("\\", "")),
                    Ok(None) => anchored(section).or_else(|| {
                        let t = section.trim();
                        (!t.is_empty()).then(|| {
                            t.lines()
                                .rev()
                                .find(|l| !l.trim().is_empty())
                                .unwrap_or(t)
                                .to_string()
                        })
                    }),
                };
                match ans {
                    Some(a) => (factual::score(&a, &golds).correct, Some(a)),
                    None => (false, None),
                }
            }
        };
        Verdict {
            correct,
            extracted,
            format: parts.format,
        }
    }

    /// Like [`Judge::check`] for raw bytes; invalid UTF-8 is replaced, never rejected.
    pub fn check_bytes(&self, kind: Kind, gold: &Gold, response: &[u8]) -> Verdict {
        let text = String::from_utf8_lossy(response);
        self.check(kind, gold, &text)
    }

    /// GRPO accuracy reward: 1.0 for a correct answer, 0.0 otherwise.
    pub fn accuracy_reward(&self, kind: Kind, gold: &Gold, response: &str) -> f32 {
        if self.check(kind, gold, response).correct {
            1.0
        } else {
            0.0
        }
    }

    /// GRPO format reward: 1.0 when the response follows the R1 think format (under
    /// [`JudgeConfig::think_prefilled`], a response without `</think>` gets 0.0).
    pub fn format_reward(&self, response: &str) -> f32 {
        let options = SplitOptions {
            think_prefilled: self.config.think_prefilled,
        };
        if split_with(response, options).format.is_valid() {
            1.0
        } else {
            0.0
        }
    }
}
