/*!
Logging: simplelog to standard error (and to a file when `[gateway] log_file` is set),
through a writer that blanks every configured secret.

Adapters already build their messages without tokens; the redaction is the second
line of defence, for the error string of some library that quotes a URL with the token
in it. Logs go to standard error so that standard output carries only console replies.
*/

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use simplelog::{CombinedLogger, ConfigBuilder, LevelFilter, SharedLogger, WriteLogger};

/// Start logging at `level`. Call before any thread is spawned: the local time offset
/// can only be read while the process has a single thread.
pub fn init(level: LevelFilter, file: Option<&Path>, secrets: Vec<String>) -> io::Result<()> {
    let mut builder = ConfigBuilder::new();
    // On failure (more than one thread already) the log falls back to UTC.
    let _ = builder.set_time_offset_to_local();
    builder.set_thread_level(LevelFilter::Off).set_target_level(LevelFilter::Off);
    let config = builder.build();
    let secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
    let mut loggers: Vec<Box<dyn SharedLogger>> =
        vec![WriteLogger::new(level, config.clone(), Redacting::new(io::stderr(), secrets.clone()))];
    if let Some(path) = file {
        let file = open_log_file(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open log_file {}: {e}", path.display())))?;
        loggers.push(WriteLogger::new(level, config, Redacting::new(file, secrets)));
    }
    CombinedLogger::init(loggers).map_err(io::Error::other)
}

/// Append to `path` (0600), creating its directory (0700) when it does not exist yet.
fn open_log_file(path: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_private_dir(dir)?;
    }
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// Buffers each log line and replaces every secret in it before writing it whole.
pub struct Redacting<W: Write> {
    inner: W,
    secrets: Vec<String>,
    line: Vec<u8>,
}

impl<W: Write> Redacting<W> {
    pub fn new(inner: W, secrets: Vec<String>) -> Redacting<W> {
        Redacting { inner, secrets, line: Vec::new() }
    }

    fn emit_line(&mut self) -> io::Result<()> {
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), "***");
        }
        self.line.clear();
        self.inner.write_all(text.as_bytes())
    }
}

impl<W: Write> Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for chunk in buf.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(chunk);
            if chunk.ends_with(b"\n") {
                self.emit_line()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.line.is_empty() {
            self.emit_line()?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_blanked_even_when_written_in_pieces() {
        let mut w = Redacting::new(Vec::new(), vec!["123:SECRET".into()]);
        write!(w, "GET /bot123:SEC").unwrap();
        write!(w, "RET/getMe failed\nnext ").unwrap();
        w.flush().unwrap();
        assert_eq!(String::from_utf8(w.inner).unwrap(), "GET /bot***/getMe failed\nnext ");
    }
}
