/*!
Telegram's documented send limits, as the fake Bot API enforces them (Bot FAQ, see
`/work/shared/reference/field-notes-2026-12.md`): at most 30 messages in any second
overall, one a second to any one chat, 20 a minute to any one group (a negative chat id).

Kept as sliding windows of arrival instants, counted where Telegram counts them: when a
request arrives at the API. A message over any limit is refused (and not counted); the
caller answers it with a 429 whose `retry_after` is the whole seconds until the window
that refused it has room again. This is stricter than Telegram, which lets "short
bursts" through: a gateway that meets it meets the real one.
*/

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// At most `count` arrivals in any window of `per`.
struct Rate {
    count: usize,
    per: Duration,
}

const TOTAL: Rate = Rate { count: 30, per: Duration::from_secs(1) };
const CHAT: Rate = Rate { count: 1, per: Duration::from_secs(1) };
const GROUP: Rate = Rate { count: 20, per: Duration::from_secs(60) };

/// The arrivals that still count in one scope, oldest first.
#[derive(Default)]
struct Window(VecDeque<Instant>);

impl Window {
    /// When one more arrival fits: `now` if it does already.
    fn free_at(&mut self, rate: &Rate, now: Instant) -> Instant {
        while self.0.front().is_some_and(|t| now.duration_since(*t) >= rate.per) {
            self.0.pop_front();
        }
        if self.0.len() < rate.count { now } else { self.0[self.0.len() - rate.count] + rate.per }
    }
}

/// The limits of one bot.
#[derive(Default)]
pub struct TelegramLimits {
    total: Window,
    chats: HashMap<i64, Window>,
    groups: HashMap<i64, Window>,
}

impl TelegramLimits {
    /// Admit a message to `chat` arriving at `now`, or refuse it with the seconds to wait
    /// (at least 1, as Telegram never says 0).
    pub fn admit(&mut self, chat: i64, now: Instant) -> Result<(), u64> {
        let mut free = self.total.free_at(&TOTAL, now);
        free = free.max(self.chats.entry(chat).or_default().free_at(&CHAT, now));
        if chat < 0 {
            free = free.max(self.groups.entry(chat).or_default().free_at(&GROUP, now));
        }
        if free > now {
            let wait = free - now;
            return Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        }
        self.total.0.push_back(now);
        self.chats.entry(chat).or_default().0.push_back(now);
        if chat < 0 {
            self.groups.entry(chat).or_default().0.push_back(now);
        }
        Ok(())
    }
}
