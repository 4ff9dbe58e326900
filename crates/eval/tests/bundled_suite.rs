//! The bundled suite's per-sample verdicts as an insta snapshot: any change in checking
//! shows up as a reviewable diff of `tests/snapshots/bundled_suite__verdicts.snap`
//! (`cargo insta review`, or `INSTA_UPDATE=always` then inspect `git diff`).

use eval::run::RunOptions;

fn report() -> eval::report::Report {
    let opts = RunOptions {
        progress: false,
        ..RunOptions::default()
    };
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(eval::suite::run(&opts))
        .unwrap()
}

#[test]
fn verdicts() {
    let r = report();
    let mut lines = Vec::new();
    for t in &r.tasks {
        lines.push(format!(
            "## {} pass@1={:.4} cons@k={:?} format={:.4}",
            t.name,
            t.metrics.pass1,
            t.metrics.cons_at_k.map(|c| (c * 1e4).round() / 1e4),
            t.metrics.format_rate
        ));
        for s in &t.samples {
            lines.push(format!(
                "{}/{} {} {} {:?}",
                s.id,
                s.sample,
                if s.correct { "correct" } else { "wrong  " },
                s.format,
                s.extracted.as_deref().unwrap_or("<none>")
            ));
        }
    }
    insta::assert_snapshot!(lines.join("\n"));
}

#[test]
fn reports_are_deterministic_and_self_contained() {
    let (a, b) = (report(), report());
    assert_eq!(a, b);
    let dir = tempfile::tempdir().unwrap();
    let w = eval::report::write_all(&a, dir.path()).unwrap();
    let html = std::fs::read_to_string(&w.html).unwrap();
    assert!(
        html.contains("<svg") && !html.contains("<script") && !html.contains("http://")
            || html.contains("http://www.w3.org/2000/svg")
    );
    assert!(!html.contains("src=\"http"), "the page must open offline");
    let md = std::fs::read_to_string(&w.markdown).unwrap();
    assert!(md.contains("| suite-math |"), "{md}");
    // Every sample is in the JSON, with its verdict and extracted answer.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&w.json).unwrap()).unwrap();
    let n: usize = json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["samples"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, a.tasks.iter().map(|t| t.problems * t.k).sum::<usize>());
    // A report diffed against itself has no changes; flipping a verdict is a regression.
    assert!(eval::diff::diff(&json, &json).unwrap().is_empty());
    let mut worse = json.clone();
    worse["tasks"][0]["samples"][0]["correct"] = serde_json::Value::Bool(false);
    let (_, regressions) = eval::diff::render(&eval::diff::diff(&json, &worse).unwrap());
    assert_eq!(regressions, 1);
}
