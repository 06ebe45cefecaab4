/*!
Shared network plumbing for platforms that talk HTTP or WebSockets.

Every HTTP platform needs the same few things done the same way: a ureq `Agent` whose
blocking calls all have a deadline, the status code in hand instead of an error (so a 429
body with its `retry_after` can be read), and one answer to "is this failure worth
retrying?". They live here so each platform file holds only its own protocol. [`ws`]
(feature `websocket`) is the same for WebSocket platforms: a connection with deadlines on
every step, a `recv` that ticks, and a stop handle that shuts the socket down.

Numbers from the network are hostile. A wait a server asks for (`Retry-After`, Telegram's
`retry_after`) goes through [`server_wait`] before anything adds it to a clock: seen in
the wild were `retry_after = 18446744073709551615` and a `Retry-After` date in the year
1000000000000, each of which overflowed `Instant + Duration` and killed the thread.
*/

pub mod api;
pub mod http;
pub mod resolve;
pub mod retry;
#[cfg(feature = "websocket")]
pub mod ws;

use std::time::Duration;

/// The longest wait a server may impose on us. Real rate limits are seconds to minutes;
/// a server asking for more is broken or hostile, and honouring it would silence a
/// platform for as long as it likes (or overflow the clock).
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(3600);

/// `asked`, a wait a server asked for, at most [`MAX_SERVER_WAIT`]. A longer ask is
/// logged (at warn: it is suspicious) naming `what` asked for it.
pub fn server_wait(asked: Duration, what: &str) -> Duration {
    if asked <= MAX_SERVER_WAIT {
        return asked;
    }
    log::warn!(
        "suspicious wait from a server: {what} asks for {} s; waiting {} s instead",
        asked.as_secs(),
        MAX_SERVER_WAIT.as_secs()
    );
    MAX_SERVER_WAIT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_waits_are_clamped_to_one_hour() {
        let s = Duration::from_secs;
        assert_eq!(server_wait(s(7), "test"), s(7));
        assert_eq!(server_wait(MAX_SERVER_WAIT, "test"), MAX_SERVER_WAIT);
        assert_eq!(server_wait(s(3601), "test"), MAX_SERVER_WAIT);
        assert_eq!(server_wait(s(u64::MAX), "test"), MAX_SERVER_WAIT);
        assert_eq!(server_wait(Duration::MAX, "test"), MAX_SERVER_WAIT);
    }
}
