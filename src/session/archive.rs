/*!
The archive: entries of conversations that have gone quiet, on disk instead of in memory.

A gateway that runs for months sees many more conversations than are active on any day.
The store keeps in memory only the entries a turn may soon need; an entry idle past the
reset policy (or for [`super::EVICT_IDLE`]) moves here, and is read back when its
conversation speaks again (to tell the user their session was reset, and to carry on the
session if it had not expired) or when `/status` asks.

Entries are spread over [`BUCKETS`] files `sessions/archive/<xx>.jsonl` by a hash of the
key, so a lookup reads one small file, not all of them. A bucket is append-only, in the
journal's line format; the last line for a key wins. When a bucket has grown to twice
what it held after its last rewrite (and past [`COMPACT_MIN_BYTES`]), it is rewritten
with one line per key. Appends are not synced: the store syncs the buckets it appended to
before it writes a snapshot that no longer holds those entries, so until then the
snapshot and journal still have them.
*/

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::index::{self, Record};
use crate::fsutil;

/// Bucket files. A lookup reads about 1/64 of the archive.
const BUCKETS: u64 = 64;

/// A bucket smaller than this is never rewritten.
const COMPACT_MIN_BYTES: u64 = 64 * 1024;

pub(super) struct Archive {
    /// `sessions/archive`.
    dir: PathBuf,
    /// Buckets appended to since they were last synced.
    unsynced: BTreeSet<u64>,
    /// Each bucket's size after its last rewrite (absent: never rewritten).
    rewritten: HashMap<u64, u64>,
}

impl Archive {
    pub(super) fn new(sessions: &Path) -> Archive {
        Archive { dir: sessions.join("archive"), unsynced: BTreeSet::new(), rewritten: HashMap::new() }
    }

    /// The archived entry of `key`, if any.
    pub(super) fn get(&self, key: &str) -> io::Result<Option<Record>> {
        let bytes = match fs::read(self.path(bucket(key))) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Parse only the lines that start with this key (the key is written first).
        let prefix = format!("{{\"key\":{},", serde_json::to_string(key)?);
        // The last line for the key wins: search from the end.
        let found = bytes
            .rsplit(|&b| b == b'\n')
            .filter(|l| l.starts_with(prefix.as_bytes()))
            .filter_map(index::parse_line)
            .find(|(k, _)| k == key);
        Ok(found.map(|(_, record)| record))
    }

    /// Append `entries` to their buckets (unsynced), rewriting a bucket that grew enough.
    pub(super) fn put(&mut self, entries: &[(String, Record)]) -> io::Result<()> {
        fsutil::create_private_dir(&self.dir)?;
        let mut lines: HashMap<u64, Vec<u8>> = HashMap::new();
        for (key, record) in entries {
            lines.entry(bucket(key)).or_default().extend(index::line(key, record)?);
        }
        for (b, bytes) in lines {
            let path = self.path(b);
            let mut file = OpenOptions::new().append(true).create(true).mode(0o600).open(&path)?;
            file.write_all(&bytes)?;
            self.unsynced.insert(b);
            let size = file.metadata()?.len();
            let base = self.rewritten.get(&b).copied().unwrap_or(0);
            if size > COMPACT_MIN_BYTES.max(base * 2) {
                self.rewrite(b)?;
            }
        }
        Ok(())
    }

    /// The buckets to sync before a snapshot without their entries is written; they
    /// count as synced from now on (the caller puts them back if syncing fails).
    pub(super) fn take_unsynced(&mut self) -> BTreeSet<u64> {
        std::mem::take(&mut self.unsynced)
    }

    pub(super) fn restore_unsynced(&mut self, buckets: BTreeSet<u64>) {
        self.unsynced.extend(buckets);
    }

    /// Sync `buckets` of the archive in `sessions`, and the directory (new bucket files).
    pub(super) fn sync(sessions: &Path, buckets: &BTreeSet<u64>) -> io::Result<()> {
        if buckets.is_empty() {
            return Ok(());
        }
        let dir = sessions.join("archive");
        for b in buckets {
            fsutil::sync_data(&File::open(dir.join(name(*b)))?)?;
        }
        fsutil::sync_dir(&dir)
    }

    /// Rewrite bucket `b` with the last line of each key, in the order they were last
    /// written. Atomic and synced.
    fn rewrite(&mut self, b: u64) -> io::Result<()> {
        let path = self.path(b);
        let bytes = fs::read(&path)?;
        let mut last: HashMap<String, (usize, Record)> = HashMap::new();
        for (n, (key, record)) in bytes.split(|&b| b == b'\n').filter_map(index::parse_line).enumerate() {
            last.insert(key, (n, record));
        }
        let mut kept: Vec<_> = last.into_iter().collect();
        kept.sort_by_key(|(_, (n, _))| *n);
        let mut out = Vec::new();
        for (key, (_, record)) in &kept {
            out.extend(index::line(key, record)?);
        }
        fsutil::write_atomic(&path, &out)?;
        self.unsynced.remove(&b);
        self.rewritten.insert(b, out.len() as u64);
        Ok(())
    }

    fn path(&self, b: u64) -> PathBuf {
        self.dir.join(name(b))
    }
}

fn name(b: u64) -> String {
    format!("{b:02x}.jsonl")
}

/// The bucket of `key`: FNV-1a, which (unlike std's hasher) is the same in every build.
fn bucket(key: &str) -> u64 {
    let hash =
        key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    hash % BUCKETS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, tokens: u64) -> Record {
        Record { session_id: id.into(), created_at: 1.0, updated_at: 2.0, input_tokens: tokens, output_tokens: 0 }
    }

    #[test]
    fn the_last_archived_entry_of_a_key_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = Archive::new(dir.path());
        assert_eq!(archive.get("k").unwrap(), None);
        archive.put(&[("k".into(), record("a", 1)), ("k2".into(), record("b", 2))]).unwrap();
        archive.put(&[("k".into(), record("c", 3))]).unwrap();
        assert_eq!(archive.get("k").unwrap(), Some(record("c", 3)));
        assert_eq!(archive.get("k2").unwrap(), Some(record("b", 2)));
        // A key that is a prefix of another is not taken for it.
        assert_eq!(archive.get("k\"").unwrap(), None);
        Archive::sync(dir.path(), &archive.take_unsynced()).unwrap();
    }

    #[test]
    fn a_bucket_is_rewritten_with_one_line_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut archive = Archive::new(dir.path());
        // One key evicted again and again: its bucket stays small.
        for n in 0..2000 {
            archive.put(&[("k".into(), record("a", n))]).unwrap();
        }
        let size = fs::metadata(archive.path(bucket("k"))).unwrap().len();
        assert!(size <= COMPACT_MIN_BYTES + 1024, "{size} bytes");
        assert_eq!(archive.get("k").unwrap(), Some(record("a", 1999)));
    }
}
