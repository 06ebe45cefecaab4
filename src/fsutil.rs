/*!
Crash-safe file writes.

Every state file is replaced atomically: write a temporary file in the same directory,
fsync it, rename it over the target, fsync the directory. A reader (or the next start
after a `kill -9`) sees the old content or the new, never a torn mix. Files are 0600:
state can name users and chats.

Every `fsync`/`fdatasync` of the process goes through [`sync_all`], [`sync_data`] or
[`sync_dir`], which count it ([`sync_count`]): small boxes run on SD cards that die of
writes, so `make bench` reports syncs per message, and a regression shows as a number.
*/

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Syncs issued by this process (successful or not).
static SYNCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Syncs issued by this thread.
    static THREAD_SYNCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many `fsync`/`fdatasync` calls this process has made so far.
pub fn sync_count() -> u64 {
    SYNCS.load(Ordering::Relaxed)
}

/// How many of them the calling thread made (for tests that share a process).
pub fn thread_sync_count() -> u64 {
    THREAD_SYNCS.with(|n| n.get())
}

fn count_sync() {
    SYNCS.fetch_add(1, Ordering::Relaxed);
    THREAD_SYNCS.with(|n| n.set(n.get() + 1));
}

/// Bytes this process caused to be written to storage so far (`write_bytes` of
/// `/proc/self/io`); `None` where that is not available.
pub fn write_bytes() -> Option<u64> {
    let io = fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes: "))?.trim().parse().ok()
}

/// `fsync(file)`: its data and metadata reach the disk. Counted.
pub fn sync_all(file: &File) -> io::Result<()> {
    count_sync();
    file.sync_all()
}

/// `fdatasync(file)`: its data (and the size, if it grew) reach the disk. Counted.
pub fn sync_data(file: &File) -> io::Result<()> {
    count_sync();
    file.sync_data()
}

/// Make the renames, creations and removals in `dir` durable. Counted.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    sync_all(&File::open(dir)?)
}

/// Replace `path` with `data` atomically, creating parent directories (0700) as needed.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, true)
}

/// [`write_atomic`] without the directory sync: one sync instead of two. The file is
/// always whole, but after a power cut it may hold its previous content. Only for
/// files that may safely go back in time: a platform cursor (the messages after it are
/// fetched again, and the inbox drops what it already has).
pub fn write_atomic_lazy(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, false)
}

fn replace(path: &Path, data: &[u8], durable_rename: bool) -> io::Result<()> {
    let mut replacement = Replacement::create(path)?;
    replacement.file().write_all(data)?;
    replacement.commit(durable_rename)
}

/// A new version of a file, being written to a temporary file beside it; [`Replacement::commit`]
/// puts it in place atomically, dropping it uncommitted removes it. For snapshots streamed
/// through a `BufWriter` rather than built whole in memory, and written under a lock that
/// the sync need not hold: write, release the lock, then commit.
pub struct Replacement {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: File,
    committed: bool,
}

impl Replacement {
    /// Start replacing `path`, creating parent directories (0700) as needed. One
    /// replacement of a path at a time per process (the temporary name is per process).
    pub fn create(path: &Path) -> io::Result<Replacement> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        create_private_dir(dir)?;
        let name = path.file_name().ok_or_else(|| io::Error::other("path has no file name"))?;
        let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
        // A leftover from a crash may carry other permissions: start afresh.
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        Ok(Replacement { path: path.to_path_buf(), tmp, file, committed: false })
    }

    /// The temporary file, to write the new content to.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Sync the new content and rename it over the file; with `durable_rename`, sync the
    /// directory too, so that a power cut cannot bring the old version back.
    pub fn commit(mut self, durable_rename: bool) -> io::Result<()> {
        sync_all(&self.file)?;
        fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if durable_rename { sync_dir(dir) } else { Ok(()) }
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Open (creating, never truncating) a file that serves as an advisory lock, mode 0600.
/// Its content, if any, belongs to whoever holds the lock.
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)
}

/// `create_dir_all` with mode 0700 for the directories it creates.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_content_with_mode_0600_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn every_sync_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let before = sync_count();
        write_atomic(&dir.path().join("a"), b"x").unwrap();
        // Other tests sync meanwhile: at least the file and its directory.
        assert!(sync_count() >= before + 2);
        let mine = thread_sync_count();
        write_atomic(&dir.path().join("b"), b"y").unwrap();
        assert_eq!(thread_sync_count(), mine + 2, "a file and its directory");
        write_atomic_lazy(&dir.path().join("b"), b"z").unwrap();
        assert_eq!(thread_sync_count(), mine + 3, "the file only");
        assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"z");
    }
}
