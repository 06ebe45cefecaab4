/*!
The inbox: a durable journal of accepted inbound messages.

A platform's cursor (Telegram's offset) may only move past a message once the message
is safe. [`Inbox::accept`] makes it safe: the message is written to
`state_dir/inbox/pending/` (atomically, fsynced) before the adapter hears "accepted".
When its turn is over (the reply is in the durable outbox), [`Inbox::complete`] moves
the entry to `state_dir/inbox/done/`. After a crash, every pending entry is answered
again ([`Inbox::pending`]), so a `kill -9` mid-turn loses nothing.

Entries are named after the platform's message id, so a message the platform sends
again (a crash between accepting it and storing the cursor) finds its own entry, pending
or done, and is dropped as a duplicate. Messages without an id (the console) get a
unique name and are never de-duplicated. Done entries are kept for a week (then
removed at startup): long enough for any replay a platform could make.
*/

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::message::Inbound;
use crate::status::unix_now;

/// How long done entries are kept for de-duplication.
const DONE_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// A message the inbox has accepted, with the name of its journal entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: String,
    pub msg: Inbound,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    accepted_at: f64,
    msg: Inbound,
}

pub struct Inbox {
    pending: PathBuf,
    done: PathBuf,
    counter: AtomicU64,
}

impl Inbox {
    /// Open (creating) `state_dir/inbox`, and forget done entries older than a week.
    pub fn open(state_dir: &Path) -> io::Result<Inbox> {
        let root = state_dir.join("inbox");
        let inbox = Inbox { pending: root.join("pending"), done: root.join("done"), counter: AtomicU64::new(0) };
        fsutil::create_private_dir(&inbox.pending)?;
        fsutil::create_private_dir(&inbox.done)?;
        inbox.forget_old_done(SystemTime::now());
        Ok(inbox)
    }

    /// Record `msg` durably. `Ok(None)` means it was accepted before (a replay).
    pub fn accept(&self, msg: Inbound) -> io::Result<Option<Accepted>> {
        let id = self.entry_name(&msg);
        if msg.message_id.is_some() && (self.pending.join(&id).exists() || self.done.join(&id).exists()) {
            return Ok(None);
        }
        let entry = Entry { accepted_at: unix_now(), msg };
        // Serializing plain strings and numbers cannot fail.
        let json = serde_json::to_vec(&entry).expect("inbox entry serializes");
        fsutil::write_atomic(&self.pending.join(&id), &json)?;
        Ok(Some(Accepted { id, msg: entry.msg }))
    }

    /// The turn for entry `id` is over: keep it only as a de-duplication marker.
    pub fn complete(&self, id: &str) {
        if let Err(e) = fs::rename(self.pending.join(id), self.done.join(id)) {
            log::warn!("inbox: cannot mark {id} done: {e}");
        }
    }

    /// Every accepted message whose turn never finished, oldest first. Unreadable
    /// entries are moved aside with a warning, never a panic.
    pub fn pending(&self) -> Vec<Accepted> {
        let mut found: Vec<(f64, Accepted)> = Vec::new();
        for (id, path) in list(&self.pending) {
            match fs::read(&path).ok().and_then(|b| serde_json::from_slice::<Entry>(&b).ok()) {
                Some(e) => found.push((e.accepted_at, Accepted { id, msg: e.msg })),
                None => {
                    log::warn!("inbox: {} is unreadable; moved aside", path.display());
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        found.sort_by(|a, b| a.0.total_cmp(&b.0));
        found.into_iter().map(|(_, a)| a).collect()
    }

    /// `<platform>--<message id>`, or a unique name for messages without an id. Both
    /// parts are reduced to file-safe characters.
    fn entry_name(&self, msg: &Inbound) -> String {
        let id = match &msg.message_id {
            Some(id) => format!("m{}", safe(id)),
            None => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                format!("u{}-{}-{n}", (unix_now() * 1e6) as u64, std::process::id())
            }
        };
        format!("{}--{id}.json", safe(&msg.source.platform))
    }

    fn forget_old_done(&self, now: SystemTime) {
        for (_, path) in list(&self.done) {
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > DONE_KEPT);
            if old {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// The `.json` files of `dir`, by name.
fn list(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else { return vec![] };
    let mut files: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            name.ends_with(".json").then(|| (name, e.path()))
        })
        .collect();
    files.sort();
    files
}

/// Keep `[A-Za-z0-9_-]`, escape the rest as `%XX`: ids come from the network, and a
/// `.` or `/` must never reach a path.
fn safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{ChatType, Source};

    fn msg(id: Option<&str>, text: &str) -> Inbound {
        let source = Source {
            platform: "tg".into(),
            chat_id: "1".into(),
            chat_type: ChatType::Dm,
            chat_name: None,
            user_id: Some("7".into()),
            user_name: None,
            thread_id: None,
        };
        Inbound { source, message_id: id.map(str::to_string), text: text.into() }
    }

    #[test]
    fn pending_messages_survive_a_reopen_in_order_until_completed() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        let a = inbox.accept(msg(Some("10"), "a")).unwrap().unwrap();
        let b = inbox.accept(msg(None, "b")).unwrap().unwrap();
        inbox.accept(msg(Some("12"), "c")).unwrap().unwrap();
        inbox.complete(&b.id);
        let again = Inbox::open(dir.path()).unwrap();
        let texts: Vec<String> = again.pending().into_iter().map(|a| a.msg.text).collect();
        assert_eq!(texts, ["a", "c"]);
        assert_eq!(again.pending()[0], a);
    }

    #[test]
    fn a_replayed_message_is_dropped_pending_or_done() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        let first = inbox.accept(msg(Some("5"), "x")).unwrap().unwrap();
        assert_eq!(inbox.accept(msg(Some("5"), "x")).unwrap(), None);
        inbox.complete(&first.id);
        assert_eq!(inbox.accept(msg(Some("5"), "x")).unwrap(), None);
        // Messages without an id are never taken for each other.
        assert!(inbox.accept(msg(None, "y")).unwrap().is_some());
        assert!(inbox.accept(msg(None, "y")).unwrap().is_some());
    }

    #[test]
    fn hostile_ids_stay_inside_the_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        let a = inbox.accept(msg(Some("../../etc/passwd"), "x")).unwrap().unwrap();
        assert!(!a.id.contains('/'), "{}", a.id);
        assert_eq!(inbox.pending().len(), 1);
    }

    #[test]
    fn a_corrupt_entry_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::open(dir.path()).unwrap();
        fs::write(dir.path().join("inbox/pending/tg--mbad.json"), b"{trunc").unwrap();
        inbox.accept(msg(Some("1"), "ok")).unwrap();
        assert_eq!(inbox.pending().len(), 1);
        assert!(dir.path().join("inbox/pending/tg--mbad.corrupt").exists());
    }
}
