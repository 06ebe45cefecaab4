/*!
Typing indicators while turns run.

Telegram's "typing…" lasts about 5 s, so a long turn re-sends it every 4 s. The first
one waits a moment: a turn that answers at once (the echo agent, a cached reply) then
costs no extra request, and an LLM turn still shows it well before its answer.

One scheduling thread (`typing`) with a deadline map serves every chat, instead of a
thread per turn. It never calls a platform itself: each platform instance gets one sender
thread (`typing-NAME`, started at its first indicator) with room for one indicator in
waiting. A platform that is slow to answer (each call is bounded by the outlet, 2 s for
Telegram) so delays only its own indicators, and one that falls behind skips some (they
are best effort) instead of piling them up. Every thread here runs under
[`supervise::spawn`]: after a panic it is restarted with its schedule; the indicator being
sent when it panicked is dropped.

The schedule is shared under a lock rather than fed through a channel: a turn's
[`Typing::begin`] and [`Typing::end`] only change the map, and wake the thread only when
the new deadline comes before the one it sleeps until (every first deadline is
[`FIRST`] from now, so under load almost never). With a channel, each turn woke the
thread twice, for a turn that usually ends long before its indicator is due: at a few
thousand messages a second that was a tenth of the gateway's context switches.
*/

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError, bounded};
use parking_lot::{Condvar, Mutex};

use crate::delivery::Outbox;
use crate::platform::Outlet;
use crate::supervise;

/// Delay before the first indicator of a turn.
const FIRST: Duration = Duration::from_millis(300);
/// Interval between indicators; below Telegram's ~5 s expiry.
const EVERY: Duration = Duration::from_secs(4);

/// Where to show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chat {
    pub platform: String,
    pub chat_id: String,
    pub thread_id: Option<String>,
}

/// A handle on the typing thread. Cheap to clone; the thread ends when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Typing {
    handle: Arc<Handle>,
}

/// Shared by the clones of a [`Typing`]; its drop tells the thread to end.
struct Handle {
    shared: Arc<Shared>,
}

struct Shared {
    schedule: Mutex<Schedule>,
    /// Signalled when a deadline comes before `Schedule::sleeping_until`, or on the end.
    changed: Condvar,
}

/// The turns showing typing and when each shows it next.
#[derive(Default)]
struct Schedule {
    /// Turn → its chat and its deadline (the key in `due`).
    chats: HashMap<u64, (Chat, Instant)>,
    due: BTreeMap<(Instant, u64), ()>,
    /// When the thread wakes next by itself (`None`: it waits for a change).
    sleeping_until: Option<Instant>,
    /// Every handle is gone.
    closed: bool,
}

impl Typing {
    /// Start the thread; indicators go out through `outbox`'s live outlets.
    pub fn start(outbox: Outbox) -> std::io::Result<Typing> {
        let shared = Arc::new(Shared { schedule: Mutex::new(Schedule::default()), changed: Condvar::new() });
        let mut senders = Senders { outbox, senders: HashMap::new() };
        let thread_shared = shared.clone();
        supervise::spawn("typing", move || senders.run(&thread_shared))?;
        Ok(Typing { handle: Arc::new(Handle { shared }) })
    }

    /// Show typing in `chat` until [`Typing::end`] with the same `turn`.
    pub fn begin(&self, turn: u64, chat: Chat) {
        let shared = &self.handle.shared;
        if shared.schedule.lock().begin(turn, chat, Instant::now()) {
            shared.changed.notify_one();
        }
    }

    pub fn end(&self, turn: u64) {
        self.handle.shared.schedule.lock().end(turn);
    }
}

impl Schedule {
    /// Schedule `turn`'s first indicator [`FIRST`] from `now`; whether the thread must
    /// be woken for it (it sleeps past that, or waits for a change).
    fn begin(&mut self, turn: u64, chat: Chat, now: Instant) -> bool {
        let at = now + FIRST;
        if let Some((_, old)) = self.chats.insert(turn, (chat, at)) {
            self.due.remove(&(old, turn));
        }
        self.due.insert((at, turn), ());
        self.sleeping_until.is_none_or(|t| at < t)
    }

    /// No wake-up: the thread finds the deadline gone when it comes.
    fn end(&mut self, turn: u64) {
        if let Some((_, at)) = self.chats.remove(&turn) {
            self.due.remove(&(at, turn));
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.schedule.lock().closed = true;
        self.shared.changed.notify_one();
    }
}

/// One indicator for a platform's sender thread.
type Indicator = (Arc<dyn Outlet>, Chat);

/// The scheduling thread's own state: kept across a restart after a panic.
struct Senders {
    outbox: Outbox,
    /// The sender thread of each platform instance that has shown an indicator.
    senders: HashMap<String, Sender<Indicator>>,
}

impl Senders {
    fn run(&mut self, shared: &Shared) {
        let mut s = shared.schedule.lock();
        loop {
            if s.closed {
                return;
            }
            let due = take_due(&mut s, Instant::now());
            if !due.is_empty() {
                // Handing off never blocks (`try_send`), but needs no lock either.
                drop(s);
                due.into_iter().for_each(|chat| self.hand_off(chat));
                s = shared.schedule.lock();
                continue;
            }
            s.sleeping_until = s.due.keys().next().map(|(t, _)| *t);
            match s.sleeping_until {
                Some(t) => _ = shared.changed.wait_until(&mut s, t),
                None => shared.changed.wait(&mut s),
            }
            s.sleeping_until = None;
        }
    }

    fn hand_off(&mut self, chat: Chat) {
        let Some(outlet) = self.outbox.outlet(&chat.platform) else { return };
        let Some(sender) = self.sender(&chat.platform) else { return };
        match sender.try_send((outlet, chat)) {
            Ok(()) => {}
            Err(TrySendError::Full((_, chat))) => {
                log::debug!(
                    "{}: typing in chat {} skipped: the last indicator is still going out",
                    chat.platform,
                    chat.chat_id
                );
            }
            // Its thread is gone (short of a bug it cannot be): start a new one next time.
            Err(TrySendError::Disconnected((_, chat))) => {
                self.senders.remove(&chat.platform);
            }
        }
    }

    /// The sender of `platform`, started on first use.
    fn sender(&mut self, platform: &str) -> Option<&Sender<Indicator>> {
        if !self.senders.contains_key(platform) {
            let (tx, rx) = bounded::<Indicator>(1);
            let send = move || {
                for (outlet, chat) in rx.iter() {
                    crate::testhook::panic_point("typing");
                    outlet.typing(&chat.chat_id, chat.thread_id.as_deref());
                }
            };
            if let Err(e) = supervise::spawn(format!("typing-{platform}"), send) {
                log::warn!("{platform}: cannot start a thread for typing indicators: {e}");
                return None;
            }
            self.senders.insert(platform.to_string(), tx);
        }
        self.senders.get(platform)
    }
}

/// The chats whose indicator is due at `now`, each scheduled again [`EVERY`] later.
fn take_due(s: &mut Schedule, now: Instant) -> Vec<Chat> {
    let mut due = Vec::new();
    while let Some(entry) = s.due.first_entry().filter(|e| e.key().0 <= now) {
        let (_, turn) = entry.remove_entry().0;
        let Some((chat, at)) = s.chats.get_mut(&turn) else { continue };
        *at = now + EVERY;
        due.push(chat.clone());
        s.due.insert((now + EVERY, turn), ());
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{Receiver, unbounded};

    use crate::delivery::DeliveryConfig;
    use crate::message::Outbound;
    use crate::platform::SendError;
    use crate::text::{Limit, Unit};

    /// An outlet whose typing calls report on a channel, after blocking until `release`
    /// closes when `blocks`.
    struct Recorder {
        shown: Sender<String>,
        release: Option<Receiver<()>>,
    }

    impl Outlet for Recorder {
        fn send(&self, _msg: &Outbound) -> Result<Option<String>, SendError> {
            Ok(None)
        }

        fn typing(&self, chat_id: &str, _thread_id: Option<&str>) {
            let _ = self.shown.send(chat_id.to_string());
            if let Some(release) = &self.release {
                let _ = release.recv();
            }
        }
    }

    fn chat(platform: &str, id: &str) -> Chat {
        Chat { platform: platform.into(), chat_id: id.into(), thread_id: None }
    }

    #[test]
    fn turns_wake_the_thread_only_for_an_earlier_deadline_and_short_ones_show_nothing() {
        let t0 = Instant::now();
        let mut s = Schedule::default();
        assert!(s.begin(1, chat("p", "a"), t0), "the thread waits for a change: wake it");
        s.sleeping_until = Some(t0 + FIRST);
        assert!(!s.begin(2, chat("p", "b"), t0 + Duration::from_millis(1)), "due after the thread wakes anyway");
        s.end(1);
        assert!(take_due(&mut s, t0 + FIRST).is_empty(), "turn 1 ended before its indicator was due");
        let later = t0 + FIRST + Duration::from_millis(1);
        assert_eq!(take_due(&mut s, later), [chat("p", "b")]);
        assert_eq!(s.due.keys().next(), Some(&(later + EVERY, 2)), "shown again every EVERY");
        s.end(2);
        assert!(s.due.is_empty() && s.chats.is_empty());
    }

    #[test]
    fn a_platform_whose_typing_blocks_does_not_delay_another() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), DeliveryConfig::default(), &[]).unwrap();
        let limit = Limit { max: 100, unit: Unit::Chars };
        let (shown, seen) = unbounded();
        let (hold, release) = bounded::<()>(0);
        let blocking = Recorder { shown: shown.clone(), release: Some(release) };
        outbox.publish("slow", 1, Arc::new(blocking), limit);
        outbox.publish("fast", 1, Arc::new(Recorder { shown, release: None }), limit);
        let typing = Typing::start(outbox).unwrap();
        typing.begin(1, chat("slow", "s"));
        assert_eq!(seen.recv_timeout(Duration::from_secs(5)), Ok("s".to_string()));
        // "slow" is blocked in its call from now until `hold` is dropped.
        typing.begin(2, chat("fast", "f"));
        assert_eq!(seen.recv_timeout(Duration::from_secs(5)), Ok("f".to_string()));
        drop(hold);
    }
}
