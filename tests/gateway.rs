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

#[test]
fn second_gateway_with_the_same_token_exits_78_naming_the_first_pid() {
    let fake = FakeTelegram::start(TOKEN);
    let locks = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = format!("{}{}", reconnect(200, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let a = Gateway::start_in(dir_a.path(), locks.path(), &config);
    a.wait_platform("tg", "connected", SOON);
    let mut b = Gateway::start_in(dir_b.path(), locks.path(), &config);
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

#[test]
fn sigterm_stops_within_2_s_writes_stopped_and_frees_the_token() {
    let fake = FakeTelegram::start(TOKEN);
    let locks = tempfile::tempdir().unwrap();
    let config = format!("{}{}", reconnect(200, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Gateway::start_in(dir_a.path(), locks.path(), &config);
    a.wait_platform("tg", "connected", SOON);
    // Wait until a long poll is being held, then ask it to stop.
    fake.wait_count("getUpdates", 1, deadline(SOON));
    let asked = Instant::now();
    a.signal("TERM");
    assert_eq!(a.wait_exit(SOON), Some(0), "{}", a.log());
    assert!(asked.elapsed() < Duration::from_secs(2), "took {:?}", asked.elapsed());
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

#[test]
fn secrets_never_reach_the_log_or_state_files() {
    let token = "777000:SECRET-token-that-must-not-leak";
    let refused = unused_url();
    let config = format!("{}{}", reconnect(50, 2, 5000), telegram("tg", &refused, token));
    let mut g = Gateway::start(&config);
    assert_eq!(g.wait_exit(SOON), Some(1));
    let (log, state) = (g.log(), g.state_files());
    assert!(log.contains("telegram_network_error"), "{log}");
    assert!(!log.contains("SECRET-token"), "{log}");
    assert!(!state.contains("SECRET-token"), "{state}");
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
