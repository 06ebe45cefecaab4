/*!
The outbox journal of one platform instance: `state_dir/outbox/NAME/journal`, one JSON
object per line, appended to and never rewritten in place.

```text
{"put":{"id":STEM,"record":{…}}}                  queued (or its record replaced)
{"put":{"id":STEM,"claimed":true,"record":{…}}}   claimed, with its record replaced
{"claim":{"id":STEM}}                             being sent
{"unclaim":{"id":STEM}}                           put back
{"gone":{"id":STEM}}                              sent, parked, or never accepted
```

Memory holds what a replay of the lines gives: the live deliveries by stem (so in FIFO
order) and whether each is claimed. Every change is one [`Journal::change`]: the lines
are planned from the current state, written with one `write`, and applied to memory
only once written, so memory never runs ahead of the file.

**Group commit.** A durable change returns once an `fdatasync` that began after its
lines were written has returned. The first waiter becomes the leader and syncs; the
others wait on a condition variable, and a sync covers everything written before it
began, so every writer that arrived while one sync ran shares the next one. Under load
(the last sync served several writers) the leader first waits [`COMMIT_DELAY`] for the
writers on their way. A busy gateway thus pays one sync per batch of replies, not per
reply. A new delivery is not
listed ([`Journal::live`]) before its sync returned, so no worker sends what could still
be refused; if the sync fails, the delivery is withdrawn (a `gone` line) and the writer
gets the error, so "error" still means "nothing queued".

**Compaction.** When the file is [`COMPACT_FACTOR`] times larger than what is live (and
past [`COMPACT_MIN_BYTES`]), it is rewritten: the live deliveries are copied to
`.journal.tmp` and synced *without* the lock (enqueues and syncs go on meanwhile), then,
under the lock, the lines appended since are copied after them, synced, and the copy is
renamed over the journal and the directory synced. Enqueues wait only for that last
small step. A crash at any point leaves the old journal or the new one, both whole.

**Crashes.** Every line is written before the change is applied, so a `kill -9` loses
nothing the kernel was given; a power cut loses at most the lines after the last sync,
never a durable change before it. A torn or damaged line is skipped at replay (and
copied to `journal.damaged`, to be looked at), as in the inbox.
*/

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, MutexGuard};
use serde::{Deserialize, Serialize};

use super::store::Record;
use crate::fsutil;

/// The journal is compacted when it is this many times larger than what is live (and
/// at least [`COMPACT_MIN_BYTES`]), so rewriting costs a constant share of the writes.
const COMPACT_FACTOR: u64 = 4;
/// (Small in unit tests, so that they compact often.)
const COMPACT_MIN_BYTES: u64 = if cfg!(test) { 16 << 10 } else { 1 << 20 };

/// When the last sync served more than one durable change (writers queue up at once), a
/// leader waits this long before it syncs, so that the writers on their way share its
/// sync (PostgreSQL's `commit_delay` with `commit_siblings`). One change at a time never
/// waits. Long enough to gather a wave of replies: turns started together (a burst of
/// chats) end over 10–30 ms on two cores. With a wait of 0.5 ms each wave took about 17
/// syncs (`make bench`, real_latency: 0.27–0.34 syncs per message at 500 chats; 0.06 with
/// 10 ms); with instant fakes 2 ms already made it one sync per ~8 replies. Under load the
/// wait costs a reply 10 ms at most, against a model's seconds; one reply at a time (the
/// latency figure) never waits.
const COMMIT_DELAY: Duration = Duration::from_millis(10);

/// One line of the journal.
// Lines are made one at a time, to be written or replayed: boxing the record would
// only add an allocation per line.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Line {
    Put {
        id: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        claimed: bool,
        record: Record,
    },
    Claim {
        id: String,
    },
    Unclaim {
        id: String,
    },
    Gone {
        id: String,
    },
}

/// A live delivery.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub record: Record,
    pub claimed: bool,
    /// Its first `put` is durable: it may be listed and sent.
    listed: bool,
}

pub(super) type Entries = BTreeMap<String, Entry>;

pub(super) struct Journal {
    path: PathBuf,
    state: Mutex<State>,
    /// Signalled when a sync or a compaction ends.
    synced: Condvar,
    /// Mirror of `State::written`, for the leader to read without the lock.
    written: AtomicU64,
    /// Durable changes so far (written under the lock), for the commit delay.
    durable: AtomicU64,
}

struct State {
    file: Arc<File>,
    entries: Entries,
    /// Writes so far, and the last one known durable.
    written: u64,
    synced: u64,
    /// A leader is syncing (outside the lock).
    syncing: bool,
    /// The writes `(after, up to]` whose sync failed.
    failed: Option<(u64, u64)>,
    /// Durable changes covered by syncs so far, and by the last one.
    durable_synced: u64,
    last_batch: u64,
    /// Bytes in the file, and right after the last compaction.
    size: u64,
    compacted_size: u64,
    compacting: bool,
    /// A write failed part-way: the next one starts on a new line.
    torn: bool,
    /// Files of the directory were removed since it was last synced (see [`Journal::removed_files`]).
    dir_dirty: bool,
}

impl Journal {
    /// Open (creating) the journal at `path` and replay it. Also returns the first `put`
    /// record of every id in it, gone ones included (to recognise a spool file folded in
    /// just before a crash). Compacts nothing: see [`Journal::compact`].
    pub fn open(path: &Path) -> io::Result<(Journal, HashMap<String, Record>)> {
        let (entries, first_puts) = replay(path, true)?;
        let _ = fs::remove_file(tmp_path(path));
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        let state = State {
            file: Arc::new(file),
            entries,
            written: 0,
            synced: 0,
            syncing: false,
            failed: None,
            durable_synced: 0,
            last_batch: 0,
            size,
            compacted_size: 0,
            compacting: false,
            torn: false,
            dir_dirty: false,
        };
        let journal = Journal {
            path: path.to_path_buf(),
            state: Mutex::new(state),
            synced: Condvar::new(),
            written: AtomicU64::new(0),
            durable: AtomicU64::new(0),
        };
        Ok((journal, first_puts))
    }

    /// The live deliveries of the journal at `path`, read without opening it for
    /// writing (for `switchboard status` while a gateway runs).
    pub fn read_live(path: &Path) -> io::Result<Entries> {
        replay(path, false).map(|(entries, _)| entries)
    }

    /// The stems of the live deliveries that may be sent, in FIFO order.
    pub fn live(&self) -> Vec<String> {
        let state = self.state.lock();
        state.entries.iter().filter(|(_, e)| e.listed).map(|(id, _)| id.clone()).collect()
    }

    /// Plan lines from the live deliveries with `plan`, write them, apply them, and (if
    /// `durable`) wait until they are synced. Returns what `plan` returned. On an error
    /// memory is as if nothing happened, except after a failed sync of lines that only
    /// changed existing deliveries (those changes stay: they are in the file).
    pub fn change<R>(&self, durable: bool, plan: impl FnOnce(&Entries) -> (Vec<Line>, R)) -> io::Result<R> {
        let mut state = self.state.lock();
        let (lines, result) = plan(&state.entries);
        if lines.is_empty() {
            return Ok(result);
        }
        let mut buf = Vec::new();
        for line in &lines {
            push_line(&mut buf, line);
        }
        append(&mut state, &buf)?;
        state.written += 1;
        let seq = state.written;
        self.written.store(seq, Ordering::Release);
        if durable {
            self.durable.fetch_add(1, Ordering::Release);
        }
        let mut fresh = Vec::new();
        for line in lines {
            if let Line::Put { id, .. } = &line
                && !state.entries.contains_key(id)
            {
                fresh.push(id.clone());
            }
            apply(&mut state.entries, line, !durable);
        }
        if durable && let Err(e) = self.wait_synced(&mut state, seq) {
            self.withdraw(&mut state, &fresh);
            return Err(e);
        }
        for id in &fresh {
            if let Some(entry) = state.entries.get_mut(id) {
                entry.listed = true;
            }
        }
        let due = state.size > (state.compacted_size * COMPACT_FACTOR).max(COMPACT_MIN_BYTES);
        if due && !state.compacting {
            drop(state);
            if let Err(e) = self.compact() {
                log::warn!("outbox: cannot compact {}: {e}", self.path.display());
            }
        }
        Ok(result)
    }

    /// The writes of `fresh` could not be made durable: take them back (best effort; a
    /// `gone` line the disk refuses too leaves them for the next start to send).
    fn withdraw(&self, state: &mut State, fresh: &[String]) {
        let mut buf = Vec::new();
        for id in fresh {
            state.entries.remove(id);
            push_line(&mut buf, &Line::Gone { id: id.clone() });
        }
        if !buf.is_empty() {
            let _ = append(state, &buf);
        }
    }

    /// Block until write `seq` is durable: as the leader who syncs, or as a follower
    /// whose write the leader's sync (or the next one) covers.
    fn wait_synced(&self, state: &mut MutexGuard<'_, State>, seq: u64) -> io::Result<()> {
        loop {
            if let Some((after, upto)) = state.failed
                && seq > after
                && seq <= upto
            {
                return Err(io::Error::other("the outbox journal could not be synced to disk"));
            }
            if state.synced >= seq {
                return Ok(());
            }
            if state.syncing {
                self.synced.wait(state);
                continue;
            }
            state.syncing = true;
            let file = state.file.clone();
            let before = state.synced;
            let delay = state.last_batch > 1;
            let (target, durable, synced) = MutexGuard::unlocked(state, || {
                if delay {
                    std::thread::sleep(COMMIT_DELAY);
                }
                #[cfg(test)]
                tests::sync_gate();
                // Everything written up to here is in `file`: the file is only swapped
                // by a compaction, which waits for `syncing` to clear.
                let target = self.written.load(Ordering::Acquire);
                let durable = self.durable.load(Ordering::Acquire);
                (target, durable, fsutil::sync_data(&file))
            });
            state.syncing = false;
            state.last_batch = durable.saturating_sub(state.durable_synced);
            state.durable_synced = state.durable_synced.max(durable);
            match synced {
                Ok(()) => state.synced = state.synced.max(target),
                Err(e) => {
                    log::error!("outbox: cannot sync {}: {e}", self.path.display());
                    state.failed = Some((before, target));
                }
            }
            self.synced.notify_all();
        }
    }

    /// Note that files next to the journal were removed: the next compaction syncs the
    /// directory before it replaces the journal, so no removal is undone by a power cut
    /// after the journal forgot the delivery the file held.
    pub fn removed_files(&self) {
        self.state.lock().dir_dirty = true;
    }

    /// Rewrite the journal with only the live deliveries. See the module doc.
    pub fn compact(&self) -> io::Result<()> {
        let (snapshot, mark) = {
            let mut state = self.state.lock();
            if state.compacting {
                return Ok(());
            }
            state.compacting = true;
            let mut buf = Vec::new();
            for (id, e) in &state.entries {
                push_line(&mut buf, &Line::Put { id: id.clone(), claimed: e.claimed, record: e.record.clone() });
            }
            let mark = state.file.metadata().map(|m| m.len());
            (buf, mark)
        };
        let result = mark.and_then(|mark| self.swap_in(&snapshot, mark));
        let mut state = self.state.lock();
        state.compacting = false;
        if result.is_err() {
            let _ = fs::remove_file(tmp_path(&self.path));
        }
        drop(state);
        self.synced.notify_all();
        result
    }

    /// Write `snapshot` to the temporary file and sync it (unlocked), then add what was
    /// appended after `mark` and replace the journal (locked).
    fn swap_in(&self, snapshot: &[u8], mark: u64) -> io::Result<()> {
        let tmp = tmp_path(&self.path);
        let mut file = OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(snapshot)?;
        fsutil::sync_data(&file)?;
        #[cfg(test)]
        tests::compact_gate();
        let mut state = self.state.lock();
        while state.syncing {
            self.synced.wait(&mut state);
        }
        let mut tail = Vec::new();
        let mut old = File::open(&self.path)?;
        old.seek(SeekFrom::Start(mark))?;
        old.read_to_end(&mut tail)?;
        if !tail.is_empty() && !tail.ends_with(b"\n") {
            tail.push(b'\n');
        }
        file.write_all(&tail)?;
        fsutil::sync_data(&file)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if state.dir_dirty {
            fsutil::sync_dir(dir)?;
        }
        fs::rename(&tmp, &self.path)?;
        fsutil::sync_dir(dir)?;
        let size = (snapshot.len() + tail.len()) as u64;
        state.file = Arc::new(open_append(&self.path)?);
        state.size = size;
        state.compacted_size = size;
        state.synced = state.written;
        state.torn = false;
        state.dir_dirty = false;
        Ok(())
    }

    #[cfg(test)]
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub fn compacting(&self) -> bool {
        self.state.lock().compacting
    }
}

/// Apply one line to the live deliveries. A new `put` is `listed` unless `pending`.
fn apply(entries: &mut Entries, line: Line, pending: bool) {
    match line {
        Line::Put { id, claimed, record } => match entries.get_mut(&id) {
            Some(e) => {
                e.record = record;
                e.claimed = claimed;
            }
            None => {
                entries.insert(id, Entry { record, claimed, listed: !pending });
            }
        },
        Line::Claim { id } => {
            if let Some(e) = entries.get_mut(&id) {
                e.claimed = true;
            }
        }
        Line::Unclaim { id } => {
            if let Some(e) = entries.get_mut(&id) {
                e.claimed = false;
            }
        }
        Line::Gone { id } => {
            entries.remove(&id);
        }
    }
}

fn push_line(buf: &mut Vec<u8>, line: &Line) {
    // Strings and numbers only: serializing cannot fail.
    serde_json::to_writer(&mut *buf, line).expect("an outbox journal line serializes");
    buf.push(b'\n');
}

/// Append whole lines with one `write`.
fn append(state: &mut State, lines: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(lines.len() + 1);
    if state.torn {
        buf.push(b'\n');
    }
    buf.extend_from_slice(lines);
    let written = (&*state.file).write_all(&buf);
    state.torn = written.is_err();
    if written.is_ok() {
        state.size += buf.len() as u64;
    }
    written
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

fn tmp_path(path: &Path) -> PathBuf {
    path.with_file_name(".journal.tmp")
}

/// Replay the journal at `path`: the live deliveries, and the first `put` of every id.
/// Unreadable lines are skipped with a warning and, when `keep_damaged`, appended to
/// `journal.damaged` beside it. A missing journal is an empty one.
fn replay(path: &Path, keep_damaged: bool) -> io::Result<(Entries, HashMap<String, Record>)> {
    let (mut entries, mut first_puts) = (Entries::new(), HashMap::new());
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((entries, first_puts)),
        Err(e) => return Err(e),
    };
    let mut damaged = Vec::new();
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        match serde_json::from_slice::<Line>(&line) {
            Ok(parsed) => {
                if let Line::Put { id, record, .. } = &parsed {
                    first_puts.entry(id.clone()).or_insert_with(|| record.clone());
                }
                apply(&mut entries, parsed, false);
            }
            Err(_) if line.iter().all(u8::is_ascii_whitespace) => {}
            Err(_) => {
                damaged.extend_from_slice(&line);
                damaged.push(b'\n');
            }
        }
    }
    if keep_damaged && !damaged.is_empty() {
        let aside = path.with_file_name("journal.damaged");
        log::warn!(
            "outbox: skipped unreadable line(s) in {} (a torn last line is a write a crash cut short); \
             copied them to {}",
            path.display(),
            aside.display()
        );
        let kept = OpenOptions::new().create(true).append(true).mode(0o600).open(&aside);
        if let Err(e) = kept.and_then(|mut f| f.write_all(&damaged)) {
            log::warn!("outbox: cannot keep the unreadable lines in {}: {e}", aside.display());
        }
    }
    Ok((entries, first_puts))
}

#[cfg(test)]
pub(super) mod tests {
    use parking_lot::Mutex;

    /// Held by a test to stop every leader just before it syncs.
    pub static SYNC_GATE: Mutex<()> = parking_lot::const_mutex(());

    pub fn sync_gate() {
        drop(SYNC_GATE.lock());
    }

    /// Held by a test to stop every compaction between its two phases.
    pub static COMPACT_GATE: Mutex<()> = parking_lot::const_mutex(());

    pub fn compact_gate() {
        drop(COMPACT_GATE.lock());
    }
}
