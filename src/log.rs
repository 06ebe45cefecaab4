/*!
Logging: simplelog to standard error (and to a file when `[gateway] log_file` is set),
through a writer that blanks every configured secret.

Adapters already build their messages without tokens; the redaction is the second
line of defence, for the error string of some library that quotes a URL with the token
in it. Logs go to standard error so that standard output carries only console replies.

Redaction can only blank a secret that appears whole. At trace level ureq-proto dumps
every request as rows of 16 bytes in hex and ASCII (`POST /bot<token>/…`, `Bearer sk-…`
cut into pieces), which no text replacement can catch. So other crates' records are
capped at debug ([`OursOnlyAtTrace`]): `log_level = "trace"` traces switchboard, not the
bytes on the wire. Secrets are also blanked in the forms `Debug` and URLs give them.
*/

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use log::{Level, Log, Metadata, Record};
use simplelog::{CombinedLogger, ConfigBuilder, LevelFilter, SharedLogger, WriteLogger};

/// Start logging at `level`. Call before any thread is spawned: the local time offset
/// can only be read while the process has a single thread.
pub fn init(level: LevelFilter, file: Option<&Path>, secrets: Vec<String>) -> io::Result<()> {
    let mut builder = ConfigBuilder::new();
    // On failure (more than one thread already) the log falls back to UTC.
    let _ = builder.set_time_offset_to_local();
    builder.set_thread_level(LevelFilter::Off).set_target_level(LevelFilter::Off);
    let config = builder.build();
    let secrets = spellings(secrets);
    let mut loggers: Vec<Box<dyn SharedLogger>> =
        vec![WriteLogger::new(level, config.clone(), Redacting::new(io::stderr(), secrets.clone()))];
    if let Some(path) = file {
        let file = open_log_file(path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open log_file {}: {e}", path.display())))?;
        loggers.push(WriteLogger::new(level, config, Redacting::new(file, secrets)));
    }
    let logger = OursOnlyAtTrace { inner: CombinedLogger::new(loggers) };
    log::set_boxed_logger(Box::new(logger)).map_err(io::Error::other)?;
    log::set_max_level(level);
    Ok(())
}

/// Every way a secret may be spelled in a log line: as is, as `Debug` escapes it, and
/// percent-encoded as in a URL. Longest first, so one containing another is blanked whole.
fn spellings(secrets: Vec<String>) -> Vec<String> {
    let mut all = Vec::new();
    for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
        let debug = format!("{secret:?}");
        all.push(debug[1..debug.len() - 1].to_string());
        all.push(percent_encoded(&secret));
        all.push(secret);
    }
    all.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    all.dedup();
    all
}

fn percent_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Passes switchboard's own records at every level, other crates' up to debug.
struct OursOnlyAtTrace {
    inner: Box<CombinedLogger>,
}

impl OursOnlyAtTrace {
    fn allowed(metadata: &Metadata<'_>) -> bool {
        let target = metadata.target();
        metadata.level() <= Level::Debug || target == "switchboard" || target.starts_with("switchboard::")
    }
}

impl Log for OursOnlyAtTrace {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        Self::allowed(metadata) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if Self::allowed(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
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

    #[test]
    fn secrets_are_blanked_as_debug_and_urls_spell_them() {
        let mut w = Redacting::new(Vec::new(), spellings(vec!["12:a\"b c".into()]));
        writeln!(w, "raw 12:a\"b c debug {:?} url /bot12%3Aa%22b%20c/", "12:a\"b c").unwrap();
        assert_eq!(String::from_utf8(w.inner).unwrap(), "raw *** debug \"***\" url /bot***/\n");
    }

    #[test]
    fn other_crates_stop_at_debug() {
        let meta = |level, target| Metadata::builder().level(level).target(target).build();
        assert!(OursOnlyAtTrace::allowed(&meta(Level::Trace, "switchboard::net::http")));
        assert!(OursOnlyAtTrace::allowed(&meta(Level::Debug, "ureq_proto::client")));
        assert!(!OursOnlyAtTrace::allowed(&meta(Level::Trace, "ureq_proto::util")));
        assert!(!OursOnlyAtTrace::allowed(&meta(Level::Trace, "switchboardx")));
    }
}
