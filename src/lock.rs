/*!
Host-wide bot-token locks.

Telegram allows one `getUpdates` consumer per token; two gateways on one host polling
the same bot would knock each other off with 409 Conflict. Before connecting, an adapter
with a bot token takes `<lock_dir>/<kind>-<first 16 hex of sha256(token)>.lock` with an
advisory `flock` and writes its PID in it. The kernel drops the lock when the process
dies, so a crashed gateway never blocks the next start; the raw token never touches disk.
*/

use std::fs::{self, File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::adapter::Fatal;
use crate::fsutil;

/// A held token lock; released when dropped.
#[derive(Debug)]
pub struct TokenLock {
    file: File,
    path: PathBuf,
}

impl TokenLock {
    /// Take the lock for `token` of platform `kind`, or explain who holds it.
    pub fn acquire(lock_dir: &Path, kind: &str, token: &str) -> Result<TokenLock, Fatal> {
        let path = lock_path(lock_dir, kind, token);
        let io_fatal = |e: std::io::Error| {
            Fatal::retryable("lock_dir_error", format!("cannot use lock file {}: {e}", path.display()))
        };
        fs::create_dir_all(lock_dir).map_err(io_fatal)?;
        let mut file = fsutil::open_lock_file(&path).map_err(io_fatal)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(held_by(read_pid(&mut file), kind)),
            Err(TryLockError::Error(e)) => return Err(io_fatal(e)),
        }
        let pid = std::process::id();
        let written = file
            .set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{pid}\n").as_bytes()));
        written.map_err(io_fatal)?;
        Ok(TokenLock { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TokenLock {
    fn drop(&mut self) {
        // Empty the PID first so nobody reads a stale holder, then unlock. The file
        // itself stays: removing it would race with another process locking it.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Why the lock is not ours. Another process holding it is for good (a second gateway
/// would fight it for updates). This process holding it can only be an earlier
/// generation of the same platform whose thread has not let go yet (the config refuses
/// two instances with one token): that heals by itself, so it is retryable.
fn held_by(holder: Option<u32>, kind: &str) -> Fatal {
    let code = format!("{kind}_token_lock");
    match holder {
        Some(pid) if pid == std::process::id() => {
            Fatal::retryable(code, "an earlier connection of this platform still holds the bot token lock")
        }
        Some(pid) => Fatal::permanent(
            code,
            format!("another switchboard (PID {pid}) is already using this {} bot token", title(kind)),
        ),
        None => Fatal::permanent(
            code,
            format!("another switchboard (unknown PID) is already using this {} bot token", title(kind)),
        ),
    }
}

/// `<lock_dir>/<kind>-<16 hex>.lock`
pub fn lock_path(lock_dir: &Path, kind: &str, token: &str) -> PathBuf {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    lock_dir.join(format!("{kind}-{hex}.lock"))
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// `telegram` → `Telegram`, for messages.
fn title(kind: &str) -> String {
    let mut chars = kind.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_name_hashes_the_token() {
        // sha256("secret") = 2bb80d537b1da3e3...
        let p = lock_path(Path::new("/l"), "telegram", "secret");
        assert_eq!(p, Path::new("/l/telegram-2bb80d537b1da3e3.lock"));
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
        let dir = tempfile::tempdir().unwrap();
        let first = TokenLock::acquire(dir.path(), "telegram", "123:abc").unwrap();
        let err = TokenLock::acquire(dir.path(), "telegram", "123:abc").unwrap_err();
        assert_eq!(err.code, "telegram_token_lock");
        // Held by this very process: an earlier generation that is still stopping.
        assert!(err.retryable);
        assert!(!err.message.contains("123:abc"));
        assert!(TokenLock::acquire(dir.path(), "telegram", "other").is_ok());
        drop(first);
        assert!(TokenLock::acquire(dir.path(), "telegram", "123:abc").is_ok());
    }
}
