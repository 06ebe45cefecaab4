/*!
The gateway under measurement: the release binary run with a config in a temp dir,
and what `/proc` says about it.

Each [`Gateway`] gets its own temporary directory holding the config, the state
directory, the token locks (`SWITCHBOARD_LOCK_DIR`) and its standard error, so runs
never share state. Standard input is a pipe kept open, so a console platform stays up.
Dropping a `Gateway` kills it, also when the bench panics, so nothing outlives a run.
*/

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The binary in use: the pinned copy once [`pin_binary`] ran.
static PINNED: OnceLock<PathBuf> = OnceLock::new();

/// The binary cargo built for this bench: the bench profile inherits `release`, so it is
/// `target/release/switchboard`, the file `make build` makes.
fn built() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchboard"))
}

/// Link the built binary into `dir` and run it from there from now on, so that a build
/// in the same target directory (someone running the tests meanwhile) cannot swap the
/// binary between two scenarios of one run: the linker replaces its output file, and the
/// link keeps the old one. A hard link, not a copy where it can be: a freshly written
/// copy sits in the page cache differently and maps about 0.3 MB more RSS.
pub fn pin_binary(dir: &Path) {
    let pinned = dir.join("switchboard");
    if fs::hard_link(built(), &pinned).is_err() {
        fs::copy(built(), &pinned).expect("copy the release binary");
    }
    PINNED.set(pinned).expect("the binary is pinned once");
}

/// The binary every [`Gateway`] runs.
pub fn binary() -> PathBuf {
    PINNED.get().cloned().unwrap_or_else(built)
}

/// A `[platforms.NAME]` table for a Telegram bot on a fake at `api_base`, with `extra`
/// lines appended. Everything not given is the gateway's default.
pub fn telegram_table(name: &str, api_base: &str, token: &str, extra: &str) -> String {
    format!("[platforms.{name}]\nkind = \"telegram\"\ntoken = \"{token}\"\napi_base = \"{api_base}\"\n{extra}")
}

/// A bot table line turning the gateway's send limiter off: the instant fakes enforce no
/// limits, and the throughput figures are compared with a raw loop that has none.
pub const NO_LIMITS: &str = "send_limits = false\n";

/// `[access]` letting every chat talk to the bot.
pub const OPEN_ACCESS: &str = "[access]\nallow_all = true\n";

/// A running gateway process.
pub struct Gateway {
    /// The process spawned: the gateway, or the wrapper that runs it (`strace`).
    child: Child,
    /// The gateway's own process id (the child's child under a wrapper).
    pid: u32,
    /// Kept open for the console platform; closed when the gateway is dropped.
    _stdin: ChildStdin,
    /// When `spawn` was called (the exec).
    pub spawned: Instant,
    dir: tempfile::TempDir,
}

impl Gateway {
    /// Start `switchboard run` with `config` after a `[gateway]` table naming a fresh
    /// state directory. The log level stays the default (`info`), as deployed.
    pub fn start(config: &str) -> Gateway {
        Gateway::start_with("", config)
    }

    /// [`Gateway::start`] with `gateway_keys` (lines) added to the `[gateway]` table.
    pub fn start_with(gateway_keys: &str, config: &str) -> Gateway {
        Gateway::start_binary_under(&[], &binary(), gateway_keys, config)
    }

    /// [`Gateway::start_with`], run by `wrapper` (a program and its arguments, before the
    /// gateway's command line; none: run directly), such as `strace -o FILE`.
    pub fn start_under(wrapper: &[String], gateway_keys: &str, config: &str) -> Gateway {
        Gateway::start_binary_under(wrapper, &binary(), gateway_keys, config)
    }

    /// [`Gateway::start_with`] running `binary` instead of the pinned release binary (the
    /// static build, for the footprint comparison).
    pub fn start_binary(binary: &Path, gateway_keys: &str, config: &str) -> Gateway {
        Gateway::start_binary_under(&[], binary, gateway_keys, config)
    }

    /// `binary` run by `wrapper` (see [`Gateway::start_under`]).
    fn start_binary_under(wrapper: &[String], binary: &Path, gateway_keys: &str, config: &str) -> Gateway {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state_dir = dir.path().join("state");
        let text = format!("[gateway]\nstate_dir = \"{}\"\n{gateway_keys}{config}", state_dir.display());
        fs::write(dir.path().join("gateway.toml"), text).expect("write the config");
        let stderr = fs::File::create(dir.path().join("stderr.log")).expect("create the log file");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .args(["--config", "gateway.toml", "run"])
            .current_dir(dir.path())
            .env("SWITCHBOARD_LOCK_DIR", dir.path().join("locks"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr);
        let spawned = Instant::now();
        let mut child = command.spawn().expect("start switchboard");
        let stdin = child.stdin.take().expect("a stdin pipe");
        let pid = if wrapper.is_empty() { child.id() } else { wrapped_pid(child.id()) };
        Gateway { child, pid, _stdin: stdin, spawned, dir }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Panic (failing the bench) if the gateway has exited: a dead gateway explains
    /// every missing reply better than a timeout does.
    pub fn assert_running(&mut self, during: &str) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("the gateway exited ({status}) during {during}\n{}", self.log_tail());
        }
    }

    /// Fail the bench with `what`, the gateway's state and the end of its log.
    pub fn fail(&mut self, what: &str) -> ! {
        self.assert_running(what);
        panic!("{what}\n{}", self.log_tail())
    }

    /// The last 40 lines of the gateway's standard error.
    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!("--- gateway log (last lines) ---\n{}", lines[lines.len().saturating_sub(40)..].join("\n"))
    }

    /// The gateway's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `/proc/PID/io` now: (`write_bytes`, what reached the block layer; `wchar`, what
    /// the process passed to `write` and friends). Zeros where the kernel hides it.
    pub fn io_bytes(&self) -> (u64, u64) {
        let io = fs::read_to_string(format!("/proc/{}/io", self.pid())).unwrap_or_default();
        let field =
            |name: &str| io.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        (field("write_bytes:"), field("wchar:"))
    }

    /// `/proc/PID/status` and `/proc/PID/stat` now.
    pub fn sample(&self) -> ProcSample {
        ProcSample::read(self.pid())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.pid != self.child.id() {
            // Kill the gateway first (a wrapper killed first may leave it running alone),
            // then let the wrapper end by itself, so that `strace` writes out its trace.
            let _ = Command::new("kill").args(["-KILL", &self.pid.to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The gateway started by the wrapper `parent`: its child once that runs our binary.
/// Polled (every millisecond, for up to 10 s): Linux has no way to wait for a grandchild.
fn wrapped_pid(parent: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let target = fs::canonicalize(binary()).unwrap_or_else(|_| binary());
    while Instant::now() < deadline {
        let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap_or_default();
        let running = children
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|pid| fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == target));
        if let Some(pid) = running {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("the wrapper (pid {parent}) did not start the gateway within 10 s");
}

/// Bytes and files under `dir`, recursively, grouped by the first path component
/// (`sessions`, `inbox`, …); apparent sizes, not blocks.
pub fn dir_usage(dir: &Path) -> Vec<(String, u64, u64)> {
    fn walk(path: &Path, bytes: &mut u64, files: &mut u64) {
        let Ok(entries) = fs::read_dir(path) else { return };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => walk(&entry.path(), bytes, files),
                Ok(m) => {
                    *bytes += m.len();
                    *files += 1;
                }
                Err(_) => {}
            }
        }
    }
    let mut usage = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let (mut bytes, mut files) = (0, 0);
        match entry.metadata() {
            Ok(m) if m.is_dir() => walk(&entry.path(), &mut bytes, &mut files),
            Ok(m) => (bytes, files) = (m.len(), 1),
            Err(_) => continue,
        }
        usage.push((entry.file_name().to_string_lossy().into_owned(), bytes, files));
    }
    usage.sort();
    usage
}

/// What the kernel reports about a process at one moment (sizes in KiB).
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub rss_kb: u64,
    /// The part of the RSS that is heap and stacks.
    pub rss_anon_kb: u64,
    /// The part that is mapped files: the binary's and the C library's pages.
    pub rss_file_kb: u64,
    /// Proportional set size: shared pages (the C library) divided among their users.
    pub pss_kb: u64,
    pub threads: u64,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
}

impl ProcSample {
    pub fn read(pid: u32) -> ProcSample {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
        let field = |name: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in status"));
            line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a number")
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
        // The command name is in parentheses and may hold spaces: count fields after it.
        // Fields 14 and 15 (utime, stime) are then the 12th and 13th after the `)`.
        let after = &stat[stat.rfind(')').expect("a stat line") + 1..];
        let fields: Vec<u64> = after.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
        ProcSample {
            rss_kb: field("VmRSS:"),
            rss_anon_kb: field("RssAnon:"),
            rss_file_kb: field("RssFile:"),
            pss_kb: pss_kb(pid),
            threads: field("Threads:"),
            cpu_ticks: fields[11] + fields[12],
        }
    }
}

/// `Pss:` from `/proc/PID/smaps_rollup` (0 where the kernel has no such file).
fn pss_kb(pid: u32) -> u64 {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let line = rollup.lines().find(|l| l.starts_with("Pss:"));
    line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that fails, Linux's usual value).
pub fn clock_ticks() -> u64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().ok();
    out.and_then(|o| String::from_utf8(o.stdout).ok()).and_then(|s| s.trim().parse().ok()).unwrap_or(100)
}
