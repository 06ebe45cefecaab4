/*!
`make bench`: end-to-end figures of the release gateway against fast fake servers.

Every scenario runs the real `target/release/switchboard` (see `support::process`)
against fakes on 127.0.0.1 written for speed (`support::fast_telegram`,
`support::fast_openai`: hand-written HTTP/1.1, keep-alive, a thread per connection), with
the echo agent unless said otherwise:

1. throughput with 1, 100 and 1000 chats, and a raw `sendMessage` loop as the limit;
2. latency added per message at one message at a time;
3. footprint: binary size, idle RSS and threads, RSS after 10,000 sessions, of the glibc
   build and of the static musl build (`make static`), with a short load on both;
4. idle CPU over 60 s (`BENCH_QUICK=1`: 10 s);
5. startup: exec to the first `getUpdates`;
6. reconnect precision: scheduled against actual `getMe` retry times;
7. agent path: 50 chats through the `openai` backend;
8. soak: 200,000 messages from 1,000 chats, RSS and state directory along the way;
9. real latency: 50 and 500 chats at once through the `openai` backend, model 1 s and
   Bot API 50 ms away with Telegram's send limits; syncs, bytes written and threads
   created per message (`support::real_latency`).

It prints a table and writes `bench/results.json`. `BENCH_ONLY=soak` runs the soak alone
and replaces only its part of `results.json`; `BENCH_ONLY=real_latency` and
`BENCH_ONLY=footprint` likewise; `BENCH_ONLY=load` runs the raw loop and the loaded
gateway (1 and 2) alone and only prints them. Every wait has a deadline; a missing,
wrong or duplicated reply or a stalled gateway panics, so the bench exits non-zero
instead of hanging or reporting a figure for broken behaviour.
*/

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use support::fast_openai::FastOpenAi;
use support::fast_telegram::{FastTelegram, Sent};
use support::process::{self, Gateway, OPEN_ACCESS, ProcSample};

const TOKEN: &str = "111111111:AAbench-token-one";
const TOKEN_2: &str = "222222222:AAbench-token-two";

/// Messages per throughput run (after each chat's untimed first turn).
const THROUGHPUT_MESSAGES: usize = 3000;
/// Runs of each throughput figure and of the raw loop; the best is reported, since
/// on a shared machine other work can only slow a run down.
const RUNS: usize = 2;
/// Sequential messages for the latency percentiles.
const LATENCY_SAMPLES: usize = 500;
/// Chats the latency samples rotate over (their sessions exist before timing).
const LATENCY_CHATS: i64 = 10;
/// Requests of the raw `sendMessage` loop.
const RAW_MESSAGES: usize = 5000;
/// Distinct chats for the memory-per-session figure.
const SESSIONS: usize = 10_000;
/// Gateway runs for the startup figure (the median is reported).
const STARTUP_RUNS: usize = 5;
/// Failed `getMe` attempts observed for the retry figure (so `RETRY_ATTEMPTS - 1` gaps).
const RETRY_ATTEMPTS: usize = 6;
const RETRY_BASE_MS: u64 = 200;
const AGENT_CHATS: i64 = 50;
/// The soak: messages in all, over this many chats. They are pushed one round at a time
/// (one message per chat, answered before the next round), so what is measured is what
/// stays in memory, not the high-water mark of a backlog of ten thousand; RSS is sampled
/// every [`SOAK_SAMPLE`] messages, and the baseline is the sample after [`SOAK_BASELINE`].
const SOAK_MESSAGES: usize = 200_000;
const SOAK_CHATS: i64 = 1000;
const SOAK_SAMPLE: usize = 10_000;
const SOAK_BASELINE: usize = 20_000;
/// The soak's `[gateway] dedup_window`: short, so that its minutes span many windows, as
/// months span many weeks.
const SOAK_DEDUP_WINDOW: &str = "2s";

/// A gateway that has answered nothing for this long is stalled: the bench fails.
const STALL: Duration = Duration::from_secs(15);
/// No single run may take longer, progress or not.
const RUN_CAP: Duration = Duration::from_secs(200);

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without
    // it, and a test run must not take minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benches/gateway.rs: skipped (run it with `make bench`)");
        return;
    }
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    match std::env::var("BENCH_ONLY").as_deref() {
        Ok("soak") => return soak_only(),
        Ok("load") => return load_only(),
        Ok("real_latency") => return real_latency_only(),
        Ok("footprint") => return footprint_only(quick),
        _ => {}
    }
    let idle_window = Duration::from_secs(if quick { 10 } else { 60 });
    let began = Instant::now();
    let load_before = loadavg();
    let mut texts = Texts::default();
    let pinned = tempfile::tempdir().expect("a temporary directory");
    process::pin_binary(pinned.path());

    let binary_bytes = binary_bytes();
    let startup = bench_startup();
    let retry = bench_reconnect();
    let raw_loop = (0..RUNS).map(|_| bench_raw_loop()).collect();
    let fake_capacity = bench_fake_capacity();
    let load = bench_load(&mut texts);
    let agent = bench_agent_burst(&mut texts);
    let real_latency = support::real_latency::run(&mut texts);
    let footprint = bench_footprint(&process::binary(), idle_window, &mut texts);
    let static_build = bench_static(pinned.path(), &mut texts);
    let soak = bench_soak(&mut texts);

    let results = Results {
        binary_bytes,
        startup,
        retry,
        raw_loop,
        fake_capacity,
        load,
        agent,
        footprint,
        idle_window,
        load_avg: (load_before, loadavg()),
    };
    let mut json = results.to_json();
    json["soak"] = soak.to_json();
    real_latency.write_into(&mut json);
    json["footprint"]["static"] = static_json(&static_build, json["footprint"]["binary_mb"].as_f64());
    print_table(&json);
    if load_before > 0.5 {
        println!("\nnote: the load average was {load_before:.2} at the start: other work shared the CPUs and disk.");
    }
    write_results(&json);
    println!("in {:.0} s", began.elapsed().as_secs_f64());
}

const RESULTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/results.json");

fn write_results(json: &Value) {
    std::fs::write(RESULTS, serde_json::to_string_pretty(json).expect("json") + "\n").expect("write results.json");
    println!("\nwrote {RESULTS}");
}

/// `BENCH_ONLY=load`: the raw loop and the loaded gateway (latency and throughput) alone,
/// printed, not written: a quick check of the hot path while working on it.
fn load_only() {
    let pinned = tempfile::tempdir().expect("a temporary directory");
    process::pin_binary(pinned.path());
    let load_before = loadavg();
    let raw: Vec<f64> = (0..RUNS).map(|_| bench_raw_loop()).collect();
    let load = bench_load(&mut Texts::default());
    let best = |runs: &[f64]| runs.iter().copied().fold(0.0, f64::max);
    let raw_loop = best(&raw);
    let latency = Percentiles::of(&load.latency_ms);
    println!("\nload average before {load_before:.2}, after {:.2}", loadavg());
    println!("raw sendMessage loop (msg/s)    {:>10.1}  runs {:?}", raw_loop, rounded(&raw, 1));
    let mut gateway_best: f64 = 0.0;
    for (chats, runs) in &load.throughput {
        gateway_best = gateway_best.max(best(runs));
        println!("throughput, {chats:>4} chats (msg/s)  {:>10.1}  runs {:?}", best(runs), rounded(runs, 1));
    }
    for (chats, cost) in &load.cost {
        println!(
            "gateway per message, {chats:>4} chats: {:.1} µs CPU, {:.1} context switches",
            cost.cpu_us, cost.switches
        );
    }
    println!("gateway / raw loop              {:>10.3}  (target >= 0.8)", gateway_best / raw_loop);
    println!("latency p50 / p99 / max (ms)    {:.2} / {:.2} / {:.2}", latency.p50, latency.p99, latency.max);
}

/// `BENCH_ONLY=soak`: the soak alone, its figures put into the existing results.
fn soak_only() {
    let pinned = tempfile::tempdir().expect("a temporary directory");
    process::pin_binary(pinned.path());
    let load_before = loadavg();
    let soak = bench_soak(&mut Texts::default()).to_json();
    let mut json = existing_results();
    json["soak"] = soak;
    json["soak"]["date"] = json!(today());
    json["soak"]["load_average_before_after"] = json!([round(load_before, 2), round(loadavg(), 2)]);
    print_soak(&json["soak"]);
    write_results(&json);
}

/// `BENCH_ONLY=real_latency`: that section alone, its keys put into the existing results.
fn real_latency_only() {
    let pinned = tempfile::tempdir().expect("a temporary directory");
    process::pin_binary(pinned.path());
    let section = support::real_latency::run(&mut Texts::default());
    let mut json = existing_results();
    section.write_into(&mut json);
    json["real_latency"]["details"]["date"] = json!(today());
    print_rows(&support::real_latency::rows(&json));
    write_results(&json);
}

/// `bench/results.json` as it is, or an empty object.
fn existing_results() -> Value {
    std::fs::read(RESULTS)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// `BENCH_ONLY=footprint`: binary size, idle RSS and RSS at 10,000 sessions of both builds
/// and the static build's short load, put into the existing results (`footprint`, and the
/// footprint figures of `details`).
fn footprint_only(quick: bool) {
    let pinned = tempfile::tempdir().expect("a temporary directory");
    process::pin_binary(pinned.path());
    let load_before = loadavg();
    let mut texts = Texts::default();
    let window = Duration::from_secs(if quick { 10 } else { 60 });
    let footprint = bench_footprint(&process::binary(), window, &mut texts);
    let static_build = bench_static(pinned.path(), &mut texts);
    let mut json = existing_results();
    let binary_bytes = binary_bytes();
    let threads = footprint.idle.threads;
    let glibc = footprint_figures(binary_bytes, &footprint);
    for (key, value) in footprint_details(&footprint) {
        json["details"][key] = value;
    }
    json["details"]["binary_bytes"] = json!(binary_bytes);
    json["footprint"] = glibc;
    json["footprint"]["threads"] = json!(threads);
    json["footprint"]["static"] = static_json(&static_build, json["footprint"]["binary_mb"].as_f64());
    json["footprint"]["date"] = json!(today());
    json["footprint"]["load_average_before_after"] = json!([round(load_before, 2), round(loadavg(), 2)]);
    let rows = footprint_rows(&json["footprint"]).into_iter();
    print_rows(&rows.map(|(metric, value, target, met)| (metric, value, target.to_string(), met)).collect::<Vec<_>>());
    write_results(&json);
}

// ---------------------------------------------------------------------------------------
// Messages and replies

/// Unique message texts (`m<n>`), so every reply names the message it answers.
#[derive(Default)]
struct Texts {
    next: u64,
}

impl Texts {
    /// `count` messages spread round-robin over chats `first..first + chats`.
    fn spread(&mut self, first: i64, chats: i64, count: usize) -> Vec<(i64, String)> {
        (0..count).map(|i| (first + i as i64 % chats, self.next())).collect()
    }

    fn next(&mut self) -> String {
        self.next += 1;
        format!("m{}", self.next)
    }
}

/// Push `messages`, wait for one reply each, check them; returns (time pushed, replies).
/// `prefix` is what the agent puts before the text (`echo: `, `ok: `).
fn exchange(tg: &FastTelegram, gw: &mut Gateway, messages: &[(i64, String)], prefix: &str) -> (Instant, Vec<Sent>) {
    let before = tg.sent_count();
    let pushed = tg.push(messages);
    let sent = wait_replies(tg, gw, before + messages.len());
    let replies = sent[before..].to_vec();
    check_replies(gw, messages, &replies, prefix);
    (pushed, replies)
}

/// Wait for `n` replies in all; fail if none comes for [`STALL`] or it takes [`RUN_CAP`].
fn wait_replies(tg: &FastTelegram, gw: &mut Gateway, n: usize) -> Vec<Sent> {
    let cap = Instant::now() + RUN_CAP;
    let mut seen = tg.sent_count();
    loop {
        let sent = tg.wait_sent(n, Instant::now() + STALL);
        if sent.len() >= n {
            return sent;
        }
        gw.assert_running("a run");
        if sent.len() == seen || Instant::now() > cap {
            gw.fail(&format!("stalled: {} of {n} replies after waiting", sent.len()));
        }
        seen = sent.len();
    }
}

/// Every message got exactly one reply, in its own chat, answering its text.
fn check_replies(gw: &mut Gateway, messages: &[(i64, String)], replies: &[Sent], prefix: &str) {
    let mut expected: HashMap<(i64, String), usize> = HashMap::new();
    for (chat, text) in messages {
        *expected.entry((*chat, format!("{prefix}{text}"))).or_default() += 1;
    }
    for reply in replies {
        match expected.get_mut(&(reply.chat_id, reply.text.clone())) {
            Some(n) if *n > 0 => *n -= 1,
            _ => gw.fail(&format!("unexpected or duplicated reply {:?} in chat {}", reply.text, reply.chat_id)),
        }
    }
    if let Some(((chat, text), _)) = expected.iter().find(|(_, n)| **n > 0) {
        gw.fail(&format!("no reply {text:?} in chat {chat}"));
    }
}

fn last_arrival(replies: &[Sent]) -> Instant {
    replies.iter().map(|s| s.at).max().expect("at least one reply")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A gateway with one bot on `tg` and `extra` config, polling before it returns.
fn start_bot(tg: &FastTelegram, extra: &str) -> Gateway {
    let config = format!("{OPEN_ACCESS}{extra}{}", process::telegram_table("tg", &tg.url(), TOKEN, process::NO_LIMITS));
    let mut gw = Gateway::start(&config);
    if tg.wait_first_poll(Instant::now() + Duration::from_secs(10)).is_none() {
        gw.fail("no getUpdates within 10 s of the start");
    }
    gw
}

// ---------------------------------------------------------------------------------------
// The scenarios

/// The size of the binary under measurement, in bytes.
fn binary_bytes() -> u64 {
    std::fs::metadata(process::binary()).expect("the release binary").len()
}

/// Startup: exec → first `getUpdates` at the fake, over [`STARTUP_RUNS`] fresh starts.
fn bench_startup() -> Vec<f64> {
    eprintln!("startup: {STARTUP_RUNS} runs");
    (0..STARTUP_RUNS)
        .map(|_| {
            let tg = FastTelegram::start(TOKEN);
            let gw = start_bot(&tg, "");
            let first = tg.wait_first_poll(Instant::now()).expect("polled");
            ms(first - gw.spawned)
        })
        .collect()
}

/// Reconnect precision: `getMe` answers 502; each retry should come `base · 2^(k−1)`
/// after the failure answer of attempt k. Returns the signed errors in ms.
fn bench_reconnect() -> Vec<f64> {
    eprintln!("reconnect: {RETRY_ATTEMPTS} failing getMe attempts, base {RETRY_BASE_MS} ms");
    let tg = FastTelegram::start(TOKEN);
    tg.fail_get_me(true);
    let reconnect = format!(
        "[reconnect]\nbase = \"{RETRY_BASE_MS}ms\"\ncap = \"60s\"\nmax_attempts = 0\nconnect_timeout = \"5s\"\n"
    );
    let table = process::telegram_table("tg", &tg.url(), TOKEN, "network_retries = 0\n");
    let mut gw = Gateway::start(&format!("{reconnect}{table}"));
    let total: u64 = (0..RETRY_ATTEMPTS as u32 - 1).map(|k| RETRY_BASE_MS << k).sum();
    let calls = tg.wait_get_me(RETRY_ATTEMPTS, Instant::now() + Duration::from_millis(total) + STALL);
    if calls.len() < RETRY_ATTEMPTS {
        gw.fail(&format!("only {} getMe attempts", calls.len()));
    }
    (1..RETRY_ATTEMPTS)
        .map(|k| {
            let scheduled = Duration::from_millis(RETRY_BASE_MS << (k - 1));
            let actual = calls[k].arrived - calls[k - 1].answered;
            ms(actual) - ms(scheduled)
        })
        .collect()
}

/// The limit: one client calling `sendMessage` back to back on one keep-alive
/// connection, with ureq 3 set up exactly as the gateway's Telegram outlet (one
/// `Agent` from `net::http::agent`, phased timeouts, the same body shape).
fn bench_raw_loop() -> f64 {
    eprintln!("raw loop: {RAW_MESSAGES} sendMessage calls");
    let tg = FastTelegram::start(TOKEN);
    let timeout = Duration::from_secs(15);
    let agent = switchboard::net::http::agent(timeout, timeout);
    let url = format!("{}/bot{TOKEN}/sendMessage", tg.url());
    let send = |i: usize| {
        let body = json!({
            "chat_id": 1 + i % 100,
            "text": format!("echo: m{i}"),
            "reply_parameters": { "message_id": i, "allow_sending_without_reply": true },
        });
        let request =
            switchboard::net::http::phased(agent.post(&url), timeout).header("Content-Type", "application/json");
        let mut response = request.send(body.to_string()).expect("sendMessage");
        let bytes = switchboard::net::http::read_body(&mut response).expect("a body");
        let answer: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert!(answer["result"]["message_id"].is_i64(), "a Message back");
    };
    (0..200).for_each(send); // connect and warm up
    let start = Instant::now();
    (0..RAW_MESSAGES).for_each(send);
    RAW_MESSAGES as f64 / start.elapsed().as_secs_f64()
}

/// What the fake itself can serve: the raw loop again with a bare `TcpStream` and a
/// hand-written request, so the figure shows the fake is not what limits the others.
fn bench_fake_capacity() -> f64 {
    eprintln!("fake capacity: {RAW_MESSAGES} sendMessage calls over a bare TcpStream");
    let tg = FastTelegram::start(TOKEN);
    let stream = TcpStream::connect(tg.url().trim_start_matches("http://")).expect("connect to the fake");
    stream.set_nodelay(true).expect("nodelay");
    let mut writer = stream.try_clone().expect("clone the stream");
    let mut reader = BufReader::new(stream);
    let mut send = |i: usize| {
        let body = json!({ "chat_id": 1 + i % 100, "text": format!("echo: m{i}") }).to_string();
        let request = format!(
            "POST /bot{TOKEN}/sendMessage HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(request.as_bytes()).expect("write a request");
        read_response(&mut reader);
    };
    (0..200).for_each(&mut send);
    let start = Instant::now();
    (0..RAW_MESSAGES).for_each(&mut send);
    RAW_MESSAGES as f64 / start.elapsed().as_secs_f64()
}

/// Read one response with a `Content-Length` body, and drop it.
fn read_response(reader: &mut BufReader<TcpStream>) {
    let (mut line, mut length) = (String::new(), 0);
    loop {
        line.clear();
        reader.read_line(&mut line).expect("a response line");
        if line.trim().is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().expect("a length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("the body");
}

/// Latency and throughput figures from one loaded gateway.
struct Load {
    latency_ms: Vec<f64>,
    /// (chats, messages per second of each run).
    throughput: Vec<(i64, Vec<f64>)>,
    /// (chats, what the gateway spent per message over the runs): where its time goes.
    cost: Vec<(i64, Cost)>,
}

/// The gateway's own cost per message over some runs: CPU time (user + system) and
/// context switches of its threads (voluntary ones are a thread blocking: on a lock, a
/// condition variable, a channel, the network or the disk).
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    cpu_us: f64,
    switches: f64,
}

/// CPU ticks and context switches of the gateway so far. Switches of threads that have
/// ended are not counted (no thread ends during a throughput run: idle ones end after 30 s).
fn cost_counters(gw: &Gateway) -> (u64, u64) {
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{}/task", gw.pid())).into_iter().flatten().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
        };
        switches += field("voluntary_ctxt_switches:") + field("nonvoluntary_ctxt_switches:");
    }
    (gw.sample().cpu_ticks, switches)
}

impl Cost {
    fn between(before: (u64, u64), after: (u64, u64), messages: usize) -> Cost {
        let ticks = after.0.saturating_sub(before.0) as f64;
        let cpu_us = ticks * 1e6 / process::clock_ticks() as f64 / messages as f64;
        Cost { cpu_us, switches: after.1.saturating_sub(before.1) as f64 / messages as f64 }
    }
}

/// One echo gateway: latency at one message at a time, then throughput with 1, 100
/// and 1000 chats. Each chat count uses chats of its own, each of which had an untimed
/// first turn, so the timed runs measure steady state, not session creation.
///
/// The send limiter is off (`send_limits = false`): the fake enforces no limits and
/// the raw loop it is compared with has none, so with Telegram's (30 a second, one a
/// second per chat) the figures would measure the limiter, not the gateway.
fn bench_load(texts: &mut Texts) -> Load {
    let tg = FastTelegram::start(TOKEN);
    let mut gw = start_bot(&tg, "");
    eprintln!("latency: {LATENCY_SAMPLES} messages, one at a time");
    exchange(&tg, &mut gw, &texts.spread(1, LATENCY_CHATS, LATENCY_CHATS as usize), "echo: ");
    let latency_ms = (0..LATENCY_SAMPLES)
        .map(|_| {
            let message = texts.spread(1, LATENCY_CHATS, 1);
            let (pushed, replies) = exchange(&tg, &mut gw, &message, "echo: ");
            // Let the gateway finish its bookkeeping, so each sample starts from idle.
            thread::sleep(Duration::from_millis(5));
            ms(replies[0].at - pushed)
        })
        .collect();
    let (mut throughput, mut cost) = (Vec::new(), Vec::new());
    for (first, chats) in [(1_001, 1), (2_001, 100), (3_001, 1000)] {
        eprintln!("throughput: {THROUGHPUT_MESSAGES} messages over {chats} chats, {RUNS} runs");
        exchange(&tg, &mut gw, &texts.spread(first, chats, chats as usize), "echo: ");
        let before = cost_counters(&gw);
        let rates = (0..RUNS)
            .map(|_| {
                let messages = texts.spread(first, chats, THROUGHPUT_MESSAGES);
                let (pushed, replies) = exchange(&tg, &mut gw, &messages, "echo: ");
                THROUGHPUT_MESSAGES as f64 / (last_arrival(&replies) - pushed).as_secs_f64()
            })
            .collect();
        cost.push((chats, Cost::between(before, cost_counters(&gw), RUNS * THROUGHPUT_MESSAGES)));
        throughput.push((chats, rates));
    }
    Load { latency_ms, throughput, cost }
}

/// 50 chats' first messages at once through the `openai` backend, answered at once.
/// Returns the seconds from the push to the last reply.
fn bench_agent_burst(texts: &mut Texts) -> f64 {
    eprintln!("agent burst: {AGENT_CHATS} chats through the openai backend");
    let llm = FastOpenAi::start();
    let tg = FastTelegram::start(TOKEN);
    let agent = format!("[agent]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"bench\"\n", llm.url());
    let mut gw = start_bot(&tg, &agent);
    let (pushed, replies) = exchange(&tg, &mut gw, &texts.spread(1, AGENT_CHATS, AGENT_CHATS as usize), "ok: ");
    assert!(llm.requests() >= AGENT_CHATS as u64, "every reply came from the model");
    (last_arrival(&replies) - pushed).as_secs_f64()
}

struct Footprint {
    idle: ProcSample,
    /// CPU ticks used over the idle window.
    idle_ticks: u64,
    /// `getUpdates` calls both fakes saw during the idle window.
    idle_polls: u64,
    /// RSS after half and after all of the [`SESSIONS`] first turns.
    sessions_rss_kb: (u64, u64),
    /// Seconds the first turns took.
    sessions_s: f64,
}

/// Gateway A (console + 2 bots) sits idle: RSS and threads after 10 s, CPU over the
/// idle window. Meanwhile gateway B, shaped the same, answers 10,000 new chats; it runs
/// now because its figure is memory, which A's idling cannot disturb, and A's CPU time
/// is its own whatever else runs, so the bench saves the time of one window.
fn bench_footprint(binary: &Path, window: Duration, texts: &mut Texts) -> Footprint {
    eprintln!("footprint of {}: idle window {} s, {SESSIONS} sessions meanwhile", binary.display(), window.as_secs());
    let (tg1, tg2) = (FastTelegram::start(TOKEN), FastTelegram::start(TOKEN_2));
    let mut idle = Gateway::start_binary(binary, "", &two_bots(&tg1, &tg2));
    wait_polling(&mut idle, &[&tg1, &tg2]);
    let messages = texts.spread(1_000_000, SESSIONS as i64, SESSIONS);
    let filler = {
        let binary = binary.to_path_buf();
        thread::spawn(move || fill_sessions(&binary, &messages))
    };

    thread::sleep((idle.spawned + Duration::from_secs(10)).saturating_duration_since(Instant::now()));
    idle.assert_running("the idle window");
    let (start, polls) = (idle.sample(), tg1.polls() + tg2.polls());
    thread::sleep(window);
    idle.assert_running("the idle window");
    let end = idle.sample();
    let idle_polls = tg1.polls() + tg2.polls() - polls;

    let (sessions_rss_kb, sessions_s) = filler.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    Footprint { idle: start, idle_ticks: end.cpu_ticks - start.cpu_ticks, idle_polls, sessions_rss_kb, sessions_s }
}

/// The console and two bots, default timings (50 s long polls), echo agent, the send
/// limiter off: the instant fakes enforce no limits, and at Telegram's 30 messages a
/// second, 10,000 first replies would take 6 minutes and pile up meanwhile.
fn two_bots(tg1: &FastTelegram, tg2: &FastTelegram) -> String {
    format!(
        "{OPEN_ACCESS}[platforms.console]\nkind = \"console\"\n{}{}",
        process::telegram_table("bot1", &tg1.url(), TOKEN, process::NO_LIMITS),
        process::telegram_table("bot2", &tg2.url(), TOKEN_2, process::NO_LIMITS)
    )
}

fn wait_polling(gw: &mut Gateway, fakes: &[&FastTelegram]) {
    for tg in fakes {
        if tg.wait_first_poll(Instant::now() + Duration::from_secs(10)).is_none() {
            gw.fail("a bot did not poll within 10 s of the start");
        }
    }
}

/// One first turn in each of `messages`' chats, in two halves; the RSS (KiB) after
/// each half (and a moment for the bookkeeping after its last reply), and the seconds
/// the turns took. Two points give the cost per session apart from the base.
fn fill_sessions(binary: &Path, messages: &[(i64, String)]) -> ((u64, u64), f64) {
    let (tg1, tg2) = (FastTelegram::start(TOKEN), FastTelegram::start(TOKEN_2));
    let mut gw = Gateway::start_binary(binary, "", &two_bots(&tg1, &tg2));
    wait_polling(&mut gw, &[&tg1, &tg2]);
    let mut rss = Vec::new();
    let mut took = 0.0;
    for half in messages.chunks(messages.len().div_ceil(2)) {
        let (pushed, replies) = exchange(&tg1, &mut gw, half, "echo: ");
        took += (last_arrival(&replies) - pushed).as_secs_f64();
        thread::sleep(Duration::from_millis(500));
        gw.assert_running("the sessions run");
        rss.push(gw.sample().rss_kb);
    }
    ((rss[0], rss[1]), took)
}

/// `binary_mb`, `idle_rss_mb`, `rss_10k_sessions_mb` of one build.
fn footprint_figures(binary_bytes: u64, f: &Footprint) -> Value {
    json!({
        "binary_mb": round(binary_bytes as f64 / (1024.0 * 1024.0), 2),
        "idle_rss_mb": mib(f.idle.rss_kb),
        "rss_10k_sessions_mb": mib(f.sessions_rss_kb.1),
    })
}

/// The finer footprint figures (`details` of the glibc build; beside the main ones for
/// the static build).
fn footprint_details(f: &Footprint) -> Vec<(&'static str, Value)> {
    let (rss_5k, rss_10k) = f.sessions_rss_kb;
    vec![
        ("idle_rss_anon_mb", json!(mib(f.idle.rss_anon_kb))),
        ("idle_rss_file_mb", json!(mib(f.idle.rss_file_kb))),
        ("idle_pss_mb", json!(mib(f.idle.pss_kb))),
        ("rss_5k_sessions_mb", json!(mib(rss_5k))),
        ("rss_per_session_kb", json!(round((rss_10k as f64 - rss_5k as f64) / (SESSIONS / 2) as f64, 2))),
        ("sessions_10k_first_turns_s", json!(round(f.sessions_s, 1))),
    ]
}

fn mib(kb: u64) -> f64 {
    round(kb as f64 / 1024.0, 2)
}

/// Set by `make bench` to the binary `make static` built, when it could build it.
const STATIC_ENV: &str = "BENCH_STATIC_BINARY";
/// Messages of each short-load run that compares the two builds' throughput.
const SHORT_LOAD_MESSAGES: usize = 3000;
const SHORT_LOAD_CHATS: i64 = 100;

/// The static (musl) build beside the glibc one, or why it was not measured.
enum StaticBuild {
    NotMeasured(String),
    Measured {
        binary_bytes: u64,
        footprint: Footprint,
        /// msg/s of each short-load run: (glibc build, static build), run alternately.
        load: (Vec<f64>, Vec<f64>),
    },
}

/// The static build: its size, its footprint as [`bench_footprint`] measures the glibc
/// one (with a 1 s idle window: its idle CPU is not reported), and the short load on both
/// builds alternately, so that what musl's allocator costs is seen on equal terms.
fn bench_static(pinned_dir: &Path, texts: &mut Texts) -> StaticBuild {
    let hint =
        "`make static` needs `rustup target add x86_64-unknown-linux-musl` and musl-gcc (`apt-get install musl-tools`)";
    let Some(built) = std::env::var_os(STATIC_ENV).filter(|p| !p.is_empty()).map(PathBuf::from) else {
        return StaticBuild::NotMeasured(format!("static build not measured ({hint})"));
    };
    if !built.is_file() {
        return StaticBuild::NotMeasured(format!("static build not measured: no {} ({hint})", built.display()));
    }
    // Pinned like the glibc build, so a rebuild meanwhile cannot swap it.
    let binary = pinned_dir.join("switchboard-static");
    if std::fs::hard_link(&built, &binary).is_err() {
        std::fs::copy(&built, &binary).expect("copy the static binary");
    }
    let binary_bytes = std::fs::metadata(&binary).expect("the static binary").len();
    let footprint = bench_footprint(&binary, Duration::from_secs(1), texts);
    let mut load = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        load.0.push(short_load(&process::binary(), texts));
        load.1.push(short_load(&binary, texts));
    }
    StaticBuild::Measured { binary_bytes, footprint, load }
}

/// One bot on `binary`: [`SHORT_LOAD_MESSAGES`] messages over [`SHORT_LOAD_CHATS`] chats
/// (after an untimed first turn each), pushed at once; msg/s to the last reply.
fn short_load(binary: &Path, texts: &mut Texts) -> f64 {
    eprintln!("short load on {}: {SHORT_LOAD_MESSAGES} messages over {SHORT_LOAD_CHATS} chats", binary.display());
    let tg = FastTelegram::start(TOKEN);
    let config = format!("{OPEN_ACCESS}{}", process::telegram_table("tg", &tg.url(), TOKEN, process::NO_LIMITS));
    let mut gw = Gateway::start_binary(binary, "", &config);
    if tg.wait_first_poll(Instant::now() + Duration::from_secs(10)).is_none() {
        gw.fail("no getUpdates within 10 s of the start");
    }
    exchange(&tg, &mut gw, &texts.spread(1, SHORT_LOAD_CHATS, SHORT_LOAD_CHATS as usize), "echo: ");
    let messages = texts.spread(1, SHORT_LOAD_CHATS, SHORT_LOAD_MESSAGES);
    let (pushed, replies) = exchange(&tg, &mut gw, &messages, "echo: ");
    SHORT_LOAD_MESSAGES as f64 / (last_arrival(&replies) - pushed).as_secs_f64()
}

/// `footprint.static`: the static build's figures, or `{"measured": false, "why": …}`.
fn static_json(build: &StaticBuild, glibc_binary_mb: Option<f64>) -> Value {
    let (binary_bytes, footprint, load) = match build {
        StaticBuild::NotMeasured(why) => return json!({ "measured": false, "why": why }),
        StaticBuild::Measured { binary_bytes, footprint, load } => (binary_bytes, footprint, load),
    };
    let best = |runs: &[f64]| runs.iter().copied().fold(0.0, f64::max);
    let (glibc_best, static_best) = (best(&load.0), best(&load.1));
    let mut json = footprint_figures(*binary_bytes, footprint);
    json["measured"] = json!(true);
    json["binary_bytes"] = json!(binary_bytes);
    json["threads"] = json!(footprint.idle.threads);
    for (key, value) in footprint_details(footprint) {
        json[key] = value;
    }
    json["short_load"] = json!({
        "what": format!("{SHORT_LOAD_MESSAGES} messages over {SHORT_LOAD_CHATS} chats pushed at once, echo agent, best of {RUNS}, both builds alternately"),
        "glibc_msg_per_s": round(glibc_best, 1),
        "static_msg_per_s": round(static_best, 1),
        "static_over_glibc": round(static_best / glibc_best.max(1e-9), 3),
        "glibc_runs": rounded(&load.0, 1),
        "static_runs": rounded(&load.1, 1),
    });
    if let Some(glibc) = glibc_binary_mb {
        json["binary_mb_glibc"] = json!(glibc);
    }
    json
}

/// The footprint rows of the table: the glibc build, then the static one.
fn footprint_rows(fp: &Value) -> Vec<(String, String, &'static str, Option<bool>)> {
    let mut rows = Vec::new();
    let st = &fp["static"];
    let builds: &[(&str, &Value)] =
        if st["measured"] == json!(true) { &[("", fp), ("static: ", st)] } else { &[("", fp)] };
    for (prefix, b) in builds {
        rows.push((format!("{prefix}binary (MB)"), num(&b["binary_mb"]), "<= 3", Some(f(&b["binary_mb"]) <= 3.0)));
        rows.push((
            format!("{prefix}idle RSS (MB)"),
            num(&b["idle_rss_mb"]),
            "<= 4",
            Some(f(&b["idle_rss_mb"]) <= 4.0),
        ));
        let rss = &b["rss_10k_sessions_mb"];
        rows.push((format!("{prefix}RSS, 10k sessions (MB)"), num(rss), "<= 12", Some(f(rss) <= 12.0)));
    }
    if st["measured"] == json!(true) {
        let load = &st["short_load"];
        rows.push(("short load, glibc (msg/s)".into(), num(&load["glibc_msg_per_s"]), "", None));
        rows.push(("short load, static (msg/s)".into(), num(&load["static_msg_per_s"]), "", None));
        rows.push(("static / glibc throughput".into(), num(&load["static_over_glibc"]), "", None));
    } else {
        rows.push((st["why"].as_str().unwrap_or("static build not measured").to_string(), String::new(), "", None));
    }
    rows
}

fn print_rows(rows: &[(String, String, String, Option<bool>)]) {
    println!("\n{:<32} {:>12}  {:<8} met?", "metric", "value", "target");
    for (metric, value, target, met) in rows {
        println!("{metric:<32} {value:>12}  {target:<8} {}", met.map_or("", |m| if m { "yes" } else { "NO" }));
    }
}

/// A state directory's usage: (top-level name, bytes, files), from [`process::dir_usage`].
type Usage = Vec<(String, u64, u64)>;

/// What the soak saw.
struct Soak {
    /// (messages answered so far, RSS and its anonymous part in KiB) at each sample.
    rss: Vec<(usize, u64, u64)>,
    /// `/proc/PID/io` (write_bytes, wchar) at the baseline and at the end.
    io: ((u64, u64), (u64, u64)),
    /// The state directory at the baseline and at the end: (top-level name, bytes, files).
    state: (Usage, Usage),
    /// Seconds from each round's push to its last reply, summed.
    seconds: f64,
}

/// One echo gateway, one bot: [`SOAK_MESSAGES`] messages, one per chat a round over
/// [`SOAK_CHATS`] chats, every reply checked; RSS 0.5 s after every [`SOAK_SAMPLE`]th
/// reply, the state directory and the write counters at the baseline and at the end.
/// `msg_per_s` counts only the rounds, from each push to its last reply.
fn bench_soak(texts: &mut Texts) -> Soak {
    eprintln!("soak: {SOAK_MESSAGES} messages over {SOAK_CHATS} chats, dedup_window {SOAK_DEDUP_WINDOW}");
    let tg = FastTelegram::start(TOKEN);
    let config = format!("{OPEN_ACCESS}{}", process::telegram_table("tg", &tg.url(), TOKEN, process::NO_LIMITS));
    let mut gw = Gateway::start_with(&format!("dedup_window = \"{SOAK_DEDUP_WINDOW}\"\n"), &config);
    if tg.wait_first_poll(Instant::now() + Duration::from_secs(10)).is_none() {
        gw.fail("no getUpdates within 10 s of the start");
    }
    let (mut rss, mut base_io, mut base_state) = (Vec::new(), (0, 0), Vec::new());
    let mut seconds = 0.0;
    for round in 1..=SOAK_MESSAGES / SOAK_CHATS as usize {
        let messages = texts.spread(5_000_001, SOAK_CHATS, SOAK_CHATS as usize);
        let (pushed, replies) = exchange(&tg, &mut gw, &messages, "echo: ");
        seconds += (last_arrival(&replies) - pushed).as_secs_f64();
        let answered = round * SOAK_CHATS as usize;
        if !answered.is_multiple_of(SOAK_SAMPLE) {
            continue;
        }
        thread::sleep(Duration::from_millis(500));
        gw.assert_running("the soak");
        let sample = gw.sample();
        let kb = sample.rss_kb;
        rss.push((answered, kb, sample.rss_anon_kb));
        if answered == SOAK_BASELINE {
            base_io = gw.io_bytes();
            base_state = process::dir_usage(&gw.state_dir());
        }
        eprintln!(
            "soak: {answered} answered, RSS {:.2} MB (anonymous {:.2} MB), {} threads",
            kb as f64 / 1024.0,
            sample.rss_anon_kb as f64 / 1024.0,
            sample.threads
        );
    }
    Soak { rss, io: (base_io, gw.io_bytes()), state: (base_state, process::dir_usage(&gw.state_dir())), seconds }
}

impl Soak {
    fn to_json(&self) -> Value {
        let mib = |kb: u64| round(kb as f64 / 1024.0, 2);
        let at = |n: usize| self.rss.iter().find(|(m, _, _)| *m == n).map_or((0, 0), |(_, kb, anon)| (*kb, *anon));
        let ((base, base_anon), (end, end_anon)) = (at(SOAK_BASELINE), at(SOAK_MESSAGES));
        let after_base = (SOAK_MESSAGES - SOAK_BASELINE) as f64;
        let ((w0, c0), (w1, c1)) = self.io;
        let usage = |state: &[(String, u64, u64)]| -> Value {
            let by_name: serde_json::Map<String, Value> = state
                .iter()
                .map(|(name, bytes, files)| {
                    (name.clone(), json!({ "mb": round(*bytes as f64 / 1048576.0, 2), "files": files }))
                })
                .collect();
            let total: u64 = state.iter().map(|(_, bytes, _)| bytes).sum();
            json!({ "total_mb": round(total as f64 / 1048576.0, 2), "by_dir": by_name })
        };
        json!({
            "messages": SOAK_MESSAGES,
            "chats": SOAK_CHATS,
            "dedup_window": SOAK_DEDUP_WINDOW,
            "rss_after_20k_mb": mib(base),
            "rss_end_mb": mib(end),
            "rss_growth_mb": round((end as f64 - base as f64) / 1024.0, 2),
            "rss_anon_after_20k_mb": mib(base_anon),
            "rss_anon_end_mb": mib(end_anon),
            "rss_anon_growth_mb": round((end_anon as f64 - base_anon as f64) / 1024.0, 2),
            "rss_curve_mb": "[messages, RSS, anonymous part of the RSS]",
            "rss_curve": self.rss.iter().map(|(n, kb, anon)| json!([n, mib(*kb), mib(*anon)])).collect::<Vec<_>>(),
            "state_dir_after_20k": usage(&self.state.0),
            "state_dir_end": usage(&self.state.1),
            "write_bytes_per_msg": round(w1.saturating_sub(w0) as f64 / after_base, 1),
            "wchar_per_msg": round(c1.saturating_sub(c0) as f64 / after_base, 1),
            "msg_per_s": round(SOAK_MESSAGES as f64 / self.seconds.max(1e-9), 1),
        })
    }
}

/// The soak's rows, for `BENCH_ONLY=soak`.
fn print_soak(soak: &Value) {
    println!("\n{:<32} {:>12}  {:<8} met?", "metric", "value", "target");
    for (metric, value, target, met) in soak_rows(soak) {
        println!("{metric:<32} {value:>12}  {target:<8} {}", met.map_or("", |m| if m { "yes" } else { "NO" }));
    }
}

fn soak_rows(soak: &Value) -> Vec<(&'static str, String, &'static str, Option<bool>)> {
    vec![
        ("soak: RSS after 20k (MB)", num(&soak["rss_after_20k_mb"]), "", None),
        ("soak: RSS after 200k (MB)", num(&soak["rss_end_mb"]), "", None),
        ("soak: RSS growth (MB)", num(&soak["rss_growth_mb"]), "<= 1", Some(f(&soak["rss_growth_mb"]) <= 1.0)),
        ("soak: anonymous RSS growth (MB)", num(&soak["rss_anon_growth_mb"]), "", None),
        ("soak: state dir at end (MB)", num(&soak["state_dir_end"]["total_mb"]), "", None),
        ("soak: bytes written per msg", num(&soak["write_bytes_per_msg"]), "", None),
        ("soak: msg/s", num(&soak["msg_per_s"]), "", None),
    ]
}

// ---------------------------------------------------------------------------------------
// Results

struct Results {
    binary_bytes: u64,
    startup: Vec<f64>,
    retry: Vec<f64>,
    /// Messages per second of each raw-loop run.
    raw_loop: Vec<f64>,
    fake_capacity: f64,
    load: Load,
    agent: f64,
    footprint: Footprint,
    idle_window: Duration,
    /// The 1-minute load average before and after the run.
    load_avg: (f64, f64),
}

impl Results {
    fn to_json(&self) -> Value {
        let best = |runs: &[f64]| runs.iter().copied().fold(0.0, f64::max);
        let throughput: HashMap<i64, f64> = self.load.throughput.iter().map(|(c, runs)| (*c, best(runs))).collect();
        let raw_loop = best(&self.raw_loop);
        let gateway_best = throughput.values().copied().fold(0.0, f64::max);
        let latency = Percentiles::of(&self.load.latency_ms);
        let retry_abs: Vec<f64> = self.retry.iter().map(|e| e.abs()).collect();
        let f = &self.footprint;
        let idle_cpu_s = f.idle_ticks as f64 / process::clock_ticks() as f64;
        let mib = |kb: u64| round(kb as f64 / 1024.0, 2);
        let (rss_5k, rss_10k) = f.sessions_rss_kb;
        json!({
            "date": today(),
            "machine": machine(),
            "throughput": {
                "chats_1": round(throughput[&1], 1),
                "chats_100": round(throughput[&100], 1),
                "chats_1000": round(throughput[&1000], 1),
                "raw_loop": round(raw_loop, 1),
                "ratio": round(gateway_best / raw_loop, 3),
            },
            "latency_ms": { "p50": round(latency.p50, 2), "p99": round(latency.p99, 2), "max": round(latency.max, 2) },
            "footprint": {
                "binary_mb": round(self.binary_bytes as f64 / (1024.0 * 1024.0), 2),
                "idle_rss_mb": mib(f.idle.rss_kb),
                "rss_10k_sessions_mb": mib(rss_10k),
                "threads": f.idle.threads,
            },
            "idle_cpu_s_per_min": round(idle_cpu_s * 60.0 / self.idle_window.as_secs_f64(), 3),
            "startup_ms": round(median(&self.startup), 1),
            "retry_error_ms": round(retry_abs.iter().copied().fold(0.0, f64::max), 1),
            "agent_burst_50": { "total_s": round(self.agent, 3), "msg_per_s": round(AGENT_CHATS as f64 / self.agent, 1) },
            "details": {
                "units": "MB = 2^20 bytes (the unit /proc reports memory in); times in ms or s; rates in messages per second",
                "binary_bytes": self.binary_bytes,
                "throughput_messages_per_run": THROUGHPUT_MESSAGES,
                "throughput_runs": self.load.throughput.iter().map(|(c, runs)| (c.to_string(), rounded(runs, 1))).collect::<HashMap<_, _>>(),
                "throughput_ratio_uses": "the best of chats_1, chats_100 and chats_1000 over raw_loop; each the best of its runs",
                "raw_loop_client": "ureq 3, one Agent from switchboard::net::http::agent, one keep-alive connection, phased timeouts as the outlet",
                "raw_loop_runs": rounded(&self.raw_loop, 1),
                "throughput_cpu_us_per_msg": self.load.cost.iter().map(|(c, cost)| (c.to_string(), round(cost.cpu_us, 1))).collect::<HashMap<_, _>>(),
                "throughput_context_switches_per_msg": self.load.cost.iter().map(|(c, cost)| (c.to_string(), round(cost.switches, 1))).collect::<HashMap<_, _>>(),
                "fake_capacity_raw_tcp_msg_per_s": round(self.fake_capacity, 1),
                "latency_samples": self.load.latency_ms.len(),
                "latency_mean_ms": round(self.load.latency_ms.iter().sum::<f64>() / self.load.latency_ms.len() as f64, 2),
                "startup_runs_ms": rounded(&self.startup, 1),
                "retry_errors_ms": rounded(&self.retry, 1),
                "retry_error_mean_ms": round(retry_abs.iter().sum::<f64>() / retry_abs.len() as f64, 1),
                "idle_rss_anon_mb": mib(f.idle.rss_anon_kb),
                "idle_rss_file_mb": mib(f.idle.rss_file_kb),
                "idle_pss_mb": mib(f.idle.pss_kb),
                "rss_5k_sessions_mb": mib(rss_5k),
                "rss_per_session_kb": round((rss_10k as f64 - rss_5k as f64) / (SESSIONS / 2) as f64, 2),
                "sessions_10k_first_turns_s": round(f.sessions_s, 1),
                "idle_window_s": self.idle_window.as_secs(),
                "idle_cpu_s": round(idle_cpu_s, 3),
                "idle_get_updates_calls": f.idle_polls,
                "state_dir_fs": state_dir_fs(),
                "load_average_before_after": [round(self.load_avg.0, 2), round(self.load_avg.1, 2)],
            },
        })
    }
}

fn rounded(values: &[f64], places: i32) -> Vec<f64> {
    values.iter().map(|v| round(*v, places)).collect()
}

struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles.
    fn of(samples: &[f64]) -> Percentiles {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Percentiles { p50: rank(0.50), p99: rank(0.99), max: sorted[sorted.len() - 1] }
    }
}

fn median(values: &[f64]) -> f64 {
    Percentiles::of(values).p50
}

fn round(v: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (v * scale).round() / scale
}

/// The table: metric, value, target, met?
fn print_table(r: &Value) {
    let tp = &r["throughput"];
    let fp = &r["footprint"];
    let rows: Vec<(&str, String, &str, Option<bool>)> = vec![
        ("throughput, 1 chat (msg/s)", num(&tp["chats_1"]), "", None),
        ("throughput, 100 chats (msg/s)", num(&tp["chats_100"]), "", None),
        ("throughput, 1000 chats (msg/s)", num(&tp["chats_1000"]), "", None),
        ("raw sendMessage loop (msg/s)", num(&tp["raw_loop"]), "", None),
        ("gateway / raw loop", num(&tp["ratio"]), ">= 0.8", Some(f(&tp["ratio"]) >= 0.8)),
        ("latency p50 (ms)", num(&r["latency_ms"]["p50"]), "", None),
        ("latency p99 (ms)", num(&r["latency_ms"]["p99"]), "<= 5", Some(f(&r["latency_ms"]["p99"]) <= 5.0)),
        ("latency max (ms)", num(&r["latency_ms"]["max"]), "", None),
        ("threads, idle", num(&fp["threads"]), "", None),
        ("idle CPU (s/min)", num(&r["idle_cpu_s_per_min"]), "<= 0.05", Some(f(&r["idle_cpu_s_per_min"]) <= 0.05)),
        ("startup (ms)", num(&r["startup_ms"]), "<= 20", Some(f(&r["startup_ms"]) <= 20.0)),
        ("retry error, max (ms)", num(&r["retry_error_ms"]), "<= 20", Some(f(&r["retry_error_ms"]) <= 20.0)),
        ("agent burst 50: total (s)", num(&r["agent_burst_50"]["total_s"]), "", None),
        ("agent burst 50: msg/s", num(&r["agent_burst_50"]["msg_per_s"]), "", None),
    ];
    let rows: Vec<_> = rows
        .into_iter()
        .chain(soak_rows(&r["soak"]))
        .map(|(metric, value, target, met)| (metric.to_string(), value, target, met))
        .chain(footprint_rows(fp))
        .map(|(metric, value, target, met)| (metric, value, target.to_string(), met))
        .chain(support::real_latency::rows(r))
        .collect();
    println!("\n{} on {}", r["date"].as_str().unwrap_or("?"), r["machine"].as_str().unwrap_or("?"));
    print_rows(&rows);
}

fn num(v: &Value) -> String {
    v.to_string()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------
// Where and when

/// Today as `YYYY-MM-DD` (UTC).
fn today() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").as_secs() as i64;
    let (year, month, day) = switchboard::session::civil_from_days(secs.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}")
}

/// The CPU model, the core count and the memory, e.g. `AMD EPYC, 2 cores, 24 GB`.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    format!("{model}, {cores} cores, {} GB RAM, Linux", (mem_kb as f64 / 1024.0 / 1024.0).round())
}

/// The 1-minute load average: how busy the machine was besides the bench.
fn loadavg() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// The file system type holding the temporary state directories (fsync cost depends on it).
fn state_dir_fs() -> String {
    let out = std::process::Command::new("df").args(["--output=fstype"]).arg(std::env::temp_dir()).output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().nth(1).map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}
