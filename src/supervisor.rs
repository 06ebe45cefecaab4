/*!
The supervisor thread: carries out what the pure state machine in [`state`] decides.

It waits in one `select!` on adapter events, the shutdown signal and the earliest
deadline (a retry, a connect timeout, the end of the stop grace period), never on
anything else, so it reacts at once to every platform and never sleeps for one of them.
For each input it asks [`state::Supervisor::handle`] what to do, then spawns or stops
adapter generations, rewrites `status.json` and rebuilds the channel directory.
*/

pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, at, never, select};

use crate::adapter::{self, Event, Running, Wiring};
use crate::config::{Config, PlatformInstance};
use crate::directory::Directory;
use crate::status::Status;
use state::{Action, ExitDecision, GatewayState, Input, Supervisor};

/// After a signal, the whole stop (adapters, last replies) fits in this, so that the
/// process is gone within 2 s of SIGTERM: what follows (the last send's grace, the
/// session index and directory written) gets the rest.
const SIGNAL_BUDGET: Duration = Duration::from_millis(1600);

/// After every platform ended by itself (console end of input), how long the last
/// turns and replies may take before the process exits anyway.
const DRAIN_BUDGET: Duration = Duration::from_secs(30);

/// Everything the supervisor loop works with.
pub struct SupervisorLoop {
    instances: BTreeMap<String, PlatformInstance>,
    wiring: Wiring,
    directory: Arc<Directory>,
    running: HashMap<String, Running>,
    sup: Supervisor,
}

impl SupervisorLoop {
    pub fn new(config: &Config, wiring: Wiring, directory: Arc<Directory>) -> SupervisorLoop {
        let instances: BTreeMap<String, PlatformInstance> =
            config.platforms.iter().filter(|p| p.enabled).map(|p| (p.name.clone(), p.clone())).collect();
        let sup = Supervisor::new(config.reconnect, instances.values().map(|p| (p.name.clone(), p.kind)));
        SupervisorLoop { instances, wiring, directory, running: HashMap::new(), sup }
    }

    /// Run until the state machine decides to exit. `drain(deadline)` is called before
    /// the final status is written: it lets accepted messages be answered.
    pub fn run(
        mut self,
        events: Receiver<Event>,
        mut shutdown: Receiver<()>,
        drain: impl FnOnce(Instant),
    ) -> ExitDecision {
        let mut signalled: Option<Instant> = None;
        let mut actions = self.sup.start(Instant::now());
        let decision = loop {
            if let Some(decision) = self.apply(std::mem::take(&mut actions)) {
                break decision;
            }
            let deadline = self.sup.next_deadline().map_or_else(never, at);
            let input = select! {
                recv(events) -> ev => match ev {
                    Ok(ev) => Input::Adapter(ev),
                    // The loop's own wiring holds a sender, so this cannot happen.
                    Err(_) => unreachable!("event channel closed while the supervisor holds a sender"),
                },
                recv(shutdown) -> sig => {
                    if sig.is_err() {
                        // No signal thread (tests, tools): stop listening for one.
                        shutdown = never();
                        continue;
                    }
                    signalled.get_or_insert_with(Instant::now);
                    Input::Shutdown
                },
                recv(deadline) -> _ => Input::Deadline,
            };
            actions = self.sup.handle(input, Instant::now());
        };
        self.write_status(Some(GatewayState::Stopping.as_str()));
        let budget_end = match signalled {
            Some(t) => t + SIGNAL_BUDGET,
            None => Instant::now() + DRAIN_BUDGET,
        };
        drain(budget_end);
        self.running.clear();
        self.write_status(None);
        decision
    }

    fn apply(&mut self, actions: Vec<Action>) -> Option<ExitDecision> {
        let mut exit = None;
        for action in actions {
            match action {
                Action::Spawn { name, generation } => {
                    // The state machine only knows the names it was built from, which
                    // are the keys of `instances`, so the index cannot fail.
                    // Replacing the entry drops the previous generation's handle, which
                    // asks it to stop if it is somehow still running.
                    let running = adapter::spawn(&self.instances[&name], generation, &self.wiring);
                    self.running.insert(name, running);
                }
                Action::Stop { name } => {
                    if let Some(running) = self.running.remove(&name) {
                        running.stop();
                    }
                }
                Action::WriteStatus => self.write_status(None),
                Action::RebuildDirectory => self.directory.rebuild(),
                Action::Exit(decision) => exit = Some(decision),
            }
        }
        exit
    }

    fn write_status(&self, state: Option<&str>) {
        if let Err(e) = Status::of(&self.sup, state).write(&self.wiring.state_dir) {
            log::warn!("cannot write status.json: {e}");
        }
    }
}
