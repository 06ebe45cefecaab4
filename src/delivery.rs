/*!
Outbound delivery: one queue and one worker thread per platform instance.

Replies are queued here, never sent from the thread that produced them. A worker sends
while its platform has a published [`Outlet`] (between connect and failure) and waits
while it has none, so a reply to a platform that is reconnecting goes out after the
reconnect instead of being dropped. Long texts are split to the platform's limit.

This queue lives in memory: a restart loses what it holds. Durable delivery is the
conversations issue's outbox.
*/

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::adapter::{Outlet, SendError};
use crate::message::Outbound;
use crate::text;

/// `[delivery]`
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeliveryConfig {}

/// Read `[delivery]`. Problems are recorded in the section.
pub fn parse_config(_s: &mut crate::config::Section<'_>) -> DeliveryConfig {
    DeliveryConfig::default()
}

/// How long a worker waits after a transient send failure before trying again.
const TRANSIENT_RETRY: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    /// The live outlet of each connected platform, with the generation that published it.
    outlets: HashMap<String, (u64, Arc<dyn Outlet>, text::Limit)>,
    queues: HashMap<String, VecDeque<Outbound>>,
    /// Messages taken by a worker and not yet finished, per platform.
    in_flight: HashMap<String, usize>,
    quit: bool,
}

/// The shared delivery state. Cheap to clone.
#[derive(Clone, Default)]
pub struct Outlets {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl Outlets {
    pub fn new() -> Outlets {
        Outlets::default()
    }

    /// Make `outlet` the way to send to `name` (called once a generation connected).
    pub fn publish(&self, name: &str, generation: u64, outlet: Arc<dyn Outlet>, limit: text::Limit) {
        let (lock, cond) = &*self.inner;
        lock.lock().outlets.insert(name.to_string(), (generation, outlet, limit));
        cond.notify_all();
    }

    /// Forget the outlet of `name` if `generation` published it (a newer one stays).
    pub fn withdraw(&self, name: &str, generation: u64) {
        let (lock, _) = &*self.inner;
        let mut state = lock.lock();
        if state.outlets.get(name).is_some_and(|(g, _, _)| *g == generation) {
            state.outlets.remove(name);
        }
    }

    /// Queue `msg` for platform `name`.
    pub fn enqueue(&self, name: &str, msg: Outbound) {
        let (lock, cond) = &*self.inner;
        lock.lock().queues.entry(name.to_string()).or_default().push_back(msg);
        cond.notify_all();
    }

    /// Start the delivery worker of platform `name`.
    pub fn start_worker(&self, name: &str) -> std::io::Result<thread::JoinHandle<()>> {
        let outlets = self.clone();
        let name = name.to_string();
        thread::Builder::new().name(format!("outbox-{name}")).spawn(move || outlets.work(&name))
    }

    /// Ask every worker to end once its current message is done.
    pub fn quit(&self) {
        let (lock, cond) = &*self.inner;
        lock.lock().quit = true;
        cond.notify_all();
    }

    /// Wait until every queue that can be sent is empty, or `deadline` passes. Queues of
    /// platforms with no outlet cannot drain and are not waited for. Returns the number
    /// of messages still queued.
    pub fn drain(&self, deadline: Instant) -> usize {
        let (lock, cond) = &*self.inner;
        let mut state = lock.lock();
        loop {
            let sendable = state.queues.iter().any(|(name, q)| !q.is_empty() && state.outlets.contains_key(name))
                || state.in_flight.values().any(|n| *n > 0);
            if !sendable || cond.wait_until(&mut state, deadline).timed_out() {
                return state.queues.values().map(VecDeque::len).sum();
            }
        }
    }

    /// The worker loop: take the next message once the platform has an outlet, send it.
    fn work(&self, name: &str) {
        while let Some((msg, outlet, limit)) = self.next(name) {
            self.send_all_chunks(name, &msg, &*outlet, limit);
            let (lock, cond) = &*self.inner;
            *lock.lock().in_flight.entry(name.to_string()).or_default() -= 1;
            cond.notify_all();
        }
    }

    fn next(&self, name: &str) -> Option<(Outbound, Arc<dyn Outlet>, text::Limit)> {
        let (lock, cond) = &*self.inner;
        let mut state = lock.lock();
        loop {
            if state.quit {
                return None;
            }
            let outlet = state.outlets.get(name).map(|(_, o, limit)| (o.clone(), *limit));
            if let Some((outlet, limit)) = outlet
                && let Some(msg) = state.queues.get_mut(name).and_then(VecDeque::pop_front)
            {
                *state.in_flight.entry(name.to_string()).or_default() += 1;
                return Some((msg, outlet, limit));
            }
            cond.wait(&mut state);
        }
    }

    /// Send every chunk of `msg`, waiting out rate limits and transient failures.
    fn send_all_chunks(&self, name: &str, msg: &Outbound, outlet: &dyn Outlet, limit: text::Limit) {
        for chunk in text::split(&msg.text, limit) {
            let part = Outbound { text: chunk, ..msg.clone() };
            loop {
                match outlet.send(&part) {
                    Ok(_) => break,
                    Err(SendError::RetryAfter(wait)) => {
                        log::warn!("{name}: rate limited, waiting {wait:?} before the next send");
                        self.pause(wait);
                    }
                    Err(SendError::Transient(why)) => {
                        log::warn!("{name}: send failed ({why}), retrying in {TRANSIENT_RETRY:?}");
                        self.pause(TRANSIENT_RETRY);
                    }
                    Err(e) => {
                        log::warn!("{name}: dropping a message to chat {}: {e}", part.chat_id);
                        return;
                    }
                }
                if self.inner.0.lock().quit {
                    return;
                }
            }
        }
    }

    /// Sleep `d`, waking early when the gateway quits.
    fn pause(&self, d: Duration) {
        let (lock, cond) = &*self.inner;
        let deadline = Instant::now() + d;
        let mut state = lock.lock();
        while !state.quit && !cond.wait_until(&mut state, deadline).timed_out() {}
    }
}
