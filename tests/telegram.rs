/*!
The Telegram platform against a fake Bot API: connect, receive, send, and every failure
class of the spec (see the module doc of `src/platforms/telegram.rs` for the table).

Each test drives one adapter the way the harness does: build it from a
[`TelegramSpec`], `connect` on the test thread, `run` on a thread of its own, and stop it
by dropping the context's stop sender. All waits are deadlines on conditions.
*/

mod support;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use serde_json::json;
use switchboard::adapter::{Context, Stop};
use switchboard::config::Secret;
use switchboard::delivery::Outbox;
use switchboard::inbox::Accepted;
use switchboard::message::{ChatType, Inbound, Outbound};
use switchboard::platform::PlatformSpec;
use switchboard::platform::{Fatal, Outlet, SendError};
use switchboard::platforms::telegram::{TelegramSettings, TelegramSpec};

use support::fake_telegram::{CONFLICT, FakeTelegram, Fault, TOKEN, api_error, rate_limited};
use support::{deadline, unused_url, wait_until};

const NAME: &str = "tg";
const SOON: Duration = Duration::from_secs(5);

/// Settings for `fake` with every wait in milliseconds.
fn settings(fake: &FakeTelegram) -> TelegramSettings {
    TelegramSettings {
        api_base: fake.url(),
        poll_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        network_retries: 2,
        network_retry_wait: Duration::from_millis(10),
        conflict_retries: 3,
        conflict_wait: Duration::from_millis(10),
        ..TelegramSettings::new(Secret::new(fake.token()))
    }
}

/// A connected adapter whose `run` goes on on its own thread.
struct Adapter {
    outlet: Arc<dyn Outlet>,
    inbound: Receiver<Accepted>,
    stop: Stop,
    done: Receiver<Result<(), Fatal>>,
}

/// Connect an adapter with `settings`, keeping its cursor in `state_dir`.
fn start(settings: TelegramSettings, state_dir: &Path) -> Result<Adapter, Fatal> {
    let (tx, rx) = unbounded();
    start_with(settings, state_dir, tx, rx)
}

fn start_with(
    settings: TelegramSettings,
    state_dir: &Path,
    tx: Sender<Accepted>,
    inbound: Receiver<Accepted>,
) -> Result<Adapter, Fatal> {
    let (ctx, stop) = Context::new(NAME, state_dir.to_path_buf(), tx);
    let mut platform = TelegramSpec::new(settings).build();
    let outlet = platform.connect(&ctx)?;
    let (done_tx, done) = bounded(1);
    thread::spawn(move || {
        let _ = done_tx.send(platform.run(&ctx));
    });
    Ok(Adapter { outlet, inbound, stop, done })
}

impl Adapter {
    fn recv(&self) -> Inbound {
        self.inbound.recv_timeout(SOON).expect("an inbound message within 5 s").msg
    }

    /// How `run` ended, if it ended within `within`.
    fn ended(&self, within: Duration) -> Option<Result<(), Fatal>> {
        self.done.recv_timeout(within).ok()
    }

    /// Request a stop; returns how `run` ended. It must end within [`SOON`], far less
    /// than any wait the stop tests set up (a 60 s long poll or conflict wait).
    fn stop(self) -> Result<(), Fatal> {
        drop(self.stop);
        self.done.recv_timeout(SOON).expect("run ends after a stop")
    }
}

/// Assert `fatal` has `code` and `retryable`, and that it does not leak the token.
fn assert_fatal(fatal: &Fatal, code: &str, retryable: bool) {
    assert_eq!((fatal.code.as_str(), fatal.retryable), (code, retryable), "{fatal}");
    assert!(!fatal.message.contains(TOKEN), "the token leaked: {fatal}");
}

fn connect_error(settings: TelegramSettings, state_dir: &Path) -> Fatal {
    match start(settings, state_dir) {
        Ok(_) => panic!("connect succeeded"),
        Err(fatal) => fatal,
    }
}

fn offset_file(dir: &Path) -> std::path::PathBuf {
    dir.join("cursors").join(format!("telegram-{NAME}.offset"))
}

fn stored_offset(dir: &Path) -> Option<i64> {
    fs::read_to_string(offset_file(dir)).ok()?.trim().parse().ok()
}

// ---------------------------------------------------------------------------------------
// Connect and receive

#[test]
fn connects_receives_and_acknowledges() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let adapter = start(settings(&fake), dir.path()).unwrap();
    assert_eq!((fake.count("getMe"), fake.count("deleteWebhook")), (1, 1));
    assert_eq!(fake.calls("deleteWebhook")[0].params["drop_pending_updates"], json!(false));

    let id = fake.push_text(42, 42, "hello");
    let got = adapter.recv();
    assert_eq!(got.text, "hello");
    assert_eq!(got.source.platform, NAME);
    assert_eq!(got.source.chat_id, "42");
    assert_eq!(got.source.chat_type, ChatType::Dm);
    assert_eq!(got.source.user_name.as_deref(), Some("user42"));

    let group = fake.push_text(-100, 7, "in a group");
    assert_eq!(adapter.recv().source.chat_type, ChatType::Group);
    assert_eq!(fake.wait_offset(group + 1, deadline(SOON)), Some(group + 1));
    assert!(id < group);
    let poll = fake.calls("getUpdates").pop().unwrap();
    assert_eq!(poll.params["allowed_updates"], json!(["message"]));
    assert_eq!(poll.params["timeout"], json!(1));
    assert!(wait_until(deadline(SOON), || stored_offset(dir.path()) == Some(group + 1)));
    assert_eq!(adapter.stop(), Ok(()));
}

#[test]
fn skips_but_acknowledges_updates_it_cannot_use() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let allowed = vec!["message".to_string(), "edited_message".to_string()];
    let adapter = start(TelegramSettings { allowed_updates: allowed, ..settings(&fake) }, dir.path()).unwrap();
    fake.push_update(
        json!({ "edited_message": { "message_id": 1, "chat": { "id": 1, "type": "private" }, "text": "e" } }),
    );
    fake.push_update(json!({ "message": { "message_id": 2, "chat": { "id": 1, "type": "private" }, "photo": [] } }));
    fake.push_update(json!({ "message": { "message_id": 3, "chat": "not a chat", "text": "bad" } }));
    let last = fake.push_text(1, 1, "after the junk");
    assert_eq!(adapter.recv().text, "after the junk");
    assert_eq!(fake.wait_offset(last + 1, deadline(SOON)), Some(last + 1));
    assert!(adapter.inbound.is_empty());
    assert_eq!(adapter.ended(Duration::ZERO), None, "still running");
}

#[test]
fn malformed_answer_is_retried() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.inject("getUpdates", Fault::Raw(200, r#"{"ok":tru"#.into()), 1);
    fake.inject("getUpdates", Fault::Raw(200, "<html>proxy</html>".into()), 1);
    let adapter = start(settings(&fake), dir.path()).unwrap();
    fake.push_text(1, 1, "through");
    assert_eq!(adapter.recv().text, "through");
    assert!(fake.count("getUpdates") >= 3);
}

// ---------------------------------------------------------------------------------------
// Failures

#[test]
fn unauthorized_at_connect_is_permanent() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.fail_getme_with(401);
    assert_fatal(&connect_error(settings(&fake), dir.path()), "telegram_unauthorized", false);
    assert_eq!(fake.count("getMe"), 1, "no retry of a refused token");

    // A token the server does not know is refused the same way, and not shown either.
    let fake = FakeTelegram::start(TOKEN);
    let wrong = TelegramSettings { token: Secret::new("987:wrong-token"), ..settings(&fake) };
    let fatal = connect_error(wrong, dir.path());
    assert_fatal(&fatal, "telegram_unauthorized", false);
    assert!(!fatal.message.contains("987:wrong-token"));
}

#[test]
fn unauthorized_at_runtime_is_permanent() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.fail_next("getUpdates", 401, api_error(401, "Unauthorized"), 1);
    let adapter = start(settings(&fake), dir.path()).unwrap();
    let fatal = adapter.ended(SOON).expect("run ends").unwrap_err();
    assert_fatal(&fatal, "telegram_unauthorized", false);
}

#[test]
fn server_errors_are_retried_then_reported_retryable() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    // network_retries = 2: three failures in a row end the run.
    fake.inject("getUpdates", Fault::Raw(502, "<html>Bad Gateway</html>".into()), 3);
    let adapter = start(settings(&fake), dir.path()).unwrap();
    let fatal = adapter.ended(SOON).expect("run ends").unwrap_err();
    assert_fatal(&fatal, "telegram_network_error", true);
    assert_eq!(fake.count("getUpdates"), 3);
}

#[test]
fn a_few_server_errors_are_absorbed() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.fail_next("getUpdates", 500, api_error(500, "Internal Server Error"), 2);
    let adapter = start(settings(&fake), dir.path()).unwrap();
    fake.push_text(1, 1, "still here");
    assert_eq!(adapter.recv().text, "still here");
    assert_eq!(adapter.ended(Duration::ZERO), None);
}

#[test]
fn broken_connections_are_retried_then_reported_retryable() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.inject("getUpdates", Fault::Garbage, 3);
    let adapter = start(settings(&fake), dir.path()).unwrap();
    let fatal = adapter.ended(SOON).expect("run ends").unwrap_err();
    assert_fatal(&fatal, "telegram_network_error", true);
}

#[test]
fn connection_refused_at_connect_is_retryable() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let nowhere = TelegramSettings { api_base: unused_url(), ..settings(&fake) };
    assert_fatal(&connect_error(nowhere, dir.path()), "telegram_network_error", true);
}

#[test]
fn hung_requests_time_out_as_network_errors() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.fail_always("getMe", Some(Fault::Hang(Duration::from_secs(10))));
    let quick = TelegramSettings { request_timeout: Duration::from_millis(200), ..settings(&fake) };
    // Without the timeout the first held getMe would be answered after 10 s, and the
    // connect would succeed.
    assert_fatal(&connect_error(quick, dir.path()), "telegram_network_error", true);
    assert_eq!(fake.count("getMe"), 3);
}

#[test]
fn a_bad_api_base_is_permanent_and_hides_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeTelegram::start(TOKEN);
    let bad = TelegramSettings { api_base: "http://bad host".into(), ..settings(&fake) };
    assert_fatal(&connect_error(bad, dir.path()), "telegram_bad_config", false);
}

#[test]
fn rate_limit_waits_retry_after() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.fail_next("getUpdates", 429, rate_limited(1), 1);
    let adapter = start(settings(&fake), dir.path()).unwrap();
    assert_eq!(fake.wait_count("getUpdates", 2, deadline(SOON)), 2);
    let times = fake.call_times("getUpdates");
    let gap = times[1] - times[0];
    assert!(gap >= Duration::from_secs(1), "next poll after {gap:?}");
    assert_eq!(adapter.ended(Duration::ZERO), None, "a 429 is not fatal");
}

#[test]
fn polling_conflict_gives_up_after_three_retries() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.fail_next("getUpdates", 409, api_error(409, CONFLICT), 4);
    let adapter = start(settings(&fake), dir.path()).unwrap();
    let fatal = adapter.ended(SOON).expect("run ends").unwrap_err();
    assert_fatal(&fatal, "telegram_polling_conflict", false);
    assert_eq!(fake.count("getUpdates"), 4);
    let times = fake.call_times("getUpdates");
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, want) in gaps.iter().zip([10, 20, 30]) {
        assert!(*gap >= Duration::from_millis(want), "conflict waits {gaps:?}");
    }
}

#[test]
fn a_successful_poll_resets_the_conflict_count() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.push_text(1, 1, "between conflicts");
    fake.fail_next("getUpdates", 409, api_error(409, CONFLICT), 3);
    fake.inject("getUpdates", Fault::Pass, 1);
    fake.fail_next("getUpdates", 409, api_error(409, CONFLICT), 3);
    let adapter = start(settings(&fake), dir.path()).unwrap();
    assert_eq!(adapter.recv().text, "between conflicts");
    fake.push_text(1, 1, "after six conflicts");
    assert_eq!(adapter.recv().text, "after six conflicts");
    assert_eq!(adapter.ended(Duration::ZERO), None);
}

// ---------------------------------------------------------------------------------------
// Stopping and the offset

#[test]
fn stop_during_a_long_poll_is_prompt() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let adapter =
        start(TelegramSettings { poll_timeout: Duration::from_secs(60), ..settings(&fake) }, dir.path()).unwrap();
    assert_eq!(fake.wait_count("getUpdates", 1, deadline(SOON)), 1);
    assert_eq!(adapter.stop(), Ok(()));
}

/// Issue 8 §4: a stop cuts the long poll short by shutting down the adapter's agent
/// (no helper thread waits on it any more). The outlet sends on an agent of its own, so
/// the replies to what was received still go out after a clean stop.
#[test]
fn r_the_outlet_still_sends_after_a_stop_mid_long_poll() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let Adapter { outlet, inbound: _inbound, stop, done } =
        start(TelegramSettings { poll_timeout: Duration::from_secs(60), ..settings(&fake) }, dir.path()).unwrap();
    assert_eq!(fake.wait_count("getUpdates", 1, deadline(SOON)), 1);
    drop(stop);
    assert_eq!(done.recv_timeout(SOON).expect("run ends after a stop"), Ok(()));
    let msg = Outbound { chat_id: "42".into(), thread_id: None, reply_to: None, edit_of: None, text: "late".into() };
    assert!(outlet.send(&msg).is_ok());
    assert_eq!(fake.sent(), [("42".to_string(), "late".to_string())]);
}

/// A stop while connecting (a `getMe` the server holds for a minute) is honoured at
/// once too: connect ends cleanly, and no second call is made.
#[test]
fn stop_during_connect_is_prompt() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.inject("getMe", Fault::Hang(Duration::from_secs(60)), 1);
    let (tx, _rx) = unbounded();
    let (ctx, stop) = Context::new(NAME, dir.path().to_path_buf(), tx);
    let mut platform = TelegramSpec::new(settings(&fake)).build();
    let (done_tx, done) = bounded(1);
    thread::spawn(move || {
        let _ = done_tx.send(platform.connect(&ctx).map(drop));
    });
    assert_eq!(fake.wait_count("getMe", 1, deadline(SOON)), 1);
    drop(stop);
    assert_eq!(done.recv_timeout(SOON).expect("connect ends after a stop"), Ok(()));
    assert_eq!((fake.count("getMe"), fake.count("deleteWebhook")), (1, 0));
}

#[test]
fn stop_during_a_conflict_wait_is_prompt() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    fake.fail_next("getUpdates", 409, api_error(409, CONFLICT), 1);
    let slow = TelegramSettings { conflict_wait: Duration::from_secs(60), ..settings(&fake) };
    let adapter = start(slow, dir.path()).unwrap();
    assert_eq!(fake.wait_count("getUpdates", 1, deadline(SOON)), 1);
    assert_eq!(adapter.stop(), Ok(()));
}

#[test]
fn restart_resumes_at_the_stored_offset() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let first = start(settings(&fake), dir.path()).unwrap();
    fake.push_text(1, 1, "one");
    let two = fake.push_text(1, 1, "two");
    assert_eq!((first.recv().text, first.recv().text), ("one".to_string(), "two".to_string()));
    assert!(wait_until(deadline(SOON), || stored_offset(dir.path()) == Some(two + 1)));
    assert_eq!(first.stop(), Ok(()));

    fake.push_text(1, 1, "three");
    let polls_before = fake.count("getUpdates");
    let second = start(settings(&fake), dir.path()).unwrap();
    // Updates come in order, so "three" first means "one" and "two" did not come again.
    assert_eq!(second.recv().text, "three");
    assert_eq!(fake.calls("getUpdates")[polls_before].params["offset"], json!(two + 1));
    assert_eq!(second.stop(), Ok(()));
}

#[test]
fn an_update_not_yet_handed_over_comes_again_after_a_restart() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    // A router that never takes anything: the adapter blocks handing the update over.
    let (stuck_tx, stuck_rx) = bounded(0);
    let first = start_with(settings(&fake), dir.path(), stuck_tx, stuck_rx).unwrap();
    let id = fake.push_text(1, 1, "keep me");
    assert!(fake.wait_served(id, deadline(SOON)));
    assert_eq!(first.stop(), Ok(()));
    assert_eq!(stored_offset(dir.path()), None, "nothing was acknowledged");

    let second = start(settings(&fake), dir.path()).unwrap();
    assert_eq!(second.recv().text, "keep me");
    assert!(wait_until(deadline(SOON), || stored_offset(dir.path()) == Some(id + 1)));
}

#[test]
fn the_offset_file_is_never_seen_half_written() {
    use std::os::unix::fs::PermissionsExt;
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let adapter = start(settings(&fake), dir.path()).unwrap();
    let (done, path) = (Arc::new(AtomicBool::new(false)), offset_file(dir.path()));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (done, path, reads) = (done.clone(), path.clone(), reads.clone());
        thread::spawn(move || {
            let mut bad = Vec::new();
            while !done.load(Ordering::Relaxed) {
                if let Ok(text) = fs::read_to_string(&path) {
                    reads.fetch_add(1, Ordering::Relaxed);
                    if text.trim().parse::<i64>().is_err() || !text.ends_with('\n') {
                        bad.push(text);
                    }
                }
            }
            bad
        })
    };
    let ids: Vec<i64> = (0..40).map(|i| fake.push_text(1, 1, &format!("m{i}"))).collect();
    for _ in &ids {
        adapter.recv();
    }
    let last = ids[ids.len() - 1];
    assert!(wait_until(deadline(SOON), || stored_offset(dir.path()) == Some(last + 1)));
    // On a loaded machine the reader may not have run yet: let it read at least once.
    assert!(wait_until(deadline(SOON), || reads.load(Ordering::Relaxed) > 0), "the reader never ran");
    done.store(true, Ordering::Relaxed);
    let bad = reader.join().unwrap();
    assert!(bad.is_empty(), "partial contents seen: {bad:?}");
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "temporary files left: {names:?}");
}

// ---------------------------------------------------------------------------------------
// Sending

#[test]
fn replies_in_the_same_chat_and_thread() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let adapter = start(settings(&fake), dir.path()).unwrap();
    fake.push_text(-100, 5, "question");
    let question = adapter.recv();
    let reply = Outbound { thread_id: Some("3".into()), ..Outbound::reply_to(&question, "answer".into()) };
    adapter.outlet.send(&reply).unwrap();
    assert_eq!(fake.sent(), [("-100".to_string(), "answer".to_string())]);
    let params = &fake.sent_params()[0];
    assert_eq!(params["message_thread_id"], json!(3));
    let message_id: i64 = question.message_id.unwrap().parse().unwrap();
    assert_eq!(params["reply_parameters"], json!({ "message_id": message_id, "allow_sending_without_reply": true }));
}

#[test]
fn a_long_reply_arrives_as_two_messages() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let adapter = start(settings(&fake), dir.path()).unwrap();
    let limit = switchboard::platforms::telegram::MESSAGE_LIMIT;
    let outbox = Outbox::open(dir.path(), Default::default(), &[(NAME.to_string(), limit)]).unwrap();
    outbox.publish(NAME, 0, adapter.outlet.clone(), limit);
    outbox.start_workers().unwrap();
    let text = "word ".repeat(1000); // 5000 characters
    let reply = Outbound { chat_id: "42".into(), thread_id: None, reply_to: None, edit_of: None, text: text.clone() };
    outbox.enqueue(NAME, reply).unwrap();
    let sent = fake.wait_sent(2, deadline(SOON));
    outbox.quit();
    assert!(outbox.join(deadline(SOON)));
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|(chat, t)| chat == "42" && t.encode_utf16().count() <= 4096));
    // Cut at a space, which is dropped, and marked; nothing else is lost.
    let first = sent[0].1.strip_suffix(" (1/2)").expect("marked 1/2");
    let second = sent[1].1.strip_suffix(" (2/2)").expect("marked 2/2");
    assert!(format!("{first} {second}") == text.trim_end(), "chunks do not add up to the reply");
}

#[test]
fn send_failures_are_classified() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let adapter = start(settings(&fake), dir.path()).unwrap();
    let msg = Outbound { chat_id: "42".into(), thread_id: None, reply_to: None, edit_of: None, text: "hi".into() };
    let send = |status: u16, body| {
        fake.fail_next("sendMessage", status, body, 1);
        adapter.outlet.send(&msg).unwrap_err()
    };
    assert_eq!(send(429, rate_limited(3)), SendError::RetryAfter(Duration::from_secs(3)));
    assert!(matches!(send(502, api_error(502, "Bad Gateway")), SendError::Transient(_)));
    assert!(matches!(send(400, api_error(400, "Bad Request: chat not found")), SendError::Rejected(_)));
    assert!(matches!(send(403, api_error(403, "Forbidden: bot was blocked by the user")), SendError::Rejected(_)));
    let too_long = Outbound { text: "x".repeat(4097), ..msg.clone() };
    assert!(matches!(adapter.outlet.send(&too_long), Err(SendError::Rejected(m)) if m.contains("too long")));
    assert_eq!(switchboard::platforms::telegram::MESSAGE_LIMIT.max, 4096);
    assert!(fake.sent().is_empty());
    adapter.outlet.send(&msg).unwrap();
    assert_eq!(fake.sent().len(), 1);

    // A garbled answer: the request went out, so whether it was sent is unknown.
    fake.set_down(true);
    assert!(matches!(adapter.outlet.send(&msg), Err(SendError::Unknown(m)) if !m.contains(TOKEN)));
    fake.set_down(false);
    // No answer in time: unknown too (and indeed it arrived).
    let quick = TelegramSettings { request_timeout: Duration::from_millis(300), ..settings(&fake) };
    let impatient = start(quick, dir.path()).unwrap();
    fake.inject("sendMessage", Fault::Hang(Duration::from_secs(1)), 1);
    assert!(matches!(impatient.outlet.send(&msg), Err(SendError::Unknown(_))));
    assert_eq!(fake.wait_sent(2, deadline(SOON)).len(), 2);
}
