/*!
The outbox on disk: one directory per platform instance, one file per delivery.

```text
state_dir/outbox/NAME/STEM.json          queued
state_dir/outbox/NAME/STEM.sending       being sent right now (claimed by the worker)
state_dir/outbox/NAME/STEM.corrupt       not a delivery (bad JSON), moved aside
state_dir/outbox/NAME/STEM.unreadable    could not be read (permissions, I/O), moved aside
state_dir/outbox/NAME/unknown/STEM.json  sent, outcome unknown: never re-sent by itself
state_dir/deadletter/NAME/STEM.json      given up: refused, or failed too often
```

One file is one message, all its chunks (a long text split to the platform's limit):
the chunk to send next in `outbound`, the ones after it in `more`. So a message's chunks
become visible to the sender together or not at all: a write that fails half-way (a full
disk) leaves nothing a worker could have started sending. After each chunk is confirmed
the claimed file is rewritten with the rest ([`Store::advance`]), so a crash resumes
with the chunk in flight, which the rule below sets aside, and sends the rest.

`STEM` is `<unix nanos, 20 digits>-<pid, 10 digits>-<counter>`, so file names sort in the
order deliveries were queued (FIFO), and two processes writing at once (the gateway and a
`switchboard send`) never pick the same name. Within one process stems strictly increase
even if the wall clock stalls or steps back. Each file holds a [`Record`] as JSON and is
written atomically ([`fsutil::write_atomic`]) before the enqueue returns.

Claiming a file before sending it (renaming `.json` to `.sending`) is what keeps the
durability rule "not blindly re-sent" true across a crash: a `.sending` file found later
means the gateway stopped between sending and hearing back, so its outcome is unknown.
The rename also makes two workers on one directory (a misconfiguration) take turns
rather than send a delivery twice.

The claim and the removal after a send are not fsynced: they survive a `kill -9` (the
kernel keeps them), and syncing the directory twice per message halved throughput. What
a power cut can do: a removal lost shows a sent delivery as unknown-outcome (harmless),
and a claim lost in the seconds after a send lets that one delivery be sent again.

A file that cannot be read is never taken for sent: it is logged and moved aside as
`.unreadable`, to be fixed (its owner or mode) and renamed back to `.json`.

To retry a parked delivery by hand, move its file back into `outbox/NAME/`.
*/

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::message::Outbound;

/// A temporary file of `write_atomic` older than this was left by a crash.
const STALE_TEMP: Duration = Duration::from_secs(60);

/// One delivery, as stored: one message, split into the chunks that fit the platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The next chunk to send.
    pub outbound: Outbound,
    /// The texts of the chunks after it, in order (same chat, no reply reference).
    /// Files written before chunks shared a file have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<String>,
    /// Unix seconds when it was queued.
    pub created_at: u64,
    /// Failed attempts so far (rate limits do not count).
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub last_error: Option<String>,
    /// Unix seconds when it was set aside (unknown outcome or dead letter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_at: Option<u64>,
}

impl Record {
    pub fn new(outbound: Outbound) -> Record {
        Record { outbound, more: Vec::new(), created_at: unix_now(), attempts: 0, last_error: None, parked_at: None }
    }

    /// The first chunk alone.
    fn first_only(&self) -> Record {
        Record { more: Vec::new(), ..self.clone() }
    }

    /// What is left once the first chunk is done with; `None` when nothing is.
    fn rest(&self) -> Option<Record> {
        let (text, more) = self.more.split_first()?;
        let outbound = Outbound { text: text.clone(), reply_to: None, ..self.outbound.clone() };
        Some(Record { outbound, more: more.to_vec(), attempts: 0, last_error: None, ..self.clone() })
    }
}

/// Where a delivery that will not be sent goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Park {
    /// `outbox/NAME/unknown/`: it may have arrived.
    Unknown,
    /// `deadletter/NAME/`: it did not arrive and will not.
    Dead,
}

/// What [`Store::claim`] found.
pub(crate) enum Claim {
    /// A queued delivery, now claimed.
    Fresh(Record),
    /// A delivery claimed by an earlier run that stopped before it heard back.
    Interrupted(Record),
    /// Nothing to send: already taken, or unreadable and moved aside.
    Gone,
}

/// The directories of one platform instance.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    name: String,
    queue: PathBuf,
    unknown: PathBuf,
    dead: PathBuf,
    /// Stems whose file can be neither read nor moved aside: [`Store::scan`] skips them
    /// until the next start, so a worker never spins on them. Shared by clones.
    stuck: Arc<Mutex<HashSet<String>>>,
}

impl Store {
    pub fn new(state_dir: &Path, name: &str) -> Store {
        let queue = state_dir.join("outbox").join(name);
        let unknown = queue.join("unknown");
        let dead = state_dir.join("deadletter").join(name);
        Store { name: name.to_string(), queue, unknown, dead, stuck: Arc::default() }
    }

    fn path(&self, stem: &str, ext: &str) -> PathBuf {
        self.queue.join(format!("{stem}.{ext}"))
    }

    /// Write `record` as a new queued delivery. Returns its stem. One atomic write: on an
    /// error (a full disk) nothing of it is queued, and the caller may retry it whole.
    pub fn write(&self, record: &Record) -> io::Result<String> {
        let stem = new_stem();
        fsutil::write_atomic(&self.path(&stem, "json"), &to_json(record))?;
        Ok(stem)
    }

    /// The stems of every queued or claimed delivery, in FIFO order. One `readdir`.
    pub fn scan(&self) -> io::Result<Vec<String>> {
        let entries = match fs::read_dir(&self.queue) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut stems = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            let stem = name.strip_suffix(".json").or_else(|| name.strip_suffix(".sending"));
            if let Some(stem) = stem.filter(|s| !s.starts_with('.')) {
                stems.push(stem.to_string());
            }
        }
        let stuck = self.stuck.lock();
        stems.retain(|s| !stuck.contains(s));
        stems.sort();
        stems.dedup();
        Ok(stems)
    }

    /// Tidy up after an earlier run, then [`Store::scan`]: unreadable files are moved
    /// aside, stale temporary files removed, and a claim that was already released
    /// (both `.json` and `.sending` exist) dropped. Never fails on a bad file.
    pub fn recover(&self) -> io::Result<Vec<String>> {
        fsutil::create_private_dir(&self.queue)?;
        for entry in fs::read_dir(&self.queue)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp.") {
                let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                if age.is_some_and(|age| age > STALE_TEMP) {
                    let _ = fs::remove_file(entry.path());
                }
            } else if let Some(stem) = name.strip_suffix(".sending") {
                if self.path(stem, "json").exists() {
                    let _ = fs::remove_file(entry.path());
                } else {
                    let _ = self.read(stem, &entry.path());
                }
            } else if let Some(stem) = name.strip_suffix(".json") {
                let _ = self.read(stem, &entry.path());
            }
        }
        self.scan()
    }

    /// The chat the queued (or claimed) delivery `stem` goes to, without claiming it, so
    /// the outbox can queue a delivery it did not write (another process's, an earlier
    /// run's) behind the others to its chat. `Ok(None)`: it is gone. An error: it cannot
    /// be read; claiming it sets it aside ([`Store::claim`]).
    pub fn chat_of(&self, stem: &str) -> io::Result<Option<String>> {
        let bytes = match fs::read(self.path(stem, "json")) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::read(self.path(stem, "sending")),
            read => read,
        };
        match bytes {
            Ok(bytes) => serde_json::from_slice::<Record>(&bytes)
                .map(|r| Some(r.outbound.chat_id))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Claim the delivery `stem` for sending.
    pub fn claim(&self, stem: &str) -> io::Result<Claim> {
        let sending = self.path(stem, "sending");
        match fs::rename(self.path(stem, "json"), &sending) {
            Ok(()) => Ok(self.read(stem, &sending).map_or(Claim::Gone, Claim::Fresh)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(self.read(stem, &sending).map_or(Claim::Gone, Claim::Interrupted))
            }
            Err(e) => Err(e),
        }
    }

    /// Read a delivery file. `None` when it is gone (another worker took it) or was
    /// moved aside: bad JSON as `STEM.corrupt`, a read error (permissions, I/O) as
    /// `STEM.unreadable`. Neither is ever taken for sent, and neither is tried again.
    fn read(&self, stem: &str, path: &Path) -> Option<Record> {
        let (why, ext) = match fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(record) => return Some(record),
                Err(e) => (e.to_string(), "corrupt"),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => (e.to_string(), "unreadable"),
        };
        let aside = self.path(stem, ext);
        match fs::rename(path, &aside) {
            Ok(()) => log::error!(
                "{}: cannot read outbox file {} ({why}); moved to {}: fix it and rename it back to {stem}.json to send it",
                self.name,
                path.display(),
                aside.display()
            ),
            Err(e) => {
                log::error!(
                    "{}: cannot read outbox file {} ({why}), nor move it aside ({e}); it stays where it is, \
                     skipped until the next start",
                    self.name,
                    path.display()
                );
                self.stuck.lock().insert(stem.to_string());
            }
        }
        None
    }

    /// The first chunk of the claimed delivery is done with: keep the rest claimed (the
    /// file rewritten without it) and return it, or remove the file when nothing is left.
    pub fn advance(&self, stem: &str, record: &Record) -> io::Result<Option<Record>> {
        match record.rest() {
            None => self.sent(stem).map(|()| None),
            Some(rest) => fsutil::write_atomic(&self.path(stem, "sending"), &to_json(&rest)).map(|()| Some(rest)),
        }
    }

    /// Set the first chunk of the claimed delivery aside as `park` and keep the rest
    /// claimed, as [`Store::advance`]. A crash in between finds the claim as it was and
    /// sets the same chunk aside again, under the same name.
    pub fn park_first(&self, stem: &str, record: &Record, park: Park) -> io::Result<Option<Record>> {
        if record.more.is_empty() {
            return self.park(stem, record, park).map(|()| None);
        }
        // Named by how many chunks follow it: unique within the message.
        let name = format!("{stem}-{:06}", record.more.len());
        fsutil::write_atomic(&self.parked_dir(park).join(format!("{name}.json")), &to_json(&record.first_only()))?;
        self.advance(stem, record)
    }

    /// The claimed delivery was sent: forget it.
    pub fn sent(&self, stem: &str) -> io::Result<()> {
        fs::remove_file(self.path(stem, "sending"))
    }

    /// Put the claimed delivery back, unchanged, at its place in the queue.
    pub fn unclaim(&self, stem: &str) -> io::Result<()> {
        fs::rename(self.path(stem, "sending"), self.path(stem, "json"))?;
        sync_dir(&self.queue)
    }

    /// Put the claimed delivery back with `record` (its failed attempts counted). The
    /// new content is durable before the claim goes; see [`Store::recover`] for a crash
    /// in between.
    pub fn release(&self, stem: &str, record: &Record) -> io::Result<()> {
        fsutil::write_atomic(&self.path(stem, "json"), &to_json(record))?;
        match fs::remove_file(self.path(stem, "sending")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn parked_dir(&self, park: Park) -> &Path {
        match park {
            Park::Unknown => &self.unknown,
            Park::Dead => &self.dead,
        }
    }

    /// Set the claimed delivery aside for good, as `record`. It leaves the queue by a
    /// rename, so a crash can never leave it queued to be sent again.
    pub fn park(&self, stem: &str, record: &Record, park: Park) -> io::Result<()> {
        let dir = self.parked_dir(park);
        fsutil::create_private_dir(dir)?;
        let target = dir.join(format!("{stem}.json"));
        let sending = self.path(stem, "sending");
        // The claim takes the final record first, so the parked file shows why from the
        // moment it appears (a crash before the rename leaves an interrupted claim,
        // which is parked as unknown: never sent again).
        fsutil::write_atomic(&sending, &to_json(record))?;
        if let Err(e) = fs::rename(&sending, &target) {
            // Another filesystem (a symlinked dead-letter directory): copy, then remove.
            log::debug!("{}: cannot rename {} ({e}); copying", self.name, sending.display());
            fsutil::write_atomic(&target, &to_json(record))?;
            return fs::remove_file(&sending);
        }
        sync_dir(&self.queue)
    }
}

impl Store {
    /// Write `record` straight into the dead letters (it was never queued). Returns the file.
    pub fn dead_letter(&self, record: &Record) -> io::Result<PathBuf> {
        let file = self.dead.join(format!("{}.json", new_stem()));
        fsutil::write_atomic(&file, &to_json(record))?;
        Ok(file)
    }
}

/// Remove the dead letters and unknown-outcome files of every platform under
/// `state_dir` that were set aside more than `retention` ago (by the file's modification
/// time: when it was parked). Returns how many went; logs it. Never fails: a file that
/// cannot be removed stays for the next time.
pub(crate) fn prune_parked(state_dir: &Path, retention: Duration) -> usize {
    let Some(cutoff) = SystemTime::now().checked_sub(retention) else { return 0 };
    let mut dirs: Vec<PathBuf> =
        subdirs(&state_dir.join("deadletter")).into_iter().map(|p| state_dir.join("deadletter").join(p)).collect();
    dirs.extend(subdirs(&state_dir.join("outbox")).into_iter().map(|p| Store::new(state_dir, &p).unknown));
    let mut removed = 0;
    for dir in dirs {
        for name in read_names(&dir).into_iter().filter(|n| n.ends_with(".json")) {
            let path = dir.join(name);
            let old = fs::metadata(&path).and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
            if old && fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        let days = retention.as_secs() / 86_400;
        log::info!("removed {removed} dead letter(s) and unknown-outcome file(s) older than {days} days");
    }
    removed
}

/// The parked deliveries of one platform instance, counted, with the newest few read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedSummary {
    pub platform: String,
    /// The directory they are in.
    pub dir: PathBuf,
    pub count: usize,
    /// The newest ones (by when they were queued), oldest of them first.
    pub newest: Vec<Parked>,
}

/// [`ParkedSummary`] of every platform with deliveries parked as `park`, reading only
/// the newest `n` files of each (a summary of 40,000 dead letters stays quick).
pub(crate) fn summarize_parked(state_dir: &Path, park: Park, n: usize) -> Vec<ParkedSummary> {
    let mut out = Vec::new();
    for platform in subdirs(&state_dir.join(if park == Park::Dead { "deadletter" } else { "outbox" })) {
        let store = Store::new(state_dir, &platform);
        let dir = store.parked_dir(park).to_path_buf();
        let mut names: Vec<String> = read_names(&dir).into_iter().filter(|n| n.ends_with(".json")).collect();
        if names.is_empty() {
            continue;
        }
        names.sort();
        let newest = names[names.len().saturating_sub(n)..].iter().map(|f| parked(&platform, dir.join(f))).collect();
        out.push(ParkedSummary { platform, count: names.len(), dir, newest });
    }
    out
}

/// A delivery that will not be sent by itself, for `switchboard status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parked {
    /// The platform instance.
    pub platform: String,
    pub chat_id: String,
    pub thread_id: Option<String>,
    /// The first 60 characters of the text, on one line.
    pub preview: String,
    /// Why it was set aside.
    pub error: Option<String>,
    pub attempts: u32,
    /// Unix seconds when it was queued, and when it was set aside.
    pub created_at: u64,
    pub parked_at: Option<u64>,
    /// The file, to inspect it or move it back into the queue.
    pub file: PathBuf,
}

/// Every delivery parked as `park` under `state_dir`, oldest first per platform.
pub(crate) fn list_parked(state_dir: &Path, park: Park) -> Vec<Parked> {
    let mut out = Vec::new();
    for platform in subdirs(&state_dir.join(if park == Park::Dead { "deadletter" } else { "outbox" })) {
        let store = Store::new(state_dir, &platform);
        let dir = if park == Park::Dead { store.dead } else { store.unknown };
        let mut files: Vec<PathBuf> =
            read_names(&dir).into_iter().filter(|n| n.ends_with(".json")).map(|n| dir.join(n)).collect();
        files.sort();
        out.extend(files.into_iter().map(|file| parked(&platform, file)));
    }
    out
}

fn parked(platform: &str, file: PathBuf) -> Parked {
    let record: Option<Record> = fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let Some(r) = record else {
        let error = Some("unreadable file".to_string());
        let (chat_id, preview) = (String::new(), String::new());
        return Parked {
            platform: platform.into(),
            chat_id,
            thread_id: None,
            preview,
            error,
            attempts: 0,
            created_at: 0,
            parked_at: None,
            file,
        };
    };
    let preview = r.outbound.text.chars().take(60).map(|c| if c.is_control() { ' ' } else { c }).collect();
    Parked {
        platform: platform.to_string(),
        chat_id: r.outbound.chat_id,
        thread_id: r.outbound.thread_id,
        preview,
        error: r.last_error,
        attempts: r.attempts,
        created_at: r.created_at,
        parked_at: r.parked_at,
        file,
    }
}

/// Queued deliveries per platform instance (claimed ones included), from the files.
pub(crate) fn count_queued(state_dir: &Path) -> Vec<(String, usize)> {
    let platforms = subdirs(&state_dir.join("outbox"));
    platforms.into_iter().map(|p| (p.clone(), Store::new(state_dir, &p).scan().map_or(0, |s| s.len()))).collect()
}

/// The names of the subdirectories of `dir`, sorted; none when it does not exist.
fn subdirs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = read_names(dir).into_iter().filter(|n| dir.join(n).is_dir()).collect();
    names.sort();
    names
}

fn read_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

fn to_json(record: &Record) -> Vec<u8> {
    // A record is strings and numbers only: serializing it cannot fail.
    serde_json::to_vec_pretty(record).expect("an outbox record serializes")
}

/// Make a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The last time stamp handed out by this process, in nanoseconds.
static LAST_NANOS: Mutex<u128> = parking_lot::const_mutex(0);
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new stem, later than any this process made before.
fn new_stem() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let nanos = {
        let mut last = LAST_NANOS.lock();
        *last = now.max(*last + 1);
        *last
    };
    let pid = std::process::id();
    format!("{nanos:020}-{pid:010}-{:06}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(text: &str) -> Record {
        Record::new(Outbound { chat_id: "1".into(), thread_id: None, reply_to: None, edit_of: None, text: text.into() })
    }

    #[test]
    fn stems_sort_in_creation_order() {
        let mut all: Vec<String> = (0..150).map(|_| new_stem()).collect();
        let made = all.clone();
        all.sort();
        assert_eq!(all, made);
        all.dedup();
        assert_eq!(all.len(), 150);
        assert_eq!(made[0].len(), 20 + 1 + 10 + 1 + 6);
    }

    #[test]
    fn claim_release_and_park() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let stems = vec![store.write(&record("a")).unwrap(), store.write(&record("b")).unwrap()];
        assert_eq!(store.recover().unwrap(), stems);
        let Claim::Fresh(mut r) = store.claim(&stems[0]).unwrap() else { panic!("not claimed") };
        assert!(matches!(store.claim(&stems[0]).unwrap(), Claim::Interrupted(_)));
        r.attempts = 1;
        store.release(&stems[0], &r).unwrap();
        let Claim::Fresh(again) = store.claim(&stems[0]).unwrap() else { panic!("not claimed") };
        assert_eq!(again.attempts, 1);
        store.park(&stems[0], &Record { last_error: Some("boom".into()), ..again }, Park::Dead).unwrap();
        assert_eq!(store.scan().unwrap(), &stems[1..]);
        let dead = list_parked(dir.path(), Park::Dead);
        assert_eq!((dead[0].preview.as_str(), dead[0].error.as_deref()), ("a", Some("boom")));
        assert!(list_parked(dir.path(), Park::Unknown).is_empty());
        assert_eq!(count_queued(dir.path()), [("tg".to_string(), 1)]);
        assert!(matches!(store.claim("nope").unwrap(), Claim::Gone));
    }

    #[test]
    fn recovery_moves_bad_files_aside_and_drops_released_claims() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let stems: Vec<String> = ["a", "b", "c"].map(|t| store.write(&record(t)).unwrap()).into();
        fs::write(store.path(&stems[0], "json"), b"{\"outbound\": {\"chat_id\"").unwrap();
        fs::write(store.path(&stems[1], "sending"), b"stale claim").unwrap();
        fs::write(store.queue.join(".x.json.tmp.1"), b"half").unwrap();
        assert_eq!(store.recover().unwrap(), &stems[1..]);
        assert!(store.path(&stems[0], "corrupt").exists());
        assert!(!store.path(&stems[1], "sending").exists());
        // A fresh temporary file may belong to a `switchboard send` writing right now.
        assert!(store.queue.join(".x.json.tmp.1").exists());
    }

    fn long(chunks: &[&str]) -> Record {
        let mut r = record(chunks[0]);
        r.outbound.reply_to = Some("9".into());
        r.more = chunks[1..].iter().map(|c| c.to_string()).collect();
        r
    }

    /// Issue 7, "chunk rollback": a message's chunks are one file, so a worker's scan
    /// sees all of them or none, and a failed write leaves nothing it could send.
    #[test]
    fn chunk_rollback_a_message_is_visible_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let stem = store.write(&long(&["a (1/3)", "b (2/3)", "c (3/3)"])).unwrap();
        // One file: no scan can find the first chunk without the others.
        assert_eq!(store.scan().unwrap(), std::slice::from_ref(&stem), "one message, one delivery");
        let Claim::Fresh(r) = store.claim(&stem).unwrap() else { panic!("not claimed") };
        assert_eq!(r.outbound.text, "a (1/3)");
        assert_eq!(r.more, ["b (2/3)", "c (3/3)"]);
    }

    /// Progress is recorded after each chunk: a crash resumes after the last confirmed
    /// chunk, sets the one in flight aside (unknown outcome), and old one-chunk files
    /// still read.
    #[test]
    fn chunk_progress_survives_a_crash_and_the_chunk_in_flight_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let stem = store.write(&long(&["a", "b", "c"])).unwrap();
        let Claim::Fresh(first) = store.claim(&stem).unwrap() else { panic!("not claimed") };
        assert_eq!((first.outbound.text.as_str(), first.outbound.reply_to.as_deref()), ("a", Some("9")));
        // "a" confirmed: the claim now holds "b", "c", with no reply reference.
        let second = store.advance(&stem, &first).unwrap().unwrap();
        assert_eq!((second.outbound.text.as_str(), second.outbound.reply_to.as_deref()), ("b", None));
        // The process dies while "b" is in flight; the next run finds the claim.
        let Claim::Interrupted(found) = store.claim(&stem).unwrap() else { panic!("not interrupted") };
        assert_eq!(found, second);
        let third = store.park_first(&stem, &found, Park::Unknown).unwrap().unwrap();
        assert_eq!((third.outbound.text.as_str(), third.more.len()), ("c", 0));
        let unknown = list_parked(dir.path(), Park::Unknown);
        assert_eq!(unknown.iter().map(|p| p.preview.as_str()).collect::<Vec<_>>(), ["b"]);
        assert_eq!(store.advance(&stem, &third).unwrap(), None);
        assert!(store.scan().unwrap().is_empty());
        // A file written before chunks shared one has no `more`.
        let old = store.path("00000000000000000001-0000000001-000000", "json");
        fs::write(&old, br#"{"outbound": {"chat_id": "1", "text": "old"}, "created_at": 5}"#).unwrap();
        let Claim::Fresh(r) = store.claim("00000000000000000001-0000000001-000000").unwrap() else { panic!() };
        assert_eq!((r.outbound.text.as_str(), r.more.len()), ("old", 0));
    }

    /// Issue 7, "outbox read errors": a file that cannot be read is not gone: it is
    /// moved aside (never counted as sent), and the next delivery is unaffected.
    #[test]
    fn outbox_read_errors_move_the_file_aside_never_count_it_sent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let good = store.write(&record("fine")).unwrap();
        // Root reads any file whatever its mode: a directory where the file should be
        // is a read error (EISDIR) that holds for root too.
        let bad = "00000000000000000001-0000000001-000000";
        fs::create_dir(store.path(bad, "json")).unwrap();
        assert_eq!(store.scan().unwrap(), [bad.to_string(), good.clone()]);
        assert!(matches!(store.claim(bad).unwrap(), Claim::Gone));
        assert!(store.path(bad, "unreadable").exists(), "moved aside, not dropped");
        assert_eq!(store.scan().unwrap(), std::slice::from_ref(&good), "and no longer in the queue");
        assert!(matches!(store.claim(&good).unwrap(), Claim::Fresh(_)));
        // At startup too.
        fs::create_dir(store.path("00000000000000000002-0000000001-000000", "json")).unwrap();
        store.recover().unwrap();
        assert!(store.path("00000000000000000002-0000000001-000000", "unreadable").exists());
        // Neither readable nor movable (a non-empty directory is in the way): skipped
        // from then on, not tried again every second.
        let stuck = "00000000000000000003-0000000001-000000";
        fs::create_dir(store.path(stuck, "json")).unwrap();
        fs::create_dir_all(store.path(stuck, "unreadable").join("in the way")).unwrap();
        assert!(matches!(store.claim(stuck).unwrap(), Claim::Gone));
        assert!(store.path(stuck, "sending").exists(), "left where it was");
        assert_eq!(store.scan().unwrap(), std::slice::from_ref(&good));
    }

    /// Issue 7, section 4: parked deliveries older than the retention are removed.
    #[test]
    fn retention_prunes_old_dead_letters_and_unknown_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let mut stems = vec![];
        for (text, park) in [("old dead", Park::Dead), ("old unknown", Park::Unknown), ("new", Park::Dead)] {
            let stem = store.write(&record(text)).unwrap();
            store.claim(&stem).unwrap();
            store.park(&stem, &record(text), park).unwrap();
            stems.push((stem, park));
        }
        let month_ago = SystemTime::now() - Duration::from_secs(31 * 86_400);
        for (stem, park) in &stems[..2] {
            let file = fs::File::options().write(true).open(store.parked_dir(*park).join(format!("{stem}.json")));
            file.unwrap().set_modified(month_ago).unwrap();
        }
        assert_eq!(prune_parked(dir.path(), Duration::from_secs(30 * 86_400)), 2);
        let left: Vec<String> = list_parked(dir.path(), Park::Dead).into_iter().map(|p| p.preview).collect();
        assert_eq!(left, ["new"]);
        assert!(list_parked(dir.path(), Park::Unknown).is_empty());
        let summary = summarize_parked(dir.path(), Park::Dead, 5);
        assert_eq!((summary.len(), summary[0].count, summary[0].newest.len()), (1, 1, 1));
    }
}
