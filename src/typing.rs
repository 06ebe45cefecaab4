/*!
Typing indicators while turns run, from one thread for the whole gateway.

Telegram's "typing…" lasts about 5 s, so a long turn re-sends it every 4 s. The first
one waits a moment: a turn that answers at once (the echo agent, a cached reply) then
costs no extra request, and an LLM turn still shows it well before its answer.
One thread with a deadline map serves every chat, instead of a thread per turn.
*/

use std::collections::{BTreeMap, HashMap};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, at, never, select, unbounded};

use crate::delivery::Outbox;

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
        thread::Builder::new().name("typing".into()).spawn(move || run(&rx, &outbox))?;
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

fn run(requests: &Receiver<Request>, outbox: &Outbox) {
    let mut chats: HashMap<u64, Chat> = HashMap::new();
    let mut due: BTreeMap<(Instant, u64), ()> = BTreeMap::new();
    loop {
        let next = due.keys().next().map(|(t, _)| *t).map_or_else(never, at);
        select! {
            recv(requests) -> req => match req {
                Ok(Request::Begin(turn, chat)) => {
                    chats.insert(turn, chat);
                    due.insert((Instant::now() + FIRST, turn), ());
                }
                Ok(Request::End(turn)) => {
                    chats.remove(&turn);
                    due.retain(|(_, t), _| *t != turn);
                }
                Err(_) => return,
            },
            recv(next) -> _ => {
                let now = Instant::now();
                while let Some(entry) = due.first_entry().filter(|e| e.key().0 <= now) {
                    let (_, turn) = entry.remove_entry().0;
                    if let Some(chat) = chats.get(&turn) {
                        if let Some(outlet) = outbox.outlet(&chat.platform) {
                            outlet.typing(&chat.chat_id, chat.thread_id.as_deref());
                        }
                        due.insert((Instant::now() + EVERY, turn), ());
                    }
                }
            }
        }
    }
}
