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
    scope: &'static str,
    count: usize,
    per: Duration,
}

const TOTAL: Rate = Rate { scope: "total", count: 30, per: Duration::from_secs(1) };
const CHAT: Rate = Rate { scope: "chat", count: 1, per: Duration::from_secs(1) };
const GROUP: Rate = Rate { scope: "group", count: 20, per: Duration::from_secs(60) };

/// Why a message was refused.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The whole seconds to wait, at least 1 (Telegram never says 0).
    pub retry_after: u64,
    /// The limit it broke: `total`, `chat` or `group`.
    pub scope: &'static str,
    /// How long before it the arrival arrived that it had to be `per` after: 990 ms
    /// against a 1 s window is jitter on the way, 500 ms a sender that ignores the limit.
    pub since: Duration,
}

/// The arrivals that still count in one scope, oldest first.
#[derive(Default)]
struct Window(VecDeque<Instant>);

impl Window {
    /// `None` if one more arrival fits at `now`, else the arrival it must be `per` after.
    fn blocker(&mut self, rate: &Rate, now: Instant) -> Option<Instant> {
        while self.0.front().is_some_and(|t| now.duration_since(*t) >= rate.per) {
            self.0.pop_front();
        }
        (self.0.len() >= rate.count).then(|| self.0[self.0.len() - rate.count])
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
    /// Admit a message to `chat` arriving at `now`, or refuse it.
    pub fn admit(&mut self, chat: i64, now: Instant) -> Result<(), Refusal> {
        let mut refusal: Option<Refusal> = None;
        let mut check = |window: &mut Window, rate: &Rate| {
            if let Some(blocker) = window.blocker(rate, now) {
                let wait = blocker + rate.per - now;
                let retry_after = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                if refusal.as_ref().is_none_or(|r| r.retry_after < retry_after) {
                    refusal = Some(Refusal { retry_after, scope: rate.scope, since: now - blocker });
                }
            }
        };
        check(&mut self.total, &TOTAL);
        check(self.chats.entry(chat).or_default(), &CHAT);
        if chat < 0 {
            check(self.groups.entry(chat).or_default(), &GROUP);
        }
        if let Some(refusal) = refusal {
            return Err(refusal);
        }
        self.total.0.push_back(now);
        self.chats.entry(chat).or_default().0.push_back(now);
        if chat < 0 {
            self.groups.entry(chat).or_default().0.push_back(now);
        }
        Ok(())
    }
}
