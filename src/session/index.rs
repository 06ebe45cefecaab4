/*!
The routing index (session key → current session) on disk: a snapshot and a journal.

`index.json` is the snapshot: a JSON object from key to entry for the sessions held in
memory, replaced atomically (`fsutil::write_atomic`), so it is always a whole old or a
whole new version. Rewriting it costs time and disk writes in proportion to the number of
sessions, so it is rewritten only when the journal has grown to a few times its size.

`index.journal` takes every change, one JSON line `{"key":…,"entry":{…}}` with the whole
entry: a new mapping (a new session or a reset) is appended and synced before the store
returns it (losing it would orphan a conversation); changed token counts and activity
times are appended, unsynced, at most once per interval, one line per changed entry. So
what is written is proportional to what changed, not to how many sessions there are.
Loading reads the snapshot, then applies the journal; a compaction writes a new snapshot
and drops the journal lines it covers.

Entries hold what a turn needs (the session id, times, token counts). Files written before
issue 8 also hold each entry's `origin` (the source of its latest message); it is ignored
when read, and gone after the next snapshot: nothing routes by it (an `origin` delivery
goes to the chat of the turn at hand, and the key names the conversation).

Replay rule: for each key, only the journal's last line counts. With another session id
than the snapshot's (or no snapshot entry) it replaces the entry: it is a newer mapping.
With the same id, token counts and activity time are the larger of the two: both only
grow within a session, so a line the snapshot already covers never rolls them back.
*/

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::SessionEntry;
use super::transcript;
use crate::fsutil::{self, Replacement};

pub(super) const SNAPSHOT: &str = "index.json";
pub(super) const JOURNAL: &str = "index.journal";

/// One key's current session, as stored (the key is the map key): only what a turn
/// needs, for memory holds one per active conversation. Unknown fields (the `origin` of
/// older files) are ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) session_id: Box<str>,
    pub(super) created_at: f64,
    pub(super) updated_at: f64,
    #[serde(default)]
    pub(super) input_tokens: u64,
    #[serde(default)]
    pub(super) output_tokens: u64,
}

impl Record {
    pub(super) fn to_entry(&self, key: &str) -> SessionEntry {
        SessionEntry {
            key: key.to_string(),
            session_id: self.session_id.to_string(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
        }
    }
}

pub(super) type Entries = HashMap<String, Record>;

/// One line of the journal, as written.
#[derive(Serialize)]
struct LineOut<'a> {
    key: &'a str,
    entry: &'a Record,
}

/// One line of the journal, as read.
#[derive(Deserialize)]
struct LineIn {
    key: String,
    entry: Record,
}

/// The index as found on disk.
pub(super) struct Loaded {
    pub(super) entries: Entries,
    /// Where an unreadable snapshot was moved, and why it was unreadable.
    pub(super) corrupt: Option<(PathBuf, String)>,
    /// Mappings the journal added or changed.
    pub(super) replayed: usize,
}

/// Read the snapshot and apply the journal. An unreadable snapshot (truncated, not JSON,
/// wrong shape) is renamed to `index.json.corrupt-<unix_now>` and the index starts from
/// the journal alone: a bad file must not keep the gateway from starting, and is kept for
/// a human to look at. Transcripts are untouched either way.
pub(super) fn load(dir: &Path, unix_now: u64) -> io::Result<Loaded> {
    let path = dir.join(SNAPSHOT);
    // Read through a buffer rather than whole: the snapshot can be megabytes.
    let (mut entries, corrupt) = match File::open(&path) {
        Ok(file) => match serde_json::from_reader::<_, Entries>(BufReader::new(file)) {
            Ok(entries) => (entries, None),
            Err(e) if e.is_io() => return Err(e.into()),
            Err(e) => (Entries::new(), Some((set_aside(&path, unix_now)?, e.to_string()))),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => (Entries::new(), None),
        Err(e) => return Err(e),
    };
    entries.retain(|key, r| {
        let ok = transcript::valid_id(&r.session_id);
        if !ok {
            log::warn!("sessions: ignoring {key}: invalid session id {:?} in {}", r.session_id, path.display());
        }
        ok
    });
    let replayed = replay(&dir.join(JOURNAL), &mut entries)?;
    Ok(Loaded { entries, corrupt, replayed })
}

/// Rename a corrupt snapshot out of the way, without overwriting an earlier one.
fn set_aside(path: &Path, unix_now: u64) -> io::Result<PathBuf> {
    let base = format!("{}.corrupt-{unix_now}", path.display());
    let mut target = PathBuf::from(&base);
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    fs::rename(path, &target)?;
    Ok(target)
}

/// Apply the journal at `path` to `entries` (see the module doc for the rule).
fn replay(path: &Path, entries: &mut Entries) -> io::Result<usize> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut last: HashMap<String, Record> = HashMap::new();
    let mut skipped = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match parse_line(&line) {
            Some((key, entry)) => {
                last.insert(key, entry);
            }
            // A torn last line (crash mid-append) or a hand-edited one.
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        log::warn!("sessions: skipped {skipped} unreadable line(s) of {}", path.display());
    }
    let mut replayed = 0;
    for (key, record) in last {
        match entries.get_mut(&key) {
            Some(current) if current.session_id == record.session_id => {
                if merge(current, &record) {
                    replayed += 1;
                }
            }
            _ => {
                entries.insert(key, record);
                replayed += 1;
            }
        }
    }
    Ok(replayed)
}

/// Fold `newer`, a later version of the same session, into `current`; whether anything
/// changed. Counts and times only grow within a session, so the larger value is the later.
pub(super) fn merge(current: &mut Record, newer: &Record) -> bool {
    let before = current.clone();
    current.input_tokens = current.input_tokens.max(newer.input_tokens);
    current.output_tokens = current.output_tokens.max(newer.output_tokens);
    current.updated_at = current.updated_at.max(newer.updated_at);
    *current != before
}

/// One journal (or archive) line for `key`.
pub(super) fn line(key: &str, entry: &Record) -> io::Result<Vec<u8>> {
    let mut buf = serde_json::to_vec(&LineOut { key, entry })?;
    buf.push(b'\n');
    Ok(buf)
}

/// Parse one journal (or archive) line; `None` for a torn or damaged one, or one whose
/// session id is not safe to use as a file name.
pub(super) fn parse_line(line: &[u8]) -> Option<(String, Record)> {
    let l = serde_json::from_slice::<LineIn>(line).ok()?;
    transcript::valid_id(&l.entry.session_id).then_some((l.key, l.entry))
}

/// Start replacing `index.json` in `dir` with `entries`, keys sorted so that the file
/// diffs well: streamed to a temporary file, not built in memory (at 10,000 sessions
/// the file is a megabyte). Returns the replacement, for the caller to commit (sync and
/// rename) after releasing its lock, and the snapshot's size.
pub(super) fn write_snapshot(dir: &Path, entries: &Entries) -> io::Result<(Replacement, u64)> {
    let mut sorted: Vec<(&String, &Record)> = entries.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut replacement = Replacement::create(&dir.join(SNAPSHOT))?;
    let mut out = Counted { inner: BufWriter::new(replacement.file()), bytes: 0 };
    out.write_all(b"{")?;
    for (n, (key, record)) in sorted.into_iter().enumerate() {
        if n > 0 {
            out.write_all(b",")?;
        }
        serde_json::to_writer(&mut out, key)?;
        out.write_all(b":")?;
        serde_json::to_writer(&mut out, record)?;
    }
    out.write_all(b"}")?;
    out.flush()?;
    let bytes = out.bytes;
    drop(out);
    Ok((replacement, bytes))
}

/// A writer that counts the bytes through it.
struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The append side of `index.journal`.
pub(super) struct Journal {
    /// Shared, so that a new mapping is synced after the store's lock is released.
    file: Arc<File>,
    /// Bytes in the file: where a failed write is cut back to, and where a compaction's
    /// snapshot was taken.
    len: u64,
}

impl Journal {
    /// Open (or create, 0600) the journal in `dir` for appending.
    pub(super) fn open(dir: &Path) -> io::Result<Journal> {
        let file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(dir.join(JOURNAL))?;
        let len = file.metadata()?.len();
        Ok(Journal { file: Arc::new(file), len })
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Append complete lines. Not synced: the caller syncs through [`Journal::handle`]
    /// after releasing its lock, when it must.
    pub(super) fn append(&mut self, lines: &[u8]) -> io::Result<()> {
        if let Err(e) = (&*self.file).write_all(lines) {
            // Cut off a partial line, so the next line does not start inside it.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += lines.len() as u64;
        Ok(())
    }

    /// Drop the first `covered` bytes, the lines a snapshot now on disk holds. Usually
    /// that is all of them and the file is emptied; lines appended after the snapshot was
    /// taken are kept, in a journal rewritten atomically to hold only them.
    pub(super) fn drop_covered(&mut self, dir: &Path, covered: u64) -> io::Result<()> {
        if covered == 0 {
            return Ok(());
        }
        if self.len == covered {
            self.file.set_len(0)?;
            self.len = 0;
            return Ok(());
        }
        let len = usize::try_from(self.len - covered).map_err(io::Error::other)?;
        let mut tail = vec![0; len];
        self.file.read_exact_at(&mut tail, covered)?;
        fsutil::write_atomic(&dir.join(JOURNAL), &tail)?;
        *self = Journal::open(dir)?;
        Ok(())
    }

    /// The file, for syncing it without the store's lock.
    pub(super) fn handle(&self) -> Arc<File> {
        self.file.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tokens: u64) -> Record {
        Record { session_id: id.into(), created_at: 1.0, updated_at: 2.0, input_tokens: tokens, output_tokens: 0 }
    }

    fn snapshot_of(dir: &Path, entries: &Entries) {
        write_snapshot(dir, entries).unwrap().0.commit(true).unwrap();
    }

    #[test]
    fn the_journal_applies_only_what_the_snapshot_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        // Written before the snapshot: a then b for key k (b is in the snapshot, with tokens).
        journal.append(&line("k", &record("a", 0)).unwrap()).unwrap();
        journal.append(&line("k", &record("b", 0)).unwrap()).unwrap();
        // Written after the snapshot: a new key, and a reset of key m.
        journal.append(&line("n", &record("c", 0)).unwrap()).unwrap();
        journal.append(&line("m", &record("e", 0)).unwrap()).unwrap();
        let snapshot: Entries = [("k".to_string(), record("b", 7)), ("m".to_string(), record("d", 3))].into();
        snapshot_of(dir.path(), &snapshot);
        let loaded = load(dir.path(), 0).unwrap();
        assert_eq!(loaded.replayed, 2);
        assert_eq!(loaded.entries["k"], record("b", 7), "a covered line never rolls back tokens");
        assert_eq!(loaded.entries["n"], record("c", 0));
        assert_eq!(loaded.entries["m"], record("e", 0));
    }

    #[test]
    fn a_corrupt_snapshot_is_set_aside_and_the_journal_still_applies() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot: Entries = [("k".to_string(), record("b", 7))].into();
        snapshot_of(dir.path(), &snapshot);
        let bytes = fs::read(dir.path().join(SNAPSHOT)).unwrap();
        let torn = &bytes[..bytes.len() / 2];
        fs::write(dir.path().join(SNAPSHOT), torn).unwrap();
        Journal::open(dir.path()).unwrap().append(&line("n", &record("c", 0)).unwrap()).unwrap();
        fs::OpenOptions::new().append(true).open(dir.path().join(JOURNAL)).unwrap().write_all(b"{\"key\":").unwrap();
        let loaded = load(dir.path(), 1234).unwrap();
        let (moved, why) = loaded.corrupt.unwrap();
        assert_eq!(moved, dir.path().join("index.json.corrupt-1234"));
        assert_eq!(fs::read(&moved).unwrap(), torn, "kept for a human");
        assert!(why.contains("EOF"), "{why}");
        assert!(!dir.path().join(SNAPSHOT).exists());
        assert_eq!(loaded.entries, [("n".to_string(), record("c", 0))].into());
        // A second corruption in the same second does not overwrite the first copy.
        fs::write(dir.path().join(SNAPSHOT), b"[]").unwrap();
        let (moved, _) = load(dir.path(), 1234).unwrap().corrupt.unwrap();
        assert_eq!(moved, dir.path().join("index.json.corrupt-1234-1"));
    }

    #[test]
    fn entries_with_unsafe_session_ids_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot: Entries =
            [("k".to_string(), record("../../etc/x", 0)), ("j".to_string(), record("ok", 0))].into();
        snapshot_of(dir.path(), &snapshot);
        let loaded = load(dir.path(), 0).unwrap();
        assert_eq!(loaded.entries.keys().collect::<Vec<_>>(), ["j"]);
    }

    #[test]
    fn dropping_covered_lines_keeps_the_ones_appended_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.append(&line("k", &record("a", 0)).unwrap()).unwrap();
        let taken_at = journal.len();
        journal.append(&line("n", &record("c", 0)).unwrap()).unwrap();
        journal.drop_covered(dir.path(), taken_at).unwrap();
        let text = fs::read_to_string(dir.path().join(JOURNAL)).unwrap();
        assert!(text.starts_with("{\"key\":\"n\"") && text.lines().count() == 1, "{text:?}");
        journal.append(&line("m", &record("d", 0)).unwrap()).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join(JOURNAL)).unwrap().lines().count(), 2, "appends go on");
        journal.drop_covered(dir.path(), journal.len()).unwrap();
        assert_eq!(fs::metadata(dir.path().join(JOURNAL)).unwrap().len(), 0);
        journal.append(&line("k", &record("b", 0)).unwrap()).unwrap();
        let text = fs::read_to_string(dir.path().join(JOURNAL)).unwrap();
        assert!(text.starts_with("{\"key\":\"k\""), "appends after truncation start at 0: {text:?}");
    }

    #[test]
    fn a_covered_counts_line_never_rolls_back_newer_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        let mut newer = record("b", 9);
        newer.updated_at = 5.0;
        journal.append(&line("k", &record("b", 3)).unwrap()).unwrap();
        journal.append(&line("j", &newer).unwrap()).unwrap();
        let snapshot: Entries = [("k".to_string(), newer.clone()), ("j".to_string(), record("b", 3))].into();
        snapshot_of(dir.path(), &snapshot);
        let loaded = load(dir.path(), 0).unwrap();
        assert_eq!(loaded.entries["k"], newer, "the snapshot's later counts stay");
        assert_eq!(loaded.entries["j"], newer, "the journal's later counts apply");
    }
}
