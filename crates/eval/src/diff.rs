//! `eval diff OLD.json NEW.json`: per-sample changes between two reports.
//!
//! A sample is keyed by (task, problem id, sample index). A **regression** is a sample
//! correct in OLD and wrong (or missing) in NEW; an improvement the reverse; a change is
//! an extracted answer that differs with the same verdict. Samples only in NEW are
//! listed as added.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::{Context, Result};
use serde_json::Value;

/// What happened to one sample.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Correct before, wrong or missing now.
    Regression,
    /// Wrong before, correct now.
    Improvement,
    /// Same verdict, different extracted answer.
    AnswerChanged,
    /// Only in the new report.
    Added,
}

/// One changed sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The kind of change.
    pub kind: ChangeKind,
    /// `task/id/sample`.
    pub key: String,
    /// Verdict and answer before (`None`: absent).
    pub old: Option<(bool, Option<String>)>,
    /// Verdict and answer after (`None`: absent).
    pub new: Option<(bool, Option<String>)>,
}

type Samples = BTreeMap<String, (bool, Option<String>)>;

fn samples(report: &Value, name: &str) -> Result<Samples> {
    let tasks = report
        .get("tasks")
        .and_then(Value::as_array)
        .with_context(|| format!("{name}: not an eval report (no `tasks` array)"))?;
    let mut out = BTreeMap::new();
    for t in tasks {
        let task = t["name"].as_str().unwrap_or("?");
        for s in t["samples"].as_array().into_iter().flatten() {
            let id = match &s["id"] {
                Value::String(x) => x.clone(),
                v => v.to_string(),
            };
            let key = format!("{task}/{id}/{}", s["sample"]);
            let correct = s["correct"].as_bool().unwrap_or(false);
            let extracted = s["extracted"].as_str().map(str::to_string);
            out.insert(key, (correct, extracted));
        }
    }
    Ok(out)
}

/// The changes from `old` to `new` (parsed report JSON), regressions first.
pub fn diff(old: &Value, new: &Value) -> Result<Vec<Change>> {
    let (a, b) = (samples(old, "OLD")?, samples(new, "NEW")?);
    let mut out = Vec::new();
    for (key, o) in &a {
        let n = b.get(key);
        let kind = match n {
            None if o.0 => Some(ChangeKind::Regression),
            None => Some(ChangeKind::AnswerChanged),
            Some(n) if o.0 && !n.0 => Some(ChangeKind::Regression),
            Some(n) if !o.0 && n.0 => Some(ChangeKind::Improvement),
            Some(n) if o.1 != n.1 => Some(ChangeKind::AnswerChanged),
            _ => None,
        };
        if let Some(kind) = kind {
            out.push(Change {
                kind,
                key: key.clone(),
                old: Some(o.clone()),
                new: n.cloned(),
            });
        }
    }
    for (key, n) in &b {
        if !a.contains_key(key) {
            out.push(Change {
                kind: ChangeKind::Added,
                key: key.clone(),
                old: None,
                new: Some(n.clone()),
            });
        }
    }
    out.sort_by(|x, y| (&x.kind, &x.key).cmp(&(&y.kind, &y.key)));
    Ok(out)
}

fn show(v: &Option<(bool, Option<String>)>) -> String {
    match v {
        None => "absent".into(),
        Some((c, e)) => format!(
            "{} {}",
            if *c { "correct" } else { "wrong" },
            e.as_deref()
                .map(|e| format!("{e:?}"))
                .unwrap_or_else(|| "(no answer)".into())
        ),
    }
}

/// A human-readable listing and the number of regressions.
pub fn render(changes: &[Change]) -> (String, usize) {
    let mut s = String::new();
    let regressions = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Regression)
        .count();
    for c in changes {
        let _ = writeln!(
            s,
            "{:<14} {}: {} -> {}",
            format!("{:?}", c.kind),
            c.key,
            show(&c.old),
            show(&c.new)
        );
    }
    let _ = writeln!(
        s,
        "{} changed samples, {regressions} regressions, {} improvements",
        changes.len(),
        changes
            .iter()
            .filter(|c| c.kind == ChangeKind::Improvement)
            .count()
    );
    (s, regressions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classifies_changes() {
        let old = json!({"tasks": [{"name": "t", "samples": [
            {"id": "a", "sample": 0, "correct": true, "extracted": "1"},
            {"id": "b", "sample": 0, "correct": false, "extracted": "2"},
            {"id": "c", "sample": 0, "correct": false, "extracted": "3"},
            {"id": "d", "sample": 0, "correct": true, "extracted": "4"}]}]});
        let new = json!({"tasks": [{"name": "t", "samples": [
            {"id": "a", "sample": 0, "correct": false, "extracted": "1"},
            {"id": "b", "sample": 0, "correct": true, "extracted": "2"},
            {"id": "c", "sample": 0, "correct": false, "extracted": "x"},
            {"id": "e", "sample": 0, "correct": true, "extracted": null}]}]});
        let d = diff(&old, &new).unwrap();
        let kinds: Vec<_> = d.iter().map(|c| (c.kind.clone(), c.key.as_str())).collect();
        assert_eq!(
            kinds,
            vec![
                (ChangeKind::Regression, "t/a/0"),
                (ChangeKind::Regression, "t/d/0"),
                (ChangeKind::Improvement, "t/b/0"),
                (ChangeKind::AnswerChanged, "t/c/0"),
                (ChangeKind::Added, "t/e/0"),
            ]
        );
        assert_eq!(render(&d).1, 2);
        assert!(diff(&json!({}), &new).is_err());
    }
}
