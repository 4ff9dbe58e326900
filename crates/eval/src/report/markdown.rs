//! The Markdown summary: where the responses came from, one table row per task, the mean GRPO rewards per task, then
//! per-subject and per-level breakdowns and SimpleQA-style grades where they apply, and
//! last the run diagnostics ([`crate::diagnostics`]) with their warnings.

use std::fmt::Write;

use super::Report;

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// Renders the summary.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation report: {}\n", r.name);
    // Where the responses came from (a file, an endpoint and model, a local checkpoint), so a
    // report never reads as a model's score when it scored something else.
    let mut sources: Vec<&str> = Vec::new();
    for t in &r.tasks {
        if !sources.contains(&t.source.as_str()) {
            sources.push(&t.source);
        }
    }
    match sources.as_slice() {
        [] => {}
        [one] => {
            let _ = writeln!(s, "**Responses:** {one}\n");
        }
        _ => {
            let _ = writeln!(s, "**Responses:**\n");
            for t in &r.tasks {
                let _ = writeln!(s, "- {}: {}", t.name, t.source);
            }
            let _ = writeln!(s);
        }
    }
    let _ = writeln!(
        s,
        "| task | checker | problems | k | pass@1 (95% CI) | pass@k | cons@k | format | mean chars | errors |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---|---:|---:|---:|---:|---:|");
    for t in &r.tasks {
        let m = &t.metrics;
        let passk = m.pass_at_k.get(&t.k).copied().unwrap_or(m.pass1);
        let _ = writeln!(
            s,
            "| {} | {:?} | {} | {} | {} ({}–{}) | {} | {} | {} | {:.0} | {} |",
            t.name,
            t.checker,
            t.problems,
            t.k,
            pct(m.pass1),
            pct(m.pass1_ci[0]),
            pct(m.pass1_ci[1]),
            pct(passk),
            m.cons_at_k.map(pct).unwrap_or_else(|| "–".into()),
            pct(m.format_rate),
            m.chars.mean,
            m.errors,
        );
    }
    let w = super::REWARD_WEIGHTS;
    let _ = writeln!(
        s,
        "\n**GRPO rewards** (means over samples; total = {} accuracy + {} format + {} language):\n\n\
         | task | accuracy | format | language (target) | total |\n|---|---:|---:|---:|---:|",
        w.accuracy, w.format, w.language
    );
    for t in &r.tasks {
        let m = &t.metrics.rewards;
        let _ = writeln!(
            s,
            "| {} | {:.3} | {:.3} | {:.3} ({}) | {:.3} |",
            t.name, m.accuracy, m.format, m.language, t.language, m.total
        );
    }
    for t in &r.tasks {
        if let Some(f) = &t.metrics.factual {
            let _ = writeln!(
                s,
                "\n**{}** (SimpleQA grades): correct {}, incorrect {}, not attempted {}, accuracy given attempted {}, F-score {}",
                t.name,
                pct(f.correct),
                pct(f.incorrect),
                pct(f.not_attempted),
                pct(f.accuracy_given_attempted),
                pct(f.f_score)
            );
        }
        for (title, groups) in [("subject", &t.by_subject), ("level", &t.by_level)] {
            if groups.is_empty() {
                continue;
            }
            let _ = writeln!(
                s,
                "\n**{}** by {title}:\n\n| {title} | problems | pass@1 |\n|---|---:|---:|",
                t.name
            );
            for (g, v) in groups.iter() {
                let _ = writeln!(s, "| {g} | {} | {} |", v.problems, pct(v.pass1));
            }
        }
        if let Some(iso) = t.isolation {
            let _ = writeln!(s, "\n**{}** sandbox isolation: `{iso:?}`", t.name);
        }
    }
    diagnostics(&mut s, r);
    s
}

fn diagnostics(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "\n## Diagnostics\n\n\
         | task | temperature | identical-sample problems | truncated (finish \"length\") | repetition loops | non-text |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    for t in &r.tasks {
        let d = &t.diagnostics;
        let truncated = match d.truncated_share {
            Some(share) => format!(
                "{} / {} ({}%)",
                d.truncated,
                d.finish_reason_known,
                pct(share)
            ),
            None => "n/a (no finish reason)".into(),
        };
        let identical = if d.temperature > 0.0 {
            format!("{} / {}", d.identical_problems, d.multi_sample_problems)
        } else {
            "n/a (temperature 0)".into()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            t.name, d.temperature, identical, truncated, d.repetition_loops, d.non_text
        );
    }
    let warnings: Vec<(&str, &String)> = r
        .tasks
        .iter()
        .flat_map(|t| t.diagnostics.warnings.iter().map(|w| (t.name.as_str(), w)))
        .collect();
    if warnings.is_empty() {
        let _ = writeln!(s, "\nNo warnings.");
    } else {
        let _ = writeln!(s);
        for (task, w) in warnings {
            let _ = writeln!(s, "- **warning** ({task}): {w}");
        }
    }
}
