/*!
The outbox on disk: one directory per platform instance, one file per delivery.

```text
state_dir/outbox/NAME/STEM.json          queued
state_dir/outbox/NAME/STEM.sending       being sent right now (claimed by the worker)
state_dir/outbox/NAME/STEM.corrupt       unreadable, moved aside
state_dir/outbox/NAME/unknown/STEM.json  sent, outcome unknown: never re-sent by itself
state_dir/deadletter/NAME/STEM.json      given up: refused, or failed too often
```

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

To retry a parked delivery by hand, move its file back into `outbox/NAME/`.
*/

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::message::Outbound;

/// A temporary file of `write_atomic` older than this was left by a crash.
const STALE_TEMP: Duration = Duration::from_secs(60);

/// One delivery, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub outbound: Outbound,
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
        Record { outbound, created_at: unix_now(), attempts: 0, last_error: None, parked_at: None }
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
}

impl Store {
    pub fn new(state_dir: &Path, name: &str) -> Store {
        let queue = state_dir.join("outbox").join(name);
        let unknown = queue.join("unknown");
        let dead = state_dir.join("deadletter").join(name);
        Store { name: name.to_string(), queue, unknown, dead }
    }

    fn path(&self, stem: &str, ext: &str) -> PathBuf {
        self.queue.join(format!("{stem}.{ext}"))
    }

    /// Write `records` as new queued deliveries, in this order. Returns their stems. On
    /// an error (a full disk) the ones already written are removed again: the caller
    /// retries the whole message, which must not send its first chunks twice.
    pub fn write(&self, records: &[Record]) -> io::Result<Vec<String>> {
        let stems = new_stems(records.len());
        for (n, (stem, record)) in stems.iter().zip(records).enumerate() {
            if let Err(e) = fsutil::write_atomic(&self.path(stem, "json"), &to_json(record)) {
                for written in &stems[..n] {
                    let _ = fs::remove_file(self.path(written, "json"));
                }
                return Err(e);
            }
        }
        Ok(stems)
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

    /// Read a delivery file; an unreadable one is moved aside (`STEM.corrupt`).
    fn read(&self, stem: &str, path: &Path) -> Option<Record> {
        let bytes = fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(record) => Some(record),
            Err(e) => {
                let aside = self.path(stem, "corrupt");
                log::warn!(
                    "{}: unreadable outbox file {} ({e}); moved to {}",
                    self.name,
                    path.display(),
                    aside.display()
                );
                if let Err(e) = fs::rename(path, &aside) {
                    log::error!("{}: cannot move {} aside: {e}", self.name, path.display());
                }
                None
            }
        }
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

    /// Set the claimed delivery aside for good, as `record`. It leaves the queue by a
    /// rename first, so a crash can never leave it queued to be sent again.
    pub fn park(&self, stem: &str, record: &Record, park: Park) -> io::Result<()> {
        let dir = match park {
            Park::Unknown => &self.unknown,
            Park::Dead => &self.dead,
        };
        fsutil::create_private_dir(dir)?;
        let target = dir.join(format!("{stem}.json"));
        let sending = self.path(stem, "sending");
        if let Err(e) = fs::rename(&sending, &target) {
            // Another filesystem (a symlinked dead-letter directory): copy, then remove.
            log::debug!("{}: cannot rename {} ({e}); copying", self.name, sending.display());
            fsutil::write_atomic(&target, &to_json(record))?;
            return fs::remove_file(&sending);
        }
        sync_dir(&self.queue)?;
        fsutil::write_atomic(&target, &to_json(record))
    }
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

/// `n` new stems, consecutive and later than any this process made before, so that the
/// chunks of one message stay together in the queue even when threads enqueue at once.
fn new_stems(n: usize) -> Vec<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let first = {
        let mut last = LAST_NANOS.lock();
        let first = now.max(*last + 1);
        *last = first + n as u128;
        first
    };
    let pid = std::process::id();
    (0..n)
        .map(|i| format!("{:020}-{pid:010}-{:06}", first + i as u128, COUNTER.fetch_add(1, Ordering::Relaxed)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(text: &str) -> Record {
        Record::new(Outbound { chat_id: "1".into(), thread_id: None, reply_to: None, edit_of: None, text: text.into() })
    }

    #[test]
    fn stems_sort_in_creation_order() {
        let mut all: Vec<String> = (0..50).flat_map(|_| new_stems(3)).collect();
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
        let stems = store.write(&[record("a"), record("b")]).unwrap();
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
        let stems = store.write(&[record("a"), record("b"), record("c")]).unwrap();
        fs::write(store.path(&stems[0], "json"), b"{\"outbound\": {\"chat_id\"").unwrap();
        fs::write(store.path(&stems[1], "sending"), b"stale claim").unwrap();
        fs::write(store.queue.join(".x.json.tmp.1"), b"half").unwrap();
        assert_eq!(store.recover().unwrap(), &stems[1..]);
        assert!(store.path(&stems[0], "corrupt").exists());
        assert!(!store.path(&stems[1], "sending").exists());
        // A fresh temporary file may belong to a `switchboard send` writing right now.
        assert!(store.queue.join(".x.json.tmp.1").exists());
    }
}
