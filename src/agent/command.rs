/*!
The `command` backend: a local program answers.

Each turn runs `command = ["prog", "arg", …]` (no shell) with the turn as one JSON
object on stdin, `{"text", "session_key", "history": [{"role", "content"}…], "source":
{…}}`, then stdin closed; the trimmed stdout is the reply and stderr goes to the log.
Anything that can answer a chat message from a script (a wrapper around a CLI agent, a
retrieval pipeline) plugs in this way without a server.

The program gets a cleared environment with only the variables `[agent] env` names
([`child_env`]): the gateway's own environment holds the bot tokens and API keys its
config expands, and a program with tools could print them into a chat. A listed
variable whose value holds one of the config's secrets is withheld too, with a warning
naming the variable (never the value). The environment is read once, when the agent is
built.

Pipes deadlock when one side waits for the other, so the three pipes are non-blocking
and served together by one `poll(2)` loop on the turn's own thread ([`Pipes`]): stdin is
written as the program takes it, stdout and stderr are drained to their end even past
what is kept. A turn starts no thread (issue 8 §4; it used to start three). The loop
wakes at least every [`TICK`] to check for the exit (std offers no blocking wait that
can be interrupted) and for a cancel.

The answer is complete when the program exits, not when stdout ends: a background
process it started may hold stdout open for as long as it runs. So once the program has
exited (seen with `waitid(WNOWAIT)`, which leaves it unreaped), its whole process group
is killed, and what was read is the answer; the loop gets [`GRACE`] to reach the end of
the pipes, which it normally does at once, since the kill closed every other holder. A
timeout or a cancel kills the group too, so a script's own children (the model runner
it started) die with it instead of running on. The child is started as the
leader of a new group, and the group is signalled while the child is still unreaped, so
its id cannot have been reused by anyone else.
*/

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Agent, AgentError, AgentErrorKind, Cancel, CommandSettings, Reply, Turn, deadline_after};
use crate::config::Secret;

/// How often the exit of a running command, and a cancel, are checked.
const TICK: Duration = Duration::from_millis(10);
/// How long after the exit (and the group kill) the output pipes may take to reach their
/// end before what was read of them is taken as it is.
const GRACE: Duration = Duration::from_millis(200);
/// The most of stdout kept as the reply; a chat message is far shorter.
const MAX_STDOUT: usize = 1024 * 1024;
/// The most of stderr kept for the log per turn.
const MAX_STDERR: usize = 4 * 1024;

const USER_NO_START: &str = "The assistant could not be started.";
const USER_TIMEOUT: &str = "The assistant took too long and was stopped.";
const USER_EMPTY: &str = "The assistant gave no answer.";
const USER_FAILED: &str = "The assistant failed to answer.";

pub struct CommandAgent {
    settings: CommandSettings,
    /// The variables the program gets, read once at build time.
    env: Vec<(OsString, OsString)>,
}

impl CommandAgent {
    /// `secrets`: every credential of the configuration; no variable holding one is
    /// passed on.
    pub fn new(settings: CommandSettings, secrets: &[Secret]) -> CommandAgent {
        let env = child_env(&settings.env, std::env::vars_os(), secrets, |name| {
            log::warn!("agent command: `{name}` holds a secret of the configuration and is not passed on");
        });
        CommandAgent { settings, env }
    }

    /// The program's name, for messages.
    fn program(&self) -> &str {
        self.settings.command.first().map_or("", String::as_str)
    }

    /// Start the command, its pipes ready for [`Pipes::pump`].
    fn spawn(&self, input: Vec<u8>) -> io::Result<(Child, Pipes)> {
        let (program, args) = self
            .settings
            .command
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the command is empty"))?;
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a kill reaches what it starts (module doc); it
            // also keeps a terminal's Ctrl-C from hitting it before the gateway drains.
            .process_group(0)
            .spawn()?;
        match Pipes::new(&mut child, input) {
            Ok(pipes) => Ok((child, pipes)),
            Err(e) => {
                let _ = kill_tree(&mut child);
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
        let (mut child, mut pipes) = self.spawn(turn_input(turn)).map_err(|e| {
            AgentError::new(AgentErrorKind::Failed, USER_NO_START, format!("cannot run `{program}`: {e}"))
        })?;
        let deadline = deadline_after(self.settings.timeout);
        let outcome = supervise(&mut child, &mut pipes, cancel, deadline);
        // Exited or not, what it started goes with it (module doc); this also reaps it.
        let status = kill_tree(&mut child);
        // The pipes normally end with the kill; a descendant still holding one must not
        // delay the reply.
        pipes.drain(GRACE);
        if pipes.stdout.truncated {
            log::warn!("agent command: the answer exceeds {MAX_STDOUT} bytes; the rest is dropped");
        }
        let ok = outcome.is_ok() && status.as_ref().is_ok_and(ExitStatus::success);
        log_stderr(program, &pipes.stderr, ok);
        let stdout = pipes.stdout;
        match outcome {
            Ok(()) => match status {
                Ok(status) => judge(program, status, &stdout.bytes),
                Err(e) => Err(wait_failed(program, e)),
            },
            Err(Stop::Cancelled) => Err(AgentError::cancelled()),
            Err(Stop::Timeout) => Err(AgentError::new(
                AgentErrorKind::Timeout,
                USER_TIMEOUT,
                format!("`{program}` ran longer than {:?} and was killed", self.settings.timeout),
            )),
            Err(Stop::Wait(e)) => Err(wait_failed(program, e)),
        }
    }
}

fn wait_failed(program: &str, e: io::Error) -> AgentError {
    AgentError::new(AgentErrorKind::Failed, USER_FAILED, format!("waiting for `{program}` failed: {e}"))
}

/// What was read of one output pipe.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    /// More came than was kept.
    truncated: bool,
}

impl Captured {
    /// Keep what fits of `data` under `limit` bytes. Past the limit the rest is drained,
    /// not kept: a program blocked on a full pipe would never exit.
    fn keep(&mut self, data: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
        self.truncated |= data.len() > room;
    }
}

/// The child's pipes, non-blocking, served on the calling thread: stdin until all of
/// the input is written (then closed, so the program sees its end), stdout and stderr
/// until their end. A pipe is `None` once done with.
struct Pipes {
    stdin: Option<ChildStdin>,
    input: Vec<u8>,
    written: usize,
    out: Option<ChildStdout>,
    err: Option<ChildStderr>,
    stdout: Captured,
    stderr: Captured,
}

impl Pipes {
    fn new(child: &mut Child, input: Vec<u8>) -> io::Result<Pipes> {
        let missing = || io::Error::other("a pipe of the child is missing");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let out = child.stdout.take().ok_or_else(missing)?;
        let err = child.stderr.take().ok_or_else(missing)?;
        for fd in [stdin.as_raw_fd(), out.as_raw_fd(), err.as_raw_fd()] {
            set_nonblocking(fd)?;
        }
        let stdin = (!input.is_empty()).then_some(stdin);
        let (stdout, stderr) = (Captured::default(), Captured::default());
        Ok(Pipes { stdin, input, written: 0, out: Some(out), err: Some(err), stdout, stderr })
    }

    /// Whether stdout and stderr have both reached their end.
    fn ended(&self) -> bool {
        self.out.is_none() && self.err.is_none()
    }

    /// Wait up to `timeout` for a pipe to be ready, then move what it can without
    /// blocking. With every pipe done, just waits.
    fn pump(&mut self, timeout: Duration) -> io::Result<()> {
        let fd = |pipe: Option<&dyn AsRawFd>, events| libc::pollfd {
            fd: pipe.map_or(-1, |p| p.as_raw_fd()), // poll ignores a negative fd
            events,
            revents: 0,
        };
        let mut fds = [
            fd(self.stdin.as_ref().map(|p| p as &dyn AsRawFd), libc::POLLOUT),
            fd(self.out.as_ref().map(|p| p as &dyn AsRawFd), libc::POLLIN),
            fd(self.err.as_ref().map(|p| p as &dyn AsRawFd), libc::POLLIN),
        ];
        let ms = i32::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) } < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        if fds[0].revents != 0 {
            self.write_input();
        }
        if fds[1].revents != 0 {
            read_available(&mut self.out, &mut self.stdout, MAX_STDOUT);
        }
        if fds[2].revents != 0 {
            read_available(&mut self.err, &mut self.stderr, MAX_STDERR);
        }
        Ok(())
    }

    /// Write what the pipe takes of the input; close stdin when all of it is written or
    /// the program closed its end. A program that answers without reading its input
    /// breaks the pipe: that is its business, not an error of the turn.
    fn write_input(&mut self) {
        let Some(stdin) = &mut self.stdin else { return };
        while self.written < self.input.len() {
            match stdin.write(&self.input[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.stdin = None;
    }

    /// Serve the output pipes until both end or `grace` passes; stdin is closed.
    fn drain(&mut self, grace: Duration) {
        self.stdin = None;
        let until = Instant::now() + grace;
        while !self.ended() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.pump(left).is_err() {
                return;
            }
        }
    }
}

/// Read what `pipe` has now into `kept` (up to `limit` bytes); at its end (or on an
/// error) the pipe is closed.
fn read_available(pipe: &mut Option<impl Read>, kept: &mut Captured, limit: usize) {
    let Some(reader) = pipe else { return };
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => kept.keep(&buf[..n], limit),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => break,
        }
    }
    *pipe = None;
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns, with no pointer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why a run ended before the command did.
#[derive(Debug)]
enum Stop {
    Cancelled,
    Timeout,
    Wait(io::Error),
}

/// Serve the pipes until the command has exited (leaving it unreaped), `deadline`
/// passes, or `cancel` fires.
fn supervise(child: &mut Child, pipes: &mut Pipes, cancel: &Cancel, deadline: Instant) -> Result<(), Stop> {
    loop {
        if has_exited(child).map_err(Stop::Wait)? {
            return Ok(());
        }
        if cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Stop::Timeout);
        }
        pipes.pump(TICK.min(deadline - now)).map_err(Stop::Wait)?;
    }
}

/// Whether the child has exited, without reaping it: until it is reaped its pid (the id
/// of its process group) stays reserved, so [`kill_tree`] cannot hit a stranger.
fn has_exited(child: &Child) -> io::Result<bool> {
    let pid = libc::id_t::from(child.id());
    // SAFETY: waitid only writes into `info`, a plain C struct for which all zeroes is
    // a valid value; WNOWAIT leaves the child waitable for `Child::wait`.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
        // SAFETY: as above; `info` outlives the call.
        if unsafe { libc::waitid(libc::P_PID, pid, &mut info, flags) } == 0 {
            // SAFETY: waitid filled `info` (or left it zeroed: si_pid 0, still running).
            return Ok(unsafe { info.si_pid() } != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Kill the child's process group (so its descendants too), then reap the child; its
/// exit status.
fn kill_tree(child: &mut Child) -> io::Result<ExitStatus> {
    // `process_group(0)` made the child's pid its group id, and the child is not reaped
    // yet (the `wait` below does that), so the group cannot be someone else's.
    if let Ok(group) = libc::pid_t::try_from(child.id()) {
        // SAFETY: killpg has no memory effects; a group that is already gone is ESRCH.
        unsafe { libc::killpg(group, libc::SIGKILL) };
    }
    // Should the group be gone, at least the child itself goes.
    let _ = child.kill();
    child.wait()
}

/// Log what the command wrote to stderr, if anything: as a warning when the turn
/// failed, where it most likely says why.
fn log_stderr(program: &str, captured: &Captured, ok: bool) {
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

/// The variables of `vars` that `allow` names, without those whose value holds a
/// secret; `withheld` hears the name of each one left out for that reason.
fn child_env(
    allow: &[String],
    vars: impl Iterator<Item = (OsString, OsString)>,
    secrets: &[Secret],
    mut withheld: impl FnMut(&str),
) -> Vec<(OsString, OsString)> {
    let secrets: Vec<&[u8]> = secrets.iter().map(|s| s.expose().as_bytes()).filter(|s| !s.is_empty()).collect();
    let holds_secret = |value: &OsString| {
        let value = value.as_bytes();
        secrets.iter().any(|secret| value.windows(secret.len()).any(|w| w == *secret))
    };
    let mut env = Vec::new();
    for (name, value) in vars {
        let Some(listed) = allow.iter().find(|a| name.as_bytes() == a.as_bytes()) else { continue };
        if holds_secret(&value) {
            withheld(listed);
        } else {
            env.push((name, value));
        }
    }
    env
}

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
    fn the_child_env_holds_only_listed_variables_without_secrets() {
        let vars = [("PATH", "/bin"), ("TG_TOKEN", "123:abc"), ("HOME", "/h"), ("URL", "https://x/bot123:abc/")];
        let vars = vars.map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let allow: Vec<String> = ["PATH", "URL", "TG_TOKEN", "LANG"].map(String::from).to_vec();
        let mut withheld = Vec::new();
        let env = child_env(&allow, vars.into_iter(), &[Secret::new("123:abc"), Secret::new("")], |n| {
            withheld.push(n.to_string())
        });
        assert_eq!(env, [(OsString::from("PATH"), OsString::from("/bin"))]);
        assert_eq!(withheld, ["TG_TOKEN", "URL"]);
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
