/*!
The router: every accepted inbound message passes through here, in arrival order.

For each message it records the chat in the channel directory, checks access (a
stranger in a DM gets a pairing code, in a group nothing), answers the gateway's own
chat commands at once, and otherwise hands the message to a turn on the worker pool.

At most one turn runs per session key. A message for a session that is busy waits in
that session's queue (`busy = "queue"`) or interrupts the running turn and goes next
(`busy = "interrupt"`); `/queue <text>` always waits. Sessions are independent: up to
`max_concurrent_turns` turns run at the same time, each on a turn thread of the [`Pool`];
when more sessions want one, the others wait for a free thread in the order they came.

Real models take seconds, so a turn mostly waits, and a small fixed pool makes the
fiftieth user wait for forty-nine answers. The pool starts a thread (`turn-N`) when a turn
finds none free, up to the cap, and a thread that found no turn for [`TURN_IDLE`] ends: an
idle gateway keeps no turn thread, a busy one as many as it has turns running.

The turn threads and the router run under [`supervise`]: a turn thread that panics is
restarted and runs its turn again (twice at most, then the message gets an apology); a
panic of the router, whose table of running turns cannot be rebuilt, ends the process
with code 1.

The router counts the messages it has accepted and not yet finished, so a stopping
gateway can [`Router::drain`]: answer what it accepted before exiting. What it cannot
finish stays in the inbox journal and is answered after the restart.
*/

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Select, Sender, unbounded};
use parking_lot::{Condvar, Mutex};

use crate::agent::{BusyMode, Cancel};
use crate::auth::Decision;
use crate::commands::{self, Command};
use crate::inbox::Accepted;
use crate::message::Inbound;
use crate::services::Services;
use crate::session;
use crate::supervise;
use crate::turn::{self, Work};
use crate::workqueue::{Pushed, WorkQueue};

/// Counts accepted messages that are not finished yet, for [`Router::drain`].
#[derive(Default)]
struct OpenCount {
    open: Mutex<usize>,
    changed: Condvar,
}

impl OpenCount {
    fn finish(&self) {
        *self.open.lock() -= 1;
        self.changed.notify_all();
    }
}

/// A handle on the router thread.
#[derive(Clone)]
pub struct Router {
    inbound: Receiver<Accepted>,
    open: Arc<OpenCount>,
}

impl Router {
    /// Start the router; its turn threads start on demand. `replay` (the inbox's
    /// unfinished messages from before a restart) is handled first, before anything
    /// from `inbound`.
    pub fn start(inbound: Receiver<Accepted>, services: Services, replay: Vec<Accepted>) -> std::io::Result<Router> {
        let services = Arc::new(services);
        let open = Arc::new(OpenCount::default());
        let (done_tx, done_rx) = unbounded::<Done>();
        let pool = Pool::new(services.clone(), done_tx, turn_idle());
        let router = Router { inbound, open: open.clone() };
        let mut dispatcher = Dispatcher { services, open, slots: HashMap::new(), pool, turns: 0, since_release: 0 };
        let inbound = router.inbound.clone();
        // The table of running turns cannot be rebuilt after a panic: the gateway exits 1
        // and the inbox journal answers the accepted messages after the restart.
        supervise::spawn_essential("router", move || dispatcher.run(replay, &inbound, &done_rx))?;
        Ok(router)
    }

    /// Wait until every accepted message is finished (answered, or found needing no
    /// answer), or until `deadline`. Returns whether it drained.
    pub fn drain(&self, deadline: Instant) -> bool {
        let mut open = self.open.open.lock();
        while *open > 0 || !self.inbound.is_empty() {
            if self.open.changed.wait_until(&mut open, deadline).timed_out() {
                return false;
            }
        }
        true
    }
}

/// How often a turn may panic before its message gets [`PANIC_APOLOGY`] instead.
const TURN_PANICS: u32 = 2;

/// The answer to a message whose turn panicked [`TURN_PANICS`] times.
pub const PANIC_APOLOGY: &str = "Sorry, something went wrong while answering this message, so it was skipped.";

/// How long a turn thread waits for a turn before it ends. Long enough that a steady
/// trickle of messages reuses threads, short enough that a burst's threads are gone soon
/// after it.
pub const TURN_IDLE: Duration = Duration::from_secs(30);

/// Debug builds only: milliseconds that replace [`TURN_IDLE`], so that a test can watch
/// idle turn threads end. A release build ignores it.
pub const TURN_IDLE_VAR: &str = "SWITCHBOARD_TEST_TURN_IDLE_MS";

fn turn_idle() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var(TURN_IDLE_VAR).ok().and_then(|v| v.parse().ok()) {
        return Duration::from_millis(ms);
    }
    TURN_IDLE
}

/// The turn threads: started when a turn finds none free, at most
/// `max_concurrent_turns`, ended after [`TURN_IDLE`] without a turn. Turns wait in one
/// FIFO ([`WorkQueue`]), so the first thread free takes the oldest.
struct Pool {
    shared: Arc<PoolShared>,
}

struct PoolShared {
    services: Arc<Services>,
    work: WorkQueue<Work>,
    /// Held here as well as by every thread: with no thread alive, the router's
    /// channel of ended turns must still be open.
    done: Sender<Done>,
}

impl Pool {
    fn new(services: Arc<Services>, done: Sender<Done>, idle: Duration) -> Pool {
        let work = WorkQueue::new(services.config.max_concurrent_turns, idle);
        Pool { shared: Arc::new(PoolShared { services, work, done }) }
    }

    /// Run `work` on a waiting thread, a new one, or (all `max_concurrent_turns` busy)
    /// the first one to finish its turn.
    fn submit(&self, work: Work) {
        let Pushed::StartThread(number) = self.shared.work.push(work) else { return };
        if let Err(e) = supervise::spawn(format!("turn-{number}"), turn_worker(self.shared.clone())) {
            self.shared.work.not_started();
            // The turn stays queued: the next thread free, or the next start of one,
            // takes it.
            log::error!("cannot start a turn thread: {e}; the turn waits for another one");
        }
    }
}

/// The body of a turn thread: run turns as they come, tell the router of each one's
/// end, and return (ending the thread) when idle. It is called again after a panic
/// ([`supervise::spawn`]) and finds the turn the panic interrupted still in hand: it runs
/// it again, and after its second panic answers it with [`PANIC_APOLOGY`], so a message
/// that always panics cannot loop.
fn turn_worker(pool: Arc<PoolShared>) -> impl FnMut() + Send + 'static {
    // The turn being run and how often it panicked; kept across a restart.
    let mut in_hand: Option<(Work, u32)> = None;
    move || {
        let services = &pool.services;
        loop {
            let (next, panics) = match in_hand.take() {
                Some((interrupted, panics)) => {
                    services.typing.end(interrupted.turn);
                    (interrupted, panics + 1)
                }
                None => match pool.work.next() {
                    Some(next) => (next, 0),
                    None => return,
                },
            };
            let (current, panics) = in_hand.insert((next, panics));
            if *panics < TURN_PANICS {
                turn::run(services, current);
            } else {
                give_up(services, current);
            }
            let (finished, _) = in_hand.take().expect("put in hand above");
            let _ = pool.done.send(Done { key: finished.key, turn: finished.turn });
        }
    }
}

/// Answer a message whose turn keeps panicking with an apology, and finish it. An
/// apology that cannot be stored (a full disk) leaves the message in the inbox for the
/// next start.
fn give_up(s: &Services, work: &Work) {
    let msg = &work.accepted.msg;
    log::error!("{}: the turn panicked {TURN_PANICS} times; answering with an apology", work.key);
    if s.reply(msg, PANIC_APOLOGY.to_string()) {
        s.inbox.complete(&work.accepted.id);
    }
}

/// A worker finished a turn.
struct Done {
    key: String,
    turn: u64,
}

/// The turn running for a session, and what waits behind it.
#[derive(Default)]
struct Slot {
    running: Option<Running>,
    queue: VecDeque<Accepted>,
}

struct Running {
    turn: u64,
    cancel: Cancel,
    started: Instant,
}

/// The router thread's state.
struct Dispatcher {
    services: Arc<Services>,
    open: Arc<OpenCount>,
    slots: HashMap<String, Slot>,
    pool: Pool,
    turns: u64,
    /// Turns finished since freed memory was last handed back ([`RELEASE_AFTER`]).
    since_release: u64,
}

/// After this many turns, the router hands freed memory back to the system when it has
/// nothing left to do: a burst's backlog is freed then, and would otherwise stay resident.
const RELEASE_AFTER: u64 = 1000;

impl Dispatcher {
    fn run(&mut self, replay: Vec<Accepted>, inbound: &Receiver<Accepted>, done: &Receiver<Done>) {
        if !replay.is_empty() {
            log::info!("answering {} message(s) accepted before the last stop", replay.len());
        }
        for accepted in replay {
            *self.open.open.lock() += 1;
            self.take(accepted);
        }
        loop {
            let mut ready = Select::new();
            let (inbound_index, done_index) = (ready.recv(inbound), ready.recv(done));
            let index = ready.ready();
            if index == done_index {
                match done.try_recv() {
                    Ok(d) => self.finished(d),
                    Err(e) if e.is_disconnected() => return,
                    Err(_) => {}
                }
            } else if index == inbound_index {
                // Taken under the count's lock, so `drain` never sees the channel empty
                // while a message is between the two.
                let taken = {
                    let mut open = self.open.open.lock();
                    let taken = inbound.try_recv();
                    if taken.is_ok() {
                        *open += 1;
                    }
                    taken
                };
                match taken {
                    Ok(accepted) => self.take(accepted),
                    Err(e) if e.is_disconnected() => return,
                    Err(_) => {}
                }
            }
        }
    }

    /// One accepted message: access, command, or a turn.
    fn take(&mut self, accepted: Accepted) {
        crate::testhook::panic_point("router");
        let s = &self.services;
        let source = &accepted.msg.source;
        s.directory.observe(source);
        match s.auth.check(source, SystemTime::now()) {
            Decision::Allow => {}
            Decision::Ignore => return self.finish(&accepted),
            Decision::Reply(text) => return self.answer(&accepted, text),
        }
        let key = session::session_key(source, s.config.group_sessions_per_user);
        match commands::parse(&accepted.msg.text) {
            Some(Command::Queue(text)) => {
                let msg = Inbound { text, ..accepted.msg };
                self.submit(key, Accepted { id: accepted.id, msg }, true);
            }
            Some(command) => self.command(command, &accepted, &key),
            None => self.submit(key, accepted, false),
        }
    }

    /// Start a turn for `accepted`, or queue it behind the running one.
    fn submit(&mut self, key: String, accepted: Accepted, never_interrupt: bool) {
        let interrupt = self.services.config.busy == BusyMode::Interrupt && !never_interrupt;
        let Some(slot) = self.slots.get_mut(&key).filter(|s| s.running.is_some()) else {
            return self.start(key, accepted);
        };
        if interrupt && let Some(running) = &slot.running {
            log::debug!("{key}: a new message interrupts the running turn");
            running.cancel.cancel();
        }
        slot.queue.push_back(accepted);
    }

    fn start(&mut self, key: String, accepted: Accepted) {
        self.turns += 1;
        let cancel = Cancel::new();
        let running = Running { turn: self.turns, cancel: cancel.clone(), started: Instant::now() };
        self.slots.entry(key.clone()).or_default().running = Some(running);
        self.pool.submit(Work { turn: self.turns, key, accepted, cancel, known_answer: None });
    }

    /// A turn ended: its message is finished; the next one of the session may start.
    fn finished(&mut self, done: Done) {
        self.open.finish();
        self.since_release += 1;
        if self.since_release >= RELEASE_AFTER && *self.open.open.lock() == 0 {
            self.since_release = 0;
            crate::memory::release_freed();
        }
        let Some(slot) = self.slots.get_mut(&done.key) else { return };
        if slot.running.as_ref().is_some_and(|r| r.turn == done.turn) {
            slot.running = None;
        }
        match slot.queue.pop_front() {
            Some(next) => self.start(done.key, next),
            None => {
                self.slots.remove(&done.key);
                // After a burst over thousands of chats, give back the table's room.
                if self.slots.capacity() > 4 * self.slots.len() + 1024 {
                    self.slots.shrink_to(2 * self.slots.len());
                }
            }
        }
    }

    /// A message needing no turn is finished: out of the inbox and the count.
    fn finish(&self, accepted: &Accepted) {
        self.services.inbox.complete(&accepted.id);
        self.open.finish();
    }

    fn command(&mut self, command: Command, accepted: &Accepted, key: &str) {
        let text = match command {
            Command::Help => commands::HELP.to_string(),
            Command::Stop => self.stop(key),
            Command::New => self.new_session(accepted, key),
            Command::Status => self.status(key),
            Command::Queue(_) => unreachable!("/queue is submitted as a turn by `take`"),
        };
        self.answer(accepted, text);
    }

    /// Reply `text` to a message that needs no turn. A reply that cannot be stored (a
    /// full disk) goes to a turn thread, which keeps trying without holding up the router.
    fn answer(&mut self, accepted: &Accepted, text: String) {
        if self.services.reply(&accepted.msg, text.clone()) {
            return self.finish(accepted);
        }
        self.turns += 1;
        // A key of its own: no session waits for it, and `finished` finds no slot.
        let key = format!("reply:{}", accepted.id);
        let work =
            Work { turn: self.turns, key, accepted: accepted.clone(), cancel: Cancel::new(), known_answer: Some(text) };
        self.pool.submit(work);
    }

    fn stop(&mut self, key: &str) -> String {
        match self.slots.get(key).and_then(|s| s.running.as_ref()) {
            Some(running) => {
                running.cancel.cancel();
                "Stopped.".to_string()
            }
            None => "Nothing is running.".to_string(),
        }
    }

    /// `/new`: cancel the running turn, drop what waits, start a fresh session.
    fn new_session(&mut self, accepted: &Accepted, key: &str) -> String {
        let mut dropped = vec![];
        if let Some(slot) = self.slots.get_mut(key) {
            if let Some(running) = &slot.running {
                running.cancel.cancel();
            }
            dropped.extend(slot.queue.drain(..));
        }
        for queued in &dropped {
            self.finish(queued);
        }
        match self.services.sessions.reset(&accepted.msg.source, SystemTime::now()) {
            Ok(_) => "Started a new session.".to_string(),
            Err(e) => {
                log::error!("{key}: cannot start a new session: {e}");
                "Sorry, I could not start a new session (the gateway could not write its state).".to_string()
            }
        }
    }

    fn status(&self, key: &str) -> String {
        let s = &self.services;
        let mut lines = vec![];
        match s.sessions.get(key) {
            Some(entry) => {
                let age = crate::status::unix_now() - entry.created_at;
                lines.push(format!("Session {} (started {} ago)", entry.session_id, crate::status::span(age)));
                lines.push(format!("Tokens: {} in, {} out", entry.input_tokens, entry.output_tokens));
            }
            None => lines.push("No session yet.".to_string()),
        }
        let running = self.slots.get(key).and_then(|s| s.running.as_ref());
        lines.push(match running {
            Some(r) => format!("Answering for {}.", crate::status::span(r.started.elapsed().as_secs_f64())),
            None => "Idle.".to_string(),
        });
        let connected: Vec<&str> =
            s.config.platforms.iter().filter(|p| s.outbox.connected(p)).map(String::as_str).collect();
        lines.push(format!(
            "Connected platforms: {}",
            if connected.is_empty() { "none".into() } else { connected.join(", ") }
        ));
        lines.join("\n")
    }
}
