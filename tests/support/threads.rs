/*!
A census of the threads of another process, from `/proc/PID/task`.

Linux keeps no count of the threads a process has created, only of those alive, so
[`ThreadCensus`] records every thread id it sees: on each [`ThreadCensus::sample`] (take
one where a thread under suspicion must be alive, such as while a long poll is held), and
from a background sampler every millisecond (which also catches some of the short-lived
ones). A thread that lived and died between two samples goes uncounted, so the census can
only undercount: a bound it meets may be met by luck, but one it breaks is broken.

It depends on nothing of the crate, so `benches/` may include it with `#[path]` (for
`threads_created_per_1000_msgs`).
*/

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// The threads of `pid` alive now: id and name.
pub fn live_threads(pid: u32) -> Vec<(u32, String)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut threads: Vec<(u32, String)> = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .map(|tid: u32| {
            let name = fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
            (tid, name.trim_end().to_string())
        })
        .collect();
    threads.sort();
    threads
}

/// Every thread of one process seen since the census started.
pub struct ThreadCensus {
    pid: u32,
    seen: Arc<Mutex<BTreeMap<u32, String>>>,
    done: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
}

impl ThreadCensus {
    /// Start counting the threads of `pid`, with a sampler thread in this process.
    pub fn start(pid: u32) -> ThreadCensus {
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (s, d) = (seen.clone(), done.clone());
        let sampler = thread::Builder::new()
            .name("thread-census".into())
            .spawn(move || {
                while !d.load(Ordering::Relaxed) {
                    record(&s, live_threads(pid));
                    thread::sleep(Duration::from_millis(1));
                }
            })
            .expect("start the census thread");
        let census = ThreadCensus { pid, seen, done, sampler: Some(sampler) };
        census.sample();
        census
    }

    /// Record the threads alive now; returns how many there are.
    pub fn sample(&self) -> usize {
        let live = live_threads(self.pid);
        let n = live.len();
        record(&self.seen, live);
        n
    }

    /// How many distinct threads were seen so far.
    pub fn seen(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Every thread seen, as `id name` lines, for a failure message.
    pub fn describe(&self) -> String {
        self.seen.lock().unwrap().iter().map(|(tid, name)| format!("{tid} {name}\n")).collect()
    }
}

fn record(seen: &Mutex<BTreeMap<u32, String>>, live: Vec<(u32, String)>) {
    seen.lock().unwrap().extend(live);
}

impl Drop for ThreadCensus {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
    }
}
