/*!
The platform contract: what a platform kind implements, and what the gateway gets back.

A kind's config table becomes a [`PlatformSpec`] (its validated settings, read by the
kind's `parse` in `crate::platforms`), which builds a fresh [`Platform`] for every
generation and declares what the platform can do ([`Capabilities`]). A [`Platform`]
connects, returning an [`Outlet`] (how other threads send to it), then receives until it
is stopped or breaks with a [`Fatal`]. The thread harness that runs it, and the
[`crate::adapter::Context`] it receives through, are in [`crate::adapter`].
*/

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::adapter::Context;
use crate::config::Secret;
use crate::delivery::SendLimits;
use crate::message::Outbound;

/// Why an adapter ended: a stable machine-readable `code`, a message for people (never
/// containing a secret), and whether trying again later can help.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fatal {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

impl Fatal {
    /// A failure that may heal by itself (network, DNS, 5xx, timeouts).
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Fatal {
        Fatal { code: code.into(), message: message.into(), retryable: true }
    }

    /// A failure that retrying cannot fix (bad token, token held by another gateway).
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Fatal {
        Fatal { code: code.into(), message: message.into(), retryable: false }
    }
}

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A platform adapter, built fresh for every generation by its `PlatformSpec`.
pub trait Platform: Send {
    /// Connect with blocking I/O: authenticate, prepare to receive. Returns the handle
    /// that sends to the platform.
    fn connect(&mut self, ctx: &Context) -> Result<Arc<dyn Outlet>, Fatal>;

    /// Receive until stopped (`Ok`) or broken (`Err`). Every blocking wait goes through
    /// the context ([`Context::interruptible`] with [`Context::on_stop`],
    /// [`Context::sleep`]) so that a stop request is honoured at once.
    fn run(&mut self, ctx: &Context) -> Result<(), Fatal>;
}

/// Sends to one platform instance. Shared by the delivery workers and the turn workers;
/// no call may block longer than the platform's own request timeout.
pub trait Outlet: Send + Sync {
    /// Send one message that already fits the platform's limit
    /// ([`crate::platform::PlatformSpec::message_limit`]). Returns the platform's id for
    /// the new message, when it has one (to edit it later).
    fn send(&self, msg: &Outbound) -> Result<Option<String>, SendError>;

    /// Whether [`Outlet::edit`] works on this platform.
    fn can_edit(&self) -> bool {
        false
    }

    /// Replace the text of a message this bot sent earlier.
    fn edit(&self, _chat_id: &str, _message_id: &str, _text: &str) -> Result<(), SendError> {
        Err(SendError::Rejected("this platform cannot edit messages".into()))
    }

    /// Show a typing indicator in a chat for a few seconds. Best effort: failures are
    /// the platform's to log, never the turn's problem. Returns within
    /// [`TYPING_TIMEOUT`]: an indicator that late is no use.
    fn typing(&self, _chat_id: &str, _thread_id: Option<&str>) {}

    /// Whether the platform drops a repeated send itself (an idempotency key), so that
    /// a send whose outcome is unknown may safely be sent again.
    fn idempotent(&self) -> bool {
        false
    }
}

/// Why a send did not go through.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The platform asked us to wait this long before the next request to this chat
    /// (HTTP 429).
    RetryAfter(Duration),
    /// The platform asked us to wait this long before any request at all: its limit
    /// is on the whole bot, not one chat (Discord's `global: true`; Telegram's 429
    /// names no scope and is always [`SendError::RetryAfter`]).
    RetryAfterAll(Duration),
    /// The request did not reach the platform, or it answered 5xx: try again later.
    Transient(String),
    /// The request went out but no answer came (a timeout after sending): the message
    /// may or may not have been delivered.
    Unknown(String),
    /// The platform refused this message for good (unknown chat, bot blocked): drop it.
    Rejected(String),
    /// The outlet is closed for good and sent nothing (the console's standard output was
    /// closed): nothing more goes to it, and the message stays queued, uncounted.
    Closed(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::RetryAfter(d) => write!(f, "rate limited, retry after {d:?}"),
            SendError::RetryAfterAll(d) => write!(f, "rate limited on every chat, retry after {d:?}"),
            SendError::Transient(m) => write!(f, "transient send failure: {m}"),
            SendError::Unknown(m) => write!(f, "outcome unknown: {m}"),
            SendError::Rejected(m) => write!(f, "rejected: {m}"),
            SendError::Closed(m) => write!(f, "closed: {m}"),
        }
    }
}

/// The longest an [`Outlet::typing`] call may take.
pub const TYPING_TIMEOUT: Duration = Duration::from_secs(2);

/// A platform kind's validated settings; builds a fresh adapter for each generation.
pub trait PlatformSpec: Send + Sync {
    fn build(&self) -> Box<dyn Platform>;

    /// The bot token that must be used by one gateway at a time on this host.
    fn lock_identity(&self) -> Option<&Secret> {
        None
    }

    /// The server the token is used against (the API base URL): two pollers conflict
    /// only on one server, so it is part of the lock's name.
    fn lock_scope(&self) -> &str {
        ""
    }

    /// Every credential this platform holds, so the logger can blank them out wherever
    /// they appear. Defaults to the lock identity; a kind with more secrets (a webhook
    /// signing key, a password) overrides it.
    fn secrets(&self) -> Vec<&Secret> {
        self.lock_identity().into_iter().collect()
    }

    /// One line for `switchboard check`. Never contains a secret.
    fn describe(&self) -> String;

    /// The longest text one message may hold, and how the platform counts it. Replies
    /// are split to fit before they are queued.
    fn message_limit(&self) -> crate::text::Limit {
        crate::text::Limit { max: 4096, unit: crate::text::Unit::Chars }
    }

    /// What the platform lets a bot send (messages and edits), enforced by the outbox
    /// before each request. Defaults to no limits.
    fn send_limits(&self) -> SendLimits {
        SendLimits::NONE
    }
}
