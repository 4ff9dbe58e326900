//! The harness on real public data from `../shared/data` (skipped with a message when
//! absent): every row of MATH-500, AIME 2024, GSM8K and HumanEval loads through the
//! built-in task files, and HumanEval's canonical solutions pass 164/164 in the sandbox
//! while empty and `pass` completions fail all.

use std::path::PathBuf;

use eval::run::{score, RunOptions};
use eval::source::Generation;
use eval::task::builtin;

fn data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP: ../shared/data not found beside the repository");
        None
    }
}

#[test]
fn every_row_loads_through_the_builtin_tasks() {
    let Some(dir) = data_dir() else { return };
    for (name, rows) in [
        ("math500", 500),
        ("aime2024", 30),
        ("gsm8k", 1319),
        ("humaneval", 164),
    ] {
        let task = builtin(name).unwrap();
        let ps = eval::dataset::load(&task, &task.dataset_path(&dir)).unwrap();
        assert_eq!(ps.len(), rows, "{name}");
        for p in &ps {
            eval::prompt::render(&task.prompt, &p.record).unwrap();
            if task.checker.is_code() {
                assert!(
                    p.entry_point.is_some() && p.tests.is_string(),
                    "{name} {}",
                    p.id
                );
            } else {
                assert!(!p.gold.all()[0].is_empty(), "{name} {} has no answer", p.id);
            }
        }
    }
}

#[test]
fn humaneval_canonical_solutions_pass_and_empty_completions_fail() {
    let Some(dir) = data_dir() else { return };
    let task = builtin("humaneval").unwrap();
    let ps = eval::dataset::load(&task, &task.dataset_path(&dir)).unwrap();
    let opts = RunOptions {
        progress: false,
        workers: 6,
        ..RunOptions::default()
    };
    let gens =
        |f: &dyn Fn(&eval::dataset::Problem) -> String| -> Vec<Vec<Result<Generation, String>>> {
            ps.iter()
                .map(|p| {
                    vec![Ok(Generation {
                        text: f(p),
                        ..Default::default()
                    })]
                })
                .collect()
        };
    let t = std::time::Instant::now();
    let r = score(
        &task,
        &ps,
        &gens(&|p| p.record["canonical_solution"].as_str().unwrap().to_string()),
        "canonical".into(),
        &opts,
    );
    let failed: Vec<_> = r
        .samples
        .iter()
        .filter(|s| !s.correct)
        .map(|s| (&s.id, &s.extracted))
        .collect();
    assert!(failed.is_empty(), "canonical solutions failed: {failed:?}");
    assert_eq!(r.metrics.pass1, 1.0);
    eprintln!(
        "164 canonical solutions in {:?} ({:?})",
        t.elapsed(),
        r.isolation
    );
    let r = score(&task, &ps, &gens(&|_| String::new()), "empty".into(), &opts);
    assert_eq!(r.samples.iter().filter(|s| s.correct).count(), 0);
    let r = score(
        &task,
        &ps,
        &gens(&|_| "    pass\n".into()),
        "pass".into(),
        &opts,
    );
    let passed: Vec<_> = r
        .samples
        .iter()
        .filter(|s| s.correct)
        .map(|s| &s.id)
        .collect();
    assert!(passed.is_empty(), "`pass` completions passed: {passed:?}");
}
