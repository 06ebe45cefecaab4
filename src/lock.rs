/*!
Host-wide bot-token locks.

Telegram allows one `getUpdates` consumer per token; two gateways on one host polling
the same bot would knock each other off with 409 Conflict. Before connecting, an adapter
with a bot token binds the abstract Unix socket `@switchboard/<kind>-<16 hex>`, the hex
being the start of `sha256(server, token)`. There is no directory to agree on: an abstract
socket name is host-wide (within a network namespace) whatever user, environment or
working directory starts the gateway, and the kernel frees it when the process dies, so
a crashed gateway never blocks the next start. The raw token never touches disk.

The server (the platform's API base URL) is part of the name because two pollers only
conflict on one server: a bot on a fake or self-hosted Bot API server is another consumer.

Who holds a lock: a process that fails to bind connects to the socket and reads the
holder's PID with `SO_PEERCRED`, which the kernel translates into our PID namespace (0 when
the holder's namespace is not visible). Whether *this* process holds it is decided by
bookkeeping ([`HELD`]), never by comparing PID numbers: a holder in another PID namespace
may carry our number. Each held lock has a small thread that accepts and drops those
connections, so the socket's backlog never fills.

The other lock here is per state directory ([`StateLock`]): one gateway per state
directory, because two would rewrite each other's inbox journal and status. That one is
an `flock` on `state_dir/gateway.lock`: the directory is what they share.
*/

use std::collections::BTreeSet;
use std::fs::{File, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use crate::fsutil;
use crate::platform::Fatal;

/// The lock names this process holds. Checked and changed under its mutex together with
/// the bind, so two generations of one platform never race for a name.
static HELD: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// A held token lock; released when dropped.
#[derive(Debug)]
pub struct TokenLock {
    name: String,
    stop: Arc<AtomicBool>,
    reaper: Option<JoinHandle<()>>,
}

impl TokenLock {
    /// Take the lock for `token` of platform `kind` on `server`, or explain who holds it.
    pub fn acquire(kind: &str, server: &str, token: &str) -> Result<TokenLock, Fatal> {
        let name = lock_name(kind, server, token);
        let code = format!("{kind}_token_lock");
        // A poisoned set is still a valid set: the panicking thread held no half-change.
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if held.contains(&name) {
            // An earlier generation of this platform whose thread has not let go yet (the
            // config refuses two instances with one token): that heals by itself.
            return Err(Fatal::retryable(
                code,
                "an earlier connection of this platform still holds the bot token lock",
            ));
        }
        let unusable = |e: io::Error| {
            Fatal::permanent(code.clone(), format!("cannot create the bot token lock (abstract socket @{name}): {e}"))
        };
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(unusable)?;
        let listener = match UnixListener::bind_addr(&addr) {
            Ok(listener) => listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(held_by(holder_pid(&name), kind)),
            Err(e) => return Err(unusable(e)),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let reaper = spawn_reaper(listener, stop.clone(), kind).map_err(unusable)?;
        held.insert(name.clone());
        Ok(TokenLock { name, stop, reaper: Some(reaper) })
    }

    /// The abstract socket name, without the leading NUL (`switchboard/telegram-…`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TokenLock {
    fn drop(&mut self) {
        // Wake the reaper with a connection of our own; it sees `stop` and closes the
        // listener, which frees the name. Joined, so the name is free when drop returns.
        self.stop.store(true, Ordering::SeqCst);
        let _ = connect(&self.name);
        if let Some(reaper) = self.reaper.take() {
            let _ = reaper.join();
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.name);
    }
}

/// `state_dir/gateway.lock`, held by the one gateway running on that state directory.
/// The kernel drops it when the process dies; the file stays (removing it would race
/// with the next gateway locking it) and holds the PID of the gateway holding it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Why a gateway cannot have its state directory.
#[derive(Debug)]
pub enum StateLockError {
    /// Another gateway runs on it; its PID when the lock file names one.
    Held(Option<u32>),
    /// The lock file cannot be created or locked (read-only, not a directory ...).
    Io(io::Error),
}

impl StateLock {
    pub const FILE: &'static str = "gateway.lock";

    /// Take `state_dir/gateway.lock` (the directory must exist) and write our PID in it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, StateLockError> {
        let mut file = fsutil::open_lock_file(&state_dir.join(Self::FILE)).map_err(StateLockError::Io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StateLockError::Held(read_pid(&mut file))),
            Err(TryLockError::Error(e)) => return Err(StateLockError::Io(e)),
        }
        let pid = std::process::id();
        let written = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()));
        written.map_err(StateLockError::Io)?;
        Ok(StateLock { _file: file })
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Accepts and drops the connections of processes asking who holds the lock.
fn spawn_reaper(listener: UnixListener, stop: Arc<AtomicBool>, kind: &str) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(format!("lock-{kind}")).stack_size(64 * 1024).spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if conn.is_err() {
                // Out of file descriptors, say: the listener (the lock) stays; only
                // someone asking who holds it goes unanswered for a moment.
                thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    })
}

/// Another process holds the lock: for good (a second gateway would fight it for updates).
fn held_by(holder: Option<u32>, kind: &str) -> Fatal {
    let who = match holder {
        Some(pid) => format!("PID {pid}"),
        None => "PID unknown: another PID namespace or container".to_string(),
    };
    Fatal::permanent(
        format!("{kind}_token_lock"),
        format!("another switchboard ({who}) is already using this {} bot token", title(kind)),
    )
}

/// `switchboard/<kind>-<first 16 hex of sha256(server NUL token)>`
pub fn lock_name(kind: &str, server: &str, token: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(server.trim_end_matches('/').as_bytes());
    ctx.update(b"\0");
    ctx.update(token.as_bytes());
    let digest = ctx.finish();
    let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("switchboard/{kind}-{hex}")
}

/// The PID of the process listening on abstract socket `name`, as seen from our PID
/// namespace; `None` when it cannot be told (not visible, or it does not answer).
fn holder_pid(name: &str) -> Option<u32> {
    let stream = connect(name).ok()?;
    peer_pid(&stream).filter(|&pid| pid != 0)
}

/// Connect to abstract socket `name` without ever blocking: a holder whose backlog is
/// full gives `WouldBlock` instead of hanging the adapter.
fn connect(name: &str) -> io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    let path = name.as_bytes();
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own; the stream closes it on every path.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() + 1 > addr.sun_path.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // sun_path[0] stays 0: the abstract namespace. The name follows, unterminated.
    for (dst, src) in addr.sun_path[1..].iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + path.len()) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un and `len` covers exactly the bytes set.
    let rc = unsafe { libc::connect(fd, (&raw const addr).cast(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}

/// The peer's PID from `SO_PEERCRED` (0 when its PID namespace is not visible from ours).
fn peer_pid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a properly sized ucred.
    let rc = unsafe {
        libc::getsockopt(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &raw mut len)
    };
    (rc == 0).then_some(cred.pid).and_then(|pid| u32::try_from(pid).ok())
}

/// `telegram` → `Telegram`, for messages.
fn title(kind: &str) -> String {
    let mut chars = kind.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token no other test process on this host uses (locks are host-wide).
    fn token(label: &str) -> String {
        format!("{}:{label}-{:?}", std::process::id(), std::time::SystemTime::now())
    }

    #[test]
    fn one_gateway_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(dir.path().join(StateLock::FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // flock locks belong to the open file: a second open, even in this process, is refused.
        match StateLock::acquire(dir.path()) {
            Err(StateLockError::Held(Some(p))) => assert_eq!(p, std::process::id()),
            other => panic!("{other:?}"),
        }
        drop(first);
        assert!(StateLock::acquire(dir.path()).is_ok());
    }

    #[test]
    fn lock_name_hashes_server_and_token() {
        let name = lock_name("telegram", "https://api.telegram.org", "secret");
        assert!(name.starts_with("switchboard/telegram-") && name.len() == "switchboard/telegram-".len() + 16);
        assert!(!name.contains("secret"));
        assert_eq!(
            name,
            lock_name("telegram", "https://api.telegram.org/", "secret"),
            "a trailing / is the same server"
        );
        assert_ne!(name, lock_name("telegram", "http://127.0.0.1:1", "secret"));
        assert_ne!(name, lock_name("telegram", "https://api.telegram.org", "other"));
    }

    #[test]
    fn another_process_holding_the_lock_is_named_and_final() {
        let err = held_by(Some(1), "telegram");
        assert_eq!(err.code, "telegram_token_lock");
        assert!(!err.retryable);
        assert_eq!(err.message, "another switchboard (PID 1) is already using this Telegram bot token");
    }

    #[test]
    fn second_holder_is_refused_and_the_lock_freed_on_drop() {
        let (t, other) = (token("abc"), token("other"));
        let first = TokenLock::acquire("telegram", "s", &t).unwrap();
        let err = TokenLock::acquire("telegram", "s", &t).unwrap_err();
        assert_eq!(err.code, "telegram_token_lock");
        // Held by this very process: an earlier generation that is still stopping.
        assert!(err.retryable);
        assert!(!err.message.contains(&t));
        assert!(TokenLock::acquire("telegram", "s", &other).is_ok());
        drop(first);
        assert!(TokenLock::acquire("telegram", "s", &t).is_ok());
    }

    #[test]
    fn a_holder_outside_our_bookkeeping_is_another_process_even_with_our_pid_number() {
        // A socket bound without `acquire` stands for a process in another PID namespace
        // that carries our PID number: it must not be taken for an earlier generation.
        let t = token("foreign");
        let addr = SocketAddr::from_abstract_name(lock_name("telegram", "s", &t).as_bytes()).unwrap();
        let foreign = UnixListener::bind_addr(&addr).unwrap();
        let err = TokenLock::acquire("telegram", "s", &t).unwrap_err();
        assert!(!err.retryable, "{err:?}");
        let pid = std::process::id();
        assert!(err.message.contains(&format!("(PID {pid})")), "{}", err.message);
        drop(foreign);
        assert!(TokenLock::acquire("telegram", "s", &t).is_ok());
    }
}
