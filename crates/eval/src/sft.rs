//! `eval export-sft`: the correct, well-formed samples of a finished run as a supervised
//! fine-tuning set (R1's rejection sampling).
//!
//! Reads `samples.jsonl`, which `eval run` (and the bundled suite) write beside
//! `report.json`: one line per sample with its prompt, response, verdict and rewards
//! ([`SampleLine`]). A sample is kept when it has a response, is **correct** and is
//! **well-formed** (format reward 1.0: the R1 think format, `<think>` reasoning
//! `</think>` answer). Each kept sample becomes one line in the conversational format of
//! TRL's `SFTTrainer` and most chat SFT trainers:
//!
//! ```json
//! {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": PROMPT},
//!               {"role": "assistant", "content": RESPONSE}],
//!  "id": "divisors-12", "task": "suite-math", "sample": 0}
//! ```
//!
//! The system message is present only when the task has a system prompt. The assistant
//! content is the response as it was judged (a separately returned reasoning is put back
//! in `<think>` form); a response whose opening `<think>` was pre-filled by the chat
//! template (format `prefilled`) gets `<think>\n` prepended, so every line holds the
//! whole think block.
//!
//! [`OnePerProblem`] keeps one sample per problem: the shortest (ties: the lowest sample
//! index) or a random one, chosen by a hash of the seed, task and problem id (the same
//! seed gives the same choice on every machine, whatever the order of the lines).
//! Output lines follow the order of `samples.jsonl` (task, problem, sample).
//!
//! Malformed input is an error naming the file and line, never a panic.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::report::SampleLine;

/// Which sample to keep when a problem has several correct, well-formed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnePerProblem {
    /// The shortest response (in characters; ties: the lowest sample index).
    Shortest,
    /// A random one, chosen from the seed, task and problem id.
    Random,
}

impl fmt::Display for OnePerProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnePerProblem::Shortest => "shortest",
            OnePerProblem::Random => "random",
        })
    }
}

/// Options of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportOptions {
    /// Keep one sample per problem (default: every kept sample).
    pub one_per_problem: Option<OnePerProblem>,
    /// Seed of [`OnePerProblem::Random`].
    pub seed: u64,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

/// One output line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SftRecord {
    /// The conversation: optional system prompt, the prompt, the response.
    pub messages: Vec<Message>,
    /// Problem id.
    pub id: String,
    /// Task name.
    pub task: String,
    /// Sample index in the run.
    pub sample: usize,
}

/// Counts of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportStats {
    /// Samples read.
    pub samples: usize,
    /// Samples both correct and well-formed.
    pub eligible: usize,
    /// Lines written.
    pub written: usize,
    /// Problems read.
    pub problems: usize,
    /// Problems with at least one line written.
    pub problems_written: usize,
}

/// The samples file of a run: `DIR/samples.jsonl` for a folder, else the path itself.
pub fn samples_path(run: &Path) -> PathBuf {
    if run.is_dir() {
        run.join("samples.jsonl")
    } else {
        run.to_path_buf()
    }
}

/// Reads a `samples.jsonl`; every problem is reported as `file:line`.
pub fn read_samples(path: &Path) -> Result<Vec<SampleLine>> {
    let name = path.display();
    let bytes = std::fs::read(path).with_context(|| {
        if path.file_name().is_some_and(|f| f == "samples.jsonl") && !path.exists() {
            format!(
                "reading {name}: not found (`eval run` writes samples.jsonl beside report.json; \
                 for a run made before it did, rerun `eval run` with the same --out: cached \
                 responses are not generated again)"
            )
        } else {
            format!("reading {name}")
        }
    })?;
    let text =
        String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{name}: not UTF-8 text: {e}"))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let s: SampleLine =
            serde_json::from_str(line).with_context(|| format!("{name}:{n}: not a sample line"))?;
        if !seen.insert((s.task.clone(), s.id.clone(), s.sample)) {
            bail!(
                "{name}:{n}: sample {} of problem {:?} in task {:?} appears twice",
                s.sample,
                s.id,
                s.task
            );
        }
        out.push(s);
    }
    Ok(out)
}

fn eligible(s: &SampleLine) -> bool {
    s.correct && s.rewards.format == 1.0 && s.error.is_none() && s.response.is_some()
}

/// SplitMix64 of the seed and an FNV-1a hash of the problem: the random choice.
fn choice_hash(seed: u64, task: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task.bytes().chain([0]).chain(id.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Chooses the lines to write (see the module documentation); `name` is the file for
/// errors.
pub fn select(
    samples: &[SampleLine],
    opts: &ExportOptions,
    name: &str,
) -> Result<(Vec<SftRecord>, ExportStats)> {
    let mut stats = ExportStats {
        samples: samples.len(),
        ..ExportStats::default()
    };
    // Problems in order of appearance, with the indices of their eligible samples.
    let mut order: Vec<(&str, &str)> = Vec::new();
    let mut groups: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        let key = (s.task.as_str(), s.id.as_str());
        let g = groups.entry(key).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        if eligible(s) {
            if s.prompt.is_none() {
                bail!(
                    "{name}: sample {} of problem {:?} in task {:?} has no prompt (written \
                     without transcripts)",
                    s.sample,
                    s.id,
                    s.task
                );
            }
            g.push(i);
        }
    }
    stats.problems = order.len();
    stats.eligible = groups.values().map(Vec::len).sum();
    let mut keep: Vec<usize> = Vec::new();
    for key in &order {
        let g = &groups[key];
        if g.is_empty() {
            continue;
        }
        stats.problems_written += 1;
        match opts.one_per_problem {
            None => keep.extend(g),
            Some(OnePerProblem::Shortest) => {
                let len = |&i: &usize| {
                    let s = &samples[i];
                    (
                        s.response.as_deref().map_or(0, |r| r.chars().count()),
                        s.sample,
                    )
                };
                keep.extend(g.iter().min_by_key(|i| len(i)));
            }
            Some(OnePerProblem::Random) => {
                let mut by_sample = g.clone();
                by_sample.sort_by_key(|&i| samples[i].sample);
                let h = choice_hash(opts.seed, key.0, key.1);
                keep.push(by_sample[(h % g.len() as u64) as usize]);
            }
        }
    }
    keep.sort_unstable();
    let records: Vec<SftRecord> = keep
        .into_iter()
        .map(|i| {
            let s = &samples[i];
            let mut messages = Vec::with_capacity(3);
            if let Some(system) = &s.system {
                messages.push(Message {
                    role: "system",
                    content: system.clone(),
                });
            }
            messages.push(Message {
                role: "user",
                content: s.prompt.clone().unwrap_or_default(),
            });
            let response = s.response.clone().unwrap_or_default();
            let content = if s.format == "prefilled" {
                format!("<think>\n{response}")
            } else {
                response
            };
            messages.push(Message {
                role: "assistant",
                content,
            });
            SftRecord {
                messages,
                id: s.id.clone(),
                task: s.task.clone(),
                sample: s.sample,
            }
        })
        .collect();
    stats.written = records.len();
    Ok((records, stats))
}

/// Exports the run at `run` (a run folder or its `samples.jsonl`) to the JSONL file `out`.
pub fn export(run: &Path, out: &Path, opts: &ExportOptions) -> Result<ExportStats> {
    let path = samples_path(run);
    let samples = read_samples(&path)?;
    let (records, stats) = select(&samples, opts, &path.display().to_string())?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for r in &records {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    w.flush()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use judge::reward::RewardBreakdown;

    fn line(id: &str, sample: usize, correct: bool, format: &str, response: &str) -> SampleLine {
        let ok = format == "full" || format == "prefilled";
        SampleLine {
            task: "t".into(),
            id: id.into(),
            sample,
            prompt: Some(format!("question {id}")),
            system: None,
            response: Some(response.into()),
            correct,
            extracted: None,
            format: format.into(),
            rewards: RewardBreakdown {
                accuracy: f32::from(u8::from(correct)),
                format: f32::from(u8::from(ok)),
                language: 1.0,
                total: 0.0,
            },
            error: None,
        }
    }

    #[test]
    fn keeps_correct_well_formed_samples() {
        let lines = vec![
            line("a", 0, true, "full", "<think>long reasoning</think>1"),
            line("a", 1, true, "prefilled", "short</think>1"),
            line("a", 2, false, "full", "<think>r</think>2"),
            line("b", 0, true, "no_tags", "1"),
            line("b", 1, true, "malformed", "<think></think>1"),
        ];
        let (all, stats) = select(&lines, &ExportOptions::default(), "x").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            (stats.samples, stats.problems, stats.problems_written),
            (5, 2, 1)
        );
        assert_eq!(all[1].messages[1].content, "<think>\nshort</think>1");
        assert_eq!(all[0].messages[0].role, "user");
        let shortest = ExportOptions {
            one_per_problem: Some(OnePerProblem::Shortest),
            seed: 0,
        };
        let (one, _) = select(&lines, &shortest, "x").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].sample, 1);
        // Random: same seed, same choice, whatever the order of the lines.
        let random = |seed| ExportOptions {
            one_per_problem: Some(OnePerProblem::Random),
            seed,
        };
        let mut rev = lines.clone();
        rev.reverse();
        for seed in 0..20 {
            let a = select(&lines, &random(seed), "x").unwrap().0;
            let b = select(&rev, &random(seed), "x").unwrap().0;
            assert_eq!(a, b);
        }
        let picks: HashSet<usize> = (0..20)
            .map(|seed| select(&lines, &random(seed), "x").unwrap().0[0].sample)
            .collect();
        assert_eq!(picks.len(), 2, "both samples get picked by some seed");
    }
}
