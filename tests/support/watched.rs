//! State shared by a fake server's threads and the test, with waits on conditions: every
//! change wakes every waiter, so a `wait_*` of a fake can never miss the change it waits
//! for, and a closing fake releases them all at once.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// State that knows when its fake is shutting down (waits then end early).
pub trait Closing {
    fn closing(&self) -> bool;
}

pub struct Watched<S> {
    state: Mutex<S>,
    changed: Condvar,
}

impl<S: Closing> Watched<S> {
    pub fn new(state: S) -> Watched<S> {
        Watched { state: Mutex::new(state), changed: Condvar::new() }
    }

    /// The state, for reading. Every change goes through [`Watched::change`].
    pub fn lock(&self) -> MutexGuard<'_, S> {
        // A panicking handler thread must not hide the state from the test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the state and wake every waiter.
    pub fn change<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        let result = f(&mut self.lock());
        self.changed.notify_all();
        result
    }

    /// Wait until `done` holds, the fake closes, or `deadline` passes; the guard either way.
    pub fn wait_until(&self, deadline: Instant, mut done: impl FnMut(&S) -> bool) -> MutexGuard<'_, S> {
        let mut state = self.lock();
        while !done(&state) && !state.closing() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        state
    }
}
