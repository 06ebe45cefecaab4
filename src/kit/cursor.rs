//! A platform's place in its stream, kept in `state_dir/cursors/<kind>-<instance>.<ext>`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::adapter::Context;
use crate::fsutil;
use crate::platform::Fatal;

/// One instance's cursor: the text last stored, and where it is kept. Written with
/// [`fsutil::write_atomic_lazy`]: always whole, and after a power cut at worst the
/// previous value, which makes the platform resend what followed it (the inbox drops
/// what it already has).
#[derive(Debug)]
pub struct Cursor {
    path: PathBuf,
    stored: Option<String>,
}

impl Cursor {
    /// The cursor of the context's instance for platform `kind`, read from disk.
    pub fn open(ctx: &Context, kind: &str, ext: &str) -> Result<Cursor, Fatal> {
        let path = Cursor::path(&ctx.state_dir, kind, &ctx.name, ext);
        let stored = read(&path).map_err(|e| {
            Fatal::retryable(format!("{kind}_state_error"), format!("cannot read {}: {e}", path.display()))
        })?;
        Ok(Cursor { path, stored })
    }

    /// Where instance `name` of `kind` keeps its cursor. Characters that could leave the
    /// directory or trouble a shell become `_`.
    pub fn path(state_dir: &Path, kind: &str, name: &str, ext: &str) -> PathBuf {
        let safe: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        state_dir.join("cursors").join(format!("{kind}-{safe}.{ext}"))
    }

    /// The stored value, if there is one.
    pub fn get(&self) -> Option<&str> {
        self.stored.as_deref()
    }

    /// Store `value` (nothing is written when it is what is stored already). A failed
    /// write is logged and the cursor in memory goes on: a full disk may make a restart
    /// repeat work the inbox then drops, but must not silence the platform.
    pub fn set(&mut self, value: &str) {
        if self.stored.as_deref() == Some(value) {
            return;
        }
        self.stored = Some(value.to_string());
        if let Err(e) = fsutil::write_atomic_lazy(&self.path, format!("{value}\n").as_bytes()) {
            log::error!("cannot store the cursor in {}: {e}", self.path.display());
        }
    }
}

/// The stored text, trimmed; `None` when there is none. A file that is not text, or is
/// empty (damaged, edited by hand), is ignored with a warning.
fn read(path: &Path) -> io::Result<Option<String>> {
    match fs::read(path) {
        Ok(bytes) => {
            let text = std::str::from_utf8(&bytes).ok().map(str::trim).filter(|t| !t.is_empty());
            if text.is_none() {
                log::warn!("ignoring {}: it does not hold a cursor", path.display());
            }
            Ok(text.map(str::to_string))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_are_written_atomically_privately_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (inbound, _rx) = crossbeam_channel::unbounded();
        let (ctx, _stop) = Context::new("main/../bot", dir.path().to_path_buf(), inbound);
        let mut cursor = Cursor::open(&ctx, "x", "offset").unwrap();
        let path = dir.path().join("cursors").join("x-main____bot.offset");
        assert_eq!(cursor.get(), None);
        cursor.set("41");
        cursor.set("42");
        assert_eq!(Cursor::open(&ctx, "x", "offset").unwrap().get(), Some("42"));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left behind");
        fs::write(&path, b"\xff\xfe").unwrap();
        assert_eq!(Cursor::open(&ctx, "x", "offset").unwrap().get(), None, "bytes that are not text hold none");
        fs::write(&path, " \n").unwrap();
        assert_eq!(Cursor::open(&ctx, "x", "offset").unwrap().get(), None);
    }
}
