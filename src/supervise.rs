/*!
Every long-lived thread runs under this module, so that a panic is never silent.

A panic in a thread of its own ends only that thread: the rest of the gateway lives on
without it, and a gateway that looks alive while one part of it is dead (no more sending,
a session busy forever, Ctrl-C ignored) is the one outcome never allowed. So each thread
is started here, in one of two ways (Erlang/OTP's supervisor, reduced to what we need):

- [`spawn`]: a panic is logged with its message and the body is called again on the same
  thread. The body is `FnMut`, so what it captured survives the panic: that is how its
  work is handed back (the outbox worker finds its queue, a turn worker the turn it was
  running). Restarts are bounded like OTP's restart intensity: the waits before a restart
  grow from [`RESTART_BASE`], and after [`MAX_PANICS`] panics within [`PANIC_WINDOW`] the
  process exits with code 1, so the service manager restarts the whole gateway.
- [`spawn_essential`]: for a thread whose state cannot be rebuilt safely after a panic
  (the router's table of running turns; [`essential`] for the supervisor loop on the
  main thread). A panic ends the process with code 1 at once; every accepted message is
  in the inbox journal and is answered after the restart.

[`guard`] is the same for one call on someone else's thread (a write of the channel
directory): the panic is logged and the call reported as not done.

The panic hook (set in `main`) has already logged where the panic happened; the lines
written here say what becomes of the thread.
*/

use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread;
use std::time::{Duration, Instant};

use crate::backoff;
use crate::supervisor::state::EXIT_FAILURE;

/// The wait before the first restart; it doubles with each panic in the window.
pub const RESTART_BASE: Duration = Duration::from_millis(100);
/// The longest wait before a restart.
pub const RESTART_CAP: Duration = Duration::from_secs(5);
/// This many panics of one thread within [`PANIC_WINDOW`] end the process.
pub const MAX_PANICS: usize = 5;
pub const PANIC_WINDOW: Duration = Duration::from_secs(60);

/// Start `body` on a thread named `name`, calling it again after each panic (see the
/// module doc). The thread ends when `body` returns.
pub fn spawn(name: impl Into<String>, body: impl FnMut() + Send + 'static) -> io::Result<()> {
    let name = name.into();
    thread::Builder::new().name(name.clone()).spawn(move || restarting(&name, body)).map(drop)
}

/// Start `body` on a thread named `name`; a panic in it ends the process with code 1.
pub fn spawn_essential(name: impl Into<String>, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let name = name.into();
    let builder = thread::Builder::new().name(name.clone());
    builder.spawn(move || essential(&name, body)).map(drop)
}

/// Run `body` on this thread (the supervisor's, on the main thread); a panic in it ends
/// the process with code 1, like one in a thread of [`spawn_essential`].
pub fn essential<T>(name: &str, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(payload) => {
            exit(&format!("thread {name} panicked ({}); it cannot be restarted safely", panic_message(&*payload)))
        }
    }
}

/// Run `f`; after a panic in it, log it (as `what` panicked) and return `None`.
pub fn guard<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(payload) => {
            log::error!("{what} panicked ({}); carrying on without it", panic_message(&*payload));
            None
        }
    }
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

/// Call `body` until it returns, restarting it after each panic.
fn restarting(name: &str, mut body: impl FnMut()) {
    let mut panics = Panics::default();
    loop {
        let Err(payload) = catch_unwind(AssertUnwindSafe(&mut body)) else { return };
        let why = panic_message(&*payload);
        let n = panics.record(Instant::now());
        if n >= MAX_PANICS {
            exit(&format!("thread {name} panicked {n} times within {PANIC_WINDOW:?}, last: {why}"));
        }
        let wait = backoff::delay(n as u32, RESTART_BASE, RESTART_CAP);
        log::error!(
            "thread {name} panicked ({why}); restarting it in {wait:?} ({n} within {PANIC_WINDOW:?}, {MAX_PANICS} end the gateway)"
        );
        thread::sleep(wait);
    }
}

/// End the process with code 1, so that the service manager starts it again.
fn exit(why: &str) -> ! {
    log::error!("{why}; exiting with code {EXIT_FAILURE} so that the gateway is restarted");
    log::logger().flush();
    std::process::exit(EXIT_FAILURE)
}

/// When the recent panics of one thread happened.
#[derive(Default)]
struct Panics {
    at: VecDeque<Instant>,
}

impl Panics {
    /// Record a panic at `now`; how many happened within the window, this one included.
    fn record(&mut self, now: Instant) -> usize {
        while self.at.front().is_some_and(|t| now.saturating_duration_since(*t) >= PANIC_WINDOW) {
            self.at.pop_front();
        }
        self.at.push_back(now);
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn panics_are_counted_within_the_window_only() {
        let mut panics = Panics::default();
        let t0 = Instant::now();
        assert_eq!(panics.record(t0), 1);
        assert_eq!(panics.record(t0 + Duration::from_secs(1)), 2);
        assert_eq!(panics.record(t0 + PANIC_WINDOW), 2, "the first one is out of the window");
        assert_eq!(panics.record(t0 + PANIC_WINDOW * 3), 1);
    }

    #[test]
    fn a_panicking_body_is_called_again_with_what_it_captured() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let (tx, rx) = crossbeam_channel::bounded(1);
        // State captured by the body survives its panic: the second call sees the work.
        let mut in_hand = None;
        spawn("supervise-test", move || {
            seen.fetch_add(1, Ordering::SeqCst);
            match in_hand.take() {
                None => {
                    in_hand = Some("work");
                    panic!("first call");
                }
                Some(work) => tx.send(work).unwrap(),
            }
        })
        .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok("work"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn guard_reports_a_panic_as_none() {
        assert_eq!(guard("test", || 7), Some(7));
        assert_eq!(guard("test", || -> u8 { panic!("boom") }), None);
    }

    #[test]
    fn panic_messages_are_read_from_both_payload_kinds() {
        let text = catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(&*text), "plain");
        let formatted = catch_unwind(|| panic!("formatted {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*formatted), "formatted 1");
    }
}
