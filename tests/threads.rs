/*!
Threads per message (issue 8 §4), through the real binary against the fake Bot API.

A gateway in steady state keeps the threads it has and starts none per request: none per
long poll (a stop shuts the poll's connection down instead of a helper thread waiting on
it) and none per name lookup of an IP address. Counted with a census of
`/proc/PID/task` (see `support/threads.rs`), which can only undercount; each round also
samples while the next long poll is held (and, with a model, while the fake model holds
its request), so a thread per poll or per model request is always seen.
*/

mod support;

use std::time::Duration;

use support::deadline;
use support::fake_openai::FakeOpenAi;
use support::fake_telegram::{FakeTelegram, TOKEN};
use support::gateway::{Gateway, OPEN_ACCESS, telegram};
use support::threads::{ThreadCensus, live_threads};

const SOON: Duration = Duration::from_secs(10);

/// Messages that start what a gateway keeps (workers, the typing thread) before counting.
const WARM_UP: usize = 10;
const MESSAGES: usize = 200;
/// The target is at most 10 threads created per 1,000 messages.
const MOST_CREATED: usize = MESSAGES * 10 / 1000;

/// Issue 8 §4: `Context::interruptible` started a thread per long poll and ureq one per
/// request (its resolver, even for `127.0.0.1`): several threads per message. Target: at
/// most 10 threads created per 1,000 messages, so at most 2 over these 200.
#[test]
fn r_no_thread_is_created_per_message_or_long_poll() {
    let fake = FakeTelegram::start(TOKEN);
    let g = Gateway::start(&format!("{OPEN_ACCESS}{}", telegram("tg", &fake.url(), TOKEN)));
    let created = count(&fake, &g, None, false);
    assert!(created <= MOST_CREATED, "{created} threads created over {MESSAGES} messages");
}

/// Issue 8 §4, the same through the `openai` backend, whose every request ran on a
/// thread of its own (`agent-openai`): 200 threads over 200 messages. The exchange now
/// runs on the turn's thread, a cancel shutting its connection down.
#[test]
fn no_thread_is_created_per_model_request() {
    let fake = FakeTelegram::start(TOKEN);
    let model = FakeOpenAi::start();
    let agent = format!("[agent]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\n", model.url());
    let g = Gateway::start(&format!("{OPEN_ACCESS}{agent}{}", telegram("tg", &fake.url(), TOKEN)));
    let created = count(&fake, &g, Some(&model), false);
    assert!(created <= MOST_CREATED, "{created} threads created over {MESSAGES} messages");
}

/// Issue 8 §4, the same with `stream = true`: the stream's read loop runs on the
/// turn's thread too.
#[test]
fn no_thread_is_created_per_streamed_model_request() {
    let fake = FakeTelegram::start(TOKEN);
    let model = FakeOpenAi::start();
    let agent =
        format!("[agent]\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"m\"\nstream = true\n", model.url());
    let g = Gateway::start(&format!("{OPEN_ACCESS}{agent}{}", telegram("tg", &fake.url(), TOKEN)));
    let created = count(&fake, &g, Some(&model), true);
    assert_eq!(fake.count("editMessageText"), WARM_UP + MESSAGES, "each answer ends with an edit of its preview");
    assert!(created <= MOST_CREATED, "{created} threads created over {MESSAGES} messages");
}

/// Issue 8 §4, the same through the `command` backend, which wrote the child's stdin
/// and read its stdout and stderr on three threads per turn. The command sleeps a
/// moment, so that threads of the turn live long enough for the census to see them.
#[test]
fn no_thread_is_created_per_command_turn() {
    let fake = FakeTelegram::start(TOKEN);
    let agent = "[agent]\nbackend = \"command\"\ncommand = [\"sh\", \"-c\", \"read -r turn; sleep 0.05; echo ok\"]\n";
    let g = Gateway::start(&format!("{OPEN_ACCESS}{agent}{}", telegram("tg", &fake.url(), TOKEN)));
    let created = count(&fake, &g, None, false);
    assert!(created <= MOST_CREATED, "{created} threads created over {MESSAGES} messages");
}

/// Run [`WARM_UP`] then [`MESSAGES`] messages through `g`; returns how many threads were
/// created during the latter. With a `model`, each answer is held a moment so that a
/// thread of the request is seen; `streamed` answers end with an edit.
fn count(fake: &FakeTelegram, g: &Gateway, model: Option<&FakeOpenAi>, streamed: bool) -> usize {
    g.wait_platform("tg", "connected", SOON);
    let census = ThreadCensus::start(g.pid());
    for n in 0..WARM_UP {
        round(fake, model, streamed, &census, n, g);
    }
    let warm = census.seen();
    for n in WARM_UP..WARM_UP + MESSAGES {
        round(fake, model, streamed, &census, n, g);
    }
    let created = census.seen() - warm;
    census.sample();
    let idle: Vec<String> = live_threads(g.pid()).into_iter().map(|(_, name)| name).collect();
    eprintln!(
        "threads: {warm} seen after {WARM_UP} messages, {created} more over {MESSAGES} \
         (≈ {} per 1,000), {} alive when idle: {}\nseen:\n{}",
        created * 1000 / MESSAGES,
        idle.len(),
        idle.join(", "),
        census.describe()
    );
    created
}

/// One message in, its reply out (a streamed one: its preview, then the final edit,
/// queued as the turn ends, so that the next turn does not overlap this one and start a
/// second turn thread), and the next long poll held (when a thread of its own would be
/// alive): sample then, and while the model holds its request.
fn round(
    fake: &FakeTelegram,
    model: Option<&FakeOpenAi>,
    streamed: bool,
    census: &ThreadCensus,
    n: usize,
    g: &Gateway,
) {
    let polls = fake.count("getUpdates");
    let chat = 100 + (n % 20) as i64;
    if let Some(model) = model {
        model.push_slow("ok", Duration::from_millis(50));
    }
    fake.push_text(chat, chat, &format!("message {n}"));
    if let Some(model) = model {
        assert!(model.wait_requests(n + 1, deadline(SOON)) > n, "no model request for message {n}\n{}", g.log());
        census.sample();
    }
    let sent = fake.wait_sent(n + 1, deadline(SOON));
    assert_eq!(sent.len(), n + 1, "no reply to message {n}\n{}", g.log());
    if streamed {
        assert!(fake.wait_count("editMessageText", n + 1, deadline(SOON)) > n, "no final edit\n{}", g.log());
    }
    assert!(fake.wait_count("getUpdates", polls + 1, deadline(SOON)) > polls, "no next poll\n{}", g.log());
    census.sample();
}
