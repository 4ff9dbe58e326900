//! `eval data fetch` end to end against a loopback HTTP server (in this process, std only)
//! that mirrors the canonical URLs: the copies in `../shared/data` for MATH-500, GSM8K,
//! HumanEval (pinned) and AIME 2024, and files in the publishers' formats written here for
//! the sources with no local copy (AIME 2025, GPQA, MMLU, SimpleQA, MBPP, LiveCodeBench,
//! whose private tests are pickled by `python3` exactly as the dataset stores them). The
//! server also serves a corrupted and two truncated copies of GSM8K: each fails naming the
//! URL (and both hashes) and writes nothing. Then `eval run` scores each fetched task on
//! a responses file written here (one right and one wrong response per task).
//!
//! Skipped with a message when `../shared/data` is absent.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use eval::data::{FetchOptions, NoProgress, SOURCES};
use serde_json::{json, Value};

fn shared() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIP: ../shared/data not found beside the repository");
        None
    }
}

/// What the server sends for a path: the body, and the Content-Length it claims.
struct Served {
    body: Vec<u8>,
    claimed_len: usize,
}

/// Serves `files` (path → reply) on 127.0.0.1; returns the base URL.
fn serve(files: HashMap<String, Served>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let files = Arc::new(files);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let files = files.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).unwrap_or(0) == 0 {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                match files.get(&path) {
                    Some(f) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            f.claimed_len
                        );
                        let _ = stream.write_all(&f.body);
                    }
                    None => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
                let _ = stream.flush();
            });
        }
    });
    url
}

/// The mirror path of a canonical URL.
fn mirror_path(prefix: &str, url: &str) -> String {
    format!("{prefix}/{}", url.strip_prefix("https://").unwrap())
}

fn remote(source: &str, name: &str) -> &'static str {
    SOURCES
        .iter()
        .find(|s| s.name == source)
        .and_then(|s| s.files.iter().find(|f| f.name == name))
        .unwrap()
        .url
}

fn python_pickled(json_text: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,pickle,sys,zlib; print(base64.b64encode(zlib.compress(pickle.dumps(sys.stdin.read()))).decode())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(json_text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("python3");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Files in the publishers' formats for the sources without a local copy.
fn publisher_files() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let jsonl = |rows: &[Value]| -> Vec<u8> {
        rows.iter()
            .map(|r| format!("{r}\n"))
            .collect::<String>()
            .into_bytes()
    };
    let aime = |n: usize| {
        jsonl(&[
            json!({"id": n, "problem": format!("What is {n} + 1?"), "answer": (n + 1).to_string()}),
            json!({"id": n + 1, "problem": format!("What is {n} + 2?"), "answer": n + 2}),
        ])
    };
    let gpqa = "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3,Record ID,High-level domain\n\
        Which gas do plants take in?,Carbon dioxide,Oxygen,Helium,Neon,rec1,Biology\n\
        \"What is 2+2, in words?\",four,five,three,six,rec2,Math\n";
    let mmlu = ",Question,A,B,C,D,Answer,Subject\n\
        0,What is the capital of France?,Berlin,Paris,Rome,Madrid,B,geography\n\
        1,2+3=?,4,6,5,7,C,elementary_mathematics\n";
    let simpleqa = "metadata,problem,answer\n\
        \"{'topic': 'Art'}\",Who painted the Mona Lisa?,Leonardo da Vinci\n\
        \"{'topic': 'Geography'}\",What is the capital of Australia?,Canberra\n";
    let mbpp = json!([
        {"source_file": "x", "task_id": 2, "prompt": "Write a function to add two numbers.",
         "code": "def add(a, b):\n    return a + b", "test_imports": [],
         "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]},
        {"source_file": "x", "task_id": 3, "prompt": "Write a function to square a number.",
         "code": "import math\ndef sq(a):\n    return a * a", "test_imports": ["import math"],
         "test_list": ["assert sq(3) == 9"]}
    ]);
    let stdin_tests = json!([{"input": "3 4\n", "output": "7\n", "testtype": "stdin"}]).to_string();
    let stdin_private =
        json!([{"input": "10 5\n", "output": "15\n", "testtype": "stdin"}]).to_string();
    let fn_tests =
        json!([{"input": "[1, 2, 3]\n2", "output": "12", "testtype": "functional"}]).to_string();
    let fn_private =
        json!([{"input": "[4]\n3", "output": "12", "testtype": "functional"}]).to_string();
    let lcb = jsonl(&[
        json!({"question_title": "Sum", "question_content": "Read two integers and print their sum.",
               "platform": "atcoder", "question_id": "abc001_a", "contest_id": "abc001",
               "contest_date": "2024-09-01T00:00:00", "starter_code": "", "difficulty": "easy",
               "public_test_cases": stdin_tests, "private_test_cases": python_pickled(&stdin_private),
               "metadata": "{}"}),
        json!({"question_title": "Scale", "question_content": "Return sum(nums) * k.",
               "platform": "leetcode", "question_id": "3001", "contest_id": "weekly-1",
               "contest_date": "2024-10-05T00:00:00",
               "starter_code": "class Solution:\n    def scaledSum(self, nums: List[int], k: int) -> int:\n        ",
               "difficulty": "medium", "public_test_cases": fn_tests,
               "private_test_cases": python_pickled(&fn_private),
               "metadata": "{\"func_name\": \"scaledSum\"}"}),
        // Outside the tasks' window (2024-08-01..2025-01-31): fetched, not run.
        json!({"question_title": "Old", "question_content": "Print 1.", "platform": "atcoder",
               "question_id": "abc000_a", "contest_id": "abc000", "contest_date": "2023-05-01T00:00:00",
               "starter_code": "", "difficulty": "easy",
               "public_test_cases": json!([{"input": "", "output": "1\n", "testtype": "stdin"}]).to_string(),
               "private_test_cases": "[]", "metadata": "{}"}),
    ]);
    vec![
        ("aime2025", "test2025-I.jsonl", aime(1)),
        ("aime2025", "test2025-II.jsonl", aime(1)),
        ("gpqa", "gpqa_diamond.csv", gpqa.as_bytes().to_vec()),
        ("mmlu", "mmlu.csv", mmlu.as_bytes().to_vec()),
        (
            "simpleqa",
            "simple_qa_test_set.csv",
            simpleqa.as_bytes().to_vec(),
        ),
        ("mbpp", "sanitized-mbpp.json", mbpp.to_string().into_bytes()),
        ("livecodebench", "test.jsonl", lcb),
    ]
}

/// The mirror: good copies under `/ok`, corrupted ones under `/bad`, a body shorter than its
/// Content-Length under `/cut`, an honest but short body under `/short`.
fn mirror(shared: &Path) -> String {
    let read = |n: &str| std::fs::read(shared.join(n)).unwrap();
    let mut math500 = read("math500.jsonl");
    math500.push(b'\n'); // prm800k's file ends with a newline; the shared copy does not.
    let mut ok: Vec<(&str, &str, Vec<u8>)> = vec![
        ("math500", "math_splits/test.jsonl", math500),
        ("gsm8k", "test.jsonl", read("gsm8k_test.jsonl")),
        (
            "humaneval",
            "HumanEval.jsonl.gz",
            read("HumanEval.jsonl.gz"),
        ),
        ("aime2024", "test2024.jsonl", read("aime2024.jsonl")),
    ];
    ok.extend(publisher_files());
    let mut files = HashMap::new();
    let gsm8k_url = remote("gsm8k", "test.jsonl");
    for (source, name, body) in ok {
        files.insert(
            mirror_path("/ok", remote(source, name)),
            Served {
                claimed_len: body.len(),
                body,
            },
        );
    }
    let gsm = read("gsm8k_test.jsonl");
    let mut bad = gsm.clone();
    bad[1000] ^= 1;
    let half = gsm[..gsm.len() / 2].to_vec();
    files.insert(
        mirror_path("/bad", gsm8k_url),
        Served {
            claimed_len: bad.len(),
            body: bad,
        },
    );
    files.insert(
        mirror_path("/cut", gsm8k_url),
        Served {
            claimed_len: gsm.len(),
            body: half.clone(),
        },
    );
    files.insert(
        mirror_path("/short", gsm8k_url),
        Served {
            claimed_len: half.len(),
            body: half,
        },
    );
    serve(files)
}

fn eval_cmd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_eval"))
        .args(args)
        .env_remove("EVAL_DATA_DIR")
        .output()
        .unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn corrupted_and_truncated_downloads_write_nothing() {
    let Some(shared) = shared() else { return };
    let base = mirror(&shared);
    let gsm8k = SOURCES.iter().find(|s| s.name == "gsm8k").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (prefix, expect) in [
        ("bad", "checksum mismatch"),
        ("cut", "bytes"),
        ("short", "checksum mismatch"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = FetchOptions::new(dir.path().join("data"));
        opts.mirror = Some(format!("{base}/{prefix}"));
        let e = rt
            .block_on(eval::data::fetch(gsm8k, &opts, &NoProgress))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(expect) && e.contains("nothing was written"),
            "{prefix}: {e}"
        );
        assert!(e.contains("grade_school_math/data/test.jsonl"), "{e}");
        if expect == "checksum mismatch" {
            assert!(
                e.contains("3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14"),
                "the expected hash: {e}"
            );
        }
        assert!(
            listing(dir.path()).is_empty(),
            "{prefix}: {:?}",
            listing(dir.path())
        );
    }
    // The command line says the same and exits non-zero.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let out = eval_cmd(&[
        "data",
        "fetch",
        "gsm8k",
        "--data-dir",
        d.to_str().unwrap(),
        "--mirror",
        &format!("{base}/bad"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("checksum mismatch"),
        "{err}"
    );
    assert!(!d.exists());
}

#[test]
fn unpinned_sources_are_refused_without_allow_unpinned() {
    let Some(shared) = shared() else { return };
    let base = mirror(&shared);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let out = eval_cmd(&[
        "data",
        "fetch",
        "simpleqa",
        "--data-dir",
        d.to_str().unwrap(),
        "--mirror",
        &format!("{base}/ok"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("no pinned SHA-256")
            && err.contains("--allow-unpinned"),
        "{err}"
    );
    assert!(!d.exists());
}

/// A right response for a problem of a task (from the fetched data), in R1 form.
fn right(task: &str, p: &eval::dataset::Problem) -> String {
    let gold = p.gold.all().first().cloned().unwrap_or_default();
    let r = |k: &str| p.record[k].as_str().unwrap().to_string();
    let answer = match task {
        "math500" | "aime2024" | "aime2025" => format!("The answer is $\\boxed{{{gold}}}$."),
        "gsm8k" => format!("So the total is \\boxed{{{}}}.", gold.rsplit("####").next().unwrap().trim()),
        "gpqa" | "mmlu" => format!("Answer: {gold}"),
        "simpleqa" => gold.to_string(),
        "humaneval" => r("canonical_solution"),
        "mbpp" => format!("```python\n{}\n```", r("code")),
        "livecodebench" => "```python\na, b = map(int, input().split())\nprint(a + b)\n```".into(),
        "livecodebench_functional" => "```python\nclass Solution:\n    def scaledSum(self, nums, k):\n        return sum(nums) * k\n```".into(),
        other => panic!("{other}"),
    };
    format!("<think>\nWorking it out.\n</think>\n{answer}")
}

#[test]
fn every_source_fetches_converts_and_runs() {
    let Some(shared) = shared() else { return };
    let base = mirror(&shared);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let ds = d.to_str().unwrap();
    // Pinned sources need no flag.
    let out = eval_cmd(&[
        "data",
        "fetch",
        "math500",
        "gsm8k",
        "humaneval",
        "--data-dir",
        ds,
        "--mirror",
        &format!("{base}/ok"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("matches the pinned sha256") && !text.contains("NOT PINNED"),
        "{text}"
    );
    // Verified copies are written as published (MATH-500: prm800k's bytes).
    let mut m = std::fs::read(shared.join("math500.jsonl")).unwrap();
    m.push(b'\n');
    assert_eq!(std::fs::read(d.join("math500.jsonl")).unwrap(), m);
    assert_eq!(
        std::fs::read(d.join("gsm8k_test.jsonl")).unwrap(),
        std::fs::read(shared.join("gsm8k_test.jsonl")).unwrap()
    );
    // The rest, unpinned.
    let out = eval_cmd(&[
        "data",
        "fetch",
        "all",
        "--data-dir",
        ds,
        "--mirror",
        &format!("{base}/ok"),
        "--allow-unpinned",
        "--lcb-release",
        "1",
        "--gpqa-seed",
        "7",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("NOT PINNED"), "{text}");
    // `data list` shows every task present, with licences and restrictions.
    let out = eval_cmd(&["data", "list", "--data-dir", ds]);
    let list = String::from_utf8_lossy(&out.stdout);
    for (name, _) in eval::task::BUILTIN {
        assert!(
            list.contains(&format!("{name} [present: ")),
            "{name}:\n{list}"
        );
    }
    assert!(
        list.contains("canary") && list.contains("CC BY 4.0"),
        "{list}"
    );
    // Provenance: hashes and parameters.
    let prov: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("gpqa.source.json")).unwrap())
            .unwrap();
    assert_eq!(prov["params"][0], "shuffle_seed=7");
    assert_eq!(prov["files"][0]["pinned"], false);
    assert_eq!(prov["files"][0]["sha256"].as_str().unwrap().len(), 64);
    // GPQA rows: shuffled options, the seed recorded, the answer letter on the right text.
    let gpqa = eval::task::builtin("gpqa").unwrap();
    let ps = eval::dataset::load(&gpqa, &gpqa.dataset_path(&d)).unwrap();
    assert_eq!(ps.len(), 2);
    for p in &ps {
        assert_eq!(p.record["shuffle_seed"], 7);
        let letter = p.record["answer"].as_str().unwrap();
        let want = if p.id == "rec1" {
            "Carbon dioxide"
        } else {
            "four"
        };
        assert_eq!(p.record[letter], want, "{}", p.id);
    }
    // Row counts of the real copies, and LiveCodeBench's split and window.
    for (task, rows) in [
        ("math500", 500),
        ("gsm8k", 1319),
        ("humaneval", 164),
        ("aime2024", 30),
        ("aime2025", 4),
        ("mmlu", 2),
        ("simpleqa", 2),
        ("mbpp", 2),
        ("livecodebench", 1),
        ("livecodebench_functional", 1),
    ] {
        let t = eval::task::builtin(task).unwrap();
        let ps = eval::dataset::load(&t, &t.dataset_path(&d)).unwrap();
        assert_eq!(ps.len(), rows, "{task}");
    }
    let lcb = eval::task::builtin("livecodebench").unwrap();
    let ps = eval::dataset::load(&lcb, &lcb.dataset_path(&d)).unwrap();
    assert_eq!(
        ps[0].tests.as_array().unwrap().len(),
        2,
        "public + unpickled private tests"
    );
    // `eval run` on every task: problem 0 answered right, problem 1 wrong.
    let mut lines = Vec::new();
    for (task, _) in eval::task::BUILTIN {
        let t = eval::task::builtin(task).unwrap();
        let ps = eval::dataset::load(&t, &t.dataset_path(&d)).unwrap();
        let ps = &ps[..2.min(ps.len())];
        lines.push(json!({"task": task, "id": ps[0].id, "sample": 0, "text": right(task, &ps[0])}));
        if let Some(p) = ps.get(1) {
            lines.push(json!({"task": task, "id": p.id, "sample": 0,
                               "text": "<think>\nNo idea.\n</think>\nI don't know."}));
        }
    }
    let responses = dir.path().join("responses.jsonl");
    std::fs::write(
        &responses,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let report_dir = dir.path().join("report");
    let mut args = vec!["run".to_string()];
    for (task, _) in eval::task::BUILTIN {
        args.extend(["--task".to_string(), task.to_string()]);
    }
    for a in [
        "--responses",
        responses.to_str().unwrap(),
        "--data-dir",
        ds,
        "--samples",
        "1",
        "--limit",
        "2",
        "--out",
        report_dir.to_str().unwrap(),
    ] {
        args.push(a.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = eval_cmd(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("report.json")).unwrap())
            .unwrap();
    for t in report["tasks"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let verdicts: Vec<bool> = t["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["correct"].as_bool().unwrap())
            .collect();
        let want: &[bool] = if t["problems"] == 1 {
            &[true]
        } else {
            &[true, false]
        };
        assert_eq!(verdicts, want, "{name}: {t}");
    }
    assert_eq!(
        report["tasks"].as_array().unwrap().len(),
        eval::task::BUILTIN.len()
    );
}
