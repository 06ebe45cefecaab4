/*!
The inbox: a durable journal of accepted inbound messages.

A platform's cursor (Telegram's offset) may only move past a message once the message
is safe. [`Inbox::accept_batch`] makes it safe: the messages are appended to
`state_dir/inbox/journal` and the file is synced (one `fdatasync` for a whole batch,
which is what lets a busy bot journal hundreds of messages per millisecond of disk
time) before the adapter hears "accepted". When a message's turn is over (its reply is
in the durable outbox), [`Inbox::complete`] appends a `done` record. After a crash,
every accepted message without a `done` record is answered again ([`Inbox::pending`]),
so a `kill -9` mid-turn loses nothing.

Each message is known by its platform, chat and message id, so one the platform sends
again (a crash between accepting it and storing the cursor) is recognised, pending or
done, and dropped. Messages without an id (the console) get a unique one and are never taken for
each other. `done` records are not synced: losing one to a power cut means a message is
answered twice, never that one is lost.

The journal is one JSON object per line. Opening it rewrites it with only what still
matters (pending messages, and ids done in the last week, kept to recognise replays);
it is rewritten the same way when it grows past a few times that size. A torn last line
(a crash mid-write) is skipped.
*/

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::message::Inbound;
use crate::status::unix_now;

/// How long done ids are remembered to recognise replays, in seconds.
const DONE_KEPT_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// The journal is compacted when it is this many times larger than what it must keep
/// (and at least [`COMPACT_MIN_BYTES`]).
const COMPACT_FACTOR: u64 = 4;
const COMPACT_MIN_BYTES: u64 = 1 << 20;

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
    Accept { id: String, at: f64, msg: Inbound },
    Done { id: String, at: f64 },
}

pub struct Inbox {
    path: PathBuf,
    state: Mutex<State>,
    counter: AtomicU64,
}

struct State {
    file: File,
    /// Accepted and not done: id → (accepted at, message).
    pending: HashMap<String, (f64, Inbound)>,
    /// Done ids and when, to recognise replays.
    done: HashMap<String, f64>,
    /// Bytes in the journal, and after the last compaction.
    size: u64,
    compacted_size: u64,
    /// A write failed part-way: the next one starts on a new line.
    torn: bool,
}

impl Inbox {
    /// Open (creating) `state_dir/inbox/journal` and compact it.
    pub fn open(state_dir: &Path) -> io::Result<Inbox> {
        let dir = state_dir.join("inbox");
        fsutil::create_private_dir(&dir)?;
        let path = dir.join("journal");
        let (pending, mut done) = read_journal(&path)?;
        let now = unix_now();
        done.retain(|_, at| now - *at < DONE_KEPT_SECS);
        let file = open_append(&path)?;
        let state = State { file, pending, done, size: 0, compacted_size: 0, torn: false };
        let inbox = Inbox { path, state: Mutex::new(state), counter: AtomicU64::new(0) };
        inbox.compact(&mut inbox.state.lock())?;
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
        let at = unix_now();
        let mut fresh: Vec<Accepted> = Vec::new();
        let mut lines = Vec::new();
        for msg in msgs {
            let id = self.entry_id(&msg);
            let seen = state.pending.contains_key(&id) || state.done.contains_key(&id);
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

    /// The turn for entry `id` is over: remember it only to recognise a replay.
    pub fn complete(&self, id: &str) {
        let mut state = self.state.lock();
        if state.pending.remove(id).is_none() {
            return;
        }
        let at = unix_now();
        state.done.insert(id.to_string(), at);
        let mut line = Vec::new();
        push_line(&mut line, &Record::Done { id: id.to_string(), at });
        if let Err(e) = append(&mut state, &line, false) {
            log::warn!("inbox: cannot record {id} as done: {e}; it may be answered again after a restart");
        }
        let limit = (state.compacted_size * COMPACT_FACTOR).max(COMPACT_MIN_BYTES);
        if state.size > limit
            && let Err(e) = self.compact(&mut state)
        {
            log::warn!("inbox: cannot compact the journal: {e}");
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

    /// Rewrite the journal with only the pending messages and the remembered done ids.
    fn compact(&self, state: &mut State) -> io::Result<()> {
        let mut lines = Vec::new();
        let mut pending: Vec<_> = state.pending.iter().collect();
        pending.sort_by(|a, b| a.1.0.total_cmp(&b.1.0));
        for (id, (at, msg)) in pending {
            push_line(&mut lines, &Record::Accept { id: id.clone(), at: *at, msg: msg.clone() });
        }
        for (id, at) in &state.done {
            push_line(&mut lines, &Record::Done { id: id.clone(), at: *at });
        }
        fsutil::write_atomic(&self.path, &lines)?;
        state.file = open_append(&self.path)?;
        state.size = lines.len() as u64;
        state.compacted_size = state.size;
        state.torn = false;
        Ok(())
    }
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

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

type Pending = HashMap<String, (f64, Inbound)>;

/// Replay the journal. Unreadable lines (a torn last line, damage) are skipped with a
/// warning; a missing journal is an empty one.
fn read_journal(path: &Path) -> io::Result<(Pending, HashMap<String, f64>)> {
    let (mut pending, mut done) = (HashMap::new(), HashMap::new());
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((pending, done)),
        Err(e) => return Err(e),
    };
    let mut skipped = 0;
    for line in BufReader::new(file).split(b'\n') {
        match serde_json::from_slice::<Record>(&line?) {
            Ok(Record::Accept { id, at, msg }) if !done.contains_key(&id) => {
                pending.insert(id, (at, msg));
            }
            Ok(Record::Accept { .. }) => {}
            Ok(Record::Done { id, at }) => {
                pending.remove(&id);
                done.insert(id, at);
            }
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

    fn msg(id: Option<&str>, text: &str) -> Inbound {
        msg_in("1", id, text)
    }

    fn msg_in(chat: &str, id: Option<&str>, text: &str) -> Inbound {
        let source = Source { user_id: Some("7".into()), ..Source::dm("tg", chat) };
        Inbound { source, message_id: id.map(str::to_string), text: text.into() }
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
}
