/*!
Conversations through the real binary: sessions, chat commands, access control and
pairing, durable delivery across outages, restarts and `kill -9`. The agent is a local
command (a small script) or a fake OpenAI-compatible server; the platform is the fake
Telegram Bot API.
*/

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use support::fake_openai::FakeOpenAi;
use support::fake_telegram::{FakeTelegram, TOKEN};
use support::gateway::{Gateway, OPEN_ACCESS, binary, reconnect, telegram};
use support::{deadline, wait_until};

const SOON: Duration = Duration::from_secs(10);

/// `[agent]` running `script` (Python, reading the turn as JSON on stdin) as the agent.
fn command_agent(dir: &Path, script: &str) -> String {
    let path = dir.join("agent.py");
    fs::write(&path, script).unwrap();
    format!("[agent]\nbackend = \"command\"\ncommand = [\"python3\", \"{}\"]\ntimeout = \"30s\"\n", path.display())
}

/// An agent that writes `started` into its directory, waits `secs`, then answers.
fn slow_agent(dir: &Path, secs: f64) -> String {
    let marker = dir.join("started");
    command_agent(
        dir,
        &format!(
            "import json, sys, time\nturn = json.load(sys.stdin)\nopen({marker:?}, 'a').write(turn['text'] + '\\n')\n\
             time.sleep({secs})\nprint('slow: ' + turn['text'])\n",
            marker = marker.display().to_string()
        ),
    )
}

/// A gateway in `dir` with one Telegram bot `tg` on `fake`, open to everyone, answered by
/// `agent` (an `[agent]` table, or "" for echo); returned once the bot is connected.
fn open_bot(dir: &Path, fake: &FakeTelegram, agent: &str) -> Gateway {
    let config = format!("{}{OPEN_ACCESS}{agent}{}", reconnect(200, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let g = Gateway::start_in(dir, &dir.join("locks"), &config);
    g.wait_platform("tg", "connected", SOON);
    g
}

fn texts(sent: &[(String, String)]) -> Vec<&str> {
    sent.iter().map(|(_, t)| t.as_str()).collect()
}

fn send_cli(dir: &Path, target: &str, text: &str) {
    let out = Command::new(binary())
        .args(["send", "--config", "gateway.toml", target, text])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "send failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_session_keeps_history_and_new_starts_afresh() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    // The agent answers with how many earlier messages it was given.
    let agent = command_agent(
        dir.path(),
        "import json, sys\nturn = json.load(sys.stdin)\nprint(f\"{turn['text']} after {len(turn['history'])}\")\n",
    );
    let _gateway = open_bot(dir.path(), &fake, &agent);
    for text in ["one", "two", "/new", "three"] {
        let n = fake.sent().len();
        fake.push_text(5, 5, text);
        fake.wait_sent(n + 1, deadline(SOON));
    }
    assert_eq!(texts(&fake.sent()), ["one after 0", "two after 2", "Started a new session.", "three after 0"]);
    let status_reply = {
        fake.push_text(5, 5, "/status");
        fake.wait_sent(5, deadline(SOON))[4].1.clone()
    };
    assert!(status_reply.contains("Session ") && status_reply.contains("Connected platforms: tg"), "{status_reply}");
}

#[test]
fn stop_during_a_slow_turn_answers_at_once_and_frees_the_session() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let _gateway = open_bot(dir.path(), &fake, &slow_agent(dir.path(), 60.0));
    fake.push_text(5, 5, "think hard");
    assert!(wait_until(deadline(SOON), || dir.path().join("started").exists()), "the agent never started");
    // Typing is shown while it runs.
    assert!(fake.wait_count("sendChatAction", 1, deadline(SOON)) >= 1);
    // The agent would answer after 60 s, well past the waits for both replies below.
    fake.push_text(5, 5, "/stop");
    let sent = fake.wait_sent(1, deadline(SOON));
    assert_eq!(texts(&sent), ["Stopped."]);
    // The session is free again at once.
    fake.push_text(5, 5, "/help");
    assert!(fake.wait_sent(2, deadline(SOON))[1].1.contains("/stop"));
}

#[test]
fn messages_for_a_busy_session_wait_their_turn_and_other_sessions_do_not() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let _gateway = open_bot(dir.path(), &fake, &slow_agent(dir.path(), 0.5));
    fake.push_text(1, 1, "a1");
    fake.push_text(1, 1, "a2");
    fake.push_text(2, 2, "b1");
    let sent = fake.wait_sent(3, deadline(SOON));
    // b1 ran beside a1, a2 after a1.
    let pos = |t: &str| sent.iter().position(|(_, s)| s == t).unwrap();
    assert!(pos("slow: a1") < pos("slow: a2"));
    assert!(pos("slow: b1") < pos("slow: a2"), "{sent:?}");
}

#[test]
fn a_stranger_gets_a_pairing_code_and_after_approval_an_answer() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{}", reconnect(200, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let g = Gateway::start_in(dir.path(), &dir.path().join("locks"), &config);
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(-100, 66, "hello group"); // groups: ignored silently
    fake.push_text(66, 66, "hello");
    let reply = fake.wait_sent(1, deadline(SOON))[0].clone();
    assert_eq!(reply.0, "66");
    let code = reply
        .1
        .split_whitespace()
        .find(|w| w.len() == 8 && w.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
        .expect("a code")
        .to_string();
    assert!(!g.log().contains(&code), "the code reached the log");
    let out = Command::new(binary())
        .args(["pairing", "approve", "tg", &code.to_lowercase(), "--config", "gateway.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fake.push_text(66, 66, "hello again");
    assert_eq!(fake.wait_sent(2, deadline(SOON))[1], ("66".to_string(), "echo: hello again".to_string()));
    assert_eq!(fake.sent().len(), 2, "the group message got an answer");
}

#[test]
fn a_backlog_sent_while_the_platform_was_down_arrives_in_order_after_reconnect() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{}{}", reconnect(200, 0, 5000), OPEN_ACCESS, telegram("tg", &fake.url(), TOKEN));
    let g = Gateway::start_in(dir.path(), &dir.path().join("locks"), &config);
    g.wait_platform("tg", "connected", SOON);
    fake.set_down(true);
    g.wait_platform("tg", "retrying", SOON);
    for n in 1..=5 {
        send_cli(dir.path(), "tg:42", &format!("alert {n}"));
    }
    fake.set_down(false);
    let sent = fake.wait_sent(5, deadline(SOON));
    assert_eq!(texts(&sent), ["alert 1", "alert 2", "alert 3", "alert 4", "alert 5"]);
}

#[test]
fn a_restart_with_a_full_outbox_delivers_each_message_exactly_once() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let config = format!("{}{}{}", reconnect(200, 0, 5000), OPEN_ACCESS, telegram("tg", &fake.url(), TOKEN));
    // Queued with no gateway running at all.
    fs::write(
        dir.path().join("gateway.toml"),
        format!("[gateway]\nstate_dir = \"{}\"\n{config}", dir.path().join("state").display()),
    )
    .unwrap();
    for n in 1..=3 {
        send_cli(dir.path(), "tg:7", &format!("queued {n}"));
    }
    fake.set_down(true);
    let mut g = Gateway::start_in(dir.path(), &locks, &config);
    g.wait_platform("tg", "retrying", SOON);
    g.signal("TERM");
    assert_eq!(g.wait_exit(SOON), Some(0));
    fake.set_down(false);
    let g = Gateway::start_in(dir.path(), &locks, &config);
    g.wait_platform("tg", "connected", SOON);
    let sent = fake.wait_sent(3, deadline(SOON));
    assert_eq!(texts(&sent), ["queued 1", "queued 2", "queued 3"]);
    // Nothing more comes: wait for two more polls, then count again.
    let polls = fake.count("getUpdates");
    fake.wait_count("getUpdates", polls + 1, deadline(SOON));
    assert_eq!(fake.sent().len(), 3);
}

#[test]
fn kill_9_mid_turn_loses_nothing_and_corrupts_nothing() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let config = format!(
        "{}{}{}{}",
        reconnect(200, 20, 5000),
        OPEN_ACCESS,
        slow_agent(dir.path(), 3.0),
        telegram("tg", &fake.url(), TOKEN)
    );
    let mut g = Gateway::start_in(dir.path(), &locks, &config);
    g.wait_platform("tg", "connected", SOON);
    fake.push_text(9, 9, "do not lose me");
    assert!(wait_until(deadline(SOON), || dir.path().join("started").exists()));
    // Telegram got the offset past the message: only the gateway's own journal has it.
    let id = fake.last_served().unwrap();
    assert!(fake.wait_offset(id + 1, deadline(SOON)).is_some());
    g.signal("KILL");
    g.wait_exit(SOON);
    assert!(fake.sent().is_empty());
    for file in ["status.json", "directory.json", "sessions/index.json"] {
        let path = g.state_dir.join(file);
        if path.exists() {
            serde_json::from_slice::<Value>(&fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
    let g = Gateway::start_in(dir.path(), &locks, &config);
    g.wait_platform("tg", "connected", SOON);
    let sent = fake.wait_sent(1, deadline(SOON));
    assert_eq!(texts(&sent), ["slow: do not lose me"]);
}

/// `[agent]` for the fake OpenAI-compatible server.
fn openai_agent(url: &str, extra: &str) -> String {
    format!(
        "[agent]\nbackend = \"openai\"\nbase_url = \"{url}\"\nmodel = \"test-model\"\napi_key = \"sk-test-SECRET\"\n\
         system_prompt = \"Be brief.\"\nretry_wait = \"10ms\"\n{extra}"
    )
}

#[test]
fn the_openai_backend_gets_the_session_history() {
    let (fake, llm) = (FakeTelegram::start(TOKEN), FakeOpenAi::start());
    llm.push_reply_with_usage("Hello, Ada.", 12, 4);
    llm.push_reply("Your name is Ada.");
    let dir = tempfile::tempdir().unwrap();
    let g = open_bot(dir.path(), &fake, &openai_agent(&llm.url(), ""));
    fake.push_text(3, 3, "I am Ada");
    fake.wait_sent(1, deadline(SOON));
    fake.push_text(3, 3, "Who am I?");
    assert_eq!(texts(&fake.wait_sent(2, deadline(SOON))), ["Hello, Ada.", "Your name is Ada."]);
    let second = &llm.requests()[1];
    let roles: Vec<&str> = second["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    assert_eq!(second["messages"][3]["content"], "Who am I?");
    assert_eq!(second["model"], "test-model");
    assert!(!g.log().contains("sk-test-SECRET"));
}

#[test]
fn a_refused_api_key_gives_the_user_a_short_safe_error() {
    let (fake, llm) = (FakeTelegram::start(TOKEN), FakeOpenAi::start());
    llm.fail_next(401, support::fake_openai::api_error("Incorrect API key provided: sk-test-SEC***", None), &[], 1);
    let dir = tempfile::tempdir().unwrap();
    let g = open_bot(dir.path(), &fake, &openai_agent(&llm.url(), ""));
    fake.push_text(3, 3, "hi");
    let reply = fake.wait_sent(1, deadline(SOON))[0].1.clone();
    assert!(reply.contains("API key was refused") && !reply.contains("sk-"), "{reply}");
    assert!(wait_until(deadline(SOON), || g.log().contains("key")), "the log does not say the key is bad");
}

#[test]
fn a_streamed_answer_is_edited_in_place() {
    let (fake, llm) = (FakeTelegram::start(TOKEN), FakeOpenAi::start());
    llm.push_stream(&["The ", "answer ", "is ", "forty-two."], Duration::from_millis(150));
    let agent = openai_agent(&llm.url(), "stream = true\nedit_interval = \"100ms\"\n");
    let dir = tempfile::tempdir().unwrap();
    let _gateway = open_bot(dir.path(), &fake, &agent);
    fake.push_text(3, 3, "question");
    // The preview is sent once, then edited; the last edit is the whole answer.
    let done = wait_until(deadline(SOON), || fake.edits().last().is_some_and(|e| e.2 == "The answer is forty-two."));
    assert!(done, "edits: {:?}", fake.edits());
    let sent = fake.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].1.starts_with("The "), "{sent:?}");
    assert!(fake.edits().len() >= 2, "no edit while writing: {:?}", fake.edits());
}

#[test]
fn in_interrupt_mode_a_new_message_replaces_the_running_turn_and_queue_never_does() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let agent = slow_agent(dir.path(), 1.0).replace("[agent]\n", "[agent]\nbusy = \"interrupt\"\n");
    let _gateway = open_bot(dir.path(), &fake, &agent);
    let started = |n: usize| fs::read_to_string(dir.path().join("started")).map_or(0, |s| s.lines().count()) >= n;
    fake.push_text(4, 4, "first");
    assert!(wait_until(deadline(SOON), || started(1)));
    fake.push_text(4, 4, "second");
    assert!(wait_until(deadline(SOON), || started(2)));
    fake.push_text(4, 4, "/queue third");
    let sent = fake.wait_sent(2, deadline(SOON));
    assert_eq!(texts(&sent), ["slow: second", "slow: third"]);
    assert!(!wait_until(deadline(Duration::from_millis(300)), || fake.sent().len() > 2));
}

#[test]
fn send_reads_standard_input_and_status_lists_dead_letters() {
    let fake = FakeTelegram::start(TOKEN);
    fake.fail_always(
        "sendMessage",
        Some(support::fake_telegram::Fault::Status(
            400,
            support::fake_telegram::api_error(400, "Bad Request: chat not found"),
        )),
    );
    let dir = tempfile::tempdir().unwrap();
    let _gateway = open_bot(dir.path(), &fake, "");
    let mut child = Command::new(binary())
        .args(["--config", "gateway.toml", "send", "tg:999", "-"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"disk almost full on the router\n").unwrap();
    assert!(child.wait().unwrap().success());
    let status = || {
        let out = Command::new(binary())
            .args(["status", "--config", "gateway.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let listed =
        wait_until(deadline(SOON), || status().contains("dead letter: tg:999 \"disk almost full on the router\""));
    assert!(listed, "{}", status());
    assert!(status().contains("chat not found"));
}

#[test]
fn a_stranger_flooding_dms_gets_one_reply_and_the_bot_stays_answered() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{}{}allowed_users = [\"5\"]\n", reconnect(200, 20, 5000), telegram("tg", &fake.url(), TOKEN));
    let g = Gateway::start_in(dir.path(), &dir.path().join("locks"), &config);
    g.wait_platform("tg", "connected", SOON);
    for i in 0..50 {
        fake.push_text(66, 66, &format!("let me in {i}"));
    }
    // The router takes messages in order: once the owner's message is answered, every
    // one of the stranger's was decided, and their replies queued before it.
    fake.push_text(5, 5, "owner here");
    let answered = |chat: &str, text: &str| fake.sent().iter().any(|(c, t)| c == chat && t.contains(text));
    assert!(
        wait_until(deadline(SOON), || answered("5", "echo: owner here") && answered("66", "pairing code")),
        "{:?}",
        fake.sent()
    );
    let to_stranger: Vec<String> = fake.sent().into_iter().filter(|(c, _)| c == "66").map(|(_, t)| t).collect();
    assert_eq!(to_stranger.len(), 1, "{to_stranger:?}");
    assert!(to_stranger[0].contains("pairing code"), "{to_stranger:?}");
    assert!(g.log().contains("not answered (throttled)"), "no debug line for the dropped replies");
}

#[test]
fn a_command_addressed_to_another_bot_is_not_ours() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let agent = command_agent(
        dir.path(),
        "import json, sys\nturn = json.load(sys.stdin)\nprint(f\"{turn['text']} after {len(turn['history'])}\")\n",
    );
    let _gateway = open_bot(dir.path(), &fake, &agent);
    // The fake's getMe names the bot @fake_bot.
    for (i, text) in ["one", "/new@otherbot", "/help@Fake_Bot"].into_iter().enumerate() {
        fake.push_text(-100, 5, text);
        fake.wait_sent(i + 1, deadline(SOON));
    }
    let sent = fake.sent();
    assert_eq!(texts(&sent)[..2], ["one after 0", "/new@otherbot after 2"], "{sent:?}");
    assert!(sent[2].1.starts_with("Commands:"), "a command with our own name is ours: {sent:?}");
}

#[test]
fn an_answer_beyond_max_message_bytes_is_cut_with_a_marker_not_split_into_hundreds() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    // 2 MB of answer: about 500 Telegram messages uncut.
    let agent = command_agent(dir.path(), "import sys\nsys.stdout.write('x' * 2_000_000)\n");
    let g = open_bot(dir.path(), &fake, &agent);
    fake.push_text(5, 5, "write a lot");
    let marker = "truncated: longer than the gateway's max_message_bytes]";
    assert!(wait_until(deadline(SOON), || fake.sent().iter().any(|(_, t)| t.contains(marker))), "no marker");
    // Nothing follows the marker: the outbox is empty, and 64 KiB made a few messages.
    let queued = || switchboard::delivery::queued(&g.state_dir).iter().map(|(_, n)| n).sum::<usize>();
    assert!(wait_until(deadline(SOON), || queued() == 0));
    let sent = fake.sent();
    assert!(sent.len() < 20, "{} messages", sent.len());
    assert!(sent.last().unwrap().1.contains(marker), "the marker is not at the end");
    assert!(g.log().contains("longer than [delivery] max_message_bytes (65536)"), "no warning");
}

// ---------------------------------------------------------------------------------------
// Issue 7: nothing accepted is dropped

const CONSOLE: &str = "[platforms.console]\nkind = \"console\"\n";

/// Write `input` to a console gateway's standard input, close it, and return what it
/// printed once it exited (end of input ends the console, and with it the gateway).
fn console_run(dir: &Path, config: &str, input: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut g = Gateway::start_in(dir, &dir.join("locks"), config);
    let mut stdin = g.child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    assert_eq!(g.wait_exit(SOON), Some(0), "{}", g.log());
    let mut out = String::new();
    g.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out
}

fn status_cli(dir: &Path) -> String {
    let out = Command::new(binary()).args(["status", "--config", "gateway.toml"]).current_dir(dir).output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Issue 7, "console after a restart": a second run on the same state directory answers
/// every line, though the first run's answered ids are remembered for a week.
#[test]
fn console_after_a_restart_answers_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("{OPEN_ACCESS}{CONSOLE}");
    let first = console_run(dir.path(), &config, b"hello one\nhello two\n");
    assert_eq!(first, "echo: hello one\necho: hello two\n");
    let second = console_run(dir.path(), &config, b"hello three\nhello four\nhello five\n");
    assert_eq!(second, "echo: hello three\necho: hello four\necho: hello five\n");
}

/// Issue 7, "invalid UTF-8 on stdin": a bad line is decoded lossily and input goes on.
#[test]
fn invalid_utf8_on_stdin_is_decoded_lossily_and_the_next_lines_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let out = console_run(dir.path(), &format!("{OPEN_ACCESS}{CONSOLE}"), b"line1\nbad \xff here\nline3\n");
    assert_eq!(out, "echo: line1\necho: bad \u{fffd} here\necho: line3\n");
}

/// Issue 7, "the console and a closed stdout": `yes | switchboard run | head -1` made
/// every later reply a dead letter with an ERROR line each. Now the console stops
/// cleanly, its replies stay queued, and `status` stays short.
#[test]
fn the_console_and_a_closed_stdout_stops_cleanly_and_keeps_the_replies_queued() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_in(dir.path(), &dir.path().join("locks"), &format!("{OPEN_ACCESS}{CONSOLE}"));
    let mut stdin = g.child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || {
        // Like `yes | head -c 100000`; a write error means the gateway stopped reading.
        let _ = stdin.write_all(&b"y\n".repeat(50_000));
    });
    let mut first = String::new();
    BufReader::new(g.child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert_eq!(first, "echo: y\n");
    // The reader went away, like `head -1`: the next reply meets a closed pipe.
    assert_eq!(g.wait_exit(SOON), Some(0), "{}", g.log());
    feeder.join().unwrap();
    let dead = g.state_dir.join("deadletter/console");
    assert_eq!(fs::read_dir(&dead).map_or(0, |d| d.count()), 0, "replies were dead-lettered");
    let errors = g.log().lines().filter(|l| l.contains("ERROR")).count();
    assert_eq!(errors, 0, "{}", g.log());
    let status = status_cli(dir.path());
    assert!(status.contains("queued for console"), "{status}");
    assert!(status.lines().count() < 10, "{status}");
}

/// Issue 7, "replays for a platform that is gone": messages accepted from a Telegram
/// bot that is removed from the config before the restart no longer hold the workers
/// forever: their answers are dead-lettered (and listed by `status`, summarised), and
/// the console is answered. Later, `[delivery] retention` removes the dead letters.
#[test]
fn replays_for_a_platform_that_is_gone_are_dead_lettered_and_the_others_answered() {
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let locks = dir.path().join("locks");
    let with_tg = format!(
        "{}{OPEN_ACCESS}{}{CONSOLE}{}",
        reconnect(200, 20, 5000),
        slow_agent(dir.path(), 30.0),
        telegram("tg", &fake.url(), TOKEN)
    );
    let mut g = Gateway::start_in(dir.path(), &locks, &with_tg);
    g.wait_platform("tg", "connected", SOON);
    // Several chats at once: each waits for the slow agent.
    let mut last = 0;
    for chat in 1..=7 {
        last = fake.push_text(chat, chat, &format!("question {chat}"));
    }
    // Acknowledged to Telegram: from here only the gateway's inbox has them.
    assert!(fake.wait_offset(last + 1, deadline(SOON)).is_some());
    g.signal("KILL");
    g.wait_exit(SOON);
    drop(g);

    // The bot is removed from the config; the console stays; echo answers.
    let console_only = format!("{}{OPEN_ACCESS}{CONSOLE}[delivery]\nretention = \"1h\"\n", reconnect(200, 20, 5000));
    let out = console_run(dir.path(), &console_only, b"still there?\n");
    assert_eq!(out, "echo: still there?\n");
    let status = status_cli(dir.path());
    assert!(status.contains("dead letters (given up): 7 (tg 7)"), "{status}");
    assert_eq!(status.lines().filter(|l| l.starts_with("dead letter: tg:")).count(), 5, "{status}");
    assert!(status.contains("no platform instance `tg`"), "{status}");
    let log = fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(log.contains("tg: the answer to chat"), "{log}");
    assert!(fake.sent().is_empty());

    // Two hours later the dead letters are past their retention: the next start removes them.
    let dead = dir.path().join("state/deadletter/tg");
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for entry in fs::read_dir(&dead).unwrap() {
        fs::File::options().write(true).open(entry.unwrap().path()).unwrap().set_modified(two_hours_ago).unwrap();
    }
    console_run(dir.path(), &console_only, b"");
    assert_eq!(fs::read_dir(&dead).unwrap().count(), 0);
    assert!(!status_cli(dir.path()).contains("dead letter"));
}

/// Issue 7, "outbox read errors": `sudo switchboard send` into a state directory owned
/// by the service user would write a file the gateway cannot read. It refuses instead.
#[test]
fn send_as_another_user_than_the_state_directory_owner_refuses() {
    use std::os::unix::fs::MetadataExt;
    let fake = FakeTelegram::start(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    fs::create_dir_all(&state).unwrap();
    let config = format!("[gateway]\nstate_dir = \"{}\"\n{}", state.display(), telegram("tg", &fake.url(), TOKEN));
    fs::write(dir.path().join("gateway.toml"), config).unwrap();
    // Only root can give the directory to someone else; anyone else is that someone else.
    let owner = fs::metadata(&state).unwrap().uid();
    if Command::new("chown").arg("65534").arg(&state).status().is_ok_and(|s| s.success()) {
        assert_ne!(fs::metadata(&state).unwrap().uid(), owner);
    } else {
        return eprintln!("skipped: cannot chown (not root)");
    }
    let out = Command::new(binary())
        .args(["--config", "gateway.toml", "send", "tg:5", "hello"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("belongs to user id 65534") && stderr.contains("sudo -u '#65534'"), "{stderr}");
    assert!(!state.join("outbox").exists(), "a file was written");
}

/// Issue 8, section 1: a gateway on a model that takes seconds. The turns of different
/// sessions run at once (default `max_concurrent_turns` 64): 20 requests are at the
/// fake model at the same time, all held, each on a connection of its own. With the old
/// 4 workers never more than 4 were. (This also proves the fake serves a burst of new
/// connections at once: tiny_http, the fakes' server before, left one of a burst
/// unserved until another connection ended, which never happens while answers are held.)
#[test]
fn twenty_sessions_turns_run_at_once() {
    let (fake, llm) = (FakeTelegram::start(TOKEN), FakeOpenAi::start());
    llm.hold();
    let dir = tempfile::tempdir().unwrap();
    let g = open_bot(dir.path(), &fake, &openai_agent(&llm.url(), ""));
    for chat in 1..=20 {
        fake.push_text(chat, chat, &format!("question {chat}"));
    }
    assert_eq!(llm.wait_in_flight(20, deadline(SOON)), 20, "{}", g.log());
    llm.release();
    let sent = fake.wait_sent(20, deadline(SOON));
    assert_eq!(sent.len(), 20, "{}", g.log());
    assert_eq!(llm.peak(), 20, "{}", g.log());
}

/// The last user message of each request the fake model got, in arrival order.
fn questions(llm: &FakeOpenAi) -> Vec<String> {
    let last = |r: &Value| r["messages"].as_array().and_then(|m| m.last()).map(|m| m["content"].to_string());
    llm.requests().iter().filter_map(last).map(|q| q.trim_matches('"').to_string()).collect()
}

/// Issue 8, section 1: `max_concurrent_turns` caps the turns running at once (a local
/// model server with two slots): six sessions want a turn, never more than two run.
#[test]
fn max_concurrent_turns_caps_the_turns_running_at_once() {
    let (fake, llm) = (FakeTelegram::start(TOKEN), FakeOpenAi::start());
    llm.hold();
    let dir = tempfile::tempdir().unwrap();
    let g = open_bot(dir.path(), &fake, &openai_agent(&llm.url(), "max_concurrent_turns = 2\n"));
    let mut last = 0;
    for chat in 1..=6 {
        last = fake.push_text(chat, chat, &format!("question {chat}"));
    }
    assert!(fake.wait_offset(last + 1, deadline(SOON)).is_some());
    assert_eq!(llm.wait_in_flight(2, deadline(SOON)), 2, "{}", g.log());
    // The first two to come run first.
    let mut first = questions(&llm);
    first.sort();
    assert_eq!(first, ["question 1", "question 2"]);
    llm.release();
    assert_eq!(fake.wait_sent(6, deadline(SOON)).len(), 6, "{}", g.log());
    assert_eq!(llm.peak(), 2, "{}", g.log());
    assert!(!g.log().contains("WARN"), "{}", g.log());
}

/// Issue 8, section 1: sessions beyond `max_concurrent_turns` wait in the order their
/// messages came.
#[test]
fn turns_beyond_the_cap_wait_in_arrival_order() {
    let (fake, llm) = (FakeTelegram::start(TOKEN), FakeOpenAi::start());
    llm.hold();
    let dir = tempfile::tempdir().unwrap();
    let g = open_bot(dir.path(), &fake, &openai_agent(&llm.url(), "max_concurrent_turns = 1\n"));
    fake.push_text(1, 1, "question 1");
    assert_eq!(llm.wait_in_flight(1, deadline(SOON)), 1, "{}", g.log());
    let mut last = 0;
    for chat in 2..=5 {
        last = fake.push_text(chat, chat, &format!("question {chat}"));
    }
    assert!(fake.wait_offset(last + 1, deadline(SOON)).is_some());
    llm.release();
    assert_eq!(fake.wait_sent(5, deadline(SOON)).len(), 5, "{}", g.log());
    assert_eq!(questions(&llm), ["question 1", "question 2", "question 3", "question 4", "question 5"]);
}

/// The threads of process `pid` whose name starts with `turn-`.
fn turn_threads(pid: u32) -> usize {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    tasks.filter(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|name| name.starts_with("turn-"))).count()
}

/// Issue 8, section 1: turn threads start on demand and end when idle, so an idle
/// gateway keeps none. (`SWITCHBOARD_TEST_TURN_IDLE_MS` shortens the idle time, debug
/// builds only.)
#[test]
fn idle_turn_threads_end() {
    let (fake, llm) = (FakeTelegram::start(TOKEN), FakeOpenAi::start());
    llm.hold();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}{OPEN_ACCESS}{}{}",
        reconnect(200, 20, 5000),
        openai_agent(&llm.url(), ""),
        telegram("tg", &fake.url(), TOKEN)
    );
    let env = [("SWITCHBOARD_TEST_TURN_IDLE_MS", "200")];
    let g = Gateway::start_in_env(dir.path(), &dir.path().join("locks"), &config, &env);
    g.wait_platform("tg", "connected", SOON);
    assert_eq!(turn_threads(g.pid()), 0, "turn threads before any message");
    // Three: the fake's server serves a burst of at most four new connections at once.
    for chat in 1..=3 {
        fake.push_text(chat, chat, &format!("question {chat}"));
    }
    assert_eq!(llm.wait_in_flight(3, deadline(SOON)), 3, "{}", g.log());
    assert_eq!(turn_threads(g.pid()), 3);
    llm.release();
    assert_eq!(fake.wait_sent(3, deadline(SOON)).len(), 3, "{}", g.log());
    assert!(wait_until(deadline(SOON), || turn_threads(g.pid()) == 0), "{} turn threads left", turn_threads(g.pid()));
    // A later message starts one again.
    fake.push_text(1, 1, "again");
    assert_eq!(fake.wait_sent(4, deadline(SOON)).len(), 4, "{}", g.log());
}
