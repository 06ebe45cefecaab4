/*!
The `command` backend: a local program answers.

Each turn runs `command = ["prog", "arg", …]` (no shell) with the turn as one JSON
object on stdin, `{"text", "session_key", "history": [{"role", "content"}…], "source":
{…}}`, then stdin closed; the trimmed stdout is the reply and stderr goes to the log.
Anything that can answer a chat message from a script (a wrapper around a CLI agent, a
retrieval pipeline) plugs in this way without a server.

Pipes deadlock when one side waits for the other, so stdin is written and stdout and
stderr are read on helper threads, each reader draining its pipe to the end even past
what it keeps. The calling thread waits for the exit and the end of stdout, checking
the exit every [`TICK`] (std offers no blocking wait that can be interrupted) and
waking at once on cancel. A background process that keeps stdout open keeps the turn
running until the `timeout` kills it: the reply is not complete before stdout ends.

A timeout or a cancel kills the whole process group, not only the child: the child is
started as the leader of a new group, so a script's own children (the model runner it
started) die with it instead of running on and holding the stdout pipe open. std has no
`killpg` and the crate takes no libc dependency, so the group is signalled through the
shell's `kill` builtin, with `Child::kill` as the fallback.
*/

use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded, never, select};
use serde_json::json;

use super::{Agent, AgentError, AgentErrorKind, Cancel, CommandSettings, Reply, Turn};

/// How often the exit of a running command is checked.
const TICK: Duration = Duration::from_millis(10);
/// The most of stdout kept as the reply; a chat message is far shorter.
const MAX_STDOUT: u64 = 1024 * 1024;
/// The most of stderr kept for the log per turn.
const MAX_STDERR: u64 = 4 * 1024;

const USER_NO_START: &str = "The assistant could not be started.";
const USER_TIMEOUT: &str = "The assistant took too long and was stopped.";
const USER_EMPTY: &str = "The assistant gave no answer.";
const USER_FAILED: &str = "The assistant failed to answer.";

pub struct CommandAgent {
    settings: CommandSettings,
}

impl CommandAgent {
    pub fn new(settings: CommandSettings) -> CommandAgent {
        CommandAgent { settings }
    }

    /// The program's name, for messages.
    fn program(&self) -> &str {
        self.settings.command.first().map_or("", String::as_str)
    }

    /// Start the command with its pipes served by helper threads.
    fn spawn(&self, input: Vec<u8>) -> io::Result<Running> {
        let (program, args) = self
            .settings
            .command
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the command is empty"))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a kill reaches what it starts (module doc); it
            // also keeps a terminal's Ctrl-C from hitting it before the gateway drains.
            .process_group(0)
            .spawn()?;
        match serve_pipes(&mut child, input) {
            Ok((stdout, stderr)) => Ok(Running { child, stdout, stderr }),
            Err(e) => {
                kill_tree(&mut child);
                Err(e)
            }
        }
    }
}

impl Agent for CommandAgent {
    fn reply(&self, turn: &Turn<'_>, cancel: &Cancel, _on_delta: &mut dyn FnMut(&str)) -> Result<Reply, AgentError> {
        if cancel.is_cancelled() {
            return Err(AgentError::cancelled());
        }
        let program = self.program();
        let mut running = self.spawn(turn_input(turn)).map_err(|e| {
            AgentError::new(AgentErrorKind::Failed, USER_NO_START, format!("cannot run `{program}`: {e}"))
        })?;
        let deadline = Instant::now() + self.settings.timeout;
        let outcome = supervise(&mut running, cancel, deadline);
        if outcome.is_err() {
            kill_tree(&mut running.child);
        }
        let ok = matches!(&outcome, Ok((status, _)) if status.success());
        log_stderr(program, &running.stderr, ok);
        match outcome {
            Ok((status, stdout)) => judge(program, status, &stdout),
            Err(Stop::Cancelled) => Err(AgentError::cancelled()),
            Err(Stop::Timeout) => Err(AgentError::new(
                AgentErrorKind::Timeout,
                USER_TIMEOUT,
                format!("`{program}` ran longer than {:?} and was killed", self.settings.timeout),
            )),
            Err(Stop::Wait(e)) => Err(AgentError::new(
                AgentErrorKind::Failed,
                USER_FAILED,
                format!("waiting for `{program}` failed: {e}"),
            )),
        }
    }
}

/// A started command and the ends of its output pipes.
struct Running {
    child: Child,
    stdout: Receiver<Captured>,
    stderr: Receiver<Captured>,
}

/// What a reader thread kept of one pipe.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    /// More came than was kept.
    truncated: bool,
}

/// Why a run ended before the command did.
#[derive(Debug)]
enum Stop {
    Cancelled,
    Timeout,
    Wait(io::Error),
}

/// Write `input` to the child's stdin and read its stdout and stderr, each on a thread.
fn serve_pipes(child: &mut Child, input: Vec<u8>) -> io::Result<(Receiver<Captured>, Receiver<Captured>)> {
    let missing = || io::Error::other("a pipe of the child is missing");
    let mut stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let stderr = child.stderr.take().ok_or_else(missing)?;
    thread::Builder::new().name("agent-cmd-stdin".into()).spawn(move || {
        // A program that answers without reading its input closes the pipe: the
        // broken pipe is its business, not an error of the turn. Dropping `stdin`
        // closes it, so the program sees the end of its input.
        let _ = stdin.write_all(&input);
    })?;
    Ok((capture(stdout, MAX_STDOUT, "agent-cmd-stdout")?, capture(stderr, MAX_STDERR, "agent-cmd-stderr")?))
}

/// Read `pipe` to its end on a thread, keeping the first `limit` bytes.
fn capture(mut pipe: impl Read + Send + 'static, limit: u64, name: &str) -> io::Result<Receiver<Captured>> {
    let (tx, rx) = bounded(1);
    thread::Builder::new().name(name.into()).spawn(move || {
        let mut bytes = Vec::new();
        let _ = (&mut pipe).take(limit).read_to_end(&mut bytes);
        // Drain the rest: a program blocked on a full pipe would never exit.
        let rest = io::copy(&mut pipe, &mut io::sink()).unwrap_or(0);
        let _ = tx.send(Captured { bytes, truncated: rest > 0 });
    })?;
    Ok(rx)
}

/// Wait until the command has exited and closed its stdout, `deadline` passes, or
/// `cancel` fires.
fn supervise(running: &mut Running, cancel: &Cancel, deadline: Instant) -> Result<(ExitStatus, Vec<u8>), Stop> {
    let (mut status, mut stdout) = (None, None);
    let closed = never();
    loop {
        if status.is_none() {
            status = running.child.try_wait().map_err(Stop::Wait)?;
        }
        if let (Some(status), Some(out)) = (status, &mut stdout) {
            return Ok((status, std::mem::take(out)));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Stop::Timeout);
        }
        // Once it has exited, only stdout is awaited, and that wait can block.
        let wait = if status.is_none() { TICK.min(deadline - now) } else { deadline - now };
        let pipe = if stdout.is_none() { &running.stdout } else { &closed };
        select! {
            recv(pipe) -> captured => {
                let captured: Captured = captured.unwrap_or_default();
                if captured.truncated {
                    log::warn!("agent command: the answer exceeds {MAX_STDOUT} bytes; the rest is dropped");
                }
                stdout = Some(captured.bytes);
            }
            recv(cancel.receiver()) -> _ => return Err(Stop::Cancelled),
            default(wait) => {}
        }
    }
}

/// Kill the child's process group (so its descendants too), then reap the child.
fn kill_tree(child: &mut Child) {
    // `process_group(0)` made the child's pid its group id, and the pid stays reserved
    // until the `wait` below, so the group cannot be someone else's.
    let group = format!("-{}", child.id());
    let _ = Command::new("/bin/sh")
        .args(["-c", "kill -s KILL -- \"$1\"", "sh", &group])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    // Should the shell be missing, at least the child itself goes.
    let _ = child.kill();
    let _ = child.wait();
}

/// Log what the command wrote to stderr, if anything: as a warning when the turn
/// failed, where it most likely says why.
fn log_stderr(program: &str, stderr: &Receiver<Captured>, ok: bool) {
    // The reader has normally finished with the exit; a descendant still holding the
    // pipe must not delay the reply.
    let Ok(captured) = stderr.recv_timeout(Duration::from_millis(50)) else { return };
    let text = String::from_utf8_lossy(&captured.bytes);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let more = if captured.truncated { " […]" } else { "" };
    let level = if ok { log::Level::Info } else { log::Level::Warn };
    log::log!(level, "agent command `{program}` stderr: {text}{more}");
}

// ---------------------------------------------------------------------------------------
// Pure parts

/// The turn as the command reads it on stdin: one JSON object.
fn turn_input(turn: &Turn<'_>) -> Vec<u8> {
    let input = json!({
        "text": turn.text,
        "session_key": turn.session_key,
        "history": turn.history,
        "source": turn.source,
    });
    let mut bytes = input.to_string().into_bytes();
    bytes.push(b'\n');
    bytes
}

/// The reply, or the error, of a command that exited with `status` after printing
/// `stdout`.
fn judge(program: &str, status: ExitStatus, stdout: &[u8]) -> Result<Reply, AgentError> {
    if !status.success() {
        let how = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "unknown exit".to_string(),
        };
        return Err(AgentError::new(
            AgentErrorKind::Failed,
            format!("The assistant failed to answer ({how})."),
            format!("`{program}` failed: {how}"),
        ));
    }
    let text = String::from_utf8_lossy(stdout).trim().to_string();
    if text.is_empty() {
        let detail = format!("`{program}` exited successfully without writing an answer");
        return Err(AgentError::new(AgentErrorKind::Failed, USER_EMPTY, detail));
    }
    Ok(Reply { text, input_tokens: 0, output_tokens: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ChatMessage, Role, Source};

    fn source() -> Source {
        Source { user_id: Some("7".into()), user_name: Some("ann".into()), ..Source::dm("tg", "42") }
    }

    #[test]
    fn input_is_one_json_object() {
        let history = [ChatMessage::new(Role::User, "hi"), ChatMessage::new(Role::Assistant, "hello")];
        let source = source();
        let turn = Turn { text: "how are you?", session_key: "tg:dm:42", history: &history, source: &source };
        let bytes = turn_input(&turn);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["text"], "how are you?");
        assert_eq!(value["session_key"], "tg:dm:42");
        assert_eq!(
            value["history"],
            json!([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
        );
        assert_eq!(value["source"]["chat_id"], "42");
        assert_eq!(value["source"]["chat_type"], "dm");
    }

    #[test]
    fn judging_the_exit() {
        let exit = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(judge("p", exit(0), b"  hello\n").unwrap().text, "hello");
        let e = judge("p", exit(3), b"partial").unwrap_err();
        assert_eq!(
            (e.kind, e.user_message.as_str()),
            (AgentErrorKind::Failed, "The assistant failed to answer (exit status 3).")
        );
        let e = judge("p", ExitStatus::from_raw(9), b"").unwrap_err();
        assert_eq!(e.user_message, "The assistant failed to answer (killed by signal 9).");
        let e = judge("p", exit(0), b" \n").unwrap_err();
        assert_eq!((e.kind, e.user_message.as_str()), (AgentErrorKind::Failed, USER_EMPTY));
    }
}
