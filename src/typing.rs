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
*/

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, at, bounded, never, select, unbounded};

use crate::adapter::Outlet;
use crate::delivery::Outbox;
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

enum Request {
    Begin(u64, Chat),
    End(u64),
}

/// A handle on the typing thread. Cheap to clone.
#[derive(Clone)]
pub struct Typing {
    requests: Sender<Request>,
}

impl Typing {
    /// Start the thread; indicators go out through `outbox`'s live outlets.
    pub fn start(outbox: Outbox) -> std::io::Result<Typing> {
        let (requests, rx) = unbounded();
        let mut schedule = Schedule { outbox, chats: HashMap::new(), due: BTreeMap::new(), senders: HashMap::new() };
        supervise::spawn("typing", move || schedule.run(&rx))?;
        Ok(Typing { requests })
    }

    /// Show typing in `chat` until [`Typing::end`] with the same `turn`.
    pub fn begin(&self, turn: u64, chat: Chat) {
        let _ = self.requests.send(Request::Begin(turn, chat));
    }

    pub fn end(&self, turn: u64) {
        let _ = self.requests.send(Request::End(turn));
    }
}

/// One indicator for a platform's sender thread.
type Indicator = (Arc<dyn Outlet>, Chat);

/// The scheduling thread's state: kept across a restart after a panic.
struct Schedule {
    outbox: Outbox,
    chats: HashMap<u64, Chat>,
    due: BTreeMap<(Instant, u64), ()>,
    /// The sender thread of each platform instance that has shown an indicator.
    senders: HashMap<String, Sender<Indicator>>,
}

impl Schedule {
    fn run(&mut self, requests: &Receiver<Request>) {
        loop {
            let next = self.due.keys().next().map(|(t, _)| *t).map_or_else(never, at);
            select! {
                recv(requests) -> req => match req {
                    Ok(Request::Begin(turn, chat)) => {
                        self.chats.insert(turn, chat);
                        self.due.insert((Instant::now() + FIRST, turn), ());
                    }
                    Ok(Request::End(turn)) => {
                        self.chats.remove(&turn);
                        self.due.retain(|(_, t), _| *t != turn);
                    }
                    Err(_) => return,
                },
                recv(next) -> _ => self.show_due(),
            }
        }
    }

    /// Hand every indicator that is due to its platform's sender, and schedule the next.
    fn show_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.due.first_entry().filter(|e| e.key().0 <= now) {
            let (_, turn) = entry.remove_entry().0;
            let Some(chat) = self.chats.get(&turn).cloned() else { continue };
            self.due.insert((now + EVERY, turn), ());
            self.hand_off(chat);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::SendError;
    use crate::delivery::DeliveryConfig;
    use crate::message::Outbound;
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
