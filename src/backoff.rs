/*!
Reconnect backoff: a pure function of the attempt number.

`delay(n) = min(base · 2^(n−1), cap)`, so with the defaults (30 s, 300 s) a platform is
retried after 30, 60, 120, 240, 300, 300 … seconds. No state, no jitter: what the table
test says is what the supervisor does.

[`deadline`] turns a wait into an instant without the panic of `Instant + Duration`,
for every wait that comes from configuration or from the network.
*/

use std::time::{Duration, Instant};

/// The wait before retry number `attempt` (1-based; 0 is treated as 1).
pub fn delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    base.checked_mul(1u32 << doublings).map_or(cap, |d| d.min(cap))
}

/// `now + wait`, checked: when that instant cannot be represented (a wait read from
/// outside, `u64::MAX` seconds), the latest instant that can, short of it. Never panics.
pub fn deadline(now: Instant, wait: Duration) -> Instant {
    let mut wait = wait;
    loop {
        if let Some(at) = now.checked_add(wait) {
            return at;
        }
        // Halving reaches a representable wait in at most 64 rounds (zero always is).
        wait /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_base_up_to_cap() {
        let s = Duration::from_secs;
        let got: Vec<_> = (1..=7).map(|n| delay(n, s(30), s(300)).as_secs()).collect();
        assert_eq!(got, [30, 60, 120, 240, 300, 300, 300]);
    }

    #[test]
    fn huge_attempt_numbers_stay_at_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(delay(0, s(30), s(300)), s(30));
        assert_eq!(delay(40, s(30), s(300)), s(300));
        assert_eq!(delay(u32::MAX, Duration::from_millis(1), s(5)), s(5));
    }

    #[test]
    fn deadlines_never_overflow() {
        let now = Instant::now();
        assert_eq!(deadline(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        assert!(deadline(now, Duration::MAX) > now + Duration::from_secs(1 << 40));
        assert!(deadline(now, Duration::from_secs(u64::MAX)) > now);
    }
}
