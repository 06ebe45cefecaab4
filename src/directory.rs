/*!
The channel directory, `state_dir/directory.json`: every chat seen, per platform.

It is how a person finds the id of a chat to send to (`switchboard send NAME:CHAT`).
Telegram has no API to list a bot's chats, so the directory is built from the chats
messages came from. The whole file is rewritten when a platform (re)connects, as the
reference gateway does, and when the gateway stops. A newly seen chat is written at
most every [`WRITE_INTERVAL`]: a gateway meeting thousands of chats must not rewrite a
growing file for each of them.
*/

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::message::{ChatType, Source};
use crate::status::unix_now;
use crate::supervise;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatEntry {
    pub id: String,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub chat_type: ChatType,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DirectoryFile {
    pub updated_at: f64,
    /// Platform instance name → chats, sorted by id.
    pub platforms: BTreeMap<String, Vec<ChatEntry>>,
}

/// Least time between two writes caused by newly seen chats.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(5);

type Chats = BTreeMap<String, BTreeMap<String, ChatEntry>>;

/// The directory, shared by the router (which observes chats) and the supervisor
/// (which rebuilds it after a reconnect).
pub struct Directory {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    chats: Chats,
    /// Chats seen since the last write.
    dirty: bool,
    written_at: Option<Instant>,
}

impl Directory {
    /// Load `state_dir/directory.json`; a missing or unreadable file starts empty.
    pub fn load(state_dir: &Path) -> Directory {
        let path = state_dir.join("directory.json");
        let file: DirectoryFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::warn!("{}: unreadable ({e}); starting a new channel directory", path.display());
                DirectoryFile::default()
            }),
            Err(_) => DirectoryFile::default(),
        };
        let chats = file
            .platforms
            .into_iter()
            .map(|(platform, list)| (platform, list.into_iter().map(|c| (c.id.clone(), c)).collect()))
            .collect();
        Directory { path, state: Mutex::new(State { chats, dirty: false, written_at: None }) }
    }

    /// Record the chat `source` came from. A new or renamed chat is written with the
    /// next write, which happens now unless one happened in the last [`WRITE_INTERVAL`].
    pub fn observe(&self, source: &Source) {
        let entry =
            ChatEntry { id: source.chat_id.clone(), name: source.chat_name.clone(), chat_type: source.chat_type };
        let mut state = self.state.lock();
        let known = state.chats.entry(source.platform.clone()).or_default();
        if known.get(&entry.id) != Some(&entry) {
            known.insert(entry.id.clone(), entry);
            state.dirty = true;
        }
        let due = state.written_at.is_none_or(|t| t.elapsed() >= WRITE_INTERVAL);
        if state.dirty && due {
            self.write(&mut state);
        }
    }

    /// Write the whole directory now.
    pub fn rebuild(&self) {
        self.write(&mut self.state.lock());
    }

    /// Write what was seen since the last write, if anything (at shutdown).
    pub fn flush(&self) {
        let mut state = self.state.lock();
        if state.dirty {
            self.write(&mut state);
        }
    }

    pub fn read(state_dir: &Path) -> std::io::Result<DirectoryFile> {
        let bytes = std::fs::read(state_dir.join("directory.json"))?;
        serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Write the file. It runs on the router's or the supervisor's thread, so a panic in
    /// here is caught ([`supervise::guard`]): the directory is only a convenience, and
    /// what failed to be written (after a panic or an I/O error) is written with the next
    /// write, no sooner than [`WRITE_INTERVAL`] later when a new chat causes it.
    fn write(&self, state: &mut State) {
        state.written_at = Some(Instant::now());
        let file = DirectoryFile {
            updated_at: unix_now(),
            platforms: state.chats.iter().map(|(p, c)| (p.clone(), c.values().cloned().collect())).collect(),
        };
        let written = supervise::guard("writing the channel directory", || {
            crate::testhook::panic_point("directory-write");
            // Plain strings and numbers: serializing cannot fail.
            let json = serde_json::to_vec_pretty(&file).expect("directory serializes");
            fsutil::write_atomic(&self.path, &json)
        });
        state.dirty = !matches!(written, Some(Ok(())));
        if let Some(Err(e)) = written {
            log::warn!("{}: cannot write the channel directory: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(platform: &str, chat: &str) -> Source {
        Source {
            platform: platform.into(),
            chat_id: chat.into(),
            chat_type: ChatType::Group,
            chat_name: Some("Team".into()),
            user_id: Some("1".into()),
            user_name: None,
            thread_id: None,
        }
    }

    #[test]
    fn records_chats_per_platform_and_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let d = Directory::load(dir.path());
        d.observe(&source("tg", "-100"));
        d.observe(&source("tg", "-100"));
        d.observe(&source("bot2", "5"));
        // The first chat was written at once; the second waits for the next write.
        assert_eq!(Directory::read(dir.path()).unwrap().platforms.len(), 1);
        d.flush();
        let file = Directory::read(dir.path()).unwrap();
        assert_eq!(file.platforms["tg"].len(), 1);
        assert_eq!(file.platforms["bot2"][0].id, "5");
        let again = Directory::load(dir.path());
        again.rebuild();
        assert_eq!(Directory::read(dir.path()).unwrap().platforms, file.platforms);
    }
}
