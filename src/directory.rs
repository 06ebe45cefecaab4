/*!
The channel directory, `state_dir/directory.json`: every chat seen, per platform.

It is how a person finds the id of a chat to send to (`switchboard send NAME:CHAT`).
Telegram has no API to list a bot's chats, so the directory is built from the chats
messages came from. The whole file is rewritten when a platform (re)connects, as the
reference gateway does, and when the gateway stops. A newly seen chat is written at
most every [`WRITE_INTERVAL`]: a gateway meeting thousands of chats must not rewrite a
growing file for each of them.

Memory holds each chat once, in a compact form (the id as the map key, its name and type),
and a write streams the file from it through a buffer: it builds neither a copy of the
directory nor the whole file in memory (at 10,000 chats both were megabytes, every write).
*/

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
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

/// What memory holds of a chat; its id is the key.
#[derive(Clone, Debug, PartialEq)]
struct Chat {
    name: Option<Box<str>>,
    chat_type: ChatType,
}

/// Platform instance name → chat id → chat.
type Chats = BTreeMap<String, BTreeMap<Box<str>, Chat>>;

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
            .map(|(platform, list)| {
                let chats = list.into_iter().map(|c| {
                    (c.id.into_boxed_str(), Chat { name: c.name.map(String::into_boxed_str), chat_type: c.chat_type })
                });
                (platform, chats.collect())
            })
            .collect();
        Directory { path, state: Mutex::new(State { chats, dirty: false, written_at: None }) }
    }

    /// Record the chat `source` came from. A new or renamed chat is written with the
    /// next write, which happens now unless one happened in the last [`WRITE_INTERVAL`].
    pub fn observe(&self, source: &Source) {
        let mut state = self.state.lock();
        let known = match state.chats.get_mut(&source.platform) {
            Some(known) => known,
            None => state.chats.entry(source.platform.clone()).or_default(),
        };
        let same = |c: &Chat| c.chat_type == source.chat_type && c.name.as_deref() == source.chat_name.as_deref();
        if !known.get(source.chat_id.as_str()).is_some_and(same) {
            let chat = Chat { name: source.chat_name.as_deref().map(Box::from), chat_type: source.chat_type };
            known.insert(source.chat_id.as_str().into(), chat);
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
        let chats = &state.chats;
        let written = supervise::guard("writing the channel directory", || {
            crate::testhook::panic_point("directory-write");
            let mut replacement = fsutil::Replacement::create(&self.path)?;
            let mut out = BufWriter::new(replacement.file());
            write_json(&mut out, unix_now(), chats)?;
            out.flush()?;
            drop(out);
            replacement.commit(true)
        });
        state.dirty = !matches!(written, Some(Ok(())));
        if let Some(Err(e)) = written {
            log::warn!("{}: cannot write the channel directory: {e}", self.path.display());
        }
    }
}

/// `directory.json` from `chats`, in the shape of [`DirectoryFile`] (pretty-printed, as
/// `serde_json::to_writer_pretty` writes it, chats sorted by id), streamed to `out`.
fn write_json(out: &mut impl Write, updated_at: f64, chats: &Chats) -> io::Result<()> {
    /// A chat as the file holds it, borrowed from memory.
    #[derive(Serialize)]
    struct Entry<'a> {
        id: &'a str,
        name: Option<&'a str>,
        #[serde(rename = "type")]
        chat_type: ChatType,
    }
    /// One platform's chats, serialized as a list without collecting them.
    struct List<'a>(&'a BTreeMap<Box<str>, Chat>);
    impl Serialize for List<'_> {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|(id, c)| Entry { id, name: c.name.as_deref(), chat_type: c.chat_type }))
        }
    }
    #[derive(Serialize)]
    struct File<'a> {
        updated_at: f64,
        platforms: BTreeMap<&'a str, List<'a>>,
    }
    let platforms = chats.iter().map(|(p, c)| (p.as_str(), List(c))).collect();
    serde_json::to_writer_pretty(out, &File { updated_at, platforms }).map_err(io::Error::from)
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

    /// The streamed file is exactly what serializing a [`DirectoryFile`] wrote before,
    /// so tools reading it (and `switchboard send` users) see no change.
    #[test]
    fn the_streamed_file_is_the_directory_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let d = Directory::load(dir.path());
        d.observe(&source("tg", "-100"));
        d.observe(&Source { chat_type: ChatType::Dm, chat_name: None, ..source("tg", "7") });
        d.observe(&Source { chat_name: Some("Quote \" and ünïcode".into()), ..source("bot2", "5") });
        d.flush();
        let bytes = std::fs::read(dir.path().join("directory.json")).unwrap();
        let file = Directory::read(dir.path()).unwrap();
        assert_eq!(bytes, serde_json::to_vec_pretty(&file).unwrap());
        let ids: Vec<&str> = file.platforms["tg"].iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["-100", "7"]);
        assert_eq!(file.platforms["tg"][1], ChatEntry { id: "7".into(), name: None, chat_type: ChatType::Dm });
        assert_eq!(file.platforms["bot2"][0].name.as_deref(), Some("Quote \" and ünïcode"));
    }

    #[test]
    fn a_renamed_chat_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let d = Directory::load(dir.path());
        d.observe(&source("tg", "-100"));
        d.observe(&Source { chat_name: Some("Renamed".into()), ..source("tg", "-100") });
        d.flush();
        let file = Directory::read(dir.path()).unwrap();
        assert_eq!(file.platforms["tg"].len(), 1);
        assert_eq!(file.platforms["tg"][0].name.as_deref(), Some("Renamed"));
    }
}
