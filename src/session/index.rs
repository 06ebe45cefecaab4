/*!
The routing index (session key → current session) on disk: a snapshot and a journal.

`index.json` is the snapshot: a JSON object from key to entry, replaced atomically
(`fsutil::write_atomic`), so it is always a whole old or a whole new version. Rewriting it
costs time in proportion to the number of sessions (about 3 MB for 10,000), too much for
every turn, so the store rewrites it at most about once a second.

What must never be lost is which session a key points at: losing it would orphan a
conversation. So every new mapping (a new session or a reset) is also appended to
`index.journal`, one JSON line `{"key":…,"entry":{…}}`, and synced before the store
returns it. Loading reads the snapshot, then applies the journal; after the next
snapshot covers the journal, the journal is truncated.

Replay rule: for each key, only the journal's last line counts, and it applies when the
snapshot has no entry for the key or one with another session id. A line written before the
snapshot was taken is already in it with the same id, so its older token counts never
overwrite newer ones; a line written after points at a session the snapshot does not know.
*/

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SessionEntry;
use super::transcript;
use crate::fsutil;
use crate::message::Source;

pub(super) const SNAPSHOT: &str = "index.json";
pub(super) const JOURNAL: &str = "index.journal";

/// One key's current session, as stored (the key is the map key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) session_id: String,
    pub(super) created_at: f64,
    pub(super) updated_at: f64,
    pub(super) origin: Source,
    #[serde(default)]
    pub(super) input_tokens: u64,
    #[serde(default)]
    pub(super) output_tokens: u64,
}

impl Record {
    pub(super) fn to_entry(&self, key: &str) -> SessionEntry {
        SessionEntry {
            key: key.to_string(),
            session_id: self.session_id.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            origin: self.origin.clone(),
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
    let (mut entries, corrupt) = match fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Entries>(&bytes) {
            Ok(entries) => (entries, None),
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
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut last: HashMap<String, Record> = HashMap::new();
    let mut skipped = 0;
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<LineIn>(line) {
            Ok(l) if transcript::valid_id(&l.entry.session_id) => {
                last.insert(l.key, l.entry);
            }
            // A torn last line (crash mid-append) or a hand-edited one.
            _ => skipped += 1,
        }
    }
    if skipped > 0 {
        log::warn!("sessions: skipped {skipped} unreadable line(s) of {}", path.display());
    }
    let mut replayed = 0;
    for (key, record) in last {
        if entries.get(&key).is_none_or(|current| current.session_id != record.session_id) {
            entries.insert(key, record);
            replayed += 1;
        }
    }
    Ok(replayed)
}

/// `entries` as the bytes of `index.json`, keys sorted so that the file diffs well.
pub(super) fn encode(entries: &Entries) -> io::Result<Vec<u8>> {
    let sorted: BTreeMap<&String, &Record> = entries.iter().collect();
    Ok(serde_json::to_vec(&sorted)?)
}

/// Replace `index.json` in `dir` with `bytes`, atomically.
pub(super) fn write_snapshot(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    fsutil::write_atomic(&dir.join(SNAPSHOT), bytes)
}

/// The append side of `index.journal`.
pub(super) struct Journal {
    file: File,
    /// Bytes in the file: where a failed write is cut back to, and how the store tells
    /// whether anything was appended since a snapshot was taken.
    len: u64,
}

impl Journal {
    /// Open (or create, 0600) the journal in `dir` for appending.
    pub(super) fn open(dir: &Path) -> io::Result<Journal> {
        let file = OpenOptions::new().append(true).create(true).mode(0o600).open(dir.join(JOURNAL))?;
        let len = file.metadata()?.len();
        Ok(Journal { file, len })
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Append one mapping as a complete line. Not synced: the caller syncs through
    /// [`Journal::sync_handle`] after releasing its lock.
    pub(super) fn append(&mut self, key: &str, entry: &Record) -> io::Result<()> {
        let mut buf = serde_json::to_vec(&LineOut { key, entry })?;
        buf.push(b'\n');
        if let Err(e) = self.file.write_all(&buf) {
            // Cut off a partial line, so the next line does not start inside it.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Empty the journal if it still holds exactly `len` bytes, the length it had when
    /// the snapshot now on disk was taken. Lines appended since are not in that snapshot
    /// and stay (the replay rule makes keeping covered lines harmless).
    pub(super) fn truncate_if(&mut self, len: u64) -> io::Result<()> {
        if self.len == len && len > 0 {
            self.file.set_len(0)?;
            self.len = 0;
        }
        Ok(())
    }

    /// A second handle on the journal, for syncing it without the store's lock.
    pub(super) fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tokens: u64) -> Record {
        let origin = Source::dm("tg", "1");
        Record {
            session_id: id.into(),
            created_at: 1.0,
            updated_at: 2.0,
            origin,
            input_tokens: tokens,
            output_tokens: 0,
        }
    }

    #[test]
    fn the_journal_applies_only_what_the_snapshot_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        // Written before the snapshot: a then b for key k (b is in the snapshot, with tokens).
        journal.append("k", &record("a", 0)).unwrap();
        journal.append("k", &record("b", 0)).unwrap();
        // Written after the snapshot: a new key, and a reset of key m.
        journal.append("n", &record("c", 0)).unwrap();
        journal.append("m", &record("e", 0)).unwrap();
        let snapshot: Entries = [("k".to_string(), record("b", 7)), ("m".to_string(), record("d", 3))].into();
        write_snapshot(dir.path(), &encode(&snapshot).unwrap()).unwrap();
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
        let bytes = encode(&snapshot).unwrap();
        let torn = &bytes[..bytes.len() / 2];
        fs::write(dir.path().join(SNAPSHOT), torn).unwrap();
        Journal::open(dir.path()).unwrap().append("n", &record("c", 0)).unwrap();
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
        write_snapshot(dir.path(), &encode(&snapshot).unwrap()).unwrap();
        let loaded = load(dir.path(), 0).unwrap();
        assert_eq!(loaded.entries.keys().collect::<Vec<_>>(), ["j"]);
    }

    #[test]
    fn truncate_keeps_lines_appended_after_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::open(dir.path()).unwrap();
        journal.append("k", &record("a", 0)).unwrap();
        let taken_at = journal.len();
        journal.append("n", &record("c", 0)).unwrap();
        journal.truncate_if(taken_at).unwrap();
        assert_ne!(fs::metadata(dir.path().join(JOURNAL)).unwrap().len(), 0);
        journal.truncate_if(journal.len()).unwrap();
        assert_eq!(fs::metadata(dir.path().join(JOURNAL)).unwrap().len(), 0);
        journal.append("k", &record("b", 0)).unwrap();
        let text = fs::read_to_string(dir.path().join(JOURNAL)).unwrap();
        assert!(text.starts_with("{\"key\":\"k\""), "appends after truncation start at 0: {text:?}");
    }
}
