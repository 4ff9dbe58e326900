//! Hostile programs in the sandbox: each is contained and reported, nothing is left
//! running, the directory is removed. What is asserted depends on the isolation mode the
//! machine allows (printed); see `eval::sandbox` for what each mode contains.

use std::sync::Mutex;
use std::time::Duration;

use eval::sandbox::{run_python, Isolation, SandboxConfig, Status};

/// Sandbox tests run one at a time, so the process scan below sees only their programs.
static SERIAL: Mutex<()> = Mutex::new(());

fn cfg(timeout_ms: u64) -> SandboxConfig {
    SandboxConfig {
        timeout: Duration::from_millis(timeout_ms),
        memory_mb: 512,
        ..SandboxConfig::default()
    }
}

fn mode() -> Isolation {
    let m = Isolation::detect(&SandboxConfig::default().python);
    eprintln!("sandbox isolation mode here: {m:?}");
    m
}

/// Processes whose command line contains `needle` (from /proc).
fn running(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

fn nothing_left() {
    // Killed processes may take a moment to be reaped by init.
    for _ in 0..50 {
        if running("-I -B main.py").is_empty() && running("SANDBOX_ORPHAN").is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "left running: {:?} {:?}",
        running("-I -B main.py"),
        running("SANDBOX_ORPHAN")
    );
}

#[test]
fn infinite_loop_is_killed_at_the_wall_clock_limit() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    mode();
    let o = run_python(&cfg(700), "while True:\n    pass\n", "");
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    assert!(o.elapsed < Duration::from_secs(3), "{:?}", o.elapsed);
    nothing_left();
}

#[test]
fn fork_bomb_is_contained_and_every_process_killed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = mode();
    let src =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n";
    let o = run_python(&cfg(1500), src, "");
    assert_eq!(o.status, Status::Timeout, "{o:?}");
    nothing_left();
    if m == Isolation::UidNetns {
        // RLIMIT_NPROC per fresh uid: the bomb hit the limit instead of the machine.
        let o = run_python(
            &cfg(3000),
            "import os\nn = 0\ntry:\n    while n < 1000:\n        if os.fork() == 0:\n            import time; time.sleep(60)\n        n += 1\nexcept OSError as e:\n    print('limited at', n, e.errno)\n",
            "",
        );
        assert!(o.stdout.contains("limited at"), "{o:?}");
        nothing_left();
    }
}

#[test]
fn memory_hog_gets_memory_error() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    mode();
    let o = run_python(
        &cfg(5000),
        "x = []\nwhile True:\n    x.append(bytearray(50 * 1024 * 1024))\n",
        "",
    );
    assert_eq!(o.status, Status::Exited(1), "{o:?}");
    assert!(o.stderr.contains("MemoryError"), "{}", o.stderr);
    nothing_left();
}

#[test]
fn socket_connect_fails_in_a_network_namespace() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = mode();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let src = format!(
        "import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('CONNECTED')\nexcept OSError as e:\n    print('BLOCKED', e)\n"
    );
    let o = run_python(&cfg(4000), &src, "");
    eprintln!("socket program: {}", o.stdout.trim());
    if m == Isolation::None {
        eprintln!(
            "NOTE: no network namespace available here; the network is reachable (documented)"
        );
    } else {
        assert!(o.stdout.contains("BLOCKED"), "{o:?}");
        assert!(
            listener.accept().is_err(),
            "the connection reached the parent's listener"
        );
    }
    nothing_left();
}

#[test]
fn writes_outside_its_directory_and_its_directory_is_removed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = mode();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("pwned.txt");
    let src = format!(
        "import os\nprint(os.getcwd())\nopen('inside.txt', 'w').write('ok')\ntry:\n    open({:?}, 'w').write('x')\n    print('WROTE')\nexcept OSError as e:\n    print('DENIED', e.errno)\n",
        target.display().to_string()
    );
    let o = run_python(&cfg(4000), &src, "");
    let cwd = o.stdout.lines().next().unwrap_or_default().to_string();
    assert!(cwd.contains("eval-sandbox-"), "{o:?}");
    assert!(
        !std::path::Path::new(&cwd).exists(),
        "sandbox directory {cwd} not removed"
    );
    if m == Isolation::UidNetns {
        assert!(o.stdout.contains("DENIED"), "{o:?}");
        assert!(!target.exists());
    } else {
        eprintln!(
            "NOTE: mode {m:?} keeps the user's file permissions; the write was {}",
            if target.exists() { "allowed" } else { "denied" }
        );
    }
    nothing_left();
}

#[test]
fn parent_environment_is_not_visible() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = mode();
    // The test process's own environment holds a secret the child must not see.
    let secret = "EVAL_TEST_SECRET=s3cr3t-value";
    // SAFETY (edition 2021: safe fn): set while the tests in this file are serialised.
    std::env::set_var("EVAL_TEST_SECRET", "s3cr3t-value");
    let src = "import os\nprint('ENV', 'EVAL_TEST_SECRET' in os.environ, sorted(os.environ))\ntry:\n    d = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n    print('PARENT', b's3cr3t-value' in d)\nexcept OSError as e:\n    print('PARENT DENIED', e.errno)\n";
    let o = run_python(&cfg(4000), src, "");
    std::env::remove_var("EVAL_TEST_SECRET");
    eprintln!("{}", o.stdout.trim());
    assert!(o.stdout.contains("ENV False"), "{o:?} ({secret})");
    if m == Isolation::UidNetns {
        assert!(o.stdout.contains("PARENT DENIED"), "{o:?}");
    } else {
        eprintln!(
            "NOTE: mode {m:?}: /proc/<parent>/environ is readable by the same user (documented)"
        );
    }
    nothing_left();
}

#[test]
fn output_is_capped_and_escaped_children_are_killed() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = mode();
    let o = run_python(
        &cfg(4000),
        "import sys\nsys.stdout.write('x' * 10_000_000)\n",
        "",
    );
    assert!(
        o.passed() && o.truncated && o.stdout.len() == 64 * 1024,
        "{}",
        o.stdout.len()
    );
    // A child that leaves the process group with setsid and outlives its parent.
    let src = "import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)  # SANDBOX_ORPHAN'], start_new_session=True)\nprint('spawned')\n";
    let o = run_python(&cfg(4000), src, "");
    assert!(o.passed(), "{o:?}");
    if m == Isolation::UidNetns {
        nothing_left();
    } else {
        eprintln!(
            "NOTE: mode {m:?}: a child that calls setsid escapes the group kill (documented)"
        );
        // Clean up what the test started.
        for p in running("SANDBOX_ORPHAN") {
            if let Some(pid) = p.split(':').next().and_then(|x| x.parse::<i32>().ok()) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn writes_to_shared_places_leave_nothing_behind() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let m = mode();
    let tag = format!("sandbox-leak-{}", std::process::id());
    let places = ["/tmp", "/var/tmp", "/dev/shm"];
    let src = format!(
        "import os\nfor d in {places:?} + [os.environ['HOME']]:\n    p = os.path.join(d, {tag:?})\n    try:\n        open(p, 'w').write('x')\n        print('WROTE', p)\n    except OSError as e:\n        print('DENIED', p, e.errno)\n"
    );
    let o = run_python(&cfg(4000), &src, "");
    assert_eq!(o.status, Status::Exited(0), "{o:?}");
    if m == Isolation::UidNetns {
        // Inside, the shared places are private tmpfs the program may write to; outside,
        // none of it exists.
        assert!(o.stdout.contains("WROTE /tmp/"), "{o:?}");
        for d in places {
            let p = std::path::Path::new(d).join(&tag);
            assert!(!p.exists(), "{} survived the run: {o:?}", p.display());
        }
    } else {
        eprintln!("NOTE: mode {m:?} has no mount namespace; shared places are the host's");
        for d in places {
            let _ = std::fs::remove_file(std::path::Path::new(d).join(&tag));
        }
    }
    nothing_left();
}
