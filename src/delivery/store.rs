/*!
The outbox on disk: per platform instance, a journal of queued deliveries, a spool for
deliveries queued by other processes, and one file per delivery that was set aside.

```text
state_dir/outbox/NAME/journal            queued and claimed deliveries (see journal.rs)
state_dir/outbox/NAME/STEM.json          spool: queued by `switchboard send` (or moved
                                         back by hand), not yet taken into the journal
state_dir/outbox/NAME/STEM.corrupt       a spool file that is not a delivery, moved aside
state_dir/outbox/NAME/STEM.unreadable    a spool file that could not be read, moved aside
state_dir/outbox/NAME/journal.damaged    journal lines that could not be read
state_dir/outbox/NAME/unknown/STEM.json  sent, outcome unknown: never re-sent by itself
state_dir/deadletter/NAME/STEM.json      given up: refused, or failed too often
```

**Why a journal.** A durable file per delivery costs two syncs (file and directory) and
a directory entry; an appended line costs a `write`, and one `fdatasync` serves every
delivery queued while the previous one ran ([`super::journal`]: group commit). So a burst
of replies to a hundred chats costs a handful of syncs, not two hundred, and an SD card
is written a few hundred bytes per message instead of a few blocks.

**One record, all its chunks.** A record holds one message: the chunk to send next in
`outbound`, the ones after it in `more`. So a message's chunks become visible to the
sender together or not at all. After each chunk is confirmed the claimed record is
replaced by the rest ([`Store::advance`]), so a crash resumes with the chunk in flight,
which the rule below sets aside, and sends the rest.

**Stems** are `<unix nanos, 20 digits>-<pid, 10 digits>-<counter>`, so they sort in the
order deliveries were queued (FIFO), and two processes (the gateway and a `switchboard
send`) never pick the same one. Within one process stems strictly increase even if the
wall clock stalls or steps back.

**Claims.** Before a delivery is sent, a `claim` line is appended; after it, a `gone`
(sent), an `unclaim` (put back unchanged) or a `put` (put back with its attempts
counted, or the rest of a long message still claimed). A claim found by the next start
means the gateway stopped between sending and hearing back: its outcome is unknown, and
it is set aside, not re-sent. Queueing, putting back and setting aside are synced before
they return; the claim, the `gone` after a send and the progress of a long message are
not (they survive a `kill -9`, which leaves the kernel's copy): a power cut can lose
them, which shows a sent delivery as unknown-outcome (harmless), or, for a claim lost in
the second after a send, lets that one delivery be sent again. Syncing them would cost
two syncs per message for that.

**`switchboard send`** runs in another process, with or without a gateway. It never
touches the journal: it writes its delivery as a spool file (atomically, synced) into
`outbox/NAME/`, and the gateway's worker folds spool files into the journal when it
lists the queue ([`Store::scan`], about once a second) and at startup: one synced append
for all of them, then the files are removed. So any number of senders work at once with
no lock, and the gateway is the journal's only writer. A crash after the append but
before a removal leaves a file whose record the journal already holds: the next start
recognises it (same stem, same record) and only removes it. Removals are synced before
the journal is next compacted, so a power cut cannot bring back a file whose delivery the
journal has forgotten.

A spool file that cannot be read is never taken for sent: it is logged and moved aside as
`.corrupt` or `.unreadable`, to be fixed and renamed back to `.json`. To retry a parked
delivery by hand, move its file back into `outbox/NAME/`, with or without a gateway
running. (`STEM.sending` files of earlier versions are taken in as claims.)
*/

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::journal::{Entries, Journal, Line};
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

/// The outbox of one platform instance. Cheap to clone; clones share the journal, which
/// is opened (replayed, the spool folded in, compacted) on first use. Safe to use from
/// many threads at once: every change is one short critical section of the journal.
#[derive(Clone)]
pub(crate) struct Store {
    name: String,
    queue: PathBuf,
    unknown: PathBuf,
    dead: PathBuf,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    journal: Mutex<Option<Arc<Journal>>>,
    /// Held while spool files are folded in, so that two scans never take in one file twice.
    folding: Mutex<()>,
    /// Spool files that can be neither read nor moved aside (or removed once folded in):
    /// skipped until the next start, so a worker never spins on them.
    stuck: Mutex<HashSet<String>>,
}

impl Store {
    pub fn new(state_dir: &Path, name: &str) -> Store {
        let queue = state_dir.join("outbox").join(name);
        let unknown = queue.join("unknown");
        let dead = state_dir.join("deadletter").join(name);
        Store { name: name.to_string(), queue, unknown, dead, shared: Arc::default() }
    }

    fn path(&self, stem: &str, ext: &str) -> PathBuf {
        self.queue.join(format!("{stem}.{ext}"))
    }

    /// The journal, opened on first use: replayed, the spool folded in, compacted.
    fn journal(&self) -> io::Result<Arc<Journal>> {
        let mut slot = self.shared.journal.lock();
        if let Some(journal) = &*slot {
            return Ok(journal.clone());
        }
        fsutil::create_private_dir(&self.queue)?;
        let (journal, first_puts) = Journal::open(&self.queue.join("journal"))?;
        // Neither is needed to start (a full disk): the spool waits, the journal stays long.
        if let Err(e) = self.fold(&journal, &first_puts) {
            log::warn!("{}: cannot take the queued files of {} in yet: {e}", self.name, self.queue.display());
        }
        if let Err(e) = journal.compact() {
            log::warn!("{}: cannot compact the outbox journal in {}: {e}", self.name, self.queue.display());
        }
        let journal = Arc::new(journal);
        *slot = Some(journal.clone());
        Ok(journal)
    }

    /// Queue `record` as a new delivery; returns its stem once it is durable. On an
    /// error nothing of it is queued, and the caller may retry it whole.
    pub fn write(&self, record: &Record) -> io::Result<String> {
        let stem = new_stem();
        let line = Line::Put { id: stem.clone(), claimed: false, record: record.clone() };
        self.journal()?.change(true, |_| (vec![line], ()))?;
        Ok(stem)
    }

    /// Queue `record` from another process than the gateway (`switchboard send`): a
    /// spool file, written atomically, that the gateway folds into its journal.
    pub fn write_spool(&self, record: &Record) -> io::Result<String> {
        let stem = new_stem();
        fsutil::write_atomic(&self.path(&stem, "json"), &to_json(record))?;
        Ok(stem)
    }

    /// The stems of every queued or claimed delivery, in FIFO order, after folding in
    /// the spool (one `readdir` when it is empty).
    pub fn scan(&self) -> io::Result<Vec<String>> {
        let journal = self.journal()?;
        self.fold(&journal, &HashMap::new())?;
        let mut stems = journal.live();
        let stuck = self.shared.stuck.lock();
        stems.retain(|s| !stuck.contains(s));
        Ok(stems)
    }

    /// Open the journal (replaying it and folding in the spool: bad files are moved
    /// aside), remove stale temporary files, then [`Store::scan`].
    pub fn recover(&self) -> io::Result<Vec<String>> {
        self.journal()?;
        for name in read_names(&self.queue).into_iter().filter(|n| n.starts_with('.') && n.contains(".tmp.")) {
            let path = self.queue.join(name);
            let age = fs::metadata(&path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if age.is_some_and(|age| age > STALE_TEMP) {
                let _ = fs::remove_file(path);
            }
        }
        self.scan()
    }

    /// Take the spool files into the journal with one synced append, then remove them.
    /// A file whose record the journal already holds under its stem (`first_puts`, or
    /// live) is a leftover of a fold a crash interrupted: only removed. One whose stem
    /// is taken by another record gets a new stem.
    fn fold(&self, journal: &Journal, first_puts: &HashMap<String, Record>) -> io::Result<()> {
        let _one = self.shared.folding.lock();
        let spool = self.spool();
        if spool.is_empty() {
            return Ok(());
        }
        let mut found = Vec::new();
        let mut done = Vec::new();
        for (stem, exts) in spool {
            if self.shared.stuck.lock().contains(&stem) {
                continue;
            }
            // Both: a claim an earlier version released; the `.json` holds the record.
            let ext = if exts.contains(&"json") { "json" } else { "sending" };
            if exts.len() == 2 {
                done.push(self.path(&stem, "sending"));
            }
            let path = self.path(&stem, ext);
            if let Some(record) = self.read(&stem, &path) {
                found.push((stem, ext == "sending", record, path));
            }
        }
        let plan = |entries: &Entries| {
            let mut lines = Vec::new();
            for (stem, claimed, record, path) in found {
                let live = entries.get(&stem).map(|e| &e.record);
                if first_puts.get(&stem) == Some(&record) || live == Some(&record) {
                    done.push(path);
                    continue;
                }
                let taken = first_puts.contains_key(&stem) || live.is_some();
                let id = if taken { new_stem() } else { stem };
                lines.push(Line::Put { id, claimed, record });
                done.push(path);
            }
            (lines, done)
        };
        let done = journal.change(true, plan)?;
        for path in done {
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                log::error!("{}: took {} into the outbox journal but cannot remove it: {e}", self.name, path.display());
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                self.shared.stuck.lock().insert(stem);
            }
        }
        journal.removed_files();
        Ok(())
    }

    /// The spool files by stem: which of `STEM.json` and `STEM.sending` exist, sorted.
    fn spool(&self) -> BTreeMap<String, Vec<&'static str>> {
        let mut spool: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        for name in read_names(&self.queue).iter().filter(|n| !n.starts_with('.')) {
            for ext in ["json", "sending"] {
                if let Some(stem) = name.strip_suffix(&format!(".{ext}")) {
                    spool.entry(stem.to_string()).or_default().push(ext);
                }
            }
        }
        spool
    }

    /// The chat the queued (or claimed) delivery `stem` goes to, without claiming it, so
    /// the outbox can queue a delivery it did not write (another process's, an earlier
    /// run's) behind the others to its chat. `Ok(None)`: it is gone. Memory only.
    pub fn chat_of(&self, stem: &str) -> io::Result<Option<String>> {
        let chat = |entries: &Entries| entries.get(stem).map(|e| e.record.outbound.chat_id.clone());
        self.journal()?.change(false, |entries| (vec![], chat(entries)))
    }

    /// Claim the delivery `stem` for sending.
    pub fn claim(&self, stem: &str) -> io::Result<Claim> {
        self.journal()?.change(false, |entries| match entries.get(stem) {
            None => (vec![], Claim::Gone),
            Some(e) if e.claimed => (vec![], Claim::Interrupted(e.record.clone())),
            Some(e) => (vec![Line::Claim { id: stem.to_string() }], Claim::Fresh(e.record.clone())),
        })
    }

    /// Read a spool file. `None` when it is gone or was moved aside: bad JSON as
    /// `STEM.corrupt`, a read error (permissions, I/O) as `STEM.unreadable`. Neither is
    /// ever taken for sent, and neither is tried again.
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
                self.shared.stuck.lock().insert(stem.to_string());
            }
        }
        None
    }

    /// Append `line` for the live delivery `stem` (`NotFound` when it is not live).
    fn update(&self, stem: &str, durable: bool, line: Line) -> io::Result<()> {
        let found = self
            .journal()?
            .change(durable, |entries| if entries.contains_key(stem) { (vec![line], true) } else { (vec![], false) })?;
        if found {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, format!("no delivery {stem} in the outbox of {}", self.name)))
        }
    }

    /// The first chunk of the claimed delivery is done with: keep the rest claimed and
    /// return it, or forget the delivery when nothing is left. Not synced (see the
    /// module doc: a lost progress line sets the sent chunk aside as unknown).
    pub fn advance(&self, stem: &str, record: &Record) -> io::Result<Option<Record>> {
        match record.rest() {
            None => self.sent(stem).map(|()| None),
            Some(rest) => {
                let line = Line::Put { id: stem.to_string(), claimed: true, record: rest.clone() };
                self.update(stem, false, line).map(|()| Some(rest))
            }
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

    /// The claimed delivery was sent: forget it. Not synced (see the module doc).
    pub fn sent(&self, stem: &str) -> io::Result<()> {
        self.update(stem, false, Line::Gone { id: stem.to_string() })
    }

    /// Put the claimed delivery back, unchanged, at its place in the queue. Synced: a
    /// claim that came back after a power cut would set an unsent delivery aside.
    pub fn unclaim(&self, stem: &str) -> io::Result<()> {
        self.update(stem, true, Line::Unclaim { id: stem.to_string() })
    }

    /// Put the claimed delivery back with `record` (its failed attempts counted). Synced.
    pub fn release(&self, stem: &str, record: &Record) -> io::Result<()> {
        self.update(stem, true, Line::Put { id: stem.to_string(), claimed: false, record: record.clone() })
    }

    fn parked_dir(&self, park: Park) -> &Path {
        match park {
            Park::Unknown => &self.unknown,
            Park::Dead => &self.dead,
        }
    }

    /// Set the claimed delivery aside for good, as `record`: its file is durable before
    /// the journal forgets it (synced too), so a crash can leave it parked and claimed
    /// at once (set aside again as unknown, under the same name), never queued again.
    pub fn park(&self, stem: &str, record: &Record, park: Park) -> io::Result<()> {
        let dir = self.parked_dir(park);
        fsutil::create_private_dir(dir)?;
        fsutil::write_atomic(&dir.join(format!("{stem}.json")), &to_json(record))?;
        self.update(stem, true, Line::Gone { id: stem.to_string() })
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

/// Queued deliveries per platform instance (claimed ones included), from the journal
/// and the spool, read only (the gateway may be running).
pub(crate) fn count_queued(state_dir: &Path) -> Vec<(String, usize)> {
    let platforms = subdirs(&state_dir.join("outbox"));
    platforms
        .into_iter()
        .map(|p| {
            let store = Store::new(state_dir, &p);
            let mut stems: HashSet<String> =
                Journal::read_live(&store.queue.join("journal")).unwrap_or_default().into_keys().collect();
            stems.extend(store.spool().into_keys());
            (p, stems.len())
        })
        .collect()
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
    use std::io::Write;
    use std::time::Instant;

    fn record(text: &str) -> Record {
        Record::new(Outbound { chat_id: "1".into(), thread_id: None, reply_to: None, edit_of: None, text: text.into() })
    }

    fn journal_path(store: &Store) -> PathBuf {
        store.queue.join("journal")
    }

    /// The texts queued in `store`, in order.
    fn texts(store: &Store) -> Vec<String> {
        let stems = store.scan().unwrap();
        let journal = store.journal().unwrap();
        let live = journal.change(false, |e| (vec![], e.clone())).unwrap();
        stems.iter().map(|s| live[s].record.outbound.text.clone()).collect()
    }

    /// Append raw bytes to the journal, as a crash or damage leaves them.
    fn append_raw(store: &Store, bytes: &[u8]) {
        fs::OpenOptions::new().append(true).open(journal_path(store)).unwrap().write_all(bytes).unwrap();
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
        assert_eq!(store.sent("nope").unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    /// A `kill -9` is a store dropped without a word: a new one on the same directory
    /// finds the queue, the claim as interrupted, the attempts counted.
    #[test]
    fn kill_9_a_claim_survives_as_interrupted_and_the_queue_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let stems: Vec<String> = ["in flight", "counted", "queued"].map(|t| store.write(&record(t)).unwrap()).into();
        store.claim(&stems[0]).unwrap();
        let Claim::Fresh(mut r) = store.claim(&stems[1]).unwrap() else { panic!() };
        r.attempts = 2;
        store.release(&stems[1], &r).unwrap();
        drop(store);
        let again = Store::new(dir.path(), "tg");
        assert_eq!(again.recover().unwrap(), stems);
        let Claim::Interrupted(r) = again.claim(&stems[0]).unwrap() else { panic!("not interrupted") };
        assert_eq!(r.outbound.text, "in flight");
        let Claim::Fresh(r) = again.claim(&stems[1]).unwrap() else { panic!("not fresh") };
        assert_eq!(r.attempts, 2);
        assert_eq!(count_queued(dir.path()), [("tg".to_string(), 3)]);
    }

    /// A torn last line (a crash mid-write) or a damaged one is skipped, kept aside in
    /// `journal.damaged`, and what follows is written on a line of its own.
    #[test]
    fn kill_9_a_torn_or_damaged_journal_line_is_skipped_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        store.write(&record("a")).unwrap();
        let b = store.write(&record("b")).unwrap();
        drop(store);
        // Cut the last line in half, as a write cut short leaves it, then add garbage.
        let path = dir.path().join("outbox/tg/journal");
        let bytes = fs::read(&path).unwrap();
        let cut = bytes.len() - 20;
        fs::write(&path, &bytes[..cut]).unwrap();
        let store = Store::new(dir.path(), "tg");
        assert_eq!(texts(&store), ["a"]);
        assert!(!store.scan().unwrap().contains(&b));
        let damaged = fs::read_to_string(dir.path().join("outbox/tg/journal.damaged")).unwrap();
        assert!(damaged.contains("\"b\"") || damaged.contains("put"), "{damaged}");
        drop(store);
        // Damage in the middle too; the next start still goes on from whole lines.
        let store = Store::new(dir.path(), "tg");
        store.recover().unwrap();
        append_raw(&store, b"garbage\n{\"put\":{\"id\":\"x\",\"rec");
        drop(store);
        let store = Store::new(dir.path(), "tg");
        store.write(&record("c")).unwrap();
        drop(store);
        let again = Store::new(dir.path(), "tg");
        assert_eq!(texts(&again), ["a", "c"]);
    }

    /// Spool files (`switchboard send`, or moved back by hand) are folded in; bad ones
    /// are moved aside; a claim an earlier version released (both `.json` and
    /// `.sending`) is dropped; a fresh temporary file of a writer is left alone.
    #[test]
    fn the_spool_is_folded_in_and_bad_files_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let stems: Vec<String> = ["a", "b", "c"].map(|t| store.write_spool(&record(t)).unwrap()).into();
        fs::write(store.path(&stems[0], "json"), b"{\"outbound\": {\"chat_id\"").unwrap();
        fs::write(store.path(&stems[1], "sending"), b"stale claim").unwrap();
        fs::write(store.queue.join(".x.json.tmp.1"), b"half").unwrap();
        assert_eq!(store.recover().unwrap(), &stems[1..]);
        assert!(store.path(&stems[0], "corrupt").exists());
        assert!(!store.path(&stems[1], "sending").exists());
        assert!(!store.path(&stems[1], "json").exists(), "folded into the journal");
        assert!(store.queue.join(".x.json.tmp.1").exists());
        assert!(matches!(store.claim(&stems[1]).unwrap(), Claim::Fresh(_)));
        // An earlier version's claim is an interrupted one.
        let old = "00000000000000000001-0000000001-000000";
        fs::write(store.path(old, "sending"), to_json(&record("old claim"))).unwrap();
        assert_eq!(store.scan().unwrap()[0], old);
        assert!(matches!(store.claim(old).unwrap(), Claim::Interrupted(_)));
    }

    /// A crash after a spool file was taken into the journal but before it was removed
    /// leaves both: the next start removes the file and queues the delivery once. A
    /// parked delivery moved back under the same name is queued again, as asked.
    #[test]
    fn kill_9_a_spool_file_folded_before_the_crash_is_queued_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let stem = store.write_spool(&record("once")).unwrap();
        let content = fs::read(store.path(&stem, "json")).unwrap();
        assert_eq!(store.recover().unwrap(), std::slice::from_ref(&stem));
        drop(store);
        fs::write(dir.path().join(format!("outbox/tg/{stem}.json")), &content).unwrap();
        let store = Store::new(dir.path(), "tg");
        assert_eq!(texts(&store), ["once"]);
        // Sent, then given up and moved back by hand: a new record under the old stem.
        store.claim(&stem).unwrap();
        store.park(&stem, &Record { parked_at: Some(5), ..record("once") }, Park::Dead).unwrap();
        drop(store);
        fs::rename(
            dir.path().join(format!("deadletter/tg/{stem}.json")),
            dir.path().join(format!("outbox/tg/{stem}.json")),
        )
        .unwrap();
        let store = Store::new(dir.path(), "tg");
        assert_eq!(texts(&store), ["once"]);
        assert_eq!(store.scan().unwrap().len(), 1);
    }

    /// Many threads queue, claim and send at once: nothing is lost or doubled.
    #[test]
    fn concurrent_writers_and_senders_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        store.recover().unwrap();
        let kept: Vec<Vec<String>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..8)
                .map(|t| {
                    let store = store.clone();
                    s.spawn(move || {
                        let mut kept = vec![];
                        for n in 0..40 {
                            let stem = store.write(&record(&format!("{t}-{n}"))).unwrap();
                            if n % 2 == 0 {
                                assert!(matches!(store.claim(&stem).unwrap(), Claim::Fresh(_)));
                                store.sent(&stem).unwrap();
                            } else {
                                kept.push(format!("{t}-{n}"));
                            }
                        }
                        kept
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut want: Vec<String> = kept.concat();
        want.sort();
        let mut got = texts(&Store::new(dir.path(), "tg"));
        got.sort();
        assert_eq!(got, want);
    }

    /// Group commit: writes that arrive while a sync runs share the next one. A gate
    /// holds the first writer just before its sync until every other writer has written;
    /// then one sync serves them all (counted, not timed).
    #[test]
    fn group_commit_concurrent_writes_share_one_sync() {
        const N: usize = 16;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        store.recover().unwrap();
        let journal = store.journal().unwrap();
        let before = journal.written();
        let gate = super::super::journal::tests::SYNC_GATE.lock();
        let syncs: u64 = std::thread::scope(|s| {
            let writers: Vec<_> = (0..N)
                .map(|n| {
                    let store = store.clone();
                    s.spawn(move || {
                        let mine = fsutil::thread_sync_count();
                        store.write(&record(&n.to_string())).unwrap();
                        fsutil::thread_sync_count() - mine
                    })
                })
                .collect();
            let deadline = Instant::now() + Duration::from_secs(10);
            while journal.written() < before + N as u64 && Instant::now() < deadline {
                std::thread::yield_now();
            }
            assert_eq!(journal.written(), before + N as u64, "the writers did not all write");
            drop(gate);
            writers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(syncs, 1, "{N} writes cost {syncs} syncs");
        assert_eq!(Store::new(dir.path(), "tg").recover().unwrap().len(), N, "all durable");
    }

    /// The journal is compacted as deliveries come and go, and what is live survives
    /// it, including what was written while it ran.
    #[test]
    fn the_journal_is_compacted_and_keeps_what_is_live() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let text = "x".repeat(500);
        std::thread::scope(|s| {
            let churn = store.clone();
            s.spawn(move || {
                for _ in 0..300 {
                    let stem = churn.write(&record(&text)).unwrap();
                    churn.claim(&stem).unwrap();
                    churn.sent(&stem).unwrap();
                }
            });
            for n in 0..30 {
                store.write(&record(&n.to_string())).unwrap();
            }
        });
        let meta = fs::metadata(journal_path(&store)).unwrap();
        // 300 × ~600 bytes went through a journal compacted past 16 KiB.
        assert!(meta.len() < 100_000, "not compacted: {} bytes", meta.len());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let want: Vec<String> = (0..30).map(|n| n.to_string()).collect();
        assert_eq!(texts(&Store::new(dir.path(), "tg")), want);
    }

    /// Compaction does not stall enqueues: while one is held between its phases (the
    /// live deliveries copied and synced, the swap not yet done), a write still becomes
    /// durable and returns, and it is in the compacted journal.
    #[test]
    fn compaction_lets_enqueues_through_and_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        store.write(&record("before")).unwrap();
        let journal = store.journal().unwrap();
        let gate = super::super::journal::tests::COMPACT_GATE.lock();
        std::thread::scope(|s| {
            let compacting = s.spawn(|| journal.compact());
            let deadline = Instant::now() + Duration::from_secs(10);
            while !journal.compacting() && Instant::now() < deadline {
                std::thread::yield_now();
            }
            assert!(journal.compacting(), "the compaction did not start");
            let (done, written) = crossbeam_channel::bounded(1);
            let writer = store.clone();
            s.spawn(move || done.send(writer.write(&record("during")).is_ok()));
            let during = written.recv_timeout(Duration::from_secs(10));
            let still = journal.compacting();
            drop(gate);
            compacting.join().unwrap().unwrap();
            assert_eq!(during, Ok(true), "the write waited for the compaction");
            assert!(still);
        });
        store.write(&record("after")).unwrap();
        assert_eq!(texts(&Store::new(dir.path(), "tg")), ["before", "during", "after"]);
    }

    fn long(chunks: &[&str]) -> Record {
        let mut r = record(chunks[0]);
        r.outbound.reply_to = Some("9".into());
        r.more = chunks[1..].iter().map(|c| c.to_string()).collect();
        r
    }

    /// Issue 7, "chunk rollback": a message's chunks are one record, so a worker's scan
    /// sees all of them or none, and a failed write leaves nothing it could send.
    #[test]
    fn chunk_rollback_a_message_is_visible_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "tg");
        let stem = store.write(&long(&["a (1/3)", "b (2/3)", "c (3/3)"])).unwrap();
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
        drop(store);
        let store = Store::new(dir.path(), "tg");
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
        store.scan().unwrap();
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
        assert_eq!(store.scan().unwrap(), std::slice::from_ref(&good), "not queued");
        assert!(store.path(bad, "unreadable").exists(), "moved aside, not dropped");
        assert!(matches!(store.claim(bad).unwrap(), Claim::Gone));
        assert!(matches!(store.claim(&good).unwrap(), Claim::Fresh(_)));
        // Neither readable nor movable (a non-empty directory is in the way): skipped
        // from then on, not tried again every second.
        let stuck = "00000000000000000003-0000000001-000000";
        fs::create_dir(store.path(stuck, "json")).unwrap();
        fs::create_dir_all(store.path(stuck, "unreadable").join("in the way")).unwrap();
        assert_eq!(store.scan().unwrap(), std::slice::from_ref(&good));
        assert!(store.path(stuck, "json").exists(), "left where it was");
        assert!(store.shared.stuck.lock().contains(stuck));
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
