/*!
The pairing store: how a stranger becomes a known user without editing the config.

A stranger who writes to the bot in a DM gets an 8-character code; the owner runs
`switchboard pairing approve <platform> <code>` and from then on that user is allowed on
that platform instance. The gateway and the CLI are two processes sharing
`state_dir/pairing/`, so:

- every read-modify-write happens under an exclusive `flock` on `pairing/.lock`, held for
  the few microseconds of one update, so neither process loses the other's change;
- the gateway reads the files again on each decision that needs them (they are tiny, and
  only strangers reach this store), so an approval takes effect on the next message;
- files are replaced atomically (`fsutil::write_atomic`), so a lock-free reader sees the
  old or the new state, never a torn one;
- a file that does not parse is moved aside as `<file>.corrupt-<unix time>` and read as
  empty: a broken file costs pending requests, never a crash loop.

The code itself is never stored: each pending request keeps a random salt and
`SHA-256(salt ‖ 0 ‖ code)`. The only places a code exists in clear are the DM reply and
the owner's command line. The limits (1 h validity, 3 pending per platform, one request
per user per 10 min, 5 wrong approvals lock approvals for 1 h) follow the reference
gateway; the lockout makes guessing useless even for someone who can run the CLI but
cannot read the chat.

One JSON file per platform instance, `pairing/<platform>.json`, holds everything about it
(pending, approved, rate limits, failures, lockout): one file means one atomic write per
change, and a platform's state never depends on another file being consistent with it.
*/

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// The characters of a code: no 0/O or 1/I, which read alike. 32 of them, so a random
/// byte modulo 32 picks one uniformly.
pub const CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Characters in a code: 32^8 ≈ 10^12 possibilities.
pub const CODE_LEN: usize = 8;
/// How long a code can be approved after it was issued.
pub const CODE_TTL: Duration = Duration::from_secs(3600);
/// Pending codes per platform instance: a flood of strangers cannot fill the store.
pub const MAX_PENDING: usize = 3;
/// One code request per user in this interval.
pub const REQUEST_INTERVAL: Duration = Duration::from_secs(600);
/// Wrong approvals in a row that lock approvals on a platform.
pub const MAX_FAILURES: u32 = 5;
/// How long approvals stay refused after [`MAX_FAILURES`] wrong codes.
pub const LOCKOUT: Duration = Duration::from_secs(3600);

/// A freshly issued code. `Debug` hides it, so logging a [`Request`] by mistake cannot
/// leak it; [`PairingCode::reveal`] is the one way to read it (for the DM reply).
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode(String);

impl PairingCode {
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(<hidden>)")
    }
}

/// The outcome of a stranger asking for a code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A new code. Earlier codes of this user stay valid until they expire: the owner
    /// may already hold one, and should not see it fail because the user wrote again.
    Issued(PairingCode),
    /// This user asked less than [`REQUEST_INTERVAL`] ago: no new code.
    AlreadyPending,
    /// The platform already has [`MAX_PENDING`] requests from other users.
    TooMany,
}

/// A user approved on a platform instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovedUser {
    pub platform: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub approved_at: SystemTime,
}

/// A code request waiting for the owner. The code is not here: it was never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRequest {
    pub platform: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub requested_at: SystemTime,
    pub expires_at: SystemTime,
}

/// Everything the owner may want to see about one platform instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformPairing {
    pub platform: String,
    pub pending: Vec<PendingRequest>,
    pub approved: Vec<ApprovedUser>,
    /// When approvals are locked after wrong codes: the time left.
    pub locked_for: Option<Duration>,
}

/// Why a pairing operation failed. No variant ever holds a code.
#[derive(Debug)]
#[non_exhaustive]
pub enum PairingError {
    /// The name cannot name a pairing file (only `a-z`, `0-9`, `_`, `-`).
    BadPlatform(String),
    /// The text is not 8 characters of [`CODE_ALPHABET`]; not counted as a wrong code.
    MalformedCode,
    /// No pending request has this code (wrong, or expired); counted toward the lockout.
    WrongCode { attempts_left: u32 },
    /// Too many wrong codes: approvals on this platform are refused for `remaining`.
    LockedOut { remaining: Duration },
    /// The system random generator failed.
    Random,
    /// A pairing file or the lock could not be read or written.
    Io { path: PathBuf, source: io::Error },
}

impl fmt::Display for PairingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PairingError::BadPlatform(name) => write!(f, "`{name}` is not a valid platform name"),
            PairingError::MalformedCode => {
                let alphabet = std::str::from_utf8(CODE_ALPHABET).unwrap_or_default();
                write!(f, "a pairing code is {CODE_LEN} characters from {alphabet}")
            }
            PairingError::WrongCode { attempts_left } => write!(
                f,
                "no pending pairing request has this code (wrong, or expired after 1 h); \
                 {attempts_left} more wrong code(s) lock approvals for 1 h"
            ),
            PairingError::LockedOut { remaining } => write!(
                f,
                "too many wrong pairing codes: approvals on this platform are locked for another {}",
                format_age(*remaining)
            ),
            PairingError::Random => write!(f, "the system random generator failed"),
            PairingError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for PairingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PairingError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// `pairing/<platform>.json`. Times are Unix seconds. Unknown fields are ignored and
/// missing ones default, so an older or newer switchboard can read it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct State {
    pending: Vec<Pending>,
    approved: Vec<Approved>,
    /// User id → time of their last code request, for the per-user rate limit.
    requests: BTreeMap<String, u64>,
    /// Wrong approvals since the last success or lockout.
    failures: u32,
    locked_until: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pending {
    user_id: String,
    user_name: Option<String>,
    created_at: u64,
    /// 16 random bytes, hex.
    salt: String,
    /// `hex(SHA-256(salt ‖ 0 ‖ code))`.
    hash: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Approved {
    user_id: String,
    user_name: Option<String>,
    approved_at: u64,
}

impl State {
    /// Forget what has run out at `now`: expired codes, old rate-limit entries, an
    /// ended lockout. Keeps the files small without a cleanup task.
    fn prune(&mut self, now: u64) {
        self.pending.retain(|p| now < p.created_at.saturating_add(CODE_TTL.as_secs()));
        self.requests.retain(|_, at| now < at.saturating_add(REQUEST_INTERVAL.as_secs()));
        if self.locked_until.is_some_and(|until| now >= until) {
            self.locked_until = None;
        }
    }

    fn request(
        &mut self,
        rng: &SystemRandom,
        user_id: &str,
        user_name: Option<&str>,
        now: u64,
    ) -> Result<Request, PairingError> {
        self.prune(now);
        if self.requests.contains_key(user_id) {
            return Ok(Request::AlreadyPending);
        }
        if self.pending.len() >= MAX_PENDING {
            return Ok(Request::TooMany);
        }
        let code = new_code(rng)?;
        let salt = hex(&random_bytes::<16>(rng)?);
        let hash = code_hash(&salt, &code);
        let user_name = user_name.map(str::to_string);
        self.pending.push(Pending { user_id: user_id.to_string(), user_name, created_at: now, salt, hash });
        self.requests.insert(user_id.to_string(), now);
        Ok(Request::Issued(PairingCode(code)))
    }

    /// Approve the request holding `code` (already normalised), or count a failure.
    fn approve(&mut self, code: &str, now: u64) -> Result<Approved, PairingError> {
        self.prune(now);
        if let Some(until) = self.locked_until {
            return Err(PairingError::LockedOut { remaining: Duration::from_secs(until.saturating_sub(now)) });
        }
        let Some(i) = self.pending.iter().position(|p| code_hash(&p.salt, code) == p.hash) else {
            // Saturating: the count comes from a file.
            self.failures = self.failures.saturating_add(1);
            if self.failures >= MAX_FAILURES {
                self.failures = 0;
                self.locked_until = Some(now.saturating_add(LOCKOUT.as_secs()));
                return Err(PairingError::LockedOut { remaining: LOCKOUT });
            }
            return Err(PairingError::WrongCode { attempts_left: MAX_FAILURES - self.failures });
        };
        let p = self.pending.remove(i);
        // The user's other codes have served their purpose.
        self.pending.retain(|other| other.user_id != p.user_id);
        self.failures = 0;
        self.approved.retain(|a| a.user_id != p.user_id);
        let approved = Approved { user_id: p.user_id, user_name: p.user_name, approved_at: now };
        self.approved.push(approved.clone());
        Ok(approved)
    }

    /// Drop the user's approval and any pending request; true when there was either.
    fn revoke(&mut self, user_id: &str) -> bool {
        let before = (self.approved.len(), self.pending.len());
        self.approved.retain(|a| a.user_id != user_id);
        self.pending.retain(|p| p.user_id != user_id);
        // Without this, a user revoked within 10 minutes of asking would be told their
        // request is pending when nothing is.
        self.requests.remove(user_id);
        before != (self.approved.len(), self.pending.len())
    }
}

/// The pairing files of one state directory. Cheap to create; every method opens the
/// files it needs, so any number of handles (threads, processes) can share a directory.
#[derive(Clone, Debug)]
pub struct Pairing {
    dir: PathBuf,
    rng: SystemRandom,
}

impl Pairing {
    /// The store in `state_dir/pairing/`. Nothing is created until something is written.
    pub fn open(state_dir: &Path) -> Pairing {
        Pairing { dir: state_dir.join("pairing"), rng: SystemRandom::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether `user_id` was approved on `platform`. Reads the file afresh.
    pub fn is_approved(&self, platform: &str, user_id: &str) -> Result<bool, PairingError> {
        Ok(self.snapshot(platform)?.approved.iter().any(|a| a.user_id == user_id))
    }

    /// A stranger asks for a code (by writing to the bot in a DM).
    pub fn request(
        &self,
        platform: &str,
        user_id: &str,
        user_name: Option<&str>,
        now: SystemTime,
    ) -> Result<Request, PairingError> {
        self.update(platform, |s| s.request(&self.rng, user_id, user_name, unix(now)))?
    }

    /// Approve the pending request holding `code` (case and surrounding spaces ignored).
    pub fn approve(&self, platform: &str, code: &str, now: SystemTime) -> Result<ApprovedUser, PairingError> {
        let code = normalise_code(code)?;
        let a = self.update(platform, |s| s.approve(&code, unix(now)))??;
        Ok(ApprovedUser {
            platform: platform.to_string(),
            user_id: a.user_id,
            user_name: a.user_name,
            approved_at: time(a.approved_at),
        })
    }

    /// Remove the user's approval (and pending request). `Ok(false)`: there was none.
    pub fn revoke(&self, platform: &str, user_id: &str) -> Result<bool, PairingError> {
        self.update(platform, |s| s.revoke(user_id))
    }

    /// The platforms with a pairing file, sorted.
    pub fn platforms(&self) -> Result<Vec<String>, PairingError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io_error(&self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| self.io_error(&self.dir, e))?.file_name();
            // Temp files (`.x.json.tmp.PID`), the lock and `.corrupt-` files do not match.
            if let Some(platform) = name.to_str().and_then(|n| n.strip_suffix(".json"))
                && valid_platform(platform)
            {
                out.push(platform.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// Pending requests (still valid at `now`), approved users and lockouts of every
    /// platform with a pairing file. Expired entries are hidden, not removed; only a corrupt
    /// file is touched (moved aside).
    pub fn list(&self, now: SystemTime) -> Result<Vec<PlatformPairing>, PairingError> {
        let now_s = unix(now);
        let mut out = Vec::new();
        for platform in self.platforms()? {
            let mut state = self.snapshot(&platform)?;
            state.prune(now_s);
            let pending = state.pending.into_iter().map(|p| PendingRequest {
                platform: platform.clone(),
                user_id: p.user_id,
                user_name: p.user_name,
                requested_at: time(p.created_at),
                expires_at: time(p.created_at) + CODE_TTL,
            });
            let approved = state.approved.into_iter().map(|a| ApprovedUser {
                platform: platform.clone(),
                user_id: a.user_id,
                user_name: a.user_name,
                approved_at: time(a.approved_at),
            });
            let locked_for = state.locked_until.map(|until| Duration::from_secs(until.saturating_sub(now_s)));
            let (pending, approved) = (pending.collect(), approved.collect());
            out.push(PlatformPairing { platform, pending, approved, locked_for });
        }
        Ok(out)
    }

    /// Run `f` on the platform's state under the directory lock, and write the result
    /// back if it changed.
    fn update<T>(&self, platform: &str, f: impl FnOnce(&mut State) -> T) -> Result<T, PairingError> {
        let path = self.file(platform)?;
        let _lock = self.lock()?;
        let mut state = self.load_locked(&path)?;
        let before = state.clone();
        let out = f(&mut state);
        if state != before {
            // Serialising plain strings and numbers cannot fail.
            let bytes = serde_json::to_vec_pretty(&state).expect("pairing state serialises");
            fsutil::write_atomic(&path, &bytes).map_err(|e| self.io_error(&path, e))?;
        }
        Ok(out)
    }

    /// The platform's state without taking the lock: files are replaced by rename, so
    /// this sees a whole version. Only a corrupt file needs the lock, to move it aside.
    fn snapshot(&self, platform: &str) -> Result<State, PairingError> {
        let path = self.file(platform)?;
        match read_state(&path).map_err(|e| self.io_error(&path, e))? {
            Ok(state) => Ok(state),
            // Under the lock the file is read again: another process may have replaced it.
            Err(_) => self.update(platform, |s| s.clone()),
        }
    }

    /// Read the state; a file that does not parse is moved aside and read as empty.
    /// Call with the lock held, so the file moved aside is the one that was read.
    fn load_locked(&self, path: &Path) -> Result<State, PairingError> {
        let parse_error = match read_state(path).map_err(|e| self.io_error(path, e))? {
            Ok(state) => return Ok(state),
            Err(e) => e,
        };
        let stamp = unix(SystemTime::now());
        let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
        fs::rename(path, &aside).map_err(|e| self.io_error(path, e))?;
        log::warn!(
            "pairing file {} is unreadable ({parse_error}); kept it as {} and started afresh",
            path.display(),
            aside.display()
        );
        Ok(State::default())
    }

    /// Take the exclusive lock on `pairing/.lock`, blocking until the other process is
    /// done (it holds it only for one update). Released when the file is dropped.
    fn lock(&self) -> Result<File, PairingError> {
        let path = self.dir.join(".lock");
        fsutil::create_private_dir(&self.dir).map_err(|e| self.io_error(&self.dir, e))?;
        let file = fsutil::open_lock_file(&path).map_err(|e| self.io_error(&path, e))?;
        file.lock().map_err(|e| self.io_error(&path, e))?;
        Ok(file)
    }

    fn file(&self, platform: &str) -> Result<PathBuf, PairingError> {
        if !valid_platform(platform) {
            return Err(PairingError::BadPlatform(platform.to_string()));
        }
        Ok(self.dir.join(format!("{platform}.json")))
    }

    fn io_error(&self, path: &Path, source: io::Error) -> PairingError {
        PairingError::Io { path: path.to_path_buf(), source }
    }
}

/// The file's state: outer `Err` for I/O, inner `Err` when it does not parse. A missing
/// file is an empty state.
fn read_state(path: &Path) -> io::Result<Result<State, serde_json::Error>> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Ok(State::default())),
        Err(e) => Err(e),
    }
}

/// Platform names become file names: the config's rule (`a-z`, `0-9`, `_`, `-`) keeps
/// them inside the directory.
fn valid_platform(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Upper-case and trim a code typed by the owner; reject what cannot be a code.
fn normalise_code(text: &str) -> Result<String, PairingError> {
    let code = text.trim().to_ascii_uppercase();
    if code.len() != CODE_LEN || !code.bytes().all(|b| CODE_ALPHABET.contains(&b)) {
        return Err(PairingError::MalformedCode);
    }
    Ok(code)
}

fn new_code(rng: &SystemRandom) -> Result<String, PairingError> {
    // 256 is a multiple of 32, so `b % 32` is uniform over the alphabet.
    Ok(random_bytes::<CODE_LEN>(rng)?.iter().map(|b| char::from(CODE_ALPHABET[usize::from(b % 32)])).collect())
}

fn random_bytes<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], PairingError> {
    let mut buf = [0u8; N];
    rng.fill(&mut buf).map_err(|_| PairingError::Random)?;
    Ok(buf)
}

fn code_hash(salt: &str, code: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt.as_bytes());
    ctx.update(&[0]);
    ctx.update(code.as_bytes());
    hex(ctx.finish().as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unix seconds; a clock before 1970 reads as 0.
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The time `secs` after the epoch; absurd values from a damaged file read as "now".
fn time(secs: u64) -> SystemTime {
    UNIX_EPOCH.checked_add(Duration::from_secs(secs)).unwrap_or_else(SystemTime::now)
}

/// `42s`, `5m`, `3h`, `2d`: for lists and messages, rounded down.
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
