/*!
The real `switchboard` binary end to end: console, Telegram against a fake Bot API,
token locks between two processes, the reconnect behaviour of DESIGN.md's table as seen
from outside (status file, log, exit code), signals, and the CLI.
*/

mod support;

use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::fake_telegram::{FakeTelegram, Fault, TOKEN, api_error, rate_limited};
use support::gateway::{Gateway, OPEN_ACCESS, binary, reconnect, telegram};
use support::{deadline, unused_url, wait_until};

const SOON: Duration = Duration::from_secs(10);

fn platform(status: &Value, name: &str) -> Value {
    status["platforms"][name].clone()
}

#[test]
fn echo_hello_prints_the_reply_and_exits_0_with_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary())
        .arg("run")
        .current_dir(dir.path())
        .env("SWITCHBOARD_LOCK_DIR", dir.path().join("locks"))
        .env_remove("SWITCHBOARD_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\nsecond line\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "echo: hello\necho: second line\n");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let status: Value = serde_json::from_slice(&fs::read(dir.path().join("state/status.json")).unwrap()).unwrap();
    assert_eq!(status["state"], "stopped");
    assert_eq!(platform(&status, "console")["state"], "stopped");
}

#[test]
fn telegram_round_trip_with_two_bots_of_one_kind() {
    let (a, b) = (FakeTelegram::start(TOKEN), FakeTelegram::start("999:other-bot"));
    let config = format!(
        "{}{OPEN_ACCESS}{}{}",
        reconnect(200, 20, 5000),
        telegram("bot_a", &a.url(), TOKEN),
        telegram("bot_b", &b.url(), "999:other-bot")
    );
    let mut g = Gateway::start(&config);
    g.wait_status("running", SOON, |s| s["state"] == "running");
    a.push_text(42, 7, "hi from a");
    b.push_text(-100, 8, "hi from b");
    assert_eq!(a.wait_sent(1, deadline(SOON)), [("42".to_string(), "echo: hi from a".to_string())]);
    assert_eq!(b.wait_sent(1, deadline(SOON)), [("-100".to_string(), "echo: hi from b".to_string())]);
    // The channel directory lists each chat under the instance it came from (complete
    // at the latest when the gateway stops).
    g.signal("TERM");
    assert_eq!(g.wait_exit(SOON), Some(0));
    let dir = fs::read_to_string(g.state_dir.join("directory.json")).unwrap();
    let dir: Value = serde_json::from_str(&dir).unwrap();
    assert_eq!(dir["platforms"]["bot_a"][0]["id"], "42");
    assert_eq!(dir["platforms"]["bot_b"][0]["id"], "-100");
}

/// Issue 7 §6 "One host, one poller per token, whoever starts it": the unit's
/// `SWITCHBOARD_LOCK_DIR` and a manual run's `~/.local/state` used to be two lock
/// directories, so the two gateways polled one token against each other. Here they differ
/// in every setting that used to place the lock, and the second still meets the first.
#[test]
fn second_gateway_with_the_same_token_exits_78_naming_the_first_pid_whatever_its_lock_dir() {
    let fake = FakeTelegram::start(TOKEN);
    let (locks_a, locks_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = format!("{}{}", reconnect(200, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let a = Gateway::start_in(dir_a.path(), locks_a.path(), &config);
    a.wait_platform("tg", "connected", SOON);
    let mut b = Gateway::start_in(dir_b.path(), locks_b.path(), &config);
    assert_eq!(b.wait_exit(SOON), Some(78), "log:\n{}", b.log());
    let status = b.status().unwrap();
    let holder = format!("PID {}", a.pid());
    assert_eq!(status["state"], "startup_failed");
    assert!(status["exit_reason"].as_str().unwrap().contains(&holder), "{status:#}");
    assert_eq!(platform(&status, "tg")["error_code"], "telegram_token_lock");
    assert!(b.log().contains(&holder), "{}", b.log());
    // The first one is untouched.
    assert_eq!(a.status().unwrap()["platforms"]["tg"]["state"], "connected");
}

#[test]
fn runtime_failure_is_queued_at_attempt_0_and_reconnects_after_base() {
    let fake = FakeTelegram::start(TOKEN);
    let g = Gateway::start(&format!("{}{OPEN_ACCESS}{}", reconnect(300, 20, 5000), telegram("tg", &fake.url(), TOKEN)));
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(5, 5, "before");
    fake.wait_sent(1, deadline(SOON));
    let built = fs::metadata(g.state_dir.join("directory.json")).unwrap().modified().unwrap();

    fake.set_down(true);
    let s = g.wait_platform("tg", "retrying", SOON);
    let tg = platform(&s, "tg");
    assert_eq!((tg["attempts"].as_u64(), tg["error_code"].as_str()), (Some(0), Some("telegram_network_error")));
    assert!(tg["next_retry_at"].as_f64().unwrap() > s["updated_at"].as_f64().unwrap());
    assert_eq!(s["state"], "degraded", "the last platform failing never stops the gateway");
    let failed_at = Instant::now();
    fake.set_down(false);

    g.wait_platform("tg", "connected", SOON);
    assert!(failed_at.elapsed() >= Duration::from_millis(200), "reconnected before base");
    let log = g.log();
    assert!(log.contains("tg: disconnected") && log.contains("queued for reconnection"), "{log}");
    assert!(log.contains("tg: reconnected"), "{log}");
    // Rebuilt after the reconnect, and the platform works again.
    let rebuilt = fs::metadata(g.state_dir.join("directory.json")).unwrap().modified().unwrap();
    assert!(rebuilt > built);
    fake.push_text(5, 5, "after");
    assert_eq!(fake.wait_sent(2, deadline(SOON))[1].1, "echo: after");
}

#[test]
fn startup_failures_back_off_doubling_then_give_up_and_exit_1() {
    let fake = FakeTelegram::start(TOKEN);
    fake.fail_always("getMe", Some(Fault::Status(502, api_error(502, "Bad Gateway"))));
    let config = format!("{}{}", reconnect(100, 4, 5000), telegram("tg", &fake.url(), TOKEN));
    let mut g = Gateway::start(&config);
    assert_eq!(g.wait_exit(SOON), Some(1), "{}", g.log());
    let s = g.status().unwrap();
    assert_eq!(
        (platform(&s, "tg")["state"].as_str(), platform(&s, "tg")["attempts"].as_u64()),
        (Some("gave_up"), Some(4))
    );
    // Four connects of two getMe calls each (one quick in-adapter retry), then nothing.
    let times = fake.call_times("getMe");
    assert_eq!(times.len(), 8);
    let gaps: Vec<Duration> = [1, 3, 5].iter().map(|&i| times[i + 1] - times[i]).collect();
    for (gap, base) in gaps.iter().zip([100, 200, 400]) {
        assert!(*gap >= Duration::from_millis(base), "gap {gap:?} shorter than backoff {base} ms");
    }
    assert!(g.log().contains("gave up after 4 attempts"));
}

#[test]
fn nonretryable_failure_on_reconnect_is_never_retried() {
    let fake = FakeTelegram::start(TOKEN);
    let config = format!("{}{}[platforms.console]\n", reconnect(100, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let mut g = Gateway::start(&config);
    g.wait_platform("tg", "connected", SOON);
    fake.set_down(true);
    g.wait_platform("tg", "retrying", SOON);
    fake.fail_getme_with(401);
    fake.set_down(false);
    let s = g.wait_platform("tg", "fatal", SOON);
    assert_eq!(platform(&s, "tg")["error_code"], "telegram_unauthorized");
    assert_eq!(platform(&s, "tg")["next_retry_at"], Value::Null);
    let calls = fake.count("getMe");
    assert!(!wait_until(deadline(Duration::from_millis(500)), || fake.count("getMe") > calls), "retried");
    assert_eq!(g.status().unwrap()["state"], "degraded");
    // The console is still there; when it ends, the fatal platform makes the exit 78.
    drop(g.child.stdin.take());
    assert_eq!(g.wait_exit(SOON), Some(78));
}

/// A long poll held for a minute: an exit within `SOON` proves the signal cut it short.
#[test]
fn sigterm_stops_a_long_poll_at_once_writes_stopped_and_frees_the_token() {
    let fake = FakeTelegram::start(TOKEN);
    let locks = tempfile::tempdir().unwrap();
    let minute_polls = telegram("tg", &fake.url(), TOKEN).replace(
        "poll_timeout = \"2s\"\nrequest_timeout = \"2s\"",
        "poll_timeout = \"60s\"\nrequest_timeout = \"90s\"",
    );
    assert!(minute_polls.contains("60s"));
    let config = format!("{}{minute_polls}", reconnect(200, 20, 5000));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Gateway::start_in(dir_a.path(), locks.path(), &config);
    a.wait_platform("tg", "connected", SOON);
    // Wait until a long poll is being held, then ask it to stop.
    fake.wait_count("getUpdates", 1, deadline(SOON));
    a.signal("TERM");
    assert_eq!(a.wait_exit(SOON), Some(0), "{}", a.log());
    let s = a.status().unwrap();
    assert_eq!((s["state"].as_str(), platform(&s, "tg")["state"].as_str()), (Some("stopped"), Some("stopped")));
    // The lock went with it: another gateway can take the token at once.
    let b = Gateway::start_in(dir_b.path(), locks.path(), &config);
    b.wait_platform("tg", "connected", SOON);
}

#[test]
fn a_restart_resumes_at_the_stored_offset_without_repeating_a_reply() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{OPEN_ACCESS}{}", reconnect(200, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let mut g = Gateway::start_in(dir.path(), &dir.path().join("locks"), &config);
    g.wait_platform("tg", "connected", SOON);
    let first = fake.push_text(1, 1, "one");
    fake.wait_sent(1, deadline(SOON));
    g.signal("TERM");
    assert_eq!(g.wait_exit(SOON), Some(0));
    let polls_before = fake.count("getUpdates");

    let g = Gateway::start_in(dir.path(), &dir.path().join("locks"), &config);
    g.wait_platform("tg", "connected", SOON);
    fake.wait_count("getUpdates", polls_before + 1, deadline(SOON));
    let resumed = &fake.calls("getUpdates")[polls_before];
    assert_eq!(resumed.params["offset"].as_i64(), Some(first + 1), "the restart did not resume at the offset");
    fake.push_text(1, 1, "two");
    let sent = fake.wait_sent(2, deadline(SOON));
    assert_eq!(sent.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(), ["echo: one", "echo: two"]);
}

#[test]
fn a_hung_connect_times_out_and_is_retried() {
    let fake = FakeTelegram::start(TOKEN);
    fake.inject("getMe", Fault::Hang(Duration::from_secs(3)), 1);
    let config = format!(
        "{}{}request_timeout = \"10s\"\n",
        reconnect(100, 20, 300),
        telegram("tg", &fake.url(), TOKEN).replace("request_timeout = \"2s\"\n", "")
    );
    let g = Gateway::start(&config);
    let s = g.wait_status("connect_timeout", SOON, |s| s["platforms"]["tg"]["error_code"] == "connect_timeout");
    assert_eq!(platform(&s, "tg")["state"], "retrying");
    g.wait_platform("tg", "connected", SOON);
}

/// A captive portal (or a misconfigured proxy) on `127.0.0.1:0`: every request is
/// redirected to a login page that quotes the request path, which holds the bot token.
/// The redirect climbs above the root, so the client fails with an error that quotes
/// the `Location`, token and all. Returns the portal's URL.
fn captive_portal() -> String {
    let server = support::http::Server::start("captive-portal", |request| {
        let location = format!("../../../portal/login?from={}", request.url());
        request.respond(302, &[("Location".to_string(), location)], b"");
    });
    let url = server.url();
    // The portal serves until the test process ends.
    std::mem::forget(server);
    url
}

/// The adapter scrubs the token from every error text; the log writer's blanking is only
/// a second defence, and `status.json` has no other. The portal's error quotes the
/// token, so without the adapter's scrubbing this fails (on `status.json`). The run
/// has a log file, so both log writers are checked too.
#[test]
fn secrets_never_reach_the_log_or_state_files_even_when_an_error_quotes_the_url() {
    let token = "777000:SECRET-token-that-must-not-leak";
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[gateway]\nstate_dir = \"state\"\nlog_level = \"debug\"\nlog_file = \"state/gateway.log\"\n{}{}",
        reconnect(50, 2, 5000),
        telegram("tg", &captive_portal(), token)
    );
    fs::create_dir(dir.path().join("state")).unwrap();
    fs::write(dir.path().join("gateway.toml"), config).unwrap();
    let mut child = Command::new(binary())
        .args(["--config", "gateway.toml", "run"])
        .current_dir(dir.path())
        .env("SWITCHBOARD_LOCK_DIR", dir.path().join("locks"))
        .stdin(Stdio::null())
        .stderr(fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let mut code = None;
    let exited = wait_until(deadline(SOON), || {
        code = child.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    assert_eq!(code, Some(Some(1)));
    let read = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
    let (log, file, state) = (read("stderr.log"), read("state/gateway.log"), read("state/status.json"));
    // The failure that quotes the URL did happen, and was reported everywhere.
    assert!(log.contains("location header is malformed"), "{log}");
    assert!(file.contains("location header is malformed"), "{file}");
    assert!(state.contains("portal/login?from=/bot"), "{state}");
    for (what, text) in [("log", &log), ("log file", &file), ("status.json", &state)] {
        assert!(!text.contains("SECRET-token"), "the token reached the {what}: {text}");
    }
}

#[test]
fn check_prints_a_summary_or_every_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    fs::write(&good, "[platforms.console]\n[platforms.tg]\nkind = \"telegram\"\ntoken = \"${TG_TOKEN}\"\n").unwrap();
    let out = Command::new(binary()).args(["check", "--config"]).arg(&good).env("TG_TOKEN", "1:x").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("tg (telegram): enabled") && !text.contains("1:x"), "{text}");

    let bad = dir.path().join("bad.toml");
    fs::write(
        &bad,
        "[reconnect]\nmax_atempts = 3\nbase = 30\n[platforms.tg]\nkind = \"telegram\"\ntoken = \"${UNSET_TG}\"\n",
    )
    .unwrap();
    let out = Command::new(binary()).arg("--config").arg(&bad).arg("check").env_remove("UNSET_TG").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(err.contains("bad.toml:2:1: reconnect.max_atempts: unknown key (did you mean `max_attempts`?)"), "{err}");
    assert!(err.contains("bad.toml:3:8: reconnect.base:"), "{err}");
    assert!(err.contains("UNSET_TG"), "{err}");
    // `run` refuses the same file with the same code.
    let out = Command::new(binary()).arg("--config").arg(&bad).env_remove("UNSET_TG").output().unwrap();
    assert_eq!(out.status.code(), Some(78));
}

#[test]
fn status_command_shows_the_next_retry_and_notices_a_dead_pid() {
    let refused = unused_url();
    let config = format!("{}{}", reconnect(60_000, 20, 5000), telegram("tg", &refused, TOKEN));
    let mut g = Gateway::start(&config);
    g.wait_platform("tg", "retrying", SOON);
    let dir = g.dir.clone();
    let status = |json: bool| {
        let mut cmd = Command::new(binary());
        cmd.args(["status", "--config", "gateway.toml"]).current_dir(&dir);
        if json {
            cmd.arg("--json");
        }
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    let text = status(false);
    assert!(text.contains("tg (telegram): retrying, 1 failed attempts, next retry in 60 s"), "{text}");
    let json: Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(json["platforms"]["tg"]["state"], "retrying");
    g.signal("KILL");
    g.wait_exit(SOON);
    assert!(status(false).contains("no longer running"));
}

#[test]
fn unknown_missing_or_extra_arguments_exit_2_with_the_usage_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[&[&str]] = &[
        &["run", "extra"],
        &["check", "extra"],
        &["status", "extra"],
        &["send", "console"],
        &["send", "console", "text", "extra"],
        &["pairing"],
        &["pairing", "approve", "tg"],
        &["pairing", "list", "extra"],
        &["pairing", "revoke", "tg", "1", "2"],
        &["run", "--json"],
        &["send", "--json", "console", "text"],
        &["bogus"],
        &["--bogus"],
        &["status", "--config"],
    ];
    for args in cases {
        let out = Command::new(binary())
            .args(*args)
            .current_dir(dir.path())
            .env_remove("SWITCHBOARD_CONFIG")
            .env("SWITCHBOARD_LOCK_DIR", dir.path().join("locks"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("usage: switchboard"), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("state").exists(), "a refused command line started something");
    // What fits still runs: `status --json` with no gateway ever run is "no status" (1), not usage.
    let out = Command::new(binary())
        .args(["status", "--json"])
        .current_dir(dir.path())
        .env_remove("SWITCHBOARD_CONFIG")
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn send_refuses_a_text_beyond_max_message_bytes_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[gateway]\nstate_dir = \"state\"\n[delivery]\nmax_message_bytes = 2048\n{}",
        telegram("tg", "http://127.0.0.1:9", TOKEN)
    );
    fs::write(dir.path().join("gateway.toml"), config).unwrap();
    let send = |text: &str| {
        let mut child = Command::new(binary())
            .args(["--config", "gateway.toml", "send", "tg:42", "-"])
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Closing stdin ends the text; the write may fail if the command already gave up.
        let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
        child.wait_with_output().unwrap()
    };
    let out = send(&"x".repeat(20 * 1024 * 1024));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("max_message_bytes (2048)") && stderr.contains("nothing queued"), "{stderr}");
    let queued = fs::read_dir(dir.path().join("state/outbox/tg")).map_or(0, |d| d.count());
    assert_eq!(queued, 0, "a refused text left files in the outbox");
    // Up to the limit it is queued (in parts).
    let out = send(&"y".repeat(2048));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Run `switchboard ARGS` in `dir` with no standard input until it exits (killed after
/// [`SOON`]); its exit code and standard error.
fn run_in(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env_remove("SWITCHBOARD_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = deadline(SOON);
    let done = wait_until(end, || child.try_wait().unwrap().is_some());
    if !done {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (if done { out.status.code() } else { None }, text)
}

/// Issue 7 §9 "Two gateways on one state directory lose messages": a console-only run
/// beside a Telegram gateway rewrote the inbox journal under it. The second now refuses,
/// naming the first; `send`, `status` and `pairing` still work beside the first.
#[test]
fn two_gateways_on_one_state_directory_the_second_refuses_naming_the_first_pid() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{OPEN_ACCESS}{}", reconnect(200, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let a = Gateway::start_in(dir.path(), &dir.path().join("locks"), &config);
    a.wait_platform("tg", "connected", SOON);
    let journal = fs::metadata(a.state_dir.join("inbox/journal")).unwrap();
    let console_only = format!("[gateway]\nstate_dir = \"{}\"\n[platforms.console]\n", a.state_dir.display());
    fs::write(dir.path().join("console.toml"), console_only).unwrap();

    let (code, err) = run_in(dir.path(), &["--config", "console.toml", "run"]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains(&format!("PID {}", a.pid())) && err.contains(&a.state_dir.display().to_string()), "{err}");
    use std::os::unix::fs::MetadataExt;
    let after = fs::metadata(a.state_dir.join("inbox/journal")).unwrap();
    assert_eq!((after.ino(), after.size()), (journal.ino(), journal.size()), "the journal was rewritten");
    assert_eq!(a.status().unwrap()["platforms"]["tg"]["state"], "connected");

    for args in [&["status"][..], &["status", "--json"], &["pairing", "list"], &["send", "tg:42", "beside"]] {
        let (code, out) = run_in(dir.path(), &[&["--config", "gateway.toml"], args].concat());
        assert_eq!(code, Some(0), "{args:?}: {out}");
    }
    assert_eq!(fake.wait_sent(1, deadline(SOON)), [("42".to_string(), "beside".to_string())]);
    fake.push_text(5, 5, "still answered");
    assert_eq!(fake.wait_sent(2, deadline(SOON))[1].1, "echo: still answered");
}

/// Issue 7 §9 "Errors without a path, and exit codes that disagree": whatever is wrong
/// with the state directory, `run` names the path and exits 78.
#[test]
fn errors_without_a_path_every_unusable_state_dir_names_its_path_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let start = |state: &std::path::Path| {
        let text = format!("[gateway]\nstate_dir = \"{}\"\n[platforms.console]\n", state.display());
        fs::write(dir.path().join("gateway.toml"), text).unwrap();
        run_in(dir.path(), &["--config", "gateway.toml", "run"])
    };
    // A file where the state directory should be: "not a directory", not "File exists".
    let file = dir.path().join("state-file");
    fs::write(&file, "").unwrap();
    let (code, err) = start(&file);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains(&format!("state_dir {}", file.display())) && err.contains("not a directory"), "{err}");
    assert!(!err.contains("File exists"), "{err}");

    // A state directory that cannot be created (its parent is a file).
    let under = file.join("state");
    let (code, err) = start(&under);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains(&under.display().to_string()), "{err}");

    // The inbox journal replaced by a directory: it used to be exit 1 without a path.
    let state = dir.path().join("state");
    fs::create_dir_all(state.join("inbox/journal")).unwrap();
    let (code, err) = start(&state);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains(&state.join("inbox").display().to_string()), "{err}");
    assert!(err.contains("set [gateway] state_dir"), "{err}");
}

/// Issue 7 §5 "Secrets stay secret": `status`, `status --json` and `pairing list` failed
/// with "environment variable … is not set" from a shell without the token variables.
/// Commands that need no secret must not require one; `check` still does.
#[test]
fn status_and_pairing_need_no_secret_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let config = "[platforms.tg]\nkind = \"telegram\"\ntoken = \"${SB_TEST_UNSET_TOKEN}\"\n\
                  [agent]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n\
                  api_key = \"${SB_TEST_UNSET_KEY}\"\n";
    fs::write(dir.path().join("gateway.toml"), config).unwrap();
    fs::create_dir_all(dir.path().join("state")).unwrap();
    for args in [&["status"][..], &["status", "--json"], &["pairing", "list"]] {
        let (code, out) = run_in(dir.path(), &[&["--config", "gateway.toml"], args].concat());
        assert!(!out.contains("is not set"), "{args:?}: {out}");
        // `status` before any run says so (exit 1); `pairing list` lists nothing.
        assert_ne!(code, Some(78), "{args:?}: {out}");
    }
    let (code, out) = run_in(dir.path(), &["--config", "gateway.toml", "check"]);
    assert_eq!(code, Some(78), "{out}");
    assert!(
        out.contains("`SB_TEST_UNSET_TOKEN` is not set") && out.contains("`SB_TEST_UNSET_KEY` is not set"),
        "{out}"
    );
}

/// Issue 7 §9 "Trace logging leaks tokens": at `log_level = "trace"` ureq-proto dumped
/// each request in rows of hex and ASCII (`POST /bot<token>/…`), which the redacting
/// writer cannot recognise, to the log file too. Secrets stay out of every level.
#[test]
fn trace_logging_leaks_no_token_to_stderr_or_the_log_file() {
    let token = "777000:TRACEsecretTOKENvalue";
    let fake = FakeTelegram::start(token);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = format!(
        "[gateway]\nstate_dir = \"{}\"\nlog_level = \"trace\"\nlog_file = \"{}\"\n{OPEN_ACCESS}{}{}",
        state.display(),
        state.join("logs/switchboard.log").display(),
        reconnect(200, 20, 5000),
        telegram("tg", &fake.url(), token)
    );
    fs::write(dir.path().join("gateway.toml"), config).unwrap();
    let stderr = dir.path().join("stderr.log");
    let mut child = Command::new(binary())
        .args(["--config", "gateway.toml", "run"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let connected = || {
        let status = fs::read(state.join("status.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        status.is_some_and(|s: Value| s["platforms"]["tg"]["state"] == "connected")
    };
    assert!(wait_until(deadline(SOON), connected), "{}", fs::read_to_string(&stderr).unwrap());
    fake.push_text(42, 7, "hello");
    fake.wait_sent(1, deadline(SOON));
    let _ = child.kill();
    child.wait().unwrap();
    let file = fs::read_to_string(state.join("logs/switchboard.log")).unwrap();
    for log in [fs::read_to_string(&stderr).unwrap(), file] {
        let unspaced = log.replace(' ', "");
        assert!(log.contains("[DEBUG] Call<SendRequest>"), "the HTTP client was not logged:\n{log}");
        // Any 6 characters of the secret part, in ASCII or in hex, would be a leak.
        let secret = "TRACEsecretTOKENvalue";
        for i in 0..=secret.len() - 6 {
            let piece = &secret[i..i + 6];
            let hex: String = piece.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(!log.contains(piece) && !unspaced.contains(&hex), "`{piece}` leaked:\n{log}");
        }
    }
}

/// Issue 7 §9 "`check` passes what `run` rejects": no enabled platform, a token with a
/// newline, and the shipped commented `log_file` (in a directory that did not exist yet:
/// `cannot start logging: No such file or directory`, no path).
#[test]
fn check_passes_what_run_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        fs::write(dir.path().join("gateway.toml"), text).unwrap();
        run_in(dir.path(), &["--config", "gateway.toml", "check"])
    };
    let (code, out) = check("[gateway]\nstate_dir = \"./state\"\n");
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("gateway.toml: platforms: no platform is enabled"), "{out}");

    let (code, out) = check("[platforms.tg]\nkind = \"telegram\"\ntoken = \"123:abc\\n\"\n");
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("gateway.toml:3:9: platforms.tg.token: contains a space or a line break"), "{out}");

    // The log file inside a state directory neither of which exists yet: both are created.
    let text = "[gateway]\nstate_dir = \"./state\"\nlog_file = \"./state/logs/switchboard.log\"\n[platforms.console]\n";
    let (code, out) = check(text);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = run_in(dir.path(), &["--config", "gateway.toml", "run"]);
    assert_eq!(code, Some(0), "{out}");
    let log = fs::read_to_string(dir.path().join("state/logs/switchboard.log")).unwrap();
    assert!(log.contains("starting"), "{log}");
}

/// Issue 7 §9 "Modes": under `umask 000` the lock directory was created 0777. Whatever
/// the umask, what switchboard creates is 0700 (directories) and 0600 (files).
#[test]
fn modes_under_umask_000_directories_are_0700_and_files_0600() {
    use std::os::unix::fs::PermissionsExt;
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[gateway]\nstate_dir = \"./state\"\nlog_file = \"./logs/now/switchboard.log\"\n{}[platforms.console]\n{}",
        reconnect(200, 20, 5000),
        telegram("tg", &fake.url(), TOKEN)
    );
    fs::write(dir.path().join("gateway.toml"), config).unwrap();
    let umask_000 = |args: &[&str]| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("umask 000; exec \"$@\"").arg("sh").arg(binary()).args(["--config", "gateway.toml"]);
        cmd.args(args).current_dir(dir.path()).env("SWITCHBOARD_LOCK_DIR", dir.path().join("locks"));
        cmd
    };
    let mut child =
        umask_000(&["run"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let connected = || {
        let status = fs::read(dir.path().join("state/status.json")).ok().and_then(|b| serde_json::from_slice(&b).ok());
        status.is_some_and(|s: Value| s["platforms"]["tg"]["state"] == "connected")
    };
    assert!(wait_until(deadline(SOON), connected));
    for args in [&["send", "tg:42", "hi"][..], &["pairing", "approve", "tg", "ABCDEFGH"]] {
        umask_000(args).output().unwrap();
    }
    drop(child.stdin.take());
    let _ = child.kill();
    child.wait().unwrap();

    let mut seen = 0;
    let mut todo = vec![dir.path().to_path_buf()];
    while let Some(path) = todo.pop() {
        for entry in fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            let (p, meta) = (entry.path(), entry.metadata().unwrap());
            let mode = meta.permissions().mode() & 0o777;
            if meta.is_dir() {
                assert_eq!(mode, 0o700, "{}", p.display());
                todo.push(p);
            } else if p.file_name().unwrap() != "gateway.toml" {
                assert_eq!(mode, 0o600, "{}", p.display());
            }
            seen += 1;
        }
    }
    assert!(seen > 10, "too little was created to tell");
}

// ---------------------------------------------------------------------------------------
// Issue 7 §1 and §2: hostile numbers and flapping links, seen from outside

/// Issue 7 §2: a link that connects and drops at once (getMe fine, every getUpdates a
/// 502) was reconnected every `base` for ever, each logged as attempt 1, status attempts
/// 0. Each drop soon after a reconnect is a failed attempt: the count grows in
/// `status.json`, the log numbers the attempts, and `max_attempts` ends it (exit 1).
#[test]
fn r_a_flapping_link_backs_off_counts_its_attempts_and_gives_up() {
    let fake = FakeTelegram::start(TOKEN);
    fake.fail_always("getUpdates", Some(Fault::Status(502, api_error(502, "Bad Gateway"))));
    let mut g = Gateway::start(&format!("{}{}", reconnect(200, 4, 5000), telegram("tg", &fake.url(), TOKEN)));
    // The attempt counts `status.json` shows while the platform waits to reconnect.
    let mut seen: Vec<u64> = vec![];
    let ended = wait_until(deadline(Duration::from_secs(30)), || {
        let tg = g.status().map(|s| platform(&s, "tg")).unwrap_or_default();
        if tg["state"] == "retrying"
            && let Some(n) = tg["attempts"].as_u64()
            && seen.last() != Some(&n)
        {
            seen.push(n);
        }
        tg["state"] == "gave_up"
    });
    assert!(ended, "never gave up; attempts seen: {seen:?}\nlog:\n{}", g.log());
    assert_eq!(g.wait_exit(SOON), Some(1), "{}", g.log());
    assert!(seen.windows(2).all(|w| w[0] < w[1]) && seen.len() >= 2, "attempts did not grow: {seen:?}");
    let tg = platform(&g.status().unwrap(), "tg");
    assert_eq!((tg["state"].as_str(), tg["attempts"].as_u64()), (Some("gave_up"), Some(4)));
    // One getMe per connect: the first one and four reconnects, each of which worked.
    assert_eq!(fake.count("getMe"), 5);
    let log = g.log();
    for n in 2..=4 {
        assert!(log.contains(&format!("tg: reconnecting (attempt {n})")), "attempt {n}:\n{log}");
        let flap = format!("after reconnecting, failed attempt {}", n - 1);
        assert!(log.contains(&flap) && log.contains(&format!("queued for reconnection, attempt {n} in")), "{log}");
    }
    assert!(log.contains("gave up after 4 attempts"), "{log}");
}

const OTHER_TOKEN: &str = "999:other-bot";

/// A gateway with two bots, `tg` on `a` and `other` on `b`, where `a` answers the first
/// `sendMessage` with `fault` (a hostile rate limit). The gateway must clamp the wait
/// and log it, and go on: `tg` keeps receiving, `other` keeps answering, nothing panics.
fn a_hostile_rate_limit_is_clamped(fault: Fault) {
    let (a, b) = (FakeTelegram::start(TOKEN), FakeTelegram::start(OTHER_TOKEN));
    a.inject("sendMessage", fault, 1);
    let config = format!(
        "{}{OPEN_ACCESS}{}{}",
        reconnect(200, 20, 5000),
        telegram("tg", &a.url(), TOKEN),
        telegram("other", &b.url(), OTHER_TOKEN)
    );
    let mut g = Gateway::start(&config);
    g.wait_status("running", SOON, |s| s["state"] == "running");
    a.push_text(1, 1, "first");
    let clamped = wait_until(deadline(SOON), || g.log().contains("suspicious wait from a server"));
    assert!(clamped, "no clamp logged:\n{}", g.log());
    // The same bot still receives (its offset moves past a message from another chat;
    // its answer waits behind the clamped hold), and the other bot still answers.
    let second = a.push_text(2, 2, "second");
    assert!(a.wait_offset(second + 1, deadline(SOON)).is_some_and(|o| o > second), "tg stopped receiving");
    b.push_text(3, 3, "third");
    assert_eq!(b.wait_sent(1, deadline(SOON)), [("3".to_string(), "echo: third".to_string())]);
    assert_eq!(g.child.try_wait().unwrap(), None, "the gateway ended:\n{}", g.log());
    let s = g.status().unwrap();
    assert_eq!((s["state"].as_str(), platform(&s, "tg")["state"].as_str()), (Some("running"), Some("connected")));
    assert!(!g.log().contains("panicked"), "{}", g.log());
    g.signal("TERM");
    assert_eq!(g.wait_exit(SOON), Some(0), "{}", g.log());
}

/// Issue 7 §1: a 429 with `retry_after` 18446744073709551615 on `sendMessage` overflowed
/// `Instant + Duration` in the outbox worker, which died with it.
#[test]
fn r_send_message_429_with_retry_after_u64_max_is_clamped() {
    a_hostile_rate_limit_is_clamped(Fault::Status(429, rate_limited(u64::MAX)));
}

/// Issue 7 §1: a `Retry-After` date in the year 1000000000000 overflowed the date
/// arithmetic.
#[test]
fn r_retry_after_date_in_the_year_1000000000000_is_clamped() {
    let body = api_error(429, "Too Many Requests").to_string();
    let date = ("Retry-After".to_string(), "Sun, 06 Nov 1000000000000 08:49:37 GMT".to_string());
    a_hostile_rate_limit_is_clamped(Fault::WithHeaders(429, body, vec![date]));
}

/// The running gateway's `GLIBC_TUNABLES`, read from `/proc`.
fn tunables_of(g: &Gateway) -> Option<String> {
    let environ = fs::read(format!("/proc/{}/environ", g.child.id())).unwrap();
    let vars = environ.split(|b| *b == 0).map(|v| String::from_utf8_lossy(v).into_owned());
    vars.into_iter().find_map(|v| v.strip_prefix("GLIBC_TUNABLES=").map(str::to_string))
}

/// Issue 8 §5: glibc's per-thread caches grew the soak's RSS by 3 MB; `run` execs itself
/// once with them off (same pid), keeping what the user set in `GLIBC_TUNABLES` and
/// leaving alone a choice of their own for the caches. (With two tunables, glibc 2.36's
/// loader shows only the first in `/proc/PID/environ`: that case is checked to start,
/// which an exec loop would never do.)
#[cfg(target_env = "gnu")]
#[test]
fn run_turns_glibc_thread_caches_off_and_keeps_the_users_tunables() {
    let fake = FakeTelegram::start(TOKEN);
    let config = format!("{}{}", reconnect(200, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    for (given, expected) in [
        (None, Some("glibc.malloc.tcache_count=0")),
        (Some("glibc.malloc.tcache_count=3"), Some("glibc.malloc.tcache_count=3")),
        (Some("glibc.malloc.arena_max=1"), None),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let env: Vec<(&str, &str)> = given.map(|v| ("GLIBC_TUNABLES", v)).into_iter().collect();
        let g = Gateway::start_in_env(dir.path(), &dir.path().join("locks"), &config, &env);
        g.wait_platform("tg", "connected", SOON);
        if let Some(expected) = expected {
            assert_eq!(tunables_of(&g).as_deref(), Some(expected), "{}", g.log());
        }
    }
}
