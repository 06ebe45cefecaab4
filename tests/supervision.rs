/*!
A panic is never silent (issue 7, section 1), and two smaller points of section 8 (a
stopped platform's outlet is withdrawn; typing indicators are bounded and kept apart per
platform), through the real binary.

Panics are triggered with `SWITCHBOARD_TEST_PANIC` (see `src/testhook.rs`): `point`
panics every time, `point:N` the first N times in the process.
*/

mod support;

use std::path::Path;
use std::time::Duration;

use support::deadline;
use support::fake_telegram::{FakeTelegram, Fault, TOKEN};
use support::gateway::{Gateway, OPEN_ACCESS, reconnect, telegram};

const SOON: Duration = Duration::from_secs(10);

/// A second bot token, for a second fake Telegram in one test.
const OTHER_TOKEN: &str = "987654321:AAH-other_fake_token-for-tests";

/// A gateway in `dir` with a Telegram bot `tg` on `fake`, open to everyone, answered by
/// `agent` (an `[agent]` table, or "" for echo), with the test panics `panics`.
fn bot(dir: &Path, fake: &FakeTelegram, agent: &str, panics: &str) -> Gateway {
    let config = format!("{}{OPEN_ACCESS}{agent}{}", reconnect(50, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    Gateway::start_in_env(dir, &dir.join("locks"), &config, &[("SWITCHBOARD_TEST_PANIC", panics)])
}

/// `[agent]` running a Python script that waits `secs` before answering `slow: TEXT`.
fn slow_agent(dir: &Path, secs: f64) -> String {
    let path = dir.join("agent.py");
    let script = format!(
        "import json, sys, time\nturn = json.load(sys.stdin)\ntime.sleep({secs})\nprint('slow: ' + turn['text'])\n"
    );
    std::fs::write(&path, script).unwrap();
    format!("[agent]\nbackend = \"command\"\ncommand = [\"python3\", \"{}\"]\ntimeout = \"60s\"\n", path.display())
}

fn texts(sent: &[(String, String)]) -> Vec<&str> {
    sent.iter().map(|(_, t)| t.as_str()).collect()
}

#[test]
fn interruptible_panic_is_retryable_adapter_panic() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    // The first blocking call of the adapter (`getMe`, during connect) panics on its
    // helper thread, before the request. It used to be read as a stop: connect went on
    // without `getMe` and reported connected.
    let g = bot(dir.path(), &fake, "", "adapter-io:1");
    g.wait_platform("tg", "connected", SOON);
    assert_eq!(fake.count("getMe"), 1, "connected without a retried getMe\n{}", g.log());
    let log = g.log();
    assert!(log.contains("failed to connect (adapter_panic: adapter panicked: test panic at adapter-io)"), "{log}");
    fake.push_text(5, 5, "hello");
    assert_eq!(texts(&fake.wait_sent(1, deadline(SOON))), ["echo: hello"]);
}

#[test]
fn interruptible_panic_every_time_gives_up_with_exit_1() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{}", reconnect(20, 2, 5000), telegram("tg", &fake.url(), TOKEN));
    let mut g = Gateway::start_in_env(
        dir.path(),
        &dir.path().join("locks"),
        &config,
        &[("SWITCHBOARD_TEST_PANIC", "adapter-io")],
    );
    // A panic is a retryable failure: after `max_attempts` the platform gave up, which
    // exits 1 (restarted by systemd), never 0 as after a clean stop.
    assert_eq!(g.wait_exit(SOON), Some(1), "{}", g.log());
    assert!(g.log().contains("gave up after 2 attempts"), "{}", g.log());
}

#[test]
fn outbox_worker_panic_restarts_and_delivers() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let g = bot(dir.path(), &fake, "", "outbox-send:1");
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(5, 5, "hello");
    fake.push_text(5, 5, "again");
    assert_eq!(texts(&fake.wait_sent(2, deadline(SOON))), ["echo: hello", "echo: again"], "{}", g.log());
    assert!(g.log().contains("thread outbox-tg panicked (test panic at outbox-send); restarting"), "{}", g.log());
}

#[test]
fn outbox_worker_panicking_every_time_exits_1() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let mut g = bot(dir.path(), &fake, "", "outbox-send");
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(5, 5, "hello");
    // Restarts are bounded: a worker that panics in a loop ends the gateway, so that the
    // service manager restarts it, instead of spinning or living on without sending.
    assert_eq!(g.wait_exit(SOON), Some(1), "{}", g.log());
    assert!(g.log().contains("thread outbox-tg panicked 5 times"), "{}", g.log());
    // The reply stayed in the outbox: the next start sends it.
    let g = bot(dir.path(), &fake, "", "");
    g.wait_platform("tg", "connected", SOON);
    assert_eq!(texts(&fake.wait_sent(1, deadline(SOON))), ["echo: hello"], "{}", g.log());
}

#[test]
fn turn_worker_panic_answers_the_message_again() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let g = bot(dir.path(), &fake, "", "turn-run:1");
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(5, 5, "hello");
    assert_eq!(texts(&fake.wait_sent(1, deadline(SOON))), ["echo: hello"], "{}", g.log());
    // The session is free again.
    fake.push_text(5, 5, "again");
    assert_eq!(texts(&fake.wait_sent(2, deadline(SOON))), ["echo: hello", "echo: again"]);
    assert!(g.log().contains("test panic at turn-run"), "{}", g.log());
}

#[test]
fn turn_worker_panic_twice_on_one_message_apologises_and_finishes_it() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let mut g = bot(dir.path(), &fake, "", "turn-run:2");
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(5, 5, "poison");
    let sent = fake.wait_sent(1, deadline(SOON));
    assert!(sent[0].1.starts_with("Sorry"), "{sent:?}\n{}", g.log());
    fake.push_text(5, 5, "next");
    assert_eq!(fake.wait_sent(2, deadline(SOON))[1].1, "echo: next");
    // It is finished: a restart does not answer it again.
    g.signal("TERM");
    assert_eq!(g.wait_exit(SOON), Some(0));
    let config = format!("{}{OPEN_ACCESS}{}", reconnect(50, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let g = Gateway::start_in(dir.path(), &locks, &config);
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(5, 5, "after");
    assert_eq!(texts(&fake.wait_sent(3, deadline(SOON)))[2..], ["echo: after"]);
}

/// The threads of process `pid` whose name starts with `turn-`.
fn turn_threads(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    tasks.filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|n| n.starts_with("turn-"))).count()
}

/// Issue 8, section 1: turn threads start on demand and end when idle. A turn thread
/// that panicked is restarted with its turn as before, and still ends when idle; the
/// next message starts a thread again.
#[test]
fn a_restarted_turn_thread_still_ends_when_idle() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{OPEN_ACCESS}{}", reconnect(50, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let env = [("SWITCHBOARD_TEST_PANIC", "turn-run:1"), ("SWITCHBOARD_TEST_TURN_IDLE_MS", "200")];
    let g = Gateway::start_in_env(dir.path(), &dir.path().join("locks"), &config, &env);
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(5, 5, "hello");
    assert_eq!(texts(&fake.wait_sent(1, deadline(SOON))), ["echo: hello"], "{}", g.log());
    assert!(g.log().contains("thread turn-1 panicked (test panic at turn-run); restarting"), "{}", g.log());
    let idle = support::wait_until(deadline(SOON), || turn_threads(g.pid()) == 0);
    assert!(idle, "{} turn threads left", turn_threads(g.pid()));
    fake.push_text(5, 5, "again");
    assert_eq!(texts(&fake.wait_sent(2, deadline(SOON))), ["echo: hello", "echo: again"], "{}", g.log());
}

#[test]
fn router_panic_exits_1() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let mut g = bot(dir.path(), &fake, "", "router");
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(5, 5, "hello");
    assert_eq!(g.wait_exit(SOON), Some(1), "{}", g.log());
    assert!(g.log().contains("thread router panicked (test panic at router)"), "{}", g.log());
    // The message was accepted before the panic: the next start answers it.
    let g = bot(dir.path(), &fake, "", "");
    g.wait_platform("tg", "connected", SOON);
    assert_eq!(texts(&fake.wait_sent(1, deadline(SOON))), ["echo: hello"], "{}", g.log());
}

#[test]
fn typing_panic_restarts() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let g = bot(dir.path(), &fake, &slow_agent(dir.path(), 2.0), "typing:1");
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(5, 5, "one");
    fake.wait_sent(1, deadline(SOON));
    // The first indicator panicked; the next turn still shows one.
    fake.push_text(5, 5, "two");
    assert!(fake.wait_count("sendChatAction", 1, deadline(SOON)) >= 1, "{}", g.log());
    assert!(g.log().contains("test panic at typing"), "{}", g.log());
}

#[test]
fn directory_writer_panic_is_logged_and_written_later() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let mut g = bot(dir.path(), &fake, "", "directory-write:1");
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(5, 5, "hello");
    assert_eq!(texts(&fake.wait_sent(1, deadline(SOON))), ["echo: hello"], "{}", g.log());
    g.signal("TERM");
    assert_eq!(g.wait_exit(SOON), Some(0));
    // The write that panicked is done again by the next one (at the latest when stopping).
    let directory = std::fs::read_to_string(g.state_dir.join("directory.json")).unwrap();
    assert!(directory.contains("\"5\""), "{directory}");
    assert!(g.log().contains("test panic at directory-write"), "{}", g.log());
}

/// A console that reached the end of its input is stopped: `/status` must not list it as
/// connected. (Its outlet still prints the replies to what it read, see
/// `tests/gateway.rs`, `echo_hello_prints_the_reply_and_exits_0_with_the_embedded_default`.)
#[test]
fn stopped_console_outlet_is_withdrawn() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config =
        format!("{}{OPEN_ACCESS}[platforms.console]\n{}", reconnect(50, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let mut g = Gateway::start_in(dir.path(), &dir.path().join("locks"), &config);
    g.wait_platform("tg", "connected", SOON);
    g.wait_platform("console", "connected", SOON);
    g.close_stdin();
    g.wait_platform("console", "stopped", SOON);
    fake.push_text(5, 5, "/status");
    let reply = fake.wait_sent(1, deadline(SOON))[0].1.clone();
    assert_eq!(reply.lines().last(), Some("Connected platforms: tg"), "{reply}");
}

/// How long the tests of typing wait: well under `a`'s hang, well over what is needed.
const TYPING_WAIT: Duration = Duration::from_secs(20);

/// Two bots on two fake servers, `a` and `b`, answered by an agent that takes 30 s;
/// `a`'s `sendChatAction` hangs for 40 s, and its requests may take 60 s.
fn two_bots(dir: &Path, a: &FakeTelegram, b: &FakeTelegram) -> Gateway {
    a.fail_always("sendChatAction", Some(Fault::Hang(Duration::from_secs(40))));
    let slow_a = telegram("a", &a.url(), TOKEN).replace("request_timeout = \"2s\"", "request_timeout = \"60s\"");
    let config = format!(
        "{}{OPEN_ACCESS}{}{slow_a}{}",
        reconnect(50, 20, 5000),
        slow_agent(dir, 30.0),
        telegram("b", &b.url(), OTHER_TOKEN)
    );
    let g = Gateway::start_in(dir, &dir.join("locks"), &config);
    g.wait_platform("a", "connected", SOON);
    g.wait_platform("b", "connected", SOON);
    g
}

#[test]
fn slow_typing_on_one_platform_does_not_delay_another() {
    let (a, b) = (FakeTelegram::start(TOKEN), FakeTelegram::start(OTHER_TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let g = two_bots(dir.path(), &a, &b);
    a.push_text(1, 1, "on a");
    assert_eq!(a.wait_count("sendChatAction", 1, deadline(SOON)), 1, "{}", g.log());
    // `a`'s indicator is hanging now. `b`'s goes out all the same, long before `a`'s ends.
    b.push_text(2, 2, "on b");
    assert!(b.wait_count("sendChatAction", 1, deadline(TYPING_WAIT)) >= 1, "{}", g.log());
}

#[test]
fn typing_on_a_dead_platform_is_bounded_to_2s() {
    let (a, b) = (FakeTelegram::start(TOKEN), FakeTelegram::start(OTHER_TOKEN));
    let dir = tempfile::tempdir().unwrap();
    let g = two_bots(dir.path(), &a, &b);
    a.push_text(1, 1, "on a");
    // The first indicator hangs for 40 s, but the call gives up after 2 s, so the next
    // one (4 s later) goes out within the wait.
    assert!(a.wait_count("sendChatAction", 2, deadline(TYPING_WAIT)) >= 2, "{}", g.log());
}
