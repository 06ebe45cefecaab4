/*!
The agent backends through the library's public API: the `openai` backend against a fake
OpenAI-compatible server (replies, retries, failure classes, streaming, cancellation),
the `command` backend against small shell scripts (stdin, exit codes, timeout and cancel
killing the whole process tree), and the `[agent]` table as `gateway.toml` holds it.

Every wait is a condition with a deadline; time is asserted as a bound, never guessed.
*/

mod support;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use switchboard::agent::{
    self, Agent, AgentBackend, AgentConfig, AgentError, AgentErrorKind, Cancel, CommandSettings, OpenAiSettings, Reply,
    Turn,
};
use switchboard::config::{self, Secret};
use switchboard::message::{ChatMessage, Role, Source};

use support::fake_openai::{Answer, FakeOpenAi, api_error, context_length_exceeded};
use support::{deadline, unused_url, wait_until};

const KEY: &str = "sk-test-0123456789abcdef";
const SOON: Duration = Duration::from_secs(5);

fn source() -> Source {
    Source { user_id: Some("7".into()), user_name: Some("ann".into()), ..Source::dm("tg", "42") }
}

/// Settings for `fake` with a key and millisecond retry waits.
fn settings(fake: &FakeOpenAi) -> OpenAiSettings {
    OpenAiSettings {
        api_key: Some(Secret::new(KEY)),
        retry_wait: Duration::from_millis(10),
        timeout: Duration::from_secs(5),
        ..OpenAiSettings::new(&fake.url(), "gpt-test")
    }
}

fn openai(settings: OpenAiSettings, stream: bool) -> Box<dyn Agent> {
    agent::build(&AgentConfig { backend: AgentBackend::OpenAi(settings), stream, ..AgentConfig::default() }, &[])
}

fn command(argv: &[&str], timeout: Duration) -> Box<dyn Agent> {
    let settings = CommandSettings { timeout, ..CommandSettings::new(argv) };
    agent::build(&AgentConfig { backend: AgentBackend::Command(settings), ..AgentConfig::default() }, &[])
}

/// One turn saying `text` with a short history, no cancel, deltas ignored.
fn ask(agent: &dyn Agent, text: &str) -> Result<Reply, AgentError> {
    ask_with(agent, text, &Cancel::new())
}

fn ask_with(agent: &dyn Agent, text: &str, cancel: &Cancel) -> Result<Reply, AgentError> {
    let history = [ChatMessage::new(Role::User, "hi"), ChatMessage::new(Role::Assistant, "hello")];
    let source = source();
    let turn = Turn { text, session_key: "tg:dm:42", history: &history, source: &source };
    agent.reply(&turn, cancel, &mut |_| {})
}

/// Neither text of `e` (nor its `Display`) holds the API key.
fn assert_no_key(e: &AgentError) {
    for text in [&e.user_message, &e.detail, &e.to_string()] {
        assert!(!text.contains(KEY) && !text.contains("sk-test"), "the key leaked: {e:?}");
    }
}

// ---------------------------------------------------------------------------------------
// openai

#[test]
fn openai_sends_prompt_history_and_text_and_reads_reply_and_tokens() {
    let fake = FakeOpenAi::start();
    fake.push_reply_with_usage("Hello there!", 21, 4);
    let agent = openai(
        OpenAiSettings { system_prompt: Some("Be brief.".into()), max_tokens: Some(50), ..settings(&fake) },
        false,
    );
    assert!(!agent.streams());

    let reply = ask(&*agent, "how are you?").unwrap();
    assert_eq!(reply, Reply { text: "Hello there!".into(), input_tokens: 21, output_tokens: 4 });

    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/v1/chat/completions");
    assert_eq!(calls[0].authorization.as_deref(), Some(format!("Bearer {KEY}").as_str()));
    assert_eq!(calls[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        calls[0].body,
        json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "how are you?"},
            ],
            "max_tokens": 50,
        })
    );
}

#[test]
fn openai_without_a_key_sends_no_authorization() {
    let fake = FakeOpenAi::start();
    fake.set_reply("local model here");
    let agent = openai(OpenAiSettings { api_key: None, ..settings(&fake) }, false);
    assert_eq!(ask(&*agent, "hi").unwrap().text, "local model here");
    assert_eq!(fake.calls()[0].authorization, None);
}

#[test]
fn refused_key_is_final_with_a_safe_message() {
    let fake = FakeOpenAi::start();
    let refusal = api_error(&format!("Incorrect API key provided: {KEY}"), Some("invalid_api_key"));
    fake.fail_next(401, refusal, &[], 5);
    let e = ask(&*openai(settings(&fake), false), "hi").unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Unauthorized);
    assert_eq!(e.user_message, "The assistant is unavailable: the gateway's API key was refused.");
    assert!(e.detail.contains("401") && e.detail.contains("API key"), "{e:?}");
    assert_no_key(&e);
    assert_eq!(fake.requests().len(), 1, "a refused key is not retried");
}

#[test]
fn rate_limit_waits_for_retry_after_then_succeeds() {
    let fake = FakeOpenAi::start();
    fake.fail_next(429, api_error("Rate limit reached", None), &[("Retry-After", "1")], 1);
    fake.push_reply("after the wait");
    assert_eq!(ask(&*openai(settings(&fake), false), "hi").unwrap().text, "after the wait");
    let calls = fake.calls();
    assert_eq!(calls.len(), 2);
    let gap = calls[1].at - calls[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}, before Retry-After");
}

#[test]
fn server_errors_are_retried_up_to_max_retries() {
    let fake = FakeOpenAi::start();
    fake.fail_next(503, api_error("overloaded", None), &[], 1);
    fake.push_reply("second time lucky");
    let agent = openai(OpenAiSettings { max_retries: 2, ..settings(&fake) }, false);
    assert_eq!(ask(&*agent, "hi").unwrap().text, "second time lucky");
    assert_eq!(fake.requests().len(), 2);

    // A server quoting the key in its error text: the detail must not repeat it.
    fake.fail_next(500, api_error(&format!("boom with {KEY}"), None), &[], 3);
    let e = ask(&*agent, "hi").unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Failed);
    assert!(e.detail.contains("HTTP 500") && e.detail.contains("boom with ***"), "{e:?}");
    assert_no_key(&e);
    assert!(!e.user_message.contains("500"), "no server detail for the user: {e:?}");
    assert_eq!(fake.requests().len(), 2 + 3, "one request and max_retries = 2 retries");
}

#[test]
fn rate_limits_that_never_end_give_rate_limited() {
    let fake = FakeOpenAi::start();
    fake.fail_next(429, api_error("slow down", None), &[("Retry-After", "0")], 2);
    let e = ask(&*openai(OpenAiSettings { max_retries: 1, ..settings(&fake) }, false), "hi").unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::RateLimited);
    assert_eq!(fake.requests().len(), 2);
}

#[test]
fn a_long_retry_after_is_not_waited_for() {
    let fake = FakeOpenAi::start();
    fake.fail_next(429, api_error("come back tomorrow", None), &[("Retry-After", "86400")], 1);
    let e = ask(&*openai(settings(&fake), false), "hi").unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::RateLimited);
    assert!(e.detail.contains("not retried"), "{e:?}");
    assert_eq!(fake.requests().len(), 1);
}

#[test]
fn context_too_long_asks_for_new() {
    let fake = FakeOpenAi::start();
    fake.fail_next(400, context_length_exceeded(), &[], 1);
    let e = ask(&*openai(settings(&fake), false), "hi").unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::ContextTooLong);
    assert!(e.user_message.contains("/new"), "{e:?}");
    assert_eq!(fake.requests().len(), 1);
}

#[test]
fn unreachable_endpoint_is_retried_then_failed() {
    let settings = OpenAiSettings {
        max_retries: 1,
        retry_wait: Duration::from_millis(10),
        api_key: Some(Secret::new(KEY)),
        ..OpenAiSettings::new(&format!("{}/v1", unused_url()), "m")
    };
    let e = ask(&*openai(settings, false), "hi").unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Failed);
    assert!(e.detail.contains("connection refused"), "{e:?}");
    assert_no_key(&e);
}

#[test]
fn a_slow_answer_times_out() {
    let fake = FakeOpenAi::start();
    fake.push_slow("too late", Duration::from_secs(5));
    let agent = openai(OpenAiSettings { timeout: Duration::from_millis(300), ..settings(&fake) }, false);
    let e = ask(&*agent, "hi").unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Timeout);
    assert_eq!(fake.requests().len(), 1, "a timeout is not retried");
}

#[test]
fn streamed_pieces_arrive_in_order_as_they_are_sent() {
    let fake = FakeOpenAi::start();
    let pieces = ["Hel", "lo, ", "world", "!"];
    fake.push_stream(&pieces, Duration::from_millis(60));
    let agent = openai(settings(&fake), true);
    assert!(agent.streams());

    let mut deltas: Vec<(Instant, String)> = Vec::new();
    let source = source();
    let turn = Turn { text: "greet me", session_key: "k", history: &[], source: &source };
    let reply = agent.reply(&turn, &Cancel::new(), &mut |d| deltas.push((Instant::now(), d.to_string()))).unwrap();

    let texts: Vec<&str> = deltas.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(texts, pieces);
    assert_eq!(reply.text, pieces.concat());
    let spread = deltas[3].0 - deltas[0].0;
    assert!(spread >= Duration::from_millis(150), "the pieces came together ({spread:?}), not as streamed");
    assert_eq!(fake.requests()[0]["stream"], json!(true));
}

/// Issue 7, section 8: `timeout` bounds the whole turn, so even a stream that keeps
/// flowing ends when it passes (a per-read timer let it run on).
#[test]
fn issue7_agent_timeout_cuts_a_flowing_stream() {
    let fake = FakeOpenAi::start();
    let pieces = ["a", "b", "c", "d", "e", "f", "g", "h"];
    fake.push_stream(&pieces, Duration::from_millis(80));
    let agent = openai(OpenAiSettings { timeout: Duration::from_millis(300), ..settings(&fake) }, true);
    let e = ask(&*agent, "hi").unwrap_err();
    assert_eq!((e.kind, e.user_message.as_str()), (AgentErrorKind::Timeout, "The assistant took too long to answer."));
}

/// Run a turn saying "hi" on a thread; its result arrives on the receiver (so a turn
/// that never ends fails the test at the receiver's deadline instead of hanging it).
fn ask_on_thread(agent: Box<dyn Agent>) -> crossbeam_channel::Receiver<Result<Reply, AgentError>> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let _ = tx.send(ask(&*agent, "hi"));
    });
    rx
}

/// Issue 7, section 8: SSE keep-alive comments reset the read timer, so a server sending
/// nothing else held the turn forever. Now the turn ends at `timeout`, and the
/// connection is closed.
#[test]
fn issue7_agent_timeout_bounds_a_stream_of_keep_alives() {
    let fake = FakeOpenAi::start();
    fake.push(Answer::KeepAlive { every: Duration::from_millis(20) });
    let agent = openai(OpenAiSettings { timeout: Duration::from_millis(500), ..settings(&fake) }, true);
    let result = ask_on_thread(agent).recv_timeout(Duration::from_secs(20)).expect("the turn ends");
    assert_eq!(result.unwrap_err().kind, AgentErrorKind::Timeout);
    assert_eq!(fake.wait_hangups(1, deadline(SOON)), 1, "the connection was left open");
}

/// Issue 7, section 8: a stream that stalls after its first piece ends at `timeout`.
#[test]
fn issue7_agent_timeout_bounds_a_stalled_stream() {
    let fake = FakeOpenAi::start();
    fake.push(Answer::Stall { pieces: vec!["half an ans".into()] });
    let agent = openai(OpenAiSettings { timeout: Duration::from_millis(500), ..settings(&fake) }, true);
    let result = ask_on_thread(agent).recv_timeout(Duration::from_secs(20)).expect("the turn ends");
    assert_eq!(result.unwrap_err().kind, AgentErrorKind::Timeout);
}

#[test]
fn a_server_that_cannot_stream_answers_whole() {
    let fake = FakeOpenAi::start();
    // The fake answers JSON to a streaming request when told to by a 200 `Status`.
    let whole = json!({"choices": [{"message": {"content": "all at once"}}]});
    fake.fail_next(200, whole, &[], 1);
    let mut deltas = 0;
    let source = source();
    let turn = Turn { text: "hi", session_key: "k", history: &[], source: &source };
    let reply = openai(settings(&fake), true).reply(&turn, &Cancel::new(), &mut |_| deltas += 1).unwrap();
    assert_eq!((reply.text.as_str(), deltas), ("all at once", 0));
}

#[test]
fn a_stream_without_done_ends_with_the_text_so_far_and_tokens_are_kept() {
    let fake = FakeOpenAi::start();
    fake.push(Answer::Stream { pieces: vec!["partial ".into(), "answer".into()], delay: Duration::ZERO, done: false });
    assert_eq!(ask(&*openai(settings(&fake), true), "hi").unwrap().text, "partial answer");
    // A text answer to a streaming request comes as one piece, with usage.
    fake.push_reply_with_usage("whole", 9, 1);
    let reply = ask(&*openai(settings(&fake), true), "hi").unwrap();
    assert_eq!(reply, Reply { text: "whole".into(), input_tokens: 9, output_tokens: 1 });
}

#[test]
fn a_stalled_stream_times_out() {
    let fake = FakeOpenAi::start();
    fake.push_stream(&["never", "mind"], Duration::from_secs(5));
    let agent = openai(OpenAiSettings { timeout: Duration::from_millis(300), ..settings(&fake) }, true);
    let e = ask(&*agent, "hi").unwrap_err();
    assert_eq!(e.kind, AgentErrorKind::Timeout, "{e:?}");
}

/// Run a turn on a thread, cancel it once `started` holds, and return its result. It
/// must come within [`SOON`] of the cancel: every fake used with this answers (or
/// retries) far later, so a turn that ignored the cancel fails here, not by a stopwatch.
fn cancel_when(agent: Box<dyn Agent>, started: impl FnOnce() -> bool) -> Result<Reply, AgentError> {
    let cancel = Cancel::new();
    let turn_cancel = cancel.clone();
    let agent: Arc<dyn Agent> = Arc::from(agent);
    let (tx, rx) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let _ = tx.send(ask_with(&*agent, "hi", &turn_cancel));
    });
    assert!(started(), "the turn did not start in time");
    cancel.cancel();
    rx.recv_timeout(SOON).expect("the turn returns soon after the cancel")
}

#[test]
fn cancel_stops_a_slow_request_at_once() {
    let fake = FakeOpenAi::start();
    fake.push_slow("too late", Duration::from_secs(10));
    let result = cancel_when(openai(settings(&fake), false), || fake.wait_requests(1, deadline(SOON)) == 1);
    assert_eq!(result.unwrap_err().kind, AgentErrorKind::Cancelled);
}

#[test]
fn cancel_stops_a_stream_at_once() {
    let fake = FakeOpenAi::start();
    fake.push_stream(&["one", "two"], Duration::from_secs(10));
    let result = cancel_when(openai(settings(&fake), true), || fake.wait_requests(1, deadline(SOON)) == 1);
    assert_eq!(result.unwrap_err().kind, AgentErrorKind::Cancelled);
}

/// Issue 7, section 8: `/stop` was noticed only at the next data event, and the stream
/// read on in the background. Now the turn's socket is closed at once: the fake, still
/// sending keep-alives, sees the client hang up.
#[test]
fn issue7_stop_closes_the_stream_socket() {
    let fake = FakeOpenAi::start();
    fake.push(Answer::KeepAlive { every: Duration::from_millis(20) });
    let agent = openai(OpenAiSettings { timeout: Duration::from_secs(60), ..settings(&fake) }, true);
    let result = cancel_when(agent, || fake.wait_requests(1, deadline(SOON)) == 1);
    assert_eq!(result.unwrap_err().kind, AgentErrorKind::Cancelled);
    assert_eq!(fake.wait_hangups(1, deadline(SOON)), 1, "the stream's connection is still open");
}

/// The turn's timeout is longer than the 30 s asked for, so the agent waits them (with
/// the default 5 s it would give up on the 429 at once, and the test would race the
/// cancel against that answer); the cancel ends the wait within `SOON`.
#[test]
fn cancel_stops_the_wait_between_retries() {
    let fake = FakeOpenAi::start();
    fake.fail_next(429, api_error("wait", None), &[("Retry-After", "30")], 1);
    let settings = OpenAiSettings { timeout: Duration::from_secs(120), ..settings(&fake) };
    let result = cancel_when(openai(settings, false), || fake.wait_requests(1, deadline(SOON)) == 1);
    assert_eq!(result.unwrap_err().kind, AgentErrorKind::Cancelled);
}

// ---------------------------------------------------------------------------------------
// command

fn sh(script: &str, dir: &Path, timeout: Duration) -> Box<dyn Agent> {
    let dir = dir.to_str().expect("a UTF-8 temp dir");
    command(&["sh", "-c", script, "sh", dir], timeout)
}

/// Whether process `pid` is gone (or a zombie nobody reaped: it runs no more).
fn process_gone(pid: &str) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The pid written to `file`, once it is there.
fn read_pid(file: &Path) -> String {
    let mut pid = String::new();
    let written = wait_until(deadline(SOON), || {
        pid = fs::read_to_string(file).unwrap_or_default().trim().to_string();
        !pid.is_empty()
    });
    assert!(written, "{} was never written", file.display());
    pid
}

#[test]
fn command_reads_the_turn_as_json_and_answers_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let agent = sh(r#"cat > "$1/input.json"; echo "  the answer  ""#, dir.path(), SOON);
    assert!(!agent.streams());
    assert_eq!(ask(&*agent, "what now?").unwrap().text, "the answer");
    let input: serde_json::Value = serde_json::from_slice(&fs::read(dir.path().join("input.json")).unwrap()).unwrap();
    assert_eq!(input["text"], "what now?");
    assert_eq!(input["session_key"], "tg:dm:42");
    assert_eq!(input["history"], json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]));
    assert_eq!(input["source"]["platform"], "tg");
    assert_eq!(input["source"]["chat_id"], "42");
}

#[test]
fn command_failures_give_short_messages() {
    let dir = tempfile::tempdir().unwrap();
    let e = ask(&*sh("echo 'it broke' >&2; exit 3", dir.path(), SOON), "hi").unwrap_err();
    assert_eq!(
        (e.kind, e.user_message.as_str()),
        (AgentErrorKind::Failed, "The assistant failed to answer (exit status 3).")
    );
    let e = ask(&*sh("cat > /dev/null", dir.path(), SOON), "hi").unwrap_err();
    assert_eq!((e.kind, e.user_message.as_str()), (AgentErrorKind::Failed, "The assistant gave no answer."));
    let e = ask(&*command(&["/nonexistent/agent"], SOON), "hi").unwrap_err();
    assert_eq!((e.kind, e.user_message.as_str()), (AgentErrorKind::Failed, "The assistant could not be started."));
    assert!(e.detail.contains("/nonexistent/agent"), "{e:?}");
}

#[test]
fn command_ignoring_its_large_input_still_answers() {
    // More than a pipe buffer of history, never read: the writer must not deadlock.
    let history = vec![ChatMessage::new(Role::User, "x".repeat(1000)); 200];
    let source = source();
    let turn = Turn { text: "hi", session_key: "k", history: &history, source: &source };
    let agent = command(&["sh", "-c", "echo quick"], SOON);
    assert_eq!(agent.reply(&turn, &Cancel::new(), &mut |_| {}).unwrap().text, "quick");
}

/// Issue 8 §4: the pipes are served by one poll loop on the turn's thread instead of
/// three threads. A program echoing a large input fills stdout while stdin is still
/// being written, and floods stderr meanwhile: the loop must keep every pipe moving.
#[test]
fn command_pipes_full_both_ways_do_not_deadlock() {
    let text = "y".repeat(300_000);
    let source = source();
    let turn = Turn { text: &text, session_key: "k", history: &[], source: &source };
    let script = "head -c 200000 /dev/zero >&2; cat";
    let reply = command(&["sh", "-c", script], SOON).reply(&turn, &Cancel::new(), &mut |_| {}).unwrap();
    let echoed: serde_json::Value = serde_json::from_str(&reply.text).expect("the whole input came back");
    assert_eq!(echoed["text"].as_str().map(str::len), Some(text.len()));
}

/// A script that records its pid and its child's, then waits on the child.
const TREE: &str = r#"echo $$ > "$1/shell.pid"; sleep 30 & echo $! > "$1/child.pid"; wait"#;

#[test]
fn command_timeout_kills_the_whole_tree() {
    let dir = tempfile::tempdir().unwrap();
    let e = ask(&*sh(TREE, dir.path(), Duration::from_millis(500)), "hi").unwrap_err();
    assert_eq!(
        (e.kind, e.user_message.as_str()),
        (AgentErrorKind::Timeout, "The assistant took too long and was stopped.")
    );
    for file in ["shell.pid", "child.pid"] {
        let pid = read_pid(&dir.path().join(file));
        assert!(wait_until(deadline(SOON), || process_gone(&pid)), "{file} {pid} still runs");
    }
}

#[test]
fn cancel_kills_the_command_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let child_pid = dir.path().join("child.pid");
    let agent = sh(TREE, dir.path(), Duration::from_secs(30));
    let result = cancel_when(agent, || {
        read_pid(&child_pid);
        true
    });
    assert_eq!(result.unwrap_err().kind, AgentErrorKind::Cancelled);
    for file in ["shell.pid", "child.pid"] {
        let pid = read_pid(&dir.path().join(file));
        assert!(wait_until(deadline(SOON), || process_gone(&pid)), "{file} {pid} still runs");
    }
}

#[test]
fn echo_still_echoes() {
    assert_eq!(ask(&*agent::build(&AgentConfig::default(), &[]), "ping").unwrap().text, "echo: ping");
}

// ---------------------------------------------------------------------------------------
// [agent] in gateway.toml

/// Load `text` after a `[gateway]` table that needs nothing from the environment.
fn load(text: &str) -> Result<config::Config, String> {
    let text = format!("[gateway]\nlock_dir = \"/nonexistent/locks\"\n{text}");
    let env = |name: &str| (name == "OPENAI_KEY").then(|| KEY.to_string());
    config::parse_str(&text, Path::new("gateway.toml"), &env).map_err(|e| e.to_string())
}

#[test]
fn config_of_each_backend() {
    let c = load("[agent]\nbackend = \"openai\"\nbase_url = \"https://api.example.com/v1\"\nmodel = \"m\"\napi_key = \"${OPENAI_KEY}\"\nstream = true\nbusy = \"interrupt\"\n").unwrap();
    let AgentBackend::OpenAi(s) = &c.agent.backend else { panic!("{:?}", c.agent) };
    assert_eq!((s.base_url.as_str(), s.model.as_str()), ("https://api.example.com/v1", "m"));
    assert_eq!(s.api_key.as_ref().map(Secret::expose), Some(KEY));
    assert!(c.agent.stream);
    assert_eq!(c.agent.busy, agent::BusyMode::Interrupt);
    assert_eq!(c.agent.secrets(), [Secret::new(KEY)]);
    for shown in [c.agent.describe(), c.summary(), format!("{c:?}")] {
        assert!(!shown.contains(KEY), "the key is shown: {shown}");
    }

    let c = load(
        "[agent]\nbackend = \"command\"\ncommand = [\"./bot\", \"-q\"]\ntimeout = \"9s\"\nmax_concurrent_turns = 2\n",
    )
    .unwrap();
    assert_eq!(
        c.agent.backend,
        AgentBackend::Command(CommandSettings {
            timeout: Duration::from_secs(9),
            ..CommandSettings::new(&["./bot", "-q"])
        })
    );
    assert_eq!(c.agent.max_concurrent_turns, 2);
}

#[test]
fn keys_of_the_other_backend_are_rejected() {
    let e = load("[agent]\nbackend = \"command\"\ncommand = [\"x\"]\nmodel = \"m\"\n").unwrap_err();
    assert!(e.contains("gateway.toml:6:1: agent.model: unknown key"), "{e}");
    let e = load("[agent]\nbackend = \"openai\"\nbase_url = \"http://x/v1\"\nmodel = \"m\"\ncommand = [\"x\"]\n")
        .unwrap_err();
    assert!(e.contains("agent.command: unknown key"), "{e}");
    let e = load("[agent]\nbackend = \"openai\"\n").unwrap_err();
    assert!(e.contains("agent.base_url: required") && e.contains("agent.model: required"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Issue 7

/// Kills the gateway it holds when dropped, so a failed assertion leaves no process.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 7, section 5: the command agent inherited the whole environment, so `sh -c env`
/// as the command answered with the bot token. Now it gets only `[agent] env`, and not
/// even a listed variable that holds one of the config's secrets.
#[test]
fn issue7_command_env_is_an_allowlist_without_secrets() {
    let fake = support::fake_telegram::FakeTelegram::start(support::fake_telegram::TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state");
    let config = format!(
        "[gateway]\nstate_dir = \"{}\"\n{}{}[platforms.tg]\nkind = \"telegram\"\ntoken = \"${{SB_TEST_TG_TOKEN}}\"\n\
         api_base = \"{}\"\npoll_timeout = \"2s\"\nrequest_timeout = \"2s\"\n\
         [agent]\nbackend = \"command\"\ncommand = [\"sh\", \"-c\", \"env\"]\n\
         env = [\"PATH\", \"SB_TEST_TG_TOKEN\", \"SB_TEST_COPY\", \"SB_TEST_FINE\"]\n",
        state_dir.display(),
        support::gateway::reconnect(200, 20, 5000),
        support::gateway::OPEN_ACCESS,
        fake.url(),
    );
    fs::write(dir.path().join("gateway.toml"), config).unwrap();
    let token = support::fake_telegram::TOKEN;
    let child = std::process::Command::new(support::gateway::binary())
        .args(["--config", "gateway.toml", "run"])
        .current_dir(dir.path())
        .env("SWITCHBOARD_LOCK_DIR", dir.path().join("locks"))
        .env("SB_TEST_TG_TOKEN", token)
        .env("SB_TEST_COPY", format!("bot{token}"))
        .env("SB_TEST_FINE", "fine")
        .env("SB_TEST_UNLISTED", "unlisted")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .expect("start switchboard");
    let _gateway = KillOnDrop(child);

    fake.push_text(5, 5, "what is your environment?");
    let sent = fake.wait_sent(1, deadline(Duration::from_secs(20)));
    let log = || fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    let answer: String = sent.iter().map(|(_, text)| text.as_str()).collect();
    assert!(answer.contains("PATH=") && answer.contains("SB_TEST_FINE=fine"), "{answer}\nlog:\n{}", log());
    assert!(!answer.contains(token) && !answer.contains("SB_TEST_TG_TOKEN"), "the token leaked: {answer}");
    assert!(!answer.contains("SB_TEST_COPY") && !answer.contains("SB_TEST_UNLISTED"), "{answer}");
    let log = log();
    assert!(log.contains("`SB_TEST_TG_TOKEN` holds a secret") && log.contains("`SB_TEST_COPY` holds"), "{log}");
    assert!(!log.contains(token), "the token is in the log");
}

/// Issue 7, section 9: a background child holding stdout made `sh -c '(sleep 30)& echo
/// quick'` "take too long" and its answer was thrown away. The answer is complete when
/// the command exits; the background child is killed with its process group.
#[test]
fn issue7_command_answer_is_complete_when_the_command_exits() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"sleep 30 & echo $! > "$1/background.pid"; echo quick"#;
    assert_eq!(ask(&*sh(script, dir.path(), SOON), "hi").unwrap().text, "quick");
    let pid = read_pid(&dir.path().join("background.pid"));
    assert!(wait_until(deadline(SOON), || process_gone(&pid)), "the background child {pid} still runs");
    // The shape the issue quotes, output on both sides of the background job.
    let agent = command(&["sh", "-c", "echo one; (sleep 30)& echo two"], SOON);
    assert_eq!(ask(&*agent, "hi").unwrap().text, "one\ntwo");
}
