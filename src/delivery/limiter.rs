/*!
The send limiter: one per platform instance, consulted before every message or edit goes
out, so that a burst runs at the platform's rate instead of into its 429s.

A platform declares its limits ([`SendLimits`], from
[`crate::platform::PlatformSpec::send_limits`]): at most `count` messages in any window of
`per`, overall, per chat, and per group chat. Telegram's are 30 a second overall, one a
second per chat and 20 a minute per group (a negative chat id).

Each limit is kept as a sliding window: the instants of the last `count` sends. A send
may go when the oldest of them is more than `per` ago. Unlike a token bucket, which lets
a full bucket plus its refill through in one window (60 in a second for 30 a second), this
never lets more than `count` into any window, which is what the platform counts. The
window per chat or group is forgotten once it is empty, so the memory is that of the chats
sent to in the last minute.

A send is counted when a worker takes it; the platform counts it when it arrives, tens of
milliseconds later (more when the CPU is busy: `make bench` saw requests arrive up to
134 ms after they were counted, and draw 429s for the overall limit). So the caller tells
the limiter when the request is done ([`Limiter::sent`]): by then it has arrived, and its
instant in the windows moves to that later one. Each window is also kept [`MARGIN`]
longer than declared, so that jitter never makes two sends look closer than allowed.

Pure: the caller passes the instant, so the tests use made-up ones.
*/

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::backoff;

/// How much longer than declared each window is kept (see the module doc).
pub const MARGIN: Duration = Duration::from_millis(20);

/// At most `count` messages in any window of `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub const fn new(count: u32, per: Duration) -> Rate {
        Rate { count, per }
    }
}

/// What a platform allows a bot to send. `None` for a scope means no limit there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SendLimits {
    /// Across all chats of the instance.
    pub total: Option<Rate>,
    /// To any one chat (edits included).
    pub chat: Option<Rate>,
    /// To any one group chat, on top of `chat`.
    pub group: Option<Rate>,
    /// Chat ids that start with this are groups (Telegram: `-`).
    pub group_prefix: Option<&'static str>,
}

impl SendLimits {
    /// No limit at all (the limiter is off).
    pub const NONE: SendLimits = SendLimits { total: None, chat: None, group: None, group_prefix: None };

    /// Whether no limit applies.
    pub fn is_none(&self) -> bool {
        self.total.is_none() && self.chat.is_none() && self.group.is_none()
    }

    fn is_group(&self, chat: &str) -> bool {
        self.group_prefix.is_some_and(|p| chat.starts_with(p))
    }
}

/// The limiter of one platform instance.
#[derive(Debug, Default)]
pub struct Limiter {
    limits: SendLimits,
    total: Window,
    chats: HashMap<String, Window>,
    groups: HashMap<String, Window>,
    /// When windows that emptied are forgotten next.
    next_forget: Option<Instant>,
}

/// A send the limiter counted, for [`Limiter::sent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken(Instant);

/// The instants of the last `count` sends in one scope, oldest first.
#[derive(Debug, Default)]
struct Window(VecDeque<Instant>);

impl Window {
    /// The first instant from `now` on at which one more send fits in `rate`.
    fn ready_at(&self, rate: Rate, now: Instant) -> Instant {
        let count = rate.count as usize;
        if count == 0 {
            // A limit of nothing at all: never (the config refuses it; a far deadline).
            return backoff::deadline(now, Duration::MAX);
        }
        let Some(oldest) = self.0.len().checked_sub(count).and_then(|i| self.0.get(i)) else { return now };
        backoff::deadline(*oldest, rate.per.saturating_add(MARGIN)).max(now)
    }

    fn push(&mut self, rate: Rate, now: Instant) {
        self.insert(now);
        while self.0.len() > rate.count as usize {
            self.0.pop_front();
        }
    }

    /// Put `at` in its place: threads take their instant before the lock, so one may
    /// come a little out of order.
    fn insert(&mut self, at: Instant) {
        let place = self.0.iter().rposition(|t| *t <= at).map_or(0, |i| i + 1);
        self.0.insert(place, at);
    }

    /// The send counted at `taken` was done at `now`: it counts from then. One that left
    /// the window already (`count` later sends) is no longer counted.
    fn restamp(&mut self, taken: Instant, now: Instant) {
        if let Some(i) = self.0.iter().rposition(|t| *t == taken) {
            self.0.remove(i);
            self.insert(now.max(taken));
        }
    }

    /// Whether no send in it counts any more at `now`.
    fn is_empty_at(&self, rate: Rate, now: Instant) -> bool {
        self.0.back().is_none_or(|last| backoff::deadline(*last, rate.per.saturating_add(MARGIN)) <= now)
    }
}

impl Limiter {
    pub fn new(limits: SendLimits) -> Limiter {
        Limiter { limits, ..Limiter::default() }
    }

    /// The chat and group limits that apply to `chat`.
    fn scopes(&self, chat: &str) -> (Option<Rate>, Option<Rate>) {
        let group = self.limits.group.filter(|_| self.limits.is_group(chat));
        (self.limits.chat, group)
    }

    /// The first instant from `now` on at which a message to `chat` may go out.
    pub fn ready_at(&self, chat: &str, now: Instant) -> Instant {
        let (chat_rate, group_rate) = self.scopes(chat);
        let mut at = now;
        if let Some(rate) = self.limits.total {
            at = at.max(self.total.ready_at(rate, now));
        }
        if let (Some(rate), Some(w)) = (chat_rate, self.chats.get(chat)) {
            at = at.max(w.ready_at(rate, now));
        }
        if let (Some(rate), Some(w)) = (group_rate, self.groups.get(chat)) {
            at = at.max(w.ready_at(rate, now));
        }
        at
    }

    /// Like [`Limiter::ready_at`], leaving out the overall limit: whether `chat` itself
    /// is the reason to wait.
    pub fn chat_ready_at(&self, chat: &str, now: Instant) -> Instant {
        let (chat_rate, group_rate) = self.scopes(chat);
        let mut at = now;
        if let (Some(rate), Some(w)) = (chat_rate, self.chats.get(chat)) {
            at = at.max(w.ready_at(rate, now));
        }
        if let (Some(rate), Some(w)) = (group_rate, self.groups.get(chat)) {
            at = at.max(w.ready_at(rate, now));
        }
        at
    }

    /// Count a message to `chat` going out at `now`, if it may; otherwise the instant it
    /// may. Tell [`Limiter::sent`] when its request is done.
    pub fn try_take(&mut self, chat: &str, now: Instant) -> Result<Taken, Instant> {
        let at = self.ready_at(chat, now);
        if at > now {
            return Err(at);
        }
        self.forget_if_due(now);
        let (chat_rate, group_rate) = self.scopes(chat);
        if let Some(rate) = self.limits.total {
            self.total.push(rate, now);
        }
        if let Some(rate) = chat_rate {
            self.chats.entry(chat.to_string()).or_default().push(rate, now);
        }
        if let Some(rate) = group_rate {
            self.groups.entry(chat.to_string()).or_default().push(rate, now);
        }
        Ok(Taken(now))
    }

    /// The request of the message to `chat` counted as `taken` is done (answered, or
    /// failed) at `now`: it has reached the platform by then, and counts from `now`.
    pub fn sent(&mut self, chat: &str, taken: Taken, now: Instant) {
        self.total.restamp(taken.0, now);
        if let Some(w) = self.chats.get_mut(chat) {
            w.restamp(taken.0, now);
        }
        if let Some(w) = self.groups.get_mut(chat) {
            w.restamp(taken.0, now);
        }
    }

    /// Forget the windows of chats not sent to lately, about once per longest window.
    fn forget_if_due(&mut self, now: Instant) {
        if self.next_forget.is_some_and(|t| now < t) {
            return;
        }
        let limits = self.limits;
        if let Some(rate) = limits.chat {
            self.chats.retain(|_, w| !w.is_empty_at(rate, now));
        }
        if let Some(rate) = limits.group {
            self.groups.retain(|_, w| !w.is_empty_at(rate, now));
        }
        let longest = [limits.chat, limits.group].into_iter().flatten().map(|r| r.per).max();
        self.next_forget = Some(backoff::deadline(now, longest.unwrap_or_default().max(Duration::from_secs(1))));
    }

    /// Chats and groups whose windows are kept (for tests of the memory bound).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.chats.len() + self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn telegram() -> SendLimits {
        SendLimits {
            total: Some(Rate::new(30, S)),
            chat: Some(Rate::new(1, S)),
            group: Some(Rate::new(20, 60 * S)),
            group_prefix: Some("-"),
        }
    }

    /// Drive `limiter` for `span` in steps of `step`: at each instant, every chat in
    /// `chats` that has something to send tries once. Returns the sends (instant, chat).
    fn run(
        limiter: &mut Limiter,
        chats: &[&str],
        start: Instant,
        step: Duration,
        span: Duration,
    ) -> Vec<(Instant, String)> {
        let mut sent = Vec::new();
        let mut now = start;
        while now < start + span {
            for chat in chats {
                if limiter.try_take(chat, now).is_ok() {
                    sent.push((now, chat.to_string()));
                }
            }
            now += step;
        }
        sent
    }

    /// The most sends of `sent` (filtered by `which`) within any window of `per`.
    fn most_in_window(sent: &[(Instant, String)], per: Duration, which: impl Fn(&str) -> bool) -> usize {
        let times: Vec<Instant> = sent.iter().filter(|(_, c)| which(c)).map(|(t, _)| *t).collect();
        (0..times.len()).map(|i| times[i..].iter().take_while(|t| **t < times[i] + per).count()).max().unwrap_or(0)
    }

    #[test]
    fn never_more_than_30_a_second_overall() {
        let mut limiter = Limiter::new(telegram());
        let chats: Vec<String> = (0..200).map(|i| i.to_string()).collect();
        let chats: Vec<&str> = chats.iter().map(String::as_str).collect();
        let sent = run(&mut limiter, &chats, Instant::now(), Duration::from_millis(7), 10 * S);
        assert_eq!(most_in_window(&sent, S, |_| true), 30);
        // And it is not starved: close to 30 a second over ten seconds.
        assert!(sent.len() >= 280, "{}", sent.len());
    }

    #[test]
    fn one_a_second_per_chat() {
        let mut limiter = Limiter::new(telegram());
        let sent = run(&mut limiter, &["1", "2", "3"], Instant::now(), Duration::from_millis(10), 20 * S);
        for chat in ["1", "2", "3"] {
            assert_eq!(most_in_window(&sent, S, |c| c == chat), 1, "chat {chat}");
            let n = sent.iter().filter(|(_, c)| c == chat).count();
            assert!((19..=20).contains(&n), "chat {chat}: {n} in 20 s");
        }
    }

    #[test]
    fn twenty_a_minute_per_group_and_one_a_second_in_it() {
        let mut limiter = Limiter::new(telegram());
        let sent = run(&mut limiter, &["-100", "-200", "5"], Instant::now(), Duration::from_millis(50), 180 * S);
        for group in ["-100", "-200"] {
            assert_eq!(most_in_window(&sent, 60 * S, |c| c == group), 20, "group {group}");
            assert_eq!(most_in_window(&sent, S, |c| c == group), 1, "group {group}");
        }
        // A private chat is not a group: one a second, about 180 in three minutes.
        assert!(sent.iter().filter(|(_, c)| c == "5").count() >= 170);
    }

    #[test]
    fn ready_at_says_when_and_a_chat_wait_is_told_apart_from_the_overall_one() {
        let mut limiter = Limiter::new(telegram());
        let t0 = Instant::now();
        assert_eq!(limiter.ready_at("7", t0), t0);
        limiter.try_take("7", t0).unwrap();
        let next = t0 + S + MARGIN;
        assert_eq!(limiter.try_take("7", t0 + S), Err(next));
        assert_eq!(limiter.chat_ready_at("7", t0 + S), next);
        assert_eq!(limiter.chat_ready_at("8", t0 + S), t0 + S);
        assert!(limiter.try_take("7", next).is_ok());
    }

    /// A request that reached the platform late (a busy CPU) counts from when it was
    /// done: the 31st send of a second waits for the first one's end, not its start.
    #[test]
    fn a_send_counts_from_when_its_request_was_done() {
        let mut limiter = Limiter::new(telegram());
        let t0 = Instant::now();
        let first = limiter.try_take("1", t0).unwrap();
        for chat in 2..=30 {
            limiter.try_take(&chat.to_string(), t0 + Duration::from_millis(chat)).unwrap();
        }
        // The first request was done (so had arrived) 134 ms after it was counted.
        let done = t0 + Duration::from_millis(134);
        limiter.sent("1", first, done);
        assert_eq!(limiter.ready_at("31", t0 + S), t0 + Duration::from_millis(2) + S + MARGIN);
        let _ = limiter.try_take("31", t0 + Duration::from_millis(2) + S + MARGIN).unwrap();
        // The first one's slot comes last, after those counted after it.
        assert_eq!(limiter.ready_at("32", t0 + S), t0 + Duration::from_millis(3) + S + MARGIN);
        // Chat 1's own window moved too.
        assert_eq!(limiter.chat_ready_at("1", t0 + S), done + S + MARGIN);
        // Once the slots of 3..=30 have been used again, the first one's end is next.
        let mut at = t0 + S + MARGIN + Duration::from_millis(3);
        for chat in 32..=59 {
            limiter.try_take(&chat.to_string(), at).unwrap();
            at = limiter.ready_at(&(chat + 1).to_string(), at);
        }
        assert_eq!(limiter.ready_at("60", at), done + S + MARGIN);
    }

    #[test]
    fn no_limits_let_everything_through_and_remember_nothing() {
        let mut limiter = Limiter::new(SendLimits::NONE);
        let t0 = Instant::now();
        for i in 0..10_000 {
            assert!(limiter.try_take(&i.to_string(), t0).is_ok());
        }
        assert_eq!(limiter.remembered(), 0);
        assert!(SendLimits::NONE.is_none() && !telegram().is_none());
    }

    #[test]
    fn chats_not_sent_to_lately_are_forgotten() {
        let mut limiter = Limiter::new(telegram());
        let t0 = Instant::now();
        for i in 0..1000 {
            let _ = limiter.try_take(&format!("-{i}"), t0 + Duration::from_millis(i));
        }
        assert!(limiter.remembered() > 0);
        // Three minutes later, one send: the old windows are gone.
        limiter.try_take("1", t0 + 180 * S).unwrap();
        assert_eq!(limiter.remembered(), 1);
    }

    #[test]
    fn hostile_rates_do_not_panic() {
        let limits = SendLimits {
            total: Some(Rate::new(0, Duration::MAX)),
            chat: Some(Rate::new(u32::MAX, Duration::MAX)),
            ..telegram()
        };
        let mut limiter = Limiter::new(limits);
        let t0 = Instant::now();
        assert!(limiter.try_take("1", t0).is_err());
        let limits = SendLimits { chat: Some(Rate::new(1, Duration::MAX)), ..SendLimits::NONE };
        let mut limiter = Limiter::new(limits);
        assert!(limiter.try_take("1", t0).is_ok());
        assert!(limiter.try_take("1", t0 + S).is_err());
    }
}
