/*!
The inbox: a durable journal of accepted inbound messages.

A platform's cursor (Telegram's offset) may only move past a message once the message
is safe. [`Inbox::accept_batch`] makes it safe: the messages are appended to
`state_dir/inbox/journal` and the file is synced (one `fdatasync` for a whole batch,
which is what lets a busy bot journal hundreds of messages per millisecond of disk
time) before the adapter hears "accepted". When a message's turn is over (its reply is
in the durable outbox), [`Inbox::complete`] appends an `answered` record. After a crash,
every accepted message without one is answered again ([`Inbox::pending`]),
so a `kill -9` mid-turn loses nothing.

Each message is known by its platform, chat and message id, so one the platform sends
again (a crash between accepting it and storing the cursor) is recognised, pending or
done, and dropped. Messages without an id (the console) get a unique one and are never taken for
each other. `answered` records are not synced: losing one to a power cut means a message is
answered twice, never that one is lost.

# Staying bounded

Done ids are remembered for the replay window (`[gateway] dedup_window`, a week by
default), no longer: they are kept in memory in the order they were done, and each
[`Inbox::complete`] forgets the ones that aged out, so memory holds one window's worth of
ids however long the gateway runs. Memory and the journal keep each done id as a 64-bit
hash (the start of its SHA-256), not in full: 16 bytes per id instead of a hundred or so,
at the odds of two ids of one window colliding (about 10⁻⁹ with 200,000 ids in the
window), which would drop the second message as a replay. Journals written before keep
done ids in full (`done` records); they are read as their hashes.

The journal is one JSON object per line. When it grows past a few times what it must
keep, it is compacted: rewritten with only the pending messages and the done ids still in
the window. The compaction must not stall the adapters, whose `accept_batch` needs the
inbox's lock, so it runs in two steps:

1. With the lock, briefly: note the journal's length and take a snapshot of what the
   file up to there amounts to (the pending messages, and the done ids, 16 bytes each).
   Without the lock: write
   the snapshot to `journal.compact` and sync it.
2. With the lock: copy what was appended since step 1 to the end of `journal.compact`,
   sync it, rename it over `journal`, sync the directory, and append to the new file.

The lock is held for the snapshot of pointers and for the lines appended meanwhile. A crash before the rename leaves
the old journal, complete; after it, the new one, which holds everything the old one
did that still matters. A leftover `journal.compact` is removed at the next start. The
journal is also compacted when the inbox is opened. A torn last line (a crash
mid-write) is skipped.
*/

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::message::Inbound;
use crate::status::unix_now;

/// How long done ids are remembered to recognise replays, unless configured otherwise.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// The journal is compacted when it is this many times larger than what it must keep
/// (and at least [`COMPACT_MIN_BYTES`]).
const COMPACT_FACTOR: u64 = 4;
const COMPACT_MIN_BYTES: u64 = 1 << 20;

/// Where a compaction writes the new journal before renaming it into place.
const COMPACT_TMP: &str = "journal.compact";

/// A message the inbox has accepted, with the id of its journal entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    pub msg: Inbound,
}

/// One line of the journal.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Record {
    Accept {
        id: String,
        at: f64,
        msg: Inbound,
    },
    /// An answered id in full: what journals written before hashed ids hold (read only).
    Done {
        id: String,
        at: f64,
    },
    /// An answered id's hash ([`id_hash`]), as 16 hex digits.
    Answered {
        hash: String,
        at: f64,
    },
}

/// How memory and the journal know a done id: the first 8 bytes of its SHA-256, which
/// (unlike std's hasher) is the same in every build and cannot be steered by whoever
/// picks the ids. The journal writes it as 16 lowercase hex digits
/// (`{"answered":{"hash":…,"at":…}}`); public for tools and tests that read the journal.
pub fn id_hash(id: &str) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut first = [0; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// Where the inbox reads the time (Unix seconds); tests pass a clock they move.
type Clock = Box<dyn Fn() -> f64 + Send + Sync>;

pub struct Inbox {
    path: PathBuf,
    /// The replay window, in seconds.
    keep_secs: f64,
    clock: Clock,
    state: Mutex<State>,
    /// Held for the whole of a compaction, so that only one runs at a time. Never taken
    /// while `state` is held.
    compacting: Mutex<()>,
    counter: AtomicU64,
    /// Called by a compaction between its two steps (tests hold it there).
    #[cfg(test)]
    midway: Mutex<Option<Box<dyn FnMut() + Send>>>,
}

struct State {
    /// The journal, opened to append and to read back what a compaction must copy.
    file: File,
    /// Accepted and not done: id → (accepted at, message).
    pending: HashMap<String, (f64, Inbound)>,
    /// Done ids ([`id_hash`]) and when, to recognise replays.
    done: HashMap<u64, f64>,
    /// The same ids in the order they were done, oldest first, to forget them as they
    /// leave the window without scanning all of them.
    order: VecDeque<(f64, u64)>,
    /// Bytes in the journal, and after the last compaction.
    size: u64,
    compacted_size: u64,
    /// A write failed part-way: the next one starts on a new line.
    torn: bool,
}

impl Inbox {
    /// Open (creating) `state_dir/inbox/journal` and compact it, with the default window.
    pub fn open(state_dir: &Path) -> io::Result<Inbox> {
        Inbox::open_with(state_dir, DEFAULT_DEDUP_WINDOW)
    }

    /// Open (creating) `state_dir/inbox/journal` and compact it; done ids are remembered
    /// for `window`.
    pub fn open_with(state_dir: &Path, window: Duration) -> io::Result<Inbox> {
        Inbox::open_clocked(state_dir, window, Box::new(unix_now))
    }

    fn open_clocked(state_dir: &Path, window: Duration, clock: Clock) -> io::Result<Inbox> {
        let dir = state_dir.join("inbox");
        fsutil::create_private_dir(&dir)?;
        let path = dir.join("journal");
        match fs::remove_file(dir.join(COMPACT_TMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let (pending, done) = read_journal(&path)?;
        let keep_secs = window.as_secs_f64();
        let cutoff = clock() - keep_secs;
        let mut order: Vec<(f64, u64)> =
            done.into_iter().filter(|(_, at)| *at >= cutoff).map(|(hash, at)| (at, hash)).collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let done = order.iter().map(|(at, hash)| (*hash, *at)).collect();
        let file = open_journal(&path, false)?;
        let size = file.metadata()?.len();
        let state = State { file, pending, done, order: order.into(), size, compacted_size: size, torn: false };
        let inbox = Inbox {
            path,
            keep_secs,
            clock,
            state: Mutex::new(state),
            compacting: Mutex::new(()),
            counter: AtomicU64::new(0),
            #[cfg(test)]
            midway: Mutex::new(None),
        };
        inbox.compact()?;
        Ok(inbox)
    }

    /// Record `msg` durably. `Ok(None)` means it was accepted before (a replay).
    pub fn accept(&self, msg: Inbound) -> io::Result<Option<Accepted>> {
        Ok(self.accept_batch(vec![msg])?.pop())
    }

    /// Record `msgs` durably with one sync, leaving out the ones accepted before.
    /// Either all new ones are recorded, or (on an error) none is.
    pub fn accept_batch(&self, msgs: Vec<Inbound>) -> io::Result<Vec<Accepted>> {
        let mut state = self.state.lock();
        let at = (self.clock)();
        let mut fresh: Vec<Accepted> = Vec::new();
        let mut lines = Vec::new();
        for msg in msgs {
            let id = self.entry_id(&msg);
            let seen = state.pending.contains_key(&id) || state.done.contains_key(&id_hash(&id));
            if seen || fresh.iter().any(|a| a.id == id) {
                continue;
            }
            let record = Record::Accept { id: id.clone(), at, msg };
            push_line(&mut lines, &record);
            let Record::Accept { msg, .. } = record else { unreachable!("built just above") };
            fresh.push(Accepted { id, msg });
        }
        if fresh.is_empty() {
            return Ok(fresh);
        }
        append(&mut state, &lines, true)?;
        for a in &fresh {
            state.pending.insert(a.id.clone(), (at, a.msg.clone()));
        }
        Ok(fresh)
    }

    /// The turn for entry `id` is over: remember it only to recognise a replay, for the
    /// window. Forgets the ids that left the window, and compacts the journal (on this
    /// thread, mostly without the lock) when it has grown enough.
    pub fn complete(&self, id: &str) {
        let mut state = self.state.lock();
        if state.pending.remove(id).is_none() {
            return;
        }
        shrink_pending(&mut state.pending);
        let at = (self.clock)();
        let hash = id_hash(id);
        state.done.insert(hash, at);
        state.order.push_back((at, hash));
        forget_before(&mut state, at - self.keep_secs);
        let mut line = Vec::new();
        push_line(&mut line, &answered(hash, at));
        if let Err(e) = append(&mut state, &line, false) {
            log::warn!("inbox: cannot record {id} as done: {e}; it may be answered again after a restart");
        }
        let limit = (state.compacted_size * COMPACT_FACTOR).max(COMPACT_MIN_BYTES);
        let due = state.size > limit;
        drop(state);
        if due && let Err(e) = self.compact() {
            log::warn!("inbox: cannot compact {}: {e}", self.path.display());
        }
    }

    /// Every accepted message whose turn never finished, oldest first.
    pub fn pending(&self) -> Vec<Accepted> {
        let state = self.state.lock();
        let mut found: Vec<(f64, Accepted)> =
            state.pending.iter().map(|(id, (at, msg))| (*at, Accepted { id: id.clone(), msg: msg.clone() })).collect();
        found.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        found.into_iter().map(|(_, a)| a).collect()
    }

    /// `<platform>--<chat>--m<message id>` (platforms number messages per chat, as
    /// Telegram does), or a unique id for messages without one.
    fn entry_id(&self, msg: &Inbound) -> String {
        match &msg.message_id {
            Some(id) => format!("{}--{}--m{id}", msg.source.platform, msg.source.chat_id),
            None => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                format!("{}--u{}-{}-{n}", msg.source.platform, (unix_now() * 1e6) as u64, std::process::id())
            }
        }
    }

    /// Rewrite the journal with only the pending messages and the done ids in the window,
    /// in the two steps of the module doc. Returns at once if a compaction is running.
    fn compact(&self) -> io::Result<()> {
        let Some(_only_one) = self.compacting.try_lock() else { return Ok(()) };
        let tmp = self.path.with_file_name(COMPACT_TMP);
        let _ = fs::remove_file(&tmp);
        let compacted = self.compact_into(&tmp);
        if compacted.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        compacted
    }

    fn compact_into(&self, tmp: &Path) -> io::Result<()> {
        // Step 1. Under the lock only long enough to note the journal's length and take
        // what memory says the file up to there amounts to: the pending messages (few:
        // those with a turn running or queued) and the done ids (16 bytes each).
        let (covered, pending, done) = {
            let state = self.state.lock();
            let pending: Vec<(String, f64, Inbound)> =
                state.pending.iter().map(|(id, (at, msg))| (id.clone(), *at, msg.clone())).collect();
            let done: Vec<(f64, u64)> = state.order.iter().copied().collect();
            (state.file.metadata()?.len(), pending, done)
        };
        // Without the lock: write them.
        let cutoff = (self.clock)() - self.keep_secs;
        let mut file = open_journal(tmp, true)?;
        let written = write_kept(&file, pending, &done, cutoff)?;
        drop(done);
        fsutil::sync_data(&file)?;
        #[cfg(test)]
        if let Some(hook) = self.midway.lock().as_mut() {
            hook();
        }
        // Step 2, with the lock: the lines appended meanwhile, then the swap.
        let mut state = self.state.lock();
        let end = state.file.metadata()?.len();
        let len = usize::try_from(end.saturating_sub(covered)).map_err(io::Error::other)?;
        let mut tail = vec![0; len];
        state.file.read_exact_at(&mut tail, covered)?;
        if !tail.is_empty() {
            file.write_all(&tail)?;
            fsutil::sync_data(&file)?;
        }
        fs::rename(tmp, &self.path)?;
        state.file = file;
        state.size = written + tail.len() as u64;
        state.compacted_size = state.size;
        // Until the directory is synced, a power cut could bring the old file back
        // without the lines accepted from now on: keep the lock until it is.
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fsutil::sync_dir(dir)?;
        drop(state);
        // The ids in the window are allocated and freed continually, and how many there
        // are follows the message rate: without this, the RSS would ratchet up with every
        // new peak instead of following what is held.
        crate::memory::release_freed();
        Ok(())
    }
}

/// The journal record of done id `hash`.
fn answered(hash: u64, at: f64) -> Record {
    Record::Answered { hash: format!("{hash:016x}"), at }
}

/// After a burst, give back the room the pending messages needed: the table holds each
/// message in place (a couple of hundred bytes a slot) and never shrinks by itself.
fn shrink_pending(pending: &mut Pending) {
    if pending.capacity() > 4 * pending.len() + 64 {
        pending.shrink_to(2 * pending.len());
    }
}

/// Forget the done ids older than `cutoff`, oldest first. The order is by completion; a
/// clock step backwards only delays forgetting the ids behind it.
fn forget_before(state: &mut State, cutoff: f64) {
    while state.order.front().is_some_and(|(at, _)| *at < cutoff) {
        let Some((at, id)) = state.order.pop_front() else { break };
        if state.done.get(&id) == Some(&at) {
            state.done.remove(&id);
        }
    }
    // After a burst, give back the room it needed: what the window holds follows the
    // message rate, and tables never shrink by themselves. Halving the room only when it
    // is four times what is held keeps this rare (amortized O(1) per id).
    let held = state.done.len();
    if state.done.capacity() > 4 * held + 1024 {
        state.done.shrink_to(2 * held);
        state.order.shrink_to(2 * held);
    }
}

/// Write the journal lines worth keeping to `file`: pending messages (oldest first), then
/// the done ids at or after `cutoff`. Returns the bytes written.
fn write_kept(
    file: &File,
    mut pending: Vec<(String, f64, Inbound)>,
    done: &[(f64, u64)],
    cutoff: f64,
) -> io::Result<u64> {
    pending.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut out = io::BufWriter::new(file);
    let mut line = Vec::new();
    let mut written = 0;
    let records = pending.into_iter().map(|(id, at, msg)| Record::Accept { id, at, msg });
    let dones = done.iter().filter(|(at, _)| *at >= cutoff).map(|(at, hash)| answered(*hash, *at));
    for record in records.chain(dones) {
        line.clear();
        push_line(&mut line, &record);
        out.write_all(&line)?;
        written += line.len() as u64;
    }
    out.flush()?;
    Ok(written)
}

fn push_line(buf: &mut Vec<u8>, record: &Record) {
    // Plain strings and numbers: serializing cannot fail.
    serde_json::to_writer(&mut *buf, record).expect("inbox record serializes");
    buf.push(b'\n');
}

/// Append whole lines; with `sync`, make them durable before returning.
fn append(state: &mut State, lines: &[u8], sync: bool) -> io::Result<()> {
    let mut buf = Vec::with_capacity(lines.len() + 1);
    if state.torn {
        buf.push(b'\n');
    }
    buf.extend_from_slice(lines);
    let written = state.file.write_all(&buf).and_then(|()| if sync { fsutil::sync_data(&state.file) } else { Ok(()) });
    state.torn = written.is_err();
    if written.is_ok() {
        state.size += buf.len() as u64;
    }
    written
}

/// Open a journal file to append and read back, 0600; `new` for a compaction's
/// temporary file, which must not exist yet.
fn open_journal(path: &Path, new: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).mode(0o600);
    if new {
        options.create_new(true);
    } else {
        options.create(true);
    }
    options.open(path)
}

type Pending = HashMap<String, (f64, Inbound)>;

/// Replay the journal: the pending messages, and the done ids ([`id_hash`]) with when.
/// Unreadable lines (a torn last line, damage) are skipped with a warning; a missing
/// journal is an empty one.
fn read_journal(path: &Path) -> io::Result<(Pending, HashMap<u64, f64>)> {
    let (mut pending, mut done): (Pending, HashMap<u64, f64>) = (HashMap::new(), HashMap::new());
    // The pending ids by hash, for the `answered` records that name them so.
    let mut pending_ids: HashMap<u64, String> = HashMap::new();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((pending, done)),
        Err(e) => return Err(e),
    };
    let mut skipped = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Record>(&line) {
            // Lines are in the order written: an accept after a done is the same id
            // accepted again once the window had forgotten it.
            Ok(Record::Accept { id, at, msg }) => {
                let hash = id_hash(&id);
                done.remove(&hash);
                pending_ids.insert(hash, id.clone());
                pending.insert(id, (at, msg));
            }
            Ok(Record::Done { id, at }) => {
                let hash = id_hash(&id);
                pending_ids.remove(&hash);
                pending.remove(&id);
                done.insert(hash, at);
            }
            Ok(Record::Answered { hash, at }) => match u64::from_str_radix(&hash, 16) {
                Ok(hash) => {
                    if let Some(id) = pending_ids.remove(&hash) {
                        pending.remove(&id);
                    }
                    done.insert(hash, at);
                }
                Err(_) => skipped += 1,
            },
            Err(_) => skipped += 1,
        }
    }
    if skipped > 0 {
        log::warn!("inbox: skipped {skipped} unreadable line(s) in {}", path.display());
    }
    Ok((pending, done))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Source;
    use std::sync::Arc;

    fn msg(id: Option<&str>, text: &str) -> Inbound {
        msg_in("1", id, text)
    }

    fn msg_in(chat: &str, id: Option<&str>, text: &str) -> Inbound {
        let source = Source { user_id: Some("7".into()), ..Source::dm("tg", chat) };
        Inbound { source, message_id: id.map(str::to_string), text: text.into() }
    }

    /// A clock the test moves: Unix seconds as f64 bits.
    fn clock(start: f64) -> (Arc<AtomicU64>, Clock) {
        let now = Arc::new(AtomicU64::new(start.to_bits()));
        let read = now.clone();
        (now, Box::new(move || f64::from_bits(read.load(Ordering::SeqCst))))
    }

    fn set(now: &AtomicU64, t: f64) {
        now.store(t.to_bits(), Ordering::SeqCst);
    }

    impl Inbox {
        fn done_capacity(&self) -> usize {
            self.state.lock().done.capacity()
        }

        fn pending_capacity(&self) -> usize {
            self.state.lock().pending.capacity()
        }

        /// Done ids held in memory: in the map, and in the order queue.
        fn done_counts(&self) -> (usize, usize) {
            let state = self.state.lock();
            (state.done.len(), state.order.len())
        }
    }

    fn texts(inbox: &Inbox) -> Vec<String> {
        inbox.pending().into_iter().map(|a| a.msg.text).collect()
    }

    #[test]
    fn pending_messages_survive_a_reopen_in_order_until_completed() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        let a = inbox.accept(msg(Some("10"), "a")).unwrap().unwrap();
        let b = inbox.accept(msg(None, "b")).unwrap().unwrap();
        inbox.accept(msg(Some("12"), "c")).unwrap().unwrap();
        inbox.complete(&b.id);
        drop(inbox);
        let again = Inbox::open(dir.path()).unwrap();
        assert_eq!(texts(&again), ["a", "c"]);
        assert_eq!(again.pending()[0], a);
    }

    #[test]
    fn a_replayed_message_is_dropped_pending_or_done_even_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        let first = inbox.accept(msg(Some("5"), "x")).unwrap().unwrap();
        assert_eq!(inbox.accept(msg(Some("5"), "x")).unwrap(), None);
        inbox.complete(&first.id);
        assert_eq!(inbox.accept(msg(Some("5"), "x")).unwrap(), None);
        drop(inbox);
        let again = Inbox::open(dir.path()).unwrap();
        assert_eq!(again.accept(msg(Some("5"), "x")).unwrap(), None);
        // Messages without an id are never taken for each other.
        assert!(again.accept(msg(None, "y")).unwrap().is_some());
        assert!(again.accept(msg(None, "y")).unwrap().is_some());
    }

    #[test]
    fn the_same_message_id_in_two_chats_is_two_messages() {
        // Telegram numbers messages per chat: id 7 in one chat is not id 7 in another.
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        assert!(inbox.accept(msg_in("1", Some("7"), "from one")).unwrap().is_some());
        assert!(inbox.accept(msg_in("2", Some("7"), "from two")).unwrap().is_some());
        assert_eq!(inbox.accept(msg_in("2", Some("7"), "from two")).unwrap(), None);
    }

    #[test]
    fn a_batch_is_recorded_whole_without_its_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        inbox.accept(msg(Some("1"), "one")).unwrap();
        let batch = vec![msg(Some("1"), "one"), msg(Some("2"), "two"), msg(Some("2"), "two"), msg(Some("3"), "three")];
        let accepted: Vec<String> = inbox.accept_batch(batch).unwrap().into_iter().map(|a| a.msg.text).collect();
        assert_eq!(accepted, ["two", "three"]);
        assert_eq!(texts(&Inbox::open(dir.path()).unwrap()), ["one", "two", "three"]);
    }

    #[test]
    fn a_torn_or_damaged_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        inbox.accept(msg(Some("1"), "kept")).unwrap();
        drop(inbox);
        let journal = dir.path().join("inbox/journal");
        let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(b"garbage\n{\"accept\":{\"id\":\"tg--m2\",\"at\":1,\"msg\":{\"sou").unwrap();
        let again = Inbox::open(dir.path()).unwrap();
        assert_eq!(texts(&again), ["kept"]);
        again.accept(msg(Some("3"), "after")).unwrap();
        assert_eq!(texts(&Inbox::open(dir.path()).unwrap()), ["kept", "after"]);
    }

    #[test]
    fn the_journal_is_compacted_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        let text = "x".repeat(1000);
        for n in 0..3000 {
            let a = inbox.accept(msg(Some(&n.to_string()), &text)).unwrap().unwrap();
            inbox.complete(&a.id);
        }
        let journal = dir.path().join("inbox/journal");
        let meta = std::fs::metadata(&journal).unwrap();
        assert!(meta.len() < 2 * COMPACT_MIN_BYTES, "not compacted: {} bytes", meta.len());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(texts(&inbox).is_empty());
        // Done ids survive the compaction: replays are still recognised.
        assert_eq!(inbox.accept(msg(Some("7"), &text)).unwrap(), None);
    }

    #[test]
    fn answered_ids_older_than_the_window_are_forgotten_at_run_time() {
        let dir = tempfile::tempdir().unwrap();
        let (now, clock) = clock(1_000_000.0);
        let inbox = Inbox::open_clocked(dir.path(), Duration::from_secs(60), clock).unwrap();
        for n in 0..100 {
            let a = inbox.accept(msg(Some(&n.to_string()), "old")).unwrap().unwrap();
            inbox.complete(&a.id);
        }
        assert_eq!(inbox.done_counts(), (100, 100));
        set(&now, 1_000_030.0);
        let recent = inbox.accept(msg(Some("recent"), "recent")).unwrap().unwrap();
        inbox.complete(&recent.id);
        // 61 s after the first hundred, 31 s after the recent one: without a reopen, the
        // hundred are forgotten and the recent one is still recognised.
        set(&now, 1_000_061.0);
        let last = inbox.accept(msg(Some("last"), "last")).unwrap().unwrap();
        inbox.complete(&last.id);
        assert_eq!(inbox.done_counts(), (2, 2));
        assert_eq!(inbox.accept(msg(Some("recent"), "recent")).unwrap(), None, "within the window");
        let again = inbox.accept(msg(Some("7"), "old")).unwrap();
        assert!(again.is_some(), "an id out of the window is a new message");
        // Accepted again after its done record: it is pending after a restart too.
        drop(inbox);
        let (_, clock) = super::tests::clock(1_000_062.0);
        let reopened = Inbox::open_clocked(dir.path(), Duration::from_secs(60), clock).unwrap();
        assert_eq!(texts(&reopened), ["old"]);
    }

    #[test]
    fn memory_holds_one_window_of_answered_ids() {
        let dir = tempfile::tempdir().unwrap();
        let (now, clock) = clock(1_000_000.0);
        let inbox = Inbox::open_clocked(dir.path(), Duration::from_secs(20), clock).unwrap();
        let mut most = 0;
        // 25 windows, 10 messages a second.
        for n in 0..5_000u32 {
            set(&now, 1_000_000.0 + f64::from(n) / 10.0);
            let a = inbox.accept(msg(Some(&n.to_string()), "x")).unwrap().unwrap();
            inbox.complete(&a.id);
            let (map, queue) = inbox.done_counts();
            assert_eq!(map, queue);
            most = most.max(map);
        }
        assert!(most <= 201, "{most} ids held for a window of 200 messages");
        assert!(texts(&inbox).is_empty());
    }

    #[test]
    fn the_room_a_burst_needed_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let (now, clock) = clock(1_000_000.0);
        let inbox = Inbox::open_clocked(dir.path(), Duration::from_secs(10), clock).unwrap();
        let burst = inbox.accept_batch((0..20_000).map(|n| msg(Some(&n.to_string()), "x")).collect()).unwrap();
        for a in &burst {
            inbox.complete(&a.id);
        }
        assert!(inbox.done_capacity() >= 20_000);
        // Quiet again: one message a second for two windows.
        for n in 0..20 {
            set(&now, 1_000_001.0 + f64::from(n));
            let a = inbox.accept(msg(Some(&format!("q{n}")), "x")).unwrap().unwrap();
            inbox.complete(&a.id);
        }
        assert!(inbox.done_capacity() < 2048, "{} slots kept for {:?} ids", inbox.done_capacity(), inbox.done_counts());
        assert!(inbox.pending_capacity() < 256, "{} slots kept for no pending message", inbox.pending_capacity());
    }

    /// A journal written before done ids were hashed keeps them in full (`done` records):
    /// after an upgrade in place, its replays are still recognised, its pending messages
    /// still pending, and the compacted journal keeps only hashes.
    #[test]
    fn a_journal_with_done_ids_in_full_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("inbox")).unwrap();
        let accept = |id: &str, text: &str| {
            let msg = serde_json::to_string(&msg_in("1", Some(id), text)).unwrap();
            format!("{{\"accept\":{{\"id\":\"tg--1--m{id}\",\"at\":{},\"msg\":{msg}}}}}\n", unix_now())
        };
        let done = |id: &str| format!("{{\"done\":{{\"id\":\"tg--1--m{id}\",\"at\":{}}}}}\n", unix_now());
        let old = [accept("1", "one"), accept("2", "two"), done("1"), done("9")].concat();
        fs::write(dir.path().join("inbox/journal"), old).unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        assert_eq!(texts(&inbox), ["two"], "pending stays pending");
        assert_eq!(inbox.accept(msg(Some("1"), "one")).unwrap(), None, "a replay of a done message");
        assert_eq!(inbox.accept(msg(Some("9"), "nine")).unwrap(), None, "a done id without its accept line");
        assert!(inbox.accept(msg(Some("3"), "three")).unwrap().is_some());
        let journal = fs::read_to_string(dir.path().join("inbox/journal")).unwrap();
        assert!(!journal.contains("\"done\""), "compacted at the start into hashes: {journal}");
        assert!(journal.contains(&format!("{:016x}", id_hash("tg--1--m9"))), "{journal}");
        // And the new format reads back the same after a restart.
        drop(inbox);
        let again = Inbox::open(dir.path()).unwrap();
        assert_eq!(texts(&again), ["two", "three"]);
        assert_eq!(again.accept(msg(Some("1"), "one")).unwrap(), None);
        assert_eq!(again.accept(msg(Some("9"), "nine")).unwrap(), None);
    }

    #[test]
    fn an_answered_record_completes_its_message_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        let a = inbox.accept(msg(Some("5"), "five")).unwrap().unwrap();
        inbox.accept(msg(Some("6"), "six")).unwrap().unwrap();
        inbox.complete(&a.id);
        let journal = fs::read_to_string(dir.path().join("inbox/journal")).unwrap();
        let line = journal.lines().last().unwrap();
        assert!(line.starts_with("{\"answered\":{\"hash\":\""), "{line}");
        assert!(!journal.contains("\"done\""), "{journal}");
        drop(inbox);
        let again = Inbox::open(dir.path()).unwrap();
        assert_eq!(texts(&again), ["six"]);
        assert_eq!(again.accept(msg(Some("5"), "five")).unwrap(), None);
    }

    #[test]
    fn accept_batch_is_not_blocked_while_a_compaction_is_midway() {
        use crossbeam_channel::bounded;
        let dir = tempfile::tempdir().unwrap();
        let inbox = Arc::new(Inbox::open(dir.path()).unwrap());
        let waiting = inbox.accept(msg(Some("p"), "pending before")).unwrap().unwrap();
        for n in 0..500 {
            let a = inbox.accept(msg(Some(&n.to_string()), &"x".repeat(200))).unwrap().unwrap();
            inbox.complete(&a.id);
        }
        let journal = dir.path().join("inbox/journal");
        let before = fs::metadata(&journal).unwrap().len();
        let (reached_tx, reached) = bounded(0);
        let (go_tx, go) = bounded::<()>(0);
        *inbox.midway.lock() = Some(Box::new(move || {
            reached_tx.send(()).unwrap();
            go.recv().unwrap();
        }));
        let compactor = {
            let inbox = inbox.clone();
            std::thread::spawn(move || inbox.compact())
        };
        reached.recv_timeout(Duration::from_secs(10)).expect("the compaction reached its midpoint");
        // The compaction is held between its steps: accepting and completing go on.
        let (accepted_tx, accepted) = bounded(1);
        {
            let inbox = inbox.clone();
            let waiting = waiting.id.clone();
            std::thread::spawn(move || {
                let new = inbox.accept_batch(vec![msg(Some("during"), "during"), msg(Some("3"), "replay")]).unwrap();
                inbox.complete(&waiting);
                accepted_tx.send(new).unwrap();
            });
        }
        let new = accepted.recv_timeout(Duration::from_secs(10)).expect("accept_batch waited for the compaction");
        assert_eq!(new.iter().map(|a| a.msg.text.as_str()).collect::<Vec<_>>(), ["during"]);
        go_tx.send(()).unwrap();
        compactor.join().unwrap().unwrap();
        let after = fs::metadata(&journal).unwrap().len();
        assert!(after < before, "compacted: {before} → {after} bytes");
        assert!(!dir.path().join("inbox").join(COMPACT_TMP).exists());
        // The lines appended mid-way are in the new journal, and it is appended to.
        inbox.accept(msg(Some("later"), "after")).unwrap().unwrap();
        drop(inbox);
        let reopened = Inbox::open(dir.path()).unwrap();
        assert_eq!(texts(&reopened), ["during", "after"]);
        assert_eq!(reopened.accept(msg(Some("p"), "pending before")).unwrap(), None);
        assert_eq!(reopened.accept(msg(Some("499"), "x")).unwrap(), None);
    }

    #[test]
    fn a_crash_mid_compaction_leaves_the_journal_whole() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        inbox.accept(msg(Some("1"), "kept")).unwrap().unwrap();
        // A crash during step 1 or 2: the temporary file is half written, the journal
        // untouched.
        std::mem::forget(inbox);
        fs::write(dir.path().join("inbox").join(COMPACT_TMP), b"{\"accept\":{\"id\":\"tg--1--m9\"").unwrap();
        let again = Inbox::open(dir.path()).unwrap();
        assert_eq!(texts(&again), ["kept"]);
        assert!(!dir.path().join("inbox").join(COMPACT_TMP).exists());
    }
}
