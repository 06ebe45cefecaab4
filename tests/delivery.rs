/*!
The durable outbox: order, outages, restarts, the retry policy per send outcome, other
processes queueing with `switchboard send`, splitting, and targets.

Most tests drive an [`Outbox`] with a scripted [`TestOutlet`] that records what it is
asked to send and fails on demand; the end-to-end ones send through the Telegram adapter
to the fake Bot API. Every wait is a condition with a deadline.
*/

mod support;

use std::collections::VecDeque;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::unbounded;
use parking_lot::{Condvar, Mutex};

use switchboard::adapter::Context;
use switchboard::config::{self, Config};
use switchboard::delivery::{
    self, DeliveryConfig, Outbox, Pacing, Rate, SendLimits, Target, parse_target, send_command,
};
use switchboard::message::Outbound;
use switchboard::platform::{Outlet, SendError};
use switchboard::text::{Limit, Unit};

use support::fake_telegram::{FakeTelegram, Fault, TOKEN, api_error, rate_limited};
use support::gateway::{Gateway, OPEN_ACCESS, binary, reconnect, telegram};
use support::{deadline, wait_until};

const P: &str = "p";
const SOON: Duration = Duration::from_secs(5);
const LIMIT: Limit = Limit { max: 4096, unit: Unit::Utf16 };

/// An outlet that records every call and answers from a script, then succeeds.
#[derive(Default)]
struct TestOutlet {
    state: Mutex<Calls>,
    changed: Condvar,
    idempotent: bool,
}

#[derive(Default)]
struct Calls {
    /// Texts sent, in order.
    sent: Vec<String>,
    /// (chat, message id, text) of each edit.
    edits: Vec<(String, String, String)>,
    /// When each send or edit was attempted.
    attempts: Vec<Instant>,
    /// The chat of each attempt.
    attempt_chats: Vec<String>,
    /// (chat, text) of each send, in order.
    sent_to: Vec<(String, String)>,
    /// Answers to the next attempts (`None`: success); then `always`, or success.
    script: VecDeque<Option<SendError>>,
    always: Option<SendError>,
}

impl TestOutlet {
    fn new() -> Arc<TestOutlet> {
        Arc::new(TestOutlet::default())
    }

    fn idempotent() -> Arc<TestOutlet> {
        Arc::new(TestOutlet { idempotent: true, ..TestOutlet::default() })
    }

    /// Answer the next attempts so (`None`: success).
    fn script(&self, answers: impl IntoIterator<Item = Option<SendError>>) {
        self.state.lock().script.extend(answers);
    }

    fn fail(&self, errors: impl IntoIterator<Item = SendError>) {
        self.script(errors.into_iter().map(Some));
    }

    fn sent(&self) -> Vec<String> {
        self.state.lock().sent.clone()
    }

    fn attempts(&self) -> Vec<Instant> {
        self.state.lock().attempts.clone()
    }

    /// Wait until `cond` holds on the calls or `deadline` passes; returns whether it held.
    fn wait(&self, deadline: Instant, cond: impl Fn(&Calls) -> bool) -> bool {
        let mut state = self.state.lock();
        while !cond(&state) {
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                return cond(&state);
            }
        }
        true
    }

    fn wait_sent(&self, n: usize) -> Vec<String> {
        self.wait(deadline(SOON), |c| c.sent.len() >= n);
        self.sent()
    }

    fn wait_attempts(&self, n: usize) -> Vec<Instant> {
        self.wait(deadline(SOON), |c| c.attempts.len() >= n);
        self.attempts()
    }

    /// Record an attempt to `chat` and take its scripted answer.
    fn answer(&self, chat: &str, record: impl FnOnce(&mut Calls)) -> Result<(), SendError> {
        let mut state = self.state.lock();
        state.attempts.push(Instant::now());
        state.attempt_chats.push(chat.to_string());
        let answer = state.script.pop_front().unwrap_or_else(|| state.always.clone());
        if answer.is_none() {
            record(&mut state);
        }
        drop(state);
        self.changed.notify_all();
        answer.map_or(Ok(()), Err)
    }
}

impl Outlet for TestOutlet {
    fn send(&self, msg: &Outbound) -> Result<Option<String>, SendError> {
        self.answer(&msg.chat_id, |c| {
            c.sent.push(msg.text.clone());
            c.sent_to.push((msg.chat_id.clone(), msg.text.clone()));
        })?;
        Ok(Some(format!("m{}", self.sent().len())))
    }

    fn can_edit(&self) -> bool {
        true
    }

    fn edit(&self, chat_id: &str, message_id: &str, text: &str) -> Result<(), SendError> {
        self.answer(chat_id, |c| c.edits.push((chat_id.into(), message_id.into(), text.into())))
    }

    fn idempotent(&self) -> bool {
        self.idempotent
    }
}

fn settings(max_attempts: u32) -> DeliveryConfig {
    DeliveryConfig {
        max_delivery_attempts: max_attempts,
        retry_wait: Duration::from_millis(20),
        retry_cap: Duration::from_millis(80),
        ..DeliveryConfig::default()
    }
}

/// An outbox for platform `P` under `dir`, workers running.
fn open(dir: &Path, config: DeliveryConfig) -> Outbox {
    let outbox = Outbox::open(dir, config, &[(P.to_string(), LIMIT)]).expect("open the outbox");
    outbox.start_workers().expect("start the workers");
    outbox
}

fn msg(text: &str) -> Outbound {
    Outbound { chat_id: "42".into(), thread_id: None, reply_to: None, edit_of: None, text: text.into() }
}

/// Stop `outbox`'s workers and wait until they ended.
fn stop(outbox: &Outbox) {
    outbox.quit();
    assert!(outbox.join(deadline(SOON)), "workers did not end");
}

/// The files in `dir` (not recursive), sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn queue_dir(state: &Path) -> PathBuf {
    state.join("outbox").join(P)
}

/// A delivery queued on disk: its stem, record, and whether it is claimed.
type OnDisk = (String, serde_json::Value, bool);

/// The deliveries queued on disk for `P` under `state`, oldest first: the journal
/// (`outbox/P/journal`, one JSON object per line: `put`, `claim`, `unclaim`, `gone`)
/// replayed as the gateway does, plus the spool files (`STEM.json`) not yet taken in.
fn queued_on_disk(state: &Path) -> Vec<OnDisk> {
    let queue = queue_dir(state);
    let mut live = std::collections::BTreeMap::new();
    let journal = fs::read(queue.join("journal")).unwrap_or_default();
    for line in journal.split(|&b| b == b'\n').filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok()) {
        let (op, body) = line.as_object().and_then(|o| o.iter().next()).expect("one operation per line");
        let id = body["id"].as_str().unwrap_or_default().to_string();
        match (op.as_str(), live.get_mut(&id)) {
            ("put", _) => drop(live.insert(id, (body["record"].clone(), body["claimed"] == true))),
            ("claim", Some(e)) => e.1 = true,
            ("unclaim", Some(e)) => e.1 = false,
            _ => drop(live.remove(&id)),
        }
    }
    for name in files(&queue).into_iter().filter(|n| n.ends_with(".json")) {
        let record = serde_json::from_slice(&fs::read(queue.join(&name)).unwrap()).unwrap_or_default();
        live.insert(name.trim_end_matches(".json").to_string(), (record, false));
    }
    live.into_iter().map(|(stem, (r, claimed))| (stem, r, claimed)).collect()
}

#[test]
fn kept_while_the_platform_is_down_then_sent_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), settings(10));
    for text in ["one", "two", "three", "four"] {
        outbox.enqueue(P, msg(text)).unwrap();
    }
    // Durable before enqueue returned, and waiting: there is no outlet yet.
    assert_eq!(queued_on_disk(dir.path()).len(), 4);
    assert_eq!(outbox.pending(P), 4);
    assert!(outbox.outlet(P).is_none());
    let outlet = TestOutlet::new();
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(4), ["one", "two", "three", "four"]);
    assert_eq!(outbox.drain(deadline(SOON)), 0);
    assert!(queued_on_disk(dir.path()).is_empty(), "confirmed sends are removed");
    // A withdrawn outlet stops sending; only its own generation can withdraw it.
    outbox.withdraw(P, 0);
    assert!(outbox.outlet(P).is_some());
    outbox.withdraw(P, 1);
    outbox.enqueue(P, msg("five")).unwrap();
    assert_eq!(outbox.drain(deadline(SOON)), 1, "a platform without outlet is not waited for");
    outbox.publish(P, 2, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(5)[4], "five");
    stop(&outbox);
}

#[test]
fn a_restart_sends_what_the_last_run_left_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), settings(10));
    for text in ["a", "b", "c"] {
        first.enqueue(P, msg(text)).unwrap();
    }
    let before = TestOutlet::new();
    // "a" goes out; then the platform asks for a long pause, and the gateway stops.
    before.script([None, Some(SendError::RetryAfter(Duration::from_secs(60)))]);
    first.publish(P, 1, before.clone(), LIMIT);
    before.wait_attempts(2);
    stop(&first);

    let second = open(dir.path(), settings(10));
    assert_eq!(second.pending(P), 2);
    let after = TestOutlet::new();
    second.publish(P, 1, after.clone(), LIMIT);
    assert_eq!(after.wait_sent(2), ["b", "c"]);
    assert_eq!(second.drain(deadline(SOON)), 0);
    stop(&second);
    assert_eq!(before.sent(), ["a"], "nothing is sent twice");
}

#[test]
fn transient_failures_back_off_then_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), settings(3));
    let outlet = TestOutlet::new();
    outlet.fail((0..3).map(|i| SendError::Transient(format!("blip {i}"))));
    outbox.enqueue(P, msg("doomed")).unwrap();
    outbox.enqueue(P, msg("next")).unwrap();
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(1), ["next"], "the queue goes on after a dead letter");
    let at = outlet.attempts();
    assert_eq!(at.len(), 4, "three attempts, then the next message");
    // retry_wait 20 ms, doubling.
    assert!(at[1] - at[0] >= Duration::from_millis(20) && at[2] - at[1] >= Duration::from_millis(40), "{at:?}");
    let dead = delivery::dead_letters(dir.path());
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!((dead[0].platform.as_str(), dead[0].chat_id.as_str(), dead[0].preview.as_str()), (P, "42", "doomed"));
    let error = dead[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("failed 3 times") && error.contains("blip 2"), "{error}");
    assert!(dead[0].file.starts_with(dir.path().join("deadletter").join(P)));
    assert_eq!(dead[0].attempts, 3);
    stop(&outbox);
}

#[test]
fn rejected_is_dead_lettered_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), settings(10));
    let outlet = TestOutlet::new();
    outlet.fail([SendError::Rejected("chat not found".into())]);
    outbox.enqueue(P, msg("nobody there")).unwrap();
    outbox.enqueue(P, msg("fine")).unwrap();
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(1), ["fine"]);
    assert_eq!(outlet.attempts().len(), 2);
    let dead = delivery::dead_letters(dir.path());
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error.as_deref(), Some("chat not found"));
    assert!(dead[0].parked_at.is_some());
    stop(&outbox);
}

#[test]
fn an_unknown_outcome_is_set_aside_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), settings(10));
    let outlet = TestOutlet::new();
    outlet.fail([SendError::Unknown("timed out waiting for the answer".into())]);
    outbox.enqueue(P, msg("maybe")).unwrap();
    outbox.enqueue(P, msg("surely")).unwrap();
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(1), ["surely"]);
    assert_eq!(outlet.attempts().len(), 2, "not re-sent");
    let unknown = delivery::unknown_outcomes(dir.path());
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].preview, "maybe");
    assert!(unknown[0].file.starts_with(queue_dir(dir.path()).join("unknown")));
    assert!(delivery::dead_letters(dir.path()).is_empty());
    stop(&outbox);
}

#[test]
fn an_unknown_outcome_is_sent_again_when_the_platform_deduplicates() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), settings(10));
    let outlet = TestOutlet::idempotent();
    outlet.fail([SendError::Unknown("no answer".into())]);
    outbox.enqueue(P, msg("again")).unwrap();
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(1), ["again"]);
    assert_eq!(outlet.attempts().len(), 2);
    assert!(delivery::unknown_outcomes(dir.path()).is_empty());
    stop(&outbox);
}

#[test]
fn a_send_interrupted_by_a_crash_is_unknown_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), settings(10), &[(P.to_string(), LIMIT)]).unwrap();
    outbox.enqueue(P, msg("in flight")).unwrap();
    outbox.enqueue(P, msg("queued")).unwrap();
    drop(outbox);
    // What a worker leaves when the process dies between sending and hearing back: a
    // claim line, and nothing after it.
    let stem = queued_on_disk(dir.path())[0].0.clone();
    let journal = queue_dir(dir.path()).join("journal");
    let claim = format!("{{\"claim\":{{\"id\":\"{stem}\"}}}}\n");
    fs::OpenOptions::new().append(true).open(&journal).unwrap().write_all(claim.as_bytes()).unwrap();
    assert!(queued_on_disk(dir.path())[0].2, "claimed");

    let restarted = open(dir.path(), settings(10));
    let outlet = TestOutlet::new();
    restarted.publish(P, 1, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(1), ["queued"]);
    let unknown = delivery::unknown_outcomes(dir.path());
    assert_eq!(unknown.len(), 1);
    assert!(unknown[0].error.as_deref().unwrap_or_default().contains("stopped while sending"));
    stop(&restarted);
}

#[test]
fn rate_limits_are_waited_out_without_counting() {
    let dir = tempfile::tempdir().unwrap();
    // One failed attempt would dead-letter it: rate limits must not count.
    let outbox = open(dir.path(), settings(1));
    let outlet = TestOutlet::new();
    outlet.fail([SendError::RetryAfter(Duration::from_millis(300)), SendError::RetryAfter(Duration::from_millis(100))]);
    outbox.enqueue(P, msg("patience")).unwrap();
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(1), ["patience"]);
    let at = outlet.attempts();
    assert_eq!(at.len(), 3);
    assert!(at[1] - at[0] >= Duration::from_millis(300), "{:?}", at[1] - at[0]);
    assert!(at[2] - at[1] >= Duration::from_millis(100), "{:?}", at[2] - at[1]);
    assert!(delivery::dead_letters(dir.path()).is_empty());
    stop(&outbox);
}

#[test]
fn quit_interrupts_a_long_wait_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let minute = Duration::from_secs(60);
    let outbox = open(dir.path(), DeliveryConfig { retry_wait: minute, retry_cap: minute, ..settings(10) });
    let outlet = TestOutlet::new();
    outlet.fail([SendError::Transient("down".into())]);
    outbox.enqueue(P, msg("later")).unwrap();
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    outlet.wait_attempts(1);
    // The worker now waits a minute; a drain with a short deadline gives up on it.
    assert_eq!(outbox.drain(deadline(Duration::from_millis(100))), 1);
    outbox.quit();
    // Within `SOON`, far less than the minute's wait: the quit cut it short.
    assert!(outbox.join(deadline(SOON)));
    // Still queued on disk for the next start, with the attempt counted.
    let queued = queued_on_disk(dir.path());
    assert_eq!(queued.len(), 1);
    let record = &queued[0].1;
    assert_eq!((record["attempts"].as_u64(), record["last_error"].as_str()), (Some(1), Some("down")));
    assert_eq!(delivery::queued(dir.path()), [(P.to_string(), 1)]);
}

#[test]
fn edits_are_truncated_never_split() {
    let dir = tempfile::tempdir().unwrap();
    let small = Limit { max: 20, unit: Unit::Chars };
    let outbox = Outbox::open(dir.path(), settings(10), &[(P.to_string(), small)]).unwrap();
    outbox.start_workers().unwrap();
    let outlet = TestOutlet::new();
    outbox.publish(P, 1, outlet.clone(), small);
    let edit = Outbound { edit_of: Some("m7".into()), ..msg("a streamed reply that grew too long") };
    outbox.enqueue(P, edit).unwrap();
    assert!(outlet.wait(deadline(SOON), |c| !c.edits.is_empty()));
    let edits = outlet.state.lock().edits.clone();
    assert_eq!(edits, [("42".to_string(), "m7".to_string(), "a streamed reply th…".to_string())]);
    assert!(outlet.sent().is_empty());
    stop(&outbox);
}

#[test]
fn corrupt_files_at_startup_are_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let queue = queue_dir(dir.path());
    fs::create_dir_all(&queue).unwrap();
    fs::write(queue.join("00000000000000000001-0000000001-000000.json"), b"{\"outbound\": {\"chat_").unwrap();
    fs::write(queue.join("00000000000000000002-0000000001-000000.json"), b"").unwrap();
    fs::write(queue.join(".00000000000000000003-0000000001-000000.json.tmp.1"), b"half").unwrap();
    let outbox = open(dir.path(), settings(10));
    outbox.enqueue(P, msg("still works")).unwrap();
    let outlet = TestOutlet::new();
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(1), ["still works"]);
    let left = files(&queue);
    assert_eq!(left.iter().filter(|f| f.ends_with(".corrupt")).count(), 2, "{left:?}");
    assert!(!left.iter().any(|f| f.ends_with(".json")), "{left:?}");
    stop(&outbox);
}

/// Issue 7, "outbox read errors": a queued file that cannot be read is not taken for
/// sent: it is moved aside, the worker goes on with the next, and nothing spins.
#[test]
fn outbox_read_errors_are_set_aside_never_counted_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), settings(10));
    // Tests run as root, which reads any file whatever its mode: a directory in place of
    // the file is a read error (EISDIR) that root gets too.
    let bad = "00000000000000000001-0000000001-000000";
    fs::create_dir_all(queue_dir(dir.path()).join(format!("{bad}.json"))).unwrap();
    outbox.enqueue(P, msg("after it")).unwrap();
    let outlet = TestOutlet::new();
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(1), ["after it"]);
    assert!(wait_until(deadline(SOON), || queue_dir(dir.path()).join(format!("{bad}.unreadable")).exists()));
    assert_eq!(outbox.drain(deadline(SOON)), 0);
    assert_eq!(outlet.attempts().len(), 1, "the unreadable file was never sent");
    stop(&outbox);
}

/// A limit that splits `long_text()` into several chunks (four).
const SMALL: Limit = Limit { max: 30, unit: Unit::Chars };

fn long_text() -> String {
    "first part of it. second part of it. third part of it.".to_string()
}

/// Issue 7, "chunk rollback": the chunks of a message are queued as one delivery, so a
/// worker never starts on a message whose later chunks may still be rolled back; and a
/// restart after a chunk went out resumes with the next chunk, never repeats the first.
#[test]
fn chunk_rollback_a_long_message_is_queued_whole_and_resumed_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let first = Outbox::open(dir.path(), settings(10), &[(P.to_string(), SMALL)]).unwrap();
    first.start_workers().unwrap();
    first.enqueue(P, msg(&long_text())).unwrap();
    assert_eq!(queued_on_disk(dir.path()).len(), 1, "one message, one delivery");
    assert_eq!(first.pending(P), 1);
    let before = TestOutlet::new();
    // The first chunk goes out, then the platform asks for a long pause; the gateway stops.
    before.script([None, Some(SendError::RetryAfter(Duration::from_secs(60)))]);
    first.publish(P, 1, before.clone(), SMALL);
    before.wait_attempts(2);
    stop(&first);
    assert_eq!(before.sent().len(), 1);

    let second = Outbox::open(dir.path(), settings(10), &[(P.to_string(), SMALL)]).unwrap();
    second.start_workers().unwrap();
    let after = TestOutlet::new();
    second.publish(P, 1, after.clone(), SMALL);
    assert_eq!(second.drain(deadline(SOON)), 0);
    stop(&second);
    let mut all = before.sent();
    all.extend(after.sent());
    // Every chunk once, in order: the first not repeated after the restart.
    let chunks = switchboard::text::split(&long_text(), SMALL);
    assert!(chunks.len() >= 3, "{chunks:?}");
    assert_eq!(all, chunks);
    assert!(queued_on_disk(dir.path()).is_empty());
}

/// An unknown outcome in the middle of a long message sets aside that chunk only.
#[test]
fn an_unknown_outcome_mid_message_sets_aside_that_chunk_and_sends_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), settings(10), &[(P.to_string(), SMALL)]).unwrap();
    outbox.start_workers().unwrap();
    let outlet = TestOutlet::new();
    outlet.script([None, Some(SendError::Unknown("no answer".into()))]);
    outbox.enqueue(P, msg(&long_text())).unwrap();
    outbox.publish(P, 1, outlet.clone(), SMALL);
    let sent = outlet.wait_sent(2);
    assert!(sent[0].starts_with("first") && sent[1].contains("third"), "{sent:?}");
    assert_eq!(outbox.drain(deadline(SOON)), 0);
    let unknown = delivery::unknown_outcomes(dir.path());
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(unknown[0].preview.contains("second"), "{unknown:?}");
    stop(&outbox);
}

/// Issue 7, "the console and a closed stdout": an outlet that closed keeps what is
/// queued for it, uncounted, instead of dead-lettering it, and is not sent to again.
#[test]
fn a_closed_outlet_keeps_its_queue_and_is_not_sent_to_again() {
    let dir = tempfile::tempdir().unwrap();
    // One counted attempt would dead-letter: closing must not count.
    let outbox = open(dir.path(), settings(1));
    let outlet = TestOutlet::new();
    outlet.fail([SendError::Closed("stdout closed".into())]);
    for text in ["one", "two", "three"] {
        outbox.enqueue(P, msg(text)).unwrap();
    }
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    outlet.wait_attempts(1);
    assert!(wait_until(deadline(SOON), || outbox.outlet(P).is_none()), "the closed outlet stays published");
    assert!(!wait_until(deadline(Duration::from_millis(300)), || outlet.attempts().len() > 1), "sent to again");
    assert_eq!(outbox.pending(P), 3);
    assert!(delivery::dead_letters(dir.path()).is_empty());
    stop(&outbox);
    assert_eq!(queued_on_disk(dir.path()).len(), 3, "still queued on disk");
}

// ---------------------------------------------------------------------------------------
// End to end, with the Telegram adapter and the fake Bot API

/// A config with a Telegram instance `tg` on `fake`, home channel 42, state in `dir`.
fn telegram_config(dir: &Path, fake: &FakeTelegram) -> Config {
    telegram_config_with(dir, fake, "retry_wait = \"20ms\"\n", "")
}

/// [`telegram_config`] with these `[delivery]` keys and more keys for `tg`.
fn telegram_config_with(dir: &Path, fake: &FakeTelegram, delivery: &str, tg: &str) -> Config {
    let toml = format!(
        "[gateway]\nstate_dir = \"{state}\"\nlock_dir = \"{locks}\"\n\
         [delivery]\n{delivery}\
         [platforms.tg]\nkind = \"telegram\"\ntoken = \"{TOKEN}\"\napi_base = \"{url}\"\nhome_channel = \"42\"\n\
         poll_timeout = \"1s\"\n{timeout}{tg}\
         [platforms.off]\nkind = \"telegram\"\nenabled = false\ntoken = \"1:x\"\n",
        state = dir.join("state").display(),
        locks = dir.join("locks").display(),
        url = fake.url(),
        timeout = if tg.contains("request_timeout") { "" } else { "request_timeout = \"1s\"\n" },
    );
    config::parse_str(&toml, Path::new("test.toml"), &|_| None).expect("a valid test config")
}

/// The gateway's side: an outbox with workers, and the `tg` adapter connected and its
/// outlet published (as the harness does).
fn gateway(config: &Config) -> Outbox {
    let state_dir = &config.gateway.state_dir;
    let outbox = Outbox::open(state_dir, config.delivery.clone(), &delivery::platform_limits(config)).unwrap();
    outbox.start_workers().unwrap();
    let instance = &config.platforms.iter().find(|p| p.name == "tg").unwrap();
    let (inbound, _) = unbounded();
    let (ctx, _stop) = Context::new("tg", state_dir.clone(), inbound);
    let outlet = instance.spec.build().connect(&ctx).expect("connect to the fake");
    outbox.publish("tg", 1, outlet, instance.spec.message_limit());
    outbox
}

#[test]
fn switchboard_send_from_another_process_is_picked_up() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = telegram_config(dir.path(), &fake);
    let outbox = gateway(&config);
    // What `switchboard send` does: write the file, with no outbox of its own.
    assert_eq!(send_command(&config, "tg", "to the home channel"), Ok("queued for tg:42".to_string()));
    assert_eq!(fake.wait_sent(1, deadline(SOON)), [("42".to_string(), "to the home channel".to_string())]);
    assert!(send_command(&config, "tg:-100:7", "in a topic").is_ok());
    fake.wait_sent(2, deadline(SOON));
    assert_eq!(fake.sent_params()[1]["message_thread_id"], 7);
    // Errors the CLI reports.
    assert!(send_command(&config, "origin", "x").unwrap_err().contains("origin"));
    assert!(send_command(&config, "nope:1", "x").unwrap_err().contains("known: off, tg"));
    assert!(send_command(&config, "off", "x").unwrap_err().contains("disabled"));
    assert!(send_command(&config, "tg", "  ").unwrap_err().contains("empty"));
    stop(&outbox);
}

#[test]
fn send_works_while_no_gateway_runs() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = telegram_config(dir.path(), &fake);
    assert!(send_command(&config, "tg:5", "queued offline").is_ok());
    assert_eq!(delivery::queued(&config.gateway.state_dir), [("tg".to_string(), 1)]);
    let outbox = gateway(&config);
    assert_eq!(fake.wait_sent(1, deadline(SOON)), [("5".to_string(), "queued offline".to_string())]);
    stop(&outbox);
}

/// Issue 8, section 3 ("group commit"): the gateway is the only writer of its journal,
/// and `switchboard send` processes, several at once, queue through the spool, while a
/// gateway runs and while none does. Each message arrives exactly once.
#[test]
fn group_commit_switchboard_send_from_several_processes_with_and_without_a_gateway() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let config = format!("{}{}{}", reconnect(200, 0, 5000), OPEN_ACCESS, telegram("tg", &fake.url(), TOKEN));
    let send_all = |prefix: &str| {
        let children: Vec<_> = (0..8)
            .map(|n| {
                Command::new(binary())
                    .args(["send", "--config", "gateway.toml", "tg:7", &format!("{prefix} {n}")])
                    .current_dir(dir.path())
                    .env("SWITCHBOARD_LOCK_DIR", &locks)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("start switchboard send")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "send failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    };
    let expect = |prefixes: &[&str]| {
        let mut all: Vec<String> = prefixes.iter().flat_map(|p| (0..8).map(move |n| format!("{p} {n}"))).collect();
        all.sort();
        all
    };
    let sorted = |sent: Vec<(String, String)>| {
        let mut texts: Vec<String> = sent.into_iter().map(|(_, t)| t).collect();
        texts.sort();
        texts
    };
    let mut g = Gateway::start_in(dir.path(), &locks, &config);
    g.wait_platform("tg", "connected", SOON);
    send_all("live");
    assert_eq!(sorted(fake.wait_sent(8, deadline(SOON))), expect(&["live"]));
    g.signal("TERM");
    assert_eq!(g.wait_exit(SOON), Some(0));
    send_all("offline");
    assert_eq!(delivery::queued(&g.state_dir), [("tg".to_string(), 8)]);
    let g = Gateway::start_in(dir.path(), &locks, &config);
    g.wait_platform("tg", "connected", SOON);
    assert_eq!(sorted(fake.wait_sent(16, deadline(SOON))), expect(&["live", "offline"]));
    // Nothing more comes: wait for another poll, then count again.
    let polls = fake.count("getUpdates");
    fake.wait_count("getUpdates", polls + 2, deadline(SOON));
    assert_eq!(fake.sent().len(), 16);
    assert_eq!(delivery::queued(&g.state_dir), [("tg".to_string(), 0)]);
}

#[test]
fn a_long_reply_with_code_reaches_telegram_in_marked_chunks_with_balanced_fences() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = telegram_config(dir.path(), &fake);
    let outbox = gateway(&config);
    let code: String = (0..400).map(|i| format!("let x{i} = {i}; // 🦀\n")).collect();
    let text = format!("Here you go:\n\n```rust\n{code}```\n\nThat is all.");
    assert!(text.encode_utf16().count() > 2 * 4096);
    let reply = Outbound { reply_to: Some("9".into()), ..msg(&text) };
    outbox.enqueue("tg", reply).unwrap();
    let n = switchboard::text::split(&text, LIMIT).len();
    assert!(n >= 3);
    let sent = fake.wait_sent(n, deadline(SOON));
    assert_eq!(sent.len(), n);
    for (i, (chat, chunk)) in sent.iter().enumerate() {
        assert_eq!(chat, "42");
        assert!(chunk.encode_utf16().count() <= 4096);
        assert!(chunk.ends_with(&format!(" ({}/{n})", i + 1)), "{chunk:.40}…");
        assert_eq!(chunk.matches("```").count() % 2, 0, "unbalanced fences in chunk {}", i + 1);
        if i > 0 && i < n - 1 {
            assert!(chunk.starts_with("```rust\n"), "chunk {} does not reopen the block", i + 1);
        }
    }
    let params = fake.sent_params();
    assert_eq!(params[0]["reply_parameters"]["message_id"], 9, "the first chunk answers the question");
    assert!(params[1].get("reply_parameters").is_none());
    assert_eq!(outbox.drain(deadline(SOON)), 0);
    stop(&outbox);
}

#[test]
fn a_telegram_send_that_times_out_is_not_sent_twice() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = telegram_config(dir.path(), &fake);
    let outbox = gateway(&config);
    // The answer comes after the request timeout (1 s): the message arrives, we cannot know.
    fake.inject("sendMessage", Fault::Hang(Duration::from_millis(1200)), 1);
    outbox.enqueue("tg", msg("once")).unwrap();
    outbox.enqueue("tg", msg("twice?")).unwrap();
    // The fake records "once" when it finally answers, after "twice?".
    let mut sent: Vec<String> = fake.wait_sent(2, deadline(SOON)).into_iter().map(|(_, t)| t).collect();
    sent.sort();
    assert_eq!(sent, ["once", "twice?"]);
    assert!(wait_until(deadline(SOON), || delivery::unknown_outcomes(&config.gateway.state_dir).len() == 1));
    assert!(!wait_until(deadline(Duration::from_millis(300)), || fake.sent().len() > 2), "re-sent");
    stop(&outbox);
}

// ---------------------------------------------------------------------------------------
// Per chat in order, across chats in parallel (issue 8, "Outbox")

fn to(chat: &str, text: &str) -> Outbound {
    Outbound { chat_id: chat.into(), ..msg(text) }
}

/// `DeliveryConfig` for `P` with `max_in_flight` and no send limits.
fn parallel(max_in_flight: usize) -> DeliveryConfig {
    let pacing = Pacing { max_in_flight, limits: SendLimits::NONE };
    DeliveryConfig { pacing: [(P.to_string(), pacing)].into(), ..settings(10) }
}

/// Issue 8: one chat the API answered with 500 held nine replies to other chats behind
/// its retries of 2, 4, 8, 16 s. Now the others are delivered while it is still retrying.
#[test]
fn one_chat_answered_500_does_not_delay_replies_to_other_chats() {
    let fake = FakeTelegram::start(TOKEN);
    fake.fail_chat("13", Some(Fault::Status(500, api_error(500, "Internal Server Error"))));
    let dir = tempfile::tempdir().unwrap();
    // Waits long enough that, sent one after another, the others could not make it in time.
    let config = telegram_config_with(dir.path(), &fake, "retry_wait = \"2s\"\n", "");
    let outbox = gateway(&config);
    outbox.enqueue("tg", to("13", "to the broken chat")).unwrap();
    assert!(fake.wait_count("sendMessage", 1, deadline(SOON)) >= 1);
    for chat in 1..=9 {
        outbox.enqueue("tg", to(&chat.to_string(), &format!("reply {chat}"))).unwrap();
    }
    let sent = fake.wait_sent(9, deadline(SOON));
    let mut chats: Vec<String> = sent.iter().map(|(c, _)| c.clone()).collect();
    chats.sort_by_key(|c| c.parse::<u32>().unwrap_or(0));
    assert_eq!(chats, (1..=9).map(|c| c.to_string()).collect::<Vec<_>>(), "{sent:?}");
    // The broken chat is still queued and retrying, not given up.
    assert!(wait_until(deadline(SOON), || outbox.pending("tg") == 1), "{}", outbox.pending("tg"));
    assert!(delivery::dead_letters(&config.gateway.state_dir).is_empty());
    stop(&outbox);
}

/// A 429 on one chat holds that chat (and its later replies, in order), not the others.
#[test]
fn a_429_on_one_chat_holds_only_that_chat() {
    let fake = FakeTelegram::start(TOKEN);
    fake.fail_chat("7", Some(Fault::Status(429, rate_limited(60))));
    let dir = tempfile::tempdir().unwrap();
    let config = telegram_config(dir.path(), &fake);
    let outbox = gateway(&config);
    outbox.enqueue("tg", to("7", "first to 7")).unwrap();
    outbox.enqueue("tg", to("7", "second to 7")).unwrap();
    for chat in ["1", "2", "3"] {
        outbox.enqueue("tg", to(chat, "hello")).unwrap();
    }
    let sent = fake.wait_sent(3, deadline(SOON));
    assert!(sent.iter().all(|(chat, _)| chat != "7"), "{sent:?}");
    assert_eq!(sent.len(), 3, "{sent:?}");
    // Chat 7 was asked once, waits its minute, and its second reply waits behind the first.
    let asked_7 = |fake: &FakeTelegram| {
        let chat = |c: &&support::fake_telegram::Call| c.params["chat_id"].to_string().trim_matches('"') == "7";
        fake.calls("sendMessage").iter().filter(chat).count()
    };
    assert_eq!(asked_7(&fake), 1);
    assert!(!wait_until(deadline(Duration::from_millis(300)), || asked_7(&fake) > 1), "asked again");
    assert!(wait_until(deadline(SOON), || outbox.pending("tg") == 2), "{}", outbox.pending("tg"));
    stop(&outbox);
}

/// A 429 the platform says is global holds every chat of the instance until it is over.
/// (Telegram's 429 names no scope, so only an outlet that knows can say so.)
#[test]
fn a_429_the_platform_marks_global_holds_every_chat() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path(), parallel(1));
    let outlet = TestOutlet::new();
    outlet.fail([SendError::RetryAfterAll(Duration::from_millis(400))]);
    for chat in ["a", "b", "c"] {
        outbox.enqueue(P, to(chat, chat)).unwrap();
    }
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    outlet.wait_attempts(1);
    assert!(!wait_until(deadline(Duration::from_millis(200)), || outlet.attempts().len() > 1), "another chat went");
    assert_eq!(outlet.wait_sent(3).len(), 3);
    let at = outlet.attempts();
    assert!(at[1] - at[0] >= Duration::from_millis(400), "{:?}", at[1] - at[0]);
    assert_eq!(outlet.state.lock().attempt_chats, ["a", "a", "b", "c"]);

    // The same 429 for one chat only: the others go at once.
    outbox.withdraw(P, 1);
    let outlet = TestOutlet::new();
    outlet.fail([SendError::RetryAfter(Duration::from_secs(60))]);
    for chat in ["a", "b", "c"] {
        outbox.enqueue(P, to(chat, chat)).unwrap();
    }
    outbox.publish(P, 2, outlet.clone(), LIMIT);
    assert_eq!(outlet.wait_sent(2), ["b", "c"]);
    assert!(wait_until(deadline(SOON), || outbox.pending(P) == 1), "{}", outbox.pending(P));
    stop(&outbox);
}

/// Order is kept within each chat (every chunk of a long message, then the next reply)
/// while chats are sent in parallel.
#[test]
fn order_within_a_chat_is_kept_under_parallel_sends() {
    let dir = tempfile::tempdir().unwrap();
    let config = DeliveryConfig {
        pacing: [(P.to_string(), Pacing { max_in_flight: 8, limits: SendLimits::NONE })].into(),
        ..settings(10)
    };
    let outbox = Outbox::open(dir.path(), config, &[(P.to_string(), SMALL)]).unwrap();
    outbox.start_workers().unwrap();
    let chats: Vec<String> = (0..12).map(|c| format!("c{c}")).collect();
    for i in 0..10 {
        for chat in &chats {
            outbox.enqueue(P, to(chat, &format!("{chat} reply {i}"))).unwrap();
        }
        // A long one in the middle of one chat: its three chunks come before reply 6.
        if i == 5 {
            outbox.enqueue(P, to("c0", &long_text())).unwrap();
        }
    }
    let outlet = TestOutlet::new();
    outbox.publish(P, 1, outlet.clone(), SMALL);
    let n = chats.len() * 10 + switchboard::text::split(&long_text(), SMALL).len();
    assert_eq!(outlet.wait_sent(n).len(), n);
    let sent_to = outlet.state.lock().sent_to.clone();
    for chat in &chats {
        let texts: Vec<&str> = sent_to.iter().filter(|(c, _)| c == chat).map(|(_, t)| t.as_str()).collect();
        let mut want: Vec<String> = (0..10).map(|i| format!("{chat} reply {i}")).collect();
        if chat == "c0" {
            let chunks = switchboard::text::split(&long_text(), SMALL);
            want.splice(6..6, chunks);
        }
        assert_eq!(texts, want, "chat {chat}");
    }
    assert_eq!(outbox.drain(deadline(SOON)), 0);
    stop(&outbox);
}

/// At most `max_in_flight` sends per instance are in flight at once (default 8), each to
/// a different chat; the fake counts them.
#[test]
fn max_in_flight_is_respected() {
    // Held sends must not time out meanwhile.
    for (key, max) in [("request_timeout = \"30s\"\n", 8), ("request_timeout = \"30s\"\nmax_in_flight = 3\n", 3)] {
        let fake = FakeTelegram::start(TOKEN);
        let dir = tempfile::tempdir().unwrap();
        let config = telegram_config_with(dir.path(), &fake, "", key);
        let outbox = gateway(&config);
        fake.hold_sends(true);
        for chat in 1..=20 {
            outbox.enqueue("tg", to(&chat.to_string(), "hi")).unwrap();
        }
        assert_eq!(fake.wait_sends_in_flight(max, deadline(SOON)), max, "{key}");
        assert!(!wait_until(deadline(Duration::from_millis(300)), || fake.sends_in_flight().0 > max), "{key}");
        fake.hold_sends(false);
        assert_eq!(fake.wait_sent(20, deadline(SOON)).len(), 20, "{key}");
        assert_eq!(fake.sends_in_flight().1, max, "{key}");
        stop(&outbox);
    }
}

/// Streamed previews are sent outside the queue (`Outbox::outlet`), but count against the
/// same limits: a preview edit the chat's window has no room for is refused at once, and
/// a queued reply to that chat waits its turn while other chats go.
#[test]
fn previews_sent_outside_the_queue_count_against_the_send_limits() {
    let dir = tempfile::tempdir().unwrap();
    let limits = SendLimits { chat: Some(Rate::new(1, Duration::from_secs(60))), ..SendLimits::NONE };
    let config =
        DeliveryConfig { pacing: [(P.to_string(), Pacing { max_in_flight: 8, limits })].into(), ..settings(10) };
    let outbox = open(dir.path(), config);
    let outlet = TestOutlet::new();
    outbox.publish(P, 1, outlet.clone(), LIMIT);
    let preview = outbox.outlet(P).unwrap();
    assert!(preview.send(&to("a", "The ")).is_ok());
    assert!(matches!(preview.edit("a", "m1", "The answer"), Err(SendError::RetryAfter(_))));
    outbox.enqueue(P, to("a", "The answer is 42.")).unwrap();
    outbox.enqueue(P, to("b", "to b")).unwrap();
    assert_eq!(outlet.wait_sent(2), ["The ", "to b"]);
    assert!(!wait_until(deadline(Duration::from_millis(300)), || outlet.sent().len() > 2), "chat a went again");
    assert_eq!(outbox.pending(P), 1);
    stop(&outbox);
}

/// `send_limits = false` turns the limiter off; the declared limits are on by default;
/// rates can be overridden per instance; bad values name the key.
#[test]
fn send_limits_are_settings_per_instance() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let pacing = |tg: &str| telegram_config_with(dir.path(), &fake, "", tg).delivery.pacing["tg"];
    let telegram = pacing("").limits;
    assert_eq!(telegram.total, Some(Rate::new(30, Duration::from_secs(1))));
    assert_eq!(telegram.chat, Some(Rate::new(1, Duration::from_secs(1))));
    assert_eq!(telegram.group, Some(Rate::new(20, Duration::from_secs(60))));
    assert_eq!(pacing("").max_in_flight, 8);
    assert!(pacing("send_limits = false\n").limits.is_none());
    let raised = pacing("send_rate = \"100/1s\"\nchat_send_rate = \"off\"\ngroup_send_rate = \"30/m\"\n").limits;
    assert_eq!(raised.total, Some(Rate::new(100, Duration::from_secs(1))));
    assert_eq!(raised.chat, None);
    assert_eq!(raised.group, Some(Rate::new(30, Duration::from_secs(60))));
    for (bad, key) in [
        ("send_rate = \"fast\"\n", "send_rate"),
        ("chat_send_rate = \"0/1s\"\n", "chat_send_rate"),
        ("max_in_flight = 0\n", "max_in_flight"),
        ("max_in_flight = 1000\n", "max_in_flight"),
    ] {
        let toml =
            format!("[platforms.tg]\nkind = \"telegram\"\ntoken = \"{TOKEN}\"\napi_base = \"{}\"\n{bad}", fake.url());
        let err = config::parse_str(&toml, Path::new("t.toml"), &|_| None).unwrap_err().to_string();
        assert!(err.contains(key), "{bad}: {err}");
    }
}

// ---------------------------------------------------------------------------------------
// Targets

#[test]
fn target_parsing() {
    let chat = |p: &str, c: &str, t: Option<&str>| Target::Chat {
        platform: p.into(),
        chat_id: c.into(),
        thread_id: t.map(Into::into),
    };
    let ok = [
        ("origin", Target::Origin),
        ("telegram", Target::Home { platform: "telegram".into() }),
        (" Telegram ", Target::Home { platform: "telegram".into() }),
        ("telegram:12345", chat("telegram", "12345", None)),
        ("telegram:-1001234:42", chat("telegram", "-1001234", Some("42"))),
        ("tg-2:@channel", chat("tg-2", "@channel", None)),
        // Ids keep their case; the instance name does not (hermes #11768).
        ("Slack:C123ABC:Thread123", chat("slack", "C123ABC", Some("Thread123"))),
        // Matrix ids contain `:`: quoted.
        (r#"matrix:"!room:example.org""#, chat("matrix", "!room:example.org", None)),
        (
            r#"matrix:"!room:example.org":"$ev:example.org""#,
            chat("matrix", "!room:example.org", Some("$ev:example.org")),
        ),
        (r#"matrix:"!room:example.org":t1"#, chat("matrix", "!room:example.org", Some("t1"))),
        (r#"matrix:"!abc""#, chat("matrix", "!abc", None)),
        // Only the bare word is the origin.
        ("origin:5", chat("origin", "5", None)),
    ];
    for (text, want) in ok {
        assert_eq!(parse_target(text), Ok(want.clone()), "{text}");
        assert_eq!(parse_target(&want.to_string()), Ok(want), "round trip of {text}");
    }
    let bad = [
        ("", "not a platform instance name"),
        (":5", "not a platform instance name"),
        ("tele gram:5", "not a platform instance name"),
        ("telegram:", "empty"),
        ("telegram::5", "empty"),
        ("telegram:5:", "empty"),
        // Unquoted, a Matrix room id would be misread: refused with the fix.
        ("matrix:!room:example.org:t", r#"must be quoted: matrix:"!room:example.org""#),
        (r#"matrix:"!room:example.org"#, "no closing"),
        (r#"matrix:"!room"x"#, "expected `:`"),
        (r#"matrix:"""#, "empty"),
        (r#"matrix:ab"c"#, "may only open or close"),
    ];
    for (text, want) in bad {
        let err = parse_target(text).unwrap_err();
        assert!(err.contains(want), "{text}: {err}");
    }
}
