/*!
Transcripts: one append-only JSONL file per session id, one message per line.

A line is `{"ts":<unix seconds>,"role":"user","content":"…"}`. Files are only ever appended
to (`O_APPEND`, one `write_all` per batch of complete lines) and created 0600: they hold
what people said. A crash in the middle of a write leaves a torn last line; readers skip
any line that does not parse, and the next append first ends the torn line so that it does
not swallow the new one.

Reading takes the tail of the file, not all of it: with `reset = "none"` a transcript grows
without bound, while the agent only ever gets the last `max_history` messages.
*/

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::message::{ChatMessage, Role};

/// How much of the end of a transcript is read first; enough for 50 ordinary messages.
/// The window grows when it holds too few lines.
const TAIL_WINDOW: u64 = 64 * 1024;

#[derive(Serialize)]
struct LineOut<'a> {
    ts: f64,
    role: Role,
    content: &'a str,
}

#[derive(Deserialize)]
struct LineIn {
    role: Role,
    content: String,
}

/// Whether `id` is safe to use as a file name: ids come from the index file, which
/// anyone with access to the state directory can edit, so `../x` must not escape it.
pub(super) fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The transcript file of session `id` in `dir`.
pub(super) fn path(dir: &Path, id: &str) -> io::Result<PathBuf> {
    if !valid_id(id) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid session id {id:?}")));
    }
    Ok(dir.join(format!("{id}.jsonl")))
}

/// Append `messages`, stamped `ts`, to the transcript of `id` (created 0600 if new).
pub(super) fn append(dir: &Path, id: &str, messages: &[ChatMessage], ts: f64) -> io::Result<()> {
    let path = path(dir, id)?;
    let mut buf = Vec::with_capacity(messages.iter().map(|m| m.content.len() + 48).sum());
    for m in messages {
        serde_json::to_writer(&mut buf, &LineOut { ts, role: m.role, content: &m.content })?;
        buf.push(b'\n');
    }
    let mut file = OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(&path)?;
    if ends_torn(&file)? {
        // A crash (or a failed write) left half a line: end it, or the first new line
        // would be glued to it and lost with it.
        buf.insert(0, b'\n');
    }
    file.write_all(&buf)
}

/// Whether the file's last byte is not a newline (an interrupted append).
fn ends_torn(file: &File) -> io::Result<bool> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] != b'\n')
}

/// Whether the transcript of `id` holds anything (a missing file holds nothing).
pub(super) fn has_messages(dir: &Path, id: &str) -> bool {
    path(dir, id).and_then(std::fs::metadata).is_ok_and(|m| m.len() > 0)
}

/// The last `n` messages of the transcript of `id`, oldest first; none if it does not exist.
pub(super) fn read_last(dir: &Path, id: &str, n: usize) -> io::Result<Vec<ChatMessage>> {
    let path = path(dir, id)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    match File::open(&path) {
        Ok(file) => read_tail(&file, n, TAIL_WINDOW),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The last `n` parseable lines of `file`, reading a window from the end that starts at
/// `window` bytes and grows fourfold until it holds `n` lines or the whole file.
fn read_tail(file: &File, n: usize, mut window: u64) -> io::Result<Vec<ChatMessage>> {
    let size = file.metadata()?.len();
    loop {
        let start = size.saturating_sub(window);
        let len = usize::try_from(size - start).map_err(|_| io::Error::other("transcript too large"))?;
        // At least a whole first window's capacity: one size, which the allocator hands
        // out again turn after turn, rather than a buffer a little larger each turn as a
        // young transcript grows (each one a new hole in the heap).
        let mut buf = Vec::with_capacity(len.max(TAIL_WINDOW as usize));
        buf.resize(len, 0u8);
        file.read_exact_at(&mut buf, start)?;
        let messages = parse_last(&buf, start == 0, n);
        if messages.len() >= n || start == 0 {
            return Ok(messages);
        }
        window = window.saturating_mul(4);
    }
}

/// The last `n` messages of the complete lines in `buf`, oldest first. The first piece is
/// the tail of an earlier line unless `buf` starts the file; the piece after the last
/// newline is a torn write. Lines are parsed from the end and only until `n` are found, so
/// a turn does not build (and drop) every message of a window to keep the last few.
/// Lines that do not parse (torn ones glued to a later line by an old version, or edited
/// by hand) are skipped: a bad line must not cost the whole history.
fn parse_last(buf: &[u8], at_start: bool, n: usize) -> Vec<ChatMessage> {
    let Some(end) = buf.iter().rposition(|&b| b == b'\n') else { return Vec::new() };
    let start = if at_start { 0 } else { buf.iter().position(|&b| b == b'\n').map_or(end, |i| i + 1) };
    let mut messages = Vec::with_capacity(n.min(64));
    let mut skipped = 0;
    if start < end {
        for line in buf[start..end].rsplit(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            if messages.len() == n {
                break;
            }
            match serde_json::from_slice::<LineIn>(line) {
                Ok(l) => messages.push(ChatMessage { role: l.role, content: l.content }),
                Err(_) => skipped += 1,
            }
        }
    }
    if skipped > 0 {
        log::debug!("transcript: skipped {skipped} unreadable line(s)");
    }
    messages.reverse();
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn msg(i: usize) -> ChatMessage {
        ChatMessage::new(
            if i.is_multiple_of(2) { Role::User } else { Role::Assistant },
            format!("message {i}\nline two"),
        )
    }

    #[test]
    fn appends_lines_and_reads_the_last_n_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<_> = (0..10).map(msg).collect();
        append(dir.path(), "s1", &all[..4], 1.0).unwrap();
        append(dir.path(), "s1", &all[4..], 2.0).unwrap();
        let text = fs::read_to_string(dir.path().join("s1.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 10, "one line per message, newlines escaped");
        assert!(text.starts_with("{\"ts\":1.0,\"role\":\"user\",\"content\":\"message 0\\nline two\"}\n"), "{text}");
        assert_eq!(read_last(dir.path(), "s1", 3).unwrap(), all[7..]);
        assert_eq!(read_last(dir.path(), "s1", 100).unwrap(), all);
        assert_eq!(read_last(dir.path(), "s1", 0).unwrap(), []);
        assert_eq!(read_last(dir.path(), "missing", 5).unwrap(), []);
    }

    #[test]
    fn the_tail_window_grows_until_it_holds_enough_lines() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<_> = (0..40).map(msg).collect();
        append(dir.path(), "s", &all, 1.0).unwrap();
        let file = File::open(dir.path().join("s.jsonl")).unwrap();
        // A 16-byte window holds no complete line; it must grow past several lines.
        assert_eq!(read_tail(&file, 25, 16).unwrap(), all[15..]);
        assert_eq!(read_tail(&file, 100, 16).unwrap(), all);
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_the_next_append_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), "s", &[msg(0), msg(1)], 1.0).unwrap();
        let path = dir.path().join("s.jsonl");
        // A crash mid-append: half a line, no newline.
        OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"ts\":2.0,\"role\":\"us").unwrap();
        assert_eq!(read_last(dir.path(), "s", 10).unwrap(), [msg(0), msg(1)]);
        append(dir.path(), "s", &[msg(2)], 3.0).unwrap();
        assert_eq!(read_last(dir.path(), "s", 10).unwrap(), [msg(0), msg(1), msg(2)]);
    }

    #[test]
    fn has_messages_only_for_a_non_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!has_messages(dir.path(), "s"));
        fs::write(dir.path().join("s.jsonl"), "").unwrap();
        assert!(!has_messages(dir.path(), "s"));
        append(dir.path(), "s", &[msg(0)], 1.0).unwrap();
        assert!(has_messages(dir.path(), "s"));
    }

    #[test]
    fn ids_that_could_escape_the_directory_are_refused() {
        for id in ["", "../x", "a/b", ".hidden", "x.jsonl", &"a".repeat(65)] {
            assert!(!valid_id(id), "{id:?}");
            assert_eq!(read_last(Path::new("/nonexistent"), id, 5).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
        assert!(valid_id("20240310_131415_deadbeef"));
    }
}
