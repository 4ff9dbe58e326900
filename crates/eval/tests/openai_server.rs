//! A real server in the tests: `fake_openai` (a child process on 127.0.0.1) serves the
//! bundled math responses with injected faults (429, 500, replies slower than the client
//! timeout, connections closed without reply). A run against it completes with every
//! sample exactly once, and a run killed with SIGKILL half-way resumes to the same result
//! without asking again for the samples it had cached.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TASK: &str = "version: 1\nname: fake-math\ndataset: {path: math.jsonl, fields: {subject: subject, level: level}}\nchecker: math\nsamples: 4\n";

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn suite(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("suite")
        .join(name)
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("task.yaml"), TASK).unwrap();
    std::fs::copy(suite("math.jsonl"), dir.path().join("math.jsonl")).unwrap();
    dir
}

fn server(log: &Path, delay_ms: u64) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fake_openai"))
        .arg(suite("math.responses.jsonl"))
        .arg(log)
        .args(["--delay-ms", &delay_ms.to_string(), "--slow-ms", "1500"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("server address")
        .to_string();
    Server {
        child,
        url: format!("http://{addr}"),
    }
}

fn eval_cmd(dir: &Path, out: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eval"));
    c.arg("run")
        .arg("--task")
        .arg(dir.join("task.yaml"))
        .arg("--out")
        .arg(dir.join(out))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn endpoint_args(url: &str) -> Vec<String> {
    [
        "--endpoint",
        url,
        "--model",
        "fake",
        "--concurrency",
        "4",
        "--request-timeout",
        "0.5",
        "--backoff-ms",
        "10",
        "--retries",
        "8",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn samples(dir: &Path, out: &str) -> Vec<Value> {
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(out).join("report.json")).unwrap())
            .unwrap();
    r["tasks"][0]["samples"].as_array().unwrap().clone()
}

/// (id, sample, correct, extracted) of every sample.
fn verdicts(s: &[Value]) -> Vec<(String, u64, bool, Value)> {
    s.iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap().to_string(),
                x["sample"].as_u64().unwrap(),
                x["correct"].as_bool().unwrap(),
                x["extracted"].clone(),
            )
        })
        .collect()
}

fn cache_keys(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["id"].as_str().unwrap().to_string(),
                v["sample"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn recorded_reference(dir: &Path) -> Vec<(String, u64, bool, Value)> {
    let st = eval_cmd(
        dir,
        "recorded",
        &[
            "--responses",
            suite("math.responses.jsonl").to_str().unwrap(),
        ],
    )
    .status()
    .unwrap();
    assert!(st.success());
    verdicts(&samples(dir, "recorded"))
}

#[test]
fn run_through_faults_has_every_sample_exactly_once() {
    let dir = setup();
    let log = dir.path().join("server.log");
    let srv = server(&log, 0);
    let args = endpoint_args(&srv.url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let st = eval_cmd(dir.path(), "live", &args).status().unwrap();
    assert!(st.success(), "eval run failed: {st:?}");
    eprintln!("run took {:?}", t.elapsed());
    let got = verdicts(&samples(dir.path(), "live"));
    assert_eq!(got.len(), 20);
    let keys: HashSet<_> = got.iter().map(|v| (v.0.clone(), v.1)).collect();
    assert_eq!(keys.len(), 20, "a sample is duplicated");
    let cached = cache_keys(&dir.path().join("live/responses.jsonl"));
    assert_eq!(cached.len(), 20);
    assert_eq!(cached.iter().collect::<HashSet<_>>().len(), 20);
    assert_eq!(got, recorded_reference(dir.path()));
    // Every kind of fault was injected.
    let log = std::fs::read_to_string(&log).unwrap();
    for fault in ["429", "500", "slow", "drop"] {
        assert!(
            log.contains(&format!("\t{fault}\n")),
            "no {fault} in server log:\n{log}"
        );
    }
}

#[test]
fn run_killed_half_way_resumes_to_the_same_result() {
    let dir = setup();
    let log1 = dir.path().join("server1.log");
    let srv = server(&log1, 120);
    let args = endpoint_args(&srv.url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cache = dir.path().join("resume/responses.jsonl");
    let mut child = eval_cmd(dir.path(), "resume", &args).spawn().unwrap();
    let t = Instant::now();
    while cache_keys(&cache).len() < 6 {
        assert!(t.elapsed() < Duration::from_secs(30), "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "run finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before: HashSet<(String, u64)> = cache_keys(&cache).into_iter().collect();
    assert!(before.len() < 20, "killed too late");
    drop(srv);

    let log2 = dir.path().join("server2.log");
    let srv = server(&log2, 0);
    let args = endpoint_args(&srv.url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let st = eval_cmd(dir.path(), "resume", &args).status().unwrap();
    assert!(st.success());
    // No cached sample was asked for again.
    for line in std::fs::read_to_string(&log2).unwrap().lines() {
        let key = line.split('\t').next().unwrap();
        let (rest, sample) = key.rsplit_once('/').unwrap();
        let id = rest.split_once('/').unwrap().1;
        assert!(
            !before.contains(&(id.to_string(), sample.parse().unwrap())),
            "{key} was cached but asked again"
        );
    }
    let keys = cache_keys(&cache);
    assert_eq!(keys.len(), 20, "cache lines");
    assert_eq!(
        keys.iter().collect::<HashSet<_>>().len(),
        20,
        "duplicated cache lines"
    );
    assert_eq!(
        verdicts(&samples(dir.path(), "resume")),
        recorded_reference(dir.path())
    );
}

#[test]
fn several_endpoints_share_the_samples_and_a_dead_one_is_routed_around() {
    let dir = setup();
    let (log_a, log_b) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let (a, b) = (server(&log_a, 20), server(&log_b, 20));
    // A third endpoint that refuses every connection: a port bound, then released.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut args = endpoint_args(&a.url);
    args.extend(["--endpoint".to_string(), b.url.clone()]);
    args.extend(["--endpoint".to_string(), dead]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let st = eval_cmd(dir.path(), "pool", &args).status().unwrap();
    assert!(st.success(), "eval run failed: {st:?}");
    let got = verdicts(&samples(dir.path(), "pool"));
    assert_eq!(got.len(), 20);
    let cached = cache_keys(&dir.path().join("pool/responses.jsonl"));
    assert_eq!(cached.iter().collect::<HashSet<_>>().len(), 20);
    assert_eq!(cached.len(), 20, "a sample was recorded twice");
    assert_eq!(got, recorded_reference(dir.path()));
    // Both live servers answered some of the samples.
    let answered = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap()
            .lines()
            .filter(|l| l.ends_with("\tok"))
            .count()
    };
    let (na, nb) = (answered(&log_a), answered(&log_b));
    assert!(na > 0 && nb > 0, "a: {na}, b: {nb}");
}
