/*!
How often strangers get an answer.

Every DM from an unknown user used to get a reply ("already pending", "too many"), so
one account sending a thousand DMs queued a thousand replies, filled the outbox and drew
429s that slowed the bot for everyone. A stranger now gets at most one such reply per
[`USER_WINDOW`], and a platform instance sends at most [`PLATFORM_CAP`] pairing replies per
[`PLATFORM_WINDOW`]; the rest are dropped (the caller logs them at debug).

A reply carrying a fresh pairing code is never held back: the pairing store already
issues at most one code per user per 10 minutes and a few per platform, and a code
dropped here would be pending without anyone having seen it. It still counts, so the
"already pending" that follows it waits its turn.

Memory stays bounded whatever strangers do: a user is remembered only after a reply
went out, and forgotten once their window has passed; with the platform cap that is at
most `PLATFORM_CAP × USER_WINDOW / PLATFORM_WINDOW` users per platform (plus codes).
*/

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

/// At most one reply per stranger in this window.
pub const USER_WINDOW: Duration = Duration::from_secs(10 * 60);
/// At most [`PLATFORM_CAP`] replies per platform instance in this window.
pub const PLATFORM_WINDOW: Duration = Duration::from_secs(60);
pub const PLATFORM_CAP: usize = 10;

/// Whether `now` is at least `window` after `then`. A clock that went backwards counts
/// as "long ago": one extra reply is better than silence until the clock catches up.
fn passed(then: SystemTime, now: SystemTime, window: Duration) -> bool {
    now.duration_since(then).map_or(true, |d| d >= window)
}

/// The replies recently sent to strangers.
#[derive(Debug, Default)]
pub struct Throttle {
    /// (platform, user) → when they were last answered.
    users: HashMap<(String, String), SystemTime>,
    /// platform → when each reply in its window went out (at most `PLATFORM_CAP`
    /// entries each, oldest first, besides codes).
    platforms: HashMap<String, VecDeque<SystemTime>>,
}

impl Throttle {
    /// May a reply without a new code go to `user` on `platform` at `now`? `true`
    /// records it as sent.
    pub fn admit(&mut self, platform: &str, user: &str, now: SystemTime) -> bool {
        self.forget(now);
        let key = (platform.to_string(), user.to_string());
        if self.users.contains_key(&key) {
            return false;
        }
        if self.platforms.get(platform).is_some_and(|sent| sent.len() >= PLATFORM_CAP) {
            return false;
        }
        self.record(key, now);
        true
    }

    /// A reply with a fresh code went to `user`: it is never refused, but it counts.
    pub fn record_code(&mut self, platform: &str, user: &str, now: SystemTime) {
        self.forget(now);
        self.record((platform.to_string(), user.to_string()), now);
    }

    fn record(&mut self, key: (String, String), now: SystemTime) {
        self.platforms.entry(key.0.clone()).or_default().push_back(now);
        self.users.insert(key, now);
    }

    /// Drop what has aged out of its window.
    fn forget(&mut self, now: SystemTime) {
        for sent in self.platforms.values_mut() {
            while sent.front().is_some_and(|t| passed(*t, now, PLATFORM_WINDOW)) {
                sent.pop_front();
            }
        }
        self.platforms.retain(|_, sent| !sent.is_empty());
        // Only a reply that went out adds a user, so this map is small and cheap to walk.
        self.users.retain(|_, t| !passed(*t, now, USER_WINDOW));
    }

    /// How many users and platform entries are remembered (for the bound test).
    #[cfg(test)]
    pub fn remembered(&self) -> (usize, usize) {
        (self.users.len(), self.platforms.values().map(VecDeque::len).sum())
    }
}
