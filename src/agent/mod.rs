/*!
Agents: what turns a message into a reply.

Three backends stand behind one trait, chosen by `[agent] backend`:

- `echo` (`echo.rs`) answers `echo: <text>`, so a fresh gateway works with no model;
- `openai` (`openai.rs`, `sse.rs`) calls any OpenAI-compatible chat-completions endpoint
  (OpenAI, OpenRouter, Ollama, llama.cpp, vLLM), optionally streaming;
- `command` (`command.rs`) runs a local program with the turn as JSON on stdin.

The router calls [`Agent::reply`] on a worker thread, one turn per session at a time. A
turn can be stopped from another thread (`/stop`, an interrupting message, shutdown)
through its [`Cancel`] token; every backend notices within about 100 ms, even while
blocked on the network or on a child process: every wait selects on
[`Cancel::receiver`], and a blocking socket read is cut short by an action registered
with [`Cancel::on_cancel`] (the `openai` backend shuts its connection down). A backend
runs its turn on the calling thread and starts no thread of its own per turn.

Failures come back as an [`AgentError`]: a [`AgentErrorKind`] the router can act on
(`ContextTooLong` suggests `/new`), a short text that is safe to show the user, and a
detail for the log. Neither ever holds a secret.

The configuration (`[agent]`) is read in `config.rs`.
*/

mod command;
mod config;
mod echo;
mod openai;
mod sse;

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, select};
use parking_lot::Mutex;

pub use config::{AgentBackend, AgentConfig, BusyMode, CommandSettings, DEFAULT_ENV, OpenAiSettings, parse_config};

use crate::config::Secret;
use crate::message::{ChatMessage, Source};

/// One turn of a conversation, as the agent sees it.
#[derive(Clone, Copy, Debug)]
pub struct Turn<'a> {
    /// What the user just said.
    pub text: &'a str,
    /// The conversation this turn belongs to (stable across turns, changes on `/new`).
    pub session_key: &'a str,
    /// Earlier messages of the conversation, oldest first, without `text`.
    pub history: &'a [ChatMessage],
    /// Where the message came from.
    pub source: &'a Source,
}

/// A successful answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub text: String,
    /// Tokens the model read for this turn, when the backend reports them (else 0).
    pub input_tokens: u64,
    /// Tokens the model wrote for this turn, when the backend reports them (else 0).
    pub output_tokens: u64,
}

/// Why a turn produced no reply, in the terms the router acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentErrorKind {
    /// The endpoint refused the gateway's credentials (401/403): a configuration problem.
    Unauthorized,
    /// The endpoint kept answering 429 after the retries.
    RateLimited,
    /// The conversation no longer fits the model's context; `/new` helps.
    ContextTooLong,
    /// The backend took longer than its `timeout` (or stalled mid-stream).
    Timeout,
    /// The turn was stopped through its [`Cancel`] token.
    Cancelled,
    /// Anything else: server errors after the retries, network failures, a bad answer,
    /// a command that failed.
    Failed,
}

/// A turn that produced no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentError {
    pub kind: AgentErrorKind,
    /// One short sentence, safe to show the user: no secret, no URL, no server text.
    pub user_message: String,
    /// What happened, for the log. Never holds a secret.
    pub detail: String,
}

impl AgentError {
    pub fn new(kind: AgentErrorKind, user_message: impl Into<String>, detail: impl Into<String>) -> AgentError {
        AgentError { kind, user_message: user_message.into(), detail: detail.into() }
    }

    /// The turn was stopped on request.
    pub fn cancelled() -> AgentError {
        AgentError::new(AgentErrorKind::Cancelled, "Stopped.", "the turn was cancelled")
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for AgentError {}

/// A cancellation token for one turn. Clones share the state: `cancel()` on any clone,
/// from any thread, cancels them all, for good.
///
/// It works like the adapters' stop channel: nothing is ever sent on the channel;
/// cancelling drops the only sender, which disconnects the receiver and so wakes every
/// `select!` that includes [`Cancel::receiver`], at once and without polling. A call
/// blocked outside any `select!` (a socket read) is woken by an action registered with
/// [`Cancel::on_cancel`] that cuts it short (shuts the socket down).
#[derive(Clone)]
pub struct Cancel {
    state: Arc<Mutex<CancelState>>,
    receiver: Receiver<()>,
}

/// One action of [`Cancel::on_cancel`].
type CancelAction = Box<dyn FnOnce() + Send>;

struct CancelState {
    /// `None` once cancelled.
    sender: Option<Sender<()>>,
    /// The registered actions, by the id their [`OnCancel`] holds.
    actions: Vec<(u64, CancelAction)>,
    next_id: u64,
}

impl Cancel {
    pub fn new() -> Cancel {
        let (sender, receiver) = bounded(0);
        let state = CancelState { sender: Some(sender), actions: Vec::new(), next_id: 0 };
        Cancel { state: Arc::new(Mutex::new(state)), receiver }
    }

    /// Cancel the turn, then run the actions registered with [`Cancel::on_cancel`].
    /// Idempotent.
    pub fn cancel(&self) {
        let actions = {
            let mut state = self.state.lock();
            // Cancelled before any action runs, so that a call an action cuts short
            // sees a cancel and not a network failure.
            state.sender.take();
            std::mem::take(&mut state.actions)
        };
        actions.into_iter().for_each(|(_, action)| run_action(action));
    }

    pub fn is_cancelled(&self) -> bool {
        self.state.lock().sender.is_none()
    }

    /// Run `action` once when the turn is cancelled (at once, if it already is), until
    /// the returned guard is dropped: a later cancel then leaves it alone, so that
    /// `action` (shutting down a request's connection) never touches what outlived the
    /// call it was for. It runs on the thread that cancels (the router's), so it must
    /// not block; a panic in it is logged and goes no further.
    #[must_use = "the action is unregistered when the guard is dropped"]
    pub fn on_cancel(&self, action: impl FnOnce() + Send + 'static) -> OnCancel {
        let mut state = self.state.lock();
        if state.sender.is_none() {
            drop(state);
            run_action(Box::new(action));
            return OnCancel { state: Arc::downgrade(&self.state), id: None };
        }
        let id = state.next_id;
        state.next_id += 1;
        state.actions.push((id, Box::new(action)));
        OnCancel { state: Arc::downgrade(&self.state), id: Some(id) }
    }

    /// Wait `d`, or less if cancelled. Returns whether the token is cancelled.
    pub fn wait(&self, d: Duration) -> bool {
        select! {
            recv(self.receiver) -> _ => true,
            default(d) => self.is_cancelled(),
        }
    }

    /// A receiver that never yields a value and becomes disconnected on cancel: put it
    /// in a `select!` to wake on cancellation.
    pub fn receiver(&self) -> &Receiver<()> {
        &self.receiver
    }
}

/// An action registered with [`Cancel::on_cancel`]; dropping it unregisters the action
/// (if it has not run yet).
pub struct OnCancel {
    state: Weak<Mutex<CancelState>>,
    id: Option<u64>,
}

impl Drop for OnCancel {
    fn drop(&mut self) {
        if let (Some(state), Some(id)) = (self.state.upgrade(), self.id) {
            state.lock().actions.retain(|(other, _)| *other != id);
        }
    }
}

/// Run one cancel action. It runs on the thread that cancels, which a bug in one
/// action must not take down.
fn run_action(action: CancelAction) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(action)) {
        log::error!("a cancel action panicked: {}", crate::supervise::panic_message(&*payload));
    }
}

impl Default for Cancel {
    fn default() -> Cancel {
        Cancel::new()
    }
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cancel").field("cancelled", &self.is_cancelled()).finish()
    }
}

/// Answers turns. Shared by the router's worker threads.
pub trait Agent: Send + Sync {
    /// Answer one turn. `on_delta` receives text as it streams (only when
    /// [`Agent::streams`]); the returned [`Reply`] then holds the whole text again.
    /// Returns [`AgentErrorKind::Cancelled`] within about 100 ms of `cancel.cancel()`
    /// (the `openai` backend: once a connect or lookup in progress has ended).
    fn reply(&self, turn: &Turn<'_>, cancel: &Cancel, on_delta: &mut dyn FnMut(&str)) -> Result<Reply, AgentError>;

    /// Whether `reply` calls `on_delta` with partial text.
    fn streams(&self) -> bool {
        false
    }
}

/// `d` from now: the deadline of a turn. A `timeout` too large to add is as good as
/// none (a century), rather than a panic.
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d).or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400))).unwrap_or(now)
}

/// The agent `[agent]` configures. `secrets` are the rest of the configuration's
/// credentials (the platforms' tokens, `Config::secrets`); with the agent's own they
/// are kept from the `command` backend's program.
pub fn build(config: &AgentConfig, secrets: &[Secret]) -> Box<dyn Agent> {
    match &config.backend {
        AgentBackend::Echo => Box::new(echo::Echo),
        AgentBackend::OpenAi(settings) => Box::new(openai::OpenAi::new(settings.clone(), config.stream)),
        AgentBackend::Command(settings) => {
            let all: Vec<Secret> = secrets.iter().cloned().chain(config.secrets()).collect();
            Box::new(command::CommandAgent::new(settings.clone(), &all))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread;

    use super::*;

    #[test]
    fn error_kind_is_small() {
        assert_eq!(std::mem::size_of::<AgentErrorKind>(), 1);
    }

    #[test]
    fn cancel_wakes_a_waiting_thread_of_another_clone() {
        let cancel = Cancel::new();
        assert!(!cancel.is_cancelled());
        assert!(!cancel.wait(Duration::from_millis(1)));
        let other = cancel.clone();
        let waiter = thread::spawn(move || other.wait(Duration::from_secs(10)));
        thread::sleep(Duration::from_millis(20));
        cancel.cancel();
        // `wait` returns true only when woken by the cancel, false when its 10 s ran out.
        assert!(waiter.join().unwrap());
        assert!(cancel.is_cancelled());
        cancel.cancel();
        assert!(cancel.wait(Duration::from_secs(10)), "a cancelled token returns at once");
    }

    #[test]
    fn a_huge_timeout_is_a_far_deadline_not_a_panic() {
        assert!(deadline_after(Duration::MAX) > Instant::now() + Duration::from_secs(365 * 86_400));
        assert!(deadline_after(Duration::from_secs(1)) <= Instant::now() + Duration::from_secs(1));
    }

    #[test]
    fn on_cancel_runs_once_on_cancel_and_at_once_when_already_cancelled() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = || {
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        };
        let cancel = Cancel::new();
        let _registered = cancel.on_cancel(counter());
        let other = cancel.clone();
        let woken_cancelled = Arc::new(AtomicUsize::new(0));
        let seen = woken_cancelled.clone();
        // The token is cancelled before an action runs (a call it cuts short sees why).
        let _check = cancel.on_cancel(move || {
            seen.fetch_add(usize::from(other.is_cancelled()), Ordering::SeqCst);
        });
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        cancel.cancel();
        cancel.cancel();
        assert_eq!((runs.load(Ordering::SeqCst), woken_cancelled.load(Ordering::SeqCst)), (1, 1));
        let _late = cancel.on_cancel(counter());
        assert_eq!(runs.load(Ordering::SeqCst), 2, "registered after the cancel: runs at once");
    }

    #[test]
    fn a_dropped_on_cancel_guard_unregisters_its_action() {
        let cancel = Cancel::new();
        let registered = cancel.on_cancel(|| panic!("a finished request is left alone"));
        drop(registered);
        let _broken = cancel.on_cancel(|| panic!("a broken cancel action"));
        cancel.cancel(); // the broken action's panic is logged, not passed on
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn cancelled_receiver_is_disconnected() {
        let cancel = Cancel::new();
        assert!(cancel.receiver().try_recv().is_err_and(|e| e.is_empty()));
        cancel.cancel();
        assert!(cancel.receiver().try_recv().is_err_and(|e| e.is_disconnected()));
    }
}
