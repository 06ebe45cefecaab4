/*!
The schedule of one platform instance's outbox, in memory: which delivery a worker may
send next.

Deliveries are queued per chat, in the order they were queued (their stems sort so, see
[`super::store`]). A chat has at most one delivery in flight, so its messages arrive in
order; different chats go in parallel, up to `max_in_flight` at once. Among the chats
that may send now, the one whose next delivery was queued first goes first, so a busy
chat does not starve the others.

A wait concerns what caused it: a failed attempt or a 429 holds its chat only, and the
chat's later deliveries wait behind it (order is kept); the others go on. Only a limit the
platform says is global ([`crate::platform::SendError::RetryAfterAll`]) holds the whole
instance. Before each message leaves, the instance's [`Limiter`] must allow it; a chat
that its own limit holds back is passed over, not waited for.

Picking costs O(log n) in the chats queued, not O(n): the chats that may be picked (a
delivery queued, none in flight) are kept in a set ordered by the stem of their next
delivery, and a pick takes the first one that neither a wait nor its own limit holds. A
scan of every chat per pick made 1,000 chats with a backlog cost each of 8 workers a
thousand stem comparisons per message, and 10,000 chats kept them all busy comparing.

Pure: no I/O, no threads, and the caller passes the instant, so the tests drive it with
made-up ones. [`super::outbox`] holds it under its lock.
*/

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Condvar;

use super::Pacing;
use super::limiter::{Limiter, Taken};
use super::store::Store;
use crate::backoff;
use crate::platform::Outlet;
use crate::text::Limit;

/// One platform instance.
pub(super) struct Lane {
    pub store: Store,
    pub limit: Limit,
    pub outlet: Option<(u64, Arc<dyn Outlet>)>,
    /// The generation that published `outlet` is running (see `Outbox::stopped`).
    pub connected: bool,
    pub max_in_flight: usize,
    /// Worker threads running for this instance.
    pub workers: usize,
    /// When the directory is listed next for deliveries other processes queued.
    pub next_scan: Instant,
    /// Where this instance's workers wait for a delivery (with the outbox's lock): one
    /// is woken per delivery queued, all when the outlet changes or on a stop.
    pub work: Arc<Condvar>,
    /// Deliveries being sent.
    in_flight: usize,
    /// The queued deliveries per chat. A chat with none is removed.
    chats: BTreeMap<String, Chat>,
    /// (next stem, chat) of every chat with deliveries queued and none in flight: the
    /// candidates of a pick, first queued first.
    ready: BTreeSet<(String, String)>,
    /// The chat of every queued delivery, by stem.
    chat_of: HashMap<String, String>,
    /// No send at all before this (a global limit).
    hold: Option<Hold>,
    limiter: Limiter,
    /// While a listing of the directory is being read (without the lock), the stems
    /// that left the queue meanwhile: the listing may still name them, and must not
    /// queue them again (a ghost that would take a limiter slot of its chat and hold
    /// the chat's next delivery behind it).
    left_while_listing: Option<HashSet<String>>,
}

#[derive(Default)]
struct Chat {
    /// Stems, first queued first (files may have gone meanwhile; a claim tells).
    stems: BTreeSet<String>,
    /// A worker is sending one of them.
    busy: bool,
    hold: Option<Hold>,
}

#[derive(Clone, Copy, Debug)]
struct Hold {
    until: Instant,
    /// After a failed attempt: lifted when the platform reconnects (a rate limit is not).
    transient: bool,
}

/// A delivery a worker may send now; its chat is busy until it is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Pick {
    pub chat: String,
    pub stem: String,
    /// Its first message, as the limiter counted it.
    pub taken: Taken,
}

/// How an attempt ended, as far as the schedule cares.
#[derive(Clone, Copy, Debug)]
pub(super) enum Settle {
    /// Sent, set aside, or gone: it leaves the queue.
    Done,
    /// A failed attempt: its chat waits this long (less if the platform reconnects).
    Retry(Duration),
    /// The platform asked its chat to wait this long.
    Wait(Duration),
    /// The platform asked for no request at all for this long.
    WaitAll(Duration),
}

impl Lane {
    pub fn new(store: Store, limit: Limit, pacing: Pacing, now: Instant) -> Lane {
        Lane {
            store,
            limit,
            outlet: None,
            connected: false,
            max_in_flight: pacing.max_in_flight.max(1),
            workers: 0,
            next_scan: now,
            work: Arc::new(Condvar::new()),
            in_flight: 0,
            chats: BTreeMap::new(),
            ready: BTreeSet::new(),
            chat_of: HashMap::new(),
            hold: None,
            limiter: Limiter::new(pacing.limits),
            left_while_listing: None,
        }
    }

    /// A listing of the directory starts: until [`Lane::listed`], stems that leave the
    /// queue are remembered.
    pub fn listing(&mut self) {
        self.left_while_listing = Some(HashSet::new());
    }

    /// Of the stems a listing found, those not queued now and not settled since the
    /// listing began.
    pub fn unknown(&self, stems: Vec<String>) -> Vec<String> {
        let left = |s: &String| self.left_while_listing.as_ref().is_some_and(|l| l.contains(s));
        stems.into_iter().filter(|s| !self.knows(s) && !left(s)).collect()
    }

    /// The listing is over: queue what it found (`stems` with their chats, from
    /// [`Lane::unknown`]), except what left the queue meanwhile.
    pub fn listed(&mut self, found: Vec<(String, String)>) {
        let left = self.left_while_listing.take().unwrap_or_default();
        for (stem, chat) in found.into_iter().filter(|(s, _)| !left.contains(s)) {
            self.add(stem, chat);
        }
    }

    /// Queue `stem` for `chat`, unless it is queued already.
    pub fn add(&mut self, stem: String, chat: String) {
        if self.chat_of.contains_key(&stem) {
            return;
        }
        let c = self.chats.entry(chat.clone()).or_default();
        let head = c.stems.first().cloned();
        c.stems.insert(stem.clone());
        // A stem queued behind the chat's next one changes nothing (the common case:
        // stems grow); one before it (found on disk) becomes the chat's candidate.
        if !c.busy && head.as_ref().is_none_or(|h| stem < *h) {
            if let Some(head) = head {
                self.ready.remove(&(head, chat.clone()));
            }
            self.ready.insert((stem.clone(), chat.clone()));
        }
        self.chat_of.insert(stem, chat);
    }

    pub fn knows(&self, stem: &str) -> bool {
        self.chat_of.contains_key(stem)
    }

    /// Queued deliveries, the ones being sent included.
    pub fn pending(&self) -> usize {
        self.chat_of.len()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Whether one more worker would find work: every worker is sending, a chat with
    /// deliveries queued has none in flight, and `max_in_flight` allows another.
    pub fn wants_worker(&self) -> bool {
        self.workers < self.max_in_flight && self.workers <= self.in_flight && !self.ready.is_empty()
    }

    /// Whether something could be sent, or is being sent.
    pub fn sendable(&self) -> bool {
        self.in_flight > 0 || (self.outlet.is_some() && !self.chat_of.is_empty())
    }

    /// The delivery to send now, its first message counted by the limiter; or when to
    /// look again (`None`: when something changes).
    pub fn next(&mut self, now: Instant) -> Result<Pick, Option<Instant>> {
        let (stem, chat, wake) = self.candidate(now)?;
        // Only the overall limit can refuse now; every chat waits for it alike.
        let taken = match self.limiter.try_take(&chat, now) {
            Ok(taken) => taken,
            Err(at) => return Err(Some(wake.map_or(at, |w| w.min(at)))),
        };
        self.ready.remove(&(stem.clone(), chat.clone()));
        if let Some(c) = self.chats.get_mut(&chat) {
            c.busy = true;
        }
        self.in_flight += 1;
        Ok(Pick { chat, stem, taken })
    }

    /// Whether [`Lane::next`] would find a delivery now (short of the overall limit).
    pub fn has_ready(&self, now: Instant) -> bool {
        self.candidate(now).is_ok()
    }

    /// The first queued chat that may send now: (its next stem, the chat, the earliest
    /// end of the waits of the chats passed over); or when to look again.
    fn candidate(&self, now: Instant) -> Result<(String, String, Option<Instant>), Option<Instant>> {
        if self.outlet.is_none() || self.in_flight >= self.max_in_flight {
            return Err(None);
        }
        if let Some(hold) = self.hold.filter(|h| now < h.until) {
            return Err(Some(hold.until));
        }
        let mut wake: Option<Instant> = None;
        for (stem, chat) in &self.ready {
            let held = self.chats.get(chat).and_then(|c| c.hold).filter(|h| now < h.until);
            let at = match held {
                Some(hold) => hold.until,
                None => self.limiter.chat_ready_at(chat, now),
            };
            if at <= now {
                return Ok((stem.clone(), chat.clone(), wake));
            }
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        Err(wake)
    }

    /// A later message of a delivery in flight to `chat` (the next chunk), or one sent
    /// outside the queue: counted if it may go now, otherwise when it may.
    pub fn pace(&mut self, chat: &str, now: Instant) -> Result<Taken, Instant> {
        match self.hold.filter(|h| now < h.until) {
            Some(hold) => Err(hold.until),
            None => self.limiter.try_take(chat, now),
        }
    }

    /// The request of a message counted as `taken` is done (see [`Limiter::sent`]).
    pub fn sent(&mut self, chat: &str, taken: Taken, now: Instant) {
        self.limiter.sent(chat, taken, now);
    }

    /// Record how the attempt on `pick` ended.
    pub fn settle(&mut self, pick: &Pick, how: Settle, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(chat) = self.chats.get_mut(&pick.chat) else { return };
        chat.busy = false;
        // Checked: a wait the platform asked for is a number from outside.
        let hold = |d, transient| Some(Hold { until: backoff::deadline(now, d), transient });
        match how {
            Settle::Done => {
                chat.stems.remove(&pick.stem);
                chat.hold = None;
                self.chat_of.remove(&pick.stem);
                if let Some(left) = &mut self.left_while_listing {
                    left.insert(pick.stem.clone());
                }
            }
            Settle::Retry(d) => chat.hold = hold(d, true),
            Settle::Wait(d) => chat.hold = hold(d, false),
            Settle::WaitAll(d) => self.hold = hold(d, false),
        }
        self.release(&pick.chat);
    }

    /// `chat` has nothing in flight any more: it is a candidate again, or forgotten when
    /// nothing of it is queued.
    fn release(&mut self, chat: &str) {
        let Some(c) = self.chats.get(chat) else { return };
        match c.stems.first() {
            Some(head) => {
                self.ready.insert((head.clone(), chat.to_string()));
            }
            None => {
                self.chats.remove(chat);
            }
        }
    }

    /// A worker panicked while sending `pick`: it is queued as before, for any worker.
    pub fn hand_back(&mut self, pick: &Pick) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(chat) = self.chats.get_mut(&pick.chat) {
            chat.busy = false;
        }
        self.release(&pick.chat);
    }

    /// The platform reconnected: waits after failed attempts end now (the failure was
    /// probably the outage); rate limits stay.
    pub fn lift_transient_holds(&mut self) {
        for chat in self.chats.values_mut() {
            if chat.hold.is_some_and(|h| h.transient) {
                chat.hold = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Rate, SendLimits};
    use crate::message::Outbound;
    use crate::platform::SendError;
    use crate::text::Unit;

    const S: Duration = Duration::from_secs(1);

    struct Nowhere;
    impl Outlet for Nowhere {
        fn send(&self, _: &Outbound) -> Result<Option<String>, SendError> {
            Ok(None)
        }
    }

    fn lane(max_in_flight: usize, limits: SendLimits, now: Instant) -> Lane {
        let dir = std::env::temp_dir();
        let limit = Limit { max: 100, unit: Unit::Chars };
        let mut lane = Lane::new(Store::new(&dir, "lane-test"), limit, Pacing { max_in_flight, limits }, now);
        lane.outlet = Some((1, Arc::new(Nowhere)));
        lane
    }

    /// Queue `n` deliveries per chat, stems `<i>-<chat>` so that they interleave.
    fn fill(lane: &mut Lane, chats: &[&str], n: usize) {
        for i in 0..n {
            for chat in chats {
                lane.add(format!("{i:03}-{chat}"), chat.to_string());
            }
        }
    }

    fn stems(picks: &[Pick]) -> Vec<&str> {
        picks.iter().map(|p| p.stem.as_str()).collect()
    }

    /// A listing read without the lock may name a delivery that was sent meanwhile: it
    /// is not queued again (seen: the ghost took its chat's one slot a minute and held
    /// the chat's next reply behind it).
    #[test]
    fn a_listing_does_not_queue_again_what_was_sent_while_it_was_read() {
        let t0 = Instant::now();
        let mut lane = lane(2, SendLimits::NONE, t0);
        fill(&mut lane, &["a"], 1);
        lane.listing();
        let pick = lane.next(t0).unwrap();
        lane.settle(&pick, Settle::Done, t0);
        // The listing saw 000-a before it was sent, and 001-a, queued by another process.
        let found = lane.unknown(vec!["000-a".into(), "001-a".into()]);
        assert_eq!(found, ["001-a"]);
        lane.listed(vec![("000-a".into(), "a".into()), ("001-a".into(), "a".into())]);
        assert_eq!(lane.pending(), 1);
        assert_eq!(lane.next(t0).unwrap().stem, "001-a");
        // The next listing starts afresh.
        lane.listing();
        lane.listed(vec![("000-a".into(), "a".into())]);
        assert_eq!(lane.pending(), 2);
    }

    #[test]
    fn one_delivery_in_flight_per_chat_and_at_most_max_in_flight() {
        let t0 = Instant::now();
        let mut lane = lane(2, SendLimits::NONE, t0);
        fill(&mut lane, &["a", "b", "c"], 2);
        let first = lane.next(t0).unwrap();
        let second = lane.next(t0).unwrap();
        assert_eq!(stems(&[first.clone(), second.clone()]), ["000-a", "000-b"]);
        assert_eq!(lane.next(t0), Err(None), "max_in_flight");
        lane.settle(&first, Settle::Done, t0);
        // c's first was queued before a's second.
        let third = lane.next(t0).unwrap();
        assert_eq!(third.stem, "000-c");
        lane.settle(&second, Settle::Done, t0);
        assert_eq!(lane.next(t0).unwrap().stem, "001-a");
        assert_eq!(lane.next(t0), Err(None));
        assert_eq!(lane.pending(), 4);
    }

    #[test]
    fn a_failing_chat_holds_only_itself_and_keeps_its_order() {
        let t0 = Instant::now();
        let mut lane = lane(8, SendLimits::NONE, t0);
        fill(&mut lane, &["bad", "ok"], 3);
        let bad = lane.next(t0).unwrap();
        assert_eq!(bad.stem, "000-bad");
        lane.settle(&bad, Settle::Retry(16 * S), t0);
        let mut sent = Vec::new();
        while let Ok(pick) = lane.next(t0) {
            sent.push(pick.clone());
            lane.settle(&pick, Settle::Done, t0);
        }
        assert_eq!(stems(&sent), ["000-ok", "001-ok", "002-ok"]);
        assert_eq!(lane.next(t0), Err(Some(t0 + 16 * S)), "the failing chat wakes its worker when due");
        // Its deliveries go in order once the wait is over.
        assert_eq!(lane.next(t0 + 16 * S).unwrap().stem, "000-bad");
    }

    #[test]
    fn a_429_holds_its_chat_and_a_global_one_holds_all() {
        let t0 = Instant::now();
        let mut lane = lane(8, SendLimits::NONE, t0);
        fill(&mut lane, &["x", "y"], 2);
        let x = lane.next(t0).unwrap();
        lane.settle(&x, Settle::Wait(5 * S), t0);
        let y = lane.next(t0).unwrap();
        assert_eq!(y.chat, "y");
        lane.settle(&y, Settle::WaitAll(3 * S), t0);
        assert_eq!(lane.next(t0 + S), Err(Some(t0 + 3 * S)));
        assert_eq!(lane.next(t0 + 3 * S).unwrap().stem, "000-y", "x still waits");
        // A reconnect lifts a failure's wait, never a rate limit's.
        lane.lift_transient_holds();
        assert_eq!(lane.next(t0 + 3 * S), Err(Some(t0 + 5 * S)));
    }

    #[test]
    fn the_limiter_passes_over_a_chat_it_holds_back() {
        let t0 = Instant::now();
        let limits = SendLimits { chat: Some(Rate::new(1, S)), total: Some(Rate::new(3, S)), ..SendLimits::NONE };
        let mut lane = lane(8, limits, t0);
        fill(&mut lane, &["a", "b", "c", "d"], 2);
        let mut picks = Vec::new();
        while let Ok(pick) = lane.next(t0) {
            picks.push(pick.clone());
            lane.settle(&pick, Settle::Done, t0);
        }
        // Three chats, once each (the overall limit), then nothing until the window moves.
        assert_eq!(stems(&picks), ["000-a", "000-b", "000-c"]);
        let later = t0 + S + crate::delivery::limiter::MARGIN;
        assert_eq!(lane.next(t0), Err(Some(later)));
        assert_eq!(lane.next(later).unwrap().stem, "000-d");
        // A later chunk of a message in flight waits for its chat's turn.
        assert_eq!(lane.pace("d", later), Err(later + S + crate::delivery::limiter::MARGIN));
    }

    #[test]
    fn a_delivery_found_before_a_chats_next_one_goes_first() {
        let t0 = Instant::now();
        let mut lane = lane(8, SendLimits::NONE, t0);
        lane.add("005-a".into(), "a".into());
        lane.add("007-b".into(), "b".into());
        // Found on disk (a spool file queued earlier): it sorts before both.
        lane.add("001-a".into(), "a".into());
        let first = lane.next(t0).unwrap();
        assert_eq!(first.stem, "001-a");
        // Queued while its chat is busy: it waits for the chat, then goes in order.
        lane.add("003-a".into(), "a".into());
        assert_eq!(lane.next(t0).unwrap().stem, "007-b");
        lane.settle(&first, Settle::Done, t0);
        assert_eq!(lane.next(t0).unwrap().stem, "003-a");
        assert!(!lane.has_ready(t0), "a's last one waits behind the one in flight");
    }

    #[test]
    fn a_panicked_workers_delivery_is_handed_back() {
        let t0 = Instant::now();
        let mut lane = lane(1, SendLimits::NONE, t0);
        fill(&mut lane, &["a"], 1);
        let pick = lane.next(t0).unwrap();
        assert_eq!(lane.next(t0), Err(None));
        lane.hand_back(&pick);
        assert_eq!(lane.next(t0), Ok(pick));
    }
}
