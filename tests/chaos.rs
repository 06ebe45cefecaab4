/*!
The fault-injection suite (`make chaos`): the real binary under scripted faults while
messages flow, then an account of every message.

Why: the unit and end-to-end tests show each failure path once, in isolation. Here the
paths meet: a 429 during a backlog, a `kill -9` while the API refuses connections, a reset
connection mid-`sendMessage`. The README promises that nothing accepted is lost and
nothing is sent twice behind the user's back; this suite checks that promise message by
message under load.

Scenarios, one per test (all `#[ignore]`d, so `make test` skips them; `make chaos` runs
them one at a time, in about two minutes):

- [`api_faults_and_kill_9_lose_nothing`]: ~15 messages/s from four chats through the
  fake Bot API plus a `switchboard send` every half second from a "cron" thread, for 60 s,
  while a schedule injects 502s, 429s with `retry_after`, malformed JSON, hangs, garbage
  answers, connections closed or reset mid-request (a TCP proxy between gateway and fake),
  10 s of refused connections (the proxy drops its listener and binds the port again),
  and a `kill -9` every 15 s. Then every message is accounted for and a table printed.
- [`an_unresolvable_api_host_loses_nothing_queued`]: `api_base` at a name that does not
  resolve, messages queued meanwhile, then a restart with a resolvable address.
- [`a_full_disk_is_reported_and_survived`] and
  [`a_reply_that_could_not_be_stored_is_sent_when_space_returns`]: the state directory
  on a small tmpfs that is filled and freed (root only; skipped with a message otherwise).
- [`corrupt_state_files_at_startup_never_panic`]: each state file emptied, cut in half or
  overwritten with garbage before a start.

Accounting. The echo agent answers `echo: <text>` and every text is unique, so each
reply names its message. A message is *answered* when exactly one reply reached the fake;
a reply parked as unknown-outcome (`outbox/NAME/unknown/`) or dead-lettered
(`deadletter/NAME/`) is listed, not lost; anything else is *lost*. Two replies are a
*duplicate*, allowed only in the crash window the README describes: a `kill -9` after the
reply was queued (or sent) and before the inbound message was marked done. The harness
sees that window exactly: right after each kill, before the restart, it reads the inbox
journal and notes every pending message whose reply is already in the outbox or
at the fake. Any other duplicate is *unexplained*. Parking is no free pass either: one
worker sends a platform's queue one delivery at a time, so each injected fault can
leave at most a known number of deliveries parked ([`Step::may_park`]); more parked
than the faults explain is a failure (a regression that parked every reply would
otherwise pass). The suite fails on lost messages, unexplained duplicates, too many
parked deliveries, a panic in any log, or a corrupt JSON state file after a kill.

Every wait has a deadline; sleeps only pace the message rate and the fault schedule.
*/

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::chaos_proxy::{ChaosProxy, Cut, How};
use support::fake_telegram::{FakeTelegram, Fault, TOKEN, api_error, rate_limited};
use support::gateway::{Gateway, OPEN_ACCESS, binary, reconnect};
use support::{deadline, wait_until};

/// A wait for something that should happen within a few reconnects.
const SOON: Duration = Duration::from_secs(10);
/// The platform instance under test.
const TG: &str = "tg";

// ---------------------------------------------------------------------------------------
// Configuration

/// A gateway that heals within a fraction of a second: quick reconnects, one quick retry,
/// short polls and timeouts, quick delivery retries. `access` is an `[access]` table.
///
/// The fake Bot API enforces no send limits, and the load (15 messages a second from 4
/// chats) is far above Telegram's one a second per chat: paced, the replies would outlast
/// the settle time. Pacing has its own tests (tests/delivery.rs); here the limiter is off.
fn config(api_base: &str, access: &str, agent: &str) -> String {
    format!(
        "{reconnect}{access}{agent}[delivery]\nretry_wait = \"100ms\"\nretry_cap = \"1s\"\n\
         [platforms.{TG}]\nkind = \"telegram\"\ntoken = \"{TOKEN}\"\napi_base = \"{api_base}\"\n\
         poll_timeout = \"1s\"\nrequest_timeout = \"1s\"\nnetwork_retries = 1\nnetwork_retry_wait = \"50ms\"\n\
         send_limits = false\n",
        reconnect = reconnect(150, 0, 2000),
    )
}

/// Run `switchboard ARGS` in `dir` (which holds `gateway.toml` or the named config).
fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env("SWITCHBOARD_LOCK_DIR", dir.join("locks"))
        .output()
        .expect("run switchboard")
}

/// The texts of every delivery file in `dir` (`*.json`; `*.sending` claims of earlier versions).
fn delivery_texts(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = fs::read_dir(dir) else { return vec![] };
    let mut out = vec![];
    for path in entries.flatten().map(|e| e.path()) {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if !matches!(ext, "json" | "sending") {
            continue;
        }
        let record: Option<Value> = fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        if let Some(r) = record {
            let chat = r["outbound"]["chat_id"].as_str().unwrap_or_default().to_string();
            out.push((chat, r["outbound"]["text"].as_str().unwrap_or_default().to_string()));
        }
    }
    out
}

/// The texts of every delivery queued in `queue` (`outbox/NAME/`): the journal (one
/// JSON object per line: `put` with the record, `claim`, `unclaim`, `gone`) replayed as
/// the gateway does, torn lines skipped, plus the spool files not yet taken in.
fn queued_texts(queue: &Path) -> Vec<(String, String)> {
    let bytes = fs::read(queue.join("journal")).unwrap_or_default();
    let mut live: BTreeMap<String, (String, String)> = BTreeMap::new();
    for line in bytes.split(|&b| b == b'\n').filter_map(|l| serde_json::from_slice::<Value>(l).ok()) {
        if let Some(put) = line.get("put") {
            let r = &put["record"]["outbound"];
            let text =
                (r["chat_id"].as_str().unwrap_or_default().into(), r["text"].as_str().unwrap_or_default().into());
            live.insert(put["id"].as_str().unwrap_or_default().into(), text);
        } else if let Some(gone) = line.get("gone") {
            live.remove(gone["id"].as_str().unwrap_or_default());
        }
    }
    live.into_values().chain(delivery_texts(queue)).collect()
}

/// What the state directory holds for platform `TG`.
struct Parked {
    queued: Vec<(String, String)>,
    unknown: HashSet<(String, String)>,
    dead: HashSet<(String, String)>,
}

fn parked(state_dir: &Path) -> Parked {
    let outbox = state_dir.join("outbox").join(TG);
    Parked {
        queued: queued_texts(&outbox),
        unknown: delivery_texts(&outbox.join("unknown")).into_iter().collect(),
        dead: delivery_texts(&state_dir.join("deadletter").join(TG)).into_iter().collect(),
    }
}

/// The accepted messages of the inbox journal (`inbox/journal`, one
/// `{"accept": {"id", "msg"}}` or `{"answered": {"hash"}}` per line, the hash being
/// `switchboard::inbox::id_hash` of the id in hex) that are not done yet.
fn pending_inbound(state_dir: &Path) -> Vec<Value> {
    let bytes = fs::read(state_dir.join("inbox/journal")).unwrap_or_default();
    let mut pending: HashMap<String, Value> = HashMap::new();
    // A torn last line (the kill struck mid-write) is no record: skipped, as the gateway does.
    for record in bytes.split(|&b| b == b'\n').filter_map(|l| serde_json::from_slice::<Value>(l).ok()) {
        if let Some(accept) = record.get("accept") {
            let id = accept["id"].as_str().unwrap_or_default();
            pending.insert(format!("{:016x}", switchboard::inbox::id_hash(id)), accept["msg"].clone());
        } else if let Some(answered) = record.get("answered") {
            pending.remove(answered["hash"].as_str().unwrap_or_default());
        }
    }
    pending.into_values().collect()
}

/// How many unknown-outcome and dead-letter lines `switchboard status` prints.
fn listed_by_status(dir: &Path) -> (usize, usize) {
    let out = cli(dir, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    // `status` summarises: "dead letters (given up): 7 (tg 7), each kept for …".
    let count = |prefix: &str| {
        let line = text.lines().find_map(|l| l.strip_prefix(prefix));
        line.and_then(|rest| rest.split_whitespace().next()?.parse().ok()).unwrap_or(0)
    };
    (count("unknown outcomes (maybe delivered, not re-sent):"), count("dead letters (given up):"))
}

/// The warnings and errors of `log` (its last 40), to show with a failure.
fn notable(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("[WARN]") || l.contains("[ERROR]")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Lines of `log` that report a panic.
fn panics(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("panicked")).collect()
}

// ---------------------------------------------------------------------------------------
// Scenario: API faults and kill -9 under a steady load

/// Chats the load comes from (private chats: user id = chat id).
const CHATS: [i64; 4] = [101, 102, 103, 104];
/// The chat the "cron" thread sends to.
const CRON_CHAT: i64 = 900;
/// Inbound messages per second, over all chats.
const RATE: f64 = 15.0;
const CRON_EVERY: Duration = Duration::from_millis(500);
/// How long the load runs; the schedule ends a few seconds before.
const LOAD_FOR: Duration = Duration::from_secs(60);
/// How long, after the load, everything may take to be answered or parked.
const SETTLE: Duration = Duration::from_secs(30);

/// One step of the fault schedule.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The fake answers the next `n` calls of a method with a fault.
    Api(&'static str, ApiFault, usize),
    /// The proxy breaks the connection of the next `n` requests for a method.
    Cut(&'static str, Cut, How, usize),
    /// The proxy breaks every open connection.
    BreakAll(How),
    /// The proxy stops listening: connections are refused.
    Refuse,
    /// The proxy listens again on the same port.
    Listen,
    /// `kill -9` the gateway; the harness restarts it at once.
    Kill,
}

#[derive(Clone, Copy, Debug)]
enum ApiFault {
    BadGateway,
    /// 429 with `retry_after` 1 s.
    RateLimited,
    /// 200 with a body that is not JSON.
    Malformed,
    /// Bytes that are not HTTP.
    Garbage,
    /// Held longer than the gateway waits (1 s request timeout; 2 s for a long poll).
    Hang,
}

impl Step {
    /// At most how many deliveries this step can leave parked (unknown outcome or dead
    /// letter), given `broken`: the connections it broke. A platform's deliveries go out
    /// one at a time, so a broken connection or a killed process catches at most one
    /// send, and each scripted `sendMessage` fault at most one. 502s and 429s are retried
    /// (too few to use up `max_delivery_attempts`); faults on polls park nothing.
    fn may_park(self, broken: usize) -> usize {
        match self {
            Step::Api("sendMessage", ApiFault::BadGateway | ApiFault::RateLimited, _) => 0,
            Step::Api("sendMessage", _, n) | Step::Cut("sendMessage", _, _, n) => n,
            Step::Api(..) | Step::Cut(..) | Step::Listen => 0,
            Step::BreakAll(_) => broken,
            // The sends it breaks, and one that may run out of attempts while the API is gone.
            Step::Refuse => broken + 1,
            Step::Kill => 1,
        }
    }
}

impl ApiFault {
    fn fault(self) -> Fault {
        match self {
            ApiFault::BadGateway => Fault::Status(502, api_error(502, "Bad Gateway")),
            ApiFault::RateLimited => Fault::Status(429, rate_limited(1)),
            ApiFault::Malformed => Fault::Raw(200, "{\"ok\":true,\"result\":[{\"update_id\":".into()),
            ApiFault::Garbage => Fault::Garbage,
            ApiFault::Hang => Fault::Hang(Duration::from_millis(2500)),
        }
    }
}

/// Seconds into the load, and what happens then. A `kill -9` every 15 s; the refusal
/// spans the second kill, so a restarted gateway meets a dead API.
const SCHEDULE: &[(f64, Step)] = &[
    (2.0, Step::Api("sendMessage", ApiFault::BadGateway, 3)),
    (3.5, Step::Api("getUpdates", ApiFault::BadGateway, 2)),
    (5.0, Step::Api("sendMessage", ApiFault::RateLimited, 2)),
    (7.0, Step::Api("getUpdates", ApiFault::Garbage, 2)),
    (9.0, Step::BreakAll(How::Reset)),
    (11.0, Step::Cut("sendMessage", Cut::After, How::Close, 2)),
    (13.0, Step::Api("sendMessage", ApiFault::Malformed, 1)),
    (15.0, Step::Kill),
    (18.0, Step::Api("getUpdates", ApiFault::Hang, 1)),
    (19.0, Step::Api("sendMessage", ApiFault::Hang, 1)),
    (21.0, Step::Api("getUpdates", ApiFault::Malformed, 2)),
    (22.0, Step::Cut("getUpdates", Cut::After, How::Reset, 1)),
    (24.0, Step::Refuse),
    (30.0, Step::Kill),
    (34.0, Step::Listen),
    (36.0, Step::Cut("sendMessage", Cut::Before, How::Reset, 2)),
    (38.0, Step::Api("sendMessage", ApiFault::Garbage, 1)),
    (40.0, Step::Api("getUpdates", ApiFault::RateLimited, 1)),
    (41.0, Step::BreakAll(How::Close)),
    (43.0, Step::Api("sendMessage", ApiFault::RateLimited, 1)),
    (44.0, Step::Api("getMe", ApiFault::BadGateway, 2)),
    (44.5, Step::Api("deleteWebhook", ApiFault::Garbage, 1)),
    (45.0, Step::Kill),
    (48.0, Step::Cut("sendMessage", Cut::After, How::Reset, 2)),
    (50.0, Step::Api("getUpdates", ApiFault::BadGateway, 3)),
    (52.0, Step::Api("sendMessage", ApiFault::Malformed, 1)),
    (54.0, Step::BreakAll(How::Reset)),
];

/// What the load generators did, shared with their threads.
#[derive(Default)]
struct Load {
    /// `(chat, reply text)` expected for every pushed message.
    inbound: Mutex<Vec<(String, String)>>,
    /// `(chat, text)` of every `switchboard send` that said it queued the message.
    sends: Mutex<Vec<(String, String)>>,
    /// `switchboard send` calls that failed (there is no reason to, here).
    send_failures: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// The harness around one gateway process that gets killed and restarted.
struct Soak<'a> {
    fake: &'a FakeTelegram,
    proxy: &'a ChaosProxy,
    dir: PathBuf,
    config: String,
    gateway: Gateway,
    /// Logs of the processes killed so far.
    logs: String,
    restarts: usize,
    /// Reply texts that a restart may legitimately send a second time.
    crash_window: HashSet<(String, String)>,
    /// JSON state files that did not parse after a kill.
    corrupt: Vec<String>,
    faults: BTreeMap<String, usize>,
    /// How many parked deliveries the faults so far can explain.
    may_park: usize,
}

impl Soak<'_> {
    /// Inject one fault and count it.
    fn apply(&mut self, step: Step) {
        let struck = self.proxy.struck();
        let (what, times) = self.inject(step);
        self.may_park += step.may_park(self.proxy.struck() - struck);
        if let Some(what) = what {
            *self.faults.entry(what).or_default() += times;
        }
    }

    /// Inject one fault: what it was, and how many times (`None`: not a fault).
    fn inject(&mut self, step: Step) -> (Option<String>, usize) {
        let (what, times) = match step {
            Step::Api(method, fault, n) => {
                self.fake.inject(method, fault.fault(), n);
                (format!("{fault:?} on {method}"), n)
            }
            Step::Cut(method, cut, how, n) => {
                self.proxy.cut(method, cut, how, n);
                let when = if cut == Cut::Before { "before it reaches the API" } else { "after the API served it" };
                (format!("{how:?} {method} {when}"), n)
            }
            Step::BreakAll(how) => (format!("{how:?} every open connection"), self.proxy.break_all(how)),
            Step::Refuse => {
                self.proxy.refuse();
                ("refuse connections for 10 s".to_string(), 1)
            }
            Step::Listen => {
                self.proxy.listen();
                return (None, 0);
            }
            Step::Kill => {
                self.kill_and_restart();
                ("kill -9".to_string(), 1)
            }
        };
        (Some(what), times)
    }

    /// `kill -9`, note the crash window and check the files, start again.
    fn kill_and_restart(&mut self) {
        self.gateway.signal("KILL");
        // SIGKILL cannot be caught or delayed: the wait is short. (`wait_exit` gives the
        // exit code, which a killed process has none of.)
        self.gateway.child.wait().expect("wait for the killed gateway");
        self.logs.push_str(&self.gateway.log());
        self.note_crash_window();
        self.check_json_files();
        let locks = self.dir.join("locks");
        self.gateway = Gateway::start_in(&self.dir, &locks, &self.config);
        self.restarts += 1;
    }

    /// Messages still pending in the inbox whose reply is already queued or sent: the
    /// restart answers them again, as the README allows.
    fn note_crash_window(&mut self) {
        let state = &self.gateway.state_dir;
        let mut replies: HashSet<(String, String)> = self.fake.sent().into_iter().collect();
        let p = parked(state);
        replies.extend(p.queued.into_iter().chain(p.unknown).chain(p.dead));
        for msg in pending_inbound(state) {
            let chat = msg["source"]["chat_id"].as_str().unwrap_or_default().to_string();
            let reply = (chat, format!("echo: {}", msg["text"].as_str().unwrap_or_default()));
            if replies.contains(&reply) {
                self.crash_window.insert(reply);
            }
        }
    }

    /// The README: a `kill -9` corrupts no file.
    fn check_json_files(&mut self) {
        for file in ["status.json", "directory.json", "sessions/index.json"] {
            let path = self.gateway.state_dir.join(file);
            if let Ok(bytes) = fs::read(&path)
                && let Err(e) = serde_json::from_slice::<Value>(&bytes)
            {
                self.corrupt.push(format!("{file} after kill {}: {e}", self.restarts + 1));
            }
        }
    }
}

#[test]
#[ignore = "fault injection: run with `make chaos`"]
fn api_faults_and_kill_9_lose_nothing() {
    let started = Instant::now();
    let fake = FakeTelegram::start(TOKEN);
    let proxy = ChaosProxy::start(&fake.url());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(&proxy.url(), OPEN_ACCESS, "");
    let gateway = Gateway::start_in(dir.path(), &dir.path().join("locks"), &config);
    gateway.wait_platform(TG, "connected", SOON);
    // The cron jobs read their own copy: the harness rewrites gateway.toml at each restart.
    fs::copy(dir.path().join("gateway.toml"), dir.path().join("cron.toml")).expect("copy the config");
    let mut soak = Soak {
        fake: &fake,
        proxy: &proxy,
        dir: dir.path().to_path_buf(),
        config,
        gateway,
        logs: String::new(),
        restarts: 0,
        crash_window: HashSet::new(),
        corrupt: vec![],
        faults: BTreeMap::new(),
        may_park: 0,
    };
    let load = Load::default();
    thread::scope(|s| {
        s.spawn(|| chatter(&fake, &load));
        s.spawn(|| cron(dir.path(), &load));
        // Stops the load however the schedule ends: a panic here must fail the test,
        // not leave the scope waiting for the load threads for ever.
        let _stop = StopOnDrop(&load.stop);
        run_schedule(&mut soak);
        sleep_until(started + LOAD_FOR);
    });
    let settled = settle(&soak, &load);
    soak.gateway.signal("TERM");
    let code = soak.gateway.wait_exit(SOON);
    soak.logs.push_str(&soak.gateway.log());
    let report = account(&soak, &load);
    report.print(&soak, started.elapsed());
    let p = parked(&soak.gateway.state_dir);
    assert_eq!(listed_by_status(dir.path()), (p.unknown.len(), p.dead.len()), "status must list every parked message");
    assert!(settled, "not everything was answered or parked within {SETTLE:?} after the load");
    report.assert_ok();
    let parked_total = p.unknown.len() + p.dead.len();
    assert!(
        parked_total <= soak.may_park,
        "{parked_total} deliveries parked, more than the injected faults explain ({})",
        soak.may_park
    );
    assert_eq!(code, Some(0), "the final SIGTERM did not stop the gateway cleanly");
    assert!(soak.corrupt.is_empty(), "state files corrupt after kill -9: {:?}", soak.corrupt);
    assert!(load.send_failures.lock().unwrap().is_empty(), "send failed: {:?}", load.send_failures);
    assert!(panics(&soak.logs).is_empty(), "the gateway panicked: {:?}", panics(&soak.logs));
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn sleep_until(t: Instant) {
    thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// Apply the schedule at its times.
fn run_schedule(soak: &mut Soak) {
    let start = Instant::now();
    for &(at, step) in SCHEDULE {
        sleep_until(start + Duration::from_secs_f64(at));
        soak.apply(step);
    }
}

/// Push messages at `RATE` per second, round-robin over `CHATS`, until stopped.
fn chatter(fake: &FakeTelegram, load: &Load) {
    let start = Instant::now();
    let mut n: u64 = 0;
    while !load.stop.load(Ordering::SeqCst) {
        let chat = CHATS[n as usize % CHATS.len()];
        let text = format!("c{chat}-m{n}");
        load.inbound.lock().unwrap().push((chat.to_string(), format!("echo: {text}")));
        fake.push_text(chat, chat, &text);
        n += 1;
        sleep_until(start + Duration::from_secs_f64(n as f64 / RATE));
    }
}

/// Run `switchboard send` every `CRON_EVERY` until stopped, as a cron job would.
fn cron(dir: &Path, load: &Load) {
    let target = format!("{TG}:{CRON_CHAT}");
    let mut n = 0;
    while !load.stop.load(Ordering::SeqCst) {
        let text = format!("cron-{n}");
        let out = cli(dir, &["--config", "cron.toml", "send", &target, &text]);
        if out.status.success() {
            load.sends.lock().unwrap().push((CRON_CHAT.to_string(), text));
        } else {
            load.send_failures.lock().unwrap().push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        n += 1;
        thread::sleep(CRON_EVERY);
    }
}

/// Wait until every message was answered or parked; whether that happened in time.
fn settle(soak: &Soak, load: &Load) -> bool {
    let expected: Vec<(String, String)> =
        load.inbound.lock().unwrap().iter().chain(load.sends.lock().unwrap().iter()).cloned().collect();
    let accounted = || {
        let sent: HashSet<(String, String)> = soak.fake.sent().into_iter().collect();
        let p = parked(&soak.gateway.state_dir);
        expected.iter().all(|m| sent.contains(m) || p.unknown.contains(m) || p.dead.contains(m))
    };
    let end = deadline(SETTLE);
    loop {
        if accounted() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// How the messages of one kind ended.
#[derive(Debug, Default)]
struct Tally {
    total: usize,
    once: usize,
    /// Delivered once, and also listed as unknown-outcome (its answer was lost).
    once_and_listed: usize,
    crash_duplicates: usize,
    unexplained: Vec<String>,
    unknown: usize,
    dead: usize,
    lost: Vec<String>,
}

fn tally(
    expected: &[(String, String)],
    sent: &HashMap<(String, String), usize>,
    p: &Parked,
    window: &HashSet<(String, String)>,
) -> Tally {
    let mut t = Tally { total: expected.len(), ..Tally::default() };
    for m in expected {
        match sent.get(m).copied().unwrap_or(0) {
            1 => {
                t.once += 1;
                t.once_and_listed += usize::from(p.unknown.contains(m));
            }
            2 if window.contains(m) => t.crash_duplicates += 1,
            0 if p.unknown.contains(m) => t.unknown += 1,
            0 if p.dead.contains(m) => t.dead += 1,
            0 => t.lost.push(m.1.clone()),
            n => t.unexplained.push(format!("{} ×{n}", m.1)),
        }
    }
    t
}

struct Report {
    inbound: Tally,
    sends: Tally,
    /// Messages at the fake that no one asked for.
    other: Vec<String>,
}

fn account(soak: &Soak, load: &Load) -> Report {
    let mut sent: HashMap<(String, String), usize> = HashMap::new();
    for m in soak.fake.sent() {
        *sent.entry(m).or_default() += 1;
    }
    let p = parked(&soak.gateway.state_dir);
    let inbound = load.inbound.lock().unwrap().clone();
    let sends = load.sends.lock().unwrap().clone();
    let known: HashSet<&(String, String)> = inbound.iter().chain(sends.iter()).collect();
    let other = sent.keys().filter(|m| !known.contains(m)).map(|m| m.1.clone()).collect();
    Report {
        inbound: tally(&inbound, &sent, &p, &soak.crash_window),
        sends: tally(&sends, &sent, &p, &soak.crash_window),
        other,
    }
}

impl Report {
    fn print(&self, soak: &Soak, took: Duration) {
        let (i, s) = (&self.inbound, &self.sends);
        let mut out = String::from("\n=== chaos: api_faults_and_kill_9_lose_nothing ===\n");
        out.push_str(&format!("{:<34}{:>10}{:>10}\n", "", "inbound", "send"));
        let rows: [(&str, usize, usize); 8] = [
            ("messages", i.total, s.total),
            ("delivered exactly once", i.once, s.once),
            ("  of which listed unknown-outcome", i.once_and_listed, s.once_and_listed),
            ("duplicate (crash window)", i.crash_duplicates, s.crash_duplicates),
            ("duplicate (unexplained)", i.unexplained.len(), s.unexplained.len()),
            ("unknown outcome (listed)", i.unknown, s.unknown),
            ("dead-lettered (listed)", i.dead, s.dead),
            ("lost", i.lost.len(), s.lost.len()),
        ];
        for (what, a, b) in rows {
            out.push_str(&format!("{what:<34}{a:>10}{b:>10}\n"));
        }
        out.push_str(&format!("unexpected messages at the fake: {}\n", self.other.len()));
        out.push_str("faults injected:\n");
        for (what, n) in &soak.faults {
            out.push_str(&format!("  {what:<46}{n:>6}\n"));
        }
        out.push_str(&format!("  {:<46}{:>6}\n", "(proxy connections broken, total)", soak.proxy.struck()));
        let p = parked(&soak.gateway.state_dir);
        let parked = p.unknown.len() + p.dead.len();
        out.push_str(&format!(
            "parked (unknown + dead): {parked}, at most {} explained by the faults\n",
            soak.may_park
        ));
        out.push_str(&format!("restarts after kill -9: {}\nrun time: {took:.1?}\n", soak.restarts));
        println!("{out}");
    }

    fn assert_ok(&self) {
        for (what, t) in [("inbound", &self.inbound), ("send", &self.sends)] {
            assert!(t.lost.is_empty(), "{what} messages lost: {:?}", t.lost);
            assert!(t.unexplained.is_empty(), "{what} messages duplicated outside a crash window: {:?}", t.unexplained);
        }
        assert!(self.other.is_empty(), "messages nobody asked for: {:?}", self.other);
    }
}

// ---------------------------------------------------------------------------------------
// Scenario: the API host does not resolve

#[test]
#[ignore = "fault injection: run with `make chaos`"]
fn an_unresolvable_api_host_loses_nothing_queued() {
    let fake = FakeTelegram::start(TOKEN);
    let port = fake.url().rsplit(':').next().expect("a port").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let locks = dir.path().join("locks");
    // `.invalid` never resolves (RFC 6761); the resolver says so at once.
    let unresolvable = config(&format!("http://nonexistent.invalid:{port}"), OPEN_ACCESS, "");
    let mut g = Gateway::start_in(dir.path(), &locks, &unresolvable);
    let status = g.wait_status("two failed connects", SOON, |s| s["platforms"][TG]["attempts"].as_u64() >= Some(2));
    let error = status["platforms"][TG]["error_message"].as_str().unwrap_or_default().to_lowercase();
    assert!(error.contains("dns") || error.contains("lookup"), "the error does not name DNS: {error}");
    // Queued meanwhile: sends on disk, messages held by the API.
    let mut expected = vec![];
    for n in 0..3 {
        let text = format!("dns-send-{n}");
        let out = cli(dir.path(), &["send", "tg:77", &text]);
        assert!(out.status.success(), "send: {}", String::from_utf8_lossy(&out.stderr));
        expected.push(("77".to_string(), text));
        fake.push_text(5, 5, &format!("dns-msg-{n}"));
        expected.push(("5".to_string(), format!("echo: dns-msg-{n}")));
    }
    let shown = String::from_utf8_lossy(&cli(dir.path(), &["status"]).stdout).into_owned();
    assert!(shown.contains("retrying") && shown.contains("3 message(s) queued for tg"), "{shown}");
    assert_eq!(fake.count("getMe"), 0, "a request reached the API through a name that does not resolve");
    g.signal("TERM");
    assert_eq!(g.wait_exit(SOON), Some(0), "{}", g.log());
    assert!(panics(&g.log()).is_empty(), "{}", g.log());

    let g = Gateway::start_in(dir.path(), &locks, &config(&fake.url(), OPEN_ACCESS, ""));
    g.wait_platform(TG, "connected", SOON);
    fake.wait_sent(expected.len(), deadline(SOON));
    // One more poll: nothing else is coming.
    let polls = fake.count("getUpdates");
    fake.wait_count("getUpdates", polls + 2, deadline(SOON));
    let mut sent = fake.sent();
    sent.sort();
    expected.sort();
    assert_eq!(sent, expected, "each queued message exactly once");
    println!(
        "\n=== chaos: unresolvable API host ===\n{} queued during the DNS failure, all delivered once\n",
        sent.len()
    );
}

// ---------------------------------------------------------------------------------------
// Scenarios: the state directory's disk is full

/// A small tmpfs mounted over a directory for the life of the value, to fill on purpose.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mount `size` (e.g. `"2m"`) over `path`; why not, when that is impossible (not
    /// root, a container without the capability).
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs { path: path.to_path_buf() })
    }

    /// Fill the disk and keep it full until the [`Filler`] is dropped.
    fn fill(&self) -> Filler {
        let path = self.path.join("filler");
        let mut file = fs::File::create(&path).expect("create the filler");
        take_free_space(&mut file);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // The gateway frees a page now and then (a temporary file it could not finish, a
        // sent delivery): take those too, as a disk filling up for good would.
        let keeper = thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                take_free_space(&mut file);
                thread::sleep(Duration::from_millis(2));
            }
        });
        Filler { path, stop, keeper: Some(keeper) }
    }
}

/// Append to `file` until the disk says no: big blocks first, then small ones.
fn take_free_space(file: &mut fs::File) {
    for block in [1 << 16, 512] {
        let bytes = vec![0u8; block];
        while file.write_all(&bytes).is_ok() {}
    }
}

/// A full disk; dropping it frees the space.
struct Filler {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    keeper: Option<thread::JoinHandle<()>>,
}

impl Drop for Filler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there must not keep the mount alive.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The tmpfs for a disk-full scenario, or `None` after saying why the scenario is skipped.
fn state_on_tmpfs(dir: &Path, scenario: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(&dir.join("state"), "4m") {
        Ok(t) => Some(t),
        Err(why) => {
            println!("\n=== chaos: {scenario}: SKIPPED: cannot mount a tmpfs (needs root): {why} ===\n");
            None
        }
    }
}

#[test]
#[ignore = "fault injection: run with `make chaos`"]
fn a_full_disk_is_reported_and_survived() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(tmpfs) = state_on_tmpfs(dir.path(), "full disk") else { return };
    let fake = FakeTelegram::start(TOKEN);
    let locks = dir.path().join("locks");
    let mut g = Gateway::start_in(dir.path(), &locks, &config(&fake.url(), OPEN_ACCESS, ""));
    g.wait_platform(TG, "connected", SOON);
    fake.push_text(5, 5, "before-full");
    fake.wait_sent(1, deadline(SOON));
    // Its delivery file gone, so that the disk fills from a quiet state.
    assert!(wait_until(deadline(SOON), || parked(&g.state_dir).queued.is_empty()));

    let filler = tmpfs.fill();
    // Texts are unique: a reply sent twice would show.
    let mut expected = vec![("5".to_string(), "echo: before-full".to_string())];
    for n in 0..5 {
        fake.push_text(5, 5, &format!("while-full-{n}"));
        expected.push(("5".to_string(), format!("echo: while-full-{n}")));
    }
    // A `send` that cannot store its message must say so. (It may find a page the
    // gateway just freed: then it is queued, and must arrive like any other.)
    let out = cli(dir.path(), &["send", "tg:77", "send-while-full"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        expected.push(("77".to_string(), "send-while-full".to_string()));
    } else {
        assert!(stderr.contains("No space left"), "an unclear error from send on a full disk: {stderr}");
    }
    let reported = wait_until(deadline(SOON), || g.log().contains("No space left on device"));
    assert!(reported, "the full disk is not in the log:\n{}", g.log());
    // The gateway keeps running while the disk stays full a little.
    thread::sleep(Duration::from_secs(2));
    assert!(g.child.try_wait().expect("try_wait").is_none(), "the gateway exited on a full disk:\n{}", g.log());

    drop(filler);
    fake.push_text(5, 5, "after-full");
    expected.push(("5".to_string(), "echo: after-full".to_string()));
    let mut g = assert_answered_without_restart(&fake, g, &config(&fake.url(), OPEN_ACCESS, ""), expected);
    g.signal("TERM");
    assert_eq!(g.wait_exit(SOON), Some(0));
    assert!(panics(&g.log()).is_empty(), "{}", g.log());
    println!("\n=== chaos: full disk ===\nreported in the log; every message answered once after space returned\n");
}

/// After space returned, every `expected` reply must arrive once without a restart.
/// When some are missing, the gateway is restarted before failing, so that the failure
/// tells "answered only after a restart" from "lost".
fn assert_answered_without_restart(
    fake: &FakeTelegram,
    mut g: Gateway,
    config: &str,
    mut expected: Vec<(String, String)>,
) -> Gateway {
    expected.sort();
    let sorted_sent = || {
        let mut sent = fake.sent();
        sent.sort();
        sent
    };
    fake.wait_sent(expected.len(), deadline(Duration::from_secs(15)));
    let sent = sorted_sent();
    if sent == expected {
        return g;
    }
    let log = notable(&g.log());
    g.signal("TERM");
    let code = g.wait_exit(SOON);
    let restarted = Gateway::start_in(&g.dir, &g.dir.join("locks"), config);
    restarted.wait_platform(TG, "connected", SOON);
    fake.wait_sent(expected.len(), deadline(SOON));
    panic!(
        "space returned, but 15 s later the fake had {sent:?}\nof {expected:?};\n\
         after a restart (the gateway exited with {code:?}) it had {:?}\n\
         warnings and errors before the restart:\n{log}",
        sorted_sent()
    );
}

/// `[agent]` running a script that marks `started` in `dir`, then answers only once the
/// file `go` exists there: the harness decides when the turn ends.
fn gated_agent(dir: &Path) -> String {
    let script = dir.join("agent.py");
    let (started, go) = (dir.join("started"), dir.join("go"));
    let code = format!(
        "import json, os, sys, time\nturn = json.load(sys.stdin)\nopen({started:?}, 'w').close()\n\
         end = time.time() + 20\nwhile not os.path.exists({go:?}) and time.time() < end:\n    time.sleep(0.02)\n\
         print('agent: ' + turn['text'])\n",
        started = started.display().to_string(),
        go = go.display().to_string(),
    );
    fs::write(&script, code).expect("write the agent");
    format!("[agent]\nbackend = \"command\"\ncommand = [\"python3\", \"{}\"]\ntimeout = \"30s\"\n", script.display())
}

#[test]
#[ignore = "fault injection: run with `make chaos`"]
fn a_reply_that_could_not_be_stored_is_sent_when_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(tmpfs) = state_on_tmpfs(dir.path(), "reply on a full disk") else { return };
    let fake = FakeTelegram::start(TOKEN);
    let locks = dir.path().join("locks");
    let config = config(&fake.url(), OPEN_ACCESS, &gated_agent(dir.path()));
    let g = Gateway::start_in(dir.path(), &locks, &config);
    g.wait_platform(TG, "connected", SOON);
    // The message is journaled and its turn running; then the disk fills and the answer
    // comes: it cannot be stored.
    fake.push_text(5, 5, "answer me");
    assert!(wait_until(deadline(SOON), || dir.path().join("started").exists()), "the agent never started");
    let filler = tmpfs.fill();
    fs::write(dir.path().join("go"), b"").expect("release the agent");
    let refused = wait_until(deadline(SOON), || g.log().contains("cannot queue the answer"));
    assert!(refused, "the unstorable reply is not in the log:\n{}", g.log());

    drop(filler);
    let expected = vec![("5".to_string(), "agent: answer me".to_string())];
    let g = assert_answered_without_restart(&fake, g, &config, expected);
    assert!(panics(&g.log()).is_empty(), "{}", g.log());
}

// ---------------------------------------------------------------------------------------
// Scenario: corrupt or truncated state files at startup

/// How a state file is damaged, as a crash, a full disk or a hand edit might leave it.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Zero bytes.
    Empty,
    /// The first half.
    Half,
    /// Bytes that are neither JSON nor UTF-8.
    Garbage,
}

impl Damage {
    fn apply(self, path: &Path) {
        let bytes = fs::read(path).expect("read a state file");
        let damaged = match self {
            Damage::Empty => vec![],
            Damage::Half => bytes[..bytes.len() / 2].to_vec(),
            Damage::Garbage => b"\x00\xff\xfe{\"garbage\x89PNG\r\n".to_vec(),
        };
        fs::write(path, damaged).expect("damage a state file");
    }
}

/// The state files damaged, one at a time: `DIR/NAME`, where a `NAME` of `*` or `*.EXT`
/// means every such file in `DIR`.
const STATE_FILES: &[&str] = &[
    "status.json",
    "directory.json",
    "sessions/index.json",
    "sessions/index.journal",
    "sessions/*.jsonl",
    "cursors/telegram-tg.offset",
    "inbox/journal",
    "outbox/tg/journal",
    "outbox/tg/*.json",
    "outbox/tg/unknown/*",
    "deadletter/tg/*",
    "pairing/tg.json",
];

/// `[access]` for the corrupt-state starts: user 5 is allowed, anyone else gets a pairing
/// code (so the pairing file is read).
const ALLOW_5: &str = "[access]\nallowed_users = [\"5\"]\n";

#[test]
#[ignore = "fault injection: run with `make chaos`"]
fn corrupt_state_files_at_startup_never_panic() {
    let fake = FakeTelegram::start(TOKEN);
    let baseline = baseline_state(&fake);
    let mut table = String::from("\n=== chaos: corrupt state files at startup ===\n");
    let mut failures = vec![];
    let mut case = 0;
    for file in STATE_FILES {
        for damage in [Damage::Empty, Damage::Half, Damage::Garbage] {
            case += 1;
            let outcome = start_with_damage(&fake, baseline.path(), file, damage, case);
            let said = outcome.as_ref().map_or_else(|e| format!("UNSAFE: {e}"), String::clone);
            // One short line per case in the table; the whole story with a failure.
            let line: String = said.lines().next().unwrap_or_default().chars().take(110).collect();
            table.push_str(&format!("{file:<28}{:<9}{line}\n", format!("{damage:?}")));
            if let Err(e) = outcome {
                failures.push(format!("{file} ({damage:?}): {e}"));
            }
        }
    }
    println!("{table}");
    assert!(failures.is_empty(), "unsafe startups:\n{}", failures.join("\n"));
}

/// A state directory with every kind of file in it: a session and its transcript, the
/// channel directory, an offset, a done and a pending inbox record, a queued, an
/// unknown-outcome and a dead-lettered delivery, a pairing request.
fn baseline_state(fake: &FakeTelegram) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(&fake.url(), ALLOW_5, "");
    let mut g = Gateway::start_in(dir.path(), &dir.path().join("locks"), &config);
    g.wait_platform(TG, "connected", SOON);
    fake.push_text(5, 5, "hello");
    fake.push_text(66, 66, "a stranger");
    fake.wait_sent(2, deadline(SOON));
    fake.inject("sendMessage", ApiFault::Malformed.fault(), 1);
    fake.inject("sendMessage", Fault::Status(400, api_error(400, "Bad Request: chat not found")), 1);
    for text in ["to-unknown", "to-dead"] {
        assert!(cli(dir.path(), &["send", "tg:77", text]).status.success());
    }
    let both = wait_until(deadline(SOON), || listed_by_status(dir.path()) == (1, 1));
    assert!(both, "no unknown outcome and dead letter:\n{}", notable(&g.log()));
    g.signal("TERM");
    assert_eq!(g.wait_exit(SOON), Some(0));
    assert!(cli(dir.path(), &["send", "tg:77", "queued-at-start"]).status.success());
    // A message still pending, as a crash mid-turn leaves one: "hello" under a new id.
    let journal = dir.path().join("state/inbox/journal");
    let text = fs::read_to_string(&journal).expect("read the inbox journal");
    let accept = text.lines().find(|l| l.contains("\"accept\"") && l.contains("hello")).expect("hello was journaled");
    let pending = accept.replacen("\"id\":\"", "\"id\":\"pending-", 1);
    fs::OpenOptions::new().append(true).open(&journal).and_then(|mut f| writeln!(f, "{pending}")).expect("append");
    let state = dir.path().join("state");
    for file in STATE_FILES {
        assert!(!matching(&state, file).is_empty(), "the baseline has no {file}");
    }
    dir
}

/// The files `pattern` (see [`STATE_FILES`]) names under `state`.
fn matching(state: &Path, pattern: &str) -> Vec<PathBuf> {
    let (dir, name) = pattern.rsplit_once('/').map_or((state.to_path_buf(), pattern), |(d, n)| (state.join(d), n));
    let Ok(entries) = fs::read_dir(&dir) else { return vec![] };
    let fits = |f: &str| match name.strip_prefix('*') {
        Some(suffix) => f.ends_with(suffix),
        None => f == name,
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.path().is_file() && e.file_name().to_str().is_some_and(fits))
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create a directory");
    for entry in fs::read_dir(from).expect("read a directory").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// Copy the baseline, damage `file`, then run the read-only commands and a gateway on
/// it. `Ok` says how it coped (a safe recovery, or a clean refusal to start); `Err` why
/// that is not safe (a panic, a hang, an unanswered message).
fn start_with_damage(
    fake: &FakeTelegram,
    baseline: &Path,
    file: &str,
    damage: Damage,
    case: usize,
) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&baseline.join("state"), &dir.path().join("state"));
    for path in matching(&dir.path().join("state"), file) {
        damage.apply(&path);
    }
    let config = config(&fake.url(), ALLOW_5, "");
    let g = Gateway::start_in(dir.path(), &dir.path().join("locks"), &config);
    for args in [&["status"][..], &["pairing", "list"]] {
        let out = cli(dir.path(), args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() == Some(101) || stderr.contains("panicked") {
            return Err(format!("`switchboard {}` panicked: {stderr}", args.join(" ")));
        }
    }
    outcome(fake, g, case)
}

/// Whether the gateway `g` started on damaged state connects and answers, or exits with
/// a clear error; never a panic or a hang.
fn outcome(fake: &FakeTelegram, mut g: Gateway, case: usize) -> Result<String, String> {
    let pid = u64::from(g.pid());
    let connected = |s: &Value| s["pid"].as_u64() == Some(pid) && s["platforms"][TG]["state"] == "connected";
    let settled = wait_until(deadline(SOON), || {
        g.status().is_some_and(|s| connected(&s)) || g.child.try_wait().is_ok_and(|e| e.is_some())
    });
    if !settled {
        return Err(format!("neither connected nor exited within {SOON:?}:\n{}", notable(&g.log())));
    }
    if let Some(code) = g.wait_exit(Duration::ZERO) {
        let log = g.log();
        let error = log.lines().find(|l| l.contains("[ERROR]")).unwrap_or("no [ERROR] line in the log");
        return match (panics(&log).is_empty(), code) {
            (true, 1 | 78) => Ok(format!("refused to start (exit {code}): {error}")),
            _ => Err(format!("exit {code}: {}", notable(&log))),
        };
    }
    let text = format!("after-damage-{case}");
    fake.push_text(5, 5, &text);
    let reply = ("5".to_string(), format!("echo: {text}"));
    if !wait_until(deadline(SOON), || fake.sent().contains(&reply)) {
        return Err(format!("connected, but did not answer:\n{}", notable(&g.log())));
    }
    g.signal("TERM");
    let code = g.wait_exit(SOON);
    let log = g.log();
    if !panics(&log).is_empty() || code != Some(0) {
        return Err(format!("exit {code:?} after SIGTERM: {}", notable(&log)));
    }
    let warning = log.lines().find(|l| l.contains("[WARN]")).and_then(|l| l.split_once("] ")).map_or("", |(_, w)| w);
    Ok(format!("recovered, answered; {warning}"))
}
