/*!
Starting and stopping the whole gateway: the wiring between the pieces.

[`run`] opens the state (inbox, outbox, sessions, channel directory), starts the
threads in an order that keeps every message safe, supervises until the gateway decides
to stop, then drains what it can and returns the exit code:

1. The inbox is read *before* any adapter runs: messages accepted before a crash are
   replayed first, and a platform cannot add to the list while it is being read.
2. The router and its workers start next, then the outbox workers, then the supervisor
   spawns the adapters.
3. On the way out: the adapters stop first (nothing new comes in), then accepted
   messages are answered and replies sent until the drain deadline; what is left stays
   on disk for the next start.
*/

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded, unbounded};

use crate::adapter::Wiring;
use crate::agent;
use crate::auth::{self, Auth};
use crate::config::Config;
use crate::delivery::{self, Outbox};
use crate::directory::Directory;
use crate::inbox::Inbox;
use crate::router::{Router, RouterConfig, Services};
use crate::session::SessionStore;
use crate::supervisor::SupervisorLoop;
use crate::typing::Typing;

/// How long, after the outbox was told to quit, a send already in flight may finish.
const LAST_SEND_GRACE: Duration = Duration::from_millis(150);

/// Run the gateway until it stops; the exit code. `utc_offset_secs` is the local
/// time offset (read at startup, while the process had one thread).
pub fn run(config: &Config, utc_offset_secs: i32, shutdown: Receiver<()>) -> io::Result<i32> {
    let state_dir = &config.gateway.state_dir;
    let inbox = Arc::new(Inbox::open_with(state_dir, config.gateway.dedup_window)?);
    let replay = inbox.pending();
    let outbox = Outbox::open(state_dir, config.delivery.clone(), &delivery::platform_limits(config))?;
    let directory = Arc::new(Directory::load(state_dir));
    let sessions = Arc::new(SessionStore::open(state_dir, config.sessions.clone(), utc_offset_secs)?);
    let auth = build_auth(config);
    if let Some(warning) = auth::startup_warning(&auth) {
        log::warn!("{warning}");
    }
    let services = Services {
        agent: agent::build(&config.agent),
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
    let wiring = Wiring {
        events: events_tx,
        inbound: inbound_tx,
        inbox,
        outlets: outbox.clone(),
        state_dir: state_dir.clone(),
        lock_dir: config.gateway.lock_dir.clone(),
    };
    let decision = SupervisorLoop::new(config, wiring, directory.clone()).run(events, shutdown, |deadline| {
        if !router.drain(deadline) {
            log::warn!("stopping with messages unanswered; they are answered after the next start");
        }
        let left = outbox.drain(deadline);
        if left > 0 {
            log::warn!("stopping with {left} replies not delivered; they stay in the outbox for the next start");
        }
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
        workers: config.agent.workers,
        busy: config.agent.busy,
        stream: config.agent.stream,
        edit_interval: config.agent.edit_interval,
        group_sessions_per_user: config.sessions.group_sessions_per_user,
        limits: enabled.clone().map(|p| (p.name.clone(), p.spec.message_limit())).collect::<HashMap<_, _>>(),
        platforms: enabled.map(|p| p.name.clone()).collect(),
    }
}
