/*!
Starting and stopping the whole gateway: the wiring between the pieces.

[`claim_state_dir`] comes first: it creates the state directory and takes its lock, so a
second gateway on the same directory refuses to start before it touches anything in it.
[`run`] then opens the state (inbox, outbox, sessions, channel directory), starts the
threads in an order that keeps every message safe, supervises until the gateway decides
to stop, then drains what it can and returns the exit code:

1. The inbox is read *before* any adapter runs: messages accepted before a crash are
   replayed first, and a platform cannot add to the list while it is being read.
2. The router and its workers start next, then the outbox workers, then the supervisor
   spawns the adapters. Every thread runs under [`supervise`], the supervisor loop on
   this one too: a panic restarts the thread or ends the process with code 1, never a
   gateway with a dead part.
3. On the way out: the adapters stop first (nothing new comes in), then accepted
   messages are answered and replies sent until the drain deadline; what is left stays
   on disk for the next start.
*/

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded, unbounded};

use crate::adapter::Wiring;
use crate::agent;
use crate::auth::{self, Auth};
use crate::config::Config;
use crate::delivery::{self, Outbox};
use crate::directory::Directory;
use crate::fsutil;
use crate::inbox::Inbox;
use crate::lock::{StateLock, StateLockError};
use crate::router::Router;
use crate::services::{RouterConfig, Services};
use crate::session::SessionStore;
use crate::supervise;
use crate::supervisor::SupervisorLoop;
use crate::typing::Typing;

/// How long, after the outbox was told to quit, a send already in flight may finish.
const LAST_SEND_GRACE: Duration = Duration::from_millis(150);

/// Why the gateway could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// Part of the state directory cannot be used: the setup is unusable (exit 78).
    State { what: &'static str, path: PathBuf, source: io::Error },
    /// Another gateway runs on this state directory (exit 78).
    Busy { state_dir: PathBuf, pid: Option<u32> },
    /// A thread could not be started: worth a restart (exit 1).
    Internal(io::Error),
}

impl StartError {
    /// Everything about the state directory is a setup problem a restart cannot fix.
    pub fn is_setup(&self) -> bool {
        !matches!(self, StartError::Internal(_))
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::State { what, path, source } => write!(
                f,
                "cannot use {what} {}: {source}; the state directory must be a directory this user can \
                 write (check its owner, mode and mount), or set [gateway] state_dir elsewhere",
                path.display()
            ),
            StartError::Busy { state_dir, pid } => {
                let who = pid.map_or("another gateway".to_string(), |pid| format!("another gateway (PID {pid})"));
                write!(
                    f,
                    "{who} is already running with state_dir {}: two would lose each other's messages; \
                     stop it, or give this one a state_dir of its own (`send`, `status` and `pairing` \
                     work beside a running gateway)",
                    state_dir.display()
                )
            }
            StartError::Internal(e) => write!(f, "cannot start: {e}"),
        }
    }
}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> StartError {
        StartError::Internal(e)
    }
}

/// Create `state_dir` (0700) and take its lock, before anything in it is opened.
pub fn claim_state_dir(state_dir: &Path) -> Result<StateLock, StartError> {
    let state = |source| StartError::State { what: "state_dir", path: state_dir.to_path_buf(), source };
    if state_dir.exists() && !state_dir.is_dir() {
        return Err(state(io::Error::new(io::ErrorKind::NotADirectory, "it is not a directory")));
    }
    fsutil::create_private_dir(state_dir).map_err(state)?;
    StateLock::acquire(state_dir).map_err(|e| match e {
        StateLockError::Held(pid) => StartError::Busy { state_dir: state_dir.to_path_buf(), pid },
        StateLockError::Io(source) => {
            StartError::State { what: "the lock file", path: state_dir.join(StateLock::FILE), source }
        }
    })
}

/// Run the gateway until it stops; the exit code. `utc_offset_secs` is the local
/// time offset (read at startup, while the process had one thread). The caller holds
/// the state directory ([`claim_state_dir`]).
pub fn run(config: &Config, utc_offset_secs: i32, shutdown: Receiver<()>) -> Result<i32, StartError> {
    let state_dir = &config.gateway.state_dir;
    let part = |what: &'static str, dir: &str| {
        let path = state_dir.join(dir);
        move |source| StartError::State { what, path, source }
    };
    let inbox = Arc::new(Inbox::open_with(state_dir, config.gateway.dedup_window).map_err(part("the inbox", "inbox"))?);
    let replay = inbox.pending();
    let outbox = Outbox::open(state_dir, config.delivery.clone(), &delivery::platform_limits(config))
        .map_err(part("the outbox", "outbox"))?;
    let directory = Arc::new(Directory::load(state_dir));
    let sessions = SessionStore::open(state_dir, config.sessions.clone(), utc_offset_secs)
        .map_err(part("the sessions", "sessions"))?;
    let sessions = Arc::new(sessions);
    let auth = build_auth(config);
    if let Some(warning) = auth::startup_warning(&auth) {
        log::warn!("{warning}");
    }
    let services = Services {
        agent: agent::build(&config.agent, &config.secrets()),
        sessions: sessions.clone(),
        auth,
        outbox: outbox.clone(),
        directory: directory.clone(),
        inbox: inbox.clone(),
        typing: Typing::start(outbox.clone())?,
        config: router_config(config),
    };
    // Bounded: a flood of inbound messages slows the adapters instead of filling memory.
    let (inbound_tx, inbound) = bounded(1024);
    let router = Router::start(inbound, services, replay)?;
    outbox.start_workers()?;
    let (events_tx, events) = unbounded();
    let wiring =
        Wiring { events: events_tx, inbound: inbound_tx, inbox, outlets: outbox.clone(), state_dir: state_dir.clone() };
    let supervisor = SupervisorLoop::new(config, wiring, directory.clone());
    let decision = supervise::essential("supervisor", || {
        supervisor.run(events, shutdown, |deadline| {
            if !router.drain(deadline) {
                log::warn!("stopping with messages unanswered; they are answered after the next start");
            }
            let left = outbox.drain(deadline);
            if left > 0 {
                log::warn!("stopping with {left} replies not delivered; they stay in the outbox for the next start");
            }
        })
    });
    outbox.quit();
    if !outbox.join(Instant::now() + LAST_SEND_GRACE) {
        log::warn!("stopping while a delivery is being sent; its outcome will be unknown");
    }
    if let Err(e) = sessions.flush() {
        log::warn!("cannot write the session index: {e}");
    }
    directory.flush();
    log::info!("stopped (exit code {})", decision.code);
    Ok(decision.code)
}

fn build_auth(config: &Config) -> Auth {
    let platforms: Vec<_> =
        config.platforms.iter().filter(|p| p.enabled).map(|p| (p.name.clone(), p.kind, p.access.clone())).collect();
    Auth::new(&config.gateway.state_dir, &config.access, &platforms)
}

fn router_config(config: &Config) -> RouterConfig {
    let enabled = config.platforms.iter().filter(|p| p.enabled);
    RouterConfig {
        max_concurrent_turns: config.agent.max_concurrent_turns,
        busy: config.agent.busy,
        stream: config.agent.stream,
        edit_interval: config.agent.edit_interval,
        group_sessions_per_user: config.sessions.group_sessions_per_user,
        limits: enabled.clone().map(|p| (p.name.clone(), p.spec.message_limit())).collect::<HashMap<_, _>>(),
        platforms: enabled.map(|p| p.name.clone()).collect(),
    }
}
