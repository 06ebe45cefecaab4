//! Runs the real `switchboard` binary in a temporary directory, like ripgrep's
//! `TestCommand`: write a config, start it, watch `status.json`, signal it, read its log.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switchboard")
}

/// A `[reconnect]` table with test-sized timings.
pub fn reconnect(base_ms: u64, max_attempts: u32, connect_timeout_ms: u64) -> String {
    format!(
        "[reconnect]\nbase = \"{base_ms}ms\"\ncap = \"{}ms\"\nmax_attempts = {max_attempts}\nconnect_timeout = \"{connect_timeout_ms}ms\"\n",
        base_ms * 8
    )
}

/// `[access]` letting everyone talk to the bot, for tests not about access control.
pub const OPEN_ACCESS: &str = "[access]\nallow_all = true\n";

/// A `[platforms.NAME]` table for a Telegram bot on a fake Bot API server, with the
/// in-adapter retries quick and few, and no send limits: the fake has none, and a long
/// answer at Telegram's one message a second per chat would outlast the tests' deadlines.
pub fn telegram(name: &str, api_base: &str, token: &str) -> String {
    format!(
        "[platforms.{name}]\nkind = \"telegram\"\ntoken = \"{token}\"\napi_base = \"{api_base}\"\n\
         poll_timeout = \"2s\"\nrequest_timeout = \"2s\"\nnetwork_retries = 1\nnetwork_retry_wait = \"10ms\"\n\
         send_limits = false\n"
    )
}

/// One gateway process and its directory.
pub struct Gateway {
    pub child: Child,
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Start `switchboard run` with `config` (a `[gateway]` table naming the state
    /// directory is prepended) in a fresh temporary directory.
    pub fn start(config: &str) -> Gateway {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut g = Gateway::start_in(&dir, &dir.join("locks"), config);
        g._tmp = Some(tmp);
        g
    }

    /// Start in `dir` with locks in `lock_dir` (share it to make two gateways meet).
    pub fn start_in(dir: &Path, lock_dir: &Path, config: &str) -> Gateway {
        Gateway::start_in_env(dir, lock_dir, config, &[])
    }

    /// [`Gateway::start_in`] with extra environment variables, such as
    /// `SWITCHBOARD_TEST_PANIC` (see `src/testhook.rs`).
    pub fn start_in_env(dir: &Path, lock_dir: &Path, config: &str, env: &[(&str, &str)]) -> Gateway {
        let state_dir = dir.join("state");
        let text = format!("[gateway]\nstate_dir = \"{}\"\nlog_level = \"debug\"\n{config}", state_dir.display());
        fs::write(dir.join("gateway.toml"), text).expect("write config");
        let child = Command::new(binary())
            .args(["--config", "gateway.toml", "run"])
            .current_dir(dir)
            .env("SWITCHBOARD_LOCK_DIR", lock_dir)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(dir.join("stderr.log")).expect("log file"))
            .spawn()
            .expect("start switchboard");
        Gateway { child, dir: dir.to_path_buf(), state_dir, _tmp: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `status.json`, if it exists and parses.
    pub fn status(&self) -> Option<Value> {
        let text = fs::read(self.state_dir.join("status.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Wait until `status.json` satisfies `pred`, or fail showing the last status and log.
    pub fn wait_status(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status().filter(|s| pred(s)) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\nstatus: {:#?}\nlog:\n{}", self.status(), self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait until platform `name` is in `state`.
    pub fn wait_platform(&self, name: &str, state: &str, timeout: Duration) -> Value {
        self.wait_status(&format!("{name} {state}"), timeout, |s| s["platforms"][name]["state"] == state)
    }

    /// Wait for the process to exit; its exit code, or `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Send a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(ok.success());
    }

    /// Write to the gateway's standard input (the console platform).
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write stdin");
    }

    /// Close the gateway's standard input: end of input for the console platform.
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Everything the gateway logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// Every file under the state directory, concatenated (to look for secrets).
    pub fn state_files(&self) -> String {
        let mut all = String::new();
        for entry in walk(&self.state_dir) {
            all.push_str(&String::from_utf8_lossy(&fs::read(entry).unwrap_or_default()));
        }
        all
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}
