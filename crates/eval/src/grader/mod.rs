//! Model-graded SimpleQA: the official grader of OpenAI's `simple-evals`
//! (`simpleqa_eval.py`, MIT licence) through any OpenAI-compatible endpoint, as an
//! alternative to the rule-based factual checker (which stays the default).
//!
//! The grader prompt is [`SIMPLEQA_GRADER_TEMPLATE`], the official text verbatim, filled
//! with the question (the rendered task prompt), the gold target (the first answer alias)
//! and the predicted answer (the response's answer section: the reasoning of an R1-style
//! response is not graded; a response whose think block never closed has an empty
//! answer). The reply is read as simple-evals reads it: the first `A`, `B` or `C` in it
//! is CORRECT, INCORRECT or NOT_ATTEMPTED, and a reply with none is NOT_ATTEMPTED.
//!
//! Grader requests go through the run's response cache under the task name
//! `TASK.grader` (one request per sample, id `ID#SAMPLE`, temperature 0), so an
//! interrupted run resumes without asking the grader again.
//!
//! ```
//! use eval::grader::{parse_grade, simpleqa_prompt, Grade};
//! let p = simpleqa_prompt("Who wrote Hamlet?", "William Shakespeare", "Shakespeare");
//! assert!(p.contains("Question: Who wrote Hamlet?\nGold target: William Shakespeare\nPredicted answer: Shakespeare\n"));
//! assert_eq!(parse_grade("A"), Grade::Correct);
//! assert_eq!(parse_grade("I'd say C"), Grade::NotAttempted);
//! ```

use std::sync::Arc;

use anyhow::Result;
use judge::response::{split_with, SplitOptions};
use serde_json::{Map, Value};

use crate::dataset::Problem;
use crate::run::{generate, RunOptions};
use crate::source::cache::Cache;
use crate::source::{Generation, ResponseSource};
use crate::task::{Sampling, Task};

/// The official SimpleQA grader prompt of `simple-evals`, with `{question}`, `{target}`
/// and `{predicted_answer}` placeholders (trailing newline of the file removed, as the
/// original is `.strip()`ped).
pub const SIMPLEQA_GRADER_TEMPLATE: &str = include_str!("simpleqa_template.txt");

/// A SimpleQA grade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grade {
    /// `A`: the answer contains the gold target and contradicts nothing.
    Correct,
    /// `B`: the answer contradicts the gold target.
    Incorrect,
    /// `C`: the answer neither gives nor contradicts the gold target.
    NotAttempted,
}

impl Grade {
    /// `CORRECT`, `INCORRECT` or `NOT_ATTEMPTED`, as in simple-evals and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Grade::Correct => "CORRECT",
            Grade::Incorrect => "INCORRECT",
            Grade::NotAttempted => "NOT_ATTEMPTED",
        }
    }
}

/// The grader prompt for one answer (placeholders filled in one pass, so an answer that
/// contains `{target}` is left as it is).
pub fn simpleqa_prompt(question: &str, target: &str, predicted_answer: &str) -> String {
    let mut record = Map::new();
    record.insert("question".into(), Value::String(question.into()));
    record.insert("target".into(), Value::String(target.into()));
    record.insert(
        "predicted_answer".into(),
        Value::String(predicted_answer.into()),
    );
    crate::prompt::render(SIMPLEQA_GRADER_TEMPLATE.trim_end(), &record)
        .expect("the template's only braces are its three placeholders")
}

/// Reads a grader reply: the first `A`, `B` or `C` (simple-evals' `re.search("(A|B|C)")`),
/// NOT_ATTEMPTED when there is none.
pub fn parse_grade(reply: &str) -> Grade {
    match reply.chars().find(|c| matches!(c, 'A' | 'B' | 'C')) {
        Some('A') => Grade::Correct,
        Some('B') => Grade::Incorrect,
        _ => Grade::NotAttempted,
    }
}

/// The grades of one task's samples, `[problem][sample]`: `Ok` for a graded sample, `Err`
/// for one whose grading failed (or that has no response to grade).
pub type Grades = Vec<Vec<Result<Grade, String>>>;

/// Grades every generated sample of a factual task with the LLM grader.
pub async fn grade_simpleqa(
    task: &Task,
    problems: &[Problem],
    gens: &[Vec<Result<Generation, String>>],
    grader: Arc<dyn ResponseSource>,
    cache: Option<Arc<Cache>>,
    opts: &RunOptions,
) -> Result<Grades> {
    let mut gtask = task.clone();
    gtask.name = format!("{}.grader", task.name);
    gtask.prompt = "{grader_prompt}".into();
    gtask.system = None;
    gtask.samples = 1;
    gtask.stop = Vec::new();
    gtask.sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
        max_tokens: 2048,
        seed: None,
    };
    let split = SplitOptions {
        think_prefilled: task.think_prefilled,
    };
    let mut asks = Vec::new();
    let mut slots = Vec::new();
    for (pi, p) in problems.iter().enumerate() {
        let question = crate::prompt::render(&task.prompt, &p.record)
            .map_err(|e| anyhow::anyhow!("task {}, problem {}: {e}", task.name, p.id))?;
        let target = p.gold.all().first().cloned().unwrap_or_default();
        for (s, g) in gens[pi].iter().enumerate() {
            let Ok(g) = g else { continue };
            let text = g.full_text();
            let answer = split_with(&text, split).answer.unwrap_or("").trim();
            let mut record = Map::new();
            record.insert(
                "grader_prompt".into(),
                Value::String(simpleqa_prompt(&question, target, answer)),
            );
            asks.push(Problem {
                id: format!("{}#{s}", p.id),
                record,
                gold: judge::Gold::One(String::new()),
                tests: Value::Null,
                entry_point: None,
                subject: None,
                level: None,
            });
            slots.push((pi, s));
        }
    }
    let replies = generate(&gtask, &asks, grader, cache, opts).await?;
    let mut grades: Grades = gens
        .iter()
        .map(|ss| {
            ss.iter()
                .map(|g| match g {
                    Ok(_) => Err("not graded".to_string()),
                    Err(e) => Err(format!("no response to grade: {e}")),
                })
                .collect()
        })
        .collect();
    for ((pi, s), mut reply) in slots.into_iter().zip(replies) {
        grades[pi][s] = match reply.remove(0) {
            Ok(r) => Ok(parse_grade(&r.text)),
            Err(e) => Err(format!("grader: {e}")),
        };
    }
    Ok(grades)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_the_official_text() {
        let t = SIMPLEQA_GRADER_TEMPLATE.trim_end();
        assert!(t.starts_with("Your job is to look at a question, a gold target, and a predicted answer, and then assign a grade of either [\"CORRECT\", \"INCORRECT\", \"NOT_ATTEMPTED\"]."));
        assert!(
            t.ends_with("Just return the letters \"A\", \"B\", or \"C\", with no text around it.")
        );
        assert_eq!(t.matches('{').count(), 3);
    }

    #[test]
    fn grades_follow_simple_evals() {
        assert_eq!(parse_grade("B"), Grade::Incorrect);
        assert_eq!(parse_grade("  C\n"), Grade::NotAttempted);
        assert_eq!(parse_grade("no letter here"), Grade::NotAttempted);
        // The first capital A/B/C anywhere, as the official regex does.
        assert_eq!(parse_grade("Bad answer: A"), Grade::Incorrect);
    }

    #[test]
    fn placeholders_are_filled_once() {
        let p = simpleqa_prompt("q {target}", "T", "{question}");
        assert!(p.contains("Question: q {target}\nGold target: T\nPredicted answer: {question}\n"));
    }
}
