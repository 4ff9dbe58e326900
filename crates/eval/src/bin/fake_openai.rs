//! A fake OpenAI-compatible server for the integration tests: serves the responses of a
//! JSONL file on 127.0.0.1 with deterministic fault injection. std only (one thread per
//! connection).
//!
//! Usage: `fake_openai RESPONSES.jsonl LOG_FILE [--delay-ms N] [--slow-ms N] [--no-faults]
//! [--bodies FILE]`
//!
//! Prints `listening on 127.0.0.1:PORT` on stdout. Each request carries the
//! `x-eval-sample: task/id/sample` header; the reply is the file's text for
//! `(task, id, sample)`, else for `(id, sample)` from a line without `"task"`. The first attempt for a key fails in a way picked by a hash of the key
//! (429 with `Retry-After: 0`, 500, a reply slower than `--slow-ms`, a connection closed
//! without reply, or no fault); later attempts succeed after `--delay-ms`. Every request
//! is appended to LOG_FILE as `key<TAB>attempt<TAB>outcome`; with `--bodies FILE`, each
//! request body is appended to FILE as one JSON line (what the SimpleQA grader test reads).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct State {
    responses: HashMap<(Option<String>, String, u64), String>,
    attempts: Mutex<HashMap<String, u32>>,
    log: Mutex<std::fs::File>,
    bodies: Option<Mutex<std::fs::File>>,
    delay: Duration,
    slow: Duration,
    faults: bool,
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn reply(stream: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn handle(mut stream: TcpStream, st: Arc<State>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let (mut len, mut key) = (0usize, String::new());
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-eval-sample:") {
            key = h["x-eval-sample:".len()..].trim().to_string();
        }
    }
    let mut body = vec![0u8; len];
    let _ = reader.read_exact(&mut body);
    if let Some(b) = &st.bodies {
        let mut f = b.lock().unwrap();
        let _ = f.write_all(&body);
        let _ = f.write_all(b"\n");
    }
    let attempt = {
        let mut a = st.attempts.lock().unwrap();
        let n = a.entry(key.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    let fault = if st.faults && attempt == 0 {
        hash(&key) % 5
    } else {
        4
    };
    let outcome = ["429", "500", "slow", "drop", "ok"][fault as usize];
    writeln!(st.log.lock().unwrap(), "{key}\t{attempt}\t{outcome}").unwrap();
    match fault {
        0 => reply(
            &mut stream,
            "429 Too Many Requests",
            "Retry-After: 0\r\n",
            "{}",
        ),
        1 => reply(
            &mut stream,
            "500 Internal Server Error",
            "",
            "{\"error\":\"boom\"}",
        ),
        2 => {
            std::thread::sleep(st.slow);
            reply(&mut stream, "500 Internal Server Error", "", "{}");
        }
        3 => {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        _ => {
            std::thread::sleep(st.delay);
            // key = task/id/sample; ids may contain '/', so split from both ends.
            let mut parts = key.rsplitn(2, '/');
            let sample: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let (task, id) = parts
                .next()
                .and_then(|rest| rest.split_once('/'))
                .map(|(t, id)| (t.to_string(), id.to_string()))
                .unwrap_or_default();
            let text = st
                .responses
                .get(&(Some(task), id.clone(), sample))
                .or_else(|| st.responses.get(&(None, id, sample)));
            match text {
                Some(text) => {
                    let body = serde_json::json!({
                        "id": "fake", "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"completion_tokens": text.split_whitespace().count()}
                    });
                    reply(&mut stream, "200 OK", "", &body.to_string());
                }
                None => reply(
                    &mut stream,
                    "404 Not Found",
                    "",
                    "{\"error\":\"unknown key\"}",
                ),
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: fake_openai RESPONSES.jsonl LOG_FILE [--delay-ms N] [--slow-ms N] [--no-faults] [--bodies FILE]");
        std::process::exit(2);
    }
    let opt = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mut responses = HashMap::new();
    for line in std::fs::read_to_string(&args[1])
        .expect("responses")
        .lines()
    {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            let id = match &v["id"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let text = v["text"].as_str().unwrap_or_default().to_string();
            let task = v["task"].as_str().map(str::to_string);
            responses.insert((task, id, v["sample"].as_u64().unwrap_or(0)), text);
        }
    }
    let state = Arc::new(State {
        responses,
        attempts: Mutex::new(HashMap::new()),
        log: Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args[2])
                .expect("log"),
        ),
        delay: Duration::from_millis(opt("--delay-ms", 0)),
        slow: Duration::from_millis(opt("--slow-ms", 2000)),
        faults: !args.iter().any(|a| a == "--no-faults"),
        bodies: args
            .iter()
            .position(|a| a == "--bodies")
            .and_then(|i| args.get(i + 1))
            .map(|p| {
                Mutex::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .expect("bodies file"),
                )
            }),
    });
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    println!("listening on {}", listener.local_addr().unwrap());
    let _ = std::io::stdout().flush();
    for stream in listener.incoming().flatten() {
        let st = state.clone();
        std::thread::spawn(move || handle(stream, st));
    }
}
