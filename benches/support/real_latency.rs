/*!
The `real_latency` section: bursts of chats through the `openai` backend with the model
and the Bot API as far away as real ones, and what each message costs the gateway in
syncs, bytes written and threads created.

The fakes: the Bot API answers every request [`API_LATENCY`] after it arrived and holds
`sendMessage` to Telegram's send limits (30 a second overall, one a second per chat, 20 a
minute per group), answering 429 with `retry_after` beyond them
([`FastTelegram::start_real`]); the model answers [`MODEL_DELAY`] after each request,
all requests at once ([`FastOpenAi::start_with_delay`]). The gateway runs with its
defaults (`max_concurrent_turns`, `max_in_flight`, Telegram's declared send limits on).

For each of [`CHAT_COUNTS`], a fresh gateway gets the first message of that many private
chats in one push; each chat's time is from the push to its reply arriving at the fake,
`total_s` the last of them. The floor: the model's second, then the replies at 30 a second
(500 chats: 500 ÷ 30 ≈ 16.7 s after the first could go).

The counters come from the [`COUNTER_CHATS`]-chat gateway, run under `strace`
([`super::trace`]): a second message to each of its chats, pushed once the first burst is
answered (sessions exist, the turn threads are still up: steady state), and the calls and
`/proc/PID/io` from that push to one second after its last reply, divided by its messages.
The same figures for the first burst (session creation and thread start-up included) are in
`details`.
*/

use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::fast_openai::FastOpenAi;
use super::fast_telegram::FastTelegram;
use super::process::{self, Gateway, OPEN_ACCESS};
use super::trace::{Calls, Strace};
use crate::{Percentiles, Texts, exchange, num, round};

/// How far away the Bot API is: each answer is written this long after its request arrived.
pub const API_LATENCY: Duration = Duration::from_millis(50);
/// How long the model takes to answer.
pub const MODEL_DELAY: Duration = Duration::from_secs(1);
/// The bursts: this many private chats, one message each, at once.
pub const CHAT_COUNTS: [i64; 2] = [50, 500];
/// The burst whose gateway the counters are measured on (at least 100 chats).
pub const COUNTER_CHATS: i64 = 500;
/// The instant-fake counter run: this many messages over this many chats.
const INSTANT_MESSAGES: usize = 3000;
const INSTANT_CHATS: i64 = 100;
/// After a burst's last reply, the counters keep counting this long: the bookkeeping that
/// follows a send (marking it delivered, compaction) belongs to its message.
const SETTLE: Duration = Duration::from_secs(1);
/// Telegram's overall limit, for the floor.
const TELEGRAM_PER_SECOND: f64 = 30.0;

const TOKEN: &str = crate::TOKEN;

/// One burst as the chats saw it.
struct Burst {
    chats: i64,
    /// Seconds from the push to each chat's reply.
    seconds: Vec<f64>,
    /// `sendMessage` calls the fake answered 429 during the burst.
    rate_limited: u64,
    /// Each of them: chat, seconds after the push, the limit, and how long before it
    /// the arrival came that it had to be a window after (ms).
    refusals: Vec<Value>,
    /// Connections the gateway opened to the Bot API during the burst.
    connections: u64,
}

/// What one message cost, over one burst.
struct Counters {
    messages: u64,
    /// `None`: `strace` is not there.
    calls: Option<Calls>,
    /// `/proc/PID/io` `write_bytes` and `wchar` over the window.
    write_bytes: u64,
    wchar: u64,
}

pub struct RealLatency {
    bursts: Vec<Burst>,
    /// The counters at [`INSTANT_CHATS`] chats with instant fakes, no limits, and the
    /// messages per second of that run (under `strace`).
    instant: (Counters, f64),
    /// The second burst of the counter gateway, and its counters.
    warm: Burst,
    warm_counters: Counters,
    /// The counters of that gateway's first burst.
    cold_counters: Counters,
}

/// Run the section: a gateway per entry of [`CHAT_COUNTS`].
pub fn run(texts: &mut Texts) -> RealLatency {
    let traced = Strace::available();
    if !traced {
        eprintln!("real latency: strace not found, so syncs and threads created are not measured");
    }
    let mut bursts = Vec::new();
    let mut counted = None;
    for (i, chats) in CHAT_COUNTS.into_iter().enumerate() {
        let first = 7_000_001 + i as i64 * 1_000_000;
        eprintln!(
            "real latency: {chats} chats at once, model {} s, Bot API {} ms away with Telegram's limits",
            MODEL_DELAY.as_secs_f64(),
            API_LATENCY.as_millis()
        );
        let llm = FastOpenAi::start_with_delay(MODEL_DELAY);
        let tg = FastTelegram::start_real(TOKEN, API_LATENCY);
        let trace_dir = tempfile::tempdir().expect("a temporary directory");
        let strace = (traced && chats == COUNTER_CHATS).then(|| Strace::new(trace_dir.path()));
        let mut gw = start(&tg, &llm, strace.as_ref());
        let messages = texts.spread(first, chats, chats as usize);
        let (burst, cold) = timed_burst(&tg, &mut gw, &messages);
        if burst.rate_limited > 0 {
            eprintln!("real latency: {} sendMessage calls were answered 429", burst.rate_limited);
        }
        bursts.push(burst);
        if chats != COUNTER_CHATS {
            continue;
        }
        let messages = texts.spread(first, chats, chats as usize);
        let (warm, warm_window) = timed_burst(&tg, &mut gw, &messages);
        drop(gw); // strace writes out the rest of the trace when the gateway is gone
        let count = |w: &Window| Counters {
            messages: chats as u64,
            calls: strace.as_ref().map(|s| s.count(w.from, w.to)),
            write_bytes: w.write_bytes,
            wchar: w.wchar,
        };
        counted = Some((warm, count(&warm_window), count(&cold)));
    }
    let (warm, warm_counters, cold_counters) = counted.expect("COUNTER_CHATS is one of CHAT_COUNTS");
    let instant = instant_counters(texts, traced);
    RealLatency { bursts, instant, warm, warm_counters, cold_counters }
}

/// The counters under the throughput bench's load: [`INSTANT_MESSAGES`] messages over
/// [`INSTANT_CHATS`] warm chats pushed at once, echo agent, instant fakes, limiter off.
fn instant_counters(texts: &mut Texts, traced: bool) -> (Counters, f64) {
    eprintln!("counters: {INSTANT_MESSAGES} messages over {INSTANT_CHATS} chats, instant fakes, limiter off");
    let tg = FastTelegram::start(TOKEN);
    let trace_dir = tempfile::tempdir().expect("a temporary directory");
    let strace = traced.then(|| Strace::new(trace_dir.path()));
    let config = format!("{OPEN_ACCESS}{}", process::telegram_table("tg", &tg.url(), TOKEN, process::NO_LIMITS));
    let wrapper = strace.as_ref().map(Strace::wrapper).unwrap_or_default();
    let mut gw = Gateway::start_under(&wrapper, "", &config);
    if tg.wait_first_poll(Instant::now() + Duration::from_secs(10)).is_none() {
        gw.fail("no getUpdates within 10 s of the start");
    }
    let first = 9_000_001;
    exchange(&tg, &mut gw, &texts.spread(first, INSTANT_CHATS, INSTANT_CHATS as usize), "echo: ");
    let (from, (w0, c0)) = (SystemTime::now(), gw.io_bytes());
    let (pushed, replies) = exchange(&tg, &mut gw, &texts.spread(first, INSTANT_CHATS, INSTANT_MESSAGES), "echo: ");
    let rate = INSTANT_MESSAGES as f64 / (crate::last_arrival(&replies) - pushed).as_secs_f64();
    thread::sleep(SETTLE);
    gw.assert_running("the counters run");
    let ((w1, c1), to) = (gw.io_bytes(), SystemTime::now());
    drop(gw);
    let counters = Counters {
        messages: INSTANT_MESSAGES as u64,
        calls: strace.map(|s| s.count(from, to)),
        write_bytes: w1.saturating_sub(w0),
        wchar: c1.saturating_sub(c0),
    };
    (counters, rate)
}

/// A gateway with the `openai` backend on `llm` and one bot on `tg`, polling; under
/// `strace` when given.
fn start(tg: &FastTelegram, llm: &FastOpenAi, strace: Option<&Strace>) -> Gateway {
    let agent = format!("[agent]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"bench\"\n", llm.url());
    let config = format!("{OPEN_ACCESS}{agent}{}", process::telegram_table("tg", &tg.url(), TOKEN, ""));
    let wrapper = strace.map(Strace::wrapper).unwrap_or_default();
    let mut gw = Gateway::start_under(&wrapper, "", &config);
    if tg.wait_first_poll(Instant::now() + Duration::from_secs(10)).is_none() {
        gw.fail("no getUpdates within 10 s of the start");
    }
    gw
}

/// The wall-clock window of a burst and what the gateway wrote in it.
struct Window {
    from: SystemTime,
    to: SystemTime,
    write_bytes: u64,
    wchar: u64,
}

/// Push `messages` (one per chat), wait for every reply (checked), then [`SETTLE`].
fn timed_burst(tg: &FastTelegram, gw: &mut Gateway, messages: &[(i64, String)]) -> (Burst, Window) {
    let (limited, from, (w0, c0)) = (tg.rate_limited(), SystemTime::now(), gw.io_bytes());
    let connections = tg.connections();
    let (pushed, replies) = exchange(tg, gw, messages, "ok: ");
    let seconds = replies.iter().map(|r| (r.at - pushed).as_secs_f64()).collect();
    thread::sleep(SETTLE);
    gw.assert_running("a real-latency burst");
    let (w1, c1) = gw.io_bytes();
    let window =
        Window { from, to: SystemTime::now(), write_bytes: w1.saturating_sub(w0), wchar: c1.saturating_sub(c0) };
    let refused = tg.refused();
    let refusals = refused[limited as usize..]
        .iter()
        .map(|(chat, at, r)| {
            let after = at.saturating_duration_since(pushed).as_secs_f64();
            json!({ "chat": chat, "at_s": round(after, 3), "scope": r.scope, "since_ms": round(crate::ms(r.since), 1), "retry_after": r.retry_after })
        })
        .collect();
    let burst = Burst {
        chats: messages.len() as i64,
        seconds,
        rate_limited: tg.rate_limited() - limited,
        refusals,
        connections: tg.connections() - connections,
    };
    (burst, window)
}

impl Burst {
    fn to_json(&self) -> Value {
        let p = Percentiles::of(&self.seconds);
        json!({
            "total_s": round(p.max, 3),
            "p50_s": round(p.p50, 3),
            "p99_s": round(p.p99, 3),
            "rate_limited_429": self.rate_limited,
            "refused": self.refusals,
            "api_connections_opened": self.connections,
        })
    }
}

/// The target for `chats` chats: 2.5 s for 50; 1.1 × the floor beyond.
fn target_s(chats: i64) -> f64 {
    if chats <= 50 { 2.5 } else { 1.1 * floor_s(chats) }
}

/// The floor: the replies at Telegram's rate, plus the model's answer.
fn floor_s(chats: i64) -> f64 {
    chats as f64 / TELEGRAM_PER_SECOND + MODEL_DELAY.as_secs_f64()
}

/// The exact floor under these fakes: the update's way to the gateway, the model, then
/// 30 replies in each second (the first 30 at once, the last in second ⌊(n−1)/30⌋).
fn exact_floor_s(chats: i64) -> f64 {
    let windows = ((chats - 1).max(0) as f64 / TELEGRAM_PER_SECOND).floor();
    API_LATENCY.as_secs_f64() + MODEL_DELAY.as_secs_f64() + windows
}

const NOT_MEASURED: &str = "not measured (no strace)";

impl Counters {
    fn per_msg(&self, n: impl Fn(&Calls) -> u64, scale: f64, places: i32) -> Value {
        self.calls
            .as_ref()
            .map_or(json!(NOT_MEASURED), |c| json!(round(n(c) as f64 * scale / self.messages as f64, places)))
    }

    fn to_json(&self) -> Value {
        json!({
            "messages": self.messages,
            "fsync_per_msg": self.per_msg(|c| c.syncs, 1.0, 3),
            "threads_created_per_1000_msgs": self.per_msg(|c| c.creations, 1000.0, 1),
            "syncs": self.calls.as_ref().map(|c| c.syncs),
            "syncs_by_file": self.calls.as_ref().map(|c| &c.syncs_by_file),
            "sync_ms_mean": self.calls.as_ref().map(|c| round(c.sync_seconds * 1000.0 / c.syncs.max(1) as f64, 2)),
            "threads_created": self.calls.as_ref().map(|c| c.creations),
            "write_bytes_per_msg": round(self.write_bytes as f64 / self.messages as f64, 1),
            "wchar_per_msg": round(self.wchar as f64 / self.messages as f64, 1),
        })
    }
}

impl RealLatency {
    /// Put the section's keys into `json`: `real_latency`, and at the top level
    /// `fsync_per_msg`, `bytes_written_per_msg`, `threads_created_per_1000_msgs`.
    pub fn write_into(&self, json: &mut Value) {
        let mut section = json!({});
        for burst in &self.bursts {
            section[format!("chats_{}", burst.chats)] = burst.to_json();
        }
        let warm = self.warm_counters.to_json();
        section["details"] = json!({
            "method": "see benches/support/real_latency.rs and bench/README.md",
            "api_latency_ms": API_LATENCY.as_millis() as u64,
            "model_delay_s": MODEL_DELAY.as_secs_f64(),
            "telegram_limits": "30 msg/s overall, 1 msg/s per chat, 20 msg/min per group; 429 with retry_after beyond",
            "floor_s": self.bursts.iter().map(|b| (format!("chats_{}", b.chats), json!(round(floor_s(b.chats), 2)))).collect::<serde_json::Map<_, _>>(),
            "floor_is": "chats / 30 + the model's 1 s (the issue's); exact_floor_s: 50 ms + 1 s + floor((chats - 1) / 30) s, as a sliding window lets the first 30 go at once",
            "exact_floor_s": self.bursts.iter().map(|b| (format!("chats_{}", b.chats), json!(round(exact_floor_s(b.chats), 2)))).collect::<serde_json::Map<_, _>>(),
            "counters_on": format!("the second message of each of {COUNTER_CHATS} chats (steady state), push to last reply + {} s", SETTLE.as_secs()),
            "counters_method": "strace -f --seccomp-bpf: fsync+fdatasync calls, clone+clone3+fork+vfork calls; /proc/PID/io",
            "bytes_written_is": "write_bytes of /proc/PID/io (what reached the block layer); wchar_per_msg is what was passed to write()",
            "second_burst": self.warm.to_json(),
            "counters_second_burst": warm,
            "counters_first_burst": self.cold_counters.to_json(),
            "counters_instant_100_chats": self.instant.0.to_json(),
            "counters_instant_msg_per_s": round(self.instant.1, 1),
        });
        json["real_latency"] = section;
        json["fsync_per_msg"] = warm["fsync_per_msg"].clone();
        json["bytes_written_per_msg"] = warm["write_bytes_per_msg"].clone();
        json["threads_created_per_1000_msgs"] = warm["threads_created_per_1000_msgs"].clone();
    }
}

/// A table row: metric, value, target, met.
pub type Row = (String, String, String, Option<bool>);

/// The section's rows, from the JSON [`RealLatency::write_into`] wrote.
pub fn rows(json: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    for chats in CHAT_COUNTS {
        let b = &json["real_latency"][format!("chats_{chats}")];
        let target = target_s(chats);
        let total = b["total_s"].as_f64().unwrap_or(f64::NAN);
        let limited = b["rate_limited_429"].as_u64();
        rows.push((
            format!("real {chats} chats: last reply (s)"),
            num(&b["total_s"]),
            format!("<= {target:.1}"),
            Some(total <= target),
        ));
        rows.push((
            format!("real {chats} chats: p50 / p99 (s)"),
            format!("{} / {}", num(&b["p50_s"]), num(&b["p99_s"])),
            String::new(),
            None,
        ));
        rows.push((
            format!("real {chats} chats: 429s"),
            num(&b["rate_limited_429"]),
            "0".into(),
            Some(limited == Some(0)),
        ));
    }
    let measured = |key: &str, limit: f64| -> Row {
        let v = &json[key];
        let met = v.as_f64().map(|x| x <= limit);
        let value = v.as_str().map_or_else(|| num(v), |_| "not measured".into());
        (key.to_string(), value, format!("<= {limit}"), met)
    };
    rows.push(measured("fsync_per_msg", 0.1));
    rows.push(("bytes_written_per_msg".into(), num(&json["bytes_written_per_msg"]), String::new(), None));
    rows.push(measured("threads_created_per_1000_msgs", 10.0));
    rows
}
