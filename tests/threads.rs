/*!
Threads per message (issue 8 §4), through the real binary against the fake Bot API.

A gateway in steady state keeps the threads it has and starts none per request: none per
long poll (a stop shuts the poll's connection down instead of a helper thread waiting on
it) and none per name lookup of an IP address. Counted with a census of
`/proc/PID/task` (see `support/threads.rs`), which can only undercount; each round also
samples while the next long poll is held, so a thread per poll is always seen.
*/

mod support;

use std::time::Duration;

use support::deadline;
use support::fake_telegram::{FakeTelegram, TOKEN};
use support::gateway::{Gateway, OPEN_ACCESS, telegram};
use support::threads::{ThreadCensus, live_threads};

const SOON: Duration = Duration::from_secs(10);

/// Messages that start what a gateway keeps (workers, the typing thread) before counting.
const WARM_UP: usize = 10;
const MESSAGES: usize = 200;

/// Issue 8 §4: `Context::interruptible` started a thread per long poll and ureq one per
/// request (its resolver, even for `127.0.0.1`): several threads per message. Target: at
/// most 10 threads created per 1,000 messages, so at most 2 over these 200.
#[test]
fn r_no_thread_is_created_per_message_or_long_poll() {
    let fake = FakeTelegram::start(TOKEN);
    let g = Gateway::start(&format!("{OPEN_ACCESS}{}", telegram("tg", &fake.url(), TOKEN)));
    g.wait_platform("tg", "connected", SOON);
    let census = ThreadCensus::start(g.pid());
    for n in 0..WARM_UP {
        round(&fake, &census, n, &g);
    }
    let warm = census.seen();
    for n in WARM_UP..WARM_UP + MESSAGES {
        round(&fake, &census, n, &g);
    }
    let created = census.seen() - warm;
    census.sample();
    let idle: Vec<String> = live_threads(g.pid()).into_iter().map(|(_, name)| name).collect();
    eprintln!(
        "threads: {warm} seen after {WARM_UP} messages, {created} more over {MESSAGES} \
         (≈ {} per 1,000), {} alive when idle: {}",
        created * 1000 / MESSAGES,
        idle.len(),
        idle.join(", ")
    );
    assert!(created <= 2, "{created} threads created over {MESSAGES} messages; seen:\n{}", census.describe());
}

/// One message in, its reply out, and the next long poll held (when a thread of its own
/// would be alive): sample then.
fn round(fake: &FakeTelegram, census: &ThreadCensus, n: usize, g: &Gateway) {
    let polls = fake.count("getUpdates");
    let chat = 100 + (n % 20) as i64;
    fake.push_text(chat, chat, &format!("message {n}"));
    let sent = fake.wait_sent(n + 1, deadline(SOON));
    assert_eq!(sent.len(), n + 1, "no reply to message {n}\n{}", g.log());
    assert!(fake.wait_count("getUpdates", polls + 1, deadline(SOON)) > polls, "no next poll\n{}", g.log());
    census.sample();
}
