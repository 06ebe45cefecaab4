/*!
Sessions: one conversation per session key, its history on disk, and when it starts over.

A message's [`Source`] names its conversation through [`session_key`]. The key points at
the current session, whose id names a JSONL transcript under `state_dir/sessions/`. A
session expires by the `[sessions]` policy (idle time, a daily hour, both, or never) and
is replaced lazily, on the conversation's next message, which then carries a one-time
notice for the user; `/new` replaces it at once ([`SessionStore::reset`]).

[`SessionStore`] is shared by the router's worker threads (`Arc<SessionStore>`); its
methods take `&self` and lock one internal mutex for short critical sections.
Times come in as `SystemTime` arguments, so tests (and the lead's benchmark) control them.

# Bounded over months

Memory holds the entries of conversations active lately. An entry idle past the reset
policy, or for [`EVICT_IDLE`], moves to the archive on disk (`archive.rs`) and is read back
when its conversation speaks again or `/status` asks, so a gateway that has seen a
hundred thousand chats holds only today's. Disk writes are proportional to what changed:
one journal line per changed entry and interval, and a whole new snapshot only when the
journal has grown to a few times the snapshot (see `index.rs`).

# Durability

What a crash may cost, from most to least precious:

- *Which session a key points at* is never lost once [`SessionStore::begin_turn`] or
  [`SessionStore::reset`] returns it: a new mapping is appended to `index.journal` and
  `fdatasync`ed (outside the lock) before the call returns. See `index.rs`.
- *Transcripts* get one `write_all` of complete lines per append and no fsync. A `kill -9`
  loses nothing that was written (the kernel holds it); a crash in the middle of a write
  tears the last line, which readers skip. Only a power loss can lose more: the lines of
  the last few seconds that the kernel had not written back. That is acceptable for chat
  history, the platform itself still shows the conversation, and an fsync per turn would
  cap a Raspberry Pi's SD card at a few dozen turns per second.
- *Token counts and `updated_at`* are appended to the journal, unsynced, at most once per
  [`INDEX_WRITE_INTERVAL`], by whichever worker thread runs after the interval passed, and
  by [`SessionStore::flush`] (called at shutdown, and on drop, which also folds the
  journal into `index.json`). A crash loses at most the last interval's counts and
  activity times.
- *Archived entries* are appended unsynced too, and synced before a snapshot without
  them is written: until then the snapshot and journal still hold them.
*/

mod archive;
mod config;
mod index;
mod key;
mod policy;
mod transcript;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

pub use config::{ResetMode, SessionConfig, parse_config};
pub use key::session_key;
pub use policy::civil_from_days;

use crate::fsutil;
use crate::message::{ChatMessage, Source};
use archive::Archive;
use index::{Entries, Journal, Record};
use policy::unix_secs;

/// The longest the journal goes without new token counts and activity times while turns
/// are running (see the module doc).
pub const INDEX_WRITE_INTERVAL: Duration = Duration::from_secs(1);

/// An entry idle this long leaves memory for the archive even when its session has not
/// expired (`reset = "none"`, long idle times); it comes back on the next message.
pub const EVICT_IDLE: Duration = Duration::from_secs(3600);

/// How often the entries in memory are checked for ones to archive.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The journal is folded into a new snapshot when it is this many times larger than the
/// snapshot (and at least [`COMPACT_MIN_BYTES`]).
const COMPACT_FACTOR: u64 = 4;
const COMPACT_MIN_BYTES: u64 = 256 * 1024;

/// One conversation's current session, as the index holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionEntry {
    /// The session key ([`session_key`]).
    pub key: String,
    /// `YYYYMMDD_HHMMSS_<8 hex>`; names the transcript `<session_id>.jsonl`.
    pub session_id: String,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds of the last activity (a turn begun or messages appended).
    pub updated_at: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The session a turn runs in.
#[derive(Clone, Debug, PartialEq)]
pub struct Begin {
    pub entry: SessionEntry,
    /// Set on the first turn after an automatic reset of a session that had messages:
    /// tell the user their earlier context is gone.
    pub notice: Option<String>,
}

/// The sessions of one state directory. See the module doc.
pub struct SessionStore {
    /// `state_dir/sessions`.
    dir: PathBuf,
    config: SessionConfig,
    utc_offset_secs: i32,
    state: Mutex<State>,
    /// Held while `index.json` is being replaced, so that two threads never write it at
    /// once (`write_atomic` uses one temporary name per process) and snapshots reach the
    /// disk in the order they were taken. Always taken before `state`, never after.
    writer: Mutex<()>,
    rng: SystemRandom,
}

struct State {
    /// The entries in memory: the conversations active lately.
    entries: Entries,
    journal: Journal,
    archive: Archive,
    /// Keys whose entries changed since they were last written to the journal.
    dirty: HashSet<String>,
    /// When (in the callers' `now`) the dirty entries were last written, and the entries
    /// last checked for archiving.
    last_write: SystemTime,
    last_sweep: SystemTime,
    /// Bytes of `index.json` when it was last written.
    snapshot_len: u64,
}

impl SessionStore {
    /// Open (creating, 0700) `state_dir/sessions`. A corrupt `index.json` is renamed to
    /// `index.json.corrupt-<unix time>` with a warning, and the store starts from the
    /// journal alone; transcripts stay. Errors are real I/O failures (permissions, disk).
    pub fn open(state_dir: &Path, config: SessionConfig, utc_offset_secs: i32) -> io::Result<SessionStore> {
        let dir = state_dir.join("sessions");
        fsutil::create_private_dir(&dir)?;
        let now = SystemTime::now();
        let loaded = index::load(&dir, unix_secs(now).max(0.0) as u64)?;
        if let Some((moved, why)) = &loaded.corrupt {
            log::warn!(
                "sessions: {} was unreadable ({why}); moved it to {} and started a new index \
                 (transcripts are kept; conversations will start fresh sessions)",
                dir.join(index::SNAPSHOT).display(),
                moved.display()
            );
        }
        let mut journal = Journal::open(&dir)?;
        let snapshot = dir.join(index::SNAPSHOT);
        // Fold the journal into a fresh snapshot now, so it starts empty and small, and so
        // `index.json` exists (again, after a corrupt one was set aside).
        let snapshot_len = if loaded.corrupt.is_some() || journal.len() > 0 || !snapshot.exists() {
            let (replacement, len) = index::write_snapshot(&dir, &loaded.entries)?;
            replacement.commit(true)?;
            journal.drop_covered(&dir, journal.len())?;
            len
        } else {
            std::fs::metadata(&snapshot)?.len()
        };
        log::debug!("sessions: {} in the index ({} from the journal)", loaded.entries.len(), loaded.replayed);
        // The first change after opening is written at once; the interval counts from there.
        let state = State {
            entries: loaded.entries,
            journal,
            archive: Archive::new(&dir),
            dirty: HashSet::new(),
            last_write: SystemTime::UNIX_EPOCH,
            last_sweep: SystemTime::UNIX_EPOCH,
            snapshot_len,
        };
        Ok(SessionStore {
            dir,
            config,
            utc_offset_secs,
            state: Mutex::new(state),
            writer: Mutex::new(()),
            rng: SystemRandom::new(),
        })
    }

    /// The session for `source`'s conversation at `now`: the current one, or a new one
    /// when there is none or it expired. After an expiry of a session that had messages,
    /// [`Begin::notice`] says so, this once: the next turn finds the new session current.
    pub fn begin_turn(&self, source: &Source, now: SystemTime) -> io::Result<Begin> {
        let key = session_key(source, self.config.group_sessions_per_user);
        let t = unix_secs(now);
        let mut guard = self.state.lock();
        let state = &mut *guard;
        unarchive(state, &key)?;
        let expired = match state.entries.get_mut(&key) {
            None => None,
            Some(record) => match policy::expiry(&self.config, self.utc_offset_secs, record.updated_at, t) {
                None => {
                    record.updated_at = record.updated_at.max(t);
                    let entry = record.to_entry(&key);
                    state.dirty.insert(key);
                    drop(guard);
                    self.maybe_write(now);
                    return Ok(Begin { entry, notice: None });
                }
                Some(why) => Some((why, record.session_id.to_string())),
            },
        };
        let notice = match &expired {
            Some((why, old)) if transcript::has_messages(&self.dir, old) => Some(policy::notice(*why, &self.config)),
            _ => None,
        };
        let entry = self.create(state, key, t)?;
        let journal = state.journal.handle();
        drop(guard);
        if let Some((why, old)) = expired {
            log::info!("sessions: {} expired ({why:?}); {old} → {}", entry.key, entry.session_id);
        }
        fsutil::sync_data(&journal)?;
        self.maybe_write(now);
        Ok(Begin { entry, notice })
    }

    /// A fresh session for `source`'s conversation (`/new`), whether or not one existed.
    /// The old transcript stays on disk.
    pub fn reset(&self, source: &Source, now: SystemTime) -> io::Result<SessionEntry> {
        let key = session_key(source, self.config.group_sessions_per_user);
        let (entry, journal) = {
            let mut state = self.state.lock();
            let entry = self.create(&mut state, key, unix_secs(now))?;
            (entry, state.journal.handle())
        };
        log::info!("sessions: {} reset by request; now {}", entry.key, entry.session_id);
        fsutil::sync_data(&journal)?;
        self.maybe_write(now);
        Ok(entry)
    }

    /// The last `max_history` messages of session `session_id`, oldest first (none for a
    /// session without a transcript). Reads only the tail of the transcript.
    pub fn history(&self, session_id: &str) -> io::Result<Vec<ChatMessage>> {
        transcript::read_last(&self.dir, session_id, self.config.max_history)
    }

    /// Record a turn of the conversation `key`: append `messages` to its current session's
    /// transcript, add the token counts, mark it active at `now`. `NotFound` if the key
    /// has no session (no [`SessionStore::begin_turn`] came first).
    pub fn append(
        &self,
        key: &str,
        messages: &[ChatMessage],
        input_tokens: u64,
        output_tokens: u64,
        now: SystemTime,
    ) -> io::Result<()> {
        let session_id = {
            let mut state = self.state.lock();
            // A turn longer than the idle time may find its entry archived meanwhile.
            unarchive(&mut state, key)?;
            state.entries.get(key).map(|r| r.session_id.to_string())
        };
        let Some(session_id) = session_id else {
            let message = format!("no session for {key}");
            return Err(io::Error::new(io::ErrorKind::NotFound, message));
        };
        let t = unix_secs(now);
        // Outside the lock: the file is this session's alone (one turn per key at a
        // time), and other conversations need not wait for this write.
        if !messages.is_empty() {
            transcript::append(&self.dir, &session_id, messages, t)?;
        }
        let mut state = self.state.lock();
        // A `/new` between the two locks moved the key on: the turn belonged to the old
        // session, whose transcript got the messages, and whose counts no longer matter.
        if let Some(record) = state.entries.get_mut(key).filter(|r| *r.session_id == *session_id) {
            record.input_tokens = record.input_tokens.saturating_add(input_tokens);
            record.output_tokens = record.output_tokens.saturating_add(output_tokens);
            record.updated_at = record.updated_at.max(t);
            state.dirty.insert(key.to_string());
        }
        drop(state);
        self.maybe_write(now);
        Ok(())
    }

    /// The current session of `key`, if any (expired or not, in memory or archived).
    pub fn get(&self, key: &str) -> Option<SessionEntry> {
        let state = self.state.lock();
        if let Some(record) = state.entries.get(key) {
            return Some(record.to_entry(key));
        }
        match state.archive.get(key) {
            Ok(record) => record.map(|r| r.to_entry(key)),
            Err(e) => {
                log::warn!("sessions: cannot read the archived session of {key}: {e}");
                None
            }
        }
    }

    /// How many sessions are held in memory (the archived ones are not counted).
    pub fn session_count(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Write what changed, and fold the journal into `index.json`. Call at shutdown;
    /// dropping the store does it too, but cannot report an error.
    pub fn flush(&self) -> io::Result<()> {
        let _writing = self.writer.lock();
        write_dirty(&mut self.state.lock())?;
        self.compact()
    }

    /// Once [`INDEX_WRITE_INTERVAL`] has passed since the last time: append the changed
    /// entries to the journal, archive the quiet ones (every [`SWEEP_INTERVAL`]), and
    /// compact the journal when it has grown enough. Runs on the caller's thread; a
    /// failure is logged and retried later (the turn itself succeeded).
    fn maybe_write(&self, now: SystemTime) {
        let since = |then: SystemTime, interval: Duration| now.duration_since(then).map_or(true, |d| d >= interval);
        let compact_due = {
            let mut guard = self.state.lock();
            let state = &mut *guard;
            // A clock that went backwards counts as "due", so a write is not put off
            // until the clock catches up.
            let sweep_due = since(state.last_sweep, SWEEP_INTERVAL);
            if !since(state.last_write, INDEX_WRITE_INTERVAL) || (state.dirty.is_empty() && !sweep_due) {
                return;
            }
            state.last_write = now;
            if let Err(e) = write_dirty(state) {
                log::warn!("sessions: could not append to {}: {e}", self.dir.join(index::JOURNAL).display());
            }
            if sweep_due {
                state.last_sweep = now;
                self.sweep(state, unix_secs(now));
            }
            state.journal.len() > (state.snapshot_len * COMPACT_FACTOR).max(COMPACT_MIN_BYTES)
        };
        // Another thread compacting right now: nothing left to do.
        let Some(_writing) = self.writer.try_lock().filter(|_| compact_due) else { return };
        if let Err(e) = self.compact() {
            log::warn!("sessions: could not write {}: {e}", self.dir.join(index::SNAPSHOT).display());
        }
    }

    /// Move the entries that went quiet to the archive. Only clean entries move (the
    /// caller has just written the dirty ones), so the journal is never behind the archive.
    fn sweep(&self, state: &mut State, t: f64) {
        let idle = EVICT_IDLE.as_secs_f64();
        let quiet: Vec<(String, Record)> = state
            .entries
            .iter()
            .filter(|(key, r)| {
                !state.dirty.contains(*key)
                    && (t - r.updated_at > idle
                        || policy::expiry(&self.config, self.utc_offset_secs, r.updated_at, t).is_some())
            })
            .map(|(key, r)| (key.clone(), r.clone()))
            .collect();
        if quiet.is_empty() {
            return;
        }
        if let Err(e) = state.archive.put(&quiet) {
            log::warn!("sessions: could not archive {} quiet sessions: {e}", quiet.len());
            return;
        }
        for (key, _) in &quiet {
            state.entries.remove(key);
        }
        if state.entries.len() < state.entries.capacity() / 4 {
            state.entries.shrink_to_fit();
        }
        log::debug!("sessions: archived {} quiet sessions; {} in memory", quiet.len(), state.entries.len());
    }

    /// Write a snapshot of the entries in memory to a temporary file under the state
    /// lock (streamed: page-cache writes, no sync), then without it sync the archive
    /// buckets holding entries that left memory, commit the snapshot, and drop the
    /// journal lines it covers. The caller holds `writer`.
    fn compact(&self) -> io::Result<()> {
        let (replacement, len, covered, buckets) = {
            let mut state = self.state.lock();
            let (replacement, len) = index::write_snapshot(&self.dir, &state.entries)?;
            (replacement, len, state.journal.len(), state.archive.take_unsynced())
        };
        if let Err(e) = Archive::sync(&self.dir, &buckets) {
            self.state.lock().archive.restore_unsynced(buckets);
            return Err(e);
        }
        replacement.commit(true)?;
        let mut state = self.state.lock();
        state.snapshot_len = len;
        state.journal.drop_covered(&self.dir, covered)
    }

    /// A new session for `key`, journaled (not yet synced) and made current.
    fn create(&self, state: &mut State, key: String, t: f64) -> io::Result<SessionEntry> {
        let session_id = self.new_session_id(&state.entries, t)?.into_boxed_str();
        let record = Record { session_id, created_at: t, updated_at: t, input_tokens: 0, output_tokens: 0 };
        // Journal first: if that fails, the key keeps its old session and the caller
        // reports the error, rather than running a turn in a session nothing records.
        state.journal.append(&index::line(&key, &record)?)?;
        let entry = record.to_entry(&key);
        // The line holds the whole entry: nothing of it is left to write.
        state.dirty.remove(&key);
        state.entries.insert(key, record);
        Ok(entry)
    }
    /// A session id used by no current session and no transcript on disk. 32 random bits
    /// collide within one second only among tens of thousands of new sessions, but a
    /// benchmark makes that many, so collisions are checked, not assumed away.
    fn new_session_id(&self, entries: &Entries, t: f64) -> io::Result<String> {
        for _ in 0..16 {
            let mut random = [0u8; 4];
            self.rng.fill(&mut random).map_err(|_| io::Error::other("the system random source failed"))?;
            let id = policy::session_id(t, self.utc_offset_secs, u32::from_be_bytes(random));
            let taken = entries.values().any(|r| *r.session_id == *id) || transcript::path(&self.dir, &id)?.exists();
            if !taken {
                return Ok(id);
            }
        }
        Err(io::Error::other("could not find an unused session id"))
    }
}

impl Drop for SessionStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::warn!("sessions: could not write {} at exit: {e}", self.dir.join(index::SNAPSHOT).display());
        }
    }
}

/// Bring `key`'s archived entry back into memory, if it is not there already.
fn unarchive(state: &mut State, key: &str) -> io::Result<()> {
    if !state.entries.contains_key(key)
        && let Some(record) = state.archive.get(key)?
    {
        state.entries.insert(key.to_string(), record);
    }
    Ok(())
}

/// Append the changed entries to the journal, one line each. On an error they stay
/// dirty, for the next try.
fn write_dirty(state: &mut State) -> io::Result<()> {
    if state.dirty.is_empty() {
        return Ok(());
    }
    let mut lines = Vec::new();
    for key in &state.dirty {
        if let Some(record) = state.entries.get(key) {
            lines.extend(index::line(key, record)?);
        }
    }
    state.journal.append(&lines)?;
    state.dirty.clear();
    Ok(())
}
