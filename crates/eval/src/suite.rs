//! The bundled suite, a self-test of the judge and the harness (not a benchmark): problems
//! written for this project across math, grade-school arithmetic, multiple choice, short
//! factual answers and code (HumanEval-style and stdin/stdout), each with several R1-format
//! reference responses written for the suite to exercise one checking rule each (right,
//! wrong, truncated, self-correcting, missing think tag). They are not model output, and
//! the suite's scores say nothing about any model. Embedded in the binary, so
//! `cargo run -p eval` needs nothing outside the repository (code tasks need `python3`).

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::dataset;
use crate::report::Report;
use crate::run::{run_task, RunOptions};
use crate::source::file::ResponseFile;
use crate::task::Task;

/// One bundled task: (file stem, task YAML, dataset JSONL, responses JSONL).
pub type Entry = (&'static str, &'static str, &'static str, &'static str);

macro_rules! entry {
    ($n:literal) => {
        (
            $n,
            include_str!(concat!("../suite/", $n, ".yaml")),
            include_str!(concat!("../suite/", $n, ".jsonl")),
            include_str!(concat!("../suite/", $n, ".responses.jsonl")),
        )
    };
}

/// The bundled tasks.
pub const SUITE: &[Entry] = &[
    entry!("math"),
    entry!("gsm8k"),
    entry!("mc"),
    entry!("factual"),
    entry!("code"),
    entry!("stdio"),
];

/// Runs the whole bundled self-test on its reference responses.
pub async fn run(opts: &RunOptions) -> Result<Report> {
    let mut tasks = Vec::new();
    for (stem, yaml, data, responses) in SUITE {
        let task = Task::from_yaml_str(yaml, &format!("suite/{stem}.yaml"))?;
        let problems = dataset::load_bytes(&task, data.as_bytes(), &format!("suite/{stem}.jsonl"))?;
        let name =
            format!("suite/{stem}.responses.jsonl (written for the self-test, not model output)");
        let source = ResponseFile::parse(responses, &name)?;
        let report = run_task(&task, &problems, Arc::new(source), None, opts)
            .await
            .with_context(|| format!("bundled task {}", task.name))?;
        tasks.push(report);
    }
    Ok(Report {
        version: crate::report::REPORT_VERSION,
        name: "bundled self-test (judge and harness; responses written for the suite)".into(),
        tasks,
    })
}
