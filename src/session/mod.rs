/*!
Sessions: one conversation per session key, its history on disk, and when it starts over.

A message's [`Source`] names its conversation through [`session_key`]. The key points at
the current session, whose id names a JSONL transcript under `state_dir/sessions/`. A
session expires by the `[sessions]` policy (idle time, a daily hour, both, or never) and
is replaced lazily, on the conversation's next message, which then carries a one-time
notice for the user; `/new` replaces it at once ([`SessionStore::reset`]).

[`SessionStore`] is shared by the router's worker threads (`Arc<SessionStore>`); its
methods take `&self` and lock one internal mutex for short, in-memory critical sections.
Times come in as `SystemTime` arguments, so tests (and the lead's benchmark) control them.

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
- *Token counts and `updated_at`* live in `index.json`, rewritten atomically at most
  once per [`INDEX_WRITE_INTERVAL`], by whichever worker thread appends after the
  interval passed, and by [`SessionStore::flush`] (called at shutdown, and on drop). A
  crash loses at most the last interval's counts and activity times; with 10,000 sessions
  a rewrite per turn would cost more than the turn.
*/

mod config;
mod index;
mod key;
mod policy;
mod transcript;

#[cfg(test)]
mod tests;

use std::fs::File;
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
use index::{Entries, Journal, Record};
use policy::unix_secs;

/// The longest `index.json` goes without reflecting new token counts and activity times
/// while turns are running (see the module doc).
pub const INDEX_WRITE_INTERVAL: Duration = Duration::from_secs(1);

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
    /// The source of the latest message: where an `origin` delivery goes.
    pub origin: Source,
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
    /// The journal, for `fdatasync` outside the `state` lock.
    journal_sync: File,
    rng: SystemRandom,
}

struct State {
    entries: Entries,
    journal: Journal,
    /// Entries changed since the last snapshot was taken.
    dirty: bool,
    /// When (in the callers' `now`) the last debounced snapshot was due.
    last_snapshot: SystemTime,
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
        // Fold the journal into a fresh snapshot now, so it starts empty and small, and so
        // `index.json` exists again after a corrupt one was set aside.
        if loaded.corrupt.is_some() || journal.len() > 0 {
            index::write_snapshot(&dir, &index::encode(&loaded.entries)?)?;
            journal.truncate_if(journal.len())?;
        }
        log::debug!("sessions: {} in the index ({} from the journal)", loaded.entries.len(), loaded.replayed);
        let journal_sync = journal.sync_handle()?;
        // The first change after opening is written at once; the interval counts from there.
        let state = State { entries: loaded.entries, journal, dirty: false, last_snapshot: SystemTime::UNIX_EPOCH };
        Ok(SessionStore {
            dir,
            config,
            utc_offset_secs,
            state: Mutex::new(state),
            writer: Mutex::new(()),
            journal_sync,
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
        let expired = match state.entries.get_mut(&key) {
            None => None,
            Some(record) => match policy::expiry(&self.config, self.utc_offset_secs, record.updated_at, t) {
                None => {
                    touch(record, source, t);
                    let entry = record.to_entry(&key);
                    state.dirty = true;
                    drop(guard);
                    self.maybe_snapshot(now);
                    return Ok(Begin { entry, notice: None });
                }
                Some(why) => Some((why, record.session_id.clone())),
            },
        };
        let notice = match &expired {
            Some((why, old)) if transcript::has_messages(&self.dir, old) => Some(policy::notice(*why, &self.config)),
            _ => None,
        };
        let entry = self.create(state, key, source, t)?;
        drop(guard);
        if let Some((why, old)) = expired {
            log::info!("sessions: {} expired ({why:?}); {old} → {}", entry.key, entry.session_id);
        }
        fsutil::sync_data(&self.journal_sync)?;
        self.maybe_snapshot(now);
        Ok(Begin { entry, notice })
    }

    /// A fresh session for `source`'s conversation (`/new`), whether or not one existed.
    /// The old transcript stays on disk.
    pub fn reset(&self, source: &Source, now: SystemTime) -> io::Result<SessionEntry> {
        let key = session_key(source, self.config.group_sessions_per_user);
        let entry = self.create(&mut self.state.lock(), key, source, unix_secs(now))?;
        log::info!("sessions: {} reset by request; now {}", entry.key, entry.session_id);
        fsutil::sync_data(&self.journal_sync)?;
        self.maybe_snapshot(now);
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
        let Some(session_id) = self.state.lock().entries.get(key).map(|r| r.session_id.clone()) else {
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
        if let Some(record) = state.entries.get_mut(key).filter(|r| r.session_id == session_id) {
            record.input_tokens = record.input_tokens.saturating_add(input_tokens);
            record.output_tokens = record.output_tokens.saturating_add(output_tokens);
            record.updated_at = record.updated_at.max(t);
            state.dirty = true;
        }
        drop(state);
        self.maybe_snapshot(now);
        Ok(())
    }

    /// The current session of `key`, if any (expired or not).
    pub fn get(&self, key: &str) -> Option<SessionEntry> {
        self.state.lock().entries.get(key).map(|r| r.to_entry(key))
    }

    pub fn session_count(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Write `index.json` now if anything changed since the last write. Call at shutdown;
    /// dropping the store does it too, but cannot report an error.
    pub fn flush(&self) -> io::Result<()> {
        let _writing = self.writer.lock();
        self.write_snapshot()
    }

    /// Rewrite `index.json` if entries changed and the last write is at least
    /// [`INDEX_WRITE_INTERVAL`] old. Runs on the caller's thread; a failure is logged and
    /// retried on a later turn (the turn itself succeeded; the journal holds the mappings).
    fn maybe_snapshot(&self, now: SystemTime) {
        {
            let mut state = self.state.lock();
            // A clock that went backwards counts as "due", so a snapshot is not put off
            // until the clock catches up.
            let due = now.duration_since(state.last_snapshot).map_or(true, |d| d >= INDEX_WRITE_INTERVAL);
            if !state.dirty || !due {
                return;
            }
            // Claim this interval, so the other workers do not all line up to write.
            state.last_snapshot = now;
        }
        // Another thread writing right now: the next interval's write catches up.
        let Some(_writing) = self.writer.try_lock() else { return };
        if let Err(e) = self.write_snapshot() {
            log::warn!("sessions: could not write {}: {e}", self.dir.join(index::SNAPSHOT).display());
        }
    }

    /// Take a snapshot under the state lock, write it without, then drop the journal
    /// lines it covers. The caller holds `writer`.
    fn write_snapshot(&self) -> io::Result<()> {
        let (bytes, journal_len) = {
            let mut state = self.state.lock();
            if !state.dirty && state.journal.len() == 0 {
                return Ok(());
            }
            let bytes = index::encode(&state.entries)?;
            state.dirty = false;
            (bytes, state.journal.len())
        };
        if let Err(e) = index::write_snapshot(&self.dir, &bytes) {
            self.state.lock().dirty = true;
            return Err(e);
        }
        self.state.lock().journal.truncate_if(journal_len)
    }

    /// A new session for `key`, journaled (not yet synced) and made current.
    fn create(&self, state: &mut State, key: String, source: &Source, t: f64) -> io::Result<SessionEntry> {
        let session_id = self.new_session_id(&state.entries, t)?;
        let record = Record {
            session_id,
            created_at: t,
            updated_at: t,
            origin: source.clone(),
            input_tokens: 0,
            output_tokens: 0,
        };
        // Journal first: if that fails, the key keeps its old session and the caller
        // reports the error, rather than running a turn in a session nothing records.
        state.journal.append(&key, &record)?;
        let entry = record.to_entry(&key);
        state.entries.insert(key, record);
        state.dirty = true;
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
            let taken = entries.values().any(|r| r.session_id == id) || transcript::path(&self.dir, &id)?.exists();
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

/// Mark `record` active at `t`, and remember the latest source (a renamed chat, a user's
/// new display name) so that `origin` deliveries use it.
fn touch(record: &mut Record, source: &Source, t: f64) {
    record.updated_at = record.updated_at.max(t);
    if record.origin != *source {
        record.origin = source.clone();
    }
}
