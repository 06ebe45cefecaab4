/*!
The outbox handle and its workers. Each platform instance has its own workers
(`outbox-NAME`, `outbox-NAME-2`, …): one at first, more as deliveries to more chats queue
up, up to the instance's `max_in_flight`. Which delivery a worker takes is [`super::lane`]'s
choice: one at a time per chat, in order, chats in parallel, each message only when the
instance's limiter allows it ([`super::limiter`]). Workers send while the instance has a
published [`Outlet`] and wait while it has none. A worker that panics is restarted
([`supervise::spawn`]) and its delivery handed back.

State is split between disk and memory. The store ([`super::store`]: a journal per
instance, with group commit) is the truth: a delivery is durable before [`Outbox::enqueue`] returns and leaves the disk only once the
platform confirmed it, or when it is set aside. Memory holds the outlets and the schedule
([`super::lane`]: the queued stems per chat, what is in flight, the waits), so that
[`Outbox::drain`] and [`Outbox::pending`] need no disk access.

Waking is targeted: a queued delivery wakes one waiting worker of its instance (each
lane has its own condition variable), a worker that picks a delivery while more could go
passes the wake-up on, and only an outlet published or withdrawn, a stop, or a worker's
end wakes them all. Everything else that waits (`drain`, `join`, the limiter) waits on
the outbox's general condition variable. When every change woke every worker, a gateway
answering 1,000 chats made about 20 `futex` calls and 6 context switches per message,
most of them workers waking to find nothing; one chat took 29 context switches per
message, 12 after this and the typing change ([`crate::typing`]).

A `switchboard send` from another process writes a spool file only; a worker folds such
files into the journal when it scans, at most once a second while it waits (one `readdir`
of a small directory per platform per second), and sees its own process's enqueues at once.

Per delivery, by the outlet's answer:

| answer            | then                                                                      |
|-------------------|---------------------------------------------------------------------------|
| sent              | forgotten (a `gone` line in the journal)                                  |
| `RetryAfter(d)`   | the chat waits `d`, not counted as an attempt                             |
| `RetryAfterAll(d)`| every chat of the instance waits `d`, not counted                         |
| `Transient`       | count an attempt; the chat waits `retry_wait`, doubling up to `retry_cap`; after `max_delivery_attempts` dead-letter it |
| `Unknown`         | set aside in `unknown/`, not re-sent — unless the outlet is idempotent or the delivery is an edit (repeating an edit is harmless), then as `Transient` |
| `Rejected`        | dead-letter at once                                                       |
| `Closed`          | kept queued, not counted; the outlet is withdrawn until the platform publishes a new one |

A long message is one record holding all its chunks ([`super::store`]): one attempt sends
them in order, each when the limiter allows it, recording progress after each, and a
failure settles the chunks not yet sent by the table above (an unknown outcome sets aside
only the chunk it concerns).

A delivery that waits blocks the later ones to its chat only: order per chat is kept, and
a chat that fails or is rate limited never delays the others. Every wait ends at once on
[`Outbox::quit`], and a transient wait ends early when the platform publishes a new
outlet (it reconnected, so the failure was probably the outage).
*/

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::DeliveryConfig;
use super::lane::{Lane, Pick, Settle};
use super::limiter::Taken;
use super::store::{self, Claim, Park, Record, Store, unix_now};
use crate::backoff;
use crate::message::Outbound;
use crate::platform::{Outlet, SendError};
use crate::supervise;
use crate::text::{self, Limit};

/// How often an idle worker lists its directory for deliveries queued by other processes.
const SCAN_EVERY: Duration = Duration::from_secs(1);

/// The longest a send outside the queue (a streamed preview) waits for the limiter:
/// long enough for a preview edited every second to make its chat's window, short
/// enough not to stall the stream it shows.
const PACED_WAIT: Duration = Duration::from_millis(250);

/// How often, at run time, parked deliveries past `[delivery] retention` are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The durable outbox of every platform instance. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

struct Shared {
    state_dir: PathBuf,
    config: DeliveryConfig,
    state: Mutex<State>,
    /// Signalled on every change of `state`, for whoever waits for one (`drain`, `join`,
    /// the limiter's waits). Workers waiting for a delivery wait on their lane's `work`
    /// instead, so that one queued reply wakes one worker: with every change waking all
    /// eight workers of an instance, a busy gateway spent more of its time waking threads
    /// that found nothing to do than sending.
    wake: Condvar,
}

#[derive(Default)]
struct State {
    lanes: BTreeMap<String, Lane>,
    quit: bool,
    /// Worker threads still running, of every lane.
    workers: usize,
    /// When parked deliveries older than `retention` are removed next.
    next_prune: Option<Instant>,
}

/// The next delivery for a worker.
struct Job {
    pick: Pick,
    outlet: Arc<dyn Outlet>,
    store: Store,
}

/// How one attempt ended.
enum Verdict {
    /// Sent, set aside, or gone: next delivery.
    Done,
    /// Try again after this wait (a failed attempt).
    Retry(Duration),
    /// The platform asked this chat to wait.
    Wait(Duration),
    /// The platform asked for no request at all for this long.
    WaitAll(Duration),
}

impl Outbox {
    /// Open the outbox of `platforms` (instance name, message limit) under `state_dir`,
    /// tidying what an earlier run left ([`super::store`]). Starts no thread.
    pub fn open(state_dir: &Path, config: DeliveryConfig, platforms: &[(String, Limit)]) -> io::Result<Outbox> {
        let mut state = State::default();
        let now = Instant::now();
        for (name, limit) in platforms {
            let store = Store::new(state_dir, name);
            let pacing = config.pacing.get(name).copied().unwrap_or_default();
            let mut lane = Lane::new(store.clone(), *limit, pacing, now);
            for stem in store.recover()? {
                queue_found(&mut lane, &store, stem);
            }
            state.lanes.insert(name.clone(), lane);
        }
        store::prune_parked(state_dir, config.retention);
        state.next_prune = now.checked_add(PRUNE_EVERY);
        let shared =
            Shared { state_dir: state_dir.to_path_buf(), config, state: Mutex::new(state), wake: Condvar::new() };
        Ok(Outbox { shared: Arc::new(shared) })
    }

    /// Queue `msg` for `platform`, split to its limit (an edit is truncated instead).
    /// The whole message is on disk when this returns. A blank text queues nothing.
    /// An error for which [`super::is_permanent`] holds will recur however often the
    /// call is repeated (no such platform instance); any other (a full disk) may heal.
    pub fn enqueue(&self, platform: &str, msg: Outbound) -> io::Result<()> {
        let (store, limit) = {
            let state = self.shared.state.lock();
            let lane = state.lanes.get(platform).ok_or_else(|| unknown_platform(platform))?;
            (lane.store.clone(), lane.limit)
        };
        let msg = super::cap_message(msg, self.shared.config.max_message_bytes, platform);
        let Some(record) = to_record(msg, limit) else { return Ok(()) };
        let stem = store.write(&record)?;
        let mut state = self.shared.state.lock();
        let Some(lane) = state.lanes.get_mut(platform) else { return Ok(()) };
        lane.add(stem, record.outbound.chat_id);
        lane.work.notify_one();
        // Only a started outbox grows (`start_workers` starts the first).
        let grow = if lane.workers > 0 { grow(&mut state, platform) } else { None };
        drop(state);
        self.spawn_grown(platform, grow);
        Ok(())
    }

    /// Dead-letter `msg` for `platform` without trying to send it: an answer that can
    /// never be queued, because its platform instance is no longer configured. Returns
    /// the file, to name in the log.
    pub fn dead_letter(&self, platform: &str, msg: Outbound, why: &str) -> io::Result<PathBuf> {
        // The name comes from the inbox journal: it must stay one directory level.
        if platform.is_empty() || platform.starts_with('.') || platform.contains('/') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad platform name `{platform}`")));
        }
        let mut record = Record::new(msg);
        record.last_error = Some(why.to_string());
        record.parked_at = Some(unix_now());
        Store::new(&self.shared.state_dir, platform).dead_letter(&record)
    }

    /// Make `outlet` the way to send to `name` (called once a generation connected).
    pub fn publish(&self, name: &str, generation: u64, outlet: Arc<dyn Outlet>, limit: Limit) {
        let mut state = self.shared.state.lock();
        let lane = state.lanes.entry(name.to_string()).or_insert_with(|| {
            // Not opened with the outbox (a test harness): it works, without recovery.
            let pacing = self.shared.config.pacing.get(name).copied().unwrap_or_default();
            Lane::new(Store::new(&self.shared.state_dir, name), limit, pacing, Instant::now())
        });
        lane.outlet = Some((generation, outlet));
        lane.connected = true;
        lane.limit = limit;
        lane.lift_transient_holds();
        lane.work.notify_all();
        drop(state);
        self.shared.wake.notify_all();
    }

    /// Forget the outlet of `name` if `generation` published it (a newer one stays).
    pub fn withdraw(&self, name: &str, generation: u64) {
        let mut state = self.shared.state.lock();
        if let Some(lane) = state.lanes.get_mut(name)
            && lane.outlet.as_ref().is_some_and(|(g, _)| *g == generation)
        {
            lane.outlet = None;
            lane.connected = false;
            lane.work.notify_all();
        }
        drop(state);
        self.shared.wake.notify_all();
    }

    /// The generation of `name` that published its outlet ended cleanly (end of input,
    /// a stop): `name` is no longer connected, but the outlet still sends what is queued,
    /// the replies to what it received (`echo hello | switchboard run` prints its answer).
    pub fn stopped(&self, name: &str, generation: u64) {
        let mut state = self.shared.state.lock();
        if let Some(lane) = state.lanes.get_mut(name)
            && lane.outlet.as_ref().is_some_and(|(g, _)| *g == generation)
        {
            lane.connected = false;
        }
    }

    /// Whether a running generation of `name` has published its outlet (for `/status`).
    pub fn connected(&self, name: &str) -> bool {
        self.shared.state.lock().lanes.get(name).is_some_and(|l| l.connected)
    }

    /// The live outlet of `name`, for typing indicators and streamed previews, which
    /// are sent outside the queue. Its sends and edits count against the instance's send
    /// limits like the queue's: one the limiter holds back for more than 250 ms
    /// is refused as `RetryAfter` (a preview is best effort; the answer itself goes
    /// through the queue). Typing is not counted.
    pub fn outlet(&self, name: &str) -> Option<Arc<dyn Outlet>> {
        let inner = self.shared.state.lock().lanes.get(name)?.outlet.as_ref().map(|(_, o)| o.clone())?;
        Some(Arc::new(Paced { outbox: self.clone(), name: name.to_string(), inner }))
    }

    /// Let one message to `chat` of `name` go outside the queue, after a wait of at most
    /// [`PACED_WAIT`] for the limiter.
    fn admit(&self, name: &str, chat: &str) -> Result<Option<Taken>, SendError> {
        let mut state = self.shared.state.lock();
        let latest = Instant::now() + PACED_WAIT;
        loop {
            let Some(lane) = state.lanes.get_mut(name) else { return Ok(None) };
            let now = Instant::now();
            match lane.pace(chat, now) {
                Ok(taken) => return Ok(Some(taken)),
                Err(at) if at > latest => return Err(SendError::RetryAfter(at.saturating_duration_since(now))),
                Err(at) => {
                    self.shared.wake.wait_until(&mut state, at);
                }
            }
        }
    }

    /// Queued deliveries of `name`, the ones being sent included.
    pub fn pending(&self, name: &str) -> usize {
        self.shared.state.lock().lanes.get(name).map_or(0, |l| l.pending())
    }

    /// Start one worker thread per platform that has none. More are started as work
    /// for more chats queues up, up to the instance's `max_in_flight`.
    pub fn start_workers(&self) -> io::Result<()> {
        let names: Vec<(String, usize)> = {
            let mut state = self.shared.state.lock();
            let mut names = Vec::new();
            for (name, lane) in state.lanes.iter_mut().filter(|(_, l)| l.workers == 0) {
                lane.workers = 1;
                names.push((name.clone(), 1));
            }
            state.workers += names.len();
            names
        };
        let mut result = Ok(());
        for (name, n) in names {
            // Each is tried: a failed one undid its own count.
            result = result.and(self.spawn_worker(&name, n));
        }
        result
    }

    /// Start worker number `n` of `name`, already counted in the lane and the state.
    fn spawn_worker(&self, name: &str, n: usize) -> io::Result<()> {
        let outbox = self.clone();
        // Lives as long as the thread, across restarts after a panic; a failed spawn
        // drops it with the closure, which undoes the count.
        let mut running = Running { shared: self.shared.clone(), name: name.to_string(), job: None };
        let thread = if n == 1 { format!("outbox-{name}") } else { format!("outbox-{name}-{n}") };
        supervise::spawn(thread, move || outbox.work(&mut running))
    }

    /// Start the worker [`grow`] counted, if any.
    fn spawn_grown(&self, name: &str, grow: Option<usize>) {
        if let Some(n) = grow
            && let Err(e) = self.spawn_worker(name, n)
        {
            log::warn!("{name}: cannot start another outbox worker: {e}");
        }
    }

    /// Wait until nothing more can be sent now (every platform with an outlet has an
    /// empty queue and no send in flight) or `deadline` passes. A platform with no outlet
    /// cannot drain and is not waited for. Returns the deliveries still queued.
    pub fn drain(&self, deadline: Instant) -> usize {
        let mut state = self.shared.state.lock();
        loop {
            let sendable = |l: &Lane| l.in_flight() > 0 || (l.workers > 0 && l.sendable());
            if state.quit || !state.lanes.values().any(sendable) || self.wait(&mut state, deadline) {
                return state.lanes.values().map(|l| l.pending()).sum();
            }
        }
    }

    /// Ask every worker to end: at once when it waits, after its current send when it
    /// sends. Queued deliveries stay on disk for the next start.
    pub fn quit(&self) {
        let mut state = self.shared.state.lock();
        state.quit = true;
        for lane in state.lanes.values() {
            lane.work.notify_all();
        }
        drop(state);
        self.shared.wake.notify_all();
    }

    /// Wait until every worker ended (after [`Outbox::quit`]) or `deadline` passes.
    /// Returns whether they all did.
    pub fn join(&self, deadline: Instant) -> bool {
        let mut state = self.shared.state.lock();
        while state.workers > 0 {
            if self.wait(&mut state, deadline) {
                return false;
            }
        }
        true
    }

    /// Wait for a change until `deadline`; true when it passed.
    fn wait(&self, state: &mut MutexGuard<'_, State>, deadline: Instant) -> bool {
        self.shared.wake.wait_until(state, deadline).timed_out()
    }

    /// A worker of `running.name`: take a delivery a chat may send now, try it, record
    /// the verdict.
    ///
    /// Called again after a panic ([`supervise::spawn`]). The delivery it was sending is
    /// handed back (its chat is free again), so the next attempt on it claims it again,
    /// and its claim says whether it may have gone out already.
    fn work(&self, running: &mut Running) {
        let name = running.name.clone();
        if let Some(pick) = running.job.take()
            && let Some(lane) = self.shared.state.lock().lanes.get_mut(&name)
        {
            lane.hand_back(&pick);
        }
        while let Some(job) = self.next_job(&name) {
            running.job = Some(job.pick.clone());
            crate::testhook::panic_point("outbox-send");
            let settle = match self.attempt(&name, &job) {
                Verdict::Done => Settle::Done,
                Verdict::Retry(d) => Settle::Retry(d),
                Verdict::Wait(d) => Settle::Wait(d),
                Verdict::WaitAll(d) => Settle::WaitAll(d),
            };
            running.job = None;
            if let Some(lane) = self.shared.state.lock().lanes.get_mut(&name) {
                lane.settle(&job.pick, settle, Instant::now());
            }
            self.shared.wake.notify_all();
        }
    }

    /// Block until a delivery of `name` may be sent; `None` on quit. Lists the
    /// directory when due, and starts one more worker when chats wait that no worker
    /// serves.
    fn next_job(&self, name: &str) -> Option<Job> {
        let mut state = self.shared.state.lock();
        loop {
            if state.quit {
                return None;
            }
            let now = Instant::now();
            let lane = state.lanes.get_mut(name)?;
            if now >= lane.next_scan {
                lane.next_scan = now + SCAN_EVERY;
                lane.listing();
                let store = lane.store.clone();
                // Listing and reading need no lock; enqueues go on meanwhile.
                let found = MutexGuard::unlocked(&mut state, || store.scan());
                let stems = found.unwrap_or_else(|e| {
                    log::debug!("{name}: cannot list the outbox: {e}");
                    vec![]
                });
                self.queue_scanned(&mut state, name, &store, stems);
                continue;
            }
            // No outlet: nothing to pick until one is published (or the next listing).
            let work = lane.work.clone();
            let Some(outlet) = lane.outlet.as_ref().map(|(_, o)| o.clone()) else {
                let wake = lane.next_scan;
                work.wait_until(&mut state, wake);
                continue;
            };
            let wake = match lane.next(now) {
                Ok(pick) => {
                    // More to send now: pass the wake-up on to another waiting worker
                    // (one notified delivery may have been taken by a worker that was
                    // not waiting).
                    if lane.has_ready(now) {
                        work.notify_one();
                    }
                    let store = lane.store.clone();
                    let grow = grow(&mut state, name);
                    drop(state);
                    self.spawn_grown(name, grow);
                    return Some(Job { pick, outlet, store });
                }
                Err(wake) => wake.map_or(lane.next_scan, |w| w.min(lane.next_scan)),
            };
            work.wait_until(&mut state, wake);
        }
    }

    /// Queue the stems a listing found that the lane does not know yet, each behind the
    /// others to its chat (read from its file, without the lock), and end the listing.
    fn queue_scanned(&self, state: &mut MutexGuard<'_, State>, name: &str, store: &Store, stems: Vec<String>) {
        let Some(lane) = state.lanes.get_mut(name) else { return };
        let new = lane.unknown(stems);
        let chats: Vec<(String, String)> = if new.is_empty() {
            vec![]
        } else {
            MutexGuard::unlocked(state, || new.into_iter().filter_map(|s| chat_to_queue(store, s)).collect())
        };
        if let Some(lane) = state.lanes.get_mut(name) {
            lane.listed(chats);
        }
    }

    /// The request of a message to `chat` of `name`, counted as `taken`, is done: the
    /// limiter counts it from now (see [`super::limiter`]).
    fn sent(&self, name: &str, chat: &str, taken: Option<Taken>) {
        let Some(taken) = taken else { return };
        if let Some(lane) = self.shared.state.lock().lanes.get_mut(name) {
            lane.sent(chat, taken, Instant::now());
        }
    }

    /// Wait until the limiter lets the next message of `job` go; `None` on quit.
    fn pace(&self, name: &str, job: &Job) -> Option<Option<Taken>> {
        let mut state = self.shared.state.lock();
        loop {
            if state.quit {
                return None;
            }
            let Some(lane) = state.lanes.get_mut(name) else { return Some(None) };
            match lane.pace(&job.pick.chat, Instant::now()) {
                Ok(taken) => return Some(Some(taken)),
                Err(at) => {
                    self.shared.wake.wait_until(&mut state, at);
                }
            }
        }
    }

    /// Claim, send and settle one delivery: every chunk of its message, in order.
    fn attempt(&self, name: &str, job: &Job) -> Verdict {
        self.prune_if_due();
        let (mut record, interrupted) = match job.store.claim(&job.pick.stem) {
            Ok(Claim::Fresh(record)) => (record, false),
            Ok(Claim::Interrupted(record)) => (record, true),
            Ok(Claim::Gone) => return Verdict::Done,
            Err(e) => {
                log::error!("{name}: cannot take {} from the outbox: {e}", job.pick.stem);
                return Verdict::Retry(self.shared.config.retry_wait);
            }
        };
        if interrupted && !repeatable(&*job.outlet, &record) {
            let why = "the gateway stopped while sending it: it may or may not have arrived";
            match self.park_first(name, job, record, Park::Unknown, why.into()) {
                Ok(Some(rest)) => record = rest,
                Ok(None) => return Verdict::Done,
                Err(verdict) => return verdict,
            }
        }
        let mut taken = Some(job.pick.taken);
        loop {
            let result = deliver(&*job.outlet, &record.outbound);
            self.sent(name, &job.pick.chat, taken);
            let next = match result {
                Ok(()) => job.store.advance(&job.pick.stem, &record).map_err(|e| {
                    log::error!("{name}: sent a part of {}, but cannot record it: {e}", job.pick.stem);
                    // The claim stays: the next attempt sets this part aside, never repeats it.
                    Verdict::Retry(self.shared.config.retry_wait)
                }),
                Err(SendError::RetryAfter(wait)) => {
                    let chat = &job.pick.chat;
                    log::warn!("{name}: rate limited, waiting {wait:?} before the next send to chat {chat}");
                    return self.unclaim(name, job, Verdict::Wait(wait));
                }
                Err(SendError::RetryAfterAll(wait)) => {
                    log::warn!("{name}: rate limited on every chat, waiting {wait:?} before the next send");
                    return self.unclaim(name, job, Verdict::WaitAll(wait));
                }
                Err(SendError::Closed(why)) => return self.closed(name, job, why),
                Err(SendError::Unknown(why)) if !repeatable(&*job.outlet, &record) => {
                    self.park_first(name, job, record, Park::Unknown, why)
                }
                Err(SendError::Transient(why) | SendError::Unknown(why)) => return self.failed(name, job, record, why),
                Err(SendError::Rejected(why)) => return self.park(name, job, record, Park::Dead, why),
            };
            match next {
                Ok(Some(rest)) => record = rest,
                Ok(None) => return Verdict::Done,
                Err(verdict) => return verdict,
            }
            match self.pace(name, job) {
                Some(next) => taken = next,
                // Quit: the rest of a long message waits for the next start.
                None => return self.unclaim(name, job, Verdict::Done),
            }
        }
    }

    /// Put the claimed delivery back unchanged; then `verdict`.
    fn unclaim(&self, name: &str, job: &Job, verdict: Verdict) -> Verdict {
        if let Err(e) = job.store.unclaim(&job.pick.stem) {
            log::error!("{name}: cannot put {} back into the outbox: {e}", job.pick.stem);
        }
        verdict
    }

    /// The outlet is closed for good (the console's standard output): nothing more goes
    /// to it. The delivery stays queued, uncounted, for a new outlet (the next start).
    fn closed(&self, name: &str, job: &Job, why: String) -> Verdict {
        log::warn!("{name}: the platform closed ({why}); its deliveries stay queued");
        let mut state = self.shared.state.lock();
        if let Some(lane) = state.lanes.get_mut(name)
            && lane.outlet.as_ref().is_some_and(|(_, o)| Arc::ptr_eq(o, &job.outlet))
        {
            lane.outlet = None;
        }
        drop(state);
        // No wait of its own: with no outlet the worker waits for a new one.
        self.unclaim(name, job, Verdict::Wait(Duration::ZERO))
    }

    /// Set the first chunk aside; the rest of the message, if any, stays claimed.
    fn park_first(
        &self,
        name: &str,
        job: &Job,
        mut record: Record,
        park: Park,
        why: String,
    ) -> Result<Option<Record>, Verdict> {
        if record.more.is_empty() {
            self.park(name, job, record, park, why);
            return Ok(None);
        }
        let chat = &record.outbound.chat_id;
        log::warn!("{name}: a part of a delivery to chat {chat} has an unknown outcome ({why}); not re-sent");
        record.last_error = Some(why);
        record.parked_at = Some(unix_now());
        job.store.park_first(&job.pick.stem, &record, park).map_err(|e| {
            log::error!("{name}: cannot set a part of {} aside: {e}", job.pick.stem);
            Verdict::Retry(self.shared.config.retry_wait)
        })
    }

    /// Remove parked deliveries past `[delivery] retention`, about once a day.
    fn prune_if_due(&self) {
        let now = Instant::now();
        {
            let mut state = self.shared.state.lock();
            if state.next_prune.is_some_and(|t| now < t) {
                return;
            }
            state.next_prune = now.checked_add(PRUNE_EVERY);
        }
        store::prune_parked(&self.shared.state_dir, self.shared.config.retention);
    }

    /// Count a failed attempt: retry later, or dead-letter after the last one.
    fn failed(&self, name: &str, job: &Job, mut record: Record, why: String) -> Verdict {
        let config = &self.shared.config;
        // Saturating: the count comes from a file, which may hold anything.
        record.attempts = record.attempts.saturating_add(1);
        if record.attempts >= config.max_delivery_attempts {
            let why = format!("failed {} times, last: {why}", record.attempts);
            return self.park(name, job, record, Park::Dead, why);
        }
        let wait = backoff::delay(record.attempts, config.retry_wait, config.retry_cap);
        let (n, max) = (record.attempts, config.max_delivery_attempts);
        log::warn!(
            "{name}: delivery to chat {} failed ({n}/{max}): {why}; retrying in {wait:?}",
            record.outbound.chat_id
        );
        record.last_error = Some(why);
        if let Err(e) = job.store.release(&job.pick.stem, &record) {
            log::error!("{name}: cannot count the attempt on {}: {e}", job.pick.stem);
            let _ = job.store.unclaim(&job.pick.stem);
        }
        Verdict::Retry(wait)
    }

    /// Set a delivery aside for good.
    fn park(&self, name: &str, job: &Job, mut record: Record, park: Park, why: String) -> Verdict {
        let chat = record.outbound.chat_id.clone();
        match park {
            Park::Unknown => log::warn!("{name}: delivery to chat {chat} has an unknown outcome ({why}); not re-sent"),
            Park::Dead => {
                log::error!("{name}: delivery to chat {chat} failed for good ({why}); moved to the dead letters")
            }
        }
        record.last_error = Some(why);
        record.parked_at = Some(unix_now());
        if let Err(e) = job.store.park(&job.pick.stem, &record, park) {
            log::error!("{name}: cannot set {} aside: {e}", job.pick.stem);
        }
        Verdict::Done
    }
}

/// The outlet [`Outbox::outlet`] hands out: paced by the instance's limiter.
struct Paced {
    outbox: Outbox,
    name: String,
    inner: Arc<dyn Outlet>,
}

impl Paced {
    /// `request`, a message to `chat`, once the limiter admits it; counted from when it
    /// is done.
    fn paced<T>(&self, chat: &str, request: impl FnOnce() -> Result<T, SendError>) -> Result<T, SendError> {
        let taken = self.outbox.admit(&self.name, chat)?;
        let result = request();
        self.outbox.sent(&self.name, chat, taken);
        result
    }
}

impl Outlet for Paced {
    fn send(&self, msg: &Outbound) -> Result<Option<String>, SendError> {
        self.paced(&msg.chat_id, || self.inner.send(msg))
    }

    fn can_edit(&self) -> bool {
        self.inner.can_edit()
    }

    fn edit(&self, chat_id: &str, message_id: &str, text: &str) -> Result<(), SendError> {
        self.paced(chat_id, || self.inner.edit(chat_id, message_id, text))
    }

    fn typing(&self, chat_id: &str, thread_id: Option<&str>) {
        self.inner.typing(chat_id, thread_id);
    }

    fn idempotent(&self) -> bool {
        self.inner.idempotent()
    }
}

/// Marks a worker as ended when its thread ends (after [`Outbox::quit`]), handing back
/// the delivery it held if it ended by a panic that was not restarted.
struct Running {
    shared: Arc<Shared>,
    name: String,
    /// The delivery this worker is sending.
    job: Option<Pick>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.workers -= 1;
        if let Some(lane) = state.lanes.get_mut(&self.name) {
            lane.workers = lane.workers.saturating_sub(1);
            if let Some(pick) = self.job.take() {
                lane.hand_back(&pick);
            }
            lane.work.notify_all();
        }
        drop(state);
        self.shared.wake.notify_all();
    }
}

/// Count one more worker for `name` if its lane wants one; its number. Counted under
/// the lock, so that two threads never both grow the lane past `max_in_flight`.
fn grow(state: &mut State, name: &str) -> Option<usize> {
    let lane = state.lanes.get_mut(name).filter(|l| l.wants_worker())?;
    lane.workers += 1;
    let n = lane.workers;
    state.workers += 1;
    Some(n)
}

/// Queue a stem found on disk, its chat read from its file.
fn queue_found(lane: &mut Lane, store: &Store, stem: String) {
    if let Some((stem, chat)) = chat_to_queue(store, stem) {
        lane.add(stem, chat);
    }
}

/// The chat to queue `stem` for, read from its record: `None` when it is gone; an
/// unreadable one is queued (for no chat in particular), so its attempt sets it aside.
fn chat_to_queue(store: &Store, stem: String) -> Option<(String, String)> {
    match store.chat_of(&stem) {
        Ok(Some(chat)) => Some((stem, chat)),
        Ok(None) => None,
        Err(_) => Some((stem, String::new())),
    }
}

/// The record `msg` becomes: its chunks, the reply reference on the first only (see
/// [`Record`]); `None` for a blank text. An edit replaces one message, so it is
/// truncated to fit rather than split.
pub(super) fn to_record(msg: Outbound, limit: Limit) -> Option<Record> {
    if msg.text.trim().is_empty() {
        // Nothing to say, and platforms refuse empty messages.
        return None;
    }
    if msg.edit_of.is_some() {
        let text = text::truncate(&msg.text, limit);
        return Some(Record::new(Outbound { text, ..msg }));
    }
    let mut chunks = text::split(&msg.text, limit).into_iter();
    let first = chunks.next()?;
    Some(Record { more: chunks.collect(), ..Record::new(Outbound { text: first, ..msg }) })
}

/// Whether sending the first chunk of `record` again does no harm: the platform drops
/// repeats, or it is an edit (editing a message to the same text twice changes nothing).
fn repeatable(outlet: &dyn Outlet, record: &Record) -> bool {
    outlet.idempotent() || record.outbound.edit_of.is_some()
}

fn deliver(outlet: &dyn Outlet, msg: &Outbound) -> Result<(), SendError> {
    match &msg.edit_of {
        Some(id) => outlet.edit(&msg.chat_id, id, &msg.text),
        None => outlet.send(msg).map(drop),
    }
}

fn unknown_platform(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, NoPlatform(name.to_string()))
}

/// An enqueue named a platform instance the outbox does not have (not configured, or
/// disabled): no retry can help.
#[derive(Debug)]
struct NoPlatform(String);

impl std::fmt::Display for NoPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no platform instance `{}` is configured and enabled", self.0)
    }
}

impl std::error::Error for NoPlatform {}

/// See [`super::is_permanent`].
pub(super) fn is_permanent(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<NoPlatform>()) || e.kind() == io::ErrorKind::InvalidInput
}
