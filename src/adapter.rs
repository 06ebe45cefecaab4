/*!
The contract between the gateway and a platform, and the thread harness that runs it.

A platform adapter is a [`Platform`]: a blocking [`Platform::connect`] that returns an
[`Outlet`] (how to send to the platform from other threads), then a blocking
[`Platform::run`] that receives until it is stopped or breaks. Everything a platform
needs from the gateway comes through its [`Context`]; it never sees the supervisor.

[`spawn`] runs one *generation* of a platform instance on its own named thread
(`adapter-<name>`): take the host-wide token lock, connect, publish the outlet, report
[`Event::Connected`], run, and report how it ended. A panic is caught and reported as a
retryable fatal `adapter_panic`, so one broken adapter never takes the gateway down.
However a generation ends, its platform is no longer listed as connected; after a fatal
end its outlet is withdrawn, after a clean one it still sends the replies already queued.

A stop request must be honoured at once, even by an adapter blocked in a 30 s long poll,
and without a thread per blocking call to wait on it (issue 8 §4: that was a thread per
long poll). So the adapter makes its blocking calls on its own thread and registers, once,
how to cut them short ([`Context::on_stop`]: shut down the ureq agent or the socket the
calls run on). The [`Stop`] handle that requests the stop runs those actions, and the
blocked read returns at once with an error that [`Context::interruptible`] reports as
[`Stopped`].
*/

use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, select};
use parking_lot::Mutex;

use crate::config::PlatformInstance;
use crate::delivery::Outbox;
use crate::inbox::{Accepted, Inbox};
use crate::lock::TokenLock;
use crate::message::Inbound;
use crate::platform::Fatal;
use crate::supervise;

/// What an adapter thread tells the supervisor. Each carries the generation it belongs
/// to, so the supervisor can ignore a thread it has already replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Connected and receiving.
    Connected { name: String, generation: u64 },
    /// Ended by an error it could not absorb.
    Fatal { name: String, generation: u64, fatal: Fatal },
    /// Ended cleanly: a stop request, or the platform's input ended (console EOF).
    Stopped { name: String, generation: u64 },
}

/// First wait after a failed inbox write, doubling up to the cap.
const JOURNAL_RETRY: Duration = Duration::from_secs(1);
const JOURNAL_RETRY_CAP: Duration = Duration::from_secs(30);

/// A stop was requested while waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped;

/// What a running adapter may use of the gateway.
pub struct Context {
    /// The instance name (`[platforms.NAME]`).
    pub name: String,
    pub generation: u64,
    /// Where the platform keeps its cursors (`state_dir`).
    pub state_dir: PathBuf,
    inbound: Sender<Accepted>,
    /// The journal that makes a hand-over durable; `None` outside the gateway (tests).
    inbox: Option<Arc<Inbox>>,
    /// Never sent on: [`Stop`] drops the sender to request a stop, which wakes every
    /// `select!` that includes this receiver.
    stop: Receiver<()>,
    /// What wakes the adapter's blocked I/O on a stop.
    on_stop: Arc<StopActions>,
    /// When the adapter last showed it is alive, in milliseconds since the Unix epoch.
    progress: Arc<AtomicU64>,
}

impl Context {
    /// A context for driving a platform outside the supervisor (tests, tools), with no
    /// inbox journal. Dropping the returned [`Stop`] requests a stop.
    pub fn new(name: &str, state_dir: PathBuf, inbound: Sender<Accepted>) -> (Context, Stop) {
        Context::with_stop(name.to_string(), 0, state_dir, inbound, None)
    }

    fn with_stop(
        name: String,
        generation: u64,
        state_dir: PathBuf,
        inbound: Sender<Accepted>,
        inbox: Option<Arc<Inbox>>,
    ) -> (Context, Stop) {
        let (signal, stop) = bounded(0);
        let on_stop = Arc::new(StopActions::default());
        let handle = Stop { signal: Some(signal), actions: on_stop.clone() };
        let progress = Arc::new(AtomicU64::new(0));
        (Context { name, generation, state_dir, inbound, inbox, stop, on_stop, progress }, handle)
    }

    /// Record a sign of life: a completed long poll, a received frame, a heartbeat ACK.
    /// What liveness checks read ([`Context::last_progress`]).
    pub fn progress(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        self.progress.store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// When [`Context::progress`] was last called, if ever.
    pub fn last_progress(&self) -> Option<SystemTime> {
        let millis = self.progress.load(Ordering::Relaxed);
        (millis > 0).then(|| UNIX_EPOCH + Duration::from_millis(millis))
    }

    /// True once a stop has been requested.
    pub fn stop_requested(&self) -> bool {
        matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Hand a received message to the gateway. When this returns `Ok`, the message is
    /// safe (journaled in the inbox, or recognised as one accepted before): only then
    /// may the platform's cursor move past it. While the journal cannot be written (a
    /// full disk) it waits and retries, so the cursor stays put and nothing is lost.
    pub fn deliver(&self, msg: Inbound) -> Result<(), Stopped> {
        self.deliver_batch(vec![msg])
    }

    /// [`Context::deliver`] for several messages at once (one disk sync for all): what
    /// a platform that receives in batches (Telegram's `getUpdates`) should call.
    pub fn deliver_batch(&self, msgs: Vec<Inbound>) -> Result<(), Stopped> {
        let accepted = match &self.inbox {
            Some(inbox) => self.journal(inbox, msgs)?,
            None => msgs.into_iter().map(|msg| Accepted { id: String::new(), msg }).collect(),
        };
        for one in accepted {
            select! {
                send(self.inbound, one) -> res => res.map_err(|_| Stopped)?,
                recv(self.stop) -> _ => return Err(Stopped),
            }
        }
        Ok(())
    }

    /// Write `msgs` to the inbox, retrying with growing waits while that fails.
    fn journal(&self, inbox: &Inbox, msgs: Vec<Inbound>) -> Result<Vec<Accepted>, Stopped> {
        let mut wait = JOURNAL_RETRY;
        loop {
            match inbox.accept_batch(msgs.clone()) {
                Ok(accepted) => return Ok(accepted),
                Err(e) => {
                    log::error!("{}: cannot record an inbound message ({e}); retrying in {wait:?}", self.name);
                    self.sleep(wait)?;
                    wait = (wait * 2).min(JOURNAL_RETRY_CAP);
                }
            }
        }
    }

    /// Wait for the next value on `rx`. `Ok(None)` means the channel closed.
    pub fn recv<T>(&self, rx: &Receiver<T>) -> Result<Option<T>, Stopped> {
        select! {
            recv(rx) -> res => Ok(res.ok()),
            recv(self.stop) -> _ => Err(Stopped),
        }
    }

    /// Wait `d`, or less if a stop is requested.
    pub fn sleep(&self, d: Duration) -> Result<(), Stopped> {
        select! {
            recv(self.stop) -> _ => Err(Stopped),
            default(d) => Ok(()),
        }
    }

    /// Run `action` when a stop is requested (at once, if one already was), to wake
    /// the blocking calls of this adapter: `agent.shutdown()` of the ureq agent its long
    /// polls run on, `shutdown(Both)` of its socket. Register once per agent or socket,
    /// not per call. The action runs on the thread that requests the stop (the
    /// supervisor's), so it must not block; a panic in it is logged and goes no further.
    pub fn on_stop(&self, action: impl FnOnce() + Send + 'static) {
        self.on_stop.add(Box::new(action));
    }

    /// Make a blocking call (a long poll) on this thread, unless a stop was requested.
    /// The call must be one that a stop cuts short, through an action registered with
    /// [`Context::on_stop`]: a stop then makes it fail at once, and its failure is
    /// reported as [`Stopped`], never as a network error. A result that comes in after
    /// a stop is dropped unread, which is safe because nothing is acknowledged to a
    /// platform until its result has been handled.
    ///
    /// A DNS lookup or a TCP connect in progress is not cut short (ureq's `shutdown`
    /// closes established connections only): a stop during one waits for its own
    /// timeout (`timeout_resolve`, `timeout_connect`). A name is looked up at most once
    /// a minute ([`crate::net::resolve`]), and a graceful stop of the gateway gives up
    /// on an adapter after the stop grace, so only a stop during a connect attempt to
    /// an unresponsive host is slow.
    ///
    /// A panic in `f` unwinds the adapter thread, so the harness reports it as the
    /// retryable `adapter_panic`: it is never mistaken for a stop.
    pub fn interruptible<T>(&self, f: impl FnOnce() -> T) -> Result<T, Stopped> {
        if self.stop_requested() {
            return Err(Stopped);
        }
        crate::testhook::panic_point("adapter-io");
        let value = f();
        if self.stop_requested() { Err(Stopped) } else { Ok(value) }
    }
}

/// Requests a stop of one adapter generation when dropped (or on [`Stop::stop`]): wakes
/// every wait of its [`Context`], then runs the actions it registered with
/// [`Context::on_stop`].
pub struct Stop {
    signal: Option<Sender<()>>,
    actions: Arc<StopActions>,
}

impl Stop {
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        // The stop is visible before any socket closes, so that an adapter woken by a
        // closed connection sees a stop and not a network failure.
        drop(self.signal.take());
        self.actions.run();
    }
}

/// One action of [`Context::on_stop`].
type StopAction = Box<dyn FnOnce() + Send>;

/// The actions of [`Context::on_stop`], and whether they already ran.
#[derive(Default)]
struct StopActions {
    state: Mutex<(bool, Vec<StopAction>)>,
}

impl StopActions {
    fn add(&self, action: StopAction) {
        let mut state = self.state.lock();
        if state.0 {
            drop(state);
            run_action(action);
        } else {
            state.1.push(action);
        }
    }

    fn run(&self) {
        let actions = {
            let mut state = self.state.lock();
            state.0 = true;
            mem::take(&mut state.1)
        };
        actions.into_iter().for_each(run_action);
    }
}

/// Run one stop action. It runs on the supervisor's thread, which a bug in one adapter's
/// action must not take down.
fn run_action(action: StopAction) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(action)) {
        log::error!("a stop action panicked: {}", supervise::panic_message(&*payload));
    }
}

/// What the harness needs to run adapters: where events, inbound messages and outlets go.
#[derive(Clone)]
pub struct Wiring {
    pub events: Sender<Event>,
    pub inbound: Sender<Accepted>,
    /// Journals every inbound message before the adapter may acknowledge it.
    pub inbox: Arc<Inbox>,
    /// Where outlets are published, and where replies are queued.
    pub outlets: Outbox,
    pub state_dir: PathBuf,
}

/// A running generation. Dropping it (or calling [`Running::stop`]) asks it to end.
pub struct Running {
    stop: Stop,
}

impl Running {
    pub fn stop(self) {
        self.stop.stop();
    }
}

/// Start one generation of `instance` on its own thread.
pub fn spawn(instance: &PlatformInstance, generation: u64, wiring: &Wiring) -> Running {
    let (ctx, stop) = Context::with_stop(
        instance.name.clone(),
        generation,
        wiring.state_dir.clone(),
        wiring.inbound.clone(),
        Some(wiring.inbox.clone()),
    );
    let events = wiring.events.clone();
    let (instance, wiring) = (instance.clone(), wiring.clone());
    let name = instance.name.clone();
    let spawned = thread::Builder::new().name(format!("adapter-{name}")).spawn(move || {
        let outcome = catch_unwind(AssertUnwindSafe(|| run_generation(&instance, &ctx, &wiring)));
        let event = match outcome {
            Ok(Ok(())) => Event::Stopped { name: ctx.name.clone(), generation },
            Ok(Err(fatal)) => Event::Fatal { name: ctx.name.clone(), generation, fatal },
            Err(payload) => {
                let message = format!("adapter panicked: {}", supervise::panic_message(&*payload));
                let fatal = Fatal::retryable("adapter_panic", message);
                Event::Fatal { name: ctx.name.clone(), generation, fatal }
            }
        };
        // However it ended, it is no longer connected (a stopped console must not be
        // listed as such). After a clean end its outlet still sends the replies to what it
        // received: the gateway answers what it accepted before it exits.
        match event {
            Event::Fatal { .. } => wiring.outlets.withdraw(&ctx.name, generation),
            _ => wiring.outlets.stopped(&ctx.name, generation),
        }
        let _ = wiring.events.send(event);
    });
    if let Err(e) = spawned {
        // Out of threads or memory: report it like any other retryable failure.
        let fatal = Fatal::retryable("spawn_failed", format!("cannot start adapter thread: {e}"));
        let _ = events.send(Event::Fatal { name, generation, fatal });
    }
    Running { stop }
}

/// One generation: lock, connect, publish, run. The lock is held until this returns
/// (or unwinds), so a crashed or stopped adapter always frees its bot token.
fn run_generation(instance: &PlatformInstance, ctx: &Context, wiring: &Wiring) -> Result<(), Fatal> {
    let _lock = match instance.spec.lock_identity() {
        Some(token) => Some(TokenLock::acquire(instance.kind, instance.spec.lock_scope(), token.expose())?),
        None => None,
    };
    let mut platform = instance.spec.build();
    let outlet = platform.connect(ctx)?;
    if ctx.stop_requested() {
        return Ok(());
    }
    wiring.outlets.publish(&ctx.name, ctx.generation, outlet, instance.spec.message_limit());
    let _ = wiring.events.send(Event::Connected { name: ctx.name.clone(), generation: ctx.generation });
    platform.run(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_stays_small() {
        // Three words per String plus a bool: it travels through channels by value.
        assert!(std::mem::size_of::<Fatal>() <= 80);
    }

    /// Issue 8 §4: a blocking call ran on a new thread so that a stop need not wait for
    /// it. It runs on the adapter's thread now, and a stop wakes it by shutting down the
    /// socket it is blocked on.
    #[test]
    fn r_a_stop_wakes_a_blocked_read_through_its_stop_action() {
        let (inbound, _rx) = crossbeam_channel::unbounded();
        let (ctx, stop) = Context::new("t", PathBuf::from("."), inbound);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut socket = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_peer, _) = listener.accept().unwrap();
        let closer = socket.try_clone().unwrap();
        ctx.on_stop(move || drop(closer.shutdown(std::net::Shutdown::Both)));
        let (blocked_tx, blocked) = bounded(1);
        let reader = thread::spawn(move || {
            ctx.interruptible(|| {
                blocked_tx.send(()).unwrap();
                // The peer never writes: only the shutdown ends this read.
                std::io::Read::read(&mut socket, &mut [0; 16])
            })
        });
        blocked.recv().unwrap();
        drop(stop);
        assert_eq!(reader.join().unwrap().map(drop), Err(Stopped));
    }

    #[test]
    fn a_stop_action_registered_after_the_stop_runs_at_once() {
        let (inbound, _rx) = crossbeam_channel::unbounded();
        let (ctx, stop) = Context::new("t", PathBuf::from("."), inbound);
        let ran = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = ran.clone();
        ctx.on_stop(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        ctx.on_stop(|| panic!("a broken stop action"));
        stop.stop();
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
        let counter = ran.clone();
        ctx.on_stop(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(ctx.interruptible(|| unreachable!("no call after a stop")), Err::<(), _>(Stopped));
    }

    #[test]
    fn a_panic_in_a_blocking_call_is_not_a_stop() {
        let (inbound, _rx) = crossbeam_channel::unbounded();
        let (ctx, _stop) = Context::new("t", PathBuf::from("."), inbound);
        let caught = catch_unwind(AssertUnwindSafe(|| ctx.interruptible(|| -> u8 { panic!("in the call") })));
        assert_eq!(supervise::panic_message(&*caught.unwrap_err()), "in the call");
    }
}
