/*!
The console platform: the terminal as a chat.

Each line read from standard input is a message from the local user; each reply is
printed to standard output (logs go to standard error, so `echo hello | switchboard run`
prints only the reply). End of input stops the platform cleanly; with nothing else
configured the gateway then answers what it read and exits 0.

Input is read as bytes and decoded lossily: a line that is not UTF-8 becomes text with
`U+FFFD` in place of the bad bytes, and the lines after it are read as usual.

Standard output that cannot be written (a closed pipe: `switchboard run | head -1`)
ends the console just as cleanly: the platform stops, nothing more is written, and the
replies still queued for it stay in the outbox ([`SendError::Closed`]) rather than
being given up one by one.

The console has no message ids: the inbox gives each line one of its own, unique across
runs, so no line is ever taken for one answered in an earlier run.
*/

use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::adapter::Context;
use crate::config::Section;
use crate::message::{ChatType, Inbound, Outbound, Source};
use crate::platform::PlatformSpec;
use crate::platform::{Fatal, Outlet, Platform, SendError};
use crate::text::{Limit, Unit};

/// The console has no settings of its own.
pub fn parse(_section: &mut Section) -> Arc<dyn PlatformSpec> {
    Arc::new(ConsoleSpec)
}

struct ConsoleSpec;

impl PlatformSpec for ConsoleSpec {
    fn build(&self) -> Box<dyn Platform> {
        Box::new(Console)
    }

    fn describe(&self) -> String {
        "reads standard input, replies on standard output".into()
    }

    fn message_limit(&self) -> Limit {
        // A terminal takes any length: never split.
        Limit { max: usize::MAX, unit: Unit::Chars }
    }
}

struct Console;

impl Platform for Console {
    fn connect(&mut self, _ctx: &Context) -> Result<Arc<dyn Outlet>, Fatal> {
        Ok(Arc::new(Stdout))
    }

    fn run(&mut self, ctx: &Context) -> Result<(), Fatal> {
        let (_, input) = input();
        let user = std::env::var("USER").unwrap_or_else(|_| "local".into());
        loop {
            if STDOUT_CLOSED.load(Ordering::SeqCst) {
                log::info!("{}: standard output is closed; the console stops", ctx.name);
                break;
            }
            if STDIN_ENDED.load(Ordering::SeqCst) && input.is_empty() {
                break;
            }
            let line = match ctx.recv(input) {
                Ok(Some(Input::Line(line))) => line,
                // Checked at the top of the loop.
                Ok(Some(Input::End | Input::OutputClosed)) => continue,
                Ok(None) | Err(_) => break,
            };
            let text = line.trim_end_matches(['\r', '\n']);
            if text.trim().is_empty() {
                continue;
            }
            if ctx.deliver(message(&ctx.name, &user, text)).is_err() {
                break;
            }
        }
        // End of input, closed output, or a stop request: each is a clean end.
        Ok(())
    }
}

/// A line typed by `user`, as an inbound message of the console instance `name`.
fn message(name: &str, user: &str, text: &str) -> Inbound {
    Inbound {
        source: Source {
            platform: name.to_string(),
            chat_id: "local".into(),
            chat_type: ChatType::Dm,
            chat_name: None,
            user_id: Some(user.to_string()),
            user_name: Some(user.to_string()),
            thread_id: None,
        },
        // The inbox gives it an id unique across runs.
        message_id: None,
        text: text.to_string(),
    }
}

/// What the console waits for.
enum Input {
    /// A line of standard input, decoded lossily.
    Line(String),
    /// Standard input ended ([`STDIN_ENDED`] is set).
    End,
    /// Standard output broke ([`STDOUT_CLOSED`] is set).
    OutputClosed,
}

/// Standard input ended (or failed): no more lines, for this and any later generation.
static STDIN_ENDED: AtomicBool = AtomicBool::new(false);
/// Standard output failed once: it is not written again in this process.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Lines of standard input, read by one thread for the whole process: a read blocked
/// on a terminal cannot be cancelled, so a second reader would race the first for
/// input. The sender is kept too, for the outlet to wake the console when output breaks.
fn input() -> &'static (Sender<Input>, Receiver<Input>) {
    static INPUT: OnceLock<(Sender<Input>, Receiver<Input>)> = OnceLock::new();
    INPUT.get_or_init(|| {
        let (tx, rx) = unbounded();
        let reader_tx = tx.clone();
        let reader = move || {
            read_lines(&mut io::stdin().lock(), &reader_tx);
            STDIN_ENDED.store(true, Ordering::SeqCst);
            let _ = reader_tx.send(Input::End);
        };
        // Restarted after a panic, so that it never passes for the end of input.
        if let Err(e) = crate::supervise::spawn("console-stdin", reader) {
            log::error!("console: cannot start the input reader: {e}");
            STDIN_ENDED.store(true, Ordering::SeqCst);
        }
        (tx, rx)
    })
}

/// Send each line of `from` to `to` until end of input or a read error.
fn read_lines(from: &mut impl BufRead, to: &Sender<Input>) {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match from.read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if to.send(Input::Line(String::from_utf8_lossy(&buf).into_owned())).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("console: cannot read standard input ({e}); no more input");
                return;
            }
        }
    }
}

struct Stdout;

impl Outlet for Stdout {
    fn send(&self, msg: &Outbound) -> Result<Option<String>, SendError> {
        if STDOUT_CLOSED.load(Ordering::SeqCst) {
            return Err(SendError::Closed("standard output is closed".into()));
        }
        let mut out = io::stdout().lock();
        match writeln!(out, "{}", msg.text).and_then(|_| out.flush()) {
            Ok(()) => Ok(None),
            Err(e) => {
                if !STDOUT_CLOSED.swap(true, Ordering::SeqCst) {
                    log::warn!("console: cannot write to standard output ({e}); the console stops");
                    let _ = input().0.send(Input::OutputClosed);
                }
                Err(SendError::Closed(format!("cannot write to standard output: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_on_stdin_is_decoded_lossily_and_reading_goes_on() {
        let (tx, rx) = unbounded();
        read_lines(&mut &b"line1\nbad \xff here\nline3\n"[..], &tx);
        let lines: Vec<String> = rx.try_iter().map(|i| if let Input::Line(l) = i { l } else { panic!() }).collect();
        assert_eq!(lines, ["line1\n", "bad \u{fffd} here\n", "line3\n"]);
    }
}
