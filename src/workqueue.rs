/*!
A FIFO of work for threads that are started on demand and end when idle.

[`WorkQueue::push`] queues the work and says whether a new thread must be started for it
(no thread waits for work and fewer than `max` are alive); the caller starts it, so the
queue knows nothing of what a thread runs. A thread takes work with
[`WorkQueue::next`], which returns `None` when it waited `idle` in vain: the thread then
ends, already counted out.

Everything (the queue, the count of threads alive and of threads waiting) is under one
lock, and a waiting thread takes its work under that lock too. So a push never counts on
a thread that is about to end, and a thread never ends while work waits: it looks at the
queue under the lock before it counts itself out. (An earlier version sent the work
through a channel and counted the waiting threads beside it; a thread whose wait timed
out while a push counted on it could find the work taken by another thread and count
itself out twice.)
*/

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

pub struct WorkQueue<W> {
    state: Mutex<State<W>>,
    /// Notified once per push that a waiting thread is to take.
    ready: Condvar,
    idle: Duration,
    max: usize,
}

struct State<W> {
    queue: VecDeque<W>,
    /// Threads alive: started by a push's caller and not yet counted out by `next`.
    alive: usize,
    /// Of them, those waiting in `next`.
    waiting: usize,
    /// Threads started so far, to number the next one.
    started: u64,
}

/// What the caller of [`WorkQueue::push`] is to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// A thread alive will take the work.
    Queued,
    /// Start a thread (this is its number, from 1); it is counted alive already. If it
    /// cannot be started, say so with [`WorkQueue::not_started`].
    StartThread(u64),
}

impl<W> WorkQueue<W> {
    /// At most `max` threads (at least 1); a thread ends after `idle` without work.
    pub fn new(max: usize, idle: Duration) -> WorkQueue<W> {
        let state = State { queue: VecDeque::new(), alive: 0, waiting: 0, started: 0 };
        WorkQueue { state: Mutex::new(state), ready: Condvar::new(), idle, max: max.max(1) }
    }

    /// Queue `work` behind what waits already.
    pub fn push(&self, work: W) -> Pushed {
        let mut s = self.state.lock();
        s.queue.push_back(work);
        // Every waiting thread takes one piece of work before it waits again, so as long
        // as there are no more pieces than waiting threads, one is there for this one.
        if s.queue.len() <= s.waiting {
            self.ready.notify_one();
            return Pushed::Queued;
        }
        if s.alive >= self.max {
            return Pushed::Queued;
        }
        s.alive += 1;
        s.started += 1;
        Pushed::StartThread(s.started)
    }

    /// The thread [`Pushed::StartThread`] asked for could not be started. Its work stays
    /// queued for the next thread free or started.
    pub fn not_started(&self) {
        self.state.lock().alive -= 1;
    }

    /// The oldest work, waiting for it up to `idle`; `None` when none came, and the
    /// calling thread is to end (it is no longer counted alive).
    pub fn next(&self) -> Option<W> {
        let deadline = Instant::now() + self.idle;
        let mut s = self.state.lock();
        loop {
            if let Some(work) = s.queue.pop_front() {
                // A backlog of thousands (a bot back from an outage) grows the queue;
                // give the room back once it is drained, rather than keep it for good.
                if s.queue.is_empty() && s.queue.capacity() > 1024 {
                    s.queue.shrink_to_fit();
                }
                return Some(work);
            }
            s.waiting += 1;
            let timed_out = self.ready.wait_until(&mut s, deadline).timed_out();
            s.waiting -= 1;
            if timed_out && s.queue.is_empty() {
                s.alive -= 1;
                return None;
            }
        }
    }

    /// Threads alive.
    pub fn alive(&self) -> usize {
        self.state.lock().alive
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread;

    /// Start a thread that takes work from `queue` until it is idle, counting what it
    /// took in `taken`.
    fn worker(queue: &Arc<WorkQueue<usize>>, taken: &Arc<Vec<AtomicUsize>>) -> thread::JoinHandle<()> {
        let (queue, taken) = (queue.clone(), taken.clone());
        thread::spawn(move || {
            while let Some(n) = queue.next() {
                taken[n].fetch_add(1, Ordering::SeqCst);
            }
        })
    }

    /// Pushes racing with threads that end after a millisecond idle: every piece of work
    /// is taken exactly once, the counts never go below zero (an underflow panics in a
    /// test build), and at the end no thread is counted alive.
    #[test]
    fn pushes_racing_idle_threads_lose_nothing_and_count_right() {
        const PIECES: usize = 20_000;
        let queue = Arc::new(WorkQueue::new(4, Duration::from_millis(1)));
        let taken: Arc<Vec<AtomicUsize>> = Arc::new((0..PIECES).map(|_| AtomicUsize::new(0)).collect());
        let mut threads = vec![];
        for n in 0..PIECES {
            if let Pushed::StartThread(_) = queue.push(n) {
                threads.push(worker(&queue, &taken));
            }
            // Now and then a pause as long as the idle time, so threads end and are
            // started again while pushes go on.
            if n % 500 == 0 {
                thread::sleep(Duration::from_millis(1));
            }
        }
        for t in threads {
            t.join().expect("a worker panicked");
        }
        assert!(taken.iter().all(|t| t.load(Ordering::SeqCst) == 1), "work lost or taken twice");
        assert_eq!(queue.alive(), 0);
    }

    #[test]
    fn at_most_max_threads_are_asked_for() {
        let queue = WorkQueue::new(2, Duration::from_secs(60));
        assert_eq!(queue.push(1), Pushed::StartThread(1));
        assert_eq!(queue.push(2), Pushed::StartThread(2));
        assert_eq!(queue.push(3), Pushed::Queued);
        queue.not_started();
        assert_eq!(queue.push(4), Pushed::StartThread(3));
        assert_eq!(queue.alive(), 2);
    }
}
